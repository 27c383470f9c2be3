"""Annotation: correcting model masks, with provenance and autosave (no Qt here)."""

from napari_mrisynth.annotation.correction import (
    CorrectionError,
    CorrectionRecord,
    MaskCorrection,
    dice_per_label,
)

__all__ = ["CorrectionError", "CorrectionRecord", "MaskCorrection", "dice_per_label"]
