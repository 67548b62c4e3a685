"""VQ-Diffusion inference: a VQ transformer + its mask-and-replace process + the VQ autoencoder that decodes.

    model = load_model("runs/00002-shapes_vqdiffusion")          # a LoadedVQModel
    images = model.generate(range(16), steps=20, guidance=1.0, truncation=0.9, class_labels=3)

Conventions shared with the Gaussian LoadedModel: `guidance` is the CFG weight w, the log-space mix being
(1 + w) log p(x0|c) - w log p(x0) (VQ-Diffusion's scale s = 1 + w; w = 0 is off); one seed per image.
`steps` picks the stride v = T // steps of the fast samplers (T = 100, steps 20 -> v = 5, 21 network calls).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from versadiff.config import RunConfig
from versadiff.pipelines import ClassLabels
from versadiff.processes.discrete import DiscreteProcess, MaskReplaceSchedule

__all__ = ["DISCRETE_KEYS", "build_discrete_process", "LoadedVQModel", "stride_for"]

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


def stride_for(method: str, steps: int, num_steps: int) -> int:
    """The stride v giving about `steps` network calls; the every-step methods accept only steps = T."""
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if method in ("standard", "purity"):
        if steps != num_steps:
            raise ValueError(f"sampler {method!r} takes all {num_steps} steps; use sampler fast or fast_exact for "
                             f"--steps {steps}")
        return 1
    if steps > num_steps:
        raise ValueError(f"steps {steps} exceeds the process's {num_steps} steps")
    return max(1, num_steps // int(steps))


@dataclass
class LoadedVQModel(ClassLabels):
    """A VQ transformer ready for sampling, with its process and decoding autoencoder."""

    net: nn.Module
    process: DiscreteProcess
    autoencoder: nn.Module
    config: RunConfig
    num_classes: int = 0
    class_names: list[str] = field(default_factory=list)
    image_shape: tuple[int, int, int] = (3, 32, 32)
    step: int | None = None
    source: str = ""

    @classmethod
    def from_net(cls, net: nn.Module, config: RunConfig, info: dict[str, Any], source: str = "",
                 autoencoder: nn.Module | None = None) -> "LoadedVQModel":
        """Wrap a VQ transformer; the autoencoder is loaded from config.autoencoder.path unless given."""
        if autoencoder is None:
            from versadiff.latent import load_autoencoder

            path = (config.autoencoder or {}).get("path")
            if not path:
                raise ValueError("this VQ-Diffusion model needs its VQ autoencoder: set autoencoder.path=... "
                                 "(train one first: versadiff train shapes_vqae)")
            autoencoder = load_autoencoder(path)
        process = build_discrete_process(config.discrete, autoencoder.config.n_embed)
        return cls(net=net.eval(), process=process, autoencoder=autoencoder.eval(), config=config,
                   num_classes=int(info.get("num_classes", 0)), class_names=list(info.get("class_names") or []),
                   image_shape=tuple(info["image_shape"]), step=info.get("step"), source=source)

    @property
    def token_grid(self) -> tuple[int, int]:
        c = self.net.config
        return (c.height, c.width)

    @torch.no_grad()
    def generate(
        self,
        seeds: Sequence[int],
        *,
        sampler: str | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        truncation: float | None = None,
        class_labels: Any = None,
        batch_size: int = 64,
        device: str | torch.device = "cpu",
        progress: bool = False,
        **options: Any,
    ) -> Tensor:
        """Images [N, C, H, W] in [-1, 1] (float32, on CPU), one per seed, decoded from sampled tokens.

        sampler: standard | fast | fast_exact | purity; steps: network calls (stride T // steps for fast ones);
        guidance: CFG weight w (log space, scale 1 + w); truncation: top-r mass kept per token (1 = off).
        Defaults come from the run's `sample` section; options go to versadiff.samplers.discrete.sample_vq.
        """
        from versadiff.samplers.discrete import VQDenoiser, sample_vq

        req = self._request(seeds, sampler, steps, guidance, class_labels, batch_size, options)
        truncation = self.config.sample.truncation if truncation is None else truncation
        stride = stride_for(req.sampler, req.steps, self.process.num_steps)
        device = torch.device(device)
        self.net.to(device).eval()
        self.autoencoder.to(device).eval()
        h, w = self.token_grid
        out = []
        for chunk, labels in req.batches(batch_size):
            cond = {} if labels is None else {"class_labels": labels.to(device)}
            den = VQDenoiser(self.net, self.process, cond, guidance_scale=1.0 + req.guidance, truncation=truncation)
            tokens = sample_vq(den, self.process, h * w, seeds=chunk, method=req.sampler, stride=stride,
                               device=device, **req.options)
            out.append(self.autoencoder.decode_tokens(tokens, (h, w)).float().clamp(-1, 1).cpu())
        return torch.cat(out) if out else torch.empty(0, *self.image_shape)
