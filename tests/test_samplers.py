"""Samplers on data whose exact denoiser E[x | z_t] is known in closed form, plus grids, seeds and NFE."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from versadiff.denoiser import Denoiser
from versadiff.processes.schedules import DiscreteSchedule, LogSNRSchedule, linear_betas
from versadiff.samplers import (
    DEFAULT_SPACING,
    SAMPLERS,
    PerSampleNoise,
    TimeSteps,
    sample,
    sample_ddim,
    sample_dpmpp,
    sample_heun,
    timesteps_for,
)


class GaussianMixtureDenoiser:
    """Exact E[x | z_t] for i.i.d. coordinates x ~ sum_k pi_k N(mu_k, s_k^2), z_t = alpha x + sigma eps."""

    def __init__(self, schedule, weights, means, stds) -> None:
        self.schedule = schedule
        self.pi, self.mu, self.s = (torch.tensor(v, dtype=torch.float64) for v in (weights, means, stds))
        self.calls = 0

    def __call__(self, z: torch.Tensor, t: torch.Tensor):
        self.calls += 1
        # samplers pass one time for the whole batch: evaluate the schedule once (keeps the tests fast)
        a, sg = self.schedule.alpha_sigma(t[:1] if bool(torch.all(t == t[0])) else t)
        a, sg = a.reshape(-1, *([1] * (z.ndim - 1))), sg.reshape(-1, *([1] * (z.ndim - 1)))
        zz = z.double().unsqueeze(-1)  # [..., K]
        a, sg = a.unsqueeze(-1), sg.unsqueeze(-1)
        var = a**2 * self.s**2 + sg**2  # marginal variance of z given component k
        logp = torch.log(self.pi) - 0.5 * torch.log(var) - 0.5 * (zz - a * self.mu) ** 2 / var
        w = torch.softmax(logp, dim=-1)
        x0 = (w * (self.mu + a * self.s**2 / var * (zz - a * self.mu))).sum(-1)
        eps = (z.double() - a.squeeze(-1) * x0) / sg.squeeze(-1)
        return x0.to(z.dtype), eps.to(z.dtype)

    @property
    def mean(self) -> float:
        return float((self.pi * self.mu).sum())

    @property
    def std(self) -> float:
        return math.sqrt(float((self.pi * (self.s**2 + self.mu**2)).sum()) - self.mean**2)


COSINE = LogSNRSchedule("cosine", -20.0, 20.0)
LINEAR_T1000 = DiscreteSchedule.from_betas(linear_betas(1000))
MIXTURE = ([0.3, 0.7], [-1.0, 1.5], [0.3, 0.5])
GAUSS = ([1.0], [0.5], [0.7])

EDM_RANGE = {"sigma_min": 0.002, "sigma_max": 80.0}
# Deterministic samplers: step counts where the discretisation error on the moments is below ~0.02
ODE_CASES = [
    ("ddim", 100, "uniform", {}),
    ("dpmpp", 20, "uniform", {"order": 2}),
    ("dpmpp", 15, "uniform", {"order": 3}),
    ("dpm", 20, "uniform", {"order": 2}),
    ("dpm", 15, "uniform", {"order": 3}),
    ("euler", 100, "karras", EDM_RANGE),
    ("heun", 30, "karras", EDM_RANGE),
]
# Stochastic samplers, checked on random draws (standard error of the mean ~0.02, of the std ~0.014)
SDE_CASES = [
    ("ddpm", 100, {"variance": "fixed_small"}),
    ("ddpm", 100, {"variance": "fixed_large"}),
    ("ddpm", 100, {"variance": "fixed_medium"}),
    ("ddim", 100, {"eta": 1.0}),
    ("euler", 100, {"s_churn": 10.0, **EDM_RANGE}),
]


def _ids(cases):
    return [f"{c[0]}-{c[1]}-" + "-".join(f"{k}={v}" for k, v in c[-1].items() if not k.startswith("sigma")) for c in cases]


def _normal_quantiles(n: int) -> torch.Tensor:
    return torch.special.ndtri((torch.arange(n, dtype=torch.float64) + 0.5) / n).reshape(-1, 1)


@pytest.mark.parametrize("data", ["mixture", "gauss"])
@pytest.mark.parametrize("sampler,n,spacing,opts", ODE_CASES, ids=_ids(ODE_CASES))
def test_ode_sampler_reproduces_data_distribution(sampler, n, spacing, opts, data):
    # In 1-D the probability-flow ODE is a monotone map, so starting from the normal quantiles it must
    # end on the data quantiles: the moments are exact up to discretisation error, no sampling noise.
    den = GaussianMixtureDenoiser(COSINE, *(MIXTURE if data == "mixture" else GAUSS))
    opts = dict(opts)
    grid = {k: opts.pop(k) for k in ("sigma_min", "sigma_max") if k in opts}
    out = SAMPLERS[sampler](den, _normal_quantiles(2000), timesteps_for(COSINE, n, spacing, **grid), **opts)
    assert abs(float(out.mean()) - den.mean) < 0.02
    assert abs(float(out.std()) - den.std) < 0.025
    if data == "mixture":  # the mode weights, not only the moments: 30% of the mass sits left of 0.25
        assert abs(float((out < 0.25).double().mean()) - 0.3) < 0.015


@pytest.mark.parametrize("sampler,n,opts", SDE_CASES, ids=_ids(SDE_CASES))
def test_stochastic_sampler_reproduces_data_distribution(sampler, n, opts):
    den = GaussianMixtureDenoiser(COSINE, *MIXTURE)
    opts = dict(opts)
    grid = {k: opts.pop(k) for k in ("sigma_min", "sigma_max") if k in opts}
    spacing = "karras" if grid else "uniform"
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4000, 1, dtype=torch.float64, generator=gen)
    noise = lambda like: torch.randn(like.shape, generator=gen, dtype=like.dtype)  # noqa: E731
    out = SAMPLERS[sampler](den, x, timesteps_for(COSINE, n, spacing, **grid), noise=noise, **opts)
    assert abs(float(out.mean()) - den.mean) < 0.06
    assert abs(float(out.std()) - den.std) < 0.05
    assert abs(float((out < 0.25).double().mean()) - 0.3) < 0.03


def test_discrete_schedule_sampling_moments():
    den = GaussianMixtureDenoiser(LINEAR_T1000, *MIXTURE)
    out = sample_dpmpp(den, _normal_quantiles(2000), timesteps_for(LINEAR_T1000, 20, "trailing"))
    assert abs(float(out.mean()) - den.mean) < 0.02 and abs(float(out.std()) - den.std) < 0.025


def test_few_steps_are_worse_than_many():
    """The moment test can fail: a 2-step DDIM is visibly off on the mixture."""
    den = GaussianMixtureDenoiser(COSINE, *MIXTURE)
    out = sample_ddim(den, _normal_quantiles(2000), timesteps_for(COSINE, 3, "uniform"))
    assert abs(float(out.std()) - den.std) > 0.1


# --- grids ---


def test_discrete_spacings_match_diffusers_tables():
    def idx(**kw):
        return torch.round(timesteps_for(LINEAR_T1000, **kw).t * 1000 - 1).long().tolist()

    assert idx(n=10, spacing="leading") == list(range(900, -1, -100))
    assert idx(n=10, spacing="trailing") == list(range(999, 0, -100))
    assert idx(n=10, spacing="linspace") == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
    sd = idx(n=50, spacing="leading", steps_offset=1)
    assert sd[0] == 981 and sd[-1] == 1


def test_grid_finals_and_continuous_spacings():
    clean = timesteps_for(LINEAR_T1000, 10, "leading")
    first = timesteps_for(LINEAR_T1000, 10, "leading", final="first")
    assert math.isinf(clean.logsnr[-1]) and clean.final_is_clean
    assert float(first.logsnr[-1]) == pytest.approx(float(LINEAR_T1000.logsnr(torch.tensor(1e-3, dtype=torch.float64))))
    uni = timesteps_for(COSINE, 4, "uniform")
    assert torch.allclose(uni.t, torch.tensor([1.0, 0.75, 0.5, 0.25], dtype=torch.float64))
    lam = timesteps_for(COSINE, 4, "logsnr", final="first").logsnr
    assert torch.allclose(lam, torch.linspace(-20, 20, 5, dtype=torch.float64))
    kar = timesteps_for(COSINE, 18, "karras", sigma_min=0.002, sigma_max=80.0)
    sig = torch.exp(-0.5 * kar.logsnr[:-1])
    # EDM's 18-step grid, eq. 5 of Karras et al. 2022 (rho = 7) as the oracle
    edm1 = (80.0 ** (1 / 7) + (0.002 ** (1 / 7) - 80.0 ** (1 / 7)) / 17) ** 7  # 57.586
    assert float(sig[0]) == pytest.approx(80.0) and float(sig[1]) == pytest.approx(edm1, rel=1e-9)
    assert float(sig[-1]) == pytest.approx(0.002) and torch.allclose(COSINE.logsnr(kar.t), kar.logsnr[:-1])


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"schedule": COSINE, "n": 10, "spacing": "leading"}, "discrete schedule"),
        ({"schedule": LINEAR_T1000, "n": 10, "spacing": "sideways"}, "unknown spacing"),
        ({"schedule": LINEAR_T1000, "n": 0}, "positive int"),
        ({"schedule": LINEAR_T1000, "n": 1001, "spacing": "trailing"}, "exceed"),
        ({"schedule": LINEAR_T1000, "n": 10, "spacing": "trailing", "steps_offset": 1}, "steps_offset"),
        ({"schedule": LINEAR_T1000, "n": 10, "final": "last"}, "unknown final"),
    ],
)
def test_bad_grid_requests_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        timesteps_for(**kwargs)


def test_timesteps_validation():
    with pytest.raises(ValueError, match="N \\+ 1"):
        TimeSteps(torch.tensor([1.0, 0.5]), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="decreasing"):
        TimeSteps(torch.tensor([0.5, 1.0]), torch.tensor([0.0, 1.0, 2.0]))


# --- seeds, NFE, callbacks, options ---


class PixelNet(nn.Module):
    """A per-pixel network: its output for one sample cannot depend on the batch (a conv's could, via BLAS blocking)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([0.9, 0.7, 0.5]).reshape(1, 3, 1, 1))

    def forward(self, x, t):
        return torch.tanh(self.scale * x) * (0.5 + t.reshape(-1, 1, 1, 1) / 2000)


@pytest.mark.parametrize("sampler,opts", [("ddpm", {}), ("ddim", {"eta": 0.5}), ("euler", {"s_churn": 5.0}), ("dpmpp", {})])
def test_per_sample_seeds_are_batch_independent(sampler, opts):
    den = Denoiser(PixelNet(), LINEAR_T1000, "eps")
    kw = dict(sampler=sampler, steps=6, spacing="trailing", **opts) if sampler != "euler" else dict(sampler=sampler, steps=6, **opts)
    alone = sample(den, (3, 8, 8), LINEAR_T1000, seeds=[7], **kw)
    batch = sample(den, (3, 8, 8), LINEAR_T1000, seeds=[1, 7, 3], **kw)
    assert torch.equal(alone[0], batch[1])
    assert not torch.equal(batch[0], batch[1])


def test_per_sample_noise_rejects_wrong_batch():
    noise = PerSampleNoise([1, 2])
    assert noise.initial((3,)).shape == (2, 3)
    with pytest.raises(ValueError, match="one seed per sample"):
        noise(torch.zeros(3, 4))


def test_heun_nfe_and_callback():
    den = GaussianMixtureDenoiser(COSINE, *GAUSS)
    seen = []
    steps = timesteps_for(COSINE, 10, "karras")
    sample_heun(den, torch.randn(4, 1, dtype=torch.float64), steps, callback=seen.append)
    assert den.calls == 2 * 10 - 1
    assert [c["i"] for c in seen] == list(range(10)) and set(seen[0]) == {"i", "t", "x", "x0"}


def test_registry_and_option_errors():
    assert set(SAMPLERS) == set(DEFAULT_SPACING) == {"ddpm", "ddim", "dpmpp", "dpm", "euler", "heun"}
    den = GaussianMixtureDenoiser(COSINE, *GAUSS)
    with pytest.raises(ValueError, match="unknown sampler"):
        sample(den, (1,), COSINE, sampler="plms", seeds=[0])
    with pytest.raises(ValueError, match="unknown options"):
        sample(den, (1,), COSINE, sampler="ddim", steps=3, seeds=[0], order=2)
    with pytest.raises(ValueError, match="eta"):
        sample(den, (1,), COSINE, sampler="ddim", steps=3, seeds=[0], eta=1.5)


def test_half_precision_model_keeps_float32_state():
    den = GaussianMixtureDenoiser(COSINE, *GAUSS)
    out = sample(den, (1,), COSINE, sampler="dpmpp", steps=10, seeds=range(64), dtype=torch.bfloat16)
    ref = sample(den, (1,), COSINE, sampler="dpmpp", steps=10, seeds=range(64), dtype=torch.float32)
    assert out.dtype == torch.bfloat16 and torch.allclose(out.float(), ref, atol=0.05)


def _fixed_noise(seed: int):
    gen = torch.Generator().manual_seed(seed)
    return lambda like: torch.randn(like.shape, generator=gen, dtype=like.dtype)  # noqa: E731


def test_ddim_eta1_equals_ddpm_fixed_small_step_for_step():
    # eta = 1 gives exactly the fixed_small posterior (Song et al. 2021, §4.1), so with the same noise
    # stream the two samplers must agree, draw for draw
    den = GaussianMixtureDenoiser(COSINE, *MIXTURE)
    x = torch.randn(500, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    steps = timesteps_for(COSINE, 12, "uniform")
    a = SAMPLERS["ddim"](den, x, steps, eta=1.0, noise=_fixed_noise(5))
    b = SAMPLERS["ddpm"](den, x, steps, variance="fixed_small", noise=_fixed_noise(5))
    assert torch.allclose(a, b, atol=1e-10)


@pytest.mark.parametrize("fn", ["dpmpp", "dpm", "euler"])
def test_first_order_solvers_equal_ddim(fn):
    den = GaussianMixtureDenoiser(LINEAR_T1000, *MIXTURE)
    x = torch.randn(500, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    steps = timesteps_for(LINEAR_T1000, 8, "trailing")
    ref = SAMPLERS["ddim"](den, x, steps)
    opts = {} if fn == "euler" else {"order": 1}
    assert torch.allclose(SAMPLERS[fn](den, x, steps, **opts), ref, atol=1e-9)


def test_sample_accepts_ready_timesteps_and_reports_progress():
    den = GaussianMixtureDenoiser(COSINE, *GAUSS)
    steps = timesteps_for(COSINE, 6, "logsnr")
    seen = []
    a = sample(den, (2,), COSINE, sampler="dpmpp", steps=steps, seeds=[3, 4], callback=seen.append)
    b = sample(den, (2,), COSINE, sampler="dpmpp", steps=6, spacing="logsnr", seeds=[3, 4])
    assert torch.equal(a, b) and len(seen) == 6 and a.shape == (2, 2)
    with pytest.raises(ValueError, match="not both"):
        sample(den, (2,), COSINE, sampler="dpmpp", steps=steps, spacing="karras", seeds=[3])
    with pytest.raises(ValueError, match="final='first'"):
        timesteps_for(LINEAR_T1000, 5, "karras", sigma_min=1e-3, final="first")
