"""End-to-end segmentation and classification latency, beside a plain MONAI pipeline.

Usage::

    python benchmarks/bench_inference.py --runs 5 --write-docs          # this machine's CPU
    python benchmarks/bench_inference.py --device cuda --runs 10         # a GPU machine

For a simulated T1 head at 2 mm and at 1 mm (NIfTI on disk, skull and neck, a random pose),
it times ``napari_mrisynth.models.inference.segment`` and ``classify`` from the file path to
labels (or probabilities) on the source grid: loading, affine registration to the model
space, resampling, normalisation, sliding-window inference and the exact inverse. The model
is loaded once, before timing (the widgets and batch CLI keep it loaded); the first run is a
warm-up and the median of the rest is reported, with the stages' medians.

Reference in the same run: a plain MONAI pipeline with the same network and the same model
spacing -- ``LoadImage`` + ``EnsureChannelFirst`` + ``Orientation`` + ``Spacing`` +
``ScaleIntensityRangePercentiles``, ``sliding_window_inference``, and MONAI's ``Invertd``
back to the source grid. It does not register the head to the model space (so it is not
pose-invariant and gives worse masks on a tilted head); it is there to show what the
registration and our resampling cost over the usual MONAI recipe.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / "_work" / "inference"
DOCS = ROOT / "docs" / "benchmarks.md"
SECTION = "## Segmentation and classification latency"
TARGETS = {("cuda", 1.0): 0.5, ("cpu", 2.0): 3.0}


def sources() -> dict[float, Path]:
    """Simulated bvFTD heads at 2 mm and 1 mm, written once."""
    from napari_mrisynth.cohort import simulate_subject
    from napari_mrisynth.io.files import save_volume

    WORK.mkdir(parents=True, exist_ok=True)
    out = {}
    for spacing in (2.0, 1.0):
        path = WORK / f"bvftd-{spacing:g}mm_T1w.nii.gz"
        if not path.exists():
            subject = simulate_subject("bench", "bvFTD", 11, spacing)
            save_volume(subject.t1, path)
        out[spacing] = path
    return out


def time_ours(task: str, model, path: Path, device: str, runs: int) -> dict:
    from napari_mrisynth.models.inference import classify, get_model, segment

    get_model(model, task, device)  # loaded once, as in a batch or a widget
    run = segment if task == "segmentation" else classify
    walls, stages = [], []
    for index in range(runs + 1):
        _sync(device)
        start = time.perf_counter()
        result = run(path, model, device=device)
        _sync(device)
        if index:
            walls.append(time.perf_counter() - start)
            stages.append(result.timings)
    keys = stages[0].keys()
    return {
        "median": statistics.median(walls),
        "min": min(walls),
        "stages": {k: statistics.median(s[k] for s in stages) for k in keys},
        "card": result.card,
        "device": result.device,
    }


def time_monai(card, network, path: Path, device: str, runs: int) -> dict:
    """The usual MONAI recipe with the same network and spacing (no registration)."""
    import torch
    from monai.inferers import sliding_window_inference
    from monai.transforms import (
        Compose,
        EnsureChannelFirstd,
        Invertd,
        LoadImaged,
        Orientationd,
        ScaleIntensityRangePercentilesd,
        Spacingd,
    )

    norm = card.input.normalisation
    pre = Compose(
        [
            LoadImaged("image", image_only=False),
            EnsureChannelFirstd("image"),
            Orientationd("image", axcodes="LPS"),
            Spacingd("image", pixdim=tuple(card.input.spacing), mode="bilinear"),
            ScaleIntensityRangePercentilesd(
                "image", norm.get("lower", 0.5), norm.get("upper", 99.5), 0.0, 1.0, clip=True
            ),
        ]
    )
    post = Invertd("pred", transform=pre, orig_keys="image", nearest_interp=False)
    roi = tuple(card.inference.get("roi_size", card.input.shape))
    walls = []
    for index in range(runs + 1):
        _sync(device)
        start = time.perf_counter()
        data = pre({"image": str(path)})
        x = data["image"][None].to(device)
        with torch.inference_mode():
            if card.task == "segmentation":
                logits = sliding_window_inference(x, roi, 2, network, overlap=0.25, mode="gaussian")
            else:  # a classifier takes the whole grid: pad or crop the resampled scan to it
                from monai.transforms import ResizeWithPadOrCrop

                logits = network(ResizeWithPadOrCrop(roi)(x[0])[None])
        data["pred"] = torch.softmax(logits[0].float(), 0)
        if card.task == "segmentation":
            inverted = post(data)
            labels = inverted["pred"].argmax(0).to(torch.uint8).cpu().numpy()
            assert labels.ndim == 3
        _sync(device)
        if index:
            walls.append(time.perf_counter() - start)
    return {"median": statistics.median(walls), "min": min(walls)}


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def machine() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (torch {torch.__version__})"
    cpu = platform.processor() or platform.machine()
    try:
        model = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
        cpu = model
    except (OSError, StopIteration):
        pass
    import os

    return f"{cpu}, {os.cpu_count()} cores (torch {torch.__version__}, CPU)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--segmentation-model", default=None)
    parser.add_argument("--classification-model", default=None)
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args(argv)

    from napari_mrisynth.models.inference import get_model

    paths = sources()
    load = _uptime()
    rows = []
    for task, model in (
        ("segmentation", args.segmentation_model),
        ("classification", args.classification_model),
    ):
        loaded = get_model(model, task, args.device)
        for spacing, path in paths.items():
            ours = time_ours(task, loaded.card, path, args.device, args.runs)
            monai = time_monai(loaded.card, loaded.network, path, args.device, args.runs)
            rows.append((task, spacing, ours, monai))
            print(
                f"{task:14s} {spacing:g} mm: ours {ours['median']:.3f} s "
                f"(stages {', '.join(f'{k} {v:.3f}' for k, v in ours['stages'].items())}); "
                f"MONAI recipe {monai['median']:.3f} s",
                flush=True,
            )
    text = report(rows, args, load, _uptime())
    print(text)
    if args.write_docs:
        write_docs(text)
    return 0


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"


def report(rows: list, args: argparse.Namespace, before: str, after: str) -> str:
    device = rows[0][2]["device"]
    kind = "cuda" if device.startswith("cuda") else "cpu"
    lines = [
        SECTION + f" ({kind})",
        "",
        f"`python benchmarks/bench_inference.py --device {args.device} --runs {args.runs}` "
        f"on {machine()}. Median of {args.runs} runs after one warm-up; model loaded "
        "beforehand; source = a simulated bvFTD T1 head with skull and neck in a random pose "
        "(NIfTI on disk). Ours = path to labels/probabilities on the source grid, including "
        "affine registration; the MONAI recipe skips registration.",
        "",
        f"- Load: before `{before}`; after `{after}`.",
        "",
        "| task | model | source | source grid | ours (s) | stages (s) | MONAI recipe (s) "
        "| ours ÷ MONAI | target |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for task, spacing, ours, monai in rows:
        card = ours["card"]
        target = TARGETS.get((kind, spacing))
        verdict = "–"
        if target is not None and task == "segmentation":
            verdict = f"≤ {target} s: {'met' if ours['median'] <= target else 'NOT met'}"
        stages = ", ".join(f"{k} {v:.3f}" for k, v in ours["stages"].items())
        shape = "×".join(str(s) for s in _shape(spacing))
        lines.append(
            f"| {task} | {card.ref} | {spacing:g} mm | {shape} | **{ours['median']:.3f}** | "
            f"{stages} | {monai['median']:.3f} | {ours['median'] / monai['median']:.2f} | "
            f"{verdict} |"
        )
    lines.append("")
    return "\n".join(lines)


def _shape(spacing: float) -> tuple[int, ...]:
    import nibabel as nib

    return tuple(nib.load(str(WORK / f"bvftd-{spacing:g}mm_T1w.nii.gz")).shape)


def write_docs(text: str) -> None:
    """Put ``text``'s table and preamble between this device's markers in its latency
    section of docs/benchmarks.md (the first time: a new section at the end of the file).
    Nothing outside the markers is touched, so the hand-written reading of the figures
    below the table survives a re-run."""
    from _docs import write_marked

    heading, _, body = text.partition("\n")
    kind = "cuda" if heading.endswith("(cuda)") else "cpu"
    write_marked(body, heading, f"<!-- bench_inference.py {kind} results: start -->",
                 f"<!-- bench_inference.py {kind} results: end -->", DOCS)  # fmt: skip


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    sys.exit(main())
