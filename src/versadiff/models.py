"""Loading trained models: `load_model(path)` gives a Pipeline (versadiff.pipelines) for any task's weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from versadiff.pipelines import Pipeline
from versadiff.tasks import check_config, task_class
from versadiff.weights import read_metadata, resolve_weights

__all__ = ["load_model"]


def load_model(path: str | Path, *, device: str | torch.device = "cpu", **options: Any) -> Pipeline:
    """Load EMA/exported weights from a .safetensors file, a run folder or a checkpoint directory -- or any
    checkpoint format versadiff.convert reads (VD, SD 1.x, U-ViT, VQ-Diffusion, VDPM, diffusers folders),
    converted on the fly (`options` go to its converter, e.g. num_heads=8, vae="kl-f8.pth").

    The run config in the weights' metadata names the task, which rebuilds the network and its pipeline;
    codecs and context encoders load from the local paths the config names (autoencoder.path, codecs.*,
    encoders.*). Autoencoder runs load with versadiff.autoencoders.load_autoencoder instead.
    """
    from safetensors.torch import load_file

    from versadiff.assets import resolve_path
    from versadiff.convert.formats import foreign_format, load_foreign_model

    p = resolve_path(path)
    name = foreign_format(p) if p.exists() else None
    if name is not None:
        return load_foreign_model(p, device=device, format=name, **options)
    if options:
        raise ValueError(f"{p} is a versadiff model: load_model takes no converter options ({', '.join(options)})")
    weights = resolve_weights(path)
    cfg, info = read_metadata(weights)
    task = task_class(check_config(cfg).task)
    net = task.build_network(cfg)
    net.load_state_dict(load_file(str(weights)), strict=True)
    return task.pipeline(net.to(device), cfg, info, source=str(weights), device=device)
