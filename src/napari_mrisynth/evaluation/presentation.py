"""Volumes prepared exactly as raters see them, so that only anatomy can tell them apart.

The visual Turing test (:mod:`napari_mrisynth.turing`) shows these arrays to raters; the
automated one (:mod:`.two_sample`) gives the same arrays to classifiers. Every volume, real
or synthetic, goes through the same steps:

1. onto the study grid: the default model grid at the study's voxel size (axis-aligned,
   the same box for everyone); real scans are affinely aligned to the reference head, a
   generator's output (already in model space) is only resampled. The voxel size defaults
   to the real scans' own (:func:`native_resolution`), so they are shown as sharp as they
   are. Only when asked (``resolution`` coarser than the grid) does every volume first pass
   through a grid of that voxel size, which hides a coarse generator's blur by blurring the
   real scans too; a study report states it;
2. intensities scaled by the head's 0.5 and 99.5 percentiles (to 0 and 1, not clipped:
   a generator that saturates must not bring a block of equal values to the top of its
   histogram), then everything outside the dilated reference head set to 0 (the same crop
   for everyone);
3. exact histogram matching inside that head to the set's mean distribution (the mean of
   every volume's sorted head voxels): the k-th darkest voxel of every volume gets the same
   value, so histogram, mean, spread and percentiles are the same for every volume (ties
   are broken in a seeded random order);
4. stored as uint8 (0-255, the matched values clipped to [0, 1]) in display order
   (anterior up, patient right on screen left).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_mrisynth.volume import Volume

#: Voxels of dilation around the reference head: scalp is kept, the far background is not.
HEAD_DILATION_VOXELS = 3


@dataclass(frozen=True)
class StudyGrid:
    """The one grid every prepared volume lies on, in display order (z, y, x).

    ``resolution`` is the effective resolution every volume was brought to (the grid's
    spacing unless a coarser one was asked for); ``native`` the real scans' own.
    """

    spacing: float
    shape: tuple[int, int, int]
    resolution: float
    native: float | None = None

    @property
    def degraded(self) -> bool:
        """True when the volumes were brought below the grid's (and the scans') resolution."""
        return self.resolution > self.spacing + 1e-6

    def describe(self) -> dict[str, Any]:
        steps = ["default model grid at the study spacing (real scans aligned affinely to "
                 "the reference head; generator outputs resampled)"]  # fmt: skip
        if self.degraded:
            steps.append(f"every volume through a {self.resolution:g} mm grid first (asked for: "
                         "real scans shown below their own resolution)")  # fmt: skip
        steps += [
            "percentile scaling (0.5, 99.5) in the head, not clipped",
            f"zero outside the reference head dilated by {HEAD_DILATION_VOXELS} voxels",
            "exact histogram matching to the set's mean distribution inside that head",
            "uint8, display order",
        ]
        return {"spacing": self.spacing, "shape": list(self.shape),
                "resolution": self.resolution, "native_resolution": self.native,
                "degraded": self.degraded, "dtype": "uint8", "steps": steps}  # fmt: skip


def native_resolution(volumes: Sequence[Volume]) -> float:
    """The coarsest voxel size (mm) among ``volumes``: the resolution they all share."""
    return float(max(np.max(np.asarray(v.spacing, dtype=float)) for v in volumes))


def volume_seed(name: str) -> int:
    """A volume's own seed for tie-breaking, from its id (stable across runs)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")


def match_histogram(values: np.ndarray, reference: np.ndarray, seed: int) -> np.ndarray:
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


class Presentation:
    """The preparation of one set of volumes (see the module docstring).

    Parameters
    ----------
    spacing : float
        Voxel size of the grid shown (mm).
    resolution : float, optional
        Effective resolution to bring every volume to first; None (the default) keeps the
        grid's own.
    native : float, optional
        The real scans' own resolution, for the record.
    device : optional
        Where resampling runs (torch device name).
    """

    def __init__(self, spacing: float, resolution: float | None = None, *,
                 native: float | None = None, device: Any = None):  # fmt: skip
        from scipy import ndimage as ndi

        from napari_mrisynth.evaluation.common_grid import model_input_spec
        from napari_mrisynth.preprocess import default_model_grid, reference_on_grid

        self.spacing = float(spacing)
        self.resolution = max(float(resolution or spacing), self.spacing)
        self.native = native
        self.device = device
        self.grid = default_model_grid(self.spacing)
        self.spec = model_input_spec(self.spacing)
        self.coarse = None
        if self.resolution > self.spacing + 1e-6:
            self.coarse = (model_input_spec(self.resolution), default_model_grid(self.resolution))
        head = reference_on_grid(self.grid)[0].astype(bool)
        self.head = ndi.binary_dilation(head, iterations=HEAD_DILATION_VOXELS)

    def on_grid(self, volume: Volume) -> np.ndarray:
        """Step 1, then the percentile scaling of step 2 (float32, the grid's order).

        Raises
        ------
        ValueError
            The volume cannot be brought onto the grid; the message names its source.
        """
        from napari_mrisynth.evaluation.common_grid import prepare_for
        from napari_mrisynth.preprocess import Alignment, to_model_grid

        where = volume.metadata.get("source") or volume.metadata.get("name") or "volume"
        try:
            if self.coarse is None:
                image = prepare_for(volume, self.spec, device=self.device).image
            else:
                coarse_spec, coarse_grid = self.coarse
                image = prepare_for(volume, coarse_spec, device=self.device).image
                image = to_model_grid(coarse_grid.volume(image), self.grid,
                                      Alignment.identity(), device=self.device)  # fmt: skip
        except Exception as exc:  # the message must name the file, whatever failed
            raise ValueError(f"{where}: cannot be prepared ({exc})") from exc
        # Not clipped before matching: a generator that saturates would otherwise bring a
        # block of equal values to the top of the histogram that real scans lack.
        return np.asarray(image, dtype=np.float32)

    def sorted_head(self, image: np.ndarray) -> np.ndarray:
        """The head's voxels of a scaled image, sorted: one term of the set's mean."""
        return np.sort(image[self.head], kind="stable")

    def unmatched(self, image: np.ndarray) -> np.ndarray:
        """Steps 2 and 4 without the histogram matching of step 3: the scaled head on the
        shown images' scale (0-255, float16, not clipped), display order. What a volume
        would look like to a classifier had the study not matched its histogram: set beside
        the shown images, it tells which differences the matching makes or hides."""
        return self._in_display_order((np.where(self.head, image, 0.0) * 255.0)
                                      .astype(np.float16))  # fmt: skip

    def shown(self, image: np.ndarray, reference: np.ndarray, seed: int) -> np.ndarray:
        """Steps 2-4: matched to ``reference`` (the set's mean sorted head), uint8, display
        order."""
        out = np.zeros(image.shape, dtype=np.float64)
        out[self.head] = match_histogram(image[self.head], reference, seed)
        return self._in_display_order(np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8))

    def _in_display_order(self, stored: np.ndarray) -> np.ndarray:
        """An array on the grid (the grid's order) in display order, contiguous."""
        from napari_mrisynth.volume import to_display_volume

        display = to_display_volume(self.grid.volume(stored)).data
        return np.ascontiguousarray(np.asarray(display))

    def study_grid(self, shape: tuple[int, ...]) -> StudyGrid:
        return StudyGrid(self.spacing, tuple(int(n) for n in shape), self.resolution,
                         self.native)  # type: ignore[arg-type]  # fmt: skip


def present_volumes(
    volumes: Sequence[Volume],
    *,
    spacing: float | None = None,
    resolution: float | None = None,
    native: float | None = None,
    names: Sequence[str] | None = None,
    device: Any = None,
    progress: Callable[[int, int], None] | None = None,
    unmatched: list[np.ndarray] | None = None,
) -> tuple[StudyGrid, list[np.ndarray]]:
    """Prepare ``volumes`` together, in memory, exactly as a study would show them.

    ``spacing`` defaults to ``native`` (the real scans' resolution) or, failing that, to
    :func:`native_resolution` of all volumes; ``names`` seed each volume's tie-breaking
    (as a study's volume ids do). A list given as ``unmatched`` receives every volume as
    :meth:`Presentation.unmatched` makes it (the same steps but the histogram matching),
    in the same order.

    Returns
    -------
    (StudyGrid, list of uint8 arrays in display order)
    """
    volumes = list(volumes)
    native = native or native_resolution(volumes)
    presentation = Presentation(spacing or native, resolution, native=native, device=device)
    names = list(names) if names is not None else [f"V{k + 1:03d}" for k in range(len(volumes))]
    total = 2 * len(volumes)
    scaled, reference = [], np.zeros(int(presentation.head.sum()), dtype=np.float64)
    for done, volume in enumerate(volumes, 1):
        scaled.append(presentation.on_grid(volume))
        reference += presentation.sorted_head(scaled[-1])
        if progress is not None:
            progress(done, total)
    reference /= len(volumes)
    shown = []
    for done, (name, image) in enumerate(zip(names, scaled, strict=True), len(volumes) + 1):
        shown.append(presentation.shown(image, reference, volume_seed(name)))
        if unmatched is not None:
            unmatched.append(presentation.unmatched(image))
        if progress is not None:
            progress(done, total)
    return presentation.study_grid(shown[0].shape), shown
