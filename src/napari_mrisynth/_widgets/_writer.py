"""napari writers: image and labels layers to NIfTI with their patient geometry.

The layer's data-to-world transform (LPS mm in z, y, x order, as this plugin's reader and
sample data make it) becomes the NIfTI affine, so what is written sits where it was shown.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from napari_mrisynth.errors import MrisynthError
from napari_mrisynth.volume import volume_from_layer, volume_to_nifti

from ._layer_data import data_to_world_matrix

#: Integer types NIfTI readers everywhere understand, smallest first (labels are cast to
#: the first that holds every value; nibabel refuses int64 without being told).
LABEL_DTYPES = (np.uint8, np.int16, np.uint16, np.int32)


def write_image(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Write an image layer to ``.nii`` / ``.nii.gz`` with its geometry.

    Parameters
    ----------
    path : str
        Target file; ``.nii`` or ``.nii.gz``.
    data : array
        The layer's data (numpy or dask; the first level of a multiscale layer).
    meta : dict
        The layer's state (``scale``, ``translate``, ``rotate``, ``shear``, ``affine``...).

    Returns
    -------
    list of str
        The path written.
    """
    return [_write_nifti(path, data, meta, labels=False)]


def write_labels(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Write a labels layer to ``.nii`` / ``.nii.gz``: integer voxels, label intent, geometry.

    Parameters
    ----------
    path : str
        Target file; ``.nii`` or ``.nii.gz``.
    data : array
        Integer label voxels.
    meta : dict
        The layer's state.

    Returns
    -------
    list of str
        The path written.
    """
    return [_write_nifti(path, data, meta, labels=True)]


def _write_nifti(path: str, data: Any, meta: dict[str, Any], *, labels: bool) -> str:
    import nibabel as nib

    if meta.get("multiscale"):
        data = data[0]
    if getattr(data, "ndim", None) != 3:
        raise MrisynthError(f"{path}: only 3D layers can be written, got shape {np.shape(data)}")
    matrix = data_to_world_matrix(
        meta.get("scale", (1, 1, 1)),
        meta.get("translate", (0, 0, 0)),
        meta.get("rotate"),
        meta.get("shear"),
        meta.get("affine", np.eye(4)),
    )
    voxels = np.asarray(data)
    if labels:
        voxels = voxels.astype(_smallest_label_dtype(voxels, path), copy=False)
    volume = volume_from_layer(voxels, matrix)
    image = volume_to_nifti(volume)
    if labels:
        image.header.set_intent("label")
    image.header["descrip"] = str(meta.get("name", ""))[:79].encode("ascii", "replace")
    nib.save(image, path)
    return str(Path(path))


def _smallest_label_dtype(voxels: np.ndarray, path: str) -> np.dtype:
    if voxels.dtype.kind not in "iub":
        raise MrisynthError(f"{path}: labels must be integers, got {voxels.dtype}")
    low, high = (int(voxels.min()), int(voxels.max())) if voxels.size else (0, 0)
    for dtype in LABEL_DTYPES:
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return np.dtype(dtype)
    raise MrisynthError(f"{path}: label values {low}..{high} do not fit in int32")
