"""Semantic-style disentanglement: PCA on the local CLIP image tokens (the global/CLS token is kept).

The top principal components of an image's local tokens carry its style, the rest its semantics. Two controls:

  level L in -2..2 (VD v0 `application_disensemble`, `--dislevel`): each token is demeaned over its features,
    `torch.pca_lowrank(center=False, niter=10)` computes the first q = 50 components only (as the paper, to save
    time; fewer when the token matrix is smaller) and the mean is added back:
      -1 / -2  remove the top 1 / 2 components            (semantic focus)
       0       unchanged
      +1 / +2  keep only the top 10 / 2 components         (style focus)
    As in v0, the reconstruction uses the q computed components only (what lies beyond the 50th is dropped at
    every level but 0).
  focus f in [0, 1] (VD v1 `adjust_rank(max_drop_rank=[1, 5], q=20)`, the "Focus (Semantic -- Style)" slider):
    0.5 unchanged; below 0.5 the singular values 0..1 shrink along v1's exponential ramps (both 0 at f = 0; the
    residual beyond the 20 components is kept); above 0.5 the values 5..19 shrink (all 0 at f = 1) and the residual
    is dropped; the result is rescaled to the input's standard deviation (per sample).

The same operation applies to the unconditional context, as v0 does; the all-zero null of image variation stays
zero (v1). `pca_lowrank` draws a random basis: it runs under a forked RNG seeded by `seed`, so the result does
not depend on (or change) the global RNG.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable

import numpy as np
import torch
from torch import Tensor

__all__ = ["LEVELS", "disentangle_tokens", "focus_transform", "pca_tokens", "check_level", "check_focus"]

LEVELS = (-2, -1, 0, 1, 2)
#: level -> ("remove", k) top components removed, or ("keep", k) only the top k kept (VD v0)
LEVEL_RULES = {-2: ("remove", 2), -1: ("remove", 1), 1: ("keep", 10), 2: ("keep", 2)}


def check_level(level: int) -> int:
    if isinstance(level, bool) or not isinstance(level, (int, np.integer)) and not (
            isinstance(level, float) and level.is_integer()):
        raise ValueError(f"disentanglement level must be an integer in -2..2, got {level!r}")
    if int(level) not in LEVELS:
        raise ValueError(f"disentanglement level must be an integer in -2..2, got {level!r}")
    return int(level)


def check_focus(focus: float) -> float:
    f = float(focus)
    if not (0.0 <= f <= 1.0):
        raise ValueError(f"focus must lie in [0, 1] (0 semantic, 0.5 unchanged, 1 style), got {focus!r}")
    return f


@contextlib.contextmanager
def _forked_rng(x: Tensor, seed: int):
    """Seed the RNG of x's device inside a fork (the global state is restored afterwards)."""
    devices = [x.device.index or 0] if x.is_cuda else []
    with torch.random.fork_rng(devices=devices):
        if x.is_cuda:
            torch.cuda.manual_seed(seed)
        else:
            torch.default_generator.manual_seed(seed)
        yield


def pca_tokens(x: Tensor, q: int, niter: int = 10, seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(u [B, N, q], s [B, q], v [B, D, q], mean [B, N, 1]) of tokens x [B, N, D] demeaned over the features,
    with q capped at min(N, D); float32."""
    x = x.float()
    mean = x.mean(-1, keepdim=True)
    q = max(1, min(int(q), x.shape[-2], x.shape[-1]))
    with _forked_rng(x, seed):
        u, s, v = torch.pca_lowrank(x - mean, q=q, center=False, niter=niter)
    return u, s, v, mean


def _rebuild(u: Tensor, s: Tensor, v: Tensor) -> Tensor:
    return (u * s[:, None, :]) @ v.transpose(1, 2)


def _level_local(x: Tensor, level: int, q: int, niter: int, seed: int) -> Tensor:
    kind, k = LEVEL_RULES[level]
    u, s, v, mean = pca_tokens(x, q, niter, seed)
    s = s.clone()
    if kind == "remove":
        s[:, :k] = 0
    else:
        s[:, k:] = 0
    return (_rebuild(u, s, v) + mean).to(x.dtype)


def _v1_ramps(focus: float, q: int, max_drop: tuple[int, int]) -> tuple[dict[int, float], bool]:
    """VD v1 adjust_rank's factors on the singular values for one focus level, and whether the residual is kept."""
    sem, sty = max_drop
    e = lambda t: math.exp((t - 0.5) * 2)  # noqa: E731
    if focus < 0.5:  # semantic focus: values 0..sem shrink
        t0, y00, t1, y01 = e(0.0), -sem, e(0.5), 1.0
        y0 = (e(focus) - t0) / (t1 - t0) * (y01 - y00) + y00
        x0, x1, y1 = 0.0, sem + 1.0, 1.0
        return {i: max(0.0, (i - x0) / (x1 - x0) * (y1 - y0) + y0) for i in range(0, min(sem + 1, q))}, True
    t0, y00, t1, y01 = e(1.0), -(q - sty), e(0.5), 1.0  # style focus: values sty..q-1 shrink, residual dropped
    y0 = (e(focus) - t0) / (t1 - t0) * (y01 - y00) + y00
    x0, x1, y1 = q - 1.0, sty - 1.0, 1.0
    return {i: max(0.0, (i - x0) / (x1 - x0) * (y1 - y0) + y0) for i in range(sty, q)}, False


def _focus_local(x: Tensor, focus: float, q: int, niter: int, seed: int, max_drop: tuple[int, int]) -> Tensor:
    xf = x.float()
    std_save = xf.std(dim=(-2, -1), keepdim=True)
    u, s, v, mean = pca_tokens(xf, q, niter, seed)
    q_eff = s.shape[1]
    remain = (xf - mean) - _rebuild(u, s, v)
    factors, keep_remain = _v1_ramps(focus, q_eff, max_drop)
    s = s.clone()
    for i, f in factors.items():
        s[:, i] *= f
    new = _rebuild(u, s, v) + mean + (remain if keep_remain else 0)
    new = new / new.std(dim=(-2, -1), keepdim=True) * std_save
    return new.to(x.dtype)


def disentangle_tokens(context: Tensor, level: int = 0, *, focus: float | None = None, q: int | None = None,
                       niter: int | None = None, seed: int = 0, keep_cls: bool = True,
                       max_drop_rank: tuple[int, int] = (1, 5)) -> Tensor:
    """A CLIP image context [B, 1 + N, D] with its local tokens disentangled (module docstring).

    level: -2..2 (v0; q default 50, niter 10); focus: in [0, 1] instead (v1; q default 20, niter 100).
    keep_cls: the first token is the global/CLS token and is left untouched (VD); False treats every token as local.
    """
    if context.ndim != 3:
        raise ValueError(f"disentanglement takes contexts [B, L, D], got shape {tuple(context.shape)}")
    if focus is not None:
        if level:
            raise ValueError("give a disentanglement level or a focus, not both")
        focus = check_focus(focus)
        if focus == 0.5:
            return context
    else:
        level = check_level(level)
        if level == 0:
            return context
    head, local = (context[:, :1], context[:, 1:]) if keep_cls else (context[:, :0], context)
    if local.shape[1] < 1:
        raise ValueError("the context has no local tokens to decompose")
    if focus is not None:
        local = _focus_local(local, focus, 20 if q is None else q, 100 if niter is None else niter, seed,
                             tuple(max_drop_rank))
    else:
        local = _level_local(local, level, 50 if q is None else q, 10 if niter is None else niter, seed)
    return torch.cat([head, local], dim=1)


def focus_transform(level: int = 0, focus: float | None = None, **kw) -> Callable[[Tensor], Tensor] | None:
    """A context transform for `StreamContext.transform`; None when it changes nothing (level 0 / focus 0.5)."""
    if focus is not None:
        if level:
            raise ValueError("give a disentanglement level or a focus, not both")
        if check_focus(focus) == 0.5:
            return None
    elif check_level(level) == 0:
        return None
    return lambda c: disentangle_tokens(c, level, focus=focus, **kw)
