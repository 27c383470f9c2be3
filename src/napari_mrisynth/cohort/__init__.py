"""Simulated bvFTD cohort: T1-weighted head MRI with exact labels, built on the MNI152 template.

Everything this package makes is simulated, not clinical data.
"""

from napari_mrisynth.cohort.build import build_cohort
from napari_mrisynth.cohort.labels import (
    BRAIN_LABELS,
    BVFTD_LABELS,
    GREY_MATTER_LABELS,
    LABEL_IDS,
    LABELS,
    napari_label_colors,
)
from napari_mrisynth.cohort.simulate import (
    DIAGNOSES,
    SimulatedSubject,
    sample_subject,
    simulate_subject,
)

__all__ = [
    "BRAIN_LABELS",
    "BVFTD_LABELS",
    "DIAGNOSES",
    "GREY_MATTER_LABELS",
    "LABELS",
    "LABEL_IDS",
    "SimulatedSubject",
    "build_cohort",
    "napari_label_colors",
    "sample_subject",
    "simulate_subject",
]
