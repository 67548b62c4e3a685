"""A map-style dataset over an explicit list of image files with optional labels, captions and tags.

The dataset-specific readers (CelebA, class-index folders, captioned pairs) only parse their
metadata into lists and hand them to `ImageListDataset`, which owns loading, seeded transforms and
the per-epoch caption choice. A file that cannot be decoded (or is too small for the crop) never stops
training: its item is replaced by a seeded replacement and counted in `dataset.stats` (see skips.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .skips import SkipUnreadable
from .transforms import build_transform, item_seed

__all__ = ["ImageListDataset"]


class ImageListDataset(SkipUnreadable, Dataset):
    """Items {"image": [C,H,W] in [-1,1], "label"?: int, "caption"?: str, "tags"?: FloatTensor[K]}.

    files: image paths. labels: one int per file (or None). captions: one non-empty list of strings
    per file (or None); with several, one is chosen per epoch from the item's seed, so a resumed run
    sees the same caption. tags: float array [N, K] (or None). precrop: (top, left, height, width)
    cut from every image before the transform (CelebA's 148x148 face crop).
    Unreadable files: replaced by a seeded replacement item, counted in `stats`, listed in `bad_files`;
    when no file tried at construction is usable, `DataExhaustedError` (see versadiff.data.skips).
    """

    def __init__(
        self,
        files: Sequence[Path],
        resolution: int,
        transform: dict[str, Any] | None = None,
        channels: int = 3,
        labels: Sequence[int] | None = None,
        class_names: Sequence[str] = (),
        captions: Sequence[Sequence[str]] | None = None,
        tags: np.ndarray | None = None,
        tag_names: Sequence[str] = (),
        precrop: tuple[int, int, int, int] | None = None,
        seed: int = 0,
    ) -> None:
        n = len(files)
        for name, values in (("labels", labels), ("captions", captions), ("tags", tags)):
            if values is not None and len(values) != n:
                raise ValueError(f"got {len(values)} {name} for {n} images; pass one per image")
        if captions is not None:
            empty = [str(files[i]) for i, c in enumerate(captions) if not c]
            if empty:
                raise ValueError(f"{len(empty)} images have no caption, e.g. {empty[0]!r}; remove them or add captions")
        self.files = [Path(p) for p in files]
        self.resolution = int(resolution)
        self.channels = int(channels)
        self.transform = build_transform(transform, self.resolution, self.channels)
        self.labels = None if labels is None else [int(v) for v in labels]
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        self.captions = None if captions is None else [list(c) for c in captions]
        self.tags = None if tags is None else torch.as_tensor(np.asarray(tags, dtype=np.float32))
        self.tag_names = list(tag_names)
        self.precrop = precrop
        self.seed = int(seed)
        self.epoch = 0
        self._init_skips()

    def __len__(self) -> int:
        return len(self.files)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentations and captions of `epoch` (deterministic given the seed)."""
        self.epoch = int(epoch)

    def _load(self, index: int) -> dict[str, Any]:
        seed = item_seed(self.seed, self.epoch, index, len(self))
        path = self.files[index]
        with Image.open(path) as img:
            img.load()
            image = self._transform_stage(lambda: self._image(img, path, seed))
        item: dict[str, Any] = {"image": image}
        if self.labels is not None:
            item["label"] = self.labels[index]
        if self.captions is not None:
            options = self.captions[index]
            # A separate stream from the transform's, so adding captions never changes the augmentations.
            pick = int(np.random.default_rng([seed, 1]).integers(len(options))) if len(options) > 1 else 0
            item["caption"] = options[pick]
        if self.tags is not None:
            item["tags"] = self.tags[index].clone()
        return item

    def _image(self, img: Image.Image, path: Path, seed: int) -> torch.Tensor:
        if self.precrop is not None:
            top, left, h, w = self.precrop
            if img.size[0] < left + w or img.size[1] < top + h:
                raise ValueError(f"{str(path)!r} is {img.size[0]}x{img.size[1]}, too small for the crop {self.precrop}")
            img = img.crop((left, top, left + w, top + h))
        return self.transform(img, seed if self.transform.is_random else None)
