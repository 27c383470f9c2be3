"""The anatomy-first generator's appearance: how a scan looks given its labels (part of step 3
of :mod:`napari_mrisynth.synthesis.anatomy`).

Per scan its tissue intensities, a quadratic bias field, its noise level and field of view;
per cohort the render classes (mixed labels split by intensity), the point spreads, the
tissue texture, the rendering calibration against the texture model's statistics and the
template's intensity structure, super-resolved from every scan's residual
(:func:`super_resolved`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from napari_mrisynth.anatomy.labels import BRAIN_LABELS, LABEL_IDS, LABELS
from napari_mrisynth.models.anatomy_generator import BIAS_TERMS, TONE_KNOTS

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


def scan_appearances(
    images: Sequence[np.ndarray], labels: Sequence[np.ndarray], terms: np.ndarray,
    class_label: np.ndarray,
) -> tuple[list[dict[str, Any]], tuple[float, float], dict, list[np.ndarray]]:  # fmt: skip
    """Every scan's appearance (:func:`appearance_of`) under the point spreads fitted on the
    first eight (:func:`fit_psf`), a label a scan lacks given the other scans' median
    intensity and a scan without air the others' noise, and its residual: the scan,
    bias-corrected, less its labels rendered.

    Returns the looks, the point spreads (brain, head), :func:`fit_psf`'s errors and the
    residuals.
    """
    count = len(class_label)
    looks = [appearance_of(i, lab, terms, count, 0.5, class_label)
             for i, lab in zip(images, labels, strict=True)]  # fmt: skip
    psf, psf_errors = fit_psf(images[:8], labels[:8], looks[:8], terms, class_label)
    looks = [appearance_of(i, lab, terms, count, psf, class_label)
             for i, lab in zip(images, labels, strict=True)]  # fmt: skip
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
    return looks, psf, psf_errors, residuals


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

    # what a scan's render is made of, kept for the setting it was made for: a coordinate
    # descent changes one setting at a time, and the parts the others make stay the same
    held: dict[tuple[str, int], tuple[Any, Any]] = {}

    def part(name: str, k: int, key: Any, make: Callable[[], Any]) -> Any:
        if (name, k) not in held or held[(name, k)][0] != key:
            held[(name, k)] = (key, make())
        return held[(name, k)][1]

    def rendered(k: int, setting: dict[str, float]) -> np.ndarray:
        look, label = looks[k], labels[k]
        image = part("render", k, (setting["psf"], setting["psf_head"]), lambda: render(
            look["intensity"], label, class_label, (setting["psf"], setting["psf_head"])
        ) + structures[k])  # fmt: skip
        brain = part("brain", k, None, lambda: np.isin(class_label[label], BRAIN_LABELS))
        if setting["texture_rms"] > 0:
            texture = part("texture", k, setting["texture_sigma"], lambda: _smooth_field(
                label.shape, setting["texture_sigma"], 100 + k))  # fmt: skip
            image = image * (1.0 + setting["texture_rms"] * texture * brain)
        image = image * part("bias", k, None,
                             lambda: np.exp(np.tensordot(look["bias"], terms, axes=1)))  # fmt: skip
        sigma = look["noise"] * setting["noise_scale"]
        fields = part("noise", k, setting["noise_blur"], lambda: [_smooth_field(
            image.shape, setting["noise_blur"], 200 + 2 * k + j) for j in range(2)])  # fmt: skip
        noise = [sigma * field for field in fields]
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
