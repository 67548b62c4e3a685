"""Samplers for Gaussian diffusion, all with one signature:

    fn(denoiser, x, steps, *, noise=None, callback=None, disable=True, **options) -> Tensor

denoiser(x, t[B]) -> (x0_hat, eps_hat) (see versadiff.denoiser); x is z at steps.t[0] in VP space;
noise(like) draws fresh N(0, I) (default torch.randn_like); callback receives
{"i", "t", "x", "x0"} with the state x at t_i and the model's x0 prediction there.

Solver coefficients are computed in float64 from the log-SNRs and meet the data as Python floats; the
state is kept in at least float32 while the model may run in half precision (the model sees x cast to
the input's dtype).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor
from tqdm.auto import tqdm

from versadiff.denoiser import DenoiserFn
from versadiff.processes.base import alpha_sigma_from_logsnr
from versadiff.processes.gaussian import posterior
from versadiff.samplers.noise import NoiseFn
from versadiff.samplers.timesteps import TimeSteps

__all__ = ["sample_ddpm", "sample_ddim", "sample_dpmpp", "sample_dpm", "sample_euler", "sample_heun"]

Callback = Callable[[dict], None]


class _Model:
    """Call the denoiser at a scalar time with the model's dtype; return predictions in the state dtype."""

    def __init__(self, denoiser: DenoiserFn, x: Tensor) -> None:
        if not torch.is_floating_point(x):
            raise ValueError(f"the initial sample must be a float tensor, got {x.dtype}")
        self.denoiser, self.model_dtype = denoiser, x.dtype
        self.state_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        self.nfe = 0

    def __call__(self, x: Tensor, t: float | Tensor) -> tuple[Tensor, Tensor]:
        tb = torch.full((x.shape[0],), float(t), dtype=torch.float64, device=x.device)
        x0, eps = self.denoiser(x.to(self.model_dtype), tb)
        self.nfe += 1
        return x0.to(self.state_dtype), eps.to(self.state_dtype)


def _setup(denoiser: DenoiserFn, x: Tensor, steps: TimeSteps, noise: NoiseFn | None) -> tuple[_Model, Tensor, NoiseFn]:
    if not isinstance(steps, TimeSteps):
        raise ValueError(f"steps must be a TimeSteps (see timesteps_for), got {type(steps).__name__}")
    model = _Model(denoiser, x)
    return model, x.to(model.state_dtype), (noise if noise is not None else torch.randn_like)


def _report(callback: Callback | None, i: int, steps: TimeSteps, x: Tensor, x0: Tensor) -> None:
    if callback is not None:
        callback({"i": i, "t": float(steps.t[i]), "x": x, "x0": x0})


def _no_options(name: str, options: dict[str, Any]) -> None:
    if options:
        raise ValueError(f"{name} got unknown options {sorted(options)}; see its docstring for the valid ones")


def _ab(lam: Tensor | float) -> tuple[float, float]:
    """(alpha, sigma) as float64 Python floats."""
    a, s = alpha_sigma_from_logsnr(torch.as_tensor(lam, dtype=torch.float64))
    return float(a), float(s)


def _out(x: Tensor, like: Tensor) -> Tensor:
    return x.to(like.dtype)


# ---------------------------------------------------------------------------------------------------
# ancestral and DDIM
# ---------------------------------------------------------------------------------------------------


def sample_ddpm(
    denoiser: DenoiserFn,
    x: Tensor,
    steps: TimeSteps,
    *,
    noise: NoiseFn | None = None,
    callback: Callback | None = None,
    disable: bool = True,
    variance: str = "fixed_small",
    intp_frac: float = 0.3,
    **options: Any,
) -> Tensor:
    """Ancestral sampling z_s ~ N(mean, var) of q(z_s | z_t, x = x0_hat) (Ho et al. 2020; VDPM `p_sample`).

    variance: fixed_small | fixed_large | fixed_medium (log-interpolated with intp_frac), see
    processes.gaussian.posterior. The last step returns x0_hat without noise, as VDPM does.
    """
    _no_options("sample_ddpm", options)
    model, z, noise = _setup(denoiser, x, steps, noise)
    n = len(steps)
    for i in tqdm(range(n), disable=disable):
        x0, _ = model(z, steps.t[i])
        _report(callback, i, steps, z, x0)
        if i == n - 1:
            z = x0
            break
        mean, logvar = posterior(z, x0, steps.logsnr[i], steps.logsnr[i + 1], variance, intp_frac)
        z = mean + torch.exp(0.5 * logvar) * noise(z)
    return _out(z, x)


def _stride_targets(steps: TimeSteps, diffusers_stride: bool | int) -> Tensor:
    """diffusers DDIMScheduler's targets: table index n steps to n - stride (or to the final target below 0)."""
    sched = steps.schedule
    if sched is None or sched.num_steps is None:
        raise ValueError("diffusers_stride needs a grid on a discrete schedule (build it with timesteps_for)")
    T = sched.num_steps
    stride = T // len(steps) if diffusers_stride is True else diffusers_stride
    if isinstance(stride, bool) or int(stride) != stride or stride < 1:
        raise ValueError(f"diffusers_stride must be True or a positive int, got {diffusers_stride!r}")
    idx = steps.t * T - 1.0
    n = torch.round(idx)
    if torch.any((idx - n).abs() > 1e-6):
        raise ValueError("diffusers_stride needs a grid on integer table indices (leading / trailing / linspace)")
    prev = n - int(stride)
    lam_prev = sched.logsnr(sched.t_from_index(prev.clamp(min=0)))
    return torch.where(prev >= 0, lam_prev, steps.logsnr[-1])


def sample_ddim(
    denoiser: DenoiserFn,
    x: Tensor,
    steps: TimeSteps,
    *,
    noise: NoiseFn | None = None,
    callback: Callback | None = None,
    disable: bool = True,
    eta: float = 0.0,
    diffusers_stride: bool | int = False,
    **options: Any,
) -> Tensor:
    """DDIM (Song et al. 2021, eq. 12): z_s = alpha_s x0 + sqrt(sigma_s^2 - var) eps + sqrt(var) noise.

    var = eta^2 (1 - r) sigma_s^2 with r = SNR_t / SNR_s; eta = 0 is the deterministic ODE step,
    eta = 1 the fixed_small ancestral step (and also exactly diffusers' EulerAncestralDiscreteScheduler step).

    Each step goes from grid point i to grid point i + 1 (the last to the grid's final target).
    diffusers_stride: compatibility with diffusers' DDIMScheduler, which steps from table index n to
    n - T // N whatever the grid (huggingface/diffusers#9261), and to its final alpha below index 0. The
    model is still evaluated at the grid points, so the state and the model's noise level disagree
    wherever the grid is not stride-regular: trailing with N not dividing T, and linspace (unless N = T). True: stride T // len(steps); an int: that stride (for a grid cut from a longer one,
    e.g. img2img's timesteps[k:] of an N-step grid, pass T // N). No effect on leading grids.
    """
    _no_options("sample_ddim", options)
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"DDIM eta must lie in [0, 1] (0 = deterministic, 1 = ancestral), got {eta}")
    targets = _stride_targets(steps, diffusers_stride) if diffusers_stride is not False else steps.logsnr[1:]
    model, z, noise = _setup(denoiser, x, steps, noise)
    for i in tqdm(range(len(steps)), disable=disable):
        x0, eps = model(z, steps.t[i])
        _report(callback, i, steps, z, x0)
        lam_t, lam_s = float(steps.logsnr[i]), float(targets[i])
        a_s, s_s = _ab(lam_s)
        var = 0.0
        if eta > 0 and lam_s > lam_t and s_s > 0:
            var = eta**2 * -math.expm1(lam_t - lam_s) * s_s**2
        z = a_s * x0 + math.sqrt(max(s_s**2 - var, 0.0)) * eps
        if var > 0:
            z = z + math.sqrt(var) * noise(z)
    return _out(z, x)


# ---------------------------------------------------------------------------------------------------
# DPM-Solver multistep (Lu et al. 2022, 2022b); h in half-log-SNR lambda_D = lambda / 2
# ---------------------------------------------------------------------------------------------------


def _multistep_order(i: int, n: int, order: int, lower_order_final: bool, euler_at_final: bool) -> int:
    """diffusers' order schedule: warm up 1, 2, ...; lower orders at the end when n < 15 (or first order on
    the last step with euler_at_final); the step into sigma = 0 is handled by the caller (exact, first order)."""
    k = min(order, i + 1)
    if i == n - 1 and (euler_at_final or (lower_order_final and n < 15)):
        return 1
    if i == n - 2 and lower_order_final and n < 15:
        return min(k, 2)
    return k


def _dpm_multistep(
    denoiser: DenoiserFn,
    x: Tensor,
    steps: TimeSteps,
    noise: NoiseFn | None,
    callback: Callback | None,
    disable: bool,
    order: int,
    lower_order_final: bool,
    data_prediction: bool,
    solver_type: str,
    euler_at_final: bool,
) -> Tensor:
    if order not in (1, 2, 3):
        raise ValueError(f"DPM-Solver order must be 1, 2 or 3, got {order}")
    if solver_type not in ("midpoint", "heun"):
        raise ValueError(f"DPM-Solver solver_type must be 'midpoint' or 'heun', got {solver_type!r}")
    model, z, _ = _setup(denoiser, x, steps, noise)
    n = len(steps)
    lam = (steps.logsnr / 2.0).tolist()  # half log-SNR lambda_D = log(alpha / sigma)
    hist: list[Tensor] = []  # model outputs (x0 for ++, eps for the noise form), newest last
    for i in tqdm(range(n), disable=disable):
        x0, eps = model(z, steps.t[i])
        _report(callback, i, steps, z, x0)
        hist = (hist + [x0 if data_prediction else eps])[-3:]
        lam_s, lam_t = lam[i], lam[i + 1]
        if math.isinf(lam_t):  # the step into sigma = 0 is exact at first order: z = x0
            z = x0
            continue
        h = lam_t - lam_s
        if h == 0:  # target equals the current point (e.g. final="first" on the last grid point)
            continue
        k = _multistep_order(i, n, order, lower_order_final, euler_at_final)
        a_s, s_s = _ab(2 * lam_s)
        a_t, s_t = _ab(2 * lam_t)
        m0 = hist[-1]
        if data_prediction:  # DPM-Solver++ (Lu et al. 2022b, eqs. 9-10 and multistep 3rd order)
            phi1 = math.expm1(-h)
            z = (s_t / s_s) * z - (a_t * phi1) * m0
            c1, c2 = -0.5 * a_t * phi1, a_t * (phi1 / h + 1.0)
            c3 = -a_t * ((phi1 + h) / h**2 - 0.5)
        else:  # noise form (Lu et al. 2022, multistep variants)
            phi1 = math.expm1(h)
            z = (a_t / a_s) * z - (s_t * phi1) * m0
            c1, c2 = -0.5 * s_t * phi1, -s_t * (phi1 / h - 1.0)
            c3 = -s_t * ((phi1 - h) / h**2 - 0.5)
        if k == 2:
            r0 = (lam_s - lam[i - 1]) / h
            z = z + (c1 if solver_type == "midpoint" else c2) * ((m0 - hist[-2]) / r0)
        elif k == 3:
            r0, r1 = (lam_s - lam[i - 1]) / h, (lam[i - 1] - lam[i - 2]) / h
            d1_0, d1_1 = (m0 - hist[-2]) / r0, (hist[-2] - hist[-3]) / r1
            d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
            d2 = (d1_0 - d1_1) / (r0 + r1)
            z = z + c2 * d1 + c3 * d2
    return _out(z, x)


def sample_dpmpp(
    denoiser: DenoiserFn,
    x: Tensor,
    steps: TimeSteps,
    *,
    noise: NoiseFn | None = None,
    callback: Callback | None = None,
    disable: bool = True,
    order: int = 2,
    lower_order_final: bool = True,
    solver_type: str = "midpoint",
    euler_at_final: bool = False,
    **options: Any,
) -> Tensor:
    """DPM-Solver++ multistep in data-prediction form (orders 1-3).

    Warm-up starts at first order; lower_order_final drops to orders 2, 1 on the last two steps when
    fewer than 15 steps are taken (diffusers' rule); euler_at_final makes the last step first order; the
    step into sigma = 0 is first order (returns x0). solver_type: the 2nd-order update, "midpoint"
    (default) or "heun" (diffusers' option of the same name; order 3 is unaffected).
    Deterministic: `noise` is accepted for the shared signature but never drawn.
    """
    _no_options("sample_dpmpp", options)
    return _dpm_multistep(
        denoiser, x, steps, noise, callback, disable, order, lower_order_final, True, solver_type, euler_at_final
    )


def sample_dpm(
    denoiser: DenoiserFn,
    x: Tensor,
    steps: TimeSteps,
    *,
    noise: NoiseFn | None = None,
    callback: Callback | None = None,
    disable: bool = True,
    order: int = 2,
    lower_order_final: bool = True,
    solver_type: str = "midpoint",
    euler_at_final: bool = False,
    **options: Any,
) -> Tensor:
    """DPM-Solver multistep in noise-prediction form (orders 1-3); otherwise as `sample_dpmpp`."""
    _no_options("sample_dpm", options)
    return _dpm_multistep(
        denoiser, x, steps, noise, callback, disable, order, lower_order_final, False, solver_type, euler_at_final
    )


# ---------------------------------------------------------------------------------------------------
# EDM Euler / Heun in VE coordinates x = z / alpha, sigma_ve = exp(-lambda / 2) (Karras et al. 2022)
# ---------------------------------------------------------------------------------------------------


def _edm(
    denoiser: DenoiserFn,
    x: Tensor,
    steps: TimeSteps,
    noise: NoiseFn | None,
    callback: Callback | None,
    disable: bool,
    heun: bool,
    s_churn: float,
    s_tmin: float,
    s_tmax: float,
    s_noise: float,
) -> Tensor:
    if s_churn < 0 or s_noise < 0:
        raise ValueError(f"s_churn and s_noise must be >= 0, got {s_churn}, {s_noise}")
    model, z, noise = _setup(denoiser, x, steps, noise)
    n = len(steps)
    lam = steps.logsnr.tolist()
    if math.isinf(lam[0]) and lam[0] < 0:
        raise ValueError("Euler/Heun need a finite sigma at the first step; start below zero terminal SNR")
    sig = [math.exp(-0.5 * v) for v in lam]  # VE sigma; 0 at the clean end
    for i in tqdm(range(n), disable=disable):
        s_cur, s_next = sig[i], sig[i + 1]
        t_hat, s_hat = float(steps.t[i]), s_cur
        gamma = min(s_churn / n, math.sqrt(2.0) - 1.0) if s_churn > 0 and s_tmin <= s_cur <= s_tmax else 0.0
        x_ve = z * math.sqrt(1.0 + s_cur**2)  # VP -> VE: divide by alpha
        if gamma > 0:  # EDM Alg. 2 lines 4-6: raise the noise level to s_hat, then evaluate there
            t_hat = float(steps.t_at(-2.0 * math.log(s_cur * (1.0 + gamma))))
            s_hat = float(steps.schedule.sigma_ve(torch.tensor(t_hat, dtype=torch.float64)))
            if s_hat > s_cur:  # may be capped by the schedule's noisiest point
                x_ve = x_ve + math.sqrt(s_hat**2 - s_cur**2) * s_noise * noise(x_ve)
        x0, _ = model(x_ve / math.sqrt(1.0 + s_hat**2), t_hat)
        _report(callback, i, steps, z, x0)
        d = (x_ve - x0) / s_hat
        x_next = x_ve + (s_next - s_hat) * d
        if heun and s_next > 0:  # second-order correction (EDM Alg. 2 lines 9-11); Euler into sigma = 0
            t_next = float(steps.t[i + 1]) if i + 1 < n else float(steps.t_at(lam[n]))
            x0_next, _ = model(x_next / math.sqrt(1.0 + s_next**2), t_next)
            d_next = (x_next - x0_next) / s_next
            x_next = x_ve + (s_next - s_hat) * 0.5 * (d + d_next)
        z = x_next / math.sqrt(1.0 + s_next**2)
    return _out(z, x)


def sample_euler(
    denoiser: DenoiserFn,
    x: Tensor,
    steps: TimeSteps,
    *,
    noise: NoiseFn | None = None,
    callback: Callback | None = None,
    disable: bool = True,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = math.inf,
    s_noise: float = 1.0,
    **options: Any,
) -> Tensor:
    """Euler on the probability-flow ODE in VE coordinates (EDM Alg. 2 without the correction).

    s_churn > 0 adds EDM's stochastic churn on VE sigmas in [s_tmin, s_tmax]; the model is then
    evaluated at the raised level (needs steps.schedule). NFE = N.
    """
    _no_options("sample_euler", options)
    return _edm(denoiser, x, steps, noise, callback, disable, False, s_churn, s_tmin, s_tmax, s_noise)


def sample_heun(
    denoiser: DenoiserFn,
    x: Tensor,
    steps: TimeSteps,
    *,
    noise: NoiseFn | None = None,
    callback: Callback | None = None,
    disable: bool = True,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = math.inf,
    s_noise: float = 1.0,
    **options: Any,
) -> Tensor:
    """EDM Heun (Karras et al. 2022, Alg. 2): Euler + trapezoidal correction; the step into sigma = 0 is
    plain Euler, so NFE = 2N - 1 with final="clean". Churn options as `sample_euler`."""
    _no_options("sample_heun", options)
    return _edm(denoiser, x, steps, noise, callback, disable, True, s_churn, s_tmin, s_tmax, s_noise)
