"""Sets of volumes from folders, the station's error type and volume names."""

from __future__ import annotations

from pathlib import Path

from napari_mrisynth.errors import MrisynthError, VolumeFileError
from napari_mrisynth.volume import Volume

#: Files a set folder may hold (one volume each); anything else is ignored.
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".mha", ".nrrd")


class EvaluationError(MrisynthError):
    """Sets that cannot be evaluated: too few volumes, an empty folder, an unknown metric."""


def volume_name(volume: Volume, index: int) -> str:
    """``metadata["name"]``, else the source path, else ``#index``."""
    return str(volume.metadata.get("name") or volume.metadata.get("source") or f"#{index}")


def volume_files(path: str | Path) -> list[Path]:
    """The volume files directly in ``path``, sorted by name."""
    folder = Path(path)
    if not folder.is_dir():
        raise EvaluationError(f"{folder}: not a folder")
    return sorted(
        p for p in folder.iterdir()
        if p.is_file() and p.name.lower().endswith(VOLUME_SUFFIXES)
    )  # fmt: skip


def load_folder(path: str | Path) -> list[Volume]:
    """Every ``*.nii.gz``, ``*.nii``, ``*.mha`` and ``*.nrrd`` in a folder, sorted by name.

    Each volume's ``metadata["name"]`` is its file name without the suffix.

    Raises
    ------
    EvaluationError
        The folder is missing or holds no volume file.
    VolumeFileError
        A file cannot be read (the message names it).
    """
    from napari_mrisynth.io.files import _stem, load_volume

    files = volume_files(path)
    if not files:
        raise EvaluationError(
            f"{path}: no volume files (expected {', '.join('*' + s for s in VOLUME_SUFFIXES)})"
        )
    volumes = []
    for file in files:
        volume = load_volume(file).compute()
        if volume.data.size == 0:
            raise VolumeFileError(file, "holds no voxels")
        volume.metadata["name"] = _stem(file)
        volumes.append(volume)
    return volumes
