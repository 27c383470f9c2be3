"""``mrisynth evaluate`` (generative metrics with real-vs-real floors) and ``mrisynth audit``
(memorization: the nearest training scan of every synthetic one)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from napari_mrisynth.cli._options import (
    ProgressBar,
    add_device_option,
    chosen_device,
    comma_names,
)
from napari_mrisynth.errors import MrisynthError
from napari_mrisynth.evaluation.features import DEFAULT_FEATURE_MODEL


def register(subparsers: argparse._SubParsersAction) -> None:
    evaluate = subparsers.add_parser(
        "evaluate",
        help="FID, KID, IS, MS-SSIM, MMD and the automated Turing test of a synthetic set",
        description=(
            "Compare a folder of synthetic volumes with a folder of real ones. Each metric "
            "is shown beside its floor: the same metric between two halves of the real set "
            "(FID, KID, MMD), or the real set's own value (IS, MS-SSIM). Then the automated "
            "Turing test: both sets prepared exactly as raters would see them (a grid at the "
            "real scans' own resolution), sharpness measured, and two classifiers (texture "
            "statistics, a patch CNN) cross-validated at telling them apart (AUC 0.5: they "
            "cannot). 'mrisynth evaluate downstream' asks another question: does a synthetic "
            "set help a small-data classifier or segmenter?"
        ),
    )
    evaluate.add_argument("--real", type=Path, help="folder of real volumes (required)")
    evaluate.add_argument("--synthetic", type=Path, help="folder of synthetic ones (required)")
    evaluate.add_argument("--json", metavar="FILE", help="write the report as JSON ('-': stdout)")
    evaluate.add_argument(
        "--features",
        default=DEFAULT_FEATURE_MODEL,
        help="feature extractor: a segmentation model id[@version] (SegResNet encoder, "
        f"default {DEFAULT_FEATURE_MODEL}) or medicalnet:PATH[:DEPTH] (local MedicalNet "
        "weights, depth 10, 18, 34 or 50; default 10)",
    )
    evaluate.add_argument(
        "--metrics", default="fid,kid,is,ms_ssim,mmd", help="comma-separated subset to compute"
    )
    evaluate.add_argument("--seed", type=int, default=0, help="real-set halves, subsets, pairs")
    evaluate.add_argument(
        "--classifiers", default="texture,cnn",
        help="automated Turing test classifiers: texture, cnn, both (default) or none",
    )  # fmt: skip
    evaluate.add_argument("--folds", type=int, default=5, help="cross-validation folds")
    evaluate.add_argument(
        "--study-spacing", type=float,
        help="grid of the prepared volumes in mm (default: the real scans' own resolution)",
    )  # fmt: skip
    evaluate.add_argument(
        "--study-resolution", type=float,
        help="bring every volume down to this coarser resolution first (as a study can)",
    )  # fmt: skip
    add_device_option(evaluate)
    evaluate.add_argument("--tracking-uri", help="log the metrics to this MLflow store")
    evaluate.add_argument(
        "--mlflow",
        action="store_true",
        help="log to MLflow (the local store unless --tracking-uri)",
    )
    evaluate.add_argument("--experiment", default="evaluation", help="MLflow experiment")
    evaluate.set_defaults(func=run_evaluate)
    evaluations = evaluate.add_subparsers(dest="evaluation", metavar="{downstream,robustness}")
    register_downstream(evaluations)
    register_robustness(evaluations)

    audit = subparsers.add_parser(
        "audit",
        help="memorization audit: the nearest training scan of every synthetic one",
        description=(
            "For every synthetic volume, its most similar training volume (correlation "
            "inside the brain mask after alignment to the model grid) and whether it is "
            "closer than real subjects get to each other."
        ),
    )
    audit.add_argument("--train", type=Path, required=True, help="folder of training volumes")
    audit.add_argument("--synthetic", type=Path, required=True, help="folder of synthetic ones")
    audit.add_argument("--json", metavar="FILE", help="write the audit as JSON ('-': stdout)")
    audit.add_argument(
        "--threshold", type=float, help="flag above this similarity (default: from the data)"
    )
    add_device_option(audit)
    audit.set_defaults(func=run_audit)


def extractor_from_option(option: str, device: Any) -> Any:
    """``seg-head-demo`` / ``model@1.0.0`` / ``medicalnet:PATH[:DEPTH]`` -> FeatureExtractor."""
    from napari_mrisynth.evaluation.features import FeatureExtractor

    if option.startswith("medicalnet:"):
        rest = option[len("medicalnet:") :]
        path, depth = rest, 10
        head, sep, tail = rest.rpartition(":")
        if sep and tail.isdigit():
            path, depth = head, int(tail)
        if not path:
            raise MrisynthError("--features medicalnet:PATH[:DEPTH] needs a weights file")
        return FeatureExtractor.medicalnet(path, depth, device=device)
    return FeatureExtractor.segmentation_encoder(option, device=device)


def _write_json(data: dict[str, Any], target: str | None) -> None:
    if not target:
        return
    text = json.dumps(data, indent=2) + "\n"
    if target == "-":
        sys.stdout.write(text)
        return
    path = Path(target)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise MrisynthError(f"{path}: cannot write the report ({exc})") from exc


def _number(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.4g}"


def evaluation_table(report: Any) -> str:
    """The report as a plain-text table: metric, value, floor, how to read it."""
    from napari_mrisynth.evaluation.evaluate import TITLES

    rows = [("metric", "value", "real-vs-real floor", "how to read it")]
    for name, entry in report.metrics.items():
        value = _number(entry["value"])
        if "std" in entry and entry["std"]:
            value += f" ± {entry['std']:.2g}"
        rows.append((TITLES[name], value, _number(entry["floor"]), entry["reading"]))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True))
        + "  "
        + row[3]
        for row in rows
    ]
    reasons = {e["floor_reason"] for e in report.metrics.values() if e.get("floor_reason")}
    extractor = report.extractor.get("model")
    lines.append(
        f"{report.n_synthetic} synthetic vs {report.n_real} real volumes"
        + (
            f"; features: {extractor} ({report.extractor.get('feature_dim')} values)"
            if extractor
            else ""
        )
    )
    lines += [f"no floor: {reason}" for reason in sorted(reasons)]
    return "\n".join(lines)


def _giveaway_lines(entry: dict[str, Any], shown: int = 5) -> list[str]:
    """The texture statistics that tell the sets apart most, after and before the study's
    histogram matching (AUC of each alone, effect size d of synthetic against real)."""
    lines = []
    for title, where in (("gives it away", entry), ("before matching",
                                                    entry.get("before_matching"))):  # fmt: skip
        if not where or not where.get("giveaways"):
            continue
        head = f"AUC {where['value']:.3f}; " if where is not entry else ""
        items = ", ".join(f"{g['feature']} {g['auc']:.2f} (d {g['d']:+.1f})"
                          for g in where["giveaways"][:shown])  # fmt: skip
        lines.append(f"    {title}: {head}{items}")
    return lines


def turing_table(report: Any) -> str:
    """The automated Turing test in a few lines: each classifier's AUC, sharpness ratios."""
    grid = report.grid
    degraded = f", degraded to {grid['resolution']:g} mm" if grid["degraded"] else ""
    lines = [f"automated Turing test on volumes prepared as raters see them "
             f"({grid['spacing']:g} mm grid{degraded})"]  # fmt: skip
    for name in ("texture", "cnn"):
        entry = report.two_sample.get(name)
        if entry:
            low, high = entry["ci95"]
            lines.append(f"  {name:<8} AUC {entry['value']:.3f} (95% CI {low:.3f}-{high:.3f}); "
                         "0.5 = cannot tell synthetic from real")  # fmt: skip
            lines += _giveaway_lines(entry)
    for key, title in (("hf_energy", "high-frequency energy"), ("gradient_p50", "gradient p50"),
                       ("gradient_p90", "gradient p90")):  # fmt: skip
        entry = report.sharpness[key]
        low, high = entry["ci95"]
        floor = "n/a" if entry["floor"] is None else f"{entry['floor']:.3f}"
        lines.append(f"  {title:<22} synthetic/real {entry['ratio']:.3f} (95% CI {low:.3f}-"
                     f"{high:.3f}; real halves {floor})")  # fmt: skip
    return "\n".join(lines)


def _integers(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in comma_names(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated integers") from exc


def register_downstream(subparsers: argparse._SubParsersAction) -> None:
    """``mrisynth evaluate downstream``."""
    from napari_mrisynth.synthesis.downstream import ARMS, TASKS, Protocol
    from napari_mrisynth.training.budget import Budget

    base, budget = Protocol(), Budget()
    parser = subparsers.add_parser(
        "downstream",
        help="does a synthetic set help a small-data classifier or segmenter?",
        description=(
            "Repeated, stratified, subject-level splits of a real cohort. Per repeat and "
            "training size: an anatomy-first generator fitted on that training set only, then "
            "the same network, budget and early stopping in every arm (real; real + classical "
            "augmentation; real + synthetic; real + both; synthetic only), scored on held-out "
            "real test subjects that no network and no generator saw. Paired differences "
            "across repeats with bootstrap 95 % intervals and paired tests. Resumable: run "
            "the same command again to continue; a later run may add repeats, sizes, tasks "
            "or arms to the same --out. Protocol: docs/downstream.md."
        ),
    )  # fmt: skip
    parser.add_argument("--cohort", type=Path, required=True, help="real cohort folder")
    parser.add_argument("--out", type=Path, required=True, help="results folder")
    parser.add_argument("--tasks", type=comma_names, default=base.tasks,
                        help=f"comma-separated: {', '.join(TASKS)} (default both)")  # fmt: skip
    parser.add_argument(
        "--arms",
        type=comma_names,
        default=base.arms,
        help=f"comma-separated subset of {', '.join(ARMS)} (default all)",
    )
    parser.add_argument("--sizes", type=_integers, default=base.sizes,
                        help="real training subjects per class (default 6,10,16)")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=base.repeats, help="default 10")
    parser.add_argument("--test-per-class", type=int, default=base.test_per_class)
    parser.add_argument("--val-per-class", type=int, default=base.val_per_class)
    parser.add_argument("--synthetic-per-class", type=int, default=base.synthetic_per_class)
    parser.add_argument(
        "--spacing",
        type=float,
        default=base.spacing,
        help="model grid of the generator and the networks, mm (default 4)",
    )
    parser.add_argument(
        "--curate",
        action="store_true",
        help="keep only synthetic heads the memorization audit does not flag",
    )
    parser.add_argument("--steps", type=int, default=budget.steps,
                        help="optimiser steps per arm at most (default 300)")  # fmt: skip
    parser.add_argument("--val-every", type=int, default=budget.val_every)
    parser.add_argument("--patience", type=int, default=budget.patience,
                        help="validations without improvement before stopping")  # fmt: skip
    parser.add_argument("--seed", type=int, default=base.seed)
    parser.add_argument("--report-only", action="store_true",
                        help="summarize what --out holds; train nothing")  # fmt: skip
    parser.add_argument("--json", metavar="FILE", help="write the report as JSON ('-': stdout)")
    add_device_option(parser)
    parser.add_argument("--tracking-uri", help="log every arm to this MLflow store")
    parser.add_argument("--mlflow", action="store_true",
                        help="log to MLflow (the local store unless --tracking-uri)")  # fmt: skip
    parser.add_argument("--experiment", default="downstream", help="MLflow experiment")
    parser.set_defaults(func=run_downstream_command)


def run_downstream_command(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from napari_mrisynth.synthesis.downstream import Protocol, report, run_downstream
    from napari_mrisynth.training.budget import Budget

    tracking = None
    if args.tracking_uri or args.mlflow:
        from napari_mrisynth.models.tracking import default_tracking_uri, require_mlflow

        require_mlflow("logging to MLflow")
        tracking = {"uri": args.tracking_uri or default_tracking_uri(),
                    "experiment": args.experiment}  # fmt: skip
    if args.report_only:
        if not (args.out / "protocol.json").exists():
            raise MrisynthError(f"{args.out}: no downstream run here (no protocol.json)")
        result = report(args.out, tracking=tracking)
    else:
        protocol = Protocol(
            tasks=tuple(args.tasks), sizes=tuple(args.sizes), repeats=args.repeats,
            test_per_class=args.test_per_class, val_per_class=args.val_per_class,
            synthetic_per_class=args.synthetic_per_class, spacing=args.spacing,
            curate=args.curate, arms=tuple(args.arms), seed=args.seed,
            budget=replace(Budget(), steps=args.steps, val_every=args.val_every,
                           patience=args.patience),
        )  # fmt: skip
        device = chosen_device(args.device, "evaluate downstream")
        with ProgressBar("downstream", unit="arm") as progress:

            def stage(text: str) -> None:  # what runs now, in the bar's description
                if progress.bar is not None:
                    progress.bar.set_description(text)

            result = run_downstream(args.cohort, args.out, protocol, device=device,
                                    tracking=tracking, progress=progress, stage=stage)  # fmt: skip
    text = (args.out / "report.md").read_text(encoding="utf-8")
    print(text, file=sys.stderr if args.json == "-" else sys.stdout)
    _write_json(result, args.json)
    return 0


def register_robustness(subparsers: argparse._SubParsersAction) -> None:
    """``mrisynth evaluate robustness``."""
    from napari_mrisynth.evaluation.robustness import FORMS, STANDARD_ACQUISITIONS

    parser = subparsers.add_parser(
        "robustness",
        help="do the segmenter and classifier hold on thick slices, bias, noise, reslices?",
        description=(
            "Per-label Dice of a segmenter on held-out subjects of a cohort as stored and as "
            "other acquisitions would store them (3-5 mm slices, bias fields, Rician noise), "
            "scored on each acquired grid; and the same heads stored axially, sagittally, "
            "coronally and obliquely: label agreement with the axial form and the "
            "classifier's probabilities. By default the subjects are the segmenter's own "
            "held-out test subjects; a subject it trained on is refused."
        ),
    )  # fmt: skip
    parser.add_argument("--cohort", type=Path, required=True, help="cohort with label maps")
    parser.add_argument("--segmenter", help="segmentation model (default: the registry's)")
    parser.add_argument("--classifier", help="classification model for the reslice check")
    parser.add_argument("--subjects", type=comma_names,
                        help="comma-separated held-out subjects (default: the segmenter's "
                             "test split found in --cohort)")  # fmt: skip
    parser.add_argument("--acquisitions", type=comma_names,
                        help="comma-separated subset of: "
                             # argparse %-formats help: "noise 3 %" must read "%%"
                             + ", ".join(a.name for a in STANDARD_ACQUISITIONS).replace("%", "%%")
                             + " (default: all)")  # fmt: skip
    parser.add_argument("--forms", type=comma_names, default=FORMS,
                        help=f"comma-separated subset of {', '.join(FORMS)}")  # fmt: skip
    parser.add_argument("--reslice-subjects", type=int, default=3,
                        help="subjects that get the reslice check (default 3)")  # fmt: skip
    parser.add_argument("--no-template-head", dest="template_head", action="store_false",
                        help="skip the check on the real MNI152 template head")  # fmt: skip
    parser.add_argument("--baseline-segmenter", metavar="MODEL",
                        help="run the same checks on this segmenter too (same scans and draws) "
                             "and report the two side by side")  # fmt: skip
    parser.add_argument(
        "--baseline-classifier",
        metavar="MODEL",
        help="with --baseline-segmenter: the classifier to compare with",
    )
    parser.add_argument("--baseline-report", metavar="JSON", type=Path,
                        help="compare with an earlier report.json of the same cohort, "
                             "subjects, acquisitions and seed instead of rerunning the "
                             "baseline")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="bias and noise draws")
    parser.add_argument(
        "--out", type=Path, help="write report.md, report.json and robustness.png here"
    )
    parser.add_argument("--json", metavar="FILE", help="write the result as JSON ('-': stdout)")
    add_device_option(parser)
    parser.set_defaults(func=run_robustness_command)


def _read_report(path: Path | None) -> dict | None:
    """A saved report.json, or None; a clear error names the file otherwise."""
    if path is None:
        return None
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise MrisynthError(f"{path}: not a readable robustness report.json ({exc})") from exc


def run_robustness_command(args: argparse.Namespace) -> int:
    from napari_mrisynth.evaluation.robustness import (
        STANDARD_ACQUISITIONS,
        evaluate_robustness,
        markdown,
        plot_robustness,
    )
    from napari_mrisynth.io.atomic import write_json, write_text

    device = chosen_device(args.device, "evaluate robustness")
    acquisitions = STANDARD_ACQUISITIONS
    if args.acquisitions:
        by_name = {a.name: a for a in STANDARD_ACQUISITIONS}
        unknown = [name for name in args.acquisitions if name not in by_name]
        if unknown:
            raise MrisynthError(f"--acquisitions: no {', '.join(unknown)}; choose from "
                                f"{', '.join(by_name)}")  # fmt: skip
        acquisitions = tuple(by_name[name] for name in args.acquisitions)
    with ProgressBar("robustness", unit="scan") as progress:
        result = evaluate_robustness(
            args.cohort, segmenter=args.segmenter, classifier=args.classifier,
            acquisitions=acquisitions,
            subjects=args.subjects, forms=args.forms, reslice_subjects=args.reslice_subjects,
            template_head=args.template_head, baseline_segmenter=args.baseline_segmenter,
            baseline_classifier=args.baseline_classifier,
            baseline_report=_read_report(args.baseline_report), device=device, seed=args.seed,
            progress=progress,
        )  # fmt: skip
    text = markdown(result)
    if args.out is not None:
        write_text(args.out / "report.md", text)
        write_json(args.out / "report.json", result)
        plot_robustness(result, args.out / "robustness.png")
    print(text, file=sys.stderr if args.json == "-" else sys.stdout)
    _write_json(result, args.json)
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from napari_mrisynth.evaluation import evaluate_sets, load_folder
    from napari_mrisynth.evaluation.tracking import log_evaluation

    if args.real is None or args.synthetic is None:
        raise MrisynthError("give --real and --synthetic folders (or: mrisynth evaluate "
                            "downstream --help)")  # fmt: skip
    wanted = list(comma_names(args.metrics))
    real = load_folder(args.real)
    synthetic = load_folder(args.synthetic)
    device = chosen_device(args.device, "evaluate")
    extractor = None
    if {"fid", "kid"} & set(wanted):
        extractor = extractor_from_option(args.features, device)
    with ProgressBar("evaluate", leave=False) as progress:
        report = evaluate_sets(
            real, synthetic, extractor=extractor, seed=args.seed, device=device,
            metrics=wanted, progress=progress,
        )  # fmt: skip
    data = report.to_json()
    classifiers = [c for c in comma_names(args.classifiers) if c != "none"]
    classifiers = ["texture", "cnn"] if classifiers == ["both"] else classifiers
    turing = None
    if classifiers:
        from napari_mrisynth.evaluation.two_sample import automated_turing_test

        with ProgressBar("automated Turing test", leave=False) as progress:
            turing = automated_turing_test(
                real, synthetic, spacing=args.study_spacing, resolution=args.study_resolution,
                models=classifiers, folds=args.folds, seed=args.seed, device=device,
                progress=progress,
            )  # fmt: skip
        data["automated_turing"] = turing.to_json()
    data["folders"] = {"real": str(args.real), "synthetic": str(args.synthetic)}
    if args.tracking_uri or args.mlflow:
        uri, run_id = log_evaluation(data, args.tracking_uri, args.experiment)
        data["mlflow"] = {"tracking_uri": uri, "run_id": run_id}
    table = evaluation_table(report)
    if turing is not None:
        table += "\n" + turing_table(turing)
    if "mlflow" in data:
        table += f"\nMLflow run {data['mlflow']['run_id']} ({data['mlflow']['tracking_uri']})"
    print(table, file=sys.stderr if args.json == "-" else sys.stdout)
    _write_json(data, args.json)
    return 0


def audit_table(report: Any) -> str:
    rows = [("synthetic", "nearest training", "similarity", "")]
    for entry in report.entries:
        rows.append((entry["synthetic"], entry["nearest"], f"{entry['similarity']:.4f}",
                     "FLAGGED" if entry["flagged"] else ""))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in rows]  # fmt: skip
    values = report.real_nn
    if values:
        lines.append(
            f"training set nearest-neighbour similarity: min {min(values):.4f}, "
            f"max {max(values):.4f} ({len(values)} volumes)"
        )
    lines.append(f"threshold {report.threshold:.4f} ({report.rule})")
    lines.append(report.summary())
    return "\n".join(lines)


def run_audit(args: argparse.Namespace) -> int:
    from napari_mrisynth.evaluation import audit_memorization, load_folder

    train = load_folder(args.train)
    synthetic = load_folder(args.synthetic)
    device = chosen_device(args.device, "audit")
    with ProgressBar("audit", leave=False) as progress:
        report = audit_memorization(
            train, synthetic, threshold=args.threshold, progress=progress, device=device
        )
    data = report.to_json()
    data["folders"] = {"train": str(args.train), "synthetic": str(args.synthetic)}
    print(audit_table(report), file=sys.stderr if args.json == "-" else sys.stdout)
    _write_json(data, args.json)
    return 0
