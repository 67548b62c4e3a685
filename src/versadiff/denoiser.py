"""The denoiser: a network plus a schedule, seen as a map (z_t, t) -> (x0_hat, eps_hat).

Samplers and guidance only ever call denoisers; they know nothing about networks.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

import torch
from torch import Tensor, nn

from versadiff.processes.base import NoiseSchedule
from versadiff.processes.parameterization import PREDICTION_TYPES, eps_from_x0, to_x0_eps

__all__ = ["DenoiserFn", "Denoiser"]


class DenoiserFn(Protocol):
    """Anything a sampler can call: z_t [B, ...] and times t [B] (float64, in [0, 1]) -> (x0, eps)."""

    def __call__(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]: ...


class Denoiser:
    """Wrap `net(x, net_time, **cond)` into a DenoiserFn.

    prediction: what the network outputs ("eps", "x0", "v", "both").
    clip_x0: clamp x0_hat to [-c, c] (pixel models) and re-derive eps from the clipped x0,
    as GLIDE / Google's code do, so both predictions stay consistent.
    cond: keyword tensors passed to the network (e.g. class_labels, context); batched with x.
    """

    def __init__(
        self,
        net: nn.Module | Callable[..., Tensor],
        schedule: NoiseSchedule,
        prediction: str = "eps",
        clip_x0: float | None = None,
        cond: dict[str, Any] | None = None,
    ) -> None:
        if prediction not in PREDICTION_TYPES:
            raise ValueError(f"unknown prediction type {prediction!r}; choose one of {', '.join(PREDICTION_TYPES)}")
        self.net, self.schedule, self.prediction, self.clip_x0 = net, schedule, prediction, clip_x0
        self.cond = dict(cond or {})

    def with_cond(self, **cond: Any) -> "Denoiser":
        """The same denoiser with other conditioning tensors."""
        return Denoiser(self.net, self.schedule, self.prediction, self.clip_x0, cond)

    def raw(self, x: Tensor, t: Tensor, cond: dict[str, Any] | None = None) -> Tensor:
        """The network's raw output at (x, t)."""
        t = torch.as_tensor(t, dtype=torch.float64, device=x.device).expand(x.shape[0])
        net_t = self.schedule.net_time(t).to(torch.float32)
        return self.net(x, net_t, **(self.cond if cond is None else cond))

    def __call__(self, x: Tensor, t: Tensor, cond: dict[str, Any] | None = None) -> tuple[Tensor, Tensor]:
        t = torch.as_tensor(t, dtype=torch.float64, device=x.device).expand(x.shape[0])
        out = self.raw(x, t, cond).to(x.dtype)
        alpha, sigma = self.schedule.alpha_sigma(t)
        x0, eps = to_x0_eps(out, x, alpha, sigma, self.prediction)
        if self.clip_x0 is not None:
            x0 = x0.clamp(-self.clip_x0, self.clip_x0)
            eps = eps_from_x0(x, x0, alpha, sigma)
        return x0, eps
