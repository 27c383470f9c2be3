"""Approved volumes as numbered export subjects, and their images read and checked."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_mrisynth.errors import MrisynthError
from napari_mrisynth.export.common import ExportError
from napari_mrisynth.models.card import sha256_file
from napari_mrisynth.turing.curation import ApprovedVolume, mask_schema
from napari_mrisynth.volume import Volume

#: Mask and volume grids may differ by float noise of their NIfTI affines, not by a voxel.
GRID_TOLERANCE_MM = 1e-3


@dataclass(frozen=True)
class Subject:
    """One approved volume and its number in the export (1-based, in volume_id order)."""

    item: ApprovedVolume
    number: int
    width: int

    @property
    def label(self) -> str:
        """``synth001``: the BIDS participant label."""
        return f"synth{self.number:0{self.width}d}"

    @property
    def participant_id(self) -> str:
        return f"sub-{self.label}"

    @property
    def patient_id(self) -> str:
        """``SYNTH001``: the DICOM PatientID."""
        return self.label.upper()


@dataclass(frozen=True)
class SubjectImages:
    """The voxels of one subject: the T1 volume, its mask and the mask's label schema
    (``{value: (name, rgb)}``), and the source file's SHA-256."""

    volume: Volume
    mask: Volume | None
    source_sha256: str
    mask_labels: dict = field(default_factory=dict)


def prepare_subjects(volumes: Sequence[ApprovedVolume]) -> list[Subject]:
    """Number the approved volumes in volume_id order; ExportError on duplicate or bad ids."""
    if not volumes:
        raise ExportError("nothing to export: the approved set is empty")
    seen: set[str] = set()
    for item in volumes:
        if not isinstance(item.volume_id, str) or not item.volume_id:
            raise ExportError(f"{item.path}: volume_id must be a non-empty string")
        if item.volume_id in seen:
            raise ExportError(f"{item.path}: volume_id {item.volume_id!r} appears twice")
        seen.add(item.volume_id)
    ordered = sorted(volumes, key=lambda v: v.volume_id)
    width = max(3, len(str(len(ordered))))
    return [Subject(item, number, width) for number, item in enumerate(ordered, start=1)]


def _load(path: Path, what: str, volume_id: str) -> Volume:
    from napari_mrisynth.io.files import load_volume

    try:
        volume = load_volume(path).compute()
    except MrisynthError as exc:
        raise ExportError(f"{path}: cannot read the {what} of {volume_id}: {exc}") from exc
    except OSError as exc:  # a permission error surfaces from nibabel as OSError
        raise ExportError(f"{path}: cannot read the {what} of {volume_id}: {exc}") from exc
    return volume


def load_images(subject: Subject) -> SubjectImages:
    """Read and check the volume (finite voxels) and mask (integer labels on its grid)."""
    item = subject.item
    path = Path(item.path)
    loaded = _load(path, "volume", item.volume_id)
    # Geometry and voxels only: the metadata names the source file
    volume = Volume(loaded.data, loaded.spacing, loaded.origin, loaded.direction)
    data = np.asarray(volume.data)
    if not np.all(np.isfinite(data)):
        raise ExportError(f"{path}: the volume of {item.volume_id} has NaN or infinite voxels")
    try:
        source_sha256 = sha256_file(path)
    except OSError as exc:
        raise ExportError(f"{path}: cannot read the volume of {item.volume_id}: {exc}") from exc
    mask, schema = None, {}
    if item.mask_path is not None:
        mask_path = Path(item.mask_path)
        grid = _load(mask_path, "mask", item.volume_id)
        if not grid.same_geometry(volume, atol=GRID_TOLERANCE_MM):
            raise ExportError(
                f"{mask_path}: the mask of {item.volume_id} ({grid!r}) is not on the "
                f"volume's grid ({volume!r})"
            )
        labels = np.asarray(grid.data)
        if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
            raise ExportError(f"{mask_path}: the mask of {item.volume_id} is not integer labels")
        if labels.min() < 0 or labels.max() > 65535:
            raise ExportError(
                f"{mask_path}: mask labels {labels.min()}..{labels.max()} of {item.volume_id} "
                "are outside 0..65535"
            )
        dtype = np.uint8 if labels.max() < 256 else np.uint16
        mask = volume.with_data(labels.astype(dtype))
        schema = item.mask_labels or mask_schema(mask_path)
    return SubjectImages(volume, mask, source_sha256, schema)
