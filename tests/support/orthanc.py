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

    def __init__(self, base: Path, modalities: dict[str, tuple[str, int]] | None = None,
                 tls: dict[str, Path] | None = None):  # fmt: skip
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
        self.tls = tls
        self.https: TlsProxy | None = None
        if tls:  # DICOM TLS, our certificate required
            config.update({
                "DicomTlsEnabled": True, "DicomTlsCertificate": str(tls["cert"]),
                "DicomTlsPrivateKey": str(tls["key"]),
                "DicomTlsTrustedCertificates": str(tls["ca"]),
                "DicomTlsRemoteCertificateRequired": True,
            })  # fmt: skip
        base.mkdir(parents=True, exist_ok=True)
        self.config = base / "orthanc.json"
        self.config.write_text(json.dumps(config, indent=2))
        self.log = base / "orthanc.log"

    # -- addresses -------------------------------------------------------------------------
    @property
    def dimse(self) -> str:
        scheme = "dimse+tls" if self.tls else "dimse"
        return f"{scheme}://{AET}@127.0.0.1:{self.dicom_port}"

    @property
    def dicomweb(self) -> str:
        if self.https is not None:
            return f"dicomweb:https://127.0.0.1:{self.https.port}/dicom-web"
        return f"dicomweb:{self.rest}/dicom-web"

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
                answer = requests.get(f"{self.rest}/system", auth=(USER, PASSWORD), timeout=2)
                if answer.ok:
                    with socket.create_connection(("127.0.0.1", self.dicom_port), timeout=2):
                        pass
                    if self.tls and self.https is None:
                        self.https = TlsProxy(self.tls, self.http_port)
                    return self
            except (requests.RequestException, OSError):
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(
            f"Orthanc did not start in {timeout:g} s: {self.log.read_text()[-2000:]}"
        )

    def stop(self, kill: bool = False) -> None:
        if self.https is not None and not kill:
            self.https.close()
            self.https = None
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


class TlsProxy:
    """HTTPS in front of Orthanc's HTTP port: Python's ``ssl`` with the test CA's server
    certificate, bytes passed through both ways. (Orthanc 1.10's own HTTPS, as Debian builds
    it, resets every connection once the request is sent, with curl as with requests.)"""

    def __init__(self, tls: dict[str, Path], backend_port: int):
        import ssl
        import threading

        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(tls["cert"], tls["key"])
        self.backend = backend_port
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.open = True
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        import threading

        while self.open:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    def _handle(self, client: socket.socket) -> None:
        import ssl
        import threading

        try:
            secure = self.context.wrap_socket(client, server_side=True)
        except (ssl.SSLError, OSError):
            client.close()  # the client refused our certificate: its side reports it
            return
        backend = socket.create_connection(("127.0.0.1", self.backend))

        def pump(source: socket.socket, target: socket.socket) -> None:
            try:
                while chunk := source.recv(65536):
                    target.sendall(chunk)
            except OSError:
                pass
            finally:
                for end in (source, target):
                    try:
                        end.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        threading.Thread(target=pump, args=(backend, secure), daemon=True).start()
        pump(secure, backend)

    def close(self) -> None:
        self.open = False
        self.listener.close()


def make_certificates(folder: Path) -> dict[str, Path]:
    """A test CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files:
    ``ca``, ``cert``/``key`` (server), ``pem`` (server certificate + key, for Orthanc's
    HTTPS), ``client_cert``/``client_key``, and ``other_ca`` (a CA that signed nothing)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)

    def name(text: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

    def key_pem(key) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM,
                                 serialization.PrivateFormat.TraditionalOpenSSL,
                                 serialization.NoEncryption())  # fmt: skip

    def ca(label: str):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(name(label)).issuer_name(name(label))
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=30))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(True, False, False, False, False, True, True,
                                             False, False), critical=True)
                .sign(key, hashes.SHA256()))  # fmt: skip
        return key, cert

    def leaf(label: str, issuer_key, issuer, usage, ip: bool):
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder().subject_name(name(label))
                   .issuer_name(issuer.subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(days=1))
                   .not_valid_after(now + datetime.timedelta(days=30))
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))  # fmt: skip
        if ip:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
        return key, builder.sign(issuer_key, hashes.SHA256())

    ca_key, ca_cert = ca("mrisynth test CA")
    _, other = ca("a CA nobody uses")
    server_key, server = leaf("127.0.0.1", ca_key, ca_cert, ExtendedKeyUsageOID.SERVER_AUTH, True)
    client_key, client = leaf("MRISYNTH", ca_key, ca_cert, ExtendedKeyUsageOID.CLIENT_AUTH, False)
    pem = serialization.Encoding.PEM
    files = {
        "ca": ca_cert.public_bytes(pem), "other_ca": other.public_bytes(pem),
        "cert": server.public_bytes(pem), "key": key_pem(server_key),
        "pem": server.public_bytes(pem) + key_pem(server_key),
        "client_cert": client.public_bytes(pem), "client_key": key_pem(client_key),
    }  # fmt: skip
    out = {}
    for label, data in files.items():
        out[label] = folder / f"{label}.pem"
        out[label].write_bytes(data)
    return out
