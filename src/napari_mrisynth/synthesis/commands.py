"""``mrisynth train vae|gan|ldm`` and ``mrisynth generate``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

_FAMILIES = {
    "vae": "train a conditional VAE (MONAI AutoencoderKL encoder/decoder)",
    "gan": "train a conditional GAN (decoder generator, PatchDiscriminator, DiffAugment, R1, EMA)",
    "ldm": "train a latent diffusion model (AutoencoderKL, then DiffusionModelUNet; DDIM)",
}


def _conditions(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def register_training(tasks: argparse._SubParsersAction) -> None:
    """Add ``vae``, ``gan`` and ``ldm`` to ``mrisynth train``."""
    from napari_mrisynth.training.commands import add_runtime_options

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
            type=_conditions,
            default=("diagnosis",),
            help="diagnosis, or diagnosis,age,sex",
        )
        add("--spacing", type=float, default=4.0, help="model grid spacing in mm (default 4)")
        add("--channels", type=int, nargs="+", help="channels per level (autoencoder/decoder)")
        add(
            "--latent-channels", type=int, help="latent channels (VAE, LDM) or noise channels (GAN)"
        )
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
        if family != "gan":
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
        add(
            "--init",
            metavar="MODEL_ID",
            help="continue from a registry generator of this family (its architecture, grid "
            "and split; for ldm, --autoencoder-epochs 0 keeps its autoencoder)",
        )
        add("--source", choices=("nifti", "dicom"), default="nifti")
        add_runtime_options(sub)
        sub.set_defaults(func=run_training, family=family)


def run_training(args: argparse.Namespace) -> int:
    from napari_mrisynth.synthesis.train import GenerativeOptions, train_generator
    from napari_mrisynth.training import MISSING_EXTRA

    names = {f for f in GenerativeOptions.__dataclass_fields__ if f != "callbacks"}
    options = {k: v for k, v in vars(args).items() if k in names and v is not None}
    try:
        card = train_generator(args.family, args.data, args.out, **options)
    except ImportError as exc:
        if str(exc) == MISSING_EXTRA:
            raise SystemExit(f"mrisynth train: {exc}") from exc
        raise
    if card is None:
        return 0
    fid = card.metric("fid")
    mlflow = card.training.get("mlflow", {})
    print(
        f"wrote {card.ref} to {card.path}: test FID {fid if fid is not None else 'n/a'}; "
        f"MLflow run {mlflow.get('run_id')} ({mlflow.get('tracking_uri')})"
    )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="generate synthetic T1 volumes with a registry generator",
        description=(
            "Generate N volumes of one condition with a VAE, GAN or latent diffusion model "
            "from the registry. Each volume is written as NIfTI (and/or DICOM) with a JSON "
            "provenance sidecar; the same --seed gives the same volumes."
        ),
    )
    add = parser.add_argument
    add("--model", required=True, help="generator id or id@version (see `mrisynth models list`)")
    add("--n", type=int, default=1, help="number of volumes")
    add("--condition", default="bvftd", choices=("bvftd", "control"))
    add("--age", type=float, help="years (models trained with --condition ...,age)")
    add("--sex", choices=("F", "M"), help="models trained with --condition ...,sex")
    add("--seed", type=int, default=0)
    add("--start", type=int, default=0, help="index of the first volume (continue a set)")
    add("--out", type=Path, required=True, help="output folder")
    add("--format", default="nifti", help="nifti, dicom or nifti,dicom")
    add("--device", help="cuda, cuda:1, mps or cpu (default: the best available)")
    add("--batch-size", type=int, help="volumes per forward pass")
    add("--steps", type=int, help="DDIM steps (latent diffusion; default: the card's)")
    add("--guidance", type=float, help="classifier-free guidance scale (latent diffusion)")
    add(
        "--precision",
        choices=("32", "bf16", "16"),
        default="32",
        help="float32 (default, exact) or bfloat16/float16 autocast (GPU throughput)",
    )
    add("--json", action="store_true", help="print the provenance records as JSON")
    add("--no-progress", dest="progress", action="store_false")
    parser.set_defaults(func=run_generate)


def run_generate(args: argparse.Namespace) -> int:
    from napari_mrisynth.synthesis.generate import generate

    formats = tuple(f.strip() for f in args.format.split(",") if f.strip())
    bar: Any = None
    if args.progress:
        from tqdm import tqdm

        bar = tqdm(unit="step", desc=f"generating {args.n}", file=sys.stderr)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        results = generate(
            args.model,
            args.n,
            condition=args.condition,
            age=args.age,
            sex=args.sex,
            seed=args.seed,
            start=args.start,
            out=args.out,
            format=formats,
            device=args.device,
            batch_size=args.batch_size,
            steps=args.steps,
            guidance=args.guidance,
            precision=args.precision,
            progress=progress if bar is not None else None,
        )
    except ValueError as exc:
        raise SystemExit(f"mrisynth generate: {exc}") from exc
    finally:
        if bar is not None:
            bar.close()
    if args.json:
        print(json.dumps([r.provenance for r in results], indent=2))
    else:
        for r in results:
            print(f"{r.path}  {r.provenance['seconds']:.2f} s")
        first = results[0].provenance["generator"]
        print(f"wrote {len(results)} volumes from {first['id']}@{first['version']} to {args.out}")
    return 0
