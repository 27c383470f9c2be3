"""Differentiable augmentation for small-data GANs (Zhao et al. 2020, "DiffAugment"), in 3D.

The discriminator sees real and generated volumes through the same random, differentiable
transformations (brightness, contrast, translation, cutout), so it cannot memorise the few
training scans, and the generator still receives gradients through them.
"""

from __future__ import annotations

import torch

POLICY = ("brightness", "contrast", "translation", "cutout")


def diff_augment(
    x: torch.Tensor, policy: tuple[str, ...] = POLICY, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Augment a (B, C, z, y, x) batch, each sample independently."""
    b = x.shape[0]
    shape = (b,) + (1,) * (x.ndim - 1)

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(shape, generator=generator, device=x.device)

    if "brightness" in policy:
        x = x + uniform(-0.25, 0.25)
    if "contrast" in policy:
        mean = x.mean(dim=tuple(range(1, x.ndim)), keepdim=True)
        x = (x - mean) * uniform(0.6, 1.4) + mean
    if "translation" in policy:
        x = torch.stack([_shift(sample, 8, generator) for sample in x])
    if "cutout" in policy:
        x = x * _cutout_mask(x, 4, generator)
    return x


def _shift(sample: torch.Tensor, fraction: int, generator: torch.Generator | None) -> torch.Tensor:
    """Roll by up to 1/fraction of each side (the background wraps; it is zero)."""
    spatial = sample.shape[1:]
    shifts = [
        int(torch.randint(-(s // fraction), s // fraction + 1, (1,), generator=generator))
        for s in spatial
    ]
    return torch.roll(sample, shifts=shifts, dims=tuple(range(1, sample.ndim)))


def _cutout_mask(x: torch.Tensor, fraction: int, generator: torch.Generator | None) -> torch.Tensor:
    """Zero one box of 1/fraction of each side per sample."""
    mask = torch.ones_like(x)
    spatial = x.shape[2:]
    for i in range(x.shape[0]):
        box = []
        for s in spatial:
            size = max(1, s // fraction)
            start = int(torch.randint(0, s - size + 1, (1,), generator=generator))
            box.append(slice(start, start + size))
        mask[(i, slice(None), *box)] = 0
    return mask
