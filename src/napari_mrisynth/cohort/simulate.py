"""Simulated T1-weighted head MRI of bvFTD patients and controls, built on the template head.

One subject is: the template head (:mod:`napari_mrisynth.anatomy.template`), thinned by age
and disease, deformed and posed (:mod:`.deformation`), sampled on a scanner's grid through one
displacement field and given gain, bias and noise (:mod:`.imaging`), all from the draws of one
seed (:mod:`.draws`). Image and labels are resampled through the same single displacement
field, so the labels are exact ground truth for the simulated image. Everything here is
simulated, not clinical.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_mrisynth.anatomy.labels import BRAIN_LABELS
from napari_mrisynth.anatomy.template import head_model
from napari_mrisynth.cohort.deformation import atrophy, displacement_field
from napari_mrisynth.cohort.draws import DIAGNOSES, PLANES, draw_subject
from napari_mrisynth.cohort.fine_anatomy import (
    add_texture,
    draw_fine_anatomy,
    extra_thinning,
    fine_transform,
)
from napari_mrisynth.cohort.imaging import acquire, resample_through_field
from napari_mrisynth.cohort.versions import COHORT_VERSION, COHORT_VERSIONS
from napari_mrisynth.volume import Volume

__all__ = ["DIAGNOSES", "SimulatedSubject", "sample_subject", "simulate_subject"]


@dataclass
class SimulatedSubject:
    """One simulated subject: a T1-weighted head image with exact ground truth.

    Attributes
    ----------
    t1 : Volume
        int16 T1-weighted head image (skull, scalp, neck), simulated.
    labels : Volume
        uint8 labels of :data:`napari_mrisynth.anatomy.LABELS`, same geometry as ``t1``.
    brain_mask : Volume
        uint8 0/1 brain mask (brain tissue, ventricles, sulcal CSF), same geometry.
    info : dict
        ``id, diagnosis, age, sex, severity, simulated`` and the scan parameters drawn.
    """

    t1: Volume
    labels: Volume
    brain_mask: Volume
    info: dict[str, Any] = field(default_factory=dict)


def model_spacing(spacing: float, version: int = COHORT_VERSION) -> int:
    """The head model (mm) a subject at ``spacing`` is sampled from: 1 mm for fine output,
    2 mm (eight times fewer voxels) for coarse output. Version 3 keeps the 1 mm model up to
    2 mm output, so a subject at 2 mm is its 1 mm self resampled (its labels are not those
    of a second, blockier model); versions 1-2 took the 2 mm model from 2 mm up."""
    fine = spacing <= 2.0 if version >= 3 else spacing < 2.0
    return 1 if fine else 2


def simulate_subject(
    subject_id: str,
    diagnosis: str,
    seed: int,
    spacing: float = 1.0,
    *,
    severity: float | None = None,
    age: int | None = None,
    sex: str | None = None,
    version: int = COHORT_VERSION,
) -> SimulatedSubject:
    """Simulate one subject's T1-weighted head MRI with exact ground-truth labels.

    Everything is drawn from ``seed``: a control and a bvFTD patient with the same seed share
    age, sex, anatomy (deformation, head size) and scan (pose, field of view, bias, noise) and
    differ only by the disease, so the atrophy can be measured between them.

    Parameters
    ----------
    subject_id : str
        Written into the metadata (``sub-001``).
    diagnosis : {"bvFTD", "control"}
    seed : int
        Makes the subject reproducible.
    spacing : float
        Isotropic voxel size of the output, mm (1.0 realistic; 2.0 or 3.0 fast).
    severity : float, optional
        bvFTD severity 0..1 (drawn from the seed when omitted); controls have 0.
    age : int, optional
        Years; drawn from the seed (62 +- 7, 45..80) when omitted.
    sex : {"F", "M"}, optional
        Drawn from the seed when omitted.
    version : {1, 2, 3}
        Cohort version: 3 (the default) draws the subject's deformation on a grid fixed in
        template space and samples 2 mm output from the 1 mm head model, so a seed gives
        the same anatomy at 1 and 2 mm (at 1 mm it equals version 2 voxel for voxel); 2
        gives every head its own fine folding, cortical thickness and texture
        (:mod:`~napari_mrisynth.cohort.fine_anatomy`); 1 reproduces subjects made before
        that. Each older version reproduces its subjects voxel for voxel.

    Returns
    -------
    SimulatedSubject
        ``t1``, ``labels`` and ``brain_mask`` on the same grid, and ``info``.
    """
    if diagnosis not in DIAGNOSES:
        raise ValueError(f"diagnosis must be one of {DIAGNOSES}, got {diagnosis!r}")
    if not spacing > 0:
        raise ValueError(f"spacing must be positive, got {spacing!r}")
    if version not in COHORT_VERSIONS:
        raise ValueError(f"cohort version must be one of {COHORT_VERSIONS}, got {version!r}")
    draws = draw_subject(diagnosis, seed, severity=severity, age=age, sex=sex)
    model = head_model(model_spacing(spacing, version))
    fine = draw_fine_anatomy(np.random.default_rng([seed, 4])) if version >= 2 else None
    shape = model.intensity.shape
    extra = (None if fine is None
             else extra_thinning(fine, model.gm_index, shape, model.origin, model.h))  # fmt: skip
    intensity, labels, thinning_mm = atrophy(model, draws.age, draws.severity, extra)
    if fine is not None:
        add_texture(intensity, labels, fine, model.origin, model.h)

    # Output grid: the scanner frame puts the head's brain centre at c + translation.
    direction, spans = PLANES[draws.plane]
    extent = draws.fov_mm[list(spans)]
    size = np.maximum(np.rint(extent / spacing).astype(int), 8)
    centre = model.brain_centre + draws.translation_mm + draws.fov_shift_mm
    origin = centre - direction @ (spacing * (size - 1) / 2.0)

    # One displacement field on a coarse copy of the output grid: pose, deformation, ventricles.
    step = max(1, round(3.0 / spacing))
    coarse = -(-(size - 1) // step) + 1
    grid = np.stack(
        np.meshgrid(*(np.arange(n, dtype=np.float64) for n in coarse[::-1]), indexing="ij")[::-1]
    ).reshape(3, -1)
    points = origin[:, None] + direction @ (spacing * step * grid)
    template, ventricle_mm = displacement_field(model, draws, points, version)
    displacement = (template - points).T.reshape(coarse[2], coarse[1], coarse[0], 3)

    t1, label_data = resample_through_field(
        intensity, labels, model, displacement, origin, direction, spacing, step, size,
        template_transform=None if fine is None else fine_transform(fine),
    )  # fmt: skip
    t1 = acquire(t1, draws.scan, draws.gain, draws.bias_amplitude, draws.noise_fraction)

    info = {
        "id": subject_id,
        "diagnosis": diagnosis,
        "age": draws.age,
        "sex": draws.sex,
        "severity": round(draws.severity, 2),
        "simulated": True,
        "cohort_version": version,
        "seed": int(seed),
        "spacing_mm": float(spacing),
        "plane": draws.plane,
        "head_scale": round(draws.head_scale, 4),
        "rotation_deg": np.round(draws.rotation_deg, 2).tolist(),
        "translation_mm": np.round(draws.translation_mm, 2).tolist(),
        "field_of_view_mm": np.round(extent, 1).tolist(),
        "deformation_rms_mm": round(draws.deformation_mm, 3),
        "cortical_thinning_max_mm": round(thinning_mm, 3),
        "ventricle_expansion_mm": round(ventricle_mm, 3),
        "bias_amplitude": round(draws.bias_amplitude, 3),
        "noise_fraction": round(draws.noise_fraction, 4),
        **({} if fine is None else fine.info()),
    }
    meta = {"modality": "MR", "simulated": True, "subject": subject_id}
    t1_volume = Volume(t1, [spacing] * 3, origin, direction, {**meta, "name": "T1w (simulated)"})
    mask = ((label_data >= min(BRAIN_LABELS)) & (label_data <= max(BRAIN_LABELS))).astype(np.uint8)
    return SimulatedSubject(
        t1=t1_volume,
        labels=t1_volume.with_data(label_data, name="labels (simulated)"),
        brain_mask=t1_volume.with_data(mask, name="brain mask (simulated)"),
        info=info,
    )


def sample_subject(diagnosis: str = "bvFTD", spacing: float = 2.0) -> SimulatedSubject:
    """A fixed simulated subject for napari's sample data and demos (seed 0, severity 0.8).

    Parameters
    ----------
    diagnosis : {"bvFTD", "control"}
    spacing : float
        mm; the 2 mm default takes about a second once the template model is built.
    """
    severity = 0.8 if diagnosis == "bvFTD" else 0.0
    return simulate_subject(f"sample-{diagnosis}", diagnosis, 0, spacing, severity=severity)
