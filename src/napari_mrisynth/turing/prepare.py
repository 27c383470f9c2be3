"""Every volume of a study prepared identically into the study's cache folder, and read back.

The preparation itself (grid, resolution, scaling, crop, histogram matching, uint8, display
order) is :mod:`napari_mrisynth.evaluation.presentation`, which the automated Turing test
shares. The prepared arrays live in the study's cache folder as ``<volume id>.npy``; the
database records each file's SHA-256 and a session refuses a file that does not match it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_mrisynth.evaluation.presentation import Presentation, StudyGrid, volume_seed
from napari_mrisynth.models.card import sha256_file
from napari_mrisynth.turing.store import StudyError
from napari_mrisynth.volume import Volume


def prepare_study_volumes(
    sources: Sequence[tuple[str, Volume]],
    cache: str | Path,
    *,
    spacing: float,
    resolution: float | None = None,
    native: float | None = None,
    device: Any = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[StudyGrid, dict[str, str]]:
    """Prepare ``(volume id, volume)`` pairs identically into ``cache/<id>.npy``.

    ``spacing`` (mm) is the voxel size shown; ``resolution`` (mm), when coarser, the
    effective resolution every volume is brought to first (asked for only; the study
    records it); ``native`` the real scans' own resolution, for the record.

    Returns
    -------
    (StudyGrid, dict)
        The grid, and volume id -> SHA-256 of its prepared file.
    """
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    presentation = Presentation(spacing, resolution, native=native, device=device)
    total = 2 * len(sources)
    # The study's intensity distribution: the mean of every volume's sorted head voxels
    # (the head is the same region of the same grid for every volume, so same length).
    reference = np.zeros(int(presentation.head.sum()), dtype=np.float64)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".scaled-") as scratch:
        for done, (volume_id, volume) in enumerate(sources, 1):
            try:
                image = presentation.on_grid(volume)
            except ValueError as exc:
                raise StudyError(str(exc)) from exc
            reference += presentation.sorted_head(image)
            np.save(Path(scratch) / f"{volume_id}.npy", image)
            if progress is not None:
                progress(done, total)
        reference /= len(sources)
        digests = {}
        for done, (volume_id, _) in enumerate(sources, len(sources) + 1):
            image = np.load(Path(scratch) / f"{volume_id}.npy")
            display = presentation.shown(image, reference, volume_seed(volume_id))
            target = cache / f"{volume_id}.npy"
            partial = cache / f".{volume_id}.{os.getpid()}.partial.npy"
            np.save(partial, display)
            partial.replace(target)
            digests[volume_id] = sha256_file(target)
            if progress is not None:
                progress(done, total)
    return presentation.study_grid(display.shape), digests


def load_prepared(cache: str | Path, volume_id: str, sha256: str) -> np.ndarray:
    """A prepared volume, after checking its file against the digest the study recorded."""
    path = Path(cache) / f"{volume_id}.npy"
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise StudyError(f"{path}: prepared volume missing ({exc.strerror})") from exc
    if hashlib.sha256(raw).hexdigest() != sha256:
        raise StudyError(f"{path}: prepared volume changed since the study was created")
    import io

    return np.load(io.BytesIO(raw), allow_pickle=False)
