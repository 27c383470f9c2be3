"""Scanning a folder (or one file) for DICOM image series: every file's headers, grouped by
SeriesInstanceUID and split into stacks, with every unusable file reported and skipped."""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from napari_mrisynth.errors import SeriesError, VolumeFileError
from napari_mrisynth.io.dicom._walker import (
    Header,
)
from napari_mrisynth.io.dicom.headers import Skip, headers_of
from napari_mrisynth.io.dicom.stack import Series, split_stacks

#: ``progress(done, total)``: called while scanning and reading.
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class SkippedFile:
    """A file the scan could not use, and why."""

    path: Path
    reason: str


@dataclass
class FolderScan:
    """Every image series found under ``root``, and the files that were skipped."""

    root: Path
    series: list[Series]
    skipped: list[SkippedFile]

    def select(self, which: str | int | None = None) -> Series:
        """One series by key, SeriesInstanceUID or SeriesNumber.

        ``None`` is allowed only when the scan found exactly one series. Raises
        `SeriesError` listing every series when the choice is missing or ambiguous.
        """
        if which is None:
            if len(self.series) == 1:
                return self.series[0]
            if not self.series:
                raise SeriesError(self._nothing_found())
            raise SeriesError(
                f"{self.root} holds {len(self.series)} series; choose one:\n" + self._listing()
            )
        text = str(which).strip()
        for match in (
            [s for s in self.series if s.key == text],
            [s for s in self.series if s.uid == text and s.stack == 0],
        ):
            if match:
                return match[0]
        if text.lstrip("+-").isdigit():
            numbered = [s for s in self.series if s.number == int(text)]
            main = [s for s in numbered if s.stack == 0]
            if len(numbered) == 1 or len(main) == 1:
                return (main or numbered)[0]
            if numbered:
                raise SeriesError(
                    f"series number {text} is ambiguous in {self.root}; use a key:\n"
                    + self._listing()
                )
        raise SeriesError(f"no series {text!r} in {self.root}; found:\n" + self._listing())

    def _listing(self) -> str:
        return "\n".join(f"  {s.describe()}" for s in self.series) or "  (none)"

    def _nothing_found(self) -> str:
        text = f"no DICOM image series in {self.root}"
        if self.skipped:
            shown = self.skipped[:10]
            text += f"; {len(self.skipped)} file(s) skipped:\n" + "\n".join(
                f"  {s.path}: {s.reason}" for s in shown
            )
            if len(self.skipped) > len(shown):
                text += f"\n  ... and {len(self.skipped) - len(shown)} more"
        return text


def _iter_files(root: Path) -> Iterator[str]:
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            yield os.path.join(folder, name)  # str: a Path per file costs more than the walk


def scan_folder(path: str | Path, *, progress: Progress | None = None) -> FolderScan:
    """Find every DICOM image series in a folder (recursively) or in one file.

    Parameters
    ----------
    path : path
        A folder, searched recursively, or a single DICOM file.
    progress : callable, optional
        ``progress(done, total)`` as files are read.

    Returns
    -------
    FolderScan
        Series sorted by series number, then stack; files that could not be used, each
        with its reason.

    Raises
    ------
    VolumeFileError
        ``path`` does not exist or cannot be listed.
    """
    root = Path(path)
    if not root.exists():
        raise VolumeFileError(root, "no such file or directory")
    try:
        paths = [os.fspath(root)] if root.is_file() else list(_iter_files(root))
    except OSError as exc:
        raise VolumeFileError(root, f"cannot list: {exc}") from exc
    by_uid: dict[str, list[Header]] = defaultdict(list)
    skipped: list[SkippedFile] = []
    total = len(paths)
    for done, p in enumerate(paths, start=1):
        try:
            for h in headers_of(p):
                uid = h.series_uid or f"(no SeriesInstanceUID) {os.path.dirname(p)}"
                by_uid[uid].append(h)
        except Skip as exc:
            skipped.append(SkippedFile(Path(p), str(exc)))
        except OSError as exc:
            skipped.append(SkippedFile(Path(p), f"unreadable: {exc.strerror or exc}"))
        if progress is not None and (done % 64 == 0 or done == total):
            progress(done, total)
    series = [s for uid, headers in by_uid.items() for s in split_stacks(uid, headers)]
    series.sort(key=lambda s: (s.number if s.number is not None else 1 << 31, s.uid, s.stack))
    return FolderScan(root, series, skipped)
