"""``mrisynth report classifier|segmenter``: a registry model on a cohort's subjects.

Each subject's own T1 scan goes through the same inference users run (``mrisynth classify``
/ ``segment``); the report folder gets ``report.json`` and the figures, and with
``--tracking-uri`` the metrics and files are logged to MLflow too.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from napari_mrisynth.cli._options import add_device_option, chosen_device, comma_names
from napari_mrisynth.errors import ModelError, MrisynthError

#: The class whose probability is the classifier's score.
POSITIVE_CLASS = "bvFTD"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report",
        help="evaluate a classifier (ROC, PR, confusion) or segmenter (Dice, HD95) on a cohort",
        description=(
            "Run a registry model on a cohort's subjects (by default the held-out test "
            "subjects its card names) and write report.json with the metrics and their 95% "
            "confidence intervals, plus PNG figures; optionally log both to MLflow."
        ),
    )
    kinds = parser.add_subparsers(dest="report_kind", metavar="KIND", required=True)
    for kind, what in (
        ("classifier", "AUC (DeLong CI), accuracy/sensitivity/specificity (Wilson CIs), ROC, PR"),
        ("segmenter", "Dice and HD95 per label against the cohort's ground-truth labels"),
    ):
        sub = kinds.add_parser(kind, help=what, description=what)
        sub.add_argument("--model", help="model id[@version] or folder (default: the best one)")
        sub.add_argument(
            "--data", type=Path, required=True, help="cohort folder (participants.tsv)"
        )
        sub.add_argument(
            "--subjects",
            default="test",
            help="'test' (the card's held-out split, the default), 'all', or ids: sub-001,sub-002",
        )
        sub.add_argument("--out", type=Path, required=True, help="report folder")
        sub.add_argument(
            "--tracking-uri", help="log to this MLflow store, e.g. sqlite:///mlflow.db"
        )
        sub.add_argument("--experiment", default="reports", help="MLflow experiment (new runs)")
        add_device_option(sub)
        sub.add_argument("--json", action="store_true", help="print the report as JSON")
        if kind == "classifier":
            sub.add_argument(
                "--threshold",
                type=float,
                default=0.5,
                help=f"call {POSITIVE_CLASS} when its probability is at least this",
            )
        sub.set_defaults(func=run)


def select_subjects(card: Any, participants: list[dict[str, str]], which: str, cohort: Path):
    """Participant rows for ``which``: ``test`` (the card's split), ``all`` or a comma list."""
    by_id = {row["participant_id"]: row for row in participants}
    if which == "all":
        return participants
    if which == "test":
        training = card.training or {}
        split = training.get("split") or training.get("splits") or {}
        ids = split.get("test") if isinstance(split, dict) else None
        if not ids:
            raise ModelError(
                f"model {card.ref}: its card names no test subjects (training.split.test); "
                "pass --subjects all or a list of ids"
            )
    else:
        ids = list(comma_names(which))
        if not ids:
            raise MrisynthError("--subjects: give 'test', 'all' or comma-separated ids")
    missing = [s for s in ids if s not in by_id]
    if missing:
        raise MrisynthError(
            f"{cohort / 'participants.tsv'}: no subject {', '.join(missing)} "
            f"(it has {len(by_id)}: {', '.join(list(by_id)[:5])}...)"
        )
    return [by_id[s] for s in ids]


def _classifier_cases(card: Any, rows: list[dict[str, str]], cohort: Path, device: Any, bar: Any):
    from napari_mrisynth.models.inference import classify
    from napari_mrisynth.training.data import subject_image

    names = {label.value: label.name for label in card.labels}
    positive = [name for name in names.values() if name.lower() == POSITIVE_CLASS.lower()]
    if len(names) != 2 or not positive:
        raise ModelError(
            f"model {card.ref}: a classifier report needs two classes, one named "
            f"{POSITIVE_CLASS}; the card has {list(names.values())}"
        )
    positive_name = positive[0]
    negative_name = next(name for name in names.values() if name != positive_name)
    y_true, scores = [], []
    for row in rows:
        subject, diagnosis = row["participant_id"], row.get("diagnosis", "")
        if diagnosis.lower() not in (positive_name.lower(), negative_name.lower()):
            raise MrisynthError(
                f"{cohort / 'participants.tsv'}: {subject} has diagnosis {diagnosis!r}, "
                f"not {positive_name} or {negative_name}"
            )
        result = classify(subject_image(cohort, subject), card, device=device)
        y_true.append(int(diagnosis.lower() == positive_name.lower()))
        scores.append(float(result.probabilities[positive_name]))
        bar.update(1)
    return y_true, scores, (negative_name, positive_name)


def _segmenter_pairs(card: Any, rows: list[dict[str, str]], cohort: Path, device: Any, bar: Any):
    from napari_mrisynth.io.files import load_volume
    from napari_mrisynth.models.inference import segment
    from napari_mrisynth.training.data import subject_image, subject_labels

    pairs = []
    for row in rows:
        subject = row["participant_id"]
        truth = load_volume(subject_labels(cohort, subject)).compute()
        prediction = segment(subject_image(cohort, subject), card, device=device).labels
        pairs.append((truth, prediction))
        bar.update(1)
    return pairs


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from napari_mrisynth.models.registry import default_model, find_model
    from napari_mrisynth.reports.model_report import (
        classification_report,
        log_report_to_mlflow,
        segmentation_report,
        write_report,
    )
    from napari_mrisynth.training.splits import read_participants

    task = "classification" if args.report_kind == "classifier" else "segmentation"
    card = find_model(args.model, task=task) if args.model else default_model(task)
    rows = select_subjects(card, read_participants(args.data), args.subjects, args.data)
    device = chosen_device(args.device, "report")
    ids = [row["participant_id"] for row in rows]
    with tqdm(total=len(rows), unit="subject", desc=f"{card.ref}", file=sys.stderr) as bar:
        if task == "classification":
            y_true, scores, names = _classifier_cases(card, rows, args.data, device, bar)
        else:
            pairs = _segmenter_pairs(card, rows, args.data, device, bar)
    if task == "classification":
        report = classification_report(y_true, scores, names, args.out, model_ref=card.ref,
                                       subjects=ids, title=card.title,
                                       threshold=args.threshold)  # fmt: skip
    else:
        report = segmentation_report(pairs, card.label_names, args.out, model_ref=card.ref,
                                     subjects=ids, title=card.title)  # fmt: skip
    report["data"] = {"cohort": str(args.data.resolve()), "subjects": args.subjects}
    write_report(report, args.out)
    if args.tracking_uri:
        run_id = log_report_to_mlflow(report, args.out, tracking_uri=args.tracking_uri,
                                      experiment=args.experiment)  # fmt: skip
        report["mlflow"] = {"tracking_uri": args.tracking_uri, "run_id": run_id}
        write_report(report, args.out)
    if args.json:
        print(json.dumps(report))
    else:
        print(_summary_line(report, len(rows), args.out))
    return 0


def _summary_line(report: dict[str, Any], n: int, out: Path) -> str:
    summary = report["metrics"]
    where = f"; MLflow run {report['mlflow']['run_id']}" if "mlflow" in report else ""
    if report["kind"] == "classification":

        def text(name: str) -> str:
            entry = summary[name]
            if entry["value"] is None:
                return f"{name} n/a"
            low, high = entry["ci95"]
            return f"{name} {entry['value']:.3f} [{low:.3f}, {high:.3f}]"

        metrics = ", ".join(text(k) for k in ("auc", "accuracy", "sensitivity", "specificity"))
    else:
        dice, hd95 = summary["dice_mean"], summary.get("hd95_mean")
        metrics = "mean Dice " + ("n/a" if dice is None else f"{dice:.3f}")
        metrics += ", mean HD95 " + ("n/a" if hd95 is None else f"{hd95:.1f} mm")
    return f"{report['model']} on {n} subjects: {metrics}; report in {out}{where}"
