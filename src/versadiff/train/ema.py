"""Exponential moving average of a network's weights, kept in float32.

decay_n = min(decay, (1 + n) / (10 + n)) with warm-up (VDPM, after Google's diffusion code), where n counts
the updates done so far; without warm-up decay_n = decay. Integer buffers are copied, not averaged.

Under FSDP the network's state dict holds DTensors (each process its dim-0 chunk): the shadow is then sharded the
same way and every process averages its own chunks (versadiff.train.distributed explains the choice).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from versadiff.train.distributed import local

__all__ = ["EMA"]


class EMA:
    """Shadow copy of `net.state_dict()`; call `update(net)` after every optimizer step."""

    def __init__(self, net: nn.Module, decay: float = 0.9999, warmup: bool = True) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must lie in [0, 1), got {decay}")
        self.decay, self.warmup, self.num_updates = decay, warmup, 0
        self.shadow: dict[str, Tensor] = {
            k: (v.detach().float() if v.is_floating_point() else v.detach()).clone() for k, v in net.state_dict().items()
        }

    def current_decay(self) -> float:
        """The decay the next update will use."""
        if not self.warmup:
            return self.decay
        n = self.num_updates
        return min(self.decay, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        """shadow <- d * shadow + (1 - d) * weights."""
        d = self.current_decay()
        for k, v in net.state_dict().items():
            s, v = local(self.shadow[k]), local(v.detach())  # sharded (FSDP): this process's chunks
            if s.is_floating_point():
                s.lerp_(v.to(s.device, torch.float32), 1.0 - d)
            else:
                s.copy_(v)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, net: nn.Module) -> None:
        """Load the averaged weights into `net` (cast to each parameter's dtype)."""
        net.load_state_dict(self.shadow, strict=True)

    def state_dict(self) -> dict[str, Tensor]:
        """The shadow tensors (float32 for floating-point entries)."""
        return self.shadow

    def load_state_dict(self, tensors: dict[str, Tensor], num_updates: int) -> None:
        """Restore shadow tensors and the update counter (which drives the warm-up)."""
        missing = set(self.shadow) ^ set(tensors)
        if missing:
            raise ValueError(f"EMA state does not match the network: keys differ ({sorted(missing)[:3]} ...)")
        for k, v in tensors.items():
            self.shadow[k].copy_(v)
        self.num_updates = int(num_updates)

