"""The condition check on more real subjects than a card's test split: Cohen's d of each bvFTD
region's share of the brain (bvFTD minus control) in generated label maps against real ones,
with the real d's bootstrap 95 % interval, and each region's SD per class.

Usage::

    python benchmarks/condition_effects_check.py --cohort cohort-seed7 cohort-seed11 \\
        --models anatomy-bvftd-demo@1.2.0 anatomy-bvftd-demo@1.3.0 [--n 24] [--json out.json]

- **real**: every subject of each ``--cohort`` folder (``mrisynth cohort`` output: its
  ``participants.tsv`` and ``sub-*/anat/sub-*_labels.nii.gz``), cohorts nobody trained on.
- **generated**: ``--n`` bvFTD heads (seed ``--seed``) and ``--n`` controls (seed
  ``--seed + 1``) from each model, through :func:`napari_mrisynth.generate`, every model in
  the same run; their label maps.
- :func:`napari_mrisynth.synthesis.assess.condition_effects` gives the effect sizes and
  intervals, as the card's ``metrics.test.condition_effects`` does on the test split.
"""

from __future__ import annotations

import argparse
import csv
import json
import warnings
from pathlib import Path

import numpy as np


def real_label_maps(cohorts: list[Path]) -> tuple[list[np.ndarray], np.ndarray]:
    from napari_mrisynth.io.files import load_volume

    maps, bvftd = [], []
    for cohort in cohorts:
        with open(cohort / "participants.tsv", newline="") as handle:
            for row in csv.DictReader(handle, delimiter="\t"):
                subject = row["participant_id"]
                path = cohort / subject / "anat" / f"{subject}_labels.nii.gz"
                maps.append(np.asarray(load_volume(path).data))
                bvftd.append(row["diagnosis"] == "bvFTD")
    return maps, np.array(bvftd)


def spreads(maps: list[np.ndarray], bvftd: np.ndarray) -> dict[str, list[float]]:
    """Each region's SD of its share of the brain in controls and in bvFTD."""
    from napari_mrisynth.anatomy.labels import LABEL_IDS
    from napari_mrisynth.synthesis.anatomy import brain_shares
    from napari_mrisynth.synthesis.assess import EFFECT_REGIONS

    shares = brain_shares(maps, [LABEL_IDS[r] for r in EFFECT_REGIONS])
    return {
        region: [float(shares[~bvftd, k].std(ddof=1)), float(shares[bvftd, k].std(ddof=1))]
        for k, region in enumerate(EFFECT_REGIONS)
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cohort", nargs="+", type=Path, required=True)
    parser.add_argument("--models", nargs="+", required=True, help="generator id@version")
    parser.add_argument("--n", type=int, default=24, help="generated heads per class")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="no CUDA or MPS")

    from napari_mrisynth.synthesis.assess import EFFECT_REGIONS, condition_effects
    from napari_mrisynth.synthesis.generate import generate

    real, real_bvftd = real_label_maps(args.cohort)
    report = {"real": {"n": len(real), "sd_control_bvftd": spreads(real, real_bvftd)}}
    print(f"{len(real)} real subjects ({int(real_bvftd.sum())} bvFTD)")
    for ref in args.models:
        maps, bvftd = [], []
        for condition, seed in (("bvftd", args.seed), ("control", args.seed + 1)):
            for item in generate(ref, args.n, condition=condition, seed=seed, device="cpu"):
                maps.append(np.asarray(item.labels.data))
                bvftd.append(condition == "bvftd")
        bvftd = np.array(bvftd)
        effects = condition_effects(real, real_bvftd, maps, bvftd)
        sd = spreads(maps, bvftd)
        report[ref] = {"effects": effects, "sd_control_bvftd": sd}
        print(
            f"{ref}: {effects['value'] * len(EFFECT_REGIONS):.0f} of {len(EFFECT_REGIONS)} inside"
        )
        for region in EFFECT_REGIONS:
            e, (low, high) = effects[region], effects[region]["real_ci95"]
            real_sd = report["real"]["sd_control_bvftd"][region]
            print(
                f"  {region:24s} real d {e['real_d']:+.2f} [{low:+.2f}, {high:+.2f}] "
                f"SD {real_sd[0]:.4f}/{real_sd[1]:.4f} | generated d {e['synthetic_d']:+.2f} "
                f"{'inside' if e['inside'] else 'OUTSIDE'} "
                f"SD {sd[region][0]:.4f}/{sd[region][1]:.4f}"
            )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
