"""Training station: segmentation and classification models from a (simulated) cohort.

``mrisynth train segmentation|classification``: subject-level stratified splits, subjects
brought into model space once and cached, patches streamed through
:class:`~napari_mrisynth.io.streaming.SeriesPatchDataset`, Lightning for the loop (one
device, several GPUs or nodes through its strategies), MLflow for tracking, and the best
checkpoint written to a model registry folder with a full model card.

Lightning and MLflow are the ``[train]`` extra; nothing here imports them until a training
function runs, so ``mrisynth --help`` and inference never need them.
"""

from typing import Any

MISSING_EXTRA = "training needs Lightning and MLflow: pip install 'napari-mrisynth[train]'"

_LAZY = {
    "read_participants": "napari_mrisynth.training.splits",
    "split_subjects": "napari_mrisynth.training.splits",
    "train_segmentation": "napari_mrisynth.training.train",
    "train_classification": "napari_mrisynth.training.train",
    "default_tracking_uri": "napari_mrisynth.training.tracking",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_LAZY)
