"""The local cache of retrieved series: atomic per series, resumable, de-duplicated.

Layout under the cache folder (``--cache``, ``$MRISYNTH_PACS_CACHE``, else the user's cache
folder ``napari-mrisynth/pacs``)::

    <SeriesInstanceUID>/             a complete series
        dicom/<SOPInstanceUID>.dcm   every instance: the folder to open (DICOM files only)
        series.json                  node, study and series UIDs, instance count, fetched at
    .partial/<SeriesInstanceUID>/    a retrieval under way (or interrupted): never shown

A series appears under its UID only when every instance the node listed is there, by one
rename of its folder, so no reader ever sees part of one. An interrupted retrieval keeps its
partial folder; the next one asks only for the instances that are missing (resumable) and
never writes an instance twice (one file per SOP Instance UID).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from napari_mrisynth.io.atomic import replacing
from napari_mrisynth.pacs.nodes import PacsError

MANIFEST = "series.json"
PARTIAL = ".partial"
FILES = "dicom"


def default_cache_dir() -> Path:
    if os.environ.get("MRISYNTH_PACS_CACHE"):
        return Path(os.environ["MRISYNTH_PACS_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "napari-mrisynth" / "pacs"


def _safe_uid(uid: str) -> str:
    """A UID as a folder or file name (UIDs are digits and dots; anything else is refused)."""
    if not uid or len(uid) > 64 or any(c not in "0123456789." for c in uid):
        raise PacsError(f"{uid!r} is not a DICOM UID (digits and dots, at most 64)")
    return uid


@dataclass(frozen=True)
class CachedSeries:
    series_uid: str
    folder: Path
    manifest: dict[str, Any]

    @property
    def dicom(self) -> Path:
        """The folder of the series' DICOM files (what a reader opens)."""
        return self.folder / FILES

    @property
    def files(self) -> list[Path]:
        return sorted(self.dicom.glob("*.dcm"))


class SeriesCache:
    """Complete series, by Series Instance UID, in one folder."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root).expanduser() if root else default_cache_dir()

    def folder(self, series_uid: str) -> Path:
        return self.root / _safe_uid(series_uid)

    def partial(self, series_uid: str) -> Path:
        return self.root / PARTIAL / _safe_uid(series_uid)

    def get(self, series_uid: str) -> CachedSeries | None:
        """The complete series, or None (an incomplete one is never returned)."""
        folder = self.folder(series_uid)
        manifest = folder / MANIFEST
        if not manifest.is_file():
            return None
        return CachedSeries(series_uid, folder, json.loads(manifest.read_text(encoding="utf-8")))

    def present(self, series_uid: str) -> set[str]:
        """SOP Instance UIDs already in the series' partial folder (for a resume)."""
        files = self.partial(series_uid) / FILES
        return {p.stem for p in files.glob("*.dcm")} if files.is_dir() else set()

    def instance_path(self, series_uid: str, sop_uid: str) -> Path:
        return self.partial(series_uid) / FILES / f"{_safe_uid(sop_uid)}.dcm"

    def write_instance(self, series_uid: str, sop_uid: str, write) -> bool:
        """Write one instance into the partial folder with ``write(path)`` (to a temporary
        name, then renamed); False when it is there already (de-duplicated)."""
        target = self.instance_path(series_uid, sop_uid)
        if target.exists():
            return False
        with replacing(target) as partial:
            write(partial)
        return True

    def complete(
        self, series_uid: str, expected: Iterable[str], facts: dict[str, Any]
    ) -> CachedSeries:
        """Publish the partial series under its UID when it holds every ``expected`` SOP
        Instance UID; :class:`PacsError` naming how many are missing otherwise."""
        partial = self.partial(series_uid)
        expected = set(expected)
        have = self.present(series_uid)
        missing = expected - have
        if missing or not expected:
            raise PacsError(
                f"series {series_uid}: {len(missing)} of {len(expected)} instances did not "
                "arrive; the partial series is kept for a resume and not shown"
            )
        for stale in (partial / FILES).glob(".*.tmp"):
            stale.unlink(missing_ok=True)
        for extra in have - expected:  # an instance the node no longer lists
            (partial / FILES / f"{extra}.dcm").unlink()
        manifest = {
            **facts,
            "series_uid": series_uid,
            "instances": len(expected),
            "fetched_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        (partial / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        target = self.folder(series_uid)
        try:
            os.rename(partial, target)
        except OSError:
            if self.get(series_uid) is None:  # not another process that won the race
                raise
            shutil.rmtree(partial, ignore_errors=True)
        found = self.get(series_uid)
        assert found is not None
        return found

    def entries(self) -> list[CachedSeries]:
        if not self.root.is_dir():
            return []
        out = []
        for folder in sorted(self.root.iterdir()):
            if folder.name.startswith(".") or not folder.is_dir():
                continue
            found = self.get(folder.name)
            if found is not None:
                out.append(found)
        return out

    def clear(self, older_than_days: float | None = None) -> tuple[int, int]:
        """Delete complete series (fetched more than ``older_than_days`` ago, or all) and
        every interrupted retrieval; returns (series removed, bytes freed)."""
        removed, freed = 0, 0
        cutoff = time.time() - older_than_days * 86400 if older_than_days is not None else None
        for entry in self.entries():
            fetched = datetime.fromisoformat(entry.manifest["fetched_at"]).timestamp()
            if cutoff is not None and fetched >= cutoff:
                continue
            freed += sum(p.stat().st_size for p in entry.folder.rglob("*") if p.is_file())
            shutil.rmtree(entry.folder)
            removed += 1
        partial = self.root / PARTIAL
        if partial.is_dir() and older_than_days is None:
            freed += sum(p.stat().st_size for p in partial.rglob("*") if p.is_file())
            shutil.rmtree(partial)
        return removed, freed
