"""Generator throughput and training-step cost per family, beside MONAI's own sampler.

Usage::

    python benchmarks/bench_synthesis.py --runs 5 --write-docs         # this machine's CPU
    python benchmarks/bench_synthesis.py --device cuda --runs 10        # a GPU machine
    python benchmarks/bench_synthesis.py --quick                        # smoke check

What is timed:

1. **Generation throughput** of the conditional VAE, GAN and latent diffusion model (LDM)
   through the public :func:`napari_mrisynth.generate` -- seeded noise per volume, the
   network, the model-grid ``Volume`` and the provenance record of every volume; no files
   are written. The demo generators (``{ldm,vae,gan}-bvftd-demo`` from the registry: the
   bundled ones, 4 mm grid 48x56x48) are used when they exist, else untrained networks of the same
   architecture (``architecture_for`` on the same grid; the time does not depend on the
   weights). Batch 1 and batch 4; the model is loaded beforehand (as in a widget or the
   CLI), one warm-up call, then the median of ``--runs``. The LDM samples with DDIM, 50
   steps (``--steps``), guidance 1 (one UNet pass per step).

   Reference in the same run, same networks and same noise: for the LDM, MONAI's own
   ``LatentDiffusionInferer.sample`` with a ``DDIMScheduler`` built from the model's noise
   schedule, the same 50 steps, ``mode="concat"`` and the condition as constant maps on the
   latent grid (``conditioning``; the inferer concatenates it after the latents along the
   channels, as our UNet was trained, and passes the timestep as one value for the whole
   batch), decoded by the same autoencoder; for the VAE and GAN,
   the bare network forward (``network.generate`` on a ``torch.randn`` batch), so the ratio is
   what ``generate()`` adds. Both sides copy the result back to host memory. The first
   volume of each family is also compared with the reference's (same noise): "max |diff|".

2. **Full size**: the LDM architecture with the family defaults on the 160x224x160 grid of
   Pinaya et al. 2022 (1 mm; latent 40x56x40, UNet bottleneck 20x28x20), untrained weights,
   50 DDIM steps, batch 1, through ``generate()``, in a fresh process (for its peak memory).
   A one-step call first is the warm-up; its time (one UNet pass + decoding) and the
   50-step time give the time per DDIM step. Target: <= 0.76 s per volume on one H100
   (ten times Pinaya et al.'s 7.6 s on a TITAN RTX).

3. **Training steps** at the demo configuration (4 mm grid, batch 4): one optimiser step of
   ``VAEModule`` (conditional VAE), ``GANModule`` (its manual critic + generator step, with
   the lazy R1 penalty on every ``r1_every``-th global step), the LDM's autoencoder
   (``VAEModule`` with ``network=``) and ``DiffusionModule`` on latents, each under a real
   Lightning ``Trainer`` (no logger, no checkpoints), timed from ``on_train_batch_start`` to
   ``on_train_batch_end``; one warm-up step, then the median of ``--train-steps``. Each
   runs in a fresh process; peak memory is ``torch.cuda.max_memory_allocated`` on CUDA, and
   on the CPU the process's peak RSS (``getrusage``) above its RSS after the imports, i.e.
   network, optimiser state, the batches and the activations.

The parts run in that order except the full size, which comes last (the longest); with
``--write-docs`` the docs are rewritten after each part, so an interrupted run still leaves
the figures it has. ``--quick`` is a smoke check of every path: 8 mm grids, a 32x48x32
stand-in for the full size, 5 DDIM steps, one run (about a minute on 2 CPU cores). Timings
on CUDA are bracketed by ``torch.cuda.synchronize()``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / "_work" / "synthesis"
DOCS = ROOT / "docs" / "benchmarks.md"
SECTION = "## Synthesis throughput and training steps"
FAMILIES = ("vae", "gan", "ldm")
FULL_SHAPE = (160, 224, 160)
QUICK_FULL_SHAPE = (32, 48, 32)  # --quick: the same path on a small grid
#: Seconds per full-size volume on one H100 (the issue's target: 10x Pinaya et al. 2022).
FULL_TARGET_S = 0.76
PINAYA_S = 7.6
STAGES = ("vae", "gan", "ldm-autoencoder", "ldm-diffusion")


# --------------------------------------------------------------------------- helpers


def _sync(device: Any) -> None:
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _rss() -> int:
    """Current resident set size, bytes."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import psutil

    return int(psutil.Process().memory_info().rss)


def _peak_rss() -> int:
    """Peak resident set size of this process so far, bytes (Linux: ru_maxrss in KiB)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"


def machine(device: str) -> str:
    import monai
    import torch

    versions = f"torch {torch.__version__}, MONAI {monai.__version__}"
    if str(device).startswith("cuda") and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} ({versions})"
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads ({versions})"


def _options(quick: bool) -> Any:
    from napari_mrisynth.synthesis.train import GenerativeOptions

    return GenerativeOptions(spacing=8.0 if quick else 4.0, batch_size=4)


def _shape(card: Any) -> str:
    return "×".join(str(s) for s in card.input.shape)


# --------------------------------------------------------------------------- models


def untrained_card(family: str, spec: Any, model_id: str, root: Path) -> Any:
    """Save an untrained ``family`` generator on ``spec``'s grid (family defaults)."""
    import torch

    from napari_mrisynth.models.card import ModelCard
    from napari_mrisynth.models.conditions import DIAGNOSIS_CLASSES, encoding
    from napari_mrisynth.models.networks import build_network
    from napari_mrisynth.models.saving import save_model
    from napari_mrisynth.synthesis.train import GenerativeOptions, architecture_for

    arch = architecture_for(family, spec.shape, GenerativeOptions(spacing=spec.spacing[0]))
    torch.manual_seed(0)
    network = build_network(arch)
    inference = {
        "family": family,
        "conditions": ["diagnosis"],
        "condition_encoding": encoding(),
        "batch_size": 4,
    }
    if family == "ldm":
        inference.update(sampler="ddim", steps=50, guidance=1.0, eta=0.0)
    card = ModelCard(
        id=model_id,
        version="1.0.0",
        task="generation",
        title=f"untrained {family} (benchmark)",
        architecture=arch,
        labels=list(DIAGNOSIS_CLASSES),
        input=spec,
        inference=inference,
        training={"simulated": True, "trained": False, "seed": 0},
    )
    return save_model(card, network.state_dict(), root, overwrite=True)


def bench_card(family: str, quick: bool, models: Path | None) -> tuple[Any, bool]:
    """The demo generator (``--models`` folder first, then the registry: the bundled
    ``<family>-bvftd-demo``) unless --quick, else an untrained one."""
    from napari_mrisynth.errors import ModelError
    from napari_mrisynth.models.registry import find_model, model_roots
    from napari_mrisynth.synthesis.train import generation_spec

    if not quick:
        roots = ([("folder", models)] if models else []) + model_roots()
        try:
            return find_model(f"{family}-bvftd-demo", task="generation", roots=roots), True
        except ModelError:
            pass
    opts = _options(quick)
    spec = generation_spec(family, opts)
    return untrained_card(family, spec, f"bench-{family}-{opts.spacing:g}mm", WORK / "registry"), (
        False
    )


def full_size_spec(shape: tuple[int, int, int] = FULL_SHAPE) -> Any:
    """A 1 mm InputSpec of ``shape`` (z, y, x), centred on the default 1 mm box."""
    from napari_mrisynth.models.card import InputSpec
    from napari_mrisynth.preprocess import default_model_grid

    fields = default_model_grid(1.0, 16).to_input_spec_fields()
    shape_xyz = fields["shape"][::-1]
    centre = [o + (n - 1) / 2 for o, n in zip(fields["origin"], shape_xyz, strict=True)]
    new_xyz = shape[::-1]
    origin = tuple(c - (n - 1) / 2 for c, n in zip(centre, new_xyz, strict=True))
    return InputSpec(
        spacing=(1.0, 1.0, 1.0), shape=shape, origin=origin, direction=fields["direction"]
    )


# --------------------------------------------------------------------------- generation


def time_generate(card: Any, batch: int, steps: int, device: str, runs: int) -> dict:
    """``generate()`` of ``batch`` volumes in one call: warm-up, then ``runs`` timed calls."""
    from napari_mrisynth import generate
    from napari_mrisynth.models.inference import get_model

    get_model(card, "generation", device)  # loaded once, as in a widget or the CLI
    walls = []
    for index in range(runs + 1):
        _sync(device)
        start = time.perf_counter()
        out = generate(
            card, batch, condition="bvftd", seed=index, device=device, batch_size=batch, steps=steps
        )
        _sync(device)
        if index:
            walls.append(time.perf_counter() - start)
        assert len(out) == batch and out[0].provenance["synthetic"]
    return _summary(walls, batch)


def _reference_sample(network: Any, family: str, noise: Any, condition: Any, steps: int) -> Any:
    """MONAI's LatentDiffusionInferer (LDM) or the bare network forward (VAE, GAN)."""
    import torch

    from napari_mrisynth.models.generators import condition_maps

    with torch.inference_mode():
        if family != "ldm":
            return network.generate(condition, noise)
        from monai.inferers import LatentDiffusionInferer

        scheduler = network.scheduler("ddim")  # DDIMScheduler, the model's noise schedule
        # timesteps on the CPU: MONAI 1.6.1's sample() concatenates them with a CPU tensor
        # (torch.cat fails with CUDA timesteps); it moves each step's t to the noise's device
        scheduler.set_timesteps(num_inference_steps=steps)
        inferer = LatentDiffusionInferer(scheduler, scale_factor=float(network.scale_factor))
        return inferer.sample(
            input_noise=noise,
            autoencoder_model=network.autoencoder,
            diffusion_model=network.unet,
            scheduler=scheduler,
            conditioning=condition_maps(condition, noise),
            mode="concat",
            verbose=False,
        )


def time_reference(card: Any, batch: int, steps: int, device: str, runs: int) -> dict:
    import torch

    from napari_mrisynth.models.conditions import Condition
    from napari_mrisynth.models.inference import get_model

    loaded = get_model(card, "generation", device)
    network, family = loaded.network, card.inference["family"]
    vector = torch.tensor([Condition.parse("bvftd").vector()], dtype=torch.float32)
    condition = vector.expand(batch, -1).to(loaded.device)
    walls = []
    for index in range(runs + 1):
        _sync(device)
        start = time.perf_counter()
        noise = torch.randn(batch, *network.noise_shape).to(loaded.device)
        image = _reference_sample(network, family, noise, condition, steps)
        image = image.float().cpu().numpy()
        _sync(device)
        if index:
            walls.append(time.perf_counter() - start)
    return _summary(walls, batch)


def same_volume(card: Any, steps: int, device: str) -> float:
    """max |ours - reference| for volume 0 of seed 0 (same noise, clamped like ours)."""
    import numpy as np
    import torch

    from napari_mrisynth import generate
    from napari_mrisynth.models.conditions import Condition
    from napari_mrisynth.models.generators import INTENSITY_MAX
    from napari_mrisynth.models.inference import get_model
    from napari_mrisynth.synthesis.generate import volume_noise

    loaded = get_model(card, "generation", device)
    network = loaded.network
    ours = np.asarray(generate(card, 1, seed=0, device=device, steps=steps)[0].volume.data)
    noise = volume_noise(network.noise_shape, 0, 0)[None].to(loaded.device)
    condition = torch.tensor([Condition.parse("bvftd").vector()]).to(loaded.device)
    ref = _reference_sample(network, card.inference["family"], noise, condition, steps)
    ref = torch.clamp(ref, 0.0, INTENSITY_MAX).float().cpu().numpy()[0, 0]
    return float(np.abs(ours - ref).max())


def _summary(walls: list[float], batch: int) -> dict:
    median = statistics.median(walls)
    return {
        "median": median,
        "min": min(walls),
        "max": max(walls),
        "per_volume": median / batch,
        "volumes_per_s": batch / median,
        "runs": len(walls),
    }


# --------------------------------------------------------------------------- full size


def full_size_child(args: argparse.Namespace) -> dict:
    """Fresh process: untrained LDM at FULL_SHAPE, generate() 1 step, then ``steps`` steps."""
    from napari_mrisynth import generate
    from napari_mrisynth.models.inference import get_model

    shape = QUICK_FULL_SHAPE if args.quick else FULL_SHAPE
    name = "bench-ldm-" + "x".join(map(str, shape))
    card = untrained_card("ldm", full_size_spec(shape), name, WORK / "registry")
    if str(args.device).startswith("cuda"):
        import torch

        torch.cuda.reset_peak_memory_stats()
    base = _rss()
    loaded = get_model(card, "generation", args.device)
    network = loaded.network

    def timed(steps: int) -> float:
        _sync(args.device)
        start = time.perf_counter()
        out = generate(card, 1, seed=0, device=args.device, batch_size=1, steps=steps)
        _sync(args.device)
        assert tuple(out[0].volume.shape) == shape
        return time.perf_counter() - start

    one_step = timed(1)  # warm-up: one UNet pass and the decoder
    walls = [timed(args.steps) for _ in range(args.full_size_runs)]
    median = statistics.median(walls)
    result = {
        "shape": list(card.input.shape),
        "latent": list(network.latent_shape),
        "noise_shape": list(network.noise_shape),
        "parameters": int(card.weights.get("parameters", 0)),
        "steps": args.steps,
        "walls": walls,
        "median": median,
        "one_step": one_step,
        "per_step": (median - one_step) / max(args.steps - 1, 1),
        "peak_rss_above": _peak_rss() - base,
    }
    if str(args.device).startswith("cuda"):
        import torch

        result["cuda_peak"] = int(torch.cuda.max_memory_allocated())
    return result


# --------------------------------------------------------------------------- training


def train_child(stage: str, args: argparse.Namespace) -> dict:
    """Fresh process: ``--train-steps`` optimiser steps of one stage under a Trainer."""
    import warnings

    warnings.filterwarnings("ignore")
    import lightning.pytorch as pl
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from napari_mrisynth.models.networks import build_network, count_parameters
    from napari_mrisynth.synthesis.train import architecture_for, generation_spec
    from napari_mrisynth.training.generator_modules import DiffusionModule, GANModule, VAEModule

    cuda = str(args.device).startswith("cuda")
    base = _rss()
    family = stage.split("-")[0]
    opts = _options(args.quick)
    spec = generation_spec(family, opts)
    arch = architecture_for(family, spec.shape, opts)
    torch.manual_seed(0)
    batches = args.train_steps + 1
    n = opts.batch_size * batches
    x = torch.rand(n, 1, *spec.shape) * 1.5
    c = torch.tensor([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]]).repeat(n // 2 + 1, 1)[:n]
    if stage == "vae":
        module = VAEModule(arch, lr=1e-3, kl_weight=0.02)
        trained = module.network
    elif stage == "gan":
        module = GANModule(arch, lr=2e-4)
        trained = module.network
    elif stage == "ldm-autoencoder":
        network = build_network(arch)
        module = VAEModule(arch, lr=1e-3, network=network, kl_weight=1e-6)
        trained = network.autoencoder
    else:  # ldm-diffusion: the UNet on scaled latents, autoencoder frozen
        network = build_network(arch)
        module = DiffusionModule(network, diffusion_lr=2.5e-4)
        trained = network.unet
        x = torch.randn(n, *network.noise_shape)
    loader = DataLoader(TensorDataset(x, c), batch_size=opts.batch_size, shuffle=False)
    timer = _StepTimer(args.device, stage == "gan")
    trainer = pl.Trainer(
        accelerator="gpu" if cuda else "cpu",
        devices=1,
        max_epochs=1,
        limit_train_batches=batches,
        logger=False,
        callbacks=[timer],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    ready = _rss()  # network and batches built, before the Trainer starts
    trainer.fit(module, loader)
    steps = timer.steps[1:]  # the first is the warm-up
    result = {
        "stage": stage,
        "input": list(x.shape[1:]),
        "batch": opts.batch_size,
        "trained_parameters": count_parameters(trained),
        "steps": [s for s, _ in steps],
        "median": statistics.median(s for s, _ in steps),
        "peak_rss_above": _peak_rss() - base,
        "ready_rss_above": ready - base,
    }
    if stage == "gan":
        with_r1 = [s for s, r1 in steps if r1]
        without = [s for s, r1 in steps if not r1]
        result["median_r1"] = statistics.median(with_r1) if with_r1 else None
        result["median_no_r1"] = statistics.median(without) if without else None
        result["r1_every"] = int(module.hparams.r1_every)
        result["global_steps"] = timer.global_steps
    if cuda:
        result["cuda_peak"] = int(torch.cuda.max_memory_allocated())
    return result


def _timer_base() -> type:
    import lightning.pytorch as pl

    return pl.Callback


class _StepTimer(_timer_base()):  # type: ignore[misc]
    """Wall time of each training batch: forward, backward and the optimiser step(s)."""

    def __init__(self, device: str, gan: bool) -> None:
        self.device, self.gan = device, gan
        self.steps: list[tuple[float, bool]] = []
        self.global_steps: list[int] = []

    def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, idx: int) -> None:
        self.r1 = bool(
            self.gan
            and module.hparams.r1_gamma > 0
            and module.global_step % module.hparams.r1_every == 0
        )
        self.global_steps.append(int(module.global_step))
        _sync(self.device)
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: Any, module: Any, out: Any, batch: Any, idx: int) -> None:
        _sync(self.device)
        self.steps.append((time.perf_counter() - self.start, self.r1))


# --------------------------------------------------------------------------- driver


def _child(kind: str, args: argparse.Namespace) -> dict:
    """Run ``kind`` (a training stage or "full-size") in a fresh Python process."""
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        kind,
        "--device",
        args.device,
        "--train-steps",
        str(args.train_steps),
        "--steps",
        str(args.steps),
        "--full-size-runs",
        str(args.full_size_runs),
    ]
    command += ["--quick"] if args.quick else []
    command += ["--threads", str(args.threads)] if args.threads else []
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{kind} child failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="timed generate() calls")
    parser.add_argument("--train-steps", type=int, default=None, help="default: --runs")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps (LDM)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batches", type=int, nargs="+", default=(1, 4))
    parser.add_argument("--families", nargs="+", default=FAMILIES, choices=FAMILIES)
    parser.add_argument("--full-size-runs", type=int, default=1, help="0: skip full size")
    parser.add_argument("--models", type=Path, help="a registry folder searched first")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke check: 8 mm grids, 32x48x32 full size, 1 run, 5 steps",
    )
    parser.add_argument("--stages", nargs="*", default=STAGES, choices=STAGES)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--note", action="append", default=[], help="a line for the docs")
    parser.add_argument("--write-docs", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.steps = 1, 5
        args.full_size_runs = min(args.full_size_runs, 1)
    if args.train_steps is None:
        args.train_steps = args.runs
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.child:
        result = (
            full_size_child(args) if args.child == "full-size" else train_child(args.child, args)
        )
        print(json.dumps(result))
        return 0

    WORK.mkdir(parents=True, exist_ok=True)
    before, started = _uptime(), datetime.now(timezone.utc)
    generation: list[dict] = []
    training: list[dict] = []
    full: dict | None = None

    def publish(final: bool = False) -> None:
        """The report so far (into the docs after every part, so a long run leaves figures)."""
        text = report(args, generation, full, training, before, _uptime(), started, final)
        if final:
            print(text)
        if args.write_docs:
            write_docs(text, args.device)

    for family in args.families:
        card, trained = bench_card(family, args.quick, args.models)
        steps = args.steps if family == "ldm" else 0
        diff = same_volume(card, steps, args.device)
        for batch in args.batches:
            ours = time_generate(card, batch, steps, args.device, args.runs)
            ref = time_reference(card, batch, steps, args.device, args.runs)
            generation.append(
                {"family": family, "card": card, "trained": trained, "batch": batch,
                 "steps": steps, "ours": ours, "ref": ref, "diff": diff}
            )  # fmt: skip
            print(
                f"{family} batch {batch}: generate() {ours['per_volume']:.3f} s/volume "
                f"({ours['volumes_per_s']:.2f}/s); reference {ref['per_volume']:.3f} s/volume; "
                f"ratio {ours['median'] / ref['median']:.2f}; max |diff| {diff:.2g}",
                flush=True,
            )
    publish()
    for stage in args.stages:
        result = _child(stage, args)
        training.append(result)
        print(f"train {stage}: {result['median']:.3f} s/step, peak {_memory(result)}", flush=True)
        publish()
    if args.full_size_runs > 0:
        full = _child("full-size", args)
        print(f"full size: {full['median']:.1f} s/volume ({full['per_step']:.2f} s/step)")
    publish(final=True)
    return 0


# --------------------------------------------------------------------------- report


def _mb(value: float) -> str:
    return f"{value / 2**20:,.0f} MB"


def _memory(result: dict) -> str:
    if "cuda_peak" in result:
        return f"{_mb(result['cuda_peak'])} (CUDA max allocated)"
    return f"+{_mb(result['peak_rss_above'])} RSS"


def report(
    args: argparse.Namespace,
    generation: list[dict],
    full: dict | None,
    training: list[dict],
    before: str,
    after: str,
    started: datetime,
    final: bool = True,
) -> str:
    """This run's block of the docs section (Markdown; no section heading)."""
    cuda = str(args.device).startswith("cuda")
    argv = [a for a in (sys.argv[1:] if argv_is_ours() else []) if a != "--write-docs"]
    command = " ".join(["python benchmarks/bench_synthesis.py", shlex.join(argv)]).strip()
    lines = [
        f"### {'GPU' if cuda else 'CPU'}"
        + (" (quick smoke check, not a measurement)" if args.quick else ""),
        "",
        f"`{command}` on {started:%Y-%m-%d %H:%M} UTC. Machine: {machine(args.device)}.",
        "",
        f"- Load: before `{before}`; "
        + (f"after `{after}`." if final else f"at `{after}` (run in progress)."),
        *(f"- {note}" for note in args.note),
        "",
        f"**Generation**, median of {args.runs} `generate()` calls after one warm-up "
        "(model loaded beforehand; seeded noise per volume, network, `Volume` and provenance; "
        "no files). Reference in the same run, same networks and noise: MONAI "
        '`LatentDiffusionInferer.sample` with a `DDIMScheduler` (`mode="concat"`, the '
        "condition maps as `conditioning`) for the LDM, the bare network forward for the VAE "
        "and GAN. max \\|diff\\|: volume 0 of seed 0, ours against the reference's.",
        "",
        "| family | model | grid | DDIM steps | batch | ours s/volume | ours volumes/s "
        "| reference | reference s/volume | ours ÷ reference | max \\|diff\\| |",
        "|---|---|---|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for row in generation:
        card, ours, ref = row["card"], row["ours"], row["ref"]
        model = f"`{card.ref}`" if row["trained"] else f"untrained `{card.architecture['name']}`"
        reference = "MONAI inferer" if row["family"] == "ldm" else "bare forward"
        lines.append(
            f"| {row['family']} | {model} | {_shape(card)} | {row['steps'] or '–'} "
            f"| {row['batch']} | **{ours['per_volume']:.3f}** | {ours['volumes_per_s']:.2f} "
            f"| {reference} | {ref['per_volume']:.3f} | {ours['median'] / ref['median']:.2f} "
            f"| {row['diff']:.1e} |"
        )
    if not generation:
        lines.append("| (not finished when this was written) |||||||||||")
    lines.append("")

    batch = training[0]["batch"] if training else 4
    lines += [
        f"**Training steps** at the demo configuration (batch {batch}, random data on the "
        f"generation grid): one optimiser step under a Lightning `Trainer`, median of "
        f"{args.train_steps} after one warm-up step, each stage in a fresh process. "
        + (
            "Peak memory: `torch.cuda.max_memory_allocated`."
            if cuda
            else "Peak memory: the process's peak RSS above its RSS after the imports; "
            '"before fit" is the part already taken once the network and the batches exist.'
        ),
        "",
        "| stage | module | input per sample (C×z×y×x) | trained parameters | s/step "
        "| peak memory |" + ("" if cuda else " before fit |"),
        "|---|---|---|---:|---:|---|" + ("" if cuda else "---|"),
    ]
    modules = {
        "vae": "`VAEModule` (ConditionalVAE)",
        "gan": "`GANModule` (critic + generator)",
        "ldm-autoencoder": "`VAEModule(network=)` (LDM autoencoder)",
        "ldm-diffusion": "`DiffusionModule` (UNet on latents)",
    }
    for result in training:
        seconds = f"**{result['median']:.3f}**"
        if result["stage"] == "gan" and result.get("median_r1") and result.get("median_no_r1"):
            seconds += f" (R1 steps {result['median_r1']:.3f}, others {result['median_no_r1']:.3f})"
        row = (
            f"| {result['stage']} | {modules[result['stage']]} "
            f"| {'×'.join(map(str, result['input']))} | {result['trained_parameters']:,} "
            f"| {seconds} | {_memory(result)} |"
        )
        if not cuda:
            row += f" +{_mb(result['ready_rss_above'])} |"
        lines.append(row)
    for stage in args.stages[len(training) :]:
        lines.append(
            f"| {stage} | (not finished when this was written) |||||" + ("" if cuda else "|")
        )
    gan = next((r for r in training if r["stage"] == "gan"), None)
    if gan is not None:
        lines += [
            "",
            f"GAN global steps at the start of each batch: {gan['global_steps']} (R1 when "
            f"global step % {gan['r1_every']} == 0).",
        ]
    lines.append("")

    if args.full_size_runs > 0:
        shape = QUICK_FULL_SHAPE if args.quick else FULL_SHAPE
        grid = "×".join(map(str, shape))
        what = "a small stand-in grid" if args.quick else "the grid of Pinaya et al. 2022"
        target = f"≤ {FULL_TARGET_S} s on one H100"
        if full is None:
            lines += [f"**Full size** ({grid}): not finished when this was written.", ""]
        else:
            if cuda:
                name = machine(args.device)
                verdict = f"{target}: " + ("met" if full["median"] <= FULL_TARGET_S else "NOT met")
                verdict += "" if "H100" in name else f" (measured on {name.split(' (')[0]})"
            else:
                verdict = f"{target}: GPU not measured (no GPU lent to this task)"
            lines += [
                f"**Full size**: the LDM with the family defaults on {grid}, {what} "
                f"(1 mm; latent {'×'.join(map(str, full['latent']))}, "
                f"{full['parameters']:,} parameters, untrained weights), batch 1, "
                f"{full['steps']} DDIM steps, through `generate()` in a fresh process; "
                f"{len(full['walls'])} timed run(s) after a one-step warm-up call (one UNet "
                "pass and the decoder), which also gives the time per DDIM step.",
                "",
                f"| grid | DDIM steps | {'GPU' if cuda else 'CPU'} s/volume | s per DDIM step "
                "| 1 step + decode (s) | peak memory | target |",
                "|---|---:|---:|---:|---:|---|---|",
                f"| {grid} | {full['steps']} | **{full['median']:.1f}** | {full['per_step']:.2f} "
                f"| {full['one_step']:.1f} | {_memory(full)} | {verdict} |",
                "",
                f"Anchor: Pinaya et al. 2022, DDIM sampling {PINAYA_S} s per 160×224×160 "
                "volume on a TITAN RTX.",
                "",
            ]
    return "\n".join(lines)


def argv_is_ours() -> bool:
    """Whether sys.argv is this script's command line (not a test runner's)."""
    return Path(sys.argv[0]).name == Path(__file__).name


def _markers(device: str) -> tuple[str, str]:
    kind = "cuda" if str(device).startswith("cuda") else "cpu"
    return (
        f"<!-- bench_synthesis.py {kind} results: start -->",
        f"<!-- bench_synthesis.py {kind} results: end -->",
    )


def write_docs(text: str, device: str) -> None:
    """Put ``text`` between this device's markers in this script's section of
    docs/benchmarks.md (the first time: at the end of the section, or a new section at
    the end of the file). Nothing else is touched: the hand-written reading of the
    figures in the section survives a re-run, and so does the other device's block."""
    begin, end = _markers(device)
    block = f"{begin}\n{text.strip()}\n{end}"
    current = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n"
    first, last = current.find(begin), current.find(end)
    if 0 <= first < last:
        updated = current[:first] + block + current[last + len(end) :]
    elif (section := current.find(SECTION + "\n")) >= 0:
        stop = current.find("\n## ", section + len(SECTION))
        stop = len(current) if stop < 0 else stop + 1
        head = current[:stop].rstrip("\n")
        updated = (
            head + "\n\n" + block + "\n" + ("\n" + current[stop:] if stop < len(current) else "")
        )
    else:
        updated = current.rstrip("\n") + f"\n\n{SECTION}\n\n{block}\n"
    DOCS.write_text(updated)


if __name__ == "__main__":
    sys.exit(main())
