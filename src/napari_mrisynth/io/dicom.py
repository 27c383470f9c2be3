"""Find DICOM image series in a folder and read them into exact `Volume` objects.

The scan groups images by SeriesInstanceUID, splits each group into stacks of one
geometry (orientation, matrix, pixel size; localizers apart), sorts each stack along its
slice normal and checks it: spacing comes from the positions, and a missing slice,
non-uniform spacing, a sheared stack (gantry tilt) or duplicate positions are reported
with the positions and spacings found. Irregular stacks are refused unless resampling is
asked for.

Speed: uncompressed Little Endian files are read by a small header walker
(:mod:`._dicom_header`) and their pixel bytes go straight into the output array; every
other file (big endian, deflate, enhanced multi-frame, anything the walker does not parse)
is read with pydicom, and compressed pixel data is decoded by pydicom with the fastest
installed plugin.
"""

from __future__ import annotations

import math
import os
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from napari_mrisynth.errors import DicomFileError, GeometryError, SeriesError, VolumeFileError
from napari_mrisynth.io._dicom_header import (
    Header,
    NotDicom,
    WalkerUnsupported,
    read_header,
)
from napari_mrisynth.volume import Volume, orientation_code

#: ``progress(done, total)``: called while scanning and reading.
Progress = Callable[[int, int], None]

#: Two slices closer than this along the normal (mm) are at the same position.
DUPLICATE_TOLERANCE_MM = 1e-3
#: Relative and absolute tolerance on slice spacing; a missing slice changes it by 100 %.
SPACING_RTOL = 0.01
SPACING_ATOL_MM = 0.02  # positions rounded to 0.01 mm (some vendors) scatter this much
#: Linear in-plane drift across the stack (pixels) above which it is sheared (gantry tilt).
SHEAR_TOLERANCE_PIXELS = 0.05
#: ... or one slice this far off the normal through the first (pixels).
OUTLIER_PIXELS = 0.5
#: Compressed pixel data declaring more than this many times its size decoded is refused.
MAX_COMPRESSION_RATIO = 200
#: ... unless it decodes to less than this.
SMALL_DECODED_BYTES = 256 * 1024 * 1024

#: Decoding plugin per transfer syntax: the fastest installed (measured in field notes).
#: Lossy JPEG Baseline/Extended are left to pydicom's own choice: decoders differ by +-1.
_PLUGINS = {
    "1.2.840.10008.1.2.5": "pylibjpeg",  # RLE Lossless: pylibjpeg-rle, 6x the built-in
    "1.2.840.10008.1.2.4.80": "pyjpegls",  # JPEG-LS Lossless: 4x libjpeg
    "1.2.840.10008.1.2.4.81": "pyjpegls",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90": "pylibjpeg",  # JPEG 2000 Lossless: openjpeg
    "1.2.840.10008.1.2.4.91": "pylibjpeg",  # JPEG 2000
    "1.2.840.10008.1.2.4.57": "pylibjpeg",  # JPEG Lossless
    "1.2.840.10008.1.2.4.70": "pylibjpeg",  # JPEG Lossless SV1
}
_NATIVE_SYNTAXES = frozenset(
    {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"}
)
#: SOP classes with pixel data that are not images of a patient.
_NOT_IMAGE_WORDS = ("Segmentation", "RT Dose", "Presentation State", "Waveform", "SR Storage")


class _Skip(Exception):
    """One file cannot be used; the message says why."""


@dataclass(frozen=True)
class SkippedFile:
    """A file the scan could not use, and why."""

    path: Path
    reason: str


@dataclass
class Series:
    """One stack of images that forms (or should form) a volume.

    ``problems`` lists everything a reader of the volume should know, each message naming
    the positions and spacings found. ``irregular`` is ``""`` for a regular stack,
    ``"resample"`` when ``load_series(resample=True)`` can fix it (missing slice,
    non-uniform spacing, shear) and ``"refuse"`` when nothing can (duplicate positions).
    A problem may leave the stack regular: a multi-frame object without per-frame
    positions loads with the geometry the message describes.
    """

    uid: str
    number: int | None
    description: str
    modality: str
    stack: int
    key: str
    files: list[Path]
    shape: tuple[int, int, int]
    spacing: np.ndarray
    origin: np.ndarray
    direction: np.ndarray
    problems: list[str] = field(default_factory=list)
    irregular: str = ""
    headers: list[Header] = field(default_factory=list, repr=False)

    @property
    def regular(self) -> bool:
        """True when the slices form a regular grid (no gap, shear or duplicate)."""
        return not self.irregular

    @property
    def positions(self) -> np.ndarray:
        """ImagePositionPatient of every slice in stack order, shape (nz, 3)."""
        return np.array([h.ipp for h in self.headers], dtype=np.float64)

    @property
    def name(self) -> str:
        """Series number and description, for layer names and file names."""
        parts = [str(self.number) if self.number is not None else "", self.description]
        name = " ".join(p for p in parts if p) or self.uid or "series"
        return f"{name} (stack {self.stack})" if self.stack else name

    def describe(self) -> str:
        """One line for listings: key, number, description, size, spacing, orientation."""
        nz, ny, nx = self.shape
        sx, sy, sz = (f"{v:.4g}" for v in self.spacing)
        text = (
            f"{self.key}  #{self.number if self.number is not None else '-'} "
            f"{self.description!r} {self.modality} {ny}x{nx}x{nz} (rows x cols x slices) "
            f"spacing {sy}x{sx}x{sz} mm {orientation_code(self.direction)}"
        )
        if self.problems:
            text += "  [" + "; ".join(self.problems) + "]"
        return text


@dataclass
class FolderScan:
    """Every image series found under ``root``, and the files that were skipped."""

    root: Path
    series: list[Series]
    skipped: list[SkippedFile]

    def select(self, which: str | int | None = None) -> Series:
        """One series by key, SeriesInstanceUID or SeriesNumber.

        ``None`` is allowed only when the scan found exactly one series. Raises
        `SeriesError` listing every series when the choice is missing or ambiguous.
        """
        if which is None:
            if len(self.series) == 1:
                return self.series[0]
            if not self.series:
                raise SeriesError(self._nothing_found())
            raise SeriesError(
                f"{self.root} holds {len(self.series)} series; choose one:\n" + self._listing()
            )
        text = str(which).strip()
        for match in (
            [s for s in self.series if s.key == text],
            [s for s in self.series if s.uid == text and s.stack == 0],
        ):
            if match:
                return match[0]
        if text.lstrip("+-").isdigit():
            numbered = [s for s in self.series if s.number == int(text)]
            main = [s for s in numbered if s.stack == 0]
            if len(numbered) == 1 or len(main) == 1:
                return (main or numbered)[0]
            if numbered:
                raise SeriesError(
                    f"series number {text} is ambiguous in {self.root}; use a key:\n"
                    + self._listing()
                )
        raise SeriesError(f"no series {text!r} in {self.root}; found:\n" + self._listing())

    def _listing(self) -> str:
        return "\n".join(f"  {s.describe()}" for s in self.series) or "  (none)"

    def _nothing_found(self) -> str:
        text = f"no DICOM image series in {self.root}"
        if self.skipped:
            shown = self.skipped[:10]
            text += f"; {len(self.skipped)} file(s) skipped:\n" + "\n".join(
                f"  {s.path}: {s.reason}" for s in shown
            )
            if len(self.skipped) > len(shown):
                text += f"\n  ... and {len(self.skipped) - len(shown)} more"
        return text


# -- reading headers ------------------------------------------------------------------------
def is_dicom_file(path: str | Path) -> bool:
    """True when the file starts like DICOM: a 'DICM' marker after the 128-byte preamble,
    or (old files without preamble) a group 0008 element at byte 0."""
    try:
        with open(path, "rb") as f:
            start = f.read(132)
    except OSError:
        return False
    return start[128:132] == b"DICM" or _looks_like_raw_dataset(start)


def _looks_like_raw_dataset(start: bytes) -> bool:
    """A data set without preamble: first element in group 0008 with a plausible VR or length."""
    if len(start) < 8 or start[0:2] not in (b"\x08\x00", b"\x02\x00"):
        return False
    vr = start[4:6]
    return vr.isalpha() and vr.isupper() or int.from_bytes(start[4:8], "little") < 1024


def _headers_of(path: str) -> list[Header]:
    """Headers of one file: one, or one per frame of a multi-frame object.

    Raises `_Skip` with the reason when the file is not a usable image.
    """
    try:
        header = read_header(path)
    except NotDicom:
        with open(path, "rb") as f:
            start = f.read(132)
        if not start:
            raise _Skip("empty file (0 bytes)") from None
        if not _looks_like_raw_dataset(start):
            raise _Skip("not a DICOM file (no 'DICM' marker)") from None
        headers = _pydicom_headers(path, force=True)
    except WalkerUnsupported:
        headers = _pydicom_headers(path, force=False)
    except EOFError as exc:
        raise _Skip(f"truncated: {exc}") from None
    else:
        if header.frames > 1 or header.per_frame_groups or header.shared_groups:
            headers = _pydicom_headers(path, force=False)
        else:
            headers = [header]
    for h in headers:
        _check_image(h)
    return headers


#: Image storage SOP classes named without importing pydicom (the fast path's common cases).
_IMAGE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.4": "MR Image",
    "1.2.840.10008.5.1.4.1.1.4.1": "Enhanced MR Image",
    "1.2.840.10008.5.1.4.1.1.2": "CT Image",
    "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT Image",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image",
    "1.2.840.10008.5.1.4.1.1.128": "Positron Emission Tomography Image",
}


@lru_cache(maxsize=256)
def _sop_name(uid: str) -> str:
    """SOP class name without the trailing ' Storage', e.g. 'Basic Text SR'."""
    if uid in _IMAGE_SOP_CLASSES:
        return _IMAGE_SOP_CLASSES[uid]
    from pydicom.uid import UID

    name = UID(uid).name if uid else "no SOP Class UID"
    return name.removesuffix(" Storage") if name != uid else f"SOP Class {uid}"


@lru_cache(maxsize=256)
def _is_image_class(uid: str) -> bool:
    name = _sop_name(uid)
    if name.startswith("SOP Class "):
        return True  # a private class pydicom cannot name: judged by its pixel data
    if any(word in name + " Storage" for word in _NOT_IMAGE_WORDS):
        return False
    return "Image" in name or "Parametric Map" in name


def _check_image(h: Header) -> None:
    """Raise `_Skip` unless ``h`` is a greyscale image whose pixel data is all there."""
    if h.sop_class and not _is_image_class(h.sop_class):
        raise _Skip(f"not an image: {_sop_name(h.sop_class)}")
    if not h.has_pixels:
        raise _Skip(f"not an image: {_sop_name(h.sop_class)} without pixel data")
    if h.samples != 1 or h.photometric not in ("MONOCHROME1", "MONOCHROME2", ""):
        raise _Skip(
            f"not a greyscale image: {h.samples} samples per pixel, "
            f"PhotometricInterpretation {h.photometric or 'missing'}"
        )
    if h.rows <= 0 or h.columns <= 0 or h.frames <= 0:
        raise _Skip(f"no pixels: Rows {h.rows}, Columns {h.columns}, NumberOfFrames {h.frames}")
    if h.bits_allocated not in (8, 16, 32):
        raise _Skip(f"unsupported BitsAllocated {h.bits_allocated}")
    expected = h.expected_pixel_bytes()
    if h.frame is not None:
        return  # the file was checked before its frames were split
    if h.encapsulated:
        available = h.file_size - h.pixel_offset
        if expected > SMALL_DECODED_BYTES and expected > MAX_COMPRESSION_RATIO * available:
            raise _Skip(
                f"implausible size: Rows {h.rows} x Columns {h.columns} x {h.frames} frame(s) "
                f"would decode to {expected} bytes from {available} bytes of compressed data"
            )
        return
    if h.pixel_length >= 0 and h.pixel_offset + h.pixel_length > h.file_size:
        raise _Skip(
            f"truncated: pixel data declares {h.pixel_length} bytes, "
            f"{h.file_size - h.pixel_offset} present"
        )
    if h.pixel_length < expected:  # excess bytes are ignored, as pydicom does
        raise _Skip(
            f"pixel data of the wrong length: {h.pixel_length} bytes, but Rows {h.rows} x "
            f"Columns {h.columns} x {h.frames} frame(s) x {h.bits_allocated} bits "
            f"need {expected}"
        )


def _pydicom_headers(path: str, *, force: bool) -> list[Header]:
    """Headers read with pydicom (files the walker leaves alone), one per frame."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, force=force, defer_size=4096)
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError) as exc:
        raise _Skip(f"unreadable DICOM: {exc}") from None
    try:
        return _headers_from_dataset(path, ds)
    except (AttributeError, ValueError, TypeError, IndexError, KeyError) as exc:
        raise _Skip(f"unreadable DICOM attributes: {exc}") from None


def _is_encapsulated(syntax: str) -> bool:
    """True for compressed (encapsulated) transfer syntaxes."""
    return bool(syntax) and syntax not in _NATIVE_SYNTAXES


def _floats(value: Any) -> tuple[float, ...] | None:
    if value is None or value == "":
        return None
    if isinstance(value, (int, float, str)):
        return (float(value),)
    values = tuple(float(v) for v in value)
    return values or None


def _number(value: Any, kind: type) -> Any:
    if value is None or value == "":
        return None
    if isinstance(value, Sequence) and not isinstance(value, str):
        value = value[0]  # a multi-valued IS/DS: the first value counts
    return kind(float(value)) if kind is int else kind(value)


def _headers_from_dataset(path: str, ds: Any) -> list[Header]:
    meta = getattr(ds, "file_meta", None)
    syntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    raw_pixels = ds.get_item(0x7FE00010, keep_deferred=True)
    base = Header(
        path=os.fspath(path),
        file_size=os.path.getsize(path),
        reader="pydicom",
        transfer_syntax=syntax or "1.2.840.10008.1.2",
        sop_class=str(ds.get("SOPClassUID", "") or (meta or {}).get("MediaStorageSOPClassUID", "")),
        sop_instance=str(ds.get("SOPInstanceUID", "")),
        modality=str(ds.get("Modality", "") or ""),
        description=str(ds.get("SeriesDescription", "") or ""),
        image_type=tuple(str(v).strip() for v in (ds.get("ImageType") or ())),
        series_uid=str(ds.get("SeriesInstanceUID", "") or ""),
        series_number=_number(ds.get("SeriesNumber"), int),
        instance_number=_number(ds.get("InstanceNumber"), int),
        samples=int(ds.get("SamplesPerPixel", 1) or 1),
        photometric=str(ds.get("PhotometricInterpretation", "") or ""),
        frames=_number(ds.get("NumberOfFrames"), int) or 1,
        rows=int(ds.get("Rows", 0) or 0),
        columns=int(ds.get("Columns", 0) or 0),
        bits_allocated=int(ds.get("BitsAllocated", 0) or 0),
        bits_stored=int(ds.get("BitsStored", 0) or ds.get("BitsAllocated", 0) or 0),
        pixel_representation=int(ds.get("PixelRepresentation", 0) or 0),
        window_center=_floats(ds.get("WindowCenter")),
        window_width=_floats(ds.get("WindowWidth")),
        has_pixels=raw_pixels is not None,
    )
    if raw_pixels is not None:
        length = getattr(raw_pixels, "length", None)
        if length is None:  # converted already: the whole value was read
            length = 0xFFFFFFFF if _is_encapsulated(syntax) else len(raw_pixels.value or b"")
        base.pixel_length = -1 if length == 0xFFFFFFFF else int(length)
        base.pixel_offset = int(getattr(raw_pixels, "value_tell", 0) or 0)
        if syntax == "1.2.840.10008.1.2.1.99":  # offsets are in the inflated stream
            base.file_size = base.pixel_offset + max(base.pixel_length, 0)
    _geometry_from(base, ds)
    _check_image(base)  # before making one header per declared frame
    if base.frames == 1:
        return [base]
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    shared = (ds.get("SharedFunctionalGroupsSequence") or [None])[0]
    frames = []
    for k in range(base.frames):
        h = replace(base, frame=k)
        if shared is not None:
            _geometry_from(h, shared, functional=True)
        if per_frame is not None and k < len(per_frame):
            _geometry_from(h, per_frame[k], functional=True)
        frames.append(h)
    _assume_frame_positions(frames)
    return frames


def _geometry_from(h: Header, ds: Any, *, functional: bool = False) -> None:
    """Fill geometry and rescale from a data set or a functional group item."""

    def item(sequence: str) -> Any:
        if not functional:
            return ds
        value = ds.get(sequence)
        return value[0] if value else None

    plane = item("PlanePositionSequence")
    if plane is not None and plane.get("ImagePositionPatient"):
        h.ipp = _floats(plane.ImagePositionPatient)
    orientation = item("PlaneOrientationSequence")
    if orientation is not None and orientation.get("ImageOrientationPatient"):
        h.iop = _floats(orientation.ImageOrientationPatient)
    measures = item("PixelMeasuresSequence")
    if measures is not None:
        h.pixel_spacing = _floats(measures.get("PixelSpacing")) or h.pixel_spacing
        h.slice_thickness = _number(measures.get("SliceThickness"), float) or h.slice_thickness
        h.spacing_between_slices = (
            _number(measures.get("SpacingBetweenSlices"), float) or h.spacing_between_slices
        )
    rescale = item("PixelValueTransformationSequence")
    if rescale is not None and rescale.get("RescaleSlope") not in (None, ""):
        h.slope = _number(rescale.get("RescaleSlope"), float)
        h.intercept = _number(rescale.get("RescaleIntercept"), float)
    voi = item("FrameVOILUTSequence")
    if functional and voi is not None and voi.get("WindowCenter") not in (None, ""):
        h.window_center = _floats(voi.get("WindowCenter"))
        h.window_width = _floats(voi.get("WindowWidth"))


def _assume_frame_positions(frames: list[Header]) -> None:
    """Give frames without their own positions a stated, plausible geometry."""
    if all(h.ipp is not None and h.iop is not None for h in frames) and len(
        {h.ipp for h in frames}
    ) == len(frames):
        return
    first = frames[0]
    missing = [
        name
        for name, value in (
            ("ImagePositionPatient", first.ipp),
            ("ImageOrientationPatient", first.iop),
            ("PixelSpacing", first.pixel_spacing),
        )
        if value is None
    ]
    iop = first.iop or (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    origin = np.array(first.ipp or (0.0, 0.0, 0.0))
    normal = np.cross(iop[:3], iop[3:])
    step = first.spacing_between_slices or first.slice_thickness or 1.0
    source = (
        "SpacingBetweenSlices"
        if first.spacing_between_slices
        else "SliceThickness"
        if first.slice_thickness
        else "no slice spacing given, 1 mm"
    )
    note = (
        f"no per-frame positions ({', '.join(missing) or 'one position for all frames'} "
        f"missing): {len(frames)} frames stacked in file order from IPP "
        f"{_fmt(origin)} along the slice normal {_fmt(normal)} every {step:g} mm ({source})"
    )
    if first.iop is None:
        note += ", identity orientation assumed"
    if first.pixel_spacing is None:
        note += ", 1 mm pixels assumed"
    for k, h in enumerate(frames):
        h.iop = iop
        h.ipp = tuple((origin + k * step * normal).tolist())
        h.pixel_spacing = first.pixel_spacing or (1.0, 1.0)
        h.spacing_between_slices = step
        h.note = note


def _fmt(values: Any) -> str:
    return "(" + ", ".join(f"{float(v):.3f}" for v in values) + ")"


# -- scanning ------------------------------------------------------------------------------
def _iter_files(root: Path) -> Iterator[str]:
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            yield os.path.join(folder, name)  # str: a Path per file costs more than the walk


def scan_folder(path: str | Path, *, progress: Progress | None = None) -> FolderScan:
    """Find every DICOM image series in a folder (recursively) or in one file.

    Parameters
    ----------
    path : path
        A folder, searched recursively, or a single DICOM file.
    progress : callable, optional
        ``progress(done, total)`` as files are read.

    Returns
    -------
    FolderScan
        Series sorted by series number, then stack; files that could not be used, each
        with its reason.

    Raises
    ------
    VolumeFileError
        ``path`` does not exist or cannot be listed.
    """
    root = Path(path)
    if not root.exists():
        raise VolumeFileError(root, "no such file or directory")
    try:
        paths = [os.fspath(root)] if root.is_file() else list(_iter_files(root))
    except OSError as exc:
        raise VolumeFileError(root, f"cannot list: {exc}") from exc
    by_uid: dict[str, list[Header]] = defaultdict(list)
    skipped: list[SkippedFile] = []
    total = len(paths)
    for done, p in enumerate(paths, start=1):
        try:
            for h in _headers_of(p):
                uid = h.series_uid or f"(no SeriesInstanceUID) {os.path.dirname(p)}"
                by_uid[uid].append(h)
        except _Skip as exc:
            skipped.append(SkippedFile(Path(p), str(exc)))
        except OSError as exc:
            skipped.append(SkippedFile(Path(p), f"unreadable: {exc.strerror or exc}"))
        if progress is not None and (done % 64 == 0 or done == total):
            progress(done, total)
    series = [s for uid, headers in by_uid.items() for s in _split_stacks(uid, headers)]
    series.sort(key=lambda s: (s.number if s.number is not None else 1 << 31, s.uid, s.stack))
    return FolderScan(root, series, skipped)


#: Cosines and pixel sizes closer than this are one geometry (scanners jitter by ~1e-6).
GEOMETRY_TOLERANCE = 1e-4
#: |row . column| above this is a non-orthogonal grid, refused; below, re-orthogonalised.
ORTHOGONALITY_TOLERANCE = 1e-3


def _close(a: tuple | None, b: tuple | None) -> bool:
    if a == b:
        return True
    if a is None or b is None or len(a) != len(b):
        return False
    return all(abs(x - y) <= GEOMETRY_TOLERANCE for x, y in zip(a, b, strict=True))


def _same_stack(a: Header, b: Header) -> bool:
    return (
        a.rows == b.rows
        and a.columns == b.columns
        and ("LOCALIZER" in a.image_type) == ("LOCALIZER" in b.image_type)
        and _close(a.iop, b.iop)
        and _close(a.pixel_spacing, b.pixel_spacing)
    )


def _split_stacks(uid: str, headers: list[Header]) -> list[Series]:
    """Stacks of one geometry (orientation, matrix, pixel size, localizer or not)."""
    groups: list[list[Header]] = []
    for h in headers:
        for group in groups:
            if _same_stack(group[0], h):
                group.append(h)
                break
        else:
            groups.append([h])
    groups.sort(key=lambda g: ("LOCALIZER" in g[0].image_type, -len(g), g[0].path))
    split = len(groups) > 1
    return [
        _build_series(uid, stack, f"{uid}#{stack}" if split and stack else uid, group)
        for stack, group in enumerate(groups)
    ]


def _finite(values: tuple | None, count: int) -> bool:
    return values is not None and len(values) == count and all(map(math.isfinite, values))


def _orientation(h: Header) -> tuple[np.ndarray | None, str]:
    """Row and column cosines of ``h`` as a 3x3 direction, or None and why not."""
    iop = h.iop
    name = os.path.basename(h.path)
    if not _finite(iop, 6):
        return None, f"ImageOrientationPatient {iop} in {name} is not six finite numbers"
    row, col = np.array(iop[:3], dtype=float), np.array(iop[3:], dtype=float)
    lengths = np.linalg.norm(row), np.linalg.norm(col)
    if min(lengths) < 0.9 or max(lengths) > 1.1:
        return None, (
            f"ImageOrientationPatient {_fmt(iop)} in {name} is not two unit vectors "
            f"(lengths {lengths[0]:.3f} and {lengths[1]:.3f})"
        )
    row /= lengths[0]
    col /= lengths[1]
    dot = float(row @ col)
    if abs(dot) > ORTHOGONALITY_TOLERANCE:
        return None, (
            f"ImageOrientationPatient {_fmt(iop)} in {name}: row and column cosines are not "
            f"orthogonal (angle {math.degrees(math.acos(max(-1.0, min(1.0, dot)))):.2f} deg)"
        )
    col -= dot * row  # scanners round cosines; keep the grid orthonormal
    col /= np.linalg.norm(col)
    return np.column_stack([row, col, np.cross(row, col)]), ""


def _build_series(uid: str, stack: int, key: str, headers: list[Header]) -> Series:
    first = headers[0]
    problems: list[str] = sorted({h.note for h in headers if h.note})
    refusals: list[str] = []
    pixel_spacing = first.pixel_spacing
    if pixel_spacing is None:
        problems.append("PixelSpacing missing: 1 mm pixels assumed")
        pixel_spacing = (1.0, 1.0)
    elif not _finite(pixel_spacing, 2) or min(pixel_spacing) <= 0:
        refusals.append(
            f"PixelSpacing {pixel_spacing} in {os.path.basename(first.path)} is not two "
            "positive numbers"
        )
        pixel_spacing = (1.0, 1.0)
    with_position = [h for h in headers if h.ipp is not None]
    direction, why = (None, "") if first.iop is None else _orientation(first)
    if why:
        refusals.append(why)
    if first.iop is None and not with_position:
        headers = sorted(headers, key=lambda h: (h.instance_number or 0, h.path))
        dz = float(first.spacing_between_slices or first.slice_thickness or 1.0)
        problems.append(
            "no ImagePositionPatient/ImageOrientationPatient: slices stacked by InstanceNumber "
            f"every {dz:g} mm with identity orientation (geometry unknown)"
        )
        for k, h in enumerate(headers):
            h.ipp = (0.0, 0.0, k * dz)
        direction, origin, irregular = np.eye(3), np.zeros(3), ""
    else:
        if first.iop is None:
            refusals.append("ImageOrientationPatient missing: the slice normal is unknown")
        without = [h for h in headers if not _finite(h.ipp, 3)]
        if without:
            shown = ", ".join(
                f"{os.path.basename(h.path)} ({'missing' if h.ipp is None else _fmt(h.ipp)})"
                for h in without[:3]
            )
            more = f" and {len(without) - 3} more" if len(without) > 3 else ""
            refusals.append(
                f"ImagePositionPatient missing or not three finite numbers in {shown}{more}"
            )
            headers = [h for h in headers if h not in without] or headers[:1]
            if not _finite(headers[0].ipp, 3):
                headers[0].ipp = (0.0, 0.0, 0.0)
        if direction is None:
            direction = np.eye(3)
        normal = direction[:, 2]
        positions = np.array([h.ipp for h in headers], dtype=np.float64)
        along = positions @ normal
        order = sorted(
            range(len(headers)), key=lambda k: (along[k], headers[k].instance_number or 0)
        )
        headers = [headers[k] for k in order]
        positions, along = positions[order], along[order]
        headers, positions, along, dup_problems, duplicate = _drop_copies(headers, positions, along)
        problems.extend(dup_problems)
        dz, spacing_problems = _slice_spacing(positions, along, first)
        problems.extend(spacing_problems)
        shear = "" if refusals else _shear(positions, along, normal, min(pixel_spacing), dz)
        if shear:
            problems.append(shear)
        irregular = "refuse" if duplicate else ("resample" if spacing_problems or shear else "")
        origin = positions[0]
    if refusals:
        irregular = "refuse"
    problems = refusals + problems
    return Series(
        uid=uid if headers[0].series_uid else "",
        number=first.series_number,
        description=first.description,
        modality=first.modality,
        stack=stack,
        key=key,
        files=[Path(p) for p in dict.fromkeys(h.path for h in headers)],
        shape=(len(headers), first.rows, first.columns),
        spacing=np.array([pixel_spacing[1], pixel_spacing[0], dz], dtype=np.float64),
        origin=np.asarray(origin, dtype=np.float64),
        direction=direction,
        problems=problems,
        irregular=irregular,
        headers=headers,
    )


def _drop_copies(
    headers: list[Header], positions: np.ndarray, along: np.ndarray
) -> tuple[list[Header], np.ndarray, np.ndarray, list[str], str]:
    """Remove second copies of one SOP instance; report other images at one position."""
    if len(headers) < 2:
        return headers, positions, along, [], ""
    same = np.flatnonzero(np.diff(along) < DUPLICATE_TOLERANCE_MM)
    if not len(same):
        return headers, positions, along, [], ""
    copies = [k + 1 for k in same if headers[k + 1].sop_instance == headers[k].sop_instance]
    clashes = [k for k in same if headers[k + 1].sop_instance != headers[k].sop_instance]
    problems = []
    irregular = ""
    if clashes:
        irregular = "refuse"
        shown = ", ".join(
            f"{along[k]:.3f} mm (IPP {_fmt(positions[k])}: {os.path.basename(headers[k].path)} "
            f"and {os.path.basename(headers[k + 1].path)})"
            for k in clashes[:3]
        )
        more = f" and {len(clashes) - 3} more" if len(clashes) > 3 else ""
        problems.append(
            f"duplicate positions: {len(clashes)} pair(s) of different images at the same "
            f"position along the normal: {shown}{more}; spacing 0 mm there"
        )
    if copies:
        problems.append(
            f"{len(copies)} duplicate file(s) of the same SOP instance ignored, e.g. "
            f"{headers[copies[0]].path}"
        )
        keep = np.setdiff1d(np.arange(len(headers)), copies)
        headers = [headers[k] for k in keep]
        positions, along = positions[keep], along[keep]
    return headers, positions, along, problems, irregular


def _slice_spacing(positions: np.ndarray, along: np.ndarray, first: Header) -> tuple[float, list]:
    """Slice spacing from positions and the gaps / non-uniform steps found."""
    if len(along) < 2:
        return float(first.spacing_between_slices or first.slice_thickness or 1.0), []
    steps = np.diff(along)
    nonzero = steps[steps >= DUPLICATE_TOLERANCE_MM]
    if not len(nonzero):
        return float(first.spacing_between_slices or first.slice_thickness or 1.0), []
    typical = statistics.median(nonzero.tolist())  # np.median imports numpy.ma: +0.1 s cold
    off = np.flatnonzero(
        (np.abs(steps - typical) > SPACING_RTOL * typical + SPACING_ATOL_MM)
        & (steps >= DUPLICATE_TOLERANCE_MM)
    )
    problems = []
    gaps, uneven = [], []
    for k in off:
        ratio = steps[k] / typical
        near = round(ratio)
        (gaps if near >= 2 and abs(ratio - near) < 0.05 else uneven).append((k, int(near)))
    if gaps:
        shown = "; ".join(
            f"{n - 1} slice(s) absent between {along[k]:.3f} and {along[k + 1]:.3f} mm along "
            f"the normal (IPP {_fmt(positions[k])} to {_fmt(positions[k + 1])}): spacing "
            f"{steps[k]:.3f} mm there"
            for k, n in gaps[:3]
        )
        more = f"; and {len(gaps) - 3} more" if len(gaps) > 3 else ""
        problems.append(f"missing slice: {shown}{more}; {typical:.3f} mm elsewhere")
    if uneven:
        shown = "; ".join(
            f"{steps[k]:.3f} mm between {along[k]:.3f} and {along[k + 1]:.3f} mm along the "
            f"normal (IPP {_fmt(positions[k])} to {_fmt(positions[k + 1])})"
            for k, _ in uneven[:3]
        )
        more = f"; and {len(uneven) - 3} more" if len(uneven) > 3 else ""
        problems.append(
            f"non-uniform spacing: {shown}{more}; median spacing {typical:.3f} mm "
            f"(range {nonzero.min():.3f}-{nonzero.max():.3f} mm)"
        )
    if not problems:  # regular: the mean step is exact where rounded positions scatter
        typical = float(along[-1] - along[0]) / len(nonzero)
    return typical, problems


def _shear(
    positions: np.ndarray, along: np.ndarray, normal: np.ndarray, pixel: float, dz: float
) -> str:
    """A message when slice positions drift in-plane (gantry tilt), else ``""``."""
    if len(positions) < 2:
        return ""
    distances = along - along[0]
    offsets = positions - positions[0] - np.outer(distances, normal)
    drift = np.linalg.norm(offsets, axis=1)
    worst = int(np.argmax(drift))
    # a tilt drifts in proportion to distance; rounded positions only scatter
    fitted = np.linalg.lstsq(distances[:, None], offsets, rcond=None)[0][0]
    linear = float(np.linalg.norm(fitted) * abs(distances[-1]))
    if linear <= SHEAR_TOLERANCE_PIXELS * pixel and drift[worst] <= OUTLIER_PIXELS * pixel:
        return ""
    distance = along[worst] - along[0]
    tilt = math.degrees(math.atan2(drift[worst], abs(distance))) if distance else 90.0
    step = np.linalg.norm(positions[1] - positions[0])
    return (
        f"sheared stack (gantry tilt about {tilt:.2f} deg): the slice at {along[worst]:.3f} mm "
        f"along the normal (IPP {_fmt(positions[worst])}) lies {drift[worst]:.3f} mm off the "
        f"normal through the first slice (IPP {_fmt(positions[0])}); spacing {dz:.3f} mm "
        f"along the normal, {step:.3f} mm between positions"
    )


# -- reading pixels ------------------------------------------------------------------------
def _stored_dtype(h: Header) -> np.dtype:
    kind = "i" if h.pixel_representation else "u"
    return np.dtype(f"<{kind}{h.bits_allocated // 8}")


def _stored_range(h: Header) -> tuple[int, int]:
    bits = h.bits_stored or h.bits_allocated
    if h.pixel_representation:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def _rescale_of(h: Header) -> tuple[float, float]:
    slope = 1.0 if h.slope in (None, 0.0) else float(h.slope)
    return slope, float(h.intercept or 0.0)


def _output_dtype(headers: list[Header]) -> np.dtype:
    """Integer when every rescale is an integer shift whose result fits (int64 only for
    32-bit data, where float32 would round); else float32."""
    lo, hi = math.inf, -math.inf
    for h in headers:
        slope, intercept = _rescale_of(h)
        if slope != 1.0 or not float(intercept).is_integer():
            return np.dtype(np.float32)
        s_lo, s_hi = _stored_range(h)
        lo, hi = min(lo, s_lo + intercept), max(hi, s_hi + intercept)
    for dtype in (_stored_dtype(headers[0]), np.int16, np.uint16, np.int32, np.int64):
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return np.dtype(dtype)
    return np.dtype(np.float32)


class _PixelReader:
    """Reads the stored values of one slice into a caller's array, then rescales."""

    def __init__(self) -> None:
        self._datasets: dict[Path, np.ndarray] = {}

    def read(self, h: Header, out: np.ndarray) -> None:
        """Fill ``out`` (rows, columns) with the modality values of ``h``."""
        stored_dtype = _stored_dtype(h)
        slope, intercept = _rescale_of(h)
        shift = (h.bits_allocated - h.bits_stored) if h.bits_stored else 0
        direct = (
            h.reader == "walker"
            and not h.encapsulated
            and stored_dtype == out.dtype
            and intercept == 0.0
            and slope == 1.0
            and shift == 0
            and out.flags.c_contiguous
        )
        if direct:
            self._read_native(h, out)
            return
        if h.reader == "walker" and not h.encapsulated:
            stored = np.empty(out.shape, dtype=stored_dtype)
            self._read_native(h, stored)
        elif h.reader == "walker":
            try:
                stored = self._decode(h)
            except DicomFileError:  # pydicom's own parser copes with odd fragment layouts
                stored = self._pydicom_frame(h)
        else:
            stored = self._pydicom_frame(h)
        if shift and h.reader == "walker" and not h.encapsulated:
            # pydicom ignores unused high bits the same way (sign-extending signed data)
            np.left_shift(stored, shift, out=stored)
            np.right_shift(stored, shift, out=stored)
        if out.dtype.kind == "f" and slope != 1.0:
            np.multiply(stored, np.float32(slope), out=out, casting="unsafe")
        else:
            np.copyto(out, stored, casting="unsafe")  # widen first: the shift may overflow
        if intercept:
            out += out.dtype.type(intercept)

    @staticmethod
    def _read_native(h: Header, out: np.ndarray) -> None:
        view = memoryview(out).cast("B")
        nbytes = view.nbytes
        fd = os.open(h.path, os.O_RDONLY)
        try:
            got = os.preadv(fd, [view], h.pixel_offset)
            while 0 < got < nbytes:  # short reads are allowed by POSIX
                more = os.preadv(fd, [view[got:]], h.pixel_offset + got)
                if more <= 0:
                    break
                got += more
        finally:
            os.close(fd)
        if got != nbytes:
            raise DicomFileError(
                h.path,
                f"pixel data of the wrong length: {got} bytes readable at offset "
                f"{h.pixel_offset}, {nbytes} expected (file changed since the scan?)",
            )

    @staticmethod
    def _decode(h: Header) -> np.ndarray:
        from pydicom.pixels import get_decoder

        with open(h.path, "rb") as f:
            f.seek(h.pixel_offset)
            data = f.read()
        options = dict(
            rows=h.rows,
            columns=h.columns,
            samples_per_pixel=h.samples,
            bits_allocated=h.bits_allocated,
            bits_stored=h.bits_stored or h.bits_allocated,
            pixel_representation=h.pixel_representation,
            photometric_interpretation=h.photometric or "MONOCHROME2",
            number_of_frames=h.frames,
        )
        try:
            decoder = get_decoder(h.transfer_syntax)
        except NotImplementedError as exc:
            raise DicomFileError(h.path, f"no decoder for transfer syntax: {exc}") from None
        plugin = _PLUGINS.get(h.transfer_syntax, "")
        if plugin not in decoder.available_plugins:
            plugin = ""
        try:
            array, _ = decoder.as_array(data, decoding_plugin=plugin, **options)
        except Exception:  # a plugin may reject a valid stream; let pydicom try them all
            try:
                array, _ = decoder.as_array(data, **options)
            except Exception as exc:
                raise DicomFileError(h.path, f"cannot decode pixel data: {exc}") from None
        return array.reshape(h.rows, h.columns)

    def _pydicom_frame(self, h: Header) -> np.ndarray:
        array = self._datasets.get(h.path)
        if array is None:
            array = self._datasets[h.path] = _pydicom_pixels(h)
        return array[h.frame or 0]


def _pydicom_pixels(h: Header) -> np.ndarray:
    """All frames of a file as (frames, rows, columns), decoded by pydicom."""
    import pydicom

    try:
        ds = pydicom.dcmread(h.path, force=True)
        plugin = _PLUGINS.get(str(ds.file_meta.get("TransferSyntaxUID", "")), "")
        try:
            array = pydicom.pixels.pixel_array(ds, decoding_plugin=plugin) if plugin else None
        except Exception:  # a plugin may reject a valid stream; let pydicom try them all
            array = None
        if array is None:
            array = ds.pixel_array
    except Exception as exc:
        raise DicomFileError(h.path, f"cannot read pixel data: {exc}") from None
    return np.asarray(array).reshape(h.frames, h.rows, h.columns)


def _metadata(series: Series) -> dict[str, Any]:
    first = series.headers[0]
    window = None
    if first.window_center and first.window_width:
        window = (float(first.window_center[0]), float(first.window_width[0]))
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
        "rescale": _rescale_of(first),
        "problems": list(series.problems),
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
        Integer voxels when the rescale keeps integers in range, else float32.

    Raises
    ------
    GeometryError
        The stack is irregular and ``resample`` is False, or it cannot be resampled
        (duplicate positions).
    DicomFileError
        A file's pixel data cannot be read or decoded.
    """
    if series.irregular == "refuse" or (series.irregular and not resample):
        hint = "" if series.irregular == "refuse" else "; load with resample=True (--resample)"
        raise GeometryError(
            f"series {series.key} ({series.name}) is not a regular grid: "
            + "; ".join(series.problems)
            + hint
        )
    headers = series.headers
    dtype = _output_dtype(headers)
    shape = series.shape
    metadata = _metadata(series)
    if lazy and not series.irregular:
        data = _lazy_array(headers, shape, dtype)
        return Volume(data, series.spacing, series.origin, series.direction, metadata)
    data = np.empty(shape, dtype=dtype)
    reader = _PixelReader()
    for k, h in enumerate(headers):
        reader.read(h, data[k])
        if progress is not None and ((k + 1) % 32 == 0 or k + 1 == shape[0]):
            progress(k + 1, shape[0])
    if series.irregular:
        return _resample(series, data, metadata)
    return Volume(data, series.spacing, series.origin, series.direction, metadata)


def _lazy_array(headers: list[Header], shape: tuple[int, int, int], dtype: np.dtype) -> Any:
    import dask.array as da
    from dask.base import tokenize

    reader = _PixelReader()  # shared: a multi-frame file is decoded once, not per frame

    def read_slice(k: int) -> np.ndarray:
        out = np.empty((1, shape[1], shape[2]), dtype=dtype)
        reader.read(headers[k], out[0])
        return out

    name = "dicom-" + tokenize([str(h.path) for h in headers], [h.frame for h in headers], dtype)
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


__all__ = [
    "FolderScan",
    "Series",
    "SkippedFile",
    "is_dicom_file",
    "load_dicom",
    "load_series",
    "scan_folder",
]
