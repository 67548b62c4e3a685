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

import os
import shutil
from pathlib import Path
from typing import Any, Callable

import torch

from versadiff.weights import is_checkpoint, latest_checkpoint, list_checkpoints, load_tensors, save_tensors

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


def prune_checkpoints(folder: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` checkpoints; returns the deleted paths."""
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    doomed = list_checkpoints(folder)[:-keep_last]
    for p in doomed:
        shutil.rmtree(p)
    return doomed


def save_torch(path: str | Path, obj: Any) -> None:
    """torch.save of plain containers of tensors and numbers (so weights_only=True can load it)."""
    torch.save(obj, str(path))


def load_torch(path: str | Path) -> Any:
    return torch.load(str(path), map_location="cpu", weights_only=True)
