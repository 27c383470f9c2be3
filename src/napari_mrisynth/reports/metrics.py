"""Test metrics with confidence intervals: classifiers (ROC, AUC, PR) and segmenters (Dice, HD95).

NumPy and SciPy only, so model cards, the CLI and the training code share one implementation
without importing torch. Conventions:

* Binary classification: ``y_true`` holds 0 (negative) and 1 (positive); a higher score means
  "more likely positive"; a case is called positive when ``score >= threshold``.
* Proportions (accuracy, sensitivity, specificity, PPV, NPV) get Wilson score intervals; the
  AUC gets DeLong's variance (DeLong, DeLong & Clarke-Pearson 1988) on the AUC scale, clipped
  to [0, 1].
* Segmentation: Dice per label; HD95 is the 95th percentile Hausdorff distance in mm between
  the two label surfaces, taken as the larger of the two directed 95th percentiles (MONAI's
  ``compute_hausdorff_distance(percentile=95)`` convention).
* JSON-bound summaries hold None where a value is undefined (NaN) or infinite.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from scipy import ndimage, stats


# -- proportions ---------------------------------------------------------------------------
def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion.

    Parameters
    ----------
    successes, n : int
        Successes out of ``n`` trials (``0 <= successes <= n``, ``n >= 1``).
    confidence : float
        Two-sided coverage, e.g. 0.95.

    Returns
    -------
    (low, high) : tuple of float
        ``low <= successes / n <= high``; ``low`` is exactly 0 at 0 successes and ``high``
        exactly 1 at ``n``.

    Examples
    --------
    >>> [round(v, 4) for v in wilson_interval(8, 10)]
    [0.4902, 0.9433]
    """
    if n < 1:
        raise ValueError(f"a Wilson interval needs at least one trial, got n={n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must lie in 0..n, got {successes} of {n}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    z = float(stats.norm.ppf(0.5 + confidence / 2.0))
    p = successes / n
    denominator = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # at p = 0 and p = 1 one bound is exactly the estimate; rounding must not move it inside
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def confusion_matrix(y_true: Any, y_pred: Any, n_classes: int) -> np.ndarray:
    """Counts of (true class, predicted class): rows are true classes, columns predictions.

    Parameters
    ----------
    y_true, y_pred : array of int
        Class indices in ``0 .. n_classes - 1``.
    n_classes : int

    Returns
    -------
    ndarray of int64, shape (n_classes, n_classes)
    """
    truth = np.asarray(y_true).ravel()
    pred = np.asarray(y_pred).ravel()
    if truth.shape != pred.shape:
        raise ValueError(f"y_true has {truth.size} entries, y_pred {pred.size}")
    for name, values in (("y_true", truth), ("y_pred", pred)):
        whole = np.all(np.equal(np.mod(values, 1), 0))
        if values.size and (not whole or values.min() < 0 or values.max() >= n_classes):
            raise ValueError(f"{name} must hold class indices 0..{n_classes - 1}")
    flat = truth.astype(np.int64) * n_classes + pred.astype(np.int64)
    return np.bincount(flat, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


# -- ranking metrics -----------------------------------------------------------------------
def _binary_inputs(y_true: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    truth = np.asarray(y_true).ravel()
    score = np.asarray(scores, dtype=np.float64).ravel()
    if truth.shape != score.shape:
        raise ValueError(f"y_true has {truth.size} entries, scores {score.size}")
    if truth.size == 0:
        raise ValueError("no cases: y_true and scores are empty")
    if not np.all(np.isin(truth, (0, 1))):
        raise ValueError(f"y_true must hold 0 (negative) and 1 (positive), got {np.unique(truth)}")
    if not np.all(np.isfinite(score)):
        raise ValueError("scores must be finite numbers")
    return truth.astype(np.int64), score


def _counts_by_threshold(truth: np.ndarray, score: np.ndarray):
    """Cumulative (true positives, false positives) at each distinct score, highest first.

    Tied scores form one step: every case at or above a threshold is called positive.
    """
    order = np.argsort(-score, kind="stable")
    score, truth = score[order], truth[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(score)), truth.size - 1]
    tp = np.cumsum(truth)[last_of_tie]
    fp = (last_of_tie + 1) - tp
    return tp, fp, score[last_of_tie]


def roc_curve(y_true: Any, scores: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Receiver operating characteristic, one point per distinct score (ties are one step).

    Returns
    -------
    fpr, tpr, thresholds : ndarray
        Point ``k`` calls positive every case with ``score >= thresholds[k]``; the first point
        (0, 0) has threshold ``+inf``, the last is (1, 1). Thresholds decrease.
    """
    truth, score = _binary_inputs(y_true, scores)
    n_pos, n_neg = int(truth.sum()), int(truth.size - truth.sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(_one_class_message(n_pos, n_neg, "an ROC curve"))
    tp, fp, thresholds = _counts_by_threshold(truth, score)
    return (
        np.r_[0.0, fp / n_neg],
        np.r_[0.0, tp / n_pos],
        np.r_[np.inf, thresholds],
    )


def _one_class_message(n_pos: int, n_neg: int, what: str) -> str:
    return (
        f"{what} needs both classes, got {n_pos} positive and {n_neg} negative cases "
        "(is the test set too small or not stratified?)"
    )


def roc_auc(y_true: Any, scores: Any) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties 1/2.

    Equal to the Mann-Whitney U statistic of the positives divided by ``n1 * n0``, computed
    from mid-ranks in O(n log n).
    """
    truth, score = _binary_inputs(y_true, scores)
    n_pos, n_neg = int(truth.sum()), int(truth.size - truth.sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(_one_class_message(n_pos, n_neg, "an AUC"))
    ranks = stats.rankdata(score)  # mid-ranks: ties share the mean rank
    u = ranks[truth == 1].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def cohens_d(values: Any, group: Any) -> float:
    """Cohen's d of ``values`` in ``group`` (True) against the rest: the difference of the
    means in units of the pooled standard deviation (0 when both are constant and equal)."""
    values, group = np.asarray(values, dtype=np.float64), np.asarray(group, dtype=bool)
    a, b = values[group], values[~group]
    pooled = np.sqrt(((a.size - 1) * a.var(ddof=1) + (b.size - 1) * b.var(ddof=1))
                     / max(a.size + b.size - 2, 1))  # fmt: skip
    return float((a.mean() - b.mean()) / max(pooled, 1e-12))


def _delong_components(truth: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's structural components V10 (one per positive) and V01 (one per negative)."""
    positives, negatives = score[truth == 1], score[truth == 0]
    n_pos, n_neg = positives.size, negatives.size
    all_ranks = stats.rankdata(np.r_[positives, negatives])
    # V10_i = fraction of negatives a positive beats (ties 1/2) = (its rank among all minus
    # its rank among the positives) / n_neg; symmetrically for V01.
    v10 = (all_ranks[:n_pos] - stats.rankdata(positives)) / n_neg
    v01 = 1.0 - (all_ranks[n_pos:] - stats.rankdata(negatives)) / n_pos
    return v10, v01


def auc_ci_delong(y_true: Any, scores: Any, confidence: float = 0.95) -> tuple[float, float, float]:
    """AUC with a DeLong confidence interval.

    The variance is ``var(V10) / n1 + var(V01) / n0`` (sample variances of DeLong's
    structural components); the interval is ``auc +- z * sqrt(variance)``, clipped to [0, 1].
    With a single case in a class that variance cannot be estimated and the interval is the
    whole [0, 1]. With perfect separation the variance is 0 and the interval is the point.

    Returns
    -------
    auc, low, high : float

    Raises
    ------
    ValueError
        When ``y_true`` holds one class only (the AUC is undefined).
    """
    truth, score = _binary_inputs(y_true, scores)
    n_pos, n_neg = int(truth.sum()), int(truth.size - truth.sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(_one_class_message(n_pos, n_neg, "an AUC confidence interval"))
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    v10, v01 = _delong_components(truth, score)
    auc = float(v10.mean())
    if n_pos < 2 or n_neg < 2:
        return auc, 0.0, 1.0
    variance = v10.var(ddof=1) / n_pos + v01.var(ddof=1) / n_neg
    half = float(stats.norm.ppf(0.5 + confidence / 2.0)) * math.sqrt(max(variance, 0.0))
    return auc, max(0.0, auc - half), min(1.0, auc + half)


def precision_recall_curve(y_true: Any, scores: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision and recall at each distinct score (ties are one step).

    Returns
    -------
    precision, recall, thresholds : ndarray
        Point ``k`` calls positive every case with ``score >= thresholds[k]``; the first point
        (recall 0, precision 1) has threshold ``+inf``. Thresholds decrease, recall grows.
    """
    truth, score = _binary_inputs(y_true, scores)
    n_pos = int(truth.sum())
    if n_pos == 0:
        raise ValueError(_one_class_message(0, truth.size, "a precision-recall curve"))
    tp, fp, thresholds = _counts_by_threshold(truth, score)
    return np.r_[1.0, tp / (tp + fp)], np.r_[0.0, tp / n_pos], np.r_[np.inf, thresholds]


def average_precision(y_true: Any, scores: Any) -> float:
    """Average precision: ``sum_k (R_k - R_{k-1}) * P_k`` over the precision-recall steps.

    The step-wise (non-interpolated) definition, as scikit-learn's ``average_precision_score``.
    """
    precision, recall, _ = precision_recall_curve(y_true, scores)
    return float(np.sum(np.diff(recall) * precision[1:]))


def _proportion(successes: int, n: int, confidence: float) -> dict[str, Any]:
    if n == 0:
        return {"value": None, "ci95": None, "n": 0}
    low, high = wilson_interval(successes, n, confidence)
    return {"value": successes / n, "ci95": [low, high], "n": n}


def binary_summary(
    y_true: Any, scores: Any, threshold: float = 0.5, confidence: float = 0.95
) -> dict[str, Any]:
    """Every test metric of a binary classifier, JSON-ready.

    Parameters
    ----------
    y_true : array of {0, 1}
    scores : array of float
        Score of the positive class (e.g. its probability).
    threshold : float
        A case is called positive when its score is at least this.
    confidence : float
        Coverage of the intervals (stored under ``ci95`` whatever its value).

    Returns
    -------
    dict
        ``n``, ``n_positive``, ``threshold``; ``auc`` ``{"value", "ci95"}`` (DeLong; value and
        interval None, with a ``note``, when the cases are all of one class); ``accuracy``,
        ``sensitivity``, ``specificity``, ``ppv``, ``npv`` ``{"value", "ci95", "n"}`` (Wilson;
        None when the denominator is 0); ``average_precision`` (None without positives);
        ``confusion`` ``[[tn, fp], [fn, tp]]``.
    """
    truth, score = _binary_inputs(y_true, scores)
    predicted = (score >= threshold).astype(np.int64)
    (tn, fp), (fn, tp) = confusion_matrix(truth, predicted, 2).tolist()
    n_pos, n_neg = tp + fn, tn + fp
    try:
        auc, low, high = auc_ci_delong(truth, score, confidence)
        auc_entry: dict[str, Any] = {"value": auc, "ci95": [low, high]}
    except ValueError as exc:
        auc_entry = {"value": None, "ci95": None, "note": str(exc)}
    return {
        "n": int(truth.size),
        "n_positive": n_pos,
        "threshold": float(threshold),
        "auc": auc_entry,
        "accuracy": _proportion(tp + tn, truth.size, confidence),
        "sensitivity": _proportion(tp, n_pos, confidence),
        "specificity": _proportion(tn, n_neg, confidence),
        "ppv": _proportion(tp, tp + fp, confidence),
        "npv": _proportion(tn, tn + fn, confidence),
        "average_precision": average_precision(truth, score) if n_pos else None,
        "confusion": [[tn, fp], [fn, tp]],
    }


# -- segmentation --------------------------------------------------------------------------
def _label_arrays(truth: Any, pred: Any) -> tuple[np.ndarray, np.ndarray]:
    truth, pred = np.asarray(truth), np.asarray(pred)
    if truth.shape != pred.shape:
        raise ValueError(f"truth has shape {truth.shape}, prediction {pred.shape}")
    return truth, pred


def dice_per_label(truth: Any, pred: Any, labels: Iterable[int]) -> dict[int, float]:
    """Dice coefficient ``2 |T & P| / (|T| + |P|)`` of each label.

    Returns
    -------
    dict
        label -> Dice in [0, 1]; NaN when the label is absent from both maps.
    """
    truth, pred = _label_arrays(truth, pred)
    out: dict[int, float] = {}
    for label in labels:
        t, p = truth == label, pred == label
        total = int(t.sum()) + int(p.sum())
        out[int(label)] = 2.0 * int(np.logical_and(t, p).sum()) / total if total else math.nan
    return out


def brain_dice(truth: Any, pred: Any) -> float:
    """Dice of the brain masks (every label of
    :data:`~napari_mrisynth.anatomy.labels.BRAIN_LABELS`) of two label maps; NaN when neither
    has brain."""
    from napari_mrisynth.anatomy.labels import BRAIN_LABELS

    truth, pred = _label_arrays(truth, pred)
    return dice_per_label(np.isin(truth, BRAIN_LABELS), np.isin(pred, BRAIN_LABELS), [1])[1]


def _surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with a 6-neighbour outside it (the array's edge counts as outside)."""
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def _directed_distances(
    from_surface: np.ndarray, to_surface: np.ndarray, spacing: tuple[float, ...]
) -> np.ndarray:
    """Distance in mm from each voxel of ``from_surface`` to the nearest of ``to_surface``."""
    distance = ndimage.distance_transform_edt(~to_surface, sampling=spacing)
    return distance[from_surface]


def hd95_per_label(
    truth: Any, pred: Any, labels: Iterable[int], spacing_zyx: Iterable[float]
) -> dict[int, float]:
    """95th percentile Hausdorff distance (mm) between the surfaces of each label.

    Surfaces are the label's voxels with a face neighbour outside it; distances are Euclidean
    between voxel centres with the (anisotropic) voxel size honoured. The value is
    ``max(P95(d(T -> P)), P95(d(P -> T)))``: MONAI's convention.

    Parameters
    ----------
    truth, pred : ndarray (z, y, x) of int
    labels : iterable of int
    spacing_zyx : (3,) float
        Voxel size in mm in array order (a :class:`Volume`'s ``spacing[::-1]``).

    Returns
    -------
    dict
        label -> HD95 in mm; ``inf`` when the label is present in one map only, NaN when it
        is absent from both.
    """
    truth, pred = _label_arrays(truth, pred)
    spacing = tuple(float(s) for s in spacing_zyx)
    if len(spacing) != truth.ndim or min(spacing) <= 0:
        raise ValueError(f"spacing_zyx needs {truth.ndim} positive sizes, got {spacing}")
    out: dict[int, float] = {}
    for label in labels:
        t, p = truth == label, pred == label
        present_t, present_p = bool(t.any()), bool(p.any())
        if not (present_t or present_p):
            out[int(label)] = math.nan
            continue
        if not (present_t and present_p):
            out[int(label)] = math.inf
            continue
        # Crop to both masks' bounding box with a one-voxel zero margin: the distances are
        # unchanged and the transforms run on a fraction of the volume.
        box = ndimage.find_objects((t | p).astype(np.uint8))[0]
        window = tuple(slice(s.start, s.stop) for s in box)
        t = np.pad(t[window], 1)
        p = np.pad(p[window], 1)
        surface_t, surface_p = _surface(t), _surface(p)
        forward = np.percentile(_directed_distances(surface_t, surface_p, spacing), 95)
        backward = np.percentile(_directed_distances(surface_p, surface_t, spacing), 95)
        out[int(label)] = float(max(forward, backward))
    return out


def _json_number(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def _describe(values: list[float]) -> dict[str, Any]:
    """mean, sd (sample, n >= 2), min, max and n of the finite values; None where undefined."""
    finite = np.asarray([v for v in values if math.isfinite(v)], dtype=np.float64)
    if finite.size == 0:
        return {"mean": None, "sd": None, "min": None, "max": None, "n": 0}
    return {
        "mean": float(finite.mean()),
        "sd": float(finite.std(ddof=1)) if finite.size > 1 else None,
        "min": float(finite.min()),
        "max": float(finite.max()),
        "n": int(finite.size),
    }


def _pair_arrays(pair: Any) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """(truth, prediction, spacing_zyx) from a 3-tuple of arrays or a pair of Volumes."""
    if len(pair) == 3:
        truth, pred, spacing = pair
        return np.asarray(truth), np.asarray(pred), tuple(float(s) for s in spacing)
    if len(pair) == 2 and all(hasattr(item, "spacing") for item in pair):
        first, second = pair
        if not first.same_geometry(second):
            raise ValueError(
                f"truth and prediction lie on different grids: {first!r} vs {second!r}"
            )
        spacing = tuple(float(s) for s in np.asarray(first.spacing)[::-1])
        return np.asarray(first.data), np.asarray(second.data), spacing
    raise ValueError(
        "each pair must be (truth array, prediction array, spacing_zyx) or two Volumes"
    )


def segmentation_summary(
    pairs: Iterable[Any], label_names: Mapping[int, str], *, hd95: bool = True
) -> dict[str, Any]:
    """Dice and HD95 per label over subjects, JSON-ready.

    Parameters
    ----------
    pairs : iterable
        One item per subject: ``(truth, prediction, spacing_zyx)`` arrays, or two
        :class:`~napari_mrisynth.volume.Volume` on the same grid (truth first; both metrics
        are symmetric, so the order does not change any value).
    label_names : mapping
        label value -> name (background, value 0, is not scored unless listed).
    hd95 : bool
        Compute HD95 too (the slower part).

    Returns
    -------
    dict
        ``n`` (subjects); ``dice`` and ``hd95``: name -> mean over subjects (None where
        undefined); ``dice_mean`` / ``hd95_mean``: mean of those per-label means;
        ``per_label``: name -> ``{"value", "dice": {mean, sd, min, max, n}, "hd95": {mean, sd,
        min, max, n, n_missing}}``; ``per_subject``: one ``{"dice": {...}, "hd95": {...}}`` per
        pair, in order. Dice statistics skip subjects where the label is absent from both
        maps; HD95 statistics cover subjects where both maps hold the label, and
        ``n_missing`` counts those where only one does (HD95 infinite; their Dice is 0).
    """
    names = {int(value): str(name) for value, name in label_names.items()}
    if not names:
        raise ValueError("label_names is empty: nothing to score")
    per_subject: list[dict[str, dict[int, float]]] = []
    for pair in pairs:
        truth, pred, spacing = _pair_arrays(pair)
        row = {"dice": dice_per_label(truth, pred, names)}
        if hd95:
            row["hd95"] = hd95_per_label(truth, pred, names, spacing)
        per_subject.append(row)
    if not per_subject:
        raise ValueError("no subjects to summarise")
    per_label: dict[str, Any] = {}
    for value, name in names.items():
        entry: dict[str, Any] = {
            "value": value,
            "dice": _describe([row["dice"][value] for row in per_subject]),
        }
        if hd95:
            distances = [row["hd95"][value] for row in per_subject]
            entry["hd95"] = {
                **_describe(distances),
                "n_missing": sum(1 for d in distances if math.isinf(d)),
            }
        per_label[name] = entry
    dice = {name: per_label[name]["dice"]["mean"] for name in per_label}
    summary: dict[str, Any] = {
        "n": len(per_subject),
        "dice": dice,
        "dice_mean": _mean_of_defined(dice.values()),
    }
    if hd95:
        distance = {name: per_label[name]["hd95"]["mean"] for name in per_label}
        summary.update(hd95=distance, hd95_mean=_mean_of_defined(distance.values()))
    summary["per_label"] = per_label
    summary["per_subject"] = [
        {
            metric: {names[value]: _json_number(v) for value, v in values.items()}
            for metric, values in row.items()
        }
        for row in per_subject
    ]
    return summary


def _mean_of_defined(values: Iterable[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None
