"""The checks that a stack's pixel encoding turns into one volume of modality values, made
before any pixel is read (eager, lazy or resampled loads alike).

A slice whose encoding contradicts itself is refused with a :class:`DicomFileError` naming
the file and the attribute: BitsAllocated that does not fit the length of the pixel data,
BitsStored above BitsAllocated, a PixelRepresentation that is neither 0 nor 1, a
RescaleSlope or RescaleIntercept that is not a finite number, a RescaleSlope of 0 (every
voxel would become the intercept), or a rescale missing from one slice while the others of
the series have a non-identity one. A series that mixes MONOCHROME1 and MONOCHROME2 slices
is refused with a :class:`SeriesError`.

Two things convert with a note, kept in ``metadata['problems']`` and given as a
:class:`DicomConversionWarning`: a MONOCHROME1 series (PS3.3 C.7.6.3.1.2: the lowest value
is displayed white) is inverted to MONOCHROME2 over the range of modality values its
encoding allows, so that slices stay comparable and the image is that of SimpleITK/GDCM;
and slices whose BitsAllocated, BitsStored or PixelRepresentation differ from the others
are each read as their own header says.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from napari_mrisynth.errors import DicomFileError, SeriesError
from napari_mrisynth.io.dicom._walker import Header
from napari_mrisynth.io.dicom.pixels import modality_range, rescale_of
from napari_mrisynth.io.dicom.stack import Series


class DicomConversionWarning(UserWarning):
    """A series was converted with a change its reader should know about (e.g. MONOCHROME1
    inverted); the message names the series and says what was done."""


@dataclass(frozen=True)
class Encoding:
    """How the stored values of a checked stack become the volume's voxels.

    Attributes
    ----------
    invert_about : float or None
        MONOCHROME1: every modality value ``m`` becomes ``invert_about - m``; None for
        MONOCHROME2.
    notes : list of str
        What was done that a reader of the volume should know, one sentence each.
    """

    invert_about: float | None = None
    notes: list[str] = field(default_factory=list)


def check_encoding(series: Series) -> Encoding:
    """Refuse a stack whose pixel encoding is contradictory, and say how it is converted.

    Parameters
    ----------
    series : Series
        From :func:`~napari_mrisynth.io.dicom.scan_folder`.

    Returns
    -------
    Encoding
        The MONOCHROME1 inversion, if any, and the notes on the conversion.

    Raises
    ------
    DicomFileError
        A slice's BitsAllocated, BitsStored, PixelRepresentation, RescaleSlope or
        RescaleIntercept cannot be right; the message names the file and the attribute.
    SeriesError
        The series mixes MONOCHROME1 and MONOCHROME2 slices.
    """
    headers = series.headers
    for check in (_bits_problem, _rescale_problem):
        _refuse_files(headers, check)
    for keyword, attribute, default in (
        ("RescaleSlope", "slope", 1.0),
        ("RescaleIntercept", "intercept", 0.0),
    ):
        _refuse_missing_rescale(headers, keyword, attribute, default)
    notes = [
        note
        for keyword, value in (
            ("BitsAllocated", lambda h: h.bits_allocated),
            ("BitsStored", lambda h: h.bits_stored or h.bits_allocated),
            ("PixelRepresentation", lambda h: h.pixel_representation),
        )
        if (note := _mixed_note(headers, keyword, value))
    ]
    invert_about, note = _monochrome1(series)
    if note:
        notes.insert(0, note)
    return Encoding(invert_about, notes)


def _where(h: Header) -> str:
    """``IM0004.dcm`` or ``EMR0001.dcm frame 3``, for messages."""
    name = os.path.basename(h.path)
    return name if h.frame is None else f"{name} frame {h.frame + 1}"


def _refuse_files(headers: list[Header], problem: Callable[[Header], str]) -> None:
    """Raise `DicomFileError` for the first slice ``problem`` finds fault with."""
    bad = [(h, why) for h in headers if (why := problem(h))]
    if not bad:
        return
    h, why = bad[0]
    if h.frame is not None:
        why = f"frame {h.frame + 1}: {why}"
    others = len({b.path for b, _ in bad} - {h.path})
    if others:
        why += f" (and {others} other file(s) of the series)"
    raise DicomFileError(h.path, why)


def _bits_problem(h: Header) -> str:
    """Why BitsAllocated, BitsStored or PixelRepresentation of ``h`` cannot be right, or ``""``.

    Native pixel data at least twice as long as Rows x Columns x frames x BitsAllocated
    calls for is another bit depth, not padding (shorter data is skipped by the scan).
    """
    if h.bits_stored > h.bits_allocated:
        return f"BitsStored {h.bits_stored} exceeds BitsAllocated {h.bits_allocated}"
    if h.pixel_representation not in (0, 1):
        return (
            f"PixelRepresentation {h.pixel_representation} is neither 0 (unsigned) nor 1 (signed)"
        )
    expected = h.expected_pixel_bytes()
    if h.encapsulated or h.pixel_length < 2 * expected:
        return ""
    bits = 8 * h.pixel_length / (h.rows * h.columns * h.frames * h.samples)
    return (
        f"BitsAllocated {h.bits_allocated} does not match the pixel data: {h.pixel_length} "
        f"bytes for Rows {h.rows} x Columns {h.columns} x {h.frames} frame(s) is {bits:g} "
        f"bits per pixel, {expected} bytes at {h.bits_allocated} bits"
    )


def _rescale_problem(h: Header) -> str:
    """Why RescaleSlope or RescaleIntercept of ``h`` cannot be applied, or ``""``."""
    for keyword, value in (("RescaleSlope", h.slope), ("RescaleIntercept", h.intercept)):
        if value is not None and not math.isfinite(value):
            return f"{keyword} {value} is not a finite number"
    if h.slope == 0.0:
        return (
            f"RescaleSlope 0 would turn every voxel into RescaleIntercept "
            f"({h.intercept or 0.0:g}): the image would be lost, and any other slope a guess"
        )
    return ""


def _refuse_missing_rescale(
    headers: list[Header], keyword: str, attribute: str, default: float
) -> None:
    """Refuse a slice without ``keyword`` when other slices give it a value other than
    ``default``: the standard's identity would then be a guess for that slice."""
    missing = [h for h in headers if getattr(h, attribute) is None]
    given = [h for h in headers if getattr(h, attribute) not in (None, default)]
    if not missing or not given:
        return
    h, example = missing[0], given[0]
    others = len({m.path for m in missing} - {h.path})
    more = f" (and {others} other file(s) of the series)" if others else ""
    raise DicomFileError(
        h.path,
        f"{keyword} missing{more}, while {len(headers) - len(missing)} other slice(s) of the "
        f"series have one (e.g. {getattr(example, attribute):g} in {_where(example)}): the "
        f"rescale of this slice is unknown",
    )


def _mixed_note(headers: list[Header], keyword: str, value: Callable[[Header], int]) -> str:
    """A note when slices differ in ``keyword`` (read by ``value``), else ``""``; each slice
    is read as its own header says."""
    counts = Counter(map(value, headers))
    if len(counts) < 2:
        return ""
    rare = min(counts, key=lambda v: (counts[v], v))
    example = next(h for h in headers if value(h) == rare)
    found = ", ".join(f"{v} in {n} slice(s)" for v, n in sorted(counts.items()))
    return (
        f"{keyword} differs between slices ({found}; {rare} in {_where(example)}): each "
        "slice was read as its own header says"
    )


def _monochrome1(series: Series) -> tuple[float | None, str]:
    """The MONOCHROME1 inversion and its note, ``(None, "")`` for MONOCHROME2.

    The inversion maps modality value ``m`` to ``lo + hi - m``, where ``[lo, hi]`` is the
    range the stored values (BitsStored, PixelRepresentation) can take after the rescale,
    over the whole series: the same for every slice, so they stay comparable. For one
    rescale this is GDCM's stored value ``v -> min + max - v`` before rescaling.
    """
    headers = series.headers
    inverted = [h for h in headers if h.photometric == "MONOCHROME1"]
    if not inverted:
        return None, ""
    if len(inverted) < len(headers):
        plain = next(h for h in headers if h.photometric != "MONOCHROME1")
        raise SeriesError(
            f"series {series.key} ({series.name}) mixes PhotometricInterpretation "
            f"MONOCHROME1 ({len(inverted)} slice(s), e.g. {inverted[0].path}) and "
            f"{plain.photometric or 'none (MONOCHROME2 assumed)'} "
            f"({len(headers) - len(inverted)} slice(s), e.g. {plain.path}): which way is "
            "bright differs between slices"
        )
    lo, hi = modality_range(headers)
    rescaled = any(rescale_of(h) != (1.0, 0.0) for h in headers)
    stored = " after the rescale" if rescaled else ""
    note = (
        "PhotometricInterpretation MONOCHROME1 (lowest value shown white): inverted to "
        f"MONOCHROME2 as v -> {lo + hi:g} - v, reversing the range {lo:g} to {hi:g} that "
        f"BitsStored and PixelRepresentation allow{stored}, so that high values are bright; "
        "the window centre likewise"
    )
    return lo + hi, note
