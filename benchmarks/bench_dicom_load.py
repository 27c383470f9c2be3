"""DICOM series load time: this project against SimpleITK, naive pydicom and dcm2niix.

Builds (once, cached under ``benchmarks/_work/dicom_load``) DICOM series written by
``write_dicom_series`` (one file per slice, vendor-sized headers with private tags,
extension-less shuffled names) from the MNI152 template that nilearn ships, scaled to int16
with noise:

* 256x256x192 and 512x512x300, Explicit VR Little Endian;
* 256x256x192 in RLE Lossless, JPEG-LS Lossless and JPEG 2000 Lossless.

Every measurement is a FRESH Python process (imports excluded from the timing, page cache
warm): the median of ``--runs`` processes per reader and series. Each process also saves
what it read, and the parent checks it voxel for voxel (and in patient space) against ours.

Readers: ours (``load_dicom``, scan included); SimpleITK ``ImageSeriesReader`` with
GDCMImageIO set explicitly (the names have no extension); naive pydicom (``dcmread`` every
file, sort along the normal, stack, apply rescale); dcm2niix (the CLI, then nibabel
reading its NIfTI); and the byte-read floor (read every file's bytes).

Usage::

    python benchmarks/bench_dicom_load.py               # all, 5 runs each
    python benchmarks/bench_dicom_load.py --runs 7 --write-docs
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DOCS = HERE.parent / "docs" / "benchmarks.md"
SECTION = "## DICOM load"
UNCOMPRESSED = {"256x256x192": (192, 256, 256), "512x512x300": (300, 512, 512)}
COMPRESSED = {
    "RLE": "1.2.840.10008.1.2.5",
    "JPEG-LS": "1.2.840.10008.1.2.4.80",
    "JPEG 2000": "1.2.840.10008.1.2.4.90",
}
READERS = ("ours", "simpleitk", "pydicom", "dcm2niix", "bytes")
LABELS = {
    "ours": "napari-mrisynth `load_dicom`",
    "simpleitk": "SimpleITK ImageSeriesReader (GDCM)",
    "pydicom": "naive pydicom (dcmread all, sort, stack, rescale)",
    "dcm2niix": "dcm2niix + nibabel load",
    "bytes": "byte-read floor (read every file)",
}


# -- the series ----------------------------------------------------------------------------
def _template(shape: tuple[int, int, int]):
    """MNI152 T1 as int16 of ``shape`` (z, y, x), with scanner-like noise."""
    import nibabel as nib
    import nilearn
    import numpy as np
    from scipy import ndimage

    path = (
        Path(nilearn.__file__).parent
        / "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
    )
    t1 = np.asanyarray(nib.load(path).dataobj).astype(np.float32).transpose(2, 1, 0)
    zoomed = ndimage.zoom(t1, [s / n for s, n in zip(shape, t1.shape, strict=True)], order=1)
    rng = np.random.default_rng(0)
    values = zoomed * 8 + rng.normal(0, 12, zoomed.shape) + 40
    return np.clip(values, 0, 4000).astype(np.int16)


def build(work: Path) -> dict[str, Path]:
    """Write every benchmark series once; return folder by name."""
    from napari_mrisynth.io.dicom_write import write_dicom_series
    from napari_mrisynth.volume import Volume

    folders = {}
    for name, shape in UNCOMPRESSED.items():
        data = _template(shape)
        voxel = 256.0 / shape[1]
        volume = Volume(data, (voxel, voxel, 1.0), (-128.0, -110.0, -72.0))
        for codec, syntax in [("native", None), *COMPRESSED.items()]:
            if codec != "native" and name != "256x256x192":
                continue
            folder = work / f"{name}_{codec.replace(' ', '')}"
            done = work / f"{folder.name}.complete"
            if not done.exists():
                shutil.rmtree(folder, ignore_errors=True)
                kwargs = {"transfer_syntax": syntax} if syntax else {}
                write_dicom_series(volume, folder, file_names="shuffled", **kwargs)
                done.touch()
            folders[f"{name} {codec}"] = folder
    return folders


# -- one measurement, in a fresh process ---------------------------------------------------
def _read(reader: str, folder: Path, out: Path):
    """Load ``folder`` with ``reader``; return ((wall, CPU) seconds, Volume or None)."""
    import numpy as np

    if reader == "ours":
        import pydicom.pixels  # noqa: F401  imported untimed, like SimpleITK: the decoders

        from napari_mrisynth.io.dicom import load_dicom

        start = _clock()
        volume = load_dicom(folder)
        return _since(start), volume
    if reader == "simpleitk":
        import SimpleITK as sitk

        from napari_mrisynth.volume import volume_from_sitk

        start = _clock()
        names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder))
        series_reader = sitk.ImageSeriesReader()
        series_reader.SetImageIO("GDCMImageIO")
        series_reader.SetFileNames(names)
        image = series_reader.Execute()
        elapsed = _since(start)
        return elapsed, volume_from_sitk(image)
    if reader == "pydicom":
        import pydicom

        from napari_mrisynth.volume import Volume

        start = _clock()
        datasets = [pydicom.dcmread(p) for p in folder.iterdir()]
        iop = np.array(datasets[0].ImageOrientationPatient, dtype=float)
        normal = np.cross(iop[:3], iop[3:])
        datasets.sort(key=lambda ds: float(np.dot(ds.ImagePositionPatient, normal)))
        array = np.stack(
            [
                ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
                for ds in datasets
            ]
        )
        elapsed = _since(start)
        positions = [np.array(ds.ImagePositionPatient, dtype=float) for ds in datasets]
        dz = float(np.dot(positions[1] - positions[0], normal))
        ps = [float(v) for v in datasets[0].PixelSpacing]
        direction = np.column_stack([iop[:3], iop[3:], normal])
        return elapsed, Volume(array, (ps[1], ps[0], dz), positions[0], direction)
    if reader == "dcm2niix":
        import nibabel as nib

        from napari_mrisynth.volume import volume_from_nifti

        start = _clock()
        subprocess.run(
            ["dcm2niix", "-z", "n", "-b", "n", "-f", "series", "-o", str(out), str(folder)],
            check=True,
            capture_output=True,
        )
        image = nib.load(out / "series.nii")
        array = np.asanyarray(image.dataobj)
        elapsed = _since(start)
        return elapsed, volume_from_nifti(nib.Nifti1Image(array, image.affine))
    if reader == "bytes":
        start = _clock()
        total = 0
        for path in folder.iterdir():
            with open(path, "rb") as f:
                total += len(f.read())
        return _since(start), None
    raise ValueError(reader)


def _cpu() -> float:
    """CPU seconds of this process and its finished children (dcm2niix)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def _clock() -> tuple[float, float]:
    return time.perf_counter(), _cpu()


def _since(start: tuple[float, float]) -> tuple[float, float]:
    wall, cpu = _clock()
    return wall - start[0], cpu - start[1]


def child(reader: str, folder: Path, save: Path | None) -> dict:
    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        (seconds, cpu), volume = _read(reader, folder, Path(tmp))
    if save is not None and volume is not None:
        from napari_mrisynth.volume import reorient_to_patient_axes

        patient = reorient_to_patient_axes(volume)
        np.save(save.with_suffix(".npy"), np.asarray(patient.data))
        np.save(save.with_suffix(".affine.npy"), patient.affine)
        dtype = str(volume.dtype)
    else:
        dtype = ""
    return {"seconds": seconds, "cpu": cpu, "dtype": dtype}


def measure(reader: str, folder: Path, runs: int, work: Path) -> dict:
    """Median of ``runs`` fresh processes, after one warm-up run that saves its result."""
    save = work / "results" / f"{folder.name}_{reader}"
    save.parent.mkdir(parents=True, exist_ok=True)
    times, cpus, dtype = [], [], ""
    for run in range(runs + 1):
        command = [sys.executable, __file__, "--child", reader, str(folder)]
        if run == 0:
            command += ["--save", str(save)]
        done = subprocess.run(command, check=True, capture_output=True, text=True)
        result = json.loads(done.stdout.strip().splitlines()[-1])
        if run == 0:
            dtype = result["dtype"]
        else:
            times.append(result["seconds"])
            cpus.append(result["cpu"])
    return {
        "median": statistics.median(times),
        "cpu": statistics.median(cpus),
        "times": times,
        "dtype": dtype,
        "save": save,
    }


def identical(ours: Path, theirs: Path) -> str:
    """'yes' when both saved volumes hold equal voxels at equal patient positions."""
    import numpy as np

    if not theirs.with_suffix(".npy").exists():
        return "–"
    a, b = np.load(ours.with_suffix(".npy")), np.load(theirs.with_suffix(".npy"))
    fa, fb = np.load(ours.with_suffix(".affine.npy")), np.load(theirs.with_suffix(".affine.npy"))
    if a.shape != b.shape:
        return f"no (shape {b.shape})"
    if not np.allclose(fa, fb, atol=1e-3):
        return "voxels only" if np.array_equal(a, b) else "no (geometry)"
    return "yes" if np.array_equal(a.astype(np.float64), b.astype(np.float64)) else "no (voxels)"


# -- report --------------------------------------------------------------------------------
def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"


def report(results: dict, compressed: dict, runs: int, load: tuple[str, str]) -> str:
    lines = [
        SECTION,
        "",
        "Written by `python benchmarks/bench_dicom_load.py --write-docs`. Machine: a 2-core "
        f"CPU box ({platform.processor() or platform.machine()}, Python "
        f"{platform.python_version()}), page cache warm. Each time is the median of {runs} "
        "fresh processes; imports are not timed (SimpleITK, pydicom and its decoders, "
        "nibabel, our module), our scan of the folder is. Series written by "
        "`write_dicom_series` (one file per slice, ~140-element vendor headers with "
        "private tags, shuffled extension-less names), int16, from the MNI152 template.",
        "",
        f"Load at the start: `{load[0]}`; at the end: `{load[1]}`. Four other engineers "
        "worked on this machine at the same time, so their processes may have loaded the CPU "
        "during some runs; medians over fresh processes damp that but do not remove it.",
        "",
        "| reader | "
        + " | ".join(f"{n} wall (s) | CPU (s) | ×ours | same voxels" for n in UNCOMPRESSED)
        + " |",
        "|---|" + "---:|---:|---:|---|" * len(UNCOMPRESSED),
    ]
    for reader in (r for r in READERS if r in results[next(iter(UNCOMPRESSED))]):
        cells = []
        for name in UNCOMPRESSED:
            r = results[name][reader]
            ours = results[name]["ours"]
            same = "(reference)" if reader == "ours" else identical(ours["save"], r["save"])
            if reader == "bytes":
                same = "–"
            cells.append(
                f"{r['median']:.3f} | {r['cpu']:.3f} | {r['median'] / ours['median']:.2f} | {same}"
            )
        lines.append(f"| {LABELS[reader]} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Targets: 256×256×192 ≤ 0.06 s, 512×512×300 ≤ 0.15 s (wall). ×ours is the ratio of "
        "wall medians; above 1 means slower than ours. CPU is the process's user+system time "
        "(children included, for dcm2niix) during the load: less sensitive to the other "
        "engineers' load than wall time. dcm2niix includes starting its process and writing "
        "then reading a NIfTI; pydicom returns float64 after rescale (4× the memory of int16).",
        "",
        "Compressed 256×256×192 (one file per slice):",
        "",
        "| transfer syntax | ours (s) | SimpleITK (s) | SimpleITK ×ours | same voxels |",
        "|---|---:|---:|---:|---|",
    ]
    for codec, pair in compressed.items():
        ours, theirs = pair["ours"], pair["simpleitk"]
        lines.append(
            f"| {codec} | {ours['median']:.3f} | {theirs['median']:.3f} | "
            f"{theirs['median'] / ours['median']:.2f} | {identical(ours['save'], theirs['save'])} |"
        )
    lines += [
        "",
        "Compressed frames are decoded by pydicom's decoders with the fastest plugin: "
        "pylibjpeg-rle for RLE, pyjpegls for JPEG-LS, openjpeg for JPEG 2000.",
        "",
    ]
    return "\n".join(lines)


def write_docs(text: str) -> None:
    """Replace (or append) the DICOM load section of docs/benchmarks.md, nothing else."""
    current = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n"
    start = current.find(SECTION + "\n")
    if start < 0:
        updated = current.rstrip("\n") + "\n\n" + text
    else:
        end = current.find("\n## ", start + len(SECTION))
        tail = current[end + 1 :] if end >= 0 else ""
        updated = current[:start] + text + ("\n" + tail if tail else "")
    DOCS.write_text(updated)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--readers", nargs="+", default=READERS, choices=READERS)
    parser.add_argument("--work", type=Path, default=HERE / "_work" / "dicom_load")
    parser.add_argument("--write-docs", action="store_true")
    parser.add_argument("--child", nargs=2, metavar=("READER", "FOLDER"), help=argparse.SUPPRESS)
    parser.add_argument("--save", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], Path(args.child[1]), args.save)))
        return 0

    args.work.mkdir(parents=True, exist_ok=True)
    folders = build(args.work)
    for folder in folders.values():  # warm the page cache
        for path in folder.iterdir():
            path.read_bytes()
    load_before = _uptime()
    results: dict = {}
    for name in UNCOMPRESSED:
        results[name] = {}
        for reader in args.readers:
            r = measure(reader, folders[f"{name} native"], args.runs, args.work)
            results[name][reader] = r
            print(f"{name:12s} {reader:10s} {r['median']:.4f} s  cpu {r['cpu']:.4f}", flush=True)
    compressed: dict = {}
    for codec in COMPRESSED:
        folder = folders[f"256x256x192 {codec}"]
        compressed[codec] = {
            reader: measure(reader, folder, args.runs, args.work)
            for reader in ("ours", "simpleitk")
        }
        print(
            f"{codec:12s} ours {compressed[codec]['ours']['median']:.4f} s  "
            f"simpleitk {compressed[codec]['simpleitk']['median']:.4f} s",
            flush=True,
        )
    text = report(results, compressed, args.runs, (load_before, _uptime()))
    print(text)
    if args.write_docs:
        write_docs(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
