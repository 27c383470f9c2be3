"""Atomic writes: a file appears whole or the old one stays."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from napari_mrisynth.io.atomic import replacing, write_atomic, write_json, write_text


def test_write_json_creates_folders_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "a" / "b" / "record.json"
    assert write_json(target, {"x": [1, 2]}, indent=1, durable=True) == target
    assert json.loads(target.read_text(encoding="utf-8")) == {"x": [1, 2]}
    assert sorted(p.name for p in target.parent.iterdir()) == ["record.json"]


def test_a_failed_write_keeps_the_previous_file(tmp_path):
    target = write_text(tmp_path / "report.md", "old report\n")

    def half_then_crash(handle):
        handle.write(b"new rep")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_atomic(target, half_then_crash)
    assert target.read_text(encoding="utf-8") == "old report\n"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]


def test_replacing_keeps_the_suffix_for_format_sniffing_writers(tmp_path):
    target = tmp_path / "labels.nii.gz"
    data = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    with replacing(target, suffix=".nii.gz") as partial:
        assert partial.parent == tmp_path and partial.name.endswith(".tmp.nii.gz")
        nib.save(nib.Nifti1Image(data, np.eye(4)), partial)
        assert not target.exists()  # nothing visible until the block ends
    with open(target, "rb") as handle:
        assert handle.read(2) == b"\x1f\x8b"  # gzip: nibabel chose the format by the suffix
    np.testing.assert_array_equal(np.asanyarray(nib.load(target).dataobj), data)
    assert [p.name for p in tmp_path.iterdir()] == ["labels.nii.gz"]
