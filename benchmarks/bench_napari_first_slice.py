"""Time from ``viewer.open(folder)`` to the first rendered slice of a 512×512×300 DICOM series.

Compares, in fresh processes under a real display (run under Xvfb):

* ``lazy``: ``viewer.open(folder, plugin="napari-mrisynth")`` (scan headers, dask array with
  one chunk per slice, contrast limits from the DICOM window);
* ``eager``: SimpleITK ``ImageSeriesReader`` reads the whole series, then ``add_image`` with
  the same geometry;
* ``memory``: the voxels are already in memory before the clock starts, then ``add_image``:
  what napari itself costs to show a slice, the floor for any reader.

Each mode runs on a ``cold`` viewer (the first layer of the session, which pays napari's
one-time shader and widget set-up) and on a ``warm`` one (a small layer was shown and
removed before the clock starts).

The clock stops when ``viewer.screenshot(canvas_only=True)`` has rendered the canvas, which
forces the visible slice to be read, uploaded and drawn. Each process also reports its peak
RSS. The series (simulated from the MNI152 template) is written once to
``benchmarks/_work/``.

Usage::

    xvfb-run -a -s "-screen 0 1400x1000x24" python benchmarks/bench_napari_first_slice.py --runs 5
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

WORK = Path(__file__).resolve().parent / "_work"
SHAPE = (300, 512, 512)  # nz, ny, nx
SPACING = (0.45, 0.45, 0.6)  # x, y, z mm: a 230 × 230 × 180 mm field of view
MODES = ("lazy", "eager", "memory")


def make_series(folder: Path) -> Path:
    """Write the simulated 512×512×300 int16 axial series once; return its folder."""
    if folder.is_dir() and len(list(folder.glob("*.dcm"))) == SHAPE[0]:
        return folder
    import nilearn
    import SimpleITK as sitk

    from napari_mrisynth.io.dicom_write import write_dicom_series
    from napari_mrisynth.volume import volume_from_sitk

    template = sitk.ReadImage(
        str(
            Path(nilearn.__file__).parent
            / "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
        )
    )
    nz, ny, nx = SHAPE
    size = np.array([nx, ny, nz])
    origin = np.array([0.0, 18.0, 18.0]) - np.array(SPACING) * (size - 1) / 2
    image = sitk.Resample(
        template,
        size.tolist(),
        sitk.Transform(),
        sitk.sitkLinear,
        origin.tolist(),
        list(SPACING),
        np.eye(3).reshape(-1).tolist(),
        0.0,
        sitk.sitkInt16,
    )
    volume = volume_from_sitk(image * 4)
    write_dicom_series(volume, folder, description="SIMULATED T1 MPRAGE 512", series_number=3)
    return folder


def _read_eagerly(folder: Path):
    import SimpleITK as sitk

    from napari_mrisynth.volume import napari_layer_kwargs, volume_from_sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    return napari_layer_kwargs(volume_from_sitk(reader.Execute()))


def child(mode: str, warm: bool, folder: Path) -> dict:
    """One measurement in this (fresh) process; returns the timings as a dict."""
    import napari
    from qtpy.QtWidgets import QApplication

    started = time.perf_counter()
    viewer = napari.Viewer(show=True)
    if warm:
        viewer.add_image(np.zeros((4, 8, 8), np.int16))
        viewer.screenshot(canvas_only=True, flash=False)
        viewer.layers.clear()
    in_memory = _read_eagerly(folder) if mode == "memory" else None
    for _ in range(20):  # let the window map and settle before the clock starts
        QApplication.processEvents()
        time.sleep(0.01)
    viewer_s = time.perf_counter() - started
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    t0 = time.perf_counter()
    if mode == "lazy":
        (layer,) = viewer.open(folder, plugin="napari-mrisynth")
    else:
        data, kwargs = in_memory or _read_eagerly(folder)
        layer = viewer.add_image(data, **kwargs)
    t_layer = time.perf_counter() - t0
    shot = viewer.screenshot(canvas_only=True, flash=False)
    first_slice_s = time.perf_counter() - t0
    rss_first = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    reader_s = rss_scrolled = None
    if mode == "lazy":  # the plugin's own share, now that imports and page cache are warm
        from napari_mrisynth._widgets._reader import napari_get_reader

        t1 = time.perf_counter()
        napari_get_reader(str(folder))(str(folder))
        reader_s = time.perf_counter() - t1
        for k in range(int(viewer.dims.nsteps[0])):  # every slice read once, as when scrolling
            viewer.dims.set_current_step(0, k)
        rss_scrolled = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {
        "mode": mode,
        "warm": warm,
        "first_slice_s": first_slice_s,
        "layer_s": t_layer,
        "reader_s": reader_s,
        "viewer_startup_s": viewer_s,
        "canvas_std": float(shot[..., :3].std()),
        "lazy": not isinstance(layer.data, np.ndarray),
        "peak_rss_mb_before": rss_before,
        "peak_rss_mb_first_slice": rss_first,
        "peak_rss_mb_all_slices": rss_scrolled,
    }
    viewer.close()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="fresh processes per mode")
    parser.add_argument("--folder", type=Path, default=WORK / "t1_512x512x300")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--warm", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.warm, args.folder)))
        return 0

    folder = make_series(args.folder)
    volume_mb = np.prod(SHAPE) * 2 / 2**20
    cases = [(mode, warm) for warm in (False, True) for mode in MODES]
    results: dict[tuple[str, bool], list[dict]] = {case: [] for case in cases}
    for run in range(args.runs):
        for mode, warm in cases:  # interleaved, so drift in machine load hits all alike
            command = [sys.executable, __file__, "--child", mode, "--folder", str(folder)]
            out = subprocess.run(
                command + (["--warm"] if warm else []), capture_output=True, text=True, check=True
            )
            r = json.loads(out.stdout.strip().splitlines()[-1])
            results[mode, warm].append(r)
            print(
                f"run {run + 1} {mode:6s} {'warm' if warm else 'cold'}: first slice "
                f"{r['first_slice_s']:.3f} s, peak RSS {r['peak_rss_mb_first_slice']:.0f} MB",
                flush=True,
            )
    print(f"\n512×512×300 int16 series ({volume_mb:.0f} MB of voxels), {args.runs} runs each")
    print("| viewer | mode | median first slice (s) | min–max (s) | peak RSS (MB) |")
    print("|---|---|---|---|---|")
    for (mode, warm), rows in results.items():
        times = [r["first_slice_s"] for r in rows]
        rss = statistics.median(r["peak_rss_mb_first_slice"] for r in rows)
        print(
            f"| {'warm' if warm else 'cold'} | {mode} | {statistics.median(times):.3f} | "
            f"{min(times):.3f}–{max(times):.3f} | {rss:.0f} |"
        )
    lazy = [r for (mode, _), rows in results.items() if mode == "lazy" for r in rows]
    scrolled = statistics.median(r["peak_rss_mb_all_slices"] for r in lazy)
    print(f"\nlazy, after every slice was shown once: median peak RSS {scrolled:.0f} MB")
    reader = [r["reader_s"] for r in lazy]
    print(
        f"the reader's own share (scan, lazy array, contrast limits; warm): "
        f"median {statistics.median(reader):.3f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
