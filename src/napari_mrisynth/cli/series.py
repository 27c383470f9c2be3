"""``mrisynth series`` and ``mrisynth convert``: list DICOM series, convert them to NIfTI."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from napari_mrisynth.errors import MrisynthError, SeriesError
from napari_mrisynth.volume import orientation_code


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``series`` and ``convert`` subcommands."""
    series = subparsers.add_parser(
        "series",
        help="list the DICOM series in a folder, with geometry problems and skipped files",
    )
    series.add_argument("folder", type=Path, help="folder (searched recursively) or DICOM file")
    series.set_defaults(func=_series_command)

    convert = subparsers.add_parser(
        "convert",
        help="convert a DICOM series (or a NIfTI/MHA/NRRD image) to NIfTI",
        description=(
            "Convert SRC to OUT. One series: OUT is a file (.nii.gz added when it has no "
            "image suffix). OUT an existing folder or ending in '/': one file per series."
        ),
    )
    convert.add_argument("source", type=Path, help="DICOM folder or file, or an image file")
    convert.add_argument("out", help="output file, or folder for one file per series")
    convert.add_argument("--series", help="series key, SeriesInstanceUID or SeriesNumber")
    convert.add_argument(
        "--resample",
        action="store_true",
        help="resample irregular stacks (gap, non-uniform spacing, tilt) to a regular grid",
    )
    convert.add_argument(
        "--gzip",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write .nii.gz (default) or .nii when OUT names no suffix or is a folder",
    )
    convert.set_defaults(func=_convert_command)


def _series_command(args: argparse.Namespace) -> int:
    from napari_mrisynth.io.dicom import scan_folder

    scan = scan_folder(args.folder)
    rows = [
        (
            "KEY",
            "NUMBER",
            "DESCRIPTION",
            "MODALITY",
            "ROWSxCOLSxSLICES",
            "SPACING r×c×s (mm)",
            "ORIENT",
        )
    ]
    for s in scan.series:
        nz, ny, nx = s.shape
        rows.append(
            (
                s.key,
                "-" if s.number is None else str(s.number),
                s.description,
                s.modality,
                f"{ny}x{nx}x{nz}",
                "x".join(f"{s.spacing[i]:.4g}" for i in (1, 0, 2)),  # row, column, slice
                orientation_code(s.direction),
            )
        )
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    print(f"{len(scan.series)} series in {scan.root}")
    for k, row in enumerate(rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if k and scan.series[k - 1].problems:
            for problem in scan.series[k - 1].problems:
                print(f"    problem: {problem}")
    if scan.skipped:
        print(f"\n{len(scan.skipped)} file(s) skipped:")
        for skipped in scan.skipped:
            print(f"  {_relative(skipped.path, scan.root)}: {skipped.reason}")
    return 0


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root)) if root.is_dir() else str(path)
    except ValueError:
        return str(path)


def _sanitize(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._-") or "series"


def _output_file(out: str, gzip: bool) -> Path:
    path = Path(out)
    from napari_mrisynth.io.files import is_volume_file

    if is_volume_file(path):
        return path
    return path.with_name(path.name + (".nii.gz" if gzip else ".nii"))


def _convert_command(args: argparse.Namespace) -> int:
    from napari_mrisynth.io.dicom import is_dicom_file, load_series, scan_folder
    from napari_mrisynth.io.files import load_volume, save_volume

    source: Path = args.source
    to_folder = args.out.endswith(("/", "\\")) or Path(args.out).is_dir()
    suffix = ".nii.gz" if args.gzip else ".nii"
    if source.is_file() and not is_dicom_file(source):
        volume = load_volume(source)
        name = _sanitize(volume.metadata.get("name", source.name))
        target = (
            Path(args.out) / f"{name}{suffix}" if to_folder else _output_file(args.out, args.gzip)
        )
        _report(save_volume(volume, target), volume)
        return 0
    scan = scan_folder(source)
    if args.series is not None or not to_folder:
        if args.series is None and len(scan.series) > 1:
            raise SeriesError(
                f"{source} holds {len(scan.series)} series; pick one with --series or give a "
                "folder as OUT to convert them all:\n"
                + "\n".join(f"  {s.describe()}" for s in scan.series)
            )
        chosen = [scan.select(args.series)]
    else:
        chosen = scan.series or [scan.select(None)]
    failures = []
    used: set[str] = set()
    for series in chosen:
        if to_folder:
            number = series.number if series.number is not None else 0
            stem = f"{number}_{_sanitize(series.description)}"
            if series.stack:
                stem += f"_stack{series.stack}"
            while stem in used:
                stem += "_b"
            used.add(stem)
            target = Path(args.out) / f"{stem}{suffix}"
        else:
            target = _output_file(args.out, args.gzip)
        try:
            volume = load_series(series, resample=args.resample)
        except MrisynthError as exc:
            if len(chosen) == 1:
                raise
            failures.append(f"{series.key}: {exc}")
            continue
        _report(save_volume(volume, target), volume)
    if failures:
        raise SeriesError(f"{len(failures)} series not converted:\n" + "\n".join(failures))
    return 0


def _report(path: Path, volume) -> None:
    nz, ny, nx = volume.shape
    spacing = "x".join(f"{v:.4g}" for v in volume.spacing)
    note = " (resampled)" if "resampled" in volume.metadata else ""
    print(f"wrote {path}  {nx}x{ny}x{nz} {volume.dtype} spacing {spacing} mm{note}")
