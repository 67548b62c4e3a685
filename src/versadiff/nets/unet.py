"""ADM / VDPM-style UNet for pixel or latent diffusion.

Layout (matches tqch/v-diffusion-torch `models/unet.py`, reference samplers_schedules.md §1.6):
  in_conv 3x3
  encoder: per level `num_res_blocks` units, then (except at the last level) one resampling unit
  middle:  ResBlock - Attention - ResBlock
  decoder: per level `num_res_blocks + 1` units fed with concatenated encoder skips, then
           (except at level 0) one resampling unit
  out:     GroupNorm - SiLU - zero-init conv 3x3
A "unit" is a ResBlock followed, at attention levels, by self-attention (and cross-attention
to context tokens when `context_dim` is set). A level is an attention level when its resolution
(image_size / 2^level) is in `attention_resolutions`. As in VDPM (needed to match its 60.8M / 301M
counts), the resampling ResBlock of an attention level carries attention too, so that attention runs
at the resampled resolution (e.g. 8x8 after the 16x16 level's downsample, and 32x32 after its
upsample); with `resblock_resample=False` plain (conv) resamplers are used and carry none.
Inputs of other sizes divisible by 2^(levels-1) also run; attention stays on the configured levels.

Conditioning is added to the time embedding:
  num_classes=K: Embedding(K+1, emb), row K is the learned null class (label -1 or None).
     (Equivalent to VDPM's Linear(K, emb) on a zero-for-null one-hot: same K+1 vectors.)
  num_tags=K: multi-hot FloatTensor [B, K] -> y / sqrt(#active) -> Linear(K, emb) (VDPM CelebA);
     all-zero rows are the null condition (only the bias is added).
  context_dim=D: context [B, L, D] is attended to; an all-zero context is projected like any other
     tokens (identical keys -> uniform attention -> a constant, learned "no context" output).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from versadiff.nets.layers import (
    CheckpointMixin,
    MultiHeadAttention,
    NetConfig,
    check_input,
    class_indices,
    timestep_embedding,
)

__all__ = ["UNetConfig", "UNet"]


@dataclasses.dataclass
class UNetConfig(NetConfig):
    """Hyper-parameters of `UNet` (all JSON-friendly)."""

    type_name = "unet"

    image_size: int = 32
    in_channels: int = 3
    out_channels: int | None = None  # None: same as in_channels; 2*C for the "both" prediction
    base_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (16,)
    num_heads: int = 1
    head_channels: int | None = None  # when set, overrides num_heads (heads = channels // head_channels)
    dropout: float = 0.0
    scale_shift_norm: bool = True  # FiLM: GN(h)*(1+scale)+shift; False: additive emb before GN
    resblock_resample: bool = True  # BigGAN-style ResBlock up/down; False: stride-2 conv / nearest+conv
    emb_channels: int | None = None  # None: 4 * base_channels
    num_classes: int = 0
    num_tags: int = 0
    context_dim: int | None = None
    norm_groups: int = 32
    norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        self.channel_mult = tuple(self.channel_mult)
        self.attention_resolutions = tuple(self.attention_resolutions)
        if self.num_classes and self.num_tags:
            raise ValueError("UNetConfig: set num_classes (single labels) or num_tags (multi-hot), not both")
        if not self.channel_mult:
            raise ValueError("UNetConfig: channel_mult must list at least one level")
        factor = 2 ** (len(self.channel_mult) - 1)
        if self.image_size % factor:
            raise ValueError(
                f"UNetConfig: image_size {self.image_size} is not divisible by 2^(levels-1)={factor}; "
                "use fewer channel_mult levels"
            )
        for m in self.channel_mult:
            if (self.base_channels * m) % self.norm_groups:
                raise ValueError(
                    f"UNetConfig: width {self.base_channels * m} is not divisible by norm_groups={self.norm_groups}"
                )
        resolutions = {self.image_size >> i for i in range(len(self.channel_mult))}
        for r in self.attention_resolutions:
            if r not in resolutions:
                raise ValueError(
                    f"UNetConfig: attention resolution {r} is not a level resolution {sorted(resolutions)}"
                )

    @property
    def out_ch(self) -> int:
        return self.out_channels or self.in_channels

    @property
    def emb_ch(self) -> int:
        return self.emb_channels or 4 * self.base_channels

    def heads_for(self, channels: int) -> int:
        if self.head_channels:
            if channels % self.head_channels:
                raise ValueError(f"UNetConfig: width {channels} not divisible by head_channels={self.head_channels}")
            return channels // self.head_channels
        return self.num_heads


class ResBlock(nn.Module):
    """GN-SiLU-(resample)-conv, embedding injection, GN-SiLU-dropout-zero conv, plus a skip path."""

    def __init__(self, cin: int, cout: int, cfg: UNetConfig, resample: str = "none") -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(cfg.norm_groups, cin, eps=cfg.norm_eps)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.scale_shift = cfg.scale_shift_norm
        self.emb_proj = nn.Linear(cfg.emb_ch, 2 * cout if self.scale_shift else cout)
        self.norm2 = nn.GroupNorm(cfg.norm_groups, cout, eps=cfg.norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # every residual branch starts as the identity
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)
        self.resample = resample

    def _resample(self, x: Tensor) -> Tensor:
        if self.resample == "down":
            return F.avg_pool2d(x, 2)
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        return x

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(self._resample(F.silu(self.norm1(x))))
        e = self.emb_proj(F.silu(emb))[:, :, None, None].to(h.dtype)
        if self.scale_shift:
            shift, scale = e.chunk(2, dim=1)  # VDPM order: shift first
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + e)
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(self._resample(x)) + h


class SpatialAttention(nn.Module):
    """Self-attention over pixels (GN, zero-init output), then optional cross-attention to context."""

    def __init__(self, channels: int, cfg: UNetConfig) -> None:
        super().__init__()
        heads = cfg.heads_for(channels)
        self.norm = nn.GroupNorm(cfg.norm_groups, channels, eps=cfg.norm_eps)
        self.attn = MultiHeadAttention(channels, heads, qkv_bias=True)
        nn.init.zeros_(self.attn.proj.weight)
        nn.init.zeros_(self.attn.proj.bias)
        self.cross = None
        if cfg.context_dim:
            # transformer-style cross-attention sub-block (pre-LN, zero-init output)
            self.cross_norm = nn.LayerNorm(channels)
            self.cross = MultiHeadAttention(channels, heads, qkv_bias=False, context_dim=cfg.context_dim)
            nn.init.zeros_(self.cross.proj.weight)
            nn.init.zeros_(self.cross.proj.bias)

    def forward(self, x: Tensor, context: Tensor | None) -> Tensor:
        b, c, hgt, wid = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)
        h = x.flatten(2).transpose(1, 2) + self.attn(tokens)
        if self.cross is not None:
            h = h + self.cross(self.cross_norm(h), context)
        return h.transpose(1, 2).reshape(b, c, hgt, wid)


class Unit(nn.Module):
    """One checkpointable step of the UNet: ResBlock (or plain resampler) plus optional attention."""

    def __init__(self, block: nn.Module, attn: SpatialAttention | None) -> None:
        super().__init__()
        self.block, self.attn = block, attn

    def forward(self, x: Tensor, emb: Tensor, context: Tensor | None) -> Tensor:
        x = self.block(x, emb) if isinstance(self.block, ResBlock) else self.block(x)
        return x if self.attn is None else self.attn(x, context)


class Downsample(nn.Module):
    """Stride-2 3x3 conv (padding 1, so 2N -> N exactly)."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest 2x upsampling then 3x3 conv."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet(CheckpointMixin, nn.Module):
    """ADM/VDPM UNet: forward(x, t, class_labels=None, context=None) -> [B, out_channels, H, W]."""


    config_class = UNetConfig
    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = cfg = config
        ch, emb = cfg.base_channels, cfg.emb_ch
        self.time_mlp = nn.Sequential(nn.Linear(ch, emb), nn.SiLU(), nn.Linear(emb, emb))
        if cfg.num_classes:
            self.class_emb = nn.Embedding(cfg.num_classes + 1, emb)
        elif cfg.num_tags:
            self.tag_emb = nn.Linear(cfg.num_tags, emb)
        self.in_conv = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)

        widths = [ch * m for m in cfg.channel_mult]
        levels = len(widths)

        def unit(cin: int, cout: int, level: int, resample: str = "none") -> Unit:
            attn = (cfg.image_size >> level) in cfg.attention_resolutions
            if resample != "none" and not cfg.resblock_resample:
                block: nn.Module = Downsample(cin) if resample == "down" else Upsample(cin)
                return Unit(block, None)
            return Unit(ResBlock(cin, cout, cfg, resample), SpatialAttention(cout, cfg) if attn else None)

        self.down = nn.ModuleList()
        skip_widths = [ch]
        cur = ch
        for lvl, w in enumerate(widths):
            for _ in range(cfg.num_res_blocks):
                self.down.append(unit(cur, w, lvl))
                cur = w
                skip_widths.append(cur)
            if lvl != levels - 1:
                # the attention flag follows the level, as in VDPM, although it runs at the lower resolution
                self.down.append(unit(cur, cur, lvl, "down"))
                skip_widths.append(cur)
        self.mid = nn.ModuleList(
            [Unit(ResBlock(cur, cur, cfg), SpatialAttention(cur, cfg)), Unit(ResBlock(cur, cur, cfg), None)]
        )
        self.up = nn.ModuleList()
        self._up_concat: list[bool] = []
        for lvl in reversed(range(levels)):
            w = widths[lvl]
            for _ in range(cfg.num_res_blocks + 1):
                self.up.append(unit(cur + skip_widths.pop(), w, lvl))
                self._up_concat.append(True)
                cur = w
            if lvl != 0:
                self.up.append(unit(cur, cur, lvl, "up"))
                self._up_concat.append(False)
        self.out_norm = nn.GroupNorm(cfg.norm_groups, cur, eps=cfg.norm_eps)
        self.out_conv = nn.Conv2d(cur, cfg.out_ch, 3, padding=1)
        nn.init.zeros_(self.out_conv.weight)
        nn.init.zeros_(self.out_conv.bias)

    def embed(self, t: Tensor, class_labels: Tensor | None, batch: int) -> Tensor:
        """Time embedding plus the (possibly null) label or tag embedding, [B, emb_channels]."""
        cfg = self.config
        sinusoid = timestep_embedding(t, cfg.base_channels, cos_first=False, freq_shift=1.0)
        emb = self.time_mlp(sinusoid.to(self.time_mlp[0].weight.dtype))  # weights may be bf16/fp16
        if cfg.num_classes:
            emb = emb + self.class_emb(class_indices(class_labels, cfg.num_classes, batch, t.device))
        elif cfg.num_tags:
            if class_labels is None:
                tags = torch.zeros(batch, cfg.num_tags, device=t.device)
            elif not class_labels.dtype.is_floating_point or class_labels.shape != (batch, cfg.num_tags):
                raise ValueError(
                    f"this UNet takes multi-hot tags: class_labels must be a float tensor [{batch}, {cfg.num_tags}], "
                    f"got {class_labels.dtype} {tuple(class_labels.shape)}"
                )
            else:
                tags = class_labels
            # VDPM: divide by sqrt(#active tags) so the embedding norm does not grow with the tag count
            tags = tags / (tags != 0).sum(1, keepdim=True).clamp(min=1).to(tags.dtype).sqrt()
            emb = emb + self.tag_emb(tags.to(emb.dtype))
        return emb

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        class_labels: Tensor | None = None,
        context: Tensor | None = None,
    ) -> Tensor:
        cfg = self.config
        check_input(x, t, cfg.in_channels, "UNet")
        factor = 2 ** (len(cfg.channel_mult) - 1)
        if x.shape[2] % factor or x.shape[3] % factor:
            raise ValueError(f"UNet input size {tuple(x.shape[2:])} must be divisible by {factor}")
        if cfg.context_dim:
            if context is None:  # None means "no context": the all-zero null context
                context = x.new_zeros(x.shape[0], 1, cfg.context_dim)
            if context.ndim != 3 or context.shape[0] != x.shape[0] or context.shape[2] != cfg.context_dim:
                raise ValueError(
                    f"context must have shape [B, L, {cfg.context_dim}], got {tuple(context.shape)}"
                )
            context = context.to(x.dtype)
        emb = self.embed(t, class_labels, x.shape[0])
        hs = [self.in_conv(x)]
        for u in self.down:
            hs.append(self._run(u, hs[-1], emb, context))
        h = hs[-1]
        for u in self.mid:
            h = self._run(u, h, emb, context)
        for u, concat in zip(self.up, self._up_concat):
            h = self._run(u, torch.cat([h, hs.pop()], dim=1) if concat else h, emb, context)
        return self.out_conv(F.silu(self.out_norm(h)))
