"""Models: cards, the registry, devices and networks (segmentation and classification).

Imports stay light here: torch and MONAI load only when a network is built or run.
"""

from napari_mrisynth.models.card import InputSpec, LabelSpec, ModelCard, read_card, write_card

__all__ = ["InputSpec", "LabelSpec", "ModelCard", "read_card", "write_card"]
