"""DICOM SEG export: valid for dciodvfy, voxel-exact round trip, references to the source series.

Each series is a simulated subject at 4 mm written by ``write_dicom_series`` (shuffled file
names, so slice order must come from positions) and read back by ``load_dicom``; the labels
are the subject's own ground truth on that grid.
"""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from napari_mrisynth.anatomy import LABELS
from napari_mrisynth.cohort import simulate_subject
from napari_mrisynth.errors import GeometryError
from napari_mrisynth.io.dicom import load_dicom
from napari_mrisynth.io.dicom_seg import DicomSegError, read_dicom_seg, write_dicom_seg
from napari_mrisynth.io.dicom_write import write_dicom_series
from napari_mrisynth.volume import Volume, reorient_to_patient_axes
from tests.support.validators import dciodvfy

#: A few labels of the schema, inside and outside the brain.
KEPT = (2, 3, 11, 12, 16)

#: x (rows) along posterior, y (columns) inferior, slice normal to patient right.
SAGITTAL = np.column_stack([[0.0, 1.0, 0.0], [0.0, 0.0, -1.0], [-1.0, 0.0, 0.0]])


def _rotation(degrees_xyz) -> np.ndarray:
    out = np.eye(3)
    for axis, angle in enumerate(np.radians(degrees_xyz)):
        c, s = np.cos(angle), np.sin(angle)
        i, j = [a for a in range(3) if a != axis]
        r = np.eye(3)
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        out = r @ out
    return out


OBLIQUE = _rotation((12.0, -8.0, 20.0))


class Case:
    """A source series on disk, its loaded Volume and ground-truth labels on its grid."""

    def __init__(self, root: Path, name: str, direction: np.ndarray, seed: int):
        subject = simulate_subject(f"sub-{seed:03d}", "bvFTD", seed, spacing=4.0)
        t1 = Volume(subject.t1.data, subject.t1.spacing, subject.t1.origin, direction)
        self.files = write_dicom_series(
            t1, root / name, file_names="shuffled", seed=seed, description=f"T1 {name}"
        )
        self.volume = load_dicom(root / name)
        assert self.volume.same_geometry(t1)
        data = np.asarray(subject.labels.data).copy()
        data[~np.isin(data, KEPT)] = 0
        self.labels = self.volume.with_data(data)
        self.source = [pydicom.dcmread(f, stop_before_pixels=True) for f in self.files]
        self.seg = write_dicom_seg(
            self.labels,
            self.files,
            root / f"{name}_seg.dcm",
            segments=LABELS,
            algorithm="seg-head-demo@1.0.0",
            uid_seed=name,
        )


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> dict[str, Case]:
    root = tmp_path_factory.mktemp("seg")
    return {
        "axial": Case(root, "axial", np.eye(3), 1),
        "oblique": Case(root, "oblique", OBLIQUE, 2),
        "sagittal": Case(root, "sagittal", SAGITTAL, 3),
    }


@pytest.mark.parametrize("name", ["axial", "oblique", "sagittal"])
def test_seg_passes_dciodvfy(cases, name):
    errors, _ = dciodvfy(cases[name].seg)
    assert errors == []


@pytest.mark.parametrize("name", ["axial", "oblique", "sagittal"])
def test_round_trip_is_voxel_exact(cases, name):
    case = cases[name]
    expected = np.asarray(case.labels.data)
    for source in (None, case.files):
        labels, names = read_dicom_seg(case.seg, source)
        assert labels.shape == case.volume.shape
        np.testing.assert_array_equal(labels, expected)
        assert names == {v: LABELS[v][0] for v in KEPT}


@pytest.mark.parametrize("name", ["axial", "oblique", "sagittal"])
def test_seg_references_source_series_and_describes_segments(cases, name):
    case = cases[name]
    ds = pydicom.dcmread(case.seg)
    first = case.source[0]
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    assert ds.SegmentationType == "BINARY"
    assert ds.StudyInstanceUID == first.StudyInstanceUID
    assert ds.FrameOfReferenceUID == first.FrameOfReferenceUID
    assert ds.PatientID == first.PatientID
    assert ds.SeriesInstanceUID != first.SeriesInstanceUID
    (referenced,) = ds.ReferencedSeriesSequence
    assert referenced.SeriesInstanceUID == first.SeriesInstanceUID
    assert {item.ReferencedSOPInstanceUID for item in referenced.ReferencedInstanceSequence} == {
        d.SOPInstanceUID for d in case.source
    }

    assert len(ds.SegmentSequence) == len(KEPT)
    for item, value in zip(ds.SegmentSequence, KEPT, strict=True):
        name_, rgb = LABELS[value]
        assert item.SegmentLabel == name_
        assert item.TrackingID == f"mrisynth label {value}"
        assert item.SegmentAlgorithmType == "AUTOMATIC"
        assert item.SegmentAlgorithmName == "seg-head-demo"
        assert item.SegmentationAlgorithmIdentificationSequence[0].AlgorithmVersion == "1.0.0"
        shown = hd.color.CIELabColor.from_dicom_value(item.RecommendedDisplayCIELabValue)
        assert np.abs(np.subtract(shown.to_rgb(), rgb)).max() <= 1
        assert item.SegmentedPropertyCategoryCodeSequence[0].CodingSchemeDesignator == "SCT"
    types = {
        item.SegmentLabel: item.SegmentedPropertyTypeCodeSequence[0] for item in ds.SegmentSequence
    }
    assert types["lateral_ventricles"].CodeValue == "66720007"  # SCT lateral ventricle
    assert types["white_matter"].CodeValue == "68523003"  # SCT cerebral white matter
    regions = {
        item.SegmentLabel: item.AnatomicRegionSequence[0].CodeMeaning
        for item in ds.SegmentSequence
        if "AnatomicRegionSequence" in item
    }
    assert regions["orbitomedial_frontal_gm"] == "Frontal lobe"
    assert regions["insula_gm"] == "Insula"


@pytest.mark.parametrize("name", ["axial", "oblique", "sagittal"])
def test_frames_sit_on_their_source_slices_and_empty_frames_are_omitted(cases, name):
    case = cases[name]
    ds = pydicom.dcmread(case.seg)
    data = np.asarray(case.labels.data)
    segment_of = {value: number for number, value in enumerate(KEPT, start=1)}
    position_of = {d.SOPInstanceUID: np.asarray(d.ImagePositionPatient, float) for d in case.source}
    expected_frames = sum(int(np.any(data[k] == v)) for v in KEPT for k in range(data.shape[0]))
    assert int(ds.NumberOfFrames) == expected_frames
    frames = ds.pixel_array.reshape(expected_frames, *data.shape[1:])
    for frame, item in zip(frames, ds.PerFrameFunctionalGroupsSequence, strict=True):
        number = item.SegmentIdentificationSequence[0].ReferencedSegmentNumber
        source_uid = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        position = np.asarray(item.PlanePositionSequence[0].ImagePositionPatient, float)
        np.testing.assert_allclose(position, position_of[source_uid], atol=1e-3)
        # the slice of the volume at this position holds exactly the frame's voxels
        k = int(
            np.rint(
                np.linalg.solve(
                    case.volume.direction * case.volume.spacing, position - case.volume.origin
                )[2]
            )
        )
        value = {n: v for v, n in segment_of.items()}[number]
        np.testing.assert_array_equal(frame.astype(bool), data[k] == value)
        assert frame.any()


def test_corrected_seg_names_annotator_and_algorithm_type(cases, tmp_path):
    case = cases["axial"]
    semi = write_dicom_seg(
        case.labels, case.files, tmp_path / "semi.dcm", segments=LABELS,
        algorithm="seg-head-demo@1.0.0", manual=True, annotator="Doe^Jane",
    )  # fmt: skip
    manual = write_dicom_seg(
        case.labels, case.files, tmp_path / "manual.dcm", segments=LABELS, manual=True
    )
    for path, kind in ((semi, "SEMIAUTOMATIC"), (manual, "MANUAL")):
        assert dciodvfy(path)[0] == []
        ds = pydicom.dcmread(path)
        assert {item.SegmentAlgorithmType for item in ds.SegmentSequence} == {kind}
    assert str(pydicom.dcmread(semi).ContentCreatorName) == "Doe^Jane"


def test_labels_in_display_orientation_are_put_back_exactly(cases, tmp_path):
    case = cases["sagittal"]
    display = reorient_to_patient_axes(case.labels)
    assert display.shape != case.labels.shape  # really another array layout
    path = write_dicom_seg(display, case.files, tmp_path / "d.dcm", segments=LABELS, manual=True)
    labels, _ = read_dicom_seg(path)
    np.testing.assert_array_equal(labels, np.asarray(case.labels.data))


def test_value_without_a_name_is_kept_as_label_n(cases, tmp_path):
    case = cases["axial"]
    data = np.zeros(case.volume.shape, np.uint8)
    data[10:12, 20:25, 20:30] = 42
    data[30, 30, 30] = 3
    path = write_dicom_seg(
        case.volume.with_data(data), case.files, tmp_path / "n.dcm", segments=LABELS, manual=True
    )
    labels, names = read_dicom_seg(path, case.files)
    np.testing.assert_array_equal(labels, data)
    assert names == {3: "insula_gm", 42: "label 42"}
    assert dciodvfy(path)[0] == []


def test_wrong_grid_or_nothing_to_write_is_refused_naming_the_file(cases, tmp_path):
    case = cases["axial"]
    out = tmp_path / "x.dcm"
    moved = Volume(case.labels.data, case.volume.spacing, case.volume.origin + [0, 0, 4.0])
    with pytest.raises(GeometryError, match=r"x\.dcm.*not the source grid"):
        write_dicom_seg(moved, case.files, out, segments=LABELS, manual=True)
    with pytest.raises(GeometryError, match=r"x\.dcm.*do not match the source"):
        small = Volume(np.ones((3, 4, 5), np.uint8), case.volume.spacing, case.volume.origin)
        write_dicom_seg(small, case.files, out, segments=LABELS, manual=True)
    tilted = Volume(case.labels.data, case.volume.spacing, case.volume.origin, OBLIQUE)
    with pytest.raises(GeometryError, match="not those of the source series"):
        write_dicom_seg(tilted, case.files, out, segments=LABELS, manual=True)
    empty = case.volume.with_data(np.zeros(case.volume.shape, np.uint8))
    with pytest.raises(DicomSegError, match=r"x\.dcm.*nothing to write"):
        write_dicom_seg(empty, case.files, out, segments=LABELS, manual=True)
    with pytest.raises(DicomSegError, match="needs the algorithm"):
        write_dicom_seg(case.labels, case.files, out, segments=LABELS)
    with pytest.raises(DicomSegError, match="2 series"):
        other = cases["oblique"].files[:1]
        write_dicom_seg(case.labels, [*case.files, *other], out, segments=LABELS, manual=True)
    assert not out.exists()
