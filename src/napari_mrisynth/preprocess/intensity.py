"""Intensity normalisation, as a model card's ``input.normalisation`` names it."""

from __future__ import annotations

import numpy as np

from napari_mrisynth.errors import InputError

#: Upper clip after percentile scaling: keeps fat and vessels without letting them dominate.
PERCENTILE_CLIP = 1.5


def head_mask(array: np.ndarray) -> np.ndarray:
    """Voxels brighter than 5 % of the 99th percentile: the head, not the air around it."""
    high = float(np.percentile(array, 99.0))
    return array > 0.05 * high


def normalise_intensity(
    array: np.ndarray,
    method: str = "percentile",
    *,
    lower: float = 0.5,
    upper: float = 99.5,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Scale intensities to a model's range, from statistics over ``mask``.

    Parameters
    ----------
    array : ndarray
    method : {"percentile", "zscore"}
        ``percentile``: ``(x - p_lower) / (p_upper - p_lower)`` clipped to [0, 1.5];
        ``zscore``: ``(x - mean) / std``.
    lower, upper : float
        Percentiles for ``percentile``.
    mask : ndarray of bool, optional
        Voxels the statistics come from; default :func:`head_mask`.

    Returns
    -------
    ndarray of float32, same shape.
    """
    data = np.asarray(array, dtype=np.float32)
    region = head_mask(data) if mask is None else np.asarray(mask, dtype=bool)
    values = data[region]
    if values.size == 0:
        raise InputError("normalisation: the mask selects no voxel (an empty image?)")
    if method == "percentile":
        lo, hi = np.percentile(values, (lower, upper))
        if not hi > lo:
            raise InputError(f"normalisation: constant intensity {lo:g} inside the mask")
        return np.clip((data - lo) / (hi - lo), 0.0, PERCENTILE_CLIP).astype(np.float32)
    if method == "zscore":
        mean, std = float(values.mean()), float(values.std())
        if not std > 0:
            raise InputError(f"normalisation: constant intensity {mean:g} inside the mask")
        return ((data - mean) / std).astype(np.float32)
    raise ValueError(f"unknown normalisation {method!r}: use 'percentile' or 'zscore'")
