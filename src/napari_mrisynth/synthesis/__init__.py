"""Synthesis: conditional VAE, GAN and latent-diffusion generators of T1 volumes.

``generate`` writes volumes with provenance; ``list_generators`` and ``rank_generators``
find them in the registry; ``train_generator`` (needs the ``train`` extra) makes them.
Everything here imports torch lazily, so importing the package is cheap.
"""

from __future__ import annotations

from typing import Any

from napari_mrisynth.synthesis.conditions import Condition, ConditionError

__all__ = [
    "Condition",
    "ConditionError",
    "Synthetic",
    "generate",
    "list_generators",
    "rank_generators",
    "train_generator",
]

_LAZY = {
    "generate": "napari_mrisynth.synthesis.generate",
    "Synthetic": "napari_mrisynth.synthesis.generate",
    "list_generators": "napari_mrisynth.synthesis.generate",
    "rank_generators": "napari_mrisynth.synthesis.generate",
    "train_generator": "napari_mrisynth.synthesis.train",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
