"""Versatile Diffusion's applications on any multi-flow model: dual-guided generation, disentanglement, the
multi-context blender and editable image -> text -> image (each also a `Pipeline` method and a
`versadiff generate --task`)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from versadiff.applications.disentangle import disentangle_tokens, focus_transform
from versadiff.applications.mixing import StreamContext, _decode, flow_for, generate_multi, per_seed

__all__ = [
    "dual_guided",
    "disentangle",
    "blend",
    "i2t2i",
    "I2T2IResult",
    "substitute_words",
    "parse_edits",
    "edit_latent",
    "check_strength",
]


def check_strength(r: float, name: str = "strength") -> float:
    value = float(r)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {r!r}")
    return value


def dual_guided(model: Any, prompt: Any, image: Any, seeds: Sequence[int] = (0,), *, strength: float = 0.5,
                mixing: str = "attention", data: str = "image", level: int = 0, focus: float | None = None,
                **kw: Any) -> Tensor | list[str]:
    """Text + image -> image (data="image") or -> text (data="text").

    strength r: the text's weight (VD's text_to_image_strength / v1 "text domination"); the image weighs 1 - r.
    r = 1 is exactly the text flow (text-to-image / text-variation), r = 0 exactly the image flow (image-variation /
    image-to-text). mixing: "attention" (h + r (T_text(h) - h) + (1 - r) (T_image(h) - h) at every context slot),
    "layer" (one stream per context slot, drawn with probabilities (r, 1 - r), seeded by mixing_seed) or "model"
    (the two single-context flows take turns by step in the proportion r : 1 - r). level / focus: disentangle the
    image context first (versadiff.applications.disentangle). Other keywords: `generate_multi`'s.
    """
    r = check_strength(strength)
    n = len(list(seeds))
    contexts = [StreamContext("text", [per_seed(prompt, n, "prompts")], weight=r, label="text"),
                StreamContext("image", [per_seed(image, n, "images")], weight=1.0 - r,
                              transform=focus_transform(level, focus), label="image")]
    return generate_multi(model, seeds, contexts, data=data, mixing=mixing, **kw)


def disentangle(model: Any, image: Any, seeds: Sequence[int] = (0,), *, level: int = 0, focus: float | None = None,
                data: str = "image", **kw: Any) -> Tensor | list[str]:
    """Image variation from a disentangled image context: level -2..2 (-1/-2 semantic focus, +1/+2 style focus) or
    a continuous focus in [0, 1] (0.5 unchanged). Level 0 is exactly image variation."""
    n = len(list(seeds))
    ctx = StreamContext("image", [per_seed(image, n, "images")], transform=focus_transform(level, focus))
    return generate_multi(model, seeds, [ctx], data=data, **kw)


def _weights(values: Sequence[float] | None, n: int, what: str) -> list[float]:
    if values is None:
        return [1.0] * n
    out = [float(v) for v in values]
    if len(out) != n:
        raise ValueError(f"got {len(out)} weights for {n} {what}")
    if any(not math.isfinite(v) or v < 0 for v in out):
        raise ValueError(f"{what} weights must be finite numbers >= 0, got {out}")
    return out


def blend(model: Any, seeds: Sequence[int] = (0,), *, images: Sequence[Any] = (), prompts: Sequence[str] = (),
          image_weights: Sequence[float] | None = None, prompt_weights: Sequence[float] | None = None,
          strength: float | None = None, mixing: str = "attention", level: int = 0, focus: float | None = None,
          **kw: Any) -> Tensor:
    """VD v1.0's multi-context blender: several images and prompts with weights in one image generation.

    Within a stream, each context's tokens are scaled by its weight relative to the stream's largest (v1 scales
    each image's 257 tokens by its weight) and the contexts are concatenated along the token axis (one image
    context, one text context); the streams are then mixed with the text strength r (image 1 - r) by `mixing`.
    strength None: r = (sum of prompt weights) / (sum of all weights). Each image (or prompt) is one input for all
    seeds, or a list with one per seed. Weight-0 contexts are left out. level / focus: applied to every image.
    """
    images, prompts = list(images), list(prompts)
    wi = _weights(image_weights, len(images), "images")
    wt = _weights(prompt_weights, len(prompts), "prompts")
    images = [(x, w) for x, w in zip(images, wi) if w > 0]
    prompts = [(p, w) for p, w in zip(prompts, wt) if w > 0]
    if not images and not prompts:
        raise ValueError("blend needs at least one image or prompt with a weight > 0")
    if strength is None:
        total = sum(w for _, w in images) + sum(w for _, w in prompts)
        r = sum(w for _, w in prompts) / total
    else:
        r = check_strength(strength)
    n = len(list(seeds))
    contexts = []
    if prompts:
        top = max(w for _, w in prompts)
        contexts.append(StreamContext("text", [per_seed(p, n, "prompts") for p, _ in prompts], weight=r,
                                      scales=[w / top for _, w in prompts], label="text"))
    if images:
        top = max(w for _, w in images)
        contexts.append(StreamContext("image", [per_seed(x, n, "images") for x, _ in images], weight=1.0 - r,
                                      scales=[w / top for _, w in images], transform=focus_transform(level, focus),
                                      label="image"))
    return generate_multi(model, seeds, contexts, data="image", mixing=mixing, **kw)


# ------------------------------------------------------------------------------------------------ I2T2I


def parse_edits(items: Sequence[str] | Mapping[str, str] | None) -> dict[str, str]:
    """Word substitutions from "OLD=NEW" strings (or a mapping), checked."""
    if items is None:
        return {}
    pairs = list(items.items()) if isinstance(items, Mapping) else []
    if not isinstance(items, Mapping):
        for item in items:
            if not isinstance(item, str) or item.count("=") != 1:
                raise ValueError(f"an edit is OLD=NEW (one '='), got {item!r}")
            pairs.append(tuple(item.split("=")))
    out: dict[str, str] = {}
    for old, new in pairs:
        old, new = str(old).strip(), str(new).strip()
        if not old:
            raise ValueError(f"an edit needs the word to replace before '=', got {old!r}={new!r}")
        if old.lower() in {k.lower() for k in out}:
            raise ValueError(f"the word {old!r} is edited twice")
        out[old] = new
    return out


def substitute_words(text: str, edits: Mapping[str, str]) -> str:
    """Replace whole words (case-insensitive), all edits at once (so red=blue, blue=red swaps)."""
    if not edits:
        return text
    table = {k.lower(): v for k, v in edits.items()}
    words = "|".join(re.escape(k) for k in sorted(table, key=len, reverse=True))
    pattern = re.compile(r"(?<!\w)(" + words + r")(?!\w)", re.IGNORECASE)
    out = pattern.sub(lambda m: table[m.group(0).lower()], text)
    return " ".join(out.split())


def edit_latent(z: Tensor, positive: Tensor | None = None, negative: Tensor | None = None) -> Tensor:
    """VD v0's text-latent edit: z - (z . n^) n^ + p, with n^ = n / |n| (the negative prompt's latent) and p the
    positive prompt's latent (full magnitude; VD has no strength). z [B, D]; n, p [D], [1, D] (one for all) or
    [B, D] (one per row). Either may be None (then that half is skipped)."""
    out = z
    if negative is not None:
        n = negative.reshape(-1, z.shape[-1]).to(z)
        n_hat = n / n.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        out = out - (out * n_hat).sum(-1, keepdim=True) * n_hat
    if positive is not None:
        out = out + positive.reshape(-1, z.shape[-1]).to(z)
    return out


@dataclass
class I2T2IResult:
    """images [N, C, H, W]; captions: what image -> text said (before any edit); prompts: the edited captions the
    images were generated from; caption_latents: step 1's text latents (pass them back to edit again)."""

    images: Tensor
    captions: list[str]
    prompts: list[str]
    caption_latents: Tensor | None = None


def i2t2i(model: Any, image: Any, seeds: Sequence[int] = (0,), *, edits: Any = None,
          positive: str | Sequence[str] | None = None, negative: str | Sequence[str] | None = None,
          image_strength: float = 0.33,
          image_level: int = 1, keep_cls: bool = False, mixing: str = "attention",
          caption_guidance: float | None = None, text_options: dict[str, Any] | None = None,
          caption_latents: Tensor | None = None, **kw: Any) -> I2T2IResult:
    """Editable image -> text -> image (VD v0 `application_i2t2i`).

    1. image -> caption latents z (the image-to-text flow); 2. latent arithmetic when `positive` / `negative` are
    given (one prompt for all seeds or one per seed): z' = z - (z . n^) n^ + p (text-VAE latents of the prompts);
    3. decode (VD: sampling at temperature 1, seeded per sample); 4. word substitutions `edits` ({"red": "blue"} or
    ["red=blue"]; a list of mappings: one per seed); 5. dual-guided image
    generation from the edited caption -- its text context concatenated with the positive prompt's, as v0 -- and the
    input image's context with weight `image_strength` (v0: 0.33, text 0.67), the image context reduced as v0 does:
    CLS dropped (keep_cls=False) and only the top 10 components of the local tokens kept (image_level=+1).
    image_strength=0 generates from the edited caption alone (text-to-image). caption_guidance: the guidance of
    step 1 (default: the run's); caption_latents: step 1's latents [N, D] from an earlier call (to edit the same
    captions several ways); other keywords (sampler, steps, guidance, batch_size, device, ...) apply to both steps.
    """
    s = check_strength(image_strength, "image_strength")
    seeds = [int(x) for x in seeds]
    n = len(seeds)
    images = per_seed(image, n, "images")
    if isinstance(edits, (list, tuple)) and edits and all(isinstance(e, Mapping) for e in edits):
        if len(edits) != n:
            raise ValueError(f"got {len(edits)} edits for {n} seeds; give one per seed or one for all")
        per_edits = [parse_edits(e) for e in edits]
    else:
        per_edits = [parse_edits(edits)] * n
    text_codec = flow_for(model, "text", "image").codec
    latent_edit = positive is not None or negative is not None
    prompts_of: dict[str, list[str] | None] = {}
    for name, value in (("positive", positive), ("negative", negative)):
        values = None if value is None else per_seed(value, n, f"{name} prompts")
        if values is not None and any(not isinstance(v, str) or not v.strip() for v in values):
            raise ValueError(f"the {name} prompt must be a non-empty string, got {value!r}")
        prompts_of[name] = values
    if caption_latents is None:
        cap_kw = {k: v for k, v in kw.items() if k not in ("guidance", "stats")}
        z = generate_multi(model, seeds, [StreamContext("image", [images])], data="text", output="latents",
                           guidance=kw.get("guidance") if caption_guidance is None else caption_guidance, **cap_kw)
    else:
        z = torch.as_tensor(caption_latents)
        if z.ndim != 2 or z.shape[0] != n:
            raise ValueError(f"caption_latents must be [N={n}, D], got {tuple(z.shape)}")
    captions = _decode(text_codec, z, seeds, text_options)
    if latent_edit:
        pos, neg = (None if prompts_of[k] is None else text_codec.encode(prompts_of[k]).to(z)
                    for k in ("positive", "negative"))
        decoded = _decode(text_codec, edit_latent(z, pos, neg), seeds, text_options)
    else:
        decoded = captions
    prompts = [substitute_words(c, e) for c, e in zip(decoded, per_edits)]
    text_parts = [prompts] + ([prompts_of["positive"]] if positive is not None else [])

    def reduce_image(c: Tensor) -> Tensor:
        c = disentangle_tokens(c, image_level)
        return c if keep_cls else c[:, 1:]

    contexts = [StreamContext("text", text_parts, weight=1.0 - s, label="text"),
                StreamContext("image", [images], weight=s, transform=reduce_image, label="image")]
    out = generate_multi(model, seeds, contexts, data="image", mixing=mixing, **kw)
    return I2T2IResult(out, list(captions), prompts, z)
