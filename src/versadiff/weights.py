"""Weight files: where they are, what their metadata says. Inference and training both read them through here.

Every weight file versadiff writes is a safetensors file whose metadata holds the resolved run config
(CONFIG_KEY) and model facts (INFO_KEY: data shapes, classes, step, task) and the sha256 of its tensor bytes
(DIGEST_KEY), checked whenever its metadata is read (a flipped byte or a truncated file is a one-line
CheckpointError, never silently wrong weights). Files are written durably: a temporary sibling, fsynced, renamed
over the target, the folder fsynced. A path given by a user may be an exported file, a run folder (its export,
else the latest checkpoint's EMA weights) or a checkpoint directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from safetensors.torch import save as _st_save
from torch import Tensor

from versadiff.config import RunConfig, config_from_dict
from versadiff.errors import CheckpointError

__all__ = ["CONFIG_KEY", "INFO_KEY", "DIGEST_KEY", "is_checkpoint", "list_checkpoints", "latest_checkpoint",
           "resolve_weights", "read_metadata", "read_raw_metadata", "save_tensors", "load_tensors", "verify_weights",
           "write_bytes_durable", "fsync_dir", "sha256_file", "is_versadiff_weights"]

CONFIG_KEY = "versadiff_config"
INFO_KEY = "versadiff_info"
DIGEST_KEY = "versadiff_sha256"  # sha256 of the file's tensor bytes (everything after the header)
_STEP_DIR = re.compile(r"^step-(\d+)$")
_PLACEHOLDER = "0" * 64


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
    except OSError:
        raise
    except Exception as e:  # safetensors raises its own error types for non-safetensors bytes
        raise CheckpointError(f"{path} is not a readable safetensors file ({type(e).__name__}: "
                              f"{_short(e)}); re-export it or use an earlier checkpoint") from None


def _short(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:120] + ("..." if len(text) > 120 else "")


def _data_offset(path: Path) -> tuple[int, dict[str, Any]]:
    """(byte offset of the tensor data, parsed header) of a safetensors file."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path} is truncated ({len(head)} bytes); re-export it or use an earlier checkpoint")
        (n,) = struct.unpack("<Q", head)
        raw = f.read(n) if n < 100_000_000 else b""
    if len(raw) != n:
        raise CheckpointError(f"{path} is truncated or not a safetensors file (header of {n} bytes cut short); "
                              "re-export it or use an earlier checkpoint")
    try:
        header = json.loads(raw)
    except ValueError:
        header = None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} has a damaged header (not JSON); re-export it or use an earlier checkpoint")
    return 8 + n, header


def verify_weights(path: str | Path) -> bool:
    """Check the tensor bytes of a safetensors file against its recorded sha256 (DIGEST_KEY) and its size
    against its header. True when a digest was checked; False for files written without one (older files,
    other tools); CheckpointError when damaged."""
    path = Path(path)
    start, header = _data_offset(path)
    try:
        ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
    except (TypeError, KeyError, IndexError, ValueError):
        raise CheckpointError(f"{path} has a damaged header; re-export it or use an earlier checkpoint") from None
    size = path.stat().st_size
    if size < start + max(ends, default=0):
        raise CheckpointError(f"{path} is truncated ({size} bytes, its header needs {start + max(ends)}); "
                              "re-export it or use an earlier checkpoint")
    digest = (header.get("__metadata__") or {}).get(DIGEST_KEY)
    if not digest:
        return False
    h = hashlib.sha256(_canonical_header(header))
    with open(path, "rb") as f:
        f.seek(start)
        for block in iter(lambda: f.read(1 << 23), b""):
            h.update(block)
    if h.hexdigest() != digest:
        raise CheckpointError(f"{path} is damaged: its bytes do not match the sha256 recorded when it was "
                              "written; re-export it or use an earlier checkpoint")
    return True


def _canonical_header(header: dict[str, Any]) -> bytes:
    """The header (tensor names, dtypes, shapes, offsets, metadata) without the digest, as canonical JSON."""
    h = dict(header)
    meta = {k: v for k, v in (h.pop("__metadata__", None) or {}).items() if k != DIGEST_KEY}
    return json.dumps({"tensors": h, "metadata": meta}, sort_keys=True, separators=(",", ":")).encode()


def read_metadata(path: str | Path) -> tuple[RunConfig, dict[str, Any]]:
    """(run config, model facts) stored in a versadiff safetensors file (its sha256 checked first)."""
    meta = read_raw_metadata(path)
    if CONFIG_KEY not in meta or INFO_KEY not in meta:
        raise ValueError(f"{path} is not a versadiff checkpoint (no '{CONFIG_KEY}' in its metadata); export it with versadiff")
    verify_weights(path)
    try:
        config, info = json.loads(meta[CONFIG_KEY]), json.loads(meta[INFO_KEY])
    except ValueError:
        raise CheckpointError(f"{path}: its metadata is not valid JSON; re-export it") from None
    return config_from_dict(config), info


def is_versadiff_weights(path: str | Path) -> bool:
    """A readable safetensors file written by versadiff (its metadata holds the run config)."""
    try:
        return Path(path).is_file() and CONFIG_KEY in read_raw_metadata(path)
    except (ValueError, OSError):
        return False


def fsync_dir(folder: str | Path) -> None:
    """fsync a folder, so that renames inside it survive a crash (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(str(folder), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes_durable(path: str | Path, data: bytes) -> None:
    """Write `data` to a temporary sibling, fsync it, rename it over `path`, fsync the folder."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def sha256_file(path: str | Path, *, fsync: bool = False) -> str:
    """The sha256 of a file's bytes (and fsync it on the way when asked)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 23), b""):
            h.update(block)
        if fsync:
            os.fsync(f.fileno())
    return h.hexdigest()


def _with_digest(tensors: dict[str, Tensor], meta: dict[str, str]) -> bytes:
    """Serialized safetensors bytes whose metadata records the sha256 of the tensor bytes."""
    data = bytearray(_st_save(tensors, metadata={**meta, DIGEST_KEY: _PLACEHOLDER}))
    (n,) = struct.unpack("<Q", bytes(data[:8]))
    header = bytes(data[8 : 8 + n])
    h = hashlib.sha256(_canonical_header(json.loads(header)))
    h.update(memoryview(data)[8 + n :])
    digest = h.hexdigest()
    needle = f'"{DIGEST_KEY}":"{_PLACEHOLDER}"'.encode()
    at = header.find(needle)
    if at < 0 or header.find(needle, at + 1) >= 0:  # an unexpected header layout: serialize again
        return _st_save(tensors, metadata={**meta, DIGEST_KEY: digest})
    start = 8 + at + len(needle) - 65
    data[start : start + 64] = digest.encode()
    return bytes(data)


def save_tensors(path: str | Path, tensors: dict[str, Tensor], metadata: dict[str, Any] | None = None) -> None:
    """A safetensors file, written durably (temporary sibling, fsync, rename); metadata values are stored as JSON
    strings, plus the sha256 of the tensor bytes (DIGEST_KEY). Tensors that share memory (tied weights, e.g.
    GPT-2's head and embedding) are stored once each, as safetensors requires."""
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items() if k != DIGEST_KEY}
    out, seen = {}, set()
    for k, v in tensors.items():
        v = v.detach().contiguous().cpu()
        ptr = (v.untyped_storage().data_ptr(), v.storage_offset()) if v.numel() else None
        out[k] = v.clone() if ptr in seen else v
        if ptr is not None:
            seen.add(ptr)
    write_bytes_durable(path, _with_digest(out, meta))


def load_tensors(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Tensor]:
    """The tensors of a safetensors file; a damaged or truncated file is a CheckpointError naming it."""
    try:
        return load_file(str(path), device=str(device))
    except OSError:
        raise
    except Exception as e:  # SafetensorError and friends: say which file
        raise CheckpointError(f"{path} is damaged or truncated ({type(e).__name__}: {_short(e)}); re-export it or "
                              "use an earlier checkpoint") from None
