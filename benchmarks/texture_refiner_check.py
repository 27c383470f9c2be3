"""Can a learned refiner after the anatomy-first renderer close the texture gap?

A small 3D CNN (five dilated residual convolutions, a noise channel) is put after a
generator's output and trained against the generator's own training scans, then heads are
generated for a cohort nobody trained on and the automated Turing test's texture model
(:func:`napari_mrisynth.evaluation.two_sample.automated_turing_test`) is run on the same
heads without and with the refiner, in the same run. Two objectives:

- ``quantiles``: the quantiles of filter responses (intensity, gradient magnitude,
  Laplacian, local spread, a difference of Gaussians) inside the brain and inside the
  scalp of refined sampled heads are matched to the training scans' pooled quantiles, with
  a low-pass L1 anchor to the unrefined head (the anatomy must not move);
- ``adversarial``: SimGAN's (Shrivastava et al. 2017) least-squares patch discriminator on
  32-voxel patches of sampled heads and training scans, with the same anchor.

Usage::

    python benchmarks/texture_refiner_check.py --real cohort-seed7-real \\
        [--model anatomy-bvftd-demo@1.5.0] [--mode quantiles] [--steps 400] [--n 6] \\
        [--work /tmp/refiner] [--device auto] [--json out.json]

``--real`` is a folder of real scans nobody trained on (for example the first 12 subjects'
``*_T1w.nii.gz`` of ``mrisynth cohort --seed 7``). The training scans are read from the
cohort and split the model's card records (``training.data``, ``training.splits.train``).
On the 2-core CPU a step takes 1.4 s (quantiles, one 80-voxel crop) to 4.5 s (two crops);
the GPU path is the same code with ``--device cuda``. Measured 2026-12-05 on
anatomy-bvftd-demo@1.4.0 against the 12 first subjects of ``mrisynth cohort --seed 7``
(docs/synthesis.md, "Measured and not adopted"): texture AUC 1.000 unrefined, 0.993 after
400 quantile steps (9.8 min in all on the CPU); the adversarial discriminator did not learn
in 500 steps (its loss stayed at 0.50).
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

FILTERS = ("intensity", "gradient", "laplacian", "local_spread", "dog")


def refiner_network(channels: int = 16) -> Any:
    """x + r(x, z): five 3x3x3 convolutions (dilation 1, 2, 4, 2, 1; residual in the middle),
    the last one zero-initialised so that training starts from the identity."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    class Refiner(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.ModuleList([nn.Conv3d(2, channels, 3, padding=1)] + [
                nn.Conv3d(channels, channels, 3, padding=d, dilation=d) for d in (2, 4, 2)
            ])  # fmt: skip
            self.out = nn.Conv3d(channels, 1, 3, padding=1)
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

        def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
            h = torch.cat([x, z], 1)
            for k, layer in enumerate(self.body):
                step = F.leaky_relu(layer(h), 0.2)
                h = step + h if k else step
            return x + self.out(h)

    return Refiner()


def discriminator() -> Any:
    from torch import nn

    return nn.Sequential(
        nn.Conv3d(1, 16, 3, padding=1), nn.LeakyReLU(0.2),
        nn.Conv3d(16, 32, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
        nn.Conv3d(32, 64, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
        nn.Conv3d(64, 1, 3, padding=1),
    )  # fmt: skip


def responses(x: Any) -> list[Any]:
    """The filter responses of :data:`FILTERS`, each cropped by one voxel per side."""
    import torch
    from torch.nn import functional as F

    from napari_mrisynth.models.anatomy_generator import gaussian_blur

    inner = (slice(None), slice(None), slice(1, -1), slice(1, -1), slice(1, -1))
    centre = x[inner]
    differences = (
        x[:, :, 2:, 1:-1, 1:-1] - x[:, :, :-2, 1:-1, 1:-1],
        x[:, :, 1:-1, 2:, 1:-1] - x[:, :, 1:-1, :-2, 1:-1],
        x[:, :, 1:-1, 1:-1, 2:] - x[:, :, 1:-1, 1:-1, :-2],
    )
    gradient = torch.sqrt(sum((d / 2) ** 2 for d in differences) + 1e-8)
    kernel = torch.zeros(1, 1, 3, 3, 3, dtype=x.dtype, device=x.device)
    kernel[0, 0, 1, 1, 1] = -6.0
    for index in ((0, 1, 1), (2, 1, 1), (1, 0, 1), (1, 2, 1), (1, 1, 0), (1, 1, 2)):
        kernel[(0, 0, *index)] = 1.0
    laplacian = F.conv3d(x, kernel)
    mean, square = F.avg_pool3d(x, 3, 1), F.avg_pool3d(x * x, 3, 1)
    spread = torch.sqrt((square - mean * mean).clamp_min(0.0) + 1e-8)
    dog = (gaussian_blur(x, 0.7) - gaussian_blur(x, 1.4))[inner]
    return [centre, gradient, laplacian, spread, dog]


def regions(labels: np.ndarray) -> np.ndarray:
    """(2, ...) bool: the brain eroded by a voxel, and the head outside the brain dilated by
    three (the scalp), cropped like :func:`responses`."""
    from scipy import ndimage as ndi

    from napari_mrisynth.anatomy.labels import BRAIN_LABELS

    brain = np.isin(labels, BRAIN_LABELS)
    scalp = (labels > 0) & ~ndi.binary_dilation(brain, iterations=3)
    both = np.stack([ndi.binary_erosion(brain, iterations=1), scalp])
    return both[:, 1:-1, 1:-1, 1:-1]


class Quantiles:
    """The training scans' pooled quantiles per filter and region, and the loss against them."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, device: Any, seed: int = 0):
        import torch

        self.levels = torch.linspace(0.01, 0.99, 64, device=device)
        generator = torch.Generator().manual_seed(seed)
        pooled: list[list[list[Any]]] = [[[], []] for _ in FILTERS]
        with torch.no_grad():
            for image, label in zip(images, labels, strict=True):
                x = torch.from_numpy(image)[None, None].to(device)
                mask = torch.from_numpy(regions(label)).to(device)
                for f, response in enumerate(responses(x)):
                    for r in range(2):
                        values = response[0, 0][mask[r]]
                        keep = torch.randperm(values.numel(), generator=generator)[:20000]
                        pooled[f][r].append(values[keep.to(device)])
        self.target = [[torch.quantile(torch.cat(p), self.levels) for p in f] for f in pooled]
        self.scale = [[torch.cat(p).std() for p in f] for f in pooled]

    def loss(self, x: Any, mask: Any) -> Any:
        import torch

        total = x.new_zeros(())
        for f, response in enumerate(responses(x)):
            for r in range(2):
                values = response[:, 0][mask[:, r]]
                values = values[torch.randperm(values.numel(), device=values.device)[:40000]]
                gap = torch.quantile(values, self.levels) - self.target[f][r]
                total = total + gap.abs().mean() / self.scale[f][r]
        return total


def crop(volumes: Any, masks: Any | None, size: int, generator: Any) -> tuple[Any, Any]:
    """A random crop of ``size`` voxels per side (near the centre) of one volume."""
    import torch

    k = int(torch.randint(len(volumes), (1,), generator=generator))
    start = []
    for n in volumes.shape[1:]:
        middle = max(0, (n - size) // 2)
        low, high = max(0, middle - 4), min(max(n - size, 0), middle + 4)
        start.append(int(torch.randint(low, high + 1, (1,), generator=generator)))
    box = tuple(slice(s, s + size) for s in start)
    x = volumes[k][box][None, None]
    m = None if masks is None else masks[k][(slice(None),) + tuple(
        slice(s, s + size - 2) for s in start)][None]  # fmt: skip
    return x, m


def train(
    mode: str,
    synthetic: np.ndarray,
    synthetic_labels: np.ndarray,
    real: np.ndarray,
    real_labels: np.ndarray,
    steps: int,
    device: Any,
    seed: int,
) -> tuple[Any, list]:
    import torch

    from napari_mrisynth.models.anatomy_generator import gaussian_blur

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    refiner = refiner_network().to(device)
    rate, betas = (1e-3, (0.9, 0.999)) if mode == "quantiles" else (2e-4, (0.5, 0.999))
    optimiser = torch.optim.Adam(refiner.parameters(), rate, betas=betas)
    heads = torch.from_numpy(synthetic).to(device)
    masks = torch.from_numpy(np.stack([regions(lab) for lab in synthetic_labels])).to(device)
    scans = torch.from_numpy(real).to(device)
    history = []
    if mode == "quantiles":
        target = Quantiles(real, real_labels, device, seed)
    else:
        critic = discriminator().to(device)
        critic_optimiser = torch.optim.Adam(critic.parameters(), 2e-4, betas=(0.5, 0.999))
    clock = time.perf_counter()
    for step in range(steps):
        if mode == "quantiles":
            x, mask = crop(heads, masks, 80, generator)
            refined = refiner(x, torch.randn_like(x))
            objective = target.loss(refined, mask)
        else:
            x, _ = crop(heads, None, 32, generator)
            y, _ = crop(scans, None, 32, generator)
            refined = refiner(x, torch.randn_like(x))
            critic_loss = ((critic(y) - 1) ** 2).mean() + (critic(refined.detach()) ** 2).mean()
            critic_optimiser.zero_grad()
            critic_loss.backward()
            critic_optimiser.step()
            objective = ((critic(refined) - 1) ** 2).mean()
        anchor = (gaussian_blur(refined, 2.0) - gaussian_blur(x, 2.0)).abs().mean()
        loss = objective + 20.0 * anchor
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        history.append([float(objective), float(anchor)])
        if step % 50 == 0:
            print(f"step {step}: objective {objective.item():.3f}, anchor {anchor.item():.4f}, "
                  f"{time.perf_counter() - clock:.0f} s", flush=True)  # fmt: skip
    return refiner.eval(), history


def training_scans(card: Any, work: Path, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """The model grid's images and label maps of one of the card's splits."""
    from napari_mrisynth.io.files import load_volume
    from napari_mrisynth.preprocess.grid import default_multiple
    from napari_mrisynth.training import data as tdata
    from napari_mrisynth.training.recipe import model_spec

    spacing = float(card.architecture["args"]["spacing"])
    cached = tdata.cache_subjects(card.training["data"], card.training["splits"][split],
                                  model_spec(spacing, default_multiple(spacing)),
                                  work / "cache", labels=True)  # fmt: skip
    images = np.stack([np.asarray(load_volume(c.image).compute().data, np.float32)
                       for c in cached])  # fmt: skip
    labels = np.stack([np.asarray(load_volume(c.label).compute().data, np.uint8)
                       for c in cached])  # fmt: skip
    return images, labels


def sampled_heads(card: Any, count: int, device: Any) -> tuple[np.ndarray, np.ndarray]:
    import torch

    from napari_mrisynth.models.conditions import Condition
    from napari_mrisynth.models.inference import get_model
    from napari_mrisynth.synthesis.generate import volume_noise

    network = get_model(card, "generation", device=device).network
    images, labels = [], []
    for k in range(count):  # seed 5000: apart from the evaluation's seeds
        condition = Condition.parse("control" if k % 2 == 0 else "bvftd")
        vector = torch.tensor([condition.vector()], dtype=torch.float32, device=device)
        image, label = network.generate(vector, volume_noise(network.noise_shape, 5000, k)[None]
                                        .to(device))  # fmt: skip
        images.append(image[0, 0].cpu().numpy())
        labels.append(label[0, 0].cpu().numpy())
    return np.stack(images), np.stack(labels)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", type=Path, required=True, help="real scans nobody trained on")
    parser.add_argument("--model", default=None, help="generator id@version (registry default)")
    parser.add_argument("--mode", choices=("quantiles", "adversarial"), default="quantiles")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--samples", type=int, default=60, help="sampled heads to train on")
    parser.add_argument("--n", type=int, default=6, help="evaluation heads per class")
    parser.add_argument("--seed", type=int, default=41)
    parser.add_argument("--work", type=Path, default=Path("/tmp/texture-refiner"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    import torch

    from napari_mrisynth import generate
    from napari_mrisynth.evaluation import load_folder
    from napari_mrisynth.evaluation.two_sample import automated_turing_test
    from napari_mrisynth.io.files import save_volume
    from napari_mrisynth.models.registry import default_model, find_model

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" \
        else args.device  # fmt: skip
    card = find_model(args.model) if args.model else default_model("generation")
    clock = time.perf_counter()
    real_train, real_labels = training_scans(card, args.work)
    heads, head_labels = sampled_heads(card, args.samples, device)
    refiner, history = train(args.mode, heads, head_labels, real_train, real_labels,
                             args.steps, device, 0)  # fmt: skip
    seconds = time.perf_counter() - clock
    plain, refined = args.work / "plain", args.work / "refined"
    for folder in (plain, refined):
        folder.mkdir(parents=True, exist_ok=True)
    for k, condition in enumerate(("control", "bvftd")):
        made = generate(card, args.n, condition=condition, seed=args.seed + k, device=device)
        for index, item in enumerate(made):
            volume, name = item.volume, f"{condition}-{index:02d}"
            x = torch.from_numpy(np.asarray(volume.data, np.float32))[None, None]
            noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(100 * k + index))
            with torch.no_grad():
                out = refiner(x.to(device), noise.to(device)).clamp(0.0, 1.5)[0, 0].cpu().numpy()
            save_volume(volume.with_data(volume.data, name=name), plain / f"{name}.nii.gz")
            save_volume(volume.with_data(out, name=name), refined / f"{name}.nii.gz")
    real = load_folder(args.real)
    report: dict[str, Any] = {"model": card.ref, "mode": args.mode, "steps": args.steps,
                              "seconds": round(seconds, 1), "history": history}  # fmt: skip
    for name, folder in (("plain", plain), ("refined", refined)):
        turing = automated_turing_test(real, load_folder(folder), models=("texture",), seed=0)
        texture = turing.two_sample["texture"]
        report[name] = {"texture_auc": texture["value"], "ci95": texture["ci95"],
                        "giveaways": texture["giveaways"][:8],
                        "before_matching_auc": texture["before_matching"]["value"]}  # fmt: skip
        top = ", ".join(f"{g['feature']} {g['auc']:.2f}" for g in texture["giveaways"][:5])
        print(f"{name:8s} texture AUC {texture['value']:.3f}; gives it away: {top}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
