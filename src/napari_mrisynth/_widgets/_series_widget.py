"""Series browser: pick a DICOM folder, see every series with its geometry and problems,
load the ones chosen. Scanning and loading run in napari thread workers; layers are added
only in the callbacks, on the GUI thread."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from napari.qt.threading import thread_worker
from napari.utils.notifications import show_error, show_warning
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from napari_mrisynth.errors import MrisynthError
from napari_mrisynth.io.dicom import FolderScan, Series, scan_folder
from napari_mrisynth.volume import is_axis_aligned, orientation_code

from ._layer_data import LayerData
from ._reader import irregular_summary, series_layer_data, skipped_summary

if TYPE_CHECKING:
    import napari

#: Table columns, in order.
COLUMNS = ("Series", "Description", "Matrix", "Spacing (mm)", "Orientation", "Modality", "Problems")


def series_row(series: Series) -> tuple[str, ...]:
    """The table cells of one series, in :data:`COLUMNS` order."""
    nz, ny, nx = series.shape
    orientation = orientation_code(series.direction)
    if not is_axis_aligned(series.direction):
        orientation += " (oblique)"
    number = "-" if series.number is None else str(series.number)
    return (
        number + (f" (stack {series.stack})" if series.stack else ""),
        series.description,
        f"{nx}×{ny}×{nz}",
        " × ".join(f"{s:.3g}" for s in np.asarray(series.spacing)),
        orientation,
        series.modality,
        "; ".join(series.problems) or "none",
    )


class SeriesBrowser(QWidget):
    """Dock widget listing the series of a DICOM folder; loads the selected ones lazily.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer the loaded series are added to.
    """

    def __init__(self, napari_viewer: napari.Viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.scan: FolderScan | None = None

        self.folder = QLineEdit(placeholderText="DICOM folder or file")
        self.folder.returnPressed.connect(self.start_scan)
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._choose_folder)
        self.scan_button = QPushButton("Scan")
        self.scan_button.clicked.connect(self.start_scan)
        picker = QHBoxLayout()
        picker.addWidget(self.folder)
        picker.addWidget(browse)
        picker.addWidget(self.scan_button)

        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.setMinimumHeight(180)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setStretchLastSection(True)
        self.table.itemSelectionChanged.connect(self._update_load_button)
        self.table.doubleClicked.connect(self.load_selected)

        self.resample = QCheckBox("Resample irregular series (gap, tilt) onto a regular grid")
        self.resample.toggled.connect(self._update_load_button)
        self.load_button = QPushButton("Load selected")
        self.load_button.setEnabled(False)
        self.load_button.clicked.connect(self.load_selected)
        self.found = QLabel("Choose a folder and scan it.")
        self.status = QLabel()
        for label in (self.found, self.status):
            label.setWordWrap(True)
            label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        layout = QVBoxLayout(self)
        layout.addLayout(picker)
        layout.addWidget(self.table)
        layout.addWidget(self.found)
        layout.addWidget(self.resample)
        layout.addWidget(self.load_button)
        layout.addWidget(self.status)

    # -- scanning ---------------------------------------------------------------------------
    def _choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "DICOM folder", self.folder.text())
        if folder:
            self.folder.setText(folder)
            self.start_scan()

    def start_scan(self):
        """Scan the folder in a worker thread; the table fills when it is done."""
        path = self.folder.text().strip()
        if not path:
            return None
        self.scan_button.setEnabled(False)
        self.found.setText(f"Scanning {path} …")
        worker = _scan_worker(Path(path))
        worker.returned.connect(self.show_scan)
        worker.errored.connect(self._scan_failed)
        worker.finished.connect(lambda: self.scan_button.setEnabled(True))
        worker.start()
        return worker

    def show_scan(self, scan: FolderScan) -> None:
        """Fill the table from a finished scan and report skipped files."""
        self.scan = scan
        self.table.setRowCount(len(scan.series))
        for row, series in enumerate(scan.series):
            for column, text in enumerate(series_row(series)):
                item = QTableWidgetItem(text)
                item.setToolTip(series.describe())
                self.table.setItem(row, column, item)
        message = f"{len(scan.series)} series in {scan.root}"
        if scan.skipped:
            message += "\n" + skipped_summary(scan)
        self.found.setText(message)
        self.status.clear()
        if len(scan.series) == 1:
            self.table.selectRow(0)

    def _scan_failed(self, exc: Exception) -> None:
        self.found.setText(str(exc))
        if isinstance(exc, MrisynthError):
            show_error(str(exc))
        else:
            raise exc

    # -- loading ----------------------------------------------------------------------------
    def selected_series(self) -> list[Series]:
        """The series of the selected rows, in table order."""
        if self.scan is None:
            return []
        rows = sorted({index.row() for index in self.table.selectionModel().selectedRows()})
        return [self.scan.series[row] for row in rows]

    def _update_load_button(self) -> None:
        chosen = self.selected_series()
        self.load_button.setEnabled(bool(chosen))
        blocked = [s for s in chosen if not s.regular and not self.resample.isChecked()]
        if blocked:
            self.status.setText(
                "\n".join(irregular_summary(s) for s in blocked)
                + "\nTick 'Resample' to load these series on a regular grid."
            )

    def load_selected(self):
        """Load the selected series in a worker thread; each becomes a layer when read."""
        resample = self.resample.isChecked()
        chosen = []
        for series in self.selected_series():
            if series.irregular == "refuse":
                show_warning(f"{irregular_summary(series)}; cannot be loaded")
            elif series.regular or resample:
                chosen.append(series)
            else:
                show_warning(f"{irregular_summary(series)}; tick 'Resample' to load it")
        if not chosen:
            return None
        self.load_button.setEnabled(False)
        self.status.setText(f"Loading {len(chosen)} series …")
        worker = _load_worker(chosen, resample)
        worker.yielded.connect(self._add_layer)
        worker.errored.connect(self._load_failed)
        worker.finished.connect(self._update_load_button)
        worker.start()
        return worker

    def _add_layer(self, layer_data: LayerData) -> None:
        data, kwargs, layer_type = layer_data
        layer = getattr(self.viewer, f"add_{layer_type}")(data, **kwargs)
        self.status.setText(f"Loaded {layer.name}")

    def _load_failed(self, exc: Exception) -> None:
        self.status.setText(str(exc))
        if isinstance(exc, MrisynthError):
            show_error(str(exc))
        else:
            raise exc


@thread_worker(progress={"desc": "Scanning DICOM folder"})
def _scan_worker(path: Path) -> FolderScan:
    return scan_folder(path)


@thread_worker(progress={"desc": "Reading DICOM series"})
def _load_worker(chosen: list[Series], resample: bool):
    for series in chosen:
        yield series_layer_data(series, resample=resample and not series.regular)
