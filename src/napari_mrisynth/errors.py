"""Exceptions: each names the file (or series) and the problem."""

from __future__ import annotations

from pathlib import Path


class MrisynthError(Exception):
    """Base class for every error this package raises on bad input."""


class VolumeFileError(MrisynthError):
    """A file could not be read as a volume (missing, unreadable, truncated, wrong format)."""

    def __init__(self, path: str | Path, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class DicomFileError(VolumeFileError):
    """A single DICOM file is unusable: not DICOM, truncated, no pixels, not an image..."""


class SeriesError(MrisynthError):
    """A DICOM series (or a folder of series) cannot be turned into one volume."""


class GeometryError(SeriesError):
    """Slices do not form a regular grid: a gap, non-uniform spacing, shear or mixed orientation."""


class ModelError(MrisynthError):
    """A model cannot be found, verified or loaded: unknown id, checksum mismatch, bad card."""


class InputError(MrisynthError):
    """An image is unsuitable for a model: not 3D, wrong modality, empty, NaNs..."""


class MissingExtraError(MrisynthError, ImportError):
    """An optional part of the package is not installed; the message says which extra."""

    def __init__(self, what: str, extra: str):
        self.extra = extra
        super().__init__(f"{what}: pip install 'napari-mrisynth[{extra}]'")
