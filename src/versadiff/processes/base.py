"""The one view every Gaussian noise schedule shares.

Notation (see docs / shared reference): z_t = alpha_t * x + sigma_t * eps with
alpha^2 + sigma^2 = 1 (variance preserving) and full log-SNR lambda = log(alpha^2 / sigma^2),
so alpha^2 = sigmoid(lambda), sigma^2 = sigmoid(-lambda).

Time convention: every schedule maps continuous time t in [0, 1] (0 = clean end, 1 = noisiest)
to lambda(t), strictly decreasing. A discrete schedule with T table entries abar_0..abar_{T-1}
puts entry n at t = (n + 1) / T (the VDPM / DPM-Solver convention) and interpolates lambda
linearly in t between entries. The network receives `net_time(t)`: the table index n = T*t - 1
for discrete schedules (diffusers / U-ViT convention) and 1000*t for continuous ones (VDPM
embeds 1000*t).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor

__all__ = ["NoiseSchedule", "alpha_sigma_from_logsnr", "append_dims"]


def alpha_sigma_from_logsnr(logsnr: Tensor) -> tuple[Tensor, Tensor]:
    """(alpha, sigma) from full log-SNR; +inf gives (1, 0) and -inf gives (0, 1) exactly."""
    return torch.sigmoid(logsnr).sqrt(), torch.sigmoid(-logsnr).sqrt()


def append_dims(v: Tensor, ndim: int) -> Tensor:
    """Reshape a per-sample vector [B] to broadcast against a tensor of `ndim` dims."""
    return v.reshape(v.shape + (1,) * (ndim - v.ndim))


class NoiseSchedule(ABC):
    """A monotone map t in [0, 1] -> log-SNR lambda(t). Computations are done in float64."""

    #: number of discrete training steps T, or None for a continuous-time schedule
    num_steps: int | None = None

    @abstractmethod
    def logsnr(self, t: Tensor) -> Tensor:
        """Full log-SNR at time t (float64 tensor of t's shape)."""

    @abstractmethod
    def t_from_logsnr(self, logsnr: Tensor) -> Tensor:
        """Inverse of `logsnr` (float64); clamps to [0, 1] outside the schedule's range."""

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(alpha_t, sigma_t) in float64."""
        return alpha_sigma_from_logsnr(self.logsnr(torch.as_tensor(t, dtype=torch.float64)))

    def net_time(self, t: Tensor) -> Tensor:
        """The time value fed to the network's timestep embedding."""
        t = torch.as_tensor(t, dtype=torch.float64)
        if self.num_steps is not None:
            return t * self.num_steps - 1.0
        return t * 1000.0

    def t_from_index(self, n: Tensor | int) -> Tensor:
        """Continuous time of discrete table index n (t = (n + 1) / T)."""
        if self.num_steps is None:
            raise ValueError("t_from_index needs a discrete schedule (num_steps is None)")
        return (torch.as_tensor(n, dtype=torch.float64) + 1.0) / self.num_steps

    @property
    def logsnr_max(self) -> float:
        """lambda(0): the cleanest point of the schedule."""
        return float(self.logsnr(torch.zeros((), dtype=torch.float64)))

    @property
    def logsnr_min(self) -> float:
        """lambda(1): the noisiest point of the schedule."""
        return float(self.logsnr(torch.ones((), dtype=torch.float64)))

    def sigma_ve(self, t: Tensor) -> Tensor:
        """EDM / k-diffusion sigma s = sigma/alpha = exp(-lambda/2)."""
        return torch.exp(-0.5 * self.logsnr(torch.as_tensor(t, dtype=torch.float64)))

    def __repr__(self) -> str:
        lo, hi = self.logsnr_min, self.logsnr_max
        return f"{type(self).__name__}(logsnr {hi:.3f} -> {lo:.3f}, steps={self.num_steps})"


def _check_unit_interval(t: Tensor) -> None:
    if torch.any((t < 0) | (t > 1)) or torch.any(torch.isnan(t)):
        raise ValueError("schedule time t must lie in [0, 1]")

