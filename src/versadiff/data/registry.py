"""Build datasets from plain config dicts (as read from YAML presets).

    build_dataset({"name": "shapes", "size": 20000, "seed": 0, "num_shapes": 1})
    build_dataset({"name": "fashion_mnist", "root": None, "split": "train", "resolution": 32})
    build_dataset(cfg.data, needs_text=False)   # a trainer: captions only when the model reads text
    build_dataset({"name": "context_cache", "dataset": {"name": "shapes"}, "encoder": {"type": "clip_text", ...}})
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Callable

from torch.utils.data import Dataset

from .captions import caption_folder_dataset, coco_captions_dataset, cub_captions_dataset
from .celeba import celeba_dataset
from .cifar import CIFARDataset
from .classindex import class_index_dataset
from .digits import DigitsDataset
from .folder import ImageFolderDataset
from .idx import FASHION_MNIST_CLASSES, MNIST_CLASSES, MNISTDataset, require_fashion_mnist
from .latents import LatentDataset
from .shapes import ShapesDataset
from .shards import ShardDataset

__all__ = ["DATASETS", "build_dataset", "dataset_keys"]


def _shapes(size: int = 10000, seed: int = 0, resolution: int = 32, num_shapes: int | str = 1) -> Dataset:
    return ShapesDataset(size=size, seed=seed, resolution=resolution, num_shapes=num_shapes)


def _need_root(name: str, root: str | None) -> Path:
    if root is None or str(root) == "":
        raise ValueError(f"dataset {name!r} reads local files: set its root (e.g. data.root=/path/to/folder)")
    return Path(root)


def _image_folder(
    root: str | None,
    resolution: int,
    transform: dict[str, Any] | None = None,
    classes: str = "auto",
    channels: int = 3,
    captions: bool = False,
    seed: int = 0,
) -> Dataset:
    folder = _need_root("image_folder", root)
    return ImageFolderDataset(folder, resolution, transform, classes=classes, channels=channels, captions=captions, seed=seed)


def _mnist(
    root: str | None,
    split: str = "train",
    resolution: int | None = None,
    resize: str = "pad",
    channels: int = 1,
    hflip: float = 0.0,
    seed: int = 0,
) -> Dataset:
    return MNISTDataset(_need_root("mnist", root), split, resolution, resize, channels, MNIST_CLASSES, hflip, seed)


def _fashion_mnist(
    root: str | None = None,
    split: str = "train",
    resolution: int | None = None,
    resize: str = "pad",
    channels: int = 1,
    hflip: float = 0.0,
    seed: int = 0,
) -> Dataset:
    folder = Path(root) if root is not None else require_fashion_mnist()
    return MNISTDataset(folder, split, resolution, resize, channels, FASHION_MNIST_CLASSES, hflip, seed)


def _cifar10(root: str | None, split: str = "train", resolution: int | None = None, hflip: float = 0.0, seed: int = 0) -> Dataset:
    return CIFARDataset(_need_root("cifar10", root), split, "cifar10", "fine", resolution, hflip, seed)


def _cifar100(
    root: str | None, split: str = "train", labels: str = "fine", resolution: int | None = None, hflip: float = 0.0, seed: int = 0
) -> Dataset:
    return CIFARDataset(_need_root("cifar100", root), split, "cifar100", labels, resolution, hflip, seed)


def _celeba(
    root: str | None,
    resolution: int = 64,
    split: str = "train",
    crop: str = "celeba148",
    attributes: list[str] | None = None,
    label_attributes: list[str] | None = None,
    hflip: float = 0.0,
    images: str = "img_align_celeba",
    seed: int = 0,
) -> Dataset:
    return celeba_dataset(_need_root("celeba", root), resolution, split, crop, attributes, label_attributes, hflip, images, seed)


def _class_index_folder(
    root: str | None, class_index: str, resolution: int, transform: dict[str, Any] | None = None, channels: int = 3, seed: int = 0
) -> Dataset:
    return class_index_dataset(_need_root("class_index_folder", root), class_index, resolution, transform, channels, seed)


def _coco_captions(
    annotations: str, images: str, resolution: int, transform: dict[str, Any] | None = None, seed: int = 0
) -> Dataset:
    return coco_captions_dataset(annotations, images, resolution, transform, seed)


def _cub_captions(
    root: str | None, resolution: int, transform: dict[str, Any] | None = None, images: str = "images", text: str = "text", seed: int = 0
) -> Dataset:
    return cub_captions_dataset(_need_root("cub_captions", root), resolution, transform, images, text, seed)


def _caption_folder(
    root: str | None, resolution: int, transform: dict[str, Any] | None = None, channels: int = 3, seed: int = 0
) -> Dataset:
    return caption_folder_dataset(_need_root("caption_folder", root), resolution, transform, channels, seed)


def _digits(resolution: int = 8, upsample: str = "nearest", channels: int = 1, split: str = "all") -> Dataset:
    return DigitsDataset(resolution, upsample, channels, split)


def _webdataset(
    shards: str | list[str],
    resolution: int,
    transform: dict[str, Any] | None = None,
    channels: int = 3,
    captions: bool | str = "auto",
    shuffle_buffer: int = 1000,
    shuffle_shards: bool = True,
    seed: int = 0,
    min_caption_len: int = 0,
    max_caption_len: int | None = None,
    min_size: int = 0,
    min_area: int = 0,
    aspect: list[float] | None = None,
    labels: str = "auto",
    num_classes: int | None = None,
) -> Dataset:
    return ShardDataset(
        shards, resolution, transform, channels, captions, shuffle_buffer, shuffle_shards, seed,
        min_caption_len=min_caption_len, max_caption_len=max_caption_len, min_size=min_size, min_area=min_area,
        aspect=None if aspect is None else tuple(aspect), labels=labels, num_classes=num_classes,
    )


def _latents(path: str, flip_prob: float = 0.5, seed: int = 0) -> Dataset:
    return LatentDataset(path, flip_prob, seed)


def _context_cache(
    dataset: dict[str, Any],
    encoder: dict[str, Any],
    path: str | None = None,
    modality: str = "text",
    chunk: int = 256,
    dtype: str = "float32",
    device: str = "auto",
) -> Dataset:
    # another dataset with each caption's context pre-extracted once (versadiff.data.context_cache)
    from .context_cache import context_cache_dataset

    return context_cache_dataset(dataset, build_dataset, encoder, path, modality, chunk, dtype, device)


#: name -> builder; each builder's keyword arguments are the config keys it accepts.
DATASETS: dict[str, Callable[..., Dataset]] = {
    "shapes": _shapes,
    "image_folder": _image_folder,
    "mnist": _mnist,
    "fashion_mnist": _fashion_mnist,
    "cifar10": _cifar10,
    "cifar100": _cifar100,
    "celeba": _celeba,
    "class_index_folder": _class_index_folder,
    "coco_captions": _coco_captions,
    "cub_captions": _cub_captions,
    "caption_folder": _caption_folder,
    "digits": _digits,
    "webdataset": _webdataset,
    "latents": _latents,
    "context_cache": _context_cache,
}


def dataset_keys(name: str) -> tuple[list[str], list[str]]:
    """(required, optional) config keys of dataset `name`."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names are {sorted(DATASETS)}")
    params = inspect.signature(DATASETS[name]).parameters.values()
    required = [p.name for p in params if p.default is inspect.Parameter.empty]
    optional = [p.name for p in params if p.default is not inspect.Parameter.empty]
    return required, optional


def _caption_choice(name: str, cfg: dict[str, Any], needs_text: bool) -> None:
    """Fill in the `captions` key the config left open ("auto" or unset) from whether the model needs text."""
    if name == "webdataset" and cfg.get("captions", "auto") == "auto":
        cfg["captions"] = "required" if needs_text else "ignored"
    elif name == "image_folder" and "captions" not in cfg and needs_text:
        cfg["captions"] = True


def build_dataset(cfg: dict[str, Any], needs_text: bool | None = None) -> Dataset:
    """The dataset described by `cfg` ({"name": ..., **keys}); bad names or keys raise ValueError.

    needs_text: whether the consumer reads captions. Given, a `captions` key the config leaves open is set
    from it: webdataset "auto" becomes "required" / "ignored" (so shards without captions are never
    skipped for lacking one when no text is needed); image_folder reads its .txt captions when text is
    needed. None leaves the readers' own defaults."""
    if not isinstance(cfg, dict) or "name" not in cfg:
        raise ValueError(f"a dataset config is a dict with a 'name' key; valid names are {sorted(DATASETS)}")
    cfg = dict(cfg)
    name = cfg.pop("name")
    required, optional = dataset_keys(name)
    unknown = sorted(set(cfg) - set(required) - set(optional))
    if unknown:
        raise ValueError(f"unknown keys {unknown} for dataset {name!r}; valid keys are {sorted(required + optional)}")
    missing = [k for k in required if k not in cfg]
    if missing:
        raise ValueError(f"dataset {name!r} needs the keys {missing}; valid keys are {sorted(required + optional)}")
    if needs_text is not None:
        _caption_choice(name, cfg, bool(needs_text))
    return DATASETS[name](**cfg)
