"""``mrisynth cohort``: write a simulated bvFTD cohort (NIfTI, labels, DICOM, participants)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from napari_mrisynth.cli._options import ProgressBar, comma_names
from napari_mrisynth.cohort.versions import COHORT_VERSION, COHORT_VERSIONS


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "cohort",
        help="write a simulated bvFTD/control cohort (NIfTI, exact labels, DICOM series)",
        description=(
            "Simulate T1-weighted head MRI from the MNI152 template: half bvFTD patients of "
            "graded severity, half controls, each with exact labels, a brain mask, a DICOM "
            "series with fake identifiers, and a participants table. Simulated, not clinical."
        ),
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--subjects", type=int, default=10, help="number of subjects")
    parser.add_argument("--seed", type=int, default=0, help="reproduces the cohort")
    parser.add_argument(
        "--spacing", type=float, default=1.0, help="isotropic voxel size in mm (2 is fast)"
    )
    parser.add_argument(
        "--cohort-version", type=int, choices=COHORT_VERSIONS, default=COHORT_VERSION,
        dest="cohort_version",
        help="3 (default): a seed gives the same anatomy at every spacing up to 2 mm; 2: "
        "the cohort before that (its 2 mm subjects differ from their 1 mm selves; the same "
        "at 1 mm); 1: one template under a smooth deformation, before every head had its "
        "own fine folding, cortical thickness and texture",
    )  # fmt: skip
    parser.add_argument(
        "--only", type=comma_names,
        metavar="SUB,SUB", help="write only these subjects of the --subjects cohort, with the "
        "anatomy they have in the full cohort (e.g. a model's held-out subjects at 1 mm)",
    )  # fmt: skip
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from napari_mrisynth.cohort import build_cohort

    if args.subjects < 1 or args.spacing <= 0 or args.seed < 0:
        raise SystemExit("mrisynth cohort: --subjects must be >= 1, --spacing > 0, --seed >= 0")
    start = time.perf_counter()
    with ProgressBar("simulating", unit="subject") as progress:
        try:
            root = build_cohort(args.out, args.subjects, args.seed, args.spacing,
                                version=args.cohort_version, only=args.only,
                                progress=progress)  # fmt: skip
        except ValueError as exc:
            raise SystemExit(f"mrisynth cohort: {exc}") from exc
    written = args.subjects if args.only is None else len(args.only)
    print(
        f"wrote {written} simulated subjects to {root} in "
        f"{time.perf_counter() - start:.1f} s (participants.tsv, sub-*/anat, sub-*/dicom)"
    )
    return 0
