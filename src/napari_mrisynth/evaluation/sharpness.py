"""How sharp a volume is, measured the same way on real and synthetic volumes.

Both measures run on volumes prepared exactly as raters see them
(:mod:`.presentation`: one grid, one intensity distribution, uint8), inside the brain of
the reference head, so that they compare texture and edges, not contrast or crop:

* **high-frequency energy**: the power of the volume's spectrum at wavelengths between two
  and four voxels (the upper half of the frequency band the grid can hold), per voxel of
  the brain region, after subtracting its mean and tapering its edges;
* **gradient magnitude**: the distribution of ``|grad I|`` (grey levels per mm) over the
  brain, summarised by its median and 90th percentile.

A blurred generator keeps a few percent of the real scans' high-frequency energy; a sharp
one is within a factor of 0.8-1.25 of them, as real scans are of each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

#: The band of "high" frequencies, as a fraction of the Nyquist frequency.
HIGH_BAND = (0.5, 1.0)
#: Gradient-magnitude percentiles reported.
GRADIENT_PERCENTILES = (50, 90)


def brain_region(shape: tuple[int, ...], spacing: float) -> np.ndarray:
    """The reference head's brain, eroded by 2 mm, on the study grid of ``spacing`` mm in
    display order (what prepared volumes share)."""
    from scipy import ndimage as ndi

    from napari_mrisynth.preprocess import default_model_grid, reference_on_grid
    from napari_mrisynth.volume import to_display_volume

    grid = default_model_grid(float(spacing))
    brain = reference_on_grid(grid)[1].astype(np.uint8)
    display = np.asarray(to_display_volume(grid.volume(brain), labels=True).data).astype(bool)
    if display.shape != tuple(shape):
        raise ValueError(f"volumes of shape {tuple(shape)} are not on the {spacing:g} mm study "
                         f"grid {display.shape}")  # fmt: skip
    from napari_mrisynth.preprocess import BRAIN_MASK_DILATION

    # reference_on_grid dilates the brain by BRAIN_MASK_DILATION voxels: undo it, then 2 mm
    erosion = BRAIN_MASK_DILATION + max(1, int(round(2.0 / spacing)))
    return ndi.binary_erosion(display, iterations=erosion)


def _box(mask: np.ndarray) -> tuple[slice, ...]:
    index = np.argwhere(mask)
    low, high = index.min(axis=0), index.max(axis=0) + 1
    return tuple(slice(int(a), int(b)) for a, b in zip(low, high, strict=True))


def high_frequency_energy(image: np.ndarray, region: np.ndarray) -> float:
    """Spectral power at wavelengths of 2-4 voxels per voxel of ``region`` (grey levels²).

    The region's bounding box is taken, its mean subtracted inside the region, voxels
    outside it set to 0, and a Tukey window tapers the box's faces before the FFT.
    """
    from scipy.signal.windows import tukey

    box = _box(region)
    values = np.asarray(image[box], dtype=np.float64)
    inside = region[box]
    values = np.where(inside, values - values[inside].mean(), 0.0)
    window = np.ones(values.shape)
    for axis, n in enumerate(values.shape):
        shape = [1] * values.ndim
        shape[axis] = n
        window = window * tukey(n, 0.2).reshape(shape)
    power = np.abs(np.fft.fftn(values * window)) ** 2 / values.size
    frequency = np.sqrt(sum(
        f**2 for f in np.meshgrid(*(np.fft.fftfreq(n) * 2 for n in values.shape), indexing="ij")
    ))  # fmt: skip  # 1 = Nyquist
    band = (frequency >= HIGH_BAND[0]) & (frequency <= HIGH_BAND[1])
    return float(power[band].sum() / inside.sum())


def gradient_statistics(image: np.ndarray, region: np.ndarray, spacing: float) -> dict:
    """Median and 90th percentile of the gradient magnitude (grey levels per mm) in
    ``region``."""
    gradient = np.gradient(np.asarray(image, dtype=np.float32), float(spacing))
    magnitude = np.sqrt(sum(g**2 for g in gradient))[region]
    return {f"p{p}": float(np.percentile(magnitude, p)) for p in GRADIENT_PERCENTILES}


def _bootstrap_ratio(
    synthetic: np.ndarray, real: np.ndarray, seed: int, draws: int = 2000
) -> tuple[float, float]:
    """95 % bootstrap interval of mean(synthetic) / mean(real), volumes resampled."""
    rng = np.random.default_rng(seed)
    ratios = [
        rng.choice(synthetic, synthetic.size).mean() / rng.choice(real, real.size).mean()
        for _ in range(draws)
    ]
    low, high = np.percentile(ratios, [2.5, 97.5])
    return float(low), float(high)


def sharpness_report(
    real: Sequence[np.ndarray], synthetic: Sequence[np.ndarray], spacing: float, *, seed: int = 0
) -> dict[str, Any]:
    """High-frequency energy and gradient statistics of two prepared sets, as synthetic /
    real ratios with bootstrap 95 % intervals, beside the real-vs-real ratio of the real
    set's two halves (the floor: how far real scans are from each other).

    Parameters
    ----------
    real, synthetic : sequences of uint8 arrays
        Prepared volumes (:func:`~.presentation.present_volumes`), one grid.
    spacing : float
        The grid's voxel size, mm.
    """
    region = brain_region(real[0].shape, spacing)
    measures: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def per_set(volumes: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        rows = []
        for image in volumes:
            stats = gradient_statistics(image, region, spacing)
            rows.append({"hf_energy": high_frequency_energy(image, region),
                         **{f"gradient_{k}": v for k, v in stats.items()}})  # fmt: skip
        return {key: np.array([r[key] for r in rows]) for key in rows[0]}

    real_values, synthetic_values = per_set(real), per_set(synthetic)
    halves = np.random.default_rng(seed).permutation(len(real))
    first, second = halves[: len(real) // 2], halves[len(real) // 2 :]
    out: dict[str, Any] = {"region": "reference brain eroded by 2 mm", "spacing": spacing,
                           "band": f"wavelengths of {2 / HIGH_BAND[1]:g}-{2 / HIGH_BAND[0]:g} "
                                   "voxels"}  # fmt: skip
    for key in real_values:
        r, s = real_values[key], synthetic_values[key]
        measures[key] = (r, s)
        floor = (float(r[second].mean() / r[first].mean())
                 if len(first) and len(second) else None)  # fmt: skip
        out[key] = {
            "real": float(r.mean()),
            "synthetic": float(s.mean()),
            "ratio": float(s.mean() / r.mean()),
            "ci95": list(_bootstrap_ratio(s, r, seed)),
            "floor": floor,
            "per_volume": {"real": r.tolist(), "synthetic": s.tolist()},
        }
    return out
