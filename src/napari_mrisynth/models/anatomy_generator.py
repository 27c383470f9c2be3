"""The anatomy-first generator: a learned template head, deformed and rendered.

Everything is learned from the training scans by :mod:`napari_mrisynth.synthesis.anatomy`
and kept here as buffers, so the registry saves and verifies it like any network:

* a **template**, built by groupwise registration of the training scans (never one
  subject's scan): its label map at the scans' own resolution, sharp because its tissue
  boundaries are placed where the aligned subjects most probably have them, in the
  subjects' mean proportions; the cortex's depth from the pial surface; and the intensity
  structure the labels do not explain (super-resolved from every scan, not averaged);
* a **shape model**: each training scan's smooth diffeomorphic transform to the template as
  a stationary velocity field on a coarse node grid, modelled by its mean given the
  condition (diagnosis, age, sex) plus principal components (a conditional Gaussian), or
  by a conditional VAE with classifier-free guidance;
* an **anatomy and appearance model**: a conditional Gaussian over each scan's regional
  anatomy (the share of its brain each cortical grey-matter label, the lateral ventricles
  and, since 1.4.0, the white matter hold; models before 1.3.0: thinning and growth in mm on
  the template), tissue intensities (per label), bias field (quadratic), noise level and
  field of view;
* **fine-scale models** of what the coarse fields and the template cannot hold: a random
  fine folding deformation and a tissue texture field, their amplitude and scale fitted to
  the training scans (the folding's amplitude so that sampled heads vary as much as they do).

Sampling draws all of these, warps the template's labels through ``exp(-v)`` (the inverse
of the scans' warps onto it) composed with a fresh fine folding at native resolution, grows
(or shrinks) the ventricles and the white matter and thins (or thickens) the cortex region
by region until each has the share of the brain it drew (the warp stretches some regions
more than others, so the distances are found after it, on the warped head), renders tissue
intensities with the fitted point spread, adds structure, texture, bias and Rician noise,
and cuts the field of view: a volume and its exact label map, as sharp as the
training scans, and never a copy of one.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from napari_mrisynth.models.conditions import CONDITION_NAMES

#: Quadratic bias-field terms over the grid scaled to [-1, 1]: x, y, z, x², y², z², xy, xz, yz.
BIAS_TERMS = 9
#: Field-of-view bounds: lower and upper extent along z, y, x, as fractions of the grid.
FOV_TERMS = 6
#: Seed entries of a volume's noise (fine folding, texture, acquisition noise, spare).
SEED_TERMS = 4
#: Knots of the intensity response curve.
TONE_KNOTS = 65
#: Distance (mm) outside the template's brain over which the fine folding fades out.
FINE_FADE_MM = 4.0
#: Named entries of the ``scalars`` buffer.
SCALARS = ("psf", "fine_rms", "fine_sigma", "texture_rms", "texture_sigma", "vae_scale",
           "noise_blur", "psf_head")  # fmt: skip


def appearance_layout(labels: int, cortical: int, ventricles: int = 0,
                      white: int = 0) -> dict[str, slice]:  # fmt: skip
    """Where each part of the anatomy-and-appearance vector sits (``ventricles``: 1 when the
    model grows and shrinks the lateral ventricles, 0 for models made before it; ``white``: 1
    when it grows and shrinks the white matter, 0 for models before 1.4.0)."""
    sizes = {"thinning": cortical, "ventricles": ventricles, "white": white,
             "intensity": labels, "bias": BIAS_TERMS, "log_noise": 1,
             "fov": FOV_TERMS}  # fmt: skip
    out, start = {}, 0
    for name, size in sizes.items():
        out[name] = slice(start, start + size)
        start += size
    return out


def deep_tissue(brain: Sequence[int], cortical: Sequence[int], sulcal: int,
                ventricle: int | None) -> list[int]:  # fmt: skip
    """Labels the ventricles may grow into: brain tissue that is not cortex or CSF."""
    return [v for v in brain if v not in cortical and v not in (sulcal, ventricle)]


def design_matrix(condition: torch.Tensor) -> torch.Tensor:
    """``[1, diagnosis, age, sex]`` per row: the regressors every model is conditioned on."""
    ones = torch.ones(condition.shape[0], 1, dtype=condition.dtype, device=condition.device)
    return torch.cat([ones, condition], dim=1)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(B, C, D, H, W)`` (sigma in voxels; replicate edges)."""
    if sigma <= 0:
        return x
    radius = max(1, int(math.ceil(3.0 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = x.shape[1]
    for axis in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = kernel.numel()
        weight = kernel.view(shape).expand(channels, 1, *shape[2:])
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = radius
        x = F.conv3d(F.pad(x, pad, mode="replicate"), weight, groups=channels)
    return x


def _interpolate(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear ``np.interp`` in torch (``xp`` increasing; ends held constant)."""
    if float(xp[-1] - xp[0]) <= 0:
        return x
    index = torch.searchsorted(xp.contiguous(), x.contiguous().clamp(xp[0], xp[-1])).clamp(
        1, len(xp) - 1
    )
    x0, x1, f0, f1 = xp[index - 1], xp[index], fp[index - 1], fp[index]
    weight = (x.clamp(xp[0], xp[-1]) - x0) / (x1 - x0).clamp_min(1e-9)
    return f0 + weight * (f1 - f0)


def _identity_grid(shape: Sequence[int], device: Any, dtype: Any) -> torch.Tensor:
    """(1, D, H, W, 3) grid_sample coordinates (x, y, z order) of a volume's own voxels."""
    axes = [torch.linspace(-1.0, 1.0, int(n), device=device, dtype=dtype) for n in shape]
    z, y, x = torch.meshgrid(*axes, indexing="ij")
    return torch.stack([x, y, z], dim=-1)[None]


def _to_normalised(displacement_mm: torch.Tensor, shape: Sequence[int], spacing: float):
    """(B, 3, D, H, W) mm displacement (components x, y, z) -> (B, D, H, W, 3) offsets in
    grid_sample's [-1, 1] units (align_corners=True)."""
    scale = torch.tensor([2.0 / (max(int(n), 2) - 1) / spacing for n in shape[::-1]],
                         dtype=displacement_mm.dtype, device=displacement_mm.device)  # fmt: skip
    return displacement_mm.permute(0, 2, 3, 4, 1) * scale


def sampling_grid(displacement_mm: torch.Tensor, spacing: float) -> torch.Tensor:
    """(B, D, H, W, 3) grid_sample coordinates of ``x + displacement(x)`` for every voxel x of
    a (B, 3, D, H, W) displacement in mm (components x, y, z)."""
    shape = displacement_mm.shape[2:]
    identity = _identity_grid(shape, displacement_mm.device, displacement_mm.dtype)
    return identity + _to_normalised(displacement_mm, shape, spacing)


def exponentiate(velocity: torch.Tensor, step_mm: float, squarings: int = 6) -> torch.Tensor:
    """Displacement (mm) of ``exp(velocity)`` on the same node grid, by scaling and squaring
    (torch; runs on the GPU when the field is there)."""
    shape = velocity.shape[2:]
    grid = _identity_grid(shape, velocity.device, velocity.dtype)
    u = velocity / (2**squarings)
    for _ in range(squarings):
        moved = grid + _to_normalised(u, shape, step_mm)
        u = u + F.grid_sample(u, moved, mode="bilinear", padding_mode="border", align_corners=True)
    return u


def _node_to_voxels(field: torch.Tensor, step: int, shape: Sequence[int]) -> torch.Tensor:
    """A field on a node grid (node ``k`` at voxel ``k * step``) sampled at every voxel."""
    nodes = field.shape[2:]
    axes = [
        torch.arange(int(n), device=field.device, dtype=field.dtype) / step / max(int(m) - 1, 1)
        * 2.0 - 1.0
        for n, m in zip(shape, nodes, strict=True)
    ]  # fmt: skip
    z, y, x = torch.meshgrid(*axes, indexing="ij")
    grid = torch.stack([x, y, z], dim=-1)[None].expand(field.shape[0], -1, -1, -1, -1)
    return F.grid_sample(field, grid, mode="bilinear", padding_mode="border", align_corners=True)


def _depth_for(count: int, inside: torch.Tensor, around: torch.Tensor) -> torch.Tensor:
    """The thinning (mm; negative: thickening) that leaves ``count`` voxels of a cortical
    label, from its voxels' sorted depths from the pial side (``inside``) and the sorted
    depths of the sulcal CSF nearest to it (``around``)."""
    if inside.numel() == 0:
        return inside.new_zeros(())
    if count <= inside.numel():
        lost = inside.numel() - count
        return inside[min(lost, inside.numel() - 1)] if lost > 0 else inside.new_zeros(())
    if around.numel() == 0:
        return inside.new_zeros(())
    return -around[min(count - inside.numel(), around.numel()) - 1]


def _growth_for(count: int, distance: torch.Tensor, inside: torch.Tensor,
                into: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """The growth (mm; negative: shrinking) of a structure that leaves it ``count`` voxels:
    ``distance`` from its surface on the template (> 0 outside, < 0 inside), ``inside`` its
    voxels now, ``into`` the voxels it may grow into. Only voxels inside the template's
    surface can be given back (a structure may hold voxels a neighbour gave it)."""
    have = int(inside.sum())
    if count >= have:
        around = torch.sort(distance[(distance > 0) & into]).values
        extra = min(count - have, around.numel())
        return around[extra - 1] if extra > 0 else distance.new_zeros(())
    depths = torch.sort(-distance[inside & (distance < 0)]).values
    if depths.numel() == 0:
        return distance.new_zeros(())
    # voxels shallower than |g| go: just beyond the lost-th shallowest
    lost = min(have - count, depths.numel())
    return -torch.nextafter(depths[lost - 1], depths.new_tensor(math.inf))


def _reshape_cortex(
    labels: torch.Tensor,
    value: int,
    sulcal: int,
    depth: torch.Tensor,
    csf_depth: torch.Tensor,
    around: torch.Tensor,
    t: torch.Tensor,
) -> None:
    """Thin cortical label ``value`` in place (t > 0: its voxels shallower than t mm from the
    pial side become ``sulcal``) or thicken it (t < 0: the sulcal CSF ``around`` it within
    |t| mm becomes it)."""
    labels[(labels == value) & (depth < t)] = sulcal
    labels[around & (csf_depth <= -t)] = value


def _grow_or_shrink(
    labels: torch.Tensor,
    value: int,
    distance: torch.Tensor,
    neighbour: torch.Tensor,
    into: torch.Tensor,
    g: torch.Tensor,
) -> torch.Tensor:
    """Grow structure ``value`` in place (g > 0: the ``into`` voxels within g mm outside its
    template surface become it) or shrink it (g < 0: its voxels inside the surface and
    shallower than |g| mm take their ``neighbour`` label); returns the voxels given back."""
    shrink = (labels == value) & (distance < 0) & (distance > g)
    labels[(distance > 0) & (distance <= g) & into] = value
    labels[shrink] = neighbour.round().to(labels.dtype)[shrink]
    return shrink


class AnatomyFirst(nn.Module):
    """The anatomy-first generator (see the module docstring); sizes come from the card.

    Parameters
    ----------
    shape : (D, H, W)
        The output grid (the model grid at the training scans' resolution).
    spacing : float
        Its voxel size, mm.
    node_step, fine_step : int
        Voxels between nodes of the velocity grid and of the fine folding grid.
    components : int
        Principal components of the velocity fields (Gaussian shape model).
    labels : int
        Rendering classes 0 .. labels - 1 of the template: the label schema's values, then
        intensity subclasses of labels that hold several tissues (skull tables and diploe;
        skin, fat and muscle); ``class_label`` maps each class to its label.
    cortical : sequence of int
        Cortical grey-matter labels (thinned or thickened region by region).
    sulcal : int
        The label a thinned cortex becomes (sulcal CSF).
    brain : sequence of int
        Labels inside the brain (where tissue texture applies).
    shape_model : {"gaussian", "vae"}
    vae : dict, optional
        The ConditionalVAE arguments of a VAE shape model.
    ventricle : int, optional
        The lateral ventricles' label: each head's ventricles grow into the brain tissue
        around them or shrink by a sampled distance (mm). None (models made before it): the
        ventricles change only with the warp.
    regional : {"mm", "share"}
        What the anatomy entries of the appearance vector (``layout["thinning"]`` and
        ``layout["ventricles"]``) hold. ``"mm"`` (models made before 1.3.0): the distance
        each cortical label is thinned and the ventricles grown on the template, before the
        warp. ``"share"``: the share of the brain each label has in the new head; the
        thinning and growth that give exactly that share are found after the warp, so a
        head's regional volumes follow the modelled distribution of the training scans'
        whatever the warp does to them.
    white : int, optional
        The white matter's label (``regional="share"`` only): its share of the brain is
        drawn too, and reached by growing it into the grey matter around it or shrinking it
        (before the cortex is thinned from the pial side), so the smooth fields cannot move
        the boundary between white matter and the rest more than real heads differ. None:
        models before 1.4.0.
    edge : {"zeros", "border"}
        What the template is beyond its grid, where a warp pulls from outside it (the neck,
        at the bottom of the grid, runs on out of it). ``"border"``: its edge voxels go on,
        so a head keeps its neck and its label volumes their spread. ``"zeros"`` (models
        before 1.7.0, kept so that their heads stay the same): air, which took up to 17 mL
        of neck from a head and tripled the spread of its bone and extracerebral CSF.
    """

    family = "anatomy"

    def __init__(
        self,
        shape: Sequence[int],
        spacing: float,
        node_step: int,
        fine_step: int,
        components: int,
        labels: int,
        cortical: Sequence[int],
        sulcal: int,
        brain: Sequence[int],
        shape_model: str = "gaussian",
        vae: dict[str, Any] | None = None,
        condition_dim: int = len(CONDITION_NAMES),
        ventricle: int | None = None,
        regional: str = "mm",
        white: int | None = None,
        edge: str = "zeros",
    ) -> None:
        super().__init__()
        if edge not in ("zeros", "border"):
            raise ValueError(f"edge must be 'zeros' or 'border', not {edge!r}")
        self.edge = edge
        self.shape = tuple(int(s) for s in shape)
        self.spacing = float(spacing)
        self.node_step, self.fine_step = int(node_step), int(fine_step)
        self.node_shape = tuple(-(-(n - 1) // self.node_step) + 1 for n in self.shape)
        self.fine_shape = tuple(-(-(n - 1) // self.fine_step) + 1 for n in self.shape)
        self.components = int(components)
        self.label_count = int(labels)
        self.cortical = [int(v) for v in cortical]
        self.sulcal = int(sulcal)
        self.brain = [int(v) for v in brain]
        self.shape_model = shape_model
        self.ventricle = None if ventricle is None else int(ventricle)
        if regional not in ("mm", "share"):
            raise ValueError(f"regional must be 'mm' or 'share', not {regional!r}")
        self.regional = regional
        if white is not None and (regional != "share" or ventricle is None):
            raise ValueError("a white-matter share needs regional='share' and the ventricles")
        self.white = None if white is None else int(white)
        self.layout = appearance_layout(self.label_count, len(self.cortical),
                                        int(self.ventricle is not None),
                                        int(self.white is not None))  # fmt: skip
        self.appearance_dim = max(s.stop for s in self.layout.values())
        design = 1 + int(condition_dim)
        zeros, half = torch.zeros, {"dtype": torch.float16}  # big maps: half the weights file
        self.register_buffer("template_labels", zeros(self.shape, dtype=torch.uint8))
        self.register_buffer("class_label", zeros(self.label_count, dtype=torch.uint8))
        # the intensity response: rendered head quantiles (row 0) -> the scans' (row 1)
        self.register_buffer("tone", zeros(2, TONE_KNOTS))
        self.register_buffer("gm_depth", zeros(self.shape, **half))  # mm from the pial side
        self.register_buffer("csf_depth", zeros(self.shape, **half))  # mm of CSF from cortex
        self.register_buffer("nearest_cortex", zeros(self.shape, dtype=torch.uint8))
        self.register_buffer("structure", zeros(self.shape, **half))
        if self.ventricle is not None:
            # mm from the ventricles' surface: > 0 outside, < 0 inside; and, inside, the label
            # of the nearest voxel outside (what a shrinking ventricle gives back)
            self.register_buffer("ventricle_distance", zeros(self.shape, **half))
            self.register_buffer("ventricle_neighbour", zeros(self.shape, dtype=torch.uint8))
        if self.white is not None:  # the same for the white matter's surface
            self.register_buffer("white_distance", zeros(self.shape, **half))
            self.register_buffer("white_neighbour", zeros(self.shape, dtype=torch.uint8))
        self.register_buffer("velocity_design", zeros(design, 3, *self.node_shape, **half))
        self.register_buffer("velocity_basis", zeros(self.components, 3, *self.node_shape, **half))
        self.register_buffer("appearance_design", zeros(design, self.appearance_dim))
        self.register_buffer("appearance_factor", zeros(self.appearance_dim, self.appearance_dim))
        if regional == "share":
            # the spread of each anatomy entry in controls (row 0) and bvFTD (row 1) against
            # the pooled one: bvFTD heads vary more, with their severity
            anatomy = self.layout["white"].stop
            self.register_buffer("anatomy_spread", torch.ones(2, anatomy))
        # psf sigma (voxels), fine folding rms (mm) and sigma (fine nodes), texture rms
        # (fraction) and sigma (voxels), velocity scale of the VAE (mm per unit), the
        # acquisition noise's correlation (voxels): see SCALARS
        self.register_buffer("scalars", zeros(len(SCALARS)))
        self.vae = None
        self._weight_cache: tuple[tuple, torch.Tensor] | None = None  # see _brain_weight
        if shape_model == "vae":
            from napari_mrisynth.models.generators import ConditionalVAE

            self.vae = ConditionalVAE(**(vae or {}))

    @property
    def noise_shape(self) -> tuple[int, ...]:
        latent = self.vae.global_latent if self.vae is not None else self.components
        return (latent + self.appearance_dim + SEED_TERMS,)

    # -- sampling the parts ------------------------------------------------------------
    def _velocity(self, x: torch.Tensor, condition: torch.Tensor, z: torch.Tensor,
                  guidance: float) -> torch.Tensor:  # fmt: skip
        if self.vae is None:
            mean = torch.einsum("bp,pcdhw->bcdhw", x, self.velocity_design.float())
            return mean + torch.einsum("bk,kcdhw->bcdhw", z, self.velocity_basis.float())
        scale = self.scalars[SCALARS.index("vae_scale")]
        conditioned = self.vae.decode(z, condition)
        if guidance != 1.0:
            unconditioned = self.vae.decode(z, torch.zeros_like(condition))
            conditioned = unconditioned + guidance * (conditioned - unconditioned)
        d, h, w = self.node_shape
        return conditioned[:, :, :d, :h, :w] * scale

    def _appearance(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        residual = z @ self.appearance_factor.T
        if self.regional == "share":  # each diagnosis with its own spread (unknown: pooled)
            diagnosis = x[:, 1:2]
            spread = torch.where(diagnosis > 0, self.anatomy_spread[1], self.anatomy_spread[0])
            spread = torch.where(diagnosis == 0, torch.ones_like(spread), spread)
            anatomy = spread.shape[1]
            residual = torch.cat([residual[:, :anatomy] * spread, residual[:, anatomy:]], 1)
        return x @ self.appearance_design + residual

    def _pulled_back(self, grid: torch.Tensor) -> dict[str, torch.Tensor]:
        """The template's maps at each voxel of the new heads (nearest template voxel of
        the sampling ``grid``; outside the template, as ``edge`` says): (B, D, H, W) each."""
        names = ["template_labels", "gm_depth", "csf_depth", "nearest_cortex"]
        if self.ventricle is not None:
            names += ["ventricle_distance", "ventricle_neighbour"]
        if self.white is not None:
            names += ["white_distance", "white_neighbour"]
        maps = torch.stack([getattr(self, n).float() for n in names])[None]
        maps = maps.expand(grid.shape[0], -1, -1, -1, -1)
        pulled = F.grid_sample(maps, grid, mode="nearest", padding_mode=self.edge,
                               align_corners=True)  # fmt: skip
        return {n: pulled[:, i] for i, n in enumerate(names)}

    def _labels(self, maps: dict[str, torch.Tensor], thinning: torch.Tensor,
                growth: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        """The heads' render classes from the template's pulled-back ``maps``, each cortical
        label thinned (t > 0: its outer t mm become sulcal CSF) or thickened (t < 0: sulcal
        CSF within |t| mm of it becomes it), then the lateral ventricles grown (g > 0: the
        deep brain tissue within g mm of them becomes ventricle) or shrunk (g < 0: their
        outer |g| mm give the voxels back to the nearest tissue). Every rule acts voxel by
        voxel, so changing the template and then warping it gives the same heads."""
        batch = thinning.shape[0]
        template = maps["template_labels"].round().to(self.template_labels.dtype)
        labels = template.clone()
        gm_depth, csf_depth = maps["gm_depth"], maps["csf_depth"]
        sulcal = template == self.sulcal
        nearest = maps["nearest_cortex"].round()
        for k, value in enumerate(self.cortical):
            t = thinning[:, k].view(batch, 1, 1, 1)
            around = sulcal & (nearest == value)
            _reshape_cortex(labels, value, self.sulcal, gm_depth, csf_depth, around, t)
        if self.ventricle is not None and growth is not None:
            deep = torch.isin(labels, torch.tensor(self.deep_tissue(), device=labels.device))
            g = growth.reshape(batch, 1, 1, 1)
            _grow_or_shrink(labels, self.ventricle, maps["ventricle_distance"],
                            maps["ventricle_neighbour"], deep, g)  # fmt: skip
        return labels

    def _share_labels(self, maps: dict[str, torch.Tensor], look: torch.Tensor) -> torch.Tensor:
        """The heads' render classes (``regional="share"``), every drawn share of the brain
        reached exactly on its pulled-back ``maps``, one structure after the other so that
        each step counts what the steps before left: the ventricles grow into the deep
        tissue within g mm of them (or lose their outer |g| mm to it), then the white matter
        into the cortex within w mm of it (or gives its outer |w| mm back to the nearest
        cortical label), then each cortical label keeps its voxels deeper than t mm from the
        pial side (or gains the sulcal CSF nearest to it within |t| mm). Voxels the white
        matter gave back are the cortex's deepest: a thinning from the pial side takes them
        last."""
        template = maps["template_labels"].round().to(self.template_labels.dtype)
        labels = template.clone()
        device = labels.device
        brain = torch.isin(self.class_label.long()[template.long()],
                           torch.tensor(self.brain, device=device))  # fmt: skip
        cortical = torch.tensor(self.cortical, device=device)
        deep = torch.tensor(self.deep_tissue(), device=device)
        nearest = maps["nearest_cortex"].round()
        sulcal = template == self.sulcal
        depth = maps["gm_depth"].clone()
        for b in range(labels.shape[0]):
            total = float(brain[b].sum())
            wanted = (look[b, : self.layout["white"].stop].clamp_min(0.0) * total).round()
            head = labels[b]
            for name, value, into in (("ventricle", self.ventricle, deep),
                                      ("white", self.white, cortical)):  # fmt: skip
                if value is None:
                    continue
                distance, allowed = maps[f"{name}_distance"][b], torch.isin(head, into)
                entry = "ventricles" if name == "ventricle" else name
                g = _growth_for(int(wanted[self.layout[entry].start]), distance,
                                head == value, allowed)  # fmt: skip
                given = _grow_or_shrink(head, value, distance, maps[f"{name}_neighbour"][b],
                                        allowed, g)  # fmt: skip
                if name == "white":
                    depth[b][given] = 1e4  # the deepest cortex
            for k, value in enumerate(self.cortical):
                own, around = head == value, sulcal[b] & (nearest[b] == value)
                csf = maps["csf_depth"][b]
                t = _depth_for(int(wanted[self.layout["thinning"].start + k]),
                               torch.sort(depth[b][own]).values,
                               torch.sort(csf[around]).values)  # fmt: skip
                _reshape_cortex(head, value, self.sulcal, depth[b], csf, around, t)
        return labels

    def deep_tissue(self) -> list[int]:
        """Labels this model's ventricles may grow into (:func:`deep_tissue`)."""
        return deep_tissue(self.brain, self.cortical, self.sulcal, self.ventricle)

    def _field(self, seeds: torch.Tensor, shape: Sequence[int], sigma: float,
               components: int) -> torch.Tensor:  # fmt: skip
        """Smooth unit-RMS noise per volume, drawn on the CPU from the volume's own seed."""
        out = []
        for seed in seeds.tolist():
            generator = torch.Generator().manual_seed(int(seed))
            white = torch.randn((components, *shape), generator=generator)
            smooth = gaussian_blur(white[None], sigma)[0]
            out.append(smooth / smooth.pow(2).mean().sqrt().clamp_min(1e-12))
        return torch.stack(out).to(self.scalars.device)

    def _seeds(self, noise: torch.Tensor, salt: int) -> torch.Tensor:
        """Integer seeds from a volume's seed entries (deterministic on every device)."""
        raw = noise.detach().float().cpu().numpy()
        return torch.tensor([int.from_bytes(hashlib.sha256(row.tobytes() + bytes([salt]))
                                            .digest()[:7], "little") for row in raw])  # fmt: skip

    @torch.no_grad()
    def generate(self, condition: torch.Tensor, noise: torch.Tensor, *, guidance: float = 1.0,
                 **_: Any) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """``(images, labels)``: (B, 1, D, H, W) float32 on the model grid's intensity scale
        and (B, 1, D, H, W) uint8 label maps of the same anatomy."""
        dtype, device = torch.float32, self.scalars.device
        condition = condition.to(dtype)
        latent = self.vae.global_latent if self.vae is not None else self.components
        z_shape = noise[:, :latent]
        z_look = noise[:, latent : latent + self.appearance_dim]
        seeds = noise[:, latent + self.appearance_dim :]
        x = design_matrix(condition)
        look = self._appearance(x, z_look)
        named = dict(zip(SCALARS, self.scalars.tolist(), strict=True))
        psf, fine_rms, fine_sigma = named["psf"], named["fine_rms"], named["fine_sigma"]
        texture_rms, texture_sigma = named["texture_rms"], named["texture_sigma"]
        # shape: the coarse diffeomorphism plus a fresh fine folding, at native resolution
        velocity = self._velocity(x, condition, z_shape, guidance)
        # a training scan's field v warps the scan onto the template (the scan sampled at
        # x + exp(v)(x)); a new head is the template warped the other way, exp(-v)
        coarse = exponentiate(-velocity, self.node_step * self.spacing)
        displacement = _node_to_voxels(coarse, self.node_step, self.shape)
        if fine_rms > 0:
            fine_v = fine_rms * self._field(self._seeds(seeds, 1), self.fine_shape, fine_sigma, 3)
            fine = exponentiate(fine_v, self.fine_step * self.spacing)
            # the folding of the brain and its sulci: it fades out across the skull, so that
            # the scalp keeps a smooth outline
            weight = self._brain_weight().expand(displacement.shape[0], -1, -1, -1, -1)
            weight = F.grid_sample(
                weight,
                sampling_grid(displacement, self.spacing),
                mode="bilinear",
                padding_mode="zeros",
                align_corners=True,
            )
            displacement = displacement + weight * _node_to_voxels(fine, self.fine_step,
                                                                   self.shape)  # fmt: skip
        grid = sampling_grid(displacement, self.spacing)
        # anatomy: the template's labels warped, regional cortex and ventricles, structure
        maps = self._pulled_back(grid)
        if self.regional == "share":
            labels = self._share_labels(maps, look)
        else:
            growth = look[:, self.layout["ventricles"]] if self.ventricle is not None else None
            labels = self._labels(maps, look[:, self.layout["thinning"]], growth)
        labels = labels.to(torch.long)[:, None]
        structure = self.structure.float()[None, None].expand(grid.shape[0], -1, -1, -1, -1)
        structure = F.grid_sample(structure, grid, mode="bilinear", padding_mode=self.edge,
                                  align_corners=True)  # fmt: skip
        # appearance: tissue intensities through the point spread, structure, texture
        intensity = look[:, self.layout["intensity"]]
        image = torch.gather(intensity, 1, labels.flatten(1)).view(labels.shape)
        labels = self.class_label.to(torch.long)[labels]  # rendering classes -> labels
        inside = image * torch.isin(labels, torch.tensor(self.brain, device=device))
        image = (gaussian_blur(inside, psf) + gaussian_blur(image - inside, named["psf_head"])
                 + structure)  # fmt: skip
        if texture_rms > 0:
            brain = torch.isin(labels, torch.tensor(self.brain, device=device))
            texture = self._field(self._seeds(seeds, 2), self.shape, texture_sigma, 1)
            image = image * (1.0 + texture_rms * texture * brain)
        image = image * torch.exp(self._bias(look[:, self.layout["bias"]]))
        # acquisition: Rician noise, then the field of view
        sigma = torch.exp(look[:, self.layout["log_noise"]]).view(-1, 1, 1, 1, 1)
        noise_pair = self._field(self._seeds(seeds, 3), self.shape, named["noise_blur"], 2)
        image = torch.sqrt((image + sigma * noise_pair[:, :1]) ** 2
                           + (sigma * noise_pair[:, 1:]) ** 2)  # fmt: skip
        image = _interpolate(image, self.tone[0], self.tone[1])
        image = image * self._field_of_view(look[:, self.layout["fov"]])
        return image.clamp(0.0, 1.5), labels.to(torch.uint8)

    def _brain_weight(self) -> torch.Tensor:
        """(1, 1, D, H, W): 1 in the template's brain, falling to 0 over about 4 mm outside.

        Made once per template: kept with the identity of the labels it came from (storage,
        device and in-place version), so loading weights or moving the model remakes it.
        """
        labels = self.template_labels
        key = (labels.data_ptr(), str(labels.device), labels._version)
        if self._weight_cache is not None and self._weight_cache[0] == key:
            return self._weight_cache[1]
        brain = torch.isin(labels, torch.tensor(self.brain, device=labels.device))
        sigma = FINE_FADE_MM / 2.0 / self.spacing
        grown = gaussian_blur(brain.float()[None, None], sigma)
        weight = (2.0 * grown).clamp(max=1.0)
        self._weight_cache = (key, weight)
        return weight

    def _bias(self, coefficients: torch.Tensor) -> torch.Tensor:
        axes = [torch.linspace(-1.0, 1.0, n, device=coefficients.device,
                               dtype=coefficients.dtype) for n in self.shape]  # fmt: skip
        z, y, x = torch.meshgrid(*axes, indexing="ij")
        terms = torch.stack([x, y, z, x * x, y * y, z * z, x * y, x * z, y * z])
        return torch.einsum("bt,tdhw->bdhw", coefficients, terms)[:, None]

    def _field_of_view(self, bounds: torch.Tensor) -> torch.Tensor:
        """1 inside the sampled box (lower, upper fraction along z, y, x), 0 outside."""
        masks = []
        bounds = bounds.clamp(0.0, 1.0)
        for axis, n in enumerate(self.shape):
            position = torch.linspace(0.0, 1.0, n, device=bounds.device, dtype=bounds.dtype)
            low, high = bounds[:, 2 * axis : 2 * axis + 1], bounds[:, 2 * axis + 1 : 2 * axis + 2]
            low, high = torch.minimum(low, high - 0.5), torch.maximum(high, low + 0.5)
            masks.append((position[None] >= low) & (position[None] <= high))
        z, y, x = masks
        box = z[:, :, None, None] & y[:, None, :, None] & x[:, None, None, :]
        return box[:, None].to(bounds.dtype)
