"""Training the encoders of multimodal models: a CLIP pair (contrastive) and an Optimus text VAE.

Their exports are, besides the usual EMA weights, folders in the layout the encoders load from:
  clip      RUN/export/clip/      a transformers CLIPModel folder with its tokenizer (encoders.text / .image path)
  text_vae  RUN/export/text_vae/  a TextVAE save_pretrained folder (codecs.text path)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from versadiff.config import ConfigError, DiffusionConfig, RunConfig
from versadiff.tasks.base import TASKS, Task

__all__ = ["ClipTask", "TextVAETask"]


class _EncoderTask(Task):
    """Shared checks: these tasks read only model, data, train and sample."""

    export_folder = ""

    @classmethod
    def check_config(cls, cfg: RunConfig) -> None:
        for key, present in (("discrete", bool(cfg.discrete)), ("ae_loss", bool(cfg.ae_loss)),
                             ("diffusion", cfg.diffusion != DiffusionConfig()), ("autoencoder", cfg.autoencoder is not None),
                             ("flows", bool(cfg.flows)), ("codecs", bool(cfg.codecs)), ("encoders", bool(cfg.encoders))):
            if present:
                raise ConfigError(f"config section '{key}' does not apply to task {cls.name!r}: remove it")

    @classmethod
    def needs_text(cls, cfg: RunConfig) -> bool:
        return True

    @classmethod
    def pipeline(cls, net: nn.Module, cfg: RunConfig, info: dict[str, Any], source: str = "",
                 device: str | torch.device = "cpu") -> Any:
        raise ValueError(f"{source or 'this file'} is a {cls.name} model, which has no sampler; point a diffusion "
                         f"run at its folder RUN/export/{cls.export_folder} (see versadiff.tasks.encoders)")

    def loaded(self, ema_net: nn.Module, info: dict[str, Any], source: str) -> nn.Module:
        return ema_net.eval()

    def sample_grid(self, ema_net: nn.Module, info: dict[str, Any], source: str) -> None:
        return None

    def export_files(self, ema_net: nn.Module, folder: Path) -> None:
        ema_net.save_pretrained(folder / self.export_folder)


@TASKS.register(name="clip")
class ClipTask(_EncoderTask):
    """A CLIP pair trained with the symmetric InfoNCE loss on image-caption pairs (the batch gives the negatives)."""

    name = "clip"
    export_folder = "clip"

    @classmethod
    def build_network(cls, cfg: RunConfig) -> nn.Module:
        from versadiff.encoders.clip import ClipPair, ClipPairConfig

        return ClipPair(ClipPairConfig.from_dict(cfg.model))

    def __init__(self, cfg: RunConfig, dataset: Dataset, device: torch.device, seed: int) -> None:
        super().__init__(cfg, dataset, device, seed)
        self.net = self.build_network(cfg)
        self._hits, self._n, self._measure = 0, 0, False

    def begin_step(self, step: int) -> None:
        self._measure = (step + 1) % self.cfg.train.log_every == 0  # measure only on logged steps (a 2nd forward)

    def losses(self, model: nn.Module, batch: dict[str, Any], generator: torch.Generator) -> Tensor:
        images, captions = self.images(batch), list(batch["caption"])
        loss = model(images, captions)
        if self._measure:  # in-batch retrieval accuracy, image -> caption, for the log
            self._measure = False
            with torch.no_grad():
                sim = self.net.image_features(images) @ self.net.text_features(captions).t()
                self._hits += int((sim.argmax(1) == torch.arange(len(captions), device=sim.device)).sum())
                self._n += len(captions)
        return loss

    def log_stats(self) -> dict[str, float]:
        stats = {"logit_scale": float(self.net.logit_scale().detach())}
        if self._n:
            stats["batch_top1"] = self._hits / self._n
        self._hits, self._n = 0, 0
        return stats


@TASKS.register(name="text_vae")
class TextVAETask(_EncoderTask):
    """An Optimus text VAE on the dataset's captions: reconstruction + beta-annealed KL with free bits."""

    name = "text_vae"
    export_folder = "text_vae"

    @classmethod
    def build_network(cls, cfg: RunConfig) -> nn.Module:
        from versadiff.autoencoders.text_vae import TextVAE, TextVAEConfig

        return TextVAE(TextVAEConfig.from_dict(cfg.model))

    def __init__(self, cfg: RunConfig, dataset: Dataset, device: torch.device, seed: int) -> None:
        super().__init__(cfg, dataset, device, seed)
        self.net = self.build_network(cfg)
        self.beta = self.net.beta_at(0, cfg.train.max_steps)
        self._sums: dict[str, float] = {}
        self._n = 0

    def begin_step(self, step: int) -> None:
        self.beta = self.net.beta_at(step, self.cfg.train.max_steps)

    def losses(self, model: nn.Module, batch: dict[str, Any], generator: torch.Generator) -> Tensor:
        out = model(list(batch["caption"]), self.beta)
        for key in ("rec", "kl_full"):
            self._sums[key] = self._sums.get(key, 0.0) + float(out[key].detach().sum())
        self._sums["active_dims"] = self._sums.get("active_dims", 0.0) + float(out["active_dims"]) * len(out["loss"])
        self._n += len(out["loss"])
        return out["loss"]

    def log_stats(self) -> dict[str, float]:
        stats = {k: v / max(self._n, 1) for k, v in self._sums.items()} | {"beta": self.beta}
        self._sums, self._n = {}, 0
        return stats
