"""Reading the pixels of a stack: uncompressed little-endian bytes straight into the output
array, everything else decoded by pydicom with the fastest installed plugin; rescale slope
and intercept applied, keeping integer dtypes where that is exact, and MONOCHROME1 inverted
when asked (:mod:`.encoding` decides)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from napari_mrisynth.errors import DicomFileError
from napari_mrisynth.io.dicom._walker import (
    Header,
)

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


def _stored_dtype(h: Header) -> np.dtype:
    kind = "i" if h.pixel_representation else "u"
    return np.dtype(f"<{kind}{h.bits_allocated // 8}")


def _stored_range(h: Header) -> tuple[int, int]:
    bits = h.bits_stored or h.bits_allocated
    if h.pixel_representation:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def rescale_of(h: Header) -> tuple[float, float]:
    """``(slope, intercept)`` of ``h``; absent ones are the identity (1, 0)."""
    slope = 1.0 if h.slope is None else float(h.slope)
    return slope, float(h.intercept or 0.0)


def modality_range(headers: list[Header]) -> tuple[float, float]:
    """Lowest and highest modality value the stored values of ``headers`` can take: the
    range BitsStored and PixelRepresentation allow, through each slice's rescale."""
    lo, hi = math.inf, -math.inf
    for h in headers:
        slope, intercept = rescale_of(h)
        ends = [slope * v + intercept for v in _stored_range(h)]
        lo, hi = min(lo, *ends), max(hi, *ends)
    return lo, hi


def output_dtype(headers: list[Header]) -> np.dtype:
    """Integer when every rescale is an integer shift whose result fits (int64 only for
    32-bit data, where float32 would round); else float32."""
    for h in headers:
        slope, intercept = rescale_of(h)
        if slope != 1.0 or not float(intercept).is_integer():
            return np.dtype(np.float32)
    lo, hi = modality_range(headers)
    for dtype in (_stored_dtype(headers[0]), np.int16, np.uint16, np.int32, np.int64):
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return np.dtype(dtype)
    return np.dtype(np.float32)


class PixelReader:
    """Reads the stored values of one slice into a caller's array, then rescales.

    Parameters
    ----------
    invert_about : float, optional
        MONOCHROME1: each modality value ``m`` becomes ``invert_about - m``.
    """

    def __init__(self, invert_about: float | None = None) -> None:
        self._datasets: dict[Path, np.ndarray] = {}
        self.invert_about = invert_about

    def read(self, h: Header, out: np.ndarray) -> None:
        """Fill ``out`` (rows, columns) with the modality values of ``h``."""
        self._read_modality(h, out)
        if self.invert_about is not None:
            _invert(out, self.invert_about)

    def _read_modality(self, h: Header, out: np.ndarray) -> None:
        stored_dtype = _stored_dtype(h)
        slope, intercept = rescale_of(h)
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
        _check_precision(h, data)
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
        if h.encapsulated:
            _check_precision(h, ds.PixelData)
        plugin = _PLUGINS.get(str(ds.file_meta.get("TransferSyntaxUID", "")), "")
        try:
            array = pydicom.pixels.pixel_array(ds, decoding_plugin=plugin) if plugin else None
        except Exception:  # a plugin may reject a valid stream; let pydicom try them all
            array = None
        if array is None:
            array = ds.pixel_array
    except DicomFileError:
        raise
    except Exception as exc:
        raise DicomFileError(h.path, f"cannot read pixel data: {exc}") from None
    return np.asarray(array).reshape(h.frames, h.rows, h.columns)


def _invert(out: np.ndarray, about: float) -> None:
    """``out <- about - out`` in place. Integers wrap through the dtype on the way, and the
    result fits (``about`` is the sum of the ends of the range), so it is exact."""
    if out.dtype.kind == "f":
        np.subtract(out.dtype.type(about), out, out=out)
    else:
        np.subtract(np.array(int(about)).astype(out.dtype), out, out=out)


def _codestream_bits(syntax: str, frame: bytes) -> tuple[str, int | None]:
    """The compression's name and the bits per sample its codestream holds, or None."""
    from pydicom.pixels import utils
    from pydicom.uid import JPEG2000TransferSyntaxes, JPEGLSTransferSyntaxes, RLELossless

    if syntax == RLELossless:  # one segment per byte of a sample (PS3.5 G.2)
        segments = int.from_bytes(frame[:4], "little") if len(frame) >= 4 else 0
        return "RLE", 8 * segments or None
    if syntax in JPEG2000TransferSyntaxes:
        return "JPEG 2000", utils.get_j2k_parameters(frame).get("precision")
    name = "JPEG-LS" if syntax in JPEGLSTransferSyntaxes else "JPEG"
    jpeg_parameters = getattr(utils, "_get_jpg_parameters", None)  # private in pydicom 3
    return name, jpeg_parameters(frame).get("precision") if jpeg_parameters else None


def _check_precision(h: Header, encapsulated: bytes) -> None:
    """Refuse compressed data whose samples have more bits than BitsAllocated holds (JPEG
    decoders cut them to BitsAllocated without a word), naming BitsAllocated."""
    from pydicom.encaps import get_frame

    try:
        frame = get_frame(encapsulated, h.frame or 0, number_of_frames=h.frames)
    except Exception:  # the decoder will say what is wrong with the fragments
        return
    name, bits = _codestream_bits(h.transfer_syntax, frame)
    if bits is not None and bits > h.bits_allocated:
        raise DicomFileError(
            h.path,
            f"BitsAllocated {h.bits_allocated} is fewer than the {bits} bits per sample "
            f"of the {name} pixel data",
        )
