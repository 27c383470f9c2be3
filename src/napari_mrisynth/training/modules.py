"""LightningModules: 3D segmentation and classification around networks from a model card.

The network is rebuilt from the card's ``architecture`` dict by
:func:`~napari_mrisynth.models.networks.build_network`, so what trains is exactly what
inference later loads.

Losses for segmentation:

- ``dicece`` (the default): MONAI ``DiceCELoss`` (soft Dice per patch + cross-entropy,
  softmax, one-hot targets). A label absent from a patch scores Dice
  ``smooth / (predicted mass + smooth)`` there, about 0 for any prediction of it at all.
- ``dicece_batch``: the same with ``batch=True``, each label's soft Dice over the whole batch
  (nnU-Net's "batch Dice"), so a patch without a label costs nothing when its batch
  partner holds it. Tried for the eyes and the spinal cord that ``seg-head-demo`` never
  predicts: at batch size 2 it moved the gradients on their outputs by at most 16 %, and on
  a toy rare label (a 3-voxel-radius blob in 30 % of the patches) plain ``dicece``
  learned it as well (Dice 0.89 against 0.85 after 400 steps); not the default.
- ``focal_tversky``: the focal Tversky loss of Abraham & Khan (ISBI 2019),
  ``mean_c (1 - TI_c) ** gamma`` with Tversky index ``TI = TP / (TP + alpha FP + beta FN)``,
  ``alpha = 0.3``, ``beta = 0.7`` (false negatives cost more, which favours small regions)
  and ``gamma = 0.75``; MONAI's ``TverskyLoss`` gives ``1 - TI`` per sample and class.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from napari_mrisynth.models.networks import build_network
from napari_mrisynth.training import SEGMENTATION_LOSSES


class FocalTverskyLoss(nn.Module):
    """``mean((1 - TI) ** gamma)`` over samples and foreground classes (see module doc)."""

    def __init__(
        self, alpha: float = 0.3, beta: float = 0.7, gamma: float = 0.75, smooth: float = 1e-5
    ):
        super().__init__()
        from monai.losses import TverskyLoss

        self.gamma = gamma
        self.tversky = TverskyLoss(
            include_background=False, to_onehot_y=True, softmax=True, alpha=alpha, beta=beta,
            smooth_nr=smooth, smooth_dr=smooth, reduction="none",
        )  # fmt: skip

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        one_minus_ti = self.tversky(logits, target).clamp_min(0)
        return one_minus_ti.pow(self.gamma).mean()


def segmentation_loss(name: str, weights: Sequence[float] | None = None) -> nn.Module:
    """The loss called ``name`` (one of :data:`SEGMENTATION_LOSSES`).

    ``weights`` (one per output channel, background first) weigh each label's soft Dice and
    each voxel's cross-entropy by its label (MONAI ``DiceCELoss(weight=...)``); the Dice+CE
    losses only."""
    if name in ("dicece", "dicece_batch"):
        from monai.losses import DiceCELoss

        weight = None if weights is None else torch.tensor(list(weights), dtype=torch.float32)
        return DiceCELoss(to_onehot_y=True, softmax=True, batch=name == "dicece_batch",
                          weight=weight)  # fmt: skip
    if name == "focal_tversky":
        if weights is not None:
            raise ValueError("focal_tversky takes no label weights")
        return FocalTverskyLoss()
    raise ValueError(f"loss {name!r} is not one of {SEGMENTATION_LOSSES}")


def _optimizers(module: pl.LightningModule, lr: float, weight_decay: float) -> Any:
    """AdamW with a cosine decay over the run (per step when steps are capped)."""
    optimizer = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=weight_decay)
    trainer = module.trainer
    total = int(getattr(trainer, "estimated_stepping_batches", 0) or 0)
    if total <= 0 or total == float("inf"):
        total = max(1, int(trainer.max_epochs or 1))
        interval = "epoch"
    else:
        interval = "step"
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total, eta_min=lr * 0.01)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": interval}}


class _CountsBatches(pl.LightningModule):
    """Counts the training batches this rank ran; ``rank_batches`` gathers every rank's."""

    def __init__(self) -> None:
        super().__init__()
        self.batches_run = 0
        self.rank_batches: list[int] = []

    def on_train_epoch_start(self) -> None:
        # the streaming dataset draws its order, patches and augmentation from (seed, epoch)
        loader = self.trainer.train_dataloader
        dataset = getattr(loader, "dataset", None)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(self.current_epoch)

    def on_train_end(self) -> None:
        counts = self.all_gather(torch.tensor([self.batches_run], device=self.device))
        self.rank_batches = [int(v) for v in counts.reshape(-1).tolist()]


class SegmentationModule(_CountsBatches):
    """Patch-based training, whole-volume sliding-window validation, per-label Dice.

    Parameters
    ----------
    architecture : dict
        ``{"name": "SegResNet"|"UNet"|..., "args": {...}}`` (a card's ``architecture``).
    label_names : dict of int to str
        Foreground labels (1..C-1) and their names, for the per-label metrics.
    loss : {"dicece", "dicece_batch", "focal_tversky"}
    loss_weights : sequence of float, optional
        One weight per output channel (background first) for the Dice+CE losses.
    lr, weight_decay : float
    roi_size : (int, int, int)
        Sliding-window size for validation (z, y, x), normally the training patch size.
    overlap : float
    """

    def __init__(
        self,
        architecture: dict[str, Any],
        label_names: dict[int, str],
        *,
        loss: str = "dicece",
        loss_weights: Sequence[float] | None = None,
        lr: float = 1e-3,
        weight_decay: float = 1e-5,
        roi_size: Sequence[int] = (64, 64, 64),
        overlap: float = 0.25,
    ) -> None:
        super().__init__()
        self.network = build_network(architecture)
        self.label_names = dict(label_names)
        self.out_channels = max(self.label_names) + 1
        self.loss_name = loss
        self.loss = segmentation_loss(loss, loss_weights)
        self.lr, self.weight_decay = lr, weight_decay
        self.roi_size = tuple(int(v) for v in roi_size)
        self.overlap = overlap
        from monai.metrics import DiceMetric

        self.dice = DiceMetric(include_background=False, reduction="none", ignore_empty=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        logits = self.network(batch["image"])
        loss = self.loss(logits, batch["label"].long())
        self.batches_run += 1
        size = batch["image"].shape[0]
        self.log("train/loss", loss, on_step=False, on_epoch=True, sync_dist=True,
                 batch_size=size, prog_bar=True)  # fmt: skip
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        from monai.inferers import sliding_window_inference
        from monai.networks.utils import one_hot

        image, label = batch["image"], batch["label"].long()
        logits = sliding_window_inference(
            image, roi_size=self.roi_size, sw_batch_size=2, predictor=self.network,
            overlap=self.overlap, mode="gaussian",
        )  # fmt: skip
        loss = self.loss(logits, label)
        self.log("val/loss", loss, on_epoch=True, sync_dist=True, batch_size=image.shape[0])
        predicted = one_hot(logits.argmax(dim=1, keepdim=True), self.out_channels)
        self.dice(predicted, one_hot(label, self.out_channels))

    def on_validation_epoch_end(self) -> None:
        scores = self.dice.get_buffer()  # (volumes, labels), NaN where a label is absent
        self.dice.reset()
        if scores is None or len(scores) == 0:
            scores = torch.full((0, self.out_channels - 1), float("nan"), device=self.device)
        present = ~torch.isnan(scores)
        sums = torch.where(present, scores, torch.zeros_like(scores)).sum(0)
        counts = present.sum(0).to(sums.dtype)
        if self.trainer.world_size > 1:
            sums = self.all_gather(sums).reshape(-1, sums.shape[-1]).sum(0)
            counts = self.all_gather(counts).reshape(-1, counts.shape[-1]).sum(0)
        per_label = sums / counts.clamp_min(1)
        seen = counts > 0
        mean = per_label[seen].mean() if bool(seen.any()) else torch.tensor(0.0)
        self.log("val/dice_mean", mean, prog_bar=True)
        for index in range(per_label.shape[0]):
            name = self.label_names.get(index + 1, str(index + 1))
            if bool(seen[index]):
                self.log(f"val/dice/{name}", per_label[index])

    def configure_optimizers(self) -> Any:
        return _optimizers(self, self.lr, self.weight_decay)


class ClassificationModule(_CountsBatches):
    """Whole-volume classification with class-weighted cross-entropy.

    Logs ``val/loss``, ``val/auc`` (class 1, e.g. bvFTD, against the rest) and
    ``val/accuracy``; torchmetrics gathers them over DDP ranks.
    """

    def __init__(
        self,
        architecture: dict[str, Any],
        class_weights: Sequence[float],
        *,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
    ) -> None:
        super().__init__()
        from torchmetrics.classification import BinaryAccuracy, BinaryAUROC

        self.network = build_network(architecture)
        weights = torch.tensor(list(class_weights), dtype=torch.float32)
        self.register_buffer("class_weights", weights)
        self.lr, self.weight_decay = lr, weight_decay
        self.auc = BinaryAUROC()
        self.accuracy = BinaryAccuracy()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)

    def _loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(logits, target, weight=self.class_weights)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        target = batch["label"].long().reshape(-1)
        loss = self._loss(self.network(batch["image"]), target)
        self.batches_run += 1
        self.log("train/loss", loss, on_step=False, on_epoch=True, sync_dist=True,
                 batch_size=target.shape[0], prog_bar=True)  # fmt: skip
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        target = batch["label"].long().reshape(-1)
        logits = self.network(batch["image"])
        loss = self._loss(logits, target)
        positive = torch.softmax(logits.float(), dim=1)[:, 1]
        self.auc.update(positive, target)
        self.accuracy.update(positive, target)
        self.log("val/loss", loss, on_epoch=True, sync_dist=True, batch_size=target.shape[0])

    def on_validation_epoch_end(self) -> None:
        self.log("val/auc", self.auc.compute(), prog_bar=True)
        self.log("val/accuracy", self.accuracy.compute())
        self.auc.reset()
        self.accuracy.reset()

    def configure_optimizers(self) -> Any:
        return _optimizers(self, self.lr, self.weight_decay)


class CohortDataModule(pl.LightningDataModule):
    """Training and validation loaders over cached subjects.

    The streaming datasets are built when Lightning asks for the loaders, after the
    distributed process group exists, so that each rank reads its own shard.

    Parameters
    ----------
    task : {"segmentation", "classification"}
    train_items, val_items : sequence of CachedSubject
    opts : TrainOptions
        ``patch_size``, ``patches_per_volume``, ``batch_size``, ``num_workers``, ``seed``,
        and ``augment``.
    classes : dict of str to int, optional
        Class id per subject (classification).
    randomization : DomainRandomization, optional
        Draw the training images from the label maps with these ranges.
    brain_mask : array, optional
        Classification with ``randomization``: the model's brain mask on its grid.
    label_weights : dict of int to float, optional
        Segmentation: relative probability of centring a foreground patch on each label.
    """

    def __init__(self, task: str, train_items: Sequence[Any], val_items: Sequence[Any],
                 opts: Any, classes: dict[str, int] | None = None, *, randomization: Any = None,
                 label_weights: dict[int, float] | None = None,
                 brain_mask: Any = None) -> None:  # fmt: skip
        super().__init__()
        self.task, self.opts = task, opts
        self.train_items, self.val_items = list(train_items), list(val_items)
        self.classes = dict(classes or {})
        self.randomization, self.label_weights = randomization, label_weights
        self.brain_mask = brain_mask

    def _loader(self, dataset: Any, batch_size: int) -> Any:
        from torch.utils.data import DataLoader

        return DataLoader(dataset, batch_size=batch_size, num_workers=self.opts.num_workers)

    def train_dataloader(self) -> Any:
        from napari_mrisynth.training import data

        opts = self.opts
        if self.task == "segmentation":
            dataset = data.segmentation_dataset(
                self.train_items, patch_size=opts.patch_size,
                patches_per_volume=opts.patches_per_volume, seed=opts.seed, augment=opts.augment,
                randomize=self.randomization, class_weights=self.label_weights,
            )  # fmt: skip
        else:
            dataset = data.classification_dataset(
                self.train_items, [self.classes[c.subject] for c in self.train_items],
                seed=opts.seed, augment=opts.augment, randomize=self.randomization,
                brain_mask=self.brain_mask,
            )  # fmt: skip
        return self._loader(dataset, opts.batch_size)

    def val_dataloader(self) -> Any:
        from napari_mrisynth.training import data

        if self.task == "segmentation":
            dataset = data.validation_volumes(self.val_items, seed=self.opts.seed)
        else:
            dataset = data.classification_dataset(
                self.val_items, [self.classes[c.subject] for c in self.val_items],
                seed=self.opts.seed, augment=False, shuffle=False, even_ranks=False,
            )  # fmt: skip
        return self._loader(dataset, 1)
