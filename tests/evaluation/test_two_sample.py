"""The automated Turing test: sharpness and classifier two-sample tests on prepared volumes.

Known answers first (a linear ramp's gradient, blur removing high frequencies, identical
distributions at chance, separable ones at AUC 1), then the whole test on simulated heads
against blurred copies of them, through the function and the CLI.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_mrisynth.cli import main
from napari_mrisynth.cohort import simulate_subject
from napari_mrisynth.evaluation.sharpness import (
    gradient_statistics,
    high_frequency_energy,
    sharpness_report,
)
from napari_mrisynth.evaluation.two_sample import (
    TEXTURE_FEATURES,
    CnnOptions,
    automated_turing_test,
    classifier_two_sample_test,
    feature_giveaways,
    texture_scores,
)
from napari_mrisynth.io.files import save_volume

TINY_CNN = CnnOptions(patch=16, patches_per_volume=4, eval_patches=4, epochs=2, width=4)


def test_gradient_of_a_ramp_is_its_slope():
    z, y, x = np.meshgrid(*(np.arange(n, dtype=float) for n in (10, 12, 14)), indexing="ij")
    ramp = 3.0 * x + 4.0 * y  # grey levels per voxel
    region = np.zeros(ramp.shape, bool)
    region[2:-2, 2:-2, 2:-2] = True
    stats = gradient_statistics(ramp, region, spacing=2.0)
    assert stats["p50"] == pytest.approx(2.5) and stats["p90"] == pytest.approx(2.5)


def test_blur_removes_high_frequency_energy():
    rng = np.random.default_rng(0)
    sharp = rng.normal(100, 20, (40, 40, 40))
    blurred = ndi.gaussian_filter(sharp, 1.5)
    region = np.zeros(sharp.shape, bool)
    region[4:-4, 4:-4, 4:-4] = True
    assert high_frequency_energy(blurred, region) < 0.05 * high_frequency_energy(sharp, region)
    # white noise: the shell between half and full Nyquist holds 46 % of the spectrum's
    # volume; the window's taper keeps about 60 % of the power
    assert 0.2 * 20**2 < high_frequency_energy(sharp, region) < 0.46 * 20**2


def test_texture_classifier_is_at_chance_on_one_distribution_and_sure_on_two():
    rng = np.random.default_rng(1)
    same = rng.normal(size=(60, 5))
    labels = np.array([0] * 30 + [1] * 30)
    scores = texture_scores(same, labels, seed=0)
    from napari_mrisynth.reports.metrics import roc_auc

    assert 0.25 < roc_auc(labels, scores) < 0.75
    shifted = same.copy()
    shifted[labels == 1, 2] += 4.0
    assert roc_auc(labels, texture_scores(shifted, labels, seed=0)) > 0.99


def test_giveaways_rank_each_statistic_by_how_well_it_alone_separates_the_sets():
    labels = np.array([0, 0, 0, 1, 1, 1])
    features = np.zeros((6, 3))
    features[:, 0] = [1.0, 2.0, 3.0, 1.0, 2.0, 3.0]  # the same in both sets
    features[:, 1] = [5.0, 6.0, 7.0, 1.0, 2.0, 3.0]  # synthetic lower: separates alone
    features[:, 2] = [1.0, 2.0, 4.0, 2.0, 3.0, 5.0]  # higher, overlapping
    found = feature_giveaways(features, labels, names=("same", "lower", "higher"))
    assert [g["feature"] for g in found] == ["lower", "higher", "same"]
    lower, higher, same = found
    assert lower["auc"] == 0.0 and lower["d"] == pytest.approx(-4.0)  # means 2 vs 6, SD 1
    assert lower["real"] == [pytest.approx(6.0), pytest.approx(1.0)]
    # P(synthetic > real): 2>1; 3>1,2; 5>1,2,4 = 6 of 9 pairs, the tie 2=2 counts half
    assert higher["auc"] == pytest.approx(6.5 / 9)
    assert same["auc"] == 0.5 and same["d"] == 0.0


def test_unmatched_volumes_are_the_shown_ones_before_the_histogram_matching(heads):
    from napari_mrisynth.evaluation.presentation import present_volumes

    real, _ = heads
    unmatched: list[np.ndarray] = []
    grid, shown = present_volumes(real[:1], spacing=4.0, unmatched=unmatched)
    assert len(unmatched) == 1 and unmatched[0].shape == shown[0].shape == grid.shape
    # one volume is matched to its own histogram: matching changes nothing but rounding
    expected = np.clip(np.rint(unmatched[0].astype(np.float64)), 0, 255)
    difference = np.abs(expected - shown[0])
    assert difference.max() <= 1 and difference.mean() < 0.05
    assert unmatched[0][shown[0] == 0].max() <= 0.5  # zero outside the head, as shown


def test_two_sample_test_needs_enough_volumes():
    from napari_mrisynth.evaluation.folders import EvaluationError

    few = [np.zeros((4, 4, 4), np.uint8)] * 3
    with pytest.raises(EvaluationError, match="at least 5 real and 5 synthetic"):
        classifier_two_sample_test(few, few, 4.0)


@pytest.fixture(scope="module")
def heads():
    """Six simulated heads at 4 mm and blurred copies: a generator that blurs."""
    real = [simulate_subject(f"sub-{k}", "control", 40 + k, 4.0).t1 for k in range(6)]
    blurred = []
    for k, volume in enumerate(simulate_subject(f"sub-b{k}", "control", 60 + k, 4.0).t1
                               for k in range(6)):  # fmt: skip
        data = ndi.gaussian_filter(np.asarray(volume.data, dtype=np.float32), 1.2)
        blurred.append(volume.with_data(data, name=f"blurred-{k}"))
    return real, blurred


def test_blurred_heads_are_caught_and_measured_blurry(heads):
    real, blurred = heads
    report = automated_turing_test(real, blurred, folds=3, cnn=TINY_CNN, seed=0)
    assert report.grid["spacing"] == 4.0 and not report.grid["degraded"]
    texture = report.two_sample["texture"]
    assert texture["value"] > 0.9
    giveaways = texture["giveaways"]
    assert sorted(g["feature"] for g in giveaways) == sorted(TEXTURE_FEATURES)
    spread = [abs(g["auc"] - 0.5) for g in giveaways]
    assert spread == sorted(spread, reverse=True)
    by_name = {g["feature"]: g for g in giveaways}
    # blur: weaker gradients and less high-frequency energy, with or without matching
    assert by_name["grad_p90"]["auc"] < 0.2 and by_name["grad_p90"]["d"] < -1
    before = {g["feature"]: g for g in texture["before_matching"]["giveaways"]}
    assert before["band_4"]["auc"] < 0.2 and texture["before_matching"]["value"] > 0.9
    cnn = report.two_sample["cnn"]
    assert 0.0 <= cnn["value"] <= 1.0 and len(cnn["scores"]["synthetic"]) == 6
    assert report.sharpness["hf_energy"]["ratio"] < 0.6
    assert 0.7 < report.sharpness["hf_energy"]["floor"] < 1.4  # real halves agree
    assert len(report.names["real"]) == 6 and report.names["synthetic"][0] == "blurred-0"


def test_identical_sets_have_a_ratio_of_one(heads):
    real, _ = heads
    from napari_mrisynth.evaluation.presentation import present_volumes

    grid, shown = present_volumes(real, spacing=4.0)
    report = sharpness_report(shown, shown, grid.spacing)
    for key in ("hf_energy", "gradient_p50", "gradient_p90"):
        assert report[key]["ratio"] == pytest.approx(1.0)


def test_cli_evaluate_runs_the_automated_turing_test(tmp_path, heads, capsys):
    real, blurred = heads
    for folder, volumes in (("real", real), ("synthetic", blurred)):
        for k, volume in enumerate(volumes[:5]):
            save_volume(volume, tmp_path / folder / f"{folder[0]}{k}.nii.gz")
    out = tmp_path / "evaluation.json"
    assert main(["evaluate", "--real", str(tmp_path / "real"), "--synthetic",
                 str(tmp_path / "synthetic"), "--metrics", "mmd", "--classifiers", "texture",
                 "--device", "cpu", "--json", str(out)]) == 0  # fmt: skip
    table = capsys.readouterr().out
    assert "automated Turing test on volumes prepared as raters see them (4 mm grid)" in table
    assert "texture  AUC" in table and "high-frequency energy" in table
    assert "    gives it away: " in table and "    before matching: AUC " in table
    data = json.loads(out.read_text())["automated_turing"]
    assert set(data["two_sample"]) >= {"texture", "n_real", "folds"}
    assert "cnn" not in data["two_sample"]
    assert data["grid"]["native_resolution"] == 4.0
