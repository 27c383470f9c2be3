"""Pieces the study widgets (Visual Turing test, Curate) share: the database field and the
way an error is shown."""

from __future__ import annotations

from pathlib import Path

from qtpy.QtWidgets import QFileDialog, QHBoxLayout, QLabel, QLineEdit, QPushButton, QWidget


class DatabaseField(QWidget):
    """A ratings database: a path (with a file dialog) or a server URL typed in."""

    def __init__(self, text: str | None, placeholder: str):
        super().__init__()
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.line = QLineEdit(text or "")
        self.line.setPlaceholderText(placeholder)
        browse = QPushButton("…")
        browse.setFixedWidth(30)
        browse.clicked.connect(self._browse)
        layout.addWidget(self.line)
        layout.addWidget(browse)

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Study database", "", "SQLite (*.db *.sqlite);;All files (*)"
        )
        if path:
            self.line.setText(path)

    def database(self) -> str:
        """The URL as typed, or the path with ``~`` expanded ("" when empty)."""
        text = self.line.text().strip()
        return text if "://" in text or not text else str(Path(text).expanduser())


def show_error(status: QLabel, message: str) -> None:
    """The message in the widget's status line (in red) and as a napari notification."""
    from napari.utils.notifications import show_error as notify

    status.setText(f"<span style='color:#e0605f'>{message}</span>")
    notify(message)
