"""Curation dock widget: a named curator reviews a study's synthetic volumes and decides.

The table ranks every synthetic volume by the raters' verdict (fooled rate, mean realism),
the memorization audit and the preselection rules (preselected first). Selecting a row
shows the volume as generated, in its own geometry, beside nothing else; Approve and Reject
append a decision (a rejection needs a reason) to the study's answer key, which is what
``mrisynth export`` reads. Approving a volume that fails the rules needs "Override the
rules" and a reason, and both are recorded. The curator is not blinded: this happens after
the rating, and needs the study's key file.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QFormLayout,
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

from ._study_fields import DatabaseField, show_error

if TYPE_CHECKING:
    import napari

    from napari_mrisynth.turing.curation import Candidate

COLUMNS = ("", "Volume", "Diagnosis", "Fooled", "Realism", "Audit", "Decision", "Generator")
DEFAULT_RULES = "realism>=4,fooled>=0.5,unflagged"


def _number(value: float | None, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def _fid(value: float | None) -> str:
    return "" if value is None else f" · FID {value:.1f}"


class CurationWidget(QWidget):
    """Review, approve and reject a study's synthetic volumes."""

    def __init__(self, napari_viewer: napari.Viewer, db: str | None = None,
                 key: str | None = None):  # fmt: skip
        super().__init__()
        self.viewer = napari_viewer
        self.candidates: list[Candidate] = []
        self.last_error: str | None = None
        self._layer: Any = None

        layout = QVBoxLayout(self)
        form = QFormLayout()
        self.db_field = DatabaseField(db, "ratings database of the study")
        self.db_path = self.db_field.line
        form.addRow("Study", self.db_field)
        self.key_field = DatabaseField(key, "the study's answer key (kept from the raters)")
        form.addRow("Key", self.key_field)
        self.rules = QLineEdit(DEFAULT_RULES)
        self.rules.setToolTip("realism>=X, fooled>=X (0-1 or %), judgments>=N, unflagged")
        form.addRow("Rules", self.rules)
        self.curator = QLineEdit()
        self.curator.setPlaceholderText("your name (recorded with every decision)")
        form.addRow("Curator", self.curator)
        layout.addLayout(form)
        self.load_button = QPushButton("Load ranking")
        self.load_button.clicked.connect(self.load)
        layout.addWidget(self.load_button)

        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.itemSelectionChanged.connect(self._selected)
        layout.addWidget(self.table, 1)

        self.details = QLabel()
        self.details.setWordWrap(True)
        self.details.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(self.details)
        self.reason = QLineEdit()
        self.reason.setPlaceholderText("reason (required to reject or to override)")
        layout.addWidget(self.reason)
        self.override = QCheckBox("Override the rules (approve a volume that fails them)")
        self.override.setToolTip("Needs a reason; the decision and the export manifest say so")
        layout.addWidget(self.override)
        buttons = QHBoxLayout()
        self.approve_button = QPushButton("Approve")
        self.approve_button.clicked.connect(lambda: self.decide("approved"))
        self.reject_button = QPushButton("Reject")
        self.reject_button.clicked.connect(lambda: self.decide("rejected"))
        self.apply_button = QPushButton("Apply rules to undecided")
        self.apply_button.clicked.connect(self.apply_rules)
        for button in (self.approve_button, self.reject_button, self.apply_button):
            buttons.addWidget(button)
        layout.addLayout(buttons)
        self.status = QLabel()
        self.status.setWordWrap(True)
        layout.addWidget(self.status)

    def _error(self, message: str) -> None:
        self.last_error = message
        show_error(self.status, message)

    def load(self) -> bool:
        """Rank the study's synthetic volumes by the rules and fill the table."""
        from napari_mrisynth.turing.curation import CurationRules, candidates

        self.last_error = None
        try:
            rules = CurationRules.parse(self.rules.text())
            self.candidates = candidates(self.db_field.database(), key=self.key_field.database(),
                                         rules=rules)  # fmt: skip
        except MrisynthError as exc:
            self._error(str(exc))
            return False
        self.table.setRowCount(len(self.candidates))
        for row, c in enumerate(self.candidates):
            audit = c.audit.get("similarity")
            flagged = " ⚑" if c.audit.get("flagged") else ""
            cells = (
                "✓" if c.preselected else "",
                c.volume_id,
                str(c.condition.get("diagnosis") or "—"),
                _number(c.scores.get("fooled_rate"), ".0%"),
                _number(c.scores.get("mean_realism"), ".2f"),
                _number(audit, ".3f") + flagged,
                (c.decision or {}).get("decision", "undecided"),
                c.generator + _fid(c.generator_metrics.get("fid")),
            )
            for column, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if column == 0 and not c.preselected:
                    item.setToolTip("; ".join(c.failures))
                self.table.setItem(row, column, item)
        n_pre = sum(c.preselected for c in self.candidates)
        self.status.setText(
            f"{len(self.candidates)} synthetic volumes; {n_pre} preselected by: {rules.describe()}."
        )
        return True

    def selected(self) -> Candidate | None:
        rows = {index.row() for index in self.table.selectedIndexes()}
        return self.candidates[rows.pop()] if len(rows) == 1 else None

    def _selected(self) -> None:
        candidate = self.selected()
        if candidate is None:
            return
        lines = [
            f"<b>{candidate.volume_id}</b> · {candidate.generator} · seed "
            f"{candidate.provenance.get('seed', '—')} · {candidate.source}"
        ]
        if candidate.failures:
            lines.append("Not preselected: " + "; ".join(candidate.failures))
        if candidate.decision:
            d = candidate.decision
            note = " (OVERRIDE)" if d.get("override") else ""
            lines.append(
                f"{d['decision']}{note} by {d['curator']} ({d['decided_at']}): {d['reason']}"
            )
        self.details.setText("<br>".join(lines))
        self.show_volume(candidate)

    def show_volume(self, candidate: Candidate) -> None:
        """Show the volume as generated (its own geometry), replacing the previous one."""
        from napari_mrisynth.io.files import load_volume
        from napari_mrisynth.volume import napari_layer_kwargs

        try:
            volume = load_volume(candidate.source).compute()
        except MrisynthError as exc:
            self._error(str(exc))
            return
        volume.metadata["name"] = f"{candidate.volume_id} (synthetic)"
        data, kwargs = napari_layer_kwargs(volume)
        if self._layer is not None and self._layer in self.viewer.layers:
            self.viewer.layers.remove(self._layer)
        self._layer = self.viewer.add_image(data, colormap="gray", **kwargs)
        self.viewer.reset_view()

    def decide(self, decision: str) -> bool:
        """Record the curator's decision on the selected volume."""
        from napari_mrisynth.turing.curation import CurationRules, decide

        candidate = self.selected()
        if candidate is None:
            self.status.setText("Select a volume first.")
            return False
        try:
            decide(
                self.db_field.database(),
                candidate.volume_id,
                decision,
                curator=self.curator.text(),
                reason=self.reason.text(),
                override=self.override.isChecked(),
                rules=CurationRules.parse(self.rules.text()),
                key=self.key_field.database(),
            )
        except MrisynthError as exc:
            self._error(str(exc))
            return False
        volume_id = candidate.volume_id
        self.load()
        self.status.setText(f"{volume_id}: {decision} by {self.curator.text().strip()}.")
        self.reason.clear()
        self.override.setChecked(False)
        return True

    def apply_rules(self) -> bool:
        """Approve the preselected and reject the others, for volumes not yet decided."""
        from napari_mrisynth.turing.curation import CurationRules, apply_rules

        try:
            rules = CurationRules.parse(self.rules.text())
            done = apply_rules(self.db_field.database(), rules, curator=self.curator.text(),
                               key=self.key_field.database())  # fmt: skip
        except MrisynthError as exc:
            self._error(str(exc))
            return False
        self.load()
        approved = sum(d["decision"] == "approved" for d in done)
        self.status.setText(
            f"{len(done)} decided by the rules: {approved} approved, "
            f"{len(done) - approved} rejected."
        )
        return True
