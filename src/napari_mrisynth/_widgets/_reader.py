"""napari reader: DICOM folders and files, NIfTI, MHA/MHD and NRRD as layers in patient space.

Claimed paths that turn out to be broken give a napari error notification naming the file
and the reason, and no layer; the viewer keeps running. DICOM series are read lazily, one
dask chunk per slice, so the first slice shows before the series is read.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from napari.utils.notifications import show_error, show_warning

from napari_mrisynth.errors import MrisynthError
from napari_mrisynth.io.dicom import FolderScan, Series, is_dicom_file, load_series, scan_folder
from napari_mrisynth.io.files import DICOM_SUFFIXES, VOLUME_SUFFIXES, volume_stem

from ._layer_data import LayerData, image_layer_data, labels_layer_data

#: A folder is claimed when one of its first files is DICOM; looking further costs time.
FOLDER_PROBE_FILES = 32
#: BIDS suffixes of integer label images (segmentations, masks).
LABEL_NAME_HINTS = ("_dseg", "_mask", "_label", "_labels", "_seg")

#: What napari's reader API accepts as a path.
PathOrPaths = str | os.PathLike | Sequence[str | os.PathLike]

#: A napari null layer: "read, nothing to add" (no second error from napari).
NO_LAYER: list = [(None,)]


def napari_get_reader(path: PathOrPaths) -> Callable[[PathOrPaths], list] | None:
    """Return :func:`read_paths` when every path is one this plugin reads, else ``None``.

    Parameters
    ----------
    path : str, PathLike or list of them
        A file or a folder; a folder is claimed only when it contains DICOM files.

    Returns
    -------
    callable or None
        The reader function, or ``None`` for paths this plugin does not claim.
    """
    paths = _as_list(path)
    if not paths or not all(claims(p) for p in paths):
        return None
    return read_paths


def claims(path: str | os.PathLike) -> bool:
    """True for paths this plugin reads: cheap checks only (suffix, first bytes, a few files)."""
    p = Path(path)
    if p.is_dir():
        return any(is_dicom_file(f) for f in _first_files(p, FOLDER_PROBE_FILES))
    name = p.name.lower()
    if name.endswith(VOLUME_SUFFIXES + DICOM_SUFFIXES):
        return True
    return p.is_file() and is_dicom_file(p)


def read_paths(path: PathOrPaths) -> list:
    """Read every path into napari LayerData; errors become notifications, not crashes.

    Parameters
    ----------
    path : str, PathLike or list of them
        DICOM folders or files, NIfTI, MHA/MHD or NRRD files.

    Returns
    -------
    list of LayerData
        One image (or labels) layer per volume or DICOM series; napari's null layer when
        nothing could be read, after an error notification naming the file.
    """
    layers: list[LayerData] = []
    for p in _as_list(path):
        try:
            layers.extend(read_path(Path(p)))
        except MrisynthError as exc:
            show_error(_naming(p, exc))
    return layers or NO_LAYER


def read_path(path: Path) -> list[LayerData]:
    """LayerData of one path; raises :class:`MrisynthError` when it cannot be read."""
    if path.name.lower().endswith(VOLUME_SUFFIXES):
        from napari_mrisynth.io.files import load_volume  # SimpleITK only when a file needs it

        volume = load_volume(path)
        stem = volume_stem(path)
        if _looks_like_labels(path, volume.dtype):
            return [labels_layer_data(volume, name=stem)]
        return [image_layer_data(volume, name=volume.metadata.get("name") or stem)]
    return list(read_dicom(path))


def read_dicom(path: Path) -> Iterator[LayerData]:
    """One lazy image layer per series found under ``path`` (a folder or one file).

    Skipped files are announced as a warning; irregular series are loaded resampled with a
    warning naming their problem, or reported as errors when they cannot be resampled.
    """
    scan = scan_folder(path)
    if not scan.series:
        scan.select()  # raises "no image series in ...", which lists the skipped files
    if scan.skipped:
        show_warning(skipped_summary(scan))
    for series in scan.series:
        if series.irregular == "refuse":
            show_error(f"{irregular_summary(series)}; not loaded")
            continue
        if series.irregular:
            show_warning(f"{irregular_summary(series)}; shown resampled onto a regular grid")
        yield series_layer_data(series)


def series_layer_data(series: Series, *, resample: bool | None = None) -> LayerData:
    """Lazy LayerData of one series, named from its number and description.

    Irregular series (gap, non-uniform spacing, tilt) are resampled by default and the
    layer name says so; ``resample=False`` lets their GeometryError through. Safe to call
    in a worker thread: it touches no layer and shows nothing.
    """
    resample = not series.regular if resample is None else resample
    name = series.name + (" (resampled)" if resample and not series.regular else "")
    volume = load_series(series, lazy=True, resample=resample)
    return image_layer_data(volume, name=name)


def irregular_summary(series: Series) -> str:
    """``"<series name>: <problems>"`` for a series whose slices are not a regular grid."""
    return f"{series.name}: {'; '.join(series.problems)}"


def skipped_summary(scan: FolderScan, limit: int = 5) -> str:
    """One message listing the files of a folder that were skipped and why."""
    lines = [f"{scan.root}: {len(scan.skipped)} file(s) skipped"]
    lines += [f"  {s.path.name}: {s.reason}" for s in scan.skipped[:limit]]
    if len(scan.skipped) > limit:
        lines.append(f"  ... and {len(scan.skipped) - limit} more")
    return "\n".join(lines)


def _naming(path: str | os.PathLike, exc: Exception) -> str:
    """The error message, prefixed with the path unless it already names it."""
    message = str(exc)
    return message if str(path) in message or Path(path).name in message else f"{path}: {message}"


def _as_list(path: PathOrPaths) -> list[str | os.PathLike]:
    return [path] if isinstance(path, (str, os.PathLike)) else list(path)


def _looks_like_labels(path: Path, dtype) -> bool:
    """Integer NIfTI with a label intent (as our writer marks them) or a BIDS label suffix."""
    if dtype.kind not in "iu":
        return False
    if path.name.lower().endswith((".nii", ".nii.gz")):
        import nibabel as nib

        if nib.load(path).header.get_intent()[0] == "label":
            return True
    return volume_stem(path).lower().endswith(LABEL_NAME_HINTS)


def _first_files(folder: Path, limit: int) -> Iterator[Path]:
    """Up to ``limit`` regular files under ``folder``, breadth first, hidden entries skipped."""
    queue, seen = [folder], 0
    while queue and seen < limit:
        try:
            entries = sorted(os.scandir(queue.pop(0)), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir(follow_symlinks=False):
                queue.append(Path(entry.path))
            elif entry.is_file() and seen < limit:
                seen += 1
                yield Path(entry.path)
