"""Evaluation of a multi-flow (VD) model's flows against a caption set (versadiff.eval.captions, COCO-captions JSON):

    text-to-image   sample i is generated from prompt i (caption (i // M) mod K of image i mod M; M images) with
                    seed + i; metrics: FID / KID / IS / precision-recall / *_fd against the set's images (resized
                    to the model's resolution), and CLIP score of each sample against its prompt
    image-to-text   caption i is generated from image i mod M with seed + i; metrics: BLEU and chrF (sacrebleu)
                    against all reference captions of the image, and CLIP score of the caption against the image

Both reuse the image evaluation's machinery (versadiff.eval.evaluate): the N indices are cut into fixed batches that
the accelerate processes share (map_batches) and gathered on every process in index order, so 1 or 8 processes
give the same report. CLIP score uses the model's own CLIP by default (its text encoder's folder for text -> image,
its image encoder's for image -> text) or the `clip_model` folder given.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from .captions import CaptionImageSource, CaptionSet
from .evaluate import (METRICS, EvalOptions, FeatureExtractor, ImageSource, _state, build_extractors, evaluate,
                       map_batches, quantize_images, versions)
from .metrics import clip_score
from .text_metrics import TEXT_METRICS, caption_metric, sacrebleu_version

__all__ = ["VD_TASKS", "TASK_METRICS", "DEFAULT_METRICS", "parse_task_metrics", "check_task", "default_clip_model",
           "PromptSource", "evaluate_flow"]

VD_TASKS = ("text-to-image", "image-to-text")
#: metrics each task takes: text -> image every image metric that needs no class labels
TASK_METRICS: dict[str, list[str]] = {
    "text-to-image": [m for m, (_, kind) in METRICS.items() if kind != "acc"],
    "image-to-text": [*TEXT_METRICS, "clip"],
}
DEFAULT_METRICS = {"text-to-image": "fid,clip", "image-to-text": "bleu,chrf,clip"}


def parse_task_metrics(task: str, text: str | Sequence[str] | None) -> list[str]:
    """The metric names of `task` from "fid,clip" (None: the task's defaults); one-line errors for the rest."""
    if task not in VD_TASKS:
        raise ValueError(f"versadiff eval scores --task {' or '.join(VD_TASKS)}; got {task!r}")
    text = DEFAULT_METRICS[task] if text is None else text
    names = [m.strip() for m in (text.split(",") if isinstance(text, str) else text) if m.strip()]
    if not names:
        raise ValueError(f"no metric given; --task {task} takes {', '.join(TASK_METRICS[task])}")
    out: list[str] = []
    for m in names:
        if m not in TASK_METRICS[task]:
            why = " (class accuracy needs class labels, which prompts do not give)" if m in METRICS or m == "acc" \
                else ""
            raise ValueError(f"metric {m!r} does not fit --task {task}{why}; choose from "
                             f"{', '.join(TASK_METRICS[task])}")
        if m not in out:
            out.append(m)
    return out


def check_task(model: Any, task: str, source: str = "the model") -> None:
    """One line when `task` is not a scored task or the model has no such flow."""
    if task not in VD_TASKS:
        raise ValueError(f"versadiff eval scores --task {' or '.join(VD_TASKS)}; got {task!r}")
    flows = getattr(model, "flows", {}) or {}
    if task not in flows:
        raise ValueError(f"{source} has no {task!r} flow (its flows: {', '.join(flows) or 'none'}); "
                         "evaluate a model that has it")


def default_clip_model(model: Any, task: str) -> str | None:
    """The folder of the model's own CLIP for `task`'s CLIP score: its text encoder's (text -> image) or its
    image encoder's (image -> text), else the other's; None when the model names neither."""
    encoders = dict(getattr(model.config, "encoders", None) or {})
    order = ("text", "image") if task == "text-to-image" else ("image", "text")
    for key in order:
        path = (encoders.get(key) or {}).get("path")
        if path:
            return str(path)
    return None


def _resolution(model: Any) -> int | None:
    shape = tuple(getattr(model, "image_shape", ()) or ())
    return int(shape[-1]) if len(shape) == 3 and shape[-1] == shape[-2] else None


@dataclass
class PromptSource(ImageSource):
    """Text -> image samples of a model for a caption set's prompts: sample i from prompt i with seed + i."""

    model: Any
    captions: CaptionSet
    n: int
    seed: int = 0
    sampler: str | None = None
    steps: int | None = None
    guidance: float | None = None
    device: str | torch.device = "cpu"

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"--n must be >= 1, got {self.n}")
        self.prompts = [self.captions.prompt(i) for i in range(self.n)]
        # every check (sampler, steps, guidance, the prompts) and the run's defaults, before any sampling
        req = self.model.request([self.seed], flow="text-to-image", context=self.prompts[:1], sampler=self.sampler,
                                 steps=self.steps, guidance=self.guidance, batch_size=1)
        self.sampler, self.steps, self.guidance = req.sampler, req.steps, req.guidance
        self.description = _samples_description(self.model, "text-to-image", self.n, self.seed, self.sampler,
                                                self.steps, self.guidance)

    def __len__(self) -> int:
        return self.n

    def batch(self, indices: Sequence[int]) -> tuple[Tensor, Tensor | None]:
        images = self.model.generate([self.seed + i for i in indices], flow="text-to-image",
                                     context=[self.prompts[i] for i in indices], sampler=self.sampler,
                                     steps=self.steps, guidance=self.guidance, batch_size=len(indices),
                                     device=self.device)
        return quantize_images(images), None


def _samples_description(model: Any, task: str, n: int, seed: int, sampler: str, steps: int,
                         guidance: float) -> dict[str, Any]:
    rule = ("prompt i = caption (i // M) mod K of image i mod M" if task == "text-to-image"
            else "caption i from image i mod M")
    return {"kind": "checkpoint", "task": task, "source": str(getattr(model, "source", "")),
            "step": getattr(model, "step", None), "n": n, "seeds": [seed, seed + n - 1], "sampler": sampler,
            "steps": steps, "guidance": guidance, "guidance_scale": guidance + 1.0, "inputs": rule}


def evaluate_flow(model: Any, task: str, captions: CaptionSet, opts: EvalOptions, *, n: int | None = None,
                  sampler: str | None = None, steps: int | None = None, guidance: float | None = None,
                  device: str | torch.device = "cpu", cache_dir: str | Path | None = None,
                  extractors: dict[str, FeatureExtractor] | None = None, progress: bool = False,
                  save_ref: str | Path | None = None) -> dict[str, Any]:
    """Score `task` of `model` on `captions` with `opts.metrics` (see the module docstring); n defaults to the
    number of images in the set; sample i uses seed opts.seed + i. Returns the report (same on every process).
    Every check runs before any sampling."""
    check_task(model, task, str(getattr(model, "source", "") or "the model"))
    metrics = parse_task_metrics(task, opts.metrics)
    n = len(captions) if n is None else int(n)
    if n < 1:
        raise ValueError(f"--n must be >= 1, got {n}")
    if "clip" in metrics and opts.clip_model is None:
        opts = replace(opts, clip_model=default_clip_model(model, task))
    opts = replace(opts, metrics=metrics)
    if task == "text-to-image":
        report = _text_to_image(model, captions, opts, n, sampler, steps, guidance, device, cache_dir, extractors,
                                progress, save_ref)
    else:
        if save_ref is not None:
            raise ValueError("--save-ref applies to image metrics (text-to-image), not to image-to-text")
        report = _image_to_text(model, captions, opts, n, sampler, steps, guidance, device, extractors, progress)
    return {"task": task, **report}


def _text_to_image(model: Any, captions: CaptionSet, opts: EvalOptions, n: int, sampler: str | None,
                   steps: int | None, guidance: float | None, device: Any, cache_dir: Any,
                   extractors: dict[str, FeatureExtractor] | None, progress: bool, save_ref: Any) -> dict[str, Any]:
    source = PromptSource(model, captions, n, seed=opts.seed, sampler=sampler, steps=steps, guidance=guidance,
                          device=device)
    ref = CaptionImageSource(captions, n=opts.ref_n, resolution=_resolution(model))
    report = evaluate(source, [ref], replace(opts, prompts=source.prompts), device=device, cache_dir=cache_dir,
                      extractors=extractors, progress=progress, save_ref=save_ref)
    report["settings"].pop("prompts", None)  # n prompts; the rule that picks them is in samples.inputs
    report["reference"]["caption_set"] = captions.description()
    return report


def _image_to_text(model: Any, captions: CaptionSet, opts: EvalOptions, n: int, sampler: str | None,
                   steps: int | None, guidance: float | None, device: Any,
                   extractors: dict[str, FeatureExtractor] | None, progress: bool) -> dict[str, Any]:
    images = CaptionImageSource(captions, resolution=_resolution(model))
    seeds = [opts.seed + i for i in range(n)]
    # the checks and the run's defaults, before the feature extractors load and anything is sampled
    req = model.request(seeds[:1], flow="image-to-text", context=images.images([0]), sampler=sampler, steps=steps,
                        guidance=guidance, batch_size=1)
    ex = build_extractors(["clip"], opts, device, extractors) if "clip" in opts.metrics else {}
    for name in opts.metrics:
        if name in TEXT_METRICS:
            caption_metric(name, ["a"], [["a"]])  # sacrebleu is importable: fail now, not after sampling

    def one_batch(indices: list[int]) -> dict[str, Any]:
        x = images.images([captions.image_index(i) for i in indices])
        texts = model.generate([opts.seed + i for i in indices], flow="image-to-text", context=x,
                               sampler=req.sampler, steps=req.steps, guidance=req.guidance,
                               batch_size=len(indices), device=device)
        out: dict[str, Any] = {"texts": [str(t) for t in texts]}
        if "clip" in ex:
            out["image"] = ex["clip"](x)["features"].numpy()
            out["text"] = ex["clip"].text_features(out["texts"]).numpy()
        return out

    results = map_batches(n, opts.batch_size, one_batch, progress, desc="image-to-text batches")
    texts = [t for r in results for t in r["texts"]]
    refs = [captions.captions[captions.image_index(i)] for i in range(n)]
    scores: dict[str, Any] = {}
    details: dict[str, Any] = {}
    for name in opts.metrics:
        if name in TEXT_METRICS:
            d = caption_metric(name, texts, refs)
            scores[name] = d.pop("score")
            details[name] = d
        else:
            scores[name] = clip_score(np.concatenate([r["image"] for r in results]),
                                      np.concatenate([r["text"] for r in results]))
    state = _state()
    return {
        "metrics": scores,
        "metric_details": details,
        "samples": _samples_description(model, "image-to-text", n, opts.seed, req.sampler, req.steps, req.guidance),
        "reference": {"given": [images.description], "caption_set": captions.description()},
        "settings": {k: v for k, v in vars(opts).items() if k != "prompts"},
        "features": {k: e.name for k, e in ex.items()},
        "versions": {**versions(), "sacrebleu": sacrebleu_version()},
        "runtime": {"num_processes": state.num_processes, "device": str(device)},
        "captions": [{"seed": opts.seed + i, "image": str(captions.files[captions.image_index(i)].name), "text": t}
                     for i, t in enumerate(texts)],
    }
