"""Conditioning dictionaries and their "null" (unconditional) form.

A condition is a dict of batched tensors passed to a network as keyword arguments:
  class_labels: LongTensor [B]; the value -1 means "no class" (the null class of classifier-free guidance).
  context:      FloatTensor [B, L, D] of context tokens (text or image); all zeros means "no context".
Networks map these null values to their learned null embedding, so the same rule serves
training-time condition dropout and sampling-time unconditional branches.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["NULL_CLASS", "drop_condition", "null_condition", "concat_conditions", "batch_size_of"]

NULL_CLASS = -1


def _drop_one(key: str, value: Any, mask: Tensor) -> Any:
    if not torch.is_tensor(value):
        return value
    m = mask.to(value.device).reshape(mask.shape + (1,) * (value.ndim - 1))
    if key == "class_labels":
        return torch.where(m, torch.full_like(value, NULL_CLASS), value)
    if key == "context_mask":
        return value
    return torch.where(m, torch.zeros_like(value), value)


def drop_condition(cond: dict[str, Any], mask: Tensor) -> dict[str, Any]:
    """Replace the condition of the samples where `mask` [B] is True by the null condition."""
    return {k: _drop_one(k, v, mask) for k, v in cond.items()}


def null_condition(cond: dict[str, Any]) -> dict[str, Any]:
    """The all-null condition with the same keys and shapes as `cond`."""
    n = batch_size_of(cond)
    return drop_condition(cond, torch.ones(n, dtype=torch.bool)) if n else dict(cond)


def batch_size_of(cond: dict[str, Any]) -> int:
    """Batch size of a condition dict (0 when it holds no tensor)."""
    for v in cond.values():
        if torch.is_tensor(v):
            return v.shape[0]
    return 0


def concat_conditions(conds: list[dict[str, Any]]) -> dict[str, Any]:
    """Concatenate condition dicts with identical keys along the batch dimension."""
    keys = conds[0].keys()
    for c in conds[1:]:
        if c.keys() != keys:
            raise ValueError(f"conditions disagree on their keys: {sorted(keys)} vs {sorted(c.keys())}")
    out: dict[str, Any] = {}
    for k in keys:
        vals = [c[k] for c in conds]
        out[k] = torch.cat(vals, dim=0) if torch.is_tensor(vals[0]) else vals[0]
    return out
