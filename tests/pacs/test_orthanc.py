"""PACS against a real Orthanc: find, retrieve over DIMSE (C-GET, C-MOVE) and DICOMweb
(WADO-RS) voxel-identically to dcm2niix's conversion of what was uploaded, send back (C-STORE,
STOW-RS), the cache, and one clear line for every failure.

No mocks: Debian's Orthanc with its DICOMweb plugin runs on loopback ports
(``tests.support.orthanc``); the command line runs in subprocesses.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading

import pydicom
import pytest

from napari_mrisynth.io.dicom import load_dicom
from napari_mrisynth.pacs import NodeBook, PacsError, SeriesCache, echo, find_series, retrieve, send
from napari_mrisynth.pacs.nodes import parse_address
from tests.support import orthanc as orthanc_support
from tests.support.dicom_corpus import assert_same_image

UPLOADED = ("axial", "j2k")


@pytest.fixture(scope="module")
def server(tmp_path_factory, corpus):
    """Orthanc holding the corpus' axial and JPEG 2000 series; our AE title registered for
    C-GET and C-MOVE to a port of ours."""
    move_port = orthanc_support.free_port()
    orthanc = orthanc_support.Orthanc(
        tmp_path_factory.mktemp("orthanc"), {"mrisynth": ("MRISYNTH", move_port)}
    ).start()
    orthanc.move_port = move_port
    for name in UPLOADED:
        orthanc.upload(corpus[name].folder)
    yield orthanc
    orthanc.stop()


@pytest.fixture(autouse=True)
def credentials(monkeypatch, tmp_path):
    monkeypatch.setenv("MRISYNTH_PACS_USERNAME", orthanc_support.USER)
    monkeypatch.setenv("MRISYNTH_PACS_PASSWORD", orthanc_support.PASSWORD)
    monkeypatch.setenv("MRISYNTH_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("MRISYNTH_PACS_CACHE", str(tmp_path / "cache"))


def _uid(corpus, name: str) -> str:
    first = sorted(corpus[name].folder.iterdir())[0]
    return str(pydicom.dcmread(first, stop_before_pixels=True).SeriesInstanceUID)


def _sops(folder) -> set[str]:
    return {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
            for p in folder.iterdir() if p.suffix == ".dcm"}  # fmt: skip


def _mrisynth(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "napari_mrisynth.cli", *args],
                          capture_output=True, text=True, env={**os.environ, **(env or {})},
                          timeout=300)  # fmt: skip


# -- reaching the node ------------------------------------------------------------------------
def test_echo_over_dimse_and_dicomweb(server):
    assert echo(server.dimse) < 5.0
    assert echo(server.dicomweb) < 5.0
    run = _mrisynth("pacs", "echo", server.dimse)
    assert run.returncode == 0 and "answered in" in run.stdout, run.stderr


def test_find_lists_the_uploaded_series_over_both_protocols(server, corpus):
    for node in (server.dimse, server.dicomweb):
        rows = find_series(node)
        assert {r.series_uid for r in rows} == {_uid(corpus, n) for n in UPLOADED}, node
        assert all(r.modality == "MR" and r.instances == 8 for r in rows)
        (axial,) = find_series(node, description="axial", modality="MR")
        assert axial.series_uid == _uid(corpus, "axial")
        assert find_series(node, modality="CT") == []
        assert find_series(node, patient_id="nobody-here") == []
    run = _mrisynth("pacs", "find", server.dicomweb, "--description", "axial", "--json")
    assert run.returncode == 0, run.stderr
    (row,) = json.loads(run.stdout)
    assert row["series_uid"] == _uid(corpus, "axial") and row["study_uid"]


# -- retrieval, voxel-identical to dcm2niix -------------------------------------------------
@pytest.mark.parametrize("how", ["c-get", "wado-rs", "c-move"])
@pytest.mark.parametrize("name", UPLOADED)
def test_a_retrieved_series_converts_as_dcm2niix_converts_the_upload(
    server, corpus, dcm2niix_of, tmp_path, how, name
):
    node = server.dicomweb if how == "wado-rs" else server.dimse
    seen = []
    (folder,) = retrieve(node, [_uid(corpus, name)], cache=tmp_path / "c",
                         method="move" if how == "c-move" else "get", port=server.move_port,
                         progress=lambda done, total: seen.append((done, total)))  # fmt: skip
    assert folder == tmp_path / "c" / _uid(corpus, name) / "dicom"  # DICOM files only
    assert {p.suffix for p in folder.iterdir()} == {".dcm"}
    assert _sops(folder) == _sops_of_upload(corpus[name].folder)
    assert seen[-1] == (8, 8) and [d for d, _ in seen] == list(range(1, 9))
    (reference,) = dcm2niix_of(name, corpus[name].folder)
    assert_same_image(reference, load_dicom(folder), atol=corpus[name].atol,
                      what=f"{name} over {how}")  # fmt: skip
    manifest = json.loads((folder.parent / "series.json").read_text())
    assert manifest["instances"] == 8 and manifest["node"] == node


def _sops_of_upload(folder) -> set[str]:
    return {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
            for p in folder.iterdir() if p.is_file()}  # fmt: skip


def test_the_cli_gets_a_series_into_the_cache_and_out(server, corpus, tmp_path):
    uid = _uid(corpus, "axial")
    run = _mrisynth("pacs", "get", server.dimse, "--series", uid, "--out", str(tmp_path / "out"),
                    "--cache", str(tmp_path / "cache"), "--json")  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == [str(tmp_path / "out" / uid)]
    assert _sops(tmp_path / "out" / uid) == _sops(tmp_path / "cache" / uid / "dicom")
    listed = _mrisynth("pacs", "cache", "list", "--cache", str(tmp_path / "cache"), "--json")
    assert [e["series_uid"] for e in json.loads(listed.stdout)] == [uid]
    cleared = _mrisynth("pacs", "cache", "clear", "--cache", str(tmp_path / "cache"))
    assert cleared.returncode == 0 and "1 series removed" in cleared.stdout
    assert SeriesCache(tmp_path / "cache").entries() == []


def test_a_cached_series_needs_no_node(server, corpus, tmp_path):
    uid = _uid(corpus, "axial")
    (first,) = retrieve(server.dicomweb, [uid], cache=tmp_path / "c")
    dead = f"dimse://ORTHANC@127.0.0.1:{orthanc_support.free_port()}"
    assert retrieve(dead, [uid], cache=tmp_path / "c") == [first]


# -- failures: one line, nothing partial -----------------------------------------------------
@pytest.mark.parametrize("resume_over", ["dimse", "dicomweb"])
def test_a_server_failing_mid_transfer_shows_nothing_and_the_next_get_resumes(
    server, corpus, tmp_path, resume_over
):
    """The server is killed during a C-GET (a WADO-RS response of 8 small instances is
    whole in the socket's buffer before a kill could cut it); the retrieval resumes over
    either protocol, asking only for the missing instances."""
    uid = _uid(corpus, "j2k")
    node = server.dimse
    cache = SeriesCache(tmp_path / "c")

    def kill_after_three(done: int, total: int) -> None:
        if done == 3:
            server.stop(kill=True)

    try:
        with pytest.raises(PacsError) as info:
            retrieve(node, [uid], cache=cache, progress=kill_after_three)
    finally:
        server.start()
    assert "\n" not in str(info.value) and node in str(info.value)
    assert cache.get(uid) is None and not (tmp_path / "c" / uid).exists()  # nothing shown
    kept = cache.present(uid)
    assert 3 <= len(kept) < 8
    seen = []
    again = server.dimse if resume_over == "dimse" else server.dicomweb
    (folder,) = retrieve(again, [uid], cache=cache, progress=lambda d, t: seen.append(d))
    assert seen[0] == len(kept) + 1  # only the missing instances were asked for
    assert _sops(folder) == _sops_of_upload(corpus["j2k"].folder)


def test_cancel_keeps_the_partial_series_hidden(server, corpus, tmp_path):
    uid = _uid(corpus, "axial")
    cancel = threading.Event()
    with pytest.raises(PacsError, match="cancelled"):
        retrieve(server.dicomweb, [uid], cache=tmp_path / "c", cancel=cancel,
                 progress=lambda done, total: cancel.set())  # fmt: skip
    assert SeriesCache(tmp_path / "c").get(uid) is None


def _silent_port() -> tuple[socket.socket, int]:
    """A port that accepts connections and never answers (a hung node)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    return listener, listener.getsockname()[1]


def test_every_failure_is_one_clear_line(server, tmp_path):
    dead = orthanc_support.free_port()
    listener, hung = _silent_port()
    cases = {
        "dead node": (["pacs", "echo", f"dimse://ORTHANC@127.0.0.1:{dead}"], {},
                      f"connection refused by 127.0.0.1:{dead}"),
        "dead DICOMweb": (["pacs", "echo", f"dicomweb:http://127.0.0.1:{dead}/dicom-web"], {},
                          "cannot connect"),
        "wrong called AE title": (["pacs", "echo", server.dimse.replace("ORTHANC", "NOTHERE")],
                                  {}, "association rejected by the node: Called AE title not "
                                      "recognised"),
        "our AE title unknown to the node": (["pacs", "find", server.dimse, "--aet", "STRANGER"],
                                             {}, "allow our AE title 'STRANGER'"),
        "bad credentials": (["pacs", "find", server.dicomweb],
                            {"MRISYNTH_PACS_PASSWORD": "wrong"}, "HTTP 401"),
        "timeout": (["pacs", "echo", f"dimse://ORTHANC@127.0.0.1:{hung}", "--timeout", "2"], {},
                    "timed out after 2 s"),
        "not an address": (["pacs", "echo", "pacs.example.org"], {}, "not a node"),
        "unknown series": (["pacs", "get", server.dicomweb, "--series", "1.2.3.4"], {},
                           "no series 1.2.3.4"),
    }  # fmt: skip
    try:
        for case, (args, env, expected) in cases.items():
            run = _mrisynth(*args, env=env)
            lines = run.stderr.strip().splitlines()
            assert run.returncode == 1, (case, run.stderr)
            assert len(lines) == 1 and "Traceback" not in run.stderr, (case, run.stderr)
            assert lines[0].startswith("mrisynth pacs: error: ") and expected in lines[0], (
                case,
                lines[0],
            )
    finally:
        listener.close()


# -- sending ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "protocol"), [("oblique", "dicomweb"), ("rescaled", "dimse")])
def test_send_back_then_retrieve_the_same_voxels(server, corpus, dcm2niix_of, tmp_path, name,
                                                 protocol):  # fmt: skip
    node = server.dicomweb if protocol == "dicomweb" else server.dimse
    uid = _uid(corpus, name)
    run = _mrisynth("pacs", "send", node, str(corpus[name].folder))
    assert run.returncode == 0 and "8 instance(s) stored" in run.stdout, run.stderr
    assert uid in server.series_uids()
    (folder,) = retrieve(node, [uid], cache=tmp_path / "c")
    (reference,) = dcm2niix_of(name, corpus[name].folder)
    assert_same_image(reference, load_dicom(folder), atol=corpus[name].atol, what=name)


def test_send_refuses_what_is_not_dicom(server, tmp_path):
    (tmp_path / "notes.txt").write_text("not DICOM")
    with pytest.raises(PacsError, match="no DICOM file"):
        send(server.dicomweb, [tmp_path])
    with pytest.raises(PacsError, match="no such file"):
        send(server.dicomweb, [tmp_path / "missing"])


# -- nodes --------------------------------------------------------------------------------------
def test_the_node_book_keeps_addresses_and_never_a_credential(server, tmp_path):
    run = _mrisynth("pacs", "nodes", "add", "orthanc-web", server.dicomweb)
    assert run.returncode == 0, run.stderr
    _mrisynth("pacs", "nodes", "add", "orthanc", server.dimse)
    listed = json.loads(_mrisynth("pacs", "nodes", "list", "--json").stdout)
    assert [n["name"] for n in listed] == ["orthanc", "orthanc-web"]
    assert echo("orthanc") < 5.0 and echo("orthanc-web") < 5.0  # by name
    book = NodeBook().path.read_text()
    assert orthanc_support.PASSWORD not in book and orthanc_support.USER not in book
    refused = _mrisynth(
        "pacs",
        "nodes",
        "add",
        "leaky",
        f"dicomweb:http://{orthanc_support.USER}:pw@127.0.0.1:1/dicom-web",
    )
    assert refused.returncode == 1 and "plain text" in refused.stderr
    with pytest.raises(PacsError, match="called AE title"):
        parse_address("dimse://A-TITLE-LONGER-THAN-16@host:104")
    assert _mrisynth("pacs", "nodes", "remove", "orthanc").returncode == 0
    assert [n.name for n in NodeBook().nodes()] == ["orthanc-web"]
    # per-node credentials win over the general ones
    os.environ["MRISYNTH_PACS_ORTHANC_WEB_PASSWORD"] = "wrong"
    try:
        with pytest.raises(PacsError, match="HTTP 401"):
            echo("orthanc-web")
    finally:
        del os.environ["MRISYNTH_PACS_ORTHANC_WEB_PASSWORD"]


def test_credentials_from_the_os_keyring(server, tmp_path, monkeypatch):
    """A real keyring backend (keyrings.alt's file keyring, in this test's own folder): the
    password comes from it when the environment has none."""
    monkeypatch.delenv("MRISYNTH_PACS_PASSWORD")
    env = {"PYTHON_KEYRING_BACKEND": "keyrings.alt.file.PlaintextKeyring",
           "XDG_DATA_HOME": str(tmp_path / "data")}  # fmt: skip
    assert _mrisynth("pacs", "nodes", "add", "vault", server.dicomweb).returncode == 0
    refused = _mrisynth("pacs", "echo", "vault", env=env)
    assert refused.returncode == 1 and "HTTP 401" in refused.stderr
    stored = subprocess.run(
        [sys.executable, "-c", "import keyring, sys; keyring.set_password("
         "'napari-mrisynth-pacs', 'vault:password', sys.argv[1])", orthanc_support.PASSWORD],
        env={**os.environ, **env}, capture_output=True, text=True,
    )  # fmt: skip
    assert stored.returncode == 0, stored.stderr
    accepted = _mrisynth("pacs", "echo", "vault", env=env)
    assert accepted.returncode == 0, accepted.stderr
    assert orthanc_support.PASSWORD not in NodeBook().path.read_text()


@pytest.mark.parametrize("protocol", ["dimse", "dicomweb"])
def test_a_corrected_masks_dicom_seg_goes_to_the_pacs_and_comes_back(server, corpus, tmp_path,
                                                                     protocol):  # fmt: skip
    """The DICOM SEG a corrected mask is saved as (highdicom, referencing the axial series)
    is sent, found beside its source series, retrieved and read back label for label."""
    import numpy as np

    from napari_mrisynth.io.dicom_seg import read_dicom_seg, write_dicom_seg

    node = server.dimse if protocol == "dimse" else server.dicomweb
    source = load_dicom(corpus["axial"].folder).compute()
    labels = np.zeros(source.shape, dtype=np.uint8)
    labels[2:5, 10:30, 12:28] = 1
    labels[3:6, 30:40, 20:30] = 2
    files = sorted(p for p in corpus["axial"].folder.iterdir() if p.is_file())
    seg = write_dicom_seg(source.with_data(labels), files, tmp_path / f"mask-{protocol}.dcm",
                          segments={1: ("left_lateral_ventricle", (120, 18, 134)),
                                    2: ("right_insula_gm", (60, 220, 60))},
                          manual=True, annotator="Dr Mask", uid_seed=protocol)  # fmt: skip
    assert send(node, [seg]) == 1
    seg_uid = str(pydicom.dcmread(seg, stop_before_pixels=True).SeriesInstanceUID)
    study = {r.study_uid for r in find_series(node) if r.series_uid == seg_uid}
    assert study == {r.study_uid for r in find_series(node, description="axial")}
    (folder,) = retrieve(node, [seg_uid], cache=tmp_path / "c")
    (back,) = folder.iterdir()
    read, names = read_dicom_seg(back, files)
    np.testing.assert_array_equal(read, labels)
    assert names == {1: "left_lateral_ventricle", 2: "right_insula_gm"}
