"""Loading trained models: `load_model(path)` gives a Pipeline (versadiff.pipelines) for any task's weights."""

from __future__ import annotations

from pathlib import Path

import torch

from versadiff.pipelines import Pipeline
from versadiff.tasks import check_config, task_class
from versadiff.weights import read_metadata, resolve_weights

__all__ = ["load_model"]


def load_model(path: str | Path, *, device: str | torch.device = "cpu") -> Pipeline:
    """Load EMA/exported weights from a .safetensors file, a run folder or a checkpoint directory.

    The run config in the weights' metadata names the task, which rebuilds the network and its pipeline;
    codecs and context encoders load from the local paths the config names (autoencoder.path, codecs.*,
    encoders.*). Autoencoder runs load with versadiff.autoencoders.load_autoencoder instead.
    """
    from safetensors.torch import load_file

    weights = resolve_weights(path)
    cfg, info = read_metadata(weights)
    task = task_class(check_config(cfg).task)
    net = task.build_network(cfg)
    net.load_state_dict(load_file(str(weights)), strict=True)
    return task.pipeline(net.to(device), cfg, info, source=str(weights), device=device)
