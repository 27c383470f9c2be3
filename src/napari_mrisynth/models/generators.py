"""The generator families: three assembled from MONAI's generative networks, and the
anatomy-first generator (:mod:`~napari_mrisynth.models.anatomy_generator`).

Each takes the condition vector of :mod:`~napari_mrisynth.models.conditions` as constant
channels beside its input (the usual conditional VAE/GAN recipe; "concat" conditioning for
the diffusion UNet), and each has the same generation interface::

    network.noise_shape                       # one sample's noise, (C, z, y, x)
    network.generate(condition, noise, ...)   # (B, 3) and (B, *noise_shape) -> (B, 1, z, y, x)

so that :func:`~napari_mrisynth.synthesis.generate.generate` draws the noise itself, one
seeded generator per volume: the same seed gives the same volume at any batch size.

- :class:`ConditionalVAE`: MONAI's AutoencoderKL encoder and decoder; the condition enters
  both, and generation decodes prior samples.
- :class:`ConditionalGAN`: an AutoencoderKL-style decoder as generator (noise on the latent
  grid), MONAI's PatchDiscriminator as critic; both see the condition.
- :class:`LatentDiffusion`: AutoencoderKL (stage 1) and DiffusionModelUNet (stage 2) with
  DDIM sampling and classifier-free guidance (the null condition is the zero vector).
- :class:`~napari_mrisynth.models.anatomy_generator.AnatomyFirst`: a learned template head
  deformed by a sampled diffeomorphism and rendered; its ``generate`` also returns the
  volume's label map.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from napari_mrisynth.models.anatomy_generator import AnatomyFirst
from napari_mrisynth.models.conditions import CONDITION_NAMES

#: Upper end of the model-grid intensity range (normalise_intensity clips to [0, 1.5]).
INTENSITY_MAX = 1.5


def condition_maps(condition: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B, K) condition -> (B, K, *spatial) constant channels shaped like ``like``."""
    view = condition.to(like.dtype)[(...,) + (None,) * (like.ndim - 2)]
    return view.expand(-1, -1, *like.shape[2:])


def _levels(channels: Sequence[int], value: Any) -> list:
    return [value] * len(channels)


def latent_grid(shape: Sequence[int], levels: int) -> tuple[int, ...]:
    """The spatial shape after ``levels - 1`` halvings; each side must divide evenly."""
    factor = 2 ** (levels - 1)
    if any(int(s) % factor for s in shape):
        raise ValueError(f"grid {tuple(shape)} is not divisible by {factor} on every side")
    return tuple(int(s) // factor for s in shape)


class ConditionalVAE(nn.Module):
    """A conditional VAE on MONAI's AutoencoderKL encoder and decoder.

    With ``global_latent`` > 0 the latent is one vector per volume (linear layers between
    the encoder's latent grid and the vector, and back): decoding standard-normal samples
    then gives heads, whereas i.i.d. normal samples on a spatial latent grid lack the
    spatial correlations the decoder learned ("holes" in the prior).
    """

    family = "vae"

    def __init__(
        self,
        shape: Sequence[int],
        channels: Sequence[int] = (16, 32, 64),
        latent_channels: int = 4,
        num_res_blocks: int = 1,
        norm_num_groups: int = 8,
        condition_dim: int = len(CONDITION_NAMES),
        global_latent: int = 0,
        spatial_dims: int = 3,
        in_channels: int = 1,
    ) -> None:
        super().__init__()
        from monai.networks.nets.autoencoderkl import Decoder, Encoder

        self.shape = tuple(int(s) for s in shape)
        self.global_latent = int(global_latent)
        self.latent_channels = int(latent_channels)
        self.condition_dim = int(condition_dim)
        self.latent_shape = latent_grid(self.shape, len(channels))
        common = {
            "spatial_dims": spatial_dims,
            "channels": list(channels),
            "num_res_blocks": _levels(channels, num_res_blocks),
            "norm_num_groups": norm_num_groups,
            "norm_eps": 1e-6,
            "attention_levels": _levels(channels, False),
            "with_nonlocal_attn": False,
        }
        self.encoder = Encoder(
            in_channels=in_channels + condition_dim, out_channels=latent_channels, **common
        )
        self.quant_mu = nn.Conv3d(latent_channels, latent_channels, 1)
        self.quant_log_var = nn.Conv3d(latent_channels, latent_channels, 1)
        self.decoder = Decoder(
            in_channels=latent_channels + condition_dim, out_channels=in_channels, **common
        )
        if self.global_latent:
            cells = latent_channels * int(torch.tensor(self.latent_shape).prod())
            self.to_vector = nn.Linear(cells, 2 * self.global_latent)
            self.from_vector = nn.Linear(self.global_latent + condition_dim, cells)

    @property
    def noise_shape(self) -> tuple[int, ...]:
        if self.global_latent:
            return (self.global_latent,)
        return (self.latent_channels, *self.latent_shape)

    def encode(self, x: torch.Tensor, condition: torch.Tensor) -> tuple[torch.Tensor, ...]:
        h = self.encoder(torch.cat([x, condition_maps(condition, x)], dim=1))
        if self.global_latent:
            mu, log_var = self.to_vector(h.flatten(1)).chunk(2, dim=1)
        else:
            mu, log_var = self.quant_mu(h), self.quant_log_var(h)
        log_var = torch.clamp(log_var, -30.0, 20.0)
        return mu, torch.exp(log_var / 2)

    def decode(self, z: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        if self.global_latent:
            grid = self.from_vector(torch.cat([z, condition.to(z.dtype)], dim=1))
            z = grid.view(z.shape[0], self.latent_channels, *self.latent_shape)
        return self.decoder(torch.cat([z, condition_maps(condition, z)], dim=1))

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Reconstruction, latent mean and sigma (reparameterised sample in between)."""
        mu, sigma = self.encode(x, condition)
        z = mu + sigma * torch.randn_like(sigma)
        return self.decode(z, condition), mu, sigma

    @torch.no_grad()
    def generate(self, condition: torch.Tensor, noise: torch.Tensor, **_: Any) -> torch.Tensor:
        return torch.clamp(self.decode(noise, condition), 0.0, INTENSITY_MAX)


class ConditionalGAN(nn.Module):
    """A conditional GAN: AutoencoderKL-style decoder generator, PatchDiscriminator critic.

    The weights kept for generation are the exponential moving average of the generator's
    (``generator`` holds them after training; ``discriminator`` is kept for resuming).
    """

    family = "gan"

    def __init__(
        self,
        shape: Sequence[int],
        channels: Sequence[int] = (16, 32, 64, 64),
        noise_channels: int = 8,
        num_res_blocks: int = 1,
        norm_num_groups: int = 8,
        condition_dim: int = len(CONDITION_NAMES),
        discriminator_channels: int = 16,
        discriminator_layers: int = 3,
        spatial_dims: int = 3,
    ) -> None:
        super().__init__()
        from monai.networks.nets import PatchDiscriminator
        from monai.networks.nets.autoencoderkl import Decoder

        self.shape = tuple(int(s) for s in shape)
        self.noise_channels = int(noise_channels)
        self.condition_dim = int(condition_dim)
        self.latent_shape = latent_grid(self.shape, len(channels))
        self.generator = Decoder(
            spatial_dims=spatial_dims,
            channels=list(channels),
            in_channels=noise_channels + condition_dim,
            out_channels=1,
            num_res_blocks=_levels(channels, num_res_blocks),
            norm_num_groups=norm_num_groups,
            norm_eps=1e-6,
            attention_levels=_levels(channels, False),
            with_nonlocal_attn=False,
        )
        self.discriminator = PatchDiscriminator(
            spatial_dims=spatial_dims,
            channels=discriminator_channels,
            in_channels=1 + condition_dim,
            num_layers_d=discriminator_layers,
            norm="INSTANCE",
        )

    @property
    def noise_shape(self) -> tuple[int, ...]:
        return (self.noise_channels, *self.latent_shape)

    def synthesise(self, condition: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Generator output with gradients (training)."""
        out = self.generator(torch.cat([noise, condition_maps(condition, noise)], dim=1))
        return INTENSITY_MAX * torch.sigmoid(out)

    def critic(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """Patch logits: real is high."""
        return self.discriminator(torch.cat([x, condition_maps(condition, x)], dim=1))[-1]

    @torch.no_grad()
    def generate(self, condition: torch.Tensor, noise: torch.Tensor, **_: Any) -> torch.Tensor:
        return self.synthesise(condition, noise)


class LatentDiffusion(nn.Module):
    """Latent diffusion: AutoencoderKL + DiffusionModelUNet, DDIM sampling, CFG.

    ``scale_factor`` (a buffer, saved with the weights) scales the autoencoder's latents to
    unit standard deviation, as Rombach et al. and Pinaya et al. do; with
    ``latent_normalisation="channel"`` each latent channel is instead shifted to zero mean
    and scaled to unit standard deviation (``latent_shift``, ``latent_scale``), so that the
    diffusion model does not have to find the latents' offset from pure noise.
    """

    family = "ldm"

    def __init__(
        self,
        shape: Sequence[int],
        autoencoder_channels: Sequence[int] = (16, 32, 64),
        latent_channels: int = 3,
        autoencoder_res_blocks: int = 1,
        unet_channels: Sequence[int] = (32, 64),
        unet_attention: Sequence[bool] = (False, True),
        unet_res_blocks: int = 1,
        num_head_channels: int = 16,
        norm_num_groups: int = 8,
        condition_dim: int = len(CONDITION_NAMES),
        num_train_timesteps: int = 1000,
        schedule: str = "scaled_linear_beta",
        beta_start: float = 0.0015,
        beta_end: float = 0.0205,
        prediction_type: str = "epsilon",
        latent_normalisation: str = "global",
        spatial_dims: int = 3,
    ) -> None:
        super().__init__()
        from monai.networks.nets import AutoencoderKL, DiffusionModelUNet

        if latent_normalisation not in ("global", "channel"):
            raise ValueError(f"latent_normalisation {latent_normalisation!r}: global or channel")
        self.latent_normalisation = latent_normalisation

        self.shape = tuple(int(s) for s in shape)
        self.latent_channels = int(latent_channels)
        self.condition_dim = int(condition_dim)
        self.latent_shape = latent_grid(self.shape, len(autoencoder_channels))
        latent_grid(self.latent_shape, len(unet_channels))  # the UNet must divide it too
        self.autoencoder = AutoencoderKL(
            spatial_dims=spatial_dims,
            in_channels=1,
            out_channels=1,
            channels=list(autoencoder_channels),
            latent_channels=latent_channels,
            num_res_blocks=_levels(autoencoder_channels, autoencoder_res_blocks),
            attention_levels=_levels(autoencoder_channels, False),
            norm_num_groups=norm_num_groups,
            with_encoder_nonlocal_attn=False,
            with_decoder_nonlocal_attn=False,
        )
        self.unet = DiffusionModelUNet(
            spatial_dims=spatial_dims,
            in_channels=latent_channels + condition_dim,
            out_channels=latent_channels,
            channels=list(unet_channels),
            attention_levels=list(unet_attention),
            num_res_blocks=_levels(unet_channels, unet_res_blocks),
            norm_num_groups=norm_num_groups,
            num_head_channels=num_head_channels,
        )
        self.register_buffer("scale_factor", torch.tensor(1.0))
        if latent_normalisation == "channel":  # per-channel mean and scale (SD3's shift)
            self.register_buffer("latent_shift", torch.zeros(latent_channels))
            self.register_buffer("latent_scale", torch.ones(latent_channels))
        self.scheduler_args = {
            "num_train_timesteps": int(num_train_timesteps),
            "schedule": schedule,
            "beta_start": float(beta_start),
            "beta_end": float(beta_end),
            "prediction_type": prediction_type,
        }

    @property
    def noise_shape(self) -> tuple[int, ...]:
        return (self.latent_channels, *self.latent_shape)

    def scheduler(self, sampler: str = "ddim") -> Any:
        """A fresh MONAI scheduler with the training noise schedule."""
        from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

        if sampler == "ddim":
            return DDIMScheduler(**self.scheduler_args, clip_sample=False)
        if sampler == "ddpm":
            return DDPMScheduler(**self.scheduler_args, clip_sample=False)
        raise ValueError(f"sampler {sampler!r}: use ddim or ddpm")

    def _channel_view(self, values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return values.to(like.dtype).view(1, -1, *([1] * (like.ndim - 2)))

    def to_diffusion_space(self, mu: torch.Tensor) -> torch.Tensor:
        """Autoencoder latents -> the normalised latents the diffusion model works in."""
        if self.latent_normalisation == "channel":
            shift, scale = self.latent_shift, self.latent_scale
            return (mu - self._channel_view(shift, mu)) * self._channel_view(scale, mu)
        return mu * self.scale_factor

    def from_diffusion_space(self, z: torch.Tensor) -> torch.Tensor:
        if self.latent_normalisation == "channel":
            shift, scale = self.latent_shift, self.latent_scale
            return z / self._channel_view(scale, z) + self._channel_view(shift, z)
        return z / self.scale_factor

    @torch.no_grad()
    def fit_latent_normalisation(self, mu: torch.Tensor) -> dict[str, Any]:
        """Set the normalisation from the training volumes' latent means; returns it."""
        if self.latent_normalisation == "channel":
            dims = [d for d in range(mu.ndim) if d != 1]
            self.latent_shift.copy_(mu.mean(dim=dims))
            self.latent_scale.copy_(1.0 / mu.std(dim=dims).clamp_min(1e-6))
            return {
                "latent_shift": self.latent_shift.tolist(),
                "latent_scale": self.latent_scale.tolist(),
            }
        self.scale_factor.fill_(1.0 / float(mu.flatten().std()))
        return {"scale_factor": float(self.scale_factor)}

    @torch.no_grad()
    def encode_latents(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised latent means of images (the diffusion model's training data)."""
        mu, _ = self.autoencoder.encode(x)
        return self.to_diffusion_space(mu)

    def denoise(
        self, latents: torch.Tensor, timesteps: torch.Tensor, condition: torch.Tensor
    ) -> torch.Tensor:
        x = torch.cat([latents, condition_maps(condition, latents)], dim=1)
        return self.unet(x, timesteps)

    @torch.no_grad()
    def generate(
        self,
        condition: torch.Tensor,
        noise: torch.Tensor,
        *,
        steps: int = 50,
        guidance: float = 1.0,
        sampler: str = "ddim",
        progress: Callable[[int, int], None] | None = None,
        **_: Any,
    ) -> torch.Tensor:
        """DDIM (eta 0: deterministic given the noise) with classifier-free guidance."""
        scheduler = self.scheduler(sampler)
        scheduler.set_timesteps(num_inference_steps=int(steps), device=noise.device)
        latents = noise
        null = torch.zeros_like(condition)
        timesteps = list(scheduler.timesteps)
        for done, t in enumerate(timesteps, start=1):
            batch = torch.full((latents.shape[0],), int(t), device=latents.device, dtype=torch.long)
            if guidance == 1.0:
                eps = self.denoise(latents, batch, condition)
            else:
                both = self.denoise(
                    torch.cat([latents, latents]),
                    torch.cat([batch, batch]),
                    torch.cat([condition, null]),
                )
                cond, uncond = both.chunk(2)
                eps = uncond + guidance * (cond - uncond)
            latents, _ = scheduler.step(eps, int(t), latents)
            if progress is not None:
                progress(done, len(timesteps))
        image = self.autoencoder.decode(self.from_diffusion_space(latents))
        return torch.clamp(image, 0.0, INTENSITY_MAX)


#: Card architecture names -> classes.
GENERATORS = {
    cls.__name__: cls for cls in (ConditionalVAE, ConditionalGAN, LatentDiffusion, AnatomyFirst)
}
FAMILIES = {cls.family: cls for cls in GENERATORS.values()}
