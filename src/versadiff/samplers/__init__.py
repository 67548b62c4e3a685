"""Samplers: step grids, per-sample noise, the Gaussian solvers, the `sample` entry point and VQ-Diffusion's samplers."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from versadiff.denoiser import DenoiserFn
from versadiff.processes.base import NoiseSchedule
from versadiff.samplers.discrete import VQ_METHODS, VQDenoiser, guide, sample_vq, truncate
from versadiff.samplers.gaussian import sample_ddim, sample_ddpm, sample_dpm, sample_dpmpp, sample_euler, sample_heun
from versadiff.samplers.noise import NoiseFn, PerSampleNoise
from versadiff.samplers.timesteps import (
    DIFFUSERS_GRIDS,
    SPACINGS,
    TimeSteps,
    diffusers_indices,
    timesteps_for,
    timesteps_from_indices,
    timesteps_from_t,
)

__all__ = [
    "SAMPLERS",
    "DEFAULT_SPACING",
    "SPACINGS",
    "DIFFUSERS_GRIDS",
    "TimeSteps",
    "diffusers_indices",
    "timesteps_for",
    "timesteps_from_indices",
    "timesteps_from_t",
    "PerSampleNoise",
    "NoiseFn",
    "sample",
    "sample_ddpm",
    "sample_ddim",
    "sample_dpmpp",
    "sample_dpm",
    "sample_euler",
    "sample_heun",
    "VQ_METHODS",
    "VQDenoiser",
    "sample_vq",
    "truncate",
    "guide",
]

SAMPLERS: dict[str, Callable[..., Tensor]] = {
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "dpmpp": sample_dpmpp,
    "dpm": sample_dpm,
    "euler": sample_euler,
    "heun": sample_heun,
}

#: spacing used by `sample` when none is given; all of these work on discrete and continuous schedules
DEFAULT_SPACING: dict[str, str] = {
    "ddpm": "uniform",  # VDPM's t = i/N grid
    "ddim": "uniform",
    "dpmpp": "logsnr",  # DPM-Solver's recommendation for low resolution
    "dpm": "logsnr",
    "euler": "karras",  # EDM
    "heun": "karras",
}

_GRID_OPTIONS = ("steps_offset", "final", "sigma_min", "sigma_max", "rho", "diffusers_grid")


def sample(
    denoiser: DenoiserFn,
    shape: tuple[int, ...],
    schedule: NoiseSchedule,
    *,
    sampler: str = "ddim",
    steps: int | TimeSteps = 50,
    seeds: Sequence[int],
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    spacing: str | None = None,
    callback: Callable[[dict], None] | None = None,
    disable: bool = True,
    **options: Any,
) -> Tensor:
    """Draw len(seeds) samples of per-sample `shape` (no batch dim) with a named sampler.

    steps: a step count (grid built by `timesteps_for` with `spacing`, default DEFAULT_SPACING[sampler])
    or a ready TimeSteps. Grid options (steps_offset, final, sigma_min, sigma_max, rho, diffusers_grid) go to
    `timesteps_for`; every other option goes to the sampler (e.g. eta, order, variance, s_churn).
    Sample i depends only on seeds[i] (PerSampleNoise), not on the rest of the batch.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    grid = {k: options.pop(k) for k in _GRID_OPTIONS if k in options}
    if isinstance(steps, TimeSteps):
        if grid or spacing is not None:
            raise ValueError("pass either a TimeSteps or a step count with spacing/grid options, not both")
        ts = steps
    else:
        ts = timesteps_for(schedule, steps, spacing or DEFAULT_SPACING[sampler], **grid)
    noise = PerSampleNoise(seeds, device=device, dtype=dtype)
    x = noise.initial(tuple(shape))
    with torch.no_grad():
        return SAMPLERS[sampler](denoiser, x, ts, noise=noise, callback=callback, disable=disable, **options)
