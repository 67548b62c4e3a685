"""Where a sampler evaluates the model: the `TimeSteps` grid and its builders.

A grid of N steps is N model-evaluation times t_0 > t_1 > ... > t_{N-1} (float64, in [0, 1]) plus the
log-SNR of every point and of the final target: logsnr[N] is +inf for "clean" (sigma = 0, DDIM's
set_alpha_to_one=True) or the schedule's cleanest table entry for "first" (alpha_bar_0).

Spacings (`timesteps_for`):
  leading / trailing / linspace  diffusers' index grids on a discrete table (Lin et al. 2023, Table 2),
                                 index n -> t = (n + 1) / T; `diffusers_grid` picks whose variant (below);
  uniform   t uniform from 1 down to t_min (VDPM's t = i/N grid for continuous schedules; t_min = 1/T for tables);
  logsnr    uniform in log-SNR (DPM-Solver's 'logSNR' skip type);
  karras    EDM sigmas (Karras et al. 2022, eq. 5) mapped to fractional t by the schedule's inverse.
The uniform and logsnr grids have N + 1 points ending at t_min; the model is evaluated at the first N and
the last is the target when final="first".

diffusers' scheduler classes build different grids under the same spacing name; `diffusers_grid` names the
family whose `set_timesteps` is reproduced (index for index, computed with numpy as diffusers does):
  "ddim"   DDIM / DDPM / PNDM (the default): N integer indices; leading = arange(N) * (T // N) + steps_offset,
           linspace = round(linspace(0, T - 1, N)), trailing = round(arange(T, 0, -T / N)) - 1;
  "dpm"    DPMSolverMultistep: leading and linspace are built on N + 1 points and the last is dropped
           (leading = arange(N + 1) * (T // (N + 1)) + steps_offset, e.g. 900, 810, ..., 90 for N = 10);
           trailing as "ddim";
  "euler"  Euler / EulerAncestral / Heun: linspace is NOT rounded (float32 linspace(0, T - 1, N), fractional
           indices; the model sees the fractional timestep); leading and trailing as "ddim".
One deliberate difference for every family: for some N (T = 1000: 61, 103, 121, 122, ...) numpy's
arange(T, 0, -T / N) has N + 1 entries and diffusers' trailing grid then ends with the index -1 (which
indexes the NOISIEST table entry); versadiff keeps the N intended steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from versadiff.processes.base import NoiseSchedule

__all__ = [
    "SPACINGS",
    "INDEX_SPACINGS",
    "DIFFUSERS_GRIDS",
    "TimeSteps",
    "diffusers_indices",
    "timesteps_for",
    "timesteps_from_indices",
    "timesteps_from_t",
]

SPACINGS = ("leading", "trailing", "linspace", "uniform", "logsnr", "karras")
INDEX_SPACINGS = ("leading", "trailing", "linspace")
DIFFUSERS_GRIDS = ("ddim", "dpm", "euler")
FINALS = ("clean", "first")


@dataclass(frozen=True, eq=False)
class TimeSteps:
    """N model-evaluation times `t` [N] (descending) and log-SNRs `logsnr` [N + 1] (the last = target).

    `schedule` (optional) lets samplers map other log-SNRs to times (EDM churn, Heun's final correction).
    """

    t: Tensor
    logsnr: Tensor
    schedule: NoiseSchedule | None = None

    def __post_init__(self) -> None:
        t = torch.as_tensor(self.t, dtype=torch.float64).cpu()
        lam = torch.as_tensor(self.logsnr, dtype=torch.float64).cpu()
        object.__setattr__(self, "t", t)
        object.__setattr__(self, "logsnr", lam)
        if t.ndim != 1 or t.numel() == 0:
            raise ValueError(f"TimeSteps.t must be a non-empty 1-D tensor, got shape {tuple(t.shape)}")
        if lam.shape != (t.numel() + 1,):
            raise ValueError(f"TimeSteps.logsnr needs N + 1 = {t.numel() + 1} entries (one per step + target), got {lam.numel()}")
        if torch.any(torch.isnan(t)) or torch.any((t < 0) | (t > 1)):
            raise ValueError("TimeSteps.t must lie in [0, 1]")
        if torch.any(t[1:] >= t[:-1]):
            raise ValueError("TimeSteps.t must be strictly decreasing (noisiest first)")
        if torch.any(torch.isnan(lam)) or torch.any(lam[1:] < lam[:-1]):
            raise ValueError("TimeSteps.logsnr must be non-decreasing (each step moves towards the clean end)")

    def __len__(self) -> int:
        return self.t.numel()

    @property
    def final_is_clean(self) -> bool:
        """True when the last step lands on sigma = 0 (logsnr = +inf)."""
        return bool(torch.isposinf(self.logsnr[-1]))

    def t_at(self, logsnr: float | Tensor) -> Tensor:
        """Time of a log-SNR value via the schedule's inverse (needs `schedule`)."""
        if self.schedule is None:
            raise ValueError("this sampler option needs TimeSteps.schedule; build the steps with timesteps_for")
        return self.schedule.t_from_logsnr(torch.as_tensor(logsnr, dtype=torch.float64))


def _t_min(schedule: NoiseSchedule) -> float:
    """The cleanest time the model was trained on: table entry 0 (t = 1/T) or t = 0."""
    return 1.0 / schedule.num_steps if schedule.num_steps is not None else 0.0


def _final_logsnr(schedule: NoiseSchedule, final: str) -> float:
    if final not in FINALS:
        raise ValueError(f"unknown final {final!r}; choose 'clean' (sigma = 0) or 'first' (cleanest table entry)")
    if final == "clean":
        return math.inf
    return float(schedule.logsnr(torch.tensor(_t_min(schedule), dtype=torch.float64)))


def timesteps_from_t(schedule: NoiseSchedule, t: Sequence[float] | Tensor, final: str = "clean") -> TimeSteps:
    """A grid from explicit evaluation times t (descending) and a final target."""
    t = torch.as_tensor(t, dtype=torch.float64)
    lam = torch.cat([schedule.logsnr(t), torch.tensor([_final_logsnr(schedule, final)], dtype=torch.float64)])
    return TimeSteps(t, lam, schedule)


def timesteps_from_indices(schedule: NoiseSchedule, indices: Sequence[int] | Tensor, final: str = "clean") -> TimeSteps:
    """A grid from explicit discrete table indices (e.g. a diffusers scheduler's `.timesteps`)."""
    if schedule.num_steps is None:
        raise ValueError("timesteps_from_indices needs a discrete schedule; use timesteps_from_t for continuous ones")
    n = torch.as_tensor(indices, dtype=torch.float64)
    if torch.any(n < 0) or torch.any(n > schedule.num_steps - 1):
        raise ValueError(f"table indices must lie in [0, {schedule.num_steps - 1}]")
    return timesteps_from_t(schedule, schedule.t_from_index(n), final)


def diffusers_indices(spacing: str, T: int, n: int, steps_offset: int = 0, diffusers_grid: str = "ddim") -> Tensor:
    """The table indices (descending float64; fractional only for "euler" linspace) of diffusers'
    `set_timesteps(n)` for `spacing` in the scheduler family `diffusers_grid` (module docstring)."""
    if spacing not in INDEX_SPACINGS:
        raise ValueError(f"unknown index spacing {spacing!r}; choose one of {', '.join(INDEX_SPACINGS)}")
    if diffusers_grid not in DIFFUSERS_GRIDS:
        raise ValueError(f"unknown diffusers_grid {diffusers_grid!r}; choose one of {', '.join(DIFFUSERS_GRIDS)}")
    dpm = diffusers_grid == "dpm"
    if spacing == "leading":
        m = n + 1 if dpm else n
        idx = (np.arange(0, m) * (T // m)).round()[::-1][:n] + steps_offset
    elif spacing == "trailing":
        # numpy's arange may return n + 1 points here (the last rounds to index -1): keep the n intended ones
        idx = np.round(np.arange(T, 0, -T / n))[:n] - 1
    elif dpm:
        idx = np.linspace(0, T - 1, n + 1).round()[::-1][:n]
    elif diffusers_grid == "euler":
        idx = np.linspace(0, T - 1, n, dtype=np.float32)[::-1].astype(np.float64)
    else:
        idx = np.linspace(0, T - 1, n).round()[::-1]
    idx = torch.from_numpy(idx.astype(np.float64).copy())  # copy(): a fresh, positive-stride array
    if idx.numel() != n or torch.any(idx[1:] >= idx[:-1]) or idx[0] > T - 1 or idx[-1] < 0:
        raise ValueError(
            f"{spacing} spacing ({diffusers_grid} grid) with {n} steps (offset {steps_offset}) on T={T} gives invalid indices {idx.tolist()}"
        )
    return idx


def timesteps_for(
    schedule: NoiseSchedule,
    n: int,
    spacing: str = "uniform",
    steps_offset: int = 0,
    final: str = "clean",
    sigma_min: float | None = None,
    sigma_max: float | None = None,
    rho: float = 7.0,
    diffusers_grid: str = "ddim",
) -> TimeSteps:
    """The N-step grid of a named spacing (see the module docstring).

    steps_offset: diffusers' offset added to "leading" indices (Stable Diffusion uses 1).
    diffusers_grid: for leading / trailing / linspace, whose diffusers grid to build: "ddim" (default;
      DDIM / DDPM / PNDM), "dpm" (DPMSolverMultistep) or "euler" (Euler / EulerAncestral / Heun).
    sigma_min / sigma_max: VE sigma range (sigma/alpha) for "karras" and "logsnr";
      default: the schedule's range from t_min to t = 1. rho: the Karras exponent.
    """
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise ValueError(f"number of steps must be a positive int, got {n}")
    n = int(n)
    if spacing not in SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}; choose one of {', '.join(SPACINGS)}")
    if steps_offset and spacing != "leading":
        raise ValueError(f"steps_offset only applies to 'leading' spacing, not {spacing!r}; drop it")
    if (sigma_min is not None or sigma_max is not None) and spacing not in ("karras", "logsnr"):
        raise ValueError(f"sigma_min/sigma_max apply to 'karras' and 'logsnr' spacings, not {spacing!r}")
    if diffusers_grid not in DIFFUSERS_GRIDS:
        raise ValueError(f"unknown diffusers_grid {diffusers_grid!r}; choose one of {', '.join(DIFFUSERS_GRIDS)}")
    if diffusers_grid != "ddim" and spacing not in INDEX_SPACINGS:
        raise ValueError(f"diffusers_grid applies to the leading / trailing / linspace spacings, not {spacing!r}; drop it")
    final_lam = _final_logsnr(schedule, final)

    if spacing in INDEX_SPACINGS:
        T = schedule.num_steps
        if T is None:
            raise ValueError(f"{spacing!r} spacing needs a discrete schedule; use 'uniform', 'logsnr' or 'karras'")
        if n > T:
            raise ValueError(f"{n} steps exceed the schedule's {T} table entries")
        return timesteps_from_indices(schedule, diffusers_indices(spacing, T, n, steps_offset, diffusers_grid), final)

    t_min = _t_min(schedule)
    if spacing == "uniform":
        t = torch.linspace(1.0, t_min, n + 1, dtype=torch.float64)
        if final == "first":  # the last grid point is the target itself
            final_lam = float(schedule.logsnr(t[-1]))
        return TimeSteps(t[:-1], torch.cat([schedule.logsnr(t[:-1]), torch.tensor([final_lam], dtype=torch.float64)]), schedule)

    # sigma-range spacings: lambda = -2 log(sigma_ve)
    lam_lo = schedule.logsnr_min if sigma_max is None else -2.0 * math.log(sigma_max)
    lam_hi = float(schedule.logsnr(torch.tensor(t_min, dtype=torch.float64))) if sigma_min is None else -2.0 * math.log(sigma_min)
    if not (math.isfinite(lam_lo) and math.isfinite(lam_hi)) or lam_hi <= lam_lo:
        raise ValueError(f"{spacing} spacing needs a finite sigma range with sigma_min < sigma_max (log-SNR {lam_lo} .. {lam_hi})")
    if spacing == "logsnr":
        lam = torch.linspace(lam_lo, lam_hi, n + 1, dtype=torch.float64)
        if final == "first":
            final_lam = float(lam[-1])
        lam = lam[:-1]
    else:  # karras
        from versadiff.processes.schedules import karras_sigmas

        s = torch.as_tensor(karras_sigmas(n, math.exp(-0.5 * lam_hi), math.exp(-0.5 * lam_lo), rho), dtype=torch.float64)
        s = s[s > 0][:n]  # the builder may append the final sigma = 0; the target is set by `final`
        lam = -2.0 * torch.log(s)
    t = schedule.t_from_logsnr(lam)
    if torch.any(t[1:] >= t[:-1]):
        raise ValueError(f"{spacing} spacing with {n} steps maps several steps to the same time; use fewer steps")
    if final_lam < float(lam[-1]):
        raise ValueError(f"final='first' lies before the last {spacing} step (sigma_min below the schedule's); use final='clean'")
    return TimeSteps(t, torch.cat([lam, torch.tensor([final_lam], dtype=torch.float64)]), schedule)
