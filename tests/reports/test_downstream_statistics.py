"""The downstream report's statistics against known answers (no training)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_mrisynth.reports.downstream import (
    bootstrap_mean,
    markdown,
    paired_difference,
    plot_scores,
    summarize,
)


def test_bootstrap_mean_of_equal_values_has_a_zero_width_interval():
    result = bootstrap_mean([0.7] * 5)
    assert result["mean"] == pytest.approx(0.7)
    assert result["ci95"] == pytest.approx([0.7, 0.7])
    assert bootstrap_mean([0.7])["ci95"] is None  # one value: no interval


def test_bootstrap_interval_covers_the_mean_and_matches_the_normal_approximation():
    values = np.random.default_rng(1).normal(0.05, 0.1, 200)
    result = bootstrap_mean(values, resamples=20000)
    se = values.std(ddof=0) / np.sqrt(values.size)
    low, high = result["ci95"]
    assert low < values.mean() < high
    assert high - low == pytest.approx(2 * 1.96 * se, rel=0.08)
    assert bootstrap_mean(values, resamples=20000) == result  # seeded


def test_paired_difference_counts_wins_and_agrees_with_scipy():
    from scipy import stats

    a = [0.80, 0.75, 0.90, 0.70, 0.85, 0.60]
    b = [0.70, 0.75, 0.80, 0.72, 0.70, 0.50]
    result = paired_difference(a, b)
    d = np.subtract(a, b)
    assert result["mean"] == pytest.approx(d.mean())
    assert (result["wins"], result["losses"], result["ties"]) == (4, 1, 1)
    assert result["wilcoxon_p"] == pytest.approx(stats.wilcoxon(d).pvalue)
    assert result["t_p"] == pytest.approx(stats.ttest_rel(a, b).pvalue)
    assert result["ci95"][0] < d.mean() < result["ci95"][1]
    same = paired_difference(a, a)
    assert same["mean"] == 0 and same["wilcoxon_p"] is None and same["ties"] == 6
    with pytest.raises(ValueError, match="length"):
        paired_difference(a, b[:3])


def _records(gain: float, noise: float, repeats: int = 8, seed: int = 0):
    rng = np.random.default_rng(seed)
    for r in range(repeats):
        base = 0.7 + rng.normal(0, 0.05)
        for arm, shift in (("real", 0.0), ("real+classical", 0.01),
                           ("real+synthetic", 0.01 + gain)):  # fmt: skip
            yield {"task": "classification", "arm": arm, "repeat": r, "size": 10,
                   "test": {"auc": base + shift + rng.normal(0, noise)}}  # fmt: skip


PRIMARY = {"task": "classification", "size": 10,
           "contrast": ("real+synthetic", "real+classical"), "gain": 0.03}  # fmt: skip
CONTRASTS = [("real+synthetic", "real+classical"), ("real+synthetic", "real"),
             ("synthetic", "real")]  # fmt: skip


def test_summary_verdict_follows_the_primary_rule():
    clear = summarize(_records(0.08, 0.005), contrasts=CONTRASTS, primary=PRIMARY)
    assert clear["primary"]["met"] is True
    assert clear["primary"]["difference"]["mean"] == pytest.approx(0.08, abs=0.01)
    none = summarize(_records(0.0, 0.005), contrasts=CONTRASTS, primary=PRIMARY)
    assert none["primary"]["met"] is False
    small = summarize(_records(0.015, 0.001), contrasts=CONTRASTS, primary=PRIMARY)
    assert small["primary"]["difference"]["ci95"][0] > 0  # real, but below the target gain
    assert small["primary"]["met"] is False
    entry = clear["results"]["classification"]["10"]
    assert entry["arms"]["real"]["n"] == 8 and entry["arms"]["real"]["repeats"] == list(range(8))
    # a contrast with an arm that never ran is left out, not invented
    assert [(c["first"], c["second"]) for c in entry["contrasts"]] == CONTRASTS[:2]


def test_summary_pairs_only_repeats_both_arms_ran():
    records = [r for r in _records(0.05, 0.0) if not (r["arm"] == "real" and r["repeat"] >= 5)]
    entry = summarize(records, contrasts=CONTRASTS, primary=PRIMARY)["results"]
    pair = entry["classification"]["10"]["contrasts"][1]
    assert (pair["first"], pair["second"], pair["n"]) == ("real+synthetic", "real", 5)
    one = summarize(list(_records(0.05, 0.0, repeats=1)), contrasts=CONTRASTS, primary=PRIMARY)
    assert one["primary"]["met"] is None  # undecided with one repeat


def test_markdown_and_figure(tmp_path):
    summary = summarize(_records(0.08, 0.005), contrasts=CONTRASTS, primary=PRIMARY)
    text = markdown(summary, ["real", "real+classical", "real+synthetic"])
    assert "| real+synthetic − real+classical |" in text
    assert "**Primary endpoint**" in text and ": met." in text
    path = plot_scores(summary, ["real", "real+classical", "real+synthetic"], tmp_path / "s.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
