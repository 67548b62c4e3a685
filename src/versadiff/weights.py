"""Weight files: where they are, what their metadata says. Inference and training both read them through here.

Every weight file versadiff writes is a safetensors file whose metadata holds the resolved run config
(CONFIG_KEY) and model facts (INFO_KEY: data shapes, classes, step, task). A path given by a user may be an
exported file, a run folder (its export, else the latest checkpoint's EMA weights) or a checkpoint directory.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from versadiff.config import RunConfig, config_from_dict

__all__ = ["CONFIG_KEY", "INFO_KEY", "is_checkpoint", "list_checkpoints", "latest_checkpoint", "resolve_weights",
           "read_metadata", "read_raw_metadata", "save_tensors", "load_tensors"]

CONFIG_KEY = "versadiff_config"
INFO_KEY = "versadiff_info"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def is_checkpoint(path: str | Path) -> bool:
    """A finished training checkpoint directory (versadiff.train.checkpoint writes them)."""
    path = Path(path)
    return path.is_dir() and (path / "state.json").is_file() and (path / "ema.safetensors").is_file()


def list_checkpoints(folder: str | Path) -> list[Path]:
    """Finished checkpoints in `folder`, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP_DIR.match(p.name)) and is_checkpoint(p)]
    return [p for _, p in sorted(found)]


def latest_checkpoint(folder: str | Path) -> Path | None:
    """The newest finished checkpoint in `folder`, or None."""
    found = list_checkpoints(folder)
    return found[-1] if found else None


def resolve_weights(path: str | Path) -> Path:
    """The weight file to load for an export file, a run folder, a checkpoint directory or a shipped model."""
    from versadiff.assets import SHIPPED_MODELS, resolve_path

    p = resolve_path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p} does not exist; give an exported .safetensors file, a run folder, a checkpoint "
                                f"directory or a shipped model ({', '.join(SHIPPED_MODELS)})")
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


def read_raw_metadata(path: str | Path) -> dict[str, str]:
    """The safetensors metadata of a file, with a one-line error for anything that is not one."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:  # safetensors raises its own error types for non-safetensors bytes
        raise ValueError(f"{path} is not a readable safetensors file ({type(e).__name__}); re-export it") from None


def read_metadata(path: str | Path) -> tuple[RunConfig, dict[str, Any]]:
    """(run config, model facts) stored in a versadiff safetensors file."""
    meta = read_raw_metadata(path)
    if CONFIG_KEY not in meta or INFO_KEY not in meta:
        raise ValueError(f"{path} is not a versadiff checkpoint (no '{CONFIG_KEY}' in its metadata); export it with versadiff")
    return config_from_dict(json.loads(meta[CONFIG_KEY])), json.loads(meta[INFO_KEY])


def save_tensors(path: str | Path, tensors: dict[str, Tensor], metadata: dict[str, Any] | None = None) -> None:
    """A safetensors file; metadata values are stored as JSON strings. Tensors that share memory (tied weights,
    e.g. GPT-2's head and embedding) are stored once each, as safetensors requires."""
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    out, seen = {}, set()
    for k, v in tensors.items():
        v = v.detach().contiguous().cpu()
        ptr = (v.untyped_storage().data_ptr(), v.storage_offset()) if v.numel() else None
        out[k] = v.clone() if ptr in seen else v
        if ptr is not None:
            seen.add(ptr)
    save_file(out, str(path), metadata=meta)


def load_tensors(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Tensor]:
    return load_file(str(path), device=str(device))
