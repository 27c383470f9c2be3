"""Sample data: one subject of the simulated cohort (T1, atlas labels, brain mask)."""

from __future__ import annotations

import pandas as pd

from napari_mrisynth.anatomy import LABELS, napari_label_colors
from napari_mrisynth.cohort import sample_subject

from ._layer_data import LayerData, image_layer_data, labels_layer_data

#: Brain mask: yellow inside, transparent elsewhere.
MASK_COLORS = {None: (0.0, 0.0, 0.0, 0.0), 0: (0.0, 0.0, 0.0, 0.0), 1: (1.0, 1.0, 0.0, 1.0)}


def sample_bvftd() -> list[LayerData]:
    """A simulated bvFTD patient: T1 image, ground-truth labels and brain mask.

    Returns
    -------
    list of LayerData
        Three layers on the same grid, named "simulated ...".
    """
    return subject_layers("bvFTD")


def sample_control() -> list[LayerData]:
    """A simulated healthy control: T1 image, ground-truth labels and brain mask.

    Returns
    -------
    list of LayerData
        Three layers on the same grid, named "simulated ...".
    """
    return subject_layers("control")


def subject_layers(diagnosis: str, spacing: float = 2.0) -> list[LayerData]:
    """Layers of :func:`napari_mrisynth.cohort.sample_subject` for ``diagnosis``.

    Parameters
    ----------
    diagnosis : str
        A diagnosis the cohort simulates (``"bvFTD"``, ``"control"``).
    spacing : float
        Isotropic voxel size in mm.

    Returns
    -------
    list of LayerData
        T1 image, labels (cohort colours, region names as layer features) and brain mask
        (hidden), all with the subject's patient geometry.
    """
    subject = sample_subject(diagnosis, spacing=spacing)
    tag = f"simulated {diagnosis}"
    t1 = image_layer_data(subject.t1, name=f"{tag} T1")
    labels = labels_layer_data(
        subject.labels,
        name=f"{tag} labels",
        color_dict=napari_label_colors(),
    )
    # the status bar then names the region under the cursor
    labels[1]["features"] = pd.DataFrame(
        {"index": list(LABELS), "region": [name for name, _ in LABELS.values()]}
    )
    labels[1]["opacity"] = 0.5
    mask = labels_layer_data(subject.brain_mask, name=f"{tag} brain mask", color_dict=MASK_COLORS)
    mask[1]["visible"] = False
    return [t1, labels, mask]
