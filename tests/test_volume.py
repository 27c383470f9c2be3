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
    onto_grid,
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


def _grid_along(volume: Volume, axes: np.ndarray) -> Volume:
    """The lattice of ``volume`` indexed along ``axes`` (a signed permutation of its axes),
    built from its corners, not by reorient_to_axes; the voxels are a placeholder."""
    world = np.argmax(np.abs(axes.T @ volume.direction), axis=0)  # grid axis of index axis a
    index = np.argsort(world)  # index axis of volume along grid axis w
    coords = (volume.corners_lps() - volume.origin) @ axes  # corners in the grid's frame
    origin = volume.origin + axes @ coords.min(axis=0)
    shape = tuple(int(n) for n in np.array(volume.shape[::-1])[index][::-1])
    return Volume(np.zeros(shape, np.uint8), volume.spacing[index], origin, axes)


def _voxels_keep_their_positions(volume: Volume, out: Volume) -> None:
    """Every voxel of ``volume`` is a voxel of ``out`` at the same LPS position, same value."""
    k, j, i = np.indices(volume.shape).reshape(3, -1)
    lps = volume.index_to_lps(np.stack([i, j, k], 1))
    q = np.linalg.solve(out.affine[:3, :3], (lps - out.origin).T).T
    ii, jj, kk = np.rint(q).astype(int).T
    np.testing.assert_allclose(q, np.stack([ii, jj, kk], 1), atol=1e-9)
    assert len({*zip(ii, jj, kk, strict=True)}) == volume.data.size  # one voxel each
    np.testing.assert_array_equal(
        np.asarray(out.data)[kk, jj, ii], np.asarray(volume.data)[k, j, i]
    )


@pytest.mark.parametrize("permutation", list(_signed_permutations()))
def test_onto_grid_reorders_every_signed_permutation_exactly(random_volume, permutation):
    axes = _rotation(0.3, -0.2, 0.5)
    vol = Volume(random_volume, (0.7, 0.9, 2.5), (10.0, -20.0, 30.0), axes @ permutation)
    grid = _grid_along(vol, axes)
    out = onto_grid(vol, grid, resample=False)
    assert out.same_geometry(grid, atol=1e-9)
    assert np.shares_memory(out.data, vol.data)  # a view: reordered, not interpolated
    assert out.dtype == vol.dtype
    _voxels_keep_their_positions(vol, out)
    # allowed to resample, it still reorders
    assert np.shares_memory(onto_grid(vol, grid, labels=True).data, vol.data)


def test_onto_grid_resamples_an_oblique_grid_or_refuses_it():
    blocks = np.zeros((12, 16, 16), np.uint8)
    blocks[2:10, 3:13, 3:8] = 3
    blocks[2:10, 3:13, 8:13] = 7
    vol = Volume(blocks, (2.0, 2.0, 2.0), (0.0, 0.0, 0.0), np.eye(3))
    axes = _rotation(np.radians(20), np.radians(10), np.radians(-5))
    grid = Volume(np.zeros((14, 18, 18), np.uint8), (1.7, 1.7, 1.9), (-1.0, 2.0, -3.0), axes)

    out = onto_grid(vol, grid, labels=True)
    assert out.same_geometry(grid, atol=1e-9) and out.dtype == np.uint8
    assert set(np.unique(out.data).tolist()) == {0, 3, 7}  # labels stay labels
    # nearest neighbour: each voxel holds the source voxel nearest its centre (0 outside)
    k, j, i = np.indices(grid.shape).reshape(3, -1)
    src = (grid.index_to_lps(np.stack([i, j, k], 1)) - vol.origin) / vol.spacing
    near = np.rint(src).astype(int)
    inside = np.all((near >= 0) & (near < vol.shape[::-1]), axis=1)
    clear = np.all(np.abs(np.abs(src - np.floor(src)) - 0.5) > 1e-6, axis=1)  # no ties
    x, y, z = near[inside & clear].T
    np.testing.assert_array_equal(out.data[k, j, i][inside & clear], blocks[z, y, x])
    assert np.all(out.data[k, j, i][~inside] == 0)

    image = onto_grid(vol.with_data(blocks.astype(np.float32)), grid)
    assert image.same_geometry(grid, atol=1e-9)
    assert not set(np.unique(image.data).tolist()) <= {0.0, 3.0, 7.0}  # linear for images

    with pytest.raises(GeometryError, match="oblique") as refused:
        onto_grid(vol, grid, labels=True, resample=False)
    assert repr(vol) in str(refused.value) and repr(grid) in str(refused.value)


def test_onto_grid_keeps_a_lazy_volume_lazy(random_volume):
    import dask.array as da

    reads = []

    def read(block):
        reads.append(block.shape)
        return block

    lazy = da.from_array(random_volume, chunks=(2, 3, 7)).map_blocks(
        read, meta=np.array((), dtype=random_volume.dtype)
    )
    sagittal = np.column_stack([[0.0, 1.0, 0.0], [0.0, 0.0, -1.0], [-1.0, 0.0, 0.0]])
    vol = Volume(lazy, (0.7, 0.9, 2.5), (10.0, -20.0, 30.0), sagittal)
    grid = _grid_along(vol, np.eye(3))
    out = onto_grid(vol, grid, labels=True)
    assert out.is_lazy and reads == []  # nothing read
    assert out.same_geometry(grid, atol=1e-9)
    _voxels_keep_their_positions(vol.compute(), out.compute())
    assert reads  # read when computed


def test_onto_grid_does_not_reorder_onto_a_lattice_half_a_voxel_away(random_volume):
    ras = np.diag([-1.0, -1.0, 1.0])
    vol = Volume(random_volume.astype(np.float32), (0.7, 0.9, 2.5), (10.0, -20.0, 30.0), ras)
    grid = _grid_along(vol, np.eye(3))
    half = Volume(grid.data, grid.spacing, grid.origin + [0.35, 0.0, 0.0], grid.direction)
    assert onto_grid(vol, grid, resample=False).same_geometry(grid, atol=1e-9)

    with pytest.raises(GeometryError, match=r"0\.35 mm") as refused:
        onto_grid(vol, half, resample=False)
    assert repr(vol) in str(refused.value) and repr(half) in str(refused.value)

    out = onto_grid(vol, half)
    assert out.same_geometry(half, atol=1e-9)
    # linearly resampled: each voxel is the mean of its two neighbours along x
    exact = np.asarray(onto_grid(vol, grid).data)
    mean = (exact[:, :, :-1] + exact[:, :, 1:]) / 2
    np.testing.assert_allclose(out.data[:, :, :-1], mean, rtol=1e-5)

    labels = onto_grid(vol.with_data(random_volume), half, labels=True)
    assert labels.same_geometry(half, atol=1e-9) and labels.dtype == random_volume.dtype
    assert set(np.unique(labels.data).tolist()) <= set(np.unique(random_volume).tolist()) | {0}
