"""Building blocks shared by the networks: time embeddings, attention, configs, checkpointing.

Conventions the single-stream networks follow (multi-stream ones add flow_condition(), see versadiff.flows):
  forward(x [B,C,H,W], t [B] float net_time, class_labels=None, context=None) -> [B,C_out,H,W]
  class_labels == -1 is the null class (see versadiff.conditioning); null contexts come from the encoders.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from versadiff.component import ComponentConfig

__all__ = [
    "timestep_embedding",
    "attention",
    "MultiHeadAttention",
    "NetConfig",
    "CheckpointMixin",
    "check_input",
    "class_indices",
    "host_checks",
]

def timestep_embedding(
    t: Tensor, dim: int, *, max_period: float = 10000.0, cos_first: bool = False, freq_shift: float = 1.0
) -> Tensor:
    """Sinusoidal embedding [B, dim] (float32) of (possibly fractional) times t [B].

    Frequencies are max_period^(-i / (half - freq_shift)), i = 0..half-1.
    VDPM / fairseq: [sin, cos], freq_shift=1.  U-ViT / ADM: [cos, sin], freq_shift=0.
    """
    if t.ndim != 1:
        raise ValueError(f"timesteps must be a 1-D tensor [B], got shape {tuple(t.shape)}")
    half = dim // 2
    # operation order as in U-ViT / diffusers so fp32 results agree bit-for-bit at large t
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / (half - freq_shift)
    args = t.float()[:, None] * torch.exp(exponent)[None]
    parts = [torch.cos(args), torch.sin(args)] if cos_first else [torch.sin(args), torch.cos(args)]
    emb = torch.cat(parts, dim=-1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


def attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Scaled dot-product attention over [B, heads, L, d] tensors.

    fp16 inputs are upcast to fp32 so the softmax cannot overflow (both U-ViT and UniDiffuser
    needed this, reference §1.5/§7.7); bf16 has fp32's exponent range and runs natively.
    """
    if q.dtype == torch.float16:
        return F.scaled_dot_product_attention(q.float(), k.float(), v.float()).to(torch.float16)
    if _explicit_attention(q, k):
        weights = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
        return weights.softmax(dim=-1) @ v
    return F.scaled_dot_product_attention(q, k, v)


# Up to this many attention weights ([B, heads, L, S]: 32 MiB in bf16) the explicit form trains faster.
_EXPLICIT_ATTENTION_MAX_WEIGHTS = 16 * 2**20


def _explicit_attention(q: Tensor, k: Tensor) -> bool:
    """Whether to train bf16 attention on a CPU as two matmuls and a softmax instead of SDPA's flash kernel.

    The CPU flash kernel's bf16 backward is slow. Forward + backward, AVX512 + AMX, 1 thread, [B, heads, L, d]
    (benchmarks/cpu_training.py): [4, 8, 257, 64] (U-ViT-S/2) 18.5 ms against 8.7 explicit; [64, 2, 50, 64]
    (fmnist_uvit_tiny) 17.5 against 2.9; [32, 4, 256, 32] 49.8 against 45.6; but [16, 8, 1024, 64] (128M
    weights) 551 against 1204. In fp32 and in inference (no backward) flash is as fast or faster, so only bf16
    training takes this path.
    """
    return (q.device.type == "cpu" and q.dtype == torch.bfloat16 and torch.is_grad_enabled()
            and (q.requires_grad or k.requires_grad)
            and q.shape[:-2].numel() * q.shape[-2] * k.shape[-2] <= _EXPLICIT_ATTENTION_MAX_WEIGHTS)


class MultiHeadAttention(nn.Module):
    """Token attention [B, L, D] -> [B, L, D]; self-attention, or cross-attention when context_dim is set."""

    def __init__(
        self, dim: int, num_heads: int, *, qkv_bias: bool = False, context_dim: int | None = None
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention width {dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.cross = context_dim is not None
        if self.cross:
            self.q = nn.Linear(dim, dim, bias=qkv_bias)
            self.kv = nn.Linear(context_dim, 2 * dim, bias=qkv_bias)
        else:
            self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def _heads(self, x: Tensor, n: int) -> tuple[Tensor, ...]:
        b, length, _ = x.shape
        return x.reshape(b, length, n, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        if self.cross:
            (q,) = self._heads(self.q(x), 1)
            k, v = self._heads(self.kv(context), 2)
        else:
            q, k, v = self._heads(self.qkv(x), 3)
        out = attention(q, k, v).transpose(1, 2).flatten(2)
        return self.proj(out)


@dataclasses.dataclass
class NetConfig(ComponentConfig):
    """Base of the network configs (versadiff.component.ComponentConfig; `type_name` is the network type)."""

    @property
    def net_type(self) -> str:
        return self.type_name


class CheckpointMixin:
    """Per-block activation checkpointing, switched with `set_gradient_checkpointing`."""

    gradient_checkpointing: bool = False

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each block's activations in the backward pass instead of storing them."""
        self.gradient_checkpointing = bool(enabled)

    def _run(self, block: Callable[..., Tensor], *args: Any) -> Tensor:
        # Only checkpoint when a backward pass will happen; otherwise it is pure overhead.
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)


def check_input(x: Tensor, t: Tensor, in_channels: int, name: str) -> None:
    """One-line errors for the shape mistakes every network would otherwise report cryptically."""
    if x.ndim != 4 or x.shape[1] != in_channels:
        raise ValueError(f"{name} expects x of shape [B, {in_channels}, H, W], got {tuple(x.shape)}")
    if t.ndim != 1 or t.shape[0] != x.shape[0]:
        raise ValueError(f"{name} expects t of shape [B]=[{x.shape[0]}] (net_time), got {tuple(t.shape)}")


def host_checks(x: Tensor) -> bool:
    """Whether value checks on `x` (min / max / any) cost no device sync and no torch.compile graph break."""
    return x.device.type == "cpu" and not torch.compiler.is_compiling()


def class_indices(labels: Tensor | None, num_classes: int, batch: int, device: torch.device) -> Tensor:
    """Map labels in {-1, 0..K-1} to embedding rows {K, 0..K-1} (null row last); None means all null."""
    if labels is None:
        return torch.full((batch,), num_classes, dtype=torch.long, device=device)
    if labels.dtype.is_floating_point or labels.shape != (batch,):
        raise ValueError(
            f"class_labels must be an integer tensor of shape [{batch}], got {labels.dtype} {tuple(labels.shape)}"
        )
    # checked where it is free: on the CPU, outside torch.compile (on a GPU the check would wait for the device at
    # every call of a sampling loop; the pipelines check labels on the host before sampling)
    if host_checks(labels) and labels.numel() and (labels.min() < -1 or labels.max() >= num_classes):
        raise ValueError(f"class_labels must lie in [-1, {num_classes - 1}] (-1 = null class)")
    return torch.where(labels < 0, torch.full_like(labels, num_classes), labels).long()
