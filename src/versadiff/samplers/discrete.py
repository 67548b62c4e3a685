"""Samplers for VQ-Diffusion's mask-and-replace process (reference vq_diffusion.md section 4).

`VQDenoiser` turns a network into log p(x0 | x_t) with classifier-free guidance in log space and truncation;
`sample_vq` runs the reverse chain from all-[MASK] tokens with one CPU generator per sample, so sample i
depends only on seeds[i]:
  standard    the v1 sampler: T network calls, Gumbel sample of the log-space posterior at every step.
  fast        the released `time{v}` approximation: stride v, posterior of index t - (v - 1) (one step).
  fast_exact  stride v with the exact Delta-step posterior q(x_{t-v} | x_t, x0).
  purity      Improved VQ-Diffusion's purity prior: reveal the most confident masked positions.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from versadiff.conditioning import batch_size_of, concat_conditions, null_condition
from versadiff.processes.discrete import DiscreteProcess, gumbel_sample
from versadiff.samplers.noise import to_device

__all__ = ["VQ_METHODS", "VQDenoiser", "truncate", "guide", "sample_vq", "vq_timesteps", "stride_for"]

VQ_METHODS = ("standard", "fast", "fast_exact", "purity")
_CLAMP_MIN = -70.0


def truncate(log_p: Tensor, r: float) -> Tensor:
    """Keep the smallest set of codes reaching mass r per position (always the top-1); others -> -70, no renorm."""
    if not 0.0 < r <= 1.0:
        raise ValueError(f"truncation rate r must lie in (0, 1], got {r}")
    if r >= 1.0:
        return log_p
    sorted_lp, order = log_p.sort(dim=1, descending=True)
    p = sorted_lp.exp()
    mass_above = p.cumsum(dim=1) - p  # mass of the codes ranked strictly higher
    keep_sorted = mass_above < r
    keep_sorted[:, 0] = True
    keep = torch.zeros_like(keep_sorted).scatter(1, order, keep_sorted)
    return torch.where(keep, log_p, torch.full_like(log_p, _CLAMP_MIN))


def guide(log_p_cond: Tensor, log_p_uncond: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance on log p(x0): lu + s (lc - lu), renormalised over codes, clamped to [-70, 0]."""
    out = log_p_uncond + scale * (log_p_cond - log_p_uncond)
    return (out - torch.logsumexp(out, dim=1, keepdim=True)).clamp(_CLAMP_MIN, 0.0)


class VQDenoiser:
    """net(x_t, t, **cond) -> logits [B, K, L], seen as (x_t, t) -> log p(x0 | x_t) [B, K, L].

    guidance_scale: s of classifier-free guidance (1 = off; the null condition follows versadiff.conditioning).
    truncation: r of top-r truncation, applied after guidance (1 = off).
    """

    def __init__(
        self,
        net: Callable[..., Tensor],
        process: DiscreteProcess,
        cond: dict[str, Any] | None = None,
        guidance_scale: float = 1.0,
        truncation: float = 1.0,
        uncond: dict[str, Any] | None = None,
    ) -> None:
        if not 0.0 < truncation <= 1.0:
            raise ValueError(f"truncation rate must lie in (0, 1], got {truncation}")
        self.net, self.process, self.cond = net, process, dict(cond or {})
        self.guidance_scale, self.truncation = float(guidance_scale), float(truncation)
        if abs(self.guidance_scale - 1.0) >= 1e-3 and not batch_size_of(self.cond):
            raise ValueError("guidance_scale != 1 needs a condition (class_labels or context) to guide with")
        self.uncond = dict(uncond) if uncond is not None else (null_condition(self.cond) if self.cond else {})

    def __call__(self, x_t: Tensor, t: Tensor) -> Tensor:
        b = x_t.shape[0]
        if self.cond and batch_size_of(self.cond) != b:
            raise ValueError(f"condition batch size {batch_size_of(self.cond)} does not match {b} samples")
        t_net = t.float().to(x_t.device)
        if abs(self.guidance_scale - 1.0) < 1e-3:
            log_p = self.process.log_x0_from_logits(self.net(x_t, t_net, **self.cond))
        else:
            both = concat_conditions([self.cond, self.uncond])
            logits = self.net(torch.cat([x_t, x_t]), torch.cat([t_net, t_net]), **both)
            lc, lu = self.process.log_x0_from_logits(logits).chunk(2)
            log_p = guide(lc, lu, self.guidance_scale)
        return truncate(log_p, self.truncation)


class _Uniforms:
    """One CPU generator per sample; draws are stacked, so a sample's randomness ignores the batch."""

    def __init__(self, seeds: Sequence[int]) -> None:
        seeds = list(seeds)
        if not seeds:
            raise ValueError("sample_vq needs at least one seed (one per sample)")
        for s in seeds:
            if isinstance(s, bool) or int(s) != s:
                raise ValueError(f"seeds must be integers, got {s!r}")
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]

    def rand(self, shape: tuple[int, ...], device: Any) -> Tensor:
        return to_device(torch.stack([torch.rand(shape, generator=g) for g in self.generators]), device)


def vq_timesteps(num_steps: int, stride: int = 1) -> list[int]:
    """The released fast grid T-1, T-1-v, ..., then 0 (stride 1 = every step)."""
    if int(stride) != stride or stride < 1:
        raise ValueError(f"stride must be a positive int, got {stride}")
    steps = list(range(num_steps - 1, -1, -stride))
    return steps if steps[-1] == 0 else steps + [0]


def _reveal_budget(process: DiscreteProcess, length: int, s: int) -> int:
    """Masked tokens allowed to remain after reaching index s: L * cbar_s (the training marginal)."""
    _, _, cbar = process.schedule.cumulative()
    return int(round(length * float(cbar[s]))) if s >= 0 else 0


def _purity_step(
    log_p: Tensor, x: Tensor, mask_index: int, keep_masked: int, weight: float, max_reveal: int | None, rng: _Uniforms
) -> Tensor:
    """Reveal the purest masked positions (Improved VQ-Diffusion, reference 4.5); all others stay unchanged."""
    out = x.clone()
    purity = log_p.exp().max(dim=1).values  # [B, L]
    for i, g in enumerate(rng.generators):
        masked = x[i] == mask_index
        n = int(masked.sum()) - keep_masked
        if max_reveal is not None:
            n = min(n, max_reveal)
        if n <= 0:
            continue
        score = torch.where(masked, purity[i], torch.zeros_like(purity[i])).cpu()
        score = score / score.max()
        pos = torch.multinomial(score, n, replacement=False, generator=g).to(x.device)
        sharpened = log_p[i][:, pos] * (1.0 + weight * score.to(x.device)[pos])
        u = torch.rand(sharpened.shape, generator=g).to(x.device)
        out[i, pos] = gumbel_sample(sharpened[None], u[None])[0]
    return out


def sample_vq(
    denoiser: Callable[[Tensor, Tensor], Tensor],
    process: DiscreteProcess,
    num_tokens: int,
    *,
    seeds: Sequence[int],
    method: str = "standard",
    stride: int = 1,
    purity_weight: float = 1.0,
    max_reveal: int | None = None,
    device: torch.device | str = "cpu",
    callback: Callable[[dict], None] | None = None,
) -> Tensor:
    """Sample len(seeds) token sequences [B, num_tokens] (codes 0..K-1) from all-[MASK] inputs.

    denoiser: (x_t [B, L], t [B]) -> log p(x0) [B, K, L], e.g. a VQDenoiser.
    method: one of VQ_METHODS; stride: the step stride v of "fast"/"fast_exact" (NFE = ceil((T-1)/v) + 1).
    purity_weight: r sharpening confident positions (purity); max_reveal: cap on tokens revealed per call.
    """
    if method not in VQ_METHODS:
        raise ValueError(f"unknown VQ sampling method {method!r}; choose one of {', '.join(VQ_METHODS)}")
    if method in ("standard", "purity") and stride != 1:
        raise ValueError(f"stride applies to 'fast'/'fast_exact'; method {method!r} takes every step")
    if int(num_tokens) != num_tokens or num_tokens < 1:
        raise ValueError(f"num_tokens must be a positive int, got {num_tokens}")
    rng = _Uniforms(seeds)
    b, k, T = len(rng.generators), process.num_classes, process.num_steps
    x = torch.full((b, int(num_tokens)), process.mask_index, dtype=torch.long, device=device)
    steps = vq_timesteps(T, stride)
    skip = stride - 1
    with torch.no_grad():
        for i, t_int in enumerate(steps):
            # the process's tables live on the CPU: index them with a CPU t, so no step waits on the device
            # (a device t would make _check_t / q_posterior copy it back: one host sync per step)
            t = torch.full((b,), t_int, dtype=torch.long)
            log_p = denoiser(x, torch.full((b,), t_int, dtype=torch.long, device=device))
            if log_p.shape != (b, k, x.shape[1]):
                raise ValueError(f"denoiser returned {tuple(log_p.shape)}, expected log p(x0) [{b}, {k}, {x.shape[1]}]")
            if method == "purity" and t_int > 0:
                x = _purity_step(log_p, x, process.mask_index, _reveal_budget(process, x.shape[1], t_int - 1),
                                 purity_weight, max_reveal, rng)
            else:
                if method == "fast" and t_int > skip:
                    post = process.q_posterior(log_p, x, t - skip)  # the released approximation
                elif method == "fast_exact" and t_int > 0:
                    nxt = steps[i + 1] if i + 1 < len(steps) else -1
                    post = process.q_posterior(log_p, x, t, torch.full_like(t, nxt))
                else:
                    post = process.q_posterior(log_p, x, t)
                x = gumbel_sample(post, rng.rand((k + 1, x.shape[1]), device))
            if callback is not None:
                callback({"i": i, "t": t_int, "x": x, "log_x0": log_p})
    if (x == process.mask_index).any():
        # only reachable when a model puts mass on [MASK] after the last step, which the posterior forbids
        raise RuntimeError("sampling ended with [MASK] tokens left; this is a bug, please report it")
    return x


def stride_for(method: str, steps: int, num_steps: int) -> int:
    """The stride v giving about `steps` network calls; the every-step methods accept only steps = T."""
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if method in ("standard", "purity"):
        if steps != num_steps:
            raise ValueError(f"sampler {method!r} takes all {num_steps} steps; use sampler fast or fast_exact for "
                             f"--steps {steps}")
        return 1
    if steps > num_steps:
        raise ValueError(f"steps {steps} exceeds the process's {num_steps} steps")
    return max(1, num_steps // int(steps))
