"""What makes one simulated brain its own below the coarse deformation (cohort version 2).

Real brains differ at fine scale: folding, cortical thickness, tissue texture. An average of
aligned real heads is therefore blurrier than any one of them, and a generator that only
warps an average looks like an average. Version 1 of the cohort warped one template by a
smooth 12 mm field, so its subjects shared every fine detail of the template; version 2
gives each subject, from its own random stream:

* **fine folding**: a diffeomorphic deformation (the exponential of a stationary velocity
  field smoothed over 4 mm, 0.7-1.1 mm RMS per axis: displacements of 1-1.5 mm RMS and up
  to about 3 mm, local volume changes between about 0.5x and 2x) of the brain and skull in
  template space, which moves gyri and sulci differently in every head;
* **cortical thickness**: extra cortical thinning that varies smoothly across the cortex
  (up to 0.3-0.7 mm, correlated over about 15 mm), on top of age and disease;
* **texture**: tissue contrast of this head (grey and white matter, CSF: a few percent
  each) and a fine intensity heterogeneity inside the brain (2-4 %, correlated over 2-3 mm).

The fields live on one fixed 2 mm node grid in template (MNI LPS) space, the same whatever
the output spacing. The rest of a subject's anatomy matches across spacings from cohort
version 3 on (:mod:`.deformation`, :func:`.simulate.model_spacing`): in versions 1 and 2
the coarse subject deformation's grid and the head model changed at 2 mm output, so a
2 mm subject was not its 1 mm self (white matter Dice 0.72, lateral ventricles 0.53
between the two, measured on sub-008 of seed 2026).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from scipy import special

from napari_mrisynth.anatomy.deform import exponentiate, sample_field, smooth_noise, taper
from napari_mrisynth.anatomy.labels import BRAIN_LABELS, GREY_MATTER_LABELS, LABEL_IDS

#: Node spacing (mm) and extent (LPS x, y, z ranges, mm) of the fine fields: the MNI brain,
#: its skull and a margin; outside it the fine deformation tapers to nothing.
FINE_STEP_MM = 2.0
FINE_BOX_LPS = np.array([[-90.0, 90.0], [-90.0, 126.0], [-84.0, 96.0]])

#: Tissue groups whose contrast varies from head to head, and the spread of each (SD).
CONTRAST_SD = {"grey": 0.04, "white": 0.02, "csf": 0.08}


@dataclass
class FineAnatomy:
    """One subject's fine-scale anatomy (see the module docstring), on the fine node grid."""

    displacement: np.ndarray  # (3, z, y, x) mm: template point -> point it takes anatomy from
    thinning: np.ndarray  # (z, y, x) mm of extra cortical thinning
    heterogeneity: np.ndarray  # (z, y, x), relative intensity change inside the brain
    contrast: dict[str, float]
    folding_rms_mm: float  # per axis, of the velocity
    origin: np.ndarray  # LPS of node [0, 0, 0]

    def info(self) -> dict[str, float]:
        """What the subject's ``info`` records of it."""
        return {
            "fine_folding_rms_mm": round(self.folding_rms_mm, 3),
            "extra_thinning_max_mm": round(float(self.thinning.max()), 3),
            "texture_rms": round(float(np.sqrt(np.mean(self.heterogeneity**2))), 4),
            **{f"contrast_{k}": round(v, 4) for k, v in self.contrast.items()},
        }


def fine_grid_shape() -> tuple[int, int, int]:
    """(nz, ny, nx) of the fine node grid."""
    counts = np.rint((FINE_BOX_LPS[:, 1] - FINE_BOX_LPS[:, 0]) / FINE_STEP_MM).astype(int) + 1
    return int(counts[2]), int(counts[1]), int(counts[0])


def draw_fine_anatomy(rng: np.random.Generator) -> FineAnatomy:
    """Draw one subject's fine anatomy from its own stream (``SeedSequence([seed, 4])``)."""
    shape = fine_grid_shape()
    folding_rms = float(rng.uniform(0.7, 1.1))
    velocity = smooth_noise(rng, shape, sigma_nodes=2.0, components=3)
    velocity *= np.float32(folding_rms) * taper(shape, width=4)
    displacement = exponentiate(velocity, FINE_STEP_MM, squarings=4)
    thinning_max = float(rng.uniform(0.3, 0.7))
    field = smooth_noise(rng, shape, sigma_nodes=7.0)
    thinning = (thinning_max * special.ndtr(field)).astype(np.float32)
    amplitude = float(rng.uniform(0.02, 0.04))
    heterogeneity = amplitude * smooth_noise(rng, shape, sigma_nodes=0.6)
    contrast = {k: float(1.0 + sd * rng.standard_normal()) for k, sd in CONTRAST_SD.items()}
    return FineAnatomy(displacement, thinning, heterogeneity.astype(np.float32), contrast,
                       folding_rms, FINE_BOX_LPS[:, 0].copy())  # fmt: skip


def voxel_points(flat_index: np.ndarray, shape: tuple[int, ...], origin: np.ndarray,
                 h: float) -> np.ndarray:  # fmt: skip
    """LPS points (3, N) of flat voxel indices of an identity-direction grid."""
    z, y, x = np.unravel_index(flat_index, shape)
    return np.asarray(origin, dtype=np.float64)[:, None] + h * np.stack([x, y, z]).astype(
        np.float64
    )


def add_texture(
    intensity: np.ndarray, labels: np.ndarray, fine: FineAnatomy, origin: np.ndarray, h: float
) -> None:
    """This head's tissue contrast and fine heterogeneity, in place on the template-space
    intensity (after thinning)."""
    groups = {
        "grey": np.isin(labels, GREY_MATTER_LABELS),
        "white": np.isin(labels, (LABEL_IDS["white_matter"], LABEL_IDS["cerebellum"])),
        "csf": np.isin(
            labels,
            (
                LABEL_IDS["lateral_ventricles"],
                LABEL_IDS["sulcal_csf"],
                LABEL_IDS["extracerebral_csf"],
            ),
        ),  # fmt: skip
    }
    for name, mask in groups.items():
        intensity[mask] *= np.float32(fine.contrast[name])
    brain = np.flatnonzero(np.isin(labels, BRAIN_LABELS))
    points = voxel_points(brain, labels.shape, origin, h)
    index = ((points - fine.origin[:, None]) / FINE_STEP_MM)[::-1]
    change = ndi.map_coordinates(fine.heterogeneity, index, order=1, mode="constant", cval=0.0)
    flat = intensity.reshape(-1)
    flat[brain] *= 1.0 + change.astype(np.float32)


def extra_thinning(fine: FineAnatomy, gm_index: np.ndarray, shape: tuple[int, ...],
                   origin: np.ndarray, h: float) -> np.ndarray:  # fmt: skip
    """Extra cortical thinning (mm) at each cortical grey-matter voxel of the template."""
    points = voxel_points(gm_index, shape, origin, h)
    return sample_field(fine.thinning[None], points, fine.origin, FINE_STEP_MM)[0]


def fine_transform(fine: FineAnatomy):
    """The fine folding as a SimpleITK displacement field transform in template space."""
    import SimpleITK as sitk

    field = np.moveaxis(fine.displacement, 0, -1).astype(np.float64)  # (z, y, x, 3)
    image = sitk.GetImageFromArray(field, isVector=True)
    image.SetOrigin(fine.origin.tolist())
    image.SetSpacing([FINE_STEP_MM] * 3)
    return sitk.DisplacementFieldTransform(image)
