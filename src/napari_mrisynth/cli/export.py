"""``mrisynth export``: a study's approved synthetic volumes as BIDS and DICOM."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from napari_mrisynth.cli._options import ProgressBar, comma_names


def register(subparsers: argparse._SubParsersAction) -> None:
    export = subparsers.add_parser(
        "export",
        help="export a study's approved synthetic volumes (BIDS, DICOM, manifest)",
        description=(
            "Write the volumes a curator approved (mrisynth curate) with their masks, "
            "rater scores, audit and provenance: a BIDS dataset, DICOM series marked as "
            "synthetic, manifest.json and SHA256SUMS. Everything is written to a hidden "
            "folder and moved into place only when complete; re-running gives the same bytes."
        ),
    )
    export.add_argument("--db", required=True, help="the study's ratings database")
    export.add_argument("--key", required=True, help="the study's answer key (file or URL)")
    export.add_argument("--study", help="study id (needed when the database holds several)")
    export.add_argument("--out", type=Path, required=True, help="export folder (must not exist)")
    export.add_argument("--format", default="bids,dicom", help="bids, dicom or both (default)")
    export.add_argument("--overwrite", action="store_true", help="replace an earlier export")
    export.add_argument(
        "--masks",
        type=Path,
        action="append",
        default=[],
        help="a folder of corrected masks (<volume stem>_labels.nii.gz); repeatable. Masks "
        "beside the synthetic volumes are found without it",
    )
    export.add_argument("--authors", help="comma-separated authors for dataset_description")
    export.add_argument("--json", action="store_true", help="print the result as JSON")
    export.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    from napari_mrisynth.export import ExportError, export_set
    from napari_mrisynth.turing.curation import approved_volumes
    from napari_mrisynth.turing.results import study_status
    from napari_mrisynth.turing.store import RatingStore

    formats = comma_names(args.format)
    with RatingStore(args.db, key=args.key) as store:
        study_id = args.study or store.only_study()
        study = store.study(study_id)
        volumes = approved_volumes(store, study_id=study_id, masks=args.masks)
        status = study_status(store, study_id)
    if not volumes:
        raise ExportError(f"study {study_id!r}: no approved volume (mrisynth curate approve …)")
    facts = {
        "id": study_id,
        "mode": study["mode"],
        "seed": study["seed"],
        "created_at": study["created_at"],
        "raters": len(status["raters"]),
        "ratings": status["rated"],
        "grid": study["grid"],
    }
    if args.authors:
        facts["authors"] = list(comma_names(args.authors))
    with ProgressBar("exporting", unit="volume") as progress:
        result = export_set(
            volumes,
            args.out,
            formats=formats,
            study=facts,
            overwrite=args.overwrite,
            progress=progress,
        )
    if args.json:
        print(
            json.dumps(
                {
                    "out": str(result.out),
                    "manifest": str(result.manifest),
                    "files": [str(f) for f in result.files],
                },
                indent=2,
            )
        )
    else:
        print(
            f"exported {len(volumes)} approved volume(s) as {', '.join(formats)} to "
            f"{result.out} ({len(result.files)} files; manifest {result.manifest.name})"
        )
    return 0
