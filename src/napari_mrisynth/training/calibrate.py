"""Per-label logit offsets fitted on validation subjects (post-hoc label-prior correction).

A segmenter trained with label-balanced patches and weighted losses learns label priors
that are not the scans' own: at a voxel where grey and white matter are equally likely it
leans to the label it saw more often in training. Adding one offset per label to the
logits before the softmax moves those decisions without touching the network (logit
adjustment, Menon et al., ICLR 2021). The offsets are fitted here by coordinate ascent of
the mean Dice over the labels on whole validation volumes, never on the test subjects, and
stored in the card's ``inference.logit_offsets``, which
:func:`napari_mrisynth.models.inference.segment` adds before the softmax.

Only voxels whose decision an offset within ``±span`` can change are kept in memory
(those whose two largest logits differ by less than ``2 × span``); the rest enter the
Dice counts as constants, so a fit over a dozen 2 mm heads holds about a third of their
logits. Everything here is NumPy: the network's logits are computed by the caller.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

#: Default search range of each offset (logits) and its step.
SPAN = 1.5
STEP = 0.1


@dataclass
class LogitSample:
    """The validation voxels an offset in ``±span`` can flip, and the counts of the rest.

    ``logits`` is (C, n) float16 of the flippable voxels, ``labels`` their true labels;
    ``fixed_*`` are per-label counts (true positives, predicted, true) of the others.
    """

    classes: int
    span: float = SPAN
    logits: list[np.ndarray] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)
    fixed_tp: np.ndarray | None = None
    fixed_pred: np.ndarray | None = None
    fixed_true: np.ndarray | None = None
    voxels: int = 0

    def __post_init__(self) -> None:
        zeros = np.zeros(self.classes, np.int64)
        self.fixed_tp, self.fixed_pred, self.fixed_true = zeros, zeros.copy(), zeros.copy()

    def add(self, logits: np.ndarray, labels: np.ndarray) -> None:
        """Add one volume: ``logits`` (C, *shape) and its label map (*shape)."""
        c = self.classes
        if logits.shape[0] != c or logits.shape[1:] != labels.shape:
            raise ValueError(f"logits {logits.shape} do not match {c} labels of {labels.shape}")
        flat = np.asarray(logits, np.float32).reshape(c, -1)
        truth = np.asarray(labels).reshape(-1).astype(np.int64)
        if truth.size and (truth.min() < 0 or truth.max() >= c):
            raise ValueError(f"label values outside 0..{c - 1}")
        top2 = np.partition(flat, c - 2, axis=0)[c - 2 :]
        flippable = (top2[1] - top2[0]) < 2.0 * self.span
        fixed_pred, fixed_true = flat[:, ~flippable].argmax(0), truth[~flippable]
        self.fixed_tp += np.bincount(fixed_true[fixed_pred == fixed_true], minlength=c)
        self.fixed_pred += np.bincount(fixed_pred, minlength=c)
        self.fixed_true += np.bincount(fixed_true, minlength=c)
        self.logits.append(flat[:, flippable].astype(np.float16))
        self.labels.append(truth[flippable])
        self.voxels += truth.size

    @property
    def flippable(self) -> int:
        return int(sum(lab.size for lab in self.labels))


def _dice(tp: np.ndarray, pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    total = pred + true
    return np.where(total > 0, 2.0 * tp / np.maximum(total, 1), np.nan)


def _mean(dice: np.ndarray, labels: Sequence[int]) -> float:
    values = dice[list(labels)]
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else float("nan")


def sample_dice(sample: LogitSample, offsets: np.ndarray) -> np.ndarray:
    """Per-label Dice over the sample's volumes with ``offsets`` added to the logits."""
    c = sample.classes
    tp, pred = sample.fixed_tp.copy(), sample.fixed_pred.copy()
    true = sample.fixed_true.copy()
    for logits, labels in zip(sample.logits, sample.labels, strict=True):
        p = (logits.astype(np.float32) + offsets[:, None]).argmax(0)
        tp += np.bincount(labels[p == labels], minlength=c)
        pred += np.bincount(p, minlength=c)
        true += np.bincount(labels, minlength=c)
    return _dice(tp, pred, true)


@dataclass
class Calibration:
    """Fitted offsets (one per output channel, background 0) and what they did."""

    offsets: np.ndarray
    dice_before: np.ndarray
    dice_after: np.ndarray
    labels: tuple[int, ...]
    voxels: int
    flippable: int
    span: float
    step: float
    sweeps: int

    @property
    def mean_before(self) -> float:
        return _mean(self.dice_before, self.labels)

    @property
    def mean_after(self) -> float:
        return _mean(self.dice_after, self.labels)


def fit_logit_offsets(
    sample: LogitSample,
    labels: Iterable[int],
    *,
    step: float = STEP,
    sweeps: int = 3,
) -> Calibration:
    """Coordinate ascent of the mean Dice over ``labels``: each label's offset in turn takes
    the value of the grid ``-span..span`` (spacing ``step``) that maximises it with the
    others held, for ``sweeps`` passes; channel 0 (background) stays 0 as the reference.
    An offset moves only when it raises the mean, so the result is never worse on the
    sample than no offsets."""
    c, span = sample.classes, sample.span
    labels = tuple(int(v) for v in labels if 0 < int(v) < c)
    grid = np.round(np.arange(-span, span + step / 2, step), 6)
    logits = (
        np.concatenate(sample.logits, axis=1).astype(np.float32)
        if sample.logits
        else np.zeros((c, 0), np.float32)
    )
    truth = np.concatenate(sample.labels) if sample.labels else np.zeros(0, np.int64)
    true_counts = sample.fixed_true + np.bincount(truth, minlength=c)
    offsets = np.zeros(c, np.float32)
    before = sample_dice(sample, offsets)
    best = _mean(before, labels)
    for _ in range(sweeps):
        moved = False
        for label in labels:
            shifted = logits + offsets[:, None]
            own = logits[label]
            shifted[label] = -np.inf
            other = shifted.argmax(0)
            other_max = np.take_along_axis(shifted, other[None], 0)[0]
            # voxels that are the label for every offset in the grid, for none, or in between
            always = own + grid[0] > other_max
            never = own + grid[-1] <= other_max
            between = ~(always | never)
            steady = np.where(always, label, other)[~between]
            steady_truth = truth[~between]
            tp0 = sample.fixed_tp + np.bincount(steady_truth[steady == steady_truth], minlength=c)
            pred0 = sample.fixed_pred + np.bincount(steady, minlength=c)
            own_b, other_b, max_b, truth_b = (
                own[between],
                other[between],
                other_max[between],
                truth[between],
            )
            for value in grid:
                p = np.where(own_b + value > max_b, label, other_b)
                tp = tp0 + np.bincount(truth_b[p == truth_b], minlength=c)
                pred = pred0 + np.bincount(p, minlength=c)
                score = _mean(_dice(tp, pred, true_counts), labels)
                if score > best + 1e-7:
                    best, offsets[label], moved = score, value, True
        if not moved:
            break
    return Calibration(
        offsets=offsets,
        dice_before=before,
        dice_after=sample_dice(sample, offsets),
        labels=labels,
        voxels=sample.voxels,
        flippable=sample.flippable,
        span=span,
        step=step,
        sweeps=sweeps,
    )
