"""Statistics of a visual Turing test: reader accuracy, sensitivity, AUC, agreement, per volume.

Pure functions over :class:`RatedTrial` records (NumPy and SciPy only). Conventions:

* "Synthetic" is the positive class: sensitivity is the share of shown synthetic volumes
  called synthetic, specificity the share of shown real volumes called real. Both are counted
  per shown volume, so a pair trial adds one synthetic and one real judgment; accuracy and
  the binomial test count trials, so a pair counts once.
* Confidence-weighted score of a shown volume: ``+confidence`` when called synthetic,
  ``-confidence`` when called real; the AUC (DeLong CI) ranks those against the truth.
* Proportions get Wilson intervals, stored under ``ci95`` whatever the confidence level (the
  convention of :func:`napari_mrisynth.reports.metrics.binary_summary`).
* JSON-ready results hold None where a value is undefined, never NaN, with a ``note`` saying
  why; a ``note`` beside a value flags an interval that cannot be taken at face value.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

import numpy as np
from scipy import stats

from napari_mrisynth.errors import MrisynthError
from napari_mrisynth.reports import metrics

#: Study modes and the number of volumes a trial of each shows.
MODES = {"single": 1, "pair": 2}

#: Confidence and realism are rated on this integer scale.
SCALE = (1, 5)

#: Signed confidence-weighted scores, in the order of ``rating_table`` columns.
SIGNED_SCORES = tuple(range(-SCALE[1], 0)) + tuple(range(1, SCALE[1] + 1))

_UNDEFINED_KAPPA = "kappa is undefined: every rating falls in one and the same category"


@dataclass(frozen=True)
class RatedTrial:
    """One rater's answer to one trial item.

    Attributes
    ----------
    rater : str
        Rater id.
    tier : str
        The rater's experience tier, e.g. ``"trainee"``, ``"junior"``, ``"senior"``.
    item : str
        Trial item id, shared by every rater shown the same content.
    mode : {"single", "pair"}
    volumes : tuple of str
        Volume ids shown, in presentation order: one (single) or two (pair).
    synthetic : tuple of bool
        Truth per shown volume (pair: exactly one True).
    called_synthetic : tuple of bool
        The rater's call per shown volume (pair: exactly one True, the volume not chosen
        as real).
    confidence : int
        Confidence in the answer, 1..5.
    realism : tuple of (int or None)
        Realism score per shown volume, 1..5, or None when not given.
    seconds : float
        Time spent on the trial.
    """

    rater: str
    tier: str
    item: str
    mode: str
    volumes: tuple[str, ...]
    synthetic: tuple[bool, ...]
    called_synthetic: tuple[bool, ...]
    confidence: int
    realism: tuple[int | None, ...]
    seconds: float

    @property
    def correct(self) -> bool:
        """Whether every shown volume was called what it is."""
        return tuple(map(bool, self.called_synthetic)) == tuple(map(bool, self.synthetic))


class StatisticsError(MrisynthError):
    """Ratings cannot be analysed: none given, modes mixed, or a malformed or conflicting trial."""


# -- validation ----------------------------------------------------------------------------
def _is_bool(value: Any) -> bool:
    return isinstance(value, (bool, np.bool_))


def _on_scale(value: Any) -> bool:
    return isinstance(value, Integral) and not _is_bool(value) and SCALE[0] <= value <= SCALE[1]


def _trial_problem(trial: RatedTrial) -> str | None:
    """What is wrong with one trial on its own, or None."""
    for name in ("rater", "tier", "item"):
        if not isinstance(getattr(trial, name), str) or not getattr(trial, name):
            return f"{name} must be a non-empty string, got {getattr(trial, name)!r}"
    if not isinstance(trial.mode, str) or trial.mode not in MODES:
        return f"mode must be one of {sorted(MODES)}, got {trial.mode!r}"
    shown = MODES[trial.mode]
    for name in ("volumes", "synthetic", "called_synthetic", "realism"):
        value = getattr(trial, name)
        if not isinstance(value, (tuple, list)) or len(value) != shown:
            return f"a {trial.mode} trial needs {shown} {name} entries, got {value!r}"
    if not all(isinstance(v, str) and v for v in trial.volumes):
        return f"volume ids must be non-empty strings, got {trial.volumes!r}"
    if len(set(trial.volumes)) != shown:
        return f"the same volume is shown twice: {trial.volumes!r}"
    for name in ("synthetic", "called_synthetic"):
        value = getattr(trial, name)
        if not all(_is_bool(v) for v in value):
            return f"{name} must hold booleans, got {value!r}"
        if trial.mode == "pair" and sum(map(bool, value)) != 1:
            return f"a pair trial needs exactly one True in {name}, got {value!r}"
    if not _on_scale(trial.confidence):
        return f"confidence must be an integer {SCALE[0]}..{SCALE[1]}, got {trial.confidence!r}"
    if not all(r is None or _on_scale(r) for r in trial.realism):
        return f"realism must hold None or integers {SCALE[0]}..{SCALE[1]}, got {trial.realism!r}"
    if (
        not isinstance(trial.seconds, Real)
        or _is_bool(trial.seconds)
        or not math.isfinite(trial.seconds)
        or trial.seconds < 0
    ):
        return f"seconds must be a finite number >= 0, got {trial.seconds!r}"
    return None


def validate(trials: Iterable[RatedTrial]) -> None:
    """Check every trial and their consistency; an empty collection passes.

    Besides each trial's own fields, checks that no rater rated an item twice, that a rater
    keeps one tier, that every rater of an item was shown the same volumes with the same
    truth in the same mode, and that a volume is real or synthetic everywhere.

    Raises
    ------
    StatisticsError
        Naming the rater and item of the first offending trial.
    """
    tiers: dict[str, tuple[str, str]] = {}
    contents: dict[str, tuple[Any, str]] = {}
    truths: dict[str, tuple[bool, str, str]] = {}
    seen: set[tuple[str, str]] = set()
    for index, trial in enumerate(trials):
        if not isinstance(trial, RatedTrial):
            raise StatisticsError(f"trial {index} is a {type(trial).__name__}, not a RatedTrial")
        where = f"rater {trial.rater!r}, item {trial.item!r}"
        problem = _trial_problem(trial)
        if problem:
            raise StatisticsError(f"{where}: {problem}")
        if (trial.rater, trial.item) in seen:
            raise StatisticsError(f"{where}: the rater rated this item twice")
        seen.add((trial.rater, trial.item))
        tier, first_item = tiers.setdefault(trial.rater, (trial.tier, trial.item))
        if tier != trial.tier:
            raise StatisticsError(
                f"{where}: tier {trial.tier!r}, but {tier!r} on item {first_item!r}"
            )
        # presentation order may differ between raters: compare contents order-free
        content = (trial.mode, sorted(zip(trial.volumes, map(bool, trial.synthetic), strict=True)))
        expected, first_rater = contents.setdefault(trial.item, (content, trial.rater))
        if content != expected:
            raise StatisticsError(
                f"{where}: shows {content}, but rater {first_rater!r} was shown {expected}"
            )
        for volume, truth in zip(trial.volumes, map(bool, trial.synthetic), strict=True):
            known, item, rater = truths.setdefault(volume, (truth, trial.item, trial.rater))
            if known != truth:
                raise StatisticsError(
                    f"{where}: volume {volume!r} is {_truth_word(truth)} here but "
                    f"{_truth_word(known)} in item {item!r} (rater {rater!r})"
                )


def _truth_word(synthetic: bool) -> str:
    return "synthetic" if synthetic else "real"


def _checked(trials: Iterable[RatedTrial], *, one_mode: bool = True) -> list[RatedTrial]:
    """The trials as a list, validated and non-empty (and all of one mode if asked)."""
    trials = list(trials)
    validate(trials)
    if not trials:
        raise StatisticsError("no ratings to analyse")
    modes = sorted({t.mode for t in trials})
    if one_mode and len(modes) > 1:
        raise StatisticsError(f"single and pair trials cannot be pooled, got modes {modes}")
    return trials


# -- one group of trials -------------------------------------------------------------------
def _judgments(trials: Sequence[RatedTrial]) -> list[tuple[RatedTrial, int]]:
    """(trial, index of the shown volume) for every volume shown."""
    return [(t, i) for t in trials for i in range(len(t.volumes))]


def _mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return float(np.mean(values)) if values else None


def _proportion(successes: int, n: int, confidence: float, shown: str) -> dict[str, Any]:
    """A Wilson-interval proportion; None with a ``note`` when no ``shown`` volume was shown."""
    entry = metrics._proportion(successes, n, confidence)
    if n == 0:
        entry["note"] = f"undefined: no {shown} volume was shown"
    return entry


def _auc(truth: np.ndarray, scores: np.ndarray, confidence: float) -> dict[str, Any]:
    """AUC of the signed scores with its DeLong interval, and a ``note`` where it is special.

    Undefined (None) when one class only was shown. Defined but flagged when a class holds a
    single volume (DeLong's variance cannot be estimated: the interval is the whole [0, 1])
    and when that variance is 0 (every volume of a class ranks alike against the other
    class, e.g. perfect calls or all scores tied: the interval shrinks to the point).
    """
    n_synthetic, n_real = int(truth.sum()), int((~truth).sum())
    if n_synthetic == 0 or n_real == 0:
        shown = "synthetic" if n_synthetic else "real"
        return {
            "value": None,
            "ci95": None,
            "note": f"undefined: only {shown} volumes were shown, the AUC needs both classes",
        }
    auc, low, high = metrics.auc_ci_delong(truth.astype(np.int64), scores, confidence)
    entry: dict[str, Any] = {"value": auc, "ci95": [low, high]}
    if min(n_synthetic, n_real) < 2:
        entry["note"] = (
            "one volume in a class: the DeLong variance cannot be estimated, the interval is [0, 1]"
        )
    elif high - low < 1e-12:  # 0 up to rounding
        entry["note"] = (
            "the DeLong variance is 0 (every volume of a class ranks alike against the other "
            "class): the interval is a single point and understates the uncertainty"
        )
    return entry


def reader_summary(trials: Sequence[RatedTrial], confidence: float = 0.95) -> dict[str, Any]:
    """Accuracy, binomial test, sensitivity, specificity, AUC, time and realism of a group.

    Parameters
    ----------
    trials : sequence of RatedTrial
        One group: a rater, a tier, or everyone; all of one mode.
    confidence : float
        Coverage of the intervals.

    Returns
    -------
    dict
        ``n_trials``, ``n_raters``; ``accuracy`` ``{"value", "ci95", "n", "correct"}`` over
        trials (Wilson); ``binomial`` ``{"p_value", "k", "n", "alternative"}``: exact
        two-sided test of accuracy against 0.5; ``sensitivity`` and ``specificity``
        ``{"value", "ci95", "n"}`` over shown volumes (None, with a ``note``, when ``n`` is
        0); ``auc`` ``{"value", "ci95"}`` of the confidence-weighted scores (None, with a
        ``note``, when only one class was shown; a ``note`` beside a value flags a
        degenerate interval, see :func:`_auc`); ``rating_table``
        ``{"scores", "synthetic", "real"}``: how many synthetic and real volumes got each
        signed score (the ROC's data);
        ``median_seconds``; ``mean_realism`` ``{"real", "synthetic"}`` (None when unrated).

    Raises
    ------
    StatisticsError
        No trials, mixed modes, or a malformed trial.
    """
    trials = _checked(trials)
    n, correct = len(trials), sum(t.correct for t in trials)
    judgments = _judgments(trials)
    truth = np.array([bool(t.synthetic[i]) for t, i in judgments])
    called = np.array([bool(t.called_synthetic[i]) for t, i in judgments])
    scores = np.array(
        [t.confidence if bool(t.called_synthetic[i]) else -t.confidence for t, i in judgments]
    )
    realism = {
        _truth_word(kind): _mean(
            t.realism[i]
            for t, i in judgments
            if bool(t.synthetic[i]) == kind and t.realism[i] is not None
        )
        for kind in (False, True)
    }
    return {
        "n_trials": n,
        "n_raters": len({t.rater for t in trials}),
        "accuracy": {**metrics._proportion(correct, n, confidence), "correct": correct},
        "binomial": {
            "p_value": float(stats.binomtest(correct, n, 0.5, alternative="two-sided").pvalue),
            "k": correct,
            "n": n,
            "alternative": "two-sided",
        },
        "sensitivity": _proportion(
            int((truth & called).sum()), int(truth.sum()), confidence, "synthetic"
        ),
        "specificity": _proportion(
            int((~truth & ~called).sum()), int((~truth).sum()), confidence, "real"
        ),
        "auc": _auc(truth, scores, confidence),
        "rating_table": {
            "scores": list(SIGNED_SCORES),
            "synthetic": [int(np.sum(truth & (scores == s))) for s in SIGNED_SCORES],
            "real": [int(np.sum(~truth & (scores == s))) for s in SIGNED_SCORES],
        },
        "median_seconds": float(np.median([t.seconds for t in trials])),
        "mean_realism": realism,
    }


# -- agreement -----------------------------------------------------------------------------
def cohen_kappa(a: Sequence[Any], b: Sequence[Any]) -> float:
    """Cohen's kappa of two raters' categorical answers on the same items.

    ``kappa = (p_o - p_e) / (1 - p_e)`` with ``p_o`` the share of items where they agree and
    ``p_e = sum_k p_a(k) p_b(k)`` the agreement expected from their marginal rates.

    Returns
    -------
    float
        NaN when ``p_e == 1`` (both raters gave every item one and the same category: the
        ratio is 0/0). JSON-bound results turn it into None.
    """
    a, b = list(a), list(b)
    if len(a) != len(b):
        raise StatisticsError(f"the raters answered {len(a)} and {len(b)} items")
    if not a:
        raise StatisticsError("Cohen's kappa needs at least one item")
    n = len(a)
    agree = sum(x == y for x, y in zip(a, b, strict=True))
    expected = sum(a.count(k) * b.count(k) for k in set(a))  # p_e * n^2
    # kappa = (agree / n - expected / n^2) / (1 - expected / n^2), in whole numbers
    if expected == n * n:
        return math.nan
    return (agree * n - expected) / (n * n - expected)


def _observed_agreement(table: np.ndarray) -> float:
    """Mean share of agreeing rater pairs per item (Fleiss' mean P_i; Cohen's p_o for two)."""
    raters = int(table[0].sum())
    return float(np.mean(((table**2).sum(axis=1) - raters) / (raters * (raters - 1))))


def fleiss_kappa(counts: Any) -> float:
    """Fleiss' kappa of an items x categories matrix of rating counts.

    Every item must be rated by the same number ``n >= 2`` of raters.
    ``P_i = (sum_j n_ij^2 - n) / (n (n - 1))``, ``p_j = sum_i n_ij / (N n)``,
    ``kappa = (mean P_i - sum_j p_j^2) / (1 - sum_j p_j^2)``.

    Returns
    -------
    float
        NaN when every rating falls in one category (``sum_j p_j^2 == 1``).
    """
    table = np.asarray(counts)
    if table.ndim != 2 or table.shape[0] == 0 or table.shape[1] == 0:
        raise StatisticsError(
            f"counts must be a non-empty items x categories matrix, got shape {table.shape}"
        )
    if not np.all(np.equal(np.mod(table, 1), 0)) or table.min() < 0:
        raise StatisticsError("counts must be whole numbers >= 0")
    table = table.astype(np.int64)
    per_item = table.sum(axis=1)
    raters = int(per_item[0])
    if raters < 2 or np.any(per_item != raters):
        found = sorted({int(k) for k in per_item})
        raise StatisticsError(f"every item needs the same number (>= 2) of ratings, got {found}")
    totals = table.sum(axis=0)
    if np.count_nonzero(totals) == 1:  # sum_j p_j^2 == 1: the ratio is 0/0
        return math.nan
    expected = float(np.sum((totals / totals.sum()) ** 2))
    return (_observed_agreement(table) - expected) / (1.0 - expected)


def _category(trial: RatedTrial) -> tuple[bool, ...]:
    """The calls of a trial with its volumes ordered real first, then by id.

    Two raters agree on an item exactly when they called the same set of its volumes
    synthetic, whatever the left/right order they saw. Ordering by truth aligns categories
    across items: in pair mode (False, True) is "chose the real one" and (True, False) "chose
    the synthetic one"; in single mode the category is the call.
    """
    order = sorted(
        range(len(trial.volumes)), key=lambda i: (bool(trial.synthetic[i]), trial.volumes[i])
    )
    return tuple(bool(trial.called_synthetic[i]) for i in order)


def agreement(trials: Sequence[RatedTrial]) -> dict[str, Any]:
    """Chance-corrected agreement of the raters' calls on the items every rater rated.

    The category of a trial is the set of volumes the rater called synthetic, independent of
    presentation order (see :func:`_category`). Two raters: Cohen's kappa; three or more:
    Fleiss' kappa.

    Returns
    -------
    dict
        ``method`` ("cohen", "fleiss" or None), ``kappa`` (None when undefined, with a
        ``note``), ``observed_agreement`` (share of agreeing rater pairs over items),
        ``n_items``, ``raters`` (sorted).
    """
    trials = _checked(trials)
    calls: dict[str, dict[str, tuple[bool, ...]]] = defaultdict(dict)
    for trial in trials:
        calls[trial.rater][trial.item] = _category(trial)
    raters = sorted(calls)
    common = sorted(set.intersection(*(set(items) for items in calls.values())))
    result: dict[str, Any] = {
        "method": None,
        "kappa": None,
        "observed_agreement": None,
        "n_items": len(common),
        "raters": raters,
    }
    if len(raters) < 2:
        return {**result, "note": f"agreement needs two or more raters, got {len(raters)}"}
    if not common:
        return {**result, "note": "no item was rated by every rater"}
    answers = [[calls[rater][item] for rater in raters] for item in common]
    categories = sorted({c for row in answers for c in row})
    table = np.array([[row.count(c) for c in categories] for row in answers])
    if len(raters) == 2:
        kappa = cohen_kappa(*zip(*answers, strict=True))
        result["method"] = "cohen"
    else:
        kappa = fleiss_kappa(table)
        result["method"] = "fleiss"
    result["observed_agreement"] = _observed_agreement(table)
    if math.isnan(kappa):
        return {**result, "note": _UNDEFINED_KAPPA}
    return {**result, "kappa": kappa}


# -- per volume and per study --------------------------------------------------------------
def volume_scores(trials: Sequence[RatedTrial]) -> dict[str, dict[str, Any]]:
    """How each volume fared over the judgments of it.

    Returns
    -------
    dict
        volume id (sorted) -> ``synthetic`` (bool), ``n_judgments``, ``fooled_rate`` (synthetic
        volumes: share of judgments calling it real) or ``called_synthetic_rate`` (real
        volumes), ``mean_realism`` (None when unrated), ``mean_confidence`` (of the trials
        that showed it).
    """
    trials = _checked(trials, one_mode=False)
    by_volume: dict[str, list[tuple[RatedTrial, int]]] = defaultdict(list)
    for trial, index in _judgments(trials):
        by_volume[trial.volumes[index]].append((trial, index))
    scores: dict[str, dict[str, Any]] = {}
    for volume in sorted(by_volume):
        judged = by_volume[volume]
        synthetic = bool(judged[0][0].synthetic[judged[0][1]])
        called = sum(bool(t.called_synthetic[i]) for t, i in judged) / len(judged)
        entry: dict[str, Any] = {"synthetic": synthetic, "n_judgments": len(judged)}
        if synthetic:
            entry["fooled_rate"] = 1.0 - called
        else:
            entry["called_synthetic_rate"] = called
        entry["mean_realism"] = _mean(t.realism[i] for t, i in judged if t.realism[i] is not None)
        entry["mean_confidence"] = _mean(t.confidence for t, _ in judged)
        scores[volume] = entry
    return scores


def study_statistics(trials: Sequence[RatedTrial], confidence: float = 0.95) -> dict[str, Any]:
    """Every statistic of one study, JSON-ready, keys in sorted order.

    Returns
    -------
    dict
        ``mode``; ``ci_level`` (the ``confidence`` the intervals cover); ``pooled``,
        ``raters`` (rater -> summary), ``tiers`` (tier -> summary): :func:`reader_summary`
        of each group; ``rater_tiers`` (rater -> tier); ``agreement`` and
        ``agreement_by_tier`` (tier -> :func:`agreement`); ``volumes``:
        :func:`volume_scores`.

    Raises
    ------
    StatisticsError
        No trials, mixed modes, or a malformed trial.
    """
    trials = _checked(trials)
    by_rater: dict[str, list[RatedTrial]] = defaultdict(list)
    by_tier: dict[str, list[RatedTrial]] = defaultdict(list)
    for trial in trials:
        by_rater[trial.rater].append(trial)
        by_tier[trial.tier].append(trial)
    return {
        "agreement": agreement(trials),
        "agreement_by_tier": {tier: agreement(by_tier[tier]) for tier in sorted(by_tier)},
        "ci_level": float(confidence),
        "mode": trials[0].mode,
        "pooled": reader_summary(trials, confidence),
        "rater_tiers": {rater: by_rater[rater][0].tier for rater in sorted(by_rater)},
        "raters": {
            rater: reader_summary(by_rater[rater], confidence) for rater in sorted(by_rater)
        },
        "tiers": {tier: reader_summary(by_tier[tier], confidence) for tier in sorted(by_tier)},
        "volumes": volume_scores(trials),
    }
