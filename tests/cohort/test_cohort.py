"""The simulated cohort: deterministic, exact labels, a real head around the brain, bvFTD
atrophy that the labels measure, and files a PACS-facing pipeline can read."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pydicom
import pytest
from scipy import ndimage as ndi

from napari_mrisynth.anatomy import BRAIN_LABELS, LABEL_IDS, LABELS, aal_region_label, template
from napari_mrisynth.cli import main
from napari_mrisynth.cohort import sample_subject, simulate_subject
from napari_mrisynth.volume import volume_from_nifti

SEED = 11


def _volumes_ml(subject) -> dict[str, float]:
    voxel_ml = float(np.prod(subject.labels.spacing)) / 1000.0
    counts = np.bincount(np.asarray(subject.labels.data).ravel(), minlength=max(LABELS) + 1)
    return {name: counts[k] * voxel_ml for k, (name, _) in LABELS.items()}


@pytest.fixture(scope="module")
def graded():
    """One seed, three diagnoses/severities: only the disease differs between them."""
    return {
        "control": simulate_subject("c", "control", SEED, 3.0),
        "mild": simulate_subject("m", "bvFTD", SEED, 3.0, severity=0.4),
        "severe": simulate_subject("s", "bvFTD", SEED, 3.0, severity=1.0),
    }


def test_same_seed_same_subject_other_seed_other_subject():
    a = simulate_subject("sub-001", "bvFTD", 5, 3.0)
    b = simulate_subject("sub-001", "bvFTD", 5, 3.0)
    c = simulate_subject("sub-001", "bvFTD", 6, 3.0)
    assert a.info == b.info
    np.testing.assert_array_equal(a.t1.data, b.t1.data)
    np.testing.assert_array_equal(a.labels.data, b.labels.data)
    np.testing.assert_allclose(a.t1.affine, b.t1.affine)
    assert a.info["age"] != c.info["age"] or not np.array_equal(a.t1.affine, c.t1.affine)


def test_image_labels_and_mask_share_geometry_and_schema(graded):
    subject = graded["severe"]
    assert subject.t1.dtype == np.int16
    assert subject.labels.dtype == np.uint8 and subject.brain_mask.dtype == np.uint8
    assert subject.t1.same_geometry(subject.labels)
    assert subject.t1.same_geometry(subject.brain_mask)
    labels = np.asarray(subject.labels.data)
    assert set(np.unique(labels)) <= set(LABELS)
    np.testing.assert_array_equal(subject.brain_mask.data, np.isin(labels, BRAIN_LABELS))
    assert subject.info["simulated"] is True
    assert "simulated" in subject.t1.metadata["name"]


def test_labels_are_ground_truth_for_the_image(graded):
    """T1 contrast read through the labels: WM > GM > ventricles, skull darker than scalp fat."""
    subject = graded["control"]
    t1 = np.asarray(subject.t1.data, dtype=float)
    labels = np.asarray(subject.labels.data)
    # The inside of each structure, away from partial-volume edges.
    median = {
        name: np.median(t1[ndi.binary_erosion(labels == LABEL_IDS[name])])
        for name in ("white_matter", "frontal_gm", "lateral_ventricles")
    }
    assert median["white_matter"] > 1.15 * median["frontal_gm"]
    assert median["frontal_gm"] > 1.5 * median["lateral_ventricles"]


def test_a_head_surrounds_the_brain(graded):
    subject = graded["control"]
    t1 = np.asarray(subject.t1.data, dtype=float)
    labels = np.asarray(subject.labels.data)
    mask = np.asarray(subject.brain_mask.data).astype(bool)
    voxel_ml = float(np.prod(subject.labels.spacing)) / 1000.0
    volumes = _volumes_ml(subject)
    assert 1000 < mask.sum() * voxel_ml < 2000  # a brain, not a head or a hemisphere
    for tissue in ("extracerebral_csf", "bone", "soft_tissue", "eyes"):
        assert volumes[tissue] > 5.0, tissue
    # Every direction out of the brain crosses skull then scalp within 30 mm.
    shell = ndi.binary_dilation(mask, iterations=10) & ~mask  # 30 mm at 3 mm voxels
    assert np.isin(labels[shell], [LABEL_IDS["bone"]]).mean() > 0.2
    skin = labels == LABEL_IDS["soft_tissue"]
    scalp = skin & shell
    skull = (labels == LABEL_IDS["bone"]) & shell
    assert np.median(t1[skull]) < 0.6 * np.median(t1[scalp])
    air = ~ndi.binary_dilation(labels > 0, iterations=3)
    assert np.median(t1[scalp]) > 5 * np.median(t1[air])  # a bright scalp ring over noise
    # The field of view reaches below the brain: neck, cord and vertebrae.
    assert volumes["spinal_cord"] > 0.5


def test_bvftd_atrophy_measured_from_labels(graded):
    control, mild, severe = (_volumes_ml(graded[k]) for k in ("control", "mild", "severe"))
    for region in ("orbitomedial_frontal_gm", "insula_gm", "anterior_temporal_gm", "frontal_gm"):
        assert control[region] > mild[region] > severe[region], region
    for region in ("orbitomedial_frontal_gm", "insula_gm"):
        assert severe[region] < 0.9 * control[region], region
    assert control["lateral_ventricles"] < mild["lateral_ventricles"]
    assert severe["lateral_ventricles"] > 1.3 * control["lateral_ventricles"]
    # Regions outside the pattern barely change; the head does not change at all.
    for region in ("occipital_gm", "cerebellum"):
        assert abs(severe[region] - control[region]) < 0.06 * control[region], region
    assert severe["bone"] == pytest.approx(control["bone"], rel=1e-3)


def test_controls_age():
    young = _volumes_ml(simulate_subject("y", "control", SEED, 3.0, age=50))
    old = _volumes_ml(simulate_subject("o", "control", SEED, 3.0, age=80))
    cortex = ("frontal_gm", "orbitomedial_frontal_gm", "parietal_gm", "temporal_gm")
    assert sum(old[r] for r in cortex) < 0.97 * sum(young[r] for r in cortex)
    assert old["lateral_ventricles"] > 1.1 * young["lateral_ventricles"]


def test_model_cache_round_trip(tmp_path, monkeypatch):
    """The model kept in the user cache is the model the template builds."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    template.head_model.cache_clear()
    try:
        built = template.head_model(2)
        assert list((tmp_path / "napari-mrisynth").glob("cohort-model-2mm-*.npz"))
        template.head_model.cache_clear()
        loaded = template.head_model(2)
    finally:
        template.head_model.cache_clear()
    assert loaded is not built
    for name, value in vars(built).items():
        np.testing.assert_array_equal(getattr(loaded, name), value, err_msg=name)


def test_diagnosis_and_severity_are_checked():
    with pytest.raises(ValueError, match="diagnosis"):
        simulate_subject("x", "AD", 0, 3.0)
    with pytest.raises(ValueError, match="severity"):
        simulate_subject("x", "control", 0, 3.0, severity=0.5)


def test_sample_subject_is_a_simulated_bvftd_head():
    subject = sample_subject()
    assert subject.info["diagnosis"] == "bvFTD" and subject.info["severity"] == 0.8
    assert subject.t1.spacing.tolist() == [2.0, 2.0, 2.0]
    assert subject.t1.same_geometry(subject.labels)


def test_aal_names_map_to_lobes():
    assert aal_region_label("Frontal_Med_Orb_L") == LABEL_IDS["orbitomedial_frontal_gm"]
    assert aal_region_label("Temporal_Pole_Mid_R") == LABEL_IDS["anterior_temporal_gm"]
    assert aal_region_label("Insula_L") == LABEL_IDS["insula_gm"]
    assert aal_region_label("Cerebelum_Crus1_L") == LABEL_IDS["cerebellum"]
    assert aal_region_label("Thalamus_R") == LABEL_IDS["deep_gm"]
    with pytest.raises(ValueError):
        aal_region_label("Nucleus_Imaginarius_L")


def test_cli_writes_nifti_dicom_and_participants(tmp_path, capsys):
    out = tmp_path / "cohort"
    rc = main(["cohort", "--out", str(out), "--subjects", "2", "--seed", "3", "--spacing", "3"])
    assert rc == 0
    lines = (out / "participants.tsv").read_text().splitlines()
    assert lines[0].split("\t") == [
        "participant_id",
        "diagnosis",
        "age",
        "sex",
        "severity",
        "simulated",
    ]
    rows = [dict(zip(lines[0].split("\t"), line.split("\t"), strict=True)) for line in lines[1:]]
    assert [r["participant_id"] for r in rows] == ["sub-001", "sub-002"]
    assert sorted(r["diagnosis"] for r in rows) == ["bvFTD", "control"]
    assert all(r["simulated"] == "yes" for r in rows)
    for row in rows:
        assert (float(row["severity"]) > 0) == (row["diagnosis"] == "bvFTD")
    assert "SIMULATED" in (out / "README.md").read_text()
    assert json.loads((out / "dataset_description.json").read_text())["Simulated"] is True
    assert set(json.loads((out / "participants.json").read_text())) == set(lines[0].split()[1:])

    row = rows[0]
    anat = out / row["participant_id"] / "anat"
    t1 = volume_from_nifti(nib.load(anat / f"{row['participant_id']}_T1w.nii.gz"))
    labels = volume_from_nifti(nib.load(anat / f"{row['participant_id']}_labels.nii.gz"))
    mask = volume_from_nifti(nib.load(anat / f"{row['participant_id']}_brainmask.nii.gz"))
    assert t1.same_geometry(labels) and t1.same_geometry(mask)
    assert labels.dtype == np.uint8 and t1.dtype == np.int16
    header = nib.load(anat / f"{row['participant_id']}_T1w.nii.gz").header
    assert b"SIMULATED" in header["descrip"].item()
    sidecar = json.loads((anat / f"{row['participant_id']}_T1w.json").read_text())
    assert sidecar["diagnosis"] == row["diagnosis"] and sidecar["simulated"] is True

    files = sorted((out / row["participant_id"] / "dicom").iterdir())
    assert len(files) == t1.shape[0]
    first = pydicom.dcmread(files[0])
    assert "SIMULATED" in first.SeriesDescription and "SIMULATED" in first.StudyDescription
    assert first.PatientID.startswith("MRN") and "^" in str(first.PatientName)
    assert "SIMULATED" not in str(first.PatientName)  # realistic, so de-identification has work
    assert first.PatientSex == row["sex"] and first.PatientAge == f"{int(row['age']):03d}Y"
    np.testing.assert_allclose([float(v) for v in first.ImagePositionPatient], t1.origin, atol=1e-3)
    pixels = first.pixel_array
    assert pixels.shape == t1.shape[1:]
    np.testing.assert_array_equal(pixels, np.asarray(t1.data)[0])
    assert "simulated" in capsys.readouterr().out

    # Rebuilt coarser in the same place: no slice of the old series survives.
    main(["cohort", "--out", str(out), "--subjects", "1", "--seed", "3", "--spacing", "5"])
    coarse = volume_from_nifti(nib.load(anat / f"{row['participant_id']}_T1w.nii.gz"))
    assert len(list((out / row["participant_id"] / "dicom").iterdir())) == coarse.shape[0]


def test_a_subset_holds_the_full_cohorts_subjects(tmp_path, simulated_cohort):
    full = simulated_cohort(4, 5)  # 4 mm
    subset = tmp_path / "subset"
    assert main(["cohort", "--out", str(subset), "--subjects", "4", "--seed", "5",
                 "--spacing", "4", "--only", "sub-003"]) == 0  # fmt: skip
    assert sorted(p.name for p in subset.glob("sub-*")) == ["sub-003"]
    rows = (subset / "participants.tsv").read_text().splitlines()
    expected = [r for r in (full / "participants.tsv").read_text().splitlines() if "sub-003" in r]
    assert rows[1:] == expected  # diagnosis, age, sex, severity
    for kind in ("labels", "T1w"):
        a, b = (nib.load(root / "sub-003" / "anat" / f"sub-003_{kind}.nii.gz")
                for root in (full, subset))  # fmt: skip
        np.testing.assert_array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))
        np.testing.assert_array_equal(a.affine, b.affine)
    description = json.loads((subset / "dataset_description.json").read_text())
    assert description["Only"] == ["sub-003"] and description["Subjects"] == 4
    with pytest.raises(SystemExit, match="no sub-009"):
        main(["cohort", "--out", str(subset), "--subjects", "4", "--only", "sub-009"])


def test_cohort_versions_share_the_draws_and_differ_in_fine_anatomy():
    """Version 2 adds each head's fine folding, thickness and texture; version 1 is the
    cohort before it. The person and the scan drawn from a seed are the same in both."""
    old = simulate_subject("sub-v", "control", 23, 4.0, version=1)
    new = simulate_subject("sub-v", "control", 23, 4.0, version=2)
    again = simulate_subject("sub-v", "control", 23, 4.0, version=2)
    assert new.info["cohort_version"] == 2 and old.info["cohort_version"] == 1
    for key in ("age", "sex", "plane", "rotation_deg", "field_of_view_mm", "noise_fraction"):
        assert old.info[key] == new.info[key], key
    assert old.t1.same_geometry(new.t1)
    np.testing.assert_array_equal(np.asarray(again.t1.data), np.asarray(new.t1.data))
    changed = np.mean(np.asarray(old.labels.data) != np.asarray(new.labels.data))
    assert 0.005 < changed < 0.2  # anatomy moved by a millimetre or two, not replaced
    assert 0.7 <= new.info["fine_folding_rms_mm"] <= 1.1
    assert "fine_folding_rms_mm" not in old.info
    with pytest.raises(ValueError, match="cohort version"):
        simulate_subject("sub-v", "control", 23, 4.0, version=4)


def _labels_on(fine, coarse) -> np.ndarray:
    """``fine``'s labels at ``coarse``'s voxel centres (nearest voxel, world coordinates)."""
    fine_vol, coarse_vol = fine.labels, coarse.labels
    zyx = np.indices(coarse_vol.shape).reshape(3, -1).astype(float)
    lps = coarse_vol.index_to_lps(zyx[::-1].T)  # (N, 3)
    xyz = np.linalg.solve(fine_vol.affine[:3, :3], (lps - fine_vol.origin).T)
    ijk = np.rint(xyz).astype(int)[::-1]  # (z, y, x)
    inside = np.all((ijk >= 0) & (ijk < np.array(fine_vol.shape)[:, None]), axis=0)
    out = np.zeros(ijk.shape[1], np.uint8)
    out[inside] = np.asarray(fine_vol.data)[tuple(ijk[:, inside])]
    return out.reshape(coarse_vol.shape)


def _dice(a: np.ndarray, b: np.ndarray, label: int) -> float:
    x, y = a == label, b == label
    return 2.0 * float((x & y).sum()) / float(x.sum() + y.sum())


def test_a_seed_gives_the_same_anatomy_at_every_spacing_up_to_2_mm():
    """Version 3: the subject's deformation sits on a grid fixed in template space and
    2 mm output is sampled from the 1 mm head model, so a 2 mm subject is its finer self.
    Version 2 drew the deformation over the 2 mm model's canvas from 2 mm up: another head."""
    fine = simulate_subject("sub-r", "bvFTD", 31, 1.5)
    coarse = simulate_subject("sub-r", "bvFTD", 31, 2.0)
    coarse_v2 = simulate_subject("sub-r", "bvFTD", 31, 2.0, version=2)
    # below 2 mm versions 2 and 3 are the same subjects, voxel for voxel
    fine_v2 = simulate_subject("sub-r", "bvFTD", 31, 1.5, version=2)
    np.testing.assert_array_equal(np.asarray(fine_v2.labels.data), np.asarray(fine.labels.data))
    np.testing.assert_array_equal(np.asarray(fine_v2.t1.data), np.asarray(fine.t1.data))
    assert coarse.info["cohort_version"] == 3 and coarse.t1.shape == coarse_v2.t1.shape
    moved = _labels_on(fine, coarse)
    truth, old = np.asarray(coarse.labels.data), np.asarray(coarse_v2.labels.data)
    for name, least in (("white_matter", 0.85), ("lateral_ventricles", 0.8),
                        ("cerebellum", 0.9), ("deep_gm", 0.8)):  # fmt: skip
        label = LABEL_IDS[name]
        same, before = _dice(moved, truth, label), _dice(moved, old, label)
        assert same >= least, (name, same)
        assert before < same - 0.1, (name, before, same)


def test_fine_folding_is_diffeomorphic_and_differs_between_heads():
    from napari_mrisynth.anatomy.deform import jacobian_determinant
    from napari_mrisynth.cohort.fine_anatomy import FINE_STEP_MM, draw_fine_anatomy

    first, second = (draw_fine_anatomy(np.random.default_rng([s, 4])) for s in (1, 2))
    for fine in (first, second):
        jacobian = jacobian_determinant(fine.displacement, FINE_STEP_MM)
        assert jacobian.min() > 0.2 and jacobian.max() < 4.0  # no folding, no tearing
        rms = float(np.sqrt(np.mean(np.sum(fine.displacement**2, axis=0))))
        assert 0.5 < rms < 2.5
    correlation = np.corrcoef(first.displacement.ravel(), second.displacement.ravel())[0, 1]
    assert abs(correlation) < 0.05
