"""Conversions between network outputs and (x0, eps) predictions.

All are linear in z_t for fixed (alpha, sigma), with alpha^2 + sigma^2 = 1:
  x0 = (z - sigma*eps)/alpha,  eps = (z - alpha*x0)/sigma,  v = alpha*eps - sigma*x0  (Salimans & Ho 2022, eq. 8),
  x0 = alpha*z - sigma*v,      eps = sigma*z + alpha*v.
`alpha` and `sigma` are per-sample vectors [B] (any float dtype); they are broadcast and cast to z's dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

from versadiff.processes.base import append_dims

__all__ = ["PREDICTION_TYPES", "to_x0_eps", "x0_from_eps", "eps_from_x0", "v_from_x0_eps", "target_for"]

PREDICTION_TYPES = ("eps", "x0", "v", "both")


def _bc(v: Tensor, like: Tensor) -> Tensor:
    return append_dims(torch.as_tensor(v, device=like.device), like.ndim).to(like.dtype)


def x0_from_eps(z: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    return (z - _bc(sigma, z) * eps) / _bc(alpha, z)


def eps_from_x0(z: Tensor, x0: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    return (z - _bc(alpha, z) * x0) / _bc(sigma, z)


def v_from_x0_eps(x0: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    return _bc(alpha, x0) * eps - _bc(sigma, x0) * x0


def to_x0_eps(out: Tensor, z: Tensor, alpha: Tensor, sigma: Tensor, prediction: str) -> tuple[Tensor, Tensor]:
    """Turn a raw network output into (x0_hat, eps_hat).

    prediction: "eps", "x0", "v", or "both" (VDPM: 2C channels [x0_direct, eps]; the reconciled
    x0 = sigma^2 * x0_direct + alpha^2 * x0(eps), trusting the x-head at high noise).
    """
    a, s = _bc(alpha, z), _bc(sigma, z)
    if prediction == "eps":
        return (z - s * out) / a, out
    if prediction == "x0":
        return out, (z - a * out) / s
    if prediction == "v":
        return a * z - s * out, s * z + a * out
    if prediction == "both":
        x_direct, eps = out.chunk(2, dim=1)
        x0 = s**2 * x_direct + a**2 * (z - s * eps) / a
        return x0, (z - a * x0) / s
    raise ValueError(f"unknown prediction type {prediction!r}; choose one of {', '.join(PREDICTION_TYPES)}")


def target_for(prediction: str, x0: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """The regression target of a raw network output of the given type."""
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    if prediction == "v":
        return v_from_x0_eps(x0, eps, alpha, sigma)
    if prediction == "both":
        return torch.cat([x0, eps], dim=1)
    raise ValueError(f"unknown prediction type {prediction!r}; choose one of {', '.join(PREDICTION_TYPES)}")
