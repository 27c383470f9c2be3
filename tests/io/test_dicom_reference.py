"""The DICOM reader against independent references: the ground truth written, dcm2niix,
SimpleITK (where it is right) and pydicom's own decoding of real test files.

Written against docs/api-contract.md by someone who did not write the reader.
"""

from __future__ import annotations

import re
import shutil

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from napari_mrisynth.cli import main
from napari_mrisynth.errors import GeometryError, SeriesError
from napari_mrisynth.io.dicom import load_dicom, load_series, scan_folder
from tests.support.dicom_corpus import (
    IRREGULAR,
    REGULAR,
    SPACING,
    assert_same_image,
    canonical,
    header_geometry,
    pydicom_file,
    pydicom_reference,
    sitk_read_series,
    volume_to_nib,
)

NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def numbers_in(text: str) -> list[float]:
    return [float(m) for m in NUMBER.findall(text)]


def mentions_number(text: str, value: float, tol: float = 0.051) -> bool:
    return any(abs(v - value) <= tol for v in numbers_in(text))


def convert(args: list, capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(["convert", *[str(a) for a in args]])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


# -- the references agree with the ground truth (so they can judge the reader) --------------
@pytest.mark.parametrize("name", REGULAR)
def test_reference_dcm2niix_reproduces_ground_truth(corpus, dcm2niix_of, name):
    series = corpus[name]
    (nifti,) = dcm2niix_of(name, series.folder)
    assert_same_image(nifti, series.volume, atol=series.atol, what=f"dcm2niix {name}")


#: SimpleITK's series reader is for single-frame files.
SITK_SERIES = tuple(n for n in REGULAR if n != "enhanced")


@pytest.mark.parametrize("name", SITK_SERIES)
def test_reference_simpleitk_reproduces_ground_truth(corpus, name):
    series = corpus[name]
    image = sitk_read_series(series.folder)
    assert_same_image(image, series.volume, atol=series.atol, what=f"SimpleITK {name}")


# -- our reader on every regular series --------------------------------------------------------
@pytest.mark.parametrize("name", REGULAR)
def test_load_dicom_equals_ground_truth_dcm2niix_and_simpleitk(corpus, dcm2niix_of, name):
    series = corpus[name]
    volume = load_dicom(series.folder)
    tol = series.atol
    assert_same_image(volume, series.volume, atol=tol, what=f"{name} vs ground truth")
    (nifti,) = dcm2niix_of(name, series.folder)
    assert_same_image(volume, nifti, atol=tol, what=f"{name} vs dcm2niix")
    if name in SITK_SERIES:
        image = sitk_read_series(series.folder)
        assert_same_image(volume, image, atol=tol, what=f"{name} vs SimpleITK")
    # Geometry in the contract's convention: x along the row cosine, y along the column
    # cosine (no reorientation by the reader), spacing (x, y, z) with z from positions.
    truth = series.volume
    np.testing.assert_allclose(volume.spacing, SPACING, atol=1e-4)
    np.testing.assert_allclose(volume.direction[:, :2], truth.direction[:, :2], atol=1e-5)
    normal = np.cross(truth.direction[:, 0], truth.direction[:, 1])
    assert abs(abs(volume.direction[:, 2] @ normal) - 1) < 1e-6
    assert volume.metadata["series_uid"] == series.uid
    assert volume.metadata["series_number"] == series.number
    assert volume.metadata["modality"] == "MR"
    assert volume.metadata["description"] == series.description
    if series.volume.dtype == np.int16 and series.rescale == (1.0, 0.0) and name != "enhanced":
        header = pydicom.dcmread(series.files[0], stop_before_pixels=True)
        window = (float(header.WindowCenter), float(header.WindowWidth))
        assert tuple(volume.metadata["window"]) == pytest.approx(window)


@pytest.mark.parametrize(
    ("name", "dtype"),
    [
        ("axial", np.int16),
        ("oblique", np.int16),
        ("shuffled", np.int16),
        ("implicit", np.int16),
        ("uint8", np.uint8),
        ("bits12", np.uint16),
    ],
)
def test_integer_series_keep_their_integer_type(corpus, name, dtype):
    """Slope 1 / intercept 0 must not turn int16 into float64 (10x the memory)."""
    volume = load_dicom(corpus[name].folder)
    assert volume.dtype == dtype


def test_unsigned_series_above_32767_stay_uint16(corpus):
    volume = load_dicom(corpus["uint16"].folder)
    assert volume.dtype == np.uint16
    assert int(np.asarray(volume.data).max()) > 32767


@pytest.mark.parametrize("name", ["oblique", "sagittal", "coronal"])
def test_voxels_sit_where_simpleitk_puts_them(corpus, name):
    """Physical points: every sampled voxel of ours maps, through SimpleITK's own
    TransformPhysicalPointToContinuousIndex, onto an integer index holding the same value."""
    volume = load_dicom(corpus[name].folder)
    image = sitk_read_series(corpus[name].folder)
    theirs = sitk.GetArrayViewFromImage(image)
    data = np.asarray(volume.data)
    rng = np.random.default_rng(0)
    nz, ny, nx = volume.shape
    samples = zip(
        rng.integers(0, nx, 200), rng.integers(0, ny, 200), rng.integers(0, nz, 200), strict=True
    )
    for i, j, k in samples:
        point = volume.index_to_lps([i, j, k])
        index = np.array(image.TransformPhysicalPointToContinuousIndex(point.tolist()))
        nearest = np.rint(index).astype(int)
        np.testing.assert_allclose(index, nearest, atol=1e-4)
        assert data[k, j, i] == theirs[nearest[2], nearest[1], nearest[0]]


def test_rescale_is_applied_and_recorded(corpus):
    series = corpus["rescaled"]
    volume = load_dicom(series.folder)
    stored = pydicom.dcmread(series.files[3]).pixel_array
    assert stored.max() > 2 * 100, "the corpus stores 2 * (value + 100)"
    assert_same_image(volume, series.volume, what="rescaled")
    assert tuple(volume.metadata["rescale"]) == (0.5, -100.0)


def test_32_bit_values_survive_an_intercept_exactly(corpus, tmp_path):
    """int32 pixels up to 1e8 with RescaleIntercept -1024: float32 (24-bit mantissa) would
    change them by up to 4; the result must be exact (float64 or a wide integer)."""
    folder = tmp_path / "s32"
    shutil.copytree(corpus["axial"].folder, folder)
    truth = corpus["axial"].volume.data.astype(np.int64) * 100001 + 7
    for k, path in enumerate(sorted(folder.iterdir())):
        ds = pydicom.dcmread(path)
        ds.BitsAllocated = ds.BitsStored = 32
        ds.HighBit = 31
        ds.PixelRepresentation = 1
        for tag in ("SmallestImagePixelValue", "LargestImagePixelValue"):
            ds.pop(tag, None)
        ds.PixelData = truth[k].astype("<i4").tobytes()
        ds["PixelData"].VR = "OW"
        ds.RescaleIntercept = "-1024"
        ds.save_as(path, enforce_file_format=True)
    data = np.asarray(load_dicom(folder).data)
    np.testing.assert_array_equal(data.astype(np.float64), (truth - 1024).astype(np.float64))


def test_compressed_series_equal_uncompressed(corpus):
    reference = load_dicom(corpus["axial"].folder)
    for name in ("rle", "jpegls", "j2k"):
        syntax = pydicom.dcmread(corpus[name].files[0], stop_before_pixels=True)
        assert syntax.file_meta.TransferSyntaxUID.is_compressed
        volume = load_dicom(corpus[name].folder)
        assert_same_image(volume, reference, atol=1e-9, what=name)


def test_lazy_load_reads_nothing_until_computed_and_matches(corpus, tmp_path):
    series = corpus["oblique"]
    lazy = load_dicom(series.folder, lazy=True)
    assert lazy.is_lazy
    assert lazy.shape == series.volume.shape
    assert_same_image(lazy.compute(), series.volume, what="lazy oblique")
    # Pixels are read at compute time: overwrite the first slice's pixel bytes (the last
    # element of the file) after the lazy load and the computed volume shows zeros there.
    folder = tmp_path / "axial"
    shutil.copytree(corpus["axial"].folder, folder)
    lazy = load_dicom(folder, lazy=True)
    first = folder / corpus["axial"].files[0].name
    raw = first.read_bytes()
    plane = lazy.shape[1] * lazy.shape[2] * 2
    first.write_bytes(raw[:-plane] + bytes(plane))
    data = np.asarray(lazy.compute().data)
    assert not data[0].any() and data[1:].any()


@pytest.mark.parametrize("name", REGULAR)
def test_lazy_equals_eager(corpus, name):
    eager = load_dicom(corpus[name].folder)
    lazy = load_dicom(corpus[name].folder, lazy=True)
    assert lazy.is_lazy and lazy.dtype == eager.dtype
    np.testing.assert_array_equal(np.asarray(lazy.compute().data), np.asarray(eager.data))
    np.testing.assert_allclose(lazy.affine, eager.affine, atol=1e-12)


def test_progress_is_reported_to_the_end(corpus):
    scanned, loaded = [], []
    scan = scan_folder(corpus["axial"].folder, progress=lambda d, t: scanned.append((d, t)))
    load_series(scan.series[0], progress=lambda d, t: loaded.append((d, t)))
    n = len(corpus["axial"].files)
    assert scanned and scanned[-1] == (n, n)
    assert loaded and loaded[-1] == (n, n)
    assert all(a[0] <= b[0] for a, b in zip(loaded, loaded[1:], strict=False))


@pytest.mark.parametrize("name", REGULAR)
def test_scan_folder_describes_each_series(corpus, name):
    series = corpus[name]
    scan = scan_folder(series.folder)
    assert scan.skipped == []
    (found,) = scan.series
    assert found.uid == series.uid
    assert found.key == series.uid
    assert found.stack == 0
    assert found.number == series.number
    assert found.regular and found.problems == []
    assert found.shape == series.volume.shape
    assert sorted(found.files) == sorted(series.files)
    if name == "enhanced":  # one multi-frame file: its first frame is the last slice
        ends = series.volume.index_to_lps([[0, 0, 0], [0, 0, series.volume.shape[0] - 1]])
        assert min(np.linalg.norm(found.origin - e) for e in ends) < 1e-4
        np.testing.assert_allclose(found.spacing, SPACING, atol=1e-4)
        return
    # files sorted along the slice normal, positions equally spaced by the z spacing
    positions = np.array(
        [header_geometry(pydicom.dcmread(f, stop_before_pixels=True))[0] for f in found.files]
    )
    steps = np.diff(positions @ found.direction[:, 2])
    np.testing.assert_allclose(steps, found.spacing[2], atol=1e-4)
    np.testing.assert_allclose(positions[0], found.origin, atol=1e-4)
    assert series.uid in found.describe() or series.description in found.describe()


@pytest.mark.parametrize("name", ["axial", "oblique", "coronal", "rescaled"])
def test_convert_command_matches_dcm2niix(corpus, dcm2niix_of, tmp_path, capsys, name):
    series = corpus[name]
    out = tmp_path / f"{name}.nii.gz"
    rc, _, err = convert([series.folder, out], capsys)
    assert rc == 0, err
    (reference,) = dcm2niix_of(name, series.folder)
    assert_same_image(out, reference, what=f"convert {name} vs dcm2niix")
    assert_same_image(out, series.volume, what=f"convert {name} vs ground truth")
    image = nib.load(out)
    assert image.header.get_sform(coded=True)[1] > 0  # a real scanner/aligned sform


@pytest.mark.parametrize("name", ["sagittal", "oblique"])
def test_converted_nifti_is_read_right_by_other_readers(corpus, tmp_path, capsys, name):
    """The file `convert` writes: qform and sform agree, and SimpleITK's NIfTI reader
    (which may prefer either) places every voxel where the DICOM said."""
    series = corpus[name]
    out = tmp_path / f"{name}.nii.gz"
    rc, _, err = convert([series.folder, out], capsys)
    assert rc == 0, err
    image = nib.load(out)
    assert int(image.header["qform_code"]) > 0 and int(image.header["sform_code"]) > 0
    np.testing.assert_allclose(image.get_qform(), image.get_sform(), atol=1e-4)
    assert_same_image(sitk.ReadImage(str(out)), series.volume, what=f"SimpleITK reads {name}")


# -- irregular series: SimpleITK is silently wrong, we refuse and say where --------------------
def _sorted_positions(series):
    return series.positions[np.argsort(series.positions @ np.array([0, 0, 1.0]))]


def test_reference_simpleitk_is_wrong_on_a_missing_slice(corpus):
    series = corpus["gap"]
    image = sitk_read_series(series.folder)
    # SimpleITK reports the mean spacing over the gap (28 mm / 6 = 4.67 mm) ...
    extent = series.positions[-1, 2] - series.positions[0, 2]
    assert image.GetSpacing()[2] == pytest.approx(extent / (len(series.files) - 1))
    assert extent / (len(series.files) - 1) > series.notes["nominal_spacing"] + 0.5
    # ... so its slices sit up to 1.6 mm away from where the files say they are.
    positions = _sorted_positions(series)
    claimed = np.array(
        [image.TransformIndexToPhysicalPoint((0, 0, k)) for k in range(len(positions))]
    )
    assert np.max(np.abs(claimed - positions)) > 1.5


def test_load_dicom_refuses_a_missing_slice_naming_position_and_spacing(corpus):
    series = corpus["gap"]
    with pytest.raises(GeometryError) as info:
        load_dicom(series.folder)
    message = str(info.value)
    assert mentions_number(message, series.notes["gap_spacing"]), message  # 8 mm found
    missing = series.notes["missing_position"][2]  # axial: z is the position on the normal
    step = series.notes["nominal_spacing"]
    assert any(mentions_number(message, z) for z in (missing - step, missing + step, missing)), (
        message
    )


def test_scan_reports_the_gap_as_a_problem(corpus):
    series = corpus["gap"]
    (found,) = scan_folder(series.folder).series
    assert not found.regular
    assert found.problems
    assert any(mentions_number(p, series.notes["gap_spacing"]) for p in found.problems)
    with pytest.raises(GeometryError):
        load_series(found)


def test_resampled_gap_series_keeps_the_slices_that_exist(corpus):
    series = corpus["gap"]
    volume = load_dicom(series.folder, resample=True)
    truth = corpus["axial"].volume  # the gap series is the axial one without slice 5
    np.testing.assert_allclose(volume.spacing, SPACING, atol=1e-4)
    assert volume.shape == truth.shape
    assert volume.metadata.get("problems")
    t_data, t_aff = canonical(truth)
    v_data, v_aff = canonical(volume)
    np.testing.assert_allclose(v_aff, t_aff, atol=1e-4)
    kept = [k for k in range(truth.shape[0]) if k != series.notes["missing_index"]]
    # z is the last canonical axis for an axial series
    np.testing.assert_allclose(v_data[:, :, kept], t_data[:, :, kept], atol=1e-3)
    k = series.notes["missing_index"]
    lo = np.minimum(t_data[:, :, k - 1], t_data[:, :, k + 1]) - 1e-3
    hi = np.maximum(t_data[:, :, k - 1], t_data[:, :, k + 1]) + 1e-3
    assert np.all((v_data[:, :, k] >= lo) & (v_data[:, :, k] <= hi))


def _linear_resample_reference(series, out):
    """What linear resampling of the written stack must give at ``out``'s voxels: for each
    output slice, the two source slices either side along the normal, each sampled
    bilinearly at the in-plane point (so sheared slices are followed), weighted by
    distance. Returns (expected, valid) over ``out``'s array; valid marks voxels whose
    samples lie inside both source slices."""
    from scipy import ndimage

    truth = corpus_truth_of(series)
    row, col, normal = truth.direction[:, 0], truth.direction[:, 1], truth.direction[:, 2]
    dx, dy = truth.spacing[0], truth.spacing[1]
    order = np.argsort(series.positions @ normal)
    positions = series.positions[order]
    slices = np.asarray(truth.data, dtype=np.float64)[series.notes["indices"]][order]
    along = positions @ normal
    nz, ny, nx = out.shape
    jj, ii = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    expected = np.zeros(out.shape)
    valid = np.zeros(out.shape, dtype=bool)
    for m in range(nz):
        points = out.index_to_lps(np.stack([ii, jj, np.full_like(ii, m)], -1).reshape(-1, 3))
        t = float(points[0] @ normal)
        k = int(np.clip(np.searchsorted(along, t, side="right") - 1, 0, len(along) - 2))
        w = (t - along[k]) / (along[k + 1] - along[k])
        if w < -1e-6 or w > 1 + 1e-6:
            continue
        value = np.zeros(len(points))
        inside = np.ones(len(points), dtype=bool)
        for kk, weight in ((k, 1 - w), (k + 1, w)):
            ci = (points - positions[kk]) @ row / dx
            cj = (points - positions[kk]) @ col / dy
            inside &= (ci >= 0) & (ci <= nx - 1) & (cj >= 0) & (cj <= ny - 1)
            value += weight * ndimage.map_coordinates(slices[kk], [cj, ci], order=1, mode="nearest")
        expected[m] = value.reshape(ny, nx)
        valid[m] = inside.reshape(ny, nx)
    return expected, valid


def corpus_truth_of(series):
    return series.notes["source"]


@pytest.mark.parametrize("name", IRREGULAR)
def test_resample_equals_an_independent_linear_resampling(corpus, name):
    series = corpus[name]
    volume = load_dicom(series.folder, resample=True)
    assert volume.metadata.get("resampled")
    np.testing.assert_allclose(volume.direction.T @ volume.direction, np.eye(3), atol=1e-9)
    # the new grid spans the whole written stack along the normal: no acquired slice is
    # dropped (dcm2niix's equidistant output does the same, see the test below)
    normal = volume.direction[:, 2]
    along = np.sort(series.positions @ normal)
    ends = volume.index_to_lps([[0, 0, 0], [0, 0, volume.shape[0] - 1]]) @ normal
    np.testing.assert_allclose(np.sort(ends), [along[0], along[-1]], atol=1e-3)
    expected, valid = _linear_resample_reference(series, volume)
    assert valid.mean() > 0.5
    data = np.asarray(volume.data, dtype=np.float64)
    np.testing.assert_allclose(data[valid], expected[valid], atol=1e-2)


@pytest.mark.parametrize("name", ["gap", "nonuniform"])
def test_resample_matches_dcm2niix_equidistant_output(corpus, dcm2niix_of, name):
    """dcm2niix writes an extra ``_Eq_`` file interpolated onto equidistant slices over the
    whole stack; ours must sample the same grid. dcm2niix keeps int16, so its values are
    rounded: within 0.5."""
    series = corpus[name]
    (equidistant,) = [p for p in dcm2niix_of(name, series.folder) if "_Eq_" in p.name]
    ours, ours_affine = canonical(load_dicom(series.folder, resample=True))
    theirs, theirs_affine = canonical(equidistant)
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours_affine, theirs_affine, atol=1e-3)
    np.testing.assert_allclose(ours, theirs, atol=0.5 + 1e-3)


def test_load_dicom_refuses_non_uniform_spacing_naming_both_spacings(corpus):
    series = corpus["nonuniform"]
    image = sitk_read_series(series.folder)
    extent = series.positions[-1, 2] - series.positions[0, 2]
    mean = extent / (len(series.files) - 1)
    assert image.GetSpacing()[2] == pytest.approx(mean)  # SimpleITK: the mean, again
    with pytest.raises(GeometryError) as info:
        load_dicom(series.folder)
    message = str(info.value)
    assert mentions_number(message, 4.0) and mentions_number(message, 5.0), message


def test_load_dicom_refuses_gantry_tilt(corpus):
    series = corpus["tilt"]
    image = sitk_read_series(series.folder)
    # SimpleITK builds an orthogonal grid: its last slice misses the last file's IPP.
    last = image.TransformIndexToPhysicalPoint((0, 0, len(series.files) - 1))
    assert np.linalg.norm(np.array(last) - series.positions[-1]) > 1.0
    with pytest.raises(GeometryError) as info:
        load_dicom(series.folder)
    message = str(info.value).lower()
    assert "shear" in message or "tilt" in message, message
    (found,) = scan_folder(series.folder).series
    assert not found.regular


@pytest.mark.parametrize("name", IRREGULAR)
def test_convert_command_refuses_irregular_series(corpus, tmp_path, capsys, name):
    out = tmp_path / f"{name}.nii.gz"
    rc, _, err = convert([corpus[name].folder, out], capsys)
    assert rc == 1
    assert not out.exists()
    assert err.strip(), "the refusal must say why"


# -- real files from pydicom and pydicom-data ----------------------------------------------------
MR_SMALL_VARIANTS = [
    "MR_small.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_expb.dcm",
    "MR_small_implicit.dcm",
    "MR_small_padded.dcm",
]


def _assert_single_file_geometry(volume, ds):
    ipp, row, col = header_geometry(ds)
    dy, dx = (float(v) for v in ds.PixelSpacing)
    np.testing.assert_allclose(volume.origin, ipp, atol=1e-4)
    np.testing.assert_allclose(volume.direction[:, 0], row, atol=1e-6)
    np.testing.assert_allclose(volume.direction[:, 1], col, atol=1e-6)
    np.testing.assert_allclose(abs(volume.direction[:, 2] @ np.cross(row, col)), 1, atol=1e-6)
    np.testing.assert_allclose(volume.spacing[:2], [dx, dy], atol=1e-6)


@pytest.mark.parametrize("name", MR_SMALL_VARIANTS)
def test_mr_small_variants_equal_pydicom(name):
    path = pydicom_file(name)
    expected, ds = pydicom_reference(path)
    volume = load_dicom(path)
    assert volume.shape == expected.shape == (1, 64, 64)
    np.testing.assert_array_equal(np.asarray(volume.data, dtype=np.float64), expected)
    _assert_single_file_geometry(volume, ds)


def test_mr_small_variants_are_identical():
    reference = np.asarray(load_dicom(pydicom_file("MR_small.dcm")).data)
    for name in MR_SMALL_VARIANTS[1:]:
        np.testing.assert_array_equal(np.asarray(load_dicom(pydicom_file(name)).data), reference)


@pytest.mark.parametrize(
    ("name", "rescale"),
    [("CT_small.dcm", (1.0, -1024.0)), ("693_UNCR.dcm", (1.0, -1024.0)), ("MR2_UNCR.dcm", None)],
)
def test_real_single_files_rescale_and_geometry(name, rescale):
    path = pydicom_file(name)
    expected, ds = pydicom_reference(path)
    volume = load_dicom(path)
    np.testing.assert_allclose(np.asarray(volume.data, dtype=np.float64), expected, rtol=1e-6)
    if rescale is not None:
        assert tuple(volume.metadata["rescale"]) == rescale
        assert np.asarray(volume.data).min() < 0  # HU below zero survive
    _assert_single_file_geometry(volume, ds)


@pytest.mark.parametrize(
    ("compressed", "uncompressed"),
    [("693_J2KR.dcm", "693_UNCR.dcm"), ("MR2_J2KR.dcm", "MR2_UNCR.dcm")],
)
def test_real_lossless_j2k_equals_uncompressed(compressed, uncompressed):
    a = load_dicom(pydicom_file(compressed))
    b = load_dicom(pydicom_file(uncompressed))
    np.testing.assert_array_equal(np.asarray(a.data), np.asarray(b.data))
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-9)


@pytest.mark.parametrize("name", ["MR_small.dcm", "CT_small.dcm", "MR2_UNCR.dcm"])
def test_real_single_files_match_dcm2niix(name, tmp_path):
    from tests.support.dicom_corpus import dcm2niix

    source = tmp_path / "src"
    source.mkdir()
    shutil.copy(pydicom_file(name), source / name)
    (nifti,) = dcm2niix(source, tmp_path / "out", "x")
    volume = load_dicom(source / name)
    ours = nib.as_closest_canonical(volume_to_nib(volume))
    theirs = nib.as_closest_canonical(nib.load(nifti))
    if len(theirs.shape) == 4:
        theirs = theirs.slicer[..., 0]
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(
        np.asarray(ours.dataobj, dtype=np.float64),
        np.asarray(theirs.dataobj, dtype=np.float64),
        rtol=1e-5,
        atol=1e-3,  # dcm2niix stores the slope as float32
    )
    # In-plane columns and the origin agree; the one-slice axis only in direction (its
    # length is a convention: dcm2niix uses SliceThickness).
    flat = [a for a in range(3) if ours.shape[a] == 1]
    for a in range(3):
        if a in flat:
            u, v = ours.affine[:3, a], theirs.affine[:3, a]
            np.testing.assert_allclose(u / np.linalg.norm(u), v / np.linalg.norm(v), atol=1e-5)
        else:
            np.testing.assert_allclose(ours.affine[:3, a], theirs.affine[:3, a], atol=1e-4)
    np.testing.assert_allclose(ours.affine[:3, 3], theirs.affine[:3, 3], atol=1e-3)


# (JPEG-lossy.dcm cannot be decoded by any plugin pydicom has: see test_bad_input.py)
@pytest.mark.parametrize("name", ["JPGExtended.dcm", "JPEG-LL.dcm", "JPEGLSNearLossless_16.dcm"])
def test_jpeg_grayscale_files_decode_like_pydicom(name):
    path = pydicom_file(name)
    expected, _ = pydicom_reference(path)
    volume = load_dicom(path)
    assert volume.shape == expected.shape
    np.testing.assert_array_equal(np.asarray(volume.data, dtype=np.float64), expected)


def test_jpeg_baseline_series_decodes_like_pydicom(corpus, tmp_path):
    """An 8-bit series re-encoded as JPEG Baseline (lossy) with Pillow: no ground truth,
    so every slice must equal pydicom's own decoding of that file."""
    import io

    from PIL import Image
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    folder = tmp_path / "jpeg"
    shutil.copytree(corpus["uint8"].folder, folder)
    for path in sorted(folder.iterdir()):
        ds = pydicom.dcmread(path)
        buffer = io.BytesIO()
        Image.fromarray(ds.pixel_array.astype(np.uint8)).save(buffer, "JPEG", quality=95)
        ds.PixelData = encapsulate([buffer.getvalue()])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.LossyImageCompression = "01"
        ds.save_as(path, enforce_file_format=True)
    volume = load_dicom(folder)
    truth = corpus["uint8"].volume
    assert volume.shape == truth.shape
    data = np.asarray(volume.data)
    for path in sorted(folder.iterdir()):
        ds = pydicom.dcmread(path)
        k = int(round((float(ds.ImagePositionPatient[2]) - volume.origin[2]) / volume.spacing[2]))
        np.testing.assert_array_equal(data[k], ds.pixel_array)
    assert np.abs(data.astype(int) - truth.data.astype(int)).mean() < 3  # lossy, but close


EMRI_VARIANTS = [
    "emri_small.dcm",
    "emri_small_RLE.dcm",
    "emri_small_big_endian.dcm",
    "emri_small_jpeg_ls_lossless.dcm",
    "emri_small_jpeg_2k_lossless.dcm",
]


@pytest.mark.parametrize("name", EMRI_VARIANTS)
def test_enhanced_mr_frames_equal_pydicom(name):
    path = pydicom_file(name)
    expected, _ = pydicom_reference(path)
    assert expected.shape == (10, 64, 64)
    volume = load_dicom(path)
    assert volume.shape == (10, 64, 64)
    np.testing.assert_array_equal(np.asarray(volume.data, dtype=np.float64), expected)
    (found,) = scan_folder(path).series
    assert found.files == [path]


def test_enhanced_ct_shared_rescale_and_frames_placed_by_position():
    """eCT_Supplemental.dcm: 2 frames, rescale only in the shared functional groups,
    positions only per frame (the first frame is not the first along the normal)."""
    path = pydicom_file("eCT_Supplemental.dcm")
    ds = pydicom.dcmread(path)
    transform = ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence[0]
    slope, intercept = float(transform.RescaleSlope), float(transform.RescaleIntercept)
    frames = ds.pixel_array.astype(np.float64) * slope + intercept
    volume = load_dicom(path)
    assert volume.shape == frames.shape
    data = np.asarray(volume.data, dtype=np.float64)
    for f, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        ipp = np.array([float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient])
        k = np.linalg.solve(volume.direction * volume.spacing, ipp - volume.origin)
        np.testing.assert_allclose(k[:2], 0, atol=1e-4)
        assert abs(k[2] - round(k[2])) < 1e-4, k
        np.testing.assert_array_equal(data[int(round(k[2]))], frames[f])


def test_enhanced_mr_with_per_frame_rescale(corpus, tmp_path):
    """Philips-style enhanced MR: every frame its own slope/intercept, frames reversed."""
    from tests.support.dicom_corpus import write_enhanced_mr

    truth = corpus["axial"].volume
    series = write_enhanced_mr(truth, tmp_path / "E0001", number=90)
    ds = pydicom.dcmread(series.files[0])
    del ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence
    stored = []
    for f, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        m, b = (1, 2, 4)[f % 3], 10 * f
        transform = pydicom.Dataset()
        transform.RescaleSlope, transform.RescaleIntercept = f"{1 / m:g}", str(-b)
        transform.RescaleType = "US"
        item.PixelValueTransformationSequence = pydicom.Sequence([transform])
        stored.append(((ds.pixel_array[f].astype(np.int32) + b) * m).astype("<i2"))
    ds.PixelData = np.stack(stored).tobytes()
    ds.save_as(series.files[0], enforce_file_format=True)
    assert_same_image(load_dicom(series.files[0]), truth, what="per-frame rescale")


def test_enhanced_three_plane_localizer_in_one_file_is_three_stacks(tmp_path):
    """Siemens XA style: one multi-frame localizer, three orientations, per-frame IOP."""
    from tests.support.dicom_corpus import (
        AXIAL,
        CORONAL,
        SAGITTAL,
        sample_template,
        write_enhanced_mr,
    )

    spacing = np.array([5.0, 5.0, 6.0])
    planes = [
        sample_template(d, shape=(3, 32, 32), spacing=spacing) for d in (AXIAL, SAGITTAL, CORONAL)
    ]
    series = write_enhanced_mr(planes[0], tmp_path / "LOC", number=91)
    ds = pydicom.dcmread(series.files[0])
    del ds.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence
    items, pixels = [], []
    for plane in planes:
        for k in range(plane.shape[0]):
            position, orientation = pydicom.Dataset(), pydicom.Dataset()
            position.ImagePositionPatient = [f"{v:.6f}" for v in plane.index_to_lps([0, 0, k])]
            cosines = (*plane.direction[:, 0], *plane.direction[:, 1])
            orientation.ImageOrientationPatient = [f"{v:.8f}" for v in cosines]
            item = pydicom.Dataset()
            item.PlanePositionSequence = pydicom.Sequence([position])
            item.PlaneOrientationSequence = pydicom.Sequence([orientation])
            items.append(item)
            pixels.append(plane.data[k])
    ds.PerFrameFunctionalGroupsSequence = pydicom.Sequence(items)
    ds.NumberOfFrames = len(items)
    ds.PixelData = np.stack(pixels).astype("<i2").tobytes()
    ds.save_as(series.files[0], enforce_file_format=True)
    scan = scan_folder(series.files[0])
    assert len(scan.series) == 3 and scan.skipped == []
    loaded = [load_series(s) for s in scan.series]
    for plane in planes:
        matches = 0
        for volume in loaded:
            try:
                assert_same_image(volume, plane)
            except AssertionError:
                continue
            matches += 1
        assert matches == 1


def test_unicode_and_spaces_in_paths(corpus, tmp_path, capsys):
    folder = tmp_path / "Patient Ünïcödé" / "T1 séries"
    shutil.copytree(corpus["axial"].folder, folder)
    assert_same_image(load_dicom(folder), corpus["axial"].volume, what="unicode path")
    out = tmp_path / "sortie é" / "t1.nii.gz"
    rc, _, err = convert([folder, out], capsys)
    assert rc == 0, err
    assert_same_image(out, corpus["axial"].volume, what="unicode output path")


def test_non_ascii_descriptions_are_decoded(corpus, tmp_path):
    folder = tmp_path / "utf8"
    shutil.copytree(corpus["axial"].folder, folder)
    text = "T1 Gehirn – Übersicht 脳"
    for path in sorted(folder.iterdir()):
        ds = pydicom.dcmread(path)
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.SeriesDescription = text
        ds.save_as(path, enforce_file_format=True)
    assert load_dicom(folder).metadata["description"] == text
    assert scan_folder(folder).series[0].description == text


def test_an_ambiguous_series_number_is_refused_listing_both(corpus, tmp_path):
    folder = tmp_path / "two"
    shutil.copytree(corpus["axial"].folder, folder / "a")
    for path in sorted(corpus["oblique"].files):  # renumber the oblique series as #1
        ds = pydicom.dcmread(path)
        ds.SeriesNumber = corpus["axial"].number
        (folder / "b").mkdir(exist_ok=True)
        ds.save_as(folder / "b" / path.name, enforce_file_format=True)
    with pytest.raises(SeriesError) as info:
        load_dicom(folder, series=corpus["axial"].number)
    assert corpus["axial"].uid in str(info.value) and corpus["oblique"].uid in str(info.value)
    assert_same_image(
        load_dicom(folder, series=corpus["oblique"].uid), corpus["oblique"].volume, what="uid"
    )


# -- a mixed export folder ------------------------------------------------------------------------
def test_mixed_folder_lists_exactly_the_series_and_skips_junk(mixed_folder):
    scan = scan_folder(mixed_folder.root)
    main_uid, other_uid = mixed_folder.main.uid, mixed_folder.other.uid
    assert {s.uid for s in scan.series} == {main_uid, other_uid}
    by_key = {s.key: s for s in scan.series}
    assert len(by_key) == len(scan.series), "keys must be unique"
    main_stack = by_key[main_uid]
    assert main_stack.stack == 0
    assert sorted(main_stack.files) == sorted(mixed_folder.main.files)
    assert main_stack.shape == mixed_folder.main.volume.shape
    assert main_stack.regular
    other = by_key[other_uid]
    assert sorted(other.files) == sorted(mixed_folder.other.files)
    split = [s for s in scan.series if s.uid == main_uid and s.stack != 0]
    assert split, "the localizer must be split off the series it shares a UID with"
    for s in split:
        assert s.key == f"{main_uid}#{s.stack}"
        orientations = {
            tuple(pydicom.dcmread(f, stop_before_pixels=True).ImageOrientationPatient)
            for f in s.files
        }
        assert len(orientations) == 1, f"stack {s.key} mixes orientations"
    assert sorted(f for s in split for f in s.files) == sorted(mixed_folder.localizer_files)
    skipped = {s.path: s.reason for s in scan.skipped}
    assert set(skipped) == set(mixed_folder.junk.values())
    for path, reason in skipped.items():
        assert reason and reason.strip(), f"{path} skipped without a reason"


def test_mixed_folder_skip_reasons_are_specific(mixed_folder):
    reasons = {s.path: s.reason.lower() for s in scan_folder(mixed_folder.root).skipped}
    junk = mixed_folder.junk
    assert "empty" in reasons[junk["empty"]] or "0 bytes" in reasons[junk["empty"]]
    assert "truncat" in reasons[junk["truncated"]]
    assert "dicom" in reasons[junk["text"]]
    for kind in ("sr", "text_sr", "seg", "dicomdir"):
        assert "not an image" in reasons[junk[kind]] or "no pixel" in reasons[junk[kind]], (
            kind,
            reasons[junk[kind]],
        )


def test_mixed_folder_loads_each_series_by_selector(mixed_folder):
    main_series, other = mixed_folder.main, mixed_folder.other
    assert_same_image(
        load_dicom(mixed_folder.root, series=main_series.uid), main_series.volume, what="main"
    )
    assert_same_image(load_dicom(mixed_folder.root, series=other.uid), other.volume, what="uid")
    assert_same_image(load_dicom(mixed_folder.root, series=other.number), other.volume, what="#")


def test_mixed_folder_select_without_choice_lists_every_series(mixed_folder):
    scan = scan_folder(mixed_folder.root)
    with pytest.raises(SeriesError) as info:
        scan.select(None)
    message = str(info.value)
    for s in scan.series:
        assert s.key in message, f"{s.key} missing from: {message}"
    with pytest.raises(SeriesError):
        load_dicom(mixed_folder.root)


def test_convert_mixed_folder_needs_a_series(mixed_folder, tmp_path, capsys):
    out = tmp_path / "x.nii.gz"
    rc, _, err = convert([mixed_folder.root, out], capsys)
    assert rc == 1
    assert not out.exists()
    assert mixed_folder.main.uid in err and mixed_folder.other.uid in err


def test_convert_mixed_folder_with_series_picks_it(mixed_folder, tmp_path, capsys):
    out = tmp_path / "other.nii.gz"
    rc, _, err = convert([mixed_folder.root, out, "--series", mixed_folder.other.uid], capsys)
    assert rc == 0, err
    assert_same_image(out, mixed_folder.other.volume, what="convert --series")


def test_convert_mixed_folder_into_a_folder_writes_every_series(mixed_folder, tmp_path, capsys):
    scan = scan_folder(mixed_folder.root)
    out = tmp_path / "all"
    out.mkdir()
    rc, _, err = convert([mixed_folder.root, out], capsys)
    assert rc == 0, err
    written = sorted(p for p in out.iterdir() if p.name.endswith((".nii", ".nii.gz")))
    assert len(written) == len(scan.series), [p.name for p in written]
    matches = {"main": 0, "other": 0}
    for path in written:
        image = nib.load(path)
        for label, truth in (("main", mixed_folder.main), ("other", mixed_folder.other)):
            if image.shape[:3] == truth.volume.shape[::-1]:
                assert_same_image(path, truth.volume, what=f"{path.name}")
                matches[label] += 1
    assert matches == {"main": 1, "other": 1}


def test_convert_with_an_unknown_series_lists_the_choices(mixed_folder, tmp_path, capsys):
    out = tmp_path / "x.nii.gz"
    rc, _, err = convert([mixed_folder.root, out, "--series", "no-such-series"], capsys)
    assert rc == 1 and not out.exists()
    assert "no-such-series" in err
    assert mixed_folder.main.uid in err and mixed_folder.other.uid in err


def test_convert_resample_writes_what_load_dicom_resample_gives(corpus, tmp_path, capsys):
    out = tmp_path / "gap.nii.gz"
    rc, _, err = convert([corpus["gap"].folder, out, "--resample"], capsys)
    assert rc == 0, err
    reference = load_dicom(corpus["gap"].folder, resample=True)
    data, affine = canonical(out)
    ref_data, ref_affine = canonical(reference)
    np.testing.assert_allclose(affine, ref_affine, atol=1e-4)
    np.testing.assert_allclose(data, ref_data, atol=1e-4)


def test_series_command_lists_the_mixed_folder(mixed_folder, capsys):
    capsys.readouterr()
    rc = main(["series", str(mixed_folder.root)])
    out = capsys.readouterr().out
    assert rc == 0
    assert mixed_folder.main.uid in out and mixed_folder.other.uid in out
    for path in mixed_folder.junk.values():  # every skipped file is listed with its reason
        assert path.name in out, path.name


def test_simpleitk_fails_on_a_localizer_sharing_the_uid_but_we_split_it(mixed_folder, tmp_path):
    """Main series and localizer in one flat folder, as many PACS exports do."""
    flat = tmp_path / "flat"
    flat.mkdir()
    for path in [*mixed_folder.main.files, *mixed_folder.localizer_files]:
        shutil.copy(path, flat / path.name)
    names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(flat), mixed_folder.main.uid)
    assert len(names) == len(mixed_folder.main.files) + 3
    reader = sitk.ImageSeriesReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileNames(names)
    try:
        image = reader.Execute()
    except RuntimeError:
        pass  # "size mismatch": SimpleITK cannot read the series at all
    else:  # or it reads something that is not the series
        assert image.GetSize()[2] != mixed_folder.main.volume.shape[0] or not np.allclose(
            image.GetDirection(), mixed_folder.main.volume.direction.reshape(-1), atol=1e-6
        )
    scan = scan_folder(flat)
    assert len([s for s in scan.series if s.stack == 0]) == 1
    main_stack = scan.select(mixed_folder.main.uid)
    assert_same_image(load_series(main_stack), mixed_folder.main.volume, what="main stack")
