"""What the trainer trains, one class per `task` of the run config.

The trainer owns the loop (data order, optimizer, EMA, checkpoints, logging); a task owns the rest:
  net              the nn.Module that is optimised (and averaged by EMA)
  losses(...)      per-sample training losses of one micro-batch
  log_stats()      extra statistics for the stats log (e.g. codebook usage), reset after each call
  loaded(...)      the EMA weights as something with `generate` (or the autoencoder itself)
  sample_grid(...) the images of the training-time grid and its row length
  state_dict()     task state that an exact resume needs (e.g. VQ-Diffusion's importance-sampling statistics)
  info()           facts stored next to the config in every weight file

    gaussian      GaussianTask: a Gaussian diffusion model on pixels, or on the latents of a trained autoencoder
    autoencoder   AutoencoderTask: a KL or VQ autoencoder (reconstruction + KL / codebook loss)
    vq_diffusion  VQDiffusionTask: a VQ transformer on the tokens of a trained VQ autoencoder
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from versadiff.config import RunConfig

__all__ = ["Task", "GaussianTask", "AutoencoderTask", "VQDiffusionTask", "TASK_CLASSES", "build_task",
           "count_task_parameters"]


class Task:
    """Base: the interface the trainer calls. Subclasses set `net` in __init__."""

    name: ClassVar[str] = ""
    net: nn.Module

    def __init__(self, cfg: RunConfig, dataset: Dataset, image_shape: tuple[int, ...], device: torch.device,
                 seed: int) -> None:
        self.cfg, self.dataset, self.image_shape, self.device, self.seed = cfg, dataset, tuple(image_shape), device, seed

    def losses(self, model: nn.Module, images: Tensor, cond: dict[str, Any], generator: torch.Generator) -> Tensor:
        """Per-sample losses [B] of a micro-batch; `model` is the (possibly wrapped) training view of `net`."""
        raise NotImplementedError

    def log_stats(self) -> dict[str, float]:
        return {}

    def loaded(self, ema_net: nn.Module, info: dict[str, Any], source: str) -> Any:
        raise NotImplementedError

    def sample_grid(self, ema_net: nn.Module, info: dict[str, Any], source: str, num_classes: int) -> tuple[Tensor, int]:
        """(images [N, C, H, W] in [-1, 1], images per row) from the EMA weights, with the run's fixed seeds."""
        s = self.cfg.sample
        model = self.loaded(ema_net, info, source)
        labels = [i % num_classes for i in range(s.n)] if num_classes else None
        images = model.generate(range(s.seed, s.seed + s.n), class_labels=labels, batch_size=s.n, device=self.device)
        # class-conditional grids: one column per class, so each row shows every class once
        nrow = num_classes if num_classes and num_classes <= 20 else int(math.ceil(math.sqrt(s.n)))
        return images, nrow

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"the checkpoint holds task state {sorted(state)} that task {self.name!r} does not use; "
                             "resume with the config the run was started with")

    def info(self) -> dict[str, Any]:
        return {}


class GaussianTask(Task):
    """Gaussian diffusion (versadiff.processes.gaussian) on pixels, or on scaled autoencoder latents."""

    name = "gaussian"

    def __init__(self, cfg: RunConfig, dataset: Dataset, image_shape: tuple[int, ...], device: torch.device,
                 seed: int) -> None:
        super().__init__(cfg, dataset, image_shape, device, seed)
        from versadiff.nets import build_net
        from versadiff.pipelines import latent_space_of
        from versadiff.processes.gaussian import GaussianProcess
        from versadiff.processes.schedules import build_schedule

        self.net = build_net(cfg.model)  # first: its initial weights come from the caller's seeded global RNG
        d = cfg.diffusion
        self.process = GaussianProcess(build_schedule(d.schedule), prediction=d.prediction, loss=d.loss,
                                       weighting=d.weighting, train_steps=d.train_steps, variance=d.variance,
                                       intp_frac=d.intp_frac, p_uncond=d.p_uncond)
        self.latent = latent_space_of(cfg, device)
        if self.latent is not None:
            self._check_latent_net(self.latent.latent_shape(self.image_shape))

    def _check_latent_net(self, shape: tuple[int, int, int]) -> None:
        c = self.net.config
        have = (getattr(c, "in_channels", None), getattr(c, "image_size", None))
        if have != (shape[0], shape[1]):
            raise ValueError(f"the autoencoder gives latents {shape[0]}x{shape[1]}x{shape[2]} but the network takes "
                             f"{have[0]} channels at {have[1]}px; set model.in_channels={shape[0]} "
                             f"model.image_size={shape[1]}")

    def losses(self, model: nn.Module, images: Tensor, cond: dict[str, Any], generator: torch.Generator) -> Tensor:
        x0 = images if self.latent is None else self.latent.encode(images)
        return self.process.training_losses(model, x0, cond, generator=generator)

    def loaded(self, ema_net: nn.Module, info: dict[str, Any], source: str) -> Any:
        from versadiff.pipelines import LoadedModel

        return LoadedModel.from_net(ema_net, self.cfg, info, source=source, latent=self.latent)


class AutoencoderTask(Task):
    """A KL or VQ autoencoder: pixel reconstruction (L1 / L2, summed per image, as LDM) + weighted KL / codebook loss.

    The discriminator of AutoencoderLoss needs a second optimizer, which the trainer does not run: ae_loss
    disc_weight must stay 0. The sample grid shows fixed training images (odd rows) over their reconstructions.
    """

    name = "autoencoder"
    LOSS_KEYS = ("rec", "reg_weight")

    def __init__(self, cfg: RunConfig, dataset: Dataset, image_shape: tuple[int, ...], device: torch.device,
                 seed: int) -> None:
        super().__init__(cfg, dataset, image_shape, device, seed)
        from versadiff.autoencoders import AutoencoderLoss
        from versadiff.latent import autoencoder_kind, build_autoencoder

        self.net = build_autoencoder(cfg.model)
        self.kind = autoencoder_kind(self.net)
        unknown = sorted(set(cfg.ae_loss) - set(self.LOSS_KEYS))
        if unknown:
            hint = " (the trainer runs no discriminator)" if unknown[0].startswith("disc") else ""
            raise ValueError(f"unknown config key 'ae_loss.{unknown[0]}'{hint}; valid keys under 'ae_loss': "
                             f"{', '.join(self.LOSS_KEYS)}")
        defaults = {"rec": "l1", "reg_weight": 1.0e-6 if self.kind == "kl" else 1.0}
        self.loss_fn = AutoencoderLoss(**{**defaults, **cfg.ae_loss}, in_channels=self.net.config.in_channels)
        f = self.net.config.downsample_factor
        if self.image_shape[0] != self.net.config.in_channels or self.image_shape[1] % f or self.image_shape[2] % f:
            raise ValueError(f"the data gives images {tuple(self.image_shape)}; the autoencoder takes "
                             f"{self.net.config.in_channels} channels with sides divisible by {f}: set "
                             f"model.in_channels/out_channels={self.image_shape[0]} or change model.channel_mult")
        self._rec_sum, self._rec_n = 0.0, 0

    def losses(self, model: nn.Module, images: Tensor, cond: dict[str, Any], generator: torch.Generator) -> Tensor:
        if self.kind == "vq":
            recon, reg, _ = model(images)
        else:
            recon, posterior = model(images, generator)
            reg = posterior.kl()
        out = self.loss_fn.generator_losses(images, recon.float(), reg.float())
        self._rec_sum += float(out["rec"].sum()) / images[0].numel()
        self._rec_n += images.shape[0]
        return out["loss"]

    def log_stats(self) -> dict[str, float]:
        stats = {f"rec_{self.loss_fn.rec}_per_pixel": self._rec_sum / max(self._rec_n, 1)}
        self._rec_sum, self._rec_n = 0.0, 0
        if self.kind == "vq":
            q = self.net.quantize
            usage = q.codebook_usage()
            stats.update(codebook_used=usage["used"], codebook_perplexity=usage["perplexity"])
            q.reset_usage()
        return stats

    def loaded(self, ema_net: nn.Module, info: dict[str, Any], source: str) -> nn.Module:
        return ema_net.eval()

    @torch.no_grad()
    def sample_grid(self, ema_net: nn.Module, info: dict[str, Any], source: str, num_classes: int) -> tuple[Tensor, int]:
        k = min(len(self.dataset), max(1, self.cfg.sample.n // 2))
        x = torch.stack([self.dataset[i]["image"] for i in range(k)]).float().to(self.device)
        ae = ema_net.to(self.device).eval()
        recon = ae(x)[0] if self.kind == "vq" else ae(x, sample=False)[0]
        return torch.cat([x.cpu(), recon.float().clamp(-1, 1).cpu()]), k

    def info(self) -> dict[str, Any]:
        return {"autoencoder_kind": self.kind}


class VQDiffusionTask(Task):
    """VQ-Diffusion: the mask-and-replace process over the code tokens of a trained (frozen) VQ autoencoder.

    Tokens are encoded on the fly in float32. The process draws t, the Gumbel uniforms and the condition
    dropout from the task's own CPU generator; it and the importance-sampling statistics are task state,
    so a resumed run continues exactly.
    """

    name = "vq_diffusion"

    def __init__(self, cfg: RunConfig, dataset: Dataset, image_shape: tuple[int, ...], device: torch.device,
                 seed: int) -> None:
        super().__init__(cfg, dataset, image_shape, device, seed)
        from versadiff.latent import autoencoder_kind, load_autoencoder
        from versadiff.nets import build_net
        from versadiff.vq_pipeline import build_discrete_process

        self.net = build_net(cfg.model)  # first: its initial weights come from the caller's seeded global RNG
        path = (cfg.autoencoder or {}).get("path")
        if not path:
            raise ValueError("VQ-Diffusion trains on the tokens of a VQ autoencoder: set autoencoder.path=... "
                             "(train one first: versadiff train shapes_vqae)")
        self.autoencoder = load_autoencoder(path, device=device)
        if autoencoder_kind(self.autoencoder) != "vq":
            raise ValueError(f"{path} holds a KL autoencoder; VQ-Diffusion needs a VQ autoencoder "
                             "(e.g. versadiff train shapes_vqae)")
        ae = self.autoencoder.config
        f = ae.downsample_factor
        grid = (self.image_shape[1] // f, self.image_shape[2] // f)
        self.process = build_discrete_process(cfg.discrete, ae.n_embed)
        c = self.net.config
        want = {"num_embed": ae.n_embed, "height": grid[0], "width": grid[1], "num_steps": self.process.num_steps}
        for key, value in want.items():
            if getattr(c, key, None) != value:
                raise ValueError(f"model.{key} is {getattr(c, key, None)} but the autoencoder / process need {value}; "
                                 f"set model.{key}={value}")
        self.generator = torch.Generator().manual_seed(seed)

    def losses(self, model: nn.Module, images: Tensor, cond: dict[str, Any], generator: torch.Generator) -> Tensor:
        with torch.no_grad(), torch.autocast(images.device.type, enabled=False):
            tokens = self.autoencoder.encode_tokens(images.float())
        return self.process.training_losses(model, tokens, cond, generator=self.generator)

    def loaded(self, ema_net: nn.Module, info: dict[str, Any], source: str) -> Any:
        from versadiff.vq_pipeline import LoadedVQModel

        return LoadedVQModel.from_net(ema_net, self.cfg, info, source=source, autoencoder=self.autoencoder)

    def state_dict(self) -> dict[str, Any]:
        return {"process": self.process.state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != {"process", "generator"}:
            raise ValueError("the checkpoint holds no VQ-Diffusion task state; resume with the config the run was "
                             "started with")
        self.process.load_state_dict(state["process"])
        self.generator.set_state(state["generator"])

    def info(self) -> dict[str, Any]:
        return {"token_grid": [self.net.config.height, self.net.config.width]}


TASK_CLASSES: dict[str, type[Task]] = {t.name: t for t in (GaussianTask, AutoencoderTask, VQDiffusionTask)}


def build_task(cfg: RunConfig, dataset: Dataset, image_shape: tuple[int, ...], device: torch.device, seed: int) -> Task:
    """The Task of `cfg.task` (validated by versadiff.config)."""
    return TASK_CLASSES[cfg.task](cfg, dataset, image_shape, device, seed)


def count_task_parameters(cfg: RunConfig) -> int:
    """Parameters of the network a run trains (the autoencoder for task autoencoder), built on the meta device."""
    if cfg.task == "autoencoder":
        from versadiff.latent import build_autoencoder

        with torch.device("meta"):
            net = build_autoencoder(cfg.model)
        return sum(p.numel() for p in net.parameters())
    from versadiff.nets import count_parameters

    return count_parameters(cfg.model)
