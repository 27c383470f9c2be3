"""Identical preparation of every volume in a study, so that only anatomy can tell them apart.

Each volume, real or synthetic, goes through the same steps:

1. onto the study grid: the default model grid at the study's voxel size (axis-aligned,
   the same box for everyone); real scans are affinely aligned to the reference head, a
   generator's output (already in model space) is only resampled. With a ``resolution``
   coarser than the grid (by default the coarsest voxel size among the study's volumes),
   every volume passes through a grid of that voxel size first, so a generator that works
   at 4 mm is not given away by the sharper 1 mm real scans beside it;
2. intensities scaled by the head's 0.5 and 99.5 percentiles (to 0 and 1, not clipped:
   a generator that saturates must not bring a block of equal values to the top of its
   histogram), then everything outside the dilated reference head set to 0 (the same crop
   for everyone);
3. exact histogram matching inside that head to the study's mean distribution (the mean of
   every volume's sorted head voxels): the k-th darkest voxel of every volume gets the same
   value, so histogram, mean, spread and percentiles are the same for every volume (equal
   values take the mean of theirs, so flat regions stay flat);
4. stored as uint8 (0-255, the matched values clipped to [0, 1]) in display order
   (anterior up, patient right on screen left).

The prepared arrays live in the study's cache folder as ``<volume id>.npy``; the database
records each file's SHA-256 and a session refuses a file that does not match it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_mrisynth.models.card import sha256_file
from napari_mrisynth.preprocess.grid import DEFAULT_MODEL_SPACING_MM
from napari_mrisynth.turing.store import StudyError
from napari_mrisynth.volume import Volume

#: Voxels of dilation around the reference head: scalp is kept, the far background is not.
HEAD_DILATION_VOXELS = 3


@dataclass(frozen=True)
class StudyGrid:
    """The one grid every prepared volume lies on, in display order (z, y, x)."""

    spacing: float
    shape: tuple[int, int, int]
    resolution: float

    def describe(self) -> dict[str, Any]:
        return {
            "spacing": self.spacing,
            "shape": list(self.shape),
            "resolution": self.resolution,
            "dtype": "uint8",
            "steps": [
                "default model grid at the study spacing (real scans aligned affinely to the "
                "reference head; generator outputs resampled)",
                f"every volume through a {self.resolution:g} mm grid first (equal resolution)",
                "percentile scaling (0.5, 99.5) in the head, not clipped",
                f"zero outside the reference head dilated by {HEAD_DILATION_VOXELS} voxels",
                "exact histogram matching to the study's mean distribution inside that head",
                "uint8, display order",
            ],
        }


def _head_region(grid: Any) -> np.ndarray:
    from scipy import ndimage as ndi

    from napari_mrisynth.preprocess import reference_on_grid

    head = reference_on_grid(grid)[0].astype(bool)
    return ndi.binary_dilation(head, iterations=HEAD_DILATION_VOXELS)


def _display(grid: Any, image: np.ndarray) -> np.ndarray:
    from napari_mrisynth.volume import to_display_volume

    return np.ascontiguousarray(np.asarray(to_display_volume(grid.volume(image)).data))


def _match(values: np.ndarray, reference: np.ndarray, seed: int) -> np.ndarray:
    """Exact histogram matching: the k-th smallest of ``values`` takes the k-th value of
    ``reference`` (sorted, the same length), equal values in a seeded random order.

    Breaking ties at random rather than giving them one value matters: a scan's block of
    exact zeros (outside its field of view) would otherwise stay a block of one value, which
    a histogram tells apart from a generator's faint background noise.
    """
    jitter = np.random.default_rng(seed).random(values.size)
    order = np.lexsort((jitter, values))
    out = np.empty(values.shape, dtype=np.float64)
    out[order] = reference
    return out


def _seed(volume_id: str) -> int:
    return int.from_bytes(hashlib.sha256(volume_id.encode()).digest()[:8], "little")


def native_resolution(volumes: Sequence[Volume]) -> float:
    """The coarsest voxel size (mm) among ``volumes``: the resolution they all share."""
    return float(max(np.max(np.asarray(v.spacing, dtype=float)) for v in volumes))


def _on_study_grid(volume: Volume, spec: Any, coarse: tuple[Any, Any] | None, grid: Any,
                   device: Any) -> np.ndarray:  # fmt: skip
    from napari_mrisynth.evaluation.common_grid import prepare_for
    from napari_mrisynth.preprocess import Alignment, to_model_grid

    if coarse is None:
        return prepare_for(volume, spec, device=device).image
    coarse_spec, coarse_grid = coarse
    image = prepare_for(volume, coarse_spec, device=device).image
    return to_model_grid(coarse_grid.volume(image), grid, Alignment.identity(), device=device)


def prepare_study_volumes(
    sources: Sequence[tuple[str, Volume]],
    cache: str | Path,
    *,
    spacing: float = DEFAULT_MODEL_SPACING_MM,
    resolution: float | None = None,
    device: Any = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[StudyGrid, dict[str, str]]:
    """Prepare ``(volume id, volume)`` pairs identically into ``cache/<id>.npy``.

    ``resolution`` (mm) is the effective resolution every volume is brought to (default:
    :func:`native_resolution` of the volumes); the grid's ``spacing`` is the voxel size
    shown.

    Returns
    -------
    (StudyGrid, dict)
        The grid, and volume id -> SHA-256 of its prepared file.
    """
    from napari_mrisynth.evaluation.common_grid import model_input_spec
    from napari_mrisynth.preprocess import default_model_grid

    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    grid = default_model_grid(float(spacing))
    spec = model_input_spec(float(spacing))
    if resolution is None:
        resolution = native_resolution([volume for _, volume in sources])
    resolution = max(float(resolution), float(spacing))
    coarse = None
    if resolution > float(spacing) + 1e-6:
        coarse = (model_input_spec(resolution), default_model_grid(resolution))
    head = _head_region(grid)
    total = 2 * len(sources)
    # The study's intensity distribution: the mean of every volume's sorted head voxels
    # (the head is the same region of the same grid for every volume, so same length).
    reference = np.zeros(int(head.sum()), dtype=np.float64)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".scaled-") as scratch:
        for done, (volume_id, volume) in enumerate(sources, 1):
            where = volume.metadata.get("source") or volume_id
            try:
                image = _on_study_grid(volume, spec, coarse, grid, device)
            except Exception as exc:  # the message must name the file, whatever failed
                raise StudyError(f"{where}: cannot be prepared for the study ({exc})") from exc
            # Not clipped before matching: a generator that saturates would otherwise bring
            # a block of equal values to the top of the histogram that real scans lack.
            image = np.asarray(image, dtype=np.float32)
            reference += np.sort(image[head], kind="stable")
            np.save(Path(scratch) / f"{volume_id}.npy", image)
            if progress is not None:
                progress(done, total)
        reference /= len(sources)
        digests = {}
        for done, (volume_id, _) in enumerate(sources, len(sources) + 1):
            image = np.load(Path(scratch) / f"{volume_id}.npy")
            out = np.zeros(image.shape, dtype=np.float64)
            out[head] = _match(image[head], reference, seed=_seed(volume_id))
            display = _display(grid, np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8))
            target = cache / f"{volume_id}.npy"
            partial = cache / f".{volume_id}.{os.getpid()}.partial.npy"
            np.save(partial, display)
            partial.replace(target)
            digests[volume_id] = sha256_file(target)
            if progress is not None:
                progress(done, total)
    shape = tuple(int(n) for n in display.shape)
    return StudyGrid(float(spacing), shape, resolution), digests  # type: ignore[arg-type]


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
