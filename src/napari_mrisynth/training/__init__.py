"""Training station: one run recipe (:mod:`.recipe`) for every model the project trains.

Subject-level stratified splits, subjects brought into model space once and cached, Lightning
for the loop (one device, several GPUs or nodes through its strategies), MLflow for tracking,
and the model written to a registry folder with a full card and test metrics on held-out
subjects. Segmentation and classification (:mod:`.train`, ``mrisynth train
segmentation|classification``) stream patches through
:class:`~napari_mrisynth.io.streaming.SeriesPatchDataset`; the generator families' Lightning
modules are in :mod:`.generator_modules` and their runs in :mod:`napari_mrisynth.synthesis`.

Lightning and MLflow are the ``[train]`` extra; nothing here imports them until a training
function runs, so ``mrisynth --help`` and inference never need them.
"""

from typing import Any

#: Segmentation losses (``training.modules.segmentation_loss``); the first is the default.
#: Here, not in :mod:`.train`, so that ``mrisynth train --help`` lists them without
#: importing the training code.
SEGMENTATION_LOSSES = ("dicece", "dicece_batch", "focal_tversky")
#: How a segmentation loss weighs the labels (``--loss-weights``).
LOSS_WEIGHTINGS = ("none", "median-frequency", "sqrt-median-frequency")

_LAZY = {
    "read_participants": "napari_mrisynth.training.splits",
    "split_subjects": "napari_mrisynth.training.splits",
    "train_segmentation": "napari_mrisynth.training.train",
    "train_classification": "napari_mrisynth.training.train",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted([*_LAZY, "LOSS_WEIGHTINGS", "SEGMENTATION_LOSSES"])
