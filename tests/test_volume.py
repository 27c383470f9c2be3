"""Geometry conversions: every voxel must land at the same patient position."""

import itertools

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from napari_mrisynth import GeometryError, Volume
from napari_mrisynth.volume import (
    is_axis_aligned,
    napari_layer_kwargs,
    orientation_code,
    reorient_to_axes,
    reorient_to_patient_axes,
    resample_to_patient_axes,
    volume_from_layer,
    volume_from_nifti,
    volume_from_sitk,
    volume_to_nifti,
    volume_to_sitk,
)


def _rotation(ax, ay, az):
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _signed_permutations():
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            d = np.zeros((3, 3))
            d[list(perm), [0, 1, 2]] = signs
            yield d


@pytest.fixture
def random_volume():
    rng = np.random.default_rng(0)
    return rng.integers(-1000, 3000, size=(5, 6, 7)).astype(np.int16)


@pytest.mark.parametrize("direction", list(_signed_permutations()))
def test_reorient_keeps_every_voxel_at_its_patient_position(random_volume, direction):
    vol = Volume(random_volume, (0.7, 0.9, 2.5), (10.0, -20.0, 30.0), direction)
    out = reorient_to_patient_axes(vol)
    np.testing.assert_allclose(out.direction, np.eye(3), atol=1e-12)
    assert orientation_code(out.direction) == "LPS"
    nz, ny, nx = vol.shape
    for k, j, i in itertools.product(range(nz), range(ny), range(nx)):
        p = vol.index_to_lps([i, j, k])
        q = np.linalg.solve(out.affine[:3, :3], p - out.origin)
        ii, jj, kk = np.rint(q).astype(int)
        np.testing.assert_allclose(q, [ii, jj, kk], atol=1e-9)
        assert out.data[kk, jj, ii] == vol.data[k, j, i]


def test_sitk_roundtrip_is_exact(random_volume):
    vol = Volume(random_volume, (0.5, 0.6, 1.2), (1, 2, 3), _rotation(0.3, -0.2, 0.5))
    img = volume_to_sitk(vol)
    assert img.GetSize() == (7, 6, 5)
    np.testing.assert_allclose(
        img.TransformIndexToPhysicalPoint((3, 2, 1)), vol.index_to_lps([3, 2, 1])
    )
    back = volume_from_sitk(img)
    assert back.same_geometry(vol, atol=1e-9)
    np.testing.assert_array_equal(back.data, vol.data)


def test_nifti_roundtrip_matches_sitk_physical_points(random_volume, tmp_path):
    vol = Volume(random_volume, (0.5, 0.6, 1.2), (1, 2, 3), _rotation(0.1, 0.2, -0.4))
    path = tmp_path / "v.nii.gz"
    nib.save(volume_to_nifti(vol), path)
    back = volume_from_nifti(nib.load(path))
    assert back.same_geometry(vol, atol=1e-5)
    np.testing.assert_array_equal(back.data, vol.data)
    # ITK reads the same file into the same LPS geometry: an independent check of the RAS flip
    itk = sitk.ReadImage(str(path))
    np.testing.assert_allclose(
        itk.TransformIndexToPhysicalPoint((6, 5, 4)), vol.index_to_lps([6, 5, 4]), atol=1e-4
    )
    np.testing.assert_array_equal(sitk.GetArrayFromImage(itk), vol.data)


def test_napari_kwargs_axial_is_radiological(random_volume):
    vol = Volume(random_volume, (0.5, 0.6, 1.2), (-100, -120, -60), np.eye(3), {"name": "t1"})
    data, kw = napari_layer_kwargs(vol)
    assert data.shape == vol.shape
    assert kw["scale"] == (1.2, 0.6, 0.5)
    assert kw["translate"] == (-60.0, -120.0, -100.0)
    # world x (screen right) is patient left; world y (screen down) is posterior
    assert kw["axis_labels"][2] == "R→L" and kw["axis_labels"][1] == "A→P"


def test_napari_kwargs_flip_ras_storage(random_volume):
    # RAS-stored axial (as many NIfTI files are): x runs to the right, y anterior
    d = np.diag([-1.0, -1.0, 1.0])
    vol = Volume(random_volume, (1, 1, 2), (50, 60, 0), d)
    data, kw = napari_layer_kwargs(vol)
    np.testing.assert_array_equal(data, random_volume[:, ::-1, ::-1])
    assert kw["translate"] == (0.0, 60.0 - 5, 50.0 - 6)


def test_oblique_volume_is_resampled_not_squared():
    z, y, x = np.mgrid[0:20, 0:20, 0:20]
    ball = (((x - 10) ** 2 + (y - 10) ** 2 + (z - 10) ** 2) < 36).astype(np.float32)
    d = _rotation(np.radians(20), np.radians(15), 0)
    vol = Volume(ball, (1, 1, 1), (0, 0, 0), d, {"name": "obl"})
    assert not is_axis_aligned(vol.direction)
    with pytest.raises(GeometryError, match="oblique"):
        reorient_to_patient_axes(vol)
    data, kw = napari_layer_kwargs(vol)
    assert "resampled" in kw["name"]
    assert "resampled_from" in kw["metadata"]["mrisynth"]
    out = resample_to_patient_axes(vol)
    # the ball's centre stays at the same patient position
    centre_src = vol.index_to_lps([10, 10, 10])
    zz, yy, xx = np.nonzero(np.asarray(out.data) > 0.5)
    centre_out = out.index_to_lps(np.stack([xx, yy, zz], 1).mean(0))
    np.testing.assert_allclose(centre_out, centre_src, atol=0.3)


def test_layer_affine_back_to_volume(random_volume):
    vol = Volume(random_volume, (0.5, 0.6, 1.2), (-100, -120, -60), np.diag([1.0, -1, 1]))
    data, kw = napari_layer_kwargs(vol)
    m = np.eye(4)
    m[:3, :3] = np.diag(kw["scale"])
    m[:3, 3] = kw["translate"]
    back = volume_from_layer(data, m)
    assert back.same_geometry(reorient_to_patient_axes(vol))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"spacing": (1, 0, 1)}, "positive"),
        ({"direction": [[1, 0.2, 0], [0, 1, 0], [0, 0, 1]]}, "orthonormal"),
        ({"origin": (0, np.nan, 0)}, "finite"),
    ],
)
def test_bad_geometry_is_refused(kwargs, message):
    with pytest.raises(GeometryError, match=message):
        Volume(np.zeros((2, 2, 2)), **kwargs)


def test_resampled_grid_covers_every_corner():
    d = _rotation(np.radians(20), np.radians(15), 0)
    vol = Volume(np.ones((9, 10, 11), np.float32), (1.3, 0.9, 2.1), (5, -7, 3), d)
    out = resample_to_patient_axes(vol)
    corners = vol.corners_lps()
    low, high = out.corners_lps().min(0), out.corners_lps().max(0)
    assert np.all(low <= corners.min(0) + 1e-6)
    assert np.all(high >= corners.max(0) - 1e-6)


@pytest.mark.parametrize("direction", list(_signed_permutations())[::7])
def test_reorient_to_another_volumes_axes(random_volume, direction):
    target = Volume(np.zeros((5, 6, 7)), (1, 1, 1), (0, 0, 0), _rotation(0.3, -0.2, 0.5))
    vol = Volume(random_volume, (0.7, 0.9, 2.5), (10.0, -20.0, 30.0), target.direction @ direction)
    out = reorient_to_axes(vol, target.direction)
    np.testing.assert_allclose(out.direction, target.direction, atol=1e-12)
    # the same patient point holds the same value
    k, j, i = 3, 2, 4
    q = np.linalg.solve(out.affine[:3, :3], vol.index_to_lps([i, j, k]) - out.origin)
    ii, jj, kk = np.rint(q).astype(int)
    assert out.data[kk, jj, ii] == vol.data[k, j, i]
    with pytest.raises(GeometryError, match="oblique"):
        reorient_to_axes(vol, _rotation(0.1, 0, 0))
