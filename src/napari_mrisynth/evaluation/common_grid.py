"""One grid for every volume of an evaluation: as they are, or aligned into model space.

The rule, the same for the image metrics (MS-SSIM, MMD) and the memorization audit:

* every volume already shares one grid (shape and geometry), as a generator's outputs and
  scans prepared by :func:`~napari_mrisynth.preprocess.prepare` do: use the voxels as they
  are, intensities scaled to [0, 1] by robust percentiles (0.5 and 99.5 over the head);
* otherwise bring each onto the default 2 mm model grid with ``prepare`` (affine alignment
  to the template head, resampling, the same percentile scaling); a volume that is already
  in model space (a generator's output) is resampled without registration.

The brain mask is the reference head's dilated brain mask on that grid
(:func:`~napari_mrisynth.preprocess.reference_on_grid`) when the grid lies in model space.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_mrisynth.preprocess.grid import DEFAULT_MODEL_SPACING_MM
from napari_mrisynth.volume import Volume


@dataclass
class CommonGrid:
    """Volumes on one grid, intensities in [0, 1], and how they got there."""

    images: list[np.ndarray]
    grid: Any  # ModelGrid
    brain_mask: np.ndarray
    method: str  # "as-is" or "aligned to the model grid"
    alignments: list[Any] = field(default_factory=list)  # per volume; None when as-is

    def describe(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "shape": list(self.grid.shape),
            "spacing_mm": list(self.grid.spacing),
            "brain_mask_voxels": int(self.brain_mask.sum()),
        }


def volume_digest(volume: Volume) -> str:
    """SHA-256 of a volume's voxels and geometry: the key under which work on it is reused."""
    digest = hashlib.sha256()
    data = np.ascontiguousarray(np.asarray(volume.compute().data))
    digest.update(f"{data.dtype.str}{data.shape}".encode())
    digest.update(data.tobytes())
    digest.update(np.round(volume.affine, 6).tobytes())
    return digest.hexdigest()


def model_input_spec(spacing: float = DEFAULT_MODEL_SPACING_MM) -> Any:
    """An ``InputSpec`` for the default model grid: affine alignment, percentile scaling."""
    from napari_mrisynth.models.card import InputSpec
    from napari_mrisynth.preprocess import default_model_grid

    return InputSpec(**default_model_grid(spacing).to_input_spec_fields())


def _on_grid(volume: Volume, spec: Any) -> bool:
    from napari_mrisynth.preprocess import ModelGrid

    grid = ModelGrid.from_input_spec(spec)
    return volume.shape == tuple(grid.shape) and np.allclose(volume.affine, grid.affine, atol=1e-4)


def in_model_space(volume: Volume, spec: Any) -> bool:
    """True for a volume already in the model space of ``spec``: on the spec's grid, on the
    default model grid of its own voxel size (a generator's grid), or saying so in
    ``metadata["space"]`` (set from a generator's sidecar)."""
    from napari_mrisynth.models.card import InputSpec
    from napari_mrisynth.preprocess import default_model_grid

    if volume.metadata.get("space") == spec.space or _on_grid(volume, spec):
        return True
    spacing = volume.spacing
    if not np.allclose(spacing, spacing[0]) or spec.space != InputSpec.space:
        return False
    own = InputSpec(**default_model_grid(float(spacing[0])).to_input_spec_fields())
    return _on_grid(volume, own)


def prepare_for(volume: Volume, spec: Any, *, device: Any = None, alignment: Any = None) -> Any:
    """``prepare(volume, spec)``, skipping the registration when it is known or not needed.

    A volume already in model space (see :func:`in_model_space`) gets the identity
    alignment: it is only resampled, never registered.
    """
    from napari_mrisynth.preprocess import Alignment, prepare

    if alignment is None and in_model_space(volume, spec):
        alignment = Alignment.identity()
    name = volume.metadata.get("source") or volume.metadata.get("name")
    return prepare(volume, spec, device=device, source=name, alignment=alignment)


def share_one_grid(volumes: Sequence[Volume]) -> bool:
    """True when every volume has the first one's shape and geometry."""
    return all(v.same_geometry(volumes[0]) for v in volumes[1:])


def _grid_of(volume: Volume) -> Any:
    from napari_mrisynth.preprocess import ModelGrid

    return ModelGrid(
        tuple(float(v) for v in volume.spacing),
        volume.shape,
        tuple(float(v) for v in volume.origin),
        tuple(float(v) for v in volume.direction.reshape(-1)),
    )


def percentile_scaled(data: np.ndarray) -> np.ndarray:
    """``data`` scaled to [0, 1] by its 0.5th and 99.5th percentiles, clipped: how a set's
    volumes are scaled for its metrics."""
    from napari_mrisynth.preprocess import normalise_intensity

    return np.clip(normalise_intensity(data, "percentile", lower=0.5, upper=99.5), 0.0, 1.0)


def _head_mask(images: Sequence[np.ndarray]) -> np.ndarray:
    """Voxels bright in the mean image: the heads, when no reference mask fits the grid."""
    mean = np.mean(images, axis=0)
    return (mean > 0.1 * float(np.percentile(mean, 99.0))).astype(np.uint8)


def bring_to_common_grid(
    volumes: Sequence[Volume],
    *,
    device: Any = None,
    progress: Callable[[int, int], None] | None = None,
) -> CommonGrid:
    """Put ``volumes`` on one grid by the rule in this module's docstring.

    Volumes that share a grid outside model space (the reference brain mask misses it)
    get the bright voxels of their mean image as the mask instead.
    """
    from napari_mrisynth.preprocess import default_model_grid, reference_on_grid

    total = len(volumes)
    if share_one_grid(volumes):
        images = []
        for done, volume in enumerate(volumes, 1):
            images.append(percentile_scaled(np.asarray(volume.compute().data, dtype=np.float32)))
            if progress is not None:
                progress(done, total)
        grid = _grid_of(volumes[0])
        brain = reference_on_grid(grid)[1]
        if brain.sum() < 0.01 * brain.size:
            brain = _head_mask(images)
        return CommonGrid(images, grid, brain, "as-is", [None] * total)
    spec = model_input_spec()
    images, alignments = [], []
    done_before: dict[str, tuple[np.ndarray, Any]] = {}  # one volume in both sets: once
    for done, volume in enumerate(volumes, 1):
        key = volume_digest(volume)
        if key not in done_before:
            prepared = prepare_for(volume, spec, device=device)
            done_before[key] = (np.clip(prepared.image, 0.0, 1.0), prepared.alignment)
        images.append(done_before[key][0])
        alignments.append(done_before[key][1])
        if progress is not None:
            progress(done, total)
    grid = default_model_grid(DEFAULT_MODEL_SPACING_MM)
    return CommonGrid(images, grid, reference_on_grid(grid)[1], "aligned to the model grid",
                      alignments)  # fmt: skip
