"""``mrisynth generate``: synthetic volumes from a registry generator, with provenance."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from napari_mrisynth.cli._options import ProgressBar, add_device_option, chosen_device, comma_names


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="generate synthetic T1 volumes with a registry generator",
        description=(
            "Generate N volumes of one condition with a registry generator (the anatomy-first "
            "default, or a VAE, GAN or latent diffusion model). Each volume is written as "
            "NIfTI (and/or DICOM) with a JSON provenance sidecar, and its label map beside it "
            "when the generator makes one; the same --seed gives the same volumes."
        ),
    )
    add = parser.add_argument
    add(
        "--model",
        help="generator id or id@version (see `mrisynth models list`); default: the "
        "registry's default generator",
    )
    add("--n", type=int, default=1, help="number of volumes")
    add("--condition", default="bvftd", choices=("bvftd", "control"))
    add("--age", type=float, help="years (models trained with --condition ...,age)")
    add("--sex", choices=("F", "M"), help="models trained with --condition ...,sex")
    add("--seed", type=int, default=0)
    add("--start", type=int, default=0, help="index of the first volume (continue a set)")
    add("--out", type=Path, required=True, help="output folder")
    add("--format", default="nifti", help="nifti, dicom or nifti,dicom")
    add_device_option(parser)
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

    formats = comma_names(args.format)
    model = args.model
    if model is None:
        from napari_mrisynth.models.registry import default_model

        model = default_model("generation")
    device = chosen_device(args.device, "generate")
    bar = ProgressBar(f"generating {args.n}", enabled=args.progress)
    try:
        results = generate(
            model,
            args.n,
            condition=args.condition,
            age=args.age,
            sex=args.sex,
            seed=args.seed,
            start=args.start,
            out=args.out,
            format=formats,
            device=device,
            batch_size=args.batch_size,
            steps=args.steps,
            guidance=args.guidance,
            precision=args.precision,
            progress=bar.callback(),
        )
    except ValueError as exc:
        raise SystemExit(f"mrisynth generate: {exc}") from exc
    finally:
        bar.close()
    if args.json:
        print(json.dumps([r.provenance for r in results], indent=2))
    else:
        for r in results:
            labels = f"  labels {r.labels_path.name}" if r.labels_path else ""
            print(f"{r.path}  {r.provenance['seconds']:.2f} s{labels}")
        first = results[0].provenance["generator"]
        print(f"wrote {len(results)} volumes from {first['id']}@{first['version']} to {args.out}")
    return 0
