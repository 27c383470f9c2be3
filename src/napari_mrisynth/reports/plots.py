"""Report figures as PNG files: ROC, precision-recall, confusion matrix, Dice and HD95 per label.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot, so no global state and no
GUI backend); matplotlib is imported only when a figure is drawn.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_mrisynth.errors import MrisynthError
from napari_mrisynth.io.atomic import write_atomic
from napari_mrisynth.reports import metrics

MISSING_MATPLOTLIB = "report figures need matplotlib: pip install 'napari-mrisynth[train]'"

_DPI = 120


def _figure(width: float, height: float) -> Any:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise MrisynthError(MISSING_MATPLOTLIB) from exc
    figure = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Any, path: str | Path) -> Path:
    """The figure as a PNG at ``path`` (folders made; written whole or not at all)."""
    return write_atomic(path, lambda handle: figure.savefig(handle, format="png"))


def plot_roc(y_true: Any, scores: Any, path: str | Path, title: str = "ROC curve") -> Path:
    """ROC curve with the AUC and its DeLong 95% CI in the legend; returns the PNG path."""
    fpr, tpr, _ = metrics.roc_curve(y_true, scores)
    auc, low, high = metrics.auc_ci_delong(y_true, scores)
    truth = np.asarray(y_true)
    figure = _figure(5.0, 5.0)
    axes = figure.add_subplot()
    axes.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, label="chance")
    # straight segments between thresholds: a tie of positives and negatives is a diagonal
    axes.plot(fpr, tpr, "-o", color="C3", linewidth=2, markersize=3,
              label=f"AUC {auc:.3f} (95% CI {low:.3f}-{high:.3f})")  # fmt: skip
    axes.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), aspect="equal",
             xlabel="1 - specificity (false positive rate)",
             ylabel="sensitivity (true positive rate)")  # fmt: skip
    axes.set_title(f"{title}\n{int(truth.sum())} positive, {int((truth == 0).sum())} negative")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    return _save(figure, path)


def plot_pr(
    y_true: Any, scores: Any, path: str | Path, title: str = "Precision-recall curve"
) -> Path:
    """Precision-recall steps with the average precision and the prevalence baseline."""
    precision, recall, _ = metrics.precision_recall_curve(y_true, scores)
    ap = metrics.average_precision(y_true, scores)
    prevalence = float(np.mean(np.asarray(y_true) == 1))
    figure = _figure(5.0, 5.0)
    axes = figure.add_subplot()
    axes.axhline(prevalence, linestyle="--", color="0.6", linewidth=1,
                 label=f"prevalence {prevalence:.2f}")  # fmt: skip
    axes.step(recall, precision, where="pre", color="C0", linewidth=2,
              label=f"average precision {ap:.3f}")  # fmt: skip
    axes.plot(recall, precision, "o", color="C0", markersize=3)
    axes.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.05), aspect="equal",
             xlabel="recall (sensitivity)", ylabel="precision (PPV)", title=title)  # fmt: skip
    axes.grid(alpha=0.3)
    axes.legend(loc="lower left")
    return _save(figure, path)


def plot_confusion(
    matrix: Any, class_names: Sequence[str], path: str | Path, title: str = "Confusion matrix"
) -> Path:
    """Counts and row percentages (true class rows, predicted class columns)."""
    counts = np.asarray(matrix, dtype=np.int64)
    n = counts.shape[0]
    if counts.shape != (n, n) or len(class_names) != n:
        raise ValueError(f"a {counts.shape} matrix does not fit {len(class_names)} class names")
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)
    figure = _figure(1.6 * n + 2.4, 1.4 * n + 1.8)
    axes = figure.add_subplot()
    image = axes.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(n):
        for j in range(n):
            axes.text(j, i, f"{counts[i, j]}\n{100 * share[i, j]:.0f}%", ha="center",
                      va="center", color="white" if share[i, j] > 0.5 else "black",
                      fontsize=12)  # fmt: skip
    axes.set_xticks(range(n), class_names)
    axes.set_yticks(range(n), class_names)
    axes.set(xlabel="predicted", ylabel="true", title=title)
    figure.colorbar(image, ax=axes, label="share of the true class", shrink=0.8)
    return _save(figure, path)


def _per_label_values(summary: dict[str, Any], metric: str) -> tuple[list[str], list[list]]:
    names = list(summary["per_label"])
    rows = [row[metric] for row in summary.get("per_subject", [])]
    values = [[row[name] for row in rows if row.get(name) is not None] for name in names]
    return names, values


def _plot_per_label(
    summary: dict[str, Any], metric: str, path: str | Path, xlabel: str, title: str,
    xlim: tuple[float, float] | None = None,
) -> Path:  # fmt: skip
    names, values = _per_label_values(summary, metric)
    means = [summary["per_label"][name][metric]["mean"] for name in names]
    figure = _figure(7.0, 0.32 * len(names) + 1.6)
    axes = figure.add_subplot()
    positions = np.arange(len(names))[::-1]  # first label at the top
    axes.barh(positions, [m if m is not None else 0.0 for m in means], color="C0", alpha=0.35,
              label="mean")  # fmt: skip
    if max((len(v) for v in values), default=0) > 1:
        filled = [(p, v) for p, v in zip(positions, values, strict=True) if v]
        axes.boxplot([v for _, v in filled], positions=[p for p, _ in filled], vert=False,
                     widths=0.6, manage_ticks=False)  # fmt: skip
    for position, subject_values in zip(positions, values, strict=True):
        axes.plot(subject_values, [position] * len(subject_values), "k.", markersize=4)
        if not subject_values:
            axes.text(0, position, " no value (label absent)", va="center", color="0.4")
    axes.set_yticks(positions, names)
    # a long model title is wrapped, not cut at the figure's edge
    axes.set_xlabel(xlabel)
    axes.set_title(textwrap.fill(f"{title} (n = {summary['n']} subjects)", 45))
    if xlim is not None:
        axes.set_xlim(*xlim)
    axes.grid(axis="x", alpha=0.3)
    return _save(figure, path)


def plot_dice(summary: dict[str, Any], path: str | Path, title: str = "Dice per label") -> Path:
    """Dice per label from :func:`~napari_mrisynth.reports.metrics.segmentation_summary`:
    the mean as a bar, a box plot over subjects when there are several, and each subject."""
    return _plot_per_label(summary, "dice", path, "Dice", title, xlim=(0.0, 1.0))


def plot_hd95(summary: dict[str, Any], path: str | Path, title: str = "HD95 per label") -> Path:
    """HD95 (mm) per label, drawn like :func:`plot_dice`; labels missing from a prediction or
    its ground truth (infinite HD95) are left out of the boxes."""
    return _plot_per_label(summary, "hd95", path, "HD95 (mm)", title)
