"""KL-regularised autoencoder (LDM kl-f8 = Stable Diffusion's VAE; Rombach et al. 2022, appendix G).

encode(x in [-1, 1]) -> DiagonalGaussian over unscaled latents; `encode_latents` gives the diffusion-space
latents (z - shift) * scale_factor (0.18215 for SD-1/VD, reference versatile_diffusion.md 2.1), `decode_latents`
inverts it. Loads our own folders, diffusers AutoencoderKL folders and original latent-diffusion state dicts.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from versadiff.autoencoders.blocks import (
    AEConfig,
    Decoder,
    Encoder,
    PretrainedMixin,
    config_from_diffusers,
    load_state_strict,
    read_diffusers_folder,
)

__all__ = ["KLConfig", "DiagonalGaussian", "AutoencoderKL"]


@dataclasses.dataclass
class KLConfig(AEConfig):
    """kl-f8 defaults: 128 * (1, 2, 4, 4) channels, 2 resnets per level, 4 latent channels, f = 8."""

    type_name = "autoencoder_kl"

    in_channels: int = 3
    out_channels: int = 3
    base_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    z_channels: int = 4
    norm_groups: int = 32
    mid_attention: bool = True
    dropout: float = 0.0
    scale_factor: float = 0.18215
    shift_factor: float = 0.0
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True

    def __post_init__(self) -> None:
        if any(c % self.norm_groups for c in self.block_out_channels):
            raise ValueError(f"channels {self.block_out_channels} must be divisible by norm_groups={self.norm_groups}")
        if self.scale_factor <= 0:
            raise ValueError(f"scale_factor must be > 0, got {self.scale_factor}")

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)


class DiagonalGaussian:
    """The encoder's posterior N(mean, exp(logvar)) per latent element; logvar clamped to [-30, 20] as LDM."""

    def __init__(self, moments: Tensor) -> None:
        self.mean, logvar = moments.chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        gdev = generator.device if generator is not None else self.mean.device
        eps = torch.randn(self.mean.shape, generator=generator, device=gdev, dtype=self.mean.dtype)
        return self.mean + self.std * eps.to(self.mean.device)

    def mode(self) -> Tensor:
        return self.mean

    def kl(self) -> Tensor:
        """KL(q || N(0, I)) per sample, summed over latent elements."""
        return 0.5 * (self.mean**2 + self.logvar.exp() - 1.0 - self.logvar).flatten(1).sum(dim=1)


class AutoencoderKL(PretrainedMixin, nn.Module):
    """Encoder -> quant_conv -> Gaussian posterior; post_quant_conv -> decoder."""

    config_class = KLConfig

    def __init__(self, config: KLConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or KLConfig()
        ch, z = cfg.block_out_channels, cfg.z_channels
        self.encoder = Encoder(cfg.in_channels, 2 * z, ch, cfg.num_res_blocks, cfg.norm_groups, cfg.dropout, cfg.mid_attention)
        self.decoder = Decoder(z, cfg.out_channels, ch, cfg.num_res_blocks, cfg.norm_groups, cfg.dropout, cfg.mid_attention)
        self.quant_conv = nn.Conv2d(2 * z, 2 * z, 1) if cfg.use_quant_conv else None
        self.post_quant_conv = nn.Conv2d(z, z, 1) if cfg.use_post_quant_conv else None

    def _check_image(self, x: Tensor) -> None:
        f, c = self.config.downsample_factor, self.config.in_channels
        if x.ndim != 4 or x.shape[1] != c or x.shape[2] % f or x.shape[3] % f:
            raise ValueError(f"expected images [B, {c}, H, W] with H, W divisible by {f}, got {tuple(x.shape)}")

    def encode(self, x: Tensor) -> DiagonalGaussian:
        """Posterior over unscaled latents of images x in [-1, 1]."""
        self._check_image(x)
        h = self.encoder(x)
        return DiagonalGaussian(self.quant_conv(h) if self.quant_conv is not None else h)

    def decode(self, z: Tensor) -> Tensor:
        """Unscaled latents [B, z, h, w] -> images (roughly in [-1, 1]; not clamped)."""
        if z.ndim != 4 or z.shape[1] != self.config.z_channels:
            raise ValueError(f"expected latents [B, {self.config.z_channels}, h, w], got {tuple(z.shape)}")
        return self.decoder(self.post_quant_conv(z) if self.post_quant_conv is not None else z)

    def encode_latents(self, x: Tensor, generator: torch.Generator | None = None, sample: bool = True) -> Tensor:
        """Diffusion-space latents (z - shift) * scale_factor; sample=False uses the posterior mean."""
        post = self.encode(x)
        z = post.sample(generator) if sample else post.mode()
        return (z - self.config.shift_factor) * self.config.scale_factor

    def decode_latents(self, z: Tensor) -> Tensor:
        """Inverse of encode_latents's scaling, then decode."""
        return self.decode(z / self.config.scale_factor + self.config.shift_factor)

    def forward(self, x: Tensor, generator: torch.Generator | None = None, sample: bool = True) -> tuple[Tensor, DiagonalGaussian]:
        post = self.encode(x)
        return self.decode(post.sample(generator) if sample else post.mode()), post

    def last_layer(self) -> Tensor:
        """The decoder's output weight (for the adaptive discriminator weight)."""
        return self.decoder.conv_out.weight

    def training_losses(self, x: Tensor, loss_fn: Any, step: int = 0, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Generator-side per-sample losses (see AutoencoderLoss); `recon` is included for the discriminator step."""
        recon, post = self(x, generator)
        out = loss_fn.generator_losses(x, recon, post.kl(), step, self.last_layer())
        out["recon"] = recon
        return out

    # --- foreign formats ---

    @classmethod
    def from_diffusers(cls, directory: str | Path) -> "AutoencoderKL":
        """Load a diffusers AutoencoderKL folder (config.json + diffusion_pytorch_model.safetensors)."""
        cfg, state = read_diffusers_folder(directory, "AutoencoderKL")
        if cfg.get("latents_mean") is not None:
            raise ValueError("per-channel latents_mean/latents_std VAEs are not supported; use scale_factor/shift_factor models")
        ours = config_from_diffusers(cfg, "AutoencoderKL")
        ours.update(
            z_channels=cfg.get("latent_channels", 4),
            scale_factor=cfg.get("scaling_factor", 0.18215),
            shift_factor=cfg.get("shift_factor") or 0.0,
            use_quant_conv=cfg.get("use_quant_conv", True),
            use_post_quant_conv=cfg.get("use_post_quant_conv", True),
        )
        model = cls(KLConfig.from_dict(ours))
        load_state_strict(model, state, str(Path(directory) / "diffusion_pytorch_model.safetensors"))
        return model

    @classmethod
    def from_ldm(
        cls, source: str | Path | dict[str, Tensor], config: KLConfig | None = None, prefix: str = ""
    ) -> "AutoencoderKL":
        """Load an original latent-diffusion AutoencoderKL state dict (e.g. kl-f8.pth) or a file holding one.

        prefix: key prefix to strip, e.g. "first_stage_model." for a whole LDM/SD checkpoint, "autokl." for VD.
        Keys under "loss." (the training discriminator / LPIPS) are not part of the autoencoder and are dropped.
        """
        from versadiff.convert.ldm_vae import ldm_to_versadiff, read_state_dict

        model = cls(config or KLConfig())
        state = read_state_dict(source, prefix)
        load_state_strict(model, ldm_to_versadiff(state, len(model.config.channel_mult)), f"LDM state dict {_name(source)}")
        return model


def _name(source: Any) -> str:
    return repr(str(source)) if isinstance(source, (str, Path)) else "(in memory)"
