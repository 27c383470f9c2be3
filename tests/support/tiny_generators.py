"""Tiny registry generators for tests: real files, real networks, RANDOM weights.

The weights are seeded and never trained: these models exercise saving, loading,
generation, provenance and the widgets, not image quality. Their cards say so
(``training.trained`` false). ``tests/test_synthesis.py`` trains tiny ones for real.

    from tests.support import tiny_generators
    card = tiny_generators.make_tiny_generator(tmp_path, "ldm")
"""

from __future__ import annotations

from pathlib import Path

from napari_mrisynth.models.card import InputSpec, ModelCard
from napari_mrisynth.models.conditions import DIAGNOSIS_CLASSES, encoding
from napari_mrisynth.synthesis.train import GenerativeOptions, architecture_for, generation_spec

#: Narrow networks: a few thousand parameters, ~32^3 voxels at 8 mm.
TINY = {
    "vae": {"channels": (8, 8, 8), "latent_channels": 2},
    "gan": {"channels": (8, 8, 8, 8), "latent_channels": 2},
    "ldm": {"channels": (8, 8, 8), "latent_channels": 2},
}


def tiny_options(family: str, spacing: float = 8.0) -> GenerativeOptions:
    return GenerativeOptions(spacing=spacing, **TINY[family])


def tiny_architecture(family: str, spacing: float = 8.0) -> tuple[dict, InputSpec]:
    opts = tiny_options(family, spacing)
    spec = generation_spec(family, opts)
    arch = architecture_for(family, spec.shape, opts)
    if family == "ldm":
        arch["args"].update(unet_channels=[8, 8], num_head_channels=8)
    if family == "gan":
        arch["args"].update(discriminator_channels=4)
    return arch, spec


def make_tiny_generator(
    root: Path,
    family: str,
    *,
    model_id: str | None = None,
    version: str = "1.0.0",
    seed: int = 0,
    conditions: tuple[str, ...] = ("diagnosis",),
    metrics: dict | None = None,
    default: bool = True,
) -> ModelCard:
    """Save an untrained tiny ``family`` generator into ``root`` and return its card."""
    import torch

    from napari_mrisynth.models.networks import build_network
    from napari_mrisynth.models.saving import save_model

    arch, spec = tiny_architecture(family)
    torch.manual_seed(seed)
    network = build_network(arch)
    inference = {
        "family": family,
        "conditions": list(conditions),
        "condition_encoding": encoding(),
        "batch_size": 4,
    }
    if family == "ldm":
        inference.update(sampler="ddim", steps=5, guidance=1.0, eta=0.0)
    card = ModelCard(
        id=model_id or f"tiny-{family}",
        version=version,
        task="generation",
        title=f"tiny untrained {family} (tests)",
        architecture=arch,
        labels=list(DIAGNOSIS_CLASSES),
        input=spec,
        inference=inference,
        training={"simulated": True, "trained": False, "default": default, "seed": seed},
        metrics=metrics or {},
    )
    return save_model(card, network.state_dict(), root)
