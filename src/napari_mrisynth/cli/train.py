"""``mrisynth train segmentation|classification|vae|gan|ldm``: train a model on a cohort,
track it in MLflow and write it to a model registry folder."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from napari_mrisynth.cli._options import comma_names
from napari_mrisynth.preprocess.grid import DEFAULT_MODEL_SPACING_MM
from napari_mrisynth.training import LOSS_WEIGHTINGS, SEGMENTATION_LOSSES

#: Options shared by both tasks; their defaults are TrainOptions'.
_TASKS = {
    "segmentation": (
        "train a 3D segmentation network (SegResNet or UNet) on the cohort's label maps",
        ("SegResNet", "UNet"),
        "SegResNet",
    ),
    "classification": (
        "train a 3D bvFTD-vs-control classifier (ResNet or DenseNet121) on whole volumes",
        ("ResNet", "DenseNet121"),
        "ResNet",
    ),
}


def _devices(text: str) -> int | str:
    return int(text) if text.isdigit() else text


def _add_common(parser: argparse.ArgumentParser, architectures: tuple, default: str) -> None:
    add = parser.add_argument
    add("--data", type=Path, required=True, help="cohort folder (participants.tsv, sub-*/)")
    add(
        "--out",
        type=Path,
        required=True,
        help="registry folder the model is written to (with cache/, checkpoints/, reports/)",
    )
    add("--id", help="model id (default: seg-head-<arch> / cls-bvftd-<arch>)")
    add("--version", default="1.0.0", help="model version, MAJOR.MINOR.PATCH")
    add("--architecture", choices=architectures, default=default, help="MONAI network")
    add("--init-filters", type=int, default=16, help="width of the first layer")
    add(
        "--channels",
        type=int,
        nargs="+",
        help="channels per level (UNet) or per stage (ResNet); overrides --init-filters",
    )
    add("--spacing", type=float, default=DEFAULT_MODEL_SPACING_MM,
        help="model grid spacing in mm (default %(default)g)")  # fmt: skip
    add(
        "--source",
        choices=("nifti", "dicom"),
        default="nifti",
        help="read each subject's T1 from its NIfTI file or its DICOM series",
    )
    add("--epochs", type=int, default=50)
    add("--max-steps", type=int, default=-1, help="stop after this many steps (-1: epochs)")
    add("--batch-size", type=int, default=2)
    add("--lr", type=float, default=1e-3, help="AdamW learning rate (cosine decay)")
    add("--weight-decay", type=float, default=1e-5)
    add("--no-augment", dest="augment", action="store_false", help="train without augmentation")
    add("--randomize", action="store_true",
        help="segmentation: train on images drawn from the label maps with random contrast, "
             "resolution, slice thickness, bias, noise and deformation (SynthSeg-style), so "
             "the network learns shape, not the simulator's look")  # fmt: skip
    add(
        "--paint-fraction",
        type=float,
        default=1.0,
        metavar="P",
        help="with --randomize: share of samples painted from the labels (1: all, as "
        "SynthSeg); the rest keep the scan's image with the same random acquisition",
    )
    add("--strip-fraction", type=float, default=0.0, metavar="P",
        help="with --randomize: share of samples skull-stripped (image and labels), so "
             "that brain-extracted scans are segmented too")  # fmt: skip
    add("--balance-labels", action="store_true",
        help="segmentation: centre patches on every label equally often, so that small "
             "labels (insula, ventricles) are learned")  # fmt: skip
    add(
        "--split",
        type=float,
        nargs=3,
        default=(0.6, 0.2, 0.2),
        metavar=("TRAIN", "VAL", "TEST"),
        dest="fractions",
        help="subject fractions, stratified by diagnosis",
    )
    add("--seed", type=int, default=0, help="split, patches, augmentation and initialisation")
    add(
        "--init",
        metavar="MODEL_ID",
        help="fine-tune from a registry model (id[@version] or its folder)",
    )
    add_runtime_options(parser)


def add_runtime_options(parser: argparse.ArgumentParser) -> None:
    """Where and how a run executes and is tracked (shared by every ``train`` task)."""
    add = parser.add_argument
    add("--accelerator", default="auto", help="auto, cpu, gpu (Lightning)")
    add("--devices", type=_devices, default=1, help="devices per node, or 'auto'")
    add("--strategy", default="auto", help="auto, ddp, ddp_spawn, fsdp... (Lightning)")
    add("--num-nodes", type=int, default=1)
    add("--precision", default="32-true", help="32-true, or 16-mixed / bf16-mixed on a GPU")
    add("--num-workers", type=int, default=0, help="DataLoader worker processes per rank")
    add(
        "--tracking-uri",
        help="MLflow tracking URI (default: a SQLite store in the user's data folder)",
    )
    add("--experiment", default="mrisynth", help="MLflow experiment")
    add("--overwrite", action="store_true", help="replace an existing id@version in --out")
    add("--no-progress", dest="progress", action="store_false", help="no progress bars")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a segmentation, classification or generative model (Lightning, MONAI, MLflow)",
        description=(
            "Train on a cohort with subject-level stratified splits, track the run in MLflow "
            "and write the best checkpoint as a registry model with a full card and test "
            "metrics on held-out subjects. Needs: pip install 'napari-mrisynth[train]'."
        ),
    )
    tasks = parser.add_subparsers(dest="task", required=True, metavar="TASK")
    for task, (help_text, architectures, default) in _TASKS.items():
        sub = tasks.add_parser(task, help=help_text, description=help_text)
        _add_common(sub, architectures, default)
        if task == "segmentation":
            sub.add_argument("--patch-size", type=int, default=64, help="cubic patch side")
            sub.add_argument("--patches-per-volume", type=int, default=4)
            sub.add_argument(
                "--head-channels",
                type=int,
                default=0,
                metavar="C",
                help="SegResNet: a wider output layer (3x3x3 convolution to C features, ReLU, "
                "then the labels) in place of MONAI's 1x1x1 one; with --init on a base "
                "without one, it starts from the base's output layer (same outputs)",
            )
            sub.add_argument(
                "--loss",
                choices=SEGMENTATION_LOSSES,
                default=SEGMENTATION_LOSSES[0],
                help="dicece: Dice per patch + cross-entropy (the default); dicece_batch: "
                "Dice of each label over the batch + cross-entropy; focal_tversky",
            )
            sub.add_argument(
                "--loss-weights",
                choices=LOSS_WEIGHTINGS,
                default=LOSS_WEIGHTINGS[0],
                help="median-frequency: weigh each label's Dice and cross-entropy by the "
                "median label frequency over its own in the training label maps, so that "
                "a label of a few hundred voxels (the spinal cord) gets a gradient; "
                "sqrt-median-frequency: their square roots, a milder tilt; dicece losses only",
            )
            sub.add_argument(
                "--calibrate",
                action="store_true",
                help="after training, fit one logit offset per label on the validation "
                "subjects (maximising their mean Dice) and store them in the card, where "
                "inference adds them before the softmax; with --init and --epochs 0, "
                "calibrates the base model's weights without training",
            )
        else:
            sub.add_argument("--patience", type=int, default=10,
                             help="early stopping: epochs without a better val/loss")  # fmt: skip
        sub.set_defaults(func=run)
    _register_generators(tasks)


def options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword options of :func:`~napari_mrisynth.training.train.train_segmentation`."""
    from napari_mrisynth.training.train import TrainOptions

    return _options(args, TrainOptions)


def _options(args: argparse.Namespace, options_class: type) -> dict[str, Any]:
    """The parsed arguments that are fields of a run's options dataclass (given ones only)."""
    names = {f for f in options_class.__dataclass_fields__ if f != "callbacks"}
    return {k: v for k, v in vars(args).items() if k in names and v is not None}


def run(args: argparse.Namespace) -> int:
    from napari_mrisynth.training.train import train_classification, train_segmentation

    if args.epochs < 0 or args.batch_size < 1 or args.num_nodes < 1 or args.num_workers < 0:
        raise SystemExit("mrisynth train: --batch-size, --num-nodes must be >= 1, --epochs "
                         "and --num-workers >= 0")  # fmt: skip
    train = train_segmentation if args.task == "segmentation" else train_classification
    card = train(args.data, args.out, **options_from_args(args))
    if card is None:  # a non-zero rank of a distributed run
        return 0
    test = card.metrics.get("test", {})
    if card.task == "segmentation":
        figure = f"test Dice (mean over labels) {card.metric('dice_mean') or float('nan'):.3f}"
    else:
        auc = test.get("auc", {})
        figure = f"test AUC {auc.get('value', float('nan')):.3f} (95% CI {auc.get('ci95')})"
    mlflow = card.training.get("mlflow", {})
    print(f"wrote {card.ref} to {card.path}: {figure}; MLflow run {mlflow.get('run_id')} "
          f"({mlflow.get('tracking_uri')}), registered {mlflow.get('registered_model')} "
          f"version {mlflow.get('version')}")  # fmt: skip
    return 0


_FAMILIES = {
    "anatomy": "fit the anatomy-first generator (groupwise template, diffeomorphic shape model, "
    "appearance; at the scans' own resolution, with label maps)",
    "vae": "train a conditional VAE (MONAI AutoencoderKL encoder/decoder)",
    "gan": "train a conditional GAN (decoder generator, PatchDiscriminator, DiffAugment, R1, EMA)",
    "ldm": "train a latent diffusion model (AutoencoderKL, then DiffusionModelUNet; DDIM)",
}


def _register_generators(tasks: argparse._SubParsersAction) -> None:
    """Add ``anatomy``, ``vae``, ``gan`` and ``ldm`` to ``mrisynth train``."""
    for family, help_text in _FAMILIES.items():
        sub = tasks.add_parser(
            family,
            help=help_text,
            description=help_text
            + (
                ". The model is conditioned on diagnosis (and optionally age and sex), trained on "
                "the training split, and assessed on the held-out test subjects (FID, KID, IS, "
                "MS-SSIM, MMD beside real-vs-real floors; memorization audit against the training "
                "subjects)."
            ),
        )
        add = sub.add_argument
        add("--data", type=Path, required=True, help="cohort folder (participants.tsv, sub-*/)")
        add("--out", type=Path, required=True, help="registry folder the model is written to")
        add("--id", help=f"model id (default: {family}-bvftd-<spacing>mm)")
        add("--version", default="1.0.0", help="model version, MAJOR.MINOR.PATCH")
        add(
            "--condition",
            dest="conditions",
            type=comma_names,
            default=("diagnosis",),
            help="diagnosis, or diagnosis,age,sex",
        )
        if family == "anatomy":
            add("--spacing", type=float, default=2.0,
                help="the scans' resolution: grid spacing in mm (default 2)")  # fmt: skip
            add("--node-mm", type=float, default=6.0, help="velocity node grid (mm, default 6)")
            add("--registration-mm", type=float, default=4.0,
                help="finest level of the groupwise registration (mm, default 4)")  # fmt: skip
            add("--rounds", type=int, default=3, help="groupwise template rounds (default 3)")
            add("--shape-model", choices=("auto", "gaussian", "vae"), default="auto",
                help="auto: the one closer to the validation scans' fields")  # fmt: skip
            add("--epochs", type=int, default=300, help="epochs of the VAE shape model")
        else:
            add("--spacing", type=float, default=4.0, help="model grid spacing in mm (default 4)")
            add("--channels", type=int, nargs="+",
                help="channels per level (autoencoder/decoder)")  # fmt: skip
            add("--latent-channels", type=int,
                help="latent channels (VAE, LDM) or noise channels (GAN)")  # fmt: skip
            add("--epochs", type=int, default=100, help="epochs (LDM: of the diffusion model)")
        if family == "ldm":
            add("--autoencoder-epochs", type=int, default=100, help="epochs of stage 1")
            add(
                "--autoencoder",
                metavar="MODEL_ID",
                help="take stage 1 (the autoencoder) from a registry latent diffusion model and "
                "train a new diffusion model on its latents (its grid and split; with "
                "--autoencoder-epochs 0 the autoencoder is not trained further)",
            )
            add("--sample-steps", type=int, default=50, help="DDIM steps recorded as default")
            add(
                "--guidance",
                type=float,
                default=1.0,
                help="classifier-free guidance scale recorded as default",
            )
        add("--max-steps", type=int, default=-1, help="stop after this many steps (-1: epochs)")
        add("--batch-size", type=int, default=4)
        add("--lr", type=float, help="learning rate (default per family)")
        if family not in ("gan", "anatomy"):
            add("--kl-weight", type=float, help="KL weight (VAE 0.01, LDM autoencoder 1e-6)")
        add(
            "--evaluate-per-class",
            type=int,
            default=6,
            help="volumes generated per class for the card's metrics (0: skip)",
        )
        add(
            "--split",
            type=float,
            nargs=3,
            default=(0.6, 0.2, 0.2),
            dest="fractions",
            metavar=("TRAIN", "VAL", "TEST"),
            help="subject fractions, stratified",
        )
        add("--seed", type=int, default=0)
        if family != "anatomy":
            add(
                "--init",
                metavar="MODEL_ID",
                help="continue from a registry generator of this family (its architecture, grid "
                "and split; for ldm, --autoencoder-epochs 0 keeps its autoencoder)",
            )
        add("--source", choices=("nifti", "dicom"), default="nifti")
        add_runtime_options(sub)
        sub.set_defaults(func=run_generator_training, family=family)


def run_generator_training(args: argparse.Namespace) -> int:
    from napari_mrisynth.synthesis.train import GenerativeOptions, train_generator

    card = train_generator(args.family, args.data, args.out, **_options(args, GenerativeOptions))
    if card is None:
        return 0
    fid = card.metric("fid")
    mlflow = card.training.get("mlflow", {})
    print(
        f"wrote {card.ref} to {card.path}: test FID {fid if fid is not None else 'n/a'}; "
        f"MLflow run {mlflow.get('run_id')} ({mlflow.get('tracking_uri')})"
    )
    return 0
