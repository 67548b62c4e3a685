"""Noise schedules: reference values (VDPM table, DDPM/SD tables, EDM grid), invertibility, monotonicity,
bit-exact agreement with diffusers' beta tables, and the config factory."""

from __future__ import annotations

import math

import pytest
from extras import require_extra
import torch

from versadiff.processes import (
    DiscreteSchedule,
    LogSNRSchedule,
    VPSDESchedule,
    build_schedule,
    cosine_betas,
    karras_sigmas,
    linear_betas,
    rescale_zero_terminal_snr,
    scaled_linear_betas,
)

f64 = torch.float64


TABLE_T = torch.tensor([0, 0.001, 0.25, 0.5, 0.75, 0.999, 1.0], dtype=f64)
# reference samplers_schedules.md section 1.1 (VDPM get_logsnr_schedule, float64)
TABLE = {
    "cosine": [20, 12.856, 1.763, 0, -1.763, -12.856, -20],
    "linear": [20, 6.907, 1.099, 0, -1.099, -6.907, -20],
    "sigmoid": [20, 19.96, 10, 0, -10, -19.96, -20],
    "legacy": [20.72, 9.115, 0.093, -2.464, -5.697, -10.097, -10.118],
}


def all_schedules():
    return [
        *(LogSNRSchedule(k) for k in ("linear", "sigmoid", "cosine", "legacy")),
        LogSNRSchedule("cosine", -10.0, 5.0),
        DiscreteSchedule.from_betas(linear_betas()),
        DiscreteSchedule.from_betas(scaled_linear_betas(T=50)),
        DiscreteSchedule.from_betas(cosine_betas(T=100)),
        VPSDESchedule(),
    ]


@pytest.mark.parametrize("kind", list(TABLE))
def test_logsnr_schedules_reproduce_vdpm_table(kind):
    got = LogSNRSchedule(kind).logsnr(TABLE_T)
    # the table is rounded to 3 decimals (2 for the legacy start)
    assert torch.allclose(got, torch.tensor(TABLE[kind], dtype=f64), atol=1.1e-3 if kind != "legacy" else 5e-3)


@pytest.mark.parametrize("kind", ["linear", "sigmoid", "cosine"])
@pytest.mark.parametrize("bounds", [(-20.0, 20.0), (-7.5, 12.25)])
def test_truncated_schedules_hit_end_points_exactly(kind, bounds):
    lo, hi = bounds
    s = LogSNRSchedule(kind, logsnr_min=lo, logsnr_max=hi)
    assert s.logsnr(torch.tensor(0.0, dtype=f64)).item() == hi
    assert s.logsnr(torch.tensor(1.0, dtype=f64)).item() == lo
    assert (s.logsnr_max, s.logsnr_min) == (hi, lo)
    # and the ends are not just pinned: the formula itself gets there continuously
    near = s.logsnr(torch.tensor([1e-13, 1 - 1e-13], dtype=f64))
    assert torch.allclose(near, torch.tensor([hi, lo], dtype=f64), atol=1e-4)


@pytest.mark.parametrize("sched", all_schedules(), ids=repr)
def test_schedules_strictly_decreasing_and_invertible(sched):
    t = torch.linspace(0, 1, 4001, dtype=f64)
    if isinstance(sched, VPSDESchedule):
        t = torch.linspace(sched.t_eps, 1, 4001, dtype=f64)
    lam = sched.logsnr(t)
    assert lam.dtype == f64 and torch.all(torch.isfinite(lam))
    assert torch.all(lam[1:] < lam[:-1])
    back = sched.t_from_logsnr(lam)
    assert torch.allclose(back, t, atol=1e-9, rtol=0)
    # outside the range it clamps
    assert sched.t_from_logsnr(torch.tensor([1e3, -1e3], dtype=f64)).tolist() == pytest.approx([0.0, 1.0], abs=1e-4)


def test_legacy_is_continuous_ddpm_linear():
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=f64)
    abar = torch.cumprod(1 - betas, 0)
    lam = LogSNRSchedule("legacy").logsnr(torch.linspace(0, 1, 1000, dtype=f64))
    err = (torch.sigmoid(lam) - abar).abs()
    # reference section 1.1: max abs err 1.1e-3, max rel err 2.6e-3; the end equals DDPM's abar_1000
    assert 1.0e-3 < err.max().item() < 1.2e-3
    assert 2.5e-3 < (err / abar).max().item() < 2.7e-3
    assert LogSNRSchedule("legacy").logsnr_min == pytest.approx(-10.118, abs=1e-3)
    with pytest.raises(ValueError, match="fixed end points"):
        LogSNRSchedule("legacy", logsnr_min=-15.0)


DIFFUSERS_CASES = [
    ("linear", {}, lambda: linear_betas(dtype=torch.float32)),
    ("scaled_linear", {"beta_start": 0.00085, "beta_end": 0.012}, lambda: scaled_linear_betas(dtype=torch.float32)),
    ("squaredcos_cap_v2", {}, lambda: cosine_betas(dtype=torch.float32)),
]


@pytest.mark.parametrize("name,kwargs,ours", DIFFUSERS_CASES, ids=[c[0] for c in DIFFUSERS_CASES])
def test_float32_tables_equal_diffusers_exactly(name, kwargs, ours):
    DDPMScheduler = require_extra("diffusers").DDPMScheduler
    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule=name, **kwargs)
    sched = DiscreteSchedule.from_betas(ours())
    assert torch.equal(sched.alphas_cumprod, ref.alphas_cumprod.double())
    assert torch.equal(sched.betas, ref.betas.double())
    # the float64 default differs only by float32 rounding
    cfg = {"type": "discrete", "betas": "cosine" if name == "squaredcos_cap_v2" else name, **kwargs}
    s64 = build_schedule(cfg)
    assert torch.allclose(s64.alphas_cumprod, sched.alphas_cumprod, rtol=1e-5, atol=1e-7)
    assert not torch.equal(s64.alphas_cumprod, sched.alphas_cumprod)
    assert torch.equal(build_schedule({**cfg, "dtype": "float32"}).alphas_cumprod, sched.alphas_cumprod)


def test_zero_terminal_snr_matches_diffusers_and_stays_finite_before_the_end():
    DDPMScheduler = require_extra("diffusers").DDPMScheduler
    ref = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, rescale_betas_zero_snr=True)
    cfg = {"type": "discrete", "betas": "scaled_linear", "dtype": "float32", "rescale_zero_terminal_snr": True}
    sched = build_schedule(cfg)
    assert torch.allclose(sched.alphas_cumprod, ref.alphas_cumprod.double(), rtol=1e-6, atol=1e-12)
    assert sched.alphas_cumprod[-1] == 0 and sched.logsnr_min == -math.inf
    t = torch.linspace(0, 1, 2001, dtype=f64)[:-1]
    lam = sched.logsnr(t)
    assert torch.all(torch.isfinite(lam)) and torch.all(lam[1:] < lam[:-1])
    assert torch.allclose(sched.t_from_logsnr(lam), t, atol=1e-9, rtol=0)
    assert sched.t_from_logsnr(torch.tensor(-math.inf, dtype=f64)).item() == 1.0
    # the first entry is untouched by the rescale (float64 path)
    b = scaled_linear_betas()
    assert rescale_zero_terminal_snr(b)[0].item() == pytest.approx(b[0].item(), rel=1e-12)


def test_discrete_reference_values_and_grid():
    lin = DiscreteSchedule.from_betas(linear_betas())
    T = lin.num_steps
    ends = torch.tensor([1.0, 1.0 / T], dtype=f64)
    # oracle: DDPM's table (Ho et al. 2020: betas linspace(1e-4, 0.02, 1000)), SD's (sqrt-linear 0.00085 -> 0.012);
    # sigma_VE = sqrt((1 - abar) / abar): 157.41 and 0.0100 for DDPM, 14.6146 and 0.0292 for SD
    for sched, betas in ((lin, torch.linspace(1e-4, 0.02, 1000, dtype=f64)),
                         (DiscreteSchedule.from_betas(scaled_linear_betas()),
                          torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=f64) ** 2)):
        abar = torch.cumprod(1 - betas, 0)[[-1, 0]]
        assert torch.allclose(sched.sigma_ve(ends), ((1 - abar) / abar).sqrt(), rtol=1e-10)
        assert torch.allclose(sched.logsnr(ends), torch.log(abar / (1 - abar)), rtol=1e-10)
    # every table entry n sits exactly at t = (n + 1) / T and the network sees index n
    n = torch.arange(T)
    t = lin.t_from_index(n)
    abar = lin.alphas_cumprod
    assert torch.allclose(lin.logsnr(t), torch.log(abar) - torch.log1p(-abar), rtol=0, atol=1e-12)
    assert torch.allclose(lin.net_time(t), n.double(), atol=1e-9)
    assert torch.allclose(torch.cumprod(1 - lin.betas, 0), abar, rtol=1e-12)
    # between entries: linear in t; below 1/T: linear extrapolation of the first interval
    lam = lin.logsnr(t[:2])
    mid = lin.logsnr(torch.tensor([1.5 / T, 0.0], dtype=f64))
    assert mid[0].item() == pytest.approx(0.5 * (lam[0] + lam[1]).item(), abs=1e-12)
    assert mid[1].item() == pytest.approx((2 * lam[0] - lam[1]).item(), abs=1e-12)
    # schedules built from a table directly equal those built from betas
    assert torch.equal(DiscreteSchedule(abar).alphas_cumprod, abar)


def test_vpsde_schedule():
    s = VPSDESchedule(beta_min=0.1, beta_max=20.0)
    t = torch.tensor([1e-3, 0.3, 1.0], dtype=f64)
    log_abar = -0.25 * t**2 * 19.9 - 0.5 * t * 0.1
    abar = torch.exp(log_abar)
    assert torch.allclose(s.logsnr(t), torch.log(abar / (1 - abar)), rtol=1e-12)
    # below t_eps lambda is clamped (finite, = lambda(t_eps)); t = 0 would be +inf
    assert s.logsnr(torch.tensor([0.0, 1e-7], dtype=f64)).tolist() == [s.logsnr(torch.tensor(s.t_eps)).item()] * 2
    assert s.num_steps is None and s.net_time(torch.tensor(0.5)).item() == 500.0
    with pytest.raises(ValueError, match="beta_min"):
        VPSDESchedule(beta_min=1.0, beta_max=0.5)


def test_karras_sigmas_match_edm():
    got = karras_sigmas(18, 0.002, 80.0)
    # oracle: EDM (Karras et al. 2022) eq. 5, sigma_i = (smax^(1/rho) + i/(N-1) (smin^(1/rho) - smax^(1/rho)))^rho,
    # rho = 7, without the trailing 0 (80, 57.586, 40.786, ..., 0.0075, 0.002)
    i = torch.arange(18, dtype=f64)
    ref = (80.0 ** (1 / 7) + i / 17 * (0.002 ** (1 / 7) - 80.0 ** (1 / 7))) ** 7
    assert got.dtype == f64 and got.shape == (18,)
    assert torch.allclose(got, ref, rtol=1e-12)
    assert got[0].item() == 80.0 and got[-1].item() == 0.002
    assert torch.all(got[1:] < got[:-1])
    assert karras_sigmas(1, 0.1, 10.0).tolist() == [10.0]
    # rho = 1 is uniform spacing in sigma
    assert torch.allclose(karras_sigmas(5, 1.0, 5.0, rho=1.0), torch.tensor([5.0, 4, 3, 2, 1], dtype=f64))
    for bad in [dict(n=0, sigma_min=0.1, sigma_max=1.0), dict(n=3, sigma_min=2.0, sigma_max=1.0)]:
        with pytest.raises(ValueError):
            karras_sigmas(**bad)


def test_build_schedule_types_and_errors():
    assert isinstance(build_schedule({"type": "logsnr", "kind": "sigmoid"}), LogSNRSchedule)
    s = build_schedule({"type": "logsnr", "kind": "cosine", "logsnr_min": -15, "logsnr_max": 15})
    assert (s.logsnr_min, s.logsnr_max) == (-15.0, 15.0)
    v = build_schedule({"type": "vpsde", "beta_min": 0.1, "beta_max": 20})
    assert isinstance(v, VPSDESchedule) and v.beta_max == 20.0
    d = build_schedule({"type": "discrete", "betas": "linear", "num_steps": 10, "beta_start": 1e-3, "beta_end": 0.2})
    assert d.num_steps == 10 and torch.allclose(d.betas, torch.linspace(1e-3, 0.2, 10, dtype=f64))
    bad = [
        ({"type": "ddpm"}, "discrete, logsnr, vpsde"),
        ({"kind": "cosine"}, "needs 'type'"),
        ({"type": "logsnr", "kind": "exp"}, "linear, sigmoid, cosine, legacy"),
        ({"type": "logsnr", "beta_min": 0.1}, "unknown keys"),
        ({"type": "discrete", "betas": "quadratic"}, "linear, scaled_linear, cosine"),
        ({"type": "discrete", "betas": "cosine", "beta_end": 0.02}, "cosine_s"),
        ({"type": "discrete", "dtype": "float16"}, "float64, float32"),
        ({"type": "logsnr", "logsnr_min": 5, "logsnr_max": -5}, "logsnr_min < logsnr_max"),
    ]
    for cfg, msg in bad:
        with pytest.raises(ValueError, match=msg) as e:
            build_schedule(cfg)
        assert "\n" not in str(e.value)


def test_bad_tables_and_times_are_rejected():
    with pytest.raises(ValueError, match="strictly decreasing"):
        DiscreteSchedule(torch.tensor([0.9, 0.95, 0.5]))
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        DiscreteSchedule(torch.tensor([1.0, 0.5]))
    with pytest.raises(ValueError, match=">= 2"):
        linear_betas(T=1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        LogSNRSchedule("cosine").logsnr(torch.tensor([1.5]))
