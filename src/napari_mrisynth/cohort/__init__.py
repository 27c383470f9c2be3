"""Simulated bvFTD cohort: T1-weighted head MRI with exact labels, built on the MNI152 template.

Everything this package makes is simulated, not clinical data.
"""

from typing import Any

from napari_mrisynth.cohort.labels import (
    BRAIN_LABELS,
    BVFTD_LABELS,
    GREY_MATTER_LABELS,
    LABEL_IDS,
    LABELS,
    napari_label_colors,
)

#: Imported on first use: the simulator pulls in scipy, nibabel and pydicom, which every
#: `mrisynth` command would otherwise pay for at start-up (this package registers `cohort`).
_LAZY = {
    "build_cohort": "napari_mrisynth.cohort.build",
    "DIAGNOSES": "napari_mrisynth.cohort.simulate",
    "SimulatedSubject": "napari_mrisynth.cohort.simulate",
    "sample_subject": "napari_mrisynth.cohort.simulate",
    "simulate_subject": "napari_mrisynth.cohort.simulate",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
