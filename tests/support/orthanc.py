"""A real Orthanc (Debian's ``orthanc`` and ``orthanc-dicomweb``) for the PACS tests.

Started on free loopback ports with its own storage folder, HTTP basic authentication, the
DICOMweb plugin and called-AE-title checking; stopped (and restartable, keeping its
storage) by the test. Skipped, with the reason, where the binary or the plugin is missing.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
USER, PASSWORD = "alice", "wonderland-7"
AET = "ORTHANC"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Orthanc:
    """One Orthanc server in ``base``."""

    def __init__(self, base: Path, modalities: dict[str, tuple[str, int]] | None = None):
        binary = shutil.which("Orthanc")
        if binary is None or not PLUGIN.is_file():
            pytest.skip(
                "Orthanc or its DICOMweb plugin is missing: apt-get install orthanc "
                "orthanc-dicomweb (scripts/setup.sh --test installs both)"
            )
        self.binary = binary
        self.base = base
        self.http_port, self.dicom_port = free_port(), free_port()
        self.proc: subprocess.Popen | None = None
        config = {
            "Name": "mrisynth-tests",
            "StorageDirectory": str(base / "storage"),
            "IndexDirectory": str(base / "storage"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": AET,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {USER: PASSWORD},
            "DicomCheckCalledAet": True,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomScpTimeout": 10,
            # modalities (AE title at 127.0.0.1:port) allowed to find, get, move and store;
            # in the configuration, so that they outlive a restart
            "DicomModalities": {
                name: {
                    "AET": aet,
                    "Host": "127.0.0.1",
                    "Port": port,
                    "AllowEcho": True,
                    "AllowFind": True,
                    "AllowGet": True,
                    "AllowMove": True,
                    "AllowStore": True,
                }
                for name, (aet, port) in (modalities or {}).items()
            },
            "Plugins": [str(PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }
        base.mkdir(parents=True, exist_ok=True)
        self.config = base / "orthanc.json"
        self.config.write_text(json.dumps(config, indent=2))
        self.log = base / "orthanc.log"

    # -- addresses -------------------------------------------------------------------------
    @property
    def dimse(self) -> str:
        return f"dimse://{AET}@127.0.0.1:{self.dicom_port}"

    @property
    def dicomweb(self) -> str:
        return f"dicomweb:http://127.0.0.1:{self.http_port}/dicom-web"

    @property
    def rest(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    # -- life ------------------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> Orthanc:
        import requests

        stream = open(self.log, "ab")  # noqa: SIM115 (the server keeps it)
        self.proc = subprocess.Popen([self.binary, str(self.config)], stdout=stream,
                                     stderr=subprocess.STDOUT)  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited: {self.log.read_text()[-2000:]}")
            try:
                if requests.get(f"{self.rest}/system", auth=(USER, PASSWORD), timeout=2).ok:
                    with socket.create_connection(("127.0.0.1", self.dicom_port), timeout=2):
                        return self
            except (requests.RequestException, OSError):
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(
            f"Orthanc did not start in {timeout:g} s: {self.log.read_text()[-2000:]}"
        )

    def stop(self, kill: bool = False) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        if kill:
            self.proc.kill()
        else:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)

    # -- REST, as the test's own view of the server ----------------------------------------
    def api(self, method: str, path: str, **kwargs):
        import requests

        response = requests.request(method, f"{self.rest}{path}", auth=(USER, PASSWORD),
                                    timeout=60, **kwargs)  # fmt: skip
        response.raise_for_status()
        return response.json() if response.content else None

    def allow(self, name: str, aet: str, port: int) -> None:
        """Register a modality (our AE title at 127.0.0.1:``port``) for C-GET and C-MOVE,
        until the server stops (``modalities=`` at construction outlives a restart)."""
        self.api("PUT", f"/modalities/{name}", json={
            "AET": aet, "Host": "127.0.0.1", "Port": port, "AllowEcho": True,
            "AllowFind": True, "AllowGet": True, "AllowMove": True, "AllowStore": True,
        })  # fmt: skip

    def upload(self, folder: Path) -> list[str]:
        """Every file of ``folder`` through the REST API; the Orthanc instance ids."""
        ids = []
        for path in sorted(p for p in folder.iterdir() if p.is_file()):
            ids.append(self.api("POST", "/instances", data=path.read_bytes())["ID"])
        return ids

    def series_uids(self) -> set[str]:
        return {self.api("GET", f"/series/{s}")["MainDicomTags"]["SeriesInstanceUID"]
                for s in self.api("GET", "/series")}  # fmt: skip
