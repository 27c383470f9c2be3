"""Train a segmentation or classification model on a cohort and write it to a registry folder.

The run follows :mod:`napari_mrisynth.training.recipe`; what is particular to these two
tasks is here: MONAI networks sized from the options, patches (segmentation) or whole
volumes (classification) streamed to a Lightning module with validation every epoch and the
best checkpoint kept, fine-tuning from a registry model, and test metrics measured END TO
END through :mod:`napari_mrisynth.models.inference` on the held-out subjects' own scans.

Under a distributed strategy every rank runs this function; only global rank 0 writes the
model, the card, the reports and the MLflow registration, and the other ranks return None.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_mrisynth.anatomy import BRAIN_LABELS, LABELS
from napari_mrisynth.errors import ModelError, MrisynthError
from napari_mrisynth.models.card import LabelSpec, ModelCard
from napari_mrisynth.models.conditions import DIAGNOSIS_CLASSES
from napari_mrisynth.models.networks import PLAIN_OUTPUT_KEYS, head_channels, head_keys, widen_from
from napari_mrisynth.preprocess.grid import DEFAULT_MODEL_SPACING_MM
from napari_mrisynth.training import LOSS_WEIGHTINGS, SEGMENTATION_LOSSES
from napari_mrisynth.training.data import FOREGROUND_RATIO
from napari_mrisynth.training.recipe import RunOptions, TrainingRun, model_spec, resolve_init

#: Classes of the bvFTD classifier, in output order.
NAMES = [label.name for label in DIAGNOSIS_CLASSES]

SEGMENTATION_ARCHITECTURES = ("SegResNet", "UNet")
CLASSIFICATION_ARCHITECTURES = ("ResNet", "DenseNet121")


@dataclass
class TrainOptions(RunOptions):
    """Everything a segmentation or classification run is configured by (the CLI's options,
    one to one)."""

    architecture: str | None = None
    init_filters: int = 16
    channels: Sequence[int] | None = None
    #: SegResNet segmentation: replace the output layer by a wider head of this many
    #: features (3×3×3 convolution and ReLU before the 1×1×1 output); 0 keeps MONAI's. On a
    #: fine-tuned base without one, the head starts from the base's output layer.
    head_channels: int = 0
    spacing: float = DEFAULT_MODEL_SPACING_MM
    patch_size: int = 64
    patches_per_volume: int = 4
    lr: float = 1e-3
    weight_decay: float = 1e-5
    loss: str = SEGMENTATION_LOSSES[0]
    patience: int = 10
    augment: bool = True
    randomize: bool = False
    #: With ``randomize``: the share of samples painted from their label maps (SynthSeg: 1).
    paint_fraction: float = 1.0
    #: With ``randomize``: the share of samples skull-stripped (image and labels).
    strip_fraction: float = 0.0
    #: Segmentation: centre foreground patches on each label equally often (small labels
    #: such as the insula and the ventricles are then seen as often as white matter).
    balance_labels: bool = False
    #: Segmentation, Dice+CE losses: ``median-frequency`` weighs each label by the median
    #: label frequency over its own in the training label maps (Eigen & Fergus 2015), so a
    #: label of a few hundred voxels is not drowned by the background;
    #: ``sqrt-median-frequency`` uses those weights' square roots (a milder tilt that costs
    #: the common labels less); ``none`` weighs all alike.
    loss_weights: str = "none"
    #: Segmentation: fit one logit offset per label on the validation subjects after
    #: training (:mod:`.calibrate`) and store them in the card for inference.
    calibrate: bool = False
    num_workers: int = 0

    def randomization(self, task: str = "segmentation") -> Any:
        """The :class:`~napari_mrisynth.training.randomize.DomainRandomization` this run draws
        training images with, or None without ``randomize``.

        Classification gets the same contrast and acquisition ranges with a smaller pose
        range (5 degrees, 5 % size): its inputs are whole heads already aligned to the
        template, where a segmenter's patches come from anywhere."""
        if not self.randomize:
            return None
        from napari_mrisynth.training.randomize import DomainRandomization

        for name in ("paint_fraction", "strip_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                flag = "--" + name.replace("_", "-")
                raise MrisynthError(f"{flag} {getattr(self, name)}: use a value in [0, 1]")
        pose = {} if task == "segmentation" else {"rotation_deg": 5.0, "scale": 0.05}
        return DomainRandomization(paint_prob=float(self.paint_fraction),
                                   strip_prob=float(self.strip_fraction), **pose)  # fmt: skip


def train_segmentation(data: str | Path, out: str | Path, **options: Any) -> ModelCard | None:
    """Train a 3D segmentation network on a cohort's label maps.

    Parameters
    ----------
    data : path
        A cohort folder (``participants.tsv``, ``sub-X/anat/sub-X_T1w.nii.gz`` and
        ``_labels.nii.gz``, or ``sub-X/dicom``), e.g. written by ``mrisynth cohort``.
    out : path
        Output folder: the model is written to ``out/<id>-<version>/``, with ``cache/``,
        ``checkpoints/`` and ``reports/`` beside it.
    **options
        Fields of :class:`TrainOptions`.

    Returns
    -------
    ModelCard or None
        The saved model's card (rank 0), with held-out test Dice and HD95 per label;
        None on the other ranks of a distributed run.
    """
    return _train("segmentation", Path(data), Path(out), TrainOptions(**options))


def train_classification(data: str | Path, out: str | Path, **options: Any) -> ModelCard | None:
    """Train a 3D bvFTD-vs-control classifier on whole model-grid volumes.

    Same parameters as :func:`train_segmentation`; the card's test metrics are AUC,
    accuracy, sensitivity and specificity with 95% confidence intervals.
    """
    return _train("classification", Path(data), Path(out), TrainOptions(**options))


# -- pieces ----------------------------------------------------------------------------------
def architecture_dict(task: str, name: str, out_channels: int, opts: TrainOptions) -> dict:
    """The card's ``architecture`` for a MONAI network, sized by ``init_filters``/``channels``."""
    f = int(opts.init_filters)
    if task == "segmentation":
        if name == "SegResNet":
            args = {"spatial_dims": 3, "in_channels": 1, "out_channels": out_channels,
                    "init_filters": f, "norm": ["GROUP", {"num_groups": min(8, f)}]}  # fmt: skip
        elif name == "UNet":
            channels = list(opts.channels or (f, 2 * f, 4 * f, 8 * f))
            args = {"spatial_dims": 3, "in_channels": 1, "out_channels": out_channels,
                    "channels": channels, "strides": [2] * (len(channels) - 1),
                    "num_res_units": 2}  # fmt: skip
        else:
            raise MrisynthError(f"segmentation architecture {name!r} is not one of "
                                f"{', '.join(SEGMENTATION_ARCHITECTURES)}")  # fmt: skip
    elif name == "ResNet":
        inplanes = list(opts.channels or (f, 2 * f, 4 * f, 8 * f))
        if len(inplanes) != 4:
            raise MrisynthError(f"ResNet has four stages: give four --channels, got {inplanes}")
        args = {"block": "basic", "layers": [1] * len(inplanes), "block_inplanes": inplanes,
                "spatial_dims": 3, "n_input_channels": 1, "num_classes": out_channels,
                "conv1_t_stride": 2}  # fmt: skip
    elif name == "DenseNet121":
        args = {"spatial_dims": 3, "in_channels": 1, "out_channels": out_channels,
                "init_features": f, "growth_rate": max(4, f // 2)}  # fmt: skip
    else:
        raise MrisynthError(f"classification architecture {name!r} is not one of "
                            f"{', '.join(CLASSIFICATION_ARCHITECTURES)}")  # fmt: skip
    return {"name": name, "args": args}


def balanced_class_weights(class_ids: Sequence[int], classes: int) -> list[float]:
    """Cross-entropy weights ``n / (classes * count)`` per class, so that each class weighs
    as much as the others in the loss (an absent class gets ``n / classes``)."""
    counts = np.bincount(np.asarray(class_ids, dtype=int), minlength=classes)
    return [float(len(class_ids) / (classes * max(int(c), 1))) for c in counts]


def label_loss_weights(
    method: str, label_maps: Sequence[str | Path], classes: int
) -> list[float] | None:
    """The per-label loss weights ``method`` (one of :data:`LOSS_WEIGHTINGS`) gives over
    ``label_maps``: None for ``none``, :func:`median_frequency_weights`, or their square
    roots for ``sqrt-median-frequency``."""
    if method == "none":
        return None
    weights = median_frequency_weights(label_maps, classes)
    if method == "sqrt-median-frequency":
        return [float(np.sqrt(w)) for w in weights]
    return weights


def median_frequency_weights(label_maps: Sequence[str | Path], classes: int) -> list[float]:
    """``median(f) / f_c`` per label ``c`` (background included), ``f`` the labels' voxel
    frequencies over ``label_maps`` (Eigen & Fergus, ICCV 2015), so that the median label
    weighs 1, rarer ones more; a label absent from every map gets the largest weight."""
    import nibabel as nib

    counts = np.zeros(classes, dtype=np.int64)
    for path in label_maps:
        values = np.asarray(nib.load(str(path)).dataobj).astype(np.int64, copy=False).ravel()
        if values.size and (values.min() < 0 or values.max() >= classes):
            raise MrisynthError(f"{path}: labels outside 0..{classes - 1}")
        counts += np.bincount(values, minlength=classes)
    present = counts > 0
    if not present.any():
        raise MrisynthError("no labelled voxels to weigh the loss by")
    frequency = counts / counts.sum()
    weights = np.where(present, np.median(frequency[present]) / np.maximum(frequency, 1e-12), 0)
    weights[~present] = weights[present].max()
    return [float(w) for w in weights]


def _output_count_key(architecture: dict) -> str:
    args = architecture["args"]
    return next(k for k in ("out_channels", "num_classes") if k in args)


def load_initial_weights(
    network: Any, base: ModelCard, outputs: int, *, widen: bool = False
) -> dict[str, Any]:
    """Copy a registry model's weights into ``network``.

    Tensors whose shape differs are left freshly initialised; that is allowed only when
    ``outputs`` (labels + background, or classes) differs from the base model's, and only
    for tensors that differ just where that count sits (the output layers). With ``widen``,
    ``network`` is the base's SegResNet with a wider output head
    (:func:`~napari_mrisynth.models.networks.output_head`), which starts from the base's
    output layer and computes what the base computes
    (:func:`~napari_mrisynth.models.networks.widen_from`).

    Returns
    -------
    dict
        ``{"model", "sha256", "loaded", "reinitialised"}`` for the card, and ``"head"`` (its
        width) when widened.
    """
    from napari_mrisynth.models.weights import load_weights

    base_weights = load_weights(base)
    source = base_weights
    own = network.state_dict()
    key = _output_count_key(base.architecture)
    base_outputs = int(base.architecture["args"][key])
    head: list[str] = []
    if widen:
        if head_channels(base.architecture):
            raise ModelError(f"--init {base.ref} has a wider output head already")
        if outputs != base_outputs:
            raise ModelError(f"--init {base.ref}: a wider output head starts from its "
                             f"{base_outputs} outputs, not {outputs}")  # fmt: skip
        head = head_keys(network)
        source = {k: v for k, v in source.items() if k not in PLAIN_OUTPUT_KEYS}
    reinitialised = sorted(
        k for k in own if k not in head and (k not in source or source[k].shape != own[k].shape)
    )
    unexpected = sorted(k for k in source if k not in own)
    misfits = unexpected + [
        k for k in reinitialised
        if outputs == base_outputs or not _output_sized(own[k].shape, source.get(k), outputs,
                                                         base_outputs)
    ]  # fmt: skip
    if misfits:
        raise ModelError(
            f"--init {base.ref}: its weights do not fit this network (differ: "
            f"{', '.join(misfits[:5])}); fine-tuning keeps the base architecture and changes "
            "only the output layer"
        )
    network.load_state_dict({k: v for k, v in source.items() if k not in reinitialised},
                            strict=False)  # fmt: skip
    record = {"model": base.ref, "sha256": base.weights.get("sha256"),
              "loaded": len(own) - len(reinitialised) - len(head),
              "reinitialised": reinitialised}  # fmt: skip
    if widen:
        widen_from(network, base_weights)
        record["head"] = int(network.conv_final[2].out_channels)
    return record


def _add_head(architecture: dict, base: ModelCard | None, task: str, channels: int) -> bool:
    """Give ``architecture`` a wider output head of ``channels`` (``--head-channels``; 0:
    none asked). True when it is new on the fine-tuned ``base`` (its weights then start from
    the base's output layer)."""
    if channels <= 0:
        return False
    if task != "segmentation" or architecture["name"] != "SegResNet":
        raise MrisynthError(f"--head-channels {channels}: a wider output head is for SegResNet "
                            "segmenters")  # fmt: skip
    has = head_channels(base.architecture) if base is not None else 0
    if has:
        if has != channels:
            raise MrisynthError(f"--head-channels {channels}: --init {base.ref} has a head of "
                                f"{has}; fine-tuning keeps it")  # fmt: skip
        return False
    architecture["head"] = {"channels": channels}
    return base is not None


def _output_sized(shape: Any, base: Any, outputs: int, base_outputs: int) -> bool:
    """True when ``shape`` differs from the base tensor only where the output count sits
    (an output layer: a convolution's out or in channels, a bias, a norm)."""
    if base is None or len(shape) != len(base.shape):
        return False
    pairs = zip(shape, base.shape, strict=True)
    return all(a == b or (a, b) == (outputs, base_outputs) for a, b in pairs)


def _inherited(opts: TrainOptions, base: ModelCard) -> TrainOptions:
    """``opts`` with the network and grid options a fine-tuned model takes from its base
    (architecture, width, model-grid spacing), so that the card records what was trained
    rather than the defaults of options that ``--init`` overrides."""
    from dataclasses import replace

    args = base.architecture.get("args", {})
    inherited: dict[str, Any] = {"architecture": base.architecture["name"],
                                 "spacing": float(base.input.spacing[0])}  # fmt: skip
    for key in ("init_filters", "init_features"):  # SegResNet, DenseNet121
        if key in args:
            inherited["init_filters"] = int(args[key])
    for key in ("channels", "block_inplanes"):  # UNet, ResNet
        if key in args:
            inherited["channels"] = [int(v) for v in args[key]]
    return replace(opts, **inherited)


# -- the run ---------------------------------------------------------------------------------
def _train(task: str, data: Path, out: Path, opts: TrainOptions) -> ModelCard | None:
    run = TrainingRun(task, data, out, opts)
    if task == "segmentation" and opts.loss not in SEGMENTATION_LOSSES:
        raise MrisynthError(f"--loss {opts.loss!r}: use one of {', '.join(SEGMENTATION_LOSSES)}")
    if task != "segmentation" and opts.balance_labels:
        raise MrisynthError("--balance-labels samples patches by label: segmentation only")
    if opts.loss_weights not in LOSS_WEIGHTINGS:
        raise MrisynthError(f"--loss-weights {opts.loss_weights!r}: use one of "
                            f"{', '.join(LOSS_WEIGHTINGS)}")  # fmt: skip
    if opts.calibrate and task != "segmentation":
        raise MrisynthError("--calibrate fits per-label logit offsets: segmentation only")
    if opts.epochs == 0 and not opts.init:
        raise MrisynthError("--epochs 0 keeps the weights of a base model: give --init")
    if opts.loss_weights != "none" and (task != "segmentation" or opts.loss == "focal_tversky"):
        raise MrisynthError(f"--loss-weights {opts.loss_weights} weighs a segmentation's "
                            "Dice+CE loss (dicece, dicece_batch)")  # fmt: skip
    settings = opts.randomization(task)
    base = resolve_init(opts.init, task, out) if opts.init else None
    if base is not None:
        opts = run.opts = _inherited(opts, base)
    splits = run.split([base])
    diagnosis = {row["participant_id"]: row.get("diagnosis", "") for row in run.participants}
    if task == "segmentation":
        labels = [LabelSpec(v, name, tuple(rgb), v in BRAIN_LABELS)
                  for v, (name, rgb) in LABELS.items() if v > 0]  # fmt: skip
        default_arch = "SegResNet"
    else:
        labels = list(DIAGNOSIS_CLASSES)
        default_arch = "ResNet"
        unknown = {diagnosis[s] for ids in splits.values() for s in ids} - set(NAMES)
        if unknown:
            raise MrisynthError(f"{data}: diagnoses {sorted(unknown)} are not one of "
                                f"{NAMES}")  # fmt: skip
    out_channels = (
        max(label.value for label in labels) + 1 if task == "segmentation" else len(labels)
    )
    if base is not None:
        architecture = json.loads(json.dumps(base.architecture))
        architecture["args"][_output_count_key(architecture)] = out_channels
        spec = base.input
    else:
        architecture = architecture_dict(task, opts.architecture or default_arch, out_channels,
                                         opts)  # fmt: skip
        spec = model_spec(opts.spacing, brain_mask=task == "classification")
    widen = _add_head(architecture, base, task, int(opts.head_channels))
    model_id = (
        opts.id
        or ("seg-head-" if task == "segmentation" else "cls-bvftd-") + architecture["name"].lower()
    )
    run.check_new(model_id)

    needed = splits["train"] + splits["val"]
    by_id = run.cache(needed, spec, labels=True if task == "segmentation" or opts.randomize
                      else None)  # fmt: skip
    train_items = [by_id[s] for s in splits["train"]]
    val_items = [by_id[s] for s in splits["val"]]

    run_name = run.start_logging(model_id)
    roi = (int(opts.patch_size),) * 3
    if task == "segmentation":
        from napari_mrisynth.training.modules import SegmentationModule

        loss_weights = label_loss_weights(
            opts.loss_weights, [item.label for item in train_items], out_channels
        )
        module = SegmentationModule(
            architecture, {label.value: label.name for label in labels}, loss=opts.loss,
            loss_weights=loss_weights, lr=opts.lr, weight_decay=opts.weight_decay, roi_size=roi,
        )  # fmt: skip
        monitor, mode = "val/dice_mean", "max"
        class_weights = None
    else:
        from napari_mrisynth.training.modules import ClassificationModule

        class_weights = balanced_class_weights(
            [NAMES.index(diagnosis[s]) for s in splits["train"]], len(NAMES)
        )
        module = ClassificationModule(architecture, class_weights, lr=opts.lr,
                                      weight_decay=opts.weight_decay)  # fmt: skip
        monitor, mode = "val/loss", "min"
    init_record = None
    if base is not None:
        init_record = load_initial_weights(module.network, base, out_channels, widen=widen)

    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    from napari_mrisynth.training.modules import CohortDataModule

    label_weights = (
        {label.value: 1.0 for label in labels}
        if task == "segmentation" and opts.balance_labels
        else None
    )
    datamodule = CohortDataModule(
        task, train_items, val_items, opts,
        classes={s: NAMES.index(diagnosis[s]) for s in needed} if task != "segmentation"
        else None,
        randomization=settings, label_weights=label_weights,
        brain_mask=_brain_mask(spec) if task != "segmentation" and settings else None,
    )  # fmt: skip
    checkpoint = ModelCheckpoint(
        dirpath=out / "checkpoints" / run_name, filename="best", monitor=monitor, mode=mode,
        save_top_k=1, save_weights_only=True, enable_version_counter=False,
    )  # fmt: skip
    callbacks: list[Any] = [checkpoint]
    if task == "classification":
        callbacks.append(EarlyStopping(monitor=monitor, mode=mode, patience=opts.patience))
    trainer = run.trainer(opts.epochs, callbacks, checkpointing=True)
    if opts.epochs > 0:
        trainer.fit(module, datamodule=datamodule)
    if not trainer.is_global_zero:
        return None

    # best checkpoint (plain tensors; weights_only refuses anything else) -> registry model
    state, chosen = best_state(module, checkpoint)
    if opts.epochs == 0:
        chosen = f"the weights of {base.ref} (--epochs 0)"
    extra: dict[str, Any] = {"randomization": None if settings is None else settings.to_json()}
    if task == "segmentation":
        extra.update(
            loss=opts.loss,
            loss_weights=None if loss_weights is None
            else {"method": opts.loss_weights, "weights": [round(w, 4) for w in loss_weights]},
            patch_size=list(roi), patches_per_volume=opts.patches_per_volume,
            patch_sampling={
                "foreground_ratio": FOREGROUND_RATIO,
                "class_weights": None if label_weights is None
                else {str(k): v for k, v in label_weights.items()},
            },
        )  # fmt: skip
    else:
        extra["class_weights"] = class_weights
    training = run.training_record(
        trainer,
        splits_from=base.ref if run.inherited_from is not None else None,
        epochs=int(trainer.current_epoch),
        global_steps=int(trainer.global_step),
        max_epochs=opts.epochs,
        checkpoint=chosen,
        monitor=monitor,
        best_score=None
        if checkpoint.best_model_score is None
        else float(checkpoint.best_model_score),
        batches_per_rank=module.rank_batches,
        init=init_record,
        **extra,
    )
    inference: dict[str, Any] = (
        {"roi_size": list(roi), "overlap": 0.25, "sw_batch_size": 2}
        if task == "segmentation"
        else {"roi_size": list(spec.shape)}
    )
    if architecture["name"] == "ResNet":
        inference["saliency_layer"] = "layer4"
    if opts.calibrate:
        calibration = _calibrate(module.network, state, val_items, labels, out_channels,
                                 inference, _test_device(opts))  # fmt: skip
        inference["logit_offsets"] = [round(float(v), 4) for v in calibration.offsets]
        training["calibration"] = calibration_record(calibration, splits["val"])
    what = (
        "segmentation of the head into the cohort's labels"
        if task == "segmentation"
        else ("bvFTD vs control classification")
    )
    head = head_channels(architecture)
    card = run.card(
        id=model_id,
        title=f"{architecture['name']} {what}"
        + (f", output head of {head} features" if head else "")
        + (", domain-randomized" if settings else "")
        + (", calibrated label offsets" if opts.calibrate else ""),
        description=(
            f"{architecture['name']} ({task}) trained with napari-mrisynth on "
            f"{len(splits['train'])} {'simulated ' if run.simulated else ''}subjects of "
            f"{data.name} at {spec.spacing[0]:g} mm, validated on {len(splits['val'])}, tested "
            f"on {len(splits['test'])} held-out subjects."
        ),
        architecture=architecture,
        labels=labels,
        input=spec,
        inference=inference,
        training=training,
    )

    def test_metrics(card: ModelCard, report_dir: Path) -> dict[str, Any]:
        return _test_metrics(task, card, data, splits["test"], diagnosis, opts, report_dir)

    return run.finish(card, state, test_metrics, params={
        "batches_per_rank": training["batches_per_rank"],
        "init": (training["init"] or {}).get("model"),
    })  # fmt: skip


def _calibrate(
    network: Any, state: dict[str, Any], val_items: Sequence[Any], labels: Sequence[LabelSpec],
    classes: int, inference: dict[str, Any], device: Any,
) -> Any:  # fmt: skip
    """Logit offsets fitted on the validation subjects' whole model-grid volumes, with the
    chosen weights and the sliding window users' inference runs (:mod:`.calibrate`)."""
    from napari_mrisynth.io.files import load_volume
    from napari_mrisynth.models.inference import network_logits
    from napari_mrisynth.training.calibrate import LogitSample, fit_logit_offsets

    if not val_items:
        raise MrisynthError("--calibrate fits on the validation subjects: the split has none")
    network.load_state_dict(state)
    network.to(device).eval()
    sample = LogitSample(classes)
    for item in val_items:
        image = np.asarray(load_volume(item.image).compute().data, dtype=np.float32)
        truth = np.asarray(load_volume(item.label).compute().data).astype(np.int64)
        logits = network_logits(network, image, inference, device)[0].cpu().numpy()
        sample.add(logits, truth)
    return fit_logit_offsets(sample, [label.value for label in labels])


def calibration_record(calibration: Any, subjects: Sequence[str]) -> dict[str, Any]:
    """The card's ``training.calibration``: how the offsets were fitted and what they did
    to the validation Dice (per label, before and after)."""

    def rounded(values: np.ndarray) -> dict[str, float | None]:
        return {str(v): (None if np.isnan(values[v]) else round(float(values[v]), 4))
                for v in calibration.labels}  # fmt: skip

    return {
        "method": "per-label logit offsets, coordinate ascent of the mean validation Dice",
        "subjects": list(subjects),
        "span": calibration.span,
        "step": calibration.step,
        "sweeps": calibration.sweeps,
        "voxels": calibration.voxels,
        "flippable_voxels": calibration.flippable,
        "val_dice_mean_before": round(calibration.mean_before, 4),
        "val_dice_mean_after": round(calibration.mean_after, 4),
        "val_dice_before": rounded(calibration.dice_before),
        "val_dice_after": rounded(calibration.dice_after),
    }


def _brain_mask(spec: Any) -> np.ndarray:
    """The brain mask :func:`~napari_mrisynth.preprocess.prepare` applies on ``spec``'s grid."""
    from napari_mrisynth.preprocess import reference_on_grid
    from napari_mrisynth.preprocess.grid import ModelGrid

    return reference_on_grid(ModelGrid.from_input_spec(spec))[1]


def best_state(module: Any, checkpoint: Any) -> tuple[dict[str, Any], str]:
    """The network's weights at the best validation score, or the last ones when no
    validation score was recorded."""
    import torch

    path = checkpoint.best_model_path
    if path and Path(path).exists():
        saved = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
        state = {k[len("network.") :]: v for k, v in saved.items() if k.startswith("network.")}
        epoch = Path(path).name
        return state, f"best {checkpoint.monitor} ({epoch})"
    return {k: v.detach().cpu() for k, v in module.network.state_dict().items()}, "last"


def _test_device(opts: TrainOptions) -> Any:
    from napari_mrisynth.models.device import choose_device

    return choose_device("cpu" if opts.accelerator == "cpu" else "auto", announce=False)


def _test_metrics(
    task: str, card: ModelCard, data: Path, test: list[str], diagnosis: dict[str, str],
    opts: TrainOptions, report_dir: Path,
) -> dict[str, Any]:  # fmt: skip
    """Test metrics on held-out subjects, through the same inference users run."""
    from napari_mrisynth.io.files import load_volume
    from napari_mrisynth.models.inference import classify, segment
    from napari_mrisynth.training.data import subject_image, subject_labels

    if not test:
        return {}
    device = _test_device(opts)
    if task == "segmentation":
        from napari_mrisynth.reports.metrics import segmentation_summary
        from napari_mrisynth.reports.model_report import segmentation_report

        pairs = []
        for subject in test:
            result = segment(subject_image(data, subject, opts.source), card, device=device)
            truth = load_volume(subject_labels(data, subject)).compute()
            pairs.append((truth, result.labels))
        summary = segmentation_summary(pairs, card.label_names)
        report = segmentation_report(summary, None, report_dir, model_ref=card.ref,
                                     subjects=test, title=card.title)  # fmt: skip
        return report["metrics"]
    from napari_mrisynth.reports.model_report import classification_report

    names = NAMES
    y_true, scores = [], []
    for subject in test:
        result = classify(subject_image(data, subject, opts.source), card, device=device)
        y_true.append(int(diagnosis[subject] == names[1]))
        scores.append(float(result.probabilities[names[1]]))
    report = classification_report(np.asarray(y_true), np.asarray(scores), names, report_dir,
                                   model_ref=card.ref, subjects=test, title=card.title)  # fmt: skip
    return {**report["metrics"], "subjects": report["subjects"]}
