"""What a trained generator is worth: its card's test metrics.

For each class the generator makes as many volumes as asked (seeded), then:

- **fidelity and diversity** against the held-out test subjects it never saw:
  FID, KID, IS, MS-SSIM and MMD, each beside its real-vs-real floor
  (:func:`napari_mrisynth.evaluation.evaluate_sets`);
- **memorization** against its training subjects: nearest training scan of every synthetic
  one and how many look copied (:func:`napari_mrisynth.evaluation.audit_memorization`);
- **condition fidelity**: the bundled bvFTD classifier's AUC at telling the generated bvFTD
  volumes from the generated controls, beside its AUC on the real test subjects; for
  generators that make label maps, the bvFTD-vs-control effect size (Cohen's d) of each
  bvFTD region's share of the brain and of the ventricles', beside the real test subjects'
  d with its bootstrap 95 % interval;
- **the automated Turing test and sharpness** on the volumes as a study shows them
  (:func:`napari_mrisynth.evaluation.two_sample.automated_turing_test`);
- **labels**: for generators that make label maps, the bundled segmenter's brain mask
  against the generated brain (Dice);
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


def _label_map(item: Any) -> np.ndarray | None:
    from napari_mrisynth.io.files import load_volume

    path = getattr(item, "label", None)
    return None if path is None else np.asarray(load_volume(path).compute().data)


#: Regions whose share of the brain bvFTD changes (grey matter shrinks, ventricles grow).
EFFECT_REGIONS = ("frontal_gm", "orbitomedial_frontal_gm", "insula_gm", "anterior_temporal_gm",
                  "lateral_ventricles")  # fmt: skip


def condition_effects(real_labels: Sequence[Any], real_bvftd: Sequence[bool],
                      synthetic_labels: Sequence[Any], synthetic_bvftd: Sequence[bool],
                      *, seed: int = 0, draws: int = 2000) -> dict[str, Any]:  # fmt: skip
    """Cohen's d (bvFTD minus control) of each region of :data:`EFFECT_REGIONS` as a share
    of the brain, in generated label maps and in real ones, with the real d's bootstrap
    95 % interval (subjects resampled within each class)."""
    from napari_mrisynth.anatomy.labels import LABEL_IDS
    from napari_mrisynth.reports.metrics import cohens_d
    from napari_mrisynth.synthesis.anatomy import brain_shares

    regions = [LABEL_IDS[r] for r in EFFECT_REGIONS]
    real, fake = brain_shares(real_labels, regions), brain_shares(synthetic_labels, regions)
    real_y, fake_y = np.asarray(real_bvftd, bool), np.asarray(synthetic_bvftd, bool)
    if real_y.all() or not real_y.any() or fake_y.all() or not fake_y.any():
        return {"reading": "both classes are needed in both sets"}
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(real_y), np.flatnonzero(~real_y)]
    out: dict[str, Any] = {}
    inside = 0
    for k, region in enumerate(EFFECT_REGIONS):
        boot = []
        for _ in range(draws):
            pick = np.concatenate([rng.choice(g, g.size) for g in groups])
            boot.append(cohens_d(real[pick, k], real_y[pick]))
        low, high = np.nanpercentile(boot, [2.5, 97.5])
        d_fake = cohens_d(fake[:, k], fake_y)
        ok = bool(low <= d_fake <= high)
        inside += ok
        out[region] = {"synthetic_d": d_fake, "real_d": cohens_d(real[:, k], real_y),
                       "real_ci95": [float(low), float(high)], "inside": ok}  # fmt: skip
    out["value"] = inside / len(EFFECT_REGIONS)
    out["reading"] = ("share of the regions whose generated effect size lies inside the real "
                      "test subjects' 95 % interval")  # fmt: skip
    return out


def _segmenter_brain_dice(volumes: Sequence[Volume], label_maps: Sequence[Any],
                          device: Any) -> dict[str, Any] | None:  # fmt: skip
    """The default segmenter's brain (every brain label) against each generated label
    map's; None without a segmenter."""
    from napari_mrisynth.errors import ModelError
    from napari_mrisynth.models.inference import segment
    from napari_mrisynth.reports.metrics import brain_dice

    scores = []
    for volume, labels in zip(volumes, label_maps, strict=True):
        try:
            found = segment(volume, device=device).labels.data
        except ModelError:
            return None
        scores.append(float(brain_dice(labels.data, found)))
    return {"value": float(np.median(scores)), "min": float(min(scores)), "n": len(scores),
            "target": ">= 0.9"}  # fmt: skip


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
    label_maps: dict[str, list[Volume | None]] = {}
    seconds = []
    for offset, diagnosis in enumerate(("control", "bvFTD")):
        made = generate(
            card, per_class, condition=diagnosis, seed=seed + ASSESS_SEED + offset, device=device
        )
        synthetic[diagnosis] = [m.volume for m in made]
        label_maps[diagnosis] = [m.labels for m in made]
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
    from napari_mrisynth.evaluation.two_sample import automated_turing_test

    # a k-fold test needs k volumes of each kind: fewer folds for tiny sets, none below two
    folds = min(5, len(real), len(every))
    turing: dict[str, Any] = {"two_sample": {}, "sharpness": {}}
    if folds >= 2:
        turing = automated_turing_test(real, every, seed=seed, device=device,
                                       folds=folds).to_json()  # fmt: skip
    for name, entry in turing["two_sample"].items():
        if isinstance(entry, dict) and "value" in entry:
            metrics[f"turing_auc_{name}"] = {**entry, "target": "<= 0.70 (0.5: chance)"}
    for name, entry in turing["sharpness"].items():
        if isinstance(entry, dict) and "ratio" in entry:
            metrics[f"sharpness_{name}"] = {"value": entry["ratio"], **entry,
                                            "target": "0.8-1.25 x real"}  # fmt: skip
    every_labels = label_maps["control"] + label_maps["bvFTD"]  # in the order of ``every``
    if all(m is not None for m in every_labels):
        real_labels = [_label_map(item) for item in test_items]
        if all(lab is not None for lab in real_labels):
            metrics["condition_effects"] = condition_effects(
                real_labels, [c.diagnosis == "bvFTD" for c in test_conditions],
                every_labels, [False] * per_class + [True] * per_class, seed=seed)  # fmt: skip
        dice = _segmenter_brain_dice(every, every_labels, device)
        if dice is not None:
            metrics["segmenter_brain_dice"] = dice
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
