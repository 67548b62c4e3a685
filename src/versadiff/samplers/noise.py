"""Per-sample noise: sample i with seed s is the same image whatever else shares its batch.

Each sample owns a CPU `torch.Generator`; noise is drawn in float32 on the CPU, sample by sample, and
only then moved/cast, so results do not depend on batch composition or on the device (EDM's per-image seeds).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

__all__ = ["NoiseFn", "PerSampleNoise", "to_device"]

#: draws fresh standard Gaussian noise shaped like its argument
NoiseFn = Callable[[Tensor], Tensor]


def to_device(x: Tensor, device: torch.device | str | None, dtype: torch.dtype | None = None) -> Tensor:
    """A CPU tensor on `device` without a host sync per call: on CUDA through pinned memory and a non-blocking copy
    (a plain .to("cuda") waits for the stream, i.e. for every kernel queued before it, at each sampling step)."""
    if device is not None and torch.device(device).type == "cuda":
        x = x.pin_memory().to(device, non_blocking=True)
    elif device is not None:
        x = x.to(device)
    return x if dtype is None else x.to(dtype)


class PerSampleNoise:
    """Noise source with one generator per sample. `initial(shape)` draws z_T; calling it draws step noise."""

    def __init__(self, seeds: Sequence[int], device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> None:
        seeds = list(seeds)
        if not seeds:
            raise ValueError("PerSampleNoise needs at least one seed (one per sample)")
        for s in seeds:
            if isinstance(s, bool) or int(s) != s:
                raise ValueError(f"seeds must be integers, got {s!r}")
        self.seeds = [int(s) for s in seeds]
        self.device, self.dtype = device, dtype
        self.generators = [torch.Generator(device="cpu").manual_seed(s) for s in self.seeds]

    def __len__(self) -> int:
        return len(self.seeds)

    def _draw(self, shape: tuple[int, ...], device, dtype) -> Tensor:
        out = torch.stack([torch.randn(shape, generator=g, dtype=torch.float32) for g in self.generators])
        return to_device(out, device, dtype)

    def initial(self, shape_per_sample: Sequence[int]) -> Tensor:
        """Starting noise [B, *shape_per_sample] on this source's device and dtype."""
        return self._draw(tuple(int(d) for d in shape_per_sample), self.device, self.dtype)

    def __call__(self, like: Tensor) -> Tensor:
        """Fresh noise with `like`'s shape, device and dtype (batch size must equal the number of seeds)."""
        if like.ndim == 0 or like.shape[0] != len(self.seeds):
            raise ValueError(f"noise for batch {tuple(like.shape)[:1]} requested from {len(self.seeds)} seeds; pass one seed per sample")
        return self._draw(tuple(like.shape[1:]), like.device, like.dtype)
