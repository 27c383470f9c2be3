"""DIMSE with pynetdicom: C-ECHO, C-FIND (study, series, image), C-GET, C-MOVE to a local
storage SCP, and C-STORE.

Every failure becomes one :class:`~napari_mrisynth.pacs.nodes.PacsError` line: the node,
then what happened (connection refused, timed out, association rejected and why, a
failure status, the association aborted mid-transfer).
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydicom import Dataset, dcmread

from napari_mrisynth.pacs.nodes import DEFAULT_AET, Node, PacsError, check_aet

#: Seconds to wait for the node: connecting, association, and each DIMSE message.
DEFAULT_TIMEOUT = 30.0

#: Storage SOP classes a retrieval accepts (C-GET needs them negotiated up front, and an
#: association holds at most 128 contexts): the images and objects a brain MRI study has.
RETRIEVE_STORAGE = (
    "1.2.840.10008.5.1.4.1.1.4",  # MR Image
    "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR Image
    "1.2.840.10008.5.1.4.1.1.4.4",  # Legacy Converted Enhanced MR Image
    "1.2.840.10008.5.1.4.1.1.2",  # CT Image
    "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT Image
    "1.2.840.10008.5.1.4.1.1.128",  # PET
    "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture
    "1.2.840.10008.5.1.4.1.1.7.2",  # Multi-frame Grayscale Byte SC
    "1.2.840.10008.5.1.4.1.1.7.3",  # Multi-frame Grayscale Word SC
    "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR
)

#: Transfer syntaxes offered for retrieved instances (every one pydicom's handlers decode).
UNCOMPRESSED = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.2")
COMPRESSED = (
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.80",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.70",  # JPEG lossless, first-order prediction
    "1.2.840.10008.1.2.4.57",  # JPEG lossless
    "1.2.840.10008.1.2.4.50",  # JPEG baseline
    "1.2.840.10008.1.2.5",  # RLE lossless
    "1.2.840.10008.1.2.1.99",  # deflated explicit VR little endian
)

STUDY_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_GET = "1.2.840.10008.5.1.4.1.2.2.3"
STUDY_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
VERIFICATION = "1.2.840.10008.1.1"


def _reach(node: Node, timeout: float) -> None:
    """Fail early, with the reason, when the node's port does not answer."""
    try:
        with socket.create_connection((node.host, node.port), timeout=timeout):
            pass
    except TimeoutError as exc:
        raise PacsError(
            f"{node}: no answer from {node.host}:{node.port} within {timeout:g} s"
        ) from exc
    except ConnectionRefusedError as exc:
        raise PacsError(
            f"{node}: connection refused by {node.host}:{node.port} (no DICOM service there?)"
        ) from exc
    except OSError as exc:
        raise PacsError(
            f"{node}: cannot reach {node.host}:{node.port} ({exc.strerror or exc})"
        ) from exc


def _tls_problem(node: Node, context: ssl.SSLContext, timeout: float) -> str | None:
    """Why a TLS association failed, found by a handshake of our own and a short read (a
    node that refuses our certificate says so in an alert after a TLS 1.3 handshake); None
    when TLS itself works."""
    try:
        with socket.create_connection((node.host, node.port), timeout=timeout) as raw:
            with context.wrap_socket(raw, server_hostname=node.host) as tls:
                tls.settimeout(min(timeout, 1.0))
                try:
                    tls.recv(1)
                except TimeoutError:
                    return None
    except ssl.SSLCertVerificationError as exc:
        return f"certificate verify failed: {exc.verify_message}"
    except ssl.SSLError as exc:
        return exc.reason or str(exc)
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def _application(aet: str, timeout: float) -> Any:
    from pynetdicom import AE

    ae = AE(ae_title=check_aet(aet, "our AE title (--aet)"))
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout
    return ae


@contextmanager
def associated(
    node: Node,
    contexts: Sequence[Any],
    *,
    aet: str = DEFAULT_AET,
    timeout: float = DEFAULT_TIMEOUT,
    roles: Sequence[Any] = (),
    handlers: Sequence[Any] = (),
):
    """An established association with ``node`` for the block, released after (aborted when
    the block fails); :class:`PacsError` with the reason when it cannot be made."""
    from pynetdicom import evt

    if node.protocol != "dimse":
        raise PacsError(f"{node}: not a DIMSE node")
    _reach(node, timeout)
    ae = _application(aet, timeout)
    for context in contexts:
        ae.add_requested_context(*context) if isinstance(
            context, tuple
        ) else ae.add_requested_context(context)
    seen: dict[str, Any] = {}

    def on_acse(event: Any) -> None:
        seen["primitive"] = event.primitive

    tls_args = None
    if node.tls:
        files = node.tls_files()
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=files.get("ca"))
        if "cert" in files:
            context.load_cert_chain(files["cert"], files["key"])
        tls_args = (context, node.host)

    def attempt() -> Any:
        return ae.associate(
            node.host,
            node.port,
            ae_title=node.called_aet,
            ext_neg=list(roles),
            tls_args=tls_args,
            evt_handlers=[(evt.EVT_ACSE_RECV, on_acse), *handlers],
        )

    started = time.monotonic()
    assoc = attempt()
    answered = type(seen.get("primitive")).__name__ == "A_ASSOCIATE"
    if assoc.is_aborted and not answered and time.monotonic() - started < timeout / 2:
        # A node that rejects and closes at once can have its close read before its
        # A-ASSOCIATE-RJ: an abort instead of an answer, well before the timeout. Asking
        # once more gives the rejection (and its reason) when that is what it was.
        seen.clear()
        assoc = attempt()
    if not assoc.is_established:
        primitive = seen.get("primitive")
        if assoc.is_rejected and primitive is not None:
            raise PacsError(
                f"{node}: association rejected by the node: {primitive.reason_str} (our AE "
                f"title {aet!r}, called {node.called_aet!r}; {primitive.result_str})"
            )
        problem = _tls_problem(node, tls_args[0], timeout) if tls_args else None
        if problem:
            raise PacsError(f"{node}: TLS failed ({problem})")
        raise PacsError(f"{node}: association failed (aborted or timed out after {timeout:g} s)")
    try:
        yield assoc
    except BaseException:
        assoc.abort()
        raise
    else:
        if assoc.is_established:
            assoc.release()
    finally:
        ae.shutdown()


def _failed(node: Node, what: str, status: Any, assoc: Any = None) -> PacsError:
    """One line for a failed DIMSE request: the status code and comment, or, with no valid
    response (Orthanc answers a request from an AE title it does not know that way), the
    likely reason."""
    code = getattr(status, "Status", None)
    comment = getattr(status, "ErrorComment", "")
    if isinstance(code, int):
        text = f"status 0x{code:04X}"
    elif assoc is not None:
        text = (
            "no valid response: the node refused or dropped the request (does it allow our "
            f"AE title {assoc.ae.ae_title!r} to do this?)"
        )
    else:
        text = "no response (timed out or aborted)"
    return PacsError(f"{node}: {what} failed: {text}{f' ({comment})' if comment else ''}")


def echo(node: Node, *, aet: str = DEFAULT_AET, timeout: float = DEFAULT_TIMEOUT) -> None:
    with associated(node, [VERIFICATION], aet=aet, timeout=timeout) as assoc:
        status = assoc.send_c_echo()
        if not status or status.Status != 0x0000:
            raise _failed(node, "C-ECHO", status, assoc)


def find(
    node: Node,
    level: str,
    query: dict[str, Any],
    *,
    aet: str = DEFAULT_AET,
    timeout: float = DEFAULT_TIMEOUT,
) -> list[Dataset]:
    """C-FIND (study root) at ``level`` ("STUDY", "SERIES", "IMAGE"): the matches.

    ``query`` holds the matching keys and the keys to return (value "" to return it).
    """
    identifier = Dataset()
    identifier.QueryRetrieveLevel = level
    for keyword, value in query.items():
        setattr(identifier, keyword, value)
    matches = []
    with associated(node, [STUDY_FIND], aet=aet, timeout=timeout) as assoc:
        for status, found in assoc.send_c_find(identifier, STUDY_FIND):
            if not status:
                raise _failed(node, f"C-FIND ({level.lower()})", status, assoc)
            if status.Status in (0xFF00, 0xFF01):
                matches.append(found)
            elif status.Status != 0x0000:
                raise _failed(node, f"C-FIND ({level.lower()})", status)
    return matches


def _identifier(study_uid: str, series_uid: str, sop_uids: Sequence[str] | None) -> Dataset:
    identifier = Dataset()
    identifier.StudyInstanceUID = study_uid
    identifier.SeriesInstanceUID = series_uid
    if sop_uids:
        identifier.QueryRetrieveLevel = "IMAGE"
        identifier.SOPInstanceUID = list(sop_uids)
    else:
        identifier.QueryRetrieveLevel = "SERIES"
    return identifier


def _storage_handler(store: Callable[[Dataset], None], errors: list[str]) -> Callable[[Any], int]:
    """A C-STORE handler that keeps each instance with ``store``; what goes wrong is kept in
    ``errors`` (the node only hears 0xA700, out of resources) and reported after."""

    def handle(event: Any) -> int:
        try:
            dataset = event.dataset
            dataset.file_meta = event.file_meta
            store(dataset)
        except Exception as exc:
            errors.append(str(exc) or type(exc).__name__)
            return 0xA700
        return 0x0000

    return handle


def get(
    node: Node,
    study_uid: str,
    series_uid: str,
    store: Callable[[Dataset], None],
    *,
    sop_uids: Sequence[str] | None = None,
    aet: str = DEFAULT_AET,
    timeout: float = DEFAULT_TIMEOUT,
    cancel: threading.Event | None = None,
) -> None:
    """C-GET a series (or only ``sop_uids`` of it); ``store`` is called with each instance as
    it arrives. A set ``cancel`` aborts the association."""
    from pynetdicom import build_role, evt
    from pynetdicom.presentation import build_context

    # A node sends each instance in a context it accepted; one that cannot transcode (Orthanc
    # cannot) needs a context in the stored transfer syntax. So: per storage class, one
    # context of the uncompressed syntaxes and one per compressed syntax pydicom decodes.
    contexts = [build_context(STUDY_GET)]
    for uid in RETRIEVE_STORAGE:
        contexts.append(build_context(uid, list(UNCOMPRESSED)))
        contexts += [build_context(uid, syntax) for syntax in COMPRESSED]
    roles = [build_role(uid, scp_role=True) for uid in RETRIEVE_STORAGE]
    errors: list[str] = []
    handlers = [(evt.EVT_C_STORE, _storage_handler(store, errors))]
    with associated(
        node,
        [(c.abstract_syntax, c.transfer_syntax) for c in contexts],
        aet=aet,
        timeout=timeout,
        roles=roles,
        handlers=handlers,
    ) as assoc:
        _retrieve_responses(
            node,
            "C-GET",
            assoc.send_c_get(_identifier(study_uid, series_uid, sop_uids), STUDY_GET),
            assoc,
            cancel,
            errors,
        )


def move(
    node: Node,
    study_uid: str,
    series_uid: str,
    store: Callable[[Dataset], None],
    *,
    port: int,
    sop_uids: Sequence[str] | None = None,
    aet: str = DEFAULT_AET,
    timeout: float = DEFAULT_TIMEOUT,
    cancel: threading.Event | None = None,
) -> None:
    """C-MOVE a series to our own storage SCP, listening on ``port`` (the node must know our
    AE title at this machine's address and that port)."""
    from pynetdicom import ALL_TRANSFER_SYNTAXES, evt

    scp = _application(aet, timeout)
    for uid in RETRIEVE_STORAGE:
        scp.add_supported_context(uid, ALL_TRANSFER_SYNTAXES)
    errors: list[str] = []
    try:
        server = scp.start_server(
            ("", port),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, _storage_handler(store, errors))],
        )
    except OSError as exc:
        raise PacsError(f"cannot listen on port {port} for C-MOVE ({exc.strerror})") from exc
    try:
        with associated(node, [STUDY_MOVE], aet=aet, timeout=timeout) as assoc:
            _retrieve_responses(
                node,
                "C-MOVE",
                assoc.send_c_move(_identifier(study_uid, series_uid, sop_uids), aet, STUDY_MOVE),
                assoc,
                cancel,
                errors,
            )
    finally:
        server.shutdown()


def _retrieve_responses(
    node: Node,
    what: str,
    responses: Iterable[Any],
    assoc: Any,
    cancel: threading.Event | None,
    errors: list[str],
) -> None:
    """Follow a C-GET's or C-MOVE's responses to the end; :class:`PacsError` on a failure,
    naming what went wrong here when keeping an instance failed."""
    for status, _ in responses:
        if errors:
            assoc.abort()
            raise PacsError(f"{node}: {what}: an instance could not be kept: {errors[0]}")
        if cancel is not None and cancel.is_set():
            assoc.abort()
            raise PacsError(f"{node}: {what} cancelled; what arrived is kept for a resume")
        if not status:
            raise _failed(node, what, status, assoc)
        code = status.Status
        if code in (0xFF00,):
            continue
        failed = int(getattr(status, "NumberOfFailedSuboperations", 0) or 0)
        if code == 0x0000 and not failed:
            return
        if errors:
            raise PacsError(f"{node}: {what}: an instance could not be kept: {errors[0]}")
        if code in (0x0000, 0xB000) or failed:
            raise PacsError(
                f"{node}: {what} finished with {failed} failed sub-operation(s) "
                f"(status 0x{code:04X})"
            )
        raise _failed(node, what, status)
    if not assoc.is_established:
        raise PacsError(f"{node}: {what}: the association was aborted mid-transfer")


def store(
    node: Node,
    files: Sequence[Path],
    *,
    aet: str = DEFAULT_AET,
    timeout: float = DEFAULT_TIMEOUT,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """C-STORE every file (each read whole, sent in its own transfer syntax)."""
    datasets = []
    for path in files:
        try:
            datasets.append(dcmread(path))
        except Exception as exc:
            raise PacsError(f"{path}: not a DICOM file to send ({exc})") from exc
    pairs = sorted({(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in datasets})
    contexts = [(sop, [syntax]) for sop, syntax in pairs][:128]
    with associated(node, contexts, aet=aet, timeout=timeout) as assoc:
        for done, (path, dataset) in enumerate(zip(files, datasets, strict=True), 1):
            status = assoc.send_c_store(dataset)
            if not status or status.Status not in (0x0000, 0xB000, 0xB007, 0xB006):
                raise _failed(node, f"C-STORE of {path}", status, assoc)
            if progress is not None:
                progress(done, len(files))
    return len(files)
