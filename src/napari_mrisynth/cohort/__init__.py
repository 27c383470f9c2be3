"""Simulated bvFTD cohort: T1-weighted head MRI with exact labels, built on the template head.

Everything this package makes is simulated, not clinical data. The label schema lives in
:mod:`napari_mrisynth.anatomy`.
"""

import warnings
from typing import Any

#: Imported on first use: the simulator pulls in scipy, nibabel and pydicom, which every
#: `mrisynth` command would otherwise pay for at start-up.
_LAZY = {
    "build_cohort": "napari_mrisynth.cohort.build",
    "DIAGNOSES": "napari_mrisynth.cohort.draws",
    "SimulatedSubject": "napari_mrisynth.cohort.simulate",
    "sample_subject": "napari_mrisynth.cohort.simulate",
    "simulate_subject": "napari_mrisynth.cohort.simulate",
}
#: The label schema moved to napari_mrisynth.anatomy; these names still resolve, with a warning.
_MOVED_TO_ANATOMY = frozenset(
    {"BRAIN_LABELS", "BVFTD_LABELS", "GREY_MATTER_LABELS", "LABEL_IDS", "LABELS",
     "napari_label_colors"}
)  # fmt: skip


def __getattr__(name: str) -> Any:
    import importlib

    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _MOVED_TO_ANATOMY:
        warnings.warn(
            f"napari_mrisynth.cohort.{name} is deprecated: import it from napari_mrisynth.anatomy",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module("napari_mrisynth.anatomy"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["DIAGNOSES", "SimulatedSubject", "build_cohort", "sample_subject", "simulate_subject"]
