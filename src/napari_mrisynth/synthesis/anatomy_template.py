"""The anatomy-first generator's template (steps 1 and 2 of
:mod:`napari_mrisynth.synthesis.anatomy`): fields on the model grid and their node grids,
diffeomorphic demons, the unbiased groupwise template with each scan's velocity field, the
template's volume-matched label map, and the depth and distance maps the sampler thins,
grows and shrinks structures by.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from napari_mrisynth.anatomy.deform import exponentiate
from napari_mrisynth.anatomy.labels import BRAIN_LABELS, CORTICAL_GM_LABELS, LABEL_IDS
from napari_mrisynth.models.anatomy_generator import deep_tissue


@dataclass
class AnatomyOptions:
    """How the anatomy-first generator is fitted (``mrisynth train anatomy``'s options)."""

    node_mm: float = 6.0
    registration_mm: float = 4.0
    rounds: int = 3
    demons_iterations: tuple[int, int] = (40, 40)
    demons_sigma: float = 1.5
    variance: float = 0.95
    shape_model: str = "auto"
    fine_subjects: int = 6
    vae_epochs: int = 300


# -- geometry on the model grid (identity direction, voxels z, y, x; fields (3, z, y, x) mm x,y,z)
def warp(image: np.ndarray, displacement: np.ndarray, spacing: float, order: int) -> np.ndarray:
    """``image`` sampled at ``x + displacement(x)`` (mm) for every voxel x; beyond the grid,
    its edge voxels go on (the neck runs on out of the bottom of the grid: padding with air
    would cut it off the warped scans and the template)."""
    index = np.indices(image.shape, dtype=np.float32)
    index += displacement[::-1] / np.float32(spacing)
    return ndi.map_coordinates(image, index, order=order, mode="nearest")


def node_shape(shape: Sequence[int], step: int) -> tuple[int, ...]:
    return tuple(-(-(int(n) - 1) // step) + 1 for n in shape)


def to_nodes(displacement: np.ndarray, step: int, shape: Sequence[int]) -> np.ndarray:
    """A voxel field smoothed to the node grid's scale and sampled at its nodes."""
    nodes = node_shape(displacement.shape[1:], step)
    smooth = [ndi.gaussian_filter(c, step / 2.0, mode="nearest") for c in displacement]
    index = np.stack(np.meshgrid(*(np.arange(n) * step for n in nodes), indexing="ij"))
    index = np.minimum(index, np.array(displacement.shape[1:])[:, None, None, None] - 1)
    return np.stack([ndi.map_coordinates(c, index, order=1, mode="nearest") for c in smooth])


def to_voxels(field_nodes: np.ndarray, step: int, shape: Sequence[int]) -> np.ndarray:
    """A node-grid field (node k at voxel k * step) interpolated at every voxel."""
    index = np.indices(tuple(shape), dtype=np.float32) / np.float32(step)
    return np.stack([ndi.map_coordinates(c, index, order=1, mode="nearest") for c in field_nodes])


def logarithm(displacement: np.ndarray, step_mm: float, iterations: int = 6) -> np.ndarray:
    """The stationary velocity field whose exponential is ``id + displacement`` (fixed point
    ``v <- v + (u - (exp(v) - id))``, exact for the smooth fields of a coarse grid)."""
    velocity = displacement.copy()
    for _ in range(iterations):
        velocity += displacement - exponentiate(velocity, step_mm, squarings=5)
    return velocity


# -- registration --------------------------------------------------------------------------
def _sitk(array: np.ndarray, spacing: float):
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(array, dtype=np.float32))
    image.SetSpacing([float(spacing)] * 3)
    return image


def demons(fixed: np.ndarray, moving: np.ndarray, spacing: float, options: AnatomyOptions,
           *, level_mm: float | None = None, sigma: float | None = None) -> np.ndarray:  # fmt: skip
    """Displacement (3, z, y, x) mm mapping ``fixed``'s voxels into ``moving`` (SimpleITK
    diffeomorphic demons, coarse to fine over two levels ending at ``level_mm``)."""
    import SimpleITK as sitk

    finest = max(1, int(round((level_mm or options.registration_mm) / spacing)))
    fixed_image, moving_image = _sitk(fixed, spacing), _sitk(moving, spacing)
    registration = sitk.DiffeomorphicDemonsRegistrationFilter()
    registration.SetStandardDeviations(sigma or options.demons_sigma)
    field = None
    for shrink, iterations in zip((2 * finest, finest), options.demons_iterations, strict=True):
        f = sitk.Shrink(fixed_image, [shrink] * 3) if shrink > 1 else fixed_image
        m = sitk.Shrink(moving_image, [shrink] * 3) if shrink > 1 else moving_image
        registration.SetNumberOfIterations(int(iterations))
        if field is None:
            field = registration.Execute(f, m)
        else:
            field = sitk.Resample(field, f, sitk.Transform(), sitk.sitkLinear, 0,
                                  sitk.sitkVectorFloat64)  # fmt: skip
            field = registration.Execute(f, m, field)
    full = sitk.Resample(field, fixed_image, sitk.Transform(), sitk.sitkLinear, 0,
                         sitk.sitkVectorFloat64)  # fmt: skip
    return np.moveaxis(sitk.GetArrayFromImage(full), -1, 0).astype(np.float32)


def groupwise_template(images: Sequence[np.ndarray], spacing: float, options: AnatomyOptions,
                       progress: Callable[[str, int, int], None] | None = None,
                       ) -> tuple[np.ndarray, list[np.ndarray], dict[str, Any]]:  # fmt: skip
    """The unbiased template and each scan's velocity field (node grid), see step 1."""
    step = max(1, int(round(options.node_mm / spacing)))
    node_mm = step * spacing
    template = np.mean(images, axis=0)
    velocities: list[np.ndarray] = []
    history = []
    for round_number in range(options.rounds):
        velocities = []
        for k, image in enumerate(images):
            u = demons(template, image, spacing, options)
            velocities.append(logarithm(to_nodes(u, step, image.shape), node_mm))
            if progress is not None:
                progress("groupwise registration", round_number * len(images) + k + 1,
                         options.rounds * len(images))  # fmt: skip
        mean = np.mean(velocities, axis=0)
        velocities = [v - mean for v in velocities]
        warped = [warp(image, to_voxels(exponentiate(v, node_mm), step, image.shape), spacing, 1)
                  for image, v in zip(images, velocities, strict=True)]  # fmt: skip
        template = np.mean(warped, axis=0)
        agreement = [np.corrcoef(template.ravel(), w.ravel())[0, 1] for w in warped]
        history.append({"round": round_number + 1,
                        "mean_velocity_mm": float(np.sqrt(np.mean(mean**2))),
                        "template_vs_scans_correlation": float(np.mean(agreement))})  # fmt: skip
    return template, velocities, {"rounds": history, "node_mm": node_mm, "node_step": step}


# -- template anatomy ----------------------------------------------------------------------
def volume_matched_labels(probabilities: np.ndarray, targets: np.ndarray,
                          iterations: int = 40) -> np.ndarray:  # fmt: skip
    """argmax_k(w_k P_k) with weights w_k scaled until each label's volume is ``targets[k]``.

    Averaging aligned label maps blurs boundaries and closes thin structures (sulci): a
    plain majority vote gives the mean shape too little of what the scans disagree on. The
    weights restore each label's mean volume where it is most probable.

    ``P_k`` of n scans takes only n + 1 values, so whole shells of voxels tie and flip
    together: the weights then oscillate without converging (measured: cortex 7 % short of
    its target after 200 steps). Ties are broken by the label's probability around the voxel
    (a tenth of P_k smoothed over a voxel) and, last, by a fixed sub-1/n dither; the steps
    shrink as the volumes settle. Volumes then match to about 0.1 %.
    """
    rng = np.random.default_rng(0)
    scores = np.empty_like(probabilities, dtype=np.float32)
    for k, p in enumerate(probabilities):
        scores[k] = p + 0.1 * ndi.gaussian_filter(p.astype(np.float32), 1.0)
        scores[k] += rng.uniform(0.0, 1e-3, p.shape).astype(np.float32)
    weights = np.ones(len(probabilities), np.float64)
    present = targets > 0
    for step in range(iterations):
        labels = np.argmax(scores * weights[:, None, None, None].astype(np.float32), axis=0)
        counts = np.bincount(labels.ravel(), minlength=len(probabilities)).astype(np.float64)
        ratio = np.where(present, (targets + 1.0) / (counts + 1.0), 1.0)
        weights *= ratio ** (0.5 / (1.0 + step / 10.0))
    weighted = scores * weights[:, None, None, None].astype(np.float32)
    return np.argmax(weighted, axis=0).astype(np.uint8)


def _depth_dither(shape: Sequence[int], spacing: float, seed: int) -> np.ndarray:
    """A fixed, smooth dither in [0, spacing) mm per voxel (seeded): subtracted from a
    distance map, it makes whole-voxel distances continuous."""
    from scipy import special

    noise = np.random.default_rng(seed).standard_normal(tuple(shape)).astype(np.float32)
    smooth = ndi.gaussian_filter(noise, 1.0)
    return special.ndtr(smooth / smooth.std()).astype(np.float32) * np.float32(spacing)


def cortex_depths(labels: np.ndarray, spacing: float) -> dict[str, np.ndarray]:
    """Depth of cortical grey matter from its outer surface, depth of sulcal CSF from the
    cortex, and the nearest cortical label of each sulcal CSF voxel (mm; 0 elsewhere).

    Depths are continuous, not whole voxels: each voxel's distance minus a fixed, smooth
    dither of up to one voxel, so that a cortex thinned by a fraction of a voxel loses that
    fraction of its outer layer (in smooth patches, as the simulator does) rather than all
    of it or none.
    """
    dither = _depth_dither(labels.shape, spacing, 0)
    cortex = np.isin(labels, CORTICAL_GM_LABELS)
    outside = ~np.isin(labels, (*CORTICAL_GM_LABELS, LABEL_IDS["white_matter"],
                                LABEL_IDS["deep_gm"], LABEL_IDS["cerebellum"]))  # fmt: skip
    gm_depth = ndi.distance_transform_edt(~outside, sampling=spacing).astype(np.float32)
    gm_depth = np.where(cortex, gm_depth - dither, 0.0).astype(np.float32)
    sulcal = labels == LABEL_IDS["sulcal_csf"]
    distance, index = ndi.distance_transform_edt(~cortex, sampling=spacing, return_indices=True)
    nearest = labels[tuple(index)].astype(np.uint8)
    csf_depth = np.where(sulcal, distance - dither, 0.0).astype(np.float32)
    nearest[~sulcal] = 0
    return {"gm_depth": gm_depth, "csf_depth": csf_depth, "nearest_cortex": nearest}


def surface_distances(labels: np.ndarray, value: int, neighbours: Sequence[int], spacing: float,
                      seed: int) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Signed distance from label ``value``'s surface (mm: > 0 outside, < 0 inside),
    dithered as :func:`cortex_depths` so that a fraction of a voxel of growth is a fraction
    of the layer; and, inside, the label of the nearest voxel of ``neighbours`` (what the
    structure gives back when it shrinks)."""
    near = np.isin(labels, list(neighbours))
    inside = labels == value
    if not inside.any():
        return np.full(labels.shape, 1e3, np.float32), np.zeros(labels.shape, np.uint8)
    dither = _depth_dither(labels.shape, spacing, seed)
    outward = ndi.distance_transform_edt(~inside, sampling=spacing)
    depth = ndi.distance_transform_edt(inside, sampling=spacing)
    floor = np.float32(1e-3)
    signed = np.where(inside, -np.maximum(depth - dither, floor),
                      np.maximum(outward - dither, floor)).astype(np.float32)  # fmt: skip
    neighbour = np.zeros(labels.shape, np.uint8)
    if near.any():
        index = ndi.distance_transform_edt(~near, sampling=spacing, return_distances=False,
                                           return_indices=True)  # fmt: skip
        neighbour = np.where(inside, labels[tuple(index)], 0).astype(np.uint8)
    return signed, neighbour


def ventricle_distances(labels: np.ndarray, spacing: float) -> dict[str, np.ndarray]:
    """:func:`surface_distances` of the lateral ventricles, which grow into (and give back
    to) the deep tissue around them
    (:func:`~napari_mrisynth.models.anatomy_generator.deep_tissue`), never the cortex."""
    ventricle = LABEL_IDS["lateral_ventricles"]
    deep = deep_tissue(BRAIN_LABELS, CORTICAL_GM_LABELS, LABEL_IDS["sulcal_csf"], ventricle)
    signed, neighbour = surface_distances(labels, ventricle, deep, spacing, 1)
    return {"ventricle_distance": signed, "ventricle_neighbour": neighbour}


def white_distances(labels: np.ndarray, spacing: float) -> dict[str, np.ndarray]:
    """:func:`surface_distances` of the white matter, which grows into (and gives back to)
    the cortical grey matter around it."""
    signed, neighbour = surface_distances(labels, LABEL_IDS["white_matter"],
                                          CORTICAL_GM_LABELS, spacing, 2)  # fmt: skip
    return {"white_distance": signed, "white_neighbour": neighbour}
