"""Conditioning dictionaries and their "null" (unconditional) form.

A condition is a dict of keyword arguments for a network: batched tensors (class_labels [B], context
[B, L, D], ...) and plain values that select streams (e.g. data_stream="image"), which are passed through.
"No condition" comes from the context encoders (versadiff.encoders): the encoding of an empty prompt, a
null image, or the null class -1 (which networks map to their learned null row). Condition dropout and the
unconditional branch of guidance take that null from the caller; only class labels have a universal null
(-1) and need none.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["NULL_CLASS", "drop_condition", "null_condition", "concat_conditions", "batch_size_of"]

NULL_CLASS = -1


def _drop_one(key: str, value: Any, mask: Tensor, null: dict[str, Any]) -> Any:
    if not torch.is_tensor(value) or key == "context_mask":
        return value
    m = mask.to(value.device).reshape(mask.shape + (1,) * (value.ndim - 1))
    if key in null:
        return torch.where(m, torch.as_tensor(null[key]).to(value.device, value.dtype), value)
    if key == "class_labels":
        return torch.where(m, torch.full_like(value, NULL_CLASS), value)
    raise ValueError(f"no null value for condition {key!r}: pass the context encoder's null context "
                     f"(null={{'{key}': encoder.null(batch)}})")


def drop_condition(cond: dict[str, Any], mask: Tensor, null: dict[str, Any] | None = None) -> dict[str, Any]:
    """Replace the condition of the samples where `mask` [B] is True by the null condition.

    null: null values per key (batched [B, ...] or broadcastable), e.g. the encoder's null context; class
    labels default to -1.
    """
    null = dict(null or {})
    return {k: _drop_one(k, v, mask, null) for k, v in cond.items()}


def null_condition(cond: dict[str, Any], null: dict[str, Any] | None = None) -> dict[str, Any]:
    """The all-null condition with the same keys and shapes as `cond`."""
    n = batch_size_of(cond)
    return drop_condition(cond, torch.ones(n, dtype=torch.bool), null) if n else dict(cond)


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
