"""The model grid, and resampling onto it and back with one matrix each way.

Both directions are the same operation -- trilinear (or nearest) sampling at the voxel
centres of one grid of points mapped through a 4x4 matrix into the other -- done with
``torch.nn.functional.grid_sample`` so it runs on the GPU as well as the CPU. The matrix
from the source to the model grid is the exact inverse of the one back, so a model's output
lands on the source voxels it was computed from.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_mrisynth.volume import Volume

_IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


@dataclass(frozen=True)
class ModelGrid:
    """A model's input grid in the model space (LPS mm, ITK (x, y, z) order like Volume)."""

    spacing: tuple[float, float, float]
    shape: tuple[int, int, int]  # z, y, x
    origin: tuple[float, float, float]
    direction: tuple[float, ...] = _IDENTITY

    @classmethod
    def from_input_spec(cls, spec: Any) -> ModelGrid:
        return cls(
            tuple(float(v) for v in spec.spacing),
            tuple(int(v) for v in spec.shape),
            tuple(float(v) for v in spec.origin),
            tuple(float(v) for v in getattr(spec, "direction", _IDENTITY)),
        )

    def to_input_spec_fields(self) -> dict[str, Any]:
        """``spacing``, ``shape``, ``origin``, ``direction`` for :class:`InputSpec`."""
        return {
            "spacing": self.spacing,
            "shape": self.shape,
            "origin": self.origin,
            "direction": self.direction,
        }

    @property
    def affine(self) -> np.ndarray:
        """4x4 index (x, y, z) -> LPS mm, as :attr:`Volume.affine`."""
        out = np.eye(4)
        out[:3, :3] = np.asarray(self.direction).reshape(3, 3) * np.asarray(self.spacing)
        out[:3, 3] = self.origin
        return out

    def volume(self, data: Any, **metadata: Any) -> Volume:
        """Wrap an array (z, y, x) on this grid."""
        if tuple(data.shape) != tuple(self.shape):
            raise ValueError(f"data shape {tuple(data.shape)} is not the grid's {self.shape}")
        return Volume(data, self.spacing, self.origin,
                      np.asarray(self.direction).reshape(3, 3), dict(metadata))  # fmt: skip


#: Voxel size (mm) of the default model grid: the demo models, studies and evaluation use it.
DEFAULT_MODEL_SPACING_MM = 2.0


def default_multiple(spacing: float) -> int:
    """How many voxels each side of the default grid is padded to: 16 up to 2 mm, 8 up to
    4 mm and 4 for coarser test grids, so a coarse box stays a tight box."""
    return 16 if spacing <= 2.0 else 8 if spacing <= 4.0 else 4


@functools.lru_cache(maxsize=8)
def default_model_grid(
    spacing: float = DEFAULT_MODEL_SPACING_MM, multiple: int | None = None
) -> ModelGrid:
    """The box the demo models see: the reference head's cranium, axis-aligned (LPS).

    It holds every brain label and the skull and scalp around them, from the vertex down to
    20 mm below the lowest brain voxel (cerebellum); the neck below is left out. Each side
    is padded to a multiple of ``multiple`` voxels around the cranium's centre (at 2 mm:
    96 x 112 x 96 voxels (z, y, x), 192 x 224 x 192 mm); by default
    :func:`default_multiple`.
    Its voxel centres lie on the reference head's voxel centres (1 mm lattice below 2 mm,
    else the 2 mm one).
    """
    if multiple is None:
        multiple = default_multiple(spacing)
    from napari_mrisynth.anatomy.labels import BRAIN_LABELS
    from napari_mrisynth.preprocess.reference import reference_head

    labels = reference_head(2.0).labels
    data = np.asarray(labels.data)
    lps_z = labels.origin[2] + labels.spacing[2] * np.arange(data.shape[0])
    brain_slices = np.flatnonzero(np.isin(data, BRAIN_LABELS).any(axis=(1, 2)))
    floor = lps_z[brain_slices[0]] - 20.0
    head = (data > 0) & (lps_z >= floor)[:, None, None]
    index = np.argwhere(head)  # z, y, x
    lo_xyz = labels.index_to_lps(index.min(axis=0)[::-1][None])[0]
    hi_xyz = labels.index_to_lps(index.max(axis=0)[::-1][None])[0]
    centre = (lo_xyz + hi_xyz) / 2.0
    extent = hi_xyz - lo_xyz
    counts = np.ceil((extent / spacing + 1) / multiple).astype(int) * multiple
    origin = centre - spacing * (counts - 1) / 2.0
    # Voxel centres on the reference's own lattice (at most half a voxel off centre): the
    # reference labels then reach the grid by nearest neighbour without ties.
    lattice = reference_head(spacing if spacing < 2.0 else 2.0).t1
    steps = np.round((origin - lattice.origin) / lattice.spacing)
    origin = lattice.origin + lattice.spacing * steps
    return ModelGrid(
        (float(spacing),) * 3,
        tuple(int(n) for n in counts[::-1]),
        tuple(float(v) for v in np.round(origin, 4)),
    )


def _normaliser(shape_zyx: tuple[int, ...]) -> np.ndarray:
    """4x4 index (x, y, z) -> grid_sample coordinates (-1..1, align_corners=True)."""
    out = np.eye(4)
    for axis, n in enumerate(shape_zyx[::-1]):
        out[axis, axis] = 2.0 / max(n - 1, 1)
        out[axis, 3] = -1.0
    return out


def _sample(values: Any, index_to_norm: np.ndarray, out_shape: tuple[int, ...], mode: str,
            box: tuple[slice, slice, slice] | None = None) -> Any:  # fmt: skip
    """Sample ``values`` (C, z, y, x tensor) at the output voxels in ``box`` (z, y, x slices).

    Returns the samples (C, *box shape) and whether each voxel falls inside ``values``' grid.
    """
    import torch
    import torch.nn.functional as F

    box = box or tuple(slice(0, n) for n in out_shape)
    device = values.device
    matrix = torch.as_tensor(index_to_norm, device=device, dtype=torch.float64)
    # Separable: point = x * a_x + y * a_y + z * a_z + b, summed by broadcasting.
    axes = []
    for column, part in ((0, box[2]), (1, box[1]), (2, box[0])):
        steps = torch.arange(part.start, part.stop, device=device, dtype=torch.float64)
        axes.append(steps[:, None] * matrix[:3, column])
    x_part, y_part, z_part = axes
    points = (
        z_part[:, None, None, :] + y_part[None, :, None, :] + x_part[None, None, :, :]
        + matrix[:3, 3]
    ).to(torch.float32)  # fmt: skip
    sampled = F.grid_sample(
        values[None].float(), points[None], mode=mode, padding_mode="zeros", align_corners=True
    )[0]
    inside = (points.abs() <= 1.0 + 1e-6).all(dim=-1)
    return sampled, inside


def _footprint(norm_to_index: np.ndarray, shape: tuple[int, ...]) -> tuple[slice, ...] | None:
    """Target voxels (z, y, x slices) that can fall inside the model grid, or None."""
    corners = np.array(
        [[x, y, z, 1.0] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)]
    ).T  # normalised model-grid corners
    index = (norm_to_index @ corners)[:3]  # target x, y, z
    lo = np.maximum(np.floor(index.min(axis=1)) - 1, 0).astype(int)
    hi = np.minimum(np.ceil(index.max(axis=1)) + 2, np.array(shape[::-1])).astype(int)
    if np.any(hi <= lo):
        return None
    return slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0])


def _device(device: Any) -> Any:
    import torch

    return torch.device("cpu") if device is None else torch.device(device)


def to_model_grid(
    volume: Volume,
    grid: ModelGrid,
    alignment: Any,
    *,
    order: int = 1,
    device: Any = None,
    fill: float = 0.0,
) -> np.ndarray:
    """Resample a source volume onto the model grid through ``alignment``.

    Parameters
    ----------
    volume : Volume
        The source scan (or its labels, with ``order=0``).
    grid : ModelGrid
    alignment : Alignment
        ``alignment.matrix`` maps model-space LPS to the source's LPS.
    order : {0, 1}
        Nearest neighbour (labels; keeps the dtype) or trilinear (float32).
    fill : float
        Value outside the source's field of view.

    Returns
    -------
    ndarray (z, y, x) of ``grid.shape``.
    """
    import torch

    data = np.asarray(volume.data)
    values = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32)).to(_device(device))
    index_to_norm = (
        _normaliser(volume.shape)
        @ np.linalg.inv(volume.affine)
        @ np.asarray(alignment.matrix)
        @ grid.affine
    )
    mode = "nearest" if order == 0 else "bilinear"
    sampled, inside = _sample(values[None] - fill, index_to_norm, grid.shape, mode)
    out = (sampled[0] + fill).cpu().numpy()
    if order == 0:
        return np.rint(out).astype(data.dtype)
    return out.astype(np.float32)


def from_model_grid(
    values: Any,
    grid: ModelGrid,
    alignment: Any,
    target: Volume,
    *,
    reduce: str | None = "argmax",
    device: Any = None,
    chunk_voxels: int = 2_000_000,
    out_dtype: Any = np.uint8,
    fill: float = 0.0,
) -> np.ndarray:
    """Bring model-grid channels back onto a source grid, the exact inverse of the way in.

    Parameters
    ----------
    values : tensor or ndarray (C, z, y, x) on ``grid``
        Class probabilities or logits, or one channel of a map (saliency).
    grid : ModelGrid
    alignment : Alignment
    target : Volume
        The source scan whose grid the result takes.
    reduce : {"argmax", None}
        ``argmax``: labels (``out_dtype``), 0 outside the model grid; ``None``: float32
        channels (C, z, y, x), ``fill`` outside.
    chunk_voxels : int
        Target voxels sampled at once (bounds memory on 1 mm scans).
    """
    import torch

    torch_values = torch.as_tensor(values)
    if device is not None:
        torch_values = torch_values.to(_device(device))
    if torch_values.ndim != 4 or tuple(torch_values.shape[1:]) != tuple(grid.shape):
        raise ValueError(f"values must be (C, {grid.shape}), got {tuple(torch_values.shape)}")
    index_to_norm = (
        _normaliser(grid.shape)
        @ np.linalg.inv(grid.affine)
        @ np.linalg.inv(np.asarray(alignment.matrix))
        @ target.affine
    )
    shape = target.shape
    channels = torch_values.shape[0]
    if reduce == "argmax":
        out = np.zeros(shape, dtype=out_dtype)
    elif reduce is None:
        out = np.full((channels, *shape), fill, dtype=np.float32)
    else:
        raise ValueError(f"reduce must be 'argmax' or None, got {reduce!r}")
    box = _footprint(np.linalg.inv(index_to_norm), shape)
    if box is None:
        return out  # the scan and the model grid do not overlap
    zs, ys, xs = box
    step = max(1, chunk_voxels // max(1, (ys.stop - ys.start) * (xs.stop - xs.start)))
    if reduce == "argmax":
        winners = _cell_winners(torch_values)
    for z0 in range(zs.start, zs.stop, step):
        z1 = min(zs.stop, z0 + step)
        part = (slice(z0, z1), ys, xs)
        if reduce == "argmax":
            labels = _argmax_sample(torch_values, winners, index_to_norm, grid.shape, part)
            out[part] = labels.cpu().numpy().astype(out_dtype)
            continue
        sampled, inside = _sample(torch_values, index_to_norm, shape, "bilinear", part)
        block = torch.where(inside[None], sampled, torch.full_like(sampled, fill))
        out[(slice(None), *part)] = block.cpu().numpy()
    return out


def _cell_winners(values: Any) -> tuple[Any, Any]:
    """Per model voxel its argmax, and per cell (2x2x2 voxels) whether all 8 agree.

    Where they agree, trilinear interpolation cannot change the winner (each corner's
    winning probability is at least every other class's, so their weighted sums are too).
    """
    import torch

    # A pass per channel over contiguous memory beats argmax(dim=0)'s strided walk (10x).
    best = values[0].clone()
    labels = torch.zeros(values.shape[1:], dtype=torch.int64, device=values.device)
    for channel in range(1, values.shape[0]):
        better = values[channel] > best
        best = torch.where(better, values[channel], best)
        labels = torch.where(better, channel, labels)
    corner = labels[:-1, :-1, :-1]
    uniform = torch.ones_like(corner, dtype=torch.bool)
    for dz in (0, 1):
        for dy in (0, 1):
            for dx in (0, 1):
                if dz or dy or dx:
                    shifted = labels[dz : dz + corner.shape[0], dy : dy + corner.shape[1],
                                     dx : dx + corner.shape[2]]  # fmt: skip
                    uniform &= shifted == corner
    return labels, uniform


def _argmax_sample(values: Any, winners: tuple[Any, Any], index_to_norm: np.ndarray,
                   grid_shape: tuple[int, ...], box: tuple[slice, ...]) -> Any:  # fmt: skip
    """argmax of trilinearly sampled ``values`` at the target voxels in ``box``; 0 outside.

    Equal to sampling every channel and taking the argmax, but only voxels in cells whose
    corners disagree (class boundaries) are interpolated.
    """
    import torch
    import torch.nn.functional as F

    labels, uniform = winners
    device = values.device
    to_index = torch.as_tensor(np.linalg.inv(_normaliser(grid_shape)) @ index_to_norm,
                               device=device, dtype=torch.float64)  # fmt: skip
    axes = []
    for column, part in ((0, box[2]), (1, box[1]), (2, box[0])):
        steps = torch.arange(part.start, part.stop, device=device, dtype=torch.float64)
        axes.append((steps[:, None] * to_index[:3, column]).to(torch.float32))
    x_part, y_part, z_part = axes
    offset = to_index[:3, 3].to(torch.float32)
    points = (
        z_part[:, None, None, :] + y_part[None, :, None, :] + (x_part + offset)[None, None, :, :]
    ).reshape(-1, 3)  # model index (x, y, z) of every target voxel  # fmt: skip
    size = torch.tensor(grid_shape[::-1], device=device, dtype=torch.float32)
    inside = ((points >= -1e-4) & (points <= size - 1 + 1e-4)).all(dim=1)
    cell = torch.minimum(points.floor().clamp_(min=0), size - 2).to(torch.int64)
    nz, ny, nx = grid_shape
    flat_voxel = (cell[:, 2] * ny + cell[:, 1]) * nx + cell[:, 0]
    flat_cell = (cell[:, 2] * (ny - 1) + cell[:, 1]) * (nx - 1) + cell[:, 0]
    out = labels.reshape(-1)[flat_voxel]
    out[~inside] = 0
    hard = torch.nonzero(inside & ~uniform.reshape(-1)[flat_cell]).squeeze(1)
    if hard.numel():
        norm = points[hard] * (2.0 / (size - 1)) - 1.0
        sampled = F.grid_sample(
            values[None].float(), norm[None, None, None], mode="bilinear",
            padding_mode="border", align_corners=True,
        )[0, :, 0, 0]  # fmt: skip
        out[hard] = sampled.argmax(dim=0)
    shape = tuple(part.stop - part.start for part in box)
    return out.reshape(shape)
