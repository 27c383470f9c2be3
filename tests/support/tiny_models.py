"""Tiny registry models for tests: real files, real MONAI networks, RANDOM weights.

The weights are randomly initialised from a seed and never trained: these models exercise
geometry, saving, loading, verification and the inference plumbing, not accuracy. Their
cards say so (``training.simulated`` true, ``training.trained`` false).

    from tests.support import tiny_models
    card = tiny_models.make_tiny_model(tmp_path, "segmentation")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from napari_mrisynth.anatomy import LABELS
from napari_mrisynth.models.card import InputSpec, LabelSpec, ModelCard

#: Box around the simulated head in LPS mm (x: right->left, y: anterior->posterior,
#: z: inferior->superior): the MNI152 2009 head with its skull, chin to vertex.
HEAD_CENTRE_LPS = (0.0, 18.0, 10.0)
HEAD_EXTENT_MM = (184.0, 216.0, 184.0)  # x, y, z

CLASSES = (LabelSpec(0, "control", (70, 130, 180)), LabelSpec(1, "bvFTD", (220, 20, 60)))


def tiny_input_spec(spacing: float = 8.0) -> InputSpec:
    """A coarse isotropic grid covering the head, centred on the MNI brain.

    Uses ``napari_mrisynth.preprocess.default_model_grid`` when that module exists, so the
    fixtures follow the package's own choice of model grid.
    """
    try:
        from napari_mrisynth.preprocess import default_model_grid
    except ImportError:
        return _head_box(spacing)
    grid = default_model_grid(spacing)
    if isinstance(grid, InputSpec):
        return grid
    return InputSpec(
        spacing=tuple(float(v) for v in grid.spacing),
        shape=tuple(int(v) for v in grid.shape),
        origin=tuple(float(v) for v in grid.origin),
    )


def _head_box(spacing: float) -> InputSpec:
    # Even sizes along every axis, so one stride-2 level of the tiny UNet divides them.
    counts = [2 * max(2, round(extent / spacing / 2)) for extent in HEAD_EXTENT_MM]  # x, y, z
    origin = tuple(
        centre - (n - 1) * spacing / 2 for centre, n in zip(HEAD_CENTRE_LPS, counts, strict=True)
    )
    return InputSpec(
        spacing=(float(spacing),) * 3, shape=(counts[2], counts[1], counts[0]), origin=origin
    )


def tiny_architecture(task: str) -> dict[str, Any]:
    """A MONAI network of a few thousand parameters for ``task``."""
    if task == "segmentation":
        return {
            "name": "UNet",
            "args": {
                "spatial_dims": 3,
                "in_channels": 1,
                "out_channels": max(LABELS) + 1,
                "channels": [4, 8],
                "strides": [2],
                "num_res_units": 0,
            },
        }
    if task == "classification":
        return {
            "name": "DenseNet",
            "args": {
                "spatial_dims": 3,
                "in_channels": 1,
                "out_channels": len(CLASSES),
                "init_features": 4,
                "growth_rate": 4,
                "block_config": [1, 1],
                "bn_size": 2,
            },
        }
    raise ValueError(f"no tiny network for task {task!r}")


def tiny_card(
    task: str = "segmentation",
    *,
    id: str | None = None,  # noqa: A002 - the card's field name
    version: str = "1.0.0",
    spacing: float = 8.0,
    metrics: dict[str, Any] | None = None,
    seed: int = 0,
    **fields: Any,
) -> ModelCard:
    """The card :func:`make_tiny_model` saves (no weights entry yet)."""
    spec = tiny_input_spec(spacing)
    if task == "segmentation":
        labels = [LabelSpec(value, name, rgb) for value, (name, rgb) in LABELS.items() if value]
    else:
        labels = list(CLASSES)
    training = {
        "data": "none: random initialisation (test fixture)",
        "simulated": True,
        "trained": False,
        "seed": seed,
    }
    training.update(fields.pop("training", {}))
    return ModelCard(
        id=id or f"tiny-{task[:3]}-test",
        version=version,
        task=task,
        title=fields.pop("title", f"Tiny random {task} network (tests only)"),
        description=fields.pop(
            "description", f"Randomly initialised {task} network for geometry tests; untrained."
        ),
        architecture=tiny_architecture(task),
        labels=labels,
        input=spec,
        inference={"roi_size": list(spec.shape), "overlap": 0.25, "sw_batch_size": 1},
        training=training,
        metrics=metrics or {},
        **fields,
    )


def make_tiny_model(
    root: str | Path,
    task: str = "segmentation",
    *,
    id: str | None = None,  # noqa: A002 - the card's field name
    version: str = "1.0.0",
    spacing: float = 8.0,
    metrics: dict[str, Any] | None = None,
    seed: int = 0,
    **fields: Any,
) -> ModelCard:
    """Save a tiny, randomly initialised model under ``root`` and return its card.

    Parameters
    ----------
    root : folder
        The registry root; the model lands in ``root/<id>-<version>/``.
    task : {"segmentation", "classification"}
        A 2-level UNet with 19 outputs (background + the 18 cohort labels and their colours)
        or a 2-block DenseNet with 2 classes (control, bvFTD).
    id, version : str
        Default id ``tiny-seg-test`` / ``tiny-cla-test``.
    spacing : float
        Isotropic model grid spacing in mm; the grid covers the head.
    metrics : dict, optional
        Stored as the card's metrics, e.g. ``{"test": {"auc": {"value": 0.9}}}``.
    seed : int
        Seeds the random initialisation (the global torch RNG is left as it was).
    **fields
        Other card fields (``training`` entries are merged into the fixture's).
    """
    import torch

    from napari_mrisynth.models.networks import build_network
    from napari_mrisynth.models.saving import save_model

    card = tiny_card(
        task, id=id, version=version, spacing=spacing, metrics=metrics, seed=seed, **fields
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = build_network(card.architecture)
    return save_model(card, network.state_dict(), root)
