"""Label volumes as DICOM Segmentation objects (highdicom) that reference their source series.

A SEG written here is BINARY, one segment per label value present, each with its name,
SNOMED CT category/type codes (brain structures where the name is one of the cohort's),
its recommended display colour (CIELab) and, in Tracking ID, the label value it came from,
so that :func:`read_dicom_seg` restores the original values exactly. Empty frames are
omitted. The labels must lie on the source series' own grid: the grid of the Volume that
:func:`napari_mrisynth.io.dicom.load_series` makes from the same files (slice ``k`` of the
volume is the ``k``-th file along the slice normal).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_mrisynth.errors import DicomFileError, GeometryError, MrisynthError
from napari_mrisynth.volume import Volume, is_axis_aligned, onto_grid, reorient_to_axes

#: RGB colour (0-255) of a segment whose label value has no entry in ``segments``.
UNNAMED_COLOR = (128, 128, 128)

#: Position tolerance (mm) between a source slice and the labels' grid: DS strings carry
#: about six decimals; a mismatch larger than this is another grid.
POSITION_TOLERANCE_MM = 1e-2

#: Direction-cosine tolerance between the source orientation and the labels' grid.
ORIENTATION_TOLERANCE = 1e-4

_TRACKING_PREFIX = "mrisynth label "
_RGB = tuple[int, int, int]


class DicomSegError(MrisynthError):
    """A DICOM SEG cannot be written or read: nothing to write, unsuitable source files."""


# -- coded concepts --------------------------------------------------------------------------
def _codes_for(name: str) -> tuple[Any, Any, list[Any]]:
    """(category, type, anatomic regions) codes for a label name (SNOMED CT).

    Names of the simulated cohort's schema map to brain structures; anything else is
    described as "Tissue" and named only by its segment label.
    """
    from pydicom.sr.codedict import codes

    sct = codes.SCT
    anatomy, tissue, substance = sct.AnatomicalStructure, sct.Tissue, sct.BodySubstance
    cortex = sct.CerebralCortex
    key = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    table: dict[str, tuple[Any, Any, list[Any]]] = {
        "frontal_gm": (anatomy, cortex, [sct.FrontalLobe]),
        "orbitomedial_frontal_gm": (anatomy, cortex, [sct.FrontalLobe]),
        "insula_gm": (anatomy, cortex, [sct.Insula]),
        "anterior_temporal_gm": (anatomy, cortex, [sct.TemporalLobe]),
        "temporal_gm": (anatomy, cortex, [sct.TemporalLobe]),
        "parietal_gm": (anatomy, cortex, [sct.ParietalLobe]),
        "occipital_gm": (anatomy, cortex, [sct.OccipitalLobe]),
        "cingulate_gm": (anatomy, cortex, [sct.Cingulum]),
        "deep_gm": (anatomy, sct.GrayMatter, [sct.Brain]),
        "cerebellum": (anatomy, sct.Cerebellum, []),
        "white_matter": (anatomy, sct.CerebralWhiteMatter, []),
        "lateral_ventricles": (anatomy, sct.LateralVentricle, []),
        "sulcal_csf": (substance, sct.CerebrospinalFluid, [sct.SubarachnoidSpace]),
        "extracerebral_csf": (substance, sct.CerebrospinalFluid, [sct.SubarachnoidSpace]),
        "spinal_cord": (anatomy, sct.SpinalCord, []),
        "bone": (tissue, sct.Bone, [sct.Head]),
        "soft_tissue": (tissue, sct.SoftTissue, [sct.Head]),
        "eyes": (anatomy, sct.Eye, []),
        "brain": (anatomy, sct.Brain, []),
        "brain_mask": (anatomy, sct.Brain, []),
    }
    return table.get(key, (tissue, tissue, []))


def _algorithm_identification(algorithm: str) -> Any:
    """``"name@version"`` (a registry reference) as an AlgorithmIdentificationSequence."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    name, _, version = algorithm.partition("@")
    return hd.AlgorithmIdentificationSequence(
        name=name[:64] or "unnamed",
        family=codes.DCM.ArtificialIntelligence,
        version=(version or "unversioned")[:64],
        source="napari-mrisynth model registry",
    )


# -- source series ---------------------------------------------------------------------------
def _read_sources(source_files: Sequence[Path], context: Path) -> list[Any]:
    """Source headers (no pixels), sorted along the slice normal as ``load_series`` sorts."""
    import pydicom

    if not source_files:
        raise DicomSegError(f"{context}: no source DICOM files given")
    datasets = []
    for path in source_files:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception as exc:  # pydicom raises many types for a damaged file
            raise DicomFileError(path, f"cannot read the source image: {exc}") from exc
        frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
        if frames != 1:
            raise DicomSegError(
                f"{path}: a multi-frame source ({frames} frames); SEG export supports "
                "series of single-frame images"
            )
        for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "SOPInstanceUID"):
            if keyword not in ds:
                raise DicomFileError(path, f"source image has no {keyword}")
        datasets.append(ds)
    series = {str(ds.SeriesInstanceUID) for ds in datasets}
    if len(series) != 1:
        raise DicomSegError(
            f"{context}: the source files belong to {len(series)} series ({', '.join(series)})"
        )
    iop = np.asarray(datasets[0].ImageOrientationPatient, dtype=np.float64)
    normal = np.cross(iop[:3], iop[3:])
    along = [
        float(np.asarray(ds.ImagePositionPatient, dtype=np.float64) @ normal) for ds in datasets
    ]
    order = sorted(
        range(len(datasets)), key=lambda k: (along[k], int(datasets[k].get("InstanceNumber") or 0))
    )
    return [datasets[k] for k in order]


def _source_grid(labels: Volume, datasets: list[Any]) -> Volume:
    """The grid of ``datasets`` (voxels: a zero placeholder): their orientation, PixelSpacing
    and first position. Along the slice normal it takes the labels' own step, since
    :func:`_check_slices` checks every slice's position (a series may be unevenly spaced)."""
    first = datasets[0]
    iop = np.asarray(first.ImageOrientationPatient, dtype=np.float64)
    row, col = iop[:3] / np.linalg.norm(iop[:3]), iop[3:] / np.linalg.norm(iop[3:])
    direction = np.column_stack([row, col, np.cross(row, col)])
    pixel_spacing = np.asarray(first.PixelSpacing, dtype=np.float64)  # (row step, column step)
    along_normal = int(np.argmax(np.abs(labels.direction.T @ direction[:, 2])))
    spacing = [pixel_spacing[1], pixel_spacing[0], labels.spacing[along_normal]]
    shape = (len(datasets), int(first.Rows), int(first.Columns))
    placeholder = np.broadcast_to(np.zeros(1, np.uint8), shape)
    origin = np.asarray(first.ImagePositionPatient, dtype=np.float64)
    return Volume(placeholder, spacing, origin, direction)


def _source_grid_volume(labels: Volume, datasets: list[Any], context: Path) -> Volume:
    """``labels`` on the grid of ``datasets``: as given, or exactly reordered (transpose and
    flips) when it is the same grid displayed along other axes; GeometryError otherwise."""
    grid = _source_grid(labels, datasets)
    try:
        volume = onto_grid(
            labels,
            grid,
            labels=True,
            resample=False,
            axis_tol=ORIENTATION_TOLERANCE,
            atol=POSITION_TOLERANCE_MM,
        )
    except GeometryError as exc:
        # say what differs: the axes, or (reordered onto them) the shape, spacing or positions
        if not is_axis_aligned(grid.direction.T @ labels.direction, ORIENTATION_TOLERANCE):
            raise GeometryError(
                f"{context}: the labels' axes {np.round(labels.direction, 4).tolist()} are not "
                f"those of the source series {np.round(grid.direction, 4).tolist()} (nor a "
                "reordering of them); resample the labels onto the source grid first"
            ) from exc
        _check_slices(reorient_to_axes(labels, grid.direction), datasets, context)
        raise GeometryError(f"{context}: {exc}") from exc
    _check_slices(volume, datasets, context)
    return volume


def _check_slices(volume: Volume, datasets: list[Any], context: Path) -> None:
    """GeometryError unless ``volume`` (in the source's index order) has the shape, pixel
    spacing and slice positions of ``datasets``."""
    first = datasets[0]
    nz, ny, nx = volume.shape
    rows, columns = int(first.Rows), int(first.Columns)
    if (len(datasets), rows, columns) != (nz, ny, nx):
        raise GeometryError(
            f"{context}: labels of shape {volume.shape} (z, y, x) do not match the source "
            f"series of {len(datasets)} slices of {rows} x {columns}"
        )
    pixel_spacing = np.asarray(first.PixelSpacing, dtype=np.float64)  # (row step, column step)
    if not np.allclose(pixel_spacing, volume.spacing[[1, 0]], atol=1e-4):
        raise GeometryError(
            f"{context}: labels spacing {volume.spacing[:2].tolist()} (x, y) does not match the "
            f"source PixelSpacing {pixel_spacing.tolist()} (row, column)"
        )
    expected = volume.index_to_lps(np.stack([np.zeros(nz), np.zeros(nz), np.arange(nz)], 1))
    found = np.array([np.asarray(ds.ImagePositionPatient, dtype=np.float64) for ds in datasets])
    error = np.linalg.norm(found - expected, axis=1)
    worst = int(np.argmax(error))
    if error[worst] > POSITION_TOLERANCE_MM:
        raise GeometryError(
            f"{context}: source slice {worst} ({Path(datasets[worst].filename).name}) lies at "
            f"{np.round(found[worst], 3).tolist()} mm, the labels' slice {worst} at "
            f"{np.round(expected[worst], 3).tolist()} mm: not the source grid"
        )


# -- writing ---------------------------------------------------------------------------------
def write_dicom_seg(
    labels: Volume,
    source_files: Sequence[str | Path],
    out_path: str | Path,
    *,
    segments: Mapping[int, tuple[str, tuple[int, int, int]]],
    algorithm: str | None = None,
    manual: bool = False,
    annotator: str | None = None,
    series_description: str = "Segmentation (napari-mrisynth)",
    series_number: int = 300,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    uid_seed: str | None = None,
) -> Path:
    """Write ``labels`` as a BINARY DICOM SEG referencing the source series.

    Parameters
    ----------
    labels : Volume
        Integer label voxels on the source series' grid (as loaded from ``source_files``);
        a reordering of that grid (e.g. a napari layer's patient-axis view) is accepted
        and put back exactly.
    source_files : sequence of path
        The single-frame DICOM images of the source series (any order).
    out_path : path
        The SEG file to write (parent folders are created).
    segments : mapping
        Label value -> (name, RGB 0-255). Values present in ``labels`` but missing here are
        written as ``"label <value>"`` in grey; absent values are skipped.
    algorithm : str, optional
        The model reference (``"id@version"``) that produced the labels.
    manual : bool
        True when an annotator corrected the labels: SEMIAUTOMATIC with an algorithm,
        MANUAL without; otherwise AUTOMATIC (which needs ``algorithm``).
    annotator : str, optional
        Content Creator's Name.
    series_description, series_number : str, int
        Of the new SEG series.
    series_uid, sop_uid : str, optional
        UIDs for the SEG; derived from ``uid_seed`` when given (reproducible), else random.

    Returns
    -------
    Path
        ``out_path``.

    Raises
    ------
    GeometryError
        The labels are not on the source grid.
    DicomSegError
        No label voxels, non-integer labels, AUTOMATIC without an algorithm, or unsuitable
        source files (several series, multi-frame).
    DicomFileError
        A source file cannot be read.
    """
    import highdicom as hd
    from pydicom.uid import generate_uid

    from napari_mrisynth._version import __version__

    out_path = Path(out_path)
    if np.dtype(labels.dtype).kind not in "iub":
        raise DicomSegError(f"{out_path}: labels must be integers, got {labels.dtype}")
    datasets = _read_sources([Path(f) for f in source_files], out_path)
    volume = _source_grid_volume(labels, datasets, out_path)
    data = np.asarray(volume.compute().data)
    values = [int(v) for v in np.unique(data) if v != 0]
    if not values:
        raise DicomSegError(f"{out_path}: the labels are all background; nothing to write")
    if not manual and algorithm is None:
        raise DicomSegError(
            f"{out_path}: an automatic segmentation needs the algorithm (model reference)"
        )
    if manual:
        kind = (
            hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC
            if algorithm
            else (hd.seg.SegmentAlgorithmTypeValues.MANUAL)
        )
    else:
        kind = hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
    identification = _algorithm_identification(algorithm) if algorithm else None

    def uid(*parts: object) -> str:
        if uid_seed is None:
            return generate_uid()
        return generate_uid(entropy_srcs=[str(uid_seed), *map(str, parts)])

    descriptions = []
    segment_of = np.zeros(int(data.max()) + 1, dtype=np.uint16)
    for number, value in enumerate(values, start=1):
        name, rgb = segments.get(value, (f"label {value}", UNNAMED_COLOR))
        category, property_type, regions = _codes_for(name)
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=str(name)[:64],
                segmented_property_category=category,
                segmented_property_type=property_type,
                algorithm_type=kind,
                algorithm_identification=identification,
                tracking_id=f"{_TRACKING_PREFIX}{value}",
                tracking_uid=uid("tracking", value, name),
                anatomic_regions=regions or None,
                display_color=hd.color.CIELabColor.from_rgb(*(int(c) for c in rgb[:3])),
            )
        )
        segment_of[value] = number
    pixels = segment_of[data.astype(np.intp, copy=False)].astype(
        np.uint8 if len(values) < 256 else np.uint16
    )
    seg = hd.seg.Segmentation(
        source_images=datasets,
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=series_uid or uid("series"),
        series_number=int(series_number),
        sop_instance_uid=sop_uid or uid("sop"),
        instance_number=1,
        manufacturer="napari-mrisynth",
        manufacturer_model_name="napari-mrisynth",
        software_versions=str(__version__),
        device_serial_number="none",
        content_description=(
            f"corrected by {annotator}" if manual and annotator else series_description
        )[:64],
        content_creator_name=annotator or None,
        content_label="MRISYNTH_SEG",
        omit_empty_frames=True,
    )
    seg.SeriesDescription = series_description[:64]
    out_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        seg.save_as(out_path)
    except OSError as exc:
        raise DicomSegError(f"{out_path}: cannot write: {exc}") from exc
    return out_path


# -- reading ---------------------------------------------------------------------------------
def read_dicom_seg(
    path: str | Path, source_files: Sequence[str | Path] | None = None
) -> tuple[np.ndarray, dict[int, str]]:
    """Labels of a DICOM SEG on its source grid, and the name of every label value.

    Parameters
    ----------
    path : path
        A DICOM Segmentation.
    source_files : sequence of path, optional
        The source series; slices are then ordered along the slice normal, as
        :func:`napari_mrisynth.io.dicom.load_series` orders them. Without them the order of
        the SEG's referenced instances is used, which :func:`write_dicom_seg` writes in
        slice order.

    Returns
    -------
    labels : ndarray (nz, ny, nx)
        Label values (the original values when the SEG was written by this package,
        otherwise segment numbers); 0 where no segment is set.
    names : dict
        Label value -> segment label.

    Raises
    ------
    DicomSegError
        The file is not a readable Segmentation, or references no single source series.
    """
    import highdicom as hd

    path = Path(path)
    try:
        seg = hd.seg.segread(path)
    except Exception as exc:  # pydicom/highdicom raise many types for a wrong file
        raise DicomSegError(f"{path}: not a readable DICOM Segmentation: {exc}") from exc
    if source_files is not None:
        uids = [
            str(ds.SOPInstanceUID) for ds in _read_sources([Path(f) for f in source_files], path)
        ]
    else:
        referenced = seg.get("ReferencedSeriesSequence") or []
        if len(referenced) != 1:
            raise DicomSegError(
                f"{path}: references {len(referenced)} series; pass the source files"
            )
        uids = [
            str(item.ReferencedSOPInstanceUID) for item in referenced[0].ReferencedInstanceSequence
        ]
    pixels = seg.get_pixels_by_source_instance(
        uids, combine_segments=True, relabel=False, assert_missing_frames_are_empty=True
    )
    value_of: dict[int, int] = {}
    names: dict[int, str] = {}
    for number in seg.get_segment_numbers():
        description = seg.get_segment_description(number)
        tracking = str(description.get("TrackingID", ""))
        value = number
        if tracking.startswith(_TRACKING_PREFIX) and tracking[len(_TRACKING_PREFIX) :].isdigit():
            value = int(tracking[len(_TRACKING_PREFIX) :])
        value_of[number] = value
        names[value] = str(description.SegmentLabel)
    lookup = np.zeros(max(value_of, default=0) + 1, dtype=np.int64)
    for number, value in value_of.items():
        lookup[number] = value
    top = max(names, default=0)
    dtype = np.uint8 if top < 256 else np.uint16 if top < 65536 else np.int64
    labels = lookup[np.asarray(pixels, dtype=np.intp)].astype(dtype)
    return labels, names


__all__ = ["DicomSegError", "read_dicom_seg", "write_dicom_seg"]
