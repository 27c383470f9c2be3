"""Preprocessing: bring a scan into a model's space and its outputs back, exactly.

check_input -> align_to_reference (affine, to the template head) -> to_model_grid
-> normalise_intensity -> [model] -> from_model_grid (the inverse transform)
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_mrisynth.preprocess.alignment import Alignment, align_to_reference
from napari_mrisynth.preprocess.checks import check_input
from napari_mrisynth.preprocess.grid import (
    DEFAULT_MODEL_SPACING_MM,
    ModelGrid,
    default_model_grid,
    from_model_grid,
    to_model_grid,
)
from napari_mrisynth.preprocess.intensity import normalise_intensity
from napari_mrisynth.preprocess.reference import ReferenceHead, reference_head
from napari_mrisynth.volume import Volume

#: Voxels the brain mask grows by (model grid voxels), so atrophy at its edge stays visible.
BRAIN_MASK_DILATION = 2


@dataclass
class Prepared:
    """A scan on a model's grid, ready for the network, and how it got there."""

    image: np.ndarray
    grid: ModelGrid
    alignment: Alignment
    brain_mask: np.ndarray | None = None
    timings: dict[str, float] = field(default_factory=dict)


@functools.lru_cache(maxsize=8)
def reference_on_grid(grid: ModelGrid) -> tuple[np.ndarray, np.ndarray]:
    """The reference head mask and dilated brain mask on ``grid`` (uint8 each)."""
    from scipy import ndimage as ndi

    reference = reference_head(grid.spacing[0])
    identity = Alignment.identity()
    labels = to_model_grid(reference.labels, grid, identity, order=0)
    brain = to_model_grid(reference.brain_mask, grid, identity, order=0).astype(bool)
    brain = ndi.binary_dilation(brain, iterations=BRAIN_MASK_DILATION)
    return (labels > 0).astype(np.uint8), brain.astype(np.uint8)


def prepare(
    volume: Volume,
    spec: Any,
    *,
    device: Any = None,
    source: str | None = None,
    alignment: Alignment | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Prepared:
    """Check, align, resample and normalise a scan for a model whose input is ``spec``.

    Parameters
    ----------
    volume : Volume
        The scan as loaded (any orientation; skull and neck included).
    spec : InputSpec
        The model card's ``input``.
    device : torch device, optional
        Where to resample (the model's device).
    source : str, optional
        File or folder name for error messages.
    alignment : Alignment, optional
        Reuse a known alignment (e.g. from a segmentation of the same scan).

    Returns
    -------
    Prepared
        ``image`` float32 on the model grid, the grid, the alignment, the brain mask when
        the card asks for one, and seconds per stage.
    """
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    volume = volume.compute()
    check_input(volume, modality=spec.modality, source=source)
    timings["check"] = time.perf_counter() - clock
    grid = ModelGrid.from_input_spec(spec)
    reference = reference_head(grid.spacing[0])
    clock = time.perf_counter()
    if alignment is None:
        alignment = align_to_reference(volume, reference.t1, method=spec.alignment)
    timings["align"] = time.perf_counter() - clock
    clock = time.perf_counter()
    image = to_model_grid(volume, grid, alignment, order=1, device=device)
    timings["resample"] = time.perf_counter() - clock
    clock = time.perf_counter()
    head, brain = reference_on_grid(grid)
    norm = dict(spec.normalisation)
    method = norm.pop("method", "percentile")
    mask = head.astype(bool) & (image > 0)
    image = normalise_intensity(image, method, mask=mask if mask.any() else None, **norm)
    brain_mask = None
    if spec.brain_mask:
        brain_mask = brain
        image = image * brain_mask
    timings["normalise"] = time.perf_counter() - clock
    if progress is not None:
        progress(1, 1)
    return Prepared(image, grid, alignment, brain_mask, timings)


__all__ = [
    "DEFAULT_MODEL_SPACING_MM",
    "Alignment",
    "ModelGrid",
    "Prepared",
    "ReferenceHead",
    "align_to_reference",
    "check_input",
    "default_model_grid",
    "from_model_grid",
    "normalise_intensity",
    "prepare",
    "reference_head",
    "reference_on_grid",
    "to_model_grid",
]
