"""Vector-quantised autoencoder (VQGAN, Esser et al. 2021; taming-transformers layout), f8 / f16.

encode(x in [-1, 1]) -> quantised latents z_q; encode_tokens(x) -> code indices [B, h*w], the tokens of
VQ-Diffusion; decode(z_q) / decode_tokens(indices, (h, w)). The codebook learns by the VQ-VAE codebook loss
(van den Oord et al. 2017, eq. 3) or by exponential moving averages (appendix A.1); usage counts are kept.
"""

from __future__ import annotations

import dataclasses
import math
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

__all__ = ["VQConfig", "VectorQuantizer", "VQAutoencoder"]


@dataclasses.dataclass
class VQConfig(AEConfig):
    """VQGAN f16 defaults (vqgan_imagenet_f16_16384 without the codebook size): 128 * (1, 1, 2, 2, 4)."""

    type_name = "autoencoder_vq"

    in_channels: int = 3
    out_channels: int = 3
    base_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    z_channels: int = 256
    embed_dim: int = 256  # codebook vector size (quant_conv: z_channels -> embed_dim)
    n_embed: int = 1024
    beta: float = 0.25  # commitment weight
    ema: bool = False
    ema_decay: float = 0.99
    norm_groups: int = 32
    mid_attention: bool = True
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if any(c % self.norm_groups for c in self.block_out_channels):
            raise ValueError(f"channels {self.block_out_channels} must be divisible by norm_groups={self.norm_groups}")
        if self.n_embed < 2:
            raise ValueError(f"n_embed (codebook size) must be >= 2, got {self.n_embed}")
        if not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in (0, 1), got {self.ema_decay}")

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)


class VectorQuantizer(nn.Module):
    """Nearest-codebook-vector quantisation with a straight-through gradient.

    ema=False: loss = |sg(z) - e|^2 + beta |z - sg(e)|^2. ema=True: the codebook follows EMA cluster means
    (Laplace-smoothed counts) and only the commitment term is a loss. Counts of codes used in training mode
    accumulate in `usage` (see `codebook_usage`).
    """

    def __init__(self, n_embed: int, dim: int, beta: float = 0.25, ema: bool = False, decay: float = 0.99, eps: float = 1e-5) -> None:
        super().__init__()
        self.n_embed, self.dim, self.beta, self.ema, self.decay, self.eps = n_embed, dim, beta, ema, decay, eps
        self.embedding = nn.Embedding(n_embed, dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / n_embed, 1.0 / n_embed)
        if ema:
            self.embedding.weight.requires_grad_(False)
            self.register_buffer("ema_count", torch.zeros(n_embed))
            self.register_buffer("ema_sum", self.embedding.weight.detach().clone())
        self.register_buffer("usage", torch.zeros(n_embed, dtype=torch.float64), persistent=False)

    def indices(self, z: Tensor) -> Tensor:
        """Nearest code per position: z [B, dim, h, w] -> [B, h, w]."""
        flat = z.permute(0, 2, 3, 1).reshape(-1, self.dim)
        idx = torch.cdist(flat, self.embedding.weight).argmin(dim=1)
        return idx.reshape(z.shape[0], z.shape[2], z.shape[3])

    def lookup(self, idx: Tensor) -> Tensor:
        """Codebook vectors of indices [B, h, w] -> [B, dim, h, w]."""
        if idx.numel() and (idx.min() < 0 or idx.max() >= self.n_embed):
            raise ValueError(f"code indices must lie in [0, {self.n_embed - 1}]")
        return self.embedding(idx).permute(0, 3, 1, 2)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(z_q straight-through, per-sample loss [B], indices [B, h, w])."""
        idx = self.indices(z)
        if self.training:
            counts = torch.bincount(idx.flatten(), minlength=self.n_embed)
            self.usage += counts.to(self.usage)
            if self.ema:
                self._ema_update(z, idx, counts)
        zq = self.lookup(idx)
        commit = ((zq.detach() - z) ** 2).flatten(1).mean(dim=1)
        loss = self.beta * commit
        if not self.ema:
            loss = loss + ((zq - z.detach()) ** 2).flatten(1).mean(dim=1)
        return z + (zq - z).detach(), loss, idx

    @torch.no_grad()
    def _ema_update(self, z: Tensor, idx: Tensor, counts: Tensor) -> None:
        flat = z.detach().permute(0, 2, 3, 1).reshape(-1, self.dim).to(self.ema_sum.dtype)
        sums = torch.zeros_like(self.ema_sum).index_add_(0, idx.flatten(), flat)
        self.ema_count.mul_(self.decay).add_(counts.to(self.ema_count), alpha=1 - self.decay)
        self.ema_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        n = self.ema_count.sum()
        smoothed = (self.ema_count + self.eps) / (n + self.n_embed * self.eps) * n  # never divide by zero
        self.embedding.weight.copy_(self.ema_sum / smoothed[:, None])

    def codebook_usage(self) -> dict[str, float]:
        """Statistics of the codes chosen in training mode since the last reset: used count/fraction, perplexity."""
        total = float(self.usage.sum())
        if total == 0:
            return {"used": 0, "used_fraction": 0.0, "perplexity": 0.0, "total": 0}
        p = self.usage / total
        entropy = -(p[p > 0] * p[p > 0].log()).sum()
        used = int((self.usage > 0).sum())
        return {"used": used, "used_fraction": used / self.n_embed, "perplexity": math.exp(float(entropy)), "total": int(total)}

    def reset_usage(self) -> None:
        self.usage.zero_()


class VQAutoencoder(PretrainedMixin, nn.Module):
    """Encoder -> quant_conv -> VectorQuantizer -> post_quant_conv -> decoder."""

    config_class = VQConfig

    def __init__(self, config: VQConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or VQConfig()
        ch = cfg.block_out_channels
        self.encoder = Encoder(cfg.in_channels, cfg.z_channels, ch, cfg.num_res_blocks, cfg.norm_groups, cfg.dropout, cfg.mid_attention)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.embed_dim, 1)
        self.quantize = VectorQuantizer(cfg.n_embed, cfg.embed_dim, cfg.beta, cfg.ema, cfg.ema_decay)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)
        self.decoder = Decoder(cfg.z_channels, cfg.out_channels, ch, cfg.num_res_blocks, cfg.norm_groups, cfg.dropout, cfg.mid_attention)

    def encode_pre_quant(self, x: Tensor) -> Tensor:
        """Continuous latents before quantisation [B, embed_dim, h, w] (what diffusers' VQModel.encode returns)."""
        f, c = self.config.downsample_factor, self.config.in_channels
        if x.ndim != 4 or x.shape[1] != c or x.shape[2] % f or x.shape[3] % f:
            raise ValueError(f"expected images [B, {c}, H, W] with H, W divisible by {f}, got {tuple(x.shape)}")
        return self.quant_conv(self.encoder(x))

    def encode(self, x: Tensor) -> Tensor:
        """Quantised latents z_q [B, embed_dim, h, w] of images in [-1, 1]."""
        return self.quantize(self.encode_pre_quant(x))[0]

    def encode_tokens(self, x: Tensor) -> Tensor:
        """Code indices [B, h*w] (row-major), the discrete diffusion's data."""
        return self.quantize.indices(self.encode_pre_quant(x)).flatten(1)

    def decode(self, z_q: Tensor) -> Tensor:
        """Quantised latents -> images (not clamped). Continuous latents are decoded as given, not snapped."""
        if z_q.ndim != 4 or z_q.shape[1] != self.config.embed_dim:
            raise ValueError(f"expected latents [B, {self.config.embed_dim}, h, w], got {tuple(z_q.shape)}")
        return self.decoder(self.post_quant_conv(z_q))

    def decode_tokens(self, tokens: Tensor, grid: tuple[int, int]) -> Tensor:
        """Code indices [B, h*w] (or [B, h, w]) -> images."""
        h, w = grid
        if tokens.shape[-1] * (tokens.shape[-2] if tokens.ndim == 3 else 1) != h * w:
            raise ValueError(f"{tuple(tokens.shape)} tokens do not fill a {h}x{w} grid")
        return self.decode(self.quantize.lookup(tokens.reshape(tokens.shape[0], h, w)))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(reconstruction, per-sample codebook loss [B], indices [B, h, w])."""
        zq, loss, idx = self.quantize(self.encode_pre_quant(x))
        return self.decode(zq), loss, idx

    def last_layer(self) -> Tensor:
        return self.decoder.conv_out.weight

    def training_losses(self, x: Tensor, loss_fn: Any, step: int = 0) -> dict[str, Tensor]:
        """Generator-side per-sample losses (see AutoencoderLoss); `recon` is included for the discriminator step."""
        recon, qloss, _ = self(x)
        out = loss_fn.generator_losses(x, recon, qloss, step, self.last_layer())
        out["recon"] = recon
        return out

    # --- foreign formats ---

    @classmethod
    def from_diffusers(cls, directory: str | Path, **overrides: Any) -> "VQAutoencoder":
        """Load a diffusers VQModel folder; overrides set training-only fields (beta, ema, ema_decay)."""
        cfg, state = read_diffusers_folder(directory, "VQModel")
        if cfg.get("norm_type", "group") != "group":
            raise ValueError(f"VQModel norm_type {cfg['norm_type']!r} (spatial norm, ITHQ) is not supported; only 'group'")
        ours = config_from_diffusers(cfg, "VQModel")
        z = cfg.get("latent_channels", 3)
        ours.update(z_channels=z, embed_dim=cfg.get("vq_embed_dim") or z, n_embed=cfg.get("num_vq_embeddings", 256))
        ours.update(overrides)
        model = cls(VQConfig.from_dict(ours))
        if model.config.ema:  # EMA statistics are not in diffusers files: start them from the codebook
            state = {**state, "quantize.ema_count": torch.zeros(model.config.n_embed),
                     "quantize.ema_sum": state["quantize.embedding.weight"].clone()}
        load_state_strict(model, state, str(Path(directory) / "diffusion_pytorch_model.safetensors"))
        return model

    @classmethod
    def from_ldm(cls, source: str | Path | dict[str, Tensor], config: VQConfig, prefix: str = "") -> "VQAutoencoder":
        """Load a taming-transformers VQModel state dict (e.g. vqgan_imagenet_f16_16384 last.ckpt) for `config`."""
        from versadiff.convert.ldm_vae import ldm_to_versadiff, read_state_dict

        model = cls(config)
        state = ldm_to_versadiff(read_state_dict(source, prefix), len(config.channel_mult))
        if config.ema:
            state.setdefault("quantize.ema_count", torch.zeros(config.n_embed))
            state.setdefault("quantize.ema_sum", state.get("quantize.embedding.weight", torch.zeros(0)).clone())
        load_state_strict(model, state, "taming state dict")
        return model
