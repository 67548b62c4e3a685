"""Latent spaces for training and sampling: build / load a trained autoencoder and view it as a LatentSpace.

An autoencoder is found at a local path, in one of two forms:
  - a versadiff run trained with `task: autoencoder` (run folder, checkpoint directory or exported
    model.safetensors; the run config in the metadata rebuilds the network), e.g. `versadiff train shapes_vqae`;
  - a `save_pretrained` folder (config.json with type autoencoder_kl / autoencoder_vq + model.safetensors).

`LatentSpace` is what a Gaussian diffusion model sees: encode(images) -> scaled latents, decode(latents) ->
images. KL: the posterior mean, (z - shift) * scale (LDM); VQ: pre-quantisation latents * scale, snapped to the
codebook before decoding (LDM's VQ first stage).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["AUTOENCODER_TYPES", "build_autoencoder", "load_autoencoder", "autoencoder_kind", "LatentSpace"]

#: the `type` of an autoencoder model dict -> (kind, class name in versadiff.autoencoders)
AUTOENCODER_TYPES: dict[str, tuple[str, str]] = {"autoencoder_kl": ("kl", "AutoencoderKL"),
                                                 "autoencoder_vq": ("vq", "VQAutoencoder")}


def build_autoencoder(spec: dict[str, Any]) -> nn.Module:
    """An untrained autoencoder from a model dict {"type": "autoencoder_vq" | "autoencoder_kl", **config}."""
    import versadiff.autoencoders as ae

    kind = spec.get("type") if isinstance(spec, dict) else None
    if kind not in AUTOENCODER_TYPES:
        raise ValueError(f"an autoencoder model needs 'type' in {sorted(AUTOENCODER_TYPES)}, got {kind!r}")
    cls = getattr(ae, AUTOENCODER_TYPES[kind][1])
    return cls(cls.config_class.from_dict(spec))


def autoencoder_kind(net: nn.Module) -> str:
    """'kl' or 'vq' for a versadiff autoencoder module."""
    kind = getattr(getattr(net, "config", None), "kind", None)
    if kind not in AUTOENCODER_TYPES:
        raise ValueError(f"{type(net).__name__} is not a versadiff autoencoder (AutoencoderKL or VQAutoencoder)")
    return AUTOENCODER_TYPES[kind][0]


def load_autoencoder(path: str | Path, *, device: str | torch.device = "cpu") -> nn.Module:
    """A trained autoencoder (eval mode, frozen) from an autoencoder run or a save_pretrained folder."""
    from safetensors.torch import load_file

    from versadiff.pipelines import read_metadata, resolve_weights

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"autoencoder {p} does not exist; train one first (e.g. versadiff train shapes_vqae) "
                                "and set autoencoder.path to its run folder")
    config_json = p / "config.json"
    if p.is_dir() and config_json.is_file() and not (p / "checkpoints").is_dir():
        kind = json.loads(config_json.read_text()).get("type")
        if kind in AUTOENCODER_TYPES:
            import versadiff.autoencoders as ae

            net = getattr(ae, AUTOENCODER_TYPES[kind][1]).load_pretrained(p)
            return net.to(device).eval().requires_grad_(False)
    weights = resolve_weights(p)
    cfg, _ = read_metadata(weights)
    if cfg.task != "autoencoder":
        raise ValueError(f"{weights} holds a {cfg.task} model, not an autoencoder; point autoencoder.path at a "
                         "run trained with task autoencoder (e.g. versadiff train shapes_vqae)")
    net = build_autoencoder(cfg.model)
    net.load_state_dict(load_file(str(weights)), strict=True)
    return net.to(device).eval().requires_grad_(False)


class LatentSpace:
    """An autoencoder seen as the data space of a Gaussian diffusion model (frozen, float32, no autocast)."""

    def __init__(self, autoencoder: nn.Module, scale_factor: float | None = None) -> None:
        self.autoencoder = autoencoder.eval().requires_grad_(False)
        self.kind = autoencoder_kind(autoencoder)
        cfg = autoencoder.config
        default = cfg.scale_factor if self.kind == "kl" else 1.0
        self.scale = float(default if scale_factor is None else scale_factor)
        if self.scale <= 0:
            raise ValueError(f"autoencoder.scale_factor must be > 0, got {self.scale}")
        self.channels = cfg.z_channels if self.kind == "kl" else cfg.embed_dim
        self.factor = cfg.downsample_factor

    def latent_shape(self, image_shape: tuple[int, ...]) -> tuple[int, int, int]:
        """[c, h, w] of the latents of images [C, H, W]."""
        _, h, w = image_shape
        if h % self.factor or w % self.factor:
            raise ValueError(f"image size {h}x{w} is not divisible by the autoencoder's downsampling factor {self.factor}")
        return (self.channels, h // self.factor, w // self.factor)

    def to(self, device: str | torch.device) -> "LatentSpace":
        self.autoencoder.to(device)
        return self

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """Images in [-1, 1] -> scaled latents (deterministic: the KL posterior mean, so latents can be cached)."""
        ae = self.autoencoder
        with _no_autocast(images):
            x = images.float()
            if self.kind == "kl":
                return (ae.encode(x).mode() - ae.config.shift_factor) * self.scale
            return ae.encode_pre_quant(x) * self.scale

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Scaled latents -> images (not clamped)."""
        ae = self.autoencoder
        with _no_autocast(latents):
            z = latents.float() / self.scale
            if self.kind == "kl":
                return ae.decode(z + ae.config.shift_factor)
            return ae.decode(ae.quantize.lookup(ae.quantize.indices(z)))


def _no_autocast(x: Tensor):
    # bf16 autocast of the training step must not reach the frozen autoencoder: its codes/latents would differ
    # from those of float32 sampling and evaluation.
    return torch.autocast(x.device.type, enabled=False)
