"""Streaming benchmark: SeriesPatchDataset against MONAI LoadImaged(PydicomReader).

Builds (once, cached under ``benchmarks/_work/streaming_*``) a cohort of DICOM series of
random int16 voxels written by ``write_dicom_series``, then runs every configuration in a
fresh Python process: one epoch over all series producing random patches, with
``num_workers`` 0 and 2 and 1 or 4 patches per volume, for SeriesPatchDataset, MONAI
``LoadImaged(PydicomReader)`` + ``RandSpatialCropSamplesd``, and a plain generator over
``load_dicom`` (no workers: the floor any dataset built on that reader has to pay).
Each process records its throughput (volumes per second, worker start-up included) and
its peak memory, sampled every 50 ms over itself and its DataLoader workers, above a
baseline taken after the imports:

* RSS: the sum of resident sets. Forked workers count the parent's pages they touch again,
  so this overstates what the machine spends;
* anonymous PSS: heap and shared-memory pages (``Pss_Anon + Pss_Shmem`` from
  ``/proc/<pid>/smaps_rollup``), those shared between the processes split among them: the
  physical memory the run really holds. File-backed pages (libraries) are left out, since
  their share depends on what other users of the machine have mapped.

Memory is also given in volumes: one volume is the series' int16 voxels (21 MB at
256x256x160).

Usage::

    python benchmarks/bench_streaming.py                 # 20 series of 160x256x256, 96^3
    python benchmarks/bench_streaming.py --series 4 --shape 64 128 128 --patch 48  # quick
    python benchmarks/bench_streaming.py --write-docs    # also update docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DOCS = HERE.parent / "docs" / "benchmarks.md"
SECTION = "## Streaming"
RESULTS_START = "<!-- bench_streaming.py results: start -->"
RESULTS_END = "<!-- bench_streaming.py results: end -->"
NAMES = {
    "ours": "SeriesPatchDataset",
    "plain": "plain generator (load_dicom + crop)",
    "monai": "MONAI LoadImaged(PydicomReader)",
}


# -- the cohort ----------------------------------------------------------------------------
def build_cohort(work: Path, n_series: int, shape: tuple[int, int, int]) -> list[Path]:
    """``n_series`` DICOM folders of ``shape`` (z, y, x) int16, written once and reused."""
    import numpy as np

    from napari_mrisynth.io.dicom_write import write_dicom_series
    from napari_mrisynth.volume import Volume

    root = work / f"streaming_{shape[0]}x{shape[1]}x{shape[2]}"
    folders = []
    for i in range(n_series):
        folder = root / f"series-{i:03d}"
        done = root / f"series-{i:03d}.complete"  # beside the folder: readers scan inside it
        if not done.exists():
            rng = np.random.default_rng(i)
            data = rng.integers(0, 1200, size=shape, dtype=np.int16)
            volume = Volume(data, (0.9375, 0.9375, 1.2), (-120.0, -120.0, -96.0 + i))
            write_dicom_series(volume, folder, series_number=i + 1, seed=i)
            done.touch()
        folders.append(folder)
    return folders


# -- one configuration, in its own process -------------------------------------------------
class MemorySampler:
    """Peak summed RSS and anonymous PSS of this process and its children, in a thread."""

    def __init__(self, interval: float = 0.05):
        import psutil

        self._me = psutil.Process()
        self._interval = interval
        self._stop = threading.Event()
        self.peak_rss = self.peak_pss = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> tuple[int, int]:
        import psutil

        rss = pss = 0
        for process in [self._me, *self._me.children(recursive=True)]:
            try:
                rss += process.memory_info().rss
                pss += _anonymous_pss(process.pid)
            except (psutil.Error, OSError):  # a worker that just exited
                continue
        return rss, pss

    def _run(self) -> None:
        while not self._stop.is_set():
            rss, pss = self.sample()
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
            time.sleep(self._interval)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _anonymous_pss(pid: int) -> int:
    """Bytes of heap and shared memory a process holds, pages shared with others split.

    File-backed pages (torch's libraries) are left out: other engineers' processes map the
    same files, so their share of them moves with what else runs on the machine.
    """
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split(":", 1)
        fields[name] = int(value.split()[0]) * 1024
    return fields["Pss_Anon"] + fields["Pss_Shmem"]


def _ours(folders, patch, patches, workers, seed):
    from torch.utils.data import DataLoader

    from napari_mrisynth.io.streaming import SeriesPatchDataset

    dataset = SeriesPatchDataset(folders, patch_size=patch, patches_per_volume=patches, seed=seed)
    return DataLoader(dataset, batch_size=patches, num_workers=workers)


class _PlainGenerator:
    """The floor: load, cut, stack, in one process, no dataset machinery."""

    def __init__(self, folders, patch, patches, seed):
        self.folders, self.patch, self.patches, self.seed = folders, patch, patches, seed

    def __iter__(self):
        import numpy as np
        import torch

        from napari_mrisynth.io.dicom import load_dicom

        rng = np.random.default_rng(self.seed)
        for folder in rng.permutation(len(self.folders)):
            data = load_dicom(self.folders[folder]).data
            cuts = []
            for _ in range(self.patches):
                z, y, x = (rng.integers(0, n - self.patch + 1) for n in data.shape)
                cut = data[z : z + self.patch, y : y + self.patch, x : x + self.patch]
                cuts.append(torch.from_numpy(cut.astype(np.float32))[None])
            del data
            yield {"image": torch.stack(cuts)}


def _plain(folders, patch, patches, workers, seed):
    if workers:
        raise ValueError("the plain generator runs in one process")
    return _PlainGenerator(folders, patch, patches, seed)


def _monai(folders, patch, patches, workers, seed):
    from monai.data import DataLoader, Dataset, PydicomReader
    from monai.transforms import (
        Compose,
        EnsureChannelFirstd,
        LoadImaged,
        RandSpatialCropSamplesd,
    )
    from monai.utils import set_determinism

    set_determinism(seed)
    transform = Compose(
        [
            LoadImaged(keys="image", reader=PydicomReader()),
            EnsureChannelFirstd(keys="image"),
            RandSpatialCropSamplesd(
                keys="image", roi_size=(patch,) * 3, num_samples=patches, random_size=False
            ),
        ]
    )
    dataset = Dataset([{"image": str(f)} for f in folders], transform)
    return DataLoader(dataset, batch_size=1, shuffle=True, num_workers=workers)


def run_one(config: dict) -> dict:
    """Import, take the baseline, stream one epoch per repeat; throughput and peak memory."""
    import numpy as np
    import torch  # noqa: F401  (imported before the baseline, as a training script would)

    import napari_mrisynth.io.streaming  # noqa: F401  (both pipelines start from the same imports)

    folders = [Path(f) for f in config["folders"]]
    build = {"ours": _ours, "plain": _plain, "monai": _monai}[config["pipeline"]]
    loader = build(folders, config["patch"], config["patches"], config["workers"], config["seed"])
    sampler = MemorySampler()
    baseline_rss, baseline_pss = sampler.sample()
    seconds, shapes = [], set()
    with sampler:
        for _ in range(config["epochs"]):
            start = time.perf_counter()
            patches = 0
            for batch in loader:
                image = batch["image"]
                shapes.add(tuple(image.shape[1:]))
                patches += image.shape[0]
                float(image.mean())  # a consumer that touches every patch
            seconds.append(time.perf_counter() - start)
    volume_bytes = int(np.prod(config["shape"])) * 2
    return {
        **{k: v for k, v in config.items() if k != "folders"},
        "series": len(folders),
        "patches_seen": patches,
        "patch_shapes": sorted(shapes),
        "seconds": seconds,
        "volumes_per_s": len(folders) / min(seconds),
        "baseline_rss_mb": baseline_rss / 2**20,
        "baseline_pss_mb": baseline_pss / 2**20,
        "peak_rss_above_mb": (sampler.peak_rss - baseline_rss) / 2**20,
        "peak_pss_above_mb": (sampler.peak_pss - baseline_pss) / 2**20,
        "volume_mb": volume_bytes / 2**20,
    }


# -- the driver ----------------------------------------------------------------------------
def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def _commit() -> str:
    """Last commit of the io package (reader and dataset), and whether it has edits."""
    io = str(HERE.parent / "src" / "napari_mrisynth" / "io")
    git = ["git", "-C", str(HERE.parent)]
    last = subprocess.run([*git, "log", "-1", "--format=%h", "--", io], capture_output=True)
    dirty = subprocess.run([*git, "diff", "--quiet", "HEAD", "--", io]).returncode
    return last.stdout.decode().strip() + (" with uncommitted edits" if dirty else "")


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def _best_speed_worst_memory(runs: list[dict]) -> dict:
    """One configuration's runs: the fastest throughput, the largest memory peaks."""
    merged = dict(runs[0])
    merged["seconds"] = [t for r in runs for t in r["seconds"]]
    merged["volumes_per_s"] = max(r["volumes_per_s"] for r in runs)
    for key in ("peak_rss_above_mb", "peak_pss_above_mb"):
        merged[key] = max(r[key] for r in runs)
    return merged


def table(results: list[dict]) -> str:
    """Markdown table; ratios are ours / MONAI for the same workers and patches."""
    monai = {(r["workers"], r["patches"]): r for r in results if r["pipeline"] == "monai"}
    lines = [
        "| pipeline | workers | patches/vol | volumes/s | ×MONAI | peak RSS above baseline "
        "| peak anonymous PSS above baseline | ×MONAI (anon. PSS) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ref = monai.get((r["workers"], r["patches"]))
        speed = f"{r['volumes_per_s'] / ref['volumes_per_s']:.2f}" if ref else "–"
        memory = f"{r['peak_pss_above_mb'] / max(ref['peak_pss_above_mb'], 1):.2f}" if ref else "–"
        vol = r["volume_mb"]
        lines.append(
            f"| {NAMES[r['pipeline']]} "
            f"| {r['workers']} | {r['patches']} | {r['volumes_per_s']:.2f} | {speed} "
            f"| {r['peak_rss_above_mb']:.0f} MB ({r['peak_rss_above_mb'] / vol:.1f} vol) "
            f"| {r['peak_pss_above_mb']:.0f} MB ({r['peak_pss_above_mb'] / vol:.1f} vol) "
            f"| {memory} |"
        )
    return "\n".join(lines)


def write_docs(text: str) -> None:
    """Put ``text`` between this script's markers in docs/benchmarks.md (the first time, in
    a new Streaming section); nothing else in the file is touched."""
    from _docs import write_marked

    write_marked(text, SECTION, RESULTS_START, RESULTS_END, DOCS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=20)
    parser.add_argument("--shape", type=int, nargs=3, default=(160, 256, 256), metavar="N")
    parser.add_argument("--patch", type=int, default=96)
    parser.add_argument("--workers", type=int, nargs="+", default=(0, 2))
    parser.add_argument("--patches", type=int, nargs="+", default=(1, 4))
    parser.add_argument("--pipelines", nargs="+", default=("ours", "plain", "monai"))
    parser.add_argument("--epochs", type=int, default=1, help="epochs per process")
    parser.add_argument("--rounds", type=int, default=3, help="processes per configuration")
    parser.add_argument("--work", type=Path, default=HERE / "_work")
    parser.add_argument("--write-docs", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(run_one(json.loads(args.child))))
        return 0

    folders = build_cohort(args.work, args.series, tuple(args.shape))
    for folder in folders:  # warm the page cache, so the first run is not the only cold one
        for path in folder.iterdir():
            path.read_bytes()
    load_before = _uptime()
    configs = [
        {
            "pipeline": pipeline,
            "workers": workers,
            "patches": patches,
            "patch": args.patch,
            "shape": list(args.shape),
            "epochs": args.epochs,
            "seed": 0,
            "folders": [str(f) for f in folders],
        }
        for workers in args.workers
        for patches in args.patches
        for pipeline in args.pipelines
        if not (pipeline == "plain" and workers)
    ]
    runs: dict[int, list[dict]] = {k: [] for k in range(len(configs))}
    # Rounds interleave the configurations, so a burst of load from other jobs hits all.
    for _ in range(args.rounds):
        for k, config in enumerate(configs):
            child = subprocess.run(
                [sys.executable, __file__, "--child", json.dumps(config)],
                capture_output=True,
                text=True,
            )
            if child.returncode:
                sys.stderr.write(child.stderr)
                return child.returncode
            r = json.loads(child.stdout.strip().splitlines()[-1])
            runs[k].append(r)
            print(
                f"{r['pipeline']:5s} workers={r['workers']} patches={r['patches']}: "
                f"{r['volumes_per_s']:.2f} volumes/s, peak RSS +{r['peak_rss_above_mb']:.0f}"
                f" MB, anonymous PSS +{r['peak_pss_above_mb']:.0f} MB (epochs {r['seconds']})",
                flush=True,
            )
    results = [_best_speed_worst_memory(runs[k]) for k in range(len(configs))]
    load_after = _uptime()
    report = table(results)
    print(report)
    print(json.dumps(results, indent=1), file=sys.stderr)
    if args.write_docs:
        shape = "×".join(map(str, args.shape[::-1]))
        write_docs(
            f"`python benchmarks/bench_streaming.py` — {args.series} DICOM series of {shape} "
            f"int16 (x×y×z, one file per slice, vendor-sized headers) streamed into random "
            f"{args.patch}³ patches. Each configuration ran {args.rounds} times in a fresh "
            f"process ({args.epochs} epoch each, rounds interleaved), DataLoader worker "
            "start-up included; the table gives the best throughput and the largest memory "
            f"peaks of those runs. `io` package at commit {_commit()}.\n\n"
            f"- Machine: {_cpu()}, shared with other engineers' jobs.\n"
            f"- Load: before `{load_before}`; after `{load_after}`.\n"
            "- Reader behind SeriesPatchDataset: `napari_mrisynth.io.files.load_volume` "
            "(`io.dicom.load_dicom` for folders).\n"
            f"- Baseline after imports: {results[0]['baseline_rss_mb']:.0f} MB RSS. "
            f"One volume = {results[0]['volume_mb']:.0f} MB (int16 voxels).\n\n"
            f"{report}\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
