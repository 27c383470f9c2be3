"""Figures of docs/synthesis.md: held-out real volumes beside the default anatomy-first
generator's output at 2 mm (``anatomy_first.png``), and beside each image-space demo
generator's output on their 4 mm model grid (``demo_generators.png``); control and bvFTD.

Usage (from the repository root; builds the 60-subject demo cohort if it is missing)::

    python docs/make_synthesis_figure.py [--cohort data/cohort-2mm]

    # the 1 mm figure: a 1 mm cohort and a 1 mm fit (docs/synthesis.md, "At 1 mm")
    python docs/make_synthesis_figure.py --cohort cohort-1mm --only-anatomy \
        --anatomy-model anatomy-bvftd-demo-1mm@1.0.0 --anatomy-out anatomy_first_1mm.png

The real rows are the demo generators' held-out test subjects (never trained on), brought
onto the same grid with the same preparation; the synthetic rows are seed 7, volumes 0-2.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "images" / "synthesis"
FAMILIES = (("ldm", "latent diffusion"), ("vae", "VAE"), ("gan", "GAN"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cohort", type=Path, default=ROOT / "data" / "cohort-2mm")
    parser.add_argument("--examples", type=int, default=3)
    parser.add_argument("--anatomy-model", default="anatomy-bvftd-demo",
                        help="anatomy-first generator id[@version] (a models folder in "
                        "$MRISYNTH_MODEL_PATH counts)")  # fmt: skip
    parser.add_argument("--anatomy-out", default="anatomy_first.png")
    parser.add_argument("--only-anatomy", action="store_true",
                        help="skip the image-space demo generators' figure")  # fmt: skip
    args = parser.parse_args()

    from napari_mrisynth.models.registry import find_model
    from napari_mrisynth.synthesis import Condition, generate
    from napari_mrisynth.synthesis.assess import _cached_volumes
    from napari_mrisynth.synthesis.figures import volume_rows_figure
    from napari_mrisynth.training import data as tdata
    from napari_mrisynth.training.splits import read_participants

    anatomy = find_model(args.anatomy_model, task="generation")
    spacing = anatomy.input.spacing[0]
    if not (args.cohort / "participants.tsv").exists():  # the anatomy model's training cohort
        subprocess.run(
            [
                sys.executable,
                "-m",
                "napari_mrisynth.cli",
                "cohort",
                "--out",
                str(args.cohort),
                "--subjects",
                "60",
                "--seed",
                "2026",
                "--spacing",
                f"{spacing:g}",
            ],
            check=True,
        )
    rows_by_id = {r["participant_id"]: r for r in read_participants(args.cohort)}

    def held_out_by_class(card) -> dict:
        """The card's held-out test subjects on its grid, by diagnosis."""
        test = card.training["splits"]["test"]
        folder = args.cohort / f".model-grid-{card.input.spacing[0]:g}mm"
        real = _cached_volumes(
            tdata.cache_subjects(args.cohort, test, card.input, folder, labels=None)
        )
        return {
            name: [v for v, s in zip(real, test, strict=True)
                   if Condition.parse(rows_by_id[s]["diagnosis"]).diagnosis == name]
            for name in ("control", "bvFTD")
        }  # fmt: skip

    if not args.only_anatomy:
        cards = {f: find_model(f"{f}-bvftd-demo", task="generation") for f, _ in FAMILIES}
        by_class = held_out_by_class(cards["ldm"])
        rows = []
        for diagnosis in ("control", "bvFTD"):
            rows.append((f"real\n{diagnosis}", by_class[diagnosis]))
            for family, label in FAMILIES:
                made = generate(cards[family], args.examples, condition=diagnosis, seed=7)
                rows.append((f"{label}\n{diagnosis}", [m.volume for m in made]))
        path = volume_rows_figure(
            rows,
            OUT / "demo_generators.png",
            examples=args.examples,
            title="held-out real (top of each block) vs synthetic, 4 mm model grid: "
            "axial, coronal, sagittal per volume (simulated data)",
        )
        print("wrote", path)

    by_class = held_out_by_class(anatomy)
    rows = []
    for diagnosis in ("control", "bvFTD"):
        rows.append((f"real\n{diagnosis}", by_class[diagnosis]))
        made = generate(anatomy, args.examples, condition=diagnosis, seed=7)
        rows.append((f"anatomy-first\n{diagnosis}", [m.volume for m in made]))
    path = volume_rows_figure(
        rows,
        OUT / args.anatomy_out,
        examples=args.examples,
        title=f"held-out real vs {anatomy.id}@{anatomy.version}, {spacing:g} mm (the scans' own "
        "resolution): "
        "axial, coronal, sagittal per volume (simulated data)",
    )
    print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
