"""PACS nodes: how to reach one, by address or by a name kept in the user's node book.

A node is written as

* ``dimse://CALLED_AET@host:port`` (``dimse+tls://`` for DICOM over TLS), or
* ``dicomweb:http://host:port/root`` (``dicomweb:https://…``),

or as the name of an entry of the node book (``mrisynth pacs nodes add NAME ADDRESS``), a JSON
file in the user's configuration folder. The book never holds a credential: user names,
passwords and bearer tokens come from the environment (``MRISYNTH_PACS_<NAME>_USERNAME``,
``_PASSWORD``, ``_TOKEN``; ``<NAME>`` the node's name in upper case, non-alphanumerics as
``_``; then ``MRISYNTH_PACS_USERNAME`` … for any node) or from the OS keyring (service
``napari-mrisynth-pacs``, user ``<name>:username`` / ``:password`` / ``:token``) when the
optional ``keyring`` package is installed. An address with a password in it is refused.

TLS (``dimse+tls://``, ``dicomweb:https://``) verifies the node against the system's
certificates, or against ``MRISYNTH_PACS_[<NAME>_]CA`` (a PEM bundle); a node that wants our
certificate gets ``MRISYNTH_PACS_[<NAME>_]CERT`` and ``_KEY`` (PEM files).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from napari_mrisynth.errors import MrisynthError

#: Our calling AE title unless ``--aet`` says otherwise.
DEFAULT_AET = "MRISYNTH"
KEYRING_SERVICE = "napari-mrisynth-pacs"

_DIMSE = re.compile(r"^dimse(\+tls)?://([^@/]+)@([^:/]+):(\d{1,5})/?$")
_AET = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # DICOM AE: 16 chars, no backslash
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class PacsError(MrisynthError):
    """A PACS node cannot be reached, refuses us, or fails mid-transfer: one line says which."""


@dataclass(frozen=True)
class Node:
    """One PACS node.

    Attributes
    ----------
    protocol : {"dimse", "dicomweb"}
    address : str
        As written (``dimse://ORTHANC@pacs:4242``, ``dicomweb:https://pacs/dicom-web``).
    name : str, optional
        Its name in the node book, when it came from there.
    host, port, called_aet, tls : DIMSE only.
    url : DICOMweb only: the service root.
    """

    protocol: str
    address: str
    name: str | None = None
    host: str = ""
    port: int = 0
    called_aet: str = ""
    tls: bool = False
    url: str = ""

    def __str__(self) -> str:
        return f"{self.name} ({self.address})" if self.name else self.address

    def _env(self, field: str) -> str | None:
        """``MRISYNTH_PACS_<NAME>_<FIELD>``, else ``MRISYNTH_PACS_<FIELD>``."""
        prefixes = ["MRISYNTH_PACS_"]
        if self.name:
            named = re.sub(r"[^A-Z0-9]", "_", self.name.upper())
            prefixes.insert(0, f"MRISYNTH_PACS_{named}_")
        for prefix in prefixes:
            value = os.environ.get(prefix + field.upper())
            if value:
                return value
        return None

    def credentials(self) -> dict[str, str]:
        """``username``/``password`` and/or ``token`` for this node, from the environment
        or the OS keyring (empty when none is set)."""
        found = {}
        for field in ("username", "password", "token"):
            value = self._env(field) or _keyring(f"{self.name or self.address}:{field}")
            if value:
                found[field] = value
        return found

    def tls_files(self) -> dict[str, str]:
        """``ca`` (PEM bundle to verify the node), ``cert`` and ``key`` (our certificate),
        from the environment; each checked to exist."""
        found = {}
        for field in ("ca", "cert", "key"):
            value = self._env(field)
            if value:
                path = Path(value).expanduser()
                if not path.is_file():
                    raise PacsError(f"{self}: TLS {field} file {value} does not exist")
                found[field] = str(path)
        if ("cert" in found) != ("key" in found):
            raise PacsError(f"{self}: a TLS client certificate needs both _CERT and _KEY")
        return found


def _keyring(user: str) -> str | None:
    try:
        import keyring
    except ImportError:
        return None
    try:
        return keyring.get_password(KEYRING_SERVICE, user)
    except Exception:  # no keyring backend on this machine: as if nothing were stored
        return None


def check_aet(value: str, what: str = "AE title") -> str:
    if not isinstance(value, str) or not _AET.match(value) or not value.strip():
        raise PacsError(f"{what} {value!r}: 1-16 printable characters, no backslash")
    return value


def parse_address(text: str, name: str | None = None) -> Node:
    """A :class:`Node` from an address; :class:`PacsError` naming what is wrong."""
    text = text.strip()
    match = _DIMSE.match(text)
    if match:
        tls, aet, host, port = match.groups()
        if not 0 < int(port) < 65536:
            raise PacsError(f"{text}: port {port} is not 1-65535")
        return Node(
            "dimse",
            text,
            name,
            host=host,
            port=int(port),
            called_aet=check_aet(aet, f"{text}: called AE title"),
            tls=bool(tls),
        )
    if text.startswith("dicomweb:"):
        url = text[len("dicomweb:") :].rstrip("/")
        if not re.match(r"^https?://[^/\s]+", url):
            raise PacsError(f"{text}: a DICOMweb node is dicomweb:http(s)://host[:port]/root")
        if re.match(r"^https?://[^/]*:[^/@]*@", url):
            raise PacsError(
                f"{text}: a password in the address would be kept in plain text; give it "
                "in MRISYNTH_PACS_…_PASSWORD or the OS keyring"
            )
        return Node("dicomweb", text, name, url=url)
    raise PacsError(
        f"{text!r}: not a node; use dimse://CALLED_AET@host:port, "
        "dicomweb:http(s)://host:port/root, or a name from `mrisynth pacs nodes list`"
    )


def config_dir() -> Path:
    """Where the node book lives: ``$MRISYNTH_CONFIG_DIR``, else the XDG config folder."""
    if os.environ.get("MRISYNTH_CONFIG_DIR"):
        return Path(os.environ["MRISYNTH_CONFIG_DIR"]).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base).expanduser() / "napari-mrisynth"


class NodeBook:
    """Named nodes, kept in ``pacs-nodes.json`` (addresses only, never credentials)."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path else config_dir() / "pacs-nodes.json"

    def _read(self) -> dict[str, str]:
        if not self.path.is_file():
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise PacsError(f"{self.path}: not a readable node book ({exc})") from exc
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise PacsError(f"{self.path}: not a node book (name -> address)")
        return data

    def _write(self, data: dict[str, str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(f".{self.path.name}.{os.getpid()}.partial")
        partial.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        partial.replace(self.path)

    def nodes(self) -> list[Node]:
        return [parse_address(address, name) for name, address in sorted(self._read().items())]

    def add(self, name: str, address: str) -> Node:
        if not _NAME.match(name) or "://" in name:
            raise PacsError(f"node name {name!r}: 1-64 letters, digits, '.', '_' or '-'")
        node = parse_address(address, name)
        data = self._read()
        data[name] = node.address
        self._write(data)
        return node

    def remove(self, name: str) -> None:
        data = self._read()
        if name not in data:
            raise PacsError(f"{self.path}: no node {name!r} (nodes: {', '.join(data) or 'none'})")
        del data[name]
        self._write(data)

    def get(self, name: str) -> Node | None:
        address = self._read().get(name)
        return parse_address(address, name) if address else None


def resolve(text: str | Node, book: NodeBook | None = None) -> Node:
    """A node from an address or a node-book name."""
    if isinstance(text, Node):
        return text
    if text.startswith(("dimse://", "dimse+tls://", "dicomweb:")):
        return parse_address(text)
    node = (book or NodeBook()).get(text)
    if node is None:
        return parse_address(text)  # the error says what an address looks like
    return node


def describe(node: Node) -> dict[str, Any]:
    """JSON-ready description (no credential)."""
    return {k: v for k, v in asdict(node).items() if v not in ("", 0, None, False)}
