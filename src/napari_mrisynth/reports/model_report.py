"""One evaluation as a folder: ``report.json`` plus PNG figures, optionally logged to MLflow.

A classifier report holds :func:`~napari_mrisynth.reports.metrics.binary_summary` (AUC with a
DeLong CI; accuracy, sensitivity, specificity, PPV, NPV with Wilson CIs; average precision;
the confusion matrix) and ``roc.png``, ``pr.png``, ``confusion.png``. A segmenter report holds
:func:`~napari_mrisynth.reports.metrics.segmentation_summary` (Dice and HD95 per label) and
``dice.png``, ``hd95.png``. With subject ids, both list one row per subject.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from napari_mrisynth.errors import MrisynthError
from napari_mrisynth.reports import metrics, plots

REPORT_FILE = "report.json"


def _header(kind: str, model_ref: str | None, title: str | None) -> dict[str, Any]:
    from napari_mrisynth._version import __version__

    return {
        "kind": kind,
        "model": model_ref,
        "title": title,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "software": {"napari-mrisynth": __version__},
    }


def write_report(report: Mapping[str, Any], out_dir: str | Path) -> Path:
    """Write ``out_dir/report.json`` atomically (strict JSON: undefined values are null)."""
    path = Path(out_dir) / REPORT_FILE
    partial = path.with_suffix(".json.tmp")
    partial.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    partial.replace(path)
    return path


def classification_report(
    y_true: Any,
    scores: Any,
    class_names: Sequence[str],
    out_dir: str | Path,
    *,
    model_ref: str | None = None,
    subjects: Sequence[str] | None = None,
    title: str | None = None,
    threshold: float = 0.5,
) -> dict[str, Any]:
    """Evaluate a binary classifier and write ``report.json``, ``roc.png``, ``pr.png`` and
    ``confusion.png`` into ``out_dir``.

    Parameters
    ----------
    y_true : array of {0, 1}
        1 for the positive class.
    scores : array of float
        Score (probability) of the positive class per case.
    class_names : (negative, positive)
        e.g. ``("control", "bvFTD")``.
    out_dir : folder
        Created if needed; existing report files in it are replaced.
    model_ref : str, optional
        ``id@version`` of the model evaluated.
    subjects : sequence of str, optional
        One id per case; the report then lists each case's truth, score and call.
    title : str, optional
        Shown on the figures.
    threshold : float
        A case is called positive when its score is at least this.

    Returns
    -------
    dict
        What ``report.json`` holds: ``kind``, ``model``, ``classes``, ``metrics`` (the binary
        summary), ``subjects`` (rows, when ids were given), ``figures`` (file names) and
        ``figures_skipped`` (why a curve could not be drawn, e.g. one class only).
    """
    names = [str(name) for name in class_names] if not isinstance(class_names, (str, Path)) else []
    if len(names) != 2:
        raise ValueError(f"class_names must be (negative, positive) names, got {class_names!r}")
    truth = np.asarray(y_true).ravel()
    score = np.asarray(scores, dtype=np.float64).ravel()
    summary = metrics.binary_summary(truth, score, threshold)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = _header("classification", model_ref, title)
    report["classes"] = {"negative": names[0], "positive": names[1]}
    report["metrics"] = summary
    if subjects is not None:
        ids = [str(s) for s in subjects]
        if len(ids) != truth.size:
            raise ValueError(f"{len(ids)} subject ids for {truth.size} cases")
        report["subjects"] = [
            {
                "id": subject,
                "truth": names[int(t)],
                "score": float(s),
                "predicted": names[int(s >= threshold)],
                "correct": bool(int(s >= threshold) == int(t)),
            }
            for subject, t, s in zip(ids, truth, score, strict=True)
        ]
    heading = title or model_ref or "classifier"
    figures, skipped = [], {}
    drawings = (
        ("roc.png", lambda p: plots.plot_roc(truth, score, p, title=f"{heading}: ROC")),
        ("pr.png", lambda p: plots.plot_pr(truth, score, p, title=f"{heading}: precision-recall")),
    )
    for name, draw in drawings:
        try:
            draw(out_dir / name)
            figures.append(name)
        except ValueError as exc:  # one class only: no curve to draw
            skipped[name] = str(exc)
    plots.plot_confusion(summary["confusion"], names, out_dir / "confusion.png",
                         title=f"{heading}: threshold {threshold:g}")  # fmt: skip
    figures.append("confusion.png")
    report["figures"] = figures
    if skipped:
        report["figures_skipped"] = skipped
    write_report(report, out_dir)
    return report


def segmentation_report(
    pairs: Iterable[Any] | Mapping[str, Any],
    label_names: Mapping[int, str] | None,
    out_dir: str | Path,
    *,
    model_ref: str | None = None,
    subjects: Sequence[str] | None = None,
    title: str | None = None,
) -> dict[str, Any]:
    """Evaluate a segmenter and write ``report.json``, ``dice.png`` and ``hd95.png``.

    Parameters
    ----------
    pairs : iterable, or a summary
        What :func:`~napari_mrisynth.reports.metrics.segmentation_summary` takes (one
        ``(truth, prediction, spacing_zyx)`` or two Volumes per subject), or the summary it
        returned, so that a caller who already has it does not pay for HD95 twice.
    label_names : mapping or None
        label value -> name; None when ``pairs`` is a summary.
    out_dir : folder
    model_ref, title : str, optional
    subjects : sequence of str, optional
        One id per pair; each row of ``per_subject`` then carries its ``id``.

    Returns
    -------
    dict
        What ``report.json`` holds: ``kind``, ``model``, ``metrics`` (the summary),
        ``figures``.
    """
    if isinstance(pairs, Mapping):
        summary = dict(pairs)
    else:
        if not label_names:
            raise ValueError("segmentation_report needs label_names to score pairs")
        summary = metrics.segmentation_summary(pairs, label_names)
    if subjects is not None:
        ids = [str(s) for s in subjects]
        rows = summary.get("per_subject", [])
        if len(ids) != len(rows):
            raise ValueError(f"{len(ids)} subject ids for {len(rows)} subjects scored")
        summary["per_subject"] = [{"id": i, **row} for i, row in zip(ids, rows, strict=True)]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = _header("segmentation", model_ref, title)
    report["metrics"] = summary
    heading = title or model_ref or "segmenter"
    plots.plot_dice(summary, out_dir / "dice.png", title=f"{heading}: Dice per label")
    figures = ["dice.png"]
    if "hd95" in summary:
        plots.plot_hd95(summary, out_dir / "hd95.png", title=f"{heading}: HD95 per label")
        figures.append("hd95.png")
    report["figures"] = figures
    write_report(report, out_dir)
    return report


def log_report_to_mlflow(
    report: Mapping[str, Any],
    out_dir: str | Path,
    *,
    tracking_uri: str | None = None,
    run_id: str | None = None,
    experiment: str = "reports",
    artifact_path: str = "report",
) -> str:
    """Log a report's metrics (flattened by
    :func:`~napari_mrisynth.models.tracking.flatten_metrics`) and the files of ``out_dir``
    (``report.json``, PNGs) to MLflow.

    Parameters
    ----------
    report : dict
        What :func:`classification_report` or :func:`segmentation_report` returned.
    out_dir : folder
        The report's folder; its files become artifacts under ``artifact_path``.
    tracking_uri : str, optional
        ``sqlite:///...``, a folder or a server; the package's local SQLite store by default
        (the one ``mrisynth train`` uses).
    run_id : str, optional
        Log into this existing run (e.g. the training run) instead of a new one.
    experiment : str
        Experiment of the new run; created when missing, with its artifacts beside a local
        store.

    Returns
    -------
    str
        The run id.
    """
    from napari_mrisynth.models import tracking

    tracking.require_mlflow("logging a report")
    out_dir = Path(out_dir)
    if not (out_dir / REPORT_FILE).is_file():
        raise MrisynthError(f"{out_dir}: no {REPORT_FILE} (write the report before logging it)")
    created = run_id is None
    if created:
        tags = {"mrisynth.report": str(report.get("kind"))}
        if report.get("model"):
            tags["mrisynth.model"] = str(report["model"])
        run_name = f"{report.get('kind', 'report')} {report.get('model') or ''}".strip()
        client, run_id = tracking.start_run(tracking_uri, experiment, run_name, tags)
    else:
        client = tracking.mlflow_client(tracking_uri)
    params = {"report.kind": report.get("kind"), "report.model": report.get("model")}
    if "threshold" in report.get("metrics", {}):
        params["report.threshold"] = report["metrics"]["threshold"]
    tracking.log_params(client, run_id, {k: str(v) for k, v in params.items() if v is not None})
    tracking.log_metrics(client, run_id, tracking.flatten_metrics(report.get("metrics", {})))
    client.log_artifacts(run_id, str(out_dir), artifact_path)
    if created:
        client.set_terminated(run_id)
    return run_id
