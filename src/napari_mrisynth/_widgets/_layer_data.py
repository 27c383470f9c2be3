"""Volumes to napari LayerData and back: the one place the widgets turn geometry into layers.

Everything here is plain numpy/dask on top of :mod:`napari_mrisynth.volume`; it may run in a
worker thread (it never touches a layer or a Qt object).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from napari.utils.colormaps import DirectLabelColormap
from napari.utils.transforms import Affine

from napari_mrisynth.volume import Volume, napari_layer_kwargs, volume_from_layer

#: napari LayerData: (data, layer keyword arguments, layer type).
LayerData = tuple[Any, dict[str, Any], str]


def display_contrast_limits(volume: Volume) -> tuple[float, float]:
    """Contrast limits without reading the whole volume.

    The DICOM window when the series has one; otherwise the 0.5-99.5 percentile of the
    middle slice as stored (one dask chunk, one file, for a lazy series).
    """
    window = volume.metadata.get("window")
    if window is not None:
        center, width = (float(np.ravel(v)[0]) for v in window)
        if width > 0:
            return center - width / 2, center + width / 2
    middle = np.asarray(volume.data[volume.shape[0] // 2], dtype=np.float64)
    low, high = np.percentile(middle, (0.5, 99.5)) if middle.size else (0.0, 1.0)
    if high <= low:
        low, high = float(middle.min()), float(middle.max())
    return float(low), float(high) if high > low else float(low) + 1.0


def image_layer_data(volume: Volume, name: str | None = None) -> LayerData:
    """LayerData of an image in patient space (radiological display, lazy when the volume is)."""
    if name is not None:
        volume = volume.with_data(volume.data, name=name)
    data, kwargs = napari_layer_kwargs(volume)
    kwargs.update(
        contrast_limits=display_contrast_limits(volume),
        multiscale=False,  # napari would otherwise inspect a dask array to guess pyramids
        colormap="gray",
    )
    return data, kwargs, "image"


def labels_layer_data(
    volume: Volume, name: str | None = None, color_dict: dict[int | None, Any] | None = None
) -> LayerData:
    """LayerData of a label volume (nearest-neighbour if it must be resampled).

    ``color_dict`` maps label values (and ``None``, the default) to RGBA in 0-1, as
    :class:`napari.utils.colormaps.DirectLabelColormap` takes it.
    """
    if name is not None:
        volume = volume.with_data(volume.data, name=name)
    data, kwargs = napari_layer_kwargs(volume, labels=True)
    if color_dict:
        kwargs["colormap"] = DirectLabelColormap(color_dict=color_dict)
    return data, kwargs, "labels"


def data_to_world_matrix(
    scale: Any, translate: Any, rotate: Any, shear: Any, affine: Any
) -> np.ndarray:
    """4x4 data-to-world matrix of a 3D layer from its transform properties.

    napari applies ``affine @ (rotate @ shear @ scale + translate)``; this composes the same.
    """
    inner = Affine(scale=scale, translate=translate, rotate=rotate, shear=shear)
    outer = affine if isinstance(affine, Affine) else Affine(affine_matrix=np.asarray(affine))
    return np.asarray(outer.affine_matrix) @ np.asarray(inner.affine_matrix)


def layer_volume(layer: Any, *, read: bool = True) -> Volume:
    """Voxels and patient geometry of a 3D napari layer.

    With ``read=False`` the voxels are a zero-copy placeholder of the right shape and dtype,
    so the geometry of a lazy layer can be shown without reading a single slice.
    """
    matrix = data_to_world_matrix(
        layer.scale, layer.translate, layer.rotate, layer.shear, layer.affine
    )
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    if not read:
        data = np.broadcast_to(np.zeros(1, dtype=data.dtype), data.shape)
    return volume_from_layer(data, matrix, dict(layer.metadata.get("mrisynth", {})))
