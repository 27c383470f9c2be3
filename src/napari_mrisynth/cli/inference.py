"""``mrisynth segment`` and ``mrisynth classify``: registry models on scans, in batches."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from napari_mrisynth.cli._options import add_device_option, chosen_device
from napari_mrisynth.errors import MrisynthError


def register(subparsers: argparse._SubParsersAction) -> None:
    seg = subparsers.add_parser(
        "segment",
        help="segment T1 head scans with a registry model (labels on each scan's own grid)",
        description=(
            "Segment T1-weighted head scans (DICOM folders or files, NIfTI, MHA, NRRD; any "
            "orientation, skull and neck included): affine alignment to the model space, "
            "sliding-window inference and the exact inverse back onto the source grid."
        ),
    )
    seg.add_argument("sources", nargs="+", metavar="SRC", help="scan(s) to segment")
    seg.add_argument("--model", help="model id[@version] (default: the best segmentation model)")
    seg.add_argument(
        "--out",
        type=Path,
        required=True,
        help="MASK.nii.gz for one scan, or a folder (SRC-name_seg.nii.gz + volumes.tsv)",
    )
    add_device_option(seg)
    seg.add_argument("--series", help="series (key, UID or number) in a multi-series folder")
    seg.add_argument("--json", action="store_true", help="print results as JSON lines")
    seg.set_defaults(func=run_segment)

    cls = subparsers.add_parser(
        "classify",
        help="classify T1 head scans as bvFTD or control with a registry model",
        description=(
            "Classify T1-weighted head scans with a registry model; prints class probabilities "
            "and optionally writes a saliency map (Grad-CAM) on each scan's grid."
        ),
    )
    cls.add_argument("sources", nargs="+", metavar="SRC", help="scan(s) to classify")
    cls.add_argument("--model", help="model id[@version] (default: the best classifier)")
    add_device_option(cls)
    cls.add_argument("--series", help="series (key, UID or number) in a multi-series folder")
    cls.add_argument("--saliency", type=Path, metavar="DIR", help="write saliency NIfTI files here")
    cls.add_argument("--json", action="store_true", help="print results as JSON lines")
    cls.set_defaults(func=run_classify)


def source_stem(source: str | Path) -> str:
    """A file-name stem for a scan path: the folder's name, or the file name without suffix."""
    from napari_mrisynth.io.files import volume_stem

    return volume_stem(Path(source).name) or "scan"


def _unique_stems(sources: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    stems = []
    for source in sources:
        stem = source_stem(source)
        seen[stem] = seen.get(stem, 0) + 1
        stems.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return stems


def run_segment(args: argparse.Namespace) -> int:
    from napari_mrisynth.io.files import save_volume
    from napari_mrisynth.models.inference import segment

    single_file = len(args.sources) == 1 and args.out.name.lower().endswith((".nii", ".nii.gz"))
    if not single_file:
        if args.out.suffix.lower() in (".nii", ".gz"):
            raise MrisynthError(f"{args.out}: several scans need an output folder, not a file")
        args.out.mkdir(parents=True, exist_ok=True)
    args.device = str(chosen_device(args.device, args.command))
    failures = 0
    rows = []
    for source, stem in zip(args.sources, _unique_stems(args.sources), strict=True):
        try:
            result = segment(source, args.model, device=args.device, series=args.series)
        except MrisynthError as exc:
            failures += 1
            print(f"mrisynth segment: error: {exc}", file=sys.stderr)
            continue
        path = args.out if single_file else args.out / f"{stem}_seg.nii.gz"
        save_volume(result.labels, path)
        record = {**result.to_json(), "mask": str(path)}
        rows.append((stem, result))
        if args.json:
            print(json.dumps(record))
        else:
            total = result.seconds
            brain_names = {result.card.label_names[v] for v in result.card.brain_labels}
            brain = sum(row["ml"] for row in result.table() if row["name"] in brain_names)
            volume = f"brain {brain:.0f} mL" if brain_names else "brain labels not in the card"
            print(f"{source}: {path} ({result.card.ref}, {result.device}, {total:.2f} s; {volume})")
    if rows and not single_file:
        _write_volumes_table(args.out / "volumes.tsv", rows)
    return 1 if failures else 0


def _write_volumes_table(path: Path, rows: list) -> None:
    card = rows[0][1].card
    header = ["scan", "model"] + [f"{label.name}_ml" for label in card.labels]
    lines = ["\t".join(header)]
    for stem, result in rows:
        volumes = result.volumes_ml
        values = [f"{volumes.get(label.name, 0.0):.3f}" for label in card.labels]
        lines.append("\t".join([stem, result.card.ref, *values]))
    path.write_text("\n".join(lines) + "\n")


def run_classify(args: argparse.Namespace) -> int:
    from napari_mrisynth.io.files import save_volume
    from napari_mrisynth.models.inference import classify

    if args.saliency is not None:
        args.saliency.mkdir(parents=True, exist_ok=True)
    args.device = str(chosen_device(args.device, args.command))
    failures = 0
    for source, stem in zip(args.sources, _unique_stems(args.sources), strict=True):
        try:
            result = classify(
                source,
                args.model,
                device=args.device,
                series=args.series,
                saliency=args.saliency is not None,
            )
        except MrisynthError as exc:
            failures += 1
            print(f"mrisynth classify: error: {exc}", file=sys.stderr)
            continue
        record = result.to_json()
        if result.saliency is not None:
            path = args.saliency / f"{stem}_saliency.nii.gz"
            save_volume(result.saliency, path)
            record["saliency"] = str(path)
        if args.json:
            print(json.dumps(record))
        else:
            probs = ", ".join(f"{k} {v:.3f}" for k, v in result.probabilities.items())
            print(f"{source}: {result.predicted} ({probs}; {result.card.ref}, {result.device})")
    return 1 if failures else 0
