"""Acquisitions and reslices of one head, and what the bundled models make of them."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from napari_mrisynth.errors import MrisynthError
from napari_mrisynth.evaluation.robustness import (
    Acquisition,
    acquire,
    held_out_subjects,
    markdown,
    reslice,
    reslice_agreement,
    segmentation_robustness,
)
from napari_mrisynth.volume import Volume, onto_grid


def _box(value: float = 100.0) -> Volume:
    data = np.zeros((40, 30, 30), np.float32)  # z, y, x
    data[10:30, 5:25, 5:25] = value
    return Volume(data, spacing=(1.0, 1.5, 1.0), origin=(-10.0, 5.0, 3.0))


def test_thick_slices_change_the_grid_and_blur_only_the_slice_axis():
    box = _box()
    thick = acquire(box, Acquisition("4 mm", thickness_mm=4.0))
    assert thick.spacing.tolist() == [1.0, 1.5, 4.0]  # index order: z is the third
    assert thick.shape == (10, 30, 30)  # floor(39 * 1 / 4) + 1 slices
    np.testing.assert_allclose(thick.origin, box.origin)
    np.testing.assert_allclose(thick.direction, box.direction)
    assert thick.metadata["acquisition"]["thickness_mm"] == 4.0
    data = np.asarray(thick.data)
    assert data[5, 15, 15] == pytest.approx(100.0, abs=0.5)  # the inside stays
    assert set(np.unique(data[5, 15, :]).round(3)) == {0.0, 100.0}  # x edges stay sharp
    # slice k (z = 4k mm) at the box's top edge (z = 29.5 mm) is half-way up the blur
    assert 10.0 < data[7, 15, 15] < 90.0


def test_rician_noise_has_its_known_floor_and_bias_its_range():
    box = _box()
    noisy = np.asarray(acquire(box, Acquisition("noise", noise=0.05), seed=3).data)
    sigma = 0.05 * 100.0
    # magnitude of pure complex noise: Rayleigh, mean sigma * sqrt(pi / 2)
    assert noisy[:5].mean() == pytest.approx(sigma * math.sqrt(math.pi / 2), rel=0.05)
    assert noisy[15:25, 10:20, 10:20].std() == pytest.approx(sigma, rel=0.1)
    biased = np.asarray(acquire(box, Acquisition("bias", bias=0.2), seed=3).data)
    inside = biased[10:30, 5:25, 5:25] / 100.0
    assert inside.min() >= math.exp(-0.8) and inside.max() <= math.exp(0.8)
    assert inside.max() / inside.min() > 1.1
    assert np.array_equal(biased, np.asarray(acquire(box, Acquisition("b", bias=0.2), seed=3).data))


def test_axis_forms_are_exact_and_the_oblique_form_keeps_the_head():
    box = _box()
    labels = box.with_data((np.asarray(box.data) > 0).astype(np.uint8) * 7)
    for form in ("sagittal", "coronal"):
        stored = reslice(labels, form)
        assert not np.allclose(stored.direction, labels.direction)
        back = onto_grid(stored, labels, resample=False)  # a pure reordering
        assert np.array_equal(np.asarray(back.data), np.asarray(labels.data))
    oblique = reslice(labels, "oblique", labels=True, angle_deg=20.0)
    cosines = np.abs(oblique.direction)
    assert cosines.max(axis=0).min() < 0.99  # truly oblique
    assert set(np.unique(np.asarray(oblique.data)).tolist()) == {0, 7}
    back = np.asarray(onto_grid(oblique, labels, labels=True).data)
    inside = np.asarray(labels.data) > 0
    dice = 2 * (inside & (back > 0)).sum() / (inside.sum() + (back > 0).sum())
    assert dice > 0.95
    with pytest.raises(Exception, match="not one of"):
        reslice(labels, "diagonal")


@pytest.fixture(scope="module")
def subject(simulated_cohort):
    return simulated_cohort(2, 11, 3.0), "sub-001"


def test_segmentation_robustness_scores_each_acquisition_on_its_own_grid(subject):
    from napari_mrisynth.io.files import load_volume
    from napari_mrisynth.models.inference import segment
    from napari_mrisynth.reports.metrics import dice_per_label

    cohort, sub = subject
    conditions = [Acquisition("as stored"), Acquisition("6 mm slices", thickness_mm=6.0)]
    result = segmentation_robustness(cohort, [sub], "seg-head-demo", acquisitions=conditions,
                                     device="cpu")  # fmt: skip
    assert result["model"].startswith("seg-head-demo@") and result["subjects"] == [sub]
    stored, thick = (result["conditions"][c.name] for c in conditions)
    assert thick["per_subject"][sub]["grid_mm"] == [3.0, 3.0, 6.0]
    # the "as stored" figure is the plain segmentation's Dice against the truth
    image = load_volume(cohort / sub / "anat" / f"{sub}_T1w.nii.gz")
    truth = load_volume(cohort / sub / "anat" / f"{sub}_labels.nii.gz")
    labels = segment(image, "seg-head-demo", device="cpu").labels
    wm = dice_per_label(truth.data, labels.data, [11])[11]
    assert stored["dice"]["white_matter"] == pytest.approx(wm, abs=1e-9)
    for condition in (stored, thick):
        assert all(0.0 <= d <= 1.0 for d in condition["dice"].values())
        # (the bundled 1.1.0 model misses the insula: the minimum may be 0)
        assert 0.0 <= condition["brain_labels_min"] <= condition["brain_labels_mean"] < 1.0
        assert condition["brain_labels_mean"] > 0.3
        assert isinstance(condition["absent"], list)
    text = markdown({"segmentation": result})
    assert "| 6 mm slices | " in text and f"| white_matter | {wm:.3f} |" in text
    # the worst *brain* label (the cord or the eyes, outside the brain, do not count)
    brain_names = {result["labels"][str(v)] for v in range(1, 14)}
    worst = min(((n, d) for n, d in stored["dice"].items() if n in brain_names),
                key=lambda kv: kv[1])  # fmt: skip
    assert f"| as stored | {stored['brain_labels_mean']:.3f} | {worst[0]} {worst[1]:.3f} |" in text


def test_a_baseline_is_scored_on_the_same_scans_and_draws(simulated_cohort, tmp_path):
    from napari_mrisynth.evaluation.robustness import evaluate_robustness, plot_robustness

    cohort = simulated_cohort(10, 5)  # holds sub-008, a held-out test subject of 1.1.0
    conditions = [Acquisition("as stored"), Acquisition("8 mm slices + bias", 8.0, bias=0.3)]
    result = evaluate_robustness(
        cohort, segmenter="seg-head-demo@1.1.0", classifier="cls-bvftd-demo@1.0.0",
        subjects=["sub-008"], acquisitions=conditions, forms=("axial", "sagittal"),
        reslice_subjects=1, template_head=False, baseline_segmenter="seg-head-demo@1.1.0",
        baseline_classifier="cls-bvftd-demo@1.0.0", device="cpu",
    )  # fmt: skip
    base = result["baseline"]
    # one model against itself on the same scans and the same bias draws: the same figures
    for name in ("as stored", "8 mm slices + bias"):
        mine, theirs = (r["segmentation"]["conditions"][name] for r in (result, base))
        assert mine["dice"] == theirs["dice"] and mine["per_subject"] == theirs["per_subject"]
    assert result["summary"] == base["summary"]
    thick = result["segmentation"]["conditions"]["8 mm slices + bias"]
    assert thick["per_subject"]["sub-008"]["grid_mm"][2] == 8.0
    text = markdown(result)
    assert "## Against seg-head-demo@1.1.0 (same scans, same draws)" in text
    mean = result["summary"]["brain_labels_mean"]
    assert f"| brain labels mean Dice, as stored | {mean:.3f} | {mean:.3f} |" in text
    assert "| largest P change across reslices |" in text and "# Baseline" in text
    png = plot_robustness(result, tmp_path / "robustness.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    with pytest.raises(MrisynthError, match="sub-001: trained or validated"):
        evaluate_robustness(
            cohort,
            segmenter="seg-head-demo@1.1.0",
            subjects=["sub-001"],
            acquisitions=conditions[:1],
            template_head=False,
            device="cpu",
        )


def test_cli_writes_the_report_the_table_and_the_figure(simulated_cohort, tmp_path, capsys):
    from napari_mrisynth.cli import main

    cohort = simulated_cohort(10, 5)
    args = ["evaluate", "robustness", "--cohort", str(cohort), "--segmenter",
            "seg-head-demo@1.1.0", "--subjects", "sub-008", "--reslice-subjects", "0",
            "--no-template-head", "--device", "cpu"]  # fmt: skip
    assert main([*args, "--acquisitions", "as stored,5 mm slices", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "report.json").read_text())
    assert list(result["segmentation"]["conditions"]) == ["as stored", "5 mm slices"]
    assert "| 5 mm slices |" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "robustness.png").read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()
    assert main([*args, "--acquisitions", "9 mm slices"]) == 1
    assert "--acquisitions: no 9 mm slices; choose from as stored," in capsys.readouterr().err
    # a saved report is a baseline for a later run of the same scans and draws ...
    saved = tmp_path / "report.json"
    again = [*args, "--acquisitions", "as stored,5 mm slices", "--baseline-report", str(saved)]
    assert main([*again, "--out", str(tmp_path / "again")]) == 0
    text = (tmp_path / "again" / "report.md").read_text()
    assert "## Against seg-head-demo@1.1.0 (same scans, same draws)" in text
    both = json.loads((tmp_path / "again" / "report.json").read_text())
    assert both["baseline"]["segmentation"] == result["segmentation"]
    # ... and refused for other ones
    assert main([*args, "--acquisitions", "as stored", "--baseline-report", str(saved)]) == 1
    assert "the baseline report scored other acquisitions" in capsys.readouterr().err


def test_saliency_check_measures_where_the_classifier_looks(simulated_cohort):
    from scipy import ndimage as ndi

    from napari_mrisynth.evaluation.robustness import SALIENCY_REGION_GROWTH, saliency_check
    from napari_mrisynth.io.files import load_volume
    from napari_mrisynth.training.splits import read_participants

    cohort = simulated_cohort(10, 5)
    rows = read_participants(cohort)
    patients = [r["participant_id"] for r in rows if r["diagnosis"] == "bvFTD"][:2]
    control = next(r["participant_id"] for r in rows if r["diagnosis"] == "control")
    result = saliency_check(cohort, [*patients, control], "cls-bvftd-demo@1.0.0", device="cpu")
    assert list(result["per_subject"]) == patients  # controls have no bvFTD regions to find
    assert result["regions"] == ["orbitomedial_frontal_gm", "insula_gm",
                                 "anterior_temporal_gm", "lateral_ventricles"]  # fmt: skip
    truth = np.asarray(load_volume(cohort / patients[0] / "anat" /
                                   f"{patients[0]}_labels.nii.gz").data)  # fmt: skip
    brain = (truth >= 1) & (truth <= 13)
    grown = ndi.binary_dilation(np.isin(truth, (2, 3, 4, 12)), iterations=SALIENCY_REGION_GROWTH)
    first = result["per_subject"][patients[0]]
    assert first["volume_share"] == pytest.approx((grown & brain).sum() / brain.sum())
    scored = [r for r in result["per_subject"].values() if r["enrichment"] is not None]
    for r in result["per_subject"].values():
        assert 0.0 < r["volume_share"] < 1.0
        if r["enrichment"] is None:  # a map of zeros: nothing argued for bvFTD
            assert r["saliency_share"] is None
            continue
        assert 0.0 <= r["saliency_share"] <= 1.0
        assert r["enrichment"] == pytest.approx(r["saliency_share"] / r["volume_share"])
    assert len(scored) + len(result["without_evidence"]) == len(patients)
    if scored:
        assert result["mean_enrichment"] == pytest.approx(
            np.mean([r["enrichment"] for r in scored])
        )


def test_only_held_out_subjects_are_evaluated(subject):
    from napari_mrisynth.models.registry import find_model

    cohort, _ = subject
    card = find_model("seg-head-demo@1.1.0")
    assert "sub-001" in card.training["splits"]["train"]
    with pytest.raises(MrisynthError, match="sub-001: trained or validated seg-head-demo"):
        held_out_subjects(card, cohort, ["sub-001"])
    with pytest.raises(MrisynthError, match="no subject sub-099"):
        held_out_subjects(card, cohort, ["sub-099"])
    with pytest.raises(MrisynthError, match="none of seg-head-demo@1.1.0's held-out"):
        held_out_subjects(card, cohort, None)  # this 2-subject cohort holds none of them


def test_reslice_agreement_of_the_bundled_models(subject):
    from napari_mrisynth.io.files import load_volume

    cohort, sub = subject
    image = load_volume(cohort / sub / "anat" / f"{sub}_T1w.nii.gz")
    result = reslice_agreement(image, "seg-head-demo", "cls-bvftd-demo",
                               forms=("axial", "sagittal"), device="cpu")  # fmt: skip
    axial, sagittal = result["forms"]["axial"], result["forms"]["sagittal"]
    assert axial["mean_dice"] == 1.0 and axial["voxel_agreement"] == 1.0
    assert axial["round_trip_mean_dice"] == sagittal["round_trip_mean_dice"] == 1.0  # exact
    z, y, x = axial["shape"]  # the simulated subject may be stored in another plane
    assert sagittal["shape"] == [x, z, y]
    assert 0.8 < sagittal["mean_dice"] <= 1.0 and sagittal["voxel_agreement"] > 0.9
    # the brain labels' own mean, for brain-only images where stray outside labels dominate
    from napari_mrisynth.anatomy.labels import BRAIN_LABELS, LABELS

    brain_names = {LABELS[v][0] for v in BRAIN_LABELS}
    brain = [d for name, d in sagittal["label_dice"].items() if name in brain_names]
    assert len(brain) == 13 and len(sagittal["label_dice"]) > 13
    assert sagittal["brain_mean_dice"] == pytest.approx(float(np.mean(brain)), abs=1e-12)
    assert axial["brain_mean_dice"] == 1.0
    assert result["worst_brain_mean_dice"] == sagittal["brain_mean_dice"]
    for entry in (axial, sagittal):
        assert sum(entry["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert set(result["probability_range"]) == {"control", "bvFTD"}
    assert result["probability_range"]["bvFTD"] < 0.2


def test_template_head_check_measures_the_real_template():
    from napari_mrisynth.anatomy.labels import BRAIN_LABELS, LABELS
    from napari_mrisynth.evaluation.robustness import template_head_check

    result = template_head_check("seg-head-demo@1.1.0", None, forms=("axial",), device="cpu")
    assert set(result["volumes_ml"]) == {LABELS[v][0] for v in BRAIN_LABELS}
    assert result["absent"] == [n for n, ml in result["volumes_ml"].items() if ml == 0.0]
    # a brain of 1.1-1.6 L, and parenchyma where the template's own GM + WM maps put it
    assert 1100 < sum(result["volumes_ml"].values()) < 1700
    assert result["parenchyma_dice"] > 0.75
    assert result["reslice"]["forms"]["axial"]["mean_dice"] == 1.0
    # the brain against the template's own extraction (nilearn: above 0.2 of the maximum)
    from napari_mrisynth.anatomy.template import template_paths
    from napari_mrisynth.io.files import load_volume
    from napari_mrisynth.models.inference import segment

    t1 = load_volume(template_paths()["t1"])
    data = np.asarray(t1.data, dtype=float)
    extracted = data > 0.2 * data.max()
    labels = np.asarray(segment(t1, "seg-head-demo@1.1.0", device="cpu").labels.data)
    brain = (labels >= 1) & (labels <= 13)
    expected = 2 * (brain & extracted).sum() / (brain.sum() + extracted.sum())
    assert result["brain_dice"] == pytest.approx(expected, abs=1e-9) and expected > 0.8


def test_comparison_puts_the_template_heads_brain_dice_side_by_side():
    from napari_mrisynth.evaluation.robustness import _comparison

    def summary(name, brain_dice):
        head = {"brain_dice": brain_dice, "parenchyma_dice": 0.9, "lateral_ventricles_ml": 27.06,
                "absent": []}  # fmt: skip
        return {"segmenter": name, "reference_condition": "as stored", "brain_labels_min": 0.3,
                "absent": [], "template_head": head}  # fmt: skip

    empty = {"conditions": {}}
    result = {"summary": summary("new@2", 0.9876), "segmentation": empty,
              "baseline": {"summary": summary("old@1", None), "segmentation": empty}}  # fmt: skip
    result["summary"]["template_head"]["worst_reslice_brain_dice"] = 0.9594
    lines = _comparison(result)
    assert "| MNI152 brain Dice (nilearn's extraction) | 0.988 | - |" in lines
    assert "| MNI152 lateral ventricles (mL) | 27.1 | 27.1 |" in lines
    # an older baseline report without the brain labels' reslice agreement shows "-"
    assert "| MNI152 worst reslice agreement, brain labels | 0.959 | - |" in lines
    assert not any("worst reslice agreement, all labels" in line for line in lines)
