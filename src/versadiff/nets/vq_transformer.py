"""VQ-Diffusion's denoising transformer over code tokens (Gu et al. 2022; reference vq_diffusion.md section 2).

forward(x [B, L] token indices in 0..K ([MASK] = K), t [B] step index, class_labels=None, context=None)
  -> logits [B, K, L] over the K codes (no [MASK] logit); DiscreteProcess.log_x0_from_logits normalises them.
Block variants:
  text / context ("selfcross"): x += SelfAttn(AdaLN_t(x)); x += CrossAttn(AdaLN_t(x), ctx); x += MLP(LN(x))
  class-conditional:            x += SelfAttn(AdaLN_t(x)); x += MLP(AdaLN_class(x))
  unconditional:                x += SelfAttn(AdaLN_t(x)); x += MLP(LN(x))
AdaLN: LN_noaffine(x) * (1 + scale) + shift with (scale, shift) = Linear(SiLU(Emb(t))), Emb a learned table of T rows.
Null conditions (versadiff.conditioning): class -1 -> learned null row; an all-zero context -> a learned null context.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from versadiff.nets.layers import CheckpointMixin, MultiHeadAttention, NetConfig, class_indices, host_checks

__all__ = ["VQTransformerConfig", "VQTransformer", "VQ_PRESETS", "vq_transformer"]


@dataclasses.dataclass
class VQTransformerConfig(NetConfig):
    """Sizes of a VQ transformer. context_dim set = cross-attention; num_classes set = class-conditional."""

    type_name = "vq_transformer"

    num_embed: int = 2887  # K codes (without [MASK])
    height: int = 32  # token grid
    width: int = 32
    depth: int = 18
    dim: int = 192
    num_heads: int = 16
    mlp_ratio: float = 4.0
    mlp_type: str = "fc"  # "fc" or "conv" (3x3 convolutions on the token grid, VQ-Diffusion-S / ImageNet)
    num_steps: int = 100  # rows of the learned timestep table
    context_dim: int | None = None  # CLIP ViT-B/32 text: 512
    context_len: int = 77
    num_classes: int | None = None
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.context_dim is not None and self.num_classes is not None:
            raise ValueError("choose context_dim (cross-attention) or num_classes (class AdaLN), not both")
        if self.mlp_type not in ("fc", "conv"):
            raise ValueError(f"mlp_type must be 'fc' or 'conv', got {self.mlp_type!r}")
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")


class AdaLayerNorm(nn.Module):
    """LayerNorm without affine, modulated by an embedding of an index (timestep or class)."""

    def __init__(self, dim: int, num_rows: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(num_rows, dim)
        self.linear = nn.Linear(dim, 2 * dim)
        self.norm = nn.LayerNorm(dim, elementwise_affine=False)

    def forward(self, x: Tensor, index: Tensor) -> Tensor:
        scale, shift = self.linear(F.silu(self.emb(index))).unsqueeze(1).chunk(2, dim=-1)
        return self.norm(x) * (1 + scale) + shift


class _GELU2(nn.Module):
    """x * sigmoid(1.702 x), the released code's GELU approximation (diffusers' 'geglu-approximate')."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class MLP(nn.Module):
    """Feed-forward on tokens: Linear-GELU2-Linear, or 3x3 Conv-GELU2-Conv on the H x W token grid."""

    def __init__(self, dim: int, ratio: float, kind: str, grid: tuple[int, int], dropout: float) -> None:
        super().__init__()
        hidden, self.kind, self.grid = int(ratio * dim), kind, grid
        if kind == "fc":
            self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        else:
            self.fc1, self.fc2 = nn.Conv2d(dim, hidden, 3, padding=1), nn.Conv2d(hidden, dim, 3, padding=1)
        self.act, self.drop = _GELU2(), nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == "fc":
            return self.drop(self.fc2(self.act(self.fc1(x))))
        b, length, d = x.shape
        h = x.transpose(1, 2).reshape(b, d, *self.grid)
        h = self.fc2(self.act(self.fc1(h)))
        return self.drop(h.flatten(2).transpose(1, 2))


class Block(nn.Module):
    def __init__(self, cfg: VQTransformerConfig) -> None:
        super().__init__()
        d = cfg.dim
        self.norm1 = AdaLayerNorm(d, cfg.num_steps)
        self.attn = MultiHeadAttention(d, cfg.num_heads, qkv_bias=True)
        self.cross = None
        if cfg.context_dim is not None:
            self.norm2 = AdaLayerNorm(d, cfg.num_steps)
            self.cross = MultiHeadAttention(d, cfg.num_heads, qkv_bias=True, context_dim=cfg.context_dim)
        # class-conditional models modulate the MLP's norm with the class (null class = last row)
        self.norm3 = AdaLayerNorm(d, cfg.num_classes + 1) if cfg.num_classes is not None else nn.LayerNorm(d)
        self.mlp = MLP(d, cfg.mlp_ratio, cfg.mlp_type, (cfg.height, cfg.width), cfg.dropout)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, t: Tensor, cls: Tensor | None, ctx: Tensor | None) -> Tensor:
        x = x + self.drop(self.attn(self.norm1(x, t)))
        if self.cross is not None:
            x = x + self.drop(self.cross(self.norm2(x, t), ctx))
        h = self.norm3(x, cls) if cls is not None else self.norm3(x)
        return x + self.mlp(h)


class VQTransformer(CheckpointMixin, nn.Module):
    """Token + row/column embeddings, `depth` blocks, LN + Linear head to K code logits."""


    config_class = VQTransformerConfig
    def __init__(self, cfg: VQTransformerConfig) -> None:
        super().__init__()
        self.config = cfg
        d = cfg.dim
        self.tok_emb = nn.Embedding(cfg.num_embed + 1, d)  # last row = [MASK]
        self.row_emb = nn.Embedding(cfg.height, d)
        self.col_emb = nn.Embedding(cfg.width, d)
        if cfg.context_dim is not None:
            # learnable null context (Improved VQ-Diffusion): used wherever the given context is all zeros
            self.null_context = nn.Parameter(torch.zeros(cfg.context_len, cfg.context_dim))
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.depth)])
        self.norm_out = nn.LayerNorm(d)
        self.head = nn.Linear(d, cfg.num_embed)
        self.apply(self._init)
        if cfg.context_dim is not None:
            # CLIP tokens are L2-normalised, so start the null tokens at about unit norm as well
            nn.init.normal_(self.null_context, std=cfg.context_dim**-0.5)

    @staticmethod
    def _init(m: nn.Module) -> None:
        # N(0, 0.02) weights, zero biases, as the released code
        if isinstance(m, (nn.Linear, nn.Embedding, nn.Conv2d)):
            nn.init.normal_(m.weight, std=0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)

    @property
    def num_tokens(self) -> int:
        return self.config.height * self.config.width

    def _context(self, context: Tensor | None, b: int, ref: Tensor) -> Tensor:
        cfg = self.config
        null = self.null_context.to(ref.dtype).unsqueeze(0).expand(b, -1, -1)
        if context is None:
            return null
        if context.ndim != 3 or context.shape[0] != b or context.shape[2] != cfg.context_dim:
            raise ValueError(f"context must have shape [{b}, L, {cfg.context_dim}], got {tuple(context.shape)}")
        is_null = (context == 0).flatten(1).all(dim=1).reshape(b, 1, 1)
        if context.shape[1] != cfg.context_len:
            if bool(is_null.any()):
                raise ValueError(f"null (all-zero) contexts must have length {cfg.context_len} to be replaced by the learned null")
            return context.to(ref.dtype)
        return torch.where(is_null, null, context.to(ref.dtype))

    def forward(
        self, x: Tensor, t: Tensor, class_labels: Tensor | None = None, context: Tensor | None = None
    ) -> Tensor:
        cfg = self.config
        if x.ndim != 2 or x.shape[1] != self.num_tokens or x.dtype.is_floating_point:
            raise ValueError(f"VQTransformer expects integer tokens [B, {self.num_tokens}], got {x.dtype} {tuple(x.shape)}")
        b = x.shape[0]
        if t.ndim != 1 or t.shape[0] != b:
            raise ValueError(f"VQTransformer expects t of shape [{b}], got {tuple(t.shape)}")
        t_idx = t.round().long()
        if host_checks(t_idx) and (t_idx.min() < 0 or t_idx.max() >= cfg.num_steps):  # no per-step device sync
            raise ValueError(f"timestep indices must lie in [0, {cfg.num_steps - 1}]")
        if host_checks(x) and (x.min() < 0 or x.max() > cfg.num_embed):
            raise ValueError(f"tokens must lie in [0, {cfg.num_embed}] ({cfg.num_embed} = [MASK])")
        if class_labels is not None and cfg.num_classes is None:
            raise ValueError("this VQTransformer is not class-conditional; build it with num_classes=... to pass class_labels")
        if context is not None and cfg.context_dim is None:
            raise ValueError("this VQTransformer has no cross-attention; build it with context_dim=... to pass context")

        rows = torch.arange(cfg.height, device=x.device)
        cols = torch.arange(cfg.width, device=x.device)
        pos = (self.row_emb(rows)[:, None] + self.col_emb(cols)[None]).reshape(1, self.num_tokens, -1)
        h = self.tok_emb(x) + pos
        cls = class_indices(class_labels, cfg.num_classes, b, x.device) if cfg.num_classes is not None else None
        ctx = self._context(context, b, h) if cfg.context_dim is not None else None
        for block in self.blocks:
            h = self._run(block, h, t_idx, cls, ctx)
        return self.head(self.norm_out(h)).transpose(1, 2)


def _preset(**base: Any) -> Callable[..., VQTransformerConfig]:
    def make(**overrides: Any) -> VQTransformerConfig:
        return VQTransformerConfig.from_dict({**base, **overrides})

    return make


#: Size presets (reference 2.4). F is B's architecture pre-trained on Conceptual Captions.
VQ_PRESETS: dict[str, Callable[..., VQTransformerConfig]] = {
    "vq_diffusion_s": _preset(depth=18, dim=192, num_heads=16, mlp_ratio=2.0, mlp_type="conv", context_dim=512),
    "vq_diffusion_b": _preset(depth=19, dim=1024, num_heads=16, mlp_ratio=4.0, mlp_type="fc", context_dim=512),
    "vq_diffusion_f": _preset(depth=19, dim=1024, num_heads=16, mlp_ratio=4.0, mlp_type="fc", context_dim=512),
    "vq_diffusion_imagenet": _preset(
        num_embed=974, height=16, width=16, depth=24, dim=512, num_heads=16, mlp_type="conv", num_classes=1000
    ),
    "vq_diffusion_ffhq": _preset(num_embed=1024, height=16, width=16, depth=20, dim=512, num_heads=16, mlp_type="conv"),
    # CPU-sized for tests and toy runs
    "vq_tiny": _preset(num_embed=16, height=4, width=4, depth=2, dim=32, num_heads=2, num_steps=100),
}


def vq_transformer(name: str, **overrides: Any) -> VQTransformer:
    """Build a VQTransformer from a preset name, with config overrides."""
    if name not in VQ_PRESETS:
        raise ValueError(f"unknown VQ transformer preset {name!r}; choose one of {', '.join(VQ_PRESETS)}")
    return VQTransformer(VQ_PRESETS[name](**overrides))
