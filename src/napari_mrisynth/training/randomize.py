"""Training images drawn from label maps with random contrast, resolution and artefacts.

A segmenter trained on the simulated cohort learns the simulator's look: one template's
contrast, one resolution, mild bias. SynthSeg (Billot et al. 2023) showed that a network
trained on images *synthesized from label maps*, with every appearance parameter drawn at
random for every sample, learns shape instead and holds on real scans of any contrast and
resolution. This module does that for the cohort's label schema:

1. the label map is moved by a random affine (rotation, head size, shear) and a smooth
   random deformation (MONAI's ``RandAffined`` and ``RandSmoothDeformd``, nearest neighbour);
2. :class:`RandLabelsToImaged` paints every tissue with a random mean and spread (a Gaussian
   mixture whose parameters are drawn per sample; the lobes of one tissue share one draw,
   because their borders are atlas lines, not image edges; air stays dark);
3. a random multiplicative bias field and Gaussian noise (MONAI);
4. :class:`RandSliceThicknessd` blurs one axis to a random slice thickness (1–5 mm) and
   samples it at that thickness and back, as a thick-slice acquisition resampled onto the
   model grid looks; the other axes get a milder random resolution;
5. a random gamma, and the range of the model's percentile normalisation.

Everything runs in the data loader's workers (torch on the CPU), with MONAI's random state,
so :class:`~napari_mrisynth.io.streaming.SeriesPatchDataset` reproduces every sample from
``(seed, epoch, item)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import MapTransform, RandomizableTransform

from napari_mrisynth.anatomy.labels import TISSUES
from napari_mrisynth.preprocess.intensity import PERCENTILE_CLIP


@dataclass(frozen=True)
class DomainRandomization:
    """The ranges every training sample's appearance is drawn from.

    Intensities are on the scale of the models' percentile normalisation (0 = air,
    about 1 = the brightest tissue; clipped at 1.5), so a patch needs no normalisation of
    its own and patches of one head agree.
    """

    #: Tissue means, uniform in this range (any order of tissues: T1-, T2- or PD-like).
    mean_range: tuple[float, float] = (0.1, 1.0)
    #: Spread of each tissue around its mean (standard deviation), uniform in this range.
    std_range: tuple[float, float] = (0.0, 0.08)
    #: Air's mean is drawn from [0, air_max]: air is dark in every MR contrast.
    air_max: float = 0.08
    #: Extra offset per label within a tissue (0: the lobes of a tissue look alike).
    label_jitter: float = 0.0
    #: Largest rotation about each axis, degrees.
    rotation_deg: float = 15.0
    #: Head size: each axis scaled by 1 ± up to this fraction.
    scale: float = 0.15
    #: Shear per axis pair, up to this fraction.
    shear: float = 0.03
    #: Smooth deformation: largest displacement, as a fraction of half the sample's side.
    deformation: float = 0.08
    #: Bias field: the log-field's standard deviation, uniform up to this.
    bias: float = 0.3
    #: Slice thickness of the thick axis, mm (the model grid's spacing is the floor).
    thickness_mm: tuple[float, float] = (1.0, 5.0)
    #: Resolution of the two in-plane axes, mm.
    in_plane_mm: tuple[float, float] = (1.0, 2.0)
    #: Gaussian noise standard deviation, uniform up to this.
    noise: float = 0.05
    #: Gamma = exp(N(0, gamma_std)).
    gamma_std: float = 0.3
    #: Fraction of samples whose image is painted from the labels; the others keep the
    #: scan's own (moved) image and get the same acquisition draws (bias, noise, slice
    #: thickness, gamma). 1.0 is SynthSeg's pure recipe; mixing in the scans' own contrast
    #: lets a short (CPU) training budget reach the T1 scans' accuracy while the painted
    #: share teaches shape over appearance.
    paint_prob: float = 1.0
    #: Fraction of samples skull-stripped after acquisition, as a brain extraction tool
    #: leaves a scan: every voxel outside the brain labels (and, in half of them, the
    #: extracerebral CSF) becomes air in the image and background in the labels, so a
    #: skull-stripped input is inside the training distribution.
    strip_prob: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DomainRandomization:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


class _Randomized(RandomizableTransform, MapTransform):
    """A dictionary transform on ``keys`` whose draws follow ``settings`` and MONAI's random
    state."""

    def __init__(
        self,
        keys: Sequence[str] | str,
        settings: DomainRandomization | None = None,
        prob: float = 1.0,
    ) -> None:
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob=prob)
        self.settings = settings or DomainRandomization()


class RandSkullStripd(_Randomized):
    """With probability ``settings.strip_prob``: keep only the brain (labels 1-13, plus the
    extracerebral CSF in half the draws) in ``image`` (0 elsewhere) and in ``label_key``
    (background elsewhere), as a skull-stripped scan and its labels look."""

    def __init__(self, label_key: str = "label", settings: DomainRandomization | None = None):
        super().__init__(("image",), settings)
        self.prob = float(self.settings.strip_prob)
        self.label_key = label_key

    def __call__(self, data: Mapping[str, Any]) -> dict[str, Any]:
        from napari_mrisynth.anatomy.labels import BRAIN_LABELS, LABEL_IDS

        out = dict(data)
        self.randomize(None)
        with_csf = bool(self.R.random() < 0.5)
        if not self._do_transform:
            return out
        labels = torch.as_tensor(np.asarray(out[self.label_key])).long()
        kept = list(BRAIN_LABELS) + ([LABEL_IDS["extracerebral_csf"]] if with_csf else [])
        keep = torch.isin(labels, torch.tensor(kept))
        out["image"] = torch.as_tensor(out["image"]).float() * keep
        out[self.label_key] = torch.where(keep, labels, torch.zeros_like(labels))
        return out


def _generator(transform: RandomizableTransform) -> torch.Generator:
    """A torch generator seeded from the transform's MONAI random state (reproducible)."""
    return torch.Generator().manual_seed(int(transform.R.randint(0, 2**31 - 1)))


class RandLabelsToImaged(_Randomized):
    """Replace ``image`` by an image painted from ``label``: every tissue gets a random
    mean and spread (per sample), air a dark mean; labels of one tissue share one draw.
    A share ``1 - settings.paint_prob`` of the samples keeps its image.

    Parameters
    ----------
    label_key, image_key : str
    settings : DomainRandomization
    tissues : mapping label id -> tissue name, default the cohort schema's
        :data:`~napari_mrisynth.anatomy.labels.TISSUES`; a label missing from it is its own
        tissue.
    """

    def __init__(
        self,
        label_key: str = "label",
        image_key: str = "image",
        settings: DomainRandomization | None = None,
        tissues: Mapping[int, str] | None = None,
    ) -> None:
        super().__init__((label_key,), settings)
        self.prob = float(self.settings.paint_prob)
        self.label_key, self.image_key = label_key, image_key
        self.tissues = dict(TISSUES if tissues is None else tissues)

    def __call__(self, data: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return out
        labels = torch.as_tensor(np.asarray(data[self.label_key])).long()
        s = self.settings
        present = torch.unique(labels).tolist()
        names = sorted({self.tissues.get(v, f"label-{v}") for v in present})
        generator = _generator(self)

        def uniform(lo: float, hi: float, n: int) -> torch.Tensor:
            return lo + (hi - lo) * torch.rand(n, generator=generator)

        means = dict(zip(names, uniform(*s.mean_range, len(names)).tolist(), strict=True))
        stds = dict(zip(names, uniform(*s.std_range, len(names)).tolist(), strict=True))
        if "air" in means:
            means["air"] = float(uniform(0.0, s.air_max, 1))
        lut_mean = torch.zeros(max(present) + 1)
        lut_std = torch.zeros(max(present) + 1)
        jitter = s.label_jitter * (2 * torch.rand(len(present), generator=generator) - 1)
        for k, value in enumerate(present):
            tissue = self.tissues.get(value, f"label-{value}")
            lut_mean[value] = means[tissue] + (0.0 if tissue == "air" else float(jitter[k]))
            lut_std[value] = stds[tissue]
        noise = torch.randn(labels.shape, generator=generator)
        image = lut_mean[labels] + lut_std[labels] * noise
        out[self.image_key] = image.clamp_min(0.0).float()
        return out


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(3.0 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def blur_axis(image: torch.Tensor, axis: int, sigma: float) -> torch.Tensor:
    """Gaussian blur of a (C, z, y, x) tensor along spatial ``axis`` (0-2), sigma in voxels;
    the edges are replicated."""
    if sigma <= 0:
        return image
    kernel = _gaussian_kernel(sigma)
    moved = image.movedim(axis + 1, -1)
    shape = moved.shape
    flat = moved.reshape(-1, 1, shape[-1])
    radius = (kernel.numel() - 1) // 2
    flat = F.pad(flat, (radius, radius), mode="replicate")
    flat = F.conv1d(flat, kernel.view(1, 1, -1))
    return flat.reshape(shape).movedim(-1, axis + 1)


def blur_to_resolution(
    image: torch.Tensor, axis: int, spacing: float, resolution: float
) -> torch.Tensor:
    """A (C, z, y, x) image on a grid of ``spacing`` mm along ``axis``, blurred as if that axis
    were acquired at ``resolution`` mm: a Gaussian of FWHM ``resolution``, less what the grid's
    own voxel already holds; unchanged when ``resolution`` is not coarser than the grid."""
    if resolution <= spacing:
        return image
    fwhm = math.sqrt(resolution * resolution - spacing * spacing)
    sigma = fwhm / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    return blur_axis(image, axis, sigma / spacing)


def simulate_resolution(
    image: torch.Tensor, spacing: Sequence[float], resolution: Sequence[float]
) -> torch.Tensor:
    """A (C, z, y, x) image on a grid of ``spacing`` mm as if acquired at ``resolution`` mm
    per axis and resampled back: each axis blurred to that resolution (Gaussian of FWHM
    equal to the acquired voxel, less the grid's own), sampled at it and linearly
    interpolated onto the grid again."""
    shape = image.shape[1:]
    for axis, (h, r) in enumerate(zip(spacing, resolution, strict=True)):
        image = blur_to_resolution(image, axis, h, r)
    coarse = [
        max(2, int(round(n * h / r))) for n, h, r in zip(shape, spacing, resolution, strict=True)
    ]
    if list(coarse) == list(shape):
        return image
    small = F.interpolate(image[None], size=coarse, mode="trilinear", align_corners=True)
    return F.interpolate(small, size=tuple(shape), mode="trilinear", align_corners=True)[0]


class RandSliceThicknessd(_Randomized):
    """Acquisition resolution at random: one random axis gets a slice thickness from
    ``settings.thickness_mm``, the two others an in-plane resolution from
    ``settings.in_plane_mm``; see :func:`simulate_resolution`.

    The grid's spacing is the sample's ``meta["spacing"]`` in the volume's index order
    (x, y, z), as :class:`~napari_mrisynth.io.streaming.SeriesPatchDataset` gives it, or
    ``spacing`` in array order (z, y, x); no axis gets finer than it.
    """

    def __init__(
        self,
        keys: Sequence[str] | str,
        spacing: Sequence[float] | None = None,
        settings: DomainRandomization | None = None,
        prob: float = 1.0,
    ) -> None:
        super().__init__(keys, settings, prob)
        self.spacing = None if spacing is None else tuple(float(s) for s in spacing)

    def grid_spacing(self, data: Mapping[str, Any]) -> list[float]:
        """The sample's grid spacing in array order (z, y, x), mm."""
        meta = data.get("meta") or {}
        if "spacing" in meta:
            return [float(h) for h in meta["spacing"]][::-1]  # index order (x, y, z)
        if self.spacing is not None:
            return list(self.spacing)
        raise ValueError("RandSliceThicknessd: no grid spacing (meta['spacing'] or spacing=)")

    def draw(self, spacing: Sequence[float]) -> tuple[float, float, float]:
        """The resolution (z, y, x) of one sample on a grid of ``spacing``, mm."""
        s = self.settings
        thick = int(self.R.randint(0, 3))
        resolution = []
        for axis, h in enumerate(spacing):
            lo, hi = s.thickness_mm if axis == thick else s.in_plane_mm
            resolution.append(max(float(h), float(self.R.uniform(lo, hi))))
        return tuple(resolution)  # type: ignore[return-value]

    def __call__(self, data: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return out
        spacing = self.grid_spacing(data)
        resolution = self.draw(spacing)
        for key in self.key_iterator(out):
            out[key] = simulate_resolution(torch.as_tensor(out[key]).float(), spacing, resolution)
        return out


class RandSmoothBiasd(_Randomized):
    """Multiply by a smooth random bias field: ``exp`` of a 4×4×4 grid of N(0, s) values
    upsampled (trilinear) to the sample, with ``s`` uniform in [0, ``settings.bias``]. The
    field stays within exp(±4 s) everywhere (a polynomial field, as MONAI's, runs away at
    the corners of a patch)."""

    def __call__(self, data: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(data)
        generator = _generator(self)
        strength = self.settings.bias * float(torch.rand(1, generator=generator))
        for key in self.key_iterator(out):
            image = torch.as_tensor(out[key]).float()
            out[key] = image * bias_field(image.shape[1:], strength, generator)
        return out


def bias_field(shape: Sequence[int], std: float, generator: torch.Generator) -> torch.Tensor:
    """A smooth multiplicative field of ``shape``: ``exp`` of a 4×4×4 grid of N(0, ``std``)
    values (clipped at ±4 ``std``) upsampled trilinearly."""
    coarse = (std * torch.randn((1, 1, 4, 4, 4), generator=generator)).clamp(-4 * std, 4 * std)
    field = F.interpolate(coarse, size=tuple(int(n) for n in shape), mode="trilinear",
                          align_corners=True)  # fmt: skip
    return torch.exp(field[0])


class RandGammaClipd(_Randomized):
    """``clip(x, 0, 1.5) ** gamma`` with ``gamma = exp(N(0, settings.gamma_std))``: a random
    contrast curve on the normalised scale (0 stays 0, 1 stays 1), then the range of the
    models' percentile normalisation."""

    def __call__(self, data: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(data)
        gamma = math.exp(float(self.R.normal(0.0, self.settings.gamma_std)))
        for key in self.key_iterator(out):
            image = torch.as_tensor(out[key]).float().clamp(0.0, PERCENTILE_CLIP)
            out[key] = (image**gamma).clamp(0.0, PERCENTILE_CLIP)
        return out


def randomized_steps(
    patch_size: Sequence[int],
    settings: DomainRandomization | None = None,
    *,
    spacing: Sequence[float] | None = None,
) -> list[Any]:
    """The randomization as a list of MONAI dictionary transforms: ``image`` and the label
    map ``label`` of ``patch_size`` are moved together (random affine and smooth
    deformation), the image is painted from the moved labels (a share
    ``settings.paint_prob``; the others keep the moved scan) and gets random acquisition
    artefacts (bias, noise, resolution and slice thickness, gamma), and a share
    ``settings.strip_prob`` is skull-stripped."""
    from monai.transforms import RandAffined, RandGaussianNoised, RandSmoothDeformd

    s = settings or DomainRandomization()
    angle = math.radians(s.rotation_deg)
    return [
        RandAffined(
            keys=("image", "label"),
            prob=1.0,
            rotate_range=(angle,) * 3,
            scale_range=(s.scale,) * 3,
            shear_range=(s.shear,) * 6,
            mode=("bilinear", "nearest"),
            padding_mode="zeros",
        ),
        RandSmoothDeformd(
            keys=("image", "label"),
            spatial_size=tuple(int(n) for n in patch_size),
            rand_size=(4, 4, 4),
            field_mode="trilinear",
            prob=1.0,
            def_range=s.deformation,
            grid_mode=("bilinear", "nearest"),
        ),
        RandLabelsToImaged(settings=s),
        RandSmoothBiasd(keys="image", settings=s),
        RandGaussianNoised(keys="image", prob=1.0, std=s.noise),
        RandSliceThicknessd(keys="image", spacing=spacing, settings=s),
        RandGammaClipd(keys="image", settings=s),
        RandSkullStripd(settings=s),
    ]


def randomized_segmentation_transform(
    patch_size: Sequence[int],
    settings: DomainRandomization | None = None,
    *,
    spacing: Sequence[float] | None = None,
) -> Any:
    """(image, label) samples of ``patch_size`` -> (random image, moved label map) samples,
    by :func:`randomized_steps`. The grid spacing comes from each sample's ``meta`` or
    ``spacing``."""
    from monai.transforms import Compose, EnsureTyped

    return Compose(
        [
            *randomized_steps(patch_size, settings, spacing=spacing),
            EnsureTyped(keys="image", dtype=torch.float32, track_meta=False),
            EnsureTyped(keys="label", dtype=torch.int64, track_meta=False),  # ids, as loaded
        ]
    )


class MaskClassd(MapTransform):
    """The end of a classification sample drawn from its label map: the image multiplied by
    the model's fixed brain mask (as :func:`~napari_mrisynth.preprocess.prepare` masks every
    scan), and ``label`` replaced by the class id in ``meta[class_key]``."""

    def __init__(self, brain_mask: np.ndarray, class_key: str = "class_id") -> None:
        MapTransform.__init__(self, ("image",))
        self.mask = torch.as_tensor(np.asarray(brain_mask) > 0)
        self.class_key = class_key

    def __call__(self, data: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(data)
        image = torch.as_tensor(out["image"]).float()
        if tuple(self.mask.shape) != tuple(image.shape[1:]):
            raise ValueError(f"brain mask {tuple(self.mask.shape)} does not match the "
                             f"image {tuple(image.shape[1:])}")  # fmt: skip
        out["image"] = image * self.mask
        out["label"] = torch.as_tensor(int(out["meta"][self.class_key]), dtype=torch.int64)
        return out


def randomized_classification_transform(
    brain_mask: np.ndarray,
    settings: DomainRandomization | None = None,
    *,
    spacing: Sequence[float] | None = None,
) -> Any:
    """Whole-volume samples (the model grid, the shape of ``brain_mask``) whose ``label`` is
    the label map and ``meta["class_id"]`` the class -> (random image, class id):
    :func:`randomized_steps` on the volume, then the model's brain mask. The network sees
    anatomy (the shapes of the label map, and in the kept share the scan itself) under
    random contrast and acquisition."""
    from monai.transforms import Compose, EnsureTyped

    return Compose(
        [
            *randomized_steps(np.shape(brain_mask), settings, spacing=spacing),
            MaskClassd(brain_mask),
            EnsureTyped(keys="image", dtype=torch.float32, track_meta=False),
        ]
    )
