"""Classifier-free guidance as a denoiser: one batched forward over [uncond; cond_1; ...; cond_k].

The RAW network outputs are mixed (every parameterisation is affine in the raw output at fixed z_t, so
guiding eps, x0 or v gives the same result), then converted once to (x0, eps) and clipped once.

Conventions for the weights (reference §0):
  "scale"  out = u + sum_i s_i (c_i - u)           (diffusers / DPM-Solver; s = 1 is plain conditional)
  "cfg_w"  out = u + sum_i (1 + w_i) (c_i - u)     (Ho & Salimans, VDPM, U-ViT; w = 0 is plain conditional)
With one context "cfg_w" is (1 + w) c - w u, i.e. s = 1 + w. With several contexts each one is pushed away
from the shared unconditional branch (composable guidance); the unconditional branch's total weight is
1 - sum_i s_i, and it is not evaluated at all when that weight is 0 (e.g. one context with s = 1).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from versadiff.conditioning import batch_size_of, concat_conditions, null_condition
from versadiff.denoiser import Denoiser
from versadiff.processes.parameterization import eps_from_x0, to_x0_eps, x0_from_eps

__all__ = ["CONVENTIONS", "GuidedDenoiser", "guided", "rescale_guidance"]

CONVENTIONS = ("scale", "cfg_w")


def rescale_guidance(eps_cfg: Tensor, eps_cond: Tensor, phi: float) -> Tensor:
    """Guidance rescale (Lin et al. 2023, §3.4, eqs. 15-16): match std(eps_cond) per sample, blend by phi."""
    dims = list(range(1, eps_cfg.ndim))
    ratio = eps_cond.std(dim=dims, keepdim=True) / eps_cfg.std(dim=dims, keepdim=True)
    return phi * (eps_cfg * ratio) + (1.0 - phi) * eps_cfg


class GuidedDenoiser:
    """A DenoiserFn that applies classifier-free guidance around a `Denoiser`.

    conds: [(condition dict, weight), ...] with weights read per `convention`.
    uncond: the unconditional condition; default `null_condition` of the first condition.
    rescale: guidance-rescale phi in [0, 1] on the eps prediction, measured against the FIRST
      condition's own (unguided) eps prediction; 0 disables it.
    Conditions must hold batched tensors with the sampler's batch size.
    """

    def __init__(
        self,
        denoiser: Denoiser,
        conds: list[tuple[dict[str, Any], float]],
        uncond: dict[str, Any] | None = None,
        convention: str = "scale",
        rescale: float = 0.0,
    ) -> None:
        if not isinstance(denoiser, Denoiser):
            raise ValueError(f"GuidedDenoiser wraps a versadiff Denoiser (it needs .raw), got {type(denoiser).__name__}")
        if convention not in CONVENTIONS:
            raise ValueError(f"unknown guidance convention {convention!r}; choose one of {', '.join(CONVENTIONS)}")
        if not conds:
            raise ValueError("GuidedDenoiser needs at least one (condition, weight) pair")
        if not 0.0 <= rescale <= 1.0:
            raise ValueError(f"guidance rescale phi must lie in [0, 1], got {rescale}")
        self.denoiser, self.convention, self.rescale = denoiser, convention, float(rescale)
        self.conds = [dict(c) for c, _ in conds]
        self.scales = [float(w) + 1.0 if convention == "cfg_w" else float(w) for _, w in conds]
        self.uncond = dict(uncond) if uncond is not None else null_condition(self.conds[0])
        # coefficient of each branch in the mix [u, c_1, ..., c_k]
        self.coeffs = [1.0 - sum(self.scales)] + self.scales
        self.use_uncond = self.coeffs[0] != 0.0

    def _branches(self) -> list[dict[str, Any]]:
        return ([self.uncond] if self.use_uncond else []) + self.conds

    def __call__(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        b = x.shape[0]
        branches = self._branches()
        for c in branches:
            if batch_size_of(c) not in (0, b):
                raise ValueError(f"condition batch size {batch_size_of(c)} does not match the sample batch {b}; repeat the condition")
        k = len(branches)
        t = torch.as_tensor(t, dtype=torch.float64, device=x.device).expand(b)
        raw = self.denoiser.raw(torch.cat([x] * k), t.repeat(k), concat_conditions(branches)).to(x.dtype)
        outs = raw.chunk(k)
        coeffs = self.coeffs if self.use_uncond else self.coeffs[1:]
        mixed = sum(w * o for w, o in zip(coeffs, outs))

        den = self.denoiser
        alpha, sigma = den.schedule.alpha_sigma(t)
        x0, eps = to_x0_eps(mixed, x, alpha, sigma, den.prediction)
        if self.rescale > 0:
            eps_c = to_x0_eps(outs[1 if self.use_uncond else 0], x, alpha, sigma, den.prediction)[1]
            eps = rescale_guidance(eps, eps_c, self.rescale)
            x0 = x0_from_eps(x, eps, alpha, sigma)
        if den.clip_x0 is not None:  # as Denoiser.__call__: clip once, keep eps consistent
            x0 = x0.clamp(-den.clip_x0, den.clip_x0)
            eps = eps_from_x0(x, x0, alpha, sigma)
        return x0, eps


def guided(
    denoiser: Denoiser,
    cond: dict[str, Any],
    scale: float,
    *,
    uncond: dict[str, Any] | None = None,
    convention: str = "scale",
    rescale: float = 0.0,
) -> GuidedDenoiser:
    """Single-context guidance: `scale` is s (convention "scale") or w (convention "cfg_w")."""
    return GuidedDenoiser(denoiser, [(cond, scale)], uncond=uncond, convention=convention, rescale=rescale)
