"""Generative-model metrics on feature vectors, class probabilities and images.

Plain functions on arrays, one per metric, so that each can be checked against a closed
form or a reference implementation:

* :func:`frechet_distance` (FID): MONAI's ``FIDMetric`` on feature vectors.
* :func:`kernel_inception_distance` (KID): unbiased polynomial-kernel MMD² averaged over
  random subsets (Bińkowski et al. 2018), written here; MONAI has none.
* :func:`inception_score` (IS): ``exp(E_x KL(p(y|x) || p(y)))`` from class probabilities.
* :func:`ms_ssim_pairs`: MONAI's ``MultiScaleSSIMMetric`` with a kernel and a number of
  scales that fit the volumes (the defaults need 176 voxels per side).
* :func:`maximum_mean_discrepancy` (MMD): MONAI's ``MMDMetric`` (linear kernel) on images.

torch and MONAI are imported inside the functions.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

#: MONAI's (and Wang et al.'s) MS-SSIM scale weights, finest scale first.
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
#: Gaussian window of MS-SSIM in voxels; small, as in MONAI's 3D generative tutorials.
MS_SSIM_KERNEL = 4


def _as_matrix(features: Any, name: str) -> np.ndarray:
    array = np.asarray(features, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] < 2:
        raise ValueError(f"{name}: need a (n >= 2, d) matrix of feature vectors, got {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name}: feature vectors hold NaN or infinity")
    return array


def frechet_distance(real: Any, synthetic: Any) -> float:
    """Fréchet distance between Gaussians fitted to two sets of feature vectors (FID).

    Parameters
    ----------
    real, synthetic : array (n, d)
        One feature vector per volume; at least two each.

    Returns
    -------
    float
        ``|mu_r - mu_s|² + tr(S_r + S_s - 2 (S_r S_s)^(1/2))``; rounding below zero
        (identical sets) is returned as 0.
    """
    import torch
    from monai.metrics import FIDMetric

    y = torch.from_numpy(_as_matrix(real, "real"))
    y_pred = torch.from_numpy(_as_matrix(synthetic, "synthetic"))
    if y.shape[1] != y_pred.shape[1]:
        raise ValueError(f"feature sizes differ: {y.shape[1]} and {y_pred.shape[1]}")
    # MONAI prints a note for singular covariances (few volumes): keep stdout for results.
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # scipy's sqrtm(disp=...)
        value = float(FIDMetric()(y_pred, y))
    return max(value, 0.0)


def polynomial_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² of two samples with the kernel ``k(a, b) = (a·b / d + 1)³``."""
    d = x.shape[1]
    kxx = (x @ x.T / d + 1.0) ** 3
    kyy = (y @ y.T / d + 1.0) ** 3
    kxy = (x @ y.T / d + 1.0) ** 3
    m, n = len(x), len(y)
    within_x = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    within_y = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(within_x + within_y - 2.0 * kxy.mean())


def kernel_inception_distance(
    real: Any,
    synthetic: Any,
    *,
    subset_size: int = 1000,
    subsets: int = 100,
    seed: int = 0,
) -> tuple[float, float]:
    """Kernel Inception Distance: unbiased polynomial MMD² over random subsets.

    Parameters
    ----------
    real, synthetic : array (n, d)
    subset_size : int
        Volumes per subset, capped at the smaller set (Bińkowski et al. use 1000).
    subsets : int
        Subsets drawn (without replacement within a subset); one when a subset is the
        whole of both sets, since every draw would be the same.
    seed : int

    Returns
    -------
    (mean, std) over the subsets. Unbiased: it can be slightly negative, and is 0 on
    average for two samples of one distribution.
    """
    x = _as_matrix(real, "real")
    y = _as_matrix(synthetic, "synthetic")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature sizes differ: {x.shape[1]} and {y.shape[1]}")
    size = min(int(subset_size), len(x), len(y))
    if size < 2:
        raise ValueError("KID needs subsets of at least two volumes")
    if size == len(x) == len(y):
        return polynomial_mmd2(x, y), 0.0
    rng = np.random.default_rng(seed)
    values = [
        polynomial_mmd2(
            x[rng.choice(len(x), size, replace=False)], y[rng.choice(len(y), size, replace=False)]
        )
        for _ in range(int(subsets))
    ]
    return float(np.mean(values)), float(np.std(values))


def inception_score(probabilities: Any) -> float:
    """Inception Score of a set: ``exp(mean_x KL(p(y|x) || p(y)))``, p(y) the set's mean.

    1 when every volume gets the same class probabilities; at most the number of classes
    (reached when each volume is classified with certainty and the classes are balanced).
    """
    from scipy.special import rel_entr

    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2 or len(p) < 1:
        raise ValueError(f"need a (n, classes) matrix of probabilities, got shape {p.shape}")
    if np.any(p < 0) or not np.allclose(p.sum(axis=1), 1.0, atol=1e-4):
        raise ValueError("each row must be class probabilities (non-negative, summing to 1)")
    marginal = p.mean(axis=0, keepdims=True)
    kl = rel_entr(p, marginal).sum(axis=1)
    return float(np.exp(kl.mean()))


def ms_ssim_settings(shape: Sequence[int]) -> dict[str, Any]:
    """Kernel and scale weights of MS-SSIM that fit volumes of ``shape`` (z, y, x).

    As many of the standard five scales as fit: after ``s - 1`` halvings the smallest side
    must still hold the kernel, and MONAI's own size check
    (``side // (s - 1)² > kernel - 1``) must pass. The weights kept are renormalised to 1.
    """
    side = min(int(n) for n in shape)
    kernel = MS_SSIM_KERNEL
    for scales in range(len(MS_SSIM_WEIGHTS), 0, -1):
        if side // 2 ** (scales - 1) >= kernel and side // max(1, scales - 1) ** 2 > kernel - 1:
            break
    else:
        raise ValueError(f"volumes of shape {tuple(shape)} are too small for MS-SSIM")
    weights = np.asarray(MS_SSIM_WEIGHTS[:scales])
    return {"kernel_size": kernel, "weights": tuple(float(w) for w in weights / weights.sum())}


def ms_ssim_pairs(
    images: Sequence[np.ndarray], pairs: Sequence[tuple[int, int]], *, batch: int = 4
) -> np.ndarray:
    """MS-SSIM of each pair ``(i, j)`` of ``images`` (arrays in [0, 1], one shape).

    Returns
    -------
    ndarray (len(pairs),); 1 for identical images.
    """
    import torch
    from monai.metrics import MultiScaleSSIMMetric

    if not pairs:
        return np.zeros(0)
    settings = ms_ssim_settings(images[0].shape)
    metric = MultiScaleSSIMMetric(spatial_dims=3, data_range=1.0, reduction="none", **settings)
    out = []
    for start in range(0, len(pairs), batch):
        chunk = pairs[start : start + batch]
        a = torch.from_numpy(np.stack([images[i] for i, _ in chunk]))[:, None].float()
        b = torch.from_numpy(np.stack([images[j] for _, j in chunk]))[:, None].float()
        with torch.no_grad():
            out.append(metric(a, b).reshape(-1).numpy())
    return np.concatenate(out).astype(np.float64)


def random_pairs(n: int, max_pairs: int, seed: int) -> list[tuple[int, int]]:
    """All pairs ``i < j`` of ``n`` items, or ``max_pairs`` of them drawn with ``seed``."""
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    if len(pairs) <= max_pairs:
        return pairs
    chosen = np.random.default_rng(seed).choice(len(pairs), max_pairs, replace=False)
    return [pairs[k] for k in sorted(chosen)]


def maximum_mean_discrepancy(
    real: Sequence[np.ndarray], synthetic: Sequence[np.ndarray], *, subsets: int = 10, seed: int = 0
) -> float:
    """MONAI's unbiased MMD (linear kernel) between two sets of images on one grid.

    Images are scaled by ``1/sqrt(voxels)`` so the kernel is a mean over voxels and the value
    does not grow with the grid. ``MMDMetric`` pairs ``y`` and ``y_pred`` batch by batch and
    needs equal counts: with unequal sets, equal-sized random subsets of the larger set are
    drawn ``subsets`` times and the values averaged.
    """
    import torch
    from monai.metrics import MMDMetric

    if len(real) < 2 or len(synthetic) < 2:
        raise ValueError("MMD needs at least two images in each set")
    scale = 1.0 / np.sqrt(real[0].size)

    def stack(images: Sequence[np.ndarray], index: Sequence[int]) -> Any:
        data = np.stack([images[i] for i in index]).astype(np.float64) * scale
        return torch.from_numpy(data)[:, None]

    size = min(len(real), len(synthetic))
    draws = 1 if len(real) == len(synthetic) else int(subsets)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(draws):
        real_index = sorted(rng.choice(len(real), size, replace=False))
        synthetic_index = sorted(rng.choice(len(synthetic), size, replace=False))
        value = MMDMetric()(stack(real, real_index), stack(synthetic, synthetic_index))
        values.append(float(value))
    return float(np.mean(values))


def split_halves(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random split of ``range(n)`` into two halves (sizes differ by at most 1)."""
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[: n // 2]), np.sort(order[n // 2 :])
