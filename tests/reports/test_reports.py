"""Reports: every statistic against hand-computed answers, real PNGs, a real MLflow store,
and ``mrisynth report`` end to end on a simulated cohort with tiny random models."""

from __future__ import annotations

import argparse
import json
import math
import struct
import sys

import numpy as np
import pytest

from napari_mrisynth.errors import ModelError
from napari_mrisynth.models.tracking import flatten_metrics
from napari_mrisynth.reports import metrics
from napari_mrisynth.reports.model_report import (
    classification_report,
    log_report_to_mlflow,
    segmentation_report,
)
from napari_mrisynth.volume import Volume
from tests.support import tiny_models

# A tiny case worked by hand: positives score 0.9, 0.5, 0.3; negatives 0.5, 0.1.
Y_TINY = np.array([1, 1, 0, 0, 1])
S_TINY = np.array([0.9, 0.5, 0.5, 0.1, 0.3])

# Hanley & McNeil (1982, Radiology 143:29) CT ratings, 1 (definitely normal) to 5: counts
# per rating for 58 normal and 51 abnormal patients; their published AUC is 0.8932.
HANLEY_NORMAL = [33, 6, 6, 11, 2]
HANLEY_ABNORMAL = [3, 2, 2, 11, 33]


def hanley_mcneil():
    y = np.r_[np.zeros(58, int), np.ones(51, int)]
    scores = np.r_[
        np.repeat(np.arange(1, 6), HANLEY_NORMAL), np.repeat(np.arange(1, 6), HANLEY_ABNORMAL)
    ]
    return y, scores.astype(float)


def delong_quadratic(y, scores, z=1.959963984540054):
    """DeLong et al. (1988) written out pair by pair: psi(X, Y) = 1, 1/2, 0."""
    pos, neg = scores[y == 1], scores[y == 0]
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    auc = psi.mean()
    s10 = sum((v - auc) ** 2 for v in v10) / (len(pos) - 1)
    s01 = sum((v - auc) ** 2 for v in v01) / (len(neg) - 1)
    se = math.sqrt(s10 / len(pos) + s01 / len(neg))
    return auc, max(0.0, auc - z * se), min(1.0, auc + z * se)


def tied_scores(seed, n=40):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]
    scores = np.round(np.clip(0.3 * y + rng.random(n) * 0.7, 0, 1), 1)  # many ties
    return y, scores


# -- proportions and counts ------------------------------------------------------------------
def test_wilson_interval_known_cases():
    low, high = metrics.wilson_interval(8, 10)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)
    # z = 1.96: 0 of 10 -> (0, z^2 / (n + z^2)); 10 of 10 mirrors it
    low, high = metrics.wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(1.959964**2 / (10 + 1.959964**2), abs=1e-6)
    assert metrics.wilson_interval(10, 10) == pytest.approx((1 - high, 1.0))
    low99, high99 = metrics.wilson_interval(8, 10, confidence=0.99)
    assert low99 < 0.4902 and high99 > 0.9433
    with pytest.raises(ValueError, match="at least one trial"):
        metrics.wilson_interval(0, 0)
    with pytest.raises(ValueError, match="0..n"):
        metrics.wilson_interval(11, 10)


def test_confusion_matrix_rows_are_truth():
    matrix = metrics.confusion_matrix([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 0, 2], 3)
    np.testing.assert_array_equal(matrix, [[1, 1, 0], [0, 1, 0], [1, 0, 2]])
    with pytest.raises(ValueError, match="class indices 0..1"):
        metrics.confusion_matrix([0, 2], [0, 1], 2)


# -- ROC, AUC, DeLong ------------------------------------------------------------------------
def test_roc_points_on_a_tiny_example_with_a_tie():
    fpr, tpr, thresholds = metrics.roc_curve(Y_TINY, S_TINY)
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 0.5, 1])
    np.testing.assert_allclose(tpr, [0, 1 / 3, 2 / 3, 1, 1])
    np.testing.assert_array_equal(thresholds, [np.inf, 0.9, 0.5, 0.3, 0.1])
    # the tie at 0.5 (one positive, one negative) is one diagonal step: trapezoids give the AUC
    assert np.trapezoid(tpr, fpr) == pytest.approx(0.75)


def test_auc_is_mann_whitney_with_ties_counted_half():
    # pairs: 0.9 beats both, 0.5 ties one and beats one, 0.3 beats one -> 4.5 of 6
    assert metrics.roc_auc(Y_TINY, S_TINY) == pytest.approx(4.5 / 6)
    from scipy.stats import mannwhitneyu

    for seed in range(5):
        y, scores = tied_scores(seed)
        u = mannwhitneyu(scores[y == 1], scores[y == 0]).statistic
        assert metrics.roc_auc(y, scores) == pytest.approx(u / ((y == 1).sum() * (y == 0).sum()))
    y, scores = hanley_mcneil()
    assert metrics.roc_auc(y, scores) == pytest.approx(0.8932, abs=5e-5)  # published value


def test_roc_matches_scikit_learn_on_tied_scores():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    for seed in range(3):
        y, scores = tied_scores(seed)
        fpr, tpr, thresholds = metrics.roc_curve(y, scores)
        ref_fpr, ref_tpr, ref_thr = sklearn_metrics.roc_curve(y, scores, drop_intermediate=False)
        np.testing.assert_allclose(fpr, ref_fpr)
        np.testing.assert_allclose(tpr, ref_tpr)
        np.testing.assert_allclose(thresholds[1:], ref_thr[1:])
        assert metrics.roc_auc(y, scores) == pytest.approx(sklearn_metrics.roc_auc_score(y, scores))


def test_delong_interval_worked_by_hand():
    # psi rows (positives 0.9, 0.5, 0.3 vs negatives 0.5, 0.1): [1, 1], [1/2, 1], [0, 1]
    # V10 = (1, 3/4, 1/2): var 1/16; V01 = (1/2, 1): var 1/8
    # variance = (1/16)/3 + (1/8)/2 = 1/12 -> se 0.288675
    auc, low, high = metrics.auc_ci_delong(Y_TINY, S_TINY)
    assert auc == pytest.approx(0.75)
    assert low == pytest.approx(0.75 - 1.959964 * math.sqrt(1 / 12), abs=1e-6)
    assert high == 1.0  # 1.3158 clipped


def test_delong_matches_the_pairwise_definition():
    cases = [tied_scores(seed) for seed in range(4)] + [hanley_mcneil()]
    for y, scores in cases:
        np.testing.assert_allclose(metrics.auc_ci_delong(y, scores), delong_quadratic(y, scores))
    # Hanley & McNeil data: DeLong's standard error is close to their 0.0320 approximation
    y, scores = hanley_mcneil()
    auc, low, high = metrics.auc_ci_delong(y, scores)
    assert (high - low) / (2 * 1.959964) == pytest.approx(0.0320, abs=0.002)
    # a 90% interval is narrower around the same AUC
    auc90, low90, high90 = metrics.auc_ci_delong(y, scores, confidence=0.90)
    assert auc90 == auc and low < low90 < auc < high90 < high


def test_delong_edge_cases():
    with pytest.raises(ValueError, match="needs both classes, got 3 positive and 0 negative"):
        metrics.auc_ci_delong([1, 1, 1], [0.2, 0.5, 0.9])
    assert metrics.auc_ci_delong([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == (1.0, 1.0, 1.0)
    # one positive: no variance estimate, the interval is all of [0, 1]
    assert metrics.auc_ci_delong([0, 0, 1], [0.1, 0.7, 0.5]) == (0.5, 0.0, 1.0)


# -- precision-recall ------------------------------------------------------------------------
def test_cohens_d_by_hand():
    values = np.array([1.0, 2.0, 3.0, 5.0, 6.0, 7.0])
    group = np.array([True, True, True, False, False, False])
    assert metrics.cohens_d(values, group) == pytest.approx(-4.0)  # means 2 vs 6, SD 1
    assert metrics.cohens_d(values, ~group) == pytest.approx(4.0)
    # unequal sizes: pooled variance (2 * 1 + 1 * 0.5) / 3 = 5/6
    assert metrics.cohens_d([0.0, 1.0, 2.0, 4.0, 5.0], [1, 1, 1, 0, 0]) == pytest.approx(
        -3.5 / math.sqrt(5 / 6)
    )
    assert metrics.cohens_d([3.0, 3.0, 3.0, 3.0], [1, 1, 0, 0]) == 0.0


def test_precision_recall_and_average_precision_by_hand():
    y, scores = [1, 0, 1, 1, 0], [0.9, 0.8, 0.7, 0.6, 0.2]
    precision, recall, thresholds = metrics.precision_recall_curve(y, scores)
    np.testing.assert_allclose(precision, [1, 1, 1 / 2, 2 / 3, 3 / 4, 3 / 5])
    np.testing.assert_allclose(recall, [0, 1 / 3, 1 / 3, 2 / 3, 1, 1])
    np.testing.assert_array_equal(thresholds, [np.inf, 0.9, 0.8, 0.7, 0.6, 0.2])
    # AP = 1/3 * 1 + 0 * 1/2 + 1/3 * 2/3 + 1/3 * 3/4 + 0 * 3/5
    assert metrics.average_precision(y, scores) == pytest.approx(1 / 3 + 2 / 9 + 1 / 4)
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    for seed in range(3):
        y, scores = tied_scores(seed)
        assert metrics.average_precision(y, scores) == pytest.approx(
            sklearn_metrics.average_precision_score(y, scores)
        )


def test_binary_summary_by_hand():
    summary = metrics.binary_summary(Y_TINY, S_TINY, threshold=0.5)
    # called positive: 0.9 (pos), 0.5 (pos), 0.5 (neg) -> tp 2, fp 1, fn 1 (0.3), tn 1 (0.1)
    assert summary["confusion"] == [[1, 1], [1, 2]]
    assert (summary["n"], summary["n_positive"]) == (5, 3)
    assert summary["accuracy"]["value"] == pytest.approx(3 / 5)
    assert summary["accuracy"]["ci95"] == pytest.approx(list(metrics.wilson_interval(3, 5)))
    assert summary["sensitivity"]["value"] == pytest.approx(2 / 3)
    assert summary["specificity"]["value"] == pytest.approx(1 / 2)
    assert summary["ppv"]["value"] == pytest.approx(2 / 3)
    assert summary["npv"]["value"] == pytest.approx(1 / 2)
    assert summary["auc"]["value"] == pytest.approx(0.75)
    assert summary["average_precision"] == pytest.approx(metrics.average_precision(Y_TINY, S_TINY))
    json.dumps(summary, allow_nan=False)
    one_class = metrics.binary_summary([0, 0, 0], [0.1, 0.6, 0.2])
    assert one_class["auc"]["value"] is None and "both classes" in one_class["auc"]["note"]
    assert one_class["sensitivity"] == {"value": None, "ci95": None, "n": 0}
    assert one_class["specificity"]["value"] == pytest.approx(2 / 3)


# -- Dice and HD95 ---------------------------------------------------------------------------
def test_dice_of_two_overlapping_cubes():
    truth = np.zeros((20, 20, 20), np.uint8)
    pred = np.zeros_like(truth)
    truth[2:12, 2:12, 2:12] = 1  # 1000 voxels
    pred[2:12, 2:12, 4:14] = 1  # shifted 2 along x: overlap 8 x 10 x 10
    truth[15:17, 15:17, 15:17] = 2  # label 2 only in the truth
    dice = metrics.dice_per_label(truth, pred, [1, 2, 3])
    assert dice[1] == pytest.approx(2 * 800 / 2000)
    assert dice[2] == 0.0
    assert math.isnan(dice[3])


def test_brain_dice_pools_every_brain_label_and_ignores_the_head():
    truth = np.zeros((20, 20, 20), np.uint8)
    truth[2:12, 2:12, 2:12] = 11  # white matter, 1000 voxels
    truth[15:18, 15:18, 15:18] = 16  # bone: not brain
    pred = np.zeros_like(truth)
    pred[2:12, 2:12, 2:7] = 1  # the same brain, half called cortex ...
    pred[2:12, 2:12, 7:14] = 13  # ... the rest sulcal CSF, 200 voxels past it
    assert metrics.brain_dice(truth, pred) == pytest.approx(2 * 1000 / 2200)
    assert math.isnan(metrics.brain_dice(np.zeros_like(truth), np.zeros_like(truth)))


def test_hd95_of_parallel_slabs_honours_anisotropic_spacing():
    spacing_zyx = (2.5, 1.0, 0.7)
    truth = np.zeros((16, 12, 14), np.uint8)
    pred = np.zeros_like(truth)
    truth[5, 2:10, 2:12] = 1  # one-voxel slabs: every voxel is surface
    pred[8, 2:10, 2:12] = 1  # 3 slices above: 7.5 mm from every voxel
    assert metrics.hd95_per_label(truth, pred, [1], spacing_zyx)[1] == pytest.approx(3 * 2.5)
    truth = np.zeros((16, 12, 14), np.uint8)
    pred = np.zeros_like(truth)
    truth[2:14, 2:10, 3] = 2
    pred[2:14, 2:10, 8] = 2  # 5 columns to the side: 3.5 mm
    assert metrics.hd95_per_label(truth, pred, [2], spacing_zyx)[2] == pytest.approx(5 * 0.7)


def test_hd95_of_concentric_spheres_and_missing_labels():
    z, y, x = np.mgrid[:41, :41, :41] - 20
    radius = np.sqrt(z**2 + y**2 + x**2)
    truth = (radius <= 15).astype(np.uint8)
    pred = (radius <= 10).astype(np.uint8)
    hd = metrics.hd95_per_label(truth, pred, [1], (1.0, 1.0, 1.0))[1]
    assert 4.0 <= hd <= 6.0  # 5 mm apart, within a voxel of surface discretisation
    truth[0:3, 0:3, 0:3] = 2
    hd = metrics.hd95_per_label(truth, pred, [2, 3], (1.0, 1.0, 1.0))
    assert math.isinf(hd[2]) and math.isnan(hd[3])


def test_hd95_matches_monai():
    monai_metrics = pytest.importorskip("monai.metrics")
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    from scipy import ndimage

    shape = (24, 28, 26)
    truth = ndimage.gaussian_filter(rng.random(shape), 3) > 0.5
    pred = ndimage.gaussian_filter(rng.random(shape), 3) > 0.5
    truth[[0, -1]] = pred[[0, -1]] = False  # keep both away from the array faces
    truth[:, [0, -1]] = pred[:, [0, -1]] = False
    truth[:, :, [0, -1]] = pred[:, :, [0, -1]] = False
    spacing = (2.0, 1.1, 0.8)
    ours = metrics.hd95_per_label(truth.astype(np.uint8), pred.astype(np.uint8), [1], spacing)[1]
    theirs = monai_metrics.compute_hausdorff_distance(
        torch.from_numpy(pred[None, None]), torch.from_numpy(truth[None, None]),
        percentile=95, spacing=list(spacing),
    )  # fmt: skip
    assert ours == pytest.approx(float(theirs), rel=1e-6)


def test_segmentation_summary_over_subjects():
    truth = np.zeros((20, 20, 20), np.uint8)
    truth[2:12, 2:12, 2:12] = 1
    truth[14:18, 14:18, 14:18] = 2
    perfect = truth.copy()
    shifted = np.zeros_like(truth)
    shifted[2:12, 2:12, 4:14] = 1  # Dice 0.8 for label 1; label 2 missing
    pairs = [(truth, perfect, (1, 1, 1)), (truth, shifted, (1, 1, 1))]
    names = {1: "frontal_gm", 2: "insula_gm", 3: "eyes"}
    summary = metrics.segmentation_summary(pairs, names)
    assert summary["n"] == 2
    assert summary["dice"] == {"frontal_gm": pytest.approx(0.9), "insula_gm": 0.5, "eyes": None}
    assert summary["dice_mean"] == pytest.approx(0.7)
    frontal = summary["per_label"]["frontal_gm"]
    assert frontal["dice"]["min"] == pytest.approx(0.8)
    assert frontal["dice"]["sd"] == pytest.approx(np.std([1.0, 0.8], ddof=1))
    assert frontal["hd95"]["min"] == 0.0 and frontal["hd95"]["max"] == pytest.approx(2.0)
    insula = summary["per_label"]["insula_gm"]
    assert insula["hd95"]["n"] == 1 and insula["hd95"]["n_missing"] == 1
    assert summary["per_subject"][1]["dice"]["insula_gm"] == 0.0
    assert summary["per_subject"][1]["hd95"]["insula_gm"] is None
    json.dumps(summary, allow_nan=False)

    # Volumes carry their spacing (x, y, z): 2 mm along x makes the 2-voxel shift 4 mm
    geometry = dict(spacing=(2.0, 1.0, 1.0))
    from_volumes = metrics.segmentation_summary(
        [(Volume(truth, **geometry), Volume(shifted, **geometry))], names
    )
    assert from_volumes["hd95"]["frontal_gm"] == pytest.approx(4.0)
    with pytest.raises(ValueError, match="different grids"):
        metrics.segmentation_summary([(Volume(truth), Volume(shifted, **geometry))], names)


# -- figures and report folders --------------------------------------------------------------
def png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24]), len(data)


@pytest.fixture(scope="module")
def cls_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("cls_report")
    y, scores = tied_scores(7, n=30)
    ids = [f"sub-{i:03d}" for i in range(1, 31)]
    report = classification_report(y, scores, ("control", "bvFTD"), out, model_ref="cls@1.0.0",
                                   subjects=ids, title="test classifier")  # fmt: skip
    return out, report, y, scores


def test_classification_report_files_and_rows(cls_report):
    out, report, y, scores = cls_report
    assert json.loads((out / "report.json").read_text()) == report
    assert report["figures"] == ["roc.png", "pr.png", "confusion.png"]
    for name in report["figures"]:
        (width, height), size = png_size(out / name)
        assert width >= 400 and height >= 300 and size > 10_000, name
    assert report["metrics"]["auc"]["value"] == pytest.approx(metrics.roc_auc(y, scores))
    rows = report["subjects"]
    assert [row["id"] for row in rows][:2] == ["sub-001", "sub-002"]
    assert rows[0]["truth"] == ("bvFTD" if y[0] else "control")
    assert rows[0]["predicted"] == ("bvFTD" if scores[0] >= 0.5 else "control")
    assert sum(row["correct"] for row in rows) == report["metrics"]["accuracy"]["value"] * 30
    with pytest.raises(ValueError, match="negative, positive"):
        classification_report(y, scores, out, out)  # a folder where class names belong


def test_classification_report_with_one_class_skips_the_curves(tmp_path):
    report = classification_report([0, 0, 0], [0.2, 0.7, 0.1], ["control", "bvFTD"], tmp_path)
    assert report["figures"] == ["confusion.png"]
    assert "both classes" in report["figures_skipped"]["roc.png"]
    assert not (tmp_path / "roc.png").exists()


def test_segmentation_report_from_pairs_or_summary(tmp_path):
    truth = np.zeros((20, 20, 20), np.uint8)
    truth[2:12, 2:12, 2:12] = 1
    pred = np.zeros_like(truth)
    pred[3:12, 2:12, 2:12] = 1
    pairs = [(truth, pred, (1, 1, 1)), (truth, truth, (1, 1, 1)), (pred, pred, (1, 1, 1))]
    names = {1: "frontal_gm", 2: "eyes"}
    report = segmentation_report(pairs, names, tmp_path / "a", subjects=["s1", "s2", "s3"])
    assert report["figures"] == ["dice.png", "hd95.png"]
    assert [row["id"] for row in report["metrics"]["per_subject"]] == ["s1", "s2", "s3"]
    assert report["metrics"]["dice"]["frontal_gm"] == pytest.approx((2 * 900 / 1900 + 2) / 3)
    for name in report["figures"]:
        assert png_size(tmp_path / "a" / name)[1] > 5_000
    summary = metrics.segmentation_summary(pairs, names)
    again = segmentation_report(summary, None, tmp_path / "b")
    assert again["metrics"]["dice"] == report["metrics"]["dice"]
    assert "id" not in summary["per_subject"][0]  # the caller's summary is left as it was


# -- MLflow ----------------------------------------------------------------------------------
def test_flatten_metrics_names():
    flat = flatten_metrics(metrics.binary_summary(Y_TINY, S_TINY))
    assert flat["auc"] == pytest.approx(0.75) and flat["auc.ci95_high"] == 1.0
    assert flat["sensitivity"] == pytest.approx(2 / 3) and "threshold" not in flat
    assert not any(name.startswith("confusion") for name in flat)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A real SQLite tracking store shared by this module's tests (creating one takes seconds)."""
    folder = tmp_path_factory.mktemp("mlflow")
    return folder, f"sqlite:///{folder}/mlflow.db"


def test_report_logged_to_a_real_sqlite_store(cls_report, store, tmp_path):
    from mlflow import MlflowClient

    out, report, _, _ = cls_report
    folder, uri = store
    run_id = log_report_to_mlflow(report, out, tracking_uri=uri, experiment="tests")
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.info.artifact_uri.startswith((folder / "mlartifacts").as_uri())
    assert run.data.metrics["auc"] == pytest.approx(report["metrics"]["auc"]["value"])
    assert run.data.metrics["auc.ci95_low"] == pytest.approx(report["metrics"]["auc"]["ci95"][0])
    assert run.data.metrics["specificity"] == pytest.approx(
        report["metrics"]["specificity"]["value"]
    )
    assert run.data.params["report.model"] == "cls@1.0.0"
    assert run.data.tags["mrisynth.report"] == "classification"
    artifacts = {a.path for a in client.list_artifacts(run_id, "report")}
    assert {
        "report/report.json",
        "report/roc.png",
        "report/pr.png",
        "report/confusion.png",
    } <= artifacts
    local = client.download_artifacts(run_id, "report/report.json", str(tmp_path / "back"))
    assert json.loads(open(local).read())["metrics"]["auc"] == report["metrics"]["auc"]

    # a segmentation report into the same, existing run
    truth = np.zeros((12, 12, 12), np.uint8)
    truth[2:8, 2:8, 2:8] = 1
    seg = segmentation_report([(truth, truth, (1, 1, 1))], {1: "frontal_gm"}, tmp_path / "seg")
    assert log_report_to_mlflow(seg, tmp_path / "seg", tracking_uri=uri, run_id=run_id,
                                artifact_path="seg") == run_id  # fmt: skip
    metrics_now = client.get_run(run_id).data.metrics
    assert metrics_now["dice.frontal_gm"] == 1.0 and metrics_now["hd95.frontal_gm"] == 0.0


# -- mrisynth report, end to end -------------------------------------------------------------
@pytest.fixture(scope="module")
def cohort_and_models(tmp_path_factory, simulated_cohort):
    cohort = simulated_cohort(4, 5)
    root = tmp_path_factory.mktemp("report_models")
    split = {"train": ["sub-001", "sub-002"], "val": [], "test": ["sub-003", "sub-004"]}
    tiny_models.make_tiny_model(root, "classification", id="rep-cls", training={"splits": split})
    tiny_models.make_tiny_model(root, "segmentation", id="rep-seg", training={"split": split})
    tiny_models.make_tiny_model(root, "classification", id="rep-nosplit")
    return cohort, root


def run_report(argv):
    from napari_mrisynth.cli.report import register

    parser = argparse.ArgumentParser(prog="mrisynth")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_report_classifier_command(cohort_and_models, store, tmp_path, monkeypatch, capsys):
    from mlflow import MlflowClient

    from napari_mrisynth.models.inference import classify
    from napari_mrisynth.training.splits import read_participants

    cohort, root = cohort_and_models
    monkeypatch.setenv("MRISYNTH_MODEL_PATH", str(root))
    uri = store[1]
    code = run_report(["report", "classifier", "--model", "rep-cls", "--data", str(cohort),
                       "--out", str(tmp_path / "r"), "--tracking-uri", uri, "--device", "cpu",
                       "--json"])  # fmt: skip
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert printed == report and report["model"] == "rep-cls@1.0.0"
    rows = report["subjects"]
    assert [row["id"] for row in rows] == ["sub-003", "sub-004"]
    diagnosis = {r["participant_id"]: r["diagnosis"] for r in read_participants(cohort)}
    assert [row["truth"] for row in rows] == [diagnosis["sub-003"], diagnosis["sub-004"]]
    image = cohort / "sub-004" / "anat" / "sub-004_T1w.nii.gz"
    expected = classify(image, "rep-cls", device="cpu").probabilities["bvFTD"]
    assert rows[1]["score"] == pytest.approx(expected, abs=1e-5)
    y = [int(row["truth"] == "bvFTD") for row in rows]
    assert report["metrics"]["n_positive"] == sum(y)
    run = MlflowClient(tracking_uri=uri).get_run(report["mlflow"]["run_id"])
    assert run.data.metrics["accuracy"] == pytest.approx(report["metrics"]["accuracy"]["value"])


def test_report_segmenter_command(cohort_and_models, tmp_path, monkeypatch, capsys):
    from napari_mrisynth.io.files import load_volume
    from napari_mrisynth.models.inference import segment

    cohort, root = cohort_and_models
    monkeypatch.setenv("MRISYNTH_MODEL_PATH", str(root))
    out = tmp_path / "s"
    code = run_report(["report", "segmenter", "--model", "rep-seg", "--data", str(cohort),
                       "--subjects", "sub-002", "--out", str(out), "--device", "cpu"])  # fmt: skip
    assert code == 0
    assert "rep-seg@1.0.0 on 1 subjects: mean Dice" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["figures"] == ["dice.png", "hd95.png"]
    row = report["metrics"]["per_subject"][0]
    assert row["id"] == "sub-002"
    truth = load_volume(cohort / "sub-002" / "anat" / "sub-002_labels.nii.gz").compute()
    pred = segment(cohort / "sub-002" / "anat" / "sub-002_T1w.nii.gz", "rep-seg", device="cpu")
    prediction = np.asarray(pred.labels.data)
    dice = metrics.dice_per_label(truth.data, prediction, range(1, 19))
    by_name = {name: dice[value] for value, name in pred.card.label_names.items()}
    # Segmenting the same scan twice on the CPU is not bitwise repeatable here (a few voxels
    # of the random network's label map change between runs), so compare to 0.01.
    for name, value in by_name.items():
        reported = row["dice"][name]
        assert (reported is None) == math.isnan(value), name
        assert reported is None or reported == pytest.approx(value, abs=0.01), name
    # against the real labels, not a copy of the prediction: a random network scores low
    assert report["metrics"]["dice_mean"] < 0.5


def test_report_command_errors(cohort_and_models, tmp_path, monkeypatch):
    from napari_mrisynth.errors import MrisynthError

    cohort, root = cohort_and_models
    monkeypatch.setenv("MRISYNTH_MODEL_PATH", str(root))
    base = ["--data", str(cohort), "--out", str(tmp_path / "x"), "--device", "cpu"]
    with pytest.raises(ModelError, match="names no test subjects"):
        run_report(["report", "classifier", "--model", "rep-nosplit", *base])
    with pytest.raises(MrisynthError, match="no subject sub-099"):
        run_report(["report", "classifier", "--model", "rep-cls", "--subjects", "sub-099", *base])
    with pytest.raises(ModelError, match="segmentation model, not classification|not found|task"):
        run_report(["report", "classifier", "--model", "rep-seg", *base])


def test_missing_extras_name_the_pip_command(cls_report, tmp_path, monkeypatch):
    from napari_mrisynth.errors import MrisynthError
    from napari_mrisynth.reports import plots

    out, report, y, scores = cls_report
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # as if not installed
    with pytest.raises(MrisynthError, match=r"pip install 'napari-mrisynth\[train\]'"):
        plots.plot_roc(y, scores, tmp_path / "roc.png")
    assert not (tmp_path / "roc.png").exists()
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(
        MrisynthError, match=r"needs MLflow: pip install 'napari-mrisynth\[train\]'"
    ):
        log_report_to_mlflow(report, out, tracking_uri=f"sqlite:///{tmp_path}/m.db")
