"""Building and loading trained autoencoders (KL, VQ, and any registered type).

An autoencoder is found at a local path, in one of two forms:
  - a versadiff run that trained it (run folder, checkpoint directory or exported model.safetensors; the run
    config in the metadata rebuilds the network), e.g. `versadiff train shapes_vqae`;
  - a `save_pretrained` folder (config.json with its type + model.safetensors).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from versadiff.autoencoders.kl import AutoencoderKL
from versadiff.autoencoders.vq import VQAutoencoder
from versadiff.component import Registry

__all__ = ["AUTOENCODERS", "build_autoencoder", "load_autoencoder", "is_autoencoder_spec"]

#: every autoencoder type by its config's type_name ("autoencoder_kl", "autoencoder_vq", ...)
AUTOENCODERS: Registry[nn.Module] = Registry("autoencoder")
AUTOENCODERS.register(AutoencoderKL)
AUTOENCODERS.register(VQAutoencoder)


def is_autoencoder_spec(spec: Any) -> bool:
    """Whether a model dict describes an autoencoder (rather than a diffusion network)."""
    return isinstance(spec, dict) and spec.get("type") in AUTOENCODERS


def build_autoencoder(spec: dict[str, Any]) -> nn.Module:
    """An untrained autoencoder from a model dict {"type": "autoencoder_vq" | "autoencoder_kl", **config}."""
    if not is_autoencoder_spec(spec):
        got = spec.get("type") if isinstance(spec, dict) else spec
        raise ValueError(f"an autoencoder model needs 'type' in {AUTOENCODERS.names()}, got {got!r}")
    return AUTOENCODERS.build(spec)


def load_autoencoder(path: str | Path, *, device: str | torch.device = "cpu") -> nn.Module:
    """A trained autoencoder (eval mode, frozen) from an autoencoder run or a save_pretrained folder."""
    from safetensors.torch import load_file

    from versadiff.assets import resolve_path
    from versadiff.weights import read_metadata, resolve_weights

    p = resolve_path(path)
    if not p.exists():
        raise FileNotFoundError(f"autoencoder {p} does not exist; train one first (e.g. versadiff train shapes_vqae) "
                                "and set autoencoder.path to its run folder")
    config_json = p / "config.json"
    if p.is_dir() and config_json.is_file() and not (p / "checkpoints").is_dir():
        spec = json.loads(config_json.read_text())
        if is_autoencoder_spec(spec):
            net = AUTOENCODERS.get(spec["type"]).load_pretrained(p)
            return net.to(device).eval().requires_grad_(False)
    weights = resolve_weights(p)
    cfg, _ = read_metadata(weights)
    if not is_autoencoder_spec(cfg.model):
        raise ValueError(f"{weights} holds a {cfg.task} model, not an autoencoder; point autoencoder.path at a "
                         "run that trained one (e.g. versadiff train shapes_vqae)")
    net = build_autoencoder(cfg.model)
    net.load_state_dict(load_file(str(weights)), strict=True)
    return net.to(device).eval().requires_grad_(False)
