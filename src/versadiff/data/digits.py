"""scikit-learn's bundled handwritten digits (1797 images, 8x8, grey levels 0..16): a real data set
that needs no download, small enough for end-to-end tests."""

from __future__ import annotations

import operator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

__all__ = ["DigitsDataset"]

_UPSAMPLE = ("nearest", "bilinear")


class DigitsDataset(Dataset):
    """Items {"image": [C,R,R] in [-1,1], "label": 0..9} (0 -> -1 black, 16 -> +1 white).

    resolution: 8 keeps the native size; a multiple of 8 upsamples ("nearest" keeps the blocky
        pixels exactly, "bilinear" smooths them).
    split: "all", or "train" / "test" = the first 1500 / the remaining 297 images (a fixed split).
    """

    def __init__(
        self, resolution: int = 8, upsample: str = "nearest", channels: int = 1, split: str = "all"
    ) -> None:
        try:
            from sklearn.datasets import load_digits
        except ImportError as e:
            raise ImportError("the digits dataset ships with scikit-learn: pip install scikit-learn") from e
        if upsample not in _UPSAMPLE:
            raise ValueError(f"upsample must be one of {list(_UPSAMPLE)}, got {upsample!r}")
        if resolution < 8 or resolution % 8:
            raise ValueError(f"digits resolution must be a multiple of 8 (8, 16, 32, ...), got {resolution}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        splits = {"all": slice(None), "train": slice(0, 1500), "test": slice(1500, None)}
        if split not in splits:
            raise ValueError(f"split must be one of {list(splits)}, got {split!r}")
        bunch = load_digits()
        self.images = np.asarray(bunch.images, dtype=np.float32)[splits[split]]
        self.labels = np.asarray(bunch.target, dtype=np.int64)[splits[split]]
        self.resolution = int(resolution)
        self.upsample = upsample
        self.channels = channels
        self.class_names = [str(d) for d in range(10)]
        self.num_classes = 10

    def __len__(self) -> int:
        return len(self.images)

    def set_epoch(self, epoch: int) -> None:
        """No random augmentation: present for the common dataset interface."""

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = operator.index(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} images")
        x = torch.from_numpy(self.images[index]).div(8.0).sub(1.0)[None]  # 0..16 -> [-1, 1]
        if self.resolution != 8:
            kw = {"align_corners": False} if self.upsample == "bilinear" else {}
            x = F.interpolate(x[None], size=(self.resolution,) * 2, mode=self.upsample, **kw)[0].clamp(-1, 1)
        if self.channels == 3:
            x = x.expand(3, -1, -1).contiguous()
        return {"image": x, "label": int(self.labels[index])}
