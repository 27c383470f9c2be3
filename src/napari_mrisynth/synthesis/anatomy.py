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
   (super-resolved from every scan's residual), the tissue texture and
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

Steps 1 and 2 live in :mod:`.anatomy_template`, how a scan looks given its labels in
:mod:`.anatomy_appearance`; this module holds the models, the sampling calibrations and the
fit that runs them all (:func:`fit_anatomy_first`).
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
from napari_mrisynth.models.anatomy_generator import SCALARS, appearance_layout
from napari_mrisynth.models.conditions import Condition
from napari_mrisynth.preprocess.grid import DEFAULT_MODEL_SPACING_MM
from napari_mrisynth.synthesis.anatomy_appearance import (
    bias_terms,
    calibrate_rendering,
    render_classes,
    scan_appearances,
    super_resolved,
    texture_of,
)
from napari_mrisynth.synthesis.anatomy_template import (
    AnatomyOptions,
    cortex_depths,
    demons,
    groupwise_template,
    logarithm,
    to_nodes,
    to_voxels,
    ventricle_distances,
    volume_matched_labels,
    warp,
    white_distances,
)

#: The largest RMS strain (derivative of the velocity, per axis) of the sampled fine folding.
#: Folding beyond it squeezes the cortical ribbon into islands inside the white matter (seen
#: at about 0.4 at 2 mm and 0.5 at 1 mm); a simulated cohort's own is 0.12-0.19.
FINE_STRAIN_LIMIT = 0.2
#: Candidate spreads (scales of the shape model's components) of the diversity calibration.
SPREAD_CANDIDATES = (1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.8, 2.0)


@dataclass
class Fitted:
    """What fitting produced: the network's arguments and buffers, and a report."""

    args: dict[str, Any]
    buffers: dict[str, np.ndarray]
    report: dict[str, Any] = field(default_factory=dict)
    velocities: dict[str, np.ndarray] = field(default_factory=dict)


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
    warped_labels = [warp(lab, d, spacing, 0) for lab, d in zip(labels, displacements,
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
    looks, psf, psf_errors, residuals = scan_appearances(images, labels, terms, class_label)
    mean_residual = np.mean(
        [warp(r, d, spacing, 1) for r, d in zip(residuals, displacements, strict=True)], axis=0
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
        images[:6], labels[:6], looks[:6], [warp(structure, d, spacing, 1) for d in inverse],
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
    warped_images = [warp(i, d, spacing, 1) for i, d in zip(images, displacements, strict=True)]
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
