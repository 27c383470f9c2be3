"""A minimal DICOM header walker for the tags a volume reader needs.

``pydicom.dcmread`` costs about a millisecond per file even with ``stop_before_pixels``
because it converts every element; a series of 300 slices spends most of its load time
there. This walker reads the first 16 KB of a file, steps over element values without
converting them, keeps the ~25 tags listed in :data:`WANTED`, and stops at the pixel data,
recording its offset and length so the voxels can be read straight into a preallocated
array.

It handles Explicit and Implicit VR Little Endian data sets (and the header of every
encapsulated, i.e. compressed, transfer syntax, which is Explicit VR Little Endian),
nested sequences of defined and undefined length, and private elements. Anything else
(big endian, deflate, a file without a preamble, an unexpected VR or length) raises
:class:`WalkerUnsupported` so the caller can use pydicom instead.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

#: First read; a vendor MR header with private tags is about 10 KB.
FIRST_READ = 16384

IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
DEFLATED_EXPLICIT_VR_LE = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_BE = "1.2.840.10008.1.2.2"

PIXEL_DATA = 0x7FE00010
_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQUENCE_END = 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF

#: Tags kept, as (group << 16 | element) -> attribute of :class:`Header`.
WANTED = {
    0x00020002: "media_sop_class",
    0x00020010: "transfer_syntax",
    0x00080005: "charset",
    0x00080008: "image_type",
    0x00080016: "sop_class",
    0x00080018: "sop_instance",
    0x00080060: "modality",
    0x0008103E: "description",
    0x00180050: "slice_thickness",
    0x00180088: "spacing_between_slices",
    0x0020000E: "series_uid",
    0x00200011: "series_number",
    0x00200013: "instance_number",
    0x00200032: "ipp",
    0x00200037: "iop",
    0x00280002: "samples",
    0x00280004: "photometric",
    0x00280006: "planar_configuration",
    0x00280008: "frames",
    0x00280010: "rows",
    0x00280011: "columns",
    0x00280030: "pixel_spacing",
    0x00280100: "bits_allocated",
    0x00280101: "bits_stored",
    0x00280103: "pixel_representation",
    0x00281050: "window_center",
    0x00281051: "window_width",
    0x00281052: "intercept",
    0x00281053: "slope",
    0x52009229: "shared_groups",
    0x52009230: "per_frame_groups",
}

_US_TAGS = frozenset(
    {0x00280002, 0x00280006, 0x00280010, 0x00280011, 0x00280100, 0x00280101, 0x00280103}
)
_FLOAT_TAGS = frozenset({0x00180050, 0x00180088, 0x00281052, 0x00281053})
_INT_TAGS = frozenset({0x00200011, 0x00200013, 0x00280008})
_FLOATS_TAGS = frozenset({0x00200032, 0x00200037, 0x00280030, 0x00281050, 0x00281051})
_PRESENCE_TAGS = frozenset({0x52009229, 0x52009230})
_DESCRIPTION = 0x0008103E


def _swap(tag: int) -> int:
    return (tag & 0xFFFF) << 16 | tag >> 16


# The hot loop unpacks (group, element) as one little-endian uint32 = element << 16 | group;
# keying on that saves combining the two halves for each of ~150 elements per file.
_WANTED_SW = {_swap(tag): tag for tag in WANTED}
_PRESENCE_SW = frozenset(_swap(tag) for tag in _PRESENCE_TAGS)
_PIXEL_SW = _swap(PIXEL_DATA)
_ITEM_END_SW = _swap(_ITEM_END)

#: Explicit VRs whose length is 4 bytes after 2 reserved ones.
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_SHORT_VRS = frozenset({b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS",
                        b"LO", b"LT", b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL",
                        b"US"})  # fmt: skip
_ALL_VRS = _SHORT_VRS | _LONG_VRS
_TEXT_VRS = frozenset({b"AE", b"AS", b"CS", b"DA", b"DS", b"DT", b"IS", b"LO", b"LT", b"PN",
                       b"SH", b"ST", b"TM", b"UC", b"UI", b"UT"})  # fmt: skip

_EXPLICIT = struct.Struct("<L2sH")
_IMPLICIT = struct.Struct("<LL")
_U32 = struct.Struct("<L")
_U16 = struct.Struct("<H")

#: The last value converted per tag, with its (VR, raw bytes): slices of a series repeat most.
_LAST: dict[int, tuple[tuple[bytes | None, bytes], object]] = {}
_NAME_SW = {sw: WANTED[tag] for sw, tag in _WANTED_SW.items()}
_DESCRIPTION_SW = _swap(_DESCRIPTION)
_CHARSET_SW = _swap(0x00080005)


class WalkerUnsupported(Exception):
    """The walker cannot (or should not) parse this file; use pydicom."""


class NotDicom(Exception):
    """The file has no DICOM preamble and marker."""


@dataclass(slots=True)
class Header:
    """The attributes a volume reader needs from one image (a file, or one frame of one)."""

    path: str
    file_size: int = 0
    frame: int | None = None
    reader: str = "walker"
    media_sop_class: str = ""
    transfer_syntax: str = ""
    charset: str = ""
    image_type: tuple[str, ...] = ()
    sop_class: str = ""
    sop_instance: str = ""
    modality: str = ""
    description: str = ""
    slice_thickness: float | None = None
    spacing_between_slices: float | None = None
    series_uid: str = ""
    series_number: int | None = None
    instance_number: int | None = None
    ipp: tuple[float, ...] | None = None
    iop: tuple[float, ...] | None = None
    samples: int = 1
    photometric: str = ""
    planar_configuration: int = 0
    frames: int = 1
    rows: int = 0
    columns: int = 0
    pixel_spacing: tuple[float, ...] | None = None
    bits_allocated: int = 0
    bits_stored: int = 0
    pixel_representation: int = 0
    window_center: tuple[float, ...] | None = None
    window_width: tuple[float, ...] | None = None
    intercept: float | None = None
    slope: float | None = None
    shared_groups: bool = False
    per_frame_groups: bool = False
    has_pixels: bool = False
    pixel_offset: int = -1
    pixel_length: int = -1  # -1: undefined length (encapsulated)
    note: str = ""  # geometry the reader had to assume, said to the user

    @property
    def encapsulated(self) -> bool:
        return self.has_pixels and self.pixel_length < 0

    def expected_pixel_bytes(self) -> int:
        """Bytes of native (uncompressed) pixel data the image attributes call for."""
        bits = self.rows * self.columns * self.frames * self.samples * self.bits_allocated
        return (bits + 7) // 8


def _text(raw: bytes, charset: str) -> str:
    if charset in ("", "ISO_IR 6", "ISO_IR 100", "ISO 2022 IR 6"):
        return raw.decode("latin-1").strip(" \x00")
    if charset == "ISO_IR 192":
        return raw.decode("utf-8", "replace").strip(" \x00")
    from pydicom.charset import decode_bytes

    return decode_bytes(raw, charset.split("\\"), set()).strip(" \x00")


def _convert(tag: int, vr: bytes | None, raw: bytes, charset: str) -> object:
    """The value of one kept element (``vr`` is None in Implicit VR data sets)."""
    if tag in _PRESENCE_TAGS:
        return True
    if tag in _US_TAGS:
        if vr not in (None, b"US") or len(raw) != 2:
            raise WalkerUnsupported(f"tag {tag:08X} has VR {vr!r}, length {len(raw)}")
        return _U16.unpack(raw)[0]
    if vr is not None and vr not in _TEXT_VRS:
        raise WalkerUnsupported(f"tag {tag:08X} has VR {vr!r}")
    if tag == _DESCRIPTION:
        return _text(raw, charset)
    text = raw.decode("latin-1").strip(" \x00")
    if tag in _FLOAT_TAGS:
        return float(text) if text else None
    if tag in _INT_TAGS:
        if not text:
            return None
        return int(text) if text.lstrip("+-").isdigit() else int(float(text))
    if tag in _FLOATS_TAGS:
        return tuple(float(v) for v in text.split("\\")) if text else None
    if tag == 0x00080008:
        return tuple(v.strip() for v in text.split("\\"))
    return text


def _apply(header: Header, found: dict[int, tuple[bytes | None, bytes]]) -> None:
    """Convert the kept raw values into ``header``'s attributes (reusing the last file's)."""
    charset_raw = found.get(_CHARSET_SW)
    charset = _convert(0x00080005, *charset_raw, "") if charset_raw else ""
    last = _LAST
    for sw, pair in found.items():
        previous = last.get(sw)
        if previous is not None and previous[0] == pair and sw != _DESCRIPTION_SW:
            value = previous[1]
        else:
            value = _convert(_WANTED_SW[sw], pair[0], pair[1], charset)
            last[sw] = (pair, value)
        if value is not None:
            setattr(header, _NAME_SW[sw], value)


class _Reader:
    """Random access to a file through a window of bytes, refilled on demand."""

    __slots__ = ("f", "buf", "base", "size")

    def __init__(self, f, first: bytes, size: int):
        self.f = f
        self.buf = first
        self.base = 0
        self.size = size

    def window(self, pos: int, need: int) -> tuple[bytes, int]:
        """A buffer holding file bytes ``[pos, pos + need)`` and the file offset of its start."""
        if pos + need > self.size:
            raise EOFError(f"the file ends at byte {self.size}, an element needs {pos + need}")
        if pos < self.base or pos + need > self.base + len(self.buf):
            self.f.seek(pos)
            self.buf = self.f.read(max(FIRST_READ, need))
            self.base = pos
        return self.buf, self.base


def _skip_sequence(reader: _Reader, pos: int, explicit: bool, depth: int) -> int:
    """Position after the Sequence Delimitation Item closing the sequence valued at ``pos``."""
    if depth > 16:
        raise WalkerUnsupported("sequences nested deeper than 16 levels")
    while True:
        buf, base = reader.window(pos, 8)
        sw, length = _IMPLICIT.unpack_from(buf, pos - base)
        pos += 8
        if sw == 0xE0DDFFFE:  # sequence delimitation
            return pos
        if sw != 0xE000FFFE:
            raise WalkerUnsupported(f"expected an item at {pos - 8}, found {_swap(sw):08X}")
        pos = pos + length if length != _UNDEFINED else _skip_item(reader, pos, explicit, depth)


def _skip_item(reader: _Reader, pos: int, explicit: bool, depth: int) -> int:
    """Position after the Item Delimitation Item closing an undefined-length item at ``pos``."""
    while True:
        buf, base = reader.window(pos, 8)
        off = pos - base
        if explicit:
            sw, vr, length = _EXPLICIT.unpack_from(buf, off)
            if sw & 0xFFFF == 0xFFFE:
                length, vpos = _U32.unpack_from(buf, off + 4)[0], pos + 8
            elif vr in _LONG_VRS:
                buf, base = reader.window(pos, 12)
                length, vpos = _U32.unpack_from(buf, pos - base + 8)[0], pos + 12
            elif vr in _SHORT_VRS:
                vpos = pos + 8
            else:
                raise WalkerUnsupported(f"no explicit VR at offset {pos}")
        else:
            sw, length = _IMPLICIT.unpack_from(buf, off)
            vr, vpos = None, pos + 8
        if sw == _ITEM_END_SW:
            return vpos
        if length == _UNDEFINED:
            pos = _skip_sequence(reader, vpos, explicit and vr != b"UN", depth + 1)
        else:
            pos = vpos + length


def _walk_explicit(reader: _Reader, pos: int, found: dict) -> tuple[int, int] | None:
    """Walk a top-level Explicit VR data set; ``(offset, length)`` of the pixel data or None."""
    size, buf, base = reader.size, reader.buf, reader.base
    end = base + len(buf)
    unpack, u32 = _EXPLICIT.unpack_from, _U32.unpack_from
    wanted = _WANTED_SW
    while True:
        if pos + 12 > end:
            if pos >= size:
                if pos > size:
                    raise EOFError(f"an element ends at byte {pos}, the file at {size}")
                return None
            buf, base = reader.window(pos, min(12, size - pos))
            end = base + len(buf)
        sw, vr, length = unpack(buf, pos - base)
        if vr in _SHORT_VRS:
            vpos = pos + 8
        elif vr in _LONG_VRS:
            length = u32(buf, pos - base + 8)[0]
            vpos = pos + 12
            if sw == _PIXEL_SW:
                return vpos, length
            if sw in _PRESENCE_SW:
                found[sw] = (vr, b"")
            if length == _UNDEFINED:
                # an undefined-length UN element holds an Implicit VR sequence (PS3.5 6.2.2)
                pos = _skip_sequence(reader, vpos, vr != b"UN", 0)
                buf, base = reader.buf, reader.base
                end = base + len(buf)
                continue
            if sw in _PRESENCE_SW:
                pos = vpos + length
                continue
        else:
            raise WalkerUnsupported(f"no explicit VR at offset {pos}")
        if sw in wanted:
            if vpos + length > end:
                buf, base = reader.window(vpos, length)
                end = base + len(buf)
            found[sw] = (vr, buf[vpos - base : vpos - base + length])
        pos = vpos + length


def _walk_implicit(reader: _Reader, pos: int, found: dict) -> tuple[int, int] | None:
    """Walk a top-level Implicit VR data set; ``(offset, length)`` of the pixel data or None."""
    size, buf, base = reader.size, reader.buf, reader.base
    end = base + len(buf)
    unpack = _IMPLICIT.unpack_from
    wanted = _WANTED_SW
    while True:
        if pos + 8 > end:
            if pos >= size:
                if pos > size:
                    raise EOFError(f"an element ends at byte {pos}, the file at {size}")
                return None
            buf, base = reader.window(pos, min(8, size - pos))
            end = base + len(buf)
        sw, length = unpack(buf, pos - base)
        vpos = pos + 8
        if sw == _PIXEL_SW:
            return vpos, length
        if length == _UNDEFINED:
            if sw in _PRESENCE_SW:
                found[sw] = (None, b"")
            pos = _skip_sequence(reader, vpos, False, 0)
            buf, base = reader.buf, reader.base
            end = base + len(buf)
            continue
        if sw in wanted:
            if sw in _PRESENCE_SW:
                found[sw] = (None, b"")
            else:
                if vpos + length > end:
                    buf, base = reader.window(vpos, length)
                    end = base + len(buf)
                found[sw] = (None, buf[vpos - base : vpos - base + length])
        pos = vpos + length


def read_header(path: str | Path) -> Header:
    """Read the kept attributes and the pixel data position of one DICOM file.

    Raises
    ------
    NotDicom
        No 'DICM' marker after a 128-byte preamble.
    WalkerUnsupported
        A transfer syntax or encoding the walker does not parse; use pydicom.
    EOFError
        The header ends before its elements do (a truncated file).
    """
    path = os.fspath(path)
    found: dict[int, tuple[bytes | None, bytes]] = {}
    with open(path, "rb", buffering=0) as f:
        first = f.read(FIRST_READ)
        size = len(first) if len(first) < FIRST_READ else f.seek(0, 2)
        if len(first) < 132 or first[128:132] != b"DICM":
            raise NotDicom(path)
        reader = _Reader(f, first, size)
        try:
            # the file meta group is always Explicit VR Little Endian, and short
            pos, end = 132, len(first)
            while pos + 12 <= end:
                sw, vr, length = _EXPLICIT.unpack_from(first, pos)
                if sw & 0xFFFF != 2:
                    break
                vpos = pos + 8
                if vr in _LONG_VRS:
                    length, vpos = _U32.unpack_from(first, pos + 8)[0], pos + 12
                if sw in _WANTED_SW:
                    found[sw] = (vr, first[vpos : vpos + length])
                pos = vpos + length
            else:
                if size > end:
                    raise WalkerUnsupported("a file meta group longer than the first read")
            if pos >= size:
                raise EOFError(
                    f"the file ends at byte {size}, within or right after its meta header"
                )
            syntax_raw = found.get(_swap(0x00020010))
            syntax = _convert(0x00020010, *syntax_raw, "") if syntax_raw else ""
            if syntax in ("", EXPLICIT_VR_BE, DEFLATED_EXPLICIT_VR_LE):
                raise WalkerUnsupported(f"transfer syntax {syntax or 'missing'}")
            # the data set's first element tells its VR encoding, whatever the meta group
            # says (exports that lie about it exist; pydicom checks the same way)
            buf, base = reader.window(pos, min(8, size - pos))
            explicit = buf[pos - base + 4 : pos - base + 6] in _ALL_VRS
            walk = _walk_explicit if explicit else _walk_implicit
            pixels = walk(reader, pos, found)
            if pixels is not None and pixels[1] == _UNDEFINED:
                try:  # the fragments must all be there: a cut stream cannot be decoded
                    _skip_sequence(reader, pixels[0], True, 0)
                except EOFError:
                    raise EOFError(
                        f"encapsulated pixel data starting at byte {pixels[0]} runs past the "
                        f"end of the file ({size} bytes) before its sequence delimiter"
                    ) from None
            header = Header(path=path, file_size=size)
            _apply(header, found)
        except struct.error:  # fewer bytes left than an element header
            raise EOFError(f"the file ends at byte {size}, inside an element header") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise WalkerUnsupported(f"unparsable value: {exc}") from exc
    if pixels is not None:
        header.has_pixels = True
        header.pixel_offset, length = pixels
        header.pixel_length = -1 if length == _UNDEFINED else length
    if not header.sop_class:
        header.sop_class = header.media_sop_class
    return header
