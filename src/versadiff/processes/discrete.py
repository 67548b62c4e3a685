"""VQ-Diffusion's discrete mask-and-replace process (Gu et al. 2022, arXiv 2111.14822), all in log space.

State space: code indices 0..K-1 plus [MASK] = K (always the last class). One step from a non-mask token
stays with prob alpha_t + beta_t, moves to each other code with beta_t and becomes [MASK] with gamma_t;
[MASK] is absorbing (paper eq. 5). Products of such matrices are again mask-and-replace, so
Q_bar_t = (abar_t, bbar_t, cbar_t) and a Delta-step jump s -> t has alpha = abar_t/abar_s,
1 - gamma = (1 - cbar_t)/(1 - cbar_s), beta = (1 - alpha - gamma)/K (reference vq_diffusion.md 1.1).

Time convention: integer code index t in 0..T-1 (index t is the paper's x_{t+1}); index -1 is the clean
data (identity transition). Networks receive t as a float net time equal to the index, like the discrete
Gaussian schedules (net_time n = T*t - 1).

Log-probabilities have shape [B, C, L] (classes on dim 1, token positions on dim 2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from versadiff.conditioning import batch_size_of, drop_condition

__all__ = [
    "DISCRETE_KEYS",
    "build_discrete_process",
    "LOG_ZERO",
    "SCHEDULE_PRESETS",
    "MaskReplaceSchedule",
    "DiscreteProcess",
    "index_to_log_onehot",
    "log_onehot_to_index",
    "gumbel_sample",
    "multinomial_kl",
]

#: log(1e-30): the "impossible" entry of a log one-hot vector, as in the released code (not -inf, so
#: differences and products with zero probabilities stay finite).
LOG_ZERO = math.log(1e-30)
_CLAMP_MIN = -70.0

#: (abar_1, abar_T, cbar_1, cbar_T), linear in the step index.
SCHEDULE_PRESETS: dict[str, tuple[float, float, float, float]] = {
    # released code and diffusers: abar + cbar = 0.999999 everywhere, so replacement is almost absent
    "released": (0.99999, 0.000009, 0.000009, 0.99999),
    # paper: mask rate ramps to gamma_bar_T = 0.9, the remaining 0.1 goes to uniform replacement (Oxford ablation)
    "paper": (0.99999, 0.000009, 0.000009, 0.9),
}


def index_to_log_onehot(x: Tensor, num_classes: int) -> Tensor:
    """Indices [B, L] -> log one-hot [B, num_classes, L], zeros clamped to 1e-30."""
    if x.dtype.is_floating_point:
        raise ValueError(f"token indices must be an integer tensor, got {x.dtype}")
    if x.numel() and (x.min() < 0 or x.max() >= num_classes):
        raise ValueError(f"token indices must lie in [0, {num_classes - 1}], got [{int(x.min())}, {int(x.max())}]")
    onehot = F.one_hot(x.long(), num_classes).permute(0, 2, 1).to(torch.float32)
    return torch.log(onehot.clamp(min=1e-30))


def log_onehot_to_index(log_x: Tensor) -> Tensor:
    """argmax over the class dimension: [B, C, L] -> [B, L]."""
    return log_x.argmax(dim=1)


def gumbel_sample(logits: Tensor, uniform: Tensor) -> Tensor:
    """Gumbel-max over dim 1 with given uniforms in [0, 1) (same formula as the released code / diffusers)."""
    g = -torch.log(-torch.log(uniform + 1e-30) + 1e-30)
    return (logits + g).argmax(dim=1)


def multinomial_kl(log_p: Tensor, log_q: Tensor) -> Tensor:
    """KL(p || q) summed over dim 1: [B, C, L] -> [B, L]."""
    return (log_p.exp() * (log_p - log_q)).sum(dim=1)


@dataclass(frozen=True)
class MaskReplaceSchedule:
    """Cumulative mask-and-replace schedule: abar_t and cbar_t linear in t = 0..T-1 (float64 tables)."""

    num_classes: int  # K, the number of codes (without [MASK])
    num_steps: int = 100
    abar_start: float = 0.99999
    abar_end: float = 0.000009
    cbar_start: float = 0.000009
    cbar_end: float = 0.99999

    def __post_init__(self) -> None:
        if self.num_classes < 2:
            raise ValueError(f"num_classes (codebook size K) must be >= 2, got {self.num_classes}")
        if self.num_steps < 2:
            raise ValueError(f"num_steps must be >= 2, got {self.num_steps}")
        for name in ("abar_start", "abar_end", "cbar_start", "cbar_end"):
            v = getattr(self, name)
            if not 0.0 < v < 1.0:
                raise ValueError(f"{name} must lie in (0, 1), got {v}")
        if self.abar_start + self.cbar_start >= 1.0 or self.abar_end + self.cbar_end >= 1.0 + 1e-12:
            raise ValueError("abar + cbar must stay <= 1 (the rest is uniform replacement); lower one of the ends")
        if self.abar_end > self.abar_start or self.cbar_end < self.cbar_start:
            raise ValueError("abar must decrease and cbar increase from start to end")

    @classmethod
    def preset(cls, name: str, num_classes: int, num_steps: int = 100) -> "MaskReplaceSchedule":
        """Named schedule: 'released' (code defaults) or 'paper' (gamma_bar_T = 0.9)."""
        if name not in SCHEDULE_PRESETS:
            raise ValueError(f"unknown mask-and-replace preset {name!r}; choose one of {', '.join(SCHEDULE_PRESETS)}")
        a0, a1, c0, c1 = SCHEDULE_PRESETS[name]
        return cls(num_classes, num_steps, a0, a1, c0, c1)

    def cumulative(self) -> tuple[Tensor, Tensor, Tensor]:
        """(abar, bbar, cbar), each float64 of length T + 1; entry T (= index -1) is the identity."""
        frac = torch.arange(self.num_steps, dtype=torch.float64) / (self.num_steps - 1)
        abar = self.abar_start + frac * (self.abar_end - self.abar_start)
        cbar = self.cbar_start + frac * (self.cbar_end - self.cbar_start)
        abar = torch.cat([abar, abar.new_ones(1)])
        cbar = torch.cat([cbar, cbar.new_zeros(1)])
        bbar = ((1.0 - abar - cbar) / self.num_classes).clamp(min=0.0)
        return abar, bbar, cbar

    def one_step(self) -> tuple[Tensor, Tensor, Tensor]:
        """Per-step (alpha_t, beta_t, gamma_t), float64 of length T."""
        abar, _, cbar = self.cumulative()
        prev_a = torch.cat([abar.new_ones(1), abar[:-2]])
        prev_c = torch.cat([cbar.new_zeros(1), cbar[:-2]])
        a = abar[:-1] / prev_a
        c = 1.0 - (1.0 - cbar[:-1]) / (1.0 - prev_c)
        b = ((1.0 - a - c) / self.num_classes).clamp(min=0.0)
        return a, b, c

    def dense_step_matrix(self, t: int, s: int | None = None) -> Tensor:
        """Dense (K+1)x(K+1) matrix Q[i, j] = q(x_t = i | x_s = j) (s defaults to t - 1); for tests and small K."""
        s = t - 1 if s is None else s
        a, b, c = self._jump(torch.tensor([t]), torch.tensor([s]))
        k = self.num_classes
        q = torch.full((k + 1, k + 1), float(b[0]), dtype=torch.float64)
        q[:k, :k] += torch.eye(k, dtype=torch.float64) * float(a[0])
        q[k, :k] = float(c[0])
        q[:k, k] = 0.0
        q[k, k] = 1.0
        return q

    def _jump(self, t: Tensor, s: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(alpha, beta, gamma) of the exact jump s -> t (s < t, index -1 = clean), float64 [B]."""
        abar, _, cbar = self.cumulative()
        t, s = t.long() % (self.num_steps + 1), s.long() % (self.num_steps + 1)
        a = abar[t] / abar[s]
        c = 1.0 - (1.0 - cbar[t]) / (1.0 - cbar[s])
        b = ((1.0 - a - c) / self.num_classes).clamp(min=0.0)
        return a, b, c


def _log(x: Tensor) -> Tensor:
    # log(0) = -inf is harmless here: it only ever enters logaddexp next to a finite term
    return torch.log(x)


def _bc(v: Tensor, like: Tensor) -> Tensor:
    return v.to(device=like.device, dtype=like.dtype).reshape(-1, 1, 1)


class DiscreteProcess:
    """Mask-and-replace forward process, its log-space posterior and VQ-Diffusion's training loss.

    schedule: a MaskReplaceSchedule (K codes, T steps).
    aux_weight: lambda of the auxiliary x0 cross-entropy (5e-4 text-to-image, 1e-3 ImageNet/FFHQ).
    adaptive_aux: weight the auxiliary loss by 2 - t/T (all released configs).
    time_sampling: "importance" (uniform until every t was seen > 10 times, then p(t) ~ sqrt(E[L_t^2])) or "uniform".
    mask_weight: loss weights at masked / unmasked positions of x_t.
    p_uncond: probability of replacing a sample's condition by the null condition (classifier-free training).
    """

    def __init__(
        self,
        schedule: MaskReplaceSchedule,
        aux_weight: float = 5e-4,
        adaptive_aux: bool = True,
        time_sampling: str = "importance",
        mask_weight: tuple[float, float] = (1.0, 1.0),
        p_uncond: float = 0.0,
    ) -> None:
        if not isinstance(schedule, MaskReplaceSchedule):
            raise ValueError(f"schedule must be a MaskReplaceSchedule, got {type(schedule).__name__}")
        if time_sampling not in ("importance", "uniform"):
            raise ValueError(f"time_sampling must be 'importance' or 'uniform', got {time_sampling!r}")
        if aux_weight < 0:
            raise ValueError(f"aux_weight must be >= 0, got {aux_weight}")
        if not 0.0 <= p_uncond <= 1.0:
            raise ValueError(f"p_uncond must lie in [0, 1], got {p_uncond}")
        self.schedule = schedule
        self.num_classes, self.num_steps = schedule.num_classes, schedule.num_steps
        self.mask_index = schedule.num_classes
        self.aux_weight, self.adaptive_aux = float(aux_weight), bool(adaptive_aux)
        self.time_sampling, self.mask_weight, self.p_uncond = time_sampling, tuple(mask_weight), float(p_uncond)
        abar, bbar, cbar = schedule.cumulative()
        self._log_abar, self._log_bbar, self._log_cbar = _log(abar), _log(bbar), _log(cbar)
        self._log_1m_cbar = torch.log1p(-cbar)
        # importance-sampling statistics (improved-DDPM style): EMA of L_t^2 and visit counts per t
        self.lt_history = torch.zeros(self.num_steps, dtype=torch.float64)
        self.lt_count = torch.zeros(self.num_steps, dtype=torch.float64)

    def __repr__(self) -> str:
        s = self.schedule
        return f"DiscreteProcess(K={s.num_classes}, T={s.num_steps}, aux_weight={self.aux_weight}, {self.time_sampling})"

    # --- state for checkpoints (the importance-sampling statistics) ---

    def state_dict(self) -> dict[str, Tensor]:
        return {"lt_history": self.lt_history.clone(), "lt_count": self.lt_count.clone()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        for key in ("lt_history", "lt_count"):
            if key not in state or state[key].shape != (self.num_steps,):
                raise ValueError(f"process state needs {key!r} of shape [{self.num_steps}]; was it saved with this T?")
        self.lt_history = state["lt_history"].to(torch.float64).clone()
        self.lt_count = state["lt_count"].to(torch.float64).clone()

    # --- forward process ---

    def _check_t(self, t: Tensor, batch: int, low: int = 0) -> Tensor:
        t = torch.as_tensor(t).long().reshape(-1)
        if t.numel() == 1 and batch > 1:
            t = t.expand(batch)
        if t.shape[0] != batch:
            raise ValueError(f"timesteps have {t.shape[0]} entries for a batch of {batch}; pass one per sample")
        if t.numel() and (t.min() < low or t.max() >= self.num_steps):
            raise ValueError(f"timestep indices must lie in [{low}, {self.num_steps - 1}], got {t.tolist()}")
        return t

    def _cum(self, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        i = t.cpu() % (self.num_steps + 1)  # index -1 wraps to the identity entry
        return tuple(_bc(v[i], like) for v in (self._log_abar, self._log_bbar, self._log_cbar, self._log_1m_cbar))

    def q_pred(self, log_x0: Tensor, t: Tensor) -> Tensor:
        """log q(x_t | x0) [B, K+1, L] for a (possibly soft) log x0 [B, K+1, L]; t = -1 gives x0 itself."""
        la, lb, lc, l1mc = self._cum(torch.as_tensor(t).long().reshape(-1), log_x0)
        k = self.num_classes
        codes = torch.logaddexp(log_x0[:, :k] + la, lb)
        mask = torch.logaddexp(log_x0[:, k:] + l1mc, lc)
        return torch.cat([codes, mask], dim=1)

    def _jump_logs(self, t: Tensor, s: Tensor, like: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        a, b, c = self.schedule._jump(t.cpu(), s.cpu())
        return tuple(_bc(torch.log(v), like) for v in (a, b, c, 1.0 - c))

    def q_sample(self, x0: Tensor, t: Tensor, uniform: Tensor) -> Tensor:
        """x_t ~ q(x_t | x0) by Gumbel-max, given uniforms [B, K+1, L] (use `rand_like` or per-sample draws)."""
        t = self._check_t(t, x0.shape[0])
        return gumbel_sample(self.q_pred(index_to_log_onehot(x0, self.num_classes + 1), t), uniform)

    # --- posterior ---

    def q_posterior(
        self, log_p_x0: Tensor, x_t: Tensor, t: Tensor, s: Tensor | None = None, clamp: bool = True
    ) -> Tensor:
        """log p(x_s | x_t) = log sum_x0 q(x_s | x_t, x0) p(x0) [B, K+1, L] (reference 1.4), without any dense matrix.

        log_p_x0: [B, K, L] log-probabilities over the K codes (a model's x0 prediction, or a log one-hot).
        x_t: token indices [B, L] in 0..K. t: index in 0..T-1. s: target index, default t - 1 (-1 = clean);
        s < t - 1 uses the exact multi-step jump s -> t. clamp: clamp to [-70, 0] as the released code does.
        """
        b, k = x_t.shape[0], self.num_classes
        if log_p_x0.ndim != 3 or log_p_x0.shape[1] != k or log_p_x0.shape[2] != x_t.shape[1]:
            raise ValueError(f"log_p_x0 must have shape [B, {k}, L]=[{b}, {k}, {x_t.shape[1]}], got {tuple(log_p_x0.shape)}")
        t = self._check_t(t, b)
        s = t - 1 if s is None else self._check_t(s, b, low=-1)
        if torch.any(s >= t):
            raise ValueError("posterior target index s must be smaller than t")
        log_xt = index_to_log_onehot(x_t, k + 1).to(log_p_x0.dtype)
        is_mask = (x_t == self.mask_index).unsqueeze(1)

        # 1. w(x0) = log p(x0) - log Q_bar_t(x_t | x0); for x_t = [MASK] the likelihood is cbar_t for every x0
        la, lb, lc, _ = self._cum(t, log_p_x0)
        log_qbar = torch.where(is_mask, lc.expand(-1, k, -1), torch.logaddexp(log_xt[:, :k] + la, lb))
        w = torch.cat([log_p_x0 - log_qbar, torch.full_like(log_p_x0[:, :1], LOG_ZERO)], dim=1)
        # 2. normalise, remembering the constant
        z = torch.logsumexp(w, dim=1, keepdim=True)
        # 3. push through Q_bar_s
        out = self.q_pred(w - z, s)
        # 4. times q(x_t | x_s) for every x_s: [MASK] rows get gamma, code rows the replace/keep probabilities
        ja, jb, jc, j1mc = self._jump_logs(t, s, log_p_x0)
        step_codes = torch.where(is_mask, jc.expand(-1, k, -1), torch.logaddexp(log_xt[:, :k] + ja, jb))
        step_mask = torch.where(is_mask, torch.zeros_like(log_xt[:, k:]), torch.full_like(log_xt[:, k:], LOG_ZERO))
        out = out + torch.cat([step_codes, step_mask], dim=1) + z
        return out.clamp(_CLAMP_MIN, 0.0) if clamp else out

    # --- model output ---

    def log_x0_from_logits(self, logits: Tensor) -> Tensor:
        """Network logits [B, K, L] -> log p(x0) [B, K, L]: float64 log-softmax, clamped to [-70, 0]."""
        if logits.ndim != 3 or logits.shape[1] != self.num_classes:
            raise ValueError(f"network output must be logits of shape [B, {self.num_classes}, L], got {tuple(logits.shape)}")
        return F.log_softmax(logits.double(), dim=1).float().clamp(_CLAMP_MIN, 0.0)

    # --- training ---

    def sample_t(self, batch: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """(t [B] long, p(t) [B] float64) by importance sampling, or uniform while statistics are thin."""
        if self.time_sampling == "importance" and bool((self.lt_count > 10).all()):
            w = torch.sqrt(self.lt_history + 1e-10) + 1e-4
            w[0] = w[1]  # L_0 is a decoder NLL on another scale; the released code borrows t=1's weight
            pt = w / w.sum()
            t = torch.multinomial(pt, batch, replacement=True, generator=generator)
            return t, pt[t]
        t = torch.randint(0, self.num_steps, (batch,), generator=generator)
        return t, torch.full((batch,), 1.0 / self.num_steps, dtype=torch.float64)

    def update_importance(self, t: Tensor, loss_t: Tensor) -> None:
        """EMA (0.9 old / 0.1 new) of L_t^2 per timestep, as the released code."""
        t = t.cpu().long()
        l2 = loss_t.detach().double().cpu() ** 2
        for ti, li in zip(t.tolist(), l2.tolist()):  # sequential, so repeated t's compound like scatter_ in order
            self.lt_history[ti] = 0.1 * li + 0.9 * self.lt_history[ti]
            self.lt_count[ti] += 1

    def training_losses(
        self,
        net: Callable[..., Tensor],
        x0: Tensor,
        cond: dict[str, Any] | None = None,
        *,
        generator: torch.Generator | None = None,
        t: Tensor | None = None,
        update_stats: bool = True,
        null: dict[str, Any] | None = None,
    ) -> Tensor:
        """Per-sample loss [B] per token: (L_t + w(t) lambda L_aux) / p(t) / L (reference 3.1-3.3).

        x0: code indices [B, L] in 0..K-1. net(x_t, t_float, **cond) -> logits [B, K, L].
        Random draws (t, x_t's Gumbel uniforms, condition dropout) come from `generator` (CPU), in that order.
        null: the null condition that dropout substitutes (e.g. the encoder's null context; class labels: -1).
        """
        if x0.ndim != 2:
            raise ValueError(f"x0 must be code indices of shape [B, L], got {tuple(x0.shape)}")
        if x0.numel() and (x0.min() < 0 or x0.max() >= self.num_classes):
            raise ValueError(f"x0 codes must lie in [0, {self.num_classes - 1}] ([MASK]={self.num_classes} is not data)")
        b, length = x0.shape
        dev = x0.device
        if t is None:
            t, pt = self.sample_t(b, generator)
        else:
            t = self._check_t(t, b)
            pt = torch.full((b,), 1.0 / self.num_steps, dtype=torch.float64)
        u = torch.rand((b, self.num_classes + 1, length), generator=generator).to(dev)
        cond = dict(cond or {})
        if cond and batch_size_of(cond) not in (0, b):
            raise ValueError(f"condition batch size {batch_size_of(cond)} does not match x0's batch size {b}")
        if self.p_uncond > 0 and batch_size_of(cond):
            cond = drop_condition(cond, (torch.rand(b, generator=generator) < self.p_uncond).to(dev), null)
        t = t.to(dev)
        x_t = self.q_sample(x0, t, u)
        log_x0_hat = self.log_x0_from_logits(net(x_t, t.float(), **cond))
        log_x0 = index_to_log_onehot(x0, self.num_classes)

        log_model = self.q_posterior(log_x0_hat, x_t, t)
        log_true = self.q_posterior(log_x0, x_t, t)
        is_mask = x_t == self.mask_index
        mw = torch.where(is_mask, self.mask_weight[0], self.mask_weight[1]).to(log_model.dtype)
        kl = (multinomial_kl(log_true, log_model) * mw).sum(dim=1)
        # decoder NLL at t = 0: -log p(x_{-1} = x0 | x_0); log_model is then the x0 prediction itself
        nll = -(log_x0.exp() * log_model[:, : self.num_classes]).sum(dim=1).sum(dim=1)
        first = t == 0
        loss_t = torch.where(first, nll, kl)
        if update_stats:
            self.update_importance(t, loss_t)
        pt = pt.to(device=dev, dtype=loss_t.dtype)
        loss = loss_t / pt
        if self.aux_weight > 0:
            aux = (multinomial_kl(log_x0, log_x0_hat) * mw).sum(dim=1)
            aux = torch.where(first, nll, aux)
            w = (2.0 - t.to(aux.dtype) / self.num_steps) if self.adaptive_aux else torch.ones_like(aux)
            loss = loss + w * self.aux_weight * aux / pt
        return loss / length


#: keys of a run config's `discrete` section and their defaults
DISCRETE_KEYS: dict[str, Any] = {
    "schedule": "released",  # MaskReplaceSchedule preset: released | paper
    "num_steps": 100,  # T
    "aux_weight": 1.0e-3,  # lambda of the auxiliary x0 loss (ImageNet / FFHQ configs)
    "adaptive_aux": True,
    "time_sampling": "importance",
    "mask_weight": [1.0, 1.0],
    "p_uncond": 0.0,  # condition dropout for classifier-free guidance (0.1 in the class-conditional presets)
}


def build_discrete_process(discrete: dict[str, Any], num_codes: int) -> DiscreteProcess:
    """The DiscreteProcess of a `discrete` config section over `num_codes` codebook entries."""
    unknown = sorted(set(discrete) - set(DISCRETE_KEYS))
    if unknown:
        raise ValueError(f"unknown config key 'discrete.{unknown[0]}'; valid keys under 'discrete': {', '.join(DISCRETE_KEYS)}")
    d = {**DISCRETE_KEYS, **discrete}
    if not isinstance(d["num_steps"], int) or isinstance(d["num_steps"], bool):
        raise ValueError(f"config key 'discrete.num_steps' expects an integer, got {d['num_steps']!r}")
    schedule = MaskReplaceSchedule.preset(d["schedule"], num_codes, d["num_steps"])
    return DiscreteProcess(schedule, aux_weight=float(d["aux_weight"]), adaptive_aux=bool(d["adaptive_aux"]),
                           time_sampling=d["time_sampling"], mask_weight=tuple(d["mask_weight"]),
                           p_uncond=float(d["p_uncond"]))
