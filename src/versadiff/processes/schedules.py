"""Concrete noise schedules: discrete beta tables, VDPM's truncated log-SNR schedules, the VP-SDE,
plus the Karras sigma grid and a factory for YAML configs.

All schedules share base.NoiseSchedule's view: t in [0, 1] (0 clean, 1 noisiest) -> log-SNR lambda(t),
strictly decreasing, computed in float64.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from versadiff.processes.base import NoiseSchedule, _check_unit_interval

__all__ = [
    "SCHEDULE_TYPES",
    "BETA_SCHEDULES",
    "LOGSNR_KINDS",
    "DiscreteSchedule",
    "LogSNRSchedule",
    "VPSDESchedule",
    "linear_betas",
    "scaled_linear_betas",
    "cosine_betas",
    "rescale_zero_terminal_snr",
    "karras_sigmas",
    "build_schedule",
]

SCHEDULE_TYPES = ("discrete", "logsnr", "vpsde")
BETA_SCHEDULES = ("linear", "scaled_linear", "cosine", "squaredcos_cap_v2")
LOGSNR_KINDS = ("linear", "sigmoid", "cosine", "legacy")


def _as_t(t: Tensor | float) -> Tensor:
    t = torch.as_tensor(t, dtype=torch.float64)
    _check_unit_interval(t)
    return t


# --------------------------------------------------------------------------------------------
# beta tables
# --------------------------------------------------------------------------------------------


def _check_steps(T: int) -> None:
    if int(T) != T or T < 2:
        raise ValueError(f"a discrete schedule needs an int number of steps >= 2, got {T}")


def linear_betas(T: int = 1000, start: float = 1e-4, end: float = 0.02, dtype: torch.dtype = torch.float64) -> Tensor:
    """DDPM linear betas (Ho et al. 2020): linspace(start, end, T) in `dtype`."""
    _check_steps(T)
    return torch.linspace(start, end, T, dtype=dtype)


def scaled_linear_betas(
    T: int = 1000, start: float = 0.00085, end: float = 0.012, dtype: torch.dtype = torch.float64
) -> Tensor:
    """Latent-diffusion / Stable Diffusion betas: linspace(sqrt(start), sqrt(end), T) ** 2 in `dtype`."""
    _check_steps(T)
    return torch.linspace(start**0.5, end**0.5, T, dtype=dtype) ** 2


def cosine_betas(
    T: int = 1000, s: float = 0.008, max_beta: float = 0.999, dtype: torch.dtype = torch.float64
) -> Tensor:
    """Improved-DDPM cosine betas (Nichol & Dhariwal 2021, eq. 17): abar(t) = cos^2((t+s)/(1+s) * pi/2),
    beta_n = min(1 - abar((n+1)/T) / abar(n/T), max_beta); computed in float64 (as diffusers'
    squaredcos_cap_v2, with Python floats) and then cast to `dtype`."""
    _check_steps(T)

    def abar(x: float) -> float:
        return math.cos((x + s) / (1 + s) * math.pi / 2) ** 2

    betas = [min(1 - abar((i + 1) / T) / abar(i / T), max_beta) for i in range(T)]
    return torch.tensor(betas, dtype=torch.float64).to(dtype)


def rescale_zero_terminal_snr(betas: Tensor) -> Tensor:
    """Shift and scale sqrt(abar) so the last entry is 0 and the first unchanged (Lin et al. 2023, Alg. 1)."""
    betas = torch.as_tensor(betas)
    sqrt_abar = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = sqrt_abar[0].clone(), sqrt_abar[-1].clone()
    sqrt_abar = (sqrt_abar - last) * (first / (first - last))
    abar = sqrt_abar**2
    alphas = torch.cat([abar[:1], abar[1:] / abar[:-1]])
    return 1.0 - alphas


class DiscreteSchedule(NoiseSchedule):
    """A table of T cumulative products abar_0 > ... > abar_{T-1} (DDPM, latent diffusion, VD).

    Entry n sits at t = (n + 1) / T and lambda is interpolated linearly in t between entries.
    On [0, 1/T) lambda is EXTRAPOLATED linearly from the first two entries (as DPM-Solver's
    `interpolated_fn`), so lambda stays strictly decreasing and invertible on all of [0, 1];
    training never visits that interval. A zero last entry (zero terminal SNR) gives lambda(1) = -inf;
    on the last interval abar (not lambda) is then interpolated, so lambda is finite for t < 1.
    """

    def __init__(self, alphas_cumprod: Tensor, betas: Tensor | None = None) -> None:
        abar = torch.as_tensor(alphas_cumprod).detach().to(torch.float64).cpu()
        if abar.ndim != 1 or abar.numel() < 2:
            raise ValueError(f"alphas_cumprod must be a 1-D table with >= 2 entries, got shape {tuple(abar.shape)}")
        if not torch.all(torch.isfinite(abar)) or torch.any(abar[:-1] <= 0) or abar[-1] < 0 or torch.any(abar >= 1):
            raise ValueError("alphas_cumprod must lie in (0, 1) (only the last entry may be 0, for zero terminal SNR)")
        if torch.any(abar[1:] >= abar[:-1]):
            raise ValueError("alphas_cumprod must be strictly decreasing (betas in (0, 1))")
        if abar[-1] == 0 and abar.numel() < 3:
            raise ValueError("a zero-terminal-SNR table needs >= 3 entries (two finite ones to extrapolate from)")
        self.num_steps = int(abar.numel())
        self.alphas_cumprod = abar
        if betas is None:
            betas = 1.0 - abar / torch.cat([abar.new_ones(1), abar[:-1]])
        self.betas = torch.as_tensor(betas).detach().to(torch.float64).cpu()
        lam = torch.log(abar) - torch.log1p(-abar)  # -inf for a zero last entry
        # knots at t_k = k / T, k = 0..T: one extrapolated knot at t = 0, then the table
        lam0 = 2.0 * lam[0] - lam[1]
        self._knots = torch.cat([lam0.reshape(1), lam])
        self._zero_terminal = bool(abar[-1] == 0)

    @classmethod
    def from_betas(cls, betas: Tensor) -> "DiscreteSchedule":
        """Build from betas; the cumulative product is taken in the betas' own dtype
        (float32 betas reproduce diffusers' float32 tables bit for bit)."""
        betas = torch.as_tensor(betas)
        if betas.ndim != 1 or torch.any(betas <= 0) or torch.any(betas > 1):
            raise ValueError("betas must be a 1-D tensor with entries in (0, 1]")
        return cls(torch.cumprod(1.0 - betas, dim=0), betas=betas)

    def logsnr(self, t: Tensor) -> Tensor:
        t = _as_t(t)
        T = self.num_steps
        knots = self._knots.to(t.device)
        u = t * T
        lo = torch.floor(u).clamp(0, T - 1)
        w = u - lo
        lo = lo.long()
        l_lo, l_hi = knots[lo], knots[lo + 1]
        lam = l_lo + w * (l_hi - l_lo)
        lam = torch.where(w == 0, l_lo, lam)  # exact table values (and no 0 * inf)
        if self._zero_terminal:
            abar = self.alphas_cumprod.to(t.device)
            last = lo == T - 1  # the interval ending at the zero entry: interpolate abar instead
            a = (1 - w) * abar[T - 2] + w * abar[T - 1]
            lam_last = torch.where(w == 1, torch.full_like(w, -math.inf), torch.log(a) - torch.log1p(-a))
            lam = torch.where(last & (w > 0), lam_last, lam)
        return lam

    def t_from_logsnr(self, logsnr: Tensor) -> Tensor:
        lam = torch.as_tensor(logsnr, dtype=torch.float64)
        T = self.num_steps
        knots = self._knots.to(lam.device)
        inc = knots.flip(0)  # increasing in lambda; inc[j] sits at t = (T - j) / T
        if self._zero_terminal:
            inc = inc[1:]  # drop -inf; the last interval is inverted through abar below
        j = torch.searchsorted(inc, lam.contiguous()).clamp(1, inc.numel() - 1)
        l_a, l_b = inc[j - 1], inc[j]
        frac = ((lam - l_a) / (l_b - l_a)).clamp(0, 1)
        offset = 1 if self._zero_terminal else 0
        t = (T - (j - 1 + offset) - frac) / T
        if self._zero_terminal:
            abar = self.alphas_cumprod.to(lam.device)
            a = torch.sigmoid(lam)
            t_last = (T - 1 + (abar[T - 2] - a) / (abar[T - 2] - abar[T - 1])) / T
            t = torch.where(lam < inc[0], t_last, t)
        return t.clamp(0.0, 1.0)


# --------------------------------------------------------------------------------------------
# continuous schedules
# --------------------------------------------------------------------------------------------

# VDPM "legacy": the continuous fit of DDPM's linear betas (1e-4 -> 0.02, 1000 steps):
# with x(t) = 0.9999 - 0.0199 t, log abar(t) = 1000 * int_0^t log x(u) du = (1000/slope)[x ln x - x]_{x(0)}^{x(t)}.
_LEG_X0, _LEG_SLOPE, _LEG_OFFSET = 1.0 - 1e-4, -(0.02 - 1e-4), 1e-9


def _legacy_log_abar(t: Tensor) -> Tensor:
    x = _LEG_X0 + _LEG_SLOPE * t
    f = lambda v: v * torch.log(v) - v  # noqa: E731
    x0 = torch.as_tensor(_LEG_X0, dtype=torch.float64)
    # the small offset keeps lambda(0) finite (abar(0) = 1 otherwise), as VDPM does
    return (1000.0 / _LEG_SLOPE) * (f(x) - f(x0)) - _LEG_OFFSET


def _legacy_logsnr(t: Tensor) -> Tensor:
    la = _legacy_log_abar(t)
    return la - torch.log(-torch.expm1(la))


class LogSNRSchedule(NoiseSchedule):
    """VDPM's continuous schedules (v-diffusion-torch `get_logsnr_schedule`), truncated so that
    lambda(0) = logsnr_max and lambda(1) = logsnr_min exactly:

    linear: alpha^2 = u (lambda = logit u); sigmoid: lambda linear in t; cosine: alpha = cos(pi u / 2)
    (lambda = -2 log tan(pi u / 2)); u runs affinely between the u's of logsnr_max and logsnr_min.
    legacy: the continuous fit of DDPM's linear betas; it has fixed ends (lambda 20.72 -> -10.12) and
    rejects other bounds.
    """

    def __init__(self, kind: str = "cosine", logsnr_min: float = -20.0, logsnr_max: float = 20.0) -> None:
        if kind not in LOGSNR_KINDS:
            raise ValueError(f"unknown log-SNR schedule kind {kind!r}; choose one of {', '.join(LOGSNR_KINDS)}")
        if kind == "legacy":
            if (logsnr_min, logsnr_max) != (-20.0, 20.0):
                raise ValueError("the legacy schedule has fixed end points; drop logsnr_min / logsnr_max")
        elif not (math.isfinite(logsnr_min) and math.isfinite(logsnr_max) and logsnr_min < logsnr_max):
            raise ValueError(f"need finite logsnr_min < logsnr_max, got {logsnr_min}, {logsnr_max}")
        self.kind = kind
        self._lo, self._hi = float(logsnr_min), float(logsnr_max)
        if kind == "legacy":
            ends = _legacy_logsnr(torch.tensor([0.0, 1.0], dtype=torch.float64))
            self._hi, self._lo = float(ends[0]), float(ends[1])
        lo, hi = torch.tensor(self._lo, dtype=torch.float64), torch.tensor(self._hi, dtype=torch.float64)
        if kind == "cosine":
            self._u0, self._u1 = self._cos_u(hi), self._cos_u(lo)
        elif kind == "linear":
            # track 1 - u = sigma^2 directly: logit of u near 1 would lose all precision
            self._s0, self._s1 = torch.sigmoid(-hi), torch.sigmoid(-lo)

    @staticmethod
    def _cos_u(lam: Tensor) -> Tensor:
        return torch.atan(torch.exp(-0.5 * lam)) * (2.0 / math.pi)

    def logsnr(self, t: Tensor) -> Tensor:
        t = _as_t(t)
        if self.kind == "legacy":
            return _legacy_logsnr(t)
        if self.kind == "sigmoid":
            lam = self._hi + t * (self._lo - self._hi)
        elif self.kind == "linear":
            s2 = self._s0 + t * (self._s1 - self._s0)
            lam = torch.log1p(-s2) - torch.log(s2)
        else:
            u = self._u0 + t * (self._u1 - self._u0)
            lam = -2.0 * torch.log(torch.tan(u * (math.pi / 2)))
        # pin the ends exactly (the formulas above are exact only up to rounding)
        lam = torch.where(t == 0, torch.full_like(lam, self._hi), lam)
        return torch.where(t == 1, torch.full_like(lam, self._lo), lam)

    def t_from_logsnr(self, logsnr: Tensor) -> Tensor:
        lam = torch.as_tensor(logsnr, dtype=torch.float64)
        if self.kind == "legacy":
            t = self._legacy_inverse(lam)
        elif self.kind == "sigmoid":
            t = (self._hi - lam) / (self._hi - self._lo)
        elif self.kind == "linear":
            t = (torch.sigmoid(-lam) - self._s0) / (self._s1 - self._s0)
        else:
            t = (self._cos_u(lam) - self._u0) / (self._u1 - self._u0)
        return t.clamp(0.0, 1.0)

    def _legacy_inverse(self, lam: Tensor) -> Tensor:
        # log abar(t) has no elementary inverse (Lambert W near its branch point): start from linear
        # interpolation on a 257-point grid, then Newton with d log abar / dt = 1000 ln x(t).
        grid = torch.linspace(1, 0, 257, dtype=torch.float64, device=lam.device)  # decreasing t ...
        inc = _legacy_logsnr(grid)  # ... so increasing lambda
        lam_c = lam.clamp(inc[0], inc[-1])
        j = torch.searchsorted(inc, lam_c.contiguous()).clamp(1, inc.numel() - 1)
        frac = (lam_c - inc[j - 1]) / (inc[j] - inc[j - 1])
        t = grid[j - 1] + frac * (grid[j] - grid[j - 1])
        # Newton on log abar(t) = logsigmoid(lambda): smooth and concave, unlike lambda(t) near t = 0
        target = F.logsigmoid(lam_c)
        for _ in range(5):
            slope = 1000.0 * torch.log(_LEG_X0 + _LEG_SLOPE * t)
            t = (t - (_legacy_log_abar(t) - target) / slope).clamp(0.0, 1.0)
        return t

    def __repr__(self) -> str:
        return f"LogSNRSchedule({self.kind!r}, logsnr {self._hi:.3f} -> {self._lo:.3f})"


class VPSDESchedule(NoiseSchedule):
    """The VP-SDE with linear beta(t) = beta_min + t (beta_max - beta_min) (Song et al. 2021):
    log abar(t) = -1/4 t^2 (beta_max - beta_min) - 1/2 t beta_min (U-ViT's pixel models, DPM-Solver 'linear').

    t is the SDE time itself (so the network's time input stays comparable with those codebases).
    lambda(0) would be +inf, so lambda is CLAMPED at t_eps: lambda(t) = lambda_SDE(max(t, t_eps)); the
    schedule is strictly decreasing on [t_eps, 1], which is where training and sampling should live.
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, t_eps: float = 1e-5) -> None:
        if not (0 <= beta_min <= beta_max and beta_max > 0):
            raise ValueError(f"need 0 <= beta_min <= beta_max with beta_max > 0, got {beta_min}, {beta_max}")
        if not 0 < t_eps < 1:
            raise ValueError(f"t_eps must lie in (0, 1), got {t_eps}")
        self.beta_min, self.beta_max, self.t_eps = float(beta_min), float(beta_max), float(t_eps)

    def log_alpha_bar(self, t: Tensor) -> Tensor:
        """log abar at SDE time t (no clamping)."""
        t = torch.as_tensor(t, dtype=torch.float64)
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def logsnr(self, t: Tensor) -> Tensor:
        t = _as_t(t).clamp(min=self.t_eps)
        la = self.log_alpha_bar(t)
        return la - torch.log(-torch.expm1(la))

    def t_from_logsnr(self, logsnr: Tensor) -> Tensor:
        # solve a t^2 + b t = c with c = -log abar = softplus(-lambda) >= 0 (stable root form)
        c = F.softplus(-torch.as_tensor(logsnr, dtype=torch.float64))
        a, b = 0.25 * (self.beta_max - self.beta_min), 0.5 * self.beta_min
        t = 2.0 * c / (b + torch.sqrt(b * b + 4.0 * a * c))
        return t.clamp(0.0, 1.0)

    def __repr__(self) -> str:
        return f"VPSDESchedule(beta_min={self.beta_min}, beta_max={self.beta_max}, t_eps={self.t_eps})"


# --------------------------------------------------------------------------------------------
# sigma grids and the config factory
# --------------------------------------------------------------------------------------------


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """EDM step grid (Karras et al. 2022, eq. 5): n VE sigmas from sigma_max down to sigma_min,
    evenly spaced in sigma^(1/rho); float64, descending, no trailing zero (append it if the sampler wants one)."""
    if int(n) != n or n < 1:
        raise ValueError(f"karras_sigmas needs n >= 1 steps, got {n}")
    if not (0 <= sigma_min < sigma_max and math.isfinite(sigma_max)):
        raise ValueError(f"need 0 <= sigma_min < sigma_max < inf, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    if rho <= 0:
        raise ValueError(f"rho must be > 0, got {rho}")
    ramp = torch.linspace(0, 1, int(n), dtype=torch.float64)
    hi, lo = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    sigmas[0] = sigma_max  # the power round trip is off by an ulp; samplers compare against the ends
    if n > 1:
        sigmas[-1] = sigma_min
    return sigmas


_DTYPES = {"float64": torch.float64, "float32": torch.float32}
_LINEAR_FAMILIES = {"linear": (linear_betas, (1e-4, 0.02)), "scaled_linear": (scaled_linear_betas, (0.00085, 0.012))}
_SCHEDULE_KEYS = {
    "discrete": {"type", "betas", "num_steps", "beta_start", "beta_end", "cosine_s", "max_beta", "dtype",
                 "rescale_zero_terminal_snr", "terminal_alpha_bar"},
    "logsnr": {"type", "kind", "logsnr_min", "logsnr_max"},
    "vpsde": {"type", "beta_min", "beta_max", "t_eps"},
}


def build_schedule(cfg: dict[str, Any]) -> NoiseSchedule:
    """A schedule from a config dict, e.g. {"type": "discrete", "betas": "scaled_linear", "num_steps": 1000},
    {"type": "logsnr", "kind": "cosine", "logsnr_min": -20, "logsnr_max": 20}, {"type": "vpsde"}.

    Discrete keys: betas (a name in BETA_SCHEDULES, or an explicit list of T betas, e.g. diffusers'
    trained_betas), num_steps, beta_start / beta_end (linear families; note versadiff's "scaled_linear"
    defaults to Stable Diffusion's 0.00085 -> 0.012, diffusers' class default is 1e-4 -> 0.02), cosine_s /
    max_beta (cosine), dtype ("float64" default; "float32" reproduces diffusers' tables bit for bit),
    rescale_zero_terminal_snr, terminal_alpha_bar (with rescale_zero_terminal_snr only: replace the zero
    last alpha_bar, as diffusers' Euler / EulerAncestral / DPMSolverMultistep do with 2**-24).
    """
    if not isinstance(cfg, dict):
        raise ValueError(f"schedule config must be a dict, got {type(cfg).__name__}")
    kind = cfg.get("type")
    if kind not in SCHEDULE_TYPES:
        raise ValueError(f"schedule config needs 'type' in {', '.join(SCHEDULE_TYPES)}; got {kind!r}")
    unknown = set(cfg) - _SCHEDULE_KEYS[kind]
    if unknown:
        raise ValueError(
            f"unknown keys {sorted(unknown)} for a {kind!r} schedule; "
            f"valid keys: {', '.join(sorted(_SCHEDULE_KEYS[kind]))}"
        )
    if kind == "logsnr":
        return LogSNRSchedule(
            cfg.get("kind", "cosine"), float(cfg.get("logsnr_min", -20.0)), float(cfg.get("logsnr_max", 20.0))
        )
    if kind == "vpsde":
        return VPSDESchedule(
            float(cfg.get("beta_min", 0.1)), float(cfg.get("beta_max", 20.0)), float(cfg.get("t_eps", 1e-5))
        )

    betas_name = cfg.get("betas", "linear")
    dtype_name = cfg.get("dtype", "float64")
    if dtype_name not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype_name!r}; choose one of {', '.join(_DTYPES)}")
    dtype = _DTYPES[dtype_name]
    if isinstance(betas_name, (list, tuple)):
        extra = sorted(k for k in ("beta_start", "beta_end", "cosine_s", "max_beta") if k in cfg)
        if extra:
            raise ValueError(f"an explicit betas list takes no {', '.join(extra)}")
        betas = torch.tensor([float(b) for b in betas_name], dtype=dtype)
        if "num_steps" in cfg and int(cfg["num_steps"]) != betas.numel():
            raise ValueError(f"num_steps={cfg['num_steps']} but the betas list has {betas.numel()} entries")
        _check_steps(betas.numel())
    else:
        if betas_name not in BETA_SCHEDULES:
            raise ValueError(f"unknown betas {betas_name!r}; choose one of {', '.join(BETA_SCHEDULES)} or give a list")
        T = int(cfg.get("num_steps", 1000))
        if betas_name in ("cosine", "squaredcos_cap_v2"):
            if "beta_start" in cfg or "beta_end" in cfg:
                raise ValueError("cosine betas take cosine_s and max_beta, not beta_start / beta_end")
            betas = cosine_betas(T, float(cfg.get("cosine_s", 0.008)), float(cfg.get("max_beta", 0.999)), dtype=dtype)
        else:
            if "cosine_s" in cfg or "max_beta" in cfg:
                raise ValueError(f"{betas_name} betas take beta_start and beta_end, not cosine_s / max_beta")
            fn, (d0, d1) = _LINEAR_FAMILIES[betas_name]
            betas = fn(T, float(cfg.get("beta_start", d0)), float(cfg.get("beta_end", d1)), dtype=dtype)
    if not cfg.get("rescale_zero_terminal_snr", False):
        if cfg.get("terminal_alpha_bar") is not None:
            raise ValueError("terminal_alpha_bar applies only with rescale_zero_terminal_snr: true")
        return DiscreteSchedule.from_betas(betas)
    betas = rescale_zero_terminal_snr(betas)
    if cfg.get("terminal_alpha_bar") is None:
        return DiscreteSchedule.from_betas(betas)
    floor = float(cfg["terminal_alpha_bar"])
    abar = torch.cumprod(1.0 - betas, dim=0)  # in the betas' dtype, as diffusers
    if not 0.0 < floor < float(abar[-2]):
        raise ValueError(f"terminal_alpha_bar must lie in (0, {float(abar[-2]):.3g}) (below the previous entry), got {floor}")
    abar[-1] = floor
    return DiscreteSchedule(abar)
