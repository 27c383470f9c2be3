"""Types and byte-exact writers shared by the BIDS, DICOM and manifest parts of an export.

Every file of an export goes through :class:`FileWriter`, which records the SHA-256 and
size of the bytes it wrote, so that the manifest lists exactly what was written and the
final check can compare the disk with it.
"""

from __future__ import annotations

import datetime
import gzip
import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_mrisynth.errors import MrisynthError

#: Keys of the generator's provenance that describe the model and the sampling, not its
#: training data, machine or file paths.
PROVENANCE_GENERATOR_KEYS = ("id", "version", "weights_sha256")
PROVENANCE_KEYS = ("seed", "noise_seed", "condition", "sampling")

#: Rater score columns of participants.tsv, in order.
SCORE_KEYS = ("n_judgments", "fooled_rate", "mean_realism", "mean_confidence")


class ExportError(MrisynthError):
    """An approved set cannot be exported: bad input, existing output, a failed write or check."""


@dataclass
class ExportResult:
    """What :func:`napari_mrisynth.export.export_set` wrote.

    Attributes
    ----------
    out : Path
        The export folder.
    files : list of Path
        Every file written, relative to ``out``, sorted.
    manifest : Path
        ``out / "manifest.json"``.
    """

    out: Path
    files: list[Path]
    manifest: Path


@dataclass(frozen=True)
class FileRecord:
    """SHA-256 and size of one written file, by its path relative to the export root."""

    path: str
    sha256: str
    size: int

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "size": self.size}


@dataclass
class FileWriter:
    """Writes files under ``root`` and remembers the hash of every one."""

    root: Path
    records: dict[str, FileRecord] = field(default_factory=dict)

    def write_bytes(self, relative: str, data: bytes) -> FileRecord:
        """Write ``data`` to ``root / relative`` (parents created) and record it."""
        if relative in self.records:
            raise ExportError(f"{self.root / relative}: written twice in one export")
        path = self.root / relative
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        except OSError as exc:
            raise ExportError(f"{path}: cannot write: {exc}") from exc
        record = FileRecord(relative, hashlib.sha256(data).hexdigest(), len(data))
        self.records[relative] = record
        return record

    def write_json(self, relative: str, value: Any) -> FileRecord:
        return self.write_bytes(relative, json_bytes(value, self.root / relative))

    def write_text(self, relative: str, text: str) -> FileRecord:
        return self.write_bytes(relative, text.encode("utf-8"))


def _plain(value: Any) -> Any:
    """numpy scalars (scores computed with numpy) as Python numbers; anything else refused."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} {value!r} is not JSON data")


def json_bytes(value: Any, context: Path) -> bytes:
    """Deterministic UTF-8 JSON: sorted keys, two-space indent, trailing newline."""
    try:
        text = json.dumps(
            value, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False, default=_plain
        )
    except (TypeError, ValueError) as exc:
        raise ExportError(f"{context}: not JSON-serialisable: {exc}") from exc
    return (text + "\n").encode("utf-8")


def gzip_bytes(data: bytes) -> bytes:
    """gzip with mtime 0 and no file name in the header, so equal input gives equal bytes."""
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0, compresslevel=6) as out:
        out.write(data)
    return buffer.getvalue()


def parse_when(value: Any) -> datetime.datetime | None:
    """An ISO 8601 timestamp (``decided_at``, ``created``) as a datetime, or None."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def trimmed_provenance(provenance: dict) -> dict[str, Any]:
    """The generator, its seeds, condition and sampling; no paths, machine or training data."""
    generator = provenance.get("generator") or {}
    out: dict[str, Any] = {
        "generator": {k: generator[k] for k in PROVENANCE_GENERATOR_KEYS if k in generator}
    }
    out.update({k: provenance[k] for k in PROVENANCE_KEYS if k in provenance})
    return out


def public_audit(audit: dict) -> dict[str, Any]:
    """The audit's numbers and flags; names (e.g. the nearest training subject) are dropped
    because they would link a synthetic image to a real person."""
    return {
        k: v
        for k, v in audit.items()
        if v is None or isinstance(v, bool | int | float | np.bool_ | np.number)
    }


def generator_label(provenance: dict) -> str:
    """``"id@version"`` of the generator, or ``"unknown"``."""
    generator = provenance.get("generator") or {}
    name = str(generator.get("id") or "unknown")
    version = generator.get("version")
    return f"{name}@{version}" if version else name
