"""Turing-study statistics and report at the edges (issue #13).

Accuracy 0 % and 100 %, a single trial, a single rater, tied confidences and one class only,
in single and pair mode: every statistic against a known answer, the report written without a
traceback, ``statistics.json`` strict JSON, each figure either a real PNG or skipped with its
reason, and no ``nan`` in the tables.
"""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from scipy import stats

from napari_mrisynth.reports import metrics
from napari_mrisynth.turing.statistics import RatedTrial, study_statistics
from napari_mrisynth.turing.study_report import PLOT_FILES, write_study_report

#: z of a two-sided 95 % interval, and Wilson bounds at the edges: at x = n the lower bound
#: is n / (n + z^2), at x = 0 the upper bound is z^2 / (n + z^2).
Z2 = stats.norm.ppf(0.975) ** 2

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def single(rater, item, volume, synthetic, called, *, confidence=3, realism=4, tier="senior"):
    """A single-volume trial."""
    return RatedTrial(rater, tier, item, "single", (volume,), (synthetic,), (called,),
                      confidence, (realism,), 2.0)  # fmt: skip


def pair(rater, item, correct, *, confidence=3, tier="senior"):
    """A pair trial of ``<item>-real`` (left) and ``<item>-syn``, chosen right or wrong."""
    return RatedTrial(rater, tier, item, "pair", (f"{item}-real", f"{item}-syn"), (False, True),
                      (not correct, correct), confidence, (4, 3), 2.0)  # fmt: skip


def answered(mode, correct, *, rater="ann", confidences=None):
    """One rater's trials, ``correct[k]`` telling whether trial ``k`` was answered right.

    Single mode alternates synthetic (even ``k``) and real volumes, so both classes are shown
    once there are two trials.
    """
    confidences = confidences or [1 + k % 5 for k in range(len(correct))]
    if mode == "pair":
        return [pair(rater, f"i{k}", ok, confidence=c)
                for k, (ok, c) in enumerate(zip(correct, confidences, strict=True))]  # fmt: skip
    return [
        single(rater, f"i{k}", f"v{k}", k % 2 == 0, (k % 2 == 0) == ok, confidence=c)
        for k, (ok, c) in enumerate(zip(correct, confidences, strict=True))
    ]


def _refuse_constant(name):
    raise ValueError(f"not strict JSON: {name}")


def _finite_everywhere(value):
    """No NaN or infinity anywhere in a JSON-ready structure."""
    if isinstance(value, dict):
        return all(_finite_everywhere(v) for v in value.values())
    if isinstance(value, list):
        return all(_finite_everywhere(v) for v in value)
    return not isinstance(value, float) or math.isfinite(value)


def report(statistics, tmp_path, *, drawn, skipped=None):
    """Write the report and check its files; returns (written, markdown, html).

    ``drawn``: the figures that must be valid, non-blank PNGs; ``skipped``: figure name -> a
    phrase its stated reason must hold. Together they name every figure.
    """
    skipped = skipped or {}
    assert set(drawn) | set(skipped) == set(PLOT_FILES)
    assert _finite_everywhere(statistics)
    written = write_study_report(statistics, tmp_path, title="edge")
    text = written["json"].read_text()
    assert json.loads(text, parse_constant=_refuse_constant) == statistics
    assert set(written["plots"]) == set(drawn)
    image = pytest.importorskip("matplotlib.image")
    for name in drawn:
        path = tmp_path / PLOT_FILES[name]
        assert written["plots"][name] == path
        data = path.read_bytes()
        assert len(data) > 1000 and data[:8] == PNG_SIGNATURE
        pixels = image.imread(path)
        assert pixels.ndim == 3 and min(pixels.shape[:2]) > 100
        assert float(pixels[..., :3].std()) > 0.01  # something was drawn
    markdown, page = written["markdown"].read_text(), written["html"].read_text()
    for name, reason in skipped.items():
        assert not (tmp_path / PLOT_FILES[name]).exists()
        assert re.search(f"{name}: not drawn: [^<]*{re.escape(reason)}", page)
        escaped = re.escape(name.replace("_", "\\_"))  # Markdown escapes underscores
        assert re.search(f"{escaped}: not drawn: .*{re.escape(reason)}", markdown)
    for text in (markdown, page):
        assert not re.search(r"\b(nan|inf|infinity)\b", text, re.IGNORECASE)
    return written, markdown, page


# -- the Wilson interval at the edges -------------------------------------------------------
def test_wilson_interval_known_edges():
    # n = 10, z = 1.959964: x = 10 -> (10 / 13.841459, 1); x = 0 -> (0, 3.841459 / 13.841459)
    low, high = metrics.wilson_interval(10, 10)
    assert high == 1.0 and low == pytest.approx(0.72246720, abs=1e-7)
    low, high = metrics.wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.27753280, abs=1e-7)


@pytest.mark.parametrize("confidence", [0.8, 0.95, 0.99])
def test_wilson_interval_encloses_the_estimate_exactly(confidence):
    # rounding once put the upper bound at 0.9999999999999999 for 10 of 10
    for n in range(1, 201):
        assert metrics.wilson_interval(n, n, confidence)[1] == 1.0
        assert metrics.wilson_interval(0, n, confidence)[0] == 0.0
        for x in range(n + 1):
            low, high = metrics.wilson_interval(x, n, confidence)
            assert 0.0 <= low <= x / n <= high <= 1.0


# -- accuracy 100 % and 0 % ------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["single", "pair"])
def test_perfect_rater(mode, tmp_path):
    statistics = study_statistics(answered(mode, [True] * 10))
    pooled = statistics["pooled"]
    assert statistics["raters"]["ann"] == pooled  # one rater: the same group
    accuracy = pooled["accuracy"]
    assert (accuracy["value"], accuracy["correct"], accuracy["n"]) == (1.0, 10, 10)
    assert accuracy["ci95"][1] == 1.0
    assert accuracy["ci95"][0] == pytest.approx(0.7225, abs=1e-4)
    assert accuracy["ci95"][0] == pytest.approx(10 / (10 + Z2), abs=1e-12)
    # two-sided: P(X = 10) + P(X = 0) = 2 / 2^10
    assert pooled["binomial"]["p_value"] == pytest.approx(2 / 1024, abs=1e-15)
    assert pooled["binomial"]["p_value"] == pytest.approx(stats.binomtest(10, 10).pvalue)
    shown = 5 if mode == "single" else 10  # volumes of each class
    for key in ("sensitivity", "specificity"):
        assert pooled[key]["value"] == 1.0 and pooled[key]["n"] == shown
        assert pooled[key]["ci95"] == pytest.approx([shown / (shown + Z2), 1.0], abs=1e-12)
        assert pooled[key]["ci95"][1] == 1.0
    # every synthetic volume outscores every real one: DeLong's variance is 0
    assert pooled["auc"]["value"] == 1.0 and pooled["auc"]["ci95"] == [1.0, 1.0]
    assert "single point" in pooled["auc"]["note"]
    assert statistics["agreement"]["kappa"] is None
    assert "two or more raters" in statistics["agreement"]["note"]
    for volume in statistics["volumes"].values():
        rate = volume.get("fooled_rate", volume.get("called_synthetic_rate"))
        assert rate == 0.0
    _, markdown, _ = report(statistics, tmp_path, drawn=list(PLOT_FILES))
    assert "1.000 (0.722–1.000)" in markdown
    assert "**Notes**" in markdown and "single point" in markdown


@pytest.mark.parametrize("mode", ["single", "pair"])
def test_always_wrong_rater(mode, tmp_path):
    statistics = study_statistics(answered(mode, [False] * 10))
    pooled = statistics["pooled"]
    accuracy = pooled["accuracy"]
    assert (accuracy["value"], accuracy["correct"]) == (0.0, 0)
    assert accuracy["ci95"][0] == 0.0
    assert accuracy["ci95"][1] == pytest.approx(0.2775, abs=1e-4)
    assert accuracy["ci95"][1] == pytest.approx(Z2 / (10 + Z2), abs=1e-12)
    assert pooled["binomial"]["p_value"] == pytest.approx(2 / 1024, abs=1e-15)
    assert pooled["binomial"]["p_value"] == pytest.approx(stats.binomtest(0, 10).pvalue)
    for key in ("sensitivity", "specificity"):
        assert pooled[key]["value"] == 0.0 and pooled[key]["ci95"][0] == 0.0
    assert pooled["auc"]["value"] == 0.0 and pooled["auc"]["ci95"] == [0.0, 0.0]
    for volume in statistics["volumes"].values():
        rate = volume.get("fooled_rate", volume.get("called_synthetic_rate"))
        assert rate == 1.0
    _, markdown, _ = report(statistics, tmp_path, drawn=list(PLOT_FILES))
    assert "0.000 (0.000–0.278)" in markdown


def test_two_perfect_raters_agree_but_kappa_is_undefined(tmp_path):
    trials = answered("pair", [True] * 6) + answered("pair", [True] * 6, rater="bob")
    statistics = study_statistics(trials)
    agreement = statistics["agreement"]
    # both always chose the real volume: p_e = 1, kappa = 0 / 0
    assert agreement["method"] == "cohen" and agreement["kappa"] is None
    assert agreement["observed_agreement"] == 1.0 and "undefined" in agreement["note"]
    assert statistics["pooled"]["accuracy"]["ci95"] == pytest.approx([12 / (12 + Z2), 1.0])
    _, markdown, _ = report(statistics, tmp_path, drawn=list(PLOT_FILES))
    row = next(line for line in markdown.splitlines() if line.startswith("| all raters |"))
    assert "| Cohen | undefined | 1.000 |" in row and "kappa is undefined" in row


# -- a single trial and a single rater ------------------------------------------------------
@pytest.mark.parametrize("correct", [True, False])
def test_single_trial_single_mode(correct, tmp_path):
    statistics = study_statistics([single("ann", "i0", "s0", True, correct, realism=2)])
    pooled = statistics["pooled"]
    assert pooled["n_trials"] == 1 and pooled["accuracy"]["value"] == float(correct)
    # Wilson of 1 of 1 is [1 / (1 + z^2), 1]; of 0 of 1 its mirror
    edge = 1 / (1 + Z2)
    expected = [edge, 1.0] if correct else [0.0, 1 - edge]
    assert pooled["accuracy"]["ci95"] == pytest.approx(expected, abs=1e-12)
    assert pooled["binomial"]["p_value"] == 1.0  # one trial: any outcome is as likely
    assert pooled["sensitivity"]["value"] == float(correct)
    assert pooled["specificity"] == {
        "value": None,
        "ci95": None,
        "n": 0,
        "note": "undefined: no real volume was shown",
    }
    assert pooled["auc"]["value"] is None and pooled["auc"]["ci95"] is None
    assert "only synthetic volumes" in pooled["auc"]["note"]
    assert pooled["median_seconds"] == 2.0
    assert pooled["mean_realism"] == {"real": None, "synthetic": 2.0}
    assert statistics["agreement"]["kappa"] is None
    assert statistics["agreement"]["observed_agreement"] is None
    volume = statistics["volumes"]["s0"]
    assert volume["n_judgments"] == 1 and volume["fooled_rate"] == float(not correct)
    _, markdown, _ = report(
        statistics,
        tmp_path,
        drawn=["accuracy_by_rater", "volume_scores"],
        skipped={"confidence_roc": "only synthetic volumes were shown"},
    )
    assert "undefined: no real volume was shown" in markdown
    assert "agreement needs two or more raters" in markdown


def test_single_trial_pair_mode(tmp_path):
    statistics = study_statistics([pair("ann", "i0", True)])
    pooled = statistics["pooled"]
    assert pooled["accuracy"]["ci95"] == pytest.approx([1 / (1 + Z2), 1.0], abs=1e-12)
    # one synthetic and one real volume: the AUC exists, its variance cannot be estimated
    assert pooled["auc"]["value"] == 1.0 and pooled["auc"]["ci95"] == [0.0, 1.0]
    assert "one volume in a class" in pooled["auc"]["note"]
    _, markdown, _ = report(statistics, tmp_path, drawn=list(PLOT_FILES))
    assert "one volume in a class" in markdown


def test_single_rater_of_many_trials(tmp_path):
    # 7 of 10 right: the interior case, for contrast with the edges
    statistics = study_statistics(answered("pair", [True] * 7 + [False] * 3))
    pooled = statistics["pooled"]
    assert pooled["accuracy"]["ci95"] == pytest.approx([0.3967781, 0.8922087], abs=1e-6)
    assert pooled["binomial"]["p_value"] == pytest.approx(stats.binomtest(7, 10).pvalue)
    assert pooled["binomial"]["p_value"] == pytest.approx(2 * 176 / 1024)  # 2 P(X >= 7)
    assert statistics["agreement_by_tier"]["senior"]["kappa"] is None
    assert "note" not in pooled["auc"]
    _, markdown, _ = report(statistics, tmp_path, drawn=list(PLOT_FILES))
    assert "**Notes**" not in markdown


# -- tied confidences and one class only ----------------------------------------------------
def test_tied_confidences_single_mode(tmp_path):
    # 4 synthetic (3 called synthetic), 4 real (2 called real), all at confidence 3: the
    # scores are +-3, so the AUC is that of the calls with ties counted half:
    # (sensitivity + specificity) / 2 = (0.75 + 0.5) / 2
    calls = [(True, True)] * 3 + [(True, False)] + [(False, False)] * 2 + [(False, True)] * 2
    trials = [single("ann", f"i{k}", f"v{k}", truth, called, confidence=3)
              for k, (truth, called) in enumerate(calls)]  # fmt: skip
    statistics = study_statistics(trials)
    pooled = statistics["pooled"]
    assert pooled["sensitivity"]["value"] == 0.75 and pooled["specificity"]["value"] == 0.5
    auc = pooled["auc"]
    assert auc["value"] == pytest.approx(0.625, abs=1e-12)
    assert auc["value"] == pytest.approx(metrics.roc_auc([t for t, _ in calls],
                                                         [c for _, c in calls]))  # fmt: skip
    low, high = auc["ci95"]
    assert 0.0 <= low < 0.625 < high <= 1.0 and "note" not in auc
    assert pooled["rating_table"]["synthetic"] == [0, 0, 1, 0, 0, 0, 0, 3, 0, 0]
    assert pooled["rating_table"]["real"] == [0, 0, 2, 0, 0, 0, 0, 2, 0, 0]
    report(statistics, tmp_path, drawn=list(PLOT_FILES))


def test_tied_confidences_pair_mode(tmp_path):
    # every pair gives +-c to its volumes: AUC = accuracy = 3 / 4
    statistics = study_statistics(answered("pair", [True, True, True, False], confidences=[5] * 4))
    pooled = statistics["pooled"]
    assert pooled["accuracy"]["value"] == 0.75
    assert pooled["auc"]["value"] == pytest.approx(0.75, abs=1e-12)
    assert all(math.isfinite(v) for v in pooled["auc"]["ci95"])
    report(statistics, tmp_path, drawn=list(PLOT_FILES))


def test_every_score_tied(tmp_path):
    # everything called real at confidence 2: one score for all, AUC 1/2, variance 0
    trials = [single("ann", f"i{k}", f"v{k}", k % 2 == 0, False, confidence=2) for k in range(6)]
    statistics = study_statistics(trials)
    auc = statistics["pooled"]["auc"]
    assert auc["value"] == 0.5 and auc["ci95"] == [0.5, 0.5]
    assert "single point" in auc["note"]
    assert statistics["pooled"]["accuracy"]["value"] == 0.5
    assert statistics["pooled"]["binomial"]["p_value"] == 1.0
    assert statistics["pooled"]["sensitivity"]["value"] == 0.0
    assert statistics["pooled"]["specificity"]["value"] == 1.0
    report(statistics, tmp_path, drawn=list(PLOT_FILES))


def test_only_real_volumes_shown(tmp_path):
    trials = [single(rater, f"i{k}", f"r{k}", False, k == 0)
              for rater in ("ann", "bob") for k in range(4)]  # fmt: skip
    statistics = study_statistics(trials)
    pooled = statistics["pooled"]
    assert pooled["accuracy"]["value"] == 0.75
    assert pooled["sensitivity"]["value"] is None
    assert pooled["sensitivity"]["note"] == "undefined: no synthetic volume was shown"
    assert pooled["specificity"]["value"] == 0.75
    assert pooled["auc"]["value"] is None and "only real volumes" in pooled["auc"]["note"]
    assert pooled["mean_realism"] == {"real": 4.0, "synthetic": None}
    # both called one volume synthetic and three real, on the same items: kappa 1
    assert statistics["agreement"]["kappa"] == pytest.approx(1.0)
    _, markdown, _ = report(
        statistics,
        tmp_path,
        drawn=["accuracy_by_rater"],
        skipped={
            "volume_scores": "no synthetic volume was shown",
            "confidence_roc": "only real volumes were shown",
        },
    )
    assert "undefined: no synthetic volume was shown" in markdown


def test_a_rater_shown_one_class_gets_no_roc_curve(tmp_path):
    # ann saw both classes, bob one synthetic volume only: the pooled ROC is drawn without bob
    trials = answered("single", [True, False, True, True])
    trials.append(single("bob", "i0", "v0", True, True))
    statistics = study_statistics(trials)
    assert statistics["raters"]["bob"]["auc"]["value"] is None
    assert statistics["pooled"]["auc"]["value"] is not None
    report(statistics, tmp_path, drawn=list(PLOT_FILES))


def test_no_realism_scores(tmp_path):
    trials = [single("ann", f"i{k}", f"v{k}", k % 2 == 0, True, realism=None) for k in range(4)]
    statistics = study_statistics(trials)
    assert statistics["pooled"]["mean_realism"] == {"real": None, "synthetic": None}
    _, markdown, _ = report(
        statistics,
        tmp_path,
        drawn=["accuracy_by_rater", "confidence_roc"],
        skipped={"volume_scores": "no synthetic volume has a realism score"},
    )
    assert "A dash marks a mean realism score that nobody gave" in markdown


def test_report_replaces_figures_it_no_longer_draws(tmp_path):
    report(study_statistics(answered("single", [True] * 4)), tmp_path, drawn=list(PLOT_FILES))
    statistics = study_statistics([single("ann", "i0", "s0", True, True, realism=None)])
    report(
        statistics,
        tmp_path,
        drawn=["accuracy_by_rater"],
        skipped={
            "volume_scores": "no synthetic volume has a realism score",
            "confidence_roc": "only synthetic volumes were shown",
        },
    )
    assert np.isclose(statistics["pooled"]["accuracy"]["ci95"][0], 1 / (1 + Z2))
