"""CIFAR-10 / CIFAR-100 from the official "python version" pickles, read with a restricted unpickler.

Layout (Krizhevsky's CIFAR page): CIFAR-10's `cifar-10-batches-py/` holds data_batch_1..5, test_batch
and batches.meta; CIFAR-100's `cifar-100-python/` holds train, test and meta. Each batch is a dict with
bytes keys: b"data" = uint8 [N, 3072] (1024 red, 1024 green, 1024 blue values, row-major 32x32) and
b"labels" (CIFAR-10) or b"fine_labels" / b"coarse_labels" (CIFAR-100).

Pickle can run arbitrary code on load, so `safe_load_pickle` only resolves the few globals this
format needs: numpy's array/dtype reconstruction, `_codecs.encode` and `bytes` (how Python 3
writes bytes at protocol 2). Any other global (os.system, builtins.eval, ...) raises before anything runs.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .transforms import check_index, item_seed

__all__ = ["SAFE_PICKLE_GLOBALS", "safe_load_pickle", "CIFARDataset", "write_cifar"]

#: (module, name) pairs the CIFAR pickles reference; numpy >= 2 moved numpy.core to numpy._core.
SAFE_PICKLE_GLOBALS = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
        ("builtins", "bytes"),  # protocol 2 writes b"" as bytes() (named __builtin__ in Python 2 terms)
        ("__builtin__", "bytes"),
    }
)

_FILES = {
    "cifar10": {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"], "meta": "batches.meta"},
    "cifar100": {"train": ["train"], "test": ["test"], "meta": "meta"},
}
_FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in SAFE_PICKLE_GLOBALS:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: only numpy arrays and builtin containers are allowed in data pickles"
            )
        return super().find_class(module, name)


def safe_load_pickle(path: str | Path) -> Any:
    """Unpickle a data file allowing only builtins (dict/list/bytes/str/int/float) and numpy arrays."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pickle file {str(path)!r} does not exist")
    with path.open("rb") as f:
        try:
            # encoding="bytes" keeps Python 2 str (keys and array buffers) as bytes, as the format expects.
            return _RestrictedUnpickler(f, encoding="bytes").load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
            raise ValueError(f"cannot read {str(path)!r} as a data pickle: {e}") from e


def _get(d: dict, key: str, path: Path) -> Any:
    for k in (key.encode(), key):  # official files use bytes keys; re-saved ones may use str
        if k in d:
            return d[k]
    raise ValueError(f"{str(path)!r} has no {key!r} entry (keys: {sorted(str(k) for k in d)}); is it a CIFAR batch?")


def _names(values: list) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


class CIFARDataset(Dataset):
    """CIFAR-10 or CIFAR-100 images, items {"image": [3,32,32] in [-1,1] (or resized), "label": int}.

    root: the extracted folder holding the batch files (cifar-10-batches-py or cifar-100-python).
    variant: "cifar10" or "cifar100"; labels: "fine" or "coarse" (CIFAR-100 only).
    resolution: None keeps 32x32, another size resamples bilinearly.
    hflip: flip probability, seeded per item (call set_epoch each epoch).
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        variant: str = "cifar10",
        labels: str = "fine",
        resolution: int | None = None,
        hflip: float = 0.0,
        seed: int = 0,
    ) -> None:
        if variant not in _FILES:
            raise ValueError(f"variant must be one of {sorted(_FILES)}, got {variant!r}")
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if labels not in ("fine", "coarse") or (variant == "cifar10" and labels != "fine"):
            raise ValueError(f"labels must be 'fine' (or 'coarse' for cifar100), got {labels!r} for {variant}")
        if not 0.0 <= hflip <= 1.0:
            raise ValueError(f"hflip is a probability in [0, 1], got {hflip}")
        root = Path(root).expanduser()
        files = _FILES[variant]
        names = files[split] + [files["meta"]]
        missing = [n for n in names if not (root / n).is_file()]
        if missing:
            hint = f" (it has a {_FOLDERS[variant]!r} sub-folder: point root there)" if (root / _FOLDERS[variant]).is_dir() else ""
            raise FileNotFoundError(f"{variant} files {missing} not found in {str(root)!r}{hint}")
        label_key = "labels" if variant == "cifar10" else f"{labels}_labels"
        images, targets = [], []
        for name in files[split]:
            batch = safe_load_pickle(root / name)
            data = np.asarray(_get(batch, "data", root / name))
            if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
                raise ValueError(f"{str(root / name)!r} data should be uint8 [N, 3072], got {data.dtype} {data.shape}")
            lbl = np.asarray(_get(batch, label_key, root / name), dtype=np.int64)
            if lbl.shape != (len(data),):
                raise ValueError(f"{str(root / name)!r} has {lbl.shape[0]} labels for {len(data)} images")
            images.append(data.reshape(-1, 3, 32, 32))
            targets.append(lbl)
        meta = safe_load_pickle(root / files["meta"])
        meta_key = "label_names" if variant == "cifar10" else f"{labels}_label_names"
        self.class_names = _names(list(_get(meta, meta_key, root / files["meta"])))
        self.num_classes = len(self.class_names)
        self.images = np.concatenate(images)
        self.labels = np.concatenate(targets)
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= self.num_classes):
            raise ValueError(f"labels in {str(root)!r} exceed the {self.num_classes} class names of its meta file")
        self.channels = 3
        self.resolution = 32 if resolution is None else int(resolution)
        self.hflip = float(hflip)
        self.seed = int(seed)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.images)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentations of `epoch` (deterministic given the seed)."""
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = check_index(index, len(self))
        x = torch.from_numpy(self.images[index].astype(np.float32)).div_(127.5).sub_(1.0)
        if self.resolution != 32:
            x = F.interpolate(x[None], size=(self.resolution,) * 2, mode="bilinear", align_corners=False, antialias=True)[0]
        if self.hflip > 0:
            rng = np.random.default_rng(item_seed(self.seed, self.epoch, index, len(self)))
            if rng.random() < self.hflip:
                x = x.flip(-1)
        return {"image": x, "label": int(self.labels[index])}


def write_cifar(root: str | Path, images: np.ndarray, labels: np.ndarray, class_names: list[str], split: str = "train",
                variant: str = "cifar10", coarse_labels: np.ndarray | None = None) -> None:
    """Write uint8 images [N,32,32,3] as one batch file of the official layout (for tests and small exports).

    For cifar10 the split is written as data_batch_1 (train; batches 2..5 are written empty) or test_batch.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    images = np.asarray(images, dtype=np.uint8)
    if images.ndim != 4 or images.shape[1:] != (32, 32, 3):
        raise ValueError(f"images must be uint8 [N, 32, 32, 3], got {images.shape}")
    data = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    lbl = [int(v) for v in labels]
    files = _FILES[variant]
    if variant == "cifar10":
        batches = {files[split][0]: {b"data": data, b"labels": lbl}}
        for extra in files[split][1:]:
            batches[extra] = {b"data": data[:0], b"labels": []}
        meta = {b"label_names": [n.encode() for n in class_names]}
    else:
        coarse = [int(v) for v in (coarse_labels if coarse_labels is not None else np.zeros(len(lbl), int))]
        batches = {files[split][0]: {b"data": data, b"fine_labels": lbl, b"coarse_labels": coarse}}
        meta = {b"fine_label_names": [n.encode() for n in class_names],
                b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)]}
    batches[files["meta"]] = meta
    for name, obj in batches.items():
        with (root / name).open("wb") as f:
            pickle.dump(obj, f, protocol=2)
