"""Bad input: every broken file gives a specific error that names the file and the problem,
and a folder with some bad files still loads what is good.

Every bad file here is a real file on disk, made from pydicom's MR_small.dcm (64x64 int16,
8192 bytes of pixel data), from the corpus series (tests/support/dicom_corpus.py), or written with
nibabel / SimpleITK. Memory for huge declared sizes is measured with tracemalloc.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import time
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from napari_mrisynth.cli import main
from napari_mrisynth.errors import (
    DicomFileError,
    GeometryError,
    MrisynthError,
    SeriesError,
    VolumeFileError,
)
from napari_mrisynth.io.dicom import DicomConversionWarning, load_dicom, scan_folder
from napari_mrisynth.io.files import is_dicom_file, load_volume
from tests.support.dicom_corpus import (
    PYDICOM_FILES,
    assert_same_image,
    canonical,
    sitk_read_series,
)

MR_SMALL = PYDICOM_FILES / "MR_small.dcm"
PIXEL_BYTES = 64 * 64 * 2


def names_file(message: str, path: Path) -> bool:
    return str(path) in message or path.name in message


def mentions_number(text: str, value: float) -> bool:
    return any(abs(float(m) - value) < 1e-6 for m in re.findall(r"\d+(?:\.\d+)?", text))


def specific_error(info: pytest.ExceptionInfo) -> MrisynthError:
    """The error is a subclass of MrisynthError, never the bare base class."""
    err = info.value
    assert isinstance(err, MrisynthError)
    assert type(err) is not MrisynthError, f"unspecific error: {err!r}"
    return err


# -- bad DICOM files, one per problem ------------------------------------------------------------
def _mr_small(tmp_path: Path, name: str = "MR_small.dcm") -> Path:
    path = tmp_path / name
    shutil.copy(MR_SMALL, path)
    return path


def make_junk(tmp_path):
    path = tmp_path / "notes.dcm"
    path.write_text("This is a text file with a .dcm extension.\n" * 20)
    return path


def make_empty(tmp_path):
    path = tmp_path / "empty.dcm"
    path.write_bytes(b"")
    return path


def make_cut_in_header(tmp_path):
    data = MR_SMALL.read_bytes()
    path = tmp_path / "cut_header.dcm"
    path.write_bytes(data[:300])  # preamble, DICM and part of the meta/dataset header
    return path


def make_cut_in_pixels(tmp_path):
    data = MR_SMALL.read_bytes()
    path = tmp_path / "cut_pixels.dcm"
    path.write_bytes(data[: len(data) - 3000])  # PixelData declares 8192, 5192 remain
    return path


def make_wrong_pixel_length(tmp_path):
    """A well-formed file whose PixelData holds 100 bytes fewer than Rows x Columns x 2."""
    ds = pydicom.dcmread(MR_SMALL)
    ds.PixelData = ds.PixelData[: PIXEL_BYTES - 100]
    path = tmp_path / "short_pixels.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def make_no_pixels(tmp_path):
    ds = pydicom.dcmread(MR_SMALL)
    del ds.PixelData
    path = tmp_path / "no_pixels.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def make_huge_dims(tmp_path):
    """Declares 65535 x 65535 x 100000 frames (8.6e14 bytes) but holds 8192 bytes."""
    ds = pydicom.dcmread(MR_SMALL)
    ds.Rows = 65535
    ds.Columns = 65535
    ds.NumberOfFrames = 100000
    path = tmp_path / "huge.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


BAD_FILES = {
    "junk": (make_junk, ("dicom",)),
    "empty": (make_empty, ("empty", "0 bytes")),
    "cut_header": (make_cut_in_header, ("truncat",)),
    "cut_pixels": (make_cut_in_pixels, ("truncat",)),
    "wrong_length": (make_wrong_pixel_length, ("pixel",)),
    "no_pixels": (make_no_pixels, ("no pixel", "not an image")),
    "huge": (make_huge_dims, ("pixel", "truncat", "too large", "declares")),
}


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_bad_dicom_file_gives_a_specific_error_naming_file_and_problem(tmp_path, kind):
    make, words = BAD_FILES[kind]
    path = make(tmp_path)
    with pytest.raises(MrisynthError) as info:
        load_dicom(path)
    err = specific_error(info)
    message = str(err)
    assert names_file(message, path), message
    assert any(w in message.lower() for w in words), f"{kind}: {message}"


@pytest.mark.parametrize("kind", ["junk", "empty", "cut_header"])
def test_unparseable_files_are_dicom_file_errors(tmp_path, kind):
    path = BAD_FILES[kind][0](tmp_path)
    with pytest.raises(DicomFileError) as info:
        load_dicom(path)
    assert info.value.path == path


def test_truncated_pixel_data_says_how_much_is_missing(tmp_path):
    path = make_cut_in_pixels(tmp_path)
    raw = path.read_bytes()
    # MR_small.dcm has an OW PixelData element of 8192 bytes followed by trailing elements
    header = b"\xe0\x7f\x10\x00OW\x00\x00" + PIXEL_BYTES.to_bytes(4, "little")
    present = len(raw) - (raw.index(header) + len(header))
    with pytest.raises(DicomFileError) as info:
        load_dicom(path)
    message = str(info.value)
    assert mentions_number(message, PIXEL_BYTES), message
    assert mentions_number(message, present), message


def test_wrong_pixel_length_names_expected_and_found(tmp_path):
    path = make_wrong_pixel_length(tmp_path)
    with pytest.raises(DicomFileError) as info:
        load_dicom(path)
    message = str(info.value)
    assert mentions_number(message, PIXEL_BYTES), message
    assert mentions_number(message, PIXEL_BYTES - 100), message


def _huge_from(source: Path, target: Path) -> Path:
    ds = pydicom.dcmread(source)
    ds.Rows = 65535
    ds.Columns = 65535
    ds.NumberOfFrames = 100000
    little = ds.original_encoding[1] if ds.original_encoding else True
    ds.save_as(target, enforce_file_format=True, little_endian=little, implicit_vr=False)
    return target


@pytest.mark.parametrize("source", ["native", "big_endian", "rle"])
def test_huge_declared_dimensions_fail_fast_without_allocating(tmp_path, corpus, source):
    """65535 x 65535 x 100000 frames declared (8.6e14 bytes), a few KB present: native,
    big endian (read through pydicom) and RLE (encapsulated: no length to compare)."""
    folder = tmp_path / source
    folder.mkdir()
    if source == "native":
        path = make_huge_dims(folder)
    elif source == "big_endian":
        path = _huge_from(PYDICOM_FILES / "MR_small_bigendian.dcm", folder / "huge_be.dcm")
    else:
        path = _huge_from(corpus["rle"].files[0], folder / "huge_rle.dcm")
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(DicomFileError) as info:
            load_dicom(path)
        with pytest.raises(DicomFileError):
            load_dicom(path, lazy=True)
        scan = scan_folder(folder)
    finally:
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < 200 * 2**20, f"peak traced allocation {peak / 2**20:.0f} MB"
    assert elapsed < 5.0, f"took {elapsed:.1f} s"
    assert names_file(str(info.value), path)
    assert scan.series == []
    assert [s.path for s in scan.skipped] == [path]


def test_is_dicom_file_is_cheap_and_right(tmp_path):
    assert is_dicom_file(MR_SMALL)
    assert is_dicom_file(make_cut_in_pixels(tmp_path))
    assert not is_dicom_file(make_junk(tmp_path))
    assert not is_dicom_file(make_empty(tmp_path))


# -- paths that cannot be read ---------------------------------------------------------------------
def test_nonexistent_path(tmp_path):
    path = tmp_path / "no" / "such" / "series"
    with pytest.raises(MrisynthError) as info:
        load_dicom(path)
    err = specific_error(info)
    assert names_file(str(err), path)
    assert any(w in str(err).lower() for w in ("not found", "no such", "does not exist")), err


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads files whatever the mode"
)
def test_unreadable_file(tmp_path):
    path = _mr_small(tmp_path)
    path.chmod(0)
    try:
        with pytest.raises(VolumeFileError) as info:
            load_dicom(path)
        assert names_file(str(info.value), path)
        assert "permission" in str(info.value).lower() or "readable" in str(info.value).lower()
    finally:
        path.chmod(0o644)


def test_dangling_symlink_is_reported_not_crashed_on(tmp_path):
    """A file that cannot be opened (works as root too, unlike chmod 000)."""
    link = tmp_path / "IM0002.dcm"
    link.symlink_to(tmp_path / "vanished.dcm")
    good = _mr_small(tmp_path, "IM0001.dcm")
    with pytest.raises(MrisynthError) as info:
        load_dicom(link)
    assert names_file(str(specific_error(info)), link)
    scan = scan_folder(tmp_path)
    assert [s.files for s in scan.series] == [[good]]
    assert [s.path for s in scan.skipped] == [link]
    assert scan.skipped[0].reason


@pytest.mark.parametrize("content", ["nothing", "text"])
def test_folder_without_dicom(tmp_path, content):
    folder = tmp_path / "export"
    folder.mkdir()
    if content == "text":
        (folder / "a.txt").write_text("hello")
        (folder / "sub").mkdir()
        (folder / "sub" / "b.csv").write_text("1,2,3\n")
    with pytest.raises(MrisynthError) as info:
        load_dicom(folder)
    err = specific_error(info)
    assert names_file(str(err), folder), err
    assert "dicom" in str(err).lower(), err
    scan = scan_folder(folder)
    assert scan.series == []
    assert len(scan.skipped) == (2 if content == "text" else 0)


# -- a folder with a good series and every kind of bad file ----------------------------------------
@pytest.fixture
def folder_with_bad_files(tmp_path, corpus):
    folder = tmp_path / "export"
    shutil.copytree(corpus["axial"].folder, folder / "t1")
    bad = {}
    for kind, (make, _) in BAD_FILES.items():
        sub = folder / "bad" / kind
        sub.mkdir(parents=True)
        bad[kind] = make(sub)
    return folder, bad


def test_good_series_loads_and_bad_files_are_skipped_with_reasons(folder_with_bad_files, corpus):
    folder, bad = folder_with_bad_files
    scan = scan_folder(folder)
    assert [s.uid for s in scan.series] == [corpus["axial"].uid]
    skipped = {s.path: s.reason for s in scan.skipped}
    assert set(skipped) == set(bad.values()), sorted(map(str, skipped))
    for kind, path in bad.items():
        words = BAD_FILES[kind][1]
        reason = skipped[path].lower()
        assert any(w in reason for w in words), f"{kind}: {reason}"
    assert_same_image(load_dicom(folder), corpus["axial"].volume, what="good series")


def test_a_truncated_slice_inside_a_series_is_not_loaded_silently(tmp_path, corpus):
    folder = tmp_path / "t1"
    shutil.copytree(corpus["axial"].folder, folder)
    victim = sorted(folder.iterdir())[4]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) - 1000])
    with pytest.raises(MrisynthError) as info:
        load_dicom(folder)
    message = str(specific_error(info))
    # either the bad file is named, or it was skipped and the gap it leaves is refused
    assert names_file(message, victim) or isinstance(info.value, GeometryError), message


def test_two_slices_at_one_position_are_reported(tmp_path, corpus):
    folder = tmp_path / "t1"
    shutil.copytree(corpus["axial"].folder, folder)
    source = sorted(folder.iterdir())[3]
    ds = pydicom.dcmread(source)
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.InstanceNumber = 99
    pixels = ds.pixel_array.copy()
    pixels[0, 0] += 1
    ds.PixelData = pixels.tobytes()
    ds.save_as(folder / "IM0099.dcm", enforce_file_format=True)
    (found,) = scan_folder(folder).series
    assert not found.regular
    assert any("duplicate" in p.lower() for p in found.problems), found.problems
    with pytest.raises(GeometryError):
        load_dicom(folder)


# -- the same through io.files.load_volume, NIfTI problems included -------------------------------
def _nifti(tmp_path: Path, shape=(10, 12, 14), name="t1.nii.gz") -> Path:
    data = np.arange(np.prod(shape), dtype=np.int16).reshape(shape)
    path = tmp_path / name
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])), path)
    return path


def test_load_volume_reads_good_nifti_and_dicom(tmp_path, corpus):
    path = _nifti(tmp_path)
    volume = load_volume(path)
    assert volume.shape == (14, 12, 10)
    assert_same_image(load_volume(corpus["oblique"].folder), corpus["oblique"].volume)


def test_truncated_nii_gz(tmp_path):
    path = _nifti(tmp_path)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(VolumeFileError) as info:
        load_volume(path)
    assert info.value.path == path


def test_truncated_nii_inside_valid_gzip(tmp_path):
    path = _nifti(tmp_path)
    payload = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(payload[: len(payload) - 500]))
    with pytest.raises(VolumeFileError) as info:
        load_volume(path)
    assert info.value.path == path


def test_nii_whose_header_declares_more_voxels_than_the_file_holds(tmp_path):
    path = _nifti(tmp_path, name="t1.nii")
    image = nib.load(path)
    header = image.header.copy()
    header.set_data_shape((64, 64, 64))
    raw = path.read_bytes()
    path.write_bytes(header.binaryblock + raw[348:])  # same offset, larger dims
    with pytest.raises(VolumeFileError) as info:
        load_volume(path)
    assert names_file(str(info.value), path)


@pytest.mark.parametrize("shape", [(10, 12, 14, 3), (10, 12)])
def test_nifti_that_is_not_one_3d_volume(tmp_path, shape):
    data = np.zeros(shape, dtype=np.int16)
    path = tmp_path / "wrong_dims.nii"
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    with pytest.raises(MrisynthError) as info:
        load_volume(path)
    message = str(specific_error(info))
    assert names_file(message, path), message
    assert str(shape[-1]) in message or str(len(shape)) in message, message


def test_load_volume_nonexistent_and_unknown_format(tmp_path):
    missing = tmp_path / "nope.nii.gz"
    with pytest.raises(VolumeFileError) as info:
        load_volume(missing)
    assert info.value.path == missing
    other = tmp_path / "table.xlsx"
    other.write_bytes(b"PK\x03\x04 not a volume")
    with pytest.raises(VolumeFileError) as info:
        load_volume(other)
    assert info.value.path == other


@pytest.mark.parametrize("kind", ["2d", "rgb"])
def test_itk_image_that_is_not_one_scalar_3d_volume_names_the_file(tmp_path, kind):
    import SimpleITK as sitk

    path = tmp_path / f"{kind}.mha"
    if kind == "2d":
        image = sitk.GetImageFromArray(np.zeros((10, 12), np.int16))
    else:
        image = sitk.GetImageFromArray(np.zeros((4, 10, 12, 3), np.uint8), isVector=True)
    sitk.WriteImage(image, str(path))
    with pytest.raises(MrisynthError) as info:
        load_volume(path)
    assert names_file(str(specific_error(info)), path), str(info.value)


def test_truncated_mha_says_what_is_wrong(tmp_path):
    import SimpleITK as sitk

    path = tmp_path / "t1.mha"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((10, 12, 14), np.int16)), str(path))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 500])
    with pytest.raises(VolumeFileError) as info:
        load_volume(path)
    message = str(info.value)
    assert info.value.path == path
    # the file exists: ITK's last line ("Reason: No such file or directory") is not the reason
    assert "no such file" not in message.lower(), message


@pytest.mark.parametrize("kind", ["junk", "cut_pixels", "huge"])
def test_load_volume_passes_dicom_errors_through(tmp_path, kind):
    path = BAD_FILES[kind][0](tmp_path)
    with pytest.raises(DicomFileError):
        load_volume(path)


def test_convert_command_reports_bad_input_and_exits_1(tmp_path, capsys):
    path = make_cut_in_pixels(tmp_path)
    out = tmp_path / "out.nii.gz"
    capsys.readouterr()
    rc = main(["convert", str(path), str(out)])
    err = capsys.readouterr().err
    assert rc == 1
    assert names_file(err, path) and "truncat" in err.lower(), err
    assert not out.exists()
    assert "Traceback" not in err


# -- files that parse but cannot be decoded ------------------------------------------------------
def test_undecodable_jpeg_names_the_file_and_the_decoder_failure():
    path = PYDICOM_FILES / "JPEG-lossy.dcm"  # no plugin pydicom has decodes this file
    with pytest.raises(DicomFileError) as info:
        load_dicom(path)
    assert info.value.path == path
    assert "decod" in str(info.value).lower()


def test_colour_image_is_refused_as_not_greyscale():
    path = PYDICOM_FILES / "SC_rgb_rle.dcm"
    with pytest.raises(DicomFileError) as info:
        load_dicom(path)
    assert "rgb" in str(info.value).lower() or "grey" in str(info.value).lower()


@pytest.mark.parametrize("syntax", ["rle", "j2k"])
def test_truncated_compressed_slice_says_truncated(tmp_path, corpus, syntax):
    folder = tmp_path / syntax
    shutil.copytree(corpus[syntax].folder, folder)
    victim = sorted(folder.iterdir())[3]
    raw = victim.read_bytes()
    victim.write_bytes(raw[: len(raw) - 200])  # loses the end of the last fragment
    skipped = {s.path: s.reason for s in scan_folder(folder).skipped}
    with pytest.raises(MrisynthError) as info:
        load_dicom(folder)
    if victim in skipped:  # caught by the scan: the reason says so, the series has a gap
        assert "truncat" in skipped[victim].lower(), skipped[victim]
        assert isinstance(info.value, GeometryError), info.value
    else:  # caught while decoding: the error names the file and the problem
        assert isinstance(info.value, DicomFileError), info.value
        assert info.value.path == victim
        assert "truncat" in str(info.value).lower(), str(info.value)


def test_real_truncated_j2k_frames_say_truncated():
    from tests.support.dicom_corpus import pydicom_file

    path = pydicom_file("emri_small_jpeg_2k_lossless_too_short.dcm")
    with pytest.raises(DicomFileError) as info:
        load_dicom(path)
    assert info.value.path == path
    message = str(info.value).lower()
    assert "truncat" in message or "too short" in message or "incomplete" in message, message


def _declare_transfer_syntax(path: Path, syntax: str) -> None:
    """Rewrite only the file meta group so it declares ``syntax``; the data set is kept."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info

    raw = path.read_bytes()
    group_length = int.from_bytes(raw[140:144], "little")
    meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
    meta.TransferSyntaxUID = syntax
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_file_meta_info(buffer, meta, enforce_standard=True)
    path.write_bytes(raw[:128] + b"DICM" + buffer.getvalue() + raw[144 + group_length :])


@pytest.mark.parametrize("declared", ["implicit", "explicit"])
def test_transfer_syntax_that_lies_about_the_vr(tmp_path, corpus, declared):
    """A classic export defect: the meta group says Implicit VR, the data set is Explicit
    (or the reverse). pydicom reads both; the files are not truncated. The reader must load
    them, or refuse saying what is wrong, never call them truncated."""
    name = "axial" if declared == "implicit" else "implicit"
    files = _series_copy(tmp_path, corpus, name)
    syntax = "1.2.840.10008.1.2" if declared == "implicit" else "1.2.840.10008.1.2.1"
    for path in files:
        _declare_transfer_syntax(path, syntax)
    assert pydicom.dcmread(files[0]).pixel_array.shape == corpus["axial"].volume.shape[1:]
    scan = scan_folder(files[0].parent)
    for skipped in scan.skipped:
        assert "truncat" not in skipped.reason, skipped.reason
    if scan.series:
        assert_same_image(load_dicom(files[0].parent), corpus["axial"].volume, what=declared)
    else:
        assert len(scan.skipped) == len(files)
        assert "vr" in scan.skipped[0].reason.lower() or "syntax" in scan.skipped[0].reason.lower()


# -- malformed geometry in a series ----------------------------------------------------------------
def _series_copy(tmp_path: Path, corpus, name: str = "axial") -> list[Path]:
    folder = tmp_path / name
    shutil.copytree(corpus[name].folder, folder)
    return sorted(folder.iterdir())


def _edit(path: Path, **attributes) -> None:
    ds = pydicom.dcmread(path)
    for keyword, value in attributes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)


def test_malformed_position_in_one_slice_is_reported_not_crashed_on(tmp_path, corpus):
    files = _series_copy(tmp_path, corpus)
    _edit(files[2], ImagePositionPatient=["1", "2"])  # two values instead of three
    scan = scan_folder(files[0].parent)  # must not raise a bare ValueError
    problems = [p for s in scan.series for p in s.problems] + [s.reason for s in scan.skipped]
    assert any("ImagePositionPatient" in p for p in problems), problems
    with pytest.raises(MrisynthError) as info:
        load_dicom(files[0].parent)
    specific_error(info)


def test_nan_position_names_the_attribute_not_a_tilt(tmp_path, corpus):
    files = _series_copy(tmp_path, corpus)
    _edit(files[2], ImagePositionPatient=["nan", "0", "0"])
    with pytest.raises(MrisynthError) as info:
        load_dicom(files[0].parent)
    message = str(specific_error(info))
    assert "ImagePositionPatient" in message or names_file(message, files[2]), message
    assert "tilt" not in message and "nan deg" not in message, message


def test_one_slice_without_position_does_not_erase_the_series_geometry(tmp_path, corpus):
    """11 slices with positions and 1 without: the reader must not fall back to an
    invented identity grid at the origin and load it as if it were regular."""
    files = _series_copy(tmp_path, corpus)
    _edit(files[3], ImagePositionPatient=None)
    (found,) = [s for s in scan_folder(files[0].parent).series if s.stack == 0]
    if found.shape[0] == len(files):  # the file without a position is in the stack
        assert not found.regular, f"called regular with invented geometry: {found.problems}"
    with pytest.raises(GeometryError) as info:
        load_dicom(files[0].parent)
    message = str(info.value)
    assert names_file(message, files[3]) or "missing slice" in message.lower(), message


def test_non_orthogonal_orientation_is_refused_not_squared(tmp_path, corpus):
    """Row and column cosines 11.5 degrees off perpendicular: not something to round away."""
    files = _series_copy(tmp_path, corpus)
    for path in files:
        _edit(path, ImageOrientationPatient=["1", "0", "0", "0.2", "0.98", "0"])
    with pytest.raises(GeometryError) as info:
        load_dicom(files[0].parent)
    assert "ImageOrientationPatient" in str(info.value) or "orthogonal" in str(info.value)


def test_zero_orientation_is_refused_naming_the_attribute(tmp_path, corpus):
    files = _series_copy(tmp_path, corpus)
    for path in files:
        _edit(path, ImageOrientationPatient=["0"] * 6)
    with pytest.raises(MrisynthError) as info:
        load_dicom(files[0].parent)
    message = str(specific_error(info))
    assert "ImageOrientationPatient" in message, message
    assert "nan" not in message.lower(), message


def test_negative_pixel_spacing_is_named(tmp_path, corpus):
    files = _series_copy(tmp_path, corpus)
    for path in files:
        _edit(path, PixelSpacing=["-3.5", "-3"])
    with pytest.raises(MrisynthError) as info:
        load_dicom(files[0].parent)
    message = str(specific_error(info))
    assert "PixelSpacing" in message, message
    assert "tilt" not in message, message


def test_positions_rounded_by_the_scanner_are_still_regular(tmp_path, corpus):
    """IPP with +-0.01 mm of rounding noise (vendors write few decimals): a regular grid."""
    files = _series_copy(tmp_path, corpus)
    rng = np.random.default_rng(3)
    for path in files:
        ds = pydicom.dcmread(path)
        ipp = np.array([float(v) for v in ds.ImagePositionPatient]) + rng.uniform(-0.01, 0.01, 3)
        _edit(path, ImagePositionPatient=[f"{v:.4f}" for v in ipp])
    volume = load_dicom(files[0].parent)
    truth = corpus["axial"].volume
    np.testing.assert_allclose(volume.spacing, truth.spacing, atol=0.01)
    np.testing.assert_array_equal(np.asarray(volume.data), truth.data)


def test_exact_copy_of_a_file_is_ignored_and_noted(tmp_path, corpus):
    files = _series_copy(tmp_path, corpus)
    shutil.copy(files[4], files[0].parent / "copy_of_IM0005")
    volume = load_dicom(files[0].parent)
    assert_same_image(volume, corpus["axial"].volume, what="with a copied file")
    assert any("duplicate" in p.lower() for p in volume.metadata["problems"])


# -- pixel encoding that contradicts itself ------------------------------------------------------
#: (corpus series, attributes written into one slice, words the refusal must contain)
BAD_ENCODINGS = {
    "bits_allocated_8_over_16_bit_data": (
        "axial",
        {"BitsAllocated": 8, "BitsStored": 8, "HighBit": 7},
        ("BitsAllocated 8", "16 bits per pixel"),
    ),
    "bits_stored_above_bits_allocated": ("axial", {"BitsStored": 17}, ("BitsStored 17",)),
    "pixel_representation_2": ("axial", {"PixelRepresentation": 2}, ("PixelRepresentation 2",)),
    "slope_nan": ("rescaled", {"RescaleSlope": "NaN"}, ("RescaleSlope nan", "finite")),
    "slope_inf": ("rescaled", {"RescaleSlope": "inf"}, ("RescaleSlope inf", "finite")),
    "intercept_nan": ("rescaled", {"RescaleIntercept": "nan"}, ("RescaleIntercept nan",)),
    "slope_zero": ("rescaled", {"RescaleSlope": "0"}, ("RescaleSlope 0",)),
    "slope_missing": ("rescaled", {"RescaleSlope": None}, ("RescaleSlope missing", "0.5")),
    "intercept_missing": ("rescaled", {"RescaleIntercept": None}, ("RescaleIntercept missing",)),
}


@pytest.mark.filterwarnings("ignore:Invalid value for VR DS")  # pydicom, on NaN and inf
@pytest.mark.parametrize("lazy", [False, True], ids=["eager", "lazy"])
@pytest.mark.parametrize("kind", list(BAD_ENCODINGS))
def test_contradictory_encoding_of_one_slice_is_refused_naming_file_and_attribute(
    tmp_path, corpus, kind, lazy
):
    """The last slice, so that skipping it would leave a regular stack one slice short: the
    series must be refused before any voxel is read, naming the file and the attribute."""
    name, attributes, words = BAD_ENCODINGS[kind]
    files = _series_copy(tmp_path, corpus, name)
    _edit(files[-1], **attributes)
    with pytest.raises(DicomFileError) as info:
        load_dicom(files[0].parent, lazy=lazy)
    assert info.value.path == files[-1]
    for word in words:
        assert word in str(info.value), str(info.value)


def test_the_first_bad_slice_is_named_and_the_others_counted(tmp_path, corpus):
    files = _series_copy(tmp_path, corpus, "rescaled")
    for path in files[2:5]:
        _edit(path, RescaleSlope="0")
    with pytest.raises(DicomFileError) as info:
        load_dicom(files[0].parent)
    assert info.value.path == files[2]
    assert "and 2 other file(s)" in str(info.value), str(info.value)


def test_single_file_with_zero_slope_is_refused_by_both_header_readers(tmp_path):
    """The header walker (little endian) and pydicom (big endian) read the same slope."""
    for source in ("MR_small.dcm", "MR_small_bigendian.dcm"):
        ds = pydicom.dcmread(PYDICOM_FILES / source)
        ds.RescaleSlope, ds.RescaleIntercept = "0", "-1024"
        path = tmp_path / source
        little = ds.original_encoding[1]
        ds.save_as(path, enforce_file_format=True, little_endian=little, implicit_vr=False)
        with pytest.raises(DicomFileError) as info:
            load_dicom(path)
        assert info.value.path == path
        assert "RescaleSlope 0" in str(info.value) and "-1024" in str(info.value)


@pytest.mark.filterwarnings("ignore:Invalid value for VR DS")
def test_convert_refuses_a_nan_slope_and_writes_nothing(tmp_path, corpus, capsys):
    files = _series_copy(tmp_path, corpus, "rescaled")
    _edit(files[3], RescaleSlope="NaN")
    out = tmp_path / "out.nii.gz"
    capsys.readouterr()
    assert main(["convert", str(files[0].parent), str(out)]) == 1
    err = capsys.readouterr().err
    assert names_file(err, files[3]) and "RescaleSlope" in err, err
    assert not out.exists()


@pytest.mark.parametrize("syntax", ["rle", "jpegls", "j2k"])
def test_compressed_slice_with_more_bits_than_bits_allocated_is_refused(tmp_path, corpus, syntax):
    """16-bit codestreams in a slice whose BitsAllocated says 8: the JPEG decoders would
    cut every sample to its low byte without a word."""
    files = _series_copy(tmp_path, corpus, syntax)
    _edit(files[3], BitsAllocated=8, BitsStored=8, HighBit=7)
    with pytest.raises(DicomFileError) as info:
        load_dicom(files[0].parent)
    assert info.value.path == files[3]
    assert "BitsAllocated 8" in str(info.value) and "16 bits" in str(info.value)
    with pytest.warns(DicomConversionWarning, match="differs between slices"):
        lazy = load_dicom(files[0].parent, lazy=True)  # the codestream is read with the pixels
    with pytest.raises(DicomFileError) as info:
        np.asarray(lazy.data)
    assert info.value.path == files[3]


@pytest.mark.parametrize(
    "attributes",
    [
        {"PhotometricInterpretation": "PALETTE COLOR"},
        {"PhotometricInterpretation": "YBR_FULL", "SamplesPerPixel": 3},
        {"SamplesPerPixel": 3},
    ],
    ids=["palette", "ybr", "three_samples_monochrome"],
)
def test_image_that_is_not_greyscale_names_the_attributes(tmp_path, attributes):
    path = _mr_small(tmp_path)
    _edit(path, **attributes)
    with pytest.raises(DicomFileError) as info:
        load_dicom(path)
    message = str(info.value)
    assert info.value.path == path
    for keyword, value in attributes.items():
        assert f"{keyword} {value}" in message, message


def _monochrome1(tmp_path: Path, corpus, name: str) -> list[Path]:
    files = _series_copy(tmp_path, corpus, name)
    for path in files:
        _edit(path, PhotometricInterpretation="MONOCHROME1")
    return files


@pytest.mark.parametrize("name", ["axial", "rescaled", "bits12", "uint8"])
def test_monochrome1_is_inverted_as_gdcm_does_and_says_so(tmp_path, corpus, name):
    """PS3.3 C.7.6.3.1.2: the lowest MONOCHROME1 value is shown white. Inverted over the
    range BitsStored allows, after the rescale: SimpleITK (GDCM) gives the same voxels."""
    files = _monochrome1(tmp_path, corpus, name)
    with pytest.warns(DicomConversionWarning, match="MONOCHROME1") as caught:
        volume = load_dicom(files[0].parent)
    assert names_file(str(caught[0].message), files[0].parent), caught[0].message
    plain = corpus[name].volume
    sitk_data, _ = canonical(sitk_read_series(files[0].parent))
    np.testing.assert_array_equal(canonical(volume)[0], sitk_data)
    about = np.unique(np.asarray(volume.data, np.float64) + plain.data)
    assert len(about) == 1, about  # one inversion for the whole volume
    assert volume.dtype == load_dicom(corpus[name].folder).dtype
    assert any("MONOCHROME1" in p and "inverted" in p for p in volume.metadata["problems"])
    centre, width = load_dicom(corpus[name].folder).metadata["window"]
    assert volume.metadata["window"] == (about[0] - centre, width)
    with pytest.warns(DicomConversionWarning, match="MONOCHROME1"):
        lazy = load_dicom(files[0].parent, lazy=True)
    np.testing.assert_array_equal(np.asarray(lazy.data), volume.data)


@pytest.mark.parametrize("name", ["RG3_UNCI.dcm", "RG3_J2KR.dcm"])
def test_real_monochrome1_radiograph_equals_simpleitk(tmp_path, name):
    """pydicom-data's 10-bit MONOCHROME1 radiograph, native and JPEG 2000 (its PixelSpacing
    of 0 set to 0.1 mm, which the reader would refuse): 1023 - v, as GDCM gives."""
    import SimpleITK as sitk

    from tests.support.dicom_corpus import pydicom_file

    path = tmp_path / name
    ds = pydicom.dcmread(pydicom_file(name))
    ds.PixelSpacing = [0.1, 0.1]
    ds.save_as(path, enforce_file_format=True)
    with pytest.warns(DicomConversionWarning, match="1023 - v"):
        volume = load_dicom(path)
    expected = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    np.testing.assert_array_equal(np.asarray(volume.data).reshape(expected.shape), expected)
    np.testing.assert_array_equal(volume.data[0], 1023 - ds.pixel_array)


def test_monochrome1_with_a_rescale_per_slice_is_inverted_alike_in_every_slice(tmp_path, corpus):
    files = _monochrome1(tmp_path, corpus, "perslice_rescale")
    with pytest.warns(DicomConversionWarning, match="MONOCHROME1"):
        volume = load_dicom(files[0].parent)
    about = np.unique(np.asarray(volume.data, np.float64) + corpus["perslice_rescale"].volume.data)
    assert len(about) == 1, about


def test_series_mixing_monochrome1_and_monochrome2_is_refused(tmp_path, corpus):
    files = _series_copy(tmp_path, corpus)
    _edit(files[-1], PhotometricInterpretation="MONOCHROME1")
    with pytest.raises(SeriesError) as info:
        load_dicom(files[0].parent)
    message = str(info.value)
    assert "PhotometricInterpretation" in message and "MONOCHROME2" in message, message
    assert names_file(message, files[-1]), message


def test_slices_encoded_differently_are_each_read_as_their_header_says(tmp_path, corpus):
    """Self-consistent slices that differ from the others in BitsAllocated (16 among 8) or
    PixelRepresentation load exactly, with a note naming the attribute and the file."""
    files = _series_copy(tmp_path, corpus, "uint8")
    ds = pydicom.dcmread(files[2])
    ds.PixelData = ds.pixel_array.astype("<u2").tobytes()
    ds["PixelData"].VR = "OW"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.save_as(files[2], enforce_file_format=True)
    _edit(files[5], PixelRepresentation=1)  # values below 128: the same either way
    with pytest.warns(DicomConversionWarning) as caught:
        volume = load_dicom(files[0].parent)
    np.testing.assert_array_equal(volume.data, corpus["uint8"].volume.data)
    notes = [str(w.message) for w in caught]
    for keyword, path in (("BitsAllocated", files[2]), ("PixelRepresentation", files[5])):
        assert any(keyword in n and path.name in n for n in notes), notes
        assert any(keyword in p for p in volume.metadata["problems"])
