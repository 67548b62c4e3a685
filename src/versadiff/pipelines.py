"""Inference: one pipeline for every model kind — generate, flow by flow (load one with versadiff.models.load_model).

    model = load_model("runs/00003-shapes_unet_tiny")        # an export, a run folder or a checkpoint
    images = model.generate(range(16), class_labels="red circle", sampler="dpmpp", steps=20, guidance=1.0)
    captions = vd.generate(range(4), flow="image-to-text", context=[img] * 4)   # a text flow gives strings

A Pipeline is a network, a process family (versadiff.sampling: Gaussian or discrete) and the run's flows
(versadiff.flows: each a codec for its data and a context encoder for its condition). `generate` checks the
request once, then for each batch of seeds encodes the contexts and their null contexts, samples latents and
decodes them. Sample i depends only on its own seed and context, never on the batch it lands in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch
from torch import Tensor, nn

from versadiff.config import RunConfig
from versadiff.flows import BoundFlow

__all__ = ["Pipeline", "SampleRequest"]


@dataclass
class SampleRequest:
    """What one generate() call asks for, after defaults and checks."""

    flow: BoundFlow
    seeds: list[int]
    sampler: str
    steps: int
    guidance: float
    inputs: list[Any] | None  # one context input per seed; None: the null context for all
    options: dict[str, Any]

    def batches(self, batch_size: int) -> Iterator[tuple[list[int], list[Any] | None]]:
        """(seeds, inputs) chunks of at most batch_size."""
        for start in range(0, len(self.seeds), batch_size):
            chunk = self.seeds[start : start + batch_size]
            yield chunk, None if self.inputs is None else self.inputs[start : start + len(chunk)]


@dataclass
class Pipeline:
    """A trained network ready for generation, with its process family and flows.

    data_shapes: the shape of one item of each data modality ({"image": (3, 32, 32)}).
    """

    net: nn.Module
    sampling: Any  # versadiff.sampling.GaussianSampling | DiscreteSampling
    flows: dict[str, BoundFlow]
    config: RunConfig
    data_shapes: dict[str, tuple[int, ...]]
    info: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    _compiled: Any = field(default=None, init=False, repr=False, compare=False)  # generate(compile=True)'s net

    # -- facts -----------------------------------------------------------------------------------

    @property
    def step(self) -> int | None:
        return self.info.get("step")

    @property
    def default_flow(self) -> str:
        return next(iter(self.flows))

    @property
    def num_classes(self) -> int:
        return int(self.info.get("num_classes", 0)) if "class-to-image" in self.flows else 0

    @property
    def class_names(self) -> list[str]:
        return list(self.info.get("class_names") or [])

    @property
    def image_shape(self) -> tuple[int, ...]:
        return self.data_shapes.get("image", ())

    def class_index(self, c: int | str) -> int:
        """A class index from an index or a class name; -1 is the null class."""
        if "class-to-image" not in self.flows:
            raise ValueError("this model is unconditional: drop the class argument")
        return self.flows["class-to-image"].encoder.index(c)

    def sample_shape(self, flow: str | None = None) -> tuple[int, ...]:
        """Shape of what the diffusion model generates for `flow`: the data, or its latent."""
        f = self.flows[flow or self.default_flow]
        return tuple(f.codec.latent_shape(self.data_shapes[f.flow.data]))

    # -- generation ----------------------------------------------------------------------------

    def request(self, seeds: Sequence[int], *, flow: str | None = None, context: Any = None,
                class_labels: Any = None, sampler: str | None = None, steps: int | None = None,
                guidance: float | None = None, batch_size: int = 64, truncation: float | None = None,
                **options: Any) -> SampleRequest:
        """A generate() call's arguments checked (before any work), with defaults from the run's `sample` section."""
        name = flow or self.default_flow
        if name not in self.flows:
            raise ValueError(f"this model has no {name!r} flow; its flows: {', '.join(self.flows)}")
        bound = self.flows[name]
        if class_labels is not None:
            if bound.flow.context != "class":
                raise ValueError("this model is unconditional: drop the class labels" if bound.encoder is None else
                                 f"flow {name!r} takes a {bound.flow.context} context, not class labels")
            if context is not None:
                raise ValueError("give class_labels or context, not both")
            context = class_labels
        s = self.config.sample
        if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size}")
        guidance = float(s.guidance if guidance is None else guidance)
        if guidance != guidance or abs(guidance) == float("inf"):
            raise ValueError(f"guidance must be a finite number, got {guidance}")
        if guidance and bound.encoder is None:
            raise ValueError("guidance needs a conditional model (class, text or image context); set guidance to 0")
        seeds = [int(x) for x in seeds]
        sampler = s.sampler if sampler is None else sampler
        steps = s.steps if steps is None else steps
        if isinstance(steps, bool) or int(steps) != steps or steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
        for key, value in options.items():  # inf may be meaningful (EDM's s_tmax), NaN never is
            if isinstance(value, float) and value != value:
                raise ValueError(f"sampler option {key!r} must be a number, got nan")
        options = self.sampling.options(sampler, int(steps), truncation, {**s.options, **options})
        inputs = _per_seed(context, len(seeds), "class labels" if bound.flow.context == "class" else
                           f"{bound.flow.context} contexts")
        if inputs is not None:
            if bound.encoder is None:
                raise ValueError(f"flow {name!r} is unconditional: drop the context")
            bound.encoder.check(inputs)  # a bad context fails here, before any sampling
        return SampleRequest(bound, seeds, sampler, int(steps), guidance, inputs, options)

    @torch.no_grad()
    def generate(self, seeds: Sequence[int], *, flow: str | None = None, context: Any = None,
                 class_labels: Any = None, sampler: str | None = None, steps: int | None = None,
                 guidance: float | None = None, batch_size: int = 64, device: str | torch.device = "cpu",
                 progress: bool = False, truncation: float | None = None, compile: bool | str = False,
                 **options: Any) -> Tensor | list[str]:
        """One sample per seed: images [N, C, H, W] in [-1, 1] (float32, CPU), or a list of N captions.

        flow: which flow (default: the model's first). context: the condition -- None (the null context:
        unconditional samples of a conditional model), one input for every seed, or one per seed (class index
        or name, prompt, image). class_labels: the same for class-conditional models. sampler / steps / guidance
        default to the run's `sample` settings; guidance w mixes (1 + w) * cond - w * uncond (w = 0: plain
        conditional), the unconditional branch using the context encoder's null context. compile: run the network
        of the sampling loop under torch.compile (True: inductor; a torch.compile mode such as "max-autotune":
        inductor in that mode; another string names a backend, e.g. "eager"), kept for later calls; where
        compiling fails the network runs eagerly after a one-line warning.
        """
        req = self.request(seeds, flow=flow, context=context, class_labels=class_labels, sampler=sampler,
                           steps=steps, guidance=guidance, batch_size=batch_size, truncation=truncation, **options)
        device = torch.device(device)
        self.net.to(device).eval()
        bound = req.flow
        bound.codec.to(device)
        if bound.encoder is not None:
            bound.encoder.to(device)
        shape = self.sample_shape(bound.name)
        net = self._compiled_net(compile) if compile else self.net
        out: list[Any] = []
        for chunk, inputs in req.batches(batch_size):
            ctx, null = bound.contexts(inputs, len(chunk), device)
            cond = bound.condition(self.net, ctx)
            uncond = bound.condition(self.net, null) if req.guidance else None
            z = self.sampling.sample(net, shape, chunk, cond, uncond, req.guidance, sampler=req.sampler,
                                     steps=req.steps, device=device, progress=progress, options=req.options)
            data = bound.codec.decode(z)
            out.append(data.float().clamp(-1, 1).cpu() if torch.is_tensor(data) else list(data))
        if out and not torch.is_tensor(out[0]):
            return [text for part in out for text in part]
        return torch.cat(out) if out else torch.empty(0, *self.data_shapes.get(bound.flow.data, ()))


    def _compiled_net(self, how: bool | str) -> Any:
        """The network under torch.compile, made once per Pipeline and backend + mode (dynamo recompiles for new
        shapes); `how` as generate()'s compile."""
        from versadiff.nets.speed import compile_net, compile_options

        options = compile_options(how)
        key = options["backend"] + (f":{options['mode']}" if "mode" in options else "")
        cached = self._compiled
        if cached is None or cached[0] is not self.net or cached[1] != key:
            self._compiled = cached = (self.net, key, compile_net(self.net, **options))
        return cached[2]

    # -- one method per VD task (each a flow of the model) -----------------------------------------

    def text_to_image(self, prompt: Any, seeds: Sequence[int] = (0,), **kw: Any) -> Tensor:
        """Images from a prompt (one for all seeds, or one per seed)."""
        return self.generate(seeds, flow="text-to-image", context=prompt, **kw)

    def image_variation(self, image: Any, seeds: Sequence[int] = (0,), **kw: Any) -> Tensor:
        """Variations of an image (PIL, or a tensor [3, H, W] / [N, 3, H, W] in [-1, 1])."""
        return self.generate(seeds, flow="image-variation", context=image, **kw)

    def image_to_text(self, image: Any, seeds: Sequence[int] = (0,), **kw: Any) -> list[str]:
        """Captions of an image."""
        return self.generate(seeds, flow="image-to-text", context=image, **kw)

    def text_variation(self, text: Any, seeds: Sequence[int] = (0,), **kw: Any) -> list[str]:
        """Variations of a caption."""
        return self.generate(seeds, flow="text-variation", context=text, **kw)

    # -- VD's applications (versadiff.applications: mixing levels, guidance and recipes documented there) ------

    def dual_guided(self, prompt: Any, image: Any, seeds: Sequence[int] = (0,), *, strength: float = 0.5,
                    mixing: str = "attention", **kw: Any) -> Tensor | list[str]:
        """Text + image -> image (or data="text": -> text); strength r = the text's weight, mixing "attention" |
        "layer" | "model". r = 1 is exactly text-to-image, r = 0 exactly image variation."""
        from versadiff.applications import dual_guided

        return dual_guided(self, prompt, image, seeds, strength=strength, mixing=mixing, **kw)

    def disentangle(self, image: Any, seeds: Sequence[int] = (0,), *, level: int = 0, focus: float | None = None,
                    **kw: Any) -> Tensor:
        """Image variation with semantic (level -1, -2) or style (+1, +2) focus, or a continuous focus in [0, 1]."""
        from versadiff.applications import disentangle

        return disentangle(self, image, seeds, level=level, focus=focus, **kw)

    def i2t2i(self, image: Any, seeds: Sequence[int] = (0,), **kw: Any) -> Any:
        """Image -> caption -> edit (edits={"red": "blue"} and/or positive= / negative= latent arithmetic) -> image;
        returns versadiff.applications.I2T2IResult (images, captions, prompts)."""
        from versadiff.applications import i2t2i

        return i2t2i(self, image, seeds, **kw)

    def blend(self, seeds: Sequence[int] = (0,), *, images: Sequence[Any] = (), prompts: Sequence[str] = (),
              **kw: Any) -> Tensor:
        """VD v1's multi-context blender: several images and prompts (image_weights=, prompt_weights=) in one image."""
        from versadiff.applications import blend

        return blend(self, seeds, images=images, prompts=prompts, **kw)


def _per_seed(context: Any, n: int, noun: str = "contexts") -> list[Any] | None:
    """One context input per seed: None stays None; a list/tuple/batched tensor must have n items; anything
    else (a class, a prompt, one image) is repeated."""
    if context is None:
        return None
    if torch.is_tensor(context) and context.ndim == 0:
        context = int(context)
    if isinstance(context, (list, tuple)) or (torch.is_tensor(context) and context.ndim in (1, 4)):
        items = list(context)
        if len(items) == 1 and n != 1:
            items = items * n
        if len(items) != n:
            raise ValueError(f"got {len(items)} {noun} for {n} seeds; give one per seed or a single one")
        return [int(c) if torch.is_tensor(c) and c.ndim == 0 else c for c in items]
    return [context] * n
