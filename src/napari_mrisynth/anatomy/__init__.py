"""Anatomy: the label schema and the template head every other station builds on.

The schema (:mod:`.labels`) names the tissues and regions of a head; the template head
(:mod:`.template`) is the MNI152 brain with a simulated head grown around it. The cohort
simulator deforms it into subjects; the segmentation and classification models use it as
their model space. Simulated anatomy, not a real head.
"""

from napari_mrisynth.anatomy.labels import (
    ANTERIOR_TEMPORAL_Y_MNI,
    BRAIN_LABELS,
    BVFTD_LABELS,
    CORTICAL_GM_LABELS,
    GREY_MATTER_LABELS,
    LABEL_IDS,
    LABELS,
    aal_region_label,
    napari_label_colors,
)

__all__ = [
    "ANTERIOR_TEMPORAL_Y_MNI",
    "BRAIN_LABELS",
    "BVFTD_LABELS",
    "CORTICAL_GM_LABELS",
    "GREY_MATTER_LABELS",
    "LABELS",
    "LABEL_IDS",
    "aal_region_label",
    "napari_label_colors",
]
