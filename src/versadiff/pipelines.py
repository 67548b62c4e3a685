"""Inference: load trained weights and generate images.

`load_model(path)` accepts an exported `.safetensors` file, a run folder (its export, else the latest
checkpoint's EMA weights) or a checkpoint directory. Every weight file versadiff writes carries the
resolved run config and model facts (classes, image shape) in its safetensors metadata, so a single file is
enough to rebuild the network and its schedule.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from safetensors import safe_open
from torch import Tensor, nn

from versadiff.config import RunConfig, config_from_dict
from versadiff.conditioning import NULL_CLASS
from versadiff.denoiser import Denoiser
from versadiff.processes.base import NoiseSchedule

__all__ = ["ClassLabels", "LoadedModel", "load_model", "latent_space_of", "resolve_weights", "read_metadata", "to_pil", "save_grid", "make_grid",
           "CONFIG_KEY", "INFO_KEY"]

CONFIG_KEY = "versadiff_config"
INFO_KEY = "versadiff_info"


@dataclass
class SampleRequest:
    """What one generate() call asks for, after defaults and checks."""

    seeds: list[int]
    sampler: str
    steps: int
    guidance: float
    labels: Tensor | None  # one per seed; None for an unconditional model
    options: dict[str, Any]

    def batches(self, batch_size: int) -> Iterator[tuple[list[int], Tensor | None]]:
        """(seeds, labels) chunks of at most batch_size; an image depends only on its own seed and label."""
        for start in range(0, len(self.seeds), batch_size):
            chunk = self.seeds[start : start + batch_size]
            yield chunk, None if self.labels is None else self.labels[start : start + len(chunk)]


class ClassLabels:
    """Class-label and generate()-argument handling shared by the loaded models."""

    config: RunConfig
    num_classes: int
    class_names: list[str]

    def class_index(self, c: int | str) -> int:
        """A class index from an index or a class name; -1 is the null class."""
        if self.num_classes == 0:
            raise ValueError("this model is unconditional: drop the class argument")
        if isinstance(c, str) and not c.lstrip("-").isdigit():
            if c not in self.class_names:
                raise ValueError(f"unknown class name {c!r}; choose one of {', '.join(self.class_names)}")
            return self.class_names.index(c)
        i = int(c)
        if not NULL_CLASS <= i < self.num_classes:
            raise ValueError(f"class index {i} out of range: this model has {self.num_classes} classes "
                             f"(0..{self.num_classes - 1}, -1 = unconditional)")
        return i

    def _request(self, seeds: Sequence[int], sampler: str | None, steps: int | None, guidance: float | None,
                 class_labels: Any, batch_size: int, options: dict[str, Any]) -> SampleRequest:
        """A generate() call's arguments checked, with defaults from the run's `sample` section."""
        s = self.config.sample
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        guidance = s.guidance if guidance is None else guidance
        if guidance and self.num_classes == 0:
            raise ValueError("guidance needs a class-conditional model; set guidance to 0")
        seeds = [int(x) for x in seeds]
        return SampleRequest(seeds, s.sampler if sampler is None else sampler, s.steps if steps is None else steps,
                             guidance, self._labels(class_labels, len(seeds)), {**s.options, **options})

    def _labels(self, class_labels: Any, n: int) -> Tensor | None:
        if self.num_classes == 0:
            if class_labels is not None:
                raise ValueError("this model is unconditional: drop the class labels")
            return None
        if class_labels is None:
            return torch.full((n,), NULL_CLASS, dtype=torch.long)
        if isinstance(class_labels, (int, str)):
            return torch.full((n,), self.class_index(class_labels), dtype=torch.long)
        labels = [self.class_index(int(c) if torch.is_tensor(c) else c) for c in class_labels]
        if len(labels) != n:
            raise ValueError(f"got {len(labels)} class labels for {n} seeds; give one label per seed or a single one")
        return torch.tensor(labels, dtype=torch.long)


@dataclass
class LoadedModel(ClassLabels):
    """A network ready for sampling, with everything needed to interpret it."""

    net: nn.Module
    schedule: NoiseSchedule
    prediction: str
    clip_x0: float | None
    config: RunConfig
    num_classes: int = 0
    class_names: list[str] = field(default_factory=list)
    image_shape: tuple[int, int, int] = (3, 32, 32)
    step: int | None = None
    source: str = ""
    #: latent models: the autoencoder's latent space (versadiff.latent.LatentSpace); None for pixel models
    latent: Any = None

    @classmethod
    def from_net(cls, net: nn.Module, config: RunConfig, info: dict[str, Any], source: str = "",
                 latent: Any = None) -> "LoadedModel":
        """Wrap an in-memory network (e.g. the trainer's EMA copy) with its run config and facts."""
        from versadiff.processes.schedules import build_schedule

        d = config.diffusion
        return cls(
            net=net.eval(),
            schedule=build_schedule(d.schedule),
            prediction=d.prediction,
            clip_x0=d.clip_x0,
            config=config,
            num_classes=int(info.get("num_classes", 0)),
            class_names=list(info.get("class_names") or []),
            image_shape=tuple(info["image_shape"]),
            step=info.get("step"),
            source=source,
            latent=latent,
        )

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """Shape of what the diffusion model generates: the image, or its latent for latent models."""
        return self.image_shape if self.latent is None else self.latent.latent_shape(self.image_shape)

    @torch.no_grad()
    def generate(
        self,
        seeds: Sequence[int],
        *,
        sampler: str | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        class_labels: Any = None,
        batch_size: int = 64,
        device: str | torch.device = "cpu",
        progress: bool = False,
        truncation: float | None = None,
        **options: Any,
    ) -> Tensor:
        """Images [N, C, H, W] in [-1, 1] (float32, on CPU), one per seed.

        Each image depends only on its own seed and label, not on the batch it lands in.
        sampler / steps / guidance default to the run's `sample` settings; guidance w mixes
        (1 + w) * cond - w * uncond (w = 0: plain conditional). class_labels: None (conditional
        models: the null class), one index or name for all, or one per seed.
        """
        from versadiff.samplers import sample

        if truncation is not None and truncation != 1.0:
            raise ValueError("truncation applies to VQ-Diffusion models; drop --truncation for a Gaussian model")
        req = self._request(seeds, sampler, steps, guidance, class_labels, batch_size, options)
        if req.sampler == "ddpm":  # ancestral steps use the run's reverse variance unless told otherwise
            req.options.setdefault("variance", self.config.diffusion.variance)
            req.options.setdefault("intp_frac", self.config.diffusion.intp_frac)
        device = torch.device(device)
        self.net.to(device).eval()
        if self.latent is not None:
            self.latent.to(device)
        out = []
        for chunk, labels in req.batches(batch_size):
            den = self._denoiser(None if labels is None else labels.to(device), req.guidance)
            x = sample(den, self.sample_shape, self.schedule, sampler=req.sampler, steps=req.steps,
                       seeds=chunk, device=device, dtype=torch.float32, disable=not progress, **req.options)
            if self.latent is not None:
                x = self.latent.decode(x)
            out.append(x.float().clamp(-1, 1).cpu())
        return torch.cat(out) if out else torch.empty(0, *self.image_shape)

    def _denoiser(self, labels: Tensor | None, guidance: float) -> Any:
        if labels is None:
            return Denoiser(self.net, self.schedule, self.prediction, self.clip_x0)
        cond = {"class_labels": labels}
        den = Denoiser(self.net, self.schedule, self.prediction, self.clip_x0, cond)
        if not guidance:
            return den
        from versadiff.conditioning import null_condition
        from versadiff.guidance import GuidedDenoiser

        return GuidedDenoiser(den, conds=[(cond, guidance)], uncond=null_condition(cond), convention="cfg_w")


# ---------------------------------------------------------------------------------------------------
# finding and reading weights


def resolve_weights(path: str | Path) -> Path:
    """The weight file to load for an export file, a run folder or a checkpoint directory."""
    from versadiff.train.checkpoint import is_checkpoint, latest_checkpoint

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p} does not exist; give an exported .safetensors file, a run folder or a checkpoint directory")
    if p.is_file():
        if p.suffix != ".safetensors":
            raise ValueError(f"{p} is not a .safetensors file; give an exported model.safetensors, a run folder or a checkpoint directory")
        return p
    if is_checkpoint(p):
        return p / "ema.safetensors"
    if (p / "export" / "model.safetensors").is_file():
        return p / "export" / "model.safetensors"
    if (p / "model.safetensors").is_file():
        return p / "model.safetensors"
    ckpt = latest_checkpoint(p / "checkpoints")
    if ckpt is not None:
        return ckpt / "ema.safetensors"
    raise ValueError(f"{p} is not a versadiff run folder or checkpoint (no export/model.safetensors, no checkpoints/step-*)")


def read_metadata(path: str | Path) -> tuple[RunConfig, dict[str, Any]]:
    """(run config, model facts) stored in a versadiff safetensors file."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for non-safetensors bytes
        raise ValueError(f"{path} is not a readable safetensors file ({type(e).__name__}); re-export it") from None
    if CONFIG_KEY not in meta or INFO_KEY not in meta:
        raise ValueError(f"{path} is not a versadiff checkpoint (no '{CONFIG_KEY}' in its metadata); export it with versadiff")
    return config_from_dict(json.loads(meta[CONFIG_KEY])), json.loads(meta[INFO_KEY])


def load_model(path: str | Path, *, device: str | torch.device = "cpu") -> Any:
    """Load EMA/exported weights from a .safetensors file, a run folder or a checkpoint directory.

    Returns a LoadedModel (Gaussian models, pixel or latent) or a versadiff.vq_pipeline.LoadedVQModel; both
    have the same `generate(seeds, ...)`. Latent and VQ models load their autoencoder from the run config's
    autoencoder.path. Autoencoder runs are loaded with versadiff.latent.load_autoencoder instead.
    """
    from safetensors.torch import load_file

    from versadiff.nets import build_net

    weights = resolve_weights(path)
    cfg, info = read_metadata(weights)
    if cfg.task == "autoencoder":
        raise ValueError(f"{weights} is an autoencoder, which has no sampler; train a diffusion model on it "
                         "(e.g. versadiff train shapes_vqdiffusion --set autoencoder.path=RUN) and sample that")
    net = build_net(cfg.model)
    net.load_state_dict(load_file(str(weights)), strict=True)
    if cfg.task == "vq_diffusion":
        from versadiff.vq_pipeline import LoadedVQModel

        return LoadedVQModel.from_net(net.to(device), cfg, info, source=str(weights))
    return LoadedModel.from_net(net.to(device), cfg, info, source=str(weights), latent=latent_space_of(cfg, device))


def latent_space_of(cfg: RunConfig, device: str | torch.device = "cpu") -> Any:
    """The LatentSpace named by a run config's `autoencoder` section (None for pixel models)."""
    if cfg.autoencoder is None:
        return None
    from versadiff.latent import LatentSpace, autoencoder_kind, load_autoencoder

    path = cfg.autoencoder.get("path")
    if not path:
        raise ValueError("this preset works in a latent space: set autoencoder.path=... (an autoencoder run folder, "
                         "e.g. from versadiff train shapes_klae)")
    ae = load_autoencoder(path, device=device)
    want = cfg.autoencoder.get("kind")
    if want is not None and autoencoder_kind(ae) != want:
        raise ValueError(f"autoencoder.kind is {want!r} but {path} holds a {autoencoder_kind(ae)!r} autoencoder; "
                         f"set autoencoder.kind={autoencoder_kind(ae)}")
    return LatentSpace(ae, cfg.autoencoder.get("scale_factor"))


# ---------------------------------------------------------------------------------------------------
# images


def _to_uint8(images: Tensor) -> np.ndarray:
    """[N, C, H, W] in [-1, 1] -> uint8 [N, H, W, C]."""
    if images.ndim != 4:
        raise ValueError(f"expected images [N, C, H, W], got shape {tuple(images.shape)}")
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def to_pil(images: Tensor) -> list:
    """PIL images from a batch [N, C, H, W] in [-1, 1] (C = 1 or 3)."""
    from PIL import Image

    arr = _to_uint8(images)
    return [Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a) for a in arr]


def make_grid(images: Tensor, nrow: int = 8, padding: int = 2) -> np.ndarray:
    """uint8 [H', W', C] mosaic of the batch, `nrow` images per row, white padding."""
    arr = _to_uint8(images)
    n, h, w, c = arr.shape
    nrow = max(1, min(nrow, n))
    rows = math.ceil(n / nrow)
    grid = np.full((rows * (h + padding) + padding, nrow * (w + padding) + padding, c), 255, dtype=np.uint8)
    for i in range(n):
        r, q = divmod(i, nrow)
        y, x = padding + r * (h + padding), padding + q * (w + padding)
        grid[y : y + h, x : x + w] = arr[i]
    return grid


def save_grid(images: Tensor, path: str | Path, nrow: int = 8) -> Path:
    """Save a batch as one PNG mosaic."""
    from PIL import Image

    g = make_grid(images, nrow)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(g[..., 0] if g.shape[-1] == 1 else g).save(path)
    return path
