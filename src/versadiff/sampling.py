"""How each process family turns a network and a condition into samples, behind one method.

    family.sample(net, shape, seeds, cond, uncond, guidance, sampler=..., steps=..., device=..., options=...)

GaussianSampling: the Gaussian samplers (versadiff.samplers) over a Denoiser, classifier-free guidance
(1 + w) c - w u on the raw outputs. DiscreteSampling: the mask-and-replace samplers over a VQDenoiser, guidance
in log space with scale 1 + w and top-r truncation. The pipeline (versadiff.pipelines) owns everything else:
seeds, batches, contexts, codecs.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn

from versadiff.config import RunConfig
from versadiff.denoiser import Denoiser

__all__ = ["GaussianSampling", "DiscreteSampling"]


class GaussianSampling:
    """Gaussian diffusion sampling with the run's schedule, prediction type and x0 clipping."""

    def __init__(self, cfg: RunConfig) -> None:
        from versadiff.processes.schedules import build_schedule

        d = cfg.diffusion
        self.schedule = build_schedule(d.schedule)
        self.prediction, self.clip_x0 = d.prediction, d.clip_x0
        self.variance, self.intp_frac = d.variance, d.intp_frac

    def options(self, sampler: str, steps: int, truncation: float | None, options: dict[str, Any]) -> dict[str, Any]:
        """Sampler options after defaults and checks (called once, before any work)."""
        from versadiff.samplers import SAMPLERS

        if truncation is not None and truncation != 1.0:
            raise ValueError("truncation applies to VQ-Diffusion models; drop --truncation for a Gaussian model")
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
        options = dict(options)
        if sampler == "ddpm":  # ancestral steps use the run's reverse variance unless told otherwise
            options.setdefault("variance", self.variance)
            options.setdefault("intp_frac", self.intp_frac)
        return options

    def denoiser(self, net: nn.Module, cond: dict[str, Any], uncond: dict[str, Any] | None, guidance: float) -> Any:
        den = Denoiser(net, self.schedule, self.prediction, self.clip_x0, cond)
        if not guidance:
            return den
        from versadiff.guidance import GuidedDenoiser

        return GuidedDenoiser(den, conds=[(cond, guidance)], uncond=uncond, convention="cfg_w")

    def sample(self, net: nn.Module, shape: tuple[int, ...], seeds: Sequence[int], cond: dict[str, Any],
               uncond: dict[str, Any] | None, guidance: float, *, sampler: str, steps: int, device: torch.device,
               progress: bool = False, options: dict[str, Any] | None = None) -> Tensor:
        from versadiff.samplers import sample

        den = self.denoiser(net, cond, uncond, guidance)
        return sample(den, shape, self.schedule, sampler=sampler, steps=steps, seeds=list(seeds), device=device,
                      dtype=torch.float32, disable=not progress, **(options or {}))


class DiscreteSampling:
    """Mask-and-replace (VQ-Diffusion) sampling; `steps` sets the stride T // steps of the fast samplers."""

    def __init__(self, cfg: RunConfig, num_codes: int) -> None:
        from versadiff.processes.discrete import build_discrete_process

        self.process = build_discrete_process(cfg.discrete, num_codes)
        self.default_truncation = cfg.sample.truncation

    def options(self, sampler: str, steps: int, truncation: float | None, options: dict[str, Any]) -> dict[str, Any]:
        from versadiff.samplers.discrete import VQ_METHODS, stride_for

        if sampler not in VQ_METHODS:
            raise ValueError(f"unknown VQ-Diffusion sampler {sampler!r}; choose one of {', '.join(VQ_METHODS)}")
        truncation = self.default_truncation if truncation is None else truncation
        if not 0.0 < truncation <= 1.0:
            raise ValueError(f"truncation rate must lie in (0, 1], got {truncation}")
        return {**options, "truncation": truncation, "stride": stride_for(sampler, steps, self.process.num_steps)}

    def sample(self, net: nn.Module, shape: tuple[int, ...], seeds: Sequence[int], cond: dict[str, Any],
               uncond: dict[str, Any] | None, guidance: float, *, sampler: str, steps: int, device: torch.device,
               progress: bool = False, options: dict[str, Any] | None = None) -> Tensor:
        from versadiff.samplers.discrete import VQDenoiser, sample_vq

        options = dict(options or {})
        truncation, stride = options.pop("truncation"), options.pop("stride")
        den = VQDenoiser(net, self.process, cond, guidance_scale=1.0 + guidance, truncation=truncation, uncond=uncond)
        num = 1
        for s in shape:
            num *= int(s)
        tokens = sample_vq(den, self.process, num, seeds=list(seeds), method=sampler, stride=stride, device=device,
                           **options)
        return tokens.reshape(len(seeds), *shape)
