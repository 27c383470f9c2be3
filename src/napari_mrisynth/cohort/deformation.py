"""How a simulated subject's anatomy departs from the template head.

* **Disease and age.** Every subject thins its cortex a little with age; bvFTD patients thin
  the orbital/medial frontal, insular, anterior cingulate and anterior temporal cortex by up
  to about 2 mm at severity 1 (grey matter becomes sulcal CSF) and enlarge the ventricles (a
  smooth radial expansion field that moves image and labels alike).
* **Subject.** A random smooth deformation (a few mm) and head size.
* **Pose.** The head's translation and a few degrees of rotation in the scanner.

All of it is composed into one displacement field from the scanner grid to the template, so
image and labels move together and the labels stay exact ground truth.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from napari_mrisynth.anatomy.deform import sample_field
from napari_mrisynth.anatomy.labels import LABEL_IDS
from napari_mrisynth.anatomy.template import (
    CANVAS_HIGH_LPS,
    CANVAS_LOW_LPS,
    TISSUE_INTENSITY,
    HeadModel,
)
from napari_mrisynth.cohort.draws import SubjectDraws
from napari_mrisynth.cohort.versions import COHORT_VERSION

#: Cortical thinning (mm) of a bvFTD patient at severity 1 where the weight is 1.
MAX_BVFTD_THINNING_MM = 2.0
#: Cortical thinning (mm) per year of age past 50, everyone.
AGEING_THINNING_MM_PER_YEAR = 0.01
#: Ventricular wall displacement (mm) at severity 1, and per year of age past 50.
MAX_BVFTD_VENTRICLE_MM = 3.0
AGEING_VENTRICLE_MM_PER_YEAR = 0.04


def atrophy(
    model: HeadModel, age: int, severity: float, extra: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, float]:
    """Model intensity and labels after cortical thinning; also the thinning peak (mm).

    ``extra`` (mm per cortical grey-matter voxel) is the subject's own thinning on top of
    age and disease (cohort version 2).
    """
    years = max(age - 50, 0)
    thinning = AGEING_THINNING_MM_PER_YEAR * years + severity * MAX_BVFTD_THINNING_MM * (
        model.gm_weight
    )
    if extra is not None:
        thinning = thinning + extra
    # Fraction of each grey-matter voxel left once `thinning` mm is removed from its pial side.
    keep = np.clip((model.gm_depth - thinning) / model.h, 0.0, 1.0)
    intensity = model.intensity.copy()
    labels = model.labels.copy()
    flat_i, flat_l = intensity.reshape(-1), labels.reshape(-1)
    csf_level = TISSUE_INTENSITY["csf"]
    flat_i[model.gm_index] = keep * flat_i[model.gm_index] + (1.0 - keep) * csf_level
    flat_l[model.gm_index[keep < model.gm_dither]] = LABEL_IDS["sulcal_csf"]
    return intensity, labels, float(thinning.max()) if thinning.size else 0.0


def rotation_matrix(degrees: np.ndarray) -> np.ndarray:
    """Rotation about L (pitch), P (roll) and S (yaw), in that order."""
    ax, ay, az = np.deg2rad(degrees)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


#: Node spacing (mm) of the subject deformation's control grid. From cohort version 3 on
#: the grid is fixed in template (LPS) space over the head model's canvas
#: (:data:`~napari_mrisynth.anatomy.template.CANVAS_LOW_LPS` ..
#: :data:`~napari_mrisynth.anatomy.template.CANVAS_HIGH_LPS`: the same nodes as the 1 mm
#: model's canvas), so that a seed draws the same deformation whatever the output spacing.
#: Versions 1 and 2 laid it over the canvas of the head model in use, which is 2 mm from
#: 2 mm output up and a little larger and shifted: a 2 mm subject's deformation was
#: unrelated to its 1 mm self (white matter Dice 0.72 between the two; identical at 1 mm).
DEFORMATION_STEP_MM = 12.0


def smooth_random_field(
    rng: np.random.Generator, model: HeadModel, rms_mm: float, version: int = COHORT_VERSION
) -> tuple[np.ndarray, np.ndarray]:
    """(3, z, y, x) displacement (mm) on a 12 mm control grid, and the grid's origin (LPS
    mm): over the model canvas (versions 1-2) or the fixed template box (3 on)."""
    if version >= 3:
        extent, origin = CANVAS_HIGH_LPS - CANVAS_LOW_LPS, CANVAS_LOW_LPS
    else:
        extent, origin = np.array(model.intensity.shape[::-1]) * model.h, model.origin
    nodes = np.ceil(extent / DEFORMATION_STEP_MM).astype(int) + 1
    noise = rng.standard_normal((3, nodes[2], nodes[1], nodes[0]))
    smooth = np.stack([ndi.gaussian_filter(c, 1.0, mode="nearest") for c in noise])
    return smooth * (rms_mm / float(np.sqrt((smooth**2).mean()))), np.asarray(origin, float)


def displacement_field(
    model: HeadModel, draws: SubjectDraws, points: np.ndarray, version: int = COHORT_VERSION
) -> tuple[np.ndarray, float]:
    """Template-space positions of scanner-space LPS ``points`` (3, N), through pose, head
    size, the subject's random deformation and the ventricles' expansion.

    Returns
    -------
    template : ndarray (3, N)
        Where each point samples the template head.
    ventricle_mm : float
        The ventricular wall displacement applied (age and disease).
    """
    deformation, grid_origin = smooth_random_field(draws.anatomy, model, draws.deformation_mm,
                                                   version)  # fmt: skip
    years = max(draws.age - 50, 0)
    ventricle_mm = AGEING_VENTRICLE_MM_PER_YEAR * years + MAX_BVFTD_VENTRICLE_MM * draws.severity
    c = model.brain_centre[:, None]
    rotation = rotation_matrix(draws.rotation_deg)
    head = c + rotation.T @ (points - c - draws.translation_mm[:, None]) / draws.head_scale
    head = head + sample_field(deformation, head, grid_origin, DEFORMATION_STEP_MM)
    push = sample_field(model.ventricle_field, head, model.ventricle_origin, model.ventricle_h)
    return head + ventricle_mm * push, ventricle_mm
