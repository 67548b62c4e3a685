"""Scores of a multi-flow (VD) model's flows on held-out shapes items, read back by the shapes attribute reader
(images) and the shapes caption parser (captions).

    text-to-image     the image shows the prompt's colour and shape (and position, when the prompt names it)
    image-to-text     the caption parses, states the image's colour and shape, and any size/position it states is true
    image-variation   the variation keeps the input's colour and shape ("changed": position or size differs)
    text-variation    the new caption parses and keeps the input's colour and shape ("changed": not a copy)
Held-out items come from ShapesDataset(seed=1, one shape per image); the presets train on seed 0.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from versadiff.data.attributes import read_attributes
from versadiff.data.shapes import ShapesDataset, parse_caption

__all__ = ["held_out", "image_attributes", "score_flow", "FLOW_INPUTS"]

#: what each scored flow is given from a held-out item
FLOW_INPUTS = {"text-to-image": "caption", "image-variation": "image", "image-to-text": "image",
               "text-variation": "caption"}


def held_out(n: int, seed: int = 1) -> tuple[list[dict[str, Any]], Tensor, list[str]]:
    """(true attributes, images [n, 3, 32, 32], captions) of n held-out single-shape items."""
    ds = ShapesDataset(size=n, seed=seed)
    truth = [ds.describe(i)["shapes"][0] for i in range(n)]
    items = ds.__getitems__(list(range(n)))
    return truth, torch.stack([it["image"] for it in items]), [it["caption"] for it in items]


def image_attributes(images: Tensor) -> list[dict[str, Any] | None]:
    """Colour, shape, size and position of the single shape in each image; None when not exactly one readable."""
    out = []
    for a in read_attributes(images):
        ok = a["readable"] and a["num_shapes"] == 1
        out.append({k: a["shapes"][0][k] for k in ("color", "shape", "size", "position")} if ok else None)
    return out


def _caption_attributes(text: str) -> dict[str, Any] | None:
    parsed = parse_caption(text)
    return None if parsed is None or "shapes" in parsed else parsed


def _match(want: dict[str, Any], got: dict[str, Any] | None, keys: tuple[str, ...]) -> dict[str, bool]:
    return {k: got is not None and got.get(k) == want[k] for k in keys if k in want}


def score_flow(model: Any, flow: str, n: int = 100, *, steps: int | None = None, guidance: float | None = None,
               sampler: str | None = None, seed: int = 0, batch_size: int = 50,
               device: str | torch.device = "cpu") -> dict[str, Any]:
    """The flow's score on n held-out items (sample i uses seed + i and held-out item i) and its outputs."""
    if flow not in FLOW_INPUTS:
        raise ValueError(f"no shapes score for flow {flow!r}; scored flows: {', '.join(FLOW_INPUTS)}")
    truth, images, captions = held_out(n)
    context = captions if FLOW_INPUTS[flow] == "caption" else images
    out = model.generate(list(range(seed, seed + n)), flow=flow, context=context, steps=steps, guidance=guidance,
                         sampler=sampler, batch_size=batch_size, device=device)
    per: list[dict[str, bool]] = []
    if flow == "text-to-image":  # the prompt's stated attributes, position included when named
        got = image_attributes(out)
        for cap, g in zip(captions, got):
            stated = parse_caption(cap)
            per.append(_match(stated, g, ("color", "shape", "position")))
    elif flow == "image-variation":
        for t, g in zip(truth, image_attributes(out)):
            per.append(_match(t, g, ("color", "shape")))
    elif flow == "image-to-text":
        for t, text in zip(truth, out):
            g = _caption_attributes(text)
            m = _match(t, g, ("color", "shape"))
            # whatever else the caption states must be true of the image
            m["stated_true"] = g is not None and all(g[k] == t[k] for k in ("size", "position") if k in g)
            per.append(m)
    else:  # text-variation
        for cap, text in zip(captions, out):
            per.append(_match(parse_caption(cap), _caption_attributes(text), ("color", "shape")))
    changed = None  # how often a variation differs from its input at all (a copy scores 1 but varies nothing)
    if flow == "text-variation":
        changed = sum(" ".join(t.split()) != " ".join(c.split()) for c, t in zip(captions, out)) / n
    elif flow == "image-variation":
        changed = sum(g is None or (g["position"], g["size"]) != (t["position"], t["size"])
                      for t, g in zip(truth, image_attributes(out))) / n
    keys = sorted({k for m in per for k in m})
    result = {"flow": flow, "n": n, "score": sum(all(m.values()) for m in per) / n,
              **{k: sum(m[k] for m in per if k in m) / max(1, sum(k in m for m in per)) for k in keys}}
    if changed is not None:
        result["changed"] = changed
    return {**result, "outputs": out, "inputs": context}
