"""Mask corrections: what changed, Dice against the model, autosave that survives a crash, save.

The crash tests run the autosaving code in a real child process killed with SIGKILL.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from napari_mrisynth.anatomy import LABELS
from napari_mrisynth.annotation import CorrectionError, MaskCorrection, dice_per_label
from napari_mrisynth.annotation.correction import KEEP_AUTOSAVES
from napari_mrisynth.cohort import simulate_subject
from napari_mrisynth.io.dicom import load_dicom
from napari_mrisynth.io.dicom_seg import read_dicom_seg
from napari_mrisynth.io.dicom_write import write_dicom_series
from napari_mrisynth.volume import Volume, volume_to_nifti

NAMES = {v: n for v, (n, _) in LABELS.items() if v}
COLORS = {v: c for v, (_, c) in LABELS.items() if v}


def _correction(base: Volume, folder: Path, **kwargs) -> MaskCorrection:
    options = dict(
        annotator="Doe^Jane",
        base_model="seg-head-demo@1.0.0",
        source="sub-001",
        source_files=None,
        label_names=NAMES,
        label_colors=COLORS,
        autosave_dir=folder,
    )
    options.update(kwargs)
    return MaskCorrection(base, **options)


def _brute_dice(a: np.ndarray, b: np.ndarray) -> dict[int, float]:
    out = {}
    for v in sorted(set(np.unique(a)) | set(np.unique(b))):
        if v == 0:
            continue
        x, y = a == v, b == v
        out[int(v)] = 2 * np.logical_and(x, y).sum() / (x.sum() + y.sum())
    return out


# -- measuring ------------------------------------------------------------------------------
def test_voxels_changed_and_dice_for_hand_made_edits(tmp_path):
    base = np.zeros((6, 8, 10), np.uint8)
    base[:, :4, :] = 1  # 240 voxels
    base[:, 4:, :5] = 2  # 120 voxels
    edited = base.copy()
    edited[0, 0, :] = 2  # 10 voxels from 1 to 2
    edited[5, 7, 5:] = 3  # 5 voxels from background to a new label 3
    edited[1, 5, 0] = 0  # 1 voxel of label 2 erased
    mc = _correction(Volume(base), tmp_path / "auto")
    record = mc.summary(edited)
    assert record.voxels_changed == 16
    assert record.voxels_changed_per_label == {
        "frontal_gm": {"value": 1, "added": 0, "removed": 10},
        "orbitomedial_frontal_gm": {"value": 2, "added": 10, "removed": 1},
        "insula_gm": {"value": 3, "added": 5, "removed": 0},
    }
    # label 1: 240 vs 230, overlap 230; label 2: 120 vs 129, overlap 119; label 3: 0 vs 5
    assert record.dice_vs_model["frontal_gm"] == pytest.approx(2 * 230 / 470)
    assert record.dice_vs_model["orbitomedial_frontal_gm"] == pytest.approx(2 * 119 / 249)
    assert record.dice_vs_model["insula_gm"] == 0.0
    assert record.dice_vs_model["mean"] == pytest.approx((2 * 230 / 470 + 2 * 119 / 249 + 0.0) / 3)
    assert record.annotator == "Doe^Jane" and record.base_model == "seg-head-demo@1.0.0"
    unchanged = mc.summary(base)
    assert unchanged.voxels_changed == 0 and unchanged.dice_vs_model == {
        "frontal_gm": 1.0,
        "orbitomedial_frontal_gm": 1.0,
        "mean": 1.0,
    }


def test_dice_from_changes_equals_brute_force_on_random_edits():
    rng = np.random.default_rng(4)
    for _ in range(5):
        base = rng.integers(0, 6, (9, 11, 13)).astype(np.uint8)
        edited = base.copy()
        where = rng.random(base.shape) < rng.uniform(0.01, 0.6)
        edited[where] = rng.integers(0, 9, int(where.sum()))
        assert dice_per_label(base, edited) == pytest.approx(_brute_dice(base, edited))


def test_wrong_shape_and_float_masks_are_refused(tmp_path):
    mc = _correction(Volume(np.zeros((4, 4, 4), np.uint8)), tmp_path / "a")
    with pytest.raises(CorrectionError, match=r"shape \(4, 4, 5\)"):
        mc.summary(np.zeros((4, 4, 5), np.uint8))
    with pytest.raises(CorrectionError, match="integer labels"):
        _correction(Volume(np.zeros((4, 4, 4), np.float32)), tmp_path / "b")


# -- autosave and recovery ------------------------------------------------------------------
def test_autosave_recovers_the_last_edit_and_keeps_a_few(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.integers(0, 5, (12, 14, 16)).astype(np.uint8)
    folder = tmp_path / "auto"
    mc = _correction(Volume(base), folder)
    assert MaskCorrection.recover(folder) is None  # nothing edited yet
    edits = []
    for k in range(KEEP_AUTOSAVES + 3):
        edit = (edits[-1] if edits else base).copy()
        edit[k, :, :] = 7
        mc.autosave(edit)
        edits.append(edit)
    assert len(list(folder.glob("autosave-*.npz"))) == KEEP_AUTOSAVES
    labels, facts = MaskCorrection.recover(folder)
    np.testing.assert_array_equal(labels, edits[-1])
    assert facts["sequence"] == len(edits)
    assert facts["annotator"] == "Doe^Jane" and facts["base_model"] == "seg-head-demo@1.0.0"
    assert facts["voxels_changed"] == int((edits[-1] != base).sum())
    # a whole-mask change is stored whole and recovered exactly as well
    everything = (base + 1).astype(np.uint8)
    mc.autosave(everything)
    np.testing.assert_array_equal(MaskCorrection.recover(folder)[0], everything)


@pytest.mark.parametrize("damage", ["truncated", "bit_flip", "empty"])
def test_damaged_newest_autosave_falls_back_to_the_previous_good_one(tmp_path, damage):
    base = np.zeros((10, 10, 10), np.uint8)
    folder = tmp_path / "auto"
    mc = _correction(Volume(base), folder)
    first, second = base.copy(), base.copy()
    first[2:4, 2:4, 2:4] = 3
    second[2:6, 2:6, 2:6] = 4
    mc.autosave(first)
    newest = mc.autosave(second)
    raw = newest.read_bytes()
    if damage == "truncated":
        newest.write_bytes(raw[: len(raw) // 2])
    elif damage == "bit_flip":  # inside the stored values, zip structure intact
        at = raw.index(b"\x04" * 8)
        newest.write_bytes(raw[:at] + b"\x05" + raw[at + 1 :])
    else:
        newest.write_bytes(b"")
    labels, facts = MaskCorrection.recover(folder)
    np.testing.assert_array_equal(labels, first)
    assert facts["sequence"] == 1


_CHILD = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from napari_mrisynth.annotation import MaskCorrection
    from napari_mrisynth.volume import Volume

    folder, mode = sys.argv[1], sys.argv[2]
    base = np.zeros((40, 48, 48), np.uint8)
    base[10:30, 10:40, 10:40] = 1
    mc = MaskCorrection(Volume(base), annotator="crash", base_model=None, source=None,
                        source_files=None, label_names={1: "a"}, label_colors={},
                        autosave_dir=folder)
    k = 0
    while True:
        k += 1
        edit = base.copy()
        edit.reshape(-1)[: 97 * k] = 2 + k % 3   # edit k is known to the parent
        mc.autosave(edit)
        print(k, flush=True)
        if mode == "stop" and k == 3:
            time.sleep(600)   # killed here
    """
)


def _edit(k: int) -> np.ndarray:
    base = np.zeros((40, 48, 48), np.uint8)
    base[10:30, 10:40, 10:40] = 1
    base.reshape(-1)[: 97 * k] = 2 + k % 3
    return base


def _run_child(folder: Path, mode: str, lines_before_kill: int) -> int:
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(folder), mode],
        stdout=subprocess.PIPE,
        text=True,
    )
    last = 0
    for _ in range(lines_before_kill):
        last = int(child.stdout.readline())
    if mode == "loop":
        time.sleep(0.3)  # it is autosaving continuously: kill it at an arbitrary moment
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    return last


def test_sigkill_after_autosave_loses_no_edit(tmp_path):
    folder = tmp_path / "auto"
    assert _run_child(folder, "stop", 3) == 3
    labels, facts = MaskCorrection.recover(folder)
    assert facts["sequence"] == 3 and facts["annotator"] == "crash"
    np.testing.assert_array_equal(labels, _edit(3))


def test_sigkill_during_autosaves_recovers_an_intact_recent_edit(tmp_path):
    folder = tmp_path / "auto"
    announced = _run_child(folder, "loop", 5)
    labels, facts = MaskCorrection.recover(folder)
    assert facts["sequence"] >= announced
    np.testing.assert_array_equal(labels, _edit(facts["sequence"]))


def test_reopening_a_folder_continues_the_session_and_refuses_another_mask(tmp_path):
    base = np.zeros((5, 6, 7), np.uint8)
    folder = tmp_path / "auto"
    first = _correction(Volume(base), folder)
    edit = base.copy()
    edit[1, 1, 1] = 2
    first.autosave(edit)
    again = _correction(Volume(base), folder)
    assert again.started == first.started and again.sequence == 1
    edit[2, 2, 2] = 3
    assert again.autosave(edit).name == "autosave-000002.npz"
    other = base.copy()
    other[0, 0, 0] = 1
    with pytest.raises(CorrectionError, match="another mask"):
        _correction(Volume(other), folder)


# -- saving ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dicom_case(tmp_path_factory):
    root = tmp_path_factory.mktemp("source")
    subject = simulate_subject("sub-007", "bvFTD", 7, spacing=4.0)
    files = write_dicom_series(subject.t1, root / "dicom", file_names="shuffled")
    source = load_dicom(root / "dicom")
    model = source.with_data(np.asarray(subject.labels.data))
    return files, source, model


def test_save_writes_nifti_seg_and_record(dicom_case, tmp_path):
    files, source, model = dicom_case
    mc = _correction(
        model, tmp_path / "auto", source=source.metadata["series_uid"], source_files=files
    )
    edited = np.asarray(model.data).copy()
    edited[20:24, 30:35, 25:27] = 12  # 40 voxels painted as ventricle
    painted = int((np.asarray(model.data)[20:24, 30:35, 25:27] != 12).sum())
    edited[edited == 18] = 0  # eyes erased
    eyes = int((np.asarray(model.data) == 18).sum())
    record = mc.save(edited, tmp_path / "out", stem="sub-007_corrected")

    nifti = tmp_path / "out" / "sub-007_corrected_labels.nii.gz"
    seg = tmp_path / "out" / "sub-007_corrected_seg.dcm"
    report = tmp_path / "out" / "sub-007_corrected_correction.json"
    assert record.files == [str(nifti), str(seg), str(report)]
    image = nib.load(nifti)
    np.testing.assert_allclose(image.affine, volume_to_nifti(source).affine, atol=1e-6)
    assert image.header.get_intent()[0] == "label"
    np.testing.assert_array_equal(np.asarray(image.dataobj).transpose(2, 1, 0), edited)
    assert image.get_data_dtype() == np.uint8

    from tests.support.validators import dciodvfy

    assert dciodvfy(seg)[0] == []
    labels, names = read_dicom_seg(seg, files)
    np.testing.assert_array_equal(labels, edited)
    assert 18 not in names and names[12] == "lateral_ventricles"
    ds = pydicom.dcmread(seg)
    assert str(ds.ContentCreatorName) == "Doe^Jane"
    assert {item.SegmentAlgorithmType for item in ds.SegmentSequence} == {"SEMIAUTOMATIC"}
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == source.metadata["series_uid"]

    saved = json.loads(report.read_text())
    assert saved["voxels_changed"] == record.voxels_changed == painted + eyes
    assert saved["voxels_changed_per_label"]["eyes"] == {"value": 18, "added": 0, "removed": eyes}
    assert saved["voxels_changed_per_label"]["lateral_ventricles"]["added"] == painted
    assert saved["dice_vs_model"]["eyes"] == 0.0
    assert saved["dice_vs_model"]["mean"] == pytest.approx(
        np.mean(list(_brute_dice(np.asarray(model.data), edited).values()))
    )
    assert saved["annotator"] == "Doe^Jane" and saved["base_model"] == "seg-head-demo@1.0.0"
    assert saved["source"] == source.metadata["series_uid"]
    assert saved["started"] <= saved["saved"]


def test_save_without_dicom_source_writes_nifti_and_record_only(dicom_case, tmp_path):
    _, _, model = dicom_case
    mc = _correction(model, tmp_path / "auto")
    record = mc.save(np.asarray(model.data), tmp_path / "out", stem="x")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "x_correction.json",
        "x_labels.nii.gz",
    ]
    assert record.voxels_changed == 0 and record.dice_vs_model["mean"] == 1.0
    assert not any(p.name.endswith(".tmp.nii.gz") for p in (tmp_path / "out").iterdir())


def test_dciodvfy_is_installed():
    assert shutil.which("dciodvfy"), "install the Debian package dicom3tools"
