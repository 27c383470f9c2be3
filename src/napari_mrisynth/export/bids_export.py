"""The BIDS part of an export: a raw dataset of T1w images, masks as a derivative dataset.

Layout under ``bids/``::

    dataset_description.json  README  participants.tsv  participants.json
    sub-synth001/anat/sub-synth001_T1w.nii.gz  sub-synth001_T1w.json
    derivatives/mrisynth-masks/dataset_description.json
    derivatives/mrisynth-masks/sub-synth001/anat/sub-synth001_dseg.nii.gz  .json  .tsv

NIfTI files are rebuilt from the voxels and geometry (no header text or gzip file name of
the generated file survives) and gzipped with mtime 0, so equal input gives equal bytes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_mrisynth.export.common import (
    SCORE_KEYS,
    FileWriter,
    generator_label,
    gzip_bytes,
    public_audit,
    trimmed_provenance,
)
from napari_mrisynth.export.subject import Subject, SubjectImages
from napari_mrisynth.volume import Volume, volume_to_nifti

BIDS_VERSION = "1.9.0"
MASKS_PIPELINE = "mrisynth-masks"

#: participants.tsv columns and their participants.json descriptions.
PARTICIPANT_COLUMNS: dict[str, dict[str, Any]] = {
    "participant_id": {"Description": "Synthetic participant; not a real person"},
    "diagnosis": {
        "Description": "Diagnosis the generator was conditioned on",
        "Levels": {
            "bvFTD": "behavioural variant frontotemporal dementia",
            "control": "cognitively normal control",
        },
    },
    "age": {"Description": "Age the generator was conditioned on", "Units": "year"},
    "sex": {
        "Description": "Sex the generator was conditioned on",
        "Levels": {"F": "female", "M": "male"},
    },
    "n_judgments": {"Description": "Number of blinded expert judgments of the image"},
    "fooled_rate": {
        "Description": "Fraction of judgments that took the synthetic image for a real scan"
    },
    "mean_realism": {"Description": "Mean realism rating by the expert raters"},
    "mean_confidence": {"Description": "Mean confidence of the expert raters in their judgment"},
    "audit_similarity": {
        "Description": "Memorization audit: similarity to the nearest training image"
    },
    "audit_flagged": {
        "Description": "Memorization audit: similarity above the audit threshold",
        "Levels": {"true": "flagged", "false": "not flagged"},
    },
    "source_volume": {"Description": "Neutral id of the volume in the rating study"},
    "generator": {"Description": "Generator model that produced the image (id@version)"},
}


def nifti_gz_bytes(volume: Volume, *, labels: bool = False) -> bytes:
    """The volume as a gzipped NIfTI-1 file with a clean header and a stable gzip header."""
    image = volume_to_nifti(volume)
    if labels:
        image.header.set_intent("label")
    return gzip_bytes(image.to_bytes())


def _label_name(value: int, schema: dict) -> str:
    """A label value's name in the mask's schema (from its model card), else ``label_<v>``."""
    return schema[value][0] if value in schema else f"label_{value}"


def _tsv_value(value: Any) -> str:
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "n/a"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value).replace("\t", " ").replace("\n", " ")


def participant_row(subject: Subject) -> dict[str, Any]:
    """The participants.tsv row of one subject (None where unknown)."""
    item = subject.item
    audit = public_audit(item.audit)
    return {
        "participant_id": subject.participant_id,
        "diagnosis": item.condition.get("diagnosis"),
        "age": item.condition.get("age"),
        "sex": item.condition.get("sex"),
        **{key: item.scores.get(key) for key in SCORE_KEYS},
        "audit_similarity": audit.get("similarity"),
        "audit_flagged": audit.get("flagged"),
        "source_volume": item.volume_id,
        "generator": generator_label(item.provenance),
    }


def t1w_sidecar(subject: Subject, software_version: str) -> dict[str, Any]:
    """The T1w JSON sidecar: BIDS equipment keys plus the trimmed generator provenance."""
    item = subject.item
    generator = item.provenance.get("generator") or {}
    return {
        "Manufacturer": "napari-mrisynth",
        "ManufacturerModelName": str(generator.get("id") or "unknown"),
        "SoftwareVersions": f"napari-mrisynth {software_version}",
        "Synthetic": True,
        "SyntheticProvenance": trimmed_provenance(item.provenance),
        "Condition": item.condition,
        "RaterScores": item.scores,
        "MemorizationAudit": public_audit(item.audit),
        "Curation": item.curation,
    }


def _readme(study: dict, subjects: list[Subject], has_masks: bool) -> str:
    generators = sorted({generator_label(s.item.provenance) for s in subjects})
    lines = [
        f"# {study.get('name') or 'Synthetic T1-weighted brain MRI'}",
        "",
        "Every image in this dataset is SYNTHETIC: generated by a model, not acquired from",
        "a person. No participant is real; ages, sexes and diagnoses are the conditions the",
        "generator was given.",
        "",
        f"The {len(subjects)} images were judged by expert raters in a blinded study and",
        "approved by a curator. participants.tsv lists the rater scores and the memorization",
        "audit of each image; every T1w sidecar carries the generator's provenance (model,",
        "weights checksum, seeds, sampling), the rater scores and the curation decision.",
        "",
        f"Generators: {', '.join(generators)}.",
        "Exported by napari-mrisynth; ../manifest.json and ../SHA256SUMS list every file.",
    ]
    if has_masks:
        lines += ["", f"Corrected label masks are in derivatives/{MASKS_PIPELINE}."]
    return "\n".join(lines) + "\n"


def _generated_by(software_version: str, description: str) -> list[dict[str, str]]:
    return [{"Name": "napari-mrisynth", "Version": software_version, "Description": description}]


def write_dataset(
    writer: FileWriter, subjects: list[Subject], study: dict, software_version: str
) -> None:
    """The dataset-level files of ``bids/``: description, README, participants."""
    description: dict[str, Any] = {
        "Name": str(study.get("name") or "napari-mrisynth synthetic T1w images"),
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "raw",
        "GeneratedBy": _generated_by(
            software_version, "Curated synthetic T1-weighted images exported for sharing"
        ),
    }
    if study.get("license"):
        description["License"] = str(study["license"])
    if isinstance(study.get("authors"), list):
        description["Authors"] = [str(a) for a in study["authors"]]
    writer.write_json("bids/dataset_description.json", description)
    has_masks = any(s.item.mask_path is not None for s in subjects)
    writer.write_text("bids/README", _readme(study, subjects, has_masks))
    rows = [participant_row(s) for s in subjects]
    table = ["\t".join(PARTICIPANT_COLUMNS)]
    table += ["\t".join(_tsv_value(row[c]) for c in PARTICIPANT_COLUMNS) for row in rows]
    writer.write_text("bids/participants.tsv", "\n".join(table) + "\n")
    writer.write_json("bids/participants.json", PARTICIPANT_COLUMNS)
    if has_masks:
        writer.write_json(
            f"bids/derivatives/{MASKS_PIPELINE}/dataset_description.json",
            {
                "Name": "Corrected label masks of the synthetic T1w images",
                "BIDSVersion": BIDS_VERSION,
                "DatasetType": "derivative",
                "GeneratedBy": _generated_by(
                    software_version, "Label masks corrected by an annotator"
                ),
                "DatasetLinks": {"raw": "../../"},
            },
        )


def write_subject(
    writer: FileWriter, subject: Subject, images: SubjectImages, software_version: str
) -> list[str]:
    """The T1w image and sidecar of one subject (and its mask); returns the paths written."""
    sub = subject.participant_id
    anat = f"bids/{sub}/anat/{sub}_T1w"
    written = [
        writer.write_bytes(f"{anat}.nii.gz", nifti_gz_bytes(images.volume)).path,
        writer.write_json(f"{anat}.json", t1w_sidecar(subject, software_version)).path,
    ]
    if images.mask is not None:
        base = f"bids/derivatives/{MASKS_PIPELINE}/{sub}/anat/{sub}_dseg"
        values = [int(v) for v in np.unique(np.asarray(images.mask.data)) if v != 0]
        schema = images.mask_labels
        lookup = ["index\tname"] + [f"{v}\t{_label_name(v, schema)}" for v in values]
        written += [
            writer.write_bytes(f"{base}.nii.gz", nifti_gz_bytes(images.mask, labels=True)).path,
            writer.write_json(
                f"{base}.json",
                {
                    "Description": "Label mask corrected by an annotator",
                    "Manual": True,
                    "Sources": [f"bids:raw:{sub}/anat/{sub}_T1w.nii.gz"],
                },
            ).path,
            writer.write_text(f"{base}.tsv", "\n".join(lookup) + "\n").path,
        ]
    return written
