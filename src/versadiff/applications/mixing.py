"""Multi-context generation: one sampling run guided by several context streams of a multi-flow (VD) network.

A `StreamContext` is what one context stream (text, image) contributes: one or more parts (a prompt, an image,
... one input per seed each), their token scales, an optional token transform (disentanglement) and the
stream's weight rho. `generate_multi` mixes the streams at one of three levels:

  attention  every context slot runs each stream's transformer on the same h and takes h + sum_i rho_i (T_i(h) - h)
             (VD v1 `context_mixing`, v0 `mixed_run_dc`, diffusers' DualTransformer2DModel); one forward per
             network evaluation, but every context slot costs one transformer per stream.
  layer      each context slot runs ONE stream's transformer, drawn i ~ rho (VD v1 mixing_type="layer"); the
             draw is made per context slot and per forward, shared by the batch, from a generator seeded by
             (mixing_seed, the batch's first seed) -- so a run is reproducible for the same seeds and batch size.
  model      the model-level baseline: whole single-context flows take turns by step. Step k (the k-th point of
             the sampler's time grid) runs the stream whose share of the steps so far lags its weight most
             (largest deficit rho_i (k + 1) - n_i, ties to the first stream), so r = 0.5 alternates image/text,
             r = 0.25 gives one text step in four, r = 0 / 1 never leaves one flow.

Guidance (decided here, as VD v1 `sample_multicontext` does): the conditional branch is the mixed forward over
the streams' contexts, the unconditional branch the same mixed forward (same weights, same mixing, in the same
batched forward, hence the same layer draws) over each stream's OWN null context: the one its single-context flow
uses for this data modality (text: the encoding of ""; image -> image: all zeros; image -> text: the encoding of a
black image). One guidance weight w applies to the mix: (1 + w) c_mix - w u_mix. For the model level each step
is that flow's own guided prediction. A stream of weight 0 is left out entirely (never encoded), so strength
r = 1 is exactly the text flow and r = 0 exactly the image flow, at every mixing level.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "MIXINGS",
    "StreamContext",
    "StepSwitchDenoiser",
    "deficit_schedule",
    "generate_multi",
    "flow_for",
    "per_seed",
]

MIXINGS = ("attention", "layer", "model")


def per_seed(value: Any, n: int, noun: str) -> list[Any]:
    """One input per seed: a list/tuple/batched tensor of n items (or one item), or a single input repeated."""
    from versadiff.pipelines import _per_seed

    if value is None:
        raise ValueError(f"no {noun} given")
    return _per_seed(value, n, noun)


def flow_for(model: Any, data: str, context: str) -> Any:
    """The model's bound flow that generates `data` from a `context` context (its null mode and codec)."""
    for f in model.flows.values():
        if f.flow.data == data and f.flow.context == context:
            return f
    names = ", ".join(model.flows)
    raise ValueError(f"this model has no {context}-to-{data} flow (its flows: {names}); it cannot use a {context} "
                     f"context to generate {data}")


@dataclass
class StreamContext:
    """The contribution of one context stream.

    stream: the context modality ("text", "image"). parts: one input list per part, each with one input per
    seed (prompts, images); the parts' encodings are concatenated along the token axis (VD v1 blender: several
    images in one image context; v0 I2T2I: caption + positive prompt). scales: per part, a factor on its tokens
    (v1 blender's image weight; default 1). transform: applied to each part's encoding and to its null (e.g.
    disentanglement); an all-zero null is left as it is. weight: the stream's rho before normalisation.
    """

    stream: str
    parts: list[list[Any]]
    weight: float = 1.0
    scales: list[float] | None = None
    transform: Callable[[Tensor], Tensor] | None = None
    label: str = ""
    _scales: list[float] = field(init=False, repr=False, default_factory=list)

    def __post_init__(self) -> None:
        w = float(self.weight)
        if not math.isfinite(w) or w < 0:
            raise ValueError(f"the {self.stream} context's weight must be a finite number >= 0, got {self.weight}")
        self.weight = w
        if not self.parts:
            raise ValueError(f"the {self.stream} context has no inputs")
        scales = [1.0] * len(self.parts) if self.scales is None else [float(s) for s in self.scales]
        if len(scales) != len(self.parts):
            raise ValueError(f"the {self.stream} context has {len(self.parts)} parts but {len(scales)} scales")
        if any(not math.isfinite(s) for s in scales):
            raise ValueError(f"the {self.stream} context's token scales must be finite, got {scales}")
        self._scales = scales

    def encode(self, encoder: Any, index: Sequence[int], null_mode: str | None,
               device: torch.device) -> tuple[Tensor, Tensor]:
        """(context, null) [len(index), L, D] for the samples `index` of the run."""
        ctx, null = [], []
        for part, scale in zip(self.parts, self._scales):
            c = encoder.encode([part[i] for i in index]).to(device)
            u = encoder.null(len(index), null_mode).to(device)
            if self.transform is not None:
                c = self.transform(c)
                u = u if not bool(u.any()) else self.transform(u)
                if not bool(u.any()):  # keep the null's token count in step with the context's (e.g. CLS dropped)
                    u = torch.zeros_like(c)
            ctx.append(c * scale if scale != 1.0 else c)
            null.append(u * scale if scale != 1.0 else u)
        return torch.cat(ctx, dim=1), torch.cat(null, dim=1)


def deficit_schedule(weights: Sequence[float], steps: int) -> list[int]:
    """Model-level mixing: which stream runs at each of `steps` steps. Step k takes the stream i with the largest
    deficit rho_i (k + 1) - n_i (n_i: its steps so far; ties to the lowest i), so every prefix of the schedule is as
    close to the weights as whole steps allow; a zero weight never runs."""
    total = float(sum(weights))
    if total <= 0 or any(w < 0 for w in weights):
        raise ValueError(f"model-level weights must be >= 0 and not all zero, got {list(weights)}")
    rho = [w / total for w in weights]
    counts = [0] * len(rho)
    out = []
    for k in range(steps):
        deficit = [r * (k + 1) - n if r > 0 else -math.inf for r, n in zip(rho, counts)]
        best = max(deficit)
        i = next(j for j, d in enumerate(deficit) if d >= best - 1e-9)
        counts[i] += 1
        out.append(i)
    return out


class StepSwitchDenoiser:
    """A DenoiserFn that runs denoisers[schedule[k]] at step k of the time grid `t_grid` (the model-level
    baseline). The step of a call is the grid point nearest its time, so a solver's extra evaluations (Heun's
    corrector at t_{k+1}) use the flow of the step they land on. `calls` counts the calls per denoiser."""

    def __init__(self, denoisers: Sequence[Any], schedule: Sequence[int], t_grid: Tensor) -> None:
        if len(schedule) != len(t_grid):
            raise ValueError(f"schedule has {len(schedule)} entries for a grid of {len(t_grid)} steps")
        self.denoisers, self.schedule = list(denoisers), list(schedule)
        self.t_grid = torch.as_tensor(t_grid, dtype=torch.float64).cpu()
        self.calls = [0] * len(self.denoisers)

    def step_of(self, t: Tensor) -> int:
        t0 = float(torch.as_tensor(t, dtype=torch.float64).reshape(-1)[0])
        return int(torch.argmin((self.t_grid - t0).abs()))

    def __call__(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        i = self.schedule[self.step_of(t)]
        self.calls[i] += 1
        return self.denoisers[i](x, t)


def _layer_generator(mixing_seed: int, first_seed: int) -> torch.Generator:
    """The layer-mixing generator of one batch: a function of (mixing_seed, the batch's first seed) only."""
    state = np.random.SeedSequence([int(mixing_seed) & 0xFFFFFFFF, int(first_seed) & 0xFFFFFFFF]).generate_state(2)
    return torch.Generator().manual_seed((int(state[0]) << 31) ^ int(state[1]))


def _mixed_condition(data: str, ctxs: dict[str, Tensor], weights: dict[str, float], mixing: str,
                     generator: torch.Generator | None) -> dict[str, Any]:
    cond: dict[str, Any] = {"data_stream": data, **{f"context_{s}": c for s, c in ctxs.items()}}
    cond["context_weights"] = dict(weights)
    cond["mixing"] = mixing
    if mixing == "layer":
        cond["mixing_generator"] = generator
    return cond


def _decode(codec: Any, z: Tensor, seeds: Sequence[int], text_options: dict[str, Any] | None) -> Any:
    """Decode latents; captions one by one with a generator seeded by the sample's seed (reproducible)."""
    if codec.modality != "text":
        data = codec.decode(z)
        return data.float().clamp(-1, 1).cpu()
    opts = dict(text_options or {})
    if opts.get("strategy", "sample") in ("sample", "top_p") and "generator" not in opts:
        out = []
        for i, s in enumerate(seeds):
            out += codec.decode(z[i : i + 1], **opts, generator=torch.Generator().manual_seed(int(s)))
        return out
    return list(codec.decode(z, **opts))


@torch.no_grad()
def generate_multi(model: Any, seeds: Sequence[int], contexts: Sequence[StreamContext], *, data: str = "image",
                   mixing: str = "attention", sampler: str | None = None, steps: int | None = None,
                   guidance: float | None = None, batch_size: int = 64, device: str | torch.device = "cpu",
                   mixing_seed: int = 0, progress: bool = False, output: str = "data",
                   text_options: dict[str, Any] | None = None, stats: dict[str, Any] | None = None,
                   **options: Any) -> Tensor | list[str]:
    """One sample per seed of `data` ("image" or "text") guided by several context streams (module docstring).

    Streams of weight 0 are dropped; with one stream left this is exactly that single-context flow (the same
    samples as `model.generate(seeds, flow=...)` for images; for text the same latents). output: "data"
    (images [N, C, H, W] in [-1, 1] / captions) or "latents". text_options: caption decoding options
    (TextVAE.decode; default VD's sampling at temperature 1, each caption seeded by its sample's seed).
    stats: a dict that receives the denoiser calls per stream (model level) and the schedule.
    sampler / steps / guidance default to the run's `sample` settings; guidance w as everywhere: (1 + w) c - w u.
    """
    from versadiff.sampling import GaussianSampling

    if mixing not in MIXINGS:
        raise ValueError(f"mixing must be one of {', '.join(MIXINGS)}, got {mixing!r}")
    if output not in ("data", "latents"):
        raise ValueError(f"output must be 'data' or 'latents', got {output!r}")
    if not isinstance(model.sampling, GaussianSampling):
        raise ValueError("multi-context generation needs a Gaussian multi-flow (Versatile Diffusion) model")
    if not hasattr(model.net, "flow_condition") or not hasattr(model.net, "num_context_slots"):
        raise ValueError("multi-context generation needs a multi-flow (Versatile Diffusion) network")
    streams = [c.stream for c in contexts]
    if len(set(streams)) != len(streams):
        raise ValueError(f"each context stream may appear once (concatenate its parts instead), got {streams}")
    if not contexts or sum(c.weight for c in contexts) <= 0:
        raise ValueError("give at least one context with a weight > 0")
    active = [c for c in contexts if c.weight > 0]
    flows = {c.stream: flow_for(model, data, c.stream) for c in active}
    seeds = [int(s) for s in seeds]
    first = flows[active[0].stream]
    req = model.request(seeds, flow=first.name, sampler=sampler, steps=steps, guidance=guidance,
                        batch_size=batch_size, **options)  # defaults and checks, before any work
    for c in active:
        for part in c.parts:
            if len(part) != len(seeds):
                raise ValueError(f"the {c.stream} context has {len(part)} inputs for {len(seeds)} seeds")
            flows[c.stream].encoder.check(list(part))
    device = torch.device(device)
    net = model.net.to(device).eval()
    first.codec.to(device)
    for f in flows.values():
        f.encoder.to(device)
    shape = model.sample_shape(first.name)
    weights = {c.stream: c.weight for c in active}
    sampling = model.sampling
    out: list[Any] = []
    calls = [0] * len(active)
    schedule: list[int] = []
    for start in range(0, len(seeds), batch_size):
        chunk = seeds[start : start + batch_size]
        index = list(range(start, start + len(chunk)))
        enc = {c.stream: c.encode(flows[c.stream].encoder, index, flows[c.stream].flow.null, device) for c in active}
        if len(active) == 1:  # exactly the single-context flow
            s = active[0].stream
            cond = flows[s].condition(net, enc[s][0])
            uncond = flows[s].condition(net, enc[s][1]) if req.guidance else None
            z = sampling.sample(net, shape, chunk, cond, uncond, req.guidance, sampler=req.sampler, steps=req.steps,
                                device=device, progress=progress, options=req.options)
        elif mixing in ("attention", "layer"):
            gen = _layer_generator(mixing_seed, chunk[0]) if mixing == "layer" else None
            cond = _mixed_condition(data, {s: e[0] for s, e in enc.items()}, weights, mixing, gen)
            uncond = _mixed_condition(data, {s: e[1] for s, e in enc.items()}, weights, mixing, gen)
            z = sampling.sample(net, shape, chunk, cond, uncond if req.guidance else None, req.guidance,
                                sampler=req.sampler, steps=req.steps, device=device, progress=progress,
                                options=req.options)
        else:  # model level: single-context flows take turns by step
            z, den = _model_level(model, net, shape, chunk, active, flows, enc, req, device, progress)
            calls = [a + b for a, b in zip(calls, den.calls)]
            schedule = den.schedule
        out.append(z if output == "latents" else _decode(first.codec, z, chunk, text_options))
    if stats is not None:
        stats.update({"streams": [c.stream for c in active], "calls": calls, "schedule": schedule})
    if output == "latents" or torch.is_tensor(out[0]):
        return torch.cat(out)
    return [t for part in out for t in part]


def _model_level(model: Any, net: Any, shape: tuple[int, ...], chunk: list[int], active: list[StreamContext],
                 flows: dict[str, Any], enc: dict[str, tuple[Tensor, Tensor]], req: Any, device: torch.device,
                 progress: bool) -> tuple[Tensor, StepSwitchDenoiser]:
    from versadiff.samplers import _GRID_OPTIONS, DEFAULT_SPACING, sample, timesteps_for

    sampling = model.sampling
    dens = []
    for c in active:
        f = flows[c.stream]
        cond = f.condition(net, enc[c.stream][0])
        uncond = f.condition(net, enc[c.stream][1]) if req.guidance else None
        dens.append(sampling.denoiser(net, cond, uncond, req.guidance))
    options = dict(req.options)
    grid_opts = {k: options.pop(k) for k in _GRID_OPTIONS if k in options}
    spacing = options.pop("spacing", None) or DEFAULT_SPACING[req.sampler]
    grid = timesteps_for(sampling.schedule, req.steps, spacing, **grid_opts)
    den = StepSwitchDenoiser(dens, deficit_schedule([c.weight for c in active], len(grid.t)), grid.t)
    z = sample(den, shape, sampling.schedule, sampler=req.sampler, steps=grid, seeds=list(chunk), device=device,
               dtype=torch.float32, disable=not progress, **options)
    return z, den
