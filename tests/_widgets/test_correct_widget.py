"""The Correct mask dock widget in a real viewer: paint, autosave, recover, save.

The source is a simulated subject written as a SAGITTAL DICOM series at 4 mm, opened through
the plugin's reader, so the layer (patient axes) and the source grid differ by a transpose
and flips: what is saved must land on the source grid voxel for voxel.

GUI tests need a display with OpenGL (``xvfb-run -a -s "-screen 0 1400x1000x24" ...``).
"""

from __future__ import annotations

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pydicom
import pytest

from napari_mrisynth.cohort import simulate_subject
from napari_mrisynth.io.dicom_seg import read_dicom_seg
from napari_mrisynth.io.dicom_write import write_dicom_series
from napari_mrisynth.volume import Volume, reorient_to_axes, volume_from_nifti

PLUGIN = "napari-mrisynth"
MODEL = "seg-head-demo@1.0.0"
#: x (rows) along posterior, y (columns) inferior, slice normal to patient right.
SAGITTAL = np.column_stack([[0.0, 1.0, 0.0], [0.0, 0.0, -1.0], [-1.0, 0.0, 0.0]])


def test_widget_module_does_not_import_torch():
    code = (
        "import sys\n"
        "import napari_mrisynth._widgets._correct_widget\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """(DICOM folder, files, labels Volume on the source grid): the 'model output'."""
    root = tmp_path_factory.mktemp("correct")
    subject = simulate_subject("sub-011", "bvFTD", 11, spacing=4.0)
    t1 = Volume(subject.t1.data, subject.t1.spacing, subject.t1.origin, SAGITTAL)
    files = write_dicom_series(t1, root / "dicom", file_names="shuffled")
    return root / "dicom", files, t1.with_data(np.asarray(subject.labels.data))


@pytest.fixture
def viewer(make_napari_viewer, monkeypatch, tmp_path):
    monkeypatch.setenv("MRISYNTH_NO_THREADS", "1")
    monkeypatch.setenv("MRISYNTH_DATA_DIR", str(tmp_path / "data"))
    return make_napari_viewer(show=True)


def _open_with_mask(viewer, source):
    """The DICOM series through the reader, and a model-output Labels layer over it."""
    folder, _, labels = source
    (image,) = viewer.open(folder, plugin=PLUGIN)
    meta = image.metadata["mrisynth"]
    display_axes = np.asarray(meta["display_affine_lps"])[:3, :3]
    display_axes = display_axes / np.linalg.norm(display_axes, axis=0)
    shown = reorient_to_axes(labels, display_axes)
    assert shown.shape == image.data.shape and shown.shape != labels.shape
    mask = viewer.add_labels(
        np.ascontiguousarray(shown.data),
        name="T1 · demo labels",
        scale=image.scale,
        translate=image.translate,
        metadata={"mrisynth": {**meta, "model": MODEL, "source": "T1"}},
    )
    return image, mask


def _widget(viewer, mask):
    from napari_mrisynth._widgets._correct_widget import CorrectMaskWidget

    widget = CorrectMaskWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Correct mask")
    names = [widget.labels.itemText(i) for i in range(widget.labels.count())]
    widget.labels.setCurrentIndex(names.index(mask.name))
    return widget


def _paint(mask) -> np.ndarray:
    """Two brush strokes and an erased block; returns the layer's labels before them."""
    before = np.array(mask.data, copy=True)
    mask.brush_size = 3
    centre = np.array(mask.data.shape) // 2
    mask.paint(tuple(centre), 12)
    mask.paint(tuple(centre + [0, 4, 4]), 12)
    mask.data_setitem(np.nonzero(before == 18), 0)  # erase the eyes
    return before


@pytest.mark.gui
def test_paint_autosave_save_writes_nifti_seg_and_record(viewer, source, tmp_path, qtbot):
    folder, files, labels = source
    image, mask = _open_with_mask(viewer, source)
    widget = _widget(viewer, mask)
    assert widget.start() is not None
    assert mask.mode == "paint" and viewer.layers.selection.active is mask
    assert widget.correction.source_files is not None
    assert sorted(widget.correction.source_files) == sorted(files)

    before = _paint(mask)
    painted = int((np.asarray(mask.data) != before).sum())
    assert painted > 20
    qtbot.waitUntil(lambda: widget.last_autosave is not None, timeout=10_000)
    assert f"{painted:,} voxels changed" in widget.readout.text()

    recovered, facts = widget.correction.recover(widget.correction.autosave_dir)
    expected = np.asarray(
        reorient_to_axes(widget.display.with_data(np.asarray(mask.data)), labels.direction).data
    )
    np.testing.assert_array_equal(recovered, expected)
    assert facts["voxels_changed"] == painted

    record = widget.save(tmp_path / "out", stem="sub-011")
    assert record is not None, widget.status.text()
    assert record.voxels_changed == painted
    nifti, seg, report = (tmp_path / "out" / f"sub-011{s}" for s in (
        "_labels.nii.gz", "_seg.dcm", "_correction.json"
    ))  # fmt: skip
    saved = volume_from_nifti(nib.load(nifti))
    assert saved.same_geometry(labels)  # the source grid, not the display grid
    np.testing.assert_array_equal(saved.data, expected)

    from tests.support.validators import dciodvfy

    assert dciodvfy(seg)[0] == []
    seg_labels, names = read_dicom_seg(seg, files)
    np.testing.assert_array_equal(seg_labels, expected)
    assert 18 not in names and names[12] == "lateral_ventricles"
    ds = pydicom.dcmread(seg)
    assert (
        ds.ReferencedSeriesSequence[0].SeriesInstanceUID == image.metadata["mrisynth"]["series_uid"]
    )
    assert str(ds.ContentCreatorName) == widget.annotator.text()

    facts = json.loads(report.read_text())
    assert facts["voxels_changed"] == painted
    assert facts["base_model"] == MODEL
    assert facts["voxels_changed_per_label"]["eyes"]["removed"] == int((before == 18).sum())
    assert facts["dice_vs_model"]["eyes"] == 0.0
    assert facts["files"] == [str(nifti), str(seg), str(report)]
    assert "Saved" in widget.status.text()


@pytest.mark.gui
def test_autosave_is_offered_back_after_the_viewer_is_lost(viewer, source, tmp_path, qtbot):
    _, mask = _open_with_mask(viewer, source)
    widget = _widget(viewer, mask)
    widget.annotator.setText("Doe^Jane")
    widget.start()
    before = _paint(mask)
    edited = np.array(mask.data, copy=True)
    assert widget.autosave() is not None
    # "crash": the layer is reloaded from the model output in a fresh widget
    viewer.layers.remove(mask)
    assert widget.correction is None
    _, again = _open_with_mask(viewer, source)
    np.testing.assert_array_equal(again.data, before)
    fresh = _widget(viewer, again)
    assert fresh.recover_button.isVisibleTo(fresh)
    assert "Doe^Jane" in fresh.recover_button.text()
    assert fresh.recover()
    np.testing.assert_array_equal(again.data, edited)
    assert fresh.correction.summary(fresh.current_labels()).voxels_changed == int(
        (edited != before).sum()
    )


def test_layer_grid_goes_back_to_the_source_grid_exactly_unless_oblique():
    from napari_mrisynth._widgets._correct_widget import to_grid
    from napari_mrisynth.volume import resample_to_patient_axes, to_display_volume

    rng = np.random.default_rng(1)
    data = rng.integers(0, 4, (7, 9, 11)).astype(np.uint8)
    source = Volume(data, [1.0, 1.5, 3.0], [10.0, -20.0, 5.0], SAGITTAL)
    shown = to_display_volume(source, labels=True)
    back, exact = to_grid(shown, source)
    assert exact and back.same_geometry(source)
    np.testing.assert_array_equal(back.data, data)

    angle = np.radians(15.0)
    tilt = np.array(
        [[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]]
    )
    blocks = np.zeros((12, 16, 16), np.uint8)
    blocks[2:10, 3:13, 3:13] = 5  # a block larger than the voxels: nearest neighbour keeps it
    oblique = Volume(blocks, [2.0, 2.0, 2.0], [0.0, 0.0, 0.0], tilt)
    shown = resample_to_patient_axes(oblique, labels=True)
    back, exact = to_grid(shown, oblique)
    assert not exact and back.same_geometry(oblique)
    # the block's interior survives the round trip through the display grid
    np.testing.assert_array_equal(back.data[4:8, 5:11, 5:11], 5)
    assert abs(int((back.data == 5).sum()) - int((blocks == 5).sum())) < 0.15 * (blocks == 5).sum()
