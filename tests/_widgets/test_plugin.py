"""The napari plugin, tested the way a user goes: through the manifest, in a real viewer.

GUI tests need a display with OpenGL (``xvfb-run -a -s "-screen 0 1400x1000x24" ...``);
they are marked ``gui``. Geometry is checked in napari world coordinates, which this plugin
makes LPS millimetres in (z, y, x) order.
"""

from __future__ import annotations

import gzip
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from napari_mrisynth.volume import Volume, orientation_code, volume_to_nifti
from tests.support.dicom_corpus import OBLIQUE, PYDICOM_FILES, canonical

PLUGIN = "napari-mrisynth"

# The reader and the cohort are committed in parallel; skip (not error) until they exist.
pytest.importorskip("napari_mrisynth.io.dicom")


# -- without a viewer -----------------------------------------------------------------------
def test_manifest_validates_with_imports():
    npe2 = Path(sys.executable).with_name("npe2")
    result = subprocess.run(
        [str(npe2), "validate", "--imports", PLUGIN], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_widget_modules_do_not_import_torch():
    code = (
        "import sys\n"
        "import napari_mrisynth._widgets._reader, napari_mrisynth._widgets._writer\n"
        "import napari_mrisynth._widgets._sample, napari_mrisynth._widgets._series_widget\n"
        "import napari_mrisynth._widgets._info_widget, napari_mrisynth._widgets._segment_widget\n"
        "import napari_mrisynth._widgets._classify_widget\n"
        "import napari_mrisynth._widgets._correct_widget\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "assert 'lightning' not in sys.modules and 'mlflow' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# -- helpers --------------------------------------------------------------------------------
def _notifications():
    from napari.utils.notifications import notification_manager

    return notification_manager.records


def _world_of_voxel(layer, index_zyx) -> np.ndarray:
    """World position (LPS mm, z y x order) of a voxel of the layer's data."""
    return np.asarray(layer.data_to_world(np.asarray(index_zyx, dtype=float)))


def _lps_zyx(volume: Volume, index_xyz) -> np.ndarray:
    return volume.index_to_lps(index_xyz)[::-1]


def _source_voxel_in_layer(layer, volume: Volume, index_xyz) -> tuple[np.ndarray, float]:
    """The layer's data index holding the source voxel ``index_xyz``, and its value there."""
    world = _lps_zyx(volume, index_xyz)
    data_index = np.rint(layer.world_to_data(world)).astype(int)
    return data_index, float(np.asarray(layer.data[tuple(data_index)]))


def _marker_nifti(path: Path) -> Path:
    """RAS-stored NIfTI (x flipped against LPS) with one bright block at patient left-anterior.

    Grid: 40 x 48 x 10, 1.0 x 1.2 x 3 mm; the block sits at LPS x > 0 (left), y < 0 (anterior).
    """
    data = np.full((10, 48, 40), 10, dtype=np.int16)
    ras = np.diag([-1.0, -1.0, 1.0])  # index x runs to patient right, y to anterior
    origin = np.array([20.0, 28.8, -15.0])
    volume = Volume(data, (1.0, 1.2, 3.0), origin, ras)
    xyz = np.stack(np.meshgrid(np.arange(40), np.arange(48), indexing="xy"), -1).reshape(-1, 2)
    lps = volume.index_to_lps(np.c_[xyz, np.zeros(len(xyz))])
    block = (lps[:, 0] > 8) & (lps[:, 0] < 16) & (lps[:, 1] < -14) & (lps[:, 1] > -24)
    for (i, j), hit in zip(xyz, block, strict=True):
        if hit:
            data[:, j, i] = 1000
    nib.save(volume_to_nifti(volume), path)
    return path


def _bright_centroid(shot: np.ndarray) -> np.ndarray:
    """(row, col) of the brightest pixels of a screenshot, as fractions of its height/width."""
    gray = shot[..., :3].astype(float).mean(axis=-1)
    rows, cols = np.nonzero(gray > gray.max() * 0.8)
    return np.array([rows.mean() / gray.shape[0], cols.mean() / gray.shape[1]])


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer(show=True)


# -- reader ---------------------------------------------------------------------------------
@pytest.mark.gui
def test_dicom_folder_opens_lazily_in_patient_space(viewer, corpus):
    series = corpus["coronal"]
    layers = viewer.open(series.folder, plugin=PLUGIN)
    assert len(layers) == 1
    (layer,) = layers
    assert layer.name == f"{series.number} {series.description}"
    assert not isinstance(layer.data, np.ndarray), "series should be read lazily (dask)"
    truth = series.volume
    # coronal storage is reordered to (S, P, L) display axes: scale follows the axes
    np.testing.assert_allclose(sorted(layer.scale), sorted(truth.spacing), atol=1e-5)
    last = np.array(truth.shape[::-1]) - 1
    for index_xyz in ([0, 0, 0], last // 2, last):
        data_index, value = _source_voxel_in_layer(layer, truth, index_xyz)
        np.testing.assert_allclose(
            _world_of_voxel(layer, data_index), _lps_zyx(truth, index_xyz), atol=1e-4
        )
        assert value == truth.data[index_xyz[2], index_xyz[1], index_xyz[0]]
    assert layer.multiscale is False
    shot = viewer.screenshot(canvas_only=True, flash=False)
    assert shot[..., :3].std() > 10, "canvas is blank"


@pytest.mark.gui
def test_axial_display_is_radiological(viewer, tmp_path):
    (layer,) = viewer.open(_marker_nifti(tmp_path / "marker.nii.gz"), plugin=PLUGIN)
    assert layer.axis_labels == ("I→S", "A→P", "R→L")
    # the marker sits at patient left-anterior: screen right, top
    viewer.dims.set_point(0, float(layer.translate[0]))
    shot = viewer.screenshot(canvas_only=True, flash=False)
    assert shot[..., :3].std() > 10
    row, col = _bright_centroid(shot)
    assert col > 0.5, f"patient left should be on screen right, marker at x={col:.2f}"
    assert row < 0.5, f"anterior should be up, marker at y={row:.2f}"


@pytest.mark.gui
def test_oblique_series_is_resampled_and_says_so(viewer, corpus):
    series = corpus["oblique"]
    (layer,) = viewer.open(series.folder, plugin=PLUGIN)
    assert "resampled" in layer.name
    assert "resampled_from" in layer.metadata["mrisynth"]
    np.testing.assert_allclose(
        np.asarray(layer.metadata["mrisynth"]["source_affine_lps"])[:3, :3],
        OBLIQUE * series.volume.spacing,
        atol=1e-4,
    )
    # the resampled grid reaches every source corner to within one of its voxels
    low = _world_of_voxel(layer, [0, 0, 0])
    high = _world_of_voxel(layer, np.array(layer.data.shape) - 1)
    corners = series.volume.corners_lps()[:, ::-1]
    voxel = np.abs(np.asarray(layer.scale))
    assert np.all(corners >= np.minimum(low, high) - voxel)
    assert np.all(corners <= np.maximum(low, high) + voxel)


@pytest.mark.gui
def test_folder_with_several_series_gives_one_named_layer_each(viewer, mixed_folder):
    before = len(_notifications())
    layers = viewer.open(mixed_folder.root, plugin=PLUGIN)
    names = [layer.name for layer in layers]
    for series in (mixed_folder.main, mixed_folder.other):
        assert f"{series.number} {series.description}" in names
    assert len(set(names)) == len(names), f"ambiguous layer names {names}"
    messages = [str(n.message) for n in _notifications()[before:]]
    assert any("skipped" in m and "IM_TRUNC.dcm" in m for m in messages), messages


@pytest.mark.gui
def test_irregular_series_is_shown_resampled_with_its_problem(viewer, corpus):
    before = len(_notifications())
    (layer,) = viewer.open(corpus["gap"].folder, plugin=PLUGIN)
    assert layer.name.endswith("(resampled)")
    messages = [str(n.message) for n in _notifications()[before:]]
    assert any("gap" in m.lower() for m in messages), messages


@pytest.mark.gui
@pytest.mark.parametrize("kind", ["truncated_dcm", "not_dicom_dcm", "corrupt_nii_gz"])
def test_broken_file_gives_an_error_notification_and_the_viewer_keeps_going(viewer, tmp_path, kind):
    if kind == "truncated_dcm":
        path = tmp_path / "IM_TRUNC.dcm"
        source = (PYDICOM_FILES / "MR_small.dcm").read_bytes()
        path.write_bytes(source[: len(source) - 3000])
    elif kind == "not_dicom_dcm":
        path = tmp_path / "notes.dcm"
        path.write_text("not an image\n")
    else:
        path = tmp_path / "broken.nii.gz"
        path.write_bytes(gzip.compress(b"\x5c\x01" + bytes(100)))
    before = len(_notifications())
    assert viewer.open(path, plugin=PLUGIN) == []
    errors = [n for n in _notifications()[before:] if n.severity == "error"]
    assert errors, "no error notification"
    assert path.name in str(errors[-1].message)
    viewer.add_image(np.zeros((4, 4)))  # still alive
    assert len(viewer.layers) == 1


def test_reader_declines_what_it_does_not_read(tmp_path):
    from napari_mrisynth._widgets._reader import napari_get_reader

    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    shutil.copy(PYDICOM_FILES / "MR_small.dcm", tmp_path / "IMG0001")
    assert napari_get_reader(str(tmp_path / "notes.txt")) is None
    assert napari_get_reader(str(tmp_path / "empty")) is None
    assert napari_get_reader(str(tmp_path / "IMG0001")) is not None
    assert napari_get_reader(str(tmp_path)) is not None


# -- writer ---------------------------------------------------------------------------------
@pytest.mark.gui
def test_nifti_round_trip_keeps_geometry_voxels_and_integer_labels(viewer, tmp_path):
    rng = np.random.default_rng(1)
    data = rng.integers(0, 1000, size=(6, 7, 8)).astype(np.int16)
    # stored sagittal-first and flipped: index x -> anterior, y -> inferior, z -> right
    direction = np.array([[0.0, 0, -1], [-1, 0, 0], [0, -1, 0]])
    source = Volume(data, (0.8, 1.1, 2.0), (12.0, -30.0, 40.0), direction)
    original = tmp_path / "flipped.nii.gz"
    nib.save(volume_to_nifti(source), original)

    (image,) = viewer.open(original, plugin=PLUGIN)
    written = tmp_path / "written.nii.gz"
    image.save(str(written), plugin=PLUGIN)
    (a_data, a_affine), (b_data, b_affine) = (
        canonical(nib.load(original)),
        canonical(nib.load(written)),
    )
    np.testing.assert_allclose(b_affine, a_affine, atol=1e-5)
    np.testing.assert_array_equal(b_data, a_data)

    labels = viewer.add_labels((np.asarray(image.data) > 500).astype(np.int64), name="bright")
    labels.scale, labels.translate = image.scale, image.translate
    label_path = tmp_path / "bright_dseg.nii.gz"
    labels.save(str(label_path), plugin=PLUGIN)
    saved = nib.load(label_path)
    assert saved.get_data_dtype().kind in "iu"
    assert saved.header.get_intent()[0] == "label"
    np.testing.assert_allclose(saved.affine, nib.load(written).affine, atol=1e-5)
    (reopened,) = viewer.open(label_path, plugin=PLUGIN)
    assert reopened._type_string == "labels"
    np.testing.assert_array_equal(np.asarray(reopened.data), np.asarray(labels.data))


@pytest.mark.gui
def test_oblique_nifti_written_back_sits_where_it_was_shown(viewer, tmp_path):
    rng = np.random.default_rng(2)
    source = Volume(
        rng.integers(0, 1000, size=(6, 7, 8)).astype(np.int16), (1.0, 1.0, 2.0), (5, 6, 7), OBLIQUE
    )
    original = tmp_path / "oblique.nii.gz"
    nib.save(volume_to_nifti(source), original)
    (layer,) = viewer.open(original, plugin=PLUGIN)
    written = tmp_path / "oblique_out.nii"
    layer.save(str(written), plugin=PLUGIN)
    (again,) = viewer.open(written, plugin=PLUGIN)
    np.testing.assert_allclose(again.scale, layer.scale, atol=1e-6)
    np.testing.assert_allclose(again.translate, layer.translate, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(again.data), np.asarray(layer.data))


# -- sample data ----------------------------------------------------------------------------
@pytest.mark.gui
@pytest.mark.parametrize("key", ["simulated_bvftd", "simulated_control"])
def test_sample_subject_layers_share_geometry(viewer, key):
    from napari_mrisynth import anatomy

    layers = viewer.open_sample(PLUGIN, key)
    t1, labels, mask = layers
    assert all("simulated" in layer.name for layer in layers)
    assert labels._type_string == mask._type_string == "labels"
    assert np.asarray(labels.data).dtype.kind == "u"
    for layer in (labels, mask):
        np.testing.assert_allclose(layer.scale, t1.scale)
        np.testing.assert_allclose(layer.translate, t1.translate)
        assert layer.data.shape == t1.data.shape
    for value, (_, rgb) in anatomy.LABELS.items():
        if value:
            np.testing.assert_allclose(
                labels.colormap.map(value)[:3], np.array(rgb) / 255, atol=1e-3
            )
    # anterior is up: the eyes lie at smaller world y (LPS posterior axis) than the ventricles
    eyes = np.argwhere(np.asarray(labels.data) == anatomy.LABEL_IDS["eyes"]).mean(0)
    ventricles = np.argwhere(
        np.asarray(labels.data) == anatomy.LABEL_IDS["lateral_ventricles"]
    ).mean(0)
    assert _world_of_voxel(labels, eyes)[1] < _world_of_voxel(labels, ventricles)[1]
    shot = viewer.screenshot(canvas_only=True, flash=False)
    assert shot[..., :3].std() > 10


# -- widgets --------------------------------------------------------------------------------
@pytest.mark.gui
def test_series_browser_lists_series_and_loads_the_chosen_one(viewer, qtbot, mixed_folder):
    _, browser = viewer.window.add_plugin_dock_widget(PLUGIN, "DICOM series browser")
    browser.folder.setText(str(mixed_folder.root))
    browser.start_scan()
    qtbot.waitUntil(lambda: browser.scan is not None, timeout=20000)
    descriptions = [browser.table.item(r, 1).text() for r in range(browser.table.rowCount())]
    assert mixed_folder.main.description in descriptions
    assert mixed_folder.other.description in descriptions
    assert "skipped" in browser.found.text() and "IM_TRUNC.dcm" in browser.found.text()
    row = descriptions.index(mixed_folder.other.description)
    browser.table.selectRow(row)
    assert browser.load_button.isEnabled()
    browser.load_selected()
    qtbot.waitUntil(lambda: len(viewer.layers) == 1, timeout=20000)
    assert [layer.name for layer in viewer.layers] == [
        f"{mixed_folder.other.number} {mixed_folder.other.description}"
    ]


@pytest.mark.gui
def test_series_browser_resamples_irregular_series_only_when_asked(viewer, qtbot, corpus):
    _, browser = viewer.window.add_plugin_dock_widget(PLUGIN, "DICOM series browser")
    browser.folder.setText(str(corpus["tilt"].folder))
    browser.start_scan()
    qtbot.waitUntil(lambda: browser.scan is not None, timeout=20000)
    assert browser.table.rowCount() == 1
    problems = browser.table.item(0, 6).text()
    assert problems != "none"
    browser.table.selectRow(0)
    assert browser.load_selected() is None  # refused: irregular, resample not ticked
    assert len(viewer.layers) == 0
    browser.resample.setChecked(True)
    browser.load_selected()
    qtbot.waitUntil(lambda: len(viewer.layers) == 1, timeout=20000)
    (layer,) = viewer.layers
    assert layer.name.endswith("(resampled)")


@pytest.mark.gui
def test_volume_info_shows_the_active_layer_geometry(viewer, qtbot, corpus):
    dock, info = viewer.window.add_plugin_dock_widget(PLUGIN, "Volume geometry")
    series = corpus["sagittal"]
    (layer,) = viewer.open(series.folder, plugin=PLUGIN)
    viewer.layers.selection.active = layer
    text = {name: label.text() for name, label in info.values.items()}
    assert text["Layer"] == layer.name
    assert text["Displayed as"] == "LPS"
    # sagittal: rows run posterior, columns inferior, slices left or right as stacked
    assert orientation_code(series.volume.direction) == "PIL"
    assert text["Source orientation"] in ("PIL", "PIR")
    assert text["Resampled"] == "no"
    spacing = [float(v) for v in text["Spacing (mm)"].split(",")]
    np.testing.assert_allclose(sorted(spacing), sorted(series.volume.spacing), atol=1e-3)
    viewer.window.remove_dock_widget(dock)
    qtbot.wait(50)
    viewer.layers.selection.active = viewer.add_image(np.zeros((3, 4, 5)))  # no dead widget hit
