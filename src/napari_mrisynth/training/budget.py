"""Train a classifier or a segmenter on given subjects under a fixed budget, then test it.

A comparison of training sets (real only, real with augmentation, real with synthetic
volumes...) is fair only when every arm gets the same network, the same initial weights, the
same number of optimiser steps and the same early stopping. Epochs would not do: an arm with
three times the volumes would take three times the steps. Here the budget is counted in
optimiser steps; the validation set is scored every ``val_every`` steps, training stops after
``patience`` scores without improvement, and the weights of the best score are kept.

The networks, losses, transforms and datasets are the ones :mod:`.train` uses for the
bundled models (:class:`~.modules.ClassificationModule`, :class:`~.modules.SegmentationModule`,
:func:`~.data.classification_transform`...); Lightning runs the loop. Nothing is written to
a registry: the caller gets the weights and the test scores.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_mrisynth.errors import MrisynthError

TASKS = ("classification", "segmentation")


@dataclass(frozen=True)
class Budget:
    """What every arm of a comparison is trained with.

    Parameters
    ----------
    steps : int
        Optimiser steps at most.
    batch_size : int
    val_every : int
        Score the validation subjects every this many steps.
    patience : int
        Stop after this many validation scores without improvement.
    lr, weight_decay : float
        AdamW, cosine decay over ``steps``.
    init_filters : int
        Width of the first stage (the bundled classifier's ResNet uses 8; its segmenter's
        SegResNet 16).
    patch_size, patches_per_volume : int
        Segmentation patches.
    """

    steps: int = 300
    batch_size: int = 4
    val_every: int = 20
    patience: int = 5
    lr: float = 1e-3
    weight_decay: float = 1e-4
    init_filters: int = 8
    patch_size: int = 32
    patches_per_volume: int = 4

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BudgetedFit:
    """A network trained by :func:`fit_within_budget`.

    ``history`` lists ``{"step", "score"}`` for every validation; ``score`` is the
    validation loss (classification, lower is better) or mean Dice (segmentation).
    """

    task: str
    architecture: dict[str, Any]
    state: dict[str, Any]
    steps: int
    best_step: int | None
    best_score: float | None
    history: list[dict[str, float]]
    seconds: float

    def network(self) -> Any:
        """The network with the kept weights, in evaluation mode, on the CPU."""
        from napari_mrisynth.models.networks import build_network

        network = build_network(self.architecture)
        network.load_state_dict(self.state)
        return network.eval()


def architecture(task: str, budget: Budget) -> dict[str, Any]:
    """The network of ``task``: the bundled classifier's ResNet or segmenter's SegResNet,
    ``budget.init_filters`` wide, with outputs for the diagnoses or the cohort's labels."""
    from napari_mrisynth.anatomy import LABELS
    from napari_mrisynth.training.train import TrainOptions, architecture_dict

    options = TrainOptions(init_filters=budget.init_filters)
    if task == "classification":
        return architecture_dict(task, "ResNet", 2, options)
    if task == "segmentation":
        return architecture_dict(task, "SegResNet", max(LABELS) + 1, options)
    raise MrisynthError(f"task {task!r} is not one of {', '.join(TASKS)}")


def _validation_history(monitor: str) -> Any:
    """A Lightning callback keeping ``{"step", "score"}`` of every validation in
    ``.history`` (``score``: the ``monitor`` metric)."""
    from lightning.pytorch.callbacks import Callback

    class ValidationHistory(Callback):
        def __init__(self) -> None:
            self.history: list[dict[str, float]] = []

        def on_validation_end(self, trainer: Any, module: Any) -> None:
            value = trainer.callback_metrics.get(monitor)
            if value is not None and not trainer.sanity_checking:
                self.history.append({"step": int(trainer.global_step), "score": float(value)})

    return ValidationHistory()


def fit_within_budget(
    task: str,
    train_items: Sequence[Any],
    val_items: Sequence[Any],
    *,
    budget: Budget,
    seed: int,
    augment: bool,
    classes: dict[str, int] | None = None,
    accelerator: str = "auto",
) -> BudgetedFit:
    """Train ``task``'s network on cached subjects within ``budget``.

    Parameters
    ----------
    task : {"classification", "segmentation"}
    train_items, val_items : sequence of CachedSubject
        Model-grid images (and label maps for segmentation), as
        :func:`~napari_mrisynth.training.data.cache_subjects` writes them.
    budget : Budget
    seed : int
        Initial weights, data order and augmentation: the same seed gives every arm the same
        initial network.
    augment : bool
        The project's MONAI transforms (:func:`~.data.classification_transform`,
        :func:`~.data.segmentation_transform`) on the training volumes.
    classes : dict of str to int
        Class id per subject (classification).
    accelerator : str
        Lightning's accelerator ("auto": the GPU when present).

    Returns
    -------
    BudgetedFit
    """
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    from napari_mrisynth.training.modules import (
        ClassificationModule,
        CohortDataModule,
        SegmentationModule,
    )
    from napari_mrisynth.training.train import TrainOptions, balanced_class_weights, best_state

    if not train_items or not val_items:
        raise MrisynthError(f"{task}: no training or no validation subjects")
    arch = architecture(task, budget)
    pl.seed_everything(seed, workers=True, verbose=False)
    if task == "classification":
        if classes is None:
            raise MrisynthError("classification needs a class per subject")
        weights = balanced_class_weights([classes[c.subject] for c in train_items], 2)
        module: Any = ClassificationModule(arch, weights, lr=budget.lr,
                                           weight_decay=budget.weight_decay)  # fmt: skip
        monitor, mode = "val/loss", "min"
    else:
        from napari_mrisynth.anatomy import LABELS

        roi = (budget.patch_size,) * 3
        module = SegmentationModule(
            arch, {v: name for v, (name, _) in LABELS.items() if v > 0}, lr=budget.lr,
            weight_decay=budget.weight_decay, roi_size=roi,
        )  # fmt: skip
        monitor, mode = "val/dice_mean", "max"
    options = TrainOptions(
        batch_size=budget.batch_size, seed=seed, augment=augment, patch_size=budget.patch_size,
        patches_per_volume=budget.patches_per_volume, num_workers=0,
    )  # fmt: skip
    data = CohortDataModule(task, train_items, val_items, options, classes=classes)
    recorder = _validation_history(monitor)
    began = time.perf_counter()
    banners = logging.getLogger("lightning.pytorch")  # "GPU available..." once per arm
    level = banners.level
    banners.setLevel(logging.WARNING)
    try:
        with tempfile.TemporaryDirectory(prefix="mrisynth-budget-") as folder:
            checkpoint = ModelCheckpoint(
                dirpath=folder, filename="best", monitor=monitor, mode=mode, save_top_k=1,
                save_weights_only=True, enable_version_counter=False,
            )  # fmt: skip
            trainer = pl.Trainer(
                max_steps=budget.steps, max_epochs=-1, val_check_interval=budget.val_every,
                check_val_every_n_epoch=None, num_sanity_val_steps=0,
                callbacks=[checkpoint, recorder,
                           EarlyStopping(monitor=monitor, mode=mode, patience=budget.patience)],
                logger=False, enable_progress_bar=False, enable_model_summary=False,
                accelerator=accelerator, devices=1, default_root_dir=folder,
            )  # fmt: skip
            trainer.fit(module, datamodule=data)
            state, _ = best_state(module, checkpoint)
            best = checkpoint.best_model_score
    finally:
        banners.setLevel(level)
    history = recorder.history
    best_step = None
    if best is not None and history:
        scores = [h["score"] for h in history]
        best_step = history[int(np.argmin(scores) if mode == "min" else np.argmax(scores))]["step"]
    return BudgetedFit(
        task, arch, {k: v.detach().cpu() for k, v in state.items()}, int(trainer.global_step),
        best_step, None if best is None else float(best), history,
        round(time.perf_counter() - began, 1),
    )  # fmt: skip


def _image(path: Path) -> np.ndarray:
    from napari_mrisynth.io.files import load_volume

    return np.asarray(load_volume(path).compute().data, dtype=np.float32)


def score_classifier(fit: BudgetedFit, items: Sequence[Any], classes: dict[str, int],
                    device: Any = None) -> dict[str, Any]:  # fmt: skip
    """Score held-out subjects: P(class 1) per subject, and the AUC.

    Returns
    -------
    dict
        ``auc`` and ``subjects`` (``id``, ``truth``, ``score``).
    """
    import torch

    from napari_mrisynth.reports.metrics import roc_auc

    network = fit.network().to(device or "cpu")
    rows = []
    with torch.inference_mode():
        for item in items:
            x = torch.from_numpy(_image(item.image))[None, None].to(device or "cpu")
            score = float(torch.softmax(network(x).float(), dim=1)[0, 1])
            rows.append({"id": item.subject, "truth": int(classes[item.subject]), "score": score})
    truth = np.array([r["truth"] for r in rows])
    scores = np.array([r["score"] for r in rows])
    return {"auc": float(roc_auc(truth, scores)), "subjects": rows}


def score_segmenter(fit: BudgetedFit, items: Sequence[Any], budget: Budget,
                   device: Any = None) -> dict[str, Any]:  # fmt: skip
    """Segment held-out subjects (sliding window, as validation does) and score them.

    Returns
    -------
    dict
        ``dice`` (mean over the brain labels present in the truth, averaged over subjects),
        ``per_label`` (mean Dice per label name) and ``subjects`` (``id``, ``dice``).
    """
    import torch
    from monai.inferers import sliding_window_inference

    from napari_mrisynth.anatomy import BRAIN_LABELS, LABELS
    from napari_mrisynth.reports.metrics import dice_per_label

    network = fit.network().to(device or "cpu")
    rows, per_label = [], {}
    roi = (budget.patch_size,) * 3
    with torch.inference_mode():
        for item in items:
            x = torch.from_numpy(_image(item.image))[None, None].to(device or "cpu")
            logits = sliding_window_inference(x, roi, 2, network, overlap=0.25, mode="gaussian")
            predicted = logits.argmax(dim=1)[0].cpu().numpy()
            truth = np.rint(_image(item.label)).astype(np.uint8)
            present = [v for v in BRAIN_LABELS if np.any(truth == v)]
            scores = dice_per_label(truth, predicted, present)
            for value, score in scores.items():
                per_label.setdefault(LABELS[value][0], []).append(score)
            rows.append({"id": item.subject, "dice": float(np.mean(list(scores.values())))})
    return {
        "dice": float(np.mean([r["dice"] for r in rows])),
        "per_label": {name: float(np.mean(v)) for name, v in per_label.items()},
        "subjects": rows,
    }
