"""The Gaussian diffusion process: posterior q(z_s | z_t, x), training losses and likelihood terms.

Everything is written in log-SNR terms (lambda = log alpha^2/sigma^2, see base.py), so one code
path serves discrete tables, truncated continuous schedules and the VP-SDE alike. Coefficients
are computed in float64 and cast to the data's dtype only when they meet the data.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from versadiff.conditioning import batch_size_of, drop_condition
from versadiff.processes.base import NoiseSchedule, append_dims
from versadiff.processes.parameterization import PREDICTION_TYPES, target_for, to_x0_eps

__all__ = [
    "VARIANCE_TYPES",
    "WEIGHTINGS",
    "LOSS_TYPES",
    "log1mexp",
    "posterior",
    "normal_kl",
    "discretized_gaussian_log_likelihood",
    "GaussianProcess",
]

VARIANCE_TYPES = ("fixed_small", "fixed_large", "fixed_medium")
WEIGHTINGS = ("constant", "snr", "truncated_snr", "alpha2", "min_snr")
LOSS_TYPES = ("mse", "kl")

_LN2 = math.log(2.0)


def log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x <= 0, accurate at both ends (Maechler 2012: switch at -ln 2)."""
    return torch.where(x < -_LN2, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")


def posterior(
    z_t: Tensor,
    x0_hat: Tensor,
    logsnr_t: Tensor,
    logsnr_s: Tensor,
    variance: str = "fixed_small",
    intp_frac: float = 0.3,
    eta: float | None = None,
) -> tuple[Tensor, Tensor]:
    """Mean and log-variance of the step z_t -> z_s (s < t, i.e. logsnr_s > logsnr_t).

    With eta=None this is q(z_s | z_t, x=x0_hat) (VDPM `logsnr_to_posterior`), r = exp(lambda_t - lambda_s):
      mean = r * alpha_s/alpha_t * z_t + (1 - r) * alpha_s * x0_hat
      fixed_small: var = (1 - r) sigma_s^2 (true posterior); fixed_large: var = (1 - r) sigma_t^2 (DDPM beta_t);
      fixed_medium: log var = (1 - f) log var_small + f log var_large, f = intp_frac.
    With eta given it is the DDIM(eta) step (Song et al. 2021, eq. 12 in lambda terms; `variance` is not used):
      var = eta^2 (1 - r) sigma_s^2,
      mean = sqrt(sigma_s^2 - var)/sigma_t * z_t + alpha_s (1 - sqrt(r (1 - eta^2 (1 - r)))) x0_hat;
      eta = 1 equals fixed_small, eta = 0 is deterministic (logvar = -inf).
    logsnr_t, logsnr_s: [B] (float64 preferred). logsnr_s = +inf (the clean end) gives mean = x0_hat and
    logvar = -inf for every variance type (the last ancestral step returns x0_hat without noise).
    Returns (mean like z_t, logvar of shape [B, 1, ...] broadcastable to z_t), both in z_t's dtype.
    """
    _check_choice("variance type", variance, VARIANCE_TYPES)
    if not 0.0 <= intp_frac <= 1.0:
        raise ValueError(f"intp_frac must lie in [0, 1], got {intp_frac}")
    if eta is not None and eta < 0:
        raise ValueError(f"eta must lie in [0, 1] (0 = DDIM, 1 = ancestral), got {eta}")
    lt = torch.as_tensor(logsnr_t, dtype=torch.float64, device=z_t.device)
    ls = torch.as_tensor(logsnr_s, dtype=torch.float64, device=z_t.device)
    lt, ls = torch.broadcast_tensors(lt, ls)
    if torch.any(ls <= lt):
        raise ValueError("posterior needs logsnr_s > logsnr_t (s must be the cleaner time)")

    clean = torch.isposinf(ls)
    log_r = lt - ls  # -inf where s is clean
    log_1mr = log1mexp(log_r)  # 0 where s is clean
    log_a2_s, log_a2_t = F.logsigmoid(ls), F.logsigmoid(lt)
    log_s2_s, log_s2_t = F.logsigmoid(-ls), F.logsigmoid(-lt)

    if eta is None:
        # r * alpha_s / alpha_t, in logs; exp(-inf) = 0 at the clean end
        c_z = torch.exp(log_r + 0.5 * (log_a2_s - log_a2_t))
        # alpha_t = 0 (zero terminal SNR) gives -inf + inf above; the coefficient is 0 there (r = 0)
        c_z = torch.where(torch.isneginf(lt), torch.zeros_like(c_z), c_z)
        c_x = torch.exp(log_1mr + 0.5 * log_a2_s)
        lv_small, lv_large = log_1mr + log_s2_s, log_1mr + log_s2_t
        if variance == "fixed_small":
            logvar = lv_small
        elif variance == "fixed_large":
            logvar = lv_large
        else:
            logvar = (1.0 - intp_frac) * lv_small + intp_frac * lv_large
    else:
        # k = 1 - eta^2 (1 - r) is the fraction of sigma_s^2 kept as deterministic direction
        if eta > 1:
            raise ValueError(f"DDIM eta={eta} asks for more noise than the step has; use eta in [0, 1]")
        log_k = torch.log1p(-(eta**2) * torch.exp(log_1mr))
        logvar = 2.0 * math.log(eta) + log_1mr + log_s2_s if eta > 0 else torch.full_like(lt, -math.inf)
        c_z = torch.exp(0.5 * (log_s2_s + log_k - log_s2_t))
        # alpha_s * (1 - sqrt(r k)) with the 1 - e^x cancellation done by expm1
        c_x = -torch.expm1(0.5 * (log_r + log_k)) * torch.exp(0.5 * log_a2_s)

    c_z = torch.where(clean, torch.zeros_like(c_z), c_z)
    c_x = torch.where(clean, torch.ones_like(c_x), c_x)
    logvar = torch.where(clean, torch.full_like(logvar, -math.inf), logvar)

    nd = z_t.ndim
    c_z, c_x = append_dims(c_z, nd).to(z_t.dtype), append_dims(c_x, nd).to(z_t.dtype)
    mean = c_z * z_t + c_x * x0_hat.to(z_t.dtype)
    return mean, append_dims(logvar, nd).to(z_t.dtype)


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """Elementwise KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) in nats (broadcasting)."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _log_normal_mass(lo: Tensor, hi: Tensor) -> Tensor:
    """log(Phi(hi) - Phi(lo)) for lo < hi, computed in the tail that keeps precision."""
    upper = lo > 0  # both ends in the upper tail: use the mirrored lower tail instead
    a = torch.where(upper, -hi, lo)
    b = torch.where(upper, -lo, hi)
    # log(Phi(b) - Phi(a)) = log Phi(b) + log(1 - Phi(a)/Phi(b))
    la, lb = torch.special.log_ndtr(a), torch.special.log_ndtr(b)
    return lb + log1mexp(torch.clamp(la - lb, max=-1e-30))


def discretized_gaussian_log_likelihood(
    x: Tensor, mean: Tensor, log_scale: Tensor, bin_width: float = 2.0 / 255
) -> Tensor:
    """Elementwise log-probability of data x in [-1, 1] quantised to 256 levels under N(mean, e^{2 log_scale}).

    The outermost bins extend to -inf / +inf (Ho et al. 2020, eq. 13). Uses the exact normal CDF in log
    space rather than the tanh approximation of the DDPM code, so tiny scales do not underflow to log(1e-12).
    """
    inv_std = torch.exp(-log_scale)
    half = 0.5 * bin_width
    lo = (x - mean - half) * inv_std
    hi = (x - mean + half) * inv_std
    left_edge = torch.special.log_ndtr(hi)  # x is the lowest level: P(X <= x + half)
    right_edge = torch.special.log_ndtr(-lo)  # x is the highest level: P(X >= x - half)
    middle = _log_normal_mass(lo, hi)
    return torch.where(x < -0.999, left_edge, torch.where(x > 0.999, right_edge, middle))


def _flat_mean(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], -1).mean(dim=1)


class GaussianProcess:
    """Forward corruption z_t = alpha_t x + sigma_t eps and its training objective.

    prediction: what the network outputs ("eps", "x0", "v", "both").
    loss: "mse" (weighted regression) or "kl" (one term of the variational bound, bits/dim).
    weighting (mse): weight w(lambda) on mean |x_hat - x|^2 (VDPM / Google names): constant 1, snr e^lambda,
      truncated_snr max(1, e^lambda), alpha2 1 + e^lambda, min_snr min(e^lambda, min_snr_gamma) (Hang et al. 2023).
      Computed from converted predictions, so any output type works with any weighting.
    train_steps: 0 = continuous t ~ U(0, 1); T > 0 = t = (randint(T) + 1) / T; None = the schedule's
      num_steps for a discrete schedule (t lands on table entries), else 0.
    variance / intp_frac: the reverse-process variance used by the kl loss (see `posterior`).
    p_uncond: probability that a sample's condition is replaced by the null condition (classifier-free training).
    kl_steps: the number N of bound terms for loss="kl"; None = train_steps, or the schedule's num_steps.
    """

    def __init__(
        self,
        schedule: NoiseSchedule,
        prediction: str = "eps",
        loss: str = "mse",
        weighting: str = "constant",
        train_steps: int | None = None,
        variance: str = "fixed_small",
        intp_frac: float = 0.3,
        p_uncond: float = 0.0,
        kl_steps: int | None = None,
        min_snr_gamma: float = 5.0,
    ) -> None:
        if not isinstance(schedule, NoiseSchedule):
            raise ValueError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}; see build_schedule")
        _check_choice("prediction type", prediction, PREDICTION_TYPES)
        _check_choice("loss", loss, LOSS_TYPES)
        _check_choice("weighting", weighting, WEIGHTINGS)
        _check_choice("variance type", variance, VARIANCE_TYPES)
        if loss == "kl" and weighting != "constant":
            raise ValueError("weighting applies to loss='mse' only; leave weighting='constant' with loss='kl'")
        if prediction in ("eps", "both") and schedule.logsnr_min == -math.inf:
            raise ValueError(
                f"prediction={prediction!r} cannot recover x0 at zero terminal SNR (alpha_1 = 0); use 'v' or 'x0'"
            )
        if train_steps is None:
            train_steps = schedule.num_steps or 0
        if int(train_steps) != train_steps or train_steps < 0:
            raise ValueError(f"train_steps must be an int >= 0 (0 = continuous time), got {train_steps}")
        if not 0.0 <= p_uncond <= 1.0:
            raise ValueError(f"p_uncond must lie in [0, 1], got {p_uncond}")
        if not 0.0 <= intp_frac <= 1.0:
            raise ValueError(f"intp_frac must lie in [0, 1], got {intp_frac}")
        if min_snr_gamma <= 0:
            raise ValueError(f"min_snr_gamma must be > 0, got {min_snr_gamma}")
        if kl_steps is None and loss == "kl":
            kl_steps = train_steps or schedule.num_steps
            if not kl_steps:
                raise ValueError("loss='kl' on a continuous schedule needs kl_steps (the number of bound terms)")
        if kl_steps is not None and (int(kl_steps) != kl_steps or kl_steps < 1):
            raise ValueError(f"kl_steps must be a positive int, got {kl_steps}")
        self.schedule, self.prediction, self.loss, self.weighting = schedule, prediction, loss, weighting
        self.train_steps = int(train_steps)
        self.variance, self.intp_frac, self.p_uncond = variance, float(intp_frac), float(p_uncond)
        self.kl_steps = None if kl_steps is None else int(kl_steps)
        self.min_snr_gamma = float(min_snr_gamma)

    def __repr__(self) -> str:
        return (
            f"GaussianProcess({self.schedule!r}, prediction={self.prediction!r}, loss={self.loss!r}, "
            f"weighting={self.weighting!r}, train_steps={self.train_steps}, p_uncond={self.p_uncond})"
        )

    # --- forward process ---

    def sample_t(self, batch: int, generator: torch.Generator | None = None, device: Any = None) -> Tensor:
        """Training times [batch] (float64): uniform in (0, 1] or on the grid (n + 1) / train_steps."""
        gdev = generator.device if generator is not None else "cpu"
        if self.train_steps > 0:
            n = torch.randint(0, self.train_steps, (batch,), generator=generator, device=gdev)
            t = (n.to(torch.float64) + 1.0) / self.train_steps
        else:
            # 1 - U[0, 1) lies in (0, 1]: t = 0 (infinite log-SNR for some schedules) is never drawn
            t = 1.0 - torch.rand(batch, generator=generator, dtype=torch.float64, device=gdev)
        return t.to(device) if device is not None else t

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """z_t = alpha_t x0 + sigma_t noise (t: [B] or scalar)."""
        t = torch.as_tensor(t, dtype=torch.float64, device=x0.device).expand(x0.shape[0])
        alpha, sigma = self.schedule.alpha_sigma(t)
        return append_dims(alpha, x0.ndim).to(x0.dtype) * x0 + append_dims(sigma, x0.ndim).to(x0.dtype) * noise

    def x0_eps_v_targets(self, x0: Tensor, noise: Tensor, t: Tensor) -> dict[str, Tensor]:
        """The regression target of every output type at (x0, noise, t): keys eps, x0, v, both."""
        t = torch.as_tensor(t, dtype=torch.float64, device=x0.device).expand(x0.shape[0])
        alpha, sigma = self.schedule.alpha_sigma(t)
        return {p: target_for(p, x0, noise, alpha, sigma) for p in PREDICTION_TYPES}

    def loss_weight(self, logsnr: Tensor) -> Tensor:
        """The mse weight w(lambda) on mean |x_hat - x|^2 (float64), e.g. for plots."""
        lam = torch.as_tensor(logsnr, dtype=torch.float64)
        snr = torch.exp(lam)
        if self.weighting == "constant":
            return torch.ones_like(lam)
        if self.weighting == "snr":
            return snr
        if self.weighting == "truncated_snr":
            return torch.clamp(snr, min=1.0)
        if self.weighting == "alpha2":
            return 1.0 + snr
        return torch.clamp(snr, max=self.min_snr_gamma)

    # --- training objective ---

    def training_losses(
        self,
        net: Callable[..., Tensor],
        x0: Tensor,
        cond: dict[str, Any] | None = None,
        *,
        generator: torch.Generator | None = None,
        t: Tensor | None = None,
        noise: Tensor | None = None,
        null: dict[str, Any] | None = None,
    ) -> Tensor:
        """Per-sample loss [B]. Random draws (t, noise, condition dropout) come from `generator`, in that order.

        null: the null condition that dropout substitutes (e.g. the encoder's null context; class labels: -1).
        """
        b = x0.shape[0]
        gdev = generator.device if generator is not None else x0.device
        if t is None:
            t = self.sample_t(b, generator=generator)
        t = torch.as_tensor(t, dtype=torch.float64).to(x0.device).expand(b)
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=gdev).to(x0.device)
        elif noise.shape != x0.shape:
            raise ValueError(f"noise has shape {tuple(noise.shape)} but x0 has {tuple(x0.shape)}; pass matching shapes")
        cond = dict(cond or {})
        if cond and batch_size_of(cond) not in (0, b):
            raise ValueError(f"condition batch size {batch_size_of(cond)} does not match x0's batch size {b}")
        if self.p_uncond > 0 and batch_size_of(cond):
            # drop BEFORE the forward pass, so the null condition is what the network learns from
            mask = torch.rand(b, generator=generator, device=gdev) < self.p_uncond
            cond = drop_condition(cond, mask.to(x0.device), null)

        s = None
        if self.loss == "kl":
            n_steps = self.kl_steps
            idx = torch.ceil(t * n_steps).clamp(min=1, max=n_steps)  # snap t up to the grid, VDPM
            t, s = idx / n_steps, (idx - 1.0) / n_steps

        z_t = self.q_sample(x0, t, noise)
        out = net(z_t, self.schedule.net_time(t).float(), **cond)
        alpha, sigma = self.schedule.alpha_sigma(t)
        x0_hat, eps_hat = to_x0_eps(out.to(z_t.dtype), z_t, alpha, sigma, self.prediction)

        if self.loss == "kl":
            return self._kl_term(x0, z_t, x0_hat, t, s)
        return self._weighted_mse(x0_hat - x0, eps_hat - noise)

    def _weighted_mse(self, dx: Tensor, deps: Tensor) -> Tensor:
        # |d eps|^2 = SNR |d x|^2 exactly for converted predictions, so each weight is a sum/max/min of
        # the two errors: no SNR factor that overflows at the clean end or vanishes at the noisy end.
        mx, me = _flat_mean(dx**2), _flat_mean(deps**2)
        if self.weighting == "constant":
            return mx
        if self.weighting == "snr":
            return me
        if self.weighting == "truncated_snr":
            return torch.maximum(mx, me)
        if self.weighting == "alpha2":
            return mx + me
        return torch.minimum(me, self.min_snr_gamma * mx)

    def _kl_term(self, x0: Tensor, z_t: Tensor, x0_hat: Tensor, t: Tensor, s: Tensor) -> Tensor:
        """KL(q(z_s|z_t,x) || p(z_s|z_t)) for s > 0, decoder NLL -log p(x|z_t) at s = 0; bits/dim."""
        lt, ls = self.schedule.logsnr(t), self.schedule.logsnr(s)
        q_mean, q_logvar = posterior(z_t, x0, lt, ls, "fixed_small")
        p_mean, p_logvar = posterior(z_t, x0_hat, lt, ls, self.variance, self.intp_frac)
        kl = _flat_mean(normal_kl(q_mean, q_logvar, p_mean, p_logvar)) / _LN2
        nll = -_flat_mean(discretized_gaussian_log_likelihood(x0, x0_hat, 0.5 * p_logvar)) / _LN2
        return torch.where(s.to(kl.device) > 0, kl, nll)

    def prior_bpd(self, x0: Tensor) -> Tensor:
        """KL(q(z_1 | x) || N(0, I)) per sample in bits/dim: the bound's prior term."""
        lam = torch.full((x0.shape[0],), self.schedule.logsnr_min, dtype=torch.float64, device=x0.device)
        alpha = append_dims(torch.sigmoid(lam).sqrt(), x0.ndim).to(x0.dtype)
        logvar = append_dims(F.logsigmoid(-lam), x0.ndim).to(x0.dtype)
        kl = normal_kl(alpha * x0, logvar, torch.zeros_like(x0), torch.zeros_like(x0))
        return _flat_mean(kl) / _LN2
