"""napari-mrisynth: exact brain MRI volumes, simulated bvFTD cohorts and synthesis in napari."""

from napari_mrisynth._version import __version__
from napari_mrisynth.errors import (
    DicomFileError,
    GeometryError,
    MrisynthError,
    SeriesError,
    VolumeFileError,
)
from napari_mrisynth.volume import Volume

__all__ = [
    "DicomFileError",
    "GeometryError",
    "MrisynthError",
    "SeriesError",
    "Volume",
    "VolumeFileError",
    "__version__",
    "generate",
]


def __getattr__(name: str):
    # ``from napari_mrisynth import generate`` without importing torch at package import.
    if name == "generate":
        from napari_mrisynth.synthesis import generate

        return generate
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
