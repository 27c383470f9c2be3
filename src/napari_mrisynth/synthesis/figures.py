"""Figures of synthetic volumes beside real ones (matplotlib, the ``train`` extra)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from napari_mrisynth.volume import Volume


def _views(volume: Volume) -> list[np.ndarray]:
    """Axial (through the ventricles, a little above the middle), coronal and sagittal
    middle slices, anterior up / superior up, patient right on the left (radiological)."""
    data = np.asarray(volume.compute().data, dtype=np.float32)  # z (I->S), y (A->P), x (R->L)
    nz, ny, nx = data.shape
    axial = data[int(nz * 0.58)]  # rows y: anterior at the top; cols x: R->L
    coronal = data[::-1, int(ny * 0.45), :]  # superior at the top
    sagittal = data[::-1, :, nx // 2]  # superior up, anterior left
    return [axial, coronal, sagittal]


def comparison_figure(
    real: Mapping[str, Sequence[Volume]],
    synthetic: Mapping[str, Sequence[Volume]],
    path: str | Path,
    *,
    title: str = "real vs synthetic",
    examples: int = 3,
) -> Path:
    """Rows: each class's real volumes, then its synthetic ones (see :func:`volume_rows_figure`)."""
    rows = []
    for name in real:
        rows.append((f"{name}\nreal", list(real[name])))
        rows.append((f"{name}\nsynthetic", list(synthetic.get(name, []))))
    return volume_rows_figure(rows, path, title=title, examples=examples)


def volume_rows_figure(
    rows: Sequence[tuple[str, Sequence[Volume]]],
    path: str | Path,
    *,
    title: str = "",
    examples: int = 3,
) -> Path:
    """One row per (label, volumes), ``examples`` volumes per row, three views each (axial,
    coronal, sagittal); all on one grey scale (0 to 1.2 of the normalised intensity)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = examples * 3
    figure, axes = plt.subplots(
        len(rows), cols, figsize=(1.35 * cols, 1.5 * len(rows)), squeeze=False
    )
    for r, (label, volumes) in enumerate(rows):
        for e in range(examples):
            views = _views(volumes[e]) if e < len(volumes) else [None] * 3
            for v, view in enumerate(views):
                ax = axes[r][e * 3 + v]
                ax.set_xticks([])
                ax.set_yticks([])
                for spine in ax.spines.values():
                    spine.set_visible(False)
                if view is not None:
                    ax.imshow(view, cmap="gray", vmin=0.0, vmax=1.2, interpolation="nearest")
        axes[r][0].set_ylabel(label, fontsize=8)
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
