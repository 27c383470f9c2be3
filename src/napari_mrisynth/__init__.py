"""napari-mrisynth: exact brain MRI volumes, simulated bvFTD cohorts and synthesis in napari."""

from napari_mrisynth.errors import (
    DicomFileError,
    GeometryError,
    MrisynthError,
    SeriesError,
    VolumeFileError,
)
from napari_mrisynth.volume import Volume

__version__ = "0.1.0"

__all__ = [
    "DicomFileError",
    "GeometryError",
    "MrisynthError",
    "SeriesError",
    "Volume",
    "VolumeFileError",
    "__version__",
]
