"""Volume geometry panel: spacing, origin, orientation and resampling of the active layer."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtWidgets import QFormLayout, QLabel, QWidget

from napari_mrisynth.errors import MrisynthError
from napari_mrisynth.volume import Volume, is_axis_aligned, orientation_code

from ._layer_data import layer_volume

if TYPE_CHECKING:
    import napari

#: Rows of the panel, in order.
FIELDS = (
    "Layer",
    "Matrix",
    "Spacing (mm)",
    "Origin (LPS mm)",
    "Displayed as",
    "Source orientation",
    "Resampled",
    "Problems",
    "Source",
)


def _mm(values: Any) -> str:
    return ", ".join(f"{v:.4g}" for v in np.asarray(values, dtype=float))


def geometry_rows(name: str, volume: Volume) -> dict[str, str]:
    """What the panel shows for a layer: its display grid and, when known, its source grid.

    Parameters
    ----------
    name : str
        Layer name.
    volume : Volume
        The layer's grid in patient space; ``metadata`` as this plugin's layers carry it.

    Returns
    -------
    dict
        One text per entry of :data:`FIELDS`.
    """
    meta = volume.metadata
    nz, ny, nx = volume.shape
    shown = orientation_code(volume.direction)
    if not is_axis_aligned(volume.direction):
        shown += " (oblique)"
    source = "unknown (not opened by napari-mrisynth)"
    if "source_affine_lps" in meta:
        source_direction = np.asarray(meta["source_affine_lps"])[:3, :3]
        source_direction = source_direction / np.linalg.norm(source_direction, axis=0)
        source = orientation_code(source_direction)
        if not is_axis_aligned(source_direction):
            source += " (oblique)"
    resampled = []
    stack = meta.get("resampled")  # set by the DICOM reader for a gap, uneven spacing or tilt
    if isinstance(stack, dict):
        resampled.append(
            f"slices to {stack.get('slice_spacing_mm', 0):.4g} mm "
            f"({'; '.join(stack.get('reason', []))})"
        )
    grid = meta.get("resampled_from")  # set for display when the grid is oblique
    if isinstance(grid, dict):
        resampled.append(
            f"oblique grid of {' × '.join(str(n) for n in grid['shape'][::-1])} voxels "
            f"of {_mm(grid.get('spacing', []))} mm onto patient axes "
            f"({grid.get('interpolation', 'linear')})"
        )
    return {
        "Layer": name,
        "Matrix": f"{nx} × {ny} × {nz} (x × y × z)",
        "Spacing (mm)": _mm(volume.spacing),
        "Origin (LPS mm)": _mm(volume.origin),
        "Displayed as": shown,
        "Source orientation": source,
        "Resampled": "yes: " + "; ".join(resampled) if resampled else "no",
        "Problems": "; ".join(meta.get("problems") or []) or "none",
        "Source": str(meta.get("source", "")),
    }


class VolumeInfo(QWidget):
    """Dock widget showing the patient geometry of the active layer.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer whose active layer is described.
    """

    def __init__(self, napari_viewer: napari.Viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.values = {name: QLabel() for name in FIELDS}
        layout = QFormLayout(self)
        for name, label in self.values.items():
            label.setWordWrap(True)
            layout.addRow(name, label)
        napari_viewer.layers.selection.events.active.connect(self.refresh)
        self.refresh()

    def refresh(self, event: Any = None) -> None:
        """Show the geometry of the active layer (no voxel is read)."""
        layer = self.viewer.layers.selection.active
        rows = dict.fromkeys(FIELDS, "")
        if layer is None:
            rows["Layer"] = "no layer selected"
        elif layer.ndim != 3:
            rows["Layer"] = f"{layer.name}: {layer.ndim}D, not a volume"
        else:
            try:
                rows = geometry_rows(layer.name, layer_volume(layer, read=False))
            except MrisynthError as exc:
                rows["Layer"] = f"{layer.name}: {exc}"
        for name, text in rows.items():
            self.values[name].setText(text)
