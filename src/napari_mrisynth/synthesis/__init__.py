"""Synthesis: conditional VAE, GAN and latent-diffusion generators of T1 volumes.

``generate`` writes volumes with provenance; ``list_generators`` and ``rank_generators``
find them in the registry; ``train_generator`` (needs the ``train`` extra) makes them.
Everything here imports torch lazily, so importing the package is cheap.
"""

from __future__ import annotations

from typing import Any

from napari_mrisynth.synthesis.conditions import Condition, ConditionError

# The function shadows its module's name in the package (``synthesis.generate`` is the
# function); generate.py imports torch only when it runs.
from napari_mrisynth.synthesis.generate import (
    Synthetic,
    generate,
    list_generators,
    rank_generators,
)

__all__ = [
    "Condition",
    "ConditionError",
    "Synthetic",
    "generate",
    "list_generators",
    "rank_generators",
    "train_generator",
]


def __getattr__(name: str) -> Any:
    if name == "train_generator":  # Lightning and MLflow: the train extra
        from napari_mrisynth.synthesis.train import train_generator

        return train_generator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
