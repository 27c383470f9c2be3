"""What the CLI and the PACS dock call: echo, find series, retrieve them into the cache, send.

The same calls work over DIMSE and DICOMweb; the node says which.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pydicom import Dataset

from napari_mrisynth.pacs import dimse, web
from napari_mrisynth.pacs.cache import SeriesCache
from napari_mrisynth.pacs.nodes import DEFAULT_AET, Node, PacsError, resolve

STUDY_KEYS = ("PatientID", "PatientName", "StudyInstanceUID", "StudyDate", "StudyDescription")
SERIES_KEYS = (
    "SeriesInstanceUID",
    "Modality",
    "SeriesDescription",
    "SeriesNumber",
    "NumberOfSeriesRelatedInstances",
)


@dataclass(frozen=True)
class SeriesRecord:
    """One series a node holds, as a search lists it."""

    study_uid: str
    series_uid: str
    patient_id: str = ""
    patient_name: str = ""
    study_date: str = ""
    study_description: str = ""
    modality: str = ""
    series_description: str = ""
    series_number: int | None = None
    instances: int | None = None

    def row(self) -> dict[str, Any]:
        return asdict(self)


def _text(dataset: Dataset, keyword: str) -> str:
    value = dataset.get(keyword, "")
    return "" if value is None else str(value)


def _number(dataset: Dataset, keyword: str) -> int | None:
    try:
        return int(dataset.get(keyword))
    except (TypeError, ValueError):
        return None


def _wild(text: str | None) -> str:
    """A free-text match as a DICOM wildcard: ``*text*`` unless it has wildcards already."""
    if not text:
        return ""
    return text if any(c in text for c in "*?") else f"*{text}*"


def _find(
    node: Node,
    level: str,
    query: dict[str, Any],
    *,
    aet: str,
    timeout: float,
    study_uid: str | None = None,
    series_uid: str | None = None,
) -> list[Dataset]:
    if node.protocol == "dimse":
        if study_uid:
            query = {**query, "StudyInstanceUID": study_uid}
        if series_uid:
            query = {**query, "SeriesInstanceUID": series_uid}
        return dimse.find(node, level, query, aet=aet, timeout=timeout)
    return web.find(node, level, query, study_uid=study_uid, series_uid=series_uid, timeout=timeout)


def echo(node: str | Node, *, aet: str = DEFAULT_AET, timeout: float = 30.0) -> float:
    """Seconds a C-ECHO (DIMSE) or a one-study QIDO-RS search (DICOMweb) took."""
    node = resolve(node)
    started = time.perf_counter()
    if node.protocol == "dimse":
        dimse.echo(node, aet=aet, timeout=timeout)
    else:
        web.echo(node, timeout=timeout)
    return time.perf_counter() - started


def find_series(
    node: str | Node,
    *,
    patient_id: str | None = None,
    patient_name: str | None = None,
    study_date: str | None = None,
    modality: str | None = None,
    description: str | None = None,
    aet: str = DEFAULT_AET,
    timeout: float = 30.0,
) -> list[SeriesRecord]:
    """Every series matching the filters: studies first (patient, date), then their series
    (modality, series description; free text matches anywhere, case as the node does)."""
    node = resolve(node)
    study_query = {key: "" for key in STUDY_KEYS}
    study_query.update(
        {
            k: v
            for k, v in (
                ("PatientID", patient_id),
                ("PatientName", _wild(patient_name)),
                ("StudyDate", study_date),
            )
            if v
        }
    )
    out = []
    for study in _find(node, "STUDY", study_query, aet=aet, timeout=timeout):
        study_uid = _text(study, "StudyInstanceUID")
        series_query = {key: "" for key in SERIES_KEYS}
        if modality:
            series_query["Modality"] = modality
        if description:
            series_query["SeriesDescription"] = _wild(description)
        for series in _find(
            node, "SERIES", series_query, aet=aet, timeout=timeout, study_uid=study_uid
        ):
            out.append(
                SeriesRecord(
                    study_uid=study_uid,
                    series_uid=_text(series, "SeriesInstanceUID"),
                    patient_id=_text(study, "PatientID"),
                    patient_name=_text(study, "PatientName"),
                    study_date=_text(study, "StudyDate"),
                    study_description=_text(study, "StudyDescription"),
                    modality=_text(series, "Modality"),
                    series_description=_text(series, "SeriesDescription"),
                    series_number=_number(series, "SeriesNumber"),
                    instances=_number(series, "NumberOfSeriesRelatedInstances"),
                )
            )
    return sorted(
        out,
        key=lambda r: (r.patient_id, r.study_date, r.study_uid, r.series_number or 0, r.series_uid),
    )


def _study_of(node: Node, series_uid: str, *, aet: str, timeout: float) -> str:
    found = _find(
        node,
        "SERIES",
        {"StudyInstanceUID": "", "SeriesInstanceUID": series_uid},
        aet=aet,
        timeout=timeout,
    )
    studies = {_text(d, "StudyInstanceUID") for d in found} - {""}
    if len(studies) != 1:
        raise PacsError(
            f"{node}: no series {series_uid}"
            if not studies
            else f"{node}: series {series_uid} is listed in {len(studies)} studies"
        )
    return studies.pop()


def retrieve(
    node: str | Node,
    series: Sequence[str | SeriesRecord],
    *,
    cache: str | Path | SeriesCache | None = None,
    out: str | Path | None = None,
    method: str = "get",
    port: int | None = None,
    aet: str = DEFAULT_AET,
    timeout: float = 30.0,
    progress: Callable[[int, int], None] | None = None,
    cancel: threading.Event | None = None,
) -> list[Path]:
    """Retrieve series into the cache (and copy them to ``out``), each atomically.

    A series already complete in the cache is not fetched again. An interrupted one resumes:
    only the instances missing from its partial folder are asked for. ``method``: ``get``
    (C-GET, or WADO-RS on a DICOMweb node) or ``move`` (C-MOVE to our storage SCP on
    ``port``). Returns the folder of each series' DICOM files, in the order asked.

    ``progress(done, total)`` counts instances; over DIMSE it is called from pynetdicom's
    association thread. A set ``cancel`` stops before the next series or instance and raises
    :class:`PacsError` ("cancelled"); what arrived stays in the partial folder.
    """
    node = resolve(node)
    store = cache if isinstance(cache, SeriesCache) else SeriesCache(cache)
    if method not in ("get", "move"):
        raise PacsError(f"retrieval method {method!r}: use get or move")
    if method == "move" and (node.protocol != "dimse" or not port):
        raise PacsError("C-MOVE needs a DIMSE node and --port for our storage SCP")
    folders = []
    for entry in series:
        if cancel is not None and cancel.is_set():
            raise PacsError(f"{node}: retrieval cancelled; what arrived is kept for a resume")
        series_uid = entry.series_uid if isinstance(entry, SeriesRecord) else str(entry)
        found = store.get(series_uid)
        if found is None:
            if isinstance(entry, SeriesRecord):
                study_uid = entry.study_uid
            else:
                study_uid = _study_of(node, series_uid, aet=aet, timeout=timeout)
            expected = _fetch(
                node,
                store,
                study_uid,
                series_uid,
                method=method,
                port=port,
                aet=aet,
                timeout=timeout,
                progress=progress,
                cancel=cancel,
            )
            found = store.complete(
                series_uid,
                expected,
                {"node": node.address, "study_uid": study_uid, "method": method},
            )
        folders.append(_copy_out(found.dicom, out, series_uid) if out else found.dicom)
    return folders


def _instances(
    node: Node, study_uid: str, series_uid: str, *, aet: str, timeout: float
) -> set[str]:
    """The SOP Instance UIDs the node lists for a series."""
    listed = _find(
        node,
        "IMAGE",
        {"SOPInstanceUID": ""},
        aet=aet,
        timeout=timeout,
        study_uid=study_uid,
        series_uid=series_uid,
    )
    return {_text(d, "SOPInstanceUID") for d in listed} - {""}


def _fetch(
    node: Node,
    store: SeriesCache,
    study_uid: str,
    series_uid: str,
    *,
    method: str,
    port: int | None,
    aet: str,
    timeout: float,
    progress: Callable[[int, int], None] | None,
    cancel: threading.Event | None,
) -> set[str]:
    """Bring the instances of a series missing from its partial folder; returns every SOP
    Instance UID the node lists for it."""
    expected = _instances(node, study_uid, series_uid, aet=aet, timeout=timeout)
    if not expected:
        raise PacsError(f"{node}: series {series_uid} lists no instance")
    missing = sorted(expected - store.present(series_uid))
    done = [len(expected) - len(missing)]

    def keep(dataset: Dataset) -> None:
        sop = str(dataset.SOPInstanceUID)
        if str(dataset.get("SeriesInstanceUID", series_uid)) != series_uid:
            raise PacsError(f"{node}: sent {sop} of another series")
        written = store.write_instance(
            series_uid, sop, lambda path: dataset.save_as(path, enforce_file_format=True)
        )
        if written:
            done[0] += 1
            if progress is not None:
                progress(done[0], len(expected))

    if not missing:
        return expected
    ask = None if len(missing) == len(expected) else missing
    if method == "move":
        dimse.move(
            node,
            study_uid,
            series_uid,
            keep,
            port=int(port or 0),
            sop_uids=ask,
            aet=aet,
            timeout=timeout,
            cancel=cancel,
        )
    elif node.protocol == "dimse":
        dimse.get(
            node, study_uid, series_uid, keep, sop_uids=ask, aet=aet, timeout=timeout, cancel=cancel
        )
    else:
        web.get(node, study_uid, series_uid, keep, sop_uids=ask, timeout=timeout, cancel=cancel)
    return expected


def _copy_out(folder: Path, out: str | Path, series_uid: str) -> Path:
    """The series' files copied into ``out/<series uid>`` (atomically; kept if there)."""
    target = Path(out) / series_uid
    if target.is_dir():
        return target
    partial = Path(out) / f".{series_uid}.{os.getpid()}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(folder, partial)
    os.replace(partial, target)
    return target


def dicom_files(paths: Sequence[str | Path]) -> list[Path]:
    """Every DICOM file under ``paths`` (files, or folders searched recursively): those with
    the ``DICM`` preamble; anything else is left out."""
    files = []
    for path in map(Path, paths):
        if not path.exists():
            raise PacsError(f"{path}: no such file or folder to send")
        for candidate in sorted(path.rglob("*")) if path.is_dir() else [path]:
            if candidate.is_file() and not candidate.name.startswith("."):
                with open(candidate, "rb") as stream:
                    if stream.read(132)[128:] == b"DICM":
                        files.append(candidate)
    if not files:
        raise PacsError(f"no DICOM file in {', '.join(map(str, paths))}")
    return files


def send(
    node: str | Node,
    paths: Sequence[str | Path],
    *,
    aet: str = DEFAULT_AET,
    timeout: float = 30.0,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Send series folders, an export or DICOM SEG files: C-STORE or STOW-RS."""
    node = resolve(node)
    files = dicom_files(paths)
    if node.protocol == "dimse":
        return dimse.store(node, files, aet=aet, timeout=timeout, progress=progress)
    return web.store(node, files, timeout=timeout, progress=progress)
