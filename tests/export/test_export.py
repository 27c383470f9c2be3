"""Export of an approved set: real files checked by the official validators.

Three tiny synthetic volumes (16 x 20 x 16 at 4 mm, smooth random intensities 0..1.2, one
oblique, one with a corrected mask) with generator sidecars that name a fake source
patient and training-data path. The export must pass bids-validator (npm, installed by
``scripts/setup.sh --test``) and dciodvfy, read back with the same geometry and values,
carry none of the source identifiers, match its manifest and ``sha256sum -c``, be
byte-identical when repeated, and leave nothing behind (or the previous export intact)
when interrupted.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from scipy import ndimage as ndi

from napari_mrisynth.export import ApprovedVolume, ExportError, ExportResult, export_set
from napari_mrisynth.io.dicom_seg import read_dicom_seg
from napari_mrisynth.io.files import load_volume
from napari_mrisynth.volume import Volume, volume_to_nifti
from tests.support.validators import dciodvfy

REPO = Path(__file__).resolve().parents[2]
BIDS_VALIDATOR = REPO / ".tools" / "node" / "node_modules" / ".bin" / "bids-validator"

#: Identifiers of the (fake) real patient behind the training data; none may be exported.
SOURCE_PATIENT = "Doe^Jane"
SOURCE_MRN = "MRN-4711-0815"
NEAREST_TRAINING_SUBJECT = "sub-hospital-007"
STUDY = {"name": "Export test study", "id": "STUDY-T1"}


def _oblique() -> np.ndarray:
    c, s = np.cos(np.radians(15.0)), np.sin(np.radians(15.0))
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _source_volume(seed: int, direction: np.ndarray) -> Volume:
    rng = np.random.default_rng(seed)
    data = ndi.gaussian_filter(rng.random((16, 20, 16)), 2.0)
    data = (data - data.min()) / (data.max() - data.min()) * 1.2
    return Volume(data.astype(np.float32), (4.0, 4.0, 4.0), (-30.0, -40.0, -30.0), direction)


def _approved(root: Path, k: int, *, mask: bool, direction: np.ndarray) -> ApprovedVolume:
    """One generated volume as the generator writes it (NIfTI + sidecar), approved."""
    volume = _source_volume(k, direction)
    stem = f"ldm-bvftd-demo_bvFTD_seed{k}_0000"
    image = volume_to_nifti(volume)
    image.header["descrip"] = f"source {SOURCE_PATIENT}".encode()  # must not survive
    path = root / f"{stem}.nii.gz"
    nib.save(image, path)
    provenance = {
        "synthetic": True,
        "generator": {
            "id": "ldm-bvftd-demo",
            "version": "2.0.0",
            "weights_sha256": hashlib.sha256(b"weights").hexdigest(),
        },
        "seed": k,
        "noise_seed": 7434755675892716031 + k,
        "condition": {"diagnosis": "bvFTD", "age": None, "sex": None},
        "sampling": {"sampler": "ddim", "steps": 50, "guidance": 1.0, "eta": 0.0},
        "created": "2026-11-29T11:21:41+00:00",
        "device": "cpu",
        "training_data": {
            "data": f"/data/hospital/{SOURCE_PATIENT}/{SOURCE_MRN}/t1.nii.gz",
            "patient_name": SOURCE_PATIENT,
        },
        "files": {"nifti": path.name},
    }
    (root / f"{stem}.json").write_text(json.dumps(provenance))
    mask_path = None
    if mask:
        data = np.asarray(volume.data)
        labels = np.where(data > 0.7, 11, 0) + np.where(data > 1.0, 1, 0)
        mask_path = root / f"{stem}_labels.nii.gz"
        nib.save(volume_to_nifti(volume.with_data(labels.astype(np.uint8))), mask_path)
    return ApprovedVolume(
        volume_id=f"V{17 - k:03d}",  # ids not in file order: numbering follows the ids
        path=path,
        provenance=provenance,
        condition={
            "diagnosis": "control" if k == 0 else "bvFTD",
            "age": None if k == 0 else 60.0 + k,
            "sex": None if k == 0 else "FM"[k % 2],
        },
        scores={
            "n_judgments": 8,
            "fooled_rate": 0.625,
            "mean_realism": 4.1,
            "mean_confidence": 3.2,
        },
        audit={}
        if k == 2
        else {
            "nearest": NEAREST_TRAINING_SUBJECT,
            "similarity": 0.81,
            "threshold": 0.958,
            "flagged": False,
        },
        curation={
            "decision": "approved",
            "curator": "Dr X",
            "reason": "realistic",
            "decided_at": "2026-11-29T12:00:00+00:00",
        },
        mask_path=mask_path,
    )


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> list[ApprovedVolume]:
    root = tmp_path_factory.mktemp("generated")
    return [
        _approved(root, 0, mask=False, direction=np.eye(3)),
        _approved(root, 1, mask=True, direction=np.eye(3)),
        _approved(root, 2, mask=False, direction=_oblique()),
    ]


@pytest.fixture(scope="module")
def exported(source, tmp_path_factory) -> tuple[ExportResult, list[tuple[int, int]]]:
    calls: list[tuple[int, int]] = []
    out = tmp_path_factory.mktemp("export") / "approved"
    result = export_set(source, out, study=STUDY, progress=lambda d, n: calls.append((d, n)))
    return result, calls


def _tree_hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _by_participant(source: list[ApprovedVolume]) -> dict[str, ApprovedVolume]:
    ordered = sorted(source, key=lambda v: v.volume_id)
    return {f"sub-synth{k:03d}": v for k, v in enumerate(ordered, start=1)}


# -- layout and result ---------------------------------------------------------------------
def test_result_lists_every_file_and_progress_is_per_volume(exported):
    result, calls = exported
    assert calls == [(1, 3), (2, 3), (3, 3)]
    assert result.manifest == result.out / "manifest.json"
    on_disk = sorted(p.relative_to(result.out) for p in result.out.rglob("*") if p.is_file())
    assert result.files == on_disk
    names = {p.as_posix() for p in result.files}
    for sub in ("sub-synth001", "sub-synth002", "sub-synth003"):
        assert f"bids/{sub}/anat/{sub}_T1w.nii.gz" in names
        assert f"bids/{sub}/anat/{sub}_T1w.json" in names
        assert f"dicom/{sub}/IM0016.dcm" in names
    masks = "bids/derivatives/mrisynth-masks"
    assert f"{masks}/sub-synth002/anat/sub-synth002_dseg.nii.gz" in names
    assert "dicom/sub-synth002/SEG.dcm" in names
    assert not any("SEG" in n for n in names if "synth002" not in n)
    assert not list(result.out.parent.glob(".approved.*"))


def test_participants_and_sidecars(exported, source):
    result, _ = exported
    bids = result.out / "bids"
    lines = (bids / "participants.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    columns = json.loads((bids / "participants.json").read_text())
    assert set(header) == set(columns)
    rows = {r.split("\t")[0]: dict(zip(header, r.split("\t"), strict=True)) for r in lines[1:]}
    expected = _by_participant(source)
    assert set(rows) == set(expected)
    for sub, item in expected.items():
        row = rows[sub]
        assert row["source_volume"] == item.volume_id
        assert row["diagnosis"] == item.condition["diagnosis"]
        assert row["generator"] == "ldm-bvftd-demo@2.0.0"
        assert float(row["fooled_rate"]) == item.scores["fooled_rate"]
        sidecar = json.loads((bids / sub / "anat" / f"{sub}_T1w.json").read_text())
        assert sidecar["Manufacturer"] == "napari-mrisynth"
        assert sidecar["SyntheticProvenance"]["noise_seed"] == item.provenance["noise_seed"]
        assert sidecar["Curation"] == item.curation
        assert sidecar["RaterScores"] == item.scores
    assert rows["sub-synth001"]["audit_similarity"] == "n/a"  # V015: not audited
    assert rows["sub-synth002"]["age"] == "61.0" and rows["sub-synth002"]["sex"] == "M"
    assert rows["sub-synth003"]["age"] == "n/a" and rows["sub-synth003"]["audit_flagged"] == "false"
    description = json.loads((bids / "dataset_description.json").read_text())
    assert description["DatasetType"] == "raw"
    assert description["GeneratedBy"][0]["Name"] == "napari-mrisynth"


def test_bids_nifti_matches_the_source(exported, source):
    result, _ = exported
    for sub, item in _by_participant(source).items():
        original = load_volume(item.path)
        exported_t1 = load_volume(result.out / "bids" / sub / "anat" / f"{sub}_T1w.nii.gz")
        assert exported_t1.same_geometry(original)
        np.testing.assert_array_equal(exported_t1.data, original.data)
    mask = "bids/derivatives/mrisynth-masks/sub-synth002/anat/sub-synth002_dseg.nii.gz"
    labels = load_volume(result.out / mask)
    np.testing.assert_array_equal(labels.data, load_volume(source[1].mask_path).data)


# -- validators ----------------------------------------------------------------------------
def test_bids_validator_reports_no_errors(exported):
    if not BIDS_VALIDATOR.exists():
        pytest.skip(f"{BIDS_VALIDATOR} missing: run `bash scripts/setup.sh --test`")
    result, _ = exported
    run = subprocess.run(
        [str(BIDS_VALIDATOR), str(result.out / "bids"), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = json.loads(run.stdout)
    errors = report["issues"]["errors"]
    warnings = [w["key"] for w in report["issues"]["warnings"]]
    print(f"bids-validator: {len(errors)} errors, warnings {warnings}")
    assert errors == [], json.dumps(errors, indent=1)[:4000]
    assert report["summary"]["subjects"] == ["synth001", "synth002", "synth003"]
    assert "T1w" in report["summary"]["dataTypes"]


def test_dicom_passesdciodvfy(exported):
    result, _ = exported
    dicom = result.out / "dicom"
    files = sorted((dicom / "sub-synth002").glob("*.dcm"))  # all of one series and its SEG
    for sub in ("sub-synth001", "sub-synth003"):
        series = sorted((dicom / sub).glob("IM*.dcm"))
        files += [series[0], series[len(series) // 2], series[-1]]
    for path in files:
        errors, warnings = dciodvfy(path)
        print(
            f"dciodvfy {path.parent.name}/{path.name}: {len(errors)} errors, {len(warnings)} warn"
        )
        assert errors == [], f"{path}: {errors}"


# -- DICOM content -------------------------------------------------------------------------
def test_dicom_reads_back_with_geometry_values_and_synthetic_identity(exported, source):
    result, _ = exported
    for number, (sub, item) in enumerate(_by_participant(source).items(), start=1):
        folder = result.out / "dicom" / sub
        original = load_volume(item.path)
        loaded = load_volume(folder)
        assert loaded.same_geometry(original, atol=1e-3)
        first = pydicom.dcmread(folder / "IM0001.dcm")
        step = float(first.RescaleSlope)
        assert step <= 1e-3
        error = np.abs(np.asarray(loaded.data, float) - np.asarray(original.data, float)).max()
        assert error <= step / 2 + 1e-6
        patient = f"SYNTH{number:03d}"
        for path in sorted(folder.glob("IM*.dcm")):
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            assert "DERIVED" in ds.ImageType
            assert str(ds.PatientName) == f"SYNTHETIC^{patient}"
            assert ds.PatientID == patient
            assert ds.Manufacturer == "napari-mrisynth"
            assert ds.ManufacturerModelName == "ldm-bvftd-demo"
            assert ds.SeriesDescription == "SYNTHETIC T1 (ldm-bvftd-demo)"
            assert ds.BurnedInAnnotation == "NO"
            assert ds.PixelRepresentation == 0
            assert ds.StudyDate == "20261129"
            assert ds.PatientBirthDate == ""
            assert "InstitutionName" not in ds
            assert not any(elem.tag.is_private for elem in ds)
    uids = {
        pydicom.dcmread(result.out / "dicom" / sub / "IM0001.dcm").StudyInstanceUID
        for sub in ("sub-synth001", "sub-synth002", "sub-synth003")
    }
    assert len(uids) == 3


def test_seg_references_the_exported_series(exported, source):
    result, _ = exported
    folder = result.out / "dicom" / "sub-synth002"
    series = sorted(folder.glob("IM*.dcm"))
    seg = pydicom.dcmread(folder / "SEG.dcm")
    first = pydicom.dcmread(series[0], stop_before_pixels=True)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == first.SeriesInstanceUID
    assert seg.StudyInstanceUID == first.StudyInstanceUID
    assert seg.PatientID == "SYNTH002"
    labels, names = read_dicom_seg(folder / "SEG.dcm", series)
    np.testing.assert_array_equal(labels, load_volume(source[1].mask_path).data)
    assert names == {11: "white_matter", 12: "lateral_ventricles"}


# -- privacy -------------------------------------------------------------------------------
def test_no_source_identifier_in_any_exported_byte(exported, source):
    result, _ = exported
    forbidden = {SOURCE_PATIENT, SOURCE_MRN, "/data/hospital", NEAREST_TRAINING_SUBJECT}
    for item in source:
        forbidden |= {str(item.path), str(item.path.parent), item.path.name.split(".")[0]}
        if item.mask_path is not None:
            forbidden |= {str(item.mask_path), item.mask_path.name.split(".")[0]}
    for path in result.out.rglob("*"):
        if not path.is_file():
            continue
        contents = [path.read_bytes()]
        if path.name.endswith(".gz"):
            contents.append(gzip.decompress(contents[0]))
        for data in contents:
            for text in forbidden:
                assert text.encode() not in data, f"{path}: contains {text!r}"
    manifest = json.loads(result.manifest.read_text())
    for entry in manifest["volumes"]:
        assert "nearest" not in entry["audit"]
        assert "training_data" not in entry["provenance"]


# -- manifest and checksums ----------------------------------------------------------------
def test_manifest_matches_files_and_sha256sums_checks(exported, source):
    result, _ = exported
    manifest = json.loads(result.manifest.read_text())
    assert manifest["study"] == STUDY
    assert manifest["formats"] == ["bids", "dicom"]
    hashes = _tree_hashes(result.out)
    listed = {f["path"]: f for f in manifest["files"]}
    assert set(listed) == set(hashes) - {"manifest.json", "SHA256SUMS"}
    for path, entry in listed.items():
        assert entry["sha256"] == hashes[path]
        assert entry["size"] == (result.out / path).stat().st_size
    by_id = {v.volume_id: v for v in source}
    assert [v["participant_id"] for v in manifest["volumes"]] == [
        "sub-synth001",
        "sub-synth002",
        "sub-synth003",
    ]
    for entry in manifest["volumes"]:
        item = by_id[entry["volume_id"]]
        assert (
            entry["provenance"]["generator"]["weights_sha256"]
            == (item.provenance["generator"]["weights_sha256"])
        )
        assert entry["provenance"]["seed"] == item.provenance["seed"]
        assert entry["scores"] == item.scores and entry["curation"] == item.curation
        for file in entry["files"]:
            assert listed[file["path"]] == file
            assert entry["participant_id"] in file["path"]
    run = subprocess.run(
        ["sha256sum", "-c", "--strict", "SHA256SUMS"],
        cwd=result.out,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr
    checked = {line.rsplit(": ", 1)[0] for line in run.stdout.splitlines()}
    assert checked == set(hashes) - {"SHA256SUMS"}


def test_export_is_byte_identical_when_repeated(exported, source, tmp_path):
    result, _ = exported
    again = export_set(list(reversed(source)), tmp_path / "again", study=STUDY)
    assert _tree_hashes(again.out) == _tree_hashes(result.out)


# -- atomicity -----------------------------------------------------------------------------
def _fail_on_second(done: int, total: int) -> None:
    if done == 2:
        raise RuntimeError("interrupted")


def test_interrupted_export_leaves_nothing(source, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="interrupted"):
        export_set(source, out, progress=_fail_on_second)
    assert list(tmp_path.iterdir()) == []


def test_unreadable_volume_mid_list_raises_and_leaves_nothing(source, tmp_path):
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(source[1].path.read_bytes()[:200])  # truncated
    items = [source[0], ApprovedVolume(**{**vars(source[1]), "path": broken}), source[2]]
    with pytest.raises(ExportError, match="broken.nii.gz"):
        export_set(items, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.nii.gz"]


def test_interrupted_overwrite_keeps_previous_export(exported, source, tmp_path):
    result, _ = exported
    out = tmp_path / "approved"
    shutil.copytree(result.out, out)
    before = _tree_hashes(out)
    with pytest.raises(RuntimeError, match="interrupted"):
        export_set(source, out, overwrite=True, study={"name": "other"}, progress=_fail_on_second)
    assert _tree_hashes(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["approved"]
    replaced = export_set(source[:1], out, overwrite=True, formats=("bids",))
    assert not (out / "dicom").exists()
    assert _tree_hashes(out) != before
    assert {p.as_posix() for p in replaced.files} == set(_tree_hashes(out))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["approved"]


def test_existing_out_without_overwrite_names_the_folder(exported, source):
    result, _ = exported
    before = _tree_hashes(result.out)
    with pytest.raises(ExportError, match=f"{result.out}: already exists"):
        export_set(source, result.out)
    assert _tree_hashes(result.out) == before


def test_stale_partial_of_a_dead_process_is_removed(source, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".out.partial-{dead.pid}"
    (stale / "bids").mkdir(parents=True)
    (stale / "bids" / "junk.txt").write_text("half-written")
    live = tmp_path / f".out.partial-{os.getppid()}"  # another export still running
    live.mkdir()
    result = export_set(source[:1], tmp_path / "out", formats=("bids",))
    assert not stale.exists() and live.exists()
    assert not (result.out / "bids" / "junk.txt").exists()


def test_previous_export_moved_aside_by_a_dead_process_is_put_back(exported, source, tmp_path):
    result, _ = exported
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    shutil.copytree(result.out, tmp_path / f".approved.old-{dead.pid}")
    with pytest.raises(ExportError, match="already exists"):
        export_set(source, tmp_path / "approved", formats=("bids",))
    assert _tree_hashes(tmp_path / "approved") == _tree_hashes(result.out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["approved"]


def test_numpy_scores_are_written_as_numbers(source, tmp_path):
    item = ApprovedVolume(
        **{
            **vars(source[0]),
            "scores": {"n_judgments": np.int64(8), "fooled_rate": np.float64(0.5)},
            "audit": {"similarity": np.float32(0.75), "flagged": np.bool_(True)},
        }
    )
    result = export_set([item], tmp_path / "out", formats=("bids",))
    row = (result.out / "bids" / "participants.tsv").read_text().splitlines()[1].split("\t")
    assert row[4:6] == ["8", "0.5"] and row[8:10] == ["0.75", "true"]
    manifest = json.loads(result.manifest.read_text())
    assert manifest["volumes"][0]["scores"] == {"n_judgments": 8, "fooled_rate": 0.5}


def test_mask_off_the_volume_grid_is_refused(source, tmp_path):
    shifted = tmp_path / "shifted_labels.nii.gz"
    image = nib.load(source[1].mask_path)
    affine = image.affine.copy()
    affine[0, 3] += 4.0
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj), affine), shifted)
    item = ApprovedVolume(**{**vars(source[1]), "mask_path": shifted})
    with pytest.raises(ExportError, match="shifted_labels.nii.gz: the mask of V016 .* not on"):
        export_set([item], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bad_input_is_refused(source, tmp_path):
    with pytest.raises(ExportError, match="empty"):
        export_set([], tmp_path / "out")
    with pytest.raises(ExportError, match="unknown export format"):
        export_set(source, tmp_path / "out", formats=("bids", "zip"))
    twice = [source[0], ApprovedVolume(**{**vars(source[1]), "volume_id": source[0].volume_id})]
    with pytest.raises(ExportError, match="appears twice"):
        export_set(twice, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []
