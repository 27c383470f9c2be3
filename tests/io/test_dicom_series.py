"""The DICOM series reader on real files written by ``write_dicom_series``.

Small volumes (16 slices of 20x24) keep the file fast; every test reads files from disk and
checks voxels, geometry or messages.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import ImplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless, RLELossless

from napari_mrisynth.cli import main
from napari_mrisynth.errors import GeometryError, SeriesError
from napari_mrisynth.io.dicom import load_dicom, load_series, scan_folder
from napari_mrisynth.io.dicom._walker import NotDicom, WalkerUnsupported, read_header
from napari_mrisynth.io.dicom_write import write_dicom_series
from napari_mrisynth.io.files import load_volume, save_volume
from napari_mrisynth.volume import Volume, orientation_code, volume_from_nifti

SHAPE = (16, 20, 24)  # z, y, x


def _rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _volume(seed: int = 0, direction=None, spacing=(0.9, 1.1, 2.0)) -> Volume:
    rng = np.random.default_rng(seed)
    data = rng.integers(-500, 3000, size=SHAPE).astype(np.int16)
    return Volume(
        data, spacing, (-11.0, 22.5, -30.25), np.eye(3) if direction is None else direction
    )


def _numbers(text: str) -> list[float]:
    return [float(v) for v in re.findall(r"-?\d+\.\d+|-?\d+", text)]


def _mentions(text: str, value: float, tol: float = 5e-4) -> bool:
    return any(abs(v - value) <= tol for v in _numbers(text))


@pytest.fixture(scope="module")
def oblique(tmp_path_factory):
    """A double-oblique series with shuffled, extension-less names."""
    volume = _volume(1, _rotation(0.3, -0.2, 0.15))
    folder = tmp_path_factory.mktemp("oblique")
    write_dicom_series(volume, folder, file_names="shuffled", series_number=7)
    return volume, folder


# -- order, spacing, orientation, rescale --------------------------------------------------------
def test_shuffled_double_oblique_series_loads_exactly(oblique):
    volume, folder = oblique
    loaded = load_dicom(folder)
    np.testing.assert_array_equal(loaded.data, volume.data)
    assert loaded.dtype == np.int16
    np.testing.assert_allclose(loaded.spacing, volume.spacing, atol=1e-5)
    np.testing.assert_allclose(loaded.origin, volume.origin, atol=1e-5)
    np.testing.assert_allclose(loaded.direction, volume.direction, atol=1e-6)
    assert loaded.metadata["series_number"] == 7
    assert loaded.metadata["problems"] == []
    assert loaded.metadata["rescale"] == (1.0, 0.0)


def test_spacing_comes_from_positions_not_slice_thickness(tmp_path):
    volume = _volume(2)  # writes SliceThickness 2.0 ...
    positions = volume.origin + np.outer(np.arange(SHAPE[0]) * 2.5, [0, 0, 1])  # ... at 2.5 mm
    write_dicom_series(volume, tmp_path, positions=positions)
    assert pydicom.dcmread(next(tmp_path.iterdir())).SliceThickness == 2.0
    loaded = load_dicom(tmp_path)
    assert loaded.spacing[2] == pytest.approx(2.5)
    np.testing.assert_array_equal(loaded.data, volume.data)


@pytest.mark.parametrize(
    ("rescale", "dtype"),
    [((1.0, 0.0), np.int16), ((1.0, -1024.0), np.int32), ((0.5, 10.25), np.float32)],
)
def test_rescale_is_applied_in_the_smallest_exact_dtype(tmp_path, rescale, dtype):
    volume = _volume(3)
    slope, intercept = rescale
    values = volume.data.astype(np.float64) * slope + intercept
    write_dicom_series(volume.with_data(values), tmp_path, rescale=rescale)
    loaded = load_dicom(tmp_path)
    assert loaded.dtype == dtype
    np.testing.assert_array_equal(loaded.data, values.astype(dtype))
    assert loaded.metadata["rescale"] == rescale


# -- several stacks under one SeriesInstanceUID ---------------------------------------------------
def test_localizer_sharing_the_uid_becomes_its_own_stack(tmp_path):
    main_volume = _volume(4)
    written = write_dicom_series(main_volume, tmp_path / "main", series_number=3)
    uid = pydicom.dcmread(written[0]).SeriesInstanceUID
    # rows run posterior, columns inferior, slices to the patient's right
    sagittal = np.column_stack([(0.0, 1.0, 0.0), (0.0, 0.0, -1.0), (-1.0, 0.0, 0.0)])
    localizer = Volume(
        np.full((3, 12, 10), 7, dtype=np.int16), (2.0, 2.0, 10.0), (-20.0, -30.0, 40.0), sagittal
    )
    write_dicom_series(localizer, tmp_path / "loc", series_number=3, series_uid=uid)
    scan = scan_folder(tmp_path)
    assert [(s.key, s.stack, s.shape) for s in scan.series] == [
        (uid, 0, SHAPE),
        (f"{uid}#1", 1, (3, 12, 10)),
    ]
    np.testing.assert_array_equal(load_dicom(tmp_path, series=uid).data, main_volume.data)
    np.testing.assert_array_equal(load_dicom(tmp_path, series=3).data, main_volume.data)
    small = load_series(scan.select(f"{uid}#1"))
    np.testing.assert_allclose(small.direction, sagittal, atol=1e-6)
    assert orientation_code(small.direction) == "PIR"


def test_several_series_need_a_choice_listing_each(tmp_path):
    write_dicom_series(_volume(5), tmp_path / "a", series_number=1, description="T1")
    write_dicom_series(_volume(6), tmp_path / "b", series_number=2, description="FLAIR")
    with pytest.raises(SeriesError) as info:
        load_dicom(tmp_path)
    assert "'T1'" in str(info.value) and "'FLAIR'" in str(info.value)
    assert load_dicom(tmp_path, series=2).metadata["description"] == "FLAIR"


# -- irregular stacks --------------------------------------------------------------------------
def test_missing_slice_is_refused_naming_position_and_spacing(tmp_path):
    volume = _volume(7)  # slices at z = -30.25 + 2 k
    write_dicom_series(volume, tmp_path, slices=[k for k in range(SHAPE[0]) if k != 5])
    (series,) = scan_folder(tmp_path).series
    assert not series.regular and series.irregular == "resample"
    with pytest.raises(GeometryError) as info:
        load_dicom(tmp_path)
    message = str(info.value)
    assert "missing slice" in message
    assert _mentions(message, -30.25 + 2 * 4) and _mentions(message, -30.25 + 2 * 6)
    assert _mentions(message, 4.0) and _mentions(message, 2.0)  # the gap and the spacing


def test_resampled_gap_keeps_existing_slices_and_interpolates_the_missing_one(tmp_path):
    volume = _volume(8)
    write_dicom_series(volume, tmp_path, slices=[k for k in range(SHAPE[0]) if k != 5])
    loaded = load_dicom(tmp_path, resample=True)
    assert loaded.shape == SHAPE and loaded.dtype == np.float32
    assert loaded.same_geometry(volume)
    keep = [k for k in range(SHAPE[0]) if k != 5]
    np.testing.assert_array_equal(loaded.data[keep], volume.data[keep])
    expected = (volume.data[4].astype(np.float32) + volume.data[6]) / 2
    np.testing.assert_allclose(loaded.data[5], expected, rtol=1e-6)
    assert "missing slice" in loaded.metadata["resampled"]["reason"][0]


def test_non_uniform_spacing_is_refused_then_resampled(tmp_path):
    volume = _volume(9)
    steps = np.r_[0.0, np.full(7, 2.0), 3.0, np.full(7, 2.0)]  # one 3 mm step
    along = np.cumsum(steps)
    positions = volume.origin + np.outer(along, [0, 0, 1])
    write_dicom_series(volume, tmp_path, positions=positions)
    with pytest.raises(GeometryError) as info:
        load_dicom(tmp_path)
    message = str(info.value)
    assert "non-uniform spacing" in message
    assert _mentions(message, 3.0) and _mentions(message, 2.0)
    assert _mentions(message, volume.origin[2] + along[7])  # where the odd step starts
    loaded = load_dicom(tmp_path, resample=True)
    count = round(along[-1] / 2.0) + 1  # about the finest step, spanning first to last slice
    assert loaded.shape[0] == count
    assert loaded.spacing[2] == pytest.approx(along[-1] / (count - 1))
    ends = loaded.index_to_lps([[0, 0, 0], [0, 0, count - 1]])
    np.testing.assert_allclose(ends, positions[[0, -1]], atol=1e-6)
    np.testing.assert_array_equal(loaded.data[0], volume.data[0])
    np.testing.assert_array_equal(loaded.data[-1], volume.data[-1])


def test_gantry_tilt_is_refused_then_resampled_onto_the_orthogonal_grid(tmp_path):
    volume = _volume(10, spacing=(1.0, 1.0, 2.0))
    # each slice one row (1 mm along +y) further than the last: a 26.57 degree tilt
    positions = volume.origin + np.outer(np.arange(SHAPE[0]), [0.0, 1.0, 2.0])
    write_dicom_series(volume, tmp_path, positions=positions)
    with pytest.raises(GeometryError) as info:
        load_dicom(tmp_path)
    message = str(info.value)
    assert "sheared" in message and "tilt" in message
    assert _mentions(message, 26.57, tol=0.01)  # the tilt angle
    assert _mentions(message, 15.0)  # how far the last slice lies off the normal
    assert _mentions(message, 2.0)  # spacing along the normal
    loaded = load_dicom(tmp_path, resample=True)
    assert loaded.shape == SHAPE
    np.testing.assert_allclose(loaded.direction, np.eye(3), atol=1e-9)
    np.testing.assert_allclose(loaded.origin, volume.origin)
    for k in (0, 3, 9):  # slice k moved k rows down: on the first slice's grid it sits at row + k
        np.testing.assert_array_equal(loaded.data[k, k:], volume.data[k, : SHAPE[1] - k])
    assert "shear" in loaded.metadata["resampled"]["interpolation"]


def test_positions_rounded_to_two_decimals_are_still_regular(tmp_path):
    """Scanner rounding scatters positions by up to 0.005 mm: no tilt, no uneven spacing."""
    volume = _volume(18, _rotation(0.2, 0.1, 0.0), spacing=(0.5, 0.5, 1.0))
    positions = np.round(volume.index_to_lps(np.c_[np.zeros((16, 2)), np.arange(16)]), 2)
    write_dicom_series(volume, tmp_path, positions=positions)
    (series,) = scan_folder(tmp_path).series
    assert series.regular and series.problems == []
    np.testing.assert_array_equal(load_series(series).data, volume.data)


def test_two_images_at_one_position_are_refused_even_with_resample(tmp_path):
    volume = _volume(11)
    positions = volume.origin + np.outer(np.arange(SHAPE[0]) * 2.0, [0, 0, 1])
    positions[6] = positions[5]
    write_dicom_series(volume, tmp_path, positions=positions)
    for resample in (False, True):
        with pytest.raises(GeometryError) as info:
            load_dicom(tmp_path, resample=resample)
        assert "duplicate positions" in str(info.value)
        assert _mentions(str(info.value), volume.origin[2] + 10.0)


# -- lazy, compressed, enhanced multi-frame -------------------------------------------------------
def test_lazy_load_has_one_chunk_per_slice_and_equals_eager(oblique):
    volume, folder = oblique
    lazy = load_dicom(folder, lazy=True)
    assert lazy.is_lazy and lazy.data.chunks[0] == (1,) * SHAPE[0]
    np.testing.assert_array_equal(np.asarray(lazy.data[3]), volume.data[3])
    np.testing.assert_array_equal(lazy.compute().data, load_dicom(folder).data)
    assert lazy.same_geometry(volume)


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless])
def test_compressed_series_equal_uncompressed(tmp_path, syntax):
    rng = np.random.default_rng(12)
    data = rng.integers(-500, 3000, size=(4, 40, 48)).astype(np.int16)  # J2K needs >= 32 px
    volume = Volume(data, (0.5, 0.5, 3.0), (1.0, 2.0, 3.0))
    write_dicom_series(volume, tmp_path, transfer_syntax=syntax)
    loaded = load_dicom(tmp_path)
    assert loaded.dtype == np.int16
    np.testing.assert_array_equal(loaded.data, volume.data)
    assert loaded.same_geometry(volume)


def test_enhanced_mr_without_per_frame_positions_says_what_it_assumed():
    path = Path(get_testdata_file("emri_small.dcm"))
    (series,) = scan_folder(path).series
    assert series.shape == (10, 64, 64) and series.files == [path]
    assert any("no per-frame positions" in p for p in series.problems)
    loaded = load_series(series)
    expected = pydicom.dcmread(path).pixel_array
    np.testing.assert_array_equal(loaded.data, expected)
    assert loaded.spacing[2] == pytest.approx(1.2)  # SpacingBetweenSlices


def test_enhanced_ct_frames_follow_their_per_frame_positions():
    path = Path(get_testdata_file("eCT_Supplemental.dcm"))
    ds = pydicom.dcmread(path)
    frames = ds.PerFrameFunctionalGroupsSequence
    z = [float(f.PlanePositionSequence[0].ImagePositionPatient[2]) for f in frames]
    loaded = load_dicom(path)
    # rows run to patient right, columns posterior: the normal points inferior
    order = np.argsort(z)[::-1]
    shared = ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence[0]
    expected = ds.pixel_array.astype(np.int64) + int(float(shared.RescaleIntercept))
    np.testing.assert_array_equal(loaded.data, expected[order])
    assert loaded.dtype == np.int32  # uint16 + (-1024) does not fit 16 bits
    assert loaded.origin[2] == pytest.approx(max(z))
    assert loaded.spacing[2] == pytest.approx(abs(z[1] - z[0]))


def test_bad_and_non_image_files_are_skipped_with_reasons(oblique, tmp_path):
    volume, folder = oblique
    shutil.copytree(folder, tmp_path / "series")
    shutil.copy(get_testdata_file("test-SR.dcm"), tmp_path / "report.dcm")
    (tmp_path / "notes.txt").write_text("not an image\n" * 30)
    (tmp_path / "empty").write_bytes(b"")
    scan = scan_folder(tmp_path)
    reasons = {s.path.name: s.reason for s in scan.skipped}
    assert reasons == {
        "report.dcm": "not an image: Comprehensive SR",
        "notes.txt": "not a DICOM file (no 'DICM' marker)",
        "empty": "empty file (0 bytes)",
    }
    np.testing.assert_array_equal(load_series(scan.select()).data, volume.data)


# -- the header walker against pydicom ----------------------------------------------------------
def _pydicom_files() -> list[str]:
    roots = [
        os.path.join(os.path.dirname(pydicom.__file__), "data", "test_files"),
        os.path.dirname(get_testdata_file("emri_small.dcm")),
    ]
    found = {
        os.path.realpath(p)
        for root in roots
        for p in glob.glob(os.path.join(root, "**", "*"), recursive=True)
        if os.path.isfile(p) and not p.endswith((".py", ".pyc", ".json", ".txt", ".gz", ".bz2"))
    }
    return sorted(found)


def _reference(ds, keyword):
    """pydicom's value as the walker reports it: stripped text, tuples of numbers."""
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    if keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        return tuple(float(v) for v in value)
    if keyword in ("WindowCenter", "WindowWidth"):
        values = value if isinstance(value, pydicom.multival.MultiValue) else [value]
        return tuple(float(v) for v in values)
    if keyword == "ImageType":
        return tuple(str(v).strip() for v in value)
    if keyword in ("RescaleSlope", "RescaleIntercept", "SliceThickness"):
        return float(value)
    if keyword in ("SeriesNumber", "InstanceNumber", "NumberOfFrames"):
        return int(value)
    return value if isinstance(value, int) else str(value).strip()


WALKED = {
    "transfer_syntax": None,
    "sop_instance": "SOPInstanceUID",
    "modality": "Modality",
    "description": "SeriesDescription",
    "image_type": "ImageType",
    "series_uid": "SeriesInstanceUID",
    "series_number": "SeriesNumber",
    "instance_number": "InstanceNumber",
    "ipp": "ImagePositionPatient",
    "iop": "ImageOrientationPatient",
    "pixel_spacing": "PixelSpacing",
    "rows": "Rows",
    "columns": "Columns",
    "bits_allocated": "BitsAllocated",
    "bits_stored": "BitsStored",
    "pixel_representation": "PixelRepresentation",
    "photometric": "PhotometricInterpretation",
    "window_center": "WindowCenter",
    "window_width": "WindowWidth",
    "slope": "RescaleSlope",
    "intercept": "RescaleIntercept",
    "slice_thickness": "SliceThickness",
}


def _walker_matches_pydicom(path) -> bool:
    """Compare every walked attribute and the pixel bytes; False when the walker declines."""
    try:
        header = read_header(path)
    except (NotDicom, WalkerUnsupported, EOFError):  # EOFError: rtplan_truncated.dcm
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path)
    if not len(ds):
        return False  # pydicom read nothing (a deliberately broken file): nothing to compare
    for attribute, keyword in WALKED.items():
        ours = getattr(header, attribute)
        if keyword is None:
            expected = str(ds.file_meta.TransferSyntaxUID)
        else:
            expected = _reference(ds, keyword)
        if expected is None:
            assert ours in (None, "", (), 0), (path, attribute, ours)
        elif isinstance(expected, tuple) and expected and isinstance(expected[0], float):
            np.testing.assert_allclose(ours, expected, err_msg=f"{path} {attribute}")
        else:
            assert ours == expected, (path, attribute, ours, expected)
    assert header.frames == int(ds.get("NumberOfFrames") or 1), path
    assert header.has_pixels == ("PixelData" in ds), path
    if header.has_pixels and not header.encapsulated:
        with open(path, "rb") as f:
            f.seek(header.pixel_offset)
            assert f.read(header.pixel_length) == ds.PixelData, path
    return True


def test_walker_equals_pydicom_on_every_pydicom_test_file():
    files = _pydicom_files()
    compared = [path for path in files if _walker_matches_pydicom(path)]
    assert len(files) > 200 and len(compared) > 180, (len(files), len(compared))


def test_walker_reads_implicit_vr_with_a_header_beyond_the_first_read(oblique, tmp_path):
    _, folder = oblique
    ds = pydicom.dcmread(next(folder.iterdir()))
    block = ds.private_block(0x0081, "MRISYNTH BIG", create=True)
    block.add_new(0x10, "OB", bytes(40_000))  # pushes the pixel data past 16 KB
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    path = tmp_path / "implicit.dcm"
    ds.save_as(path, implicit_vr=True, little_endian=True, enforce_file_format=True)
    assert _walker_matches_pydicom(path)
    assert read_header(path).pixel_offset > 40_000
    np.testing.assert_array_equal(load_dicom(path).data[0], ds.pixel_array)


# -- load_volume / save_volume and the command line -----------------------------------------------
@pytest.mark.parametrize("suffix", [".nii.gz", ".mha", ".nrrd"])
def test_save_and_load_volume_round_trip(oblique, tmp_path, suffix):
    volume, _ = oblique
    path = save_volume(volume, tmp_path / f"out{suffix}")
    loaded = load_volume(path)
    np.testing.assert_array_equal(loaded.data, volume.data)
    assert loaded.same_geometry(volume, atol=1e-5)


def test_series_command_lists_series_problems_and_skipped_files(tmp_path, capsys):
    write_dicom_series(_volume(13), tmp_path / "t1", series_number=4, description="T1 SAG")
    write_dicom_series(
        _volume(14), tmp_path / "gap", series_number=5, description="GAPPY", slices=range(8)
    )
    write_dicom_series(
        _volume(14), tmp_path / "gap", series_number=5, description="GAPPY", slices=range(9, 16)
    )
    (tmp_path / "readme.txt").write_text("hello")
    assert main(["series", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "2 series" in out
    assert re.search(r"\b4\s+T1 SAG\s+MR\s+20x24x16\s+1\.1x0\.9x2\s+LPS", out), out
    assert "problem: missing slice" in out
    assert "readme.txt: not a DICOM file" in out


def test_convert_one_series_adds_nii_gz_and_matches_the_volume(oblique, tmp_path, capsys):
    volume, folder = oblique
    assert main(["convert", str(folder), str(tmp_path / "t1")]) == 0
    written = tmp_path / "t1.nii.gz"
    assert str(written) in capsys.readouterr().out
    loaded = volume_from_nifti(nib.load(written))
    np.testing.assert_array_equal(loaded.data, volume.data)
    assert loaded.same_geometry(volume, atol=1e-4)


def test_convert_several_series_needs_a_choice_or_a_folder(tmp_path, capsys):
    source = tmp_path / "dicom"
    write_dicom_series(_volume(15), source / "a", series_number=2, description="T1 MPRAGE")
    write_dicom_series(_volume(16), source / "b", series_number=3, description="FLAIR/ax")
    assert main(["convert", str(source), str(tmp_path / "one.nii")]) == 1
    err = capsys.readouterr().err
    assert "2 series" in err and "'T1 MPRAGE'" in err and "'FLAIR/ax'" in err
    assert main(["convert", str(source), str(tmp_path / "one.nii"), "--series", "3"]) == 0
    assert nib.load(tmp_path / "one.nii").shape == (24, 20, 16)
    assert main(["convert", str(source), f"{tmp_path / 'all'}/", "--no-gzip"]) == 0
    assert sorted(p.name for p in (tmp_path / "all").iterdir()) == [
        "2_T1_MPRAGE.nii",
        "3_FLAIR_ax.nii",
    ]


def test_convert_refuses_an_irregular_series_unless_resampled(tmp_path, capsys):
    volume = _volume(17)
    write_dicom_series(volume, tmp_path / "gap", slices=[k for k in range(SHAPE[0]) if k != 9])
    assert main(["convert", str(tmp_path / "gap"), str(tmp_path / "out")]) == 1
    assert "missing slice" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "gap"), str(tmp_path / "out"), "--resample"]) == 0
    assert "(resampled)" in capsys.readouterr().out
    assert nib.load(tmp_path / "out.nii.gz").shape == (24, 20, 16)


def test_convert_reads_nifti_and_writes_mha(oblique, tmp_path):
    volume, _ = oblique
    source = save_volume(volume, tmp_path / "in.nii.gz")
    assert main(["convert", str(source), str(tmp_path / "out.mha")]) == 0
    loaded = load_volume(tmp_path / "out.mha")
    np.testing.assert_array_equal(loaded.data, volume.data)
    assert loaded.same_geometry(volume, atol=1e-5)
