"""Lightning modules for the three generator families (needs the ``train`` extra).

- :class:`VAEModule`: L1 reconstruction + KL to the prior (the conditional VAE, or stage 1
  of latent diffusion, where the KL weight is tiny as in Rombach et al.).
- :class:`GANModule`: hinge loss, DiffAugment on everything the critic sees, lazy R1
  penalty on real volumes, and an exponential moving average of the generator.
- :class:`DiffusionModule`: epsilon-prediction on (precomputed) scaled latents, with the
  condition dropped to the null vector at random for classifier-free guidance, and an
  exponential moving average of the UNet (the weights that sample).
"""

from __future__ import annotations

import copy
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F

from napari_mrisynth.models.networks import build_network
from napari_mrisynth.training.augment import diff_augment


def kl_divergence(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma) || N(0, 1)), mean over latent elements."""
    var = sigma.pow(2)
    return 0.5 * torch.mean(mu.pow(2) + var - torch.log(var.clamp_min(1e-12)) - 1.0)


class VAEModule(pl.LightningModule):
    """Train a :class:`ConditionalVAE`, or a :class:`LatentDiffusion`'s autoencoder."""

    def __init__(
        self,
        architecture: dict[str, Any],
        *,
        lr: float = 1e-3,
        kl_weight: float = 0.02,
        network: torch.nn.Module | None = None,
        condition_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        # condition dropout is not a logged hyperparameter: the LDM's autoencoder stage shares
        # its MLflow run with the diffusion stage, whose own condition_dropout is logged
        self.save_hyperparameters(ignore=["network", "condition_dropout"])
        self.condition_dropout = float(condition_dropout)
        self.network = network if network is not None else build_network(architecture)
        self.autoencoder_only = hasattr(self.network, "autoencoder")

    def _losses(self, x: torch.Tensor, c: torch.Tensor, sample: bool) -> dict[str, torch.Tensor]:
        if self.autoencoder_only:
            ae = self.network.autoencoder
            mu, sigma = ae.encode(x)
            z = ae.sampling(mu, sigma) if sample else mu
            recon = ae.decode(z)
        elif sample:
            recon, mu, sigma = self.network(x, c)
        else:
            mu, sigma = self.network.encode(x, c)
            recon = self.network.decode(mu, c)
        l1 = F.l1_loss(recon, x)
        kl = kl_divergence(mu, sigma)
        return {"l1": l1, "kl": kl, "loss": l1 + self.hparams.kl_weight * kl}

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, c = batch
        if self.condition_dropout > 0:  # the null condition, for classifier-free guidance
            keep = torch.rand(c.shape[0], 1, device=c.device) >= self.condition_dropout
            c = c * keep.to(c.dtype)
        losses = self._losses(x, c, sample=True)
        self.log_dict(
            {f"train/{k}": v for k, v in losses.items()},
            on_step=False,
            on_epoch=True,
            batch_size=batch[0].shape[0],
        )
        return losses["loss"]

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        losses = self._losses(*batch, sample=False)
        self.log_dict(
            {f"val/{k}": v for k, v in losses.items()}, on_epoch=True, batch_size=batch[0].shape[0]
        )

    def configure_optimizers(self) -> Any:
        params = (self.network.autoencoder if self.autoencoder_only else self.network).parameters()
        return torch.optim.Adam(params, lr=self.hparams.lr)


class GANModule(pl.LightningModule):
    """Train a :class:`ConditionalGAN` (manual optimisation: one critic, one generator step)."""

    def __init__(
        self,
        architecture: dict[str, Any],
        *,
        lr: float = 2e-4,
        r1_gamma: float = 1.0,
        r1_every: int = 4,
        ema_decay: float = 0.995,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.network = build_network(architecture)
        self.ema = copy.deepcopy(self.network.generator).requires_grad_(False)

    def training_step(self, batch: Any, batch_idx: int) -> None:
        x, c = batch
        net = self.network
        opt_g, opt_d = self.optimizers()
        noise = torch.randn(x.shape[0], *net.noise_shape, device=x.device)
        fake = net.synthesise(c, noise)

        real_logits = net.critic(diff_augment(x), c)
        fake_logits = net.critic(diff_augment(fake.detach()), c)
        d_loss = F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()
        r1 = torch.zeros((), device=x.device)
        # Lightning counts both optimisers' steps: two per batch under manual optimisation
        iteration = self.global_step // 2
        if self.hparams.r1_gamma > 0 and iteration % self.hparams.r1_every == 0:
            real = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(net.critic(real, c).sum(), real, create_graph=True)
            r1 = grad.pow(2).flatten(1).sum(1).mean()
            d_loss = d_loss + 0.5 * self.hparams.r1_gamma * self.hparams.r1_every * r1
        opt_d.zero_grad(set_to_none=True)
        self.manual_backward(d_loss)
        opt_d.step()

        g_loss = -net.critic(diff_augment(fake), c).mean()
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(g_loss)
        opt_g.step()
        self._update_ema()
        self.log_dict(
            {
                "train/d_loss": d_loss.detach(),
                "train/g_loss": g_loss.detach(),
                "train/r1": r1.detach(),
                "train/real_score": real_logits.detach().mean(),
                "train/fake_score": fake_logits.detach().mean(),
            },
            on_step=False,
            on_epoch=True,
            batch_size=x.shape[0],
        )

    @torch.no_grad()
    def _update_ema(self) -> None:
        decay = self.hparams.ema_decay
        for ema, live in zip(
            self.ema.parameters(), self.network.generator.parameters(), strict=True
        ):
            ema.lerp_(live, 1.0 - decay)
        for ema, live in zip(self.ema.buffers(), self.network.generator.buffers(), strict=True):
            ema.copy_(live)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, c = batch
        noise = torch.randn(x.shape[0], *self.network.noise_shape, device=x.device)
        logits = self.network.critic(x, c)
        self.log("val/real_score", logits.mean(), on_epoch=True, batch_size=x.shape[0])
        generated = self.ema_generate(c, noise)
        self.log(
            "val/fake_score",
            self.network.critic(generated, c).mean(),
            on_epoch=True,
            batch_size=x.shape[0],
        )
        self.log(
            "val/l1_mean_image",
            F.l1_loss(generated.mean(0), x.mean(0)),
            on_epoch=True,
            batch_size=x.shape[0],
        )

    def ema_generate(self, c: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        from napari_mrisynth.models.generators import INTENSITY_MAX, condition_maps

        out = self.ema(torch.cat([noise, condition_maps(c, noise)], dim=1))
        return INTENSITY_MAX * torch.sigmoid(out)

    def generation_state(self) -> dict[str, torch.Tensor]:
        """The network's weights with the averaged generator in place of the live one."""
        state = {k: v.detach().cpu() for k, v in self.network.state_dict().items()}
        for k, v in self.ema.state_dict().items():
            state[f"generator.{k}"] = v.detach().cpu()
        return state

    def configure_optimizers(self) -> Any:
        lr = self.hparams.lr
        opt_g = torch.optim.Adam(self.network.generator.parameters(), lr=lr, betas=(0.5, 0.99))
        opt_d = torch.optim.Adam(self.network.discriminator.parameters(), lr=lr, betas=(0.5, 0.99))
        return [opt_g, opt_d]


class DiffusionModule(pl.LightningModule):
    """Train a :class:`LatentDiffusion`'s UNet on scaled latents (autoencoder frozen)."""

    def __init__(
        self,
        network: torch.nn.Module,
        *,
        diffusion_lr: float = 2.5e-4,
        condition_dropout: float = 0.15,
        ema_decay: float = 0.999,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["network"])
        self.network = network
        self.network.autoencoder.requires_grad_(False)
        self.scheduler = network.scheduler("ddpm")
        self.ema = copy.deepcopy(network.unet).requires_grad_(False)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # warm-up: early steps average over fewer steps (Karras et al. / diffusers' EMA)
        step = self.global_step
        decay = min(self.hparams.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for ema, live in zip(
                self.ema.parameters(), self.network.unet.parameters(), strict=True
            ):
                ema.lerp_(live, 1.0 - decay)

    def generation_state(self) -> dict[str, torch.Tensor]:
        """The network's weights with the averaged UNet in place of the live one."""
        state = {k: v.detach().cpu() for k, v in self.network.state_dict().items()}
        for k, v in self.ema.state_dict().items():
            state[f"unet.{k}"] = v.detach().cpu()
        return state

    def _loss(self, latents: torch.Tensor, c: torch.Tensor, drop: bool) -> torch.Tensor:
        noise = torch.randn_like(latents)
        t = torch.randint(
            0, self.scheduler.num_train_timesteps, (latents.shape[0],), device=latents.device
        )
        noisy = self.scheduler.add_noise(original_samples=latents, noise=noise, timesteps=t)
        if drop:
            keep = torch.rand(c.shape[0], 1, device=c.device) >= self.hparams.condition_dropout
            c = c * keep
        target = noise
        if self.scheduler.prediction_type == "v_prediction":
            target = self.scheduler.get_velocity(latents, noise, t)
        return F.mse_loss(self.network.denoise(noisy, t, c), target)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = self._loss(*batch, drop=True)
        self.log(
            "train/diffusion_loss", loss, on_step=False, on_epoch=True, batch_size=batch[0].shape[0]
        )
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log(
            "val/diffusion_loss",
            self._loss(*batch, drop=False),
            on_epoch=True,
            batch_size=batch[0].shape[0],
        )

    def configure_optimizers(self) -> Any:
        return torch.optim.AdamW(self.network.unet.parameters(), lr=self.hparams.diffusion_lr)
