"""``mrisynth models list|show|search|verify``: the model registry from the command line.

Listing, showing and searching read only the JSON cards; ``verify`` hashes the weights.
None of them imports torch.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from typing import Any

from napari_mrisynth.models.card import TASKS, ModelCard


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``models`` command and its ``list``, ``show``, ``search``, ``verify``."""
    models = subparsers.add_parser(
        "models",
        help="list, show, search and verify the installed models (offline)",
        description=(
            "Models are folders holding card.json and model.safetensors, looked for in "
            "$MRISYNTH_MODEL_PATH (os.pathsep-separated folders), then the per-user data "
            "folder, then the demo models bundled with napari-mrisynth."
        ),
    )
    models.set_defaults(func=lambda args: _print_help(models))
    actions = models.add_subparsers(dest="models_command", metavar="ACTION")

    listing = actions.add_parser("list", help="table of every model, newest version first")
    _task_option(listing)
    _json_option(listing)
    listing.set_defaults(func=_list_command)

    show = actions.add_parser("show", help="a model's whole card")
    show.add_argument(
        "ref",
        metavar="ID[@VERSION]",
        help="model id (newest version), id@version or a model folder",
    )
    _task_option(show)
    _json_option(show)
    show.set_defaults(func=_show_command)

    search = actions.add_parser(
        "search",
        help="find models by text and task, ranked by a test metric",
        description=(
            "QUERY matches id, title, description and label names (case-insensitive). "
            "Models without the --rank-by metric come last."
        ),
    )
    search.add_argument("query", nargs="?", default="", help="text to look for (default: all)")
    _task_option(search)
    search.add_argument(
        "--rank-by",
        metavar="METRIC",
        help="dotted test metric, e.g. auc, dice_mean, dice.frontal_gm (default: no ranking)",
    )
    search.add_argument(
        "--ascending", action="store_true", help="lowest first (for metrics where lower is better)"
    )
    _json_option(search)
    search.set_defaults(func=_search_command)

    verify = actions.add_parser(
        "verify", help="re-hash model weights against their cards (exit 1 on any mismatch)"
    )
    verify.add_argument(
        "ref",
        nargs="?",
        metavar="ID[@VERSION]",
        help="one model (every version of an id without @VERSION); default: all models",
    )
    verify.set_defaults(func=_verify_command)


def _task_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", choices=TASKS, help="only models of this task")


def _json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable JSON output")


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _report_warnings(caught: list[warnings.WarningMessage]) -> None:
    for warning in caught:
        print(f"warning: {warning.message}", file=sys.stderr)


# -- formatting ----------------------------------------------------------------------------
def key_metric_text(card: ModelCard, name: str | None = None) -> str:
    """``dice_mean 0.812 [0.790, 0.833]``: a test metric with its 95% CI when recorded."""
    from napari_mrisynth.models.registry import KEY_METRICS

    name = name or KEY_METRICS.get(card.task)
    value = card.metric(name) if name else None
    if value is None:
        return "-"
    text = f"{name} {value:.3f}"
    node: Any = card.metrics.get("test", card.metrics)
    for part in name.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    ci = node.get("ci95") if isinstance(node, dict) else None
    if isinstance(ci, (list, tuple)) and len(ci) == 2:
        text += f" [{float(ci[0]):.3f}, {float(ci[1]):.3f}]"
    return text


def _table(cards: list[ModelCard], metric: str | None = None) -> list[str]:
    from napari_mrisynth.models.registry import model_location

    rows = [("ID", "VERSION", "TASK", "TITLE", "METRIC (test)", "LOCATION", "SIMULATED")]
    for card in cards:
        rows.append(
            (
                card.id,
                card.version,
                card.task,
                card.title,
                key_metric_text(card, metric),
                model_location(card),
                "yes" if card.training.get("simulated") else "no",
            )
        )
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def _card_json(card: ModelCard) -> dict[str, Any]:
    from napari_mrisynth.models.registry import model_location

    return {**card.to_json(), "path": str(card.path or ""), "location": model_location(card)}


def _print_cards(cards: list[ModelCard], as_json: bool, metric: str | None = None) -> None:
    from napari_mrisynth.models.registry import model_roots

    if as_json:
        print(json.dumps([_card_json(card) for card in cards], indent=2))
        return
    if cards:
        print("\n".join(_table(cards, metric)))
    else:
        print("no models found")
    print("\nsearched: " + ", ".join(f"{path} ({kind})" for kind, path in model_roots()))


def describe_card(card: ModelCard) -> str:
    """A model card as readable text: identity, use, interface, data, quality, provenance."""
    from napari_mrisynth.models.networks import head_channels
    from napari_mrisynth.models.registry import model_location

    spec = card.input
    lines = [
        f"{card.ref}  {card.title}",
        f"  task          {card.task}",
        f"  location      {model_location(card) or '-'}: {card.path or '-'}",
    ]
    if card.description:
        lines.append(f"  description   {card.description}")
    if card.intended_use:
        lines.append(f"  intended use  {card.intended_use}")
    args = ", ".join(f"{k}={v}" for k, v in card.architecture.get("args", {}).items())
    head = head_channels(card.architecture)
    lines += [
        f"  architecture  {card.architecture['name']}({args})"
        + (f", output head of {head} features" if head else ""),
        "",
        "input",
        f"  image         {spec.modality} {spec.sequence}",
        f"  grid          {'x'.join(str(n) for n in spec.shape[::-1])} voxels (x, y, z) at "
        f"{' x '.join(f'{s:g}' for s in spec.spacing)} mm, origin "
        f"({', '.join(f'{o:g}' for o in spec.origin)}) mm LPS",
        f"  orientation   direction {tuple(round(d, 6) for d in spec.direction)} (LPS)",
        f"  space         {spec.space} ({spec.alignment} alignment"
        + (", brain-masked)" if spec.brain_mask else ")"),
        f"  normalisation {_mapping_text(spec.normalisation)}",
    ]
    if card.inference:
        lines.append(f"  inference     {_mapping_text(card.inference)}")
    kind = "labels" if card.task == "segmentation" else "classes"
    lines += ["", f"{kind} ({len(card.labels)})"]
    for label in card.labels:
        r, g, b = label.color
        lines.append(f"  {label.value:>4}  {label.name:<28} #{r:02x}{g:02x}{b:02x} ({r}, {g}, {b})")
    lines += ["", "training"]
    lines += [f"  {key:<13} {_value_text(value)}" for key, value in card.training.items()] or [
        "  (not recorded)"
    ]
    lines += ["", "metrics"]
    lines += _metric_lines(card.metrics) or ["  (none recorded)"]
    weights = card.weights
    lines += [
        "",
        "weights",
        f"  file          {weights.get('file', '-')}",
        f"  sha256        {weights.get('sha256', '-')}",
        f"  parameters    {weights.get('parameters', '-')}",
        f"  bytes         {weights.get('bytes', '-')}",
        "",
        "provenance",
        f"  created       {card.created or '-'}",
        f"  run id        {run_id(card) or '-'}",
        f"  software      {_mapping_text(card.software) or '-'}",
    ]
    return "\n".join(lines)


def run_id(card: ModelCard) -> str:
    """The training run's id: ``training.run_id`` (or ``mlflow_run_id``, ``mlflow.run_id``)."""
    training = card.training
    mlflow = training.get("mlflow") if isinstance(training.get("mlflow"), dict) else {}
    found = training.get("run_id") or training.get("mlflow_run_id") or mlflow.get("run_id")
    return str(found or "")


def _value_text(value: Any) -> str:
    if isinstance(value, dict):
        return _mapping_text(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _mapping_text(mapping: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_value_text(v)}" for k, v in mapping.items())


def _metric_lines(metrics: dict[str, Any], indent: int = 2) -> list[str]:
    lines = []
    for name, value in metrics.items():
        pad = " " * indent
        if isinstance(value, dict) and "value" in value:
            text = f"{float(value['value']):.4f}"
            ci = value.get("ci95")
            if isinstance(ci, (list, tuple)) and len(ci) == 2:
                text += f"  95% CI [{float(ci[0]):.4f}, {float(ci[1]):.4f}]"
            extra = {k: v for k, v in value.items() if k not in ("value", "ci95")}
            if extra:
                text += f"  ({_mapping_text(extra)})"
            lines.append(f"{pad}{name:<24} {text}")
        elif isinstance(value, dict):
            lines.append(f"{pad}{name}")
            lines += _metric_lines(value, indent + 2)
        else:
            lines.append(f"{pad}{name:<24} {_value_text(value)}")
    return lines


# -- commands ------------------------------------------------------------------------------
def _list_command(args: argparse.Namespace) -> int:
    from napari_mrisynth.models.registry import list_models

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cards = list_models(args.task)
    _report_warnings(caught)
    _print_cards(cards, args.json)
    return 0


def _show_command(args: argparse.Namespace) -> int:
    from napari_mrisynth.models.registry import find_model

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        card = find_model(args.ref, task=args.task)
    _report_warnings(caught)
    print(json.dumps(_card_json(card), indent=2) if args.json else describe_card(card))
    return 0


def _search_command(args: argparse.Namespace) -> int:
    from napari_mrisynth.models.registry import search_models

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cards = search_models(
            args.query, task=args.task, rank_by=args.rank_by, descending=not args.ascending
        )
    _report_warnings(caught)
    _print_cards(cards, args.json, args.rank_by)
    return 0


def _verify_command(args: argparse.Namespace) -> int:
    from napari_mrisynth.errors import ModelError
    from napari_mrisynth.models.registry import find_model, list_models, parse_ref
    from napari_mrisynth.models.weights import verify_weights

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if args.ref is None:
            cards = list_models()
        elif parse_ref(args.ref)[1] is not None:
            cards = [find_model(args.ref)]
        else:
            cards = [c for c in list_models() if c.id == args.ref] or [find_model(args.ref)]
    _report_warnings(caught)
    if not cards:
        print("no models found")
        return 0
    failed = 0
    for card in cards:
        try:
            digest = verify_weights(card)
        except ModelError as exc:
            failed += 1
            print(f"FAILED  {card.ref}: {exc}")
        else:
            print(f"OK      {card.ref}  sha256 {digest}  {card.path}")
    summary = f"{len(cards) - failed} of {len(cards)} model(s) verified"
    print(summary + (f", {failed} FAILED" if failed else ""))
    return 1 if failed else 0
