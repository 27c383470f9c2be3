"""Memorization audit on simulated heads: copies of training subjects are flagged, a new
subject is not (4 mm subjects aligned onto the 2 mm model grid, ~15 s on a CPU)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_mrisynth.cli import main
from napari_mrisynth.cohort.simulate import simulate_subject
from napari_mrisynth.evaluation import EvaluationError, audit_memorization
from napari_mrisynth.evaluation.common_grid import model_input_spec
from napari_mrisynth.io.files import save_volume
from napari_mrisynth.preprocess import Alignment, ModelGrid, prepare


def _subject(seed: int, name: str):
    t1 = simulate_subject(name, ("control", "bvFTD")[seed % 2], seed, 4.0).t1
    return t1.with_data(t1.data, name=name)


def _noised(volume, fraction: float, seed: int, name: str, shift: int = 0):
    """Gaussian noise of ``fraction`` of the intensity range, optionally moved one voxel."""
    data = np.asarray(volume.data, np.float32)
    spread = float(np.percentile(data, 99.5) - np.percentile(data, 0.5))
    noisy = data + np.random.default_rng(seed).normal(0.0, fraction * spread, data.shape)
    noisy = np.roll(np.clip(noisy, 0, None), shift, axis=2)
    return volume.with_data(noisy.astype(np.float32), name=name)


@pytest.fixture(scope="module")
def train():
    return [_subject(200 + i, f"train-{i}") for i in range(5)]


@pytest.fixture(scope="module")
def synthetic(train):
    return [
        train[0].with_data(train[0].data, name="copy-of-0"),
        _noised(train[1], 0.05, 1, "noised-copy-of-1"),
        _noised(train[2], 0.03, 2, "shifted-noised-copy-of-2", shift=1),
        _subject(300, "new-subject"),
    ]


@pytest.fixture(scope="module")
def audit(train, synthetic):
    calls = []
    report = audit_memorization(train, synthetic, progress=lambda d, t: calls.append((d, t)))
    return report, calls


def test_copies_are_flagged_and_a_new_subject_is_not(audit):
    report, _ = audit
    entries = {entry["synthetic"]: entry for entry in report.entries}
    assert entries["copy-of-0"]["nearest"] == "train-0"
    assert entries["copy-of-0"]["similarity"] == pytest.approx(1.0, abs=1e-6)
    assert entries["noised-copy-of-1"]["nearest"] == "train-1"
    assert entries["shifted-noised-copy-of-2"]["nearest"] == "train-2"
    flagged = {name for name, entry in entries.items() if entry["flagged"]}
    assert flagged == {"copy-of-0", "noised-copy-of-1", "shifted-noised-copy-of-2"}
    for entry in report.entries:
        assert entry["margin"] == pytest.approx(entry["similarity"] - report.threshold)
        assert (entry["margin"] > 0) == entry["flagged"]
    assert report.summary() == "3 of 4 flagged"


def test_threshold_comes_from_the_training_sets_own_neighbours(audit, train):
    report, calls = audit
    assert len(report.real_nn) == len(train)
    values = report.real_nn
    assert [row["similarity"] for row in report.real_nn_pairs] == values
    assert all(row["nearest"] != row["train"] for row in report.real_nn_pairs)
    assert report.threshold == pytest.approx((1.0 + max(values)) / 2.0)
    assert "half the smallest" in report.rule
    # one template: different simulated heads correlate highly, yet well below a copy
    assert 0.7 < max(values) < 0.97
    assert calls[-1] == (9, 9)
    data = json.loads(json.dumps(report.to_json()))
    assert data["flagged"] == 3 and data["n_train"] == 5
    assert data["real_nn_summary"]["max"] == pytest.approx(max(values))
    assert data["common_grid"]["method"] == "aligned to the model grid"


def test_an_explicit_threshold_and_volumes_on_one_grid(train, synthetic):
    # resampled onto the model grid without registration (fast; poses left as they are)
    spec = model_input_spec()
    grid = ModelGrid.from_input_spec(spec)
    on_grid = [
        grid.volume(prepare(v, spec, alignment=Alignment.identity()).image, name=f"v{i}")
        for i, v in enumerate(train[:3] + synthetic[3:])
    ]
    report = audit_memorization(on_grid[:3], on_grid[:3] + on_grid[3:], threshold=0.999)
    assert report.common_grid["method"] == "as-is"
    assert [e["flagged"] for e in report.entries] == [True, True, True, False]
    assert report.rule == "given" and report.threshold == 0.999
    single = audit_memorization(on_grid[:1], on_grid[3:], threshold=0.95).to_json()
    assert single["n_train"] == 1 and single["real_nn"] == [] and single["flagged"] == 0
    with pytest.raises(EvaluationError, match="two training volumes"):
        audit_memorization(on_grid[:1], on_grid[3:])


def test_cli_audit_prints_the_table_and_writes_json(tmp_path, train, synthetic, capsys):
    for volume in train[:3]:
        save_volume(volume, tmp_path / "train" / f"{volume.metadata['name']}.nii.gz")
    for volume in (synthetic[0], synthetic[3]):
        save_volume(volume, tmp_path / "synthetic" / f"{volume.metadata['name']}.nii.gz")
    out = tmp_path / "audit.json"
    args = ["audit", "--train", str(tmp_path / "train"), "--synthetic",
            str(tmp_path / "synthetic"), "--json", str(out)]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "FLAGGED" in printed and "1 of 2 flagged" in printed
    data = json.loads(out.read_text())
    entries = {entry["synthetic"]: entry for entry in data["entries"]}
    assert entries["copy-of-0"]["flagged"] and entries["copy-of-0"]["nearest"] == "train-0"
    assert not entries["new-subject"]["flagged"]
    assert data["threshold"] < entries["copy-of-0"]["similarity"]
    assert len(data["real_nn"]) == len(data["real_nn_pairs"]) == 3

    (tmp_path / "synthetic" / "broken.nii.gz").write_bytes(b"\x1f\x8b truncated")
    assert main(args) == 1
    assert "broken.nii.gz" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["audit", "--train", str(tmp_path / "empty"), "--synthetic", "x"]) == 1
    assert "empty: no volume files" in capsys.readouterr().err
