"""What a trained generator is worth: its card's test metrics.

For each class the generator makes as many volumes as asked (seeded), then:

- **fidelity and diversity** against the held-out test subjects it never saw:
  FID, KID, IS, MS-SSIM and MMD, each beside its real-vs-real floor
  (:func:`napari_mrisynth.evaluation.evaluate_sets`);
- **memorization** against its training subjects: nearest training scan of every synthetic
  one and how many look copied (:func:`napari_mrisynth.evaluation.audit_memorization`);
- **condition fidelity**: the bundled bvFTD classifier's AUC at telling the generated bvFTD
  volumes from the generated controls, beside its AUC on the real test subjects;
- a figure: real and synthetic, control and bvFTD, side by side.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_mrisynth.models.card import ModelCard, write_card
from napari_mrisynth.models.conditions import Condition
from napari_mrisynth.volume import Volume

#: Seed offset of the assessment's volumes, away from the seeds users start with.
ASSESS_SEED = 100_000


def _cached_volumes(items: Sequence[Any]) -> list[Volume]:
    from napari_mrisynth.io.files import load_volume

    volumes = []
    for item in items:
        volume = load_volume(item.image).compute()
        volume.metadata["name"] = item.subject
        volumes.append(volume)
    return volumes


def _classifier_auc(volumes: Sequence[Volume], truth: Sequence[int], device: Any) -> Any:
    """The bundled classifier's AUC (and the scores) on ``volumes``; None without it."""
    from napari_mrisynth.errors import ModelError
    from napari_mrisynth.models.inference import classify
    from napari_mrisynth.reports.metrics import roc_auc

    try:
        scores = [
            float(classify(v, "cls-bvftd-demo", device=device).probabilities["bvFTD"])
            for v in volumes
        ]
    except ModelError:
        return None, []
    if len(set(truth)) < 2:
        return None, scores
    return float(roc_auc(np.asarray(truth), np.asarray(scores))), scores


def assess_generator(
    card: ModelCard,
    test_items: Sequence[Any],
    train_items: Sequence[Any],
    test_conditions: Sequence[Condition],
    *,
    per_class: int = 6,
    seed: int = 0,
    report_dir: str | Path | None = None,
    device: Any = None,
) -> dict[str, Any]:
    """Generate ``per_class`` volumes per diagnosis and measure them (see the module doc).

    ``test_items``/``train_items`` are the cohort's cached subjects on the generator's grid
    (:class:`~napari_mrisynth.training.data.CachedSubject`). Returns the card's
    ``metrics["test"]``.
    """
    from napari_mrisynth.evaluation import audit_memorization, evaluate_sets
    from napari_mrisynth.synthesis.generate import generate

    real = _cached_volumes(test_items)
    train = _cached_volumes(train_items)
    synthetic: dict[str, list[Volume]] = {}
    seconds = []
    for offset, diagnosis in enumerate(("control", "bvFTD")):
        made = generate(
            card, per_class, condition=diagnosis, seed=seed + ASSESS_SEED + offset, device=device
        )
        synthetic[diagnosis] = [m.volume for m in made]
        seconds += [m.provenance["seconds"] for m in made]
    every = synthetic["control"] + synthetic["bvFTD"]
    evaluation = evaluate_sets(real, every, seed=seed, device=device).to_json()
    audit = audit_memorization(train, every, device=device).to_json()
    truth = [1] * per_class
    auc_synthetic, _ = _classifier_auc(every, [0] * per_class + truth, device)
    real_truth = [int(c.diagnosis == "bvFTD") for c in test_conditions]
    auc_real, _ = _classifier_auc(real, real_truth, device)
    flagged = sum(bool(e["flagged"]) for e in audit["entries"])
    metrics: dict[str, Any] = {
        **{name: entry for name, entry in evaluation["metrics"].items()},
        "memorization": {
            "value": flagged / len(every),
            "flagged": flagged,
            "n": len(every),
            "threshold": audit.get("threshold"),
            "max_similarity": max(e["similarity"] for e in audit["entries"]),
            "real_nn_max": audit["real_nn_summary"]["max"],
        },
        "condition_auc": {
            "value": auc_synthetic,
            "floor": auc_real,
            "reading": "cls-bvftd-demo's AUC separating generated bvFTD from generated "
            "controls (floor: its AUC on the real test subjects); 0.5 = the condition "
            "is not visible to the classifier",
        },
        "seconds_per_volume": {"value": float(np.median(seconds))},
        "per_class": per_class,
        "real_test_subjects": len(real),
        "extractor": evaluation.get("extractor"),
    }
    if report_dir is not None:
        report_dir = Path(report_dir)
        report_dir.mkdir(parents=True, exist_ok=True)
        (report_dir / "evaluation.json").write_text(json.dumps(evaluation, indent=2) + "\n")
        (report_dir / "audit.json").write_text(json.dumps(audit, indent=2) + "\n")
        real_by_class = {
            name: [v for v, c in zip(real, test_conditions, strict=True) if c.diagnosis == name]
            for name in ("control", "bvFTD")
        }
        from napari_mrisynth.synthesis.figures import comparison_figure

        comparison_figure(
            real_by_class,
            synthetic,
            report_dir / "real_vs_synthetic.png",
            title=f"{card.ref}: real (held-out) vs synthetic",
        )
    return metrics


def reassess(
    card: ModelCard,
    *,
    per_class: int = 6,
    seed: int | None = None,
    device: Any = None,
    tracking: bool = True,
) -> ModelCard:
    """Measure a saved generator again on its own cohort split and rewrite its card (and
    log the metrics to its MLflow run when it has one)."""
    from napari_mrisynth.training import data as tdata
    from napari_mrisynth.training.splits import read_participants

    training = card.training
    data = Path(training["data"])
    splits = training["splits"]
    rows = {row["participant_id"]: row for row in read_participants(data)}
    used = tuple(training.get("conditions", ["diagnosis"]))
    cache = card.path.parent / "cache"
    items = {
        k: tdata.cache_subjects(
            data, v, card.input, cache, source=training.get("source", "nifti"), labels=None
        )
        for k, v in splits.items()
        if k in ("train", "test")
    }
    conditions = [Condition.from_participant(rows[s], used) for s in splits["test"]]
    run = f"{card.id}@{card.version}"
    metrics = assess_generator(
        card,
        items["test"],
        items["train"],
        conditions,
        per_class=per_class,
        seed=training.get("seed", 0) if seed is None else seed,
        report_dir=card.path.parent / "reports" / run,
        device=device,
    )
    card = card.replace(metrics={"test": metrics})
    write_card(card, card.path)
    mlflow = training.get("mlflow") or {}
    if tracking and mlflow.get("run_id"):
        from napari_mrisynth.models import tracking as mlflow_tracking

        client = mlflow_tracking.mlflow_client(mlflow["tracking_uri"])
        mlflow_tracking.log_metrics(
            client, mlflow["run_id"], mlflow_tracking.flatten_metrics(metrics, "test/")
        )
        reports = card.path.parent / "reports" / run
        if reports.exists():
            client.log_artifacts(mlflow["run_id"], str(reports), "reports")
        client.log_artifact(mlflow["run_id"], str(card.path / "card.json"), "model")
    return card
