"""Export of a curated set of synthetic volumes: BIDS, DICOM, a manifest and checksums.

:func:`export_set` writes everything into a hidden sibling folder, checks every file
against the manifest, and only then moves the folder into place, so that ``out`` is either
the complete new export or untouched. Pure Python: no Qt, napari or torch.

Layout::

    out/manifest.json   out/SHA256SUMS
    out/bids/...        (see napari_mrisynth.export.bids_export)
    out/dicom/...       (see napari_mrisynth.export.dicom_export)
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

from napari_mrisynth._version import __version__
from napari_mrisynth.export import bids_export, dicom_export
from napari_mrisynth.export.common import (
    ExportError,
    ExportResult,
    FileWriter,
    json_bytes,
)
from napari_mrisynth.export.manifest import MANIFEST, verify, volume_entry, write_manifest
from napari_mrisynth.export.subject import load_images, prepare_subjects
from napari_mrisynth.turing.curation import ApprovedVolume

FORMATS = ("bids", "dicom")

__all__ = ["FORMATS", "ApprovedVolume", "ExportError", "ExportResult", "export_set"]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def _recover_stale(out: Path) -> None:
    """Clean up after an export process that died: remove its partial folder, and put back
    a previous export it had moved aside but not yet replaced."""
    for kind in ("partial", "old"):
        for stale in out.parent.glob(f".{glob.escape(out.name)}.{kind}-*"):
            pid = stale.name.rsplit("-", 1)[-1]
            if not pid.isdigit() or _pid_alive(int(pid)):
                continue
            if kind == "old" and not out.exists():
                os.replace(stale, out)
            else:
                shutil.rmtree(stale, ignore_errors=True)


def _swap_in(new: Path, out: Path) -> None:
    """Move ``new`` to ``out``; an existing ``out`` is renamed aside first, deleted after."""
    if not out.exists():
        os.replace(new, out)
        return
    aside = out.parent / f".{out.name}.old-{os.getpid()}"
    os.replace(out, aside)
    try:
        os.replace(new, out)
    except BaseException:
        os.replace(aside, out)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def export_set(
    volumes: Sequence[ApprovedVolume],
    out: str | Path,
    *,
    formats: Sequence[str] = FORMATS,
    study: dict | None = None,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> ExportResult:
    """Export approved synthetic volumes as BIDS and/or DICOM with a checksummed manifest.

    Parameters
    ----------
    volumes : sequence of ApprovedVolume
        The approved set; participants are numbered ``sub-synth001``... in volume_id order.
    out : path
        The export folder; created (with its parents) only once the export is complete.
    formats : sequence of {"bids", "dicom"}
        What to write besides the manifest.
    study : dict, optional
        JSON-friendly description of the study (``name``, ``license``, ``authors``...),
        copied into the manifest. Its ``id`` (else its whole content) seeds the DICOM UIDs.
    overwrite : bool
        Replace an existing ``out`` (atomically: the old export stays until the new one
        is complete and checked).
    progress : callable, optional
        ``progress(done, total)`` after each volume.

    Returns
    -------
    ExportResult

    Raises
    ------
    ExportError
        ``out`` exists without ``overwrite``, an unknown format, a duplicate volume_id, an
        unreadable volume or mask, a mask off the volume's grid, a failed write or a file
        that does not match the manifest. ``out`` is then left as it was.
    """
    out = Path(out).absolute()
    study = dict(study or {})
    formats = list(dict.fromkeys(formats))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ExportError(f"{out}: unknown export format(s) {unknown}; choose from {FORMATS}")
    if not formats:
        raise ExportError(f"{out}: no export format chosen; choose from {FORMATS}")
    subjects = prepare_subjects(volumes)
    # The study seeds the UIDs: the same volume exported for two studies gets two studies
    study_json = json_bytes(study, out)
    study_key = str(study["id"]) if "id" in study else hashlib.sha256(study_json).hexdigest()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _recover_stale(out)
    except OSError as exc:
        raise ExportError(f"{out}: cannot prepare the parent folder: {exc}") from exc
    if out.exists() and not overwrite:
        raise ExportError(f"{out}: already exists; pass overwrite=True to replace it")

    partial = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        try:
            partial.mkdir()
        except OSError as exc:
            raise ExportError(f"{partial}: cannot create the export folder: {exc}") from exc
        writer = FileWriter(partial)
        if "bids" in formats:
            bids_export.write_dataset(writer, subjects, study, __version__)
        entries = []
        for done, subject in enumerate(subjects, start=1):
            images = load_images(subject)
            written: list[str] = []
            if "bids" in formats:
                written += bids_export.write_subject(writer, subject, images, __version__)
            if "dicom" in formats:
                written += dicom_export.write_subject(
                    writer, subject, images, study_key=study_key, software_version=__version__
                )
            entries.append(volume_entry(subject, [writer.records[p] for p in written]))
            if progress is not None:
                progress(done, len(subjects))
        write_manifest(
            writer, study=study, formats=formats, volumes=entries, software_version=__version__
        )
        verify(partial, writer)
        try:
            _swap_in(partial, out)
        except OSError as exc:
            raise ExportError(f"{out}: cannot move the finished export into place: {exc}") from exc
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    files = sorted(Path(p) for p in writer.records)
    return ExportResult(out=out, files=files, manifest=out / MANIFEST)
