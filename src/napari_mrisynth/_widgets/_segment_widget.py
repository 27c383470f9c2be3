"""Segment dock widget: a registry model labels the chosen image; volumes per label in mL.

The widget is thin: it reads the image layer's voxels and patient geometry on the GUI
thread (no copy), runs :func:`napari_mrisynth.models.inference.segment` in a napari thread
worker, and adds the result as a Labels layer on the image's own geometry. The worker never
touches a layer or a Qt object; its progress reaches the progress bar through a queued Qt
signal. ``MRISYNTH_NO_THREADS=1`` (or ``widget.threaded = False``) runs the same code
synchronously, for deterministic tests.

:class:`ModelWidget` is the part shared with the Classify widget: image, model and device
choice, the run button, progress, status and error reporting.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from napari.layers import Image
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error
from qtpy.QtCore import QObject, Qt, Signal
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QAbstractItemView,
    QApplication,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from napari_mrisynth.errors import InputError, MrisynthError
from napari_mrisynth.models.card import ModelCard
from napari_mrisynth.models.device import DEVICE_CHOICES
from napari_mrisynth.volume import Volume

from ._layer_data import LayerData, labels_layer_data, layer_volume

if TYPE_CHECKING:
    import napari

#: Set to 1 to run model work on the GUI thread (deterministic tests, debugging).
NO_THREADS_ENV = "MRISYNTH_NO_THREADS"

#: What each stage reported by the core means to a user (the stage just finished).
STAGE_TEXT = {
    "model": "model loaded",
    "prepare": "scan aligned and resampled to the model grid",
    "infer": "network run",
    "inverse": "result resampled back onto the scan",
}

#: Columns of the volume table, in order.
VOLUME_COLUMNS = ("Label", "Name", "Voxels", "Volume (mL)")

_ERROR_STYLE = "color: #ff6b6b;"


def threads_enabled() -> bool:
    """False when ``MRISYNTH_NO_THREADS`` asks for synchronous runs."""
    return os.environ.get(NO_THREADS_ENV, "").strip().lower() not in ("1", "true", "yes")


def card_summary(card: ModelCard) -> str:
    """What a user should know before trusting a model: data, quality, intended use."""
    lines = [card.description] if card.description else []
    facts = [f"{card.ref}", f"{card.input.modality} {card.input.sequence}"]
    spacing = " × ".join(f"{s:g}" for s in card.input.spacing)
    facts.append(f"model grid {spacing} mm")
    lines.append(" · ".join(facts))
    quality = []
    for name, label in (("dice_mean", "test Dice"), ("auc", "test AUC"), ("accuracy", "accuracy")):
        value = card.metric(name)
        if value is not None:
            quality.append(f"{label} {value:.3f}")
    if quality:
        lines.append(", ".join(quality))
    if card.training.get("simulated", False):
        lines.append("Trained on simulated data: research only, not for clinical use.")
    return "\n".join(lines)


def layer_source_volume(layer: Any, task: str) -> Volume:
    """The voxels and patient geometry of an image layer, checked to be one 3D volume.

    Runs on the GUI thread: it reads layer attributes only, never copies or computes voxels.

    Raises
    ------
    InputError
        The layer is not a grey-level image of exactly three dimensions.
    """
    if not isinstance(layer, Image):
        raise InputError(f"{layer.name}: a {type(layer).__name__} layer is not an image")
    shape = tuple(layer.data[0].shape if layer.multiscale else layer.data.shape)
    if layer.rgb:
        raise InputError(f"{layer.name}: an RGB image (shape {shape}) cannot be a {task} input")
    if layer.ndim == 2:
        raise InputError(f"{layer.name} is a 2D image (shape {shape}); {task} needs a 3D volume")
    if layer.ndim != 3:
        raise InputError(
            f"{layer.name} has {layer.ndim} dimensions (shape {shape}), e.g. a time series or "
            f"several channels; {task} needs one 3D volume"
        )
    volume = layer_volume(layer)
    volume.metadata.setdefault("name", layer.name)  # so that the core's messages name it
    return volume


class _ProgressRelay(QObject):
    """Carries ``progress(done, total, stage)`` from a worker thread to the GUI thread."""

    progressed = Signal(int, int, str)

    def __call__(self, done: int, total: int, stage: str) -> None:
        self.progressed.emit(int(done), int(total), str(stage))


class ModelWidget(QWidget):
    """Image, model and device choice, a Run button, progress and status for one task.

    Subclasses set :attr:`task` and :attr:`run_label`, add their options and results
    below :meth:`build_controls`, and implement :meth:`job` (worker side, no Qt) and
    :meth:`show_result` (GUI side).

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer whose image layers are offered and where results are added.
    """

    task = "segmentation"
    run_label = "Run"

    def __init__(self, napari_viewer: napari.Viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.threaded = threads_enabled()
        self.worker: Any = None
        self.last_result: Any = None
        self.last_error: Exception | None = None
        self._started = 0.0
        self._requested_device = "auto"
        self._run_layer: Any = None

        self.image = QComboBox()
        self.image.setToolTip("A 3D T1-weighted head scan")
        self.model = QComboBox()
        self.model.currentIndexChanged.connect(self._show_card)
        refresh = QPushButton("↻")
        refresh.setToolTip("Look for models again (MRISYNTH_MODEL_PATH, user model folder)")
        refresh.setFixedWidth(32)
        refresh.clicked.connect(self.refresh_models)
        model_row = QHBoxLayout()
        model_row.addWidget(self.model, 1)
        model_row.addWidget(refresh)
        self.card_info = QLabel()
        self.card_info.setWordWrap(True)
        self.card_info.setStyleSheet("color: #a0a0a0;")
        self.device = QComboBox()
        self.device.setToolTip("auto: CUDA, then Apple MPS, then the CPU (announced)")
        self.device.addItems(DEVICE_CHOICES)
        for combo in (self.image, self.model, self.device):
            # long layer and model names must not widen the dock: they are elided instead
            combo.setSizeAdjustPolicy(
                QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
            )
            combo.setMinimumContentsLength(12)

        self.form = QFormLayout()
        self.form.addRow("Image", self.image)
        self.form.addRow("Model", model_row)
        self.form.addRow("", self.card_info)
        self.form.addRow("Device", self.device)

        self.run_button = QPushButton(self.run_label)
        self.run_button.clicked.connect(self.run)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setTextVisible(True)
        self.progress.setFormat("idle")
        self.status = QLabel()
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self._relay = _ProgressRelay(self)
        self._relay.progressed.connect(self._on_progress)

        self.layout_ = QVBoxLayout(self)
        self.layout_.addLayout(self.form)
        self.build_controls()
        self.layout_.addWidget(self.run_button)
        self.layout_.addWidget(self.progress)
        self.layout_.addWidget(self.status)
        self.build_results()
        self.layout_.addStretch(1)

        events = napari_viewer.layers.events
        for event in (events.inserted, events.removed, events.reordered, events.renamed):
            event.connect(self.refresh_layers)
        self.refresh_layers()
        self.refresh_models()
        self.refresh_devices()

    # -- hooks for the two widgets ----------------------------------------------------------
    def build_controls(self) -> None:
        """Options between the device choice and the Run button."""

    def build_results(self) -> None:
        """Result panels below the status line."""

    def job(self, volume: Volume, card: ModelCard, device: str, progress: Callable) -> Any:
        """The core call (worker thread: no Qt, no layers)."""
        raise NotImplementedError

    def show_result(self, result: Any, layer: Any) -> None:
        """Add layers and fill panels from a result (GUI thread)."""
        raise NotImplementedError

    # -- choices ----------------------------------------------------------------------------
    def refresh_layers(self, event: Any = None) -> None:
        """Offer every image layer; keep the current choice, else take the active layer."""
        current = self.image.currentData()
        active = self.viewer.layers.selection.active
        images = [layer for layer in self.viewer.layers if isinstance(layer, Image)]
        self.image.blockSignals(True)
        self.image.clear()
        for layer in images:
            self.image.addItem(layer.name, layer)
        for keep in (current, active):
            if keep is not None and any(keep is layer for layer in images):
                self.image.setCurrentIndex(next(i for i, x in enumerate(images) if x is keep))
                break
        self.image.blockSignals(False)
        self._update_run_button()

    def refresh_models(self) -> None:
        """List the registry's models for this task, the registry's default first chosen."""
        from napari_mrisynth.models import registry

        self.model.blockSignals(True)
        self.model.clear()
        try:
            cards = registry.list_models(task=self.task)
            default = registry.default_model(self.task).ref if cards else None
        except MrisynthError as exc:
            cards, default = [], None
            self.report_error(exc)
        for card in cards:
            self.model.addItem(f"{card.title} ({card.ref})", card)
            self.model.setItemData(
                self.model.count() - 1, card.intended_use, Qt.ItemDataRole.ToolTipRole
            )
        refs = [card.ref for card in cards]
        if default in refs:
            self.model.setCurrentIndex(refs.index(default))
        self.model.blockSignals(False)
        self._show_card()
        if not cards and self.last_error is None:
            self.status.setText(
                f"No {self.task} model found. Train one (mrisynth train) or point "
                "MRISYNTH_MODEL_PATH at a folder of models, then press ↻."
            )
        self._update_run_button()

    def refresh_devices(self) -> None:
        """Offer ``auto`` and the devices present here (torch loads off the GUI thread)."""
        if not self.threaded:
            self._set_devices(_available_devices())
            return
        worker = create_worker(_available_devices)
        worker.returned.connect(self._set_devices)
        worker.start()

    def _set_devices(self, devices: list[str]) -> None:
        current = self.device.currentText()
        self.device.clear()
        self.device.addItems(["auto", *devices])
        index = self.device.findText(current)
        self.device.setCurrentIndex(max(index, 0))

    def _show_card(self, index: int = -1) -> None:
        card = self.model.currentData()
        self.card_info.setText(card_summary(card) if card is not None else "")
        self.card_info.setToolTip(card.intended_use if card is not None else "")

    def _update_run_button(self) -> None:
        busy = self.worker is not None
        ready = self.image.currentData() is not None and self.model.currentData() is not None
        self.run_button.setEnabled(ready and not busy)

    # -- running ----------------------------------------------------------------------------
    def run(self) -> Any:
        """Run the model on the chosen image: in a worker thread, or here when not threaded.

        Returns
        -------
        worker or None
            The started napari worker when threaded; ``None`` otherwise (the result, or the
            error, is then already shown).
        """
        layer = self.image.currentData()
        card = self.model.currentData()
        if layer is None or card is None:
            self.status.setText("Choose an image layer and a model first.")
            return None
        self.last_error = None
        self.status.setStyleSheet("")
        try:
            volume = layer_source_volume(layer, self.task)
        except MrisynthError as exc:
            self.report_error(exc)
            return None
        self._run_layer = layer
        self._requested_device = self.device.currentText() or "auto"
        self._started = time.perf_counter()
        self.progress.setRange(0, 4)
        self.progress.setValue(0)
        self.progress.setFormat("loading model …")
        self.status.setText(f"Running {card.title} on {layer.name} …")
        self.run_button.setEnabled(False)
        args = (self.job, volume, card, self._requested_device, self._relay)
        return self._start(args, f"{self.task}: {card.title}")

    def _start(self, args: tuple, description: str) -> Any:
        """Run ``args[0](*args[1:])`` in a thread worker (or here, unthreaded); results go
        to ``_done``, crashes to ``_crashed``, and ``_finish`` runs either way."""
        if not self.threaded:
            try:
                outcome = _expected_errors_returned(*args)
            except Exception as exc:
                self._crashed(exc)
                raise
            finally:
                self._finish()
            self._done(outcome)
            return None
        self.worker = create_worker(
            _expected_errors_returned, *args, _progress={"desc": description}
        )
        self.worker.returned.connect(self._done)
        # napari's worker also notifies an unexpected error itself, with its traceback
        self.worker.errored.connect(self._crashed)
        self.worker.finished.connect(self._finish)
        self.worker.start()
        return self.worker

    def _on_progress(self, done: int, total: int, stage: str) -> None:
        self.progress.setRange(0, max(total, 1))
        self.progress.setValue(done)
        self.progress.setFormat(f"{STAGE_TEXT.get(stage, stage)} ({done}/{total})")

    def _finish(self) -> None:
        self.worker = None
        self._update_run_button()

    def _done(self, outcome: Any) -> None:
        if isinstance(outcome, MrisynthError):
            self._show_failed()
            self.report_error(outcome)
            return
        self.last_result = outcome
        seconds = time.perf_counter() - self._started
        self.progress.setValue(self.progress.maximum())
        self.progress.setFormat(f"done in {seconds:.1f} s")
        layer = self._run_layer
        if layer is None or layer not in self.viewer.layers:
            self.status.setText("The image layer was removed while the model ran.")
            return
        self.show_result(outcome, layer)
        self.status.setText(f"{outcome.card.title} ran {self.device_note(outcome.device)}.")

    def device_note(self, device: str) -> str:
        """Where the model ran, saying plainly when that is the CPU."""
        if device != "cpu":
            return f"on {device}"
        if self._requested_device == "auto":
            return "on the CPU: no CUDA or MPS GPU found here (slower)"
        return "on the CPU (as chosen)"

    def _show_failed(self) -> None:
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("failed")

    def _crashed(self, exc: Exception) -> None:
        """An unexpected error (a bug, not bad input): shown here, raised or notified by napari."""
        self._show_failed()
        self.report_error(exc, notify=False)

    def report_error(self, exc: Exception, *, notify: bool = True) -> None:
        """Show an error in the widget and as a napari notification; the viewer goes on."""
        self.last_error = exc
        message = str(exc) or type(exc).__name__
        self.status.setStyleSheet(_ERROR_STYLE)
        self.status.setText(message)
        if notify:
            show_error(message)

    def add_or_replace(self, data: Any, kwargs: dict[str, Any], layer_type: str) -> Any:
        """Add a layer; a layer of the same name and type from an earlier run is replaced."""
        name = kwargs["name"]
        index = len(self.viewer.layers)
        for i, old in enumerate(self.viewer.layers):
            if old.name == name and type(old).__name__.lower() == layer_type:
                self.viewer.layers.remove(old)
                index = i
                break
        layer = getattr(self.viewer, f"add_{layer_type}")(data, **kwargs)
        self.viewer.layers.move(self.viewer.layers.index(layer), index)
        return layer


def _expected_errors_returned(job: Callable, *args: Any) -> Any:
    """``job(*args)``, with a :class:`MrisynthError` (bad input, bad model) returned, not raised.

    Expected errors then reach the widget as a plain message; napari's worker would
    otherwise notify them a second time, as a crash with a traceback.
    """
    try:
        return job(*args)
    except MrisynthError as exc:
        return exc


def _available_devices() -> list[str]:
    from napari_mrisynth.models.device import available_devices

    return available_devices()


def label_color_dict(volume: Volume) -> dict[int | None, tuple[float, float, float, float]]:
    """DirectLabelColormap colours from a result's ``label_colors`` (0-255, by value)."""
    colors: dict[int | None, tuple[float, float, float, float]] = {
        None: (0.0, 0.0, 0.0, 0.0),
        0: (0.0, 0.0, 0.0, 0.0),
    }
    for value, rgb in volume.metadata.get("label_colors", {}).items():
        r, g, b = (float(c) / 255.0 for c in rgb[:3])
        colors[int(value)] = (r, g, b, 1.0)
    return colors


def label_features(volume: Volume) -> pd.DataFrame:
    """Layer features naming every label value, so the status bar names the label."""
    names = {int(k): str(v) for k, v in volume.metadata.get("label_names", {}).items()}
    names.setdefault(0, "background")
    values = sorted(names)
    return pd.DataFrame({"index": values, "name": [names[v] for v in values]})


def named_labels_layer_data(labels: Volume, name: str, opacity: float) -> LayerData:
    """LayerData of a label map with its names (status bar) and colours from its metadata."""
    data, kwargs, layer_type = labels_layer_data(
        labels, name=name, color_dict=label_color_dict(labels)
    )
    kwargs["features"] = label_features(labels)
    kwargs["opacity"] = opacity
    return data, kwargs, layer_type


def volume_table_tsv(rows: list[dict[str, Any]]) -> str:
    """The volume table as tab-separated text with a header line."""
    lines = ["label\tname\tvoxels\tvolume_ml"]
    lines += [f"{r['value']}\t{r['name']}\t{r['voxels']}\t{r['ml']:.3f}" for r in rows]
    return "\n".join(lines) + "\n"


class SegmentWidget(ModelWidget):
    """Dock widget: segment a 3D head scan with a registry model.

    The labels are added as a Labels layer on the image's own geometry, named
    ``"<image> · <model title>"``, with the model card's label names (shown in the status
    bar under the cursor) and colours; a table lists every label's volume in mL.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer whose image layers are offered and where the labels are added.
    """

    task = "segmentation"
    run_label = "Segment"

    def build_results(self) -> None:
        self.table = QTableWidget(0, len(VOLUME_COLUMNS))
        self.table.setHorizontalHeaderLabels(VOLUME_COLUMNS)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.verticalHeader().setVisible(False)
        self.table.setMinimumHeight(200)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        self.total = QLabel()
        self.copy_button = QPushButton("Copy as TSV")
        self.copy_button.setEnabled(False)
        self.copy_button.clicked.connect(self.copy_table)
        footer = QHBoxLayout()
        footer.addWidget(self.total, 1)
        footer.addWidget(self.copy_button)
        self.layout_.addWidget(self.table, 1)
        self.layout_.addLayout(footer)
        self.rows: list[dict[str, Any]] = []

    def job(self, volume: Volume, card: ModelCard, device: str, progress: Callable) -> Any:
        from napari_mrisynth.models.inference import segment

        return segment(volume, card, device=device, progress=progress)

    def show_result(self, result: Any, layer: Any) -> None:
        labels = result.labels
        name = f"{layer.name} · {result.card.title}"
        data, kwargs, layer_type = named_labels_layer_data(labels, name, 0.5)
        self.add_or_replace(data, kwargs, layer_type)
        self.fill_table(result.table(), labels)

    def fill_table(self, rows: list[dict[str, Any]], labels: Volume) -> None:
        """One row per card label: colour, name, voxels, millilitres."""
        self.rows = rows
        colors = label_color_dict(labels)
        self.table.setRowCount(len(rows))
        for i, row in enumerate(rows):
            swatch = QTableWidgetItem(str(row["value"]))
            r, g, b, _ = colors.get(int(row["value"]), (0.5, 0.5, 0.5, 1.0))
            swatch.setBackground(QColor.fromRgbF(r, g, b))
            swatch.setForeground(QColor("black" if (r + g + b) > 1.5 else "white"))
            cells = [
                swatch,
                QTableWidgetItem(row["name"]),
                QTableWidgetItem(f"{row['voxels']:,}"),
                QTableWidgetItem(f"{row['ml']:.2f}"),
            ]
            for column, item in enumerate(cells):
                if column in (0, 2, 3):
                    item.setTextAlignment(
                        Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter
                    )
                self.table.setItem(i, column, item)
        total = sum(row["ml"] for row in rows)
        voxel_ml = float(np.prod(labels.spacing)) / 1000.0
        self.total.setText(f"All labels: {total:.1f} mL (1 voxel = {voxel_ml * 1000:.3g} mm³)")
        self.copy_button.setEnabled(bool(rows))

    def copy_table(self) -> str:
        """Copy the volume table to the clipboard as TSV and return the text."""
        text = volume_table_tsv(self.rows)
        QApplication.clipboard().setText(text)
        return text
