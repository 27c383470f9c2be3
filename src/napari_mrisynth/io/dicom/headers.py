"""Reading DICOM headers: our fast walker for uncompressed little-endian files (:mod:`._walker`),
pydicom for everything else, and the checks that a file is an image of a patient.

Every file becomes one or more :class:`~._walker.Header` records (one per frame of an
enhanced multi-frame object) holding the attributes geometry and pixels need; a file that
cannot be used raises :class:`Skip` with the reason, which the scan reports.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from napari_mrisynth.io.dicom._walker import (
    Header,
    NotDicom,
    WalkerUnsupported,
    read_header,
)

#: Compressed pixel data declaring more than this many times its size decoded is refused.
MAX_COMPRESSION_RATIO = 200


#: ... unless it decodes to less than this.
SMALL_DECODED_BYTES = 256 * 1024 * 1024


_NATIVE_SYNTAXES = frozenset(
    {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"}
)


#: SOP classes with pixel data that are not images of a patient.
_NOT_IMAGE_WORDS = ("Segmentation", "RT Dose", "Presentation State", "Waveform", "SR Storage")


class Skip(Exception):
    """One file cannot be used; the message says why."""


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


def headers_of(path: str) -> list[Header]:
    """Headers of one file: one, or one per frame of a multi-frame object.

    Raises `Skip` with the reason when the file is not a usable image.
    """
    try:
        header = read_header(path)
    except NotDicom:
        with open(path, "rb") as f:
            start = f.read(132)
        if not start:
            raise Skip("empty file (0 bytes)") from None
        if not _looks_like_raw_dataset(start):
            raise Skip("not a DICOM file (no 'DICM' marker)") from None
        headers = _pydicom_headers(path, force=True)
    except WalkerUnsupported:
        headers = _pydicom_headers(path, force=False)
    except EOFError as exc:
        raise Skip(f"truncated: {exc}") from None
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
    """Raise `Skip` unless ``h`` is a greyscale image whose pixel data is all there."""
    if h.sop_class and not _is_image_class(h.sop_class):
        raise Skip(f"not an image: {_sop_name(h.sop_class)}")
    if not h.has_pixels:
        raise Skip(f"not an image: {_sop_name(h.sop_class)} without pixel data")
    if h.samples != 1 or h.photometric not in ("MONOCHROME1", "MONOCHROME2", ""):
        raise Skip(
            f"not a greyscale image: SamplesPerPixel {h.samples}, "
            f"PhotometricInterpretation {h.photometric or 'missing'}"
        )
    if h.rows <= 0 or h.columns <= 0 or h.frames <= 0:
        raise Skip(f"no pixels: Rows {h.rows}, Columns {h.columns}, NumberOfFrames {h.frames}")
    if h.bits_allocated not in (8, 16, 32):
        raise Skip(f"unsupported BitsAllocated {h.bits_allocated}")
    expected = h.expected_pixel_bytes()
    if h.frame is not None:
        return  # the file was checked before its frames were split
    if h.encapsulated:
        available = h.file_size - h.pixel_offset
        if expected > SMALL_DECODED_BYTES and expected > MAX_COMPRESSION_RATIO * available:
            raise Skip(
                f"implausible size: Rows {h.rows} x Columns {h.columns} x {h.frames} frame(s) "
                f"would decode to {expected} bytes from {available} bytes of compressed data"
            )
        return
    if h.pixel_length >= 0 and h.pixel_offset + h.pixel_length > h.file_size:
        raise Skip(
            f"truncated: pixel data declares {h.pixel_length} bytes, "
            f"{h.file_size - h.pixel_offset} present"
        )
    if h.pixel_length < expected:  # excess bytes are ignored, as pydicom does
        raise Skip(
            f"pixel data of the wrong length: {h.pixel_length} bytes, but Rows {h.rows} x "
            f"Columns {h.columns} x {h.frames} frame(s) x BitsAllocated {h.bits_allocated} "
            f"bits need {expected}"
        )


def _pydicom_headers(path: str, *, force: bool) -> list[Header]:
    """Headers read with pydicom (files the walker leaves alone), one per frame."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, force=force, defer_size=4096)
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError) as exc:
        raise Skip(f"unreadable DICOM: {exc}") from None
    try:
        return _headers_from_dataset(path, ds)
    except (AttributeError, ValueError, TypeError, IndexError, KeyError) as exc:
        raise Skip(f"unreadable DICOM attributes: {exc}") from None


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
        f"{fmt(origin)} along the slice normal {fmt(normal)} every {step:g} mm ({source})"
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


def fmt(values: Any) -> str:
    """Coordinates for a message: ``(1.000, -2.500, 30.000)``."""
    return "(" + ", ".join(f"{float(v):.3f}" for v in values) + ")"
