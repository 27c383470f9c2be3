"""The Segment and Classify dock widgets, docked through the manifest in a real viewer.

Models are tiny registry models with RANDOM weights (``tiny_models.make_tiny_model``):
these tests check plumbing and geometry (layers exactly over the scan, the card's names and
colours, volumes in mL, probabilities, saliency range, clear errors), not accuracy.

GUI tests need a display with OpenGL (``xvfb-run -a -s "-screen 0 1400x1000x24" ...``);
they are marked ``gui``. ``MRISYNTH_SCREENSHOTS=docs/images`` writes the documentation
screenshots there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_mrisynth._widgets._segment_widget import (
    label_color_dict,
    label_features,
    volume_table_tsv,
)
from napari_mrisynth.errors import InputError, ModelError
from napari_mrisynth.volume import Volume
from tests.support import tiny_models

PLUGIN = "napari-mrisynth"
SEGMENT = "Segment"
CLASSIFY = "Classify"


# -- without a viewer -----------------------------------------------------------------------
def test_widget_modules_do_not_import_torch():
    code = (
        "import sys\n"
        "import napari_mrisynth._widgets._segment_widget\n"
        "import napari_mrisynth._widgets._classify_widget\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_label_colours_names_and_tsv_from_result_metadata():
    volume = Volume(
        np.zeros((2, 2, 2), np.uint8),
        metadata={
            "label_names": {"1": "frontal gm", "3": "ventricles"},
            "label_colors": {"1": [255, 0, 0], "3": [0, 51, 255]},
        },
    )
    colors = label_color_dict(volume)
    assert colors[1] == (1.0, 0.0, 0.0, 1.0)
    assert colors[3] == (0.0, 0.2, 1.0, 1.0)
    assert colors[0][3] == 0.0 and colors[None][3] == 0.0  # background transparent
    features = label_features(volume)
    assert features["index"].tolist() == [0, 1, 3]
    assert features["name"].tolist() == ["background", "frontal gm", "ventricles"]
    rows = [
        {"value": 1, "name": "frontal gm", "voxels": 10, "ml": 0.64},
        {"value": 3, "name": "ventricles", "voxels": 0, "ml": 0.0},
    ]
    assert volume_table_tsv(rows) == (
        "label\tname\tvoxels\tvolume_ml\n1\tfrontal gm\t10\t0.640\n3\tventricles\t0\t0.000\n"
    )


# -- fixtures -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_root(tmp_path_factory):
    """One tiny segmentation and one tiny classification model, saved once per module."""
    pytest.importorskip("napari_mrisynth.preprocess")  # written beside this; skip until it lands
    root = tmp_path_factory.mktemp("models")
    seg = tiny_models.make_tiny_model(root, "segmentation", spacing=8.0, training=DEFAULT)
    cls = tiny_models.make_tiny_model(root, "classification", spacing=8.0, training=DEFAULT)
    return root, seg, cls


#: The tiny models outrank the bundled demo models as the default of their task here.
DEFAULT = {"default": True}


@pytest.fixture(scope="module")
def subject_nifti(tmp_path_factory):
    """A simulated bvFTD head at 4 mm, as NIfTI, and its true Volume."""
    from napari_mrisynth.cohort import simulate_subject
    from napari_mrisynth.io.files import save_volume

    subject = simulate_subject("sub-x", "bvFTD", 3, 4.0)
    path = save_volume(subject.t1, tmp_path_factory.mktemp("subject") / "sub-x_T1w.nii.gz")
    return path, subject.t1


@pytest.fixture
def viewer(make_napari_viewer, model_root, monkeypatch):
    root, _, _ = model_root
    monkeypatch.setenv("MRISYNTH_MODEL_PATH", str(root))
    monkeypatch.setenv("MRISYNTH_DATA_DIR", str(root.parent / "no-user-models"))
    monkeypatch.setenv("MRISYNTH_NO_THREADS", "1")
    return make_napari_viewer(show=True)


def _dock(viewer, name):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    return widget


def _open(viewer, path):
    (layer,) = viewer.open(path, plugin=PLUGIN)
    return layer


def _matrix(layer) -> np.ndarray:
    from napari_mrisynth._widgets._layer_data import data_to_world_matrix

    return data_to_world_matrix(
        layer.scale, layer.translate, layer.rotate, layer.shear, layer.affine
    )


def _assert_same_geometry(layer, image, truth: Volume):
    """Same data-to-world transform as the image, and voxels land on the true LPS points."""
    assert layer.data.shape == image.data.shape
    np.testing.assert_allclose(layer.scale, image.scale)
    np.testing.assert_allclose(layer.translate, image.translate)
    np.testing.assert_allclose(layer.affine.affine_matrix, image.affine.affine_matrix)
    np.testing.assert_allclose(_matrix(layer), _matrix(image), atol=1e-9)
    last = np.array(truth.shape[::-1]) - 1
    for index_xyz in ([0, 0, 0], last // 3, last):
        world = truth.index_to_lps(index_xyz)[::-1]  # napari world: LPS in (z, y, x)
        data_index = np.rint(layer.world_to_data(world)).astype(int)
        np.testing.assert_allclose(layer.data_to_world(data_index), world, atol=1e-6)
        # the image voxel at that point is the source voxel: same grid, same place
        i, j, k = index_xyz
        assert image.data[tuple(data_index)] == truth.data[k, j, i]


def _notifications() -> list[str]:
    from napari.utils.notifications import notification_manager

    return [str(n.message) for n in notification_manager.records]


def _screenshot(viewer, dock, image, name, tmp_path):
    """The window with the dock shown, for docs/images (``MRISYNTH_SCREENSHOTS``)."""
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QApplication

    window = viewer.window._qt_window
    window.resize(1400, 1000)
    QApplication.processEvents()
    window.resizeDocks([dock], [480], Qt.Orientation.Horizontal)
    QApplication.processEvents()
    viewer.layers.selection.active = image
    viewer.dims.set_point(
        0, float(image.translate[0] + image.scale[0] * image.data.shape[0] * 0.55)
    )
    viewer.reset_view()
    QApplication.processEvents()
    target = Path(os.environ.get("MRISYNTH_SCREENSHOTS", tmp_path))
    target.mkdir(parents=True, exist_ok=True)
    shot = viewer.screenshot(target / f"napari_{name}.png", canvas_only=False, flash=False)
    assert shot.shape[0] >= 900 and shot.shape[1] >= 1200
    assert shot[..., :3].std() > 10


# -- segment --------------------------------------------------------------------------------
@pytest.mark.gui
def test_segment_adds_labels_on_the_scan_with_card_names_colours_and_volumes(
    viewer, model_root, subject_nifti, tmp_path
):
    from qtpy.QtWidgets import QApplication

    from napari_mrisynth.models.inference import segment
    from napari_mrisynth.volume import napari_layer_kwargs

    _, seg_card, _ = model_root
    path, truth = subject_nifti
    image = _open(viewer, path)
    dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, SEGMENT)
    assert widget.image.currentData() is image
    assert widget.model.currentData().ref == seg_card.ref  # the registry default
    assert "simulated data" in widget.card_info.text()
    assert widget.device.itemText(0) == "auto" and widget.device.findText("cpu") >= 0

    widget.run()

    assert widget.last_error is None, widget.status.text()
    name = f"{image.name} · {seg_card.title}"
    labels = viewer.layers[name]
    assert type(labels).__name__ == "Labels"
    assert labels.data.dtype == np.uint8
    _assert_same_geometry(labels, image, truth)
    assert image in viewer.layers
    # colours and names from the card
    for spec in seg_card.labels:
        expected = np.array([*(c / 255 for c in spec.color), 1.0])
        np.testing.assert_allclose(labels.colormap.color_dict[spec.value], expected, atol=1e-6)
        row = labels.features[labels.features["index"] == spec.value]
        assert row["name"].tolist() == [spec.name]
    assert labels.colormap.color_dict[0][3] == 0  # background transparent
    # the status bar names the label under the cursor
    value = int(np.bincount(np.asarray(labels.data).ravel()).argmax())
    where = np.argwhere(np.asarray(labels.data) == value)[0]
    world = labels.data_to_world(where)
    viewer.dims.set_point(range(3), world)  # status reads the displayed slice
    status = labels.get_status(world, world=True)["value"]
    assert status == f"{value}; name: {seg_card.label_names.get(value, 'background')}"
    # the table: one row per card label, mL = voxels x voxel volume (from the layer's scale)
    data = np.asarray(labels.data)
    voxel_ml = float(np.prod(labels.scale)) / 1000.0
    assert widget.table.rowCount() == len(seg_card.labels)
    for row, spec in enumerate(seg_card.labels):
        voxels = int(np.count_nonzero(data == spec.value))
        assert widget.table.item(row, 1).text() == spec.name
        assert int(widget.table.item(row, 2).text().replace(",", "")) == voxels
        shown_ml = float(widget.table.item(row, 3).text())
        assert shown_ml == pytest.approx(voxels * voxel_ml, abs=0.006)
    labelled = sum(int(np.count_nonzero(data == s.value)) for s in seg_card.labels)
    assert labelled == np.count_nonzero(data)  # no value outside the card
    tsv = widget.copy_table().splitlines()
    assert len(tsv) == 1 + len(seg_card.labels)
    assert QApplication.clipboard().text().splitlines() == tsv
    # the device is announced, CPU plainly
    assert "CPU" in widget.status.text()
    assert widget.progress.value() == widget.progress.maximum()
    _screenshot(viewer, dock, image, "segment", tmp_path)

    # again, on the CPU by choice: the layer is replaced in its place, the others stay
    viewer.add_points([[0.0, 0.0, 0.0]], name="marks")
    widget.device.setCurrentText("cpu")
    widget.run()
    assert widget.last_error is None, widget.status.text()
    assert "CPU (as chosen)" in widget.status.text()
    names = [layer.name for layer in viewer.layers]
    assert names == [image.name, name, "marks"]
    shown = np.asarray(viewer.layers[name].data)
    # the CLI's path: the file on its own (stored) grid, then displayed like any volume
    direct = segment(path, seg_card, device="cpu").labels
    assert direct.same_geometry(truth)
    expected, _ = napari_layer_kwargs(direct, labels=True)
    assert shown.shape == expected.shape
    # registration is an optimisation run on the two differently ordered grids, and random
    # weights change label at almost every voxel: a flip or shift would agree far less
    assert np.mean(shown == np.asarray(expected)) > 0.99


@pytest.mark.gui
def test_segment_a_lazy_dicom_series(viewer, model_root, subject_nifti, tmp_path):
    from napari_mrisynth.io.dicom_write import write_dicom_series

    _, seg_card, _ = model_root
    _, truth = subject_nifti
    write_dicom_series(truth, tmp_path / "dicom")
    image = _open(viewer, tmp_path / "dicom")
    assert not isinstance(image.data, np.ndarray)  # dask: read in the worker, not here
    widget = _dock(viewer, SEGMENT)
    widget.run()
    assert widget.last_error is None, widget.status.text()
    labels = viewer.layers[f"{image.name} · {seg_card.title}"]
    _assert_same_geometry(labels, image, truth)


@pytest.mark.gui
def test_image_choice_follows_the_layer_list(viewer, subject_nifti):
    widget = _dock(viewer, SEGMENT)
    assert widget.image.count() == 0 and not widget.run_button.isEnabled()
    image = _open(viewer, subject_nifti[0])
    viewer.add_labels(np.zeros((4, 4, 4), np.uint8), name="not an image")
    assert [widget.image.itemText(i) for i in range(widget.image.count())] == [image.name]
    assert widget.run_button.isEnabled()
    image.name = "renamed T1"
    assert widget.image.currentText() == "renamed T1"
    viewer.layers.remove(image)
    assert widget.image.count() == 0 and not widget.run_button.isEnabled()


@pytest.mark.gui
def test_segment_in_a_worker_thread(viewer, qtbot, subject_nifti):
    image = _open(viewer, subject_nifti[0])
    widget = _dock(viewer, SEGMENT)
    widget.threaded = True
    stages = []
    widget._relay.progressed.connect(lambda done, total, stage: stages.append((done, stage)))
    worker = widget.run()
    assert worker is not None and not widget.run_button.isEnabled()
    with qtbot.waitSignal(worker.finished, timeout=60_000):
        pass
    qtbot.waitUntil(lambda: widget.run_button.isEnabled(), timeout=5_000)
    assert widget.last_error is None, widget.status.text()
    assert [s for _, s in stages] == ["model", "prepare", "infer", "inverse"]
    assert any(type(layer).__name__ == "Labels" for layer in viewer.layers)
    assert image in viewer.layers


# -- classify -------------------------------------------------------------------------------
@pytest.mark.gui
def test_classify_shows_probabilities_and_a_saliency_overlay(
    viewer, model_root, subject_nifti, tmp_path
):
    _, _, cls_card = model_root
    path, truth = subject_nifti
    image = _open(viewer, path)
    dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, CLASSIFY)
    assert widget.model.currentData().ref == cls_card.ref
    assert widget.saliency.isChecked()

    widget.run()

    assert widget.last_error is None, widget.status.text()
    result = widget.last_result
    assert set(result.probabilities) == {"control", "bvFTD"}
    assert sum(result.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    for name, p in result.probabilities.items():
        assert widget.bars[name].value() == round(p * 1000)
        assert widget.bars[name].format() == f"{p:.1%}"
    assert f"<b>{result.predicted}</b>" in widget.predicted.text()
    saliency = viewer.layers[f"{image.name} · {cls_card.title} saliency (bvFTD)"]
    _assert_same_geometry(saliency, image, truth)
    heat = np.asarray(saliency.data)
    assert heat.dtype == np.float32
    assert heat.min() >= 0.0 and heat.max() <= 1.0 and heat.max() > heat.min()
    assert saliency.colormap.name == "inferno"
    assert str(saliency.blending) == "additive"
    assert tuple(saliency.contrast_limits) == (0.0, 1.0)
    assert saliency.opacity == pytest.approx(0.5)
    _screenshot(viewer, dock, image, "classify", tmp_path)
    # without saliency: the same probabilities, no new layer. The saliency pass runs the
    # network with gradients on, whose kernels round differently from the no-grad pass;
    # CI measured a 1.05e-5 difference, so the tolerance is 1e-4 (a tenth of a per mille).
    widget.saliency.setChecked(False)
    widget.run()
    assert widget.last_error is None, widget.status.text()
    assert len(viewer.layers) == 2
    assert widget.last_result.probabilities == pytest.approx(result.probabilities, abs=1e-4)


# -- bad input ------------------------------------------------------------------------------
def _run_expecting(viewer, widget, error_type, *words):
    """Run, and check the error is shown in the widget and notified; nothing is added."""
    before = [layer.name for layer in viewer.layers]
    widget.run()
    assert isinstance(widget.last_error, error_type), (widget.last_error, widget.status.text())
    message = widget.status.text()
    for word in words:
        assert word.lower() in message.lower(), message
    assert any(message in note for note in _notifications()), _notifications()
    assert [layer.name for layer in viewer.layers] == before
    assert widget.run_button.isEnabled()


@pytest.mark.gui
@pytest.mark.parametrize("widget_name", [SEGMENT, CLASSIFY])
def test_bad_images_give_clear_errors_and_the_viewer_goes_on(viewer, widget_name, subject_nifti):
    widget = _dock(viewer, widget_name)
    scale = (4.0, 4.0, 4.0)
    rng = np.random.default_rng(0)

    one_slice = rng.normal(100, 10, (1, 64, 64)).astype(np.float32)
    viewer.add_image(one_slice, scale=scale, name="one slice")
    widget.image.setCurrentIndex(widget.image.findText("one slice"))
    _run_expecting(viewer, widget, InputError, "one slice")

    nans = rng.normal(100, 10, (32, 32, 32)).astype(np.float32)
    nans[10:12] = np.nan
    viewer.add_image(nans, scale=scale, name="with NaNs")
    widget.image.setCurrentIndex(widget.image.findText("with NaNs"))
    _run_expecting(viewer, widget, InputError, "nan")

    viewer.add_image(np.zeros((32, 32, 32), np.float32), scale=scale, name="empty")
    widget.image.setCurrentIndex(widget.image.findText("empty"))
    _run_expecting(viewer, widget, InputError, "empty")

    viewer.add_image(rng.normal(size=(64, 64)), name="flat 2D")
    widget.image.setCurrentIndex(widget.image.findText("flat 2D"))
    _run_expecting(viewer, widget, InputError, "2D", "3D volume")

    viewer.add_image(rng.normal(size=(3, 16, 16, 16)), name="series 4D")
    widget.image.setCurrentIndex(widget.image.findText("series 4D"))
    _run_expecting(viewer, widget, InputError, "4 dimensions")

    ct = rng.normal(100, 10, (32, 32, 32)).astype(np.float32)
    viewer.add_image(ct, scale=scale, name="ct", metadata={"mrisynth": {"modality": "CT"}})
    widget.image.setCurrentIndex(widget.image.findText("ct"))
    _run_expecting(viewer, widget, InputError, "modality CT")

    if widget_name == CLASSIFY:
        return
    # after all that, a good scan still runs
    image = _open(viewer, subject_nifti[0])
    widget.image.setCurrentIndex(widget.image.findText(image.name))
    widget.run()
    assert widget.last_error is None, widget.status.text()


@pytest.mark.gui
def test_a_card_that_does_not_match_its_weights_is_a_clear_error(
    viewer, tmp_path, monkeypatch, subject_nifti
):
    card = tiny_models.make_tiny_model(tmp_path, "segmentation", id="tiny-seg-broken")
    card_file = Path(card.path) / "card.json"
    data = json.loads(card_file.read_text())
    data["architecture"]["args"]["channels"] = [6, 12]  # the weights are for [4, 8]
    data["training"]["default"] = True
    card_file.write_text(json.dumps(data))
    monkeypatch.setenv("MRISYNTH_MODEL_PATH", str(tmp_path))
    _open(viewer, subject_nifti[0])
    widget = _dock(viewer, SEGMENT)
    assert widget.model.currentData().ref == card.ref
    _run_expecting(viewer, widget, ModelError, "tiny-seg-broken", "do not fit")
