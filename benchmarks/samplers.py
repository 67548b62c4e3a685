"""Sampler benchmark (GitHub issue 2, item 6).

1. Accuracy vs NFE on a 1-D two-component Gaussian mixture whose exact denoiser E[x | z_t] is closed form,
   so the only error is the solver's: W1 distance between the samples and the exact data distribution.
   Deterministic samplers start from the exact quantiles of the marginal z_1 (no sampling noise);
   stochastic ones from exact random draws of z_1 (their W1 includes a sampling-noise floor, shown).
2. Sampler overhead per step with the model excluded (a zero-cost denoiser) vs a small conv net forward,
   batch 64x3x32x32, all measured side by side in this one run.

Run: .venv/bin/python benchmarks/samplers.py            (about 1-3 minutes, one CPU thread)
"""

from __future__ import annotations

import math
import platform
import sys
import time

import torch
from torch import nn

from versadiff.denoiser import Denoiser
from versadiff.processes.schedules import DiscreteSchedule, linear_betas
from versadiff.samplers import DEFAULT_SPACING, SAMPLERS, timesteps_for

COMMAND = "python benchmarks/samplers.py"
SCHED = DiscreteSchedule.from_betas(linear_betas(1000))  # DDPM linear betas, T = 1000
WEIGHTS, MEANS, STDS = (torch.tensor(v, dtype=torch.float64) for v in ([0.3, 0.7], [-1.0, 1.5], [0.3, 0.5]))
NFES = (5, 10, 20, 50, 100, 1000)
# (label, sampler, options, stochastic)
VARIANTS = [
    ("ddpm (fixed_small)", "ddpm", {}, True),
    ("ddpm (fixed_large)", "ddpm", {"variance": "fixed_large"}, True),
    ("ddim eta=0", "ddim", {}, False),
    ("ddim eta=1", "ddim", {"eta": 1.0}, True),
    ("dpm++ 2M", "dpmpp", {"order": 2}, False),
    ("dpm++ 3M", "dpmpp", {"order": 3}, False),
    ("dpm 2M (noise form)", "dpm", {"order": 2}, False),
    ("euler", "euler", {}, False),
    ("heun", "heun", {}, False),
]


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _bc(v, z):
    return v.reshape(-1, *([1] * (z.ndim - 1))).unsqueeze(-1)


def mixture_denoiser(z: torch.Tensor, t: torch.Tensor):
    """Exact E[x | z_t] for x ~ sum_k w_k N(m_k, s_k^2)."""
    a, s = SCHED.alpha_sigma(t[:1] if bool(torch.all(t == t[0])) else t)  # one schedule evaluation per step
    a, s = _bc(a, z), _bc(s, z)
    zz = z.double().unsqueeze(-1)
    var = a**2 * STDS**2 + s**2
    w = torch.softmax(torch.log(WEIGHTS) - 0.5 * torch.log(var) - 0.5 * (zz - a * MEANS) ** 2 / var, dim=-1)
    x0 = (w * (MEANS + a * STDS**2 / var * (zz - a * MEANS))).sum(-1)
    return x0.to(z.dtype), ((z.double() - a[..., 0] * x0) / s[..., 0]).to(z.dtype)


def mixture_quantiles(p: torch.Tensor, alpha: float = 1.0, sigma: float = 0.0) -> torch.Tensor:
    """Quantiles of alpha * x + sigma * eps (a Gaussian mixture too), by bisection on its CDF."""
    m, sd = alpha * MEANS, torch.sqrt(alpha**2 * STDS**2 + sigma**2)
    lo, hi = torch.full_like(p, -50.0), torch.full_like(p, 50.0)
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        cdf = (WEIGHTS * torch.special.ndtr((mid.unsqueeze(-1) - m) / sd)).sum(-1)
        lo, hi = torch.where(cdf < p, mid, lo), torch.where(cdf < p, hi, mid)
    return 0.5 * (lo + hi)


def w1_to_data(samples: torch.Tensor, ref_q: torch.Tensor) -> float:
    """W1 between an empirical sample and the data law, via sorted samples vs exact mid-quantiles."""
    return float((samples.flatten().sort().values - ref_q).abs().mean())


def accuracy_table() -> list[str]:
    n_det, n_sto = 1000, 10000
    gen = torch.Generator().manual_seed(0)
    a1, s1 = (float(v) for v in SCHED.alpha_sigma(torch.tensor(1.0, dtype=torch.float64)))
    p_det = (torch.arange(n_det, dtype=torch.float64) + 0.5) / n_det
    p_sto = (torch.arange(n_sto, dtype=torch.float64) + 0.5) / n_sto
    z_det = mixture_quantiles(p_det, a1, s1).reshape(-1, 1)
    q_det, q_sto = mixture_quantiles(p_det), mixture_quantiles(p_sto)
    comp = torch.multinomial(WEIGHTS, n_sto, replacement=True, generator=gen)
    x_exact = MEANS[comp] + STDS[comp] * torch.randn(n_sto, generator=gen, dtype=torch.float64)
    floor = w1_to_data(x_exact, q_sto)

    rows = ["| sampler (spacing) | " + " | ".join(f"NFE {n}" for n in NFES) + " |", "|---|" + "---|" * len(NFES)]
    for label, name, opts, stochastic in VARIANTS:
        cells = []
        for nfe in NFES:
            n = (nfe + 1) // 2 if name == "heun" else nfe
            steps = timesteps_for(SCHED, n, DEFAULT_SPACING[name])
            if stochastic:
                x = (a1 * x_exact[torch.randperm(n_sto, generator=gen)] + s1 * torch.randn(n_sto, generator=gen, dtype=torch.float64)).reshape(-1, 1)
                noise = lambda like: torch.randn(like.shape, generator=gen, dtype=like.dtype)  # noqa: E731
                out, ref = SAMPLERS[name](mixture_denoiser, x, steps, noise=noise, **opts), q_sto
            else:
                out, ref = SAMPLERS[name](mixture_denoiser, z_det, steps, **opts), q_det
            real_nfe = 2 * n - 1 if name == "heun" else n
            cells.append(f"{w1_to_data(out, ref):.4f}" + ("" if real_nfe == nfe else f" ({real_nfe})"))
        rows.append(f"| {label} ({DEFAULT_SPACING[name]}) | " + " | ".join(cells) + " |")
    rows.append(f"| exact samples (noise floor of stochastic rows, n={n_sto}) | " + " | ".join([f"{floor:.4f}"] * len(NFES)) + " |")
    return rows


class SmallConvNet(nn.Module):
    """A tiny UNet-shaped stand-in: 3 -> 32 -> 64 (down) -> 64 -> 32 (up, skip) -> 3 convolutions."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Conv2d(3, 32, 3, padding=1)
        self.down = nn.Conv2d(32, 64, 3, stride=2, padding=1)
        self.mid = nn.Conv2d(64, 64, 3, padding=1)
        self.up = nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1)
        self.out = nn.Conv2d(64, 3, 3, padding=1)

    def forward(self, x, t):
        h0 = torch.nn.functional.silu(self.inp(x))
        h = torch.nn.functional.silu(self.down(h0)) * torch.cos(t / 1000).reshape(-1, 1, 1, 1)
        h = torch.nn.functional.silu(self.mid(h))
        h = torch.nn.functional.silu(self.up(h))
        return self.out(torch.cat([h, h0], dim=1))


def _time_per_step(fn, reps: int) -> float:
    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def overhead_table() -> list[str]:
    torch.manual_seed(0)
    net = SmallConvNet().eval()
    den_net = Denoiser(net, SCHED, "eps")
    zero_cost = lambda x, t: (x, x)  # noqa: E731  -- the model excluded: only the sampler's own work remains
    x = torch.randn(64, 3, 32, 32)
    n = 10
    noise = torch.randn_like  # the stochastic samplers' own draws are part of their overhead
    with torch.no_grad():
        t_net = _time_per_step(lambda: den_net(x, torch.full((64,), 0.5, dtype=torch.float64)), 7)
        rows = [
            "| sampler | overhead per step, model excluded (ms) | with small conv net (ms/step) | overhead / net forward |",
            "|---|---|---|---|",
        ]
        for label, name, opts, _ in VARIANTS:
            steps = timesteps_for(SCHED, n, DEFAULT_SPACING[name])
            nfe = 2 * n - 1 if name == "heun" else n
            over = _time_per_step(lambda: SAMPLERS[name](zero_cost, x, steps, noise=noise, **opts), 15) / n
            full = _time_per_step(lambda: SAMPLERS[name](den_net, x, steps, noise=noise, **opts), 2) / n
            rows.append(f"| {label} | {over * 1e3:.2f} | {full * 1e3:.1f} (NFE/step {nfe / n:.1f}) | {over / t_net:.3f} |")
    rows.append(f"| (net forward alone, one call) | - | {t_net * 1e3:.1f} | 1 |")
    return rows


def main() -> None:
    # one thread: the machine is shared, and a single thread keeps the side-by-side ratios stable
    torch.set_num_threads(1)
    t0 = time.time()
    dev = f"{cpu_name()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, Python {sys.version.split()[0]}"
    print(f"Command: `{COMMAND}`  \nDevice: {dev}\n")
    print("### W1 to the exact data distribution vs NFE (1-D Gaussian mixture, DDPM linear betas T=1000)\n")
    print(f"Device: {dev}. Default spacing per sampler; heun's NFE = 2N - 1 shown in brackets where it differs.\n")
    print("\n".join(accuracy_table()))
    print("\n### Sampler overhead per step, batch 64x3x32x32 float32, 10 steps\n")
    print(f"Device: {dev}. Best of several runs; overhead = sampler with a zero-cost denoiser.\n")
    print("\n".join(overhead_table()))
    print(f"\nTotal benchmark time: {time.time() - t0:.0f} s on {cpu_name()}")


if __name__ == "__main__":
    main()
