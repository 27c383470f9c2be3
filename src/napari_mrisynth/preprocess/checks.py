"""Refuse images a model cannot use, with the file and the reason."""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_mrisynth.errors import InputError
from napari_mrisynth.volume import Volume

#: Fewer voxels than this along an axis is a slice or a localizer, not a 3D scan.
MIN_SIDE = 8

_AXES = ("z (slices)", "y (rows)", "x (columns)")


def check_input(
    volume: Volume | Any, *, modality: str | None = "MR", source: str | None = None
) -> None:
    """Raise :class:`InputError` unless ``volume`` is a usable 3D scan of ``modality``.

    Refused, each with ``source`` (else the volume's ``source``/``name`` metadata) and the
    problem in the message: data that is not 3D (a 2D image, a stack of fewer than 8 slices,
    4D data such as fMRI or DWI), another modality than expected (e.g. CT for an MR model),
    NaN or infinite voxels (counted), an empty image (all zero) or a constant one.

    Parameters
    ----------
    volume : Volume or array
        The scan; a bare array (e.g. a napari layer's data) is checked for shape and values.
    modality : str, optional
        What the model expects (``"MR"``); ``None`` skips the modality check.
    source : str, optional
        File, folder or layer name for the message.
    """
    metadata = volume.metadata if isinstance(volume, Volume) else {}
    name = source or metadata.get("source") or metadata.get("name") or "image"
    data = volume.data if isinstance(volume, Volume) else volume
    shape = tuple(int(n) for n in np.shape(data))
    if len(shape) != 3:
        raise InputError(f"{name}: {_not_3d(shape)}")
    thin = [axis for axis in range(3) if shape[axis] < MIN_SIDE]
    if thin:
        axis = thin[0]
        plane = " x ".join(str(shape[a]) for a in range(3) if a != axis)
        if shape[axis] == 1:
            problem = f"a 2D image (one slice of {plane} voxels), not a 3D scan"
        else:
            problem = (
                f"only {shape[axis]} slices along {_AXES[axis]} (shape {shape}); a 3D scan "
                f"needs at least {MIN_SIDE} voxels along every axis (a localizer?)"
            )
        raise InputError(f"{name}: {problem}")
    found = metadata.get("modality")
    if modality and found and str(found).upper() != modality.upper():
        raise InputError(f"{name}: modality is {found}, but this model expects {modality}")
    data = np.asarray(data)
    if data.dtype.kind in "fc":
        nan = int(np.count_nonzero(np.isnan(data)))
        infinite = int(np.count_nonzero(np.isinf(data)))
        bad = nan + infinite
        if bad:
            raise InputError(
                f"{name}: {bad} voxel(s) are NaN or infinite ({nan} NaN, {infinite} infinite; "
                f"{bad / data.size:.2%} of the image)"
            )
    low, high = float(data.min()), float(data.max())
    if high == low == 0.0:
        raise InputError(f"{name}: empty image (every voxel is 0)")
    if high == low:
        raise InputError(f"{name}: empty image: constant, every voxel is {low:g}")


def _not_3d(shape: tuple[int, ...]) -> str:
    if len(shape) == 4:
        return (
            f"4D data (shape {shape}): a model takes one 3D volume; choose one volume of "
            "the series (fMRI, DWI or a multi-echo series are not T1 scans)"
        )
    if len(shape) == 2:
        return f"a 2D image ({shape[0]} x {shape[1]} voxels), not a 3D scan"
    return f"{len(shape)}D data (shape {shape}), not a 3D scan"
