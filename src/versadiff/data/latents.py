"""Pre-encode a dataset through an autoencoder once, then train on the cached latents
(as U-ViT does for its ImageNet 256/512 latent models).

Two storage forms, chosen by the output path:
  x.safetensors   one file: "latents" [N,c,h,w], "labels" [N] (when the dataset has labels),
                  "latents_flip" (with flips=True); dataset facts in the metadata. Held in memory.
  a folder        latents.npy (+ latents_flip.npy), labels.npy and meta.json; latents.npy is written
                  batch by batch and read memory-mapped, for caches larger than memory.

    cache_latents(dataset, lambda x: vae.encode(x), "imagenet256_latents.safetensors", batch_size=64)
    LatentDataset("imagenet256_latents.safetensors")[0]  # {"image": latent [c,h,w], "label": int}
"""

from __future__ import annotations

import json
import operator
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .transforms import item_seed

__all__ = ["cache_latents", "LatentDataset"]

_FORMAT = "versadiff-latents-v1"


def _as_list(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # Items may hold captions or tags that default_collate need not see: stack images by hand.
    return items


def _meta(dataset: Dataset, count: int, flips: bool, has_labels: bool) -> dict[str, Any]:
    return {
        "format": _FORMAT,
        "count": count,
        "flips": flips,
        "has_labels": has_labels,
        "num_classes": int(getattr(dataset, "num_classes", 0) or 0),
        "class_names": list(getattr(dataset, "class_names", None) or []),
        "source_resolution": getattr(dataset, "resolution", None),
    }


@torch.no_grad()
def cache_latents(
    dataset: Dataset,
    encoder_fn: Callable[[Tensor], Tensor],
    out_path: str | Path,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    flips: bool = False,
    num_workers: int = 0,
    overwrite: bool = False,
) -> Path:
    """Encode every item's image (in index order, epoch 0) with `encoder_fn` ([B,C,H,W] in [-1,1] on
    `device` -> [B,c,h,w]) and store the latents (+ labels); flips=True also stores the latents of
    the mirrored images so training keeps its flip augmentation. Returns the written path."""
    out = Path(out_path).expanduser()
    if out.exists() and not overwrite:
        raise FileExistsError(f"latent cache {str(out)!r} already exists; remove it or pass overwrite=True")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = len(dataset)  # type: ignore[arg-type]
    if n == 0:
        raise ValueError("cannot cache the latents of an empty dataset")
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(0)
    has_labels = "label" in dataset[0]
    to_file = out.suffix == ".safetensors"
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        collate_fn=_as_list)
    parts: dict[str, list[Tensor]] = {"latents": [], "latents_flip": []}
    arrays: dict[str, np.ndarray] = {}
    labels = np.zeros(n, dtype=np.int64)
    at = 0
    for items in loader:
        images = torch.stack([it["image"] for it in items]).to(device)
        outs = {"latents": encoder_fn(images)}
        if flips:
            outs["latents_flip"] = encoder_fn(images.flip(-1))
        for name, z in outs.items():
            if not torch.is_tensor(z) or z.ndim < 2 or z.shape[0] != len(items):
                raise ValueError(f"encoder_fn must return a tensor [B, ...] with B={len(items)}, got {getattr(z, 'shape', type(z))}")
            z = z.detach().to("cpu", torch.float32)
            if to_file:
                parts[name].append(z)
            else:
                if name not in arrays:
                    out.mkdir(parents=True, exist_ok=True)
                    arrays[name] = np.lib.format.open_memmap(out / f"{name}.npy", mode="w+", dtype=np.float32,
                                                             shape=(n, *z.shape[1:]))
                arrays[name][at : at + len(items)] = z.numpy()
        if has_labels:
            labels[at : at + len(items)] = [int(it["label"]) for it in items]
        at += len(items)
    meta = _meta(dataset, n, flips, has_labels)
    if to_file:
        from safetensors.torch import save_file

        tensors = {k: torch.cat(v) for k, v in parts.items() if v}
        if has_labels:
            tensors["labels"] = torch.from_numpy(labels)
        out.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(out), metadata={"versadiff": json.dumps(meta)})
    else:
        for a in arrays.values():
            a.flush()
        if has_labels:
            np.save(out / "labels.npy", labels)
        (out / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return out


class LatentDataset(Dataset):
    """Items {"image": latent [c,h,w] float32, "label"?: int} from a `cache_latents` output.

    With cached flips, each item shows the original or the mirrored latent, drawn per epoch from
    the item seed with probability `flip_prob` (call set_epoch each epoch).
    channels / resolution describe the latents (c and h), so a trainer builds its network for them.
    """

    def __init__(self, path: str | Path, flip_prob: float = 0.5, seed: int = 0) -> None:
        path = Path(path).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"latent cache {str(path)!r} does not exist; write it with cache_latents")
        if not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f"flip_prob is a probability in [0, 1], got {flip_prob}")
        if path.is_file():
            from safetensors import safe_open
            from safetensors.torch import load_file

            with safe_open(str(path), framework="pt") as f:
                raw = (f.metadata() or {}).get("versadiff")
            meta = json.loads(raw) if raw else {}
            tensors = load_file(str(path))
            latents, flipped, labels = tensors.get("latents"), tensors.get("latents_flip"), tensors.get("labels")
        else:
            meta_path = path / "meta.json"
            meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {}
            latents = np.load(path / "latents.npy", mmap_mode="r") if (path / "latents.npy").is_file() else None
            flipped = np.load(path / "latents_flip.npy", mmap_mode="r") if (path / "latents_flip.npy").is_file() else None
            labels = np.load(path / "labels.npy") if (path / "labels.npy").is_file() else None
        if meta.get("format") != _FORMAT or latents is None:
            raise ValueError(f"{str(path)!r} is not a versadiff latent cache; write it with cache_latents")
        self.latents, self.latents_flip = latents, flipped
        self.labels = None if labels is None else [int(v) for v in labels]
        self.class_names = list(meta.get("class_names", []))
        self.num_classes = int(meta.get("num_classes", 0))
        self.channels = int(latents.shape[1])
        self.resolution = int(latents.shape[-1])
        self.flip_prob = float(flip_prob)
        self.seed = int(seed)
        self.epoch = 0

    def __len__(self) -> int:
        return int(self.latents.shape[0])

    def set_epoch(self, epoch: int) -> None:
        """Select the flips of `epoch` (deterministic given the seed)."""
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = operator.index(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} latents")
        index = index % len(self)
        source = self.latents
        if self.latents_flip is not None and self.flip_prob > 0:
            rng = np.random.default_rng(item_seed(self.seed, self.epoch, index, len(self)))
            if rng.random() < self.flip_prob:
                source = self.latents_flip
        z = source[index]
        item: dict[str, Any] = {"image": z.clone() if torch.is_tensor(z) else torch.from_numpy(np.array(z))}
        if self.labels is not None:
            item["label"] = self.labels[index]
        return item
