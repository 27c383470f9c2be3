"""The geometry of one stack of slices: orientation, sorting along the slice normal, spacing
from the positions, and the checks (missing slice, non-uniform spacing, shear from a gantry
tilt, duplicate positions) that decide whether it is a regular grid.

A series that shares one SeriesInstanceUID is split into stacks of one geometry
(orientation, matrix, pixel size); localizers and other orientations become stacks apart.
"""

from __future__ import annotations

import math
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_mrisynth.io.dicom._walker import (
    Header,
)
from napari_mrisynth.io.dicom.headers import fmt
from napari_mrisynth.volume import orientation_code

#: Two slices closer than this along the normal (mm) are at the same position.
DUPLICATE_TOLERANCE_MM = 1e-3


#: Relative and absolute tolerance on slice spacing; a missing slice changes it by 100 %.
SPACING_RTOL = 0.01


SPACING_ATOL_MM = 0.02  # positions rounded to 0.01 mm (some vendors) scatter this much


#: Linear in-plane drift across the stack (pixels) above which it is sheared (gantry tilt).
SHEAR_TOLERANCE_PIXELS = 0.05


#: ... or one slice this far off the normal through the first (pixels).
OUTLIER_PIXELS = 0.5


@dataclass
class Series:
    """One stack of images that forms (or should form) a volume.

    ``problems`` lists everything a reader of the volume should know, each message naming
    the positions and spacings found. ``irregular`` is ``""`` for a regular stack,
    ``"resample"`` when ``load_series(resample=True)`` can fix it (missing slice,
    non-uniform spacing, shear) and ``"refuse"`` when nothing can (duplicate positions).
    A problem may leave the stack regular: a multi-frame object without per-frame
    positions loads with the geometry the message describes.
    """

    uid: str
    number: int | None
    description: str
    modality: str
    stack: int
    key: str
    files: list[Path]
    shape: tuple[int, int, int]
    spacing: np.ndarray
    origin: np.ndarray
    direction: np.ndarray
    problems: list[str] = field(default_factory=list)
    irregular: str = ""
    headers: list[Header] = field(default_factory=list, repr=False)

    @property
    def regular(self) -> bool:
        """True when the slices form a regular grid (no gap, shear or duplicate)."""
        return not self.irregular

    @property
    def positions(self) -> np.ndarray:
        """ImagePositionPatient of every slice in stack order, shape (nz, 3)."""
        return np.array([h.ipp for h in self.headers], dtype=np.float64)

    @property
    def name(self) -> str:
        """Series number and description, for layer names and file names."""
        parts = [str(self.number) if self.number is not None else "", self.description]
        name = " ".join(p for p in parts if p) or self.uid or "series"
        return f"{name} (stack {self.stack})" if self.stack else name

    def describe(self) -> str:
        """One line for listings: key, number, description, size, spacing, orientation."""
        nz, ny, nx = self.shape
        sx, sy, sz = (f"{v:.4g}" for v in self.spacing)
        text = (
            f"{self.key}  #{self.number if self.number is not None else '-'} "
            f"{self.description!r} {self.modality} {ny}x{nx}x{nz} (rows x cols x slices) "
            f"spacing {sy}x{sx}x{sz} mm {orientation_code(self.direction)}"
        )
        if self.problems:
            text += "  [" + "; ".join(self.problems) + "]"
        return text


#: Cosines and pixel sizes closer than this are one geometry (scanners jitter by ~1e-6).
GEOMETRY_TOLERANCE = 1e-4


#: |row . column| above this is a non-orthogonal grid, refused; below, re-orthogonalised.
ORTHOGONALITY_TOLERANCE = 1e-3


def _close(a: tuple | None, b: tuple | None) -> bool:
    if a == b:
        return True
    if a is None or b is None or len(a) != len(b):
        return False
    return all(abs(x - y) <= GEOMETRY_TOLERANCE for x, y in zip(a, b, strict=True))


def _same_stack(a: Header, b: Header) -> bool:
    return (
        a.rows == b.rows
        and a.columns == b.columns
        and ("LOCALIZER" in a.image_type) == ("LOCALIZER" in b.image_type)
        and _close(a.iop, b.iop)
        and _close(a.pixel_spacing, b.pixel_spacing)
    )


def split_stacks(uid: str, headers: list[Header]) -> list[Series]:
    """Stacks of one geometry (orientation, matrix, pixel size, localizer or not)."""
    groups: list[list[Header]] = []
    for h in headers:
        for group in groups:
            if _same_stack(group[0], h):
                group.append(h)
                break
        else:
            groups.append([h])
    groups.sort(key=lambda g: ("LOCALIZER" in g[0].image_type, -len(g), g[0].path))
    split = len(groups) > 1
    return [
        _build_series(uid, stack, f"{uid}#{stack}" if split and stack else uid, group)
        for stack, group in enumerate(groups)
    ]


def _finite(values: tuple | None, count: int) -> bool:
    return values is not None and len(values) == count and all(map(math.isfinite, values))


def _orientation(h: Header) -> tuple[np.ndarray | None, str]:
    """Row and column cosines of ``h`` as a 3x3 direction, or None and why not."""
    iop = h.iop
    name = os.path.basename(h.path)
    if not _finite(iop, 6):
        return None, f"ImageOrientationPatient {iop} in {name} is not six finite numbers"
    row, col = np.array(iop[:3], dtype=float), np.array(iop[3:], dtype=float)
    lengths = np.linalg.norm(row), np.linalg.norm(col)
    if min(lengths) < 0.9 or max(lengths) > 1.1:
        return None, (
            f"ImageOrientationPatient {fmt(iop)} in {name} is not two unit vectors "
            f"(lengths {lengths[0]:.3f} and {lengths[1]:.3f})"
        )
    row /= lengths[0]
    col /= lengths[1]
    dot = float(row @ col)
    if abs(dot) > ORTHOGONALITY_TOLERANCE:
        return None, (
            f"ImageOrientationPatient {fmt(iop)} in {name}: row and column cosines are not "
            f"orthogonal (angle {math.degrees(math.acos(max(-1.0, min(1.0, dot)))):.2f} deg)"
        )
    col -= dot * row  # scanners round cosines; keep the grid orthonormal
    col /= np.linalg.norm(col)
    return np.column_stack([row, col, np.cross(row, col)]), ""


def _build_series(uid: str, stack: int, key: str, headers: list[Header]) -> Series:
    first = headers[0]
    problems: list[str] = sorted({h.note for h in headers if h.note})
    refusals: list[str] = []
    pixel_spacing = first.pixel_spacing
    if pixel_spacing is None:
        problems.append("PixelSpacing missing: 1 mm pixels assumed")
        pixel_spacing = (1.0, 1.0)
    elif not _finite(pixel_spacing, 2) or min(pixel_spacing) <= 0:
        refusals.append(
            f"PixelSpacing {pixel_spacing} in {os.path.basename(first.path)} is not two "
            "positive numbers"
        )
        pixel_spacing = (1.0, 1.0)
    with_position = [h for h in headers if h.ipp is not None]
    direction, why = (None, "") if first.iop is None else _orientation(first)
    if why:
        refusals.append(why)
    if first.iop is None and not with_position:
        headers = sorted(headers, key=lambda h: (h.instance_number or 0, h.path))
        dz = float(first.spacing_between_slices or first.slice_thickness or 1.0)
        problems.append(
            "no ImagePositionPatient/ImageOrientationPatient: slices stacked by InstanceNumber "
            f"every {dz:g} mm with identity orientation (geometry unknown)"
        )
        for k, h in enumerate(headers):
            h.ipp = (0.0, 0.0, k * dz)
        direction, origin, irregular = np.eye(3), np.zeros(3), ""
    else:
        if first.iop is None:
            refusals.append("ImageOrientationPatient missing: the slice normal is unknown")
        without = [h for h in headers if not _finite(h.ipp, 3)]
        if without:
            shown = ", ".join(
                f"{os.path.basename(h.path)} ({'missing' if h.ipp is None else fmt(h.ipp)})"
                for h in without[:3]
            )
            more = f" and {len(without) - 3} more" if len(without) > 3 else ""
            refusals.append(
                f"ImagePositionPatient missing or not three finite numbers in {shown}{more}"
            )
            headers = [h for h in headers if h not in without] or headers[:1]
            if not _finite(headers[0].ipp, 3):
                headers[0].ipp = (0.0, 0.0, 0.0)
        if direction is None:
            direction = np.eye(3)
        normal = direction[:, 2]
        positions = np.array([h.ipp for h in headers], dtype=np.float64)
        along = positions @ normal
        order = sorted(
            range(len(headers)), key=lambda k: (along[k], headers[k].instance_number or 0)
        )
        headers = [headers[k] for k in order]
        positions, along = positions[order], along[order]
        headers, positions, along, dup_problems, duplicate = _drop_copies(headers, positions, along)
        problems.extend(dup_problems)
        dz, spacing_problems = _slice_spacing(positions, along, first)
        problems.extend(spacing_problems)
        shear = "" if refusals else _shear(positions, along, normal, min(pixel_spacing), dz)
        if shear:
            problems.append(shear)
        irregular = "refuse" if duplicate else ("resample" if spacing_problems or shear else "")
        origin = positions[0]
    if refusals:
        irregular = "refuse"
    problems = refusals + problems
    return Series(
        uid=uid if headers[0].series_uid else "",
        number=first.series_number,
        description=first.description,
        modality=first.modality,
        stack=stack,
        key=key,
        files=[Path(p) for p in dict.fromkeys(h.path for h in headers)],
        shape=(len(headers), first.rows, first.columns),
        spacing=np.array([pixel_spacing[1], pixel_spacing[0], dz], dtype=np.float64),
        origin=np.asarray(origin, dtype=np.float64),
        direction=direction,
        problems=problems,
        irregular=irregular,
        headers=headers,
    )


def _drop_copies(
    headers: list[Header], positions: np.ndarray, along: np.ndarray
) -> tuple[list[Header], np.ndarray, np.ndarray, list[str], str]:
    """Remove second copies of one SOP instance; report other images at one position."""
    if len(headers) < 2:
        return headers, positions, along, [], ""
    same = np.flatnonzero(np.diff(along) < DUPLICATE_TOLERANCE_MM)
    if not len(same):
        return headers, positions, along, [], ""
    copies = [k + 1 for k in same if headers[k + 1].sop_instance == headers[k].sop_instance]
    clashes = [k for k in same if headers[k + 1].sop_instance != headers[k].sop_instance]
    problems = []
    irregular = ""
    if clashes:
        irregular = "refuse"
        shown = ", ".join(
            f"{along[k]:.3f} mm (IPP {fmt(positions[k])}: {os.path.basename(headers[k].path)} "
            f"and {os.path.basename(headers[k + 1].path)})"
            for k in clashes[:3]
        )
        more = f" and {len(clashes) - 3} more" if len(clashes) > 3 else ""
        problems.append(
            f"duplicate positions: {len(clashes)} pair(s) of different images at the same "
            f"position along the normal: {shown}{more}; spacing 0 mm there"
        )
    if copies:
        problems.append(
            f"{len(copies)} duplicate file(s) of the same SOP instance ignored, e.g. "
            f"{headers[copies[0]].path}"
        )
        keep = np.setdiff1d(np.arange(len(headers)), copies)
        headers = [headers[k] for k in keep]
        positions, along = positions[keep], along[keep]
    return headers, positions, along, problems, irregular


def _slice_spacing(positions: np.ndarray, along: np.ndarray, first: Header) -> tuple[float, list]:
    """Slice spacing from positions and the gaps / non-uniform steps found."""
    if len(along) < 2:
        return float(first.spacing_between_slices or first.slice_thickness or 1.0), []
    steps = np.diff(along)
    nonzero = steps[steps >= DUPLICATE_TOLERANCE_MM]
    if not len(nonzero):
        return float(first.spacing_between_slices or first.slice_thickness or 1.0), []
    typical = statistics.median(nonzero.tolist())  # np.median imports numpy.ma: +0.1 s cold
    off = np.flatnonzero(
        (np.abs(steps - typical) > SPACING_RTOL * typical + SPACING_ATOL_MM)
        & (steps >= DUPLICATE_TOLERANCE_MM)
    )
    problems = []
    gaps, uneven = [], []
    for k in off:
        ratio = steps[k] / typical
        near = round(ratio)
        (gaps if near >= 2 and abs(ratio - near) < 0.05 else uneven).append((k, int(near)))
    if gaps:
        shown = "; ".join(
            f"{n - 1} slice(s) absent between {along[k]:.3f} and {along[k + 1]:.3f} mm along "
            f"the normal (IPP {fmt(positions[k])} to {fmt(positions[k + 1])}): spacing "
            f"{steps[k]:.3f} mm there"
            for k, n in gaps[:3]
        )
        more = f"; and {len(gaps) - 3} more" if len(gaps) > 3 else ""
        problems.append(f"missing slice: {shown}{more}; {typical:.3f} mm elsewhere")
    if uneven:
        shown = "; ".join(
            f"{steps[k]:.3f} mm between {along[k]:.3f} and {along[k + 1]:.3f} mm along the "
            f"normal (IPP {fmt(positions[k])} to {fmt(positions[k + 1])})"
            for k, _ in uneven[:3]
        )
        more = f"; and {len(uneven) - 3} more" if len(uneven) > 3 else ""
        problems.append(
            f"non-uniform spacing: {shown}{more}; median spacing {typical:.3f} mm "
            f"(range {nonzero.min():.3f}-{nonzero.max():.3f} mm)"
        )
    if not problems:  # regular: the mean step is exact where rounded positions scatter
        typical = float(along[-1] - along[0]) / len(nonzero)
    return typical, problems


def _shear(
    positions: np.ndarray, along: np.ndarray, normal: np.ndarray, pixel: float, dz: float
) -> str:
    """A message when slice positions drift in-plane (gantry tilt), else ``""``."""
    if len(positions) < 2:
        return ""
    distances = along - along[0]
    offsets = positions - positions[0] - np.outer(distances, normal)
    drift = np.linalg.norm(offsets, axis=1)
    worst = int(np.argmax(drift))
    # a tilt drifts in proportion to distance; rounded positions only scatter
    fitted = np.linalg.lstsq(distances[:, None], offsets, rcond=None)[0][0]
    linear = float(np.linalg.norm(fitted) * abs(distances[-1]))
    if linear <= SHEAR_TOLERANCE_PIXELS * pixel and drift[worst] <= OUTLIER_PIXELS * pixel:
        return ""
    distance = along[worst] - along[0]
    tilt = math.degrees(math.atan2(drift[worst], abs(distance))) if distance else 90.0
    step = np.linalg.norm(positions[1] - positions[0])
    return (
        f"sheared stack (gantry tilt about {tilt:.2f} deg): the slice at {along[worst]:.3f} mm "
        f"along the normal (IPP {fmt(positions[worst])}) lies {drift[worst]:.3f} mm off the "
        f"normal through the first slice (IPP {fmt(positions[0])}); spacing {dz:.3f} mm "
        f"along the normal, {step:.3f} mm between positions"
    )
