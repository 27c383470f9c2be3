"""The PACS dock against a real Orthanc, in a real napari viewer: search, retrieve and open
(over DICOMweb and DIMSE) with the reader's exact geometry, cancel, a dead node, send.

Orthanc comes from ``tests/support/orthanc.py`` (skipped where it is not installed); GUI
tests need Xvfb and are marked ``gui``.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest

from napari_mrisynth._widgets._layer_data import layer_volume
from napari_mrisynth.io.dicom import load_dicom
from napari_mrisynth.pacs import NodeBook, SeriesCache
from tests.support.dicom_corpus import assert_same_image
from tests.support.orthanc import PASSWORD, USER, Orthanc, free_port

PLUGIN = "napari-mrisynth"
DOCK = "PACS"
WAIT_MS = 60_000


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory, corpus):
    server = Orthanc(tmp_path_factory.mktemp("orthanc")).start()
    try:
        server.upload(corpus["axial"].folder)
        server.allow("MRISYNTH", "MRISYNTH", free_port())  # our AE title, for C-GET
        yield server
    finally:
        server.stop()


@pytest.fixture
def env(monkeypatch, tmp_path):
    """Credentials in the environment, and this test's own cache and node book."""
    monkeypatch.setenv("MRISYNTH_PACS_USERNAME", USER)
    monkeypatch.setenv("MRISYNTH_PACS_PASSWORD", PASSWORD)
    monkeypatch.setenv("MRISYNTH_PACS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MRISYNTH_CONFIG_DIR", str(tmp_path / "config"))
    return tmp_path / "cache"


@pytest.fixture
def viewer(make_napari_viewer):
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1400, 900)
    return viewer


def _dock(viewer, qtbot):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, DOCK)
    qtbot.wait(10)
    return widget


def _address(orthanc: Orthanc, protocol: str) -> str:
    return orthanc.dicomweb if protocol == "dicomweb" else orthanc.dimse


def _wait(qtbot, widget) -> None:
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)


def _status(widget) -> str:
    return re.sub(r"<[^>]+>", "", widget.status.text())


def _search_row(qtbot, widget, uid: str, **fields) -> int:
    for name, value in fields.items():
        getattr(widget, name).setText(value)
    widget.search_button.click()
    _wait(qtbot, widget)
    assert widget.last_error is None, widget.last_error
    rows = [i for i, r in enumerate(widget.records) if r.series_uid == uid]
    assert len(rows) == 1, [r.series_uid for r in widget.records]
    return rows[0]


def _slow_writes(monkeypatch, seconds: float) -> dict[str, float]:
    """Each instance takes ``state["delay"]`` seconds to land in the cache, so that a cancel
    meets a transfer under way; ``state["written"]`` counts the instances written."""
    write = SeriesCache.write_instance
    state = {"delay": seconds, "written": 0}

    def slow(self, *args, **kwargs):
        time.sleep(state["delay"])
        written = write(self, *args, **kwargs)
        state["written"] += written
        return written

    monkeypatch.setattr(SeriesCache, "write_instance", slow)
    return state


@pytest.mark.gui
@pytest.mark.parametrize("protocol", ["dicomweb", "dimse"])
def test_search_retrieve_and_open_with_the_readers_geometry(
    viewer, qtbot, orthanc, corpus, env, protocol
):
    axial = corpus["axial"]
    NodeBook().add("orthanc-web", orthanc.dicomweb)
    widget = _dock(viewer, qtbot)
    assert widget.node.findText("orthanc-web") >= 0, "the node book's names are offered"

    widget.node.setEditText(_address(orthanc, protocol))
    widget.echo_button.click()
    _wait(qtbot, widget)
    assert widget.last_error is None, widget.last_error
    assert "answered in" in _status(widget)

    row = _search_row(qtbot, widget, axial.uid, modality="MR")
    record = widget.records[row]
    assert record.instances == len(axial.files)
    assert widget.table.item(row, 3).text() == str(len(axial.files))
    assert not widget.retrieve_button.isEnabled() or widget.table.rowCount() == 1
    widget.table.clearSelection()
    widget.table.selectRow(row)
    assert widget.retrieve_button.isEnabled()
    widget.retrieve_button.click()
    assert widget.busy and widget.cancel_button.isEnabled()
    _wait(qtbot, widget)
    assert widget.last_error is None, widget.last_error
    assert widget.progress.value() == widget.progress.maximum()

    (layer,) = widget.last_layers
    assert layer in viewer.layers
    if protocol == "dicomweb":  # the dock as a user sees it, for a look (not compared)
        qtbot.wait(200)
        from imageio.v3 import imwrite

        imwrite("/tmp/pacs_dock.png", viewer.screenshot(canvas_only=False, flash=False))
    cached = SeriesCache(env).get(axial.uid)
    assert cached is not None and len(cached.files) == len(axial.files)

    # The same as opening the original folder through the reader: voxels and geometry.
    (original,) = viewer.open(axial.folder, plugin=PLUGIN)
    np.testing.assert_array_equal(np.asarray(layer.data), np.asarray(original.data))
    np.testing.assert_allclose(layer.scale, original.scale, atol=1e-9)
    np.testing.assert_allclose(layer.translate, original.translate, atol=1e-9)
    np.testing.assert_allclose(layer.affine.affine_matrix, original.affine.affine_matrix)
    assert original.name in (layer.name, f"{layer.name} [1]")  # napari numbers a twin
    geometry = layer.metadata["mrisynth"]
    for key in ("source_affine_lps", "display_affine_lps", "source_shape"):
        assert geometry[key] == original.metadata["mrisynth"][key], key
    assert layer.metadata["pacs"]["series_uid"] == axial.uid
    assert_same_image(layer_volume(layer), load_dicom(axial.folder), what="retrieved layer")

    # Retrieving again uses the cache and opens a second layer with no transfer.
    widget.retrieve_button.click()
    _wait(qtbot, widget)
    assert widget.last_error is None and len(widget.last_layers) == 1


@pytest.mark.gui
@pytest.mark.parametrize("protocol", ["dicomweb", "dimse"])
def test_cancel_keeps_no_complete_series_and_resumes(
    viewer, qtbot, orthanc, corpus, env, monkeypatch, protocol
):
    axial = corpus["axial"]
    widget = _dock(viewer, qtbot)
    widget.node.setEditText(_address(orthanc, protocol))
    row = _search_row(qtbot, widget, axial.uid)
    widget.table.selectRow(row)
    cache = SeriesCache(env)

    # Cancelled at once: nothing is published, nothing opened.
    widget.retrieve_button.click()
    widget.cancel_button.click()
    assert not widget.cancel_button.isEnabled(), "one cancel is enough"
    _wait(qtbot, widget)
    assert "Cancelled" in _status(widget), _status(widget)
    assert widget.last_error is None
    assert cache.get(axial.uid) is None and cache.entries() == []
    assert len(viewer.layers) == 0

    # Cancelled mid-transfer: some instances arrived; they stay partial, never shown.
    writes = _slow_writes(monkeypatch, 0.3)
    widget.retrieve_button.click()
    qtbot.waitUntil(lambda: widget.progress.value() >= 1, timeout=WAIT_MS)
    widget.cancel_button.click()
    _wait(qtbot, widget)
    assert "Cancelled" in _status(widget), _status(widget)
    assert widget.progress.format() == "cancelled"
    assert cache.get(axial.uid) is None and cache.entries() == []
    arrived = cache.present(axial.uid)
    assert 1 <= len(arrived) < len(axial.files), len(arrived)
    assert len(viewer.layers) == 0

    # The next retrieval resumes and opens the whole series.
    writes.update(delay=0.0, written=0)
    widget.retrieve_button.click()
    _wait(qtbot, widget)
    assert widget.last_error is None, widget.last_error
    assert cache.get(axial.uid) is not None
    assert writes["written"] == len(axial.files) - len(arrived), "only the missing ones"
    (layer,) = widget.last_layers
    assert_same_image(layer_volume(layer), load_dicom(axial.folder))


@pytest.mark.gui
def test_a_dead_or_wrong_node_is_one_clear_line(viewer, qtbot, orthanc, env, monkeypatch):
    widget = _dock(viewer, qtbot)
    dead = free_port()
    cases = [
        (f"dimse://NOPE@127.0.0.1:{dead}", "echo_button", "connection refused"),
        (f"dicomweb:http://127.0.0.1:{dead}/dicom-web", "search_button", "cannot connect"),
        ("not-a-node", "echo_button", "not a node"),
        (orthanc.dimse.replace("ORTHANC@", "WRONG@"), "echo_button", "association rejected"),
    ]
    for address, button, expected in cases:
        widget.node.setEditText(address)
        getattr(widget, button).click()
        _wait(qtbot, widget)
        assert widget.last_error is not None, address
        assert expected in widget.last_error.lower(), widget.last_error
        assert "\n" not in widget.last_error
        assert _status(widget) == widget.last_error
        assert widget.echo_button.isEnabled(), "the dock is usable again"

    monkeypatch.setenv("MRISYNTH_PACS_PASSWORD", "wrong")
    widget.node.setEditText(orthanc.dicomweb)
    widget.search_button.click()
    _wait(qtbot, widget)
    assert "HTTP 401" in widget.last_error and "credentials" in widget.last_error


@pytest.mark.gui
@pytest.mark.parametrize(("protocol", "series"), [("dicomweb", "oblique"), ("dimse", "sagittal")])
def test_send_a_folder(viewer, qtbot, orthanc, corpus, env, protocol, series):
    sent = corpus[series]
    assert sent.uid not in orthanc.series_uids()
    widget = _dock(viewer, qtbot)
    widget.node.setEditText(_address(orthanc, protocol))
    widget.send_paths([sent.folder])
    assert widget.busy and not widget.send_button.isEnabled()
    _wait(qtbot, widget)
    assert widget.last_error is None, widget.last_error
    assert f"Sent {len(sent.files)} instance(s)" in _status(widget)
    assert widget.progress.format() == "sent"
    assert sent.uid in orthanc.series_uids()

    widget.send_paths([Path(sent.folder) / "nothing-here"])
    _wait(qtbot, widget)
    assert "no such file or folder" in widget.last_error
