"""Train a segmentation or classification model on a cohort and write it to a registry folder.

One path for both tasks::

    participants.tsv -> stratified, seeded subject split -> subjects cached on the model grid
    -> Lightning fit (patches or volumes streamed, validation every epoch, best checkpoint)
    -> registry model (safetensors + card) -> test metrics END TO END through
    models.inference on the held-out subjects' own scans -> card metrics, report plots
    -> MLflow run (params, per-epoch metrics, artifacts) and a registered model version

Under a distributed strategy every rank runs this function; only global rank 0 writes the
model, the card, the reports and the MLflow registration, and the other ranks return None.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_mrisynth.errors import ModelError, MrisynthError
from napari_mrisynth.models.card import SIMULATED_USE, InputSpec, LabelSpec, ModelCard, write_card

#: Classes of the bvFTD classifier, in output order.
CLASSES = (("control", (60, 160, 230)), ("bvFTD", (220, 20, 10)))

SEGMENTATION_ARCHITECTURES = ("SegResNet", "UNet")
CLASSIFICATION_ARCHITECTURES = ("ResNet", "DenseNet121")
MIXED_PRECISIONS = ("16-mixed", "bf16-mixed")


@dataclass
class TrainOptions:
    """Everything a training run is configured by (the CLI's options, one to one)."""

    id: str | None = None
    version: str = "1.0.0"
    architecture: str | None = None
    init_filters: int = 16
    channels: Sequence[int] | None = None
    spacing: float = 2.0
    source: str = "nifti"
    epochs: int = 50
    max_steps: int = -1
    batch_size: int = 2
    patch_size: int = 64
    patches_per_volume: int = 4
    lr: float = 1e-3
    weight_decay: float = 1e-5
    loss: str = "dicece"
    patience: int = 10
    augment: bool = True
    fractions: Sequence[float] = (0.6, 0.2, 0.2)
    seed: int = 0
    init: str | None = None
    accelerator: str = "auto"
    devices: int | str = 1
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str = "32-true"
    num_workers: int = 0
    tracking_uri: str | None = None
    experiment: str = "mrisynth"
    progress: bool = True
    overwrite: bool = False
    #: Extra Lightning callbacks (not recorded in the card).
    callbacks: list[Any] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        """The options as plain JSON values (for the card and MLflow)."""
        return options_record(self)


def options_record(options: Any) -> dict[str, Any]:
    """A run's options dataclass as plain JSON values, without its Lightning callbacks."""
    data = dataclasses.asdict(options)
    data.pop("callbacks", None)
    return json.loads(json.dumps(data, default=list))


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
def _require_lightning() -> Any:
    try:
        import lightning.pytorch as pl
    except ImportError as exc:
        from napari_mrisynth.training import MISSING_EXTRA

        raise ImportError(MISSING_EXTRA) from exc
    from napari_mrisynth.training.tracking import require_mlflow

    require_mlflow()
    return pl


def model_spec(spacing: float, *, brain_mask: bool = False) -> InputSpec:
    """The input spec of a new model: the default model grid at ``spacing`` mm.

    Classifiers see the brain only (the reference brain mask, dilated, after alignment):
    scalp, fat and neck vary between scanners and carry no diagnosis.
    """
    from napari_mrisynth.preprocess import default_model_grid

    fields = default_model_grid(spacing=spacing).to_input_spec_fields()
    return InputSpec(**fields, brain_mask=brain_mask)


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


def _output_count_key(architecture: dict) -> str:
    args = architecture["args"]
    return next(k for k in ("out_channels", "num_classes") if k in args)


def resolve_init(ref: str, task: str, out: Path) -> ModelCard:
    """The base model for fine-tuning: a model folder, or a registry ``id[@version]``
    (``out`` is searched first, then the usual registry folders)."""
    from napari_mrisynth.models.card import read_card
    from napari_mrisynth.models.registry import find_model, model_roots

    if (Path(ref) / "card.json").exists():
        card = read_card(ref)
    else:
        card = find_model(ref, task=task, roots=[("folder", out), *model_roots()])
    if card.task != task:
        raise ModelError(f"--init {ref}: {card.ref} is a {card.task} model, not {task}")
    return card


def load_initial_weights(network: Any, base: ModelCard, outputs: int) -> dict[str, Any]:
    """Copy a registry model's weights into ``network``.

    Tensors whose shape differs are left freshly initialised; that is allowed only when
    ``outputs`` (labels + background, or classes) differs from the base model's, and only
    for tensors that differ just where that count sits (the output layers).

    Returns
    -------
    dict
        ``{"model", "sha256", "loaded", "reinitialised"}`` for the card.
    """
    from napari_mrisynth.models.registry import load_weights

    source = load_weights(base)
    own = network.state_dict()
    reinitialised = sorted(k for k in own if k not in source or source[k].shape != own[k].shape)
    unexpected = sorted(k for k in source if k not in own)
    key = _output_count_key(base.architecture)
    base_outputs = int(base.architecture["args"][key])
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
    return {"model": base.ref, "sha256": base.weights.get("sha256"),
            "loaded": len(own) - len(reinitialised), "reinitialised": reinitialised}  # fmt: skip


def _output_sized(shape: Any, base: Any, outputs: int, base_outputs: int) -> bool:
    """True when ``shape`` differs from the base tensor only where the output count sits
    (an output layer: a convolution's out or in channels, a bias, a norm)."""
    if base is None or len(shape) != len(base.shape):
        return False
    pairs = zip(shape, base.shape, strict=True)
    return all(a == b or (a, b) == (outputs, base_outputs) for a, b in pairs)


def _read_simulated(data: Path) -> bool:
    try:
        return bool(json.loads((data / "dataset_description.json").read_text())["Simulated"])
    except (OSError, KeyError, ValueError):
        return False


def _launcher_rank() -> int:
    """This process's rank as a launcher set it before Lightning starts (0 when unset)."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", 0)))


def _check_precision(opts: TrainOptions) -> None:
    import torch

    gpu = opts.accelerator in ("gpu", "cuda") or (
        opts.accelerator == "auto" and torch.cuda.is_available()
    )
    if opts.precision in MIXED_PRECISIONS and not gpu:
        raise MrisynthError(f"--precision {opts.precision} needs a GPU; on the CPU use 32-true")


def _software() -> dict[str, str]:
    import lightning
    import mlflow

    return {"lightning": lightning.__version__, "mlflow": mlflow.__version__}


def inherited_splits(base: ModelCard | None, data: Path, participants: list[dict]) -> dict | None:
    """The base model's split when fine-tuning on the cohort it was trained on.

    A new seeded split would put some of the base model's training subjects into the test
    set, and the fine-tuned model's test figures would no longer be held out.
    """
    if base is None or not base.training.get("splits"):
        return None
    if Path(str(base.training.get("data", ""))).resolve() != data.resolve():
        return None
    ids = {row["participant_id"] for row in participants}
    splits = {k: [s for s in v if s in ids] for k, v in base.training["splits"].items()}
    return splits if splits.get("train") and splits.get("val") else None


# -- the run ---------------------------------------------------------------------------------
def _train(task: str, data: Path, out: Path, opts: TrainOptions) -> ModelCard | None:
    pl = _require_lightning()
    from napari_mrisynth.training import data as tdata
    from napari_mrisynth.training import tracking
    from napari_mrisynth.training.splits import read_participants, split_subjects

    started = time.perf_counter()
    _check_precision(opts)
    if task == "segmentation" and opts.loss not in ("dicece", "focal_tversky"):
        raise MrisynthError(f"--loss {opts.loss!r}: use dicece or focal_tversky")
    participants = read_participants(data)
    splits = split_subjects(participants, fractions=opts.fractions, seed=opts.seed)
    if not splits["train"] or not splits["val"]:
        raise MrisynthError(f"{data}: {len(participants)} subjects are too few to split into "
                            "train, validation and test")  # fmt: skip
    diagnosis = {row["participant_id"]: row.get("diagnosis", "") for row in participants}

    base = resolve_init(opts.init, task, out) if opts.init else None
    inherited = inherited_splits(base, data, participants)
    splits = inherited or splits
    if task == "segmentation":
        from napari_mrisynth.cohort import LABELS

        labels = [LabelSpec(v, name, tuple(rgb)) for v, (name, rgb) in LABELS.items() if v > 0]
        default_arch = "SegResNet"
    else:
        labels = [LabelSpec(v, name, rgb) for v, (name, rgb) in enumerate(CLASSES)]
        default_arch = "ResNet"
        unknown = {diagnosis[s] for ids in splits.values() for s in ids} - {n for n, _ in CLASSES}
        if unknown:
            raise MrisynthError(f"{data}: diagnoses {sorted(unknown)} are not one of "
                                f"{[n for n, _ in CLASSES]}")  # fmt: skip
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
    model_id = (
        opts.id
        or ("seg-head-" if task == "segmentation" else "cls-bvftd-") + architecture["name"].lower()
    )
    if (out / f"{model_id}-{opts.version}").exists() and not opts.overwrite:
        raise ModelError(f"{out / f'{model_id}-{opts.version}'}: model {model_id}@{opts.version} "
                         "already exists; give it a new --version, or --overwrite")  # fmt: skip

    # subjects onto the model grid, once (another rank or a rerun reads the cache)
    needed = splits["train"] + splits["val"]
    show = opts.progress and _launcher_rank() == 0
    bar = None
    if show:
        from tqdm import tqdm

        bar = tqdm(total=len(needed), unit="subject", desc="model grid")
    cached = tdata.cache_subjects(
        data, needed, spec, out / "cache", source=opts.source,
        labels=True if task == "segmentation" else None,
        progress=(lambda done, total: bar.update(done - bar.n)) if bar else None,
    )  # fmt: skip
    if bar:
        bar.close()
    by_id = {c.subject: c for c in cached}
    train_items = [by_id[s] for s in splits["train"]]
    val_items = [by_id[s] for s in splits["val"]]

    pl.seed_everything(opts.seed, workers=True, verbose=False)
    roi = (int(opts.patch_size),) * 3
    if task == "segmentation":
        from napari_mrisynth.training.modules import SegmentationModule

        module = SegmentationModule(
            architecture, {label.value: label.name for label in labels}, loss=opts.loss,
            lr=opts.lr, weight_decay=opts.weight_decay, roi_size=roi,
        )  # fmt: skip
        monitor, mode = "val/dice_mean", "max"
        class_weights = None
    else:
        from napari_mrisynth.training.modules import ClassificationModule

        names = [n for n, _ in CLASSES]
        counts = np.bincount([names.index(diagnosis[s]) for s in splits["train"]],
                             minlength=len(names))  # fmt: skip
        class_weights = [float(len(splits["train"]) / (len(names) * max(c, 1))) for c in counts]
        module = ClassificationModule(architecture, class_weights, lr=opts.lr,
                                      weight_decay=opts.weight_decay)  # fmt: skip
        monitor, mode = "val/loss", "min"
    init_record = None
    if base is not None:
        init_record = load_initial_weights(module.network, base, out_channels)

    from napari_mrisynth.training.modules import CohortDataModule

    classes = [n for n, _ in CLASSES]
    datamodule = CohortDataModule(
        task, train_items, val_items, opts,
        classes={s: classes.index(diagnosis[s]) for s in needed} if task != "segmentation"
        else None,
    )  # fmt: skip
    run_name = f"{model_id}@{opts.version}"
    logger = tracking.make_logger(
        opts.tracking_uri or tracking.default_tracking_uri(), opts.experiment, run_name,
        {"task": task, "model_id": model_id, "model_version": opts.version},
    )  # fmt: skip
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    checkpoint = ModelCheckpoint(
        dirpath=out / "checkpoints" / run_name, filename="best", monitor=monitor, mode=mode,
        save_top_k=1, save_weights_only=True, enable_version_counter=False,
    )  # fmt: skip
    callbacks = [checkpoint, *opts.callbacks]
    if task == "classification":
        callbacks.append(EarlyStopping(monitor=monitor, mode=mode, patience=opts.patience))
    trainer = pl.Trainer(
        accelerator=opts.accelerator, devices=opts.devices, strategy=opts.strategy,
        num_nodes=opts.num_nodes, precision=opts.precision, max_epochs=opts.epochs,
        max_steps=opts.max_steps, logger=logger, callbacks=callbacks,
        log_every_n_steps=1, num_sanity_val_steps=0, enable_model_summary=False,
        enable_progress_bar=opts.progress, default_root_dir=out,
    )  # fmt: skip
    trainer.fit(module, datamodule=datamodule)
    if not trainer.is_global_zero:
        return None

    # best checkpoint (plain tensors; weights_only refuses anything else) -> registry model
    state, chosen = _best_state(module, checkpoint)
    simulated = _read_simulated(data)
    training = {
        "data": str(data.resolve()),
        "participants": len(participants),
        "simulated": simulated,
        "splits": splits,
        "splits_from": base.ref if inherited else None,
        "split_fractions": list(opts.fractions),
        "seed": opts.seed,
        "epochs": int(trainer.current_epoch),
        "global_steps": int(trainer.global_step),
        "max_epochs": opts.epochs,
        "checkpoint": chosen,
        "monitor": monitor,
        "best_score": None
        if checkpoint.best_model_score is None
        else float(checkpoint.best_model_score),
        "options": opts.record(),
        "world_size": int(trainer.world_size),
        "batches_per_rank": module.rank_batches,
        "strategy": type(trainer.strategy).__name__,
        "init": init_record,
        "source": opts.source,
    }
    if task == "segmentation":
        training.update(loss=opts.loss, patch_size=list(roi),
                        patches_per_volume=opts.patches_per_volume)  # fmt: skip
    else:
        training.update(class_weights=class_weights)
    inference: dict[str, Any] = (
        {"roi_size": list(roi), "overlap": 0.25, "sw_batch_size": 2}
        if task == "segmentation"
        else {"roi_size": list(spec.shape)}
    )
    if architecture["name"] == "ResNet":
        inference["saliency_layer"] = "layer4"
    what = (
        "segmentation of the head into the cohort's labels"
        if task == "segmentation"
        else ("bvFTD vs control classification")
    )
    card = ModelCard(
        id=model_id,
        version=opts.version,
        task=task,
        title=f"{architecture['name']} {what}",
        description=(
            f"{architecture['name']} ({task}) trained with napari-mrisynth on "
            f"{len(splits['train'])} {'simulated ' if simulated else ''}subjects of {data.name} "
            f"at {spec.spacing[0]:g} mm, validated on {len(splits['val'])}, tested on "
            f"{len(splits['test'])} held-out subjects."
        ),
        architecture=architecture,
        labels=labels,
        input=spec,
        inference=inference,
        training=training,
        intended_use=SIMULATED_USE
        if simulated
        else ("Research use only, not for clinical decisions."),
        software=_software(),
    )
    out.mkdir(parents=True, exist_ok=True)
    from napari_mrisynth.models.registry import save_model

    card = save_model(card, state, out, overwrite=opts.overwrite)

    # held-out test subjects, end to end through inference on their own scans
    report_dir = out / "reports" / run_name
    metrics = _test_metrics(task, card, data, splits["test"], diagnosis, opts, report_dir)
    card = card.replace(metrics={"test": metrics})
    run_id = logger.run_id
    client = _client(opts, tracking)
    training["mlflow"] = {
        "tracking_uri": opts.tracking_uri or tracking.default_tracking_uri(),
        "experiment": opts.experiment,
        "run_id": run_id,
        "registered_model": card.id,
        "version": None,
    }
    training["seconds"] = round(time.perf_counter() - started, 1)
    card = card.replace(training=training)
    write_card(card, card.path)
    _log_run(client, tracking, run_id, card, opts, report_dir, metrics)
    training["mlflow"]["version"] = tracking.register_version(
        client, card.id, run_id, "model", description=card.description
    )
    write_card(card, card.path)
    client.log_artifact(run_id, str(card.path / "card.json"), "model")
    return card


def _client(opts: TrainOptions, tracking: Any) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=opts.tracking_uri or tracking.default_tracking_uri())


def _best_state(module: Any, checkpoint: Any) -> tuple[dict[str, Any], str]:
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


def _log_run(
    client: Any, tracking: Any, run_id: str, card: ModelCard, opts: TrainOptions,
    report_dir: Path, metrics: dict[str, Any],
) -> None:  # fmt: skip
    """Parameters, test metrics and artifacts (model folder, reports) on the MLflow run."""
    training = card.training
    tracking.log_params(client, run_id, {
        "options": opts.record(),
        "card": {"id": card.id, "version": card.version, "task": card.task,
                 "architecture": card.architecture, "input_spacing": list(card.input.spacing),
                 "input_shape": list(card.input.shape)},
        "data": training["data"], "participants": training["participants"],
        "simulated": training["simulated"],
        "splits": {k: len(v) for k, v in training["splits"].items()},
        "world_size": training["world_size"], "batches_per_rank": training["batches_per_rank"],
        "init": (training["init"] or {}).get("model"),
    })  # fmt: skip
    from napari_mrisynth.reports.report import flatten_metrics

    for name, value in flatten_metrics(metrics, "test/").items():
        client.log_metric(run_id, name, value)
    client.log_artifacts(run_id, str(card.path), "model")
    if report_dir.exists():
        client.log_artifacts(run_id, str(report_dir), "reports")


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
        from napari_mrisynth.reports.report import segmentation_report

        pairs = []
        for subject in test:
            result = segment(subject_image(data, subject, opts.source), card, device=device)
            truth = load_volume(subject_labels(data, subject)).compute()
            pairs.append((truth, result.labels))
        summary = segmentation_summary(pairs, card.label_names)
        report = segmentation_report(summary, None, report_dir, model_ref=card.ref,
                                     subjects=test, title=card.title)  # fmt: skip
        return report["metrics"]
    from napari_mrisynth.reports.report import classification_report

    names = [name for name, _ in CLASSES]
    y_true, scores = [], []
    for subject in test:
        result = classify(subject_image(data, subject, opts.source), card, device=device)
        y_true.append(int(diagnosis[subject] == names[1]))
        scores.append(float(result.probabilities[names[1]]))
    report = classification_report(np.asarray(y_true), np.asarray(scores), names, report_dir,
                                   model_ref=card.ref, subjects=test, title=card.title)  # fmt: skip
    return {**report["metrics"], "subjects": report["subjects"]}
