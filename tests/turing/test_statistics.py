"""Turing-test statistics against hand-computed answers, and the study report's files."""

from __future__ import annotations

import dataclasses
import json
import math
import sys

import numpy as np
import pytest

from napari_mrisynth.turing.statistics import (
    RatedTrial,
    StatisticsError,
    agreement,
    cohen_kappa,
    fleiss_kappa,
    reader_summary,
    study_statistics,
    validate,
    volume_scores,
)
from napari_mrisynth.turing.study_report import write_study_report


def single(rater, item, volume, synthetic, called, *, confidence=3, realism=None,
           tier="junior", seconds=1.0):  # fmt: skip
    """A single-volume trial: one volume shown, called synthetic or real."""
    return RatedTrial(rater, tier, item, "single", (volume,), (synthetic,), (called,),
                      confidence, (realism,), seconds)  # fmt: skip


def pair(rater, item, correct, *, real_left=True, confidence=3, realism=(None, None),
         tier="junior", seconds=1.0):  # fmt: skip
    """A pair trial of volumes ``<item>-real`` and ``<item>-syn``; ``realism`` is (real, syn)."""
    shown = [
        (f"{item}-real", False, not correct, realism[0]),
        (f"{item}-syn", True, correct, realism[1]),
    ]
    if not real_left:  # the same answer, presented right to left
        shown.reverse()
    volumes, synthetic, called, scores = zip(*shown, strict=True)
    return RatedTrial(rater, tier, item, "pair", volumes, synthetic, called, confidence, scores,
                      seconds)  # fmt: skip


# -- one group ----------------------------------------------------------------------------
def seven_of_ten():
    """4 synthetic volumes (3 called synthetic) and 6 real ones (4 called real): 7 correct."""
    calls = [(True, True)] * 3 + [(True, False)] + [(False, False)] * 4 + [(False, True)] * 2
    return [single("ann", f"i{k}", f"v{k}", truth, called, seconds=float(k))
            for k, (truth, called) in enumerate(calls)]  # fmt: skip


def test_accuracy_wilson_and_single_volume_sensitivity():
    summary = reader_summary(seven_of_ten())
    assert summary["n_trials"] == 10 and summary["n_raters"] == 1
    accuracy = summary["accuracy"]
    assert (accuracy["value"], accuracy["n"], accuracy["correct"]) == (0.7, 10, 7)
    # Wilson, z = 1.959964 (z^2 = 3.841459), p = 0.7, n = 10:
    #   denominator = 1 + z^2/n = 1.3841459
    #   centre = (0.7 + z^2/20) / 1.3841459 = 0.89207295 / 1.3841459 = 0.6444934
    #   half = z / 1.3841459 * sqrt(0.7 * 0.3 / 10 + z^2/400) = 1.4160095 * 0.1749390 = 0.2477153
    #   -> (0.3967781, 0.8922087)
    assert accuracy["ci95"] == pytest.approx([0.3967781, 0.8922087], abs=1e-4)
    # synthetic is positive: TP 3 of 4 synthetic, TN 4 of 6 real
    assert summary["sensitivity"]["value"] == 0.75 and summary["sensitivity"]["n"] == 4
    assert summary["specificity"]["value"] == pytest.approx(4 / 6)
    assert summary["specificity"]["n"] == 6
    assert summary["median_seconds"] == 4.5  # seconds 0..9
    assert summary["mean_realism"] == {"real": None, "synthetic": None}


def test_exact_binomial_test():
    nine = [single("ann", f"i{k}", f"v{k}", True, k != 0) for k in range(10)]
    binomial = reader_summary(nine)["binomial"]
    # P(X >= 9) + P(X <= 1) = (1 + 10 + 10 + 1) / 2^10
    assert binomial["p_value"] == pytest.approx(22 / 1024, abs=1e-12)
    assert (binomial["k"], binomial["n"], binomial["alternative"]) == (9, 10, "two-sided")
    five = [single("ann", f"i{k}", f"v{k}", True, k < 5) for k in range(10)]
    assert reader_summary(five)["binomial"]["p_value"] == pytest.approx(1.0)


def test_pairs_count_once_for_accuracy_and_twice_for_sensitivity():
    trials = [
        pair("ann", "a", True, realism=(4, 2)),
        pair("ann", "b", True, real_left=False, realism=(5, None)),
        pair("ann", "c", False, realism=(3, 5)),
    ]
    summary = reader_summary(trials)
    assert summary["accuracy"]["value"] == pytest.approx(2 / 3)
    assert summary["accuracy"]["n"] == 3  # trials, not volumes
    # a correct pair is 1 TP + 1 TN, the wrong one 1 FN + 1 FP
    assert summary["sensitivity"]["value"] == pytest.approx(2 / 3)
    assert summary["specificity"]["value"] == pytest.approx(2 / 3)
    assert summary["sensitivity"]["n"] == summary["specificity"]["n"] == 3
    assert summary["mean_realism"] == {"real": 4.0, "synthetic": 3.5}  # (4+5+3)/3, (2+5)/2


def test_auc_of_confidence_weighted_calls():
    # scores: synthetic +4, -2, +2; real -5, +2, -2. Concordant (synthetic > real) pairs:
    # +4 beats all 3 -> 3; -2 beats -5, ties -2 -> 1.5; +2 beats -5 and -2, ties +2 -> 2.5;
    # AUC = 7 / 9.
    trials = [
        single("ann", "i1", "s1", True, True, confidence=4),
        single("ann", "i2", "s2", True, False, confidence=2),
        single("ann", "i3", "s3", True, True, confidence=2),
        single("ann", "i4", "r1", False, False, confidence=5),
        single("ann", "i5", "r2", False, True, confidence=2),
        single("ann", "i6", "r3", False, False, confidence=2),
    ]
    summary = reader_summary(trials)
    assert summary["auc"]["value"] == pytest.approx(7 / 9)
    low, high = summary["auc"]["ci95"]
    assert low <= 7 / 9 <= high
    table = summary["rating_table"]
    assert table["scores"] == [-5, -4, -3, -2, -1, 1, 2, 3, 4, 5]
    assert table["synthetic"] == [0, 0, 0, 1, 0, 0, 1, 0, 1, 0]
    assert table["real"] == [1, 0, 0, 1, 0, 0, 1, 0, 0, 0]


def test_auc_undefined_with_one_class():
    trials = [single("ann", f"i{k}", f"s{k}", True, k % 2 == 0) for k in range(4)]
    auc = reader_summary(trials)["auc"]
    assert auc["value"] is None and auc["ci95"] is None
    assert "both classes" in auc["note"] and "only synthetic" in auc["note"]
    assert reader_summary(trials)["specificity"] == {
        "value": None,
        "ci95": None,
        "n": 0,
        "note": "undefined: no real volume was shown",
    }


# -- agreement ----------------------------------------------------------------------------
# Fleiss (1971) as worked on Wikipedia: 10 items, 14 raters, 5 categories; kappa = 0.210.
FLEISS_EXAMPLE = [
    [0, 0, 0, 0, 14],
    [0, 2, 6, 4, 2],
    [0, 0, 3, 5, 6],
    [0, 3, 9, 2, 0],
    [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0],
    [3, 2, 6, 3, 0],
    [2, 5, 3, 2, 2],
    [6, 5, 2, 1, 0],
    [0, 2, 2, 3, 7],
]


def wikipedia_cohen_answers():
    """Wikipedia's Cohen example: 20 both yes, 5 A yes/B no, 10 A no/B yes, 15 both no."""
    a = ["yes"] * 20 + ["yes"] * 5 + ["no"] * 10 + ["no"] * 15
    b = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    return a, b


def test_cohen_kappa_wikipedia_example():
    # p_o = 35/50 = 0.7; p_e = 0.5 * 0.6 + 0.5 * 0.4 = 0.5; kappa = 0.2 / 0.5
    assert cohen_kappa(*wikipedia_cohen_answers()) == pytest.approx(0.4)
    assert cohen_kappa("abab", "abab") == 1.0
    assert math.isnan(cohen_kappa("aaa", "aaa"))  # p_e = 1: undefined
    with pytest.raises(StatisticsError):
        cohen_kappa("ab", "abc")


def test_fleiss_kappa_wikipedia_example():
    # mean P_i = 0.378, sum p_j^2 = 0.213 -> (0.378 - 0.213) / (1 - 0.213) = 0.210
    assert fleiss_kappa(np.array(FLEISS_EXAMPLE)) == pytest.approx(0.210, abs=1e-3)
    assert math.isnan(fleiss_kappa([[3, 0], [3, 0]]))
    with pytest.raises(StatisticsError, match="same number"):
        fleiss_kappa([[2, 1], [1, 1]])


def test_agreement_uses_cohen_for_two_raters():
    a, b = wikipedia_cohen_answers()
    # single mode: "yes" is "called synthetic"; the truth does not enter the category
    trials = [single("ann", f"i{k}", f"v{k}", k % 3 == 0, call == "yes")
              for k, call in enumerate(a)]  # fmt: skip
    trials += [single("bob", f"i{k}", f"v{k}", k % 3 == 0, call == "yes")
               for k, call in enumerate(b)]  # fmt: skip
    result = agreement(trials)
    assert result["method"] == "cohen"
    assert result["kappa"] == pytest.approx(0.4)
    assert result["observed_agreement"] == pytest.approx(0.7)
    assert (result["n_items"], result["raters"]) == (50, ["ann", "bob"])


def test_agreement_uses_fleiss_for_three_raters_on_common_items():
    # calls synthetic per item for ann, bob, cat: counts [3,0], [0,3], [2,1], [1,2]
    # P_i = 1, 1, 1/3, 1/3 -> mean 2/3; p = (1/2, 1/2) -> P_e = 1/2; kappa = 1/3
    calls = {"ann": [1, 0, 1, 0], "bob": [1, 0, 1, 1], "cat": [1, 0, 0, 0]}
    trials = [single(rater, f"i{k}", f"v{k}", True, bool(c))
              for rater, row in calls.items() for k, c in enumerate(row)]  # fmt: skip
    trials.append(single("ann", "extra", "v9", True, True))  # only ann: not a common item
    result = agreement(trials)
    assert result["method"] == "fleiss"
    assert result["kappa"] == pytest.approx(1 / 3)
    assert result["observed_agreement"] == pytest.approx(2 / 3)
    assert result["n_items"] == 4 and result["raters"] == ["ann", "bob", "cat"]


def test_pair_agreement_ignores_presentation_order():
    a, b = wikipedia_cohen_answers()  # "yes": chose the real volume
    rng = np.random.default_rng(0)

    def trials(flip_bob):
        out = [pair("ann", f"i{k}", call == "yes", real_left=bool(rng.integers(2)))
               for k, call in enumerate(a)]  # fmt: skip
        out += [pair("bob", f"i{k}", call == "yes", real_left=flip_bob ^ (k % 2 == 0))
                for k, call in enumerate(b)]  # fmt: skip
        return out

    assert agreement(trials(False)) == agreement(trials(True))
    assert agreement(trials(False))["kappa"] == pytest.approx(0.4)


def test_agreement_undefined_cases():
    one = agreement([single("ann", "i1", "v1", True, True)])
    assert one["method"] is None and one["kappa"] is None and "two or more" in one["note"]
    disjoint = agreement([single("ann", "i1", "v1", True, True),
                          single("bob", "i2", "v2", True, True)])  # fmt: skip
    assert disjoint["method"] is None and disjoint["n_items"] == 0 and "no item" in disjoint["note"]
    same = agreement([single(r, "i1", "v1", True, True) for r in ("ann", "bob")])
    assert same["method"] == "cohen" and same["kappa"] is None and "undefined" in same["note"]
    assert same["observed_agreement"] == 1.0


# -- volumes, tiers, validation -----------------------------------------------------------
def test_volume_scores_fooled_rate_and_realism():
    trials = [
        pair("ann", "a", False, confidence=2, realism=(3, 4)),  # fooled by a-syn
        pair("bob", "a", False, real_left=False, confidence=3, realism=(2, 5)),  # fooled
        pair("cat", "a", True, confidence=4, realism=(1, None)),
    ]
    scores = volume_scores(trials)
    assert list(scores) == ["a-real", "a-syn"]
    synthetic = scores["a-syn"]
    assert synthetic["synthetic"] is True and synthetic["n_judgments"] == 3
    assert synthetic["fooled_rate"] == pytest.approx(2 / 3)
    assert synthetic["mean_realism"] == 4.5  # (4 + 5) / 2, cat gave none
    assert synthetic["mean_confidence"] == 3.0  # (2 + 3 + 4) / 3
    real = scores["a-real"]
    assert real["synthetic"] is False and "fooled_rate" not in real
    assert real["called_synthetic_rate"] == pytest.approx(2 / 3)
    assert real["mean_realism"] == 2.0  # (3 + 2 + 1) / 3


def test_study_statistics_groups_raters_by_tier():
    tiers = {"ann": "junior", "bob": "junior", "cat": "senior"}
    trials = [pair(rater, f"i{k}", k < 3 or rater == "cat", tier=tier, seconds=10.0 + k)
              for rater, tier in tiers.items() for k in range(4)]  # fmt: skip
    stats = study_statistics(trials)
    assert stats["mode"] == "pair" and stats["ci_level"] == 0.95
    assert list(stats["raters"]) == ["ann", "bob", "cat"]
    assert stats["rater_tiers"] == tiers
    assert list(stats["tiers"]) == ["junior", "senior"]
    junior, senior = stats["tiers"]["junior"], stats["tiers"]["senior"]
    assert (junior["n_raters"], junior["n_trials"], junior["accuracy"]["correct"]) == (2, 8, 6)
    assert (senior["n_raters"], senior["n_trials"], senior["accuracy"]["correct"]) == (1, 4, 4)
    assert stats["pooled"]["n_trials"] == 12 and stats["pooled"]["accuracy"]["correct"] == 10
    assert stats["agreement"]["method"] == "fleiss"
    assert stats["agreement_by_tier"]["junior"]["method"] == "cohen"
    assert stats["agreement_by_tier"]["senior"]["method"] is None
    json.dumps(stats, allow_nan=False)  # JSON-ready


def test_mixed_modes_and_no_ratings_are_refused():
    with pytest.raises(StatisticsError, match="no ratings"):
        study_statistics([])
    with pytest.raises(StatisticsError, match="pooled"):
        reader_summary([pair("ann", "a", True), single("ann", "b", "v", True, True)])


GOOD = pair("alice", "i7", True)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"mode": "triple"}, "mode"),
        ({"volumes": ("x",)}, "volumes"),
        ({"volumes": ("x", "x")}, "twice"),
        ({"synthetic": (True, True)}, "exactly one"),
        ({"called_synthetic": (False, False)}, "exactly one"),
        ({"called_synthetic": (1, 0)}, "booleans"),
        ({"confidence": 0}, "confidence"),
        ({"confidence": 6}, "confidence"),
        ({"confidence": True}, "confidence"),
        ({"realism": (3, 9)}, "realism"),
        ({"seconds": -1.0}, "seconds"),
        ({"seconds": math.nan}, "seconds"),
        ({"tier": ""}, "tier"),
    ],
)
def test_malformed_trial_names_rater_and_item(change, problem):
    with pytest.raises(StatisticsError, match=problem) as caught:
        validate([dataclasses.replace(GOOD, **change)])
    assert "'alice'" in str(caught.value) and "'i7'" in str(caught.value)


@pytest.mark.parametrize(
    ("second", "problem"),
    [
        (pair("alice", "i7", False), "twice"),
        (pair("alice", "i8", True, tier="senior"), "tier"),
        (dataclasses.replace(pair("bob", "i7", True), volumes=("i7-real", "other")), "shown"),
        (single("bob", "i9", "i7-syn", False, False), "real here but synthetic"),
    ],
)
def test_conflicting_trials_are_refused(second, problem):
    with pytest.raises(StatisticsError, match=problem) as caught:
        validate([GOOD, second])
    assert f"'{second.rater}'" in str(caught.value) and f"'{second.item}'" in str(caught.value)
    assert validate([GOOD]) is None


def test_correct_property():
    assert GOOD.correct and not pair("alice", "i7", False).correct


# -- report --------------------------------------------------------------------------------
def report_trials():
    raters = {"<script>alert(1)</script>": "senior", "ann": "junior", "price$\\nope$": "junior"}
    rng = np.random.default_rng(1)
    return [
        pair(rater, f"i{k}", bool(rng.random() < 0.6), real_left=bool(rng.integers(2)),
             confidence=int(rng.integers(1, 6)), tier=tier,
             realism=(int(rng.integers(1, 6)), int(rng.integers(1, 6))))
        for rater, tier in raters.items()
        for k in range(6)
    ]  # fmt: skip


def test_write_study_report(tmp_path):
    image = pytest.importorskip("matplotlib.image")
    stats = study_statistics(report_trials())
    written = write_study_report(stats, tmp_path / "out", title="VTT <1>",
                                 study={"name": "pilot & co", "raters": 3})  # fmt: skip
    out = tmp_path / "out"
    assert written["markdown"] == out / "report.md" and written["html"] == out / "report.html"
    assert written["json"] == out / "statistics.json"
    assert set(written["plots"]) == {"accuracy_by_rater", "volume_scores", "confidence_roc"}
    assert json.loads(written["json"].read_text()) == stats
    page = written["html"].read_text()
    assert "<script" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "VTT &lt;1&gt;" in page
    assert "pilot &amp; co" in page
    for name in written["plots"].values():
        assert f'src="{name.name}"' in page
    markdown = written["markdown"].read_text()
    assert "<script" not in markdown and "](accuracy_by_rater.png)" in markdown
    for path in written["plots"].values():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        pixels = image.imread(path)
        assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert not list(out.glob(".*.tmp"))  # every file moved into place
    assert sorted(p.name for p in out.iterdir()) == [
        "accuracy_by_rater.png", "confidence_roc.png", "report.html", "report.md",
        "statistics.json", "volume_scores.png",
    ]  # fmt: skip


def test_report_without_matplotlib_keeps_the_tables(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    stats = study_statistics(report_trials())
    assert len(write_study_report(stats, tmp_path, title="t")["plots"]) == 3
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # as if not installed
    written = write_study_report(stats, tmp_path, title="t")
    assert written["plots"] == {}
    assert not list(tmp_path.glob("*.png"))  # the earlier report's figures are gone
    assert "not drawn" in written["markdown"].read_text()
    assert "Per rater" in written["html"].read_text()
    with pytest.raises(StatisticsError, match="study_statistics"):
        write_study_report({"pooled": {}}, tmp_path, title="t")


def test_report_skips_figures_without_data(tmp_path):
    pytest.importorskip("matplotlib")
    # single mode, synthetic volumes only, no realism scores: no scatter and no ROC
    trials = [single(r, f"i{k}", f"s{k}", True, k % 2 == 0) for r in ("ann", "bob")
              for k in range(4)]  # fmt: skip
    written = write_study_report(study_statistics(trials), tmp_path, title="t")
    assert set(written["plots"]) == {"accuracy_by_rater"}
    page = written["html"].read_text()
    assert "no synthetic volume has a realism score" in page and "both classes" in page
