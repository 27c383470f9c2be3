"""The alignment target of the models: the simulator's template head in MNI152 space."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from napari_mrisynth.volume import Volume


@dataclass(frozen=True)
class ReferenceHead:
    """Template head (T1 with skull and neck), its 19 labels and its brain mask (LPS, MNI)."""

    t1: Volume
    labels: Volume
    brain_mask: Volume


@functools.lru_cache(maxsize=4)
def reference_head(spacing: float = 2.0) -> ReferenceHead:
    """The reference head at ``spacing`` mm (the 1 mm model below 2 mm, else the 2 mm one).

    Built from the MNI152 template by the cohort simulator (seconds the first time, then
    cached on disk); identical for every subject and every model, so alignment is too.
    """
    from napari_mrisynth.anatomy.labels import BRAIN_LABELS
    from napari_mrisynth.anatomy.template import template_head

    t1, labels = template_head(1 if spacing < 2.0 else 2)
    mask = np.isin(np.asarray(labels.data), BRAIN_LABELS).astype(np.uint8)
    return ReferenceHead(t1, labels, labels.with_data(mask, name="template brain mask"))
