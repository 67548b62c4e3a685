"""Context features pre-extracted once: every caption a dataset can yield, encoded by a frozen context encoder
into one file (as U-ViT's scripts/extract_mscoco_feature.py and extract_empty_feature.py do), and a dataset
wrapper whose items carry the cached context next to the caption.

    cache = build_context_cache(dataset, encoder, "shapes_clip_hidden.safetensors")   # or a folder
    ds = CachedContextDataset(dataset, ContextCache(cache))
    ds[0]["context.text"]        # [L, D] float32: exactly encoder.encode([ds[0]["caption"]])[0]

A diffusion task (versadiff.tasks.diffusion) uses item["context.<modality>"] when the batch carries it instead of
encoding the captions, and the cached empty-string feature as the null context, so the frozen encoder runs once
per distinct caption, not once per step; the losses are bit-identical to the on-the-fly path (the encoding of a
caption does not depend on the captions encoded with it: each chunk is padded to the same size).

Storage, chosen by the path: `x.safetensors` one file ("contexts" [U, L, D], "empty" [1, L, D]; captions, the
encoder's spec and the dataset's in the metadata), held in memory; a folder: contexts.npy (written chunk by
chunk, read memory-mapped, for caches larger than memory, e.g. MS-COCO's 590k captions), empty.npy, meta.json.
Each distinct caption is stored once (the shapes dataset's 20000 items have 1026).

Run configs: data {name: context_cache, dataset: {<the dataset>}, encoder: {<the flow's encoder spec>},
path: null | FILE | FOLDER}; path null caches under $VERSADIFF_CACHE (default ~/.cache/versadiff)/contexts,
named by a fingerprint of the dataset, the encoder spec and its weight files. The encoder must be the run's
encoders.<modality> (the task checks), since its null context and its prompts at sampling come from there.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, IterableDataset

__all__ = [
    "CONTEXT_PREFIX",
    "context_key",
    "dataset_captions",
    "build_context_cache",
    "ContextCache",
    "CachedContextDataset",
    "context_cache_dataset",
    "default_cache_dir",
]

_FORMAT = "versadiff-contexts-v1"
#: item key prefix of cached contexts: item["context.text"] holds the text context of item["caption"]
CONTEXT_PREFIX = "context."


def context_key(modality: str) -> str:
    """The item / batch key of a modality's cached context ("context.text")."""
    return CONTEXT_PREFIX + modality


def default_cache_dir() -> Path:
    """$VERSADIFF_CACHE/contexts, else $XDG_CACHE_HOME/versadiff/contexts, else ~/.cache/versadiff/contexts."""
    root = os.environ.get("VERSADIFF_CACHE")
    if root:
        return Path(root).expanduser() / "contexts"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "versadiff" / "contexts"


# ----------------------------------------------------------------------------------------------- captions


def dataset_captions(dataset: Dataset, batch_key: str = "caption") -> list[str]:
    """Every caption `dataset` can yield, each once, in first-seen order.

    Readers with a caption table (`captions`: one string or a list of them per image; COCO's five per image) give
    all of it; the shapes dataset its items' captions (`describe`, no drawing); any other map-style dataset is
    read item by item."""
    if isinstance(dataset, IterableDataset):
        raise ValueError("a context cache needs a map-style dataset (streamed shards have no caption table); "
                         "encode their captions on the fly (data.name=webdataset)")
    table = getattr(dataset, "captions", None) if batch_key == "caption" else None
    if isinstance(table, (list, tuple)):
        flat = (c for entry in table for c in ([entry] if isinstance(entry, str) else entry))
    elif batch_key == "caption" and callable(getattr(dataset, "describe", None)):
        flat = (dataset.describe(i)["caption"] for i in range(len(dataset)))  # type: ignore[attr-defined]
    else:
        flat = (dataset[i][batch_key] for i in range(len(dataset)))  # type: ignore[arg-type]
    seen: dict[str, None] = {}
    for c in flat:
        if not isinstance(c, str):
            raise ValueError(f"dataset items hold {type(c).__name__} under {batch_key!r}; a context cache encodes "
                             "caption strings")
        seen.setdefault(c, None)
    if not seen:
        raise ValueError("the dataset yields no captions to cache")
    return list(seen)


# ----------------------------------------------------------------------------------------------- writing


@torch.no_grad()
def _encode_chunks(encoder: Any, captions: Sequence[str], chunk: int, write: Any) -> None:
    """encoder.encode over chunks of `chunk` captions; the last chunk is padded (with its last caption) to the
    same size, so every caption is encoded in a batch of the same shape."""
    for start in range(0, len(captions), chunk):
        part = list(captions[start : start + chunk])
        n = len(part)
        z = encoder.encode(part + [part[-1]] * (chunk - n))
        write(start, z[:n].detach().to("cpu", torch.float32))


def _spec_of(encoder: Any, spec: dict[str, Any] | None) -> dict[str, Any]:
    if spec is not None:
        return dict(spec)
    cfg = getattr(encoder, "config", None)
    return cfg.to_spec() if hasattr(cfg, "to_spec") else {"type": type(encoder).__name__}


def build_context_cache(
    dataset: Dataset,
    encoder: Any,
    out_path: str | Path,
    *,
    modality: str = "text",
    batch_key: str = "caption",
    chunk: int = 256,
    dtype: str = "float32",
    encoder_spec: dict[str, Any] | None = None,
    dataset_spec: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Encode every distinct caption of `dataset` (and the null "empty" context, encoder.null(1)) with `encoder`
    and write them to `out_path` (.safetensors file or folder). dtype float32 (bit-exact) or float16 (half the
    size; then no longer bit-identical to encoding on the fly). Written atomically; returns the path."""
    out = Path(out_path).expanduser()
    if out.exists() and not overwrite:
        raise FileExistsError(f"context cache {str(out)!r} already exists; remove it or pass overwrite=True")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    if dtype not in ("float32", "float16"):
        raise ValueError(f"a context cache stores float32 or float16, got {dtype!r}")
    captions = dataset_captions(dataset, batch_key)
    empty = encoder.null(1).detach().to("cpu", torch.float32)
    shape = tuple(int(s) for s in empty.shape[1:])
    meta = {"format": _FORMAT, "modality": modality, "count": len(captions), "shape": list(shape), "dtype": dtype,
            "encoder": _spec_of(encoder, encoder_spec), "dataset": dataset_spec, "captions": captions}
    np_dtype, t_dtype = (np.float32, torch.float32) if dtype == "float32" else (np.float16, torch.float16)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    if out.suffix == ".safetensors":
        from safetensors.torch import save_file

        table = torch.empty(len(captions), *shape, dtype=t_dtype)

        def write(start: int, z: Tensor) -> None:
            table[start : start + z.shape[0]] = z.to(t_dtype)

        _encode_chunks(encoder, captions, chunk, write)
        save_file({"contexts": table, "empty": empty.to(t_dtype)}, str(tmp), metadata={"versadiff": json.dumps(meta)})
    else:
        import shutil

        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        arr = np.lib.format.open_memmap(tmp / "contexts.npy", mode="w+", dtype=np_dtype, shape=(len(captions), *shape))

        def write(start: int, z: Tensor) -> None:
            arr[start : start + z.shape[0]] = z.numpy().astype(np_dtype)

        _encode_chunks(encoder, captions, chunk, write)
        arr.flush()
        del arr
        np.save(tmp / "empty.npy", empty.numpy().astype(np_dtype))
        (tmp / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
    os.replace(tmp, out)
    return out


# ----------------------------------------------------------------------------------------------- reading


class ContextCache:
    """A `build_context_cache` output: `lookup(caption)` -> context [L, D] float32, `empty` [1, L, D], the
    encoder spec it was built with (`encoder_spec`) and its captions."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"context cache {str(path)!r} does not exist; write it with build_context_cache")
        if path.is_file():
            from safetensors import safe_open
            from safetensors.torch import load_file

            with safe_open(str(path), framework="pt") as f:
                raw = (f.metadata() or {}).get("versadiff")
            meta = json.loads(raw) if raw else {}
            tensors = load_file(str(path)) if meta.get("format") == _FORMAT else {}
            contexts, empty = tensors.get("contexts"), tensors.get("empty")
        else:
            mp = path / "meta.json"
            meta = json.loads(mp.read_text(encoding="utf-8")) if mp.is_file() else {}
            contexts = np.load(path / "contexts.npy", mmap_mode="r") if (path / "contexts.npy").is_file() else None
            empty = torch.from_numpy(np.load(path / "empty.npy")) if (path / "empty.npy").is_file() else None
        if meta.get("format") != _FORMAT or contexts is None or empty is None:
            raise ValueError(f"{str(path)!r} is not a versadiff context cache; write it with build_context_cache")
        self.path, self.meta = path, meta
        self.contexts = contexts
        self.empty = empty.float()
        self.captions: list[str] = list(meta["captions"])
        self.index = {c: i for i, c in enumerate(self.captions)}
        self.modality: str = meta.get("modality", "text")
        self.encoder_spec: dict[str, Any] = dict(meta.get("encoder") or {})
        self.dataset_spec: dict[str, Any] | None = meta.get("dataset")

    def __len__(self) -> int:
        return len(self.captions)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.contexts.shape[1:])

    def lookup(self, caption: str) -> Tensor:
        i = self.index.get(caption)
        if i is None:
            raise ValueError(f"caption {caption[:60]!r} is not in the context cache {str(self.path)!r}; it was built "
                             "for other data: delete it (or set data.path to a new file) to rebuild it")
        row = self.contexts[i]
        return row.float().clone() if torch.is_tensor(row) else torch.from_numpy(np.array(row, dtype=np.float32))

    def null(self, batch: int) -> Tensor:
        """The cached null context (the encoding of "") for `batch` samples [batch, L, D]."""
        return self.empty.expand(int(batch), *self.empty.shape[1:]).clone()


class CachedContextDataset(Dataset):
    """`base`'s items plus item["context.<modality>"] = the cached context of the item's caption.

    Everything else (num_classes, class_names, channels, resolution, set_epoch, describe, ...) is base's.
    `cached_contexts` ({modality: ContextCache}) tells a task which contexts the batches carry."""

    def __init__(self, base: Dataset, cache: ContextCache, batch_key: str = "caption") -> None:
        if isinstance(base, IterableDataset):
            raise ValueError("a context cache wraps a map-style dataset")
        self.base, self.cache, self.batch_key = base, cache, batch_key
        self.key = context_key(cache.modality)
        self.cached_contexts = {cache.modality: cache}

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or "base" not in self.__dict__:
            raise AttributeError(name)
        return getattr(self.base, name)

    def _add(self, item: dict[str, Any]) -> dict[str, Any]:
        if self.batch_key not in item:
            raise ValueError(f"dataset items have no {self.batch_key!r} to look their cached context up by")
        return {**item, self.key: self.cache.lookup(item[self.batch_key])}

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._add(self.base[index])

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        get = getattr(self.base, "__getitems__", None)
        items = get(indices) if get is not None else [self.base[i] for i in indices]
        return [self._add(it) for it in items]

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)


# ----------------------------------------------------------------------------------------------- config


def _local_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec with an `asset:` / shipped path resolved (what is built and fingerprinted)."""
    if not spec.get("path"):
        return dict(spec)
    from versadiff.assets import resolve_path

    return {**spec, "path": str(resolve_path(spec["path"]))}


def _weights_stat(spec: dict[str, Any]) -> list[Any]:
    p = Path(spec["path"]).expanduser() if spec.get("path") else None
    if p is None or not p.exists():
        return []
    files = sorted(q for q in (p.rglob("*") if p.is_dir() else [p]) if q.is_file())
    return [[str(q.relative_to(p)) if p.is_dir() else q.name, q.stat().st_size, q.stat().st_mtime_ns] for q in files]


def fingerprint(dataset_spec: dict[str, Any], encoder_spec: dict[str, Any]) -> str:
    """A short hash of the dataset spec, the (resolved) encoder spec and the encoder's weight files."""
    enc = _local_spec(encoder_spec)
    key = json.dumps({"dataset": dataset_spec, "encoder": enc, "weights": _weights_stat(enc)}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def context_cache_dataset(
    dataset: dict[str, Any],
    build: Any,
    encoder: dict[str, Any],
    path: str | None = None,
    modality: str = "text",
    chunk: int = 256,
    dtype: str = "float32",
    device: str = "auto",
) -> Dataset:
    """The `context_cache` dataset of run configs: `dataset` (a dataset config) with each caption's context from
    the cache at `path` (built first when missing; None: the default cache folder, named by a fingerprint).
    An existing cache at an explicit path must have been built from the same dataset and encoder specs.
    build: the dataset builder, build(config, needs_text=...) (versadiff.data.registry.build_dataset)."""
    from versadiff.encoders.base import ENCODERS, build_encoder
    from versadiff.flows import MODALITIES

    if not isinstance(dataset, dict) or "name" not in dataset:
        raise ValueError("data.dataset of a context_cache is a dataset config ({name: ..., ...})")
    if dataset.get("name") == "context_cache":
        raise ValueError("data.dataset of a context_cache cannot be another context_cache")
    if not isinstance(encoder, dict) or "type" not in encoder:
        raise ValueError(f"data.encoder of a context_cache is the run's encoders.{modality} spec ({{type: ..., ...}})")
    if "path" in encoder and not encoder["path"]:
        raise ValueError(f"the context cache encodes with local weights: set data.encoder.path=... (and "
                         f"encoders.{modality}.path, the same folder)")
    ENCODERS.config_of(_local_spec(encoder))  # bad keys fail here, before any work
    batch_key = MODALITIES.get(modality).batch_key
    base = build(dataset, needs_text=modality == "text")
    if path is None:
        out = default_cache_dir() / f"{dataset['name']}-{modality}-{fingerprint(dataset, encoder)}.safetensors"
    else:
        out = Path(path).expanduser()
    if out.exists():
        cache = ContextCache(out)
        same_data = cache.dataset_spec is None or cache.dataset_spec == dataset
        if not same_data or not same_encoder(cache.encoder_spec, encoder):
            what = "dataset" if not same_data else "encoder"
            raise ValueError(f"the context cache {str(out)!r} was built with another {what}; delete it, or set "
                             "data.path to a new file, to rebuild it")
        return CachedContextDataset(base, cache, batch_key)
    dev = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    enc = build_encoder(_local_spec(encoder)).to(dev)
    build_context_cache(base, enc, out, modality=modality, batch_key=batch_key, chunk=chunk, dtype=dtype,
                        encoder_spec=dict(encoder), dataset_spec=dict(dataset))
    del enc
    return CachedContextDataset(base, ContextCache(out), batch_key)


def same_encoder(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two encoder specs build the same encoder (defaults filled in, `asset:` and relative paths resolved)."""
    from versadiff.encoders.base import ENCODERS

    def norm(spec: dict[str, Any]) -> Any:
        spec = _local_spec(spec)
        if spec.get("path"):
            spec["path"] = str(Path(spec["path"]).expanduser().resolve())
        cfg = ENCODERS.config_of(spec)
        return cfg.to_spec() if hasattr(cfg, "to_spec") else cfg

    try:
        return norm(a) == norm(b)
    except (ValueError, TypeError):
        return False
