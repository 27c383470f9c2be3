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
    CnnOptions,
    automated_turing_test,
    classifier_two_sample_test,
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
    assert report.two_sample["texture"]["value"] > 0.9
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
    data = json.loads(out.read_text())["automated_turing"]
    assert set(data["two_sample"]) >= {"texture", "n_real", "folds"}
    assert "cnn" not in data["two_sample"]
    assert data["grid"]["native_resolution"] == 4.0
