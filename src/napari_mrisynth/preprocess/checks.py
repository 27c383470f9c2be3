"""Refuse images a model cannot use, with the file and the reason."""

from __future__ import annotations

import numpy as np

from napari_mrisynth.errors import InputError
from napari_mrisynth.volume import Volume

#: Fewer voxels than this along an axis is a slice or a localizer, not a 3D scan.
MIN_SIDE = 8


def check_input(volume: Volume, *, modality: str | None = "MR", source: str | None = None) -> None:
    """Raise :class:`InputError` unless ``volume`` is a usable 3D scan of ``modality``.

    Refused: fewer than 8 voxels along an axis (a 2D image or a single slice), another
    modality than expected (e.g. CT for an MR model), NaN or infinite voxels, an empty or
    constant image.
    """
    name = source or volume.metadata.get("source") or volume.metadata.get("name") or "image"
    shape = volume.shape
    if min(shape) < MIN_SIDE:
        raise InputError(
            f"{name}: not a 3D scan: shape {shape} (z, y, x) has an axis of fewer than "
            f"{MIN_SIDE} voxels (a 2D image, a single slice or a localizer?)"
        )
    found = volume.metadata.get("modality")
    if modality and found and str(found).upper() != modality.upper():
        raise InputError(f"{name}: modality is {found}, but this model expects {modality}")
    data = np.asarray(volume.data)
    if data.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(data)))
        if bad:
            raise InputError(
                f"{name}: {bad} voxel(s) are NaN or infinite ({bad / data.size:.2%} of the image)"
            )
    if data.size == 0 or float(data.max()) == float(data.min()):
        value = float(data.flat[0]) if data.size else 0.0
        raise InputError(f"{name}: empty image (every voxel is {value:g})")
