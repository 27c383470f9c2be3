"""Training data: subjects brought into model space once, then streamed as patches or volumes.

Each subject's T1 (NIfTI or its DICOM folder) goes through the same
:func:`~napari_mrisynth.preprocess.prepare` as inference (affine alignment to the model
space, resampling onto the model grid, intensity normalisation); its label map follows with
the same alignment (nearest neighbour). Both are written as NIfTI under
``OUT/cache/<key>/``, where ``key`` hashes the input spec and the input files, so a second
run, or another rank of a distributed run, reads them instead of recomputing them. Training
then streams from that cache through :class:`~napari_mrisynth.io.streaming.SeriesPatchDataset`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_mrisynth.errors import MrisynthError
from napari_mrisynth.models.card import InputSpec
from napari_mrisynth.volume import Volume

#: Where a subject's T1 is read from: the NIfTI file or the DICOM series.
SOURCES = ("nifti", "dicom")

#: Share of training patches centred on a labelled voxel (segmentation).
FOREGROUND_RATIO = 0.7

#: Bump when the cached content changes meaning.
_CACHE_FORMAT = 1


@dataclass(frozen=True)
class CachedSubject:
    """A subject on the model grid: normalised image and (optionally) labels, as NIfTI."""

    subject: str
    image: Path
    label: Path | None
    source: Path
    source_label: Path | None


def subject_image(cohort: str | Path, subject: str, source: str = "nifti") -> Path:
    """The T1 of ``subject`` in a cohort: ``sub-X/anat/sub-X_T1w.nii.gz`` or ``sub-X/dicom``."""
    root = Path(cohort) / subject
    if source == "nifti":
        path = root / "anat" / f"{subject}_T1w.nii.gz"
    elif source == "dicom":
        path = root / "dicom"
    else:
        raise MrisynthError(f"image source {source!r} is not one of {SOURCES}")
    if not path.exists():
        raise MrisynthError(f"{path}: no T1 image for {subject}")
    return path


def subject_labels(cohort: str | Path, subject: str) -> Path:
    """The ground-truth label map ``sub-X/anat/sub-X_labels.nii.gz``."""
    path = Path(cohort) / subject / "anat" / f"{subject}_labels.nii.gz"
    if not path.exists():
        raise MrisynthError(f"{path}: no label map for {subject}")
    return path


def spec_volume(data: np.ndarray, spec: InputSpec, **metadata: Any) -> Volume:
    """A :class:`Volume` holding ``data`` on the model grid that ``spec`` describes."""
    return Volume(
        np.asarray(data),
        spacing=np.asarray(spec.spacing, dtype=float),
        origin=np.asarray(spec.origin, dtype=float),
        direction=np.asarray(spec.direction, dtype=float).reshape(3, 3),
        metadata=dict(metadata),
    )


def _fingerprint(path: Path) -> list[Any]:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def cache_key(spec: InputSpec, inputs: Sequence[Path]) -> str:
    """Hash of the input spec and the input files (paths, sizes, modification times)."""
    facts = {
        "format": _CACHE_FORMAT,
        "spec": spec.to_json(),
        "inputs": [_fingerprint(Path(p)) for p in inputs],
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]


def _write_atomically(volume: Volume, path: Path) -> None:
    from napari_mrisynth.io.atomic import replacing
    from napari_mrisynth.io.files import save_volume

    with replacing(path, suffix=".nii.gz") as partial:
        save_volume(volume, partial)


def cache_subject(
    cohort: str | Path,
    subject: str,
    spec: InputSpec,
    cache_root: str | Path,
    *,
    source: str = "nifti",
    labels: bool | None = True,
) -> CachedSubject:
    """Bring one subject onto the model grid, or reuse what an earlier call cached.

    Parameters
    ----------
    labels : bool or None
        Bring the label map too (it must exist); None: when it exists, so that a
        classification run shares the cache of a segmentation run on the same cohort.

    Returns
    -------
    CachedSubject
        Paths of ``<subject>_image.nii.gz`` (float32, normalised) and
        ``<subject>_labels.nii.gz`` (uint8) under ``cache_root/<key>/``.
    """
    from napari_mrisynth.io.files import load_volume
    from napari_mrisynth.preprocess import prepare, to_model_grid

    image_source = subject_image(cohort, subject, source)
    if labels is None:
        labels = (Path(cohort) / subject / "anat" / f"{subject}_labels.nii.gz").exists()
    label_source = subject_labels(cohort, subject) if labels else None
    inputs = [image_source] + ([label_source] if label_source else [])
    folder = Path(cache_root) / cache_key(spec, inputs)
    image_path = folder / f"{subject}_image.nii.gz"
    label_path = folder / f"{subject}_labels.nii.gz" if labels else None
    cached = CachedSubject(subject, image_path, label_path, image_source, label_source)
    if image_path.exists() and (label_path is None or label_path.exists()):
        return cached
    folder.mkdir(parents=True, exist_ok=True)
    volume = load_volume(image_source).compute()
    prepared = prepare(volume, spec, source=str(image_source))
    image = np.asarray(_array(prepared.image), dtype=np.float32)
    if label_path is not None:
        label_volume = load_volume(label_source).compute()
        moved = to_model_grid(label_volume, prepared.grid, prepared.alignment, order=0)
        label = np.rint(np.asarray(_array(moved))).astype(np.uint8)
        _write_atomically(spec_volume(label, spec, name=f"{subject} labels"), label_path)
    _write_atomically(spec_volume(image, spec, name=f"{subject} T1w"), image_path)
    return cached


def _array(value: Any) -> Any:
    """The voxels of a Volume, a tensor or an array, as a numpy array."""
    if isinstance(value, Volume):
        value = value.data
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def cache_subjects(
    cohort: str | Path,
    subjects: Sequence[str],
    spec: InputSpec,
    cache_root: str | Path,
    *,
    source: str = "nifti",
    labels: bool | None = True,
    progress: Callable[[int, int], None] | None = None,
) -> list[CachedSubject]:
    """:func:`cache_subject` for every subject, reporting ``progress(done, total)``."""
    result = []
    for done, subject in enumerate(subjects, start=1):
        result.append(cache_subject(cohort, subject, spec, cache_root, source=source,
                                    labels=labels))  # fmt: skip
        if progress is not None:
            progress(done, len(subjects))
    return result


# -- augmentation --------------------------------------------------------------------------
def segmentation_transform(*, augment: bool = True) -> Any:
    """MONAI dictionary transforms for (image, label) patches.

    Small rotations and zooms move image and labels together (labels by nearest neighbour);
    bias field, contrast (gamma), intensity scaling and Gaussian noise change only the image,
    because real scans differ from the simulated ones mostly in intensity.
    """
    from monai.transforms import (
        Compose,
        EnsureTyped,
        RandAdjustContrastd,
        RandAffined,
        RandBiasFieldd,
        RandGaussianNoised,
        RandScaleIntensityd,
    )

    steps: list[Any] = []
    if augment:
        steps += [
            RandAffined(
                keys=("image", "label"),
                prob=0.5,
                rotate_range=(np.pi / 18,) * 3,
                scale_range=(0.1,) * 3,
                mode=("bilinear", "nearest"),
                padding_mode="zeros",
            ),
            RandBiasFieldd(keys="image", prob=0.3, coeff_range=(0.0, 0.3)),
            RandAdjustContrastd(keys="image", prob=0.3, gamma=(0.7, 1.5)),
            RandScaleIntensityd(keys="image", prob=0.3, factors=0.1),
            RandGaussianNoised(keys="image", prob=0.3, std=0.05),
        ]
    steps.append(EnsureTyped(keys=("image", "label"), track_meta=False))
    return Compose(steps)


def classification_transform(*, augment: bool = True) -> Any:
    """MONAI dictionary transforms for whole volumes labelled with a class id: rotation,
    zoom, Gaussian noise and bias field on the image."""
    from monai.transforms import (
        Compose,
        EnsureTyped,
        RandBiasFieldd,
        RandGaussianNoised,
        RandRotated,
        RandZoomd,
    )

    steps: list[Any] = []
    if augment:
        angle = np.pi / 18
        steps += [
            RandRotated(
                keys="image",
                prob=0.5,
                range_x=angle,
                range_y=angle,
                range_z=angle,
                padding_mode="zeros",
            ),  # fmt: skip
            RandZoomd(keys="image", prob=0.5, min_zoom=0.9, max_zoom=1.1, keep_size=True),
            RandBiasFieldd(keys="image", prob=0.3, coeff_range=(0.0, 0.3)),
            RandGaussianNoised(keys="image", prob=0.3, std=0.05),
        ]
    steps.append(EnsureTyped(keys="image", track_meta=False))
    return Compose(steps)


# -- datasets ------------------------------------------------------------------------------
def segmentation_dataset(
    cached: Sequence[CachedSubject],
    *,
    patch_size: int | Sequence[int],
    patches_per_volume: int,
    seed: int,
    augment: bool = True,
    foreground_ratio: float = FOREGROUND_RATIO,
    randomize: Any = None,
    class_weights: Mapping[int, float] | None = None,
) -> Any:
    """Random (image, label) patches from the cached subjects, sharded over DDP ranks.

    A share ``foreground_ratio`` of the patches is centred on a labelled voxel; with
    ``class_weights``, on a voxel of a label drawn with those relative weights.

    ``randomize`` (a :class:`~napari_mrisynth.training.randomize.DomainRandomization`)
    replaces every patch's image by one drawn from its moved label map with random
    contrast, resolution and artefacts (SynthSeg's training); ``augment`` is then moot.
    """
    from napari_mrisynth.io.streaming import SeriesPatchDataset

    items = [{"image": c.image, "label": c.label, "subject": c.subject} for c in cached]
    size = (patch_size,) * 3 if isinstance(patch_size, int) else tuple(patch_size)
    if randomize is not None:
        from napari_mrisynth.training.randomize import randomized_segmentation_transform

        transform = randomized_segmentation_transform(size, randomize)
    else:
        transform = segmentation_transform(augment=augment)
    return SeriesPatchDataset(
        items,
        mode="patch",
        patch_size=patch_size,
        patches_per_volume=patches_per_volume,
        foreground_ratio=foreground_ratio,
        class_weights=class_weights,
        transform=transform,
        seed=seed,
        even_ranks=True,
    )


def classification_dataset(
    cached: Sequence[CachedSubject],
    classes: Sequence[int],
    *,
    seed: int,
    augment: bool = True,
    shuffle: bool = True,
    even_ranks: bool = True,
    randomize: Any = None,
    brain_mask: np.ndarray | None = None,
) -> Any:
    """Whole model-grid volumes labelled with their class id, sharded over DDP ranks.

    ``randomize`` (a :class:`~napari_mrisynth.training.randomize.DomainRandomization`) draws
    every volume's image from its moved label map (or keeps the moved scan, a share
    ``1 - paint_prob``) with random contrast and acquisition, then applies the model's
    ``brain_mask``; every subject needs its cached label map.
    """
    from napari_mrisynth.io.streaming import SeriesPatchDataset

    if randomize is None:
        items = [
            {"image": c.image, "label": int(k), "subject": c.subject}
            for c, k in zip(cached, classes, strict=True)
        ]
        transform = classification_transform(augment=augment)
    else:
        from napari_mrisynth.training.randomize import randomized_classification_transform

        missing = [c.subject for c in cached if c.label is None]
        if missing:
            raise MrisynthError(f"randomized classification draws images from label maps: "
                                f"no label map for {missing}")  # fmt: skip
        if brain_mask is None:
            raise MrisynthError("randomized classification needs the model's brain mask")
        items = [
            {"image": c.image, "label": c.label, "subject": c.subject, "class_id": int(k)}
            for c, k in zip(cached, classes, strict=True)
        ]
        transform = randomized_classification_transform(brain_mask, randomize)
    return SeriesPatchDataset(
        items,
        mode="volume",
        transform=transform,
        seed=seed,
        shuffle=shuffle,
        even_ranks=even_ranks,
    )


def validation_volumes(cached: Sequence[CachedSubject], *, seed: int) -> Any:
    """Whole model-grid volumes with their label maps, in order, for sliding-window
    validation; each rank reads its own share (no repeats, so the metrics are exact)."""
    from napari_mrisynth.io.streaming import SeriesPatchDataset

    items = [{"image": c.image, "label": c.label, "subject": c.subject} for c in cached]
    return SeriesPatchDataset(items, mode="volume", seed=seed, shuffle=False)
