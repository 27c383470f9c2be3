"""Fitting the anatomy-first generator (:mod:`napari_mrisynth.models.anatomy_generator`).

From the training scans on the model grid at their own resolution (images normalised,
label maps beside them):

1. **Groupwise template.** SimpleITK's diffeomorphic demons registers every scan to the
   current mean at a coarse resolution (4 mm by default, then half of it: the fields are
   smooth); each field becomes a stationary velocity field on a 6 mm node grid (a numerical
   logarithm), the mean velocity is removed (an unbiased template, no scan favoured), and
   the mean of the scans warped by ``exp(v)`` is the next template. Three rounds.
2. **Template anatomy.** The scans' label maps, warped the same way, give a probability per
   label; the template's label map puts every label where it is most probable, in the scans'
   mean proportions (a volume-matched maximum a posteriori labelling), so its boundaries are
   sharp and its sulci stay open although the scans disagree on their exact places. The
   cortex's depth maps and the mean intensity structure the labels do not explain follow.
3. **Encoding.** Per scan: its velocity field, the share of its brain each cortical
   grey-matter label, the lateral ventricles and the white matter hold (in its own space),
   tissue
   intensities, a quadratic bias field, noise level
   and field of view; per cohort: the point spread, the template's intensity structure
   (super-resolved from every scan's residual, :func:`super_resolved`), the tissue texture and
   the fine folding left after the coarse fields (measured by a fine registration of a few
   scans, raised to a strain limit); the coarse shape model's spread is then calibrated so
   that sampled heads are as varied as the training scans (:func:`calibrate_diversity`).
4. **Models.** A conditional Gaussian (regression on diagnosis, age, sex, then principal
   components) over the velocity fields, compared on the validation scans with a conditional
   VAE on the same field grid trained with condition dropout for classifier-free guidance;
   a conditional Gaussian (Ledoit-Wolf covariance) over the anatomy-and-appearance vectors.
5. **Condition.** A sampled head is given exactly the regional shares it draws (the
   thinning and ventricular growth that reach them are found after its warp), so sampled
   bvFTD and control heads differ as the training scans do, with their spread; the fit
   checks it on paired samples (:func:`condition_check`).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from napari_mrisynth.anatomy.deform import exponentiate
from napari_mrisynth.anatomy.labels import BRAIN_LABELS, CORTICAL_GM_LABELS, LABEL_IDS, LABELS
from napari_mrisynth.anatomy.template import block_mean
from napari_mrisynth.models.anatomy_generator import (
    BIAS_TERMS,
    SCALARS,
    TONE_KNOTS,
    appearance_layout,
    deep_tissue,
)
from napari_mrisynth.models.conditions import Condition
from napari_mrisynth.preprocess.grid import DEFAULT_MODEL_SPACING_MM

#: Brain tissue labels (grey and white matter, deep grey, cerebellum): where the bias is fitted.
TISSUE_LABELS = tuple(range(1, 12))
#: Candidate point-spread sigmas (voxels) of the rendered labels.
PSF_CANDIDATES = (0.0, 0.35, 0.5, 0.7, 0.9, 1.2)
#: Labels that hold several tissues of clearly different intensity in one scan (skull
#: tables and diploe; skin, fat and muscle; the orbits): rendered as up to three classes.
MIXED_LABELS = (LABEL_IDS["bone"], LABEL_IDS["soft_tissue"], LABEL_IDS["eyes"],
                LABEL_IDS["extracerebral_csf"], LABEL_IDS["spinal_cord"])  # fmt: skip
#: Candidate texture correlation sigmas (voxels).
TEXTURE_CANDIDATES = (0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
#: The largest RMS strain (derivative of the velocity, per axis) of the sampled fine folding.
#: Folding beyond it squeezes the cortical ribbon into islands inside the white matter (seen
#: at about 0.4 at 2 mm and 0.5 at 1 mm); a simulated cohort's own is 0.12-0.19.
FINE_STRAIN_LIMIT = 0.2
#: Candidate spreads (scales of the shape model's components) of the diversity calibration.
SPREAD_CANDIDATES = (1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.8, 2.0)


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


@dataclass
class Fitted:
    """What fitting produced: the network's arguments and buffers, and a report."""

    args: dict[str, Any]
    buffers: dict[str, np.ndarray]
    report: dict[str, Any] = field(default_factory=dict)
    velocities: dict[str, np.ndarray] = field(default_factory=dict)


# -- geometry on the model grid (identity direction, voxels z, y, x; fields (3, z, y, x) mm x,y,z)
def _warp(image: np.ndarray, displacement: np.ndarray, spacing: float, order: int) -> np.ndarray:
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
        warped = [_warp(image, to_voxels(exponentiate(v, node_mm), step, image.shape), spacing, 1)
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


# -- appearance ----------------------------------------------------------------------------
def bias_terms(shape: Sequence[int]) -> np.ndarray:
    """(9, z, y, x): x, y, z, x², y², z², xy, xz, yz over the grid scaled to [-1, 1]."""
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n, dtype=np.float32) for n in shape),
                          indexing="ij")  # fmt: skip
    return np.stack([x, y, z, x * x, y * y, z * z, x * y, x * z, y * z])


def appearance_of(image: np.ndarray, labels: np.ndarray, terms: np.ndarray, classes: int,
                  psf: float | tuple[float, float],
                  class_label: np.ndarray) -> dict[str, Any]:  # fmt: skip
    """Tissue intensities (median per label, eroded), a quadratic log-bias field, the noise
    level (Rayleigh background; NaN without air, and the fit then gives the scan the other
    scans' median, or 0.02) and the field of view (nonzero extent) of one scan on the model
    grid. (Measuring the noise in the white matter instead was tried and made the set
    figures worse: docs/synthesis.md.)"""
    count = classes
    bias = np.zeros(BIAS_TERMS)
    intensity = np.full(count, np.nan)
    for _ in range(2):
        corrected = image / np.exp(np.tensordot(bias, terms, axes=1))
        for value in range(1, count):
            mask = labels == value
            core = ndi.binary_erosion(mask)
            use = core if core.sum() >= 20 else mask
            if use.sum() >= 5:
                intensity[value] = float(np.median(corrected[use]))
        spread = (psf, psf) if isinstance(psf, float | int) else psf
        rendered = render(intensity, labels, class_label, spread)
        # brain tissue only: one intensity per label renders it well, whereas a head label
        # (soft tissue: skin, fat, muscle) would pass its own layout off as bias
        fit = np.isin(labels, TISSUE_LABELS) & (rendered > 0.1) & (image > 0.05)
        design = np.column_stack([np.ones(int(fit.sum())), terms[:, fit].T])
        solution, *_ = np.linalg.lstsq(design, np.log(image[fit] / rendered[fit]), rcond=None)
        bias = bias + solution[1:]
    background = air(image, labels)
    noise, noise_blur = float("nan"), float("nan")  # unknown without air: the cohort's
    intensity[0] = 0.0
    if background.sum() >= 200:
        # the median of Rayleigh-distributed air is sigma * sqrt(2 ln 2)
        noise = float(np.median(image[background]) / math.sqrt(2.0 * math.log(2.0)))
        noise_blur = noise_correlation(image, background)
    nonzero = image > 0
    fov = []
    for axis in range(3):
        hits = np.flatnonzero(nonzero.any(axis=tuple(a for a in range(3) if a != axis)))
        n = image.shape[axis] - 1
        fov += [hits[0] / n, hits[-1] / n] if hits.size else [0.0, 1.0]
    return {"intensity": intensity, "bias": bias, "noise": noise, "fov": fov,
            "noise_blur": noise_blur}  # fmt: skip


def air(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Voxels of pure noise: air more than 2 voxels from the head and inside the field of
    view (its edge, interpolated zeros, left out)."""
    far = ndi.distance_transform_edt(labels == 0) > 2
    inside = ndi.binary_erosion(image > 0, iterations=2)
    return far & inside


def noise_correlation(image: np.ndarray, background: np.ndarray) -> float:
    """How much the scan's noise is smoothed (Gaussian sigma, voxels), from the correlation
    of neighbouring air voxels (resampling onto the grid correlates it): a white field
    blurred by sigma correlates as exp(-1 / (4 sigma^2)) at one voxel."""
    values = image - image[background].mean()
    correlations = []
    for axis in range(3):
        a = [slice(None)] * 3
        b = [slice(None)] * 3
        a[axis], b[axis] = slice(0, -1), slice(1, None)
        both = background[tuple(a)] & background[tuple(b)]
        if both.sum() > 100:
            x, y = values[tuple(a)][both], values[tuple(b)][both]
            correlations.append(float(np.corrcoef(x, y)[0, 1]))
    rho = float(np.mean(correlations)) if correlations else 0.0
    return float(math.sqrt(-1.0 / (4.0 * math.log(rho)))) if 0.01 < rho < 0.99 else 0.0


def render(
    intensity: np.ndarray, classes: np.ndarray, class_label: np.ndarray, psf: tuple[float, float]
) -> np.ndarray:
    """Tissue intensities of a class map through the point spreads of the brain and of the
    head around it (the simulated or scanned head's layers can be sharper than the brain)."""
    brain = np.isin(class_label[classes], BRAIN_LABELS)
    values = np.nan_to_num(intensity)[classes]
    inside = np.where(brain, values, 0.0)
    return ndi.gaussian_filter(inside, psf[0]) + ndi.gaussian_filter(values - inside, psf[1])


def fit_psf(images: Sequence[np.ndarray], labels: Sequence[np.ndarray],
            looks: Sequence[dict[str, Any]], terms: np.ndarray,
            class_label: np.ndarray) -> tuple[tuple[float, float], dict]:  # fmt: skip
    """The point spreads (voxels) of brain and head that best render the scans from their
    own labels (mean squared error in each region)."""
    errors: dict[str, list[float]] = {"brain": [], "head": []}
    for sigma in PSF_CANDIDATES:
        total = {"brain": 0.0, "head": 0.0}
        for image, label, look in zip(images, labels, looks, strict=True):
            bias = np.exp(np.tensordot(look["bias"], terms, axes=1))
            rendered = render(look["intensity"], label, class_label, (sigma, sigma))
            base = class_label[label]
            for region, mask in (("brain", np.isin(base, BRAIN_LABELS)),
                                 ("head", (base > 0) & ~np.isin(base, BRAIN_LABELS))):  # fmt: skip
                total[region] += float(np.mean((image[mask] / bias[mask] - rendered[mask]) ** 2))
        for region in total:
            errors[region].append(total[region] / len(images))
    best = tuple(float(PSF_CANDIDATES[int(np.argmin(errors[r]))]) for r in ("brain", "head"))
    return best, {r: dict(zip(map(str, PSF_CANDIDATES), e, strict=True))
                  for r, e in errors.items()}  # fmt: skip


def _high_pass_share(sigma: float, size: int) -> float:
    """Share of a unit-variance field smoothed by ``sigma`` voxels (0: white) that survives
    subtracting its ``size``-voxel box mean (computed once on a random field)."""
    field = np.random.default_rng(0).standard_normal((48, 48, 48))
    if sigma > 0:
        field = ndi.gaussian_filter(field, sigma)
    field /= field.std()
    inner = (slice(8, -8),) * 3
    return float(np.var((field - ndi.uniform_filter(field, size))[inner]))


def texture_of(images: Sequence[np.ndarray], labels: Sequence[np.ndarray],
               looks: Sequence[dict[str, Any]]) -> tuple[float, float]:  # fmt: skip
    """RMS (fraction of the tissue intensity) and correlation sigma (voxels) of the tissue
    texture: the high-pass variance inside grey and white matter at two scales (3 and 5
    voxel box means removed), less the noise's share, explained by a smooth random field."""
    shares = {s: (_high_pass_share(s, 3), _high_pass_share(s, 5)) for s in TEXTURE_CANDIDATES}
    white = (_high_pass_share(0.0, 3), _high_pass_share(0.0, 5))
    fits = []
    for image, label, look in zip(images, labels, looks, strict=True):
        core = ndi.binary_erosion(np.isin(label, TISSUE_LABELS), iterations=2)
        core &= ndi.binary_erosion(label == ndi.median_filter(label, 3), iterations=2)
        tissue = np.nan_to_num(look["intensity"])[label]
        use = core & (tissue > 0.1)
        if use.sum() < 500:
            continue
        relative = image / np.maximum(tissue, 1e-3)
        noise = float(np.mean((look["noise"] / tissue[use]) ** 2))
        observed = [float(np.var((relative - ndi.uniform_filter(relative, n))[use]))
                    for n in (3, 5)]  # fmt: skip
        texture = [max(o - noise * w, 1e-10) for o, w in zip(observed, white, strict=True)]
        fits.append(texture)
    if not fits:
        return 0.0, 1.0
    texture = np.median(fits, axis=0)
    best = min(TEXTURE_CANDIDATES, key=lambda s: abs(
        texture[1] / texture[0] - shares[s][1] / shares[s][0]))  # fmt: skip
    return float(np.sqrt(texture[0] / shares[best][0])), float(best)


def _smooth_field(shape: Sequence[int], sigma: float, seed: int) -> np.ndarray:
    field = np.random.default_rng(seed).standard_normal(tuple(shape)).astype(np.float32)
    field = ndi.gaussian_filter(field, sigma) if sigma > 0 else field
    return field / field.std()


def calibrate_rendering(images: Sequence[np.ndarray], labels: Sequence[np.ndarray],
                        looks: Sequence[dict[str, Any]], structures: Sequence[np.ndarray],
                        terms: np.ndarray, class_label: np.ndarray, spacing: float,
                        start: dict[str, float]) -> tuple[dict[str, float], dict]:  # fmt: skip
    """Point spreads and texture that make a scan rendered from its own labels look like it.

    Each scan is re-rendered (its tissue intensities, bias, noise level and the template's
    structure brought back to it) under candidate settings, and the texture statistics of
    the automated Turing test (:func:`~napari_mrisynth.evaluation.two_sample.texture_features`:
    gradient and Laplacian distributions, local spread, spectral bands, the scalp) are
    compared with the scan's own, each in units of its spread across the scans: coordinate
    descent over brain spread, texture amplitude and scale, and head spread.
    """
    from napari_mrisynth.evaluation.two_sample import texture_features

    region = ndi.binary_erosion(np.isin(class_label[labels[0]], BRAIN_LABELS), iterations=1)
    reference = np.array([texture_features(i * 255.0 / 1.5, region, spacing) for i in images])
    scale = reference.std(axis=0) + 1e-6 + 0.05 * np.abs(reference.mean(axis=0))

    def rendered(k: int, setting: dict[str, float]) -> np.ndarray:
        look, label = looks[k], labels[k]
        image = render(look["intensity"], label, class_label,
                       (setting["psf"], setting["psf_head"])) + structures[k]  # fmt: skip
        brain = np.isin(class_label[label], BRAIN_LABELS)
        if setting["texture_rms"] > 0:
            texture = _smooth_field(label.shape, setting["texture_sigma"], 100 + k)
            image = image * (1.0 + setting["texture_rms"] * texture * brain)
        image = image * np.exp(np.tensordot(look["bias"], terms, axes=1))
        sigma = look["noise"] * setting["noise_scale"]
        noise = [sigma * _smooth_field(image.shape, setting["noise_blur"], 200 + 2 * k + j)
                 for j in range(2)]  # fmt: skip
        image = np.sqrt((image + noise[0]) ** 2 + noise[1] ** 2) * (images[k] > 0)
        return np.clip(image, 0.0, 1.5) * 255.0 / 1.5

    def loss(setting: dict[str, float]) -> float:
        mismatch = [(texture_features(rendered(k, setting), region, spacing) - reference[k])
                    / scale for k in range(len(images))]  # fmt: skip
        return float(np.mean(np.square(mismatch)))

    setting = dict(start)
    history = {"start": loss(setting)}
    grids = {"psf": PSF_CANDIDATES, "texture_rms": (0.0, 0.01, 0.02, 0.03, 0.045, 0.06),
             "texture_sigma": TEXTURE_CANDIDATES[:4], "psf_head": PSF_CANDIDATES,
             "noise_blur": (0.0, 0.35, 0.5, 0.7),
             "noise_scale": (0.7, 0.85, 1.0, 1.15, 1.3)}  # fmt: skip
    for _ in range(2):
        for name, values in grids.items():
            scores = {v: loss({**setting, name: v}) for v in values}
            setting[name] = min(scores, key=scores.get)
            history[f"{name}={setting[name]}"] = scores[setting[name]]
    # the intensity response: what a rendered head's quantiles become in the scans' (pooled),
    # for the distribution shape no tissue intensity, spread or texture setting reaches
    levels = np.linspace(0.0, 100.0, TONE_KNOTS)
    source, target = [], []
    for k in range(len(images)):
        seen = images[k] > 0  # the field of view: head and air, so air keeps its noise
        source.append(np.percentile(rendered(k, setting)[seen] * 1.5 / 255.0, levels))
        target.append(np.percentile(images[k][seen], levels))
    curve = np.stack([np.mean(source, axis=0), np.mean(target, axis=0)])
    setting["tone"] = np.concatenate([[[0.0], [0.0]], curve[:, 1:]], axis=1)
    return setting, history


def render_classes(images: Sequence[np.ndarray], labels: Sequence[np.ndarray],
                   ) -> tuple[list[np.ndarray], np.ndarray, dict[str, list[float]]]:  # fmt: skip
    """Split each label of :data:`MIXED_LABELS` into up to three intensity classes (k-means
    on the scans' lightly smoothed intensities, pooled), so that a rendered skull has its
    tables and diploe and a rendered scalp its skin, fat and muscle.

    Returns the class map of every scan (labels keep their values; a subclass gets a new
    value above the schema's), the label of every class, and the thresholds per label.
    """
    from sklearn.cluster import KMeans

    class_label = list(range(len(LABELS)))
    thresholds: dict[str, list[float]] = {}
    maps = [lab.copy() for lab in labels]
    smooth = [ndi.gaussian_filter(i, 0.7) for i in images]
    rng = np.random.default_rng(0)
    for value in MIXED_LABELS:
        pooled = np.concatenate([s[lab == value] for s, lab in zip(smooth, labels, strict=True)])
        if pooled.size < 100:
            continue
        sample = rng.choice(pooled, min(pooled.size, 200_000), replace=False)[:, None]
        centres = np.sort(KMeans(3, n_init=3, random_state=0).fit(sample).cluster_centers_[:, 0])
        keep = [centres[0]]
        for c in centres[1:]:  # classes closer than 0.1 (a tenth of the head's range) merge
            if c - keep[-1] >= 0.1:
                keep.append(c)
        if len(keep) < 2:
            continue
        cuts = [(a + b) / 2 for a, b in zip(keep[:-1], keep[1:], strict=True)]
        thresholds[LABELS[value][0]] = [float(c) for c in cuts]
        ids = [value] + [len(class_label) + k for k in range(len(cuts))]
        class_label += [value] * len(cuts)
        for m, s, lab in zip(maps, smooth, labels, strict=True):
            where = lab == value
            m[where] = np.asarray(ids, np.uint8)[np.digitize(s[where], cuts)]
    return maps, np.array(class_label, np.uint8), thresholds


# -- models --------------------------------------------------------------------------------
def design_rows(conditions: Sequence[Condition]) -> np.ndarray:
    """``[1, diagnosis, age, sex]`` per scan (0 for conditions not used)."""
    return np.array([[1.0, *c.vector()] for c in conditions])


def gaussian_model(values: np.ndarray, design: np.ndarray, variance: float,
                   max_components: int | None = None) -> dict[str, Any]:  # fmt: skip
    """Regression on the design, then principal components of the residuals keeping
    ``variance`` of it (scaled so that unit normal scores reproduce it)."""
    coefficients, *_ = np.linalg.lstsq(design, values, rcond=None)
    residual = values - design @ coefficients
    dof = max(len(values) - np.linalg.matrix_rank(design), 1)
    _, singular, rows = np.linalg.svd(residual, full_matrices=False)
    explained = np.cumsum(singular**2) / max(float(np.sum(singular**2)), 1e-12)
    k = int(np.searchsorted(explained, variance) + 1)
    k = min(k, dof, len(singular), max_components or len(singular))
    basis = rows[:k] * (singular[:k, None] / math.sqrt(dof))
    return {"design": coefficients, "basis": basis, "explained": float(explained[k - 1]),
            "components": k}  # fmt: skip


def appearance_model(vectors: np.ndarray, design: np.ndarray) -> dict[str, np.ndarray]:
    """Regression on the design and a Ledoit-Wolf covariance of the residuals (Cholesky).

    The entries have different units (mm, intensities, log noise, fractions of the grid):
    the shrinkage acts on their correlations (each entry standardised first), so that an
    entry that hardly varies between scans is not given the spread of one that does.
    """
    from sklearn.covariance import LedoitWolf

    coefficients, *_ = np.linalg.lstsq(design, vectors, rcond=None)
    residual = vectors - design @ coefficients
    scale = residual.std(axis=0)
    scale = np.where(scale > 1e-9, scale, 1e-9)
    correlation = LedoitWolf().fit(residual / scale).covariance_
    covariance = correlation * scale[:, None] * scale[None, :]
    factor = np.linalg.cholesky(covariance + 1e-12 * np.eye(len(covariance)))
    return {"design": coefficients, "factor": factor, "residual": residual}


def within_class_sd(
    values: np.ndarray, classes: Sequence[np.ndarray]
) -> tuple[list[np.ndarray], np.ndarray]:
    """Each class's SD of every column of ``values`` (rows: scans; ``classes``: boolean
    row masks, each of at least two rows) and the pooled within-class SD."""
    sd = [values[c].std(axis=0, ddof=1) for c in classes]
    n = [int(c.sum()) for c in classes]
    pooled = np.sqrt(sum((k - 1) * d**2 for k, d in zip(n, sd, strict=True)) / (sum(n) - len(n)))
    return sd, pooled


def class_spread(residual: np.ndarray, design: np.ndarray) -> np.ndarray:
    """(2, entries): the SD of each entry's ``residual`` (after the regression on the
    ``design``) in controls (row 0) and bvFTD (row 1) over the pooled SD; ones where a class
    has fewer than three scans or an entry does not vary."""
    classes = [design[:, 1] < 0, design[:, 1] > 0]
    spread = np.ones((2, residual.shape[1]))
    if min(int(c.sum()) for c in classes) < 3:
        return spread
    sd, pooled = within_class_sd(residual, classes)
    varies = pooled > 1e-12
    for row in range(2):
        spread[row, varies] = sd[row][varies] / pooled[varies]
    return spread


def field_mmd(a: np.ndarray, b: np.ndarray) -> float:
    """Squared MMD between two sets of flattened fields (RBF kernel, median bandwidth)."""
    x = np.concatenate([a, b])
    d = np.sum((x[:, None] - x[None]) ** 2, axis=-1)
    bandwidth = float(np.median(d[d > 0])) or 1.0
    k = np.exp(-d / bandwidth)
    n = len(a)
    kxx, kyy, kxy = k[:n, :n], k[n:, n:], k[:n, n:]
    m = len(b)
    return float((kxx.sum() - n) / (n * (n - 1)) + (kyy.sum() - m) / (m * (m - 1))
                 - 2 * kxy.mean())  # fmt: skip


def smooth_field_scale(rms: float, scale: float) -> float:
    """For a random field smoothed by a Gaussian, RMS ``rms``: its RMS derivative (per mm)
    from its smoothing ``scale`` (sigma, mm), or its sigma from its RMS derivative. The
    relation is the same either way round, ``rms / (sqrt(2) * scale)``, because a field of
    sigma s has ``var(du/dx) = var(u) / (2 s^2)``."""
    return rms / (math.sqrt(2.0) * scale)


def fine_folding(template: np.ndarray, warped: Sequence[np.ndarray], spacing: float,
                 options: AnatomyOptions) -> dict[str, float]:  # fmt: skip
    """RMS (mm per axis) and smoothness (sigma, mm) of the folding left after the coarse
    fields: a fine demons registration of a few aligned scans to the template."""
    rms, sigmas = [], []
    for image in list(warped)[: options.fine_subjects]:
        u = demons(template, image, spacing, options, level_mm=spacing, sigma=1.0)
        u = u - np.stack([ndi.gaussian_filter(c, options.node_mm / spacing) for c in u])
        rms.append(float(np.sqrt(np.mean(u**2))))
        gradient = np.mean([np.mean(np.gradient(c, spacing, axis=a) ** 2)
                            for c in u for a in range(3)])  # fmt: skip
        sigmas.append(smooth_field_scale(rms[-1], float(np.sqrt(max(gradient, 1e-24)))))
    return {"rms_mm": float(np.median(rms)), "sigma_mm": float(np.median(sigmas))}


def super_resolved(observations: Sequence[np.ndarray], masks: Sequence[np.ndarray],
                   displacements: Iterable[np.ndarray], start: np.ndarray, spacing: float, *,
                   smoothness: float = 0.01,
                   iterations: int = 20) -> tuple[np.ndarray, dict[str, float]]:  # fmt: skip
    """The template-space field S whose warps best explain every scan's observation.

    Each scan saw S through its own warp (``displacements[k]``: template point of each of its
    voxels, mm, the inverse of its field onto the template) and a linear interpolation at its
    own sub-voxel offsets (``masks[k]``: its field of view). The mean of the scans warped
    back blurs S twice over (once per interpolation); solving
    ``min_S sum_k |M_k (W_k S - o_k)|^2 + smoothness |L S|^2`` (M_k: the scan's field of view,
    L: the discrete Laplacian) by conjugate gradients undoes that blur, as a super-resolution
    from many offsets does. Starts from ``start`` (the mean).

    Returns S and ``{"misfit_start", "misfit", "relative_residual"}`` (sum of squared
    differences between the scans and the warped field, before and after).
    """
    import torch
    import torch.nn.functional as F

    from napari_mrisynth.models.anatomy_generator import sampling_grid

    shape = tuple(start.shape)
    half = np.prod(shape) > 4_000_000  # 1 mm grids: keep the sampling grids in half precision
    grids, data, weights = [], [], []
    # a displacement at a time (they may be made on the fly): only its grid is kept
    for o, m, d in zip(observations, masks, displacements, strict=True):
        grid = sampling_grid(torch.from_numpy(np.ascontiguousarray(d, np.float32))[None], spacing)
        grids.append(grid.half() if half else grid)
        weights.append(torch.from_numpy(np.ascontiguousarray(m, np.float32))[None, None])
        data.append(weights[-1] * torch.from_numpy(np.ascontiguousarray(o, np.float32))[None, None])
    stencil = torch.zeros(1, 1, 3, 3, 3)
    stencil[0, 0, 1, 1, 1] = 6.0
    for offset in ((0, 1, 1), (2, 1, 1), (1, 0, 1), (1, 2, 1), (1, 1, 0), (1, 1, 2)):
        stencil[(0, 0, *offset)] = -1.0

    def warp(field: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        return F.grid_sample(field, grid.float(), mode="bilinear", padding_mode="zeros",
                             align_corners=True)  # fmt: skip

    def adjoint(values: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        field = torch.zeros((1, 1, *shape), requires_grad=True)
        (out,) = torch.autograd.grad(warp(field, grid), field, grad_outputs=values)
        return out

    def laplacian(field: torch.Tensor) -> torch.Tensor:
        return F.conv3d(F.pad(field, (1,) * 6, mode="replicate"), stencil)

    def normal(field: torch.Tensor) -> torch.Tensor:
        out = smoothness * laplacian(laplacian(field))
        for grid, mask in zip(grids, weights, strict=True):
            out = out + adjoint(mask * warp(field, grid), grid)
        return out

    def misfit(field: torch.Tensor) -> float:
        return sum(float(((m * (warp(field, g) - o)) ** 2).sum())
                   for g, m, o in zip(grids, weights, data, strict=True))  # fmt: skip

    with torch.enable_grad():
        x = torch.from_numpy(np.ascontiguousarray(start, np.float32))[None, None]
        b = sum(adjoint(o, g) for g, o in zip(grids, data, strict=True))
        before = misfit(x)
        r = b - normal(x)
        p, rs = r.clone(), float((r * r).sum())
        norm_b = float(b.norm()) or 1.0
        for _ in range(iterations):
            q = normal(p)
            alpha = rs / max(float((p * q).sum()), 1e-30)
            x, r = x + alpha * p, r - alpha * q
            new = float((r * r).sum())
            if math.sqrt(new) < 1e-6 * norm_b:
                break
            p, rs = r + (new / rs) * p, new
        x = x.detach()
        return x[0, 0].numpy(), {"misfit_start": before, "misfit": misfit(x),
                                 "relative_residual": math.sqrt(rs) / norm_b}  # fmt: skip


def _fitted_network(args: dict[str, Any], buffers: dict[str, np.ndarray]) -> Any:
    """The network a fit's arguments and buffers make (what the registry would load)."""
    import torch

    from napari_mrisynth.models.networks import build_network

    network = build_network({"name": "AnatomyFirst", "args": args})
    network.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v))
                             for k, v in buffers.items()})  # fmt: skip
    return network


def _sampled(network: Any, vectors: Any, noise: Any) -> tuple[list, list]:
    """(images, label maps) of one head per row of ``vectors`` and ``noise``, two at a time;
    each a list of (D, H, W) arrays."""
    images, labels = [], []
    for k in range(0, len(vectors), 2):
        image, label = network.generate(vectors[k : k + 2], noise[k : k + 2])
        images += list(image.numpy()[:, 0])
        labels += list(label.numpy()[:, 0])
    return images, labels


def fine_folding_limit(sigma_mm: float) -> float:
    """The largest fine-folding amplitude (mm, RMS of the velocity per axis) whose strain
    stays within :data:`FINE_STRAIN_LIMIT` for a field smoothed over ``sigma_mm``."""
    return FINE_STRAIN_LIMIT / smooth_field_scale(1.0, sigma_mm)


def calibrate_diversity(args: dict[str, Any], buffers: dict[str, np.ndarray],
                        images: Sequence[np.ndarray], conditions: Sequence[Condition], *,
                        fine_sigma_mm: float, samples: int = 16, pairs: int = 50,
                        seed: int = 0) -> tuple[float, float, dict[str, Any]]:  # fmt: skip
    """The fine folding and the coarse shape model's spread that make sampled heads as
    varied as the training scans: ``(fine_rms_mm, spread, report)``.

    Both registrations see only part of each head's own deformation (they register to a
    blurred template and are regularised), so the fitted fields are smaller than the heads'.
    The fine folding takes the strain limit's amplitude (:func:`fine_folding_limit`), or the
    measured one when that is larger: folding beyond it squeezes the cortical ribbon into
    islands. The rest of the scans' diversity comes from the coarse fields: the Gaussian
    shape model's components are scaled by the spread in :data:`SPREAD_CANDIDATES` whose
    sampled heads' within-set MS-SSIM (``samples`` heads, conditions cycled through the
    training scans') comes closest to the training scans' own (``pairs`` seeded pairs; each
    volume as ``mrisynth evaluate`` measures sets: block-averaged to its 2 mm grid when the
    model is finer, then scaled between its 0.5th and 99.5th percentiles); the scan stops
    once the sampled heads are more varied than the scans. A VAE shape model keeps its
    decoder's spread (1.0). The condition's mean fields are not scaled.
    """
    import torch

    from napari_mrisynth.evaluation.common_grid import percentile_scaled
    from napari_mrisynth.evaluation.metrics import ms_ssim_pairs, random_pairs

    # on the grid ``mrisynth evaluate`` measures sets on: finer models are block-averaged
    factor = max(1, int(round(DEFAULT_MODEL_SPACING_MM / float(args["spacing"]))))

    def scaled(volumes: Sequence[np.ndarray]) -> list[np.ndarray]:  # as ``mrisynth evaluate``
        return [percentile_scaled(block_mean(np.asarray(v, np.float32), factor))
                for v in volumes]  # fmt: skip

    def within(volumes: Sequence[np.ndarray]) -> float:
        chosen = random_pairs(len(volumes), pairs, seed)
        return float(np.mean(ms_ssim_pairs(scaled(volumes), chosen)))

    index = SCALARS.index("fine_rms")
    measured = float(buffers["scalars"][index])
    limit = fine_folding_limit(fine_sigma_mm)
    fine_rms = round(max(measured, limit), 3)
    report: dict[str, Any] = {"measured_rms_mm": measured, "strain_limit": FINE_STRAIN_LIMIT,
                              "limit_rms_mm": limit, "chosen_rms_mm": fine_rms,
                              "chosen_spread": 1.0}  # fmt: skip
    try:
        target = within(images)
    except ValueError as exc:  # volumes too small for MS-SSIM's scales
        return fine_rms, 1.0, {**report, "skipped": str(exc)}
    network = _fitted_network(args, buffers)
    network.scalars[index] = fine_rms
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn((samples, *network.noise_shape), generator=generator)
    vectors = torch.tensor([conditions[k % len(conditions)].vector() for k in range(samples)],
                           dtype=torch.float32)  # fmt: skip
    report.update(target_ms_ssim=target, samples=samples, pairs=pairs)
    if args.get("shape_model") == "vae":
        report["ms_ssim"] = {"1.0": within(_sampled(network, vectors, noise)[0])}
        return fine_rms, 1.0, report
    basis = network.velocity_basis.clone()
    scores: dict[float, float] = {}
    for spread in SPREAD_CANDIDATES:
        network.velocity_basis.copy_(basis * spread)
        scores[spread] = within(_sampled(network, vectors, noise)[0])
        if scores[spread] <= target:
            break
    chosen = min(scores, key=lambda s: abs(scores[s] - target))
    report.update(ms_ssim={str(k): v for k, v in scores.items()}, chosen_spread=chosen)
    return fine_rms, chosen, report


#: Labels whose share no regional draw sets (deep grey matter, cerebellum, sulcal and
#: extracerebral CSF): only the shape model's fields move them, and :func:`component_caps`
#: keeps each component's move within the training scans' own spread.
FIELD_LABELS: tuple[int, ...] = (
    LABEL_IDS["deep_gm"], LABEL_IDS["cerebellum"], LABEL_IDS["sulcal_csf"],
    LABEL_IDS["extracerebral_csf"],
)  # fmt: skip


def component_caps(args: dict[str, Any], buffers: dict[str, np.ndarray],
                   labels: Sequence[np.ndarray], conditions: Sequence[Condition],
                   ) -> tuple[np.ndarray, dict[str, Any]]:  # fmt: skip
    """A factor (at most 1) per component of the Gaussian shape model, so that no component
    alone moves the brain share of a :data:`FIELD_LABELS` label by more than the training
    scans' own spread of it (standard deviation within each diagnosis).

    The fields come from registering images, and T1 shows extracerebral CSF and bone alike
    dark: a registration may trade one for the other freely, and the model's largest
    component did (in 1.5.0 it grew or shrank the brain inside its skull, so that one
    standard deviation moved the extracerebral CSF's share by 0.017, six times the scans'
    spread of 0.003). Each component's move is measured on the template warped by it at
    +1 and -1 (nothing else drawn: mean appearance and shares, no condition); the report
    gives the moves, the spreads and the caps.
    """
    import torch

    network = _fitted_network(args, buffers)
    count = int(args["components"])
    names = [LABELS[v][0] for v in FIELD_LABELS]
    shares = brain_shares(labels, FIELD_LABELS)
    diagnosis = np.array([c.diagnosis.lower() == "bvftd" for c in conditions])
    # the scans' whole spread within each diagnosis (age and sex included: a component
    # alone should not move a share further than the scans of one diagnosis differ)
    groups = [g for g in (diagnosis, ~diagnosis) if g.sum() >= 2]
    spread = within_class_sd(shares, groups)[1]
    noise = torch.zeros((2 * count, *network.noise_shape))
    for k in range(count):
        noise[2 * k, k], noise[2 * k + 1, k] = 1.0, -1.0
    vectors = torch.zeros((2 * count, len(conditions[0].vector())))
    sampled = brain_shares(_sampled(network, vectors, noise)[1], FIELD_LABELS)
    moves = np.abs(sampled[0::2] - sampled[1::2]) / 2.0  # (components, labels) per unit
    with np.errstate(divide="ignore"):
        caps = np.minimum(1.0, np.min(np.where(moves > 0, spread / moves, np.inf), axis=1))
    report = {
        "labels": names,
        "training_sd": dict(zip(names, spread.round(5).tolist(), strict=True)),
        "largest_move": dict(zip(names, moves.max(axis=0).round(5).tolist(), strict=True)),
        "sd_from_components": dict(
            zip(names, np.sqrt((moves**2).sum(0)).round(5).tolist(), strict=True)
        ),  # fmt: skip
        "sd_from_components_capped": dict(
            zip(
                names, np.sqrt(((moves * caps[:, None]) ** 2).sum(0)).round(5).tolist(), strict=True
            )
        ),  # fmt: skip
        "caps": caps.round(4).tolist(),
        "capped": int(np.sum(caps < 1.0)),
    }
    return caps, report


def calibrate_sampling(args: dict[str, Any], buffers: dict[str, np.ndarray],
                       basis: np.ndarray, images: Sequence[np.ndarray],
                       labels: Sequence[np.ndarray], conditions: Sequence[Condition], *,
                       fine_sigma_mm: float) -> dict[str, Any]:  # fmt: skip
    """A fit's last step, on its buffers (the fine folding as measured) and its unscaled
    shape ``basis`` (components, 3, nodes...): the diversity calibration
    (:func:`calibrate_diversity`), then, for a Gaussian shape model, the component caps
    (:func:`component_caps`, against the training scans' label maps ``labels``).

    ``buffers["scalars"]`` (the fine folding) and ``buffers["velocity_basis"]`` (float16,
    scaled by the spread and the caps) are set in place; returns ``fine_rms``, ``spread``,
    ``diversity_calibration`` and, when capped, ``component_caps``.
    """
    fine_rms, spread, calibration = calibrate_diversity(args, buffers, images, conditions,
                                                        fine_sigma_mm=fine_sigma_mm)  # fmt: skip
    buffers["scalars"][SCALARS.index("fine_rms")] = fine_rms
    basis = np.asarray(basis)  # float32 at least: as exact as the basis, never half
    scaled = basis.astype(np.result_type(basis, np.float32)) * spread
    buffers["velocity_basis"] = scaled.astype(np.float16)  # what the caps are measured on
    out = {"fine_rms": fine_rms, "spread": spread, "diversity_calibration": calibration}
    if args.get("shape_model") == "gaussian":
        caps, out["component_caps"] = component_caps(args, buffers, labels, conditions)
        # rounded to half once, from the exact basis
        buffers["velocity_basis"] = (scaled * caps[:, None, None, None, None]).astype(np.float16)
    return out


def brain_shares(maps: Iterable[np.ndarray], values: Sequence[int]) -> np.ndarray:
    """(maps, values): each label's voxels as a share of the brain's, per label map (arrays
    or Volumes)."""
    rows = []
    for m in maps:
        labels = np.asarray(getattr(m, "data", m))
        counts = np.bincount(labels.ravel().astype(np.int64), minlength=256)
        rows.append(counts[list(values)] / max(float(counts[list(BRAIN_LABELS)].sum()), 1.0))
    return np.array(rows)


def condition_check(args: dict[str, Any], buffers: dict[str, np.ndarray],
                    labels: Sequence[np.ndarray], conditions: Sequence[Condition], *,
                    samples: int = 8, seed: int = 1) -> dict[str, Any]:  # fmt: skip
    """How sampled bvFTD and control heads differ against how the training scans do, in
    the brain share of every structure the model draws a share for (the cortical
    grey-matter labels, the lateral ventricles and, when drawn, the white matter).

    Sampled heads are compared in pairs that share every random draw and differ only in
    diagnosis, and every draw comes with its opposite (antithetic draws: the residuals
    cancel in the mean whatever spread each class has), so the class difference is measured
    without sampling noise. A head is given the shares it draws (``regional="share"``), so
    the two agree up to ties at a threshold depth and shares no thinning can reach; the
    report says how closely.
    """
    import torch

    network = _fitted_network(args, buffers)
    values = [*CORTICAL_GM_LABELS, network.ventricle]
    if network.white is not None:
        values.append(network.white)
    names = [LABELS[v][0] for v in values]
    diagnosis = np.array([c.diagnosis.lower() == "bvftd" for c in conditions])
    if diagnosis.all() or not diagnosis.any():
        return {"skipped": "the training scans hold one diagnosis only"}
    shares = brain_shares(labels, values)
    target = shares[diagnosis].mean(axis=0) - shares[~diagnosis].mean(axis=0)
    generator = torch.Generator().manual_seed(seed)
    half = torch.randn((max(samples // 2, 1), *network.noise_shape), generator=generator)
    noise = torch.cat([half, -half])
    rows = torch.tensor([conditions[k % len(conditions)].vector() for k in range(len(half))],
                        dtype=torch.float32).repeat(2, 1)  # fmt: skip
    sampled = []
    for sign in (1.0, -1.0):  # bvFTD, then the same draws as controls
        paired = rows.clone()
        paired[:, 0] = sign
        sampled.append(brain_shares(_sampled(network, paired, noise)[1], values))
    difference = (sampled[0] - sampled[1]).mean(axis=0)
    return {
        "labels": names,
        "target_share_difference": dict(zip(names, target.tolist(), strict=True)),
        "sampled_share_difference": dict(zip(names, difference.tolist(), strict=True)),
        "samples": len(noise), "training_scans": len(labels),
    }  # fmt: skip


def fit_anatomy_first(
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    conditions: Sequence[Condition],
    spacing: float,
    options: AnatomyOptions,
    *,
    validation: tuple[Sequence[np.ndarray], Sequence[Condition]] | None = None,
    vae_fit: Callable[..., Any] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> Fitted:
    """Fit every part of the generator (see the module docstring).

    ``validation`` (images, conditions) decides between the Gaussian and the VAE shape
    model; ``vae_fit(velocities, conditions, node_shape)`` trains the VAE (the Lightning
    part lives with the training run) and returns ``(vae arguments, state dict, sampler)``.
    """
    clock = time.perf_counter()
    images = [np.asarray(i, np.float32) for i in images]
    labels, class_label, thresholds = render_classes(
        images, [np.asarray(lab, np.uint8) for lab in labels]
    )
    shape = images[0].shape
    template, velocities, groupwise = groupwise_template(images, spacing, options, progress)
    step, node_mm = groupwise["node_step"], groupwise["node_mm"]
    timings = {"groupwise": time.perf_counter() - clock}
    displacements = [to_voxels(exponentiate(v, node_mm), step, shape) for v in velocities]
    warped_labels = [_warp(lab, d, spacing, 0) for lab, d in zip(labels, displacements,
                                                                   strict=True)]  # fmt: skip
    count = len(class_label)
    probabilities = np.zeros((count, *shape), np.float32)
    for warped in warped_labels:
        probabilities += np.eye(count, dtype=np.float32)[warped].transpose(3, 0, 1, 2)
    probabilities /= len(images)
    targets = np.mean([np.bincount(w.ravel(), minlength=count) for w in warped_labels], axis=0)
    template_labels = volume_matched_labels(probabilities, targets)
    depths = cortex_depths(template_labels, spacing)
    timings["template"] = time.perf_counter() - clock
    # appearance per scan, in its own space
    terms = bias_terms(shape)
    looks = [appearance_of(i, lab, terms, count, 0.5, class_label) for i, lab in zip(images, labels,
                                                                        strict=True)]  # fmt: skip
    psf, psf_errors = fit_psf(images[:8], labels[:8], looks[:8], terms, class_label)
    looks = [appearance_of(i, lab, terms, count, psf, class_label) for i, lab in zip(images, labels,
                                                                        strict=True)]  # fmt: skip
    fill = np.nanmedian([look["intensity"] for look in looks], axis=0)
    for key in ("noise", "noise_blur"):  # scans without air take the cohort's
        known = [look[key] for look in looks if np.isfinite(look[key])]
        for look in looks:
            if not np.isfinite(look[key]):
                look[key] = float(np.median(known)) if known else (0.02 if key == "noise" else 0.0)
    residuals = []
    for image, label, look in zip(images, labels, looks, strict=True):
        look["intensity"] = np.where(np.isnan(look["intensity"]), fill, look["intensity"])
        bias = np.exp(np.tensordot(look["bias"], terms, axes=1))
        residuals.append(image / bias - render(look["intensity"], label, class_label, psf))
    mean_residual = np.mean(
        [_warp(r, d, spacing, 1) for r, d in zip(residuals, displacements, strict=True)], axis=0
    )
    # the scans' inverse fields: the rendering calibration keeps the first six, the
    # super-resolution takes every one (the rest made one at a time)
    inverse = [to_voxels(exponentiate(-v, node_mm), step, shape) for v in velocities[:6]]
    structure, super_resolution = super_resolved(
        residuals, [i > 0 for i in images],
        itertools.chain(inverse, (to_voxels(exponentiate(-v, node_mm), step, shape)
                                  for v in velocities[6:])),
        mean_residual, spacing,
    )  # fmt: skip
    del mean_residual
    texture_rms, texture_sigma = texture_of(images, labels, looks)
    setting, calibration = calibrate_rendering(
        images[:6], labels[:6], looks[:6], [_warp(structure, d, spacing, 1) for d in inverse],
        terms, class_label, spacing,
        {"psf": psf[0], "psf_head": psf[1], "texture_rms": texture_rms,
         "texture_sigma": texture_sigma, "noise_blur": 0.0, "noise_scale": 1.0},
    )  # fmt: skip
    for look in looks:  # the noise as the renders needed it
        look["noise"] *= setting["noise_scale"]
        look["noise_blur"] = setting["noise_blur"]
    psf = (setting["psf"], setting["psf_head"])
    texture_rms, texture_sigma = setting["texture_rms"], setting["texture_sigma"]
    tone = np.maximum.accumulate(setting.pop("tone"), axis=1)  # monotone
    warped_images = [_warp(i, d, spacing, 1) for i, d in zip(images, displacements, strict=True)]
    fine = fine_folding(template, warped_images, spacing, options)
    timings["appearance"] = time.perf_counter() - clock
    # anatomy-and-appearance vectors
    layout = appearance_layout(count, len(CORTICAL_GM_LABELS), 1, 1)
    ventricle = LABEL_IDS["lateral_ventricles"]
    around = ventricle_distances(template_labels, spacing)
    white = LABEL_IDS["white_matter"]
    around_white = white_distances(template_labels, spacing)
    noise_blur = float(np.median([look["noise_blur"] for look in looks]))
    vectors = []
    # each scan's own regional anatomy: the brain share of every cortical label, of the
    # ventricles and of the white matter in its own space (a sampled head is given exactly
    # the share it draws)
    regional = [*CORTICAL_GM_LABELS, ventricle, white]
    native = [class_label[m] for m in labels]  # render classes -> labels
    shares = brain_shares(native, regional)
    for share, look in zip(shares, looks, strict=True):
        vector = np.zeros(max(s.stop for s in layout.values()))
        vector[: layout["white"].stop] = share  # thinning, ventricles, white: in that order
        vector[layout["intensity"]] = look["intensity"]
        vector[layout["bias"]] = look["bias"]
        vector[layout["log_noise"]] = math.log(look["noise"])
        vector[layout["fov"]] = look["fov"]
        vectors.append(vector)
    design = design_rows(conditions)
    look_model = appearance_model(np.array(vectors), design)
    anatomy_spread = class_spread(look_model["residual"][:, : layout["white"].stop], design)
    flat = np.array([v.ravel() for v in velocities])
    shape_model = gaussian_model(flat, design, options.variance)
    report: dict[str, Any] = {
        "groupwise": groupwise, "psf_sigma_voxels": {"brain": psf[0], "head": psf[1]},
        "psf_errors": psf_errors,
        "fine_folding": fine, "texture": {"rms": texture_rms, "sigma_voxels": texture_sigma},
        "rendering_calibration": calibration,
        "structure_super_resolution": super_resolution,
        "shape_components": shape_model["components"],
        "shape_variance_explained": shape_model["explained"],
        "template_volume_match": {
            LABELS[v][0]: float(np.sum(template_labels == v) / targets[v] - 1.0)
            for v in range(1, len(LABELS)) if v < count and targets[v] > 0
        },
        "template_label_volumes_ml": {
            LABELS[v][0]: float(np.sum(class_label[template_labels] == v)) * spacing**3 / 1000
            for v in range(1, len(LABELS))
        },
        "render_classes": {"count": count, "thresholds": thresholds},
        "noise_correlation_voxels": noise_blur,
    }  # fmt: skip
    nodes = velocities[0].shape[1:]
    chosen, vae = "gaussian", None
    if validation is not None and options.shape_model in ("auto", "vae") and vae_fit is not None:
        val_velocities = [
            logarithm(to_nodes(demons(template, image, spacing, options), step, shape), node_mm)
            for image in validation[0]
        ]
        val_flat = np.array([v.ravel() for v in val_velocities])
        val_design = design_rows(validation[1])
        rng = np.random.default_rng(0)
        draws = 64
        rows = val_design[rng.integers(len(val_design), size=draws)]
        gaussian = rows @ shape_model["design"] + rng.standard_normal(
            (draws, shape_model["components"])) @ shape_model["basis"]  # fmt: skip
        vae = vae_fit(np.array(velocities), design, nodes)
        sampled = vae["sample"](rows, rng)
        scores = {"gaussian": field_mmd(gaussian, val_flat),
                  "vae": field_mmd(sampled.reshape(draws, -1), val_flat)}  # fmt: skip
        chosen = "vae" if options.shape_model == "vae" or scores["vae"] < scores["gaussian"] \
            else "gaussian"  # fmt: skip
        report["shape_model_comparison"] = {
            "mmd_to_validation_fields": scores, "validation_scans": len(val_flat),
            "chosen": chosen,
            "why": "lower squared MMD (RBF kernel) between 64 sampled velocity fields and the "
                   "validation scans' fields" if options.shape_model == "auto"
                   else "asked for",
        }  # fmt: skip
    elif options.shape_model == "vae":
        raise ValueError("a VAE shape model needs validation scans and a VAE trainer")
    report["shape_model"] = chosen
    report["anatomy_spread"] = {
        group: dict(zip([LABELS[v][0] for v in regional], anatomy_spread[row].tolist(),
                        strict=True))
        for row, group in enumerate(("control", "bvFTD"))
    }  # fmt: skip
    timings["models"] = time.perf_counter() - clock
    report["seconds"] = {k: round(v, 1) for k, v in timings.items()}
    args = {
        "shape": list(shape), "spacing": float(spacing), "node_step": int(step),
        "fine_step": max(1, int(round(2.0 / spacing))),
        "components": int(shape_model["components"]), "labels": count,
        "cortical": list(CORTICAL_GM_LABELS), "sulcal": LABEL_IDS["sulcal_csf"],
        "brain": list(BRAIN_LABELS), "shape_model": chosen, "ventricle": ventricle,
        "regional": "share", "white": white, "edge": "border",
    }  # fmt: skip
    fine_step_mm = args["fine_step"] * spacing
    buffers = {
        "template_labels": template_labels,
        "class_label": class_label,
        "tone": tone.astype(np.float32),
        "gm_depth": depths["gm_depth"].astype(np.float16),
        "csf_depth": depths["csf_depth"].astype(np.float16),
        "nearest_cortex": depths["nearest_cortex"],
        "ventricle_distance": around["ventricle_distance"].astype(np.float16),
        "ventricle_neighbour": around["ventricle_neighbour"],
        "white_distance": around_white["white_distance"].astype(np.float16),
        "white_neighbour": around_white["white_neighbour"],
        "structure": structure.astype(np.float16),
        "velocity_design": shape_model["design"].reshape(4, 3, *nodes).astype(np.float16),
        "velocity_basis": shape_model["basis"].reshape(-1, 3, *nodes).astype(np.float16),
        "appearance_design": look_model["design"].astype(np.float32),
        "appearance_factor": look_model["factor"].astype(np.float32),
        "anatomy_spread": anatomy_spread.astype(np.float32),
        "scalars": np.array(
            [
                psf[0],
                fine["rms_mm"],
                fine["sigma_mm"] / fine_step_mm,
                texture_rms,
                texture_sigma,
                1.0,
                noise_blur,
                psf[1],
            ],
            np.float32,
        ),  # fmt: skip
    }
    if chosen == "vae" and vae is not None:
        args["vae"] = vae["args"]
        buffers["scalars"][SCALARS.index("vae_scale")] = vae["scale"]
        buffers.update({f"vae.{k}": v for k, v in vae["state"].items()})
    if progress is not None:
        progress("diversity", 0, 1)
    sampling = calibrate_sampling(args, buffers, shape_model["basis"].reshape(-1, 3, *nodes),
                                  images, native, conditions,
                                  fine_sigma_mm=fine["sigma_mm"])  # fmt: skip
    if progress is not None:
        progress("diversity", 1, 1)
    report["diversity_calibration"] = sampling["diversity_calibration"]
    report["fine_folding"]["rms_mm_sampled"] = sampling["fine_rms"]
    report["shape_spread"] = sampling["spread"]
    if "component_caps" in sampling:
        report["component_caps"] = sampling["component_caps"]
    timings["diversity"] = time.perf_counter() - clock
    if progress is not None:
        progress("condition", 0, 1)
    report["condition_check"] = condition_check(args, buffers, native, conditions)
    if progress is not None:
        progress("condition", 1, 1)
    timings["condition"] = time.perf_counter() - clock
    report["seconds"] = {k: round(v, 1) for k, v in timings.items()}
    return Fitted(args, buffers, report, {"template_intensity": template})
