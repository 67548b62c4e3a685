"""Layers of the multi-flow diffuser (`versadiff.nets.multiflow`), named as in Versatile Diffusion v1.0.

Parameter names follow SHI-Labs' `openaimodel.py` / `attention.py` (in_layers, emb_layers, out_layers,
skip_connection, op, conv, norm, proj_in, transformer_blocks, proj_out), so VD state dicts load unchanged.
Every data layer is called as `layer(h, emb)` and every context layer as `layer(h, context)`; layers that
do not use `emb` accept and ignore it, so the network can walk its slots without special cases.

Shapes: an image stream carries h [B, C, H, W]; a vector (text) stream carries h [B, C, T, 1], T pseudo-tokens
of width C (VD: T = 4), which its FC layers flatten to [B, C*T].
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from versadiff.nets.layers import attention

__all__ = [
    "InputConv",
    "ResBlock",
    "FCResBlock",
    "Downsample",
    "Upsample",
    "ConvHead",
    "TokenLinear",
    "VectorHead",
    "SpatialTransformer",
]


def _zero(module: nn.Module) -> nn.Module:
    """Zero-initialise a layer (VD `zero_module`): the residual branch it ends starts as the identity."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


# ---------------------------------------------------------------------------------------------- data layers


class InputConv(nn.Conv2d):
    """conv_in of an image stream: 3x3 conv from the latent channels to the first width."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(cin, cout, 3, padding=1)

    def forward(self, h: Tensor, emb: Tensor | None = None) -> Tensor:
        return super().forward(h)


class ResBlock(nn.Module):
    """SD-1 ResBlock: GN-SiLU-conv, + Linear(SiLU(emb)), GN-SiLU-dropout-zero conv, plus the skip path.

    No scale-shift norm (VD `use_scale_shift_norm=False`); the skip is a 1x1 conv when the width changes.
    """

    def __init__(
        self, cin: int, cout: int, emb_dim: int, *, groups: int, eps: float, dropout: float, kernel_size: int = 3
    ) -> None:
        super().__init__()
        pad = kernel_size // 2
        self.in_layers = nn.Sequential(
            nn.GroupNorm(groups, cin, eps=eps), nn.SiLU(), nn.Conv2d(cin, cout, kernel_size, padding=pad)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, cout))
        self.out_layers = nn.Sequential(
            nn.GroupNorm(groups, cout, eps=eps),
            nn.SiLU(),
            nn.Dropout(dropout),
            _zero(nn.Conv2d(cout, cout, kernel_size, padding=pad)),
        )
        self.skip_connection = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        out = self.in_layers(h) + self.emb_layers(emb)[:, :, None, None].to(h.dtype)
        return self.skip_connection(h) + self.out_layers(out)


class FCResBlock(ResBlock):
    """VD's text ResBlock (`FCBlock_MultiDim`): a ResBlock with 1x1 convs on h [B, C, T, 1] seen as [B, C*T, 1, 1].

    Its GroupNorm(groups, C*T) has the statistics of GroupNorm(groups, C) on [B, C, T, 1] (each group holds
    C/groups whole channels), but per-(channel, token) affine weights.
    """

    def __init__(
        self, cin: int, cout: int, emb_dim: int, *, tokens: int, groups: int, eps: float, dropout: float
    ) -> None:
        super().__init__(cin * tokens, cout * tokens, emb_dim, groups=groups, eps=eps, dropout=dropout, kernel_size=1)
        self.tokens = tokens

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        b = h.shape[0]
        return super().forward(h.reshape(b, -1, 1, 1), emb).view(b, -1, self.tokens, 1)


class Downsample(nn.Module):
    """Stride-2 3x3 conv (SD `Downsample(use_conv=True)`)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, h: Tensor, emb: Tensor | None = None) -> Tensor:
        return self.op(h)


class Upsample(nn.Module):
    """Nearest 2x upsampling, then a 3x3 conv (SD `Upsample(use_conv=True)`)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, h: Tensor, emb: Tensor | None = None) -> Tensor:
        return self.conv(F.interpolate(h, scale_factor=2.0, mode="nearest"))


class ConvHead(nn.Sequential):
    """Output head of an image stream: GN - SiLU - zero-init 3x3 conv (keys `0.*`, `2.*` as in VD)."""

    def __init__(self, cin: int, cout: int, *, groups: int, eps: float) -> None:
        super().__init__(nn.GroupNorm(groups, cin, eps=eps), nn.SiLU(), _zero(nn.Conv2d(cin, cout, 3, padding=1)))

    def forward(self, h: Tensor, emb: Tensor | None = None) -> Tensor:
        return super().forward(h)


class TokenLinear(nn.Linear):
    """A Linear on the flattened input [B, -1] (VD `Linear_MultiDim`), reshaped to [B, C, tokens, 1] when
    `tokens` is set. Serves as a vector stream's input layer (D -> C*T), its square "down/upsamplers" (C*T -> C*T)
    and the last layer of its head (C*T -> D)."""

    def __init__(self, fin: int, fout: int, tokens: int | None) -> None:
        super().__init__(fin, fout)
        self.tokens = tokens

    def forward(self, h: Tensor, emb: Tensor | None = None) -> Tensor:
        y = super().forward(h.flatten(1))
        return y if self.tokens is None else y.view(y.shape[0], -1, self.tokens, 1)


class VectorHead(nn.Sequential):
    """Output head of a vector stream: GN over the C channels of [B, C, T, 1] - SiLU - zero-init Linear(C*T -> D)."""

    def __init__(self, channels: int, tokens: int, dim: int, *, groups: int, eps: float) -> None:
        super().__init__(
            nn.GroupNorm(groups, channels, eps=eps), nn.SiLU(), _zero(TokenLinear(channels * tokens, dim, None))
        )

    def forward(self, h: Tensor, emb: Tensor | None = None) -> Tensor:
        return super().forward(h)


# ------------------------------------------------------------------------------------------- context layers


class CrossAttention(nn.Module):
    """Multi-head attention with bias-free q/k/v (LDM `CrossAttention`); self-attention when context is None."""

    def __init__(self, dim: int, heads: int, *, context_dim: int | None = None, dropout: float = 0.0) -> None:
        super().__init__()
        kv_dim = context_dim or dim
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(kv_dim, dim, bias=False)
        self.to_v = nn.Linear(kv_dim, dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(dim, dim), nn.Dropout(dropout))

    def _split(self, x: Tensor) -> Tensor:
        b, length, _ = x.shape
        return x.view(b, length, self.heads, -1).transpose(1, 2)  # [B, heads, L, d]

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        src = x if context is None else context
        out = attention(self._split(self.to_q(x)), self._split(self.to_k(src)), self._split(self.to_v(src)))
        return self.to_out(out.transpose(1, 2).flatten(2))


class GEGLU(nn.Module):
    """Linear to 2x width, split into value and gate: value * GELU(gate) (exact GELU, as in LDM and diffusers)."""

    def __init__(self, dim: int, inner: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, 2 * inner)

    def forward(self, x: Tensor) -> Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU feed-forward with a 4x inner width (keys net.0.proj, net.2)."""

    def __init__(self, dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, 4 * dim), nn.Dropout(dropout), nn.Linear(4 * dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class TransformerBlock(nn.Module):
    """Pre-LN self-attention, cross-attention to the context tokens, feed-forward (LDM `BasicTransformerBlock`)."""

    def __init__(self, dim: int, heads: int, context_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        # attribute order as in LDM, so state_dict() lists the keys in VD's order
        self.attn1 = CrossAttention(dim, heads, dropout=dropout)
        self.ff = FeedForward(dim, dropout)
        self.attn2 = CrossAttention(dim, heads, context_dim=context_dim, dropout=dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """VD's context layer: GN - 1x1 proj_in - tokens - transformer block(s) - zero-init 1x1 proj_out, + residual.

    The whole block (self-attention included) belongs to the context stream. On a vector stream's
    h [B, C, T, 1] it attends over the T pseudo-tokens.
    """

    def __init__(
        self, channels: int, heads: int, context_dim: int, *, depth: int = 1, groups: int = 32, eps: float = 1e-6,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=eps)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.transformer_blocks = nn.ModuleList(
            TransformerBlock(channels, heads, context_dim, dropout) for _ in range(depth)
        )
        self.proj_out = _zero(nn.Conv2d(channels, channels, 1))

    def forward(self, h: Tensor, context: Tensor) -> Tensor:
        b, c, height, width = h.shape
        x = self.proj_in(self.norm(h)).flatten(2).transpose(1, 2)  # [B, H*W, C], row-major pixels
        for block in self.transformer_blocks:
            x = block(x, context)
        return h + self.proj_out(x.transpose(1, 2).reshape(b, c, height, width))
