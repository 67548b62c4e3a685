"""Read colour, shape, size and position back from shapes images with classical image analysis.

This scores generated samples, so it is built to say "unreadable" rather than guess:
1. Each pixel gets a 3-bit colour code (channel > 0.5 in [0, 1] units); code 0 is background.
2. Connected components per code (scipy.ndimage.label); specks below `min_area` are noise.
3. A component's colour must match its palette prototype on average (within `color_tol`).
4. Shape by moments: for each hypothesis (circle / square / triangle) the area and centroid of
   the soft coverage map fix the radius and centre exactly (a triangle's centroid sits r/3
   below its box centre); the hypothesis is drawn with the dataset's own rasteriser and compared
   to the pixels by soft IoU. The best one wins if its IoU >= `min_iou` and its radius lies in
   the dataset's size range; otherwise the component is unreadable.
An image's label follows the dataset's rule (class of the left-most shape) and is -1 when there
is no shape, more than two, any unreadable one, or a count other than the expected one.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from .shapes import COLOR_RGB, COLORS, GRID, SHAPES, SIZE_RADIUS, coverage, position_name

__all__ = ["read_attributes", "predict_class", "conditional_accuracy"]

_CODE_TO_COLOR = {int(4 * r + 2 * g + b): i for i, (r, g, b) in enumerate(COLOR_RGB.astype(int))}
_EIGHT = np.ones((3, 3), dtype=bool)


def _check_images(images: Tensor) -> np.ndarray:
    if not torch.is_tensor(images) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        raise ValueError(f"expected images as a tensor [B, 3, H, W] in [-1, 1], got {shape}")
    if images.shape[2] != images.shape[3]:
        raise ValueError(f"expected square images, got {images.shape[2]}x{images.shape[3]}")
    x = images.detach().to("cpu", torch.float32).numpy()
    return np.clip((x + 1.0) * 0.5, 0.0, 1.0).transpose(0, 2, 3, 1)  # [B, H, W, 3] in [0, 1]


def _read_component(
    img: np.ndarray, others: np.ndarray, comp: np.ndarray, code: int, min_iou: float, color_tol: float
) -> dict[str, Any]:
    res = img.shape[0]
    s = res / 32.0
    proto = np.array([(code >> 2) & 1, (code >> 1) & 1, code & 1], dtype=np.float32)
    color = _CODE_TO_COLOR.get(code)
    if color is not None and np.abs(img[comp].mean(axis=0) - proto).max() > color_tol:
        color = None  # e.g. orange read as "red" by the thresholds, or a washed-out blob
    # Soft coverage: projection on the prototype, over the component grown by one pixel so
    # that anti-aliased edge pixels below the 0.5 threshold still count (but never pixels of
    # another shape: a touching yellow shape would otherwise project fully onto red).
    region = ndimage.binary_dilation(comp, structure=_EIGHT) & ~others
    alpha = np.clip(img @ proto / float(proto @ proto), 0.0, 1.0) * region
    mass = float(alpha.sum())
    ys, xs = np.indices(alpha.shape, dtype=np.float64) + 0.5
    mx, my = float((alpha * xs).sum() / mass), float((alpha * ys).sum() / mass)
    # Radius from area: circle pi r^2, square 4 r^2, triangle 2 r^2 (base 2r, height 2r).
    radii = np.sqrt(mass / np.array([np.pi, 4.0, 2.0]))
    centres_y = my - np.array([0.0, 0.0, radii[2] / 3.0])
    templates = coverage(np.arange(3), np.full(3, mx), centres_y, radii, res)
    ious = np.minimum(templates, alpha).sum(axis=(1, 2)) / np.maximum(templates, alpha).sum(axis=(1, 2))
    k = int(ious.argmax())
    r, cy = float(radii[k]), float(centres_y[k])
    lo, hi = 0.6 * SIZE_RADIUS["small"] * s, 1.3 * SIZE_RADIUS["large"] * s
    shape = k if ious[k] >= min_iou and lo <= r <= hi else None
    size = "small" if r < 0.5 * (SIZE_RADIUS["small"] + SIZE_RADIUS["large"]) * s else "large"
    grid = np.asarray(GRID) * res
    row, col = int(np.abs(grid - cy).argmin()), int(np.abs(grid - mx).argmin())
    readable = color is not None and shape is not None
    return {
        "color": COLORS[color] if color is not None else None,
        "shape": SHAPES[shape] if shape is not None else None,
        "size": size if shape is not None else None,
        "position": position_name(row, col),
        "center": (mx, cy),
        "radius": r,
        "iou": float(ious[k]),
        "label": color * 3 + shape if readable else -1,
    }


def read_attributes(
    images: Tensor, min_iou: float = 0.7, color_tol: float = 0.3, min_area: float | None = None
) -> list[dict[str, Any]]:
    """Per image: {"shapes": [per-shape dicts, left to right], "num_shapes", "label", "readable"}.

    Each shape dict has color, shape, size (None when unreadable), position (grid cell name),
    center (x, y) and radius in pixels, iou (fit quality) and label (-1 when unreadable).
    min_area: smallest component (pixels) that counts as a shape; default 40% of a small
    triangle's area at the image's resolution.
    """
    x = _check_images(images)
    res = x.shape[1]
    if min_area is None:
        min_area = 0.4 * 2.0 * (SIZE_RADIUS["small"] * res / 32.0) ** 2
    bits = (x > 0.5).astype(np.int64)
    codes = 4 * bits[..., 0] + 2 * bits[..., 1] + bits[..., 2]
    out = []
    for img, code_map in zip(x, codes):
        comps = []  # (code, mask) of every component large enough to count as a shape
        for code in np.unique(code_map):
            if code == 0:
                continue
            labels, n = ndimage.label(code_map == code, structure=_EIGHT)
            areas = np.bincount(labels.ravel(), minlength=n + 1)
            comps += [(int(code), labels == j) for j in np.flatnonzero(areas[1:] >= min_area) + 1]
        taken = np.zeros(code_map.shape, dtype=bool)
        for _, mask in comps:
            taken |= mask
        shapes = [_read_component(img, taken & ~mask, mask, code, min_iou, color_tol) for code, mask in comps]
        shapes.sort(key=lambda d: d["center"][0])
        readable = len(shapes) in (1, 2) and all(d["label"] >= 0 for d in shapes)
        out.append({
            "shapes": shapes,
            "num_shapes": len(shapes),
            "label": shapes[0]["label"] if readable else -1,
            "readable": readable,
        })  # fmt: skip
    return out


def predict_class(images: Tensor, num_shapes: int | None = None) -> Tensor:
    """LongTensor [B] of classes (colour * 3 + shape of the left-most shape); -1 when unreadable.

    num_shapes: when given, an image with any other number of shapes counts as unreadable.
    """
    if num_shapes not in (None, 1, 2):
        raise ValueError(f"num_shapes must be None, 1 or 2, got {num_shapes!r}")
    preds = [
        a["label"] if num_shapes is None or a["num_shapes"] == num_shapes else -1
        for a in read_attributes(images)
    ]
    return torch.tensor(preds, dtype=torch.long)


def conditional_accuracy(images: Tensor, labels: Tensor | list[int], num_shapes: int | None = None) -> float:
    """Fraction of images whose read class equals the class they were generated for."""
    labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    if labels.numel() != images.shape[0]:
        raise ValueError(f"got {images.shape[0]} images but {labels.numel()} labels; pass one label per image")
    if labels.numel() == 0:
        raise ValueError("conditional_accuracy needs at least one image")
    return float((predict_class(images, num_shapes) == labels).float().mean())
