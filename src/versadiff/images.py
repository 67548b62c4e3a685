"""Image tensors <-> PIL images and PNG grids. Images are [N, C, H, W] in [-1, 1], C = 1 or 3."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["to_uint8", "to_pil", "make_grid", "save_grid"]


def to_uint8(images: Tensor) -> np.ndarray:
    """[N, C, H, W] in [-1, 1] -> uint8 [N, H, W, C]."""
    if images.ndim != 4:
        raise ValueError(f"expected images [N, C, H, W], got shape {tuple(images.shape)}")
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def to_pil(images: Tensor) -> list:
    """PIL images from a batch [N, C, H, W] in [-1, 1] (C = 1 or 3)."""
    from PIL import Image

    return [Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a) for a in to_uint8(images)]


def make_grid(images: Tensor, nrow: int = 8, padding: int = 2) -> np.ndarray:
    """uint8 [H', W', C] mosaic of the batch, `nrow` images per row, white padding."""
    arr = to_uint8(images)
    n, h, w, c = arr.shape
    nrow = max(1, min(nrow, n))
    rows = math.ceil(n / nrow)
    grid = np.full((rows * (h + padding) + padding, nrow * (w + padding) + padding, c), 255, dtype=np.uint8)
    for i in range(n):
        r, q = divmod(i, nrow)
        y, x = padding + r * (h + padding), padding + q * (w + padding)
        grid[y : y + h, x : x + w] = arr[i]
    return grid


def save_grid(images: Tensor, path: str | Path, nrow: int = 8) -> Path:
    """Save a batch as one PNG mosaic."""
    from PIL import Image

    g = make_grid(images, nrow)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(g[..., 0] if g.shape[-1] == 1 else g).save(path)
    return path
