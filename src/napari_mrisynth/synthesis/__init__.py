"""Synthesis: conditional VAE, GAN and latent-diffusion generators of T1 volumes.

``generate`` writes volumes with provenance; ``synthesize`` answers one request as the
Synthesize widget makes it (a real scan on the generator's grid beside the synthetic
volumes); ``list_generators`` and ``rank_generators`` find generators in the registry;
``train_generator`` (needs the ``train`` extra) makes them. The networks themselves are in
:mod:`napari_mrisynth.models.generators`. Everything here imports torch lazily, so importing
the package is cheap.
"""

from __future__ import annotations

from typing import Any

from napari_mrisynth.models.conditions import Condition, ConditionError

# The function shadows its module's name in the package (``synthesis.generate`` is the
# function); generate.py imports torch only when it runs.
from napari_mrisynth.synthesis.generate import (
    Synthetic,
    generate,
    list_generators,
    rank_generators,
)
from napari_mrisynth.synthesis.synthesize import SynthesisRequest, SynthesisRun, synthesize

__all__ = [
    "Condition",
    "ConditionError",
    "SynthesisRequest",
    "SynthesisRun",
    "Synthetic",
    "generate",
    "list_generators",
    "rank_generators",
    "synthesize",
    "train_generator",
]


def __getattr__(name: str) -> Any:
    if name == "train_generator":  # Lightning and MLflow: the train extra
        from napari_mrisynth.synthesis.train import train_generator

        return train_generator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
