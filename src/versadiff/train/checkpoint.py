"""Training checkpoints: one directory per step, written atomically and durably, verified on load, the last K kept.

Layout of checkpoints/step-00001000/:
  model.safetensors  ema.safetensors   network and EMA weights (config + info + sha256 in the safetensors metadata)
  optimizer.pt  scheduler.pt  [scaler.pt]  torch.save of plain state dicts, loadable with weights_only=True
  rng.pt       torch / numpy / python RNG states and the diffusion-noise generator state, per process
  state.json   step, epoch, data position, EMA update count
  manifest.json  size and sha256 of every file above (checked before a resume uses the checkpoint)
Under FSDP (versadiff.train.distributed) model.safetensors and optimizer.pt are replaced by one shard per process,
model-RRRRR-of-WWWWW.safetensors and optimizer-RRRRR-of-WWWWW.pt, and state.json records "sharded"; each process
hashes its own files (`new_tmp_dir` / `commit_dir` split the atomic write for several writers).
A checkpoint is written into a hidden temporary sibling (.tmp-*), every file fsynced, then renamed into place and
the folder fsynced, so a crash never leaves a partial `step-*` directory. Pruning renames a doomed checkpoint to a
.tmp-* name before deleting it, so a kill mid-delete leaves only a temporary, removed by `clean_checkpoints`
(called when a run starts or resumes) and by the next write. A checkpoint that fails its manifest is renamed
damaged-step-* (kept for inspection, never counted or pruned) and the previous good one is used.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Callable

import torch

from versadiff.errors import CheckpointError
from versadiff.weights import (
    fsync_dir,
    is_checkpoint,
    latest_checkpoint,
    list_checkpoints,
    load_tensors,
    save_tensors,
    sha256_file,
    verify_weights,
)

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
    "read_json",
    "is_checkpoint",
    "verify_checkpoint",
    "clean_checkpoints",
    "latest_good_checkpoint",
    "new_tmp_dir",
    "commit_dir",
    "hash_files",
    "required_files",
    "MANIFEST",
]

_TMP_PREFIX = ".tmp-"
MANIFEST = "manifest.json"
#: what a checkpoint directory may hold (a step-* folder holding anything else is not ours and is never deleted)
CHECKPOINT_FILES = frozenset({"model.safetensors", "ema.safetensors", "optimizer.pt", "scheduler.pt", "scaler.pt",
                              "rng.pt", "state.json", MANIFEST})
REQUIRED_FILES = ("model.safetensors", "ema.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt", "state.json")
SHARDED_COMMON = ("ema.safetensors", "scheduler.pt", "rng.pt", "state.json")


_SHARD_RE = re.compile(r"^(model|optimizer)-(\d{5})-of-(\d{5})\.(safetensors|pt)$")


def shard_name(kind: str, rank: int, world: int) -> str:
    """model-00000-of-00008.safetensors, optimizer-00000-of-00008.pt."""
    ext = "safetensors" if kind == "model" else "pt"
    return f"{kind}-{rank:05d}-of-{world:05d}.{ext}"


def is_shard_name(name: str) -> bool:
    return _SHARD_RE.match(name) is not None


def _is_checkpoint_file(name: str) -> bool:
    return name in CHECKPOINT_FILES or is_shard_name(name)


def required_files(state: Any) -> tuple[str, ...]:
    """The files a checkpoint with this state.json must hold (per-process shards when it was written sharded)."""
    if isinstance(state, dict) and state.get("sharded"):
        world = int(state.get("world_size", 1))
        shards = tuple(shard_name(kind, r, world) for kind in ("model", "optimizer") for r in range(world))
        return SHARDED_COMMON + shards
    return REQUIRED_FILES


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def _remove_stale(folder: Path) -> None:
    for stale in folder.glob(f"{_TMP_PREFIX}*"):  # left by a process killed mid-write or mid-delete
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def hash_files(folder: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    """{name: {bytes, sha256}} of files of `folder`, each fsynced on the way (a process hashes what it wrote)."""
    return {n: {"bytes": (folder / n).stat().st_size, "sha256": sha256_file(folder / n, fsync=True)} for n in names}


def _write_manifest(folder: Path, known: dict[str, dict[str, Any]] | None = None) -> None:
    """Hash (and fsync) every file of `folder` not in `known` (hashed by the process that wrote it), then write
    manifest.json (fsynced) and fsync the folder."""
    known = known or {}
    files = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.name != MANIFEST:
            rec = known.get(p.name)
            if rec is None or rec.get("bytes") != p.stat().st_size:
                rec = {"bytes": p.stat().st_size, "sha256": sha256_file(p, fsync=True)}
            files[p.name] = rec
    with open(folder / MANIFEST, "w") as f:
        f.write(json.dumps({"format": "versadiff-checkpoint-1", "files": files}, indent=2) + "\n")
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(folder)


def write_atomic_dir(final: str | Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_dir)` to fill a temporary directory, record the manifest, then rename it to `final`
    (replacing it). Every file and both folders are fsynced before and after the rename."""
    final = Path(final)
    tmp = new_tmp_dir(final)
    try:
        write(tmp)
        commit_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def new_tmp_dir(final: str | Path) -> Path:
    """A fresh hidden temporary sibling of `final` to write a checkpoint into (stale ones removed first)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(final.parent)
    tmp = final.parent / f"{_TMP_PREFIX}{final.name}-{os.getpid()}"
    tmp.mkdir()
    return tmp


def commit_dir(tmp: str | Path, final: str | Path, known: dict[str, dict[str, Any]] | None = None) -> Path:
    """Write the manifest of `tmp` (reusing the `known` hashes) and rename it to `final` (replacing it), with
    both folders fsynced before and after the rename."""
    tmp, final = Path(tmp), Path(final)
    _write_manifest(tmp, known)
    if final.exists():  # os.replace cannot replace a non-empty directory: move the old one aside first
        old = final.parent / f"{_TMP_PREFIX}old-{final.name}-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        fsync_dir(final.parent)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    fsync_dir(final.parent)
    return final


def prune_checkpoints(folder: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` checkpoints (each renamed to a temporary first, so a kill
    mid-delete leaves no half checkpoint); returns the deleted paths."""
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    folder = Path(folder)
    doomed = list_checkpoints(folder)[:-keep_last]
    for p in doomed:
        gone = folder / f"{_TMP_PREFIX}del-{p.name}-{os.getpid()}"
        os.replace(p, gone)
        fsync_dir(folder)
        shutil.rmtree(gone, ignore_errors=True)
    return doomed


def clean_checkpoints(folder: str | Path) -> list[Path]:
    """Remove what killed writes and deletes left in a checkpoints folder: .tmp-* entries, and step-* folders
    that are not finished checkpoints yet hold nothing but checkpoint files (a deletion cut short). Returns
    the removed paths; anything else is left alone."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = [p for p in folder.glob(f"{_TMP_PREFIX}*")]
    _remove_stale(folder)
    for p in sorted(folder.glob("step-*")):
        if p.is_dir() and not p.is_symlink() and not is_checkpoint(p):
            names = {c.name for c in p.iterdir()}
            if all(_is_checkpoint_file(n) for n in names) and all((p / n).is_file() for n in names):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
    return removed


def save_torch(path: str | Path, obj: Any) -> None:
    """torch.save of plain containers of tensors and numbers (so weights_only=True can load it)."""
    torch.save(obj, str(path))


def load_torch(path: str | Path) -> Any:
    """torch.load(weights_only=True); a truncated or damaged file is a CheckpointError naming it."""
    import pickle

    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing; use an earlier checkpoint") from None
    except Exception as e:  # zip reader RuntimeError, UnpicklingError, EOFError, ...: say which file
        if isinstance(e, pickle.UnpicklingError) or "weights_only" in str(e):
            why = "not a plain torch state file"
        else:
            why = f"{type(e).__name__}: {' '.join(str(e).split())[:100]}"
        raise CheckpointError(f"{path} is truncated or damaged ({why}); use an earlier checkpoint") from None


def read_json(path: str | Path) -> Any:
    """A JSON file; a missing, unreadable or corrupt one is a CheckpointError naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing; use an earlier checkpoint") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        where = f" (line {e.lineno}, column {e.colno})" if isinstance(e, json.JSONDecodeError) else ""
        raise CheckpointError(f"{path} is not valid JSON{where}; it is damaged: restore it or use an earlier "
                              "checkpoint") from None


def verify_checkpoint(path: str | Path) -> None:
    """Check a checkpoint against its manifest (sizes and sha256 of every file); older checkpoints without one
    are checked by reading their files. CheckpointError (naming the file) when anything is off."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a checkpoint directory")
    required = required_files(read_json(path / "state.json")) if (path / "state.json").is_file() else REQUIRED_FILES
    for name in required:
        if not (path / name).is_file():
            raise CheckpointError(f"{path / name} is missing; the checkpoint is incomplete")
    if (path / MANIFEST).is_file():
        manifest = read_json(path / MANIFEST)
        files = manifest.get("files") if isinstance(manifest, dict) else None
        if not isinstance(files, dict) or not set(required) <= set(files):
            raise CheckpointError(f"{path / MANIFEST} is damaged (it does not list the checkpoint's files)")
        for name, rec in files.items():
            p = path / name
            if not p.is_file():
                raise CheckpointError(f"{p} is missing; the checkpoint is incomplete")
            if p.stat().st_size != rec.get("bytes"):
                raise CheckpointError(f"{p} has {p.stat().st_size} bytes, the manifest says {rec.get('bytes')} "
                                      "(truncated or replaced)")
            if sha256_file(p) != rec.get("sha256"):
                raise CheckpointError(f"{p} does not match its sha256 in {MANIFEST} (damaged)")
        state = read_json(path / "state.json")
    else:  # written before manifests: read everything once
        state = read_json(path / "state.json")
        for name in ("model.safetensors", "ema.safetensors"):
            verify_weights(path / name)
            load_tensors(path / name)
        for name in ("optimizer.pt", "scheduler.pt", "rng.pt"):
            load_torch(path / name)
    if not isinstance(state, dict) or not {"step", "epoch", "position"} <= set(state):
        raise CheckpointError(f"{path / 'state.json'} lacks step/epoch/position; it is damaged")


def _warn(message: str) -> None:
    sys.stderr.write(f"versadiff: warning: {message}\n")
    sys.stderr.flush()


def latest_good_checkpoint(folder: str | Path, warn: Callable[[str], None] = _warn,
                           quarantine: bool = True) -> Path | None:
    """The newest checkpoint of `folder` that passes verify_checkpoint. Newer damaged ones are reported through
    `warn` and, with `quarantine`, renamed damaged-step-* (kept, but no longer listed, resumed or pruned)."""
    folder = Path(folder)
    for p in reversed(list_checkpoints(folder)):
        try:
            verify_checkpoint(p)
            return p
        except CheckpointError as e:
            note = ""
            if quarantine:
                target = folder / f"damaged-{p.name}"
                n = 1
                while target.exists():
                    target, n = folder / f"damaged-{p.name}.{n}", n + 1
                os.replace(p, target)
                fsync_dir(folder)
                note = f" (moved to {target.name})"
            warn(f"checkpoint {p} is damaged and skipped{note}: {e}")
    return None
