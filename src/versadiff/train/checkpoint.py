"""Training checkpoints: one directory per step, written atomically, the last K kept.

Layout of checkpoints/step-00001000/:
  model.safetensors  ema.safetensors   network and EMA weights (config + info in the safetensors metadata)
  optimizer.pt  scheduler.pt  [scaler.pt]  torch.save of plain state dicts, loadable with weights_only=True
  rng.pt       torch / numpy / python RNG states and the diffusion-noise generator state, per process
  state.json   step, epoch, data position, EMA update count
A checkpoint is written into a hidden temporary sibling and renamed into place, so a crash never leaves a
partial `step-*` directory; stale temporaries are removed on the next write.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

__all__ = [
    "write_atomic_dir",
    "list_checkpoints",
    "latest_checkpoint",
    "prune_checkpoints",
    "checkpoint_name",
    "save_tensors",
    "load_tensors",
    "save_torch",
    "load_torch",
    "is_checkpoint",
]

_STEP_DIR = re.compile(r"^step-(\d+)$")
_TMP_PREFIX = ".tmp-"


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def write_atomic_dir(final: str | Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_dir)` to fill a temporary directory, then rename it to `final` (replacing it)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f"{_TMP_PREFIX}*"):  # left by a process killed mid-write
        shutil.rmtree(stale, ignore_errors=True)
    tmp = final.parent / f"{_TMP_PREFIX}{final.name}-{os.getpid()}"
    tmp.mkdir()
    try:
        write(tmp)
        if final.exists():  # os.replace cannot replace a non-empty directory: move the old one aside first
            old = final.parent / f"{_TMP_PREFIX}old-{final.name}-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def is_checkpoint(path: str | Path) -> bool:
    """A finished checkpoint directory (written by this module)."""
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


def prune_checkpoints(folder: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` checkpoints; returns the deleted paths."""
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    doomed = list_checkpoints(folder)[:-keep_last]
    for p in doomed:
        shutil.rmtree(p)
    return doomed


def save_tensors(path: str | Path, tensors: dict[str, Tensor], metadata: dict[str, Any] | None = None) -> None:
    """safetensors file; metadata values are stored as JSON strings."""
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path), metadata=meta)


def load_tensors(path: str | Path) -> dict[str, Tensor]:
    return load_file(str(path))


def save_torch(path: str | Path, obj: Any) -> None:
    """torch.save of plain containers of tensors and numbers (so weights_only=True can load it)."""
    torch.save(obj, str(path))


def load_torch(path: str | Path) -> Any:
    return torch.load(str(path), map_location="cpu", weights_only=True)
