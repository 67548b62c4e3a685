"""Training a KL or VQ autoencoder (the first stage of latent and VQ-Diffusion models)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from versadiff.config import ConfigError, DiffusionConfig, RunConfig
from versadiff.tasks.base import TASKS, SampleGrid, Task

__all__ = ["AutoencoderTask"]


@TASKS.register(name="autoencoder")
class AutoencoderTask(Task):
    """A KL or VQ autoencoder: pixel reconstruction (L1 / L2, summed per image, as LDM) + weighted KL / codebook loss.

    The discriminator of AutoencoderLoss needs a second optimizer, which the trainer does not run: ae_loss
    disc_weight must stay 0. The sample grid shows fixed training images (odd rows) over their reconstructions.
    """

    name = "autoencoder"
    LOSS_KEYS = ("rec", "reg_weight")

    @classmethod
    def check_config(cls, cfg: RunConfig) -> None:
        if cfg.discrete:
            raise ConfigError(f"config key 'discrete' applies to task vq_diffusion, this run has task {cls.name!r}")
        if cfg.sample.truncation != 1.0:
            raise ConfigError(f"config key 'sample.truncation' applies to task vq_diffusion, this run has task {cls.name!r}")
        if cfg.diffusion != DiffusionConfig():
            raise ConfigError("config section 'diffusion' applies to task gaussian; task 'autoencoder' does not read it: "
                              "remove it")
        if cfg.autoencoder is not None:
            raise ConfigError("task autoencoder trains the autoencoder described by 'model': remove the 'autoencoder' section")
        if cfg.flows or cfg.encoders or cfg.codecs:
            raise ConfigError("task autoencoder has no flows, encoders or codecs: remove those sections")

    @classmethod
    def build_network(cls, cfg: RunConfig) -> nn.Module:
        from versadiff.autoencoders.loading import build_autoencoder

        return build_autoencoder(cfg.model)

    @classmethod
    def pipeline(cls, net: nn.Module, cfg: RunConfig, info: dict[str, Any], source: str = "",
                 device: str | torch.device = "cpu") -> Any:
        raise ValueError(f"{source or 'this file'} is an autoencoder, which has no sampler; train a diffusion model on "
                         "it (e.g. versadiff train shapes_vqdiffusion --set autoencoder.path=RUN) and sample that")

    def __init__(self, cfg: RunConfig, dataset: Dataset, device: torch.device, seed: int) -> None:
        super().__init__(cfg, dataset, device, seed)
        from versadiff.autoencoders import AutoencoderLoss, VQAutoencoder

        self.net = self.build_network(cfg)
        self.is_vq = isinstance(self.net, VQAutoencoder)
        unknown = sorted(set(cfg.ae_loss) - set(self.LOSS_KEYS))
        if unknown:
            hint = " (the trainer runs no discriminator)" if unknown[0].startswith("disc") else ""
            raise ValueError(f"unknown config key 'ae_loss.{unknown[0]}'{hint}; valid keys under 'ae_loss': "
                             f"{', '.join(self.LOSS_KEYS)}")
        defaults = {"rec": "l1", "reg_weight": 1.0 if self.is_vq else 1.0e-6}
        self.loss_fn = AutoencoderLoss(**{**defaults, **cfg.ae_loss}, in_channels=self.net.config.in_channels)
        f = self.net.config.downsample_factor
        shape = self.image_shape
        if shape[0] != self.net.config.in_channels or shape[1] % f or shape[2] % f:
            raise ValueError(f"the data gives images {tuple(shape)}; the autoencoder takes "
                             f"{self.net.config.in_channels} channels with sides divisible by {f}: set "
                             f"model.in_channels/out_channels={shape[0]} or change model.channel_mult")
        self._rec_sum, self._rec_n = 0.0, 0

    def losses(self, model: nn.Module, batch: dict[str, Any], generator: torch.Generator) -> Tensor:
        images = self.images(batch)
        if self.is_vq:
            recon, reg, _ = model(images)
        else:
            recon, posterior = model(images, generator)
            reg = posterior.kl()
        out = self.loss_fn.generator_losses(images, recon.float(), reg.float())
        self._rec_sum += float(out["rec"].sum()) / images[0].numel()
        self._rec_n += images.shape[0]
        return out["loss"]

    def log_stats(self) -> dict[str, float]:
        stats = {f"rec_{self.loss_fn.rec}_per_pixel": self._rec_sum / max(self._rec_n, 1)}
        self._rec_sum, self._rec_n = 0.0, 0
        if self.is_vq:
            q = self.net.quantize
            usage = q.codebook_usage()
            stats.update(codebook_used=usage["used"], codebook_perplexity=usage["perplexity"])
            q.reset_usage()
        return stats

    def loaded(self, ema_net: nn.Module, info: dict[str, Any], source: str) -> nn.Module:
        return ema_net.eval()

    @torch.no_grad()
    def sample_grid(self, ema_net: nn.Module, info: dict[str, Any], source: str) -> SampleGrid:
        k = min(len(self.dataset), max(1, self.cfg.sample.n // 2))
        x = torch.stack([self.dataset[i]["image"] for i in range(k)]).float().to(self.device)
        ae = ema_net.to(self.device).eval()
        recon = ae(x)[0] if self.is_vq else ae(x, sample=False)[0]
        return SampleGrid(torch.cat([x.cpu(), recon.float().clamp(-1, 1).cpu()]), k)

    def info(self) -> dict[str, Any]:
        return {**super().info(), "autoencoder_kind": "vq" if self.is_vq else "kl"}
