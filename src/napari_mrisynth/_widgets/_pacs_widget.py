"""PACS dock: choose a node, search it, retrieve series into the cache and open them, send.

Thin over :mod:`napari_mrisynth.pacs` (no protocol logic here): echo, search, retrieve and
send each run in a napari thread worker, one at a time; progress comes back through a Qt
signal (the service calls it from its own threads) and layers are added only on the GUI
thread. Retrieved series open through the project's DICOM reader
(:func:`~._reader.series_layer_data`), so they carry the same patient geometry as a folder
opened from disk. Tests wait with ``qtbot.waitUntil(lambda: not widget.busy)`` (or on the
:attr:`PacsWidget.idle` signal).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari.qt.threading import create_worker
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFileDialog,
    QGridLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMenu,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from napari_mrisynth.errors import MrisynthError

from ._layer_data import LayerData
from ._reader import irregular_summary, series_layer_data
from ._study_fields import show_error

if TYPE_CHECKING:
    import napari

    from napari_mrisynth.pacs import SeriesRecord

#: Table columns, in order.
COLUMNS = ("Patient", "Date", "Modality", "Instances", "Description")
NODE_PLACEHOLDER = "dimse://AET@host:port, dicomweb:http://host:port/root or a node name"


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _date(text: str) -> str:
    return f"{text[:4]}-{text[4:6]}-{text[6:8]}" if len(text) == 8 and text.isdigit() else text


def record_row(record: SeriesRecord) -> tuple[str, ...]:
    """The table cells of one series, in :data:`COLUMNS` order."""
    name = record.patient_name.replace("^", " ").strip()
    patient = " · ".join(text for text in (record.patient_id, name) if text)
    number = "" if record.series_number is None else f"{record.series_number} · "
    return (
        patient or "—",
        _date(record.study_date) or "—",
        record.modality or "—",
        "?" if record.instances is None else str(record.instances),
        number + (record.series_description or "(no description)"),
    )


def record_tooltip(record: SeriesRecord) -> str:
    return "\n".join(
        (
            f"Patient: {record.patient_name or '—'} (ID {record.patient_id or '—'})",
            f"Series: {record.series_description or '(no description)'}",
            f"Study: {record.study_description or '(no description)'}",
            f"Study UID: {record.study_uid}",
            f"Series UID: {record.series_uid}",
        )
    )


@dataclass
class Opened:
    """What a retrieval gave: layers to add (GUI thread), notes to show, or a cancellation."""

    layers: list[LayerData] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    complete: int = 0
    cancelled: bool = False
    seconds: float = 0.0


class PacsWidget(QWidget):
    """Dock widget: find series on a PACS node, retrieve and open them, send files to it.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer retrieved series are added to.
    """

    #: (series index, series count, instances done, instances in the series); emitted from
    #: the service's threads, delivered on the GUI thread.
    progressed = Signal(int, int, int, int)
    #: Emitted with the operation's name ("echo", "search", "retrieve", "send") when it ends.
    idle = Signal(str)

    def __init__(self, napari_viewer: napari.Viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.records: list[SeriesRecord] = []
        self.worker: Any = None
        self.operation: str | None = None
        self.last_error: str | None = None
        self.last_layers: list[Any] = []
        self._cancel = threading.Event()

        # -- node -----------------------------------------------------------------------
        self.node = QComboBox()
        self.node.setEditable(True)
        self.node.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
        self.node.lineEdit().setPlaceholderText(NODE_PLACEHOLDER)
        self.node.setToolTip(
            "A node-book name (mrisynth pacs nodes add NAME ADDRESS) or an address. "
            "Credentials: MRISYNTH_PACS_[NAME_]USERNAME/_PASSWORD/_TOKEN or the OS keyring"
        )
        self.node.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
        )
        self.node.setMinimumContentsLength(24)
        self.echo_button = QPushButton("Echo")
        self.echo_button.setToolTip("C-ECHO (DIMSE) or a one-study QIDO-RS search (DICOMweb)")
        self.echo_button.clicked.connect(self.start_echo)
        node_row = QHBoxLayout()
        node_row.addWidget(QLabel("Node"))
        node_row.addWidget(self.node, 1)
        node_row.addWidget(self.echo_button)

        # -- search ---------------------------------------------------------------------
        self.patient_id = QLineEdit(placeholderText="exact")
        self.patient_name = QLineEdit(placeholderText="free text, * ?")
        self.study_date = QLineEdit(placeholderText="YYYYMMDD[-YYYYMMDD]")
        self.study_date.setToolTip("A date (YYYYMMDD) or a range (YYYYMMDD-YYYYMMDD)")
        self.modality = QLineEdit(placeholderText="e.g. MR")
        self.description = QLineEdit(placeholderText="series description, free text")
        grid = QGridLayout()
        for row, column, label, field_ in (
            (0, 0, "Patient ID", self.patient_id),
            (0, 2, "Name", self.patient_name),
            (1, 0, "Study date", self.study_date),
            (1, 2, "Modality", self.modality),
        ):
            grid.addWidget(QLabel(label), row, column)
            grid.addWidget(field_, row, column + 1)
        grid.addWidget(QLabel("Description"), 2, 0)
        grid.addWidget(self.description, 2, 1, 1, 3)
        grid.setColumnStretch(1, 1)
        grid.setColumnStretch(3, 1)
        for field_ in self._search_fields():
            field_.returnPressed.connect(self.start_search)
        self.search_button = QPushButton("Search")
        self.search_button.clicked.connect(self.start_search)

        # -- results --------------------------------------------------------------------
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.setMinimumHeight(160)
        self.table.setWordWrap(False)
        self.table.setTextElideMode(Qt.TextElideMode.ElideRight)
        header = self.table.horizontalHeader()
        header.setMinimumSectionSize(40)
        for column, name in enumerate(COLUMNS):  # free text shares the width; the rest fit
            stretch = name in ("Patient", "Description")
            header.setSectionResizeMode(
                column,
                QHeaderView.ResizeMode.Stretch
                if stretch
                else QHeaderView.ResizeMode.ResizeToContents,
            )
        self.table.itemSelectionChanged.connect(self._update_buttons)
        self.table.doubleClicked.connect(self.start_retrieve)

        # -- retrieve / send ------------------------------------------------------------
        self.retrieve_button = QPushButton("Retrieve and open")
        self.retrieve_button.setToolTip(
            "Into the local cache ($MRISYNTH_PACS_CACHE), each series complete or not at all; "
            "a series already there is not fetched again"
        )
        self.retrieve_button.clicked.connect(self.start_retrieve)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        self.progress = QProgressBar()
        self.progress.setTextVisible(True)
        self.progress.setFormat("")
        self.progress.setValue(0)
        transfer = QHBoxLayout()
        transfer.addWidget(self.retrieve_button)
        transfer.addWidget(self.progress, 1)
        transfer.addWidget(self.cancel_button)

        self.send_button = QPushButton("Send…")
        self.send_button.setToolTip(
            "Send DICOM files or folders to the node (C-STORE or STOW-RS): a corrected "
            "mask's DICOM SEG, an approved export, a series folder"
        )
        menu = QMenu(self.send_button)
        menu.addAction("Folder… (a series, an export)", self._choose_folder)
        menu.addAction("Files… (DICOM SEG, instances)", self._choose_files)
        self.send_button.setMenu(menu)

        self.status = QLabel("Choose a node, then search it.")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        self.setMinimumWidth(460)  # room for patient and description beside the numbers
        layout = QVBoxLayout(self)
        layout.addLayout(node_row)
        layout.addLayout(grid)
        layout.addWidget(self.search_button)
        layout.addWidget(self.table, 1)
        layout.addLayout(transfer)
        layout.addWidget(self.send_button)
        layout.addWidget(self.status)

        self.progressed.connect(self._show_progress)
        self.refresh_nodes()
        self._update_buttons()

    # -- state ----------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        """True while an echo, search, retrieval or send is running."""
        return self.operation is not None

    def _search_fields(self) -> tuple[QLineEdit, ...]:
        return (self.patient_id, self.patient_name, self.study_date, self.modality,
                self.description)  # fmt: skip

    def _update_buttons(self) -> None:
        free = not self.busy
        for button in (self.echo_button, self.search_button, self.send_button):
            button.setEnabled(free)
        self.retrieve_button.setEnabled(free and bool(self.selected_records()))
        self.cancel_button.setEnabled(self.operation == "retrieve" and not self._cancel.is_set())

    def _error(self, message: str) -> None:
        self.last_error = message
        show_error(self.status, message)

    def _say(self, message: str) -> None:
        self.status.setText(message)

    def showEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        """The node book is read again whenever the dock is shown."""
        self.refresh_nodes()
        super().showEvent(event)

    def refresh_nodes(self) -> None:
        """List the node book's names (the text typed in is kept)."""
        from napari_mrisynth.pacs import NodeBook, PacsError

        text = self.node.currentText()
        self.node.clear()
        try:
            nodes = NodeBook().nodes()
        except PacsError as exc:
            self._error(_one_line(exc))
            nodes = []
        for node in nodes:
            self.node.addItem(node.name or node.address)
            self.node.setItemData(self.node.count() - 1, node.address, Qt.ItemDataRole.ToolTipRole)
        self.node.setEditText(text)

    def node_text(self) -> str:
        return self.node.currentText().strip()

    def _start(self, operation: str, function, *args, done) -> Any:
        """Run ``function(*args)`` in a worker; ``done(result)`` on the GUI thread after."""
        if self.busy:
            self._error(f"busy: wait for the {self.operation} to end (or cancel it)")
            return None
        self.last_error = None
        self.operation = operation
        worker = create_worker(function, *args, _start_thread=False, _connect={"returned": done})
        worker.finished.connect(lambda: self._finished(operation))
        self.worker = worker
        self._update_buttons()
        worker.start()
        return worker

    def _finished(self, operation: str) -> None:
        self.operation = None
        self._update_buttons()
        self.idle.emit(operation)

    def _need_node(self) -> str | None:
        text = self.node_text()
        if not text:
            self._error("choose a node: a node-book name or an address (" + NODE_PLACEHOLDER + ")")
        return text or None

    # -- echo -----------------------------------------------------------------------------
    def start_echo(self):
        """Echo the node (C-ECHO or a QIDO-RS probe) in a worker."""
        node = self._need_node()
        if node is None:
            return None
        self._say(f"Echoing {node} …")
        return self._start("echo", _echo, node, done=self._echoed)

    def _echoed(self, result: tuple[str, float] | str) -> None:
        if isinstance(result, str):
            self._error(result)
        else:
            node, seconds = result
            self._say(f"{node}: answered in {seconds * 1000:.0f} ms")

    # -- search ---------------------------------------------------------------------------
    def start_search(self):
        """Search the node for series matching the fields, in a worker."""
        node = self._need_node()
        if node is None:
            return None
        filters = {
            "patient_id": self.patient_id.text().strip() or None,
            "patient_name": self.patient_name.text().strip() or None,
            "study_date": self.study_date.text().strip() or None,
            "modality": self.modality.text().strip() or None,
            "description": self.description.text().strip() or None,
        }
        self._say(f"Searching {node} …")
        return self._start("search", _search, node, filters, done=self._searched)

    def _searched(self, result: tuple[str, list[SeriesRecord]] | str) -> None:
        if isinstance(result, str):
            self._error(result)
            return
        node, records = result
        self.show_records(records)
        self._say(f"{len(records)} series on {node}" + ("" if records else " match the search"))

    def show_records(self, records: Sequence[SeriesRecord]) -> None:
        """Fill the table; a single match is selected."""
        self.records = list(records)
        self.table.clearSelection()
        self.table.setRowCount(len(self.records))
        for row, record in enumerate(self.records):
            tip = record_tooltip(record)
            for column, text in enumerate(record_row(record)):
                item = QTableWidgetItem(text)
                item.setToolTip(tip)
                if column == 3:
                    item.setTextAlignment(
                        Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter
                    )
                self.table.setItem(row, column, item)
        if len(self.records) == 1:
            self.table.selectRow(0)
        self._update_buttons()

    def selected_records(self) -> list[SeriesRecord]:
        """The series of the selected rows, in table order."""
        rows = sorted({index.row() for index in self.table.selectionModel().selectedRows()})
        return [self.records[row] for row in rows if row < len(self.records)]

    # -- retrieve -------------------------------------------------------------------------
    def start_retrieve(self):
        """Retrieve the selected series into the cache and open them, in a worker."""
        node = self._need_node()
        chosen = self.selected_records()
        if node is None or not chosen:
            if node is not None:
                self._error("select one or more series to retrieve")
            return None
        self._cancel = threading.Event()
        self.progress.setRange(0, 0)  # busy until the first instance arrives
        self.progress.setFormat("asking the node …")
        self._say(f"Retrieving {len(chosen)} series from {node} …")
        return self._start("retrieve", _retrieve, node, chosen, self._cancel, self._report,
                           done=self._retrieved)  # fmt: skip

    def cancel(self) -> None:
        """Stop the retrieval under way: what arrived stays in the cache for a resume, and no
        series is published or opened incomplete."""
        if self.operation != "retrieve":
            return
        self._cancel.set()
        self.progress.setFormat("cancelling …")
        self._say("Cancelling …")
        self._update_buttons()

    def _report(self, index: int, count: int, done: int, total: int) -> None:
        try:
            self.progressed.emit(index, count, done, total)
        except RuntimeError:  # the dock was closed while the transfer ran
            pass

    def _show_progress(self, index: int, count: int, done: int, total: int) -> None:
        if not self.busy:
            return
        self.progress.setRange(0, max(total, 1))
        self.progress.setValue(done)
        unit = "instances" if self.operation == "retrieve" else "files"
        prefix = f"series {index + 1} of {count}: " if count > 1 else ""
        self.progress.setFormat(f"{prefix}%v of %m {unit}")

    def _failed(self, result: object) -> bool:
        """Reset the progress bar; show a worker's error line (a str) and say so."""
        self.progress.setRange(0, 1)
        if not isinstance(result, str):
            return False
        self.progress.setValue(0)
        self.progress.setFormat("failed")
        self._error(result)
        return True

    def _retrieved(self, result: Opened | str) -> None:
        if self._failed(result):
            return
        if result.cancelled:
            self.progress.setValue(0)
            self.progress.setFormat("cancelled")
            kept = f"; {result.complete} series complete in the cache" if result.complete else ""
            self._say(
                "Cancelled: nothing opened; the instances that arrived are kept for a resume" + kept
            )
            return
        self.progress.setValue(1)
        self.progress.setFormat("done")
        self.last_layers = []
        for data, kwargs, layer_type in result.layers:
            self.last_layers.append(getattr(self.viewer, f"add_{layer_type}")(data, **kwargs))
        names = ", ".join(layer.name for layer in self.last_layers) or "no layer"
        message = f"Opened {names} ({result.seconds:.1f} s)"
        if result.notes:
            self._error(f"{message}; " + "; ".join(result.notes))
        else:
            self._say(message)

    # -- send -----------------------------------------------------------------------------
    def _choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder to send (searched for DICOM)")
        if folder:
            self.send_paths([folder])

    def _choose_files(self) -> None:
        files, _ = QFileDialog.getOpenFileNames(
            self, "DICOM files to send", "", "DICOM (*.dcm *.dicom *.ima);;All files (*)"
        )
        if files:
            self.send_paths(files)

    def send_paths(self, paths: Sequence[str | Path]):
        """Send files and folders (searched for DICOM) to the node, in a worker."""
        node = self._need_node()
        if node is None or not paths:
            return None
        paths = [Path(p) for p in paths]
        self.progress.setRange(0, 0)
        self.progress.setFormat("reading files …")
        what = paths[0].name if len(paths) == 1 else f"{len(paths)} paths"
        self._say(f"Sending {what} to {node} …")
        return self._start("send", _send, node, paths, self._report, done=self._sent)

    def _sent(self, result: tuple[str, int, float] | str) -> None:
        if self._failed(result):
            return
        node, count, seconds = result
        self.progress.setValue(1)
        self.progress.setFormat("sent")
        self._say(f"Sent {count} instance(s) to {node} ({seconds:.1f} s)")


# -- worker bodies: no Qt object touched; expected failures come back as one line -----------
def _echo(node_text: str) -> tuple[str, float] | str:
    from napari_mrisynth.pacs import echo, resolve

    try:
        node = resolve(node_text)
        return str(node), echo(node)
    except MrisynthError as exc:
        return _one_line(exc)


def _search(node_text: str, filters: dict[str, str | None]) -> tuple[str, list] | str:
    from napari_mrisynth.pacs import find_series, resolve

    try:
        node = resolve(node_text)
        return str(node), find_series(node, **filters)
    except MrisynthError as exc:
        return _one_line(exc)


def _retrieve(node_text: str, chosen: list, cancel: threading.Event, report) -> Opened | str:
    """Each series into the cache (one at a time, so a cancel stops between series too),
    then every one read through the project's DICOM reader."""
    from napari_mrisynth.io.dicom import scan_folder
    from napari_mrisynth.pacs import SeriesCache, resolve, retrieve

    started = time.perf_counter()
    opened = Opened()
    try:
        node = resolve(node_text)
        cache = SeriesCache()
        folders = []
        for index, record in enumerate(chosen):  # a set cancel stops retrieve: see except
            (folder,) = retrieve(
                node,
                [record],
                cache=cache,
                cancel=cancel,
                progress=lambda done, total, i=index: report(i, len(chosen), done, total),
            )
            folders.append(folder)
            opened.complete += 1
        if cancel.is_set():
            opened.cancelled = True
            return opened
        for record, folder in zip(chosen, folders, strict=True):
            scan = scan_folder(folder)
            name = record.series_description or record.series_uid
            if scan.skipped:
                opened.notes.append(f"{name}: {len(scan.skipped)} file(s) skipped")
            if not scan.series:
                opened.notes.append(f"{name}: no image series to open")
            for series in scan.series:
                if series.irregular == "refuse":
                    opened.notes.append(f"{irregular_summary(series)}; not loaded")
                    continue
                data, kwargs, layer_type = series_layer_data(series)
                kwargs["metadata"]["pacs"] = {"node": node.address, "series_uid": series.uid}
                opened.layers.append((data, kwargs, layer_type))
    except MrisynthError as exc:
        if cancel.is_set():
            opened.cancelled = True
            return opened
        return _one_line(exc)
    opened.seconds = time.perf_counter() - started
    return opened


def _send(node_text: str, paths: list[Path], report) -> tuple[str, int, float] | str:
    from napari_mrisynth.pacs import resolve, send

    started = time.perf_counter()
    try:
        node = resolve(node_text)
        count = send(node, paths, progress=lambda done, total: report(0, 1, done, total))
    except MrisynthError as exc:
        return _one_line(exc)
    return str(node), count, time.perf_counter() - started
