"""Loading a stack into an exact :class:`~napari_mrisynth.volume.Volume`, eagerly or lazily
(one dask chunk per slice), and resampling an irregular stack onto a regular grid when asked.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from napari_mrisynth.errors import DicomFileError, GeometryError
from napari_mrisynth.io.dicom._walker import (
    Header,
)
from napari_mrisynth.io.dicom.encoding import DicomConversionWarning, Encoding, check_encoding
from napari_mrisynth.io.dicom.pixels import PixelReader, output_dtype, rescale_of
from napari_mrisynth.io.dicom.scan import Progress, scan_folder
from napari_mrisynth.io.dicom.stack import Series
from napari_mrisynth.volume import Volume


def _metadata(series: Series, encoding: Encoding) -> dict[str, Any]:
    first = series.headers[0]
    window = None
    if first.window_center and first.window_width:
        centre = float(first.window_center[0])
        if encoding.invert_about is not None:
            centre = encoding.invert_about - centre
        window = (centre, float(first.window_width[0]))
    # from the headers' str paths: formatting hundreds of Path objects costs milliseconds
    paths = list(dict.fromkeys(h.path for h in series.headers))
    common = os.path.commonpath(paths) if paths else ""
    return {
        "modality": series.modality,
        "series_uid": series.uid,
        "series_number": series.number,
        "description": series.description,
        "name": series.name,
        "source": common,
        "key": series.key,
        "window": window,
        "rescale": rescale_of(first),
        "problems": list(series.problems) + encoding.notes,
    }


def load_series(
    series: Series, *, lazy: bool = False, resample: bool = False, progress: Progress | None = None
) -> Volume:
    """Read one series into a `Volume` (modality values: rescale slope/intercept applied).

    Parameters
    ----------
    series : Series
        From :func:`scan_folder`.
    lazy : bool
        Return a dask array with one chunk per slice; each chunk reads only its own
        file's pixel bytes when computed. Ignored (read eagerly) when resampling.
    resample : bool
        Put an irregular stack (missing slice, non-uniform spacing, shear) onto a regular
        grid by linear interpolation; ``metadata['resampled']`` records how.
    progress : callable, optional
        ``progress(done, total)`` while slices are read (eager loads).

    Returns
    -------
    Volume
        Integer voxels when the rescale keeps integers in range, else float32. A
        MONOCHROME1 series is inverted to MONOCHROME2; ``metadata['problems']`` and a
        `DicomConversionWarning` say how.

    Warns
    -----
    DicomConversionWarning
        Once per note on the conversion (MONOCHROME1 inverted, slices encoded differently).

    Raises
    ------
    DicomFileError
        A slice's pixel encoding is contradictory (BitsAllocated, BitsStored,
        PixelRepresentation, RescaleSlope, RescaleIntercept: see :mod:`.encoding`), or
        its pixel data cannot be read or decoded.
    SeriesError
        The series mixes MONOCHROME1 and MONOCHROME2 slices.
    GeometryError
        The stack is irregular and ``resample`` is False, or it cannot be resampled
        (duplicate positions).
    """
    encoding = check_encoding(series)
    if series.irregular == "refuse" or (series.irregular and not resample):
        hint = "" if series.irregular == "refuse" else "; load with resample=True (--resample)"
        raise GeometryError(
            f"series {series.key} ({series.name}) is not a regular grid: "
            + "; ".join(series.problems)
            + hint
        )
    headers = series.headers
    dtype = output_dtype(headers)
    shape = series.shape
    metadata = _metadata(series, encoding)
    if lazy and not series.irregular:
        data = _lazy_array(headers, shape, dtype, encoding)
        volume = Volume(data, series.spacing, series.origin, series.direction, metadata)
    else:
        data = np.empty(shape, dtype=dtype)
        reader = PixelReader(encoding.invert_about)
        for k, h in enumerate(headers):
            reader.read(h, data[k])
            if progress is not None and ((k + 1) % 32 == 0 or k + 1 == shape[0]):
                progress(k + 1, shape[0])
        if series.irregular:
            volume = _resample(series, data, metadata)
        else:
            volume = Volume(data, series.spacing, series.origin, series.direction, metadata)
    for note in encoding.notes:  # once converted (or, lazily, once set up)
        warnings.warn(
            f"{metadata['source']}: series {series.name}: {note}",
            DicomConversionWarning,
            stacklevel=2,
        )
    return volume


def _lazy_array(
    headers: list[Header], shape: tuple[int, int, int], dtype: np.dtype, encoding: Encoding
) -> Any:
    import dask.array as da
    from dask.base import tokenize

    # shared: a multi-frame file is decoded once, not per frame
    reader = PixelReader(encoding.invert_about)

    def read_slice(k: int) -> np.ndarray:
        out = np.empty((1, shape[1], shape[2]), dtype=dtype)
        reader.read(headers[k], out[0])
        return out

    name = "dicom-" + tokenize(
        [str(h.path) for h in headers], [h.frame for h in headers], dtype, encoding.invert_about
    )
    graph = {(name, k, 0, 0): (read_slice, k) for k in range(shape[0])}
    chunks = ((1,) * shape[0], (shape[1],), (shape[2],))
    return da.Array(graph, name, chunks, dtype=dtype)


def _resample(series: Series, data: np.ndarray, metadata: dict[str, Any]) -> Volume:
    """Linear interpolation along the normal onto uniform positions; in-plane shift first
    for a sheared stack so every slice sits on the orthogonal grid of the first."""
    from scipy import ndimage

    positions = series.positions
    row, col, normal = series.direction.T
    along = (positions - positions[0]) @ normal
    offsets = positions - positions[0] - np.outer(along, normal)
    sheared = bool(np.any(np.linalg.norm(offsets, axis=1) > 1e-6))
    source = data.astype(np.float32)
    fill = float(source.min()) if source.size else 0.0
    if sheared:
        sx, sy = series.spacing[0], series.spacing[1]
        for k in range(len(source)):
            shift = (offsets[k] @ col / sy, offsets[k] @ row / sx)
            if shift != (0.0, 0.0):
                source[k] = ndimage.shift(source[k], shift, order=1, mode="constant", cval=fill)
    steps = np.diff(along)
    # about the finest spacing found, adjusted so the grid spans first to last slice (as
    # dcm2niix's equidistant output does): no acquired slice is dropped
    step = float(steps.min()) if len(steps) else float(series.spacing[2])
    count = int(round(along[-1] / step)) + 1 if len(steps) else 1
    step = float(along[-1]) / (count - 1) if count > 1 else step
    targets = np.arange(count) * step
    upper = np.clip(np.searchsorted(along, targets, side="right"), 1, len(along) - 1)
    lower = upper - 1
    span = along[upper] - along[lower]
    weight = np.clip((targets - along[lower]) / np.where(span > 0, span, 1.0), 0.0, 1.0)
    out = np.empty((count, *source.shape[1:]), dtype=np.float32)
    for m in range(count):
        w = np.float32(weight[m])
        np.multiply(source[lower[m]], 1 - w, out=out[m])
        out[m] += w * source[upper[m]]
    metadata["resampled"] = {
        "reason": list(series.problems),
        "source_positions_mm": [round(float(a), 4) for a in along],
        "slice_spacing_mm": float(step),
        "interpolation": "linear along the slice normal"
        + (", bilinear in-plane shift of each slice onto the first (shear)" if sheared else ""),
    }
    spacing = np.array([series.spacing[0], series.spacing[1], step])
    return Volume(out, spacing, positions[0], series.direction, metadata)


def load_dicom(
    path: str | Path,
    *,
    series: str | int | None = None,
    lazy: bool = False,
    resample: bool = False,
) -> Volume:
    """Scan ``path`` (folder or file) and load one series.

    Parameters
    ----------
    path : path
        A folder (searched recursively) or one DICOM file.
    series : str or int, optional
        Key, SeriesInstanceUID or SeriesNumber; needed when there are several series.
    lazy, resample : bool
        See :func:`load_series`.

    Raises
    ------
    VolumeFileError
        ``path`` does not exist.
    DicomFileError
        ``path`` is a single file that is not a usable image (the reason says why).
    SeriesError
        No image series found, or the choice is missing or ambiguous.
    GeometryError
        The series is irregular and ``resample`` is False.
    """
    scan = scan_folder(path)
    if not scan.series and len(scan.skipped) == 1 and Path(path).is_file():
        raise DicomFileError(scan.skipped[0].path, scan.skipped[0].reason)
    return load_series(scan.select(series), lazy=lazy, resample=resample)
