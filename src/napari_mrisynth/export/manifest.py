"""``manifest.json`` and ``SHA256SUMS`` of an export, and the check of the disk against them.

The manifest lists every file of the export but itself and ``SHA256SUMS`` with its SHA-256
and size, per volume and in total; ``SHA256SUMS`` (``sha256sum -c`` format) covers every
file but itself, the manifest included.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from napari_mrisynth.export.common import (
    ExportError,
    FileRecord,
    FileWriter,
    public_audit,
    trimmed_provenance,
)
from napari_mrisynth.export.subject import Subject
from napari_mrisynth.models.card import sha256_file

MANIFEST = "manifest.json"
CHECKSUMS = "SHA256SUMS"
#: Version of the manifest's layout; raise it when a key changes meaning.
FORMAT_VERSION = 1


def volume_entry(subject: Subject, files: list[FileRecord]) -> dict[str, Any]:
    """The manifest entry of one exported volume."""
    item = subject.item
    return {
        "volume_id": item.volume_id,
        "participant_id": subject.participant_id,
        "condition": item.condition,
        "provenance": trimmed_provenance(item.provenance),
        "scores": item.scores,
        "audit": public_audit(item.audit),
        "curation": item.curation,
        "files": [record.as_dict() for record in sorted(files, key=lambda r: r.path)],
    }


def write_manifest(
    writer: FileWriter,
    *,
    study: dict,
    formats: list[str],
    volumes: list[dict[str, Any]],
    software_version: str,
) -> None:
    """Write ``manifest.json`` (covering every file written so far), then ``SHA256SUMS``."""
    records = sorted(writer.records.values(), key=lambda r: r.path)
    writer.write_json(
        MANIFEST,
        {
            "format": "napari-mrisynth export",
            "format_version": FORMAT_VERSION,
            "software": {"name": "napari-mrisynth", "version": software_version},
            "study": study,
            "formats": formats,
            "volumes": volumes,
            "files": [record.as_dict() for record in records],
        },
    )
    lines = [
        f"{r.sha256}  {r.path}\n" for r in sorted(writer.records.values(), key=lambda r: r.path)
    ]
    writer.write_text(CHECKSUMS, "".join(lines))


def verify(root: Path, writer: FileWriter) -> None:
    """Compare every file under ``root`` with what was written; ExportError on any difference.

    Catches files changed or truncated after writing and files nobody recorded.
    """
    on_disk = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    unlisted = sorted(on_disk - set(writer.records))
    if unlisted:
        raise ExportError(f"{root}: files not in the manifest: {', '.join(unlisted[:5])}")
    for relative, record in writer.records.items():
        path = root / relative
        try:
            size, digest = path.stat().st_size, sha256_file(path)
        except OSError as exc:
            raise ExportError(f"{path}: cannot read back for the checksum check: {exc}") from exc
        if (size, digest) != (record.size, record.sha256):
            raise ExportError(
                f"{path}: on disk {size} bytes, SHA-256 {digest[:16]}...; the manifest says "
                f"{record.size} bytes, {record.sha256[:16]}..."
            )
