"""Memorization audit: the nearest training scan of every synthetic one.

Similarity is the normalised cross-correlation (Pearson's r) of intensities inside the
reference brain mask (dilated), after every volume is on one grid
(:mod:`~napari_mrisynth.evaluation.common_grid`). The training set's own nearest-neighbour
similarities (each training scan against its nearest *other* training scan) say how alike
two different heads get; a synthetic scan much closer than that to a training scan is a
likely copy.

Default threshold: ``t = (1 + r_max) / 2``, with ``r_max`` the largest real-to-real
nearest-neighbour similarity. In distance ``1 - r``: flagged when a synthetic scan is closer
to a training scan than half the smallest distance between two different training scans.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_mrisynth.evaluation.folders import EvaluationError, volume_name
from napari_mrisynth.volume import Volume

THRESHOLD_RULE = (
    "(1 + max real-to-real NN similarity) / 2: flagged when 1 - r to the nearest training "
    "scan is under half the smallest 1 - r between two different training scans"
)


@dataclass
class AuditReport:
    """Per synthetic volume: its nearest training volume, the similarity and the verdict."""

    entries: list[dict[str, Any]]
    threshold: float
    real_nn: list[float]
    rule: str
    common_grid: dict[str, Any] = field(default_factory=dict)
    #: Per training volume: ``train``, its nearest other training volume ``nearest``, and
    #: ``similarity`` (the values of ``real_nn``, in the same order).
    real_nn_pairs: list[dict[str, Any]] = field(default_factory=list)
    n_train: int = 0

    @property
    def flagged(self) -> list[dict[str, Any]]:
        return [entry for entry in self.entries if entry["flagged"]]

    def summary(self) -> str:
        return f"{len(self.flagged)} of {len(self.entries)} flagged"

    def to_json(self) -> dict[str, Any]:
        values = list(self.real_nn)
        return {
            "kind": "memorization-audit",
            "similarity": "Pearson correlation inside the reference brain mask (dilated)",
            "threshold": self.threshold,
            "rule": self.rule,
            "entries": [dict(entry) for entry in self.entries],
            "real_nn": values,
            "real_nn_pairs": [dict(row) for row in self.real_nn_pairs],
            "real_nn_summary": {
                "min": min(values) if values else None,
                "median": float(np.median(values)) if values else None,
                "max": max(values) if values else None,
            },
            "flagged": len(self.flagged),
            "n_synthetic": len(self.entries),
            "n_train": self.n_train,
            "common_grid": dict(self.common_grid),
        }


def standardised_in_mask(images: Sequence[np.ndarray], mask: np.ndarray) -> np.ndarray:
    """Rows of zero-mean, unit-norm voxel values inside ``mask``: dot products are NCC."""
    rows = np.empty((len(images), int(mask.sum())), np.float32)  # float32: half the memory
    for row, image in zip(rows, images, strict=True):
        values = np.asarray(image, np.float64)[mask]
        values -= values.mean()
        row[:] = values / max(float(np.linalg.norm(values)), 1e-12)
    return rows


def audit_memorization(
    train: Sequence[Volume],
    synthetic: Sequence[Volume],
    *,
    threshold: float | None = None,
    progress: Callable[[int, int], None] | None = None,
    device: Any = None,
) -> AuditReport:
    """Nearest training volume of every synthetic volume, and whether it looks copied.

    Parameters
    ----------
    train : sequence of Volume
        The generator's training scans (two or more for the default threshold).
    synthetic : sequence of Volume
    threshold : float, optional
        Flag above this similarity; default :data:`THRESHOLD_RULE`.
    progress : callable(done, total), optional

    Returns
    -------
    AuditReport
        ``entries``: ``synthetic``, ``nearest``, ``similarity``, ``flagged`` and ``margin``
        (similarity minus threshold: positive when flagged); ``real_nn``: each training
        volume's similarity to its nearest other training volume (names in
        ``real_nn_pairs``).
    """
    from napari_mrisynth.evaluation.common_grid import bring_to_common_grid

    train, synthetic = list(train), list(synthetic)
    if not train or not synthetic:
        raise EvaluationError(
            f"need training and synthetic volumes, got {len(train)} and {len(synthetic)}"
        )
    if threshold is None and len(train) < 2:
        raise EvaluationError(
            "the default threshold needs at least two training volumes (their nearest-"
            "neighbour similarity); give a threshold"
        )
    volumes = train + synthetic
    names = [volume_name(v, i) for i, v in enumerate(volumes)]
    common = bring_to_common_grid(volumes, device=device, progress=progress)
    rows = standardised_in_mask(common.images, common.brain_mask.astype(bool))
    n_train = len(train)
    train_rows, syn_rows = rows[:n_train], rows[n_train:]

    pairs = []
    if n_train >= 2:
        within = train_rows @ train_rows.T
        np.fill_diagonal(within, -np.inf)
        for i, row in enumerate(within):
            j = int(np.argmax(row))
            pairs.append({"train": names[i], "nearest": names[j],
                            "similarity": min(float(row[j]), 1.0)})  # fmt: skip
    rule = "given"
    if threshold is None:
        r_max = max(row["similarity"] for row in pairs)
        threshold = (1.0 + r_max) / 2.0
        rule = THRESHOLD_RULE
    threshold = float(threshold)

    across = syn_rows @ train_rows.T
    entries = []
    for k, row in enumerate(across):
        j = int(np.argmax(row))
        similarity = min(float(row[j]), 1.0)  # float32 rounding can pass 1
        entries.append(
            {
                "synthetic": names[n_train + k],
                "nearest": names[j],
                "similarity": similarity,
                "flagged": similarity > threshold,
                "margin": similarity - threshold,
            }
        )
    real_nn = [row["similarity"] for row in pairs]
    return AuditReport(entries, threshold, real_nn, rule, common.describe(), pairs, n_train)
