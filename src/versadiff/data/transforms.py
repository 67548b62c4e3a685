"""Deterministic image transforms on PIL images, ending in a [-1, 1] float tensor.

Random transforms never touch a global RNG: every call receives the item's own seed, derived
by `item_seed(base_seed, epoch, index, n)`, so a resumed run (same seed, same epoch) sees
exactly the augmentations the interrupted one would have seen.
"""

from __future__ import annotations

import operator

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

__all__ = [
    "INTERPOLATIONS",
    "ImageTransform",
    "build_transform",
    "item_seed",
    "resize_shorter",
    "center_crop",
    "random_crop",
    "hflip",
    "convert_channels",
    "to_tensor",
]

INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
}
CROPS = ("center", "random", "none")
_BACKGROUNDS = {"white": (255, 255, 255), "black": (0, 0, 0)}


def check_index(index: int, n: int) -> int:
    """A dataset index in [0, n) from a Python index (negative counts from the end); IndexError otherwise."""
    i = operator.index(index)
    if not -n <= i < n:
        raise IndexError(f"index {i} out of range for a dataset of {n} images")
    return i % n


def item_seed(base_seed: int, epoch: int, index: int, n: int) -> int:
    """Seed of item `index` in `epoch` of a dataset of `n` items: base_seed + epoch * n + index."""
    return int(base_seed) + int(epoch) * int(n) + int(index)


def resize_shorter(img: Image.Image, size: int, interpolation: str = "bicubic") -> Image.Image:
    """Resize so the shorter side equals `size`, keeping the aspect ratio (longer side rounded)."""
    w, h = img.size
    if min(w, h) == size:
        return img
    scale = size / min(w, h)
    new = (max(size, round(w * scale)), max(size, round(h * scale)))
    return img.resize(new, INTERPOLATIONS[interpolation])


def center_crop(img: Image.Image, size: int) -> Image.Image:
    """Crop the central `size` x `size` square (the image must be at least that large)."""
    w, h = img.size
    _check_crop(w, h, size)
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


def random_crop(img: Image.Image, size: int, rng: np.random.Generator) -> Image.Image:
    """Crop a `size` x `size` square at a position drawn from `rng`."""
    w, h = img.size
    _check_crop(w, h, size)
    left = int(rng.integers(0, w - size + 1))
    top = int(rng.integers(0, h - size + 1))
    return img.crop((left, top, left + size, top + size))


def _check_crop(w: int, h: int, size: int) -> None:
    if w < size or h < size:
        raise ValueError(f"cannot crop {size}x{size} from a {w}x{h} image; enable resizing (transform resize: true)")


def hflip(img: Image.Image) -> Image.Image:
    """Mirror left-right."""
    return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)


def convert_channels(img: Image.Image, channels: int, background: str = "white") -> Image.Image:
    """Convert any PIL mode to 'L' (channels=1) or 'RGB' (channels=3).

    Transparent pixels are composited over `background` ("white" or "black"): dropping alpha
    instead would expose whatever colour happens to be stored under transparent pixels.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if background not in _BACKGROUNDS:
        raise ValueError(f"unknown alpha background {background!r}; use one of {sorted(_BACKGROUNDS)}")
    has_alpha = img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)
    if has_alpha:
        rgba = img.convert("RGBA")
        base = Image.new("RGBA", rgba.size, _BACKGROUNDS[background] + (255,))
        img = Image.alpha_composite(base, rgba)
    return img.convert("L" if channels == 1 else "RGB")


def to_tensor(img: Image.Image | np.ndarray) -> Tensor:
    """uint8 image (PIL 'L'/'RGB' or array [H,W] / [H,W,C]) -> float32 tensor [C,H,W] in [-1, 1]."""
    a = np.asarray(img)
    if a.dtype != np.uint8:
        raise ValueError(f"to_tensor expects uint8 pixels, got {a.dtype}")
    if a.ndim == 2:
        a = a[:, :, None]
    # astype copies, so the tensor never aliases PIL's read-only buffer.
    t = torch.from_numpy(a.transpose(2, 0, 1).astype(np.float32))
    return t / 127.5 - 1.0


@dataclass(frozen=True)
class ImageTransform:
    """resize (shorter side) -> crop -> optional horizontal flip -> channels -> [-1, 1] tensor.

    resolution: output side length; None keeps the input size (then resize/crop are skipped).
    resize: resize the shorter side to `resolution` before cropping.
    crop: "center", "random" or "none" (with "none" the image must already be resolution^2).
    hflip: probability of a horizontal flip.
    """

    resolution: int | None = None
    resize: bool = True
    crop: str = "center"
    hflip: float = 0.0
    channels: int = 3
    interpolation: str = "bicubic"
    alpha_background: str = "white"

    def __post_init__(self) -> None:
        if self.resolution is not None and (not isinstance(self.resolution, int) or self.resolution < 1):
            raise ValueError(f"transform resolution must be a positive int or None, got {self.resolution!r}")
        if self.crop not in CROPS:
            raise ValueError(f"unknown crop {self.crop!r}; use one of {list(CROPS)}")
        if not 0.0 <= float(self.hflip) <= 1.0:
            raise ValueError(f"hflip is a probability in [0, 1], got {self.hflip}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"unknown interpolation {self.interpolation!r}; use one of {sorted(INTERPOLATIONS)}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if self.alpha_background not in _BACKGROUNDS:
            raise ValueError(f"unknown alpha_background {self.alpha_background!r}; use one of {sorted(_BACKGROUNDS)}")

    @property
    def is_random(self) -> bool:
        """True when the output depends on the seed (random crop or flips)."""
        return self.crop == "random" or self.hflip > 0

    def __call__(self, img: Image.Image, seed: int | None = None) -> Tensor:
        """Transform one image; `seed` is required when the transform is random."""
        if self.is_random and seed is None:
            raise ValueError("this transform is random (random crop or hflip > 0): pass the item's seed")
        rng = np.random.default_rng(seed) if self.is_random else None
        img = convert_channels(img, self.channels, self.alpha_background)
        size = self.resolution
        if size is not None:
            if self.resize:
                img = resize_shorter(img, size, self.interpolation)
            if self.crop == "center":
                img = center_crop(img, size)
            elif self.crop == "random":
                img = random_crop(img, size, rng)
            elif img.size != (size, size):
                raise ValueError(f"image is {img.size[0]}x{img.size[1]} but crop 'none' needs {size}x{size}; use crop 'center'")
        # Draw the flip after the crop so both always consume the RNG in the same order.
        if self.hflip > 0 and rng.random() < self.hflip:
            img = hflip(img)
        return to_tensor(img)


def build_transform(cfg: dict[str, Any] | None, resolution: int | None = None, channels: int = 3) -> ImageTransform:
    """An `ImageTransform` from a config dict, e.g. {"crop": "random", "hflip": 0.5}.

    `resolution` and `channels` fill in keys the dict leaves out; keys present in both must agree.
    """
    cfg = dict(cfg or {})
    valid = set(ImageTransform.__dataclass_fields__)
    unknown = sorted(set(cfg) - valid)
    if unknown:
        raise ValueError(f"unknown transform keys {unknown}; valid keys are {sorted(valid)}")
    for key, value in (("resolution", resolution), ("channels", channels)):
        if key in cfg and value is not None and cfg[key] != value:
            raise ValueError(f"transform {key}={cfg[key]} disagrees with the dataset's {key}={value}; set it once")
        if value is not None:
            cfg.setdefault(key, value)
    return ImageTransform(**cfg)
