"""U-ViT (Bao et al., CVPR 2023, arXiv 2209.12152): a ViT with long skips, all conditions as tokens.

Follows baofff/U-ViT `libs/uvit.py` / `libs/uvit_t2i.py` (reference uvit_unidiffuser.md §1):
  tokens = [label, time, patches]            (class-conditional; `extras` = 2)
         = [time, context x L, patches]      (text-conditional;  `extras` = 1 + L)
         = [time, patches]                   (unconditional;     `extras` = 1)
  time token = raw sinusoid (cos|sin, max_period 1e4) of net_time; an MLP only if mlp_time_embed.
  one learned positional embedding over all tokens.
  `depth` follows the paper's code: depth//2 in-blocks, 1 mid block, depth//2 out-blocks
  (so depth 12 -> 13 blocks). Each out-block first merges the matching in-block output
  (last in, first out) by Linear(2D -> D) on the concatenation.
  head: LayerNorm -> Linear(D, p*p*C_out) -> drop extras -> unpatchify -> optional 3x3 conv.
Null conditions: label -1 (or None) selects the last row of Embedding(num_classes + 1, D); a
zero (or None -> zero) context is projected by context_embed like any other context, which is how
the paper's empty-caption null works well enough for CFG.
`pre_norm=False` switches to post-LN blocks with a LayerNorm after each skip merge (UniDiffuser).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from versadiff.nets.layers import (
    CheckpointMixin,
    MultiHeadAttention,
    NetConfig,
    check_input,
    class_indices,
    host_checks,
    timestep_embedding,
)

__all__ = ["UViTConfig", "UViT"]


@dataclasses.dataclass
class UViTConfig(NetConfig):
    """Hyper-parameters of `UViT` (names follow the paper's code where one exists)."""

    type_name = "uvit"

    image_size: int = 32
    in_channels: int = 3
    out_channels: int | None = None  # None: same as in_channels
    patch_size: int = 2
    embed_dim: int = 512
    depth: int = 12  # paper convention: 2*(depth//2)+1 blocks
    num_heads: int = 8
    mlp_ratio: float = 4.0
    qkv_bias: bool = False
    mlp_time_embed: bool = False
    num_classes: int = 0  # >0: label token, Embedding(num_classes + 1), null row last
    null_class: bool = True  # False: Embedding(num_classes, D) without the null row (U-ViT's ImageNet-64 models)
    context_dim: int | None = None  # set: context tokens via Linear(context_dim, D)
    num_context_tokens: int = 77
    conv_head: bool = True  # final 3x3 conv (False for the H configs)
    pre_norm: bool = True
    skip: bool = True  # long skips (False only for ablations)
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(
                f"UViTConfig: image_size {self.image_size} is not divisible by patch_size {self.patch_size}"
            )
        if self.embed_dim % self.num_heads:
            raise ValueError(f"UViTConfig: embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.num_classes and self.context_dim:
            raise ValueError("UViTConfig: set num_classes (label token) or context_dim (text tokens), not both")

    @property
    def out_ch(self) -> int:
        return self.out_channels or self.in_channels

    @property
    def extras(self) -> int:
        """Number of non-patch tokens in front of the patches."""
        if self.context_dim:
            return 1 + self.num_context_tokens
        return 2 if self.num_classes else 1

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


class Mlp(nn.Module):
    """fc1 -> GELU (exact) -> fc2."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Transformer block; out-blocks first merge a long skip with Linear(2D -> D)."""

    def __init__(self, cfg: UViTConfig, skip: bool = False) -> None:
        super().__init__()
        d = cfg.embed_dim
        self.pre_norm = cfg.pre_norm
        self.skip_linear = nn.Linear(2 * d, d) if skip else None
        # UniDiffuser's post-LN model normalises the merged skip; pre-LN U-ViT does not
        self.skip_norm = nn.LayerNorm(d, eps=cfg.norm_eps) if skip and not cfg.pre_norm else None
        self.norm1 = nn.LayerNorm(d, eps=cfg.norm_eps)
        self.attn = MultiHeadAttention(d, cfg.num_heads, qkv_bias=cfg.qkv_bias)
        self.norm2 = nn.LayerNorm(d, eps=cfg.norm_eps)
        self.mlp = Mlp(d, int(d * cfg.mlp_ratio))

    def forward(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        if self.skip_linear is not None:
            x = self.skip_linear(torch.cat([x, skip], dim=-1))
            if self.skip_norm is not None:
                x = self.skip_norm(x)
        if self.pre_norm:
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))
        x = self.norm1(x + self.attn(x))
        return self.norm2(x + self.mlp(x))


class UViT(CheckpointMixin, nn.Module):
    """U-ViT: forward(x, t, class_labels=None, context=None) -> [B, out_channels, H, W]."""


    config_class = UViTConfig
    def __init__(self, config: UViTConfig) -> None:
        super().__init__()
        self.config = cfg = config
        d = cfg.embed_dim
        self.patch_embed = nn.Conv2d(cfg.in_channels, d, cfg.patch_size, stride=cfg.patch_size)
        self.time_embed = (
            nn.Sequential(nn.Linear(d, 4 * d), nn.SiLU(), nn.Linear(4 * d, d)) if cfg.mlp_time_embed else nn.Identity()
        )
        if cfg.num_classes:
            self.label_emb = nn.Embedding(cfg.num_classes + int(cfg.null_class), d)
        if cfg.context_dim:
            self.context_embed = nn.Linear(cfg.context_dim, d)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.extras + cfg.num_patches, d))
        self.in_blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.depth // 2)])
        self.mid_block = Block(cfg)
        self.out_blocks = nn.ModuleList([Block(cfg, skip=cfg.skip) for _ in range(cfg.depth // 2)])
        self.norm = nn.LayerNorm(d, eps=cfg.norm_eps)
        self.decoder_pred = nn.Linear(d, cfg.patch_size**2 * cfg.out_ch)
        self.final_layer = nn.Conv2d(cfg.out_ch, cfg.out_ch, 3, padding=1) if cfg.conv_head else nn.Identity()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The paper code's init: trunc-normal(0.02) Linear weights and pos_embed, zero biases; convs and
        the label embedding keep PyTorch's defaults."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def extras(self) -> int:
        """Number of condition/time tokens in front of the patch tokens."""
        return self.config.extras

    def _tokens(self, x: Tensor, t: Tensor, class_labels: Tensor | None, context: Tensor | None) -> Tensor:
        cfg = self.config
        b = x.shape[0]
        patches = self.patch_embed(x).flatten(2).transpose(1, 2)
        time = timestep_embedding(t, cfg.embed_dim, cos_first=True, freq_shift=0.0).to(patches.dtype)
        time = self.time_embed(time)
        parts = [time[:, None].to(patches.dtype)]
        if cfg.num_classes:
            idx = class_indices(class_labels, cfg.num_classes, b, x.device)
            if not cfg.null_class and host_checks(idx) and bool((idx == cfg.num_classes).any()):
                raise ValueError("this U-ViT has no null class (null_class=False): pass labels 0..K-1, no -1 / None")
            label = self.label_emb(idx)
            parts.insert(0, label[:, None].to(patches.dtype))
        if cfg.context_dim:
            want = (b, cfg.num_context_tokens, cfg.context_dim)
            if context is None:  # None means "no context": the all-zero null context
                context = x.new_zeros(want)
            if tuple(context.shape) != want:
                raise ValueError(f"context must have shape [B, L, D]={list(want)}, got {list(context.shape)}")
            parts.append(self.context_embed(context.to(patches.dtype)).to(patches.dtype))
        return torch.cat(parts + [patches], dim=1) + self.pos_embed.to(patches.dtype)

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        class_labels: Tensor | None = None,
        context: Tensor | None = None,
    ) -> Tensor:
        cfg = self.config
        check_input(x, t, cfg.in_channels, "UViT")
        if x.shape[2] != cfg.image_size or x.shape[3] != cfg.image_size:
            raise ValueError(
                f"UViT was built for {cfg.image_size}x{cfg.image_size} inputs (pos_embed size), got {tuple(x.shape[2:])}"
            )
        h = self._tokens(x, t, class_labels, context)
        skips = []
        for blk in self.in_blocks:
            h = self._run(blk, h)
            skips.append(h)
        h = self._run(self.mid_block, h)
        for blk in self.out_blocks:
            h = self._run(blk, h, skips.pop())
        h = self.decoder_pred(self.norm(h))[:, cfg.extras :]
        return self.final_layer(self._unpatchify(h))

    def _unpatchify(self, h: Tensor) -> Tensor:
        # B (gh gw) (p1 p2 C) -> B C (gh p1) (gw p2), the layout of the paper's decoder_pred
        cfg = self.config
        b, p, c = h.shape[0], cfg.patch_size, cfg.out_ch
        g = cfg.image_size // p
        h = h.reshape(b, g, g, p, p, c).permute(0, 5, 1, 3, 2, 4)
        return h.reshape(b, c, g * p, g * p)
