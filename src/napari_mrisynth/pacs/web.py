"""DICOMweb with dicomweb-client: QIDO-RS (search), WADO-RS (retrieve), STOW-RS (store).

HTTP basic or bearer credentials come from the node (environment or keyring, never disk);
HTTPS is verified with the system's certificates. Every failure becomes one
:class:`~napari_mrisynth.pacs.nodes.PacsError` line.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydicom import Dataset, dcmread

from napari_mrisynth.pacs.nodes import Node, PacsError

DEFAULT_TIMEOUT = 30.0

#: WADO-RS: instances in whatever transfer syntax the node holds them (pydicom decodes the
#: compressed ones); a node asked for explicit VR little endian must transcode, and one that
#: cannot (Orthanc without its GDCM plugin, for JPEG 2000) fails with HTTP 500.
AS_STORED = (("application/dicom", "*"),)


def session(node: Node) -> Any:
    """A requests session carrying the node's credentials (bearer token, else basic) and
    TLS files. The node's CA wins over ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE``, which
    requests would otherwise put before a session's own ``verify``."""
    import requests

    if node.protocol != "dicomweb":
        raise PacsError(f"{node}: not a DICOMweb node")

    class Session(requests.Session):
        def merge_environment_settings(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
            settings = super().merge_environment_settings(*args, **kwargs)
            if isinstance(self.verify, str):
                settings["verify"] = self.verify
            return settings

    http = Session()
    found = node.credentials()
    if "token" in found:
        http.headers["Authorization"] = f"Bearer {found['token']}"
    elif "username" in found:
        http.auth = (found["username"], found.get("password", ""))
    files = node.tls_files()
    if "ca" in files:
        http.verify = files["ca"]
    if "cert" in files:
        http.cert = (files["cert"], files["key"])
    return http


def client(node: Node, timeout: float = DEFAULT_TIMEOUT) -> Any:
    """dicomweb-client's client on :func:`session`."""
    from dicomweb_client.api import DICOMwebClient

    return DICOMwebClient(node.url, session=session(node), timeout=timeout)


@contextmanager
def speaking(node: Node, what: str) -> Iterator[None]:
    """Turn what requests raises into one line naming the node and the failure."""
    import requests

    try:
        yield
    except requests.exceptions.HTTPError as exc:
        code = exc.response.status_code if exc.response is not None else "?"
        hint = {
            401: "bad or missing credentials (MRISYNTH_PACS_…_USERNAME/_PASSWORD/_TOKEN)",
            403: "these credentials may not do this",
            404: "no such resource at this root",
        }.get(code, exc.response.reason if exc.response is not None else "")
        raise PacsError(f"{node}: {what} refused: HTTP {code} {hint}".rstrip()) from exc
    except requests.exceptions.SSLError as exc:
        raise PacsError(f"{node}: {what}: TLS failed ({_root_cause(exc)})") from exc
    except requests.exceptions.Timeout as exc:
        raise PacsError(f"{node}: {what}: no answer in time") from exc
    except requests.exceptions.ConnectionError as exc:
        raise PacsError(f"{node}: {what}: cannot connect ({_root_cause(exc)})") from exc
    except requests.exceptions.RequestException as exc:
        raise PacsError(f"{node}: {what} failed ({exc})") from exc


def _root_cause(exc: BaseException) -> str:
    while exc.__context__ is not None or exc.__cause__ is not None:
        exc = exc.__cause__ or exc.__context__
    text = str(exc)
    return text.split("] ")[-1] if "] " in text else text or type(exc).__name__


def _datasets(rows: Sequence[dict]) -> list[Dataset]:
    return [Dataset.from_json(row) for row in rows]


def echo(node: Node, *, timeout: float = DEFAULT_TIMEOUT) -> None:
    """A QIDO-RS search for one study: the service answers, and our credentials do."""
    with speaking(node, "QIDO-RS"):
        client(node, timeout).search_for_studies(limit=1)


def _query_string(filters: dict[str, Any], fields: Sequence[str]) -> str:
    """A QIDO-RS query string that keeps the wildcards ``*`` and ``?`` as they are (RFC 3986
    allows both in a query). Orthanc 1.10's DICOMweb plugin matches ``%2A`` literally and
    never matches an encoded space, so a space inside a wildcard match is sent as ``?``
    (one character, any), which every server reads the same way."""
    from urllib.parse import quote

    parts = []
    for key, value in filters.items():
        text = str(value)
        if "*" in text or "?" in text:
            text = text.replace(" ", "?")
        parts.append(f"{quote(key)}={quote(text, safe='*?,-.')}")
    parts += [f"includefield={quote(field)}" for field in fields]
    return "&".join(parts)


def find(
    node: Node,
    level: str,
    query: dict[str, Any],
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> list[Dataset]:
    """QIDO-RS at ``level`` ("STUDY", "SERIES", "IMAGE"); ``query`` keyword -> value ("" to
    ask for a field without matching on it). Sent on the DICOMweb client's session, with the
    query string of :func:`_query_string`."""
    filters = {k: v for k, v in query.items() if v not in ("", None)}
    fields = [k for k, v in query.items() if v in ("", None)]
    if level == "STUDY":
        path = "studies"
    elif level == "SERIES":
        path = f"studies/{study_uid}/series" if study_uid else "series"
    else:
        path = f"studies/{study_uid}/series/{series_uid}/instances"
    web = client(node, timeout)
    url = f"{node.url}/{path}?{_query_string(filters, fields)}"
    with speaking(node, f"QIDO-RS ({level.lower()})"):
        response = web._session.get(
            url, headers={"Accept": "application/dicom+json"}, timeout=timeout
        )
        response.raise_for_status()
        rows = response.json() if response.content else []
    return _datasets(rows)


def get(
    node: Node,
    study_uid: str,
    series_uid: str,
    store: Callable[[Dataset], None],
    *,
    sop_uids: Sequence[str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    cancel: threading.Event | None = None,
) -> None:
    """WADO-RS: the whole series as it streams in, or only ``sop_uids``, one by one."""
    web = client(node, timeout)
    with speaking(node, "WADO-RS"):
        if sop_uids:
            instances: Any = (
                web.retrieve_instance(study_uid, series_uid, uid, media_types=AS_STORED)
                for uid in sop_uids
            )
        else:
            instances = web.iter_series(study_uid, series_uid, media_types=AS_STORED)
        for dataset in instances:
            if cancel is not None and cancel.is_set():
                raise PacsError(f"{node}: WADO-RS cancelled; what arrived is kept for a resume")
            store(dataset)


def store(
    node: Node,
    files: Sequence[Path],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    progress: Callable[[int, int], None] | None = None,
    batch: int = 16,
) -> int:
    """STOW-RS every file, in batches."""
    web = client(node, timeout)
    done = 0
    for start in range(0, len(files), batch):
        chunk = files[start : start + batch]
        datasets = []
        for path in chunk:
            try:
                datasets.append(dcmread(path))
            except Exception as exc:
                raise PacsError(f"{path}: not a DICOM file to send ({exc})") from exc
        with speaking(node, "STOW-RS"):
            response = web.store_instances(datasets)
        failed = list(getattr(response, "FailedSOPSequence", None) or [])
        if failed:
            raise PacsError(f"{node}: STOW-RS refused {len(failed)} of {len(chunk)} instances")
        done += len(chunk)
        if progress is not None:
            progress(done, len(files))
    return done
