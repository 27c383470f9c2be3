"""Correct mask dock widget: edit a model's labels in napari, autosave, save with provenance.

The annotator picks a Labels layer (a model output), types their name and presses Start:
the layer's labels are snapshotted as the base, the layer goes into paint mode, and every
edit is autosaved about a second later (debounced) through
:class:`napari_mrisynth.annotation.MaskCorrection`, with a live count of changed voxels and
Dice against the model. Save writes NIfTI, a DICOM SEG referencing the source series (when
the layer came from DICOM) and the JSON record. An autosave left by a crash is offered for
recovery when the same layer (same labels, same source) is chosen again.

Layers are shown on patient axes; the correction is kept on the source series' grid. For an
axis-aligned series the two differ by a transpose and flips (exact); an oblique series was
resampled for display, so edits go back to the source grid by nearest neighbour.
"""

from __future__ import annotations

import getpass
import hashlib
import time
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Labels
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_mrisynth.annotation import CorrectionRecord, MaskCorrection
from napari_mrisynth.errors import GeometryError, MrisynthError
from napari_mrisynth.volume import Volume, onto_grid

from ._layer_data import layer_volume
from ._segment_widget import threads_enabled

if TYPE_CHECKING:
    import napari

#: Autosave this long after the last edit (ms): painting a stroke stays smooth.
AUTOSAVE_DELAY_MS = 1000

_ERROR_STYLE = "color: #ff6b6b;"


def default_autosave_root() -> Path:
    """``<user data folder>/corrections`` (``MRISYNTH_DATA_DIR`` moves it)."""
    from napari_mrisynth.models.registry import user_models_dir

    return Path(user_models_dir()).parent / "corrections"


def _meta(layer: Any) -> dict[str, Any]:
    """The plugin's facts about a layer: its ``mrisynth`` metadata over the top level."""
    meta = dict(layer.metadata or {})
    return {**{k: v for k, v in meta.items() if k != "mrisynth"}, **meta.get("mrisynth", {})}


def source_grid_template(layer: Any) -> Volume | None:
    """The source series' grid of a layer from this plugin (voxels: a zero placeholder)."""
    meta = _meta(layer)
    if "source_affine_lps" not in meta or "source_shape" not in meta:
        return None
    shape = tuple(int(n) for n in meta["source_shape"])
    placeholder = np.broadcast_to(np.zeros(1, np.uint8), shape)
    return Volume.from_affine(placeholder, np.asarray(meta["source_affine_lps"]))


def to_grid(volume: Volume, grid: Volume) -> tuple[Volume, bool]:
    """``volume``'s labels on ``grid``: exactly reordered when the axes agree, otherwise
    resampled by nearest neighbour. Returns (volume, exact)."""
    try:
        moved = onto_grid(volume, grid, labels=True, resample=False)
    except GeometryError:
        return onto_grid(volume, grid, labels=True), False
    return moved.with_data(np.ascontiguousarray(moved.data)), True


def find_source_files(layer: Any, viewer: Any) -> list[Path] | None:
    """The DICOM files of the series a layer was made from, or None when unknown.

    Looks at the layer's ``source_files``, then its ``source`` path, then image layers of
    the viewer from the same series (a model output names its image, not the files).
    """
    from napari_mrisynth.io.dicom import scan_folder

    meta = _meta(layer)
    if meta.get("source_files"):
        return [Path(p) for p in meta["source_files"]]
    uid = meta.get("series_uid")
    candidates = [meta]
    if uid:
        candidates += [
            _meta(other)
            for other in viewer.layers
            if other is not layer and _meta(other).get("series_uid") == uid
        ]
    for facts in candidates:
        if facts.get("source_files"):
            return [Path(p) for p in facts["source_files"]]
        source = facts.get("source")
        if not source or not Path(str(source)).exists() or not uid:
            continue
        try:
            scan = scan_folder(Path(str(source)))
            series = scan.select(facts.get("key") or uid)
        except MrisynthError:
            continue
        if series.uid == uid:
            return list(series.files)
    return None


def label_schema(layer: Any) -> tuple[dict[int, str], dict[int, tuple[int, int, int]]]:
    """Names and colours of the label values: the layer's card schema, its features, or the
    cohort's schema."""
    from napari_mrisynth.anatomy import LABELS

    meta = _meta(layer)
    names = {int(k): str(v) for k, v in (meta.get("label_names") or {}).items()}
    colors = {
        int(k): tuple(int(c) for c in v[:3]) for k, v in (meta.get("label_colors") or {}).items()
    }
    features = getattr(layer, "features", None)
    if not names and features is not None and {"index", "name"} <= set(features.columns):
        names = {int(i): str(n) for i, n in zip(features["index"], features["name"], strict=False)}
    for value, (name, rgb) in LABELS.items():
        names.setdefault(value, name)
        colors.setdefault(value, rgb)
    names.pop(0, None)
    colors.pop(0, None)
    return names, colors


def correction_key(layer: Any, data: np.ndarray) -> str:
    """Autosave folder name of a layer: its source, model, name and labels (a CRC)."""
    meta = _meta(layer)
    identity = "|".join(
        str(x)
        for x in (
            meta.get("series_uid") or meta.get("source") or "",
            meta.get("model") or "",
            layer.name,
            data.shape,
            zlib.crc32(np.ascontiguousarray(data).data),
        )
    )
    return hashlib.sha1(identity.encode()).hexdigest()[:16]


class CorrectMaskWidget(QWidget):
    """Dock widget: correct a model's mask, autosave every edit, save with provenance.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer whose Labels layers can be corrected.
    """

    def __init__(self, napari_viewer: napari.Viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.autosave_root = default_autosave_root()
        self.correction: MaskCorrection | None = None
        self.layer: Labels | None = None
        self.display: Volume | None = None  # the layer's grid (patient axes)
        self.exact = True  # display <-> source by transpose and flips only
        self.last_record: CorrectionRecord | None = None
        self.last_autosave: Path | None = None
        self.last_error: Exception | None = None
        self.worker: Any = None
        self._recoverable: tuple[np.ndarray, dict] | None = None

        self.labels = QComboBox()
        self.labels.currentIndexChanged.connect(self._layer_chosen)
        self.annotator = QLineEdit(_user_name())
        self.annotator.setPlaceholderText("Family^Given")
        self.start_button = QPushButton("Start correcting")
        self.start_button.clicked.connect(self.start)
        self.recover_button = QPushButton("Recover autosave")
        self.recover_button.setVisible(False)
        self.recover_button.clicked.connect(self.recover)
        self.save_button = QPushButton("Save…")
        self.save_button.setEnabled(False)
        self.save_button.clicked.connect(self._save_clicked)
        self.readout = QLabel("Not correcting.")
        self.readout.setWordWrap(True)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        form = QFormLayout()
        form.addRow("Mask", self.labels)
        form.addRow("Annotator", self.annotator)
        buttons = QHBoxLayout()
        buttons.addWidget(self.start_button)
        buttons.addWidget(self.save_button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.recover_button)
        layout.addWidget(self.readout)
        layout.addWidget(self.status)
        layout.addStretch(1)

        self.timer = QTimer(self)
        self.timer.setSingleShot(True)
        self.timer.setInterval(AUTOSAVE_DELAY_MS)
        self.timer.timeout.connect(self.autosave)
        for event in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            event.connect(self.refresh_layers)
        self.refresh_layers()

    # -- layer choice -----------------------------------------------------------------------
    def refresh_layers(self, event: Any = None) -> None:
        """List the viewer's 3D Labels layers, keeping the current choice."""
        current = self.labels.currentData()
        self.labels.blockSignals(True)
        self.labels.clear()
        for layer in self.viewer.layers:
            if isinstance(layer, Labels) and layer.ndim == 3:
                self.labels.addItem(layer.name, layer)
        names = [self.labels.itemData(i) for i in range(self.labels.count())]
        if current in names:
            self.labels.setCurrentIndex(names.index(current))
        self.labels.blockSignals(False)
        if self.layer is not None and self.layer not in self.viewer.layers:
            self._stop("The mask being corrected was removed; its autosave is kept.")
        self._layer_chosen()

    def _autosave_dir(self, layer: Any) -> Path:
        return self.autosave_root / correction_key(layer, np.asarray(layer.data))

    def _layer_chosen(self, index: int = -1) -> None:
        """Offer an autosave of the chosen layer, if one was left behind."""
        layer = self.labels.currentData()
        self._recoverable = None
        if layer is not None and self.correction is None:
            found = MaskCorrection.recover(self._autosave_dir(layer))
            if found is not None:
                self._recoverable = found
                facts = found[1]
                self.recover_button.setText(
                    f"Recover autosave: {facts['voxels_changed']} voxels changed by "
                    f"{facts['annotator']} (saved {facts['saved']})"
                )
        self.recover_button.setVisible(self._recoverable is not None)
        self.start_button.setEnabled(layer is not None and self.correction is None)

    # -- correcting -------------------------------------------------------------------------
    def start(self) -> MaskCorrection | None:
        """Snapshot the chosen layer as the base, put it into paint mode, autosave edits."""
        layer = self.labels.currentData()
        if layer is None:
            self._error("Choose a Labels layer (the model's mask) first.")
            return None
        annotator = self.annotator.text().strip()
        if not annotator:
            self._error("Type the annotator's name first.")
            return None
        try:
            display = layer_volume(layer)
            data = np.asarray(display.data)
            if data.dtype.kind not in "iu":
                raise MrisynthError(f"{layer.name}: labels must be integers, got {data.dtype}")
            display = display.with_data(np.array(data, copy=True))
            grid = source_grid_template(layer)
            base, exact = to_grid(display, grid) if grid is not None else (display, True)
            names, colors = label_schema(layer)
            meta = _meta(layer)
            source_files = find_source_files(layer, self.viewer)
            correction = MaskCorrection(
                base,
                annotator=annotator,
                base_model=meta.get("model"),
                source=meta.get("series_uid") or meta.get("source"),
                source_files=source_files,
                label_names=names,
                label_colors=colors,
                autosave_dir=self._autosave_dir(layer),
            )
        except MrisynthError as exc:
            self._error(str(exc))
            return None
        self.correction, self.layer, self.display, self.exact = correction, layer, display, exact
        layer.events.paint.connect(self._edited)
        layer.events.data.connect(self._edited)
        self.viewer.layers.selection.active = layer
        layer.mode = "paint"
        self.start_button.setEnabled(False)
        self.save_button.setEnabled(True)
        self.recover_button.setVisible(self._recoverable is not None)
        where = "DICOM SEG and NIfTI" if source_files else "NIfTI only (no DICOM source found)"
        grid_note = (
            "" if exact else "; oblique series: edits go to the source grid by nearest neighbour"
        )
        self.status.setStyleSheet("")
        self.status.setText(
            f"Correcting {layer.name} as {annotator}; saving writes {where}{grid_note}."
        )
        self.update_readout()
        return correction

    def current_labels(self) -> np.ndarray:
        """The layer's labels now, on the correction's (source) grid."""
        assert self.layer is not None and self.display is not None
        current = self.display.with_data(np.asarray(self.layer.data))
        if self.correction is not None and current.same_geometry(self.correction.base):
            return np.asarray(current.data)
        return np.asarray(to_grid(current, self.correction.base)[0].data)

    def _edited(self, event: Any = None) -> None:
        self.timer.start()  # restarts: one autosave after the last edit of a burst

    def autosave(self) -> Path | None:
        """Autosave the layer's labels now and refresh the readout."""
        if self.correction is None or self.layer is None:
            return None
        try:
            current = self.current_labels()
            self.last_autosave = self.correction.autosave(current)
        except (MrisynthError, OSError) as exc:
            self._error(f"Autosave failed: {exc}")
            return None
        self.update_readout(current)
        return self.last_autosave

    def update_readout(self, current: np.ndarray | None = None) -> CorrectionRecord | None:
        """Show voxels changed and Dice against the model."""
        if self.correction is None:
            self.readout.setText("Not correcting.")
            return None
        record = self.correction.summary(self.current_labels() if current is None else current)
        dice = record.dice_vs_model
        worst = sorted((v, k) for k, v in dice.items() if k != "mean")[:1]
        text = f"{record.voxels_changed:,} voxels changed · mean Dice vs model {dice['mean']:.3f}"
        if worst and worst[0][0] < 1.0:
            text += f" (lowest: {worst[0][1]} {worst[0][0]:.3f})"
        if self.last_autosave is not None:
            text += f"\nAutosaved {time.strftime('%H:%M:%S')}"
        self.readout.setText(text)
        return record

    def recover(self) -> bool:
        """Put the autosaved labels back into the layer (starting a correction if needed)."""
        layer = self.labels.currentData()
        found = self._recoverable
        if layer is None or found is None:
            return False
        if self.correction is None and self.start() is None:
            return False
        labels, facts = found
        restored = self.correction.base.with_data(labels)
        shown, _ = to_grid(restored, self.display)
        self.layer.data = np.asarray(shown.data).astype(self.layer.data.dtype)
        self._recoverable = None
        self.recover_button.setVisible(False)
        self.status.setText(
            f"Recovered {facts['voxels_changed']} changed voxels ({facts['saved']})."
        )
        self.autosave()
        return True

    # -- saving -----------------------------------------------------------------------------
    def _save_clicked(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Save the corrected mask in…")
        if folder:
            self.save(Path(folder))

    def save(self, out_dir: Path, stem: str | None = None) -> Any:
        """Write NIfTI, DICOM SEG (when the source is DICOM) and the JSON record.

        In a worker thread unless ``MRISYNTH_NO_THREADS=1``; returns the worker, or the
        record when run here.
        """
        if self.correction is None or self.layer is None:
            self._error("Start correcting a mask first.")
            return None
        self.timer.stop()
        stem = stem or _safe_stem(self.layer.name)
        current = np.array(self.current_labels(), copy=True)
        self.save_button.setEnabled(False)
        self.status.setStyleSheet("")
        self.status.setText(f"Saving to {out_dir} …")
        if not threads_enabled():
            try:
                record = self.correction.save(current, out_dir, stem=stem)
            except (MrisynthError, OSError) as exc:
                self._saved(exc)
                return None
            self._saved(record)
            return record
        self.worker = create_worker(_save_or_error, self.correction, current, out_dir, stem)
        self.worker.returned.connect(self._saved)
        self.worker.start()
        return self.worker

    def _saved(self, outcome: Any) -> None:
        self.worker = None
        self.save_button.setEnabled(self.correction is not None)
        if isinstance(outcome, Exception):
            self._error(f"Save failed: {outcome}")
            return
        self.last_record = outcome
        names = ", ".join(Path(f).name for f in outcome.files)
        self.status.setStyleSheet("")
        self.status.setText(
            f"Saved {outcome.voxels_changed:,} changed voxels by {outcome.annotator}: {names}"
        )

    def _stop(self, message: str) -> None:
        self.timer.stop()
        if self.layer is not None:
            for event in (self.layer.events.paint, self.layer.events.data):
                event.disconnect(self._edited)
        self.correction = self.layer = self.display = None
        self.save_button.setEnabled(False)
        self.readout.setText("Not correcting.")
        self.status.setText(message)

    def _error(self, message: str) -> None:
        self.last_error = MrisynthError(message)
        self.status.setStyleSheet(_ERROR_STYLE)
        self.status.setText(message)
        show_error(message)


def _save_or_error(
    correction: MaskCorrection, current: np.ndarray, out_dir: Path, stem: str
) -> Any:
    try:
        return correction.save(current, out_dir, stem=stem)
    except (MrisynthError, OSError) as exc:
        return exc


def _safe_stem(name: str) -> str:
    keep = "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip("._")
    return (keep or "mask") + "_corrected"


def _user_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry / no login name
        return ""


__all__ = ["CorrectMaskWidget"]
