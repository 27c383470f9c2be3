"""Visual Turing test dock widget: a rater signs in and answers one blinded trial at a time.

Everything the rater sees comes from :class:`napari_mrisynth.turing.session.RaterSession`:
neutral layer names ("Case 17 · A"), empty metadata, layers built from arrays (so the layer
list's tooltip has no file), one fixed window, the same grid for every volume. A pair is
shown in grid mode (A left, B right) with shared camera and dims and linked contrast; each
trial starts from the same view. Every answer is committed to the ratings database on
submit; the answers so far are kept as a draft on every change, so a crash loses nothing
and the rater resumes on the same trial with the same answers and time.

Keys (while the viewer window is active and no text field has the focus):
``A``/``B`` (pair) or ``R``/``S`` (single) choose; ``1``-``5`` confidence; ``Ctrl+1``-``5``
realism of A (or of the volume); ``Alt+1``-``5`` realism of B; ``Enter`` submits; ``P``
pauses and resumes.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import Qt
from qtpy.QtGui import QKeySequence
from qtpy.QtWidgets import (
    QButtonGroup,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QShortcut,
    QVBoxLayout,
    QWidget,
)

from napari_mrisynth.errors import MrisynthError

from ._study_fields import DatabaseField, show_error

if TYPE_CHECKING:
    import napari

    from napari_mrisynth.turing.session import Presentation, RaterSession

ROLES = ("neuroradiologist", "radiologist", "radiology resident", "neurologist", "researcher",
         "other")  # fmt: skip
WINDOW = (0.0, 255.0)
QUESTION = {
    "pair": "One of these two volumes is real. Which one?",
    "single": "Is this volume real or synthetic?",
}
CHOICE_LABELS = {"pair": (("A", "A is real"), ("B", "B is real")),
                 "single": (("real", "Real"), ("synthetic", "Synthetic"))}  # fmt: skip
CHOICE_KEYS = {"pair": ("A", "B"), "single": ("R", "S")}


def viewer_state(viewer: napari.Viewer, layers: list[Any]) -> dict[str, Any]:
    """What the rater was looking at: dims, camera and the window of each shown layer."""
    camera = viewer.scene.camera
    return {
        "ndisplay": int(viewer.dims.ndisplay),
        "current_step": [int(v) for v in viewer.dims.current_step],
        "order": [int(v) for v in viewer.dims.order],
        "camera": {
            "center": [float(v) for v in camera.center],
            "zoom": float(camera.zoom),
            "angles": [float(v) for v in camera.angles],
        },  # fmt: skip
        "layers": [
            {
                "contrast_limits": [float(v) for v in layer.contrast_limits],
                "gamma": float(layer.gamma),
            }
            for layer in layers
        ],  # fmt: skip
    }


class ScoreRow(QWidget):
    """Five exclusive buttons, 1-5."""

    def __init__(self, on_change: Any, tooltip: str):
        super().__init__()
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.group = QButtonGroup(self)
        self.group.setExclusive(True)
        for value in range(1, 6):
            button = QPushButton(str(value))
            button.setCheckable(True)
            button.setToolTip(tooltip)
            button.setFixedWidth(34)
            self.group.addButton(button, value)
            layout.addWidget(button)
        self.group.idClicked.connect(lambda _: on_change())

    def value(self) -> int | None:
        value = self.group.checkedId()
        return value if value > 0 else None

    def set_value(self, value: int | None) -> None:
        if value is None:
            self.group.setExclusive(False)
            for button in self.group.buttons():
                button.setChecked(False)
            self.group.setExclusive(True)
        else:
            self.group.button(int(value)).setChecked(True)


class TuringWidget(QWidget):
    """Rate a blinded study: sign in, then answer each trial (choice, confidence, realism).

    Parameters
    ----------
    napari_viewer : napari.Viewer
    db : path, optional
        The ratings database (also settable in the widget).
    rater : str, optional
        The rater id given when the study was created.
    secret : str, optional
        The rater's secret (typed in the widget otherwise; never shown).
    """

    def __init__(self, napari_viewer: napari.Viewer, db: str | None = None,
                 rater: str | None = None, secret: str | None = None):  # fmt: skip
        super().__init__()
        self.viewer = napari_viewer
        self.session: RaterSession | None = None
        self.presentation: Presentation | None = None
        self._layers: list[Any] = []
        self._hidden: list[Any] = []
        self._restoring = False
        self._home_camera: tuple | None = None
        self.last_error: str | None = None
        self.turnover_ms: list[float] = []

        layout = QVBoxLayout(self)
        # -- sign in ------------------------------------------------------------------------
        self.sign_in_box = QGroupBox("Sign in")
        form = QFormLayout(self.sign_in_box)
        self.db_field = DatabaseField(db, "ratings database (e.g. study.db)")
        self.db_path = self.db_field.line
        form.addRow("Study", self.db_field)
        self.rater_id = QLineEdit(rater or "")
        self.rater_id.setPlaceholderText("your rater id (from the study organiser)")
        form.addRow("Rater id", self.rater_id)
        self.secret = QLineEdit(secret or "")
        self.secret.setEchoMode(QLineEdit.EchoMode.Password)
        self.secret.setPlaceholderText("your secret (from the study organiser)")
        form.addRow("Secret", self.secret)
        self.name = QLineEdit()
        form.addRow("Name", self.name)
        self.role = QComboBox()
        self.role.addItems(ROLES)
        form.addRow("Role", self.role)
        self.years = QDoubleSpinBox()
        self.years.setRange(0, 70)
        self.years.setDecimals(1)
        self.years.setSuffix(" years")
        self.years.setToolTip("Years of experience reading brain MRI")
        form.addRow("Experience", self.years)
        self.start_button = QPushButton("Sign in and start")
        self.start_button.clicked.connect(self.start)
        form.addRow(self.start_button)
        layout.addWidget(self.sign_in_box)

        # -- trial --------------------------------------------------------------------------
        self.trial_box = QGroupBox("Trial")
        trial = QVBoxLayout(self.trial_box)
        self.progress = QProgressBar()
        self.progress.setFormat("Trial %v of %m")
        trial.addWidget(self.progress)
        self.question = QLabel()
        self.question.setWordWrap(True)
        trial.addWidget(self.question)
        choice_row = QHBoxLayout()
        self.choice_group = QButtonGroup(self)
        self.choice_group.setExclusive(True)
        self.choice_buttons: list[QPushButton] = []
        for index in range(2):
            button = QPushButton()
            button.setCheckable(True)
            self.choice_group.addButton(button, index)
            self.choice_buttons.append(button)
            choice_row.addWidget(button)
        self.choice_group.idClicked.connect(lambda _: self._changed())
        trial.addLayout(choice_row)
        scores = QFormLayout()
        self.confidence = ScoreRow(self._changed, "1 = guessing, 5 = certain")
        scores.addRow("Confidence", self.confidence)
        self.realism = [ScoreRow(self._changed, "1 = clearly artificial, 5 = fully realistic")
                        for _ in range(2)]  # fmt: skip
        self.realism_labels = [QLabel("Realism A"), QLabel("Realism B")]
        for label, row in zip(self.realism_labels, self.realism, strict=True):
            scores.addRow(label, row)
        self.comment = QLineEdit()
        self.comment.setPlaceholderText("optional comment")
        self.comment.editingFinished.connect(self._changed)
        scores.addRow("Comment", self.comment)
        trial.addLayout(scores)
        self.submit_button = QPushButton("Submit ⏎")
        self.submit_button.clicked.connect(self.submit)
        trial.addWidget(self.submit_button)
        layout.addWidget(self.trial_box)
        self.pause_button = QPushButton("Pause (P)")
        self.pause_button.clicked.connect(self.toggle_pause)
        self.pause_button.setEnabled(False)
        self.sign_out_button = QPushButton("Sign out")
        self.sign_out_button.setToolTip("Answers so far are kept; sign in again to resume")
        self.sign_out_button.clicked.connect(self.sign_out)
        session_row = QHBoxLayout()
        session_row.addWidget(self.pause_button)
        session_row.addWidget(self.sign_out_button)
        layout.addLayout(session_row)
        self.keys_help = QLabel()
        self.keys_help.setWordWrap(True)
        self.keys_help.setStyleSheet("color: gray")
        layout.addWidget(self.keys_help)
        self.status = QLabel()
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        layout.addStretch(1)
        self.trial_box.setEnabled(False)
        self._shortcuts: list[QShortcut] = []

    # -- sign in ---------------------------------------------------------------------------
    def _error(self, message: str) -> None:
        self.last_error = message
        show_error(self.status, message)

    def start(self) -> bool:
        """Open the rater's session, record who they are, and show their current trial."""
        from napari_mrisynth.turing.session import RaterSession

        self.last_error = None
        db = self.db_field.database()
        rater = self.rater_id.text().strip()
        if not db or not rater or not self.secret.text():
            self._error("Give the study database, your rater id and your secret.")
            return False
        try:
            session = RaterSession(db, rater, secret=self.secret.text())
            session.sign_in(self.name.text(), self.role.currentText(), self.years.value())
        except MrisynthError as exc:
            self._error(str(exc))
            return False
        finally:
            self.secret.clear()  # not kept in the widget once used
        if self.session is not None:
            self.session.close()
        self.session = session
        self.sign_in_box.setEnabled(False)
        self._bind_keys()
        self._prepare_viewer()
        self.show_current()
        return True

    def _bind_keys(self) -> None:
        mode = self.session.mode
        bindings: list[tuple[str, Any]] = [
            (CHOICE_KEYS[mode][0], lambda: self.choose(0)),
            (CHOICE_KEYS[mode][1], lambda: self.choose(1)),
            ("Return", self.submit), ("Enter", self.submit), ("P", self.toggle_pause),
        ]  # fmt: skip
        for value in range(1, 6):
            bindings.append((str(value), lambda v=value: self.set_score(self.confidence, v)))
            bindings.append((f"Ctrl+{value}", lambda v=value: self.set_score(self.realism[0], v)))
            bindings.append((f"Alt+{value}", lambda v=value: self.set_score(self.realism[1], v)))
        for shortcut in self._shortcuts:
            shortcut.setEnabled(False)
            shortcut.deleteLater()
        self._shortcuts = []
        for key, slot in bindings:
            # Parented to this widget: the keys work wherever the focus is in the viewer, and
            # stop with the widget (hidden or removed), so a second widget never competes.
            shortcut = QShortcut(QKeySequence(key), self)
            shortcut.setContext(Qt.ShortcutContext.ApplicationShortcut)
            shortcut.activated.connect(slot)
            self._shortcuts.append(shortcut)
        keys = " / ".join(CHOICE_KEYS[mode])
        realism = "Ctrl+1-5 realism A, Alt+1-5 realism B" if mode == "pair" else \
            "Ctrl+1-5 realism"  # fmt: skip
        self.keys_help.setText(f"Keys: {keys} choose · 1-5 confidence · {realism} · "
                               "Enter submit · P pause")  # fmt: skip

    # -- the viewer ------------------------------------------------------------------------
    def _prepare_viewer(self) -> None:
        """Hide every other layer and create the study's neutral layers (once)."""
        from napari.experimental import link_layers

        self._hidden = [layer for layer in self.viewer.layers if layer.visible]
        for layer in self._hidden:
            layer.visible = False
        first = self.session.presentation()
        self.presentation = first
        if first is None:
            return
        self._layers = []
        for panel in first.panels:
            layer = self.viewer.add_image(
                panel.data, name=panel.name, scale=first.scale, units="mm", colormap="gray",
                contrast_limits=WINDOW, interpolation2d="linear", metadata={},
            )  # fmt: skip
            layer.contrast_limits_range = WINDOW
            self._layers.append(layer)
        if len(self._layers) > 1:
            link_layers(self._layers, ("contrast_limits", "gamma"))
            grid = self.viewer.canvas.grid
            grid.shape = (1, len(self._layers))
            grid.stride = 1  # the first layer added (A) takes the first (left) cell
            grid.enabled = True
        self.viewer.dims.ndisplay = 2

    def _reset_view(self) -> None:
        """Every trial starts from the same view: middle slices, whole volume in view (and
        the study window, set in :meth:`show_current`).

        Only what changed is set: each napari event costs a redraw, and the next trial
        must appear within 150 ms.
        """
        shape = self._layers[0].data.shape
        middle = tuple(size // 2 for size in shape)
        if tuple(self.viewer.dims.current_step) != middle:
            self.viewer.dims.current_step = middle
        if self.viewer.layers.selection.active is not self._layers[0]:
            self.viewer.layers.selection.active = self._layers[0]
        home = self._home_camera
        camera = self.viewer.scene.camera
        if home is None or (tuple(camera.center), camera.zoom, tuple(camera.angles)) != home:
            self.viewer.reset_view()
            self._home_camera = (tuple(camera.center), camera.zoom, tuple(camera.angles))

    def show_current(self) -> None:
        """Put the session's current trial on screen (or say that the study is done)."""
        session = self.session
        shown = self.presentation if self.presentation is not None and \
            self.presentation.position == session.position else session.presentation()  # fmt: skip
        self.presentation = shown
        if shown is None:
            self._finish()
            return
        for layer, panel in zip(self._layers, shown.panels, strict=True):
            layer.data = panel.data
            layer.name = panel.name
            if not layer.visible:
                layer.visible = True
        first = self._layers[0]  # linked: the others follow
        if tuple(first.contrast_limits) != WINDOW or first.gamma != 1.0:
            first.contrast_limits = WINDOW
            first.gamma = 1.0
        self._reset_view()
        mode = shown.mode
        self.progress.setRange(0, shown.total)
        self.progress.setValue(shown.position + 1)
        self.progress.setFormat(f"Trial {shown.position + 1} of {shown.total}  ·  "
                                f"{session.done} rated")  # fmt: skip
        self.question.setText(f"<b>Case {shown.case}.</b> {QUESTION[mode]}")
        for button, (_, text) in zip(self.choice_buttons, CHOICE_LABELS[mode], strict=True):
            button.setText(f"{text} ({CHOICE_KEYS[mode][self.choice_buttons.index(button)]})")
        self.realism_labels[0].setText("Realism A" if mode == "pair" else "Realism")
        self.realism[1].setVisible(mode == "pair")
        self.realism_labels[1].setVisible(mode == "pair")
        self._restore(session.draft_state)
        self.trial_box.setEnabled(True)
        self.pause_button.setEnabled(True)
        self.status.setText("")
        session.start_trial_clock()

    def _finish(self) -> None:
        self.trial_box.setEnabled(False)
        self.pause_button.setEnabled(False)
        total = self.session.total
        self.progress.setRange(0, max(total, 1))
        self.progress.setValue(total)
        self.progress.setFormat(f"All {total} trials rated")
        self.question.setText("<b>Thank you.</b> Every trial of this study is rated and saved.")
        self._give_back_viewer()

    def _give_back_viewer(self) -> None:
        """Remove the study's layers, leave grid mode, show the layers hidden at the start."""
        from napari.experimental import unlink_layers

        present = [layer for layer in self._layers if layer in self.viewer.layers]
        if len(present) > 1:
            unlink_layers(present)
        for layer in present:
            self.viewer.layers.remove(layer)
        self._layers = []
        self.viewer.canvas.grid.enabled = False
        for layer in self._hidden:
            if layer in self.viewer.layers:
                layer.visible = True
        self._hidden = []

    # -- answers ---------------------------------------------------------------------------
    def choose(self, index: int) -> None:
        if self.trial_box.isEnabled():
            self.choice_buttons[index].setChecked(True)
            self._changed()

    def set_score(self, row: ScoreRow, value: int) -> None:
        if self.trial_box.isEnabled() and not row.isHidden():
            row.set_value(value)
            self._changed()

    def _choice(self) -> str | None:
        index = self.choice_group.checkedId()
        if index < 0 or self.session is None:
            return None
        return CHOICE_LABELS[self.session.mode][index][0]

    def _state(self) -> dict[str, Any]:
        n = 2 if self.session.mode == "pair" else 1
        return {"choice": self._choice(), "confidence": self.confidence.value(),
                "realism": [row.value() for row in self.realism[:n]],
                "comment": self.comment.text()}  # fmt: skip

    def _restore(self, state: dict[str, Any]) -> None:
        self._restoring = True
        try:
            choice = state.get("choice")
            labels = [c for c, _ in CHOICE_LABELS[self.session.mode]]
            self.choice_group.setExclusive(False)
            for button in self.choice_buttons:
                button.setChecked(False)
            self.choice_group.setExclusive(True)
            if choice in labels:
                self.choice_buttons[labels.index(choice)].setChecked(True)
            self.confidence.set_value(state.get("confidence"))
            realism = list(state.get("realism") or [])
            for index, row in enumerate(self.realism):
                row.set_value(realism[index] if index < len(realism) else None)
            self.comment.setText(state.get("comment") or "")
        finally:
            self._restoring = False

    def _changed(self) -> None:
        """Keep the answers so far as a draft (committed: a crash loses nothing)."""
        if self._restoring or self.session is None or self.session.finished:
            return
        state = self._state()
        state["viewer"] = viewer_state(self.viewer, self._layers)
        try:
            self.session.save_draft(state)
        except MrisynthError as exc:
            self._error(str(exc))

    def submit(self) -> bool:
        """Commit the answer and show the next trial (prepared in the background)."""
        from napari_mrisynth.turing.session import Answer

        if self.session is None or not self.trial_box.isEnabled():
            return False
        state = self._state()
        missing = [name for name, value in (("the choice", state["choice"]),
                                             ("confidence", state["confidence"]))
                   if value is None]  # fmt: skip
        if any(v is None for v in state["realism"]):
            missing.append("realism")
        if missing:
            self.status.setText(f"Give {', '.join(missing)} before submitting.")
            return False
        clock = time.perf_counter()
        answer = Answer(state["choice"], state["confidence"], state["realism"],
                        state["comment"])  # fmt: skip
        try:
            self.session.submit(answer, viewer_state(self.viewer, self._layers))
        except MrisynthError as exc:
            self._error(str(exc))
            return False
        self.presentation = None
        self.show_current()
        self.turnover_ms.append((time.perf_counter() - clock) * 1000.0)
        return True

    def toggle_pause(self) -> None:
        """Hide the volumes and stop the trial clock, or bring them back."""
        session = self.session
        if session is None or session.finished:
            return
        if session.paused:
            session.resume()
            for layer in self._layers:
                layer.visible = True
            self.trial_box.setEnabled(True)
            self.pause_button.setText("Pause (P)")
            self.status.setText("")
        else:
            self._changed()
            session.pause()
            for layer in self._layers:
                layer.visible = False
            self.trial_box.setEnabled(False)
            self.pause_button.setText("Resume (P)")
            self.status.setText("Paused: the clock is stopped and the volumes are hidden.")

    def sign_out(self) -> None:
        """Keep the current answers as a draft, close the session, give the viewer back."""
        if self.session is not None:
            if not self.session.finished:
                self._changed()
            self.session.close()
            self.session = None
        for shortcut in self._shortcuts:
            shortcut.setEnabled(False)
        self._give_back_viewer()
        self.trial_box.setEnabled(False)
        self.pause_button.setEnabled(False)
        self.sign_in_box.setEnabled(True)

    def closeEvent(self, event: Any) -> None:  # noqa: N802 (Qt's name)
        self.sign_out()
        super().closeEvent(event)


def rate_in_napari(db: str, rater: str | None = None, secret: str | None = None) -> int:
    """``mrisynth study rate``: napari with the Visual Turing test docked on ``db``; returns
    when the rater closes the window."""
    import napari

    viewer = napari.Viewer(title="Visual Turing test")
    viewer.window.add_dock_widget(TuringWidget(viewer, db=db, rater=rater, secret=secret),
                                  name="Visual Turing test", area="right")  # fmt: skip
    napari.run()
    return 0
