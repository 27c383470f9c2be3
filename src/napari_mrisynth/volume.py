"""The `Volume` type and every conversion of it: SimpleITK, NIfTI (RAS) and napari layers.

Conventions (the same as DICOM and ITK):

* ``data`` is indexed ``[z, y, x]`` = ``[slice, row, column]``; numpy, or dask when lazy.
* ``spacing``, ``origin`` and the columns of ``direction`` are given in index order
  ``(x, y, z)``: ``spacing[0]`` is the column spacing, ``direction[:, 0]`` the unit vector
  along a row (DICOM's first ImageOrientationPatient cosine), ``direction[:, 2]`` the slice
  normal as stacked.
* Patient coordinates are LPS millimetres (x to patient Left, y to Posterior, z to Superior).

The physical position of voxel ``data[k, j, i]`` is ``origin + direction @ (spacing * (i, j, k))``.

This is the single place where geometry is converted; nothing else in the package flips
axes or negates coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_mrisynth.errors import GeometryError

if TYPE_CHECKING:
    import nibabel as nib
    import SimpleITK as sitk

#: LPS <-> RAS: negate x and y.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

#: Direction cosines further than this from a signed permutation are "oblique" for display.
#: 1e-4 of a unit vector is 0.013 mm across a 256 mm field of view.
AXIS_ALIGNED_TOLERANCE = 1e-4

#: World axes of every napari layer this package makes, in napari (array) order.
NAPARI_AXIS_LABELS = ("I→S", "A→P", "R→L")


def _as_vec3(value: Any, name: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64).reshape(-1)
    if arr.shape != (3,) or not np.all(np.isfinite(arr)):
        raise GeometryError(f"{name} must be three finite numbers, got {value!r}")
    return arr


@dataclass(eq=False)
class Volume:
    """A 3D scalar image in patient space.

    Parameters
    ----------
    data : array, shape (nz, ny, nx)
        Voxels; a numpy array, or a dask array for lazily read series.
    spacing : (3,) float
        Voxel size in mm along x (columns), y (rows), z (slices).
    origin : (3,) float
        LPS position in mm of the centre of voxel ``data[0, 0, 0]``.
    direction : (3, 3) float
        Orthonormal; column ``a`` is the LPS unit vector of index axis ``a`` (x, y, z).
    metadata : dict
        Small, JSON-friendly facts: modality, series UID, description, source path...
    """

    data: Any
    spacing: np.ndarray = field(default_factory=lambda: np.ones(3))
    origin: np.ndarray = field(default_factory=lambda: np.zeros(3))
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if getattr(self.data, "ndim", None) != 3:
            raise GeometryError(
                f"a Volume needs 3D data (z, y, x), got shape {getattr(self.data, 'shape', None)}"
            )
        self.spacing = _as_vec3(self.spacing, "spacing")
        if np.any(self.spacing <= 0):
            raise GeometryError(f"spacing must be positive, got {self.spacing.tolist()}")
        self.origin = _as_vec3(self.origin, "origin")
        direction = np.asarray(self.direction, dtype=np.float64)
        if direction.shape != (3, 3) or not np.all(np.isfinite(direction)):
            raise GeometryError(f"direction must be a finite 3x3 matrix, got {self.direction!r}")
        if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
            raise GeometryError(
                "direction cosines are not orthonormal (sheared grid):\n"
                f"{np.array2string(direction, precision=5)}"
            )
        self.direction = direction

    # -- basic properties -------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape (nz, ny, nx)."""
        return tuple(int(n) for n in self.data.shape)  # type: ignore[return-value]

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.data.dtype)

    @property
    def is_lazy(self) -> bool:
        """True when the voxels are a dask array that has not been read yet."""
        return not isinstance(self.data, np.ndarray)

    @property
    def affine(self) -> np.ndarray:
        """4x4 matrix mapping homogeneous index (x, y, z, 1) to LPS mm."""
        out = np.eye(4)
        out[:3, :3] = self.direction * self.spacing
        out[:3, 3] = self.origin
        return out

    @classmethod
    def from_affine(cls, data: Any, affine: np.ndarray, metadata: dict | None = None) -> Volume:
        """Build from an index(x, y, z) -> LPS 4x4 affine; refuses sheared affines."""
        affine = np.asarray(affine, dtype=np.float64)
        columns = affine[:3, :3]
        spacing = np.linalg.norm(columns, axis=0)
        if np.any(spacing <= 0):
            raise GeometryError(f"affine has a zero-length axis:\n{affine}")
        return cls(data, spacing, affine[:3, 3], columns / spacing, dict(metadata or {}))

    def with_data(self, data: Any, **metadata: Any) -> Volume:
        """Same geometry, other voxels (a mask, a prediction, a synthetic image)."""
        if tuple(data.shape) != self.shape:
            raise GeometryError(f"shape {tuple(data.shape)} does not match volume {self.shape}")
        return replace(self, data=data, metadata={**self.metadata, **metadata})

    def compute(self) -> Volume:
        """Return a volume whose voxels are an in-memory numpy array."""
        if not self.is_lazy:
            return self
        return replace(self, data=np.asarray(self.data.compute()))

    def index_to_lps(self, index_xyz: Any) -> np.ndarray:
        """LPS mm of one or more (x, y, z) indices (shape (..., 3))."""
        idx = np.asarray(index_xyz, dtype=np.float64)
        return idx @ (self.direction * self.spacing).T + self.origin

    def corners_lps(self) -> np.ndarray:
        """LPS positions (8, 3) of the centres of the eight corner voxels."""
        nz, ny, nx = self.shape
        grid = np.array([[i, j, k] for k in (0, nz - 1) for j in (0, ny - 1) for i in (0, nx - 1)])
        return self.index_to_lps(grid)

    def same_geometry(self, other: Volume, atol: float = 1e-4) -> bool:
        """True when both volumes sample the same points of patient space."""
        return self.shape == other.shape and np.allclose(self.affine, other.affine, atol=atol)

    def __repr__(self) -> str:
        kind = "lazy " if self.is_lazy else ""
        return (
            f"Volume({kind}{self.dtype} {self.shape}, "
            f"spacing={np.round(self.spacing, 4).tolist()}, "
            f"origin={np.round(self.origin, 3).tolist()}, "
            f"orientation={orientation_code(self.direction)})"
        )


# -- orientation helpers -------------------------------------------------------------------
def orientation_code(direction: np.ndarray) -> str:
    """Three letters naming where each index axis (x, y, z) points, e.g. ``LPS`` or ``RAS``.

    Oblique axes get the letter of their dominant LPS component.
    """
    letters = (("R", "L"), ("A", "P"), ("I", "S"))
    out = []
    for a in range(3):
        w = int(np.argmax(np.abs(direction[:, a])))
        out.append(letters[w][int(direction[w, a] > 0)])
    return "".join(out)


def nearest_axis_permutation(direction: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Closest signed permutation to ``direction``.

    Returns ``(world_of_index, sign, deviation)``: index axis ``a`` runs along LPS axis
    ``world_of_index[a]`` with sign ``sign[a]``; ``deviation`` is the largest cosine error.
    """
    world = np.argmax(np.abs(direction), axis=0)
    if len(set(world.tolist())) != 3:
        return world, np.ones(3), float("inf")
    sign = np.sign(direction[world, np.arange(3)])
    ideal = np.zeros((3, 3))
    ideal[world, np.arange(3)] = sign
    return world, sign, float(np.max(np.abs(direction - ideal)))


def is_axis_aligned(direction: np.ndarray, tol: float = AXIS_ALIGNED_TOLERANCE) -> bool:
    """True when the grid's axes run along patient axes (axial, sagittal, coronal)."""
    return nearest_axis_permutation(direction)[2] <= tol


# -- SimpleITK ---------------------------------------------------------------------------
def volume_from_sitk(image: sitk.Image, metadata: dict | None = None) -> Volume:
    """Volume from a 3D scalar SimpleITK image (voxels copied)."""
    import SimpleITK as sitk

    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise GeometryError(
            f"expected a 3D scalar image, got {image.GetDimension()}D with "
            f"{image.GetNumberOfComponentsPerPixel()} components"
        )
    return Volume(
        sitk.GetArrayFromImage(image),
        image.GetSpacing(),
        image.GetOrigin(),
        np.reshape(image.GetDirection(), (3, 3)),
        dict(metadata or {}),
    )


def volume_to_sitk(volume: Volume) -> sitk.Image:
    """SimpleITK image with the volume's voxels and geometry (voxels copied)."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(volume.compute().data)))
    image.SetSpacing(volume.spacing.tolist())
    image.SetOrigin(volume.origin.tolist())
    image.SetDirection(volume.direction.reshape(-1).tolist())
    return image


# -- NIfTI -------------------------------------------------------------------------------
def volume_from_nifti(image: nib.Nifti1Image, metadata: dict | None = None) -> Volume:
    """Volume from a 3D NIfTI image; RAS affine to LPS, (x, y, z) storage to (z, y, x).

    Scale factors (scl_slope/scl_inter) are applied; raw integers are kept when they are
    identity. A 4D image with one volume is accepted.
    """
    shape = image.shape
    if len(shape) == 4 and shape[3] == 1:
        data = np.asanyarray(image.dataobj)[..., 0]
    elif len(shape) == 3:
        data = np.asanyarray(image.dataobj)
    else:
        raise GeometryError(f"expected a 3D image, got shape {shape}")
    affine_lps = _LPS_TO_RAS @ np.asarray(image.affine, dtype=np.float64)
    return Volume.from_affine(np.ascontiguousarray(data.transpose(2, 1, 0)), affine_lps, metadata)


def volume_to_nifti(volume: Volume) -> nib.Nifti1Image:
    """NIfTI-1 image (RAS affine in both sform and qform, code 1 = scanner, mm)."""
    import nibabel as nib

    data = np.asarray(volume.compute().data).transpose(2, 1, 0)
    affine_ras = _LPS_TO_RAS @ volume.affine
    image = nib.Nifti1Image(data, affine_ras)
    image.header.set_xyzt_units("mm", "sec")
    image.set_sform(affine_ras, code=1)
    image.set_qform(affine_ras, code=1)
    return image


# -- napari ------------------------------------------------------------------------------
def reorient_to_patient_axes(volume: Volume) -> Volume:
    """Same voxels, reordered (transpose and flips, no interpolation) so index axes x, y, z
    run to patient Left, Posterior, Superior. Requires an axis-aligned volume.

    Works on dask arrays without reading them.
    """
    return reorient_to_axes(volume, np.eye(3))


def reorient_to_axes(volume: Volume, axes: np.ndarray) -> Volume:
    """Same voxels, reordered (transpose and flips, no interpolation) so index axes x, y, z
    run along the columns of ``axes`` (e.g. another volume's ``direction``).

    Raises :class:`GeometryError` when the volume's axes are not a signed permutation of
    ``axes``. Works on dask arrays without reading them.
    """
    axes = np.asarray(axes, dtype=np.float64)
    # cosines between target axis w (row) and index axis a (column)
    world, sign, deviation = nearest_axis_permutation(axes.T @ volume.direction)
    if deviation > AXIS_ALIGNED_TOLERANCE:
        raise GeometryError(
            f"volume is oblique to the target axes (cosine deviation {deviation:.3g}); "
            "resample it with resample_to_patient_axes()"
        )
    index_of_world = np.argsort(world)  # index axis a that runs along target axis w
    # array axis of index axis a is 2 - a; new array axis n holds world axis 2 - n
    data = volume.data.transpose([2 - int(index_of_world[2 - n]) for n in range(3)])
    flips = tuple(
        slice(None, None, -1) if sign[index_of_world[2 - n]] < 0 else slice(None) for n in range(3)
    )
    data = data[flips]
    nz, ny, nx = volume.shape
    last = np.array([nx - 1, ny - 1, nz - 1])
    first_index = np.where(sign < 0, last, 0)
    origin = volume.index_to_lps(first_index)
    spacing = volume.spacing[index_of_world]
    direction = volume.direction[:, index_of_world] * sign[index_of_world]
    return Volume(data, spacing, origin, direction, dict(volume.metadata))


def resample_to_patient_axes(volume: Volume, *, labels: bool = False) -> Volume:
    """Resample an oblique volume onto a grid aligned with patient axes (LPS).

    The new grid covers the whole original volume; along each patient axis it takes the
    spacing of the original axis closest to it. Linear interpolation for images, nearest
    neighbour for labels; outside voxels get the volume's minimum (0 for labels).
    """
    import SimpleITK as sitk

    world = np.argmax(np.abs(volume.direction), axis=0)
    index_of_world = np.argsort(world) if len(set(world.tolist())) == 3 else np.arange(3)
    spacing = volume.spacing[index_of_world]
    corners = volume.corners_lps()
    low, high = corners.min(axis=0), corners.max(axis=0)
    # ceil: the grid must reach the far corner, not stop up to one voxel short of it
    size = np.ceil((high - low) / spacing - 1e-6).astype(int) + 1
    if int(np.prod(size)) > 8 * int(np.prod(volume.shape)) + 1_000_000:
        raise GeometryError(f"resampling would need a {size.tolist()} grid; refusing")
    source = volume_to_sitk(volume)
    array = np.asarray(volume.compute().data)
    fill = 0.0 if labels else float(array.min()) if array.size else 0.0
    out = sitk.Resample(
        source,
        [int(s) for s in size],
        sitk.Transform(),
        sitk.sitkNearestNeighbor if labels else sitk.sitkLinear,
        low.tolist(),
        spacing.tolist(),
        np.eye(3).reshape(-1).tolist(),
        fill,
        source.GetPixelID(),
    )
    meta = dict(volume.metadata)
    meta["resampled_from"] = {
        "shape": list(volume.shape),
        "spacing": volume.spacing.tolist(),
        "origin": volume.origin.tolist(),
        "direction": volume.direction.tolist(),
        "interpolation": "nearest" if labels else "linear",
    }
    return volume_from_sitk(out, meta)


def onto_grid(
    volume: Volume,
    grid: Volume,
    *,
    labels: bool = False,
    resample: bool = True,
    axis_tol: float = AXIS_ALIGNED_TOLERANCE,
    atol: float = 1e-4,
) -> Volume:
    """``volume``'s voxels on ``grid``'s voxel lattice: reordered when they already are
    (exact), resampled when not, or refused.

    When ``volume``'s index axes are a signed permutation of ``grid``'s (cosines within
    ``axis_tol``) and, so reordered, it has ``grid``'s shape and affine (within ``atol``),
    the voxels are transposed and flipped onto ``grid``'s index order: no interpolation,
    and a dask array stays unread. Otherwise they are resampled onto ``grid`` when
    ``resample`` is true, or a :class:`GeometryError` naming both geometries is raised.

    Parameters
    ----------
    volume : Volume
        The voxels to move.
    grid : Volume
        The target lattice; only its geometry is used (its voxels may be a placeholder).
    labels : bool
        Label voxels: resampled by nearest neighbour (0 outside ``volume``), so only values
        of ``volume`` and 0 appear. Images are resampled linearly (``volume``'s minimum
        outside). Both keep ``volume``'s dtype.
    resample : bool
        Resample when reordering cannot put ``volume`` on ``grid``; False refuses instead.
    axis_tol : float
        Largest direction-cosine deviation from a signed permutation of ``grid``'s axes.
    atol : float
        Largest difference (mm) between the reordered affine and ``grid``'s, as in
        :meth:`Volume.same_geometry`.

    Returns
    -------
    Volume
        ``volume``'s voxels and metadata on ``grid``'s lattice. Reordered, its geometry is
        ``volume``'s own in ``grid``'s index order (equal to ``grid``'s within ``atol``);
        the voxels may be a view with negative strides. Resampled, it is ``grid``'s.

    Raises
    ------
    GeometryError
        ``resample`` is false and ``volume`` is not on ``grid``'s lattice: oblique to it,
        or of another shape, spacing or position.

    Examples
    --------
    The same grid stored in another axis order (a RAS NIfTI of an LPS series) comes back
    exactly:

    >>> import numpy as np
    >>> grid = Volume(np.zeros((2, 3, 4), np.uint8), (1.0, 1.0, 2.0))
    >>> ras = Volume(np.arange(24).reshape(2, 3, 4)[:, ::-1, ::-1], (1.0, 1.0, 2.0),
    ...              (3.0, 2.0, 0.0), np.diag([-1.0, -1.0, 1.0]))
    >>> onto_grid(ras, grid).data[0]
    array([[ 0,  1,  2,  3],
           [ 4,  5,  6,  7],
           [ 8,  9, 10, 11]])

    A grid half a voxel away is resampled, or refused:

    >>> shifted = Volume(np.zeros((2, 3, 4), np.uint8), (1.0, 1.0, 2.0), (0.5, 0.0, 0.0))
    >>> onto_grid(ras, shifted, labels=True).same_geometry(shifted)
    True
    >>> onto_grid(ras, shifted, resample=False)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    napari_mrisynth.errors.GeometryError: Volume(int64 (2, 3, 4), ...) is not on the grid of ...
    """
    deviation = nearest_axis_permutation(grid.direction.T @ volume.direction)[2]
    if deviation <= axis_tol:
        moved = reorient_to_axes(volume, grid.direction)
        if moved.same_geometry(grid, atol=atol):
            return moved
        if moved.shape != grid.shape:
            reason = f"reordered onto the grid's axes it is {moved!r}, of another shape"
        else:
            offset = np.linalg.norm(moved.corners_lps() - grid.corners_lps(), axis=1).max()
            reason = (
                f"reordered onto the grid's axes it is {moved!r}, whose corner voxels lie up "
                f"to {offset:.4g} mm from the grid's (affine tolerance {atol:g} mm)"
            )
    else:
        reason = f"its axes are oblique to the grid's (cosine deviation {deviation:.3g})"
    if not resample:
        raise GeometryError(f"{volume!r} is not on the grid of {grid!r}: {reason}")
    import SimpleITK as sitk

    volume = volume.compute()
    source = volume_to_sitk(volume)
    fill = 0.0 if labels or volume.data.size == 0 else float(np.min(volume.data))
    out = sitk.Resample(
        source,
        [int(n) for n in grid.shape[::-1]],
        sitk.Transform(),
        sitk.sitkNearestNeighbor if labels else sitk.sitkLinear,
        grid.origin.tolist(),
        grid.spacing.tolist(),
        grid.direction.reshape(-1).tolist(),
        fill,
        source.GetPixelID(),
    )
    return volume_from_sitk(out, dict(volume.metadata))


def to_display_volume(volume: Volume, *, labels: bool = False) -> Volume:
    """The volume on a patient-axis-aligned grid: reordered when possible (exact, lazy),
    resampled when the series is oblique (``metadata['resampled_from']`` records it)."""
    if is_axis_aligned(volume.direction):
        return reorient_to_patient_axes(volume)
    return resample_to_patient_axes(volume, labels=labels)


def napari_layer_kwargs(volume: Volume, *, labels: bool = False) -> tuple[Any, dict[str, Any]]:
    """``(data, kwargs)`` for ``viewer.add_image`` / ``add_labels`` or a reader's LayerData.

    napari world coordinates are LPS mm in (z, y, x) order, so the 2D view of an axial
    plane is radiological: anterior up, patient right on screen left. Oblique volumes are
    resampled (never silently squared) and say so in the layer name and metadata.
    """
    display = to_display_volume(volume, labels=labels)
    name = str(volume.metadata.get("name") or volume.metadata.get("description") or "volume")
    if "resampled_from" in display.metadata:
        name += " (resampled to patient axes)"
    kwargs: dict[str, Any] = {
        "name": name,
        "scale": tuple(display.spacing[::-1].tolist()),
        "translate": tuple(display.origin[::-1].tolist()),
        "axis_labels": NAPARI_AXIS_LABELS,
        "units": ("mm", "mm", "mm"),
        "metadata": {
            "mrisynth": {
                "source_affine_lps": volume.affine.tolist(),
                "source_shape": list(volume.shape),
                "display_affine_lps": display.affine.tolist(),
                **{k: v for k, v in display.metadata.items() if _is_plain(v)},
            }
        },
    }
    if not labels:
        kwargs["rgb"] = False
    return display.data, kwargs


def _is_plain(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool, list, dict, tuple, type(None)))


def volume_from_layer(data: Any, data_to_world: np.ndarray, metadata: dict | None = None) -> Volume:
    """Volume from a napari layer's data and its 4x4 (z, y, x) data-to-world affine.

    World coordinates are LPS mm in (z, y, x) order, as made by :func:`napari_layer_kwargs`.
    """
    m = np.asarray(data_to_world, dtype=np.float64)
    if m.shape != (4, 4):
        raise GeometryError(f"expected a 3D layer affine (4x4), got {m.shape}")
    reverse = np.eye(4)[[2, 1, 0, 3]]  # (z, y, x, 1) <-> (x, y, z, 1)
    return Volume.from_affine(np.asarray(data), reverse @ m @ reverse, metadata)
