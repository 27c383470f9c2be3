"""PACS over TLS against a real Orthanc: DICOM TLS (our certificate required) and HTTPS,
verified against a test CA given in ``MRISYNTH_PACS_CA``; one clear line when the CA or our
certificate is missing."""

from __future__ import annotations

import os
import subprocess
import sys

import pydicom
import pytest

from napari_mrisynth.io.dicom import load_dicom
from napari_mrisynth.pacs import PacsError, echo, find_series, retrieve, send
from tests.support import orthanc as orthanc_support
from tests.support.dicom_corpus import assert_same_image


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    pytest.importorskip("cryptography")
    return orthanc_support.make_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def server(tmp_path_factory, corpus, certificates):
    orthanc = orthanc_support.Orthanc(
        tmp_path_factory.mktemp("orthanc-tls"),
        {"mrisynth": ("MRISYNTH", orthanc_support.free_port())},
        tls=certificates,
    ).start()
    orthanc.upload(corpus["axial"].folder)
    yield orthanc
    orthanc.stop()


@pytest.fixture(autouse=True)
def environment(monkeypatch, tmp_path, certificates):
    monkeypatch.setenv("MRISYNTH_PACS_USERNAME", orthanc_support.USER)
    monkeypatch.setenv("MRISYNTH_PACS_PASSWORD", orthanc_support.PASSWORD)
    monkeypatch.setenv("MRISYNTH_PACS_CA", str(certificates["ca"]))
    monkeypatch.setenv("MRISYNTH_PACS_CERT", str(certificates["client_cert"]))
    monkeypatch.setenv("MRISYNTH_PACS_KEY", str(certificates["client_key"]))
    monkeypatch.setenv("MRISYNTH_CONFIG_DIR", str(tmp_path / "config"))


def test_find_retrieve_and_send_over_dicom_tls_and_https(server, corpus, dcm2niix_of, tmp_path):
    assert server.dimse.startswith("dimse+tls://") and server.dicomweb.startswith("dicomweb:https")
    uid = str(pydicom.dcmread(sorted(corpus["axial"].folder.iterdir())[0]).SeriesInstanceUID)
    (reference,) = dcm2niix_of("axial", corpus["axial"].folder)
    for node in (server.dimse, server.dicomweb):
        assert echo(node) < 5.0
        assert [r.series_uid for r in find_series(node)][:1] == [uid] or uid in {
            r.series_uid for r in find_series(node)
        }
        (folder,) = retrieve(node, [uid], cache=tmp_path / node.split(":")[0])
        assert_same_image(reference, load_dicom(folder), what=node)
    assert send(server.dicomweb, [corpus["coronal"].folder]) == 8
    assert send(server.dimse, [corpus["sagittal"].folder]) == 8
    sent = {str(pydicom.dcmread(sorted(corpus[n].folder.iterdir())[0]).SeriesInstanceUID)
            for n in ("coronal", "sagittal")}  # fmt: skip
    assert sent <= server.series_uids()


def _cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "napari_mrisynth.cli", *args],
                          capture_output=True, text=True, env={**os.environ, **env},
                          timeout=120)  # fmt: skip


def test_tls_failures_are_one_clear_line(server, certificates):
    wrong_ca = {"MRISYNTH_PACS_CA": str(certificates["other_ca"])}
    no_client = {"MRISYNTH_PACS_CERT": "", "MRISYNTH_PACS_KEY": ""}
    cases = [
        (server.dimse, wrong_ca, "certificate verify failed"),
        (server.dicomweb, wrong_ca, "certificate verify failed"),
        (server.dimse, no_client, "TLS failed"),
        (server.dimse, {"MRISYNTH_PACS_CA": "/no/such/ca.pem"}, "TLS ca file /no/such/ca.pem"),
        (server.dimse.replace("dimse+tls", "dimse"), {}, "association failed"),
    ]
    for node, env, expected in cases:
        run = _cli("pacs", "echo", node, "--timeout", "5", env=env)
        lines = run.stderr.strip().splitlines()
        assert run.returncode == 1 and len(lines) == 1, (node, env, run.stderr)
        assert expected in lines[0] and "Traceback" not in run.stderr, (node, env, lines[0])
    with pytest.raises(PacsError, match="needs both _CERT and _KEY"):
        os.environ["MRISYNTH_PACS_KEY"] = ""
        echo(server.dimse)
