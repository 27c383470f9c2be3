"""Sets of volumes from folders, the station's error type and volume names."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from napari_mrisynth.errors import MrisynthError, VolumeFileError
from napari_mrisynth.io.files import VOLUME_SUFFIXES, is_label_map, is_volume_file
from napari_mrisynth.volume import Volume

#: Files a set folder may hold (one volume each); anything else is ignored.


class EvaluationError(MrisynthError):
    """Sets that cannot be evaluated: too few volumes, an empty folder, an unknown metric."""


def volume_name(volume: Volume, index: int) -> str:
    """``metadata["name"]``, else the source path, else ``#index``."""
    return str(volume.metadata.get("name") or volume.metadata.get("source") or f"#{index}")


def volume_files(path: str | Path) -> list[Path]:
    """The volume files directly in ``path``, sorted by name (label maps beside them, such
    as ``x_labels.nii.gz``, are not volumes)."""
    folder = Path(path)
    if not folder.is_dir():
        raise EvaluationError(f"{folder}: not a folder")
    return sorted(
        p for p in folder.iterdir()
        if p.is_file() and is_volume_file(p) and not is_label_map(p)
    )  # fmt: skip


def load_folder(path: str | Path) -> list[Volume]:
    """Every ``*.nii.gz``, ``*.nii``, ``*.mha`` and ``*.nrrd`` in a folder, sorted by name.

    Each volume's ``metadata["name"]`` is its file name without the suffix. A JSON sidecar
    of the same name written by ``mrisynth generate`` (its ``grid.space``) marks the volume
    as lying in model space, so it is resampled without registration.

    Raises
    ------
    EvaluationError
        The folder is missing or holds no volume file.
    VolumeFileError
        A file cannot be read (the message names it).
    """
    from napari_mrisynth.io.files import load_volume, volume_stem

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
        volume.metadata["name"] = volume_stem(file)
        volume.metadata.update(_sidecar_facts(file.with_name(f"{volume_stem(file)}.json")))
        volumes.append(volume)
    return volumes


def _sidecar_facts(path: Path) -> dict[str, Any]:
    """``space`` and ``synthetic`` from a generator's provenance sidecar, if there is one."""
    if not path.is_file():
        return {}
    try:
        sidecar = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise EvaluationError(f"{path}: unreadable JSON sidecar ({exc})") from exc
    facts: dict[str, Any] = {}
    grid = sidecar.get("grid") if isinstance(sidecar, dict) else None
    if isinstance(grid, dict) and isinstance(grid.get("space"), str):
        facts["space"] = grid["space"]
    if isinstance(sidecar, dict) and sidecar.get("synthetic") is True:
        facts["synthetic"] = True
    return facts
