"""Image tensors <-> PIL images and PNG grids. Images are [N, C, H, W] in [-1, 1], C = 1 or 3.

Grids may carry captions (`labels`, one per image: class names, prompts): a caption shared by a whole column is
written once under that column, one shared by a whole row once at the left of that row, one shared by every
image once under the grid; otherwise each image gets its own caption under it. Small images are enlarged (nearest
neighbour, an integer factor) so that captions stay readable.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["to_uint8", "to_pil", "make_grid", "save_grid", "caption_font", "label_layout"]

#: labelled grids enlarge images narrower than this (pixels) by an integer factor (at most 8)
LABEL_MIN_CELL = 64


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


def caption_font(size: int = 12) -> Any:
    """PIL's built-in scalable font at `size` pixels (its fixed bitmap font where FreeType is missing)."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ValueError, OSError, ImportError):  # Pillow < 10.1 or no FreeType
        return ImageFont.load_default()


def label_layout(labels: Sequence[str], nrow: int) -> tuple[str, list[str]]:
    """How captions are placed: ("all", [one]) | ("column", per column) | ("row", per row) | ("cell", per image)."""
    labels = [str(x) for x in labels]
    n = len(labels)
    nrow = max(1, min(nrow, n))
    rows = math.ceil(n / nrow)
    if n > 1 and len(set(labels)) == 1:
        return "all", [labels[0]]
    cols = [labels[c::nrow] for c in range(nrow)]
    if rows > 1 and all(len(set(c)) == 1 for c in cols):
        return "column", [c[0] for c in cols]
    by_row = [labels[r * nrow : (r + 1) * nrow] for r in range(rows)]
    if nrow > 1 and all(len(set(r)) == 1 for r in by_row):
        return "row", [r[0] for r in by_row]
    return "cell", labels


def _wrap(text: str, font: Any, width: int, max_lines: int = 3) -> list[str]:
    """Greedy word wrap to `width` pixels (long words are cut), at most `max_lines` lines (the last ends in ...)."""
    words, lines, line = text.split(), [], ""
    for word in words:
        trial = f"{line} {word}".strip()
        if font.getlength(trial) <= width or not line:
            line = trial
        else:
            lines.append(line)
            line = word
        while font.getlength(line) > width and len(line) > 1:  # a word wider than the cell: cut it
            cut = len(line)
            while cut > 1 and font.getlength(line[:cut]) > width:
                cut -= 1
            lines.append(line[:cut])
            line = line[cut:]
    if line:
        lines.append(line)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        last = lines[-1]
        while last and font.getlength(last + "...") > width:
            last = last[:-1]
        lines[-1] = last + "..."
    return lines or [""]


def _mosaic(arr: np.ndarray, nrow: int, padding: int, cap_h: int = 0) -> np.ndarray:
    n, h, w, c = arr.shape
    rows = math.ceil(n / nrow)
    cell_h = h + cap_h
    grid = np.full((rows * (cell_h + padding) + padding, nrow * (w + padding) + padding, c), 255, dtype=np.uint8)
    for i in range(n):
        r, q = divmod(i, nrow)
        y, x = padding + r * (cell_h + padding), padding + q * (w + padding)
        grid[y : y + h, x : x + w] = arr[i]
    return grid


def make_grid(images: Tensor, nrow: int = 8, padding: int = 2, labels: Sequence[str] | None = None,
              scale: int | None = None) -> np.ndarray:
    """uint8 [H', W', C] mosaic of the batch, `nrow` images per row, white padding; with `labels` (one per image),
    captions as the module docstring says. scale: integer enlargement (default: 1 without labels, else enough to
    make cells at least LABEL_MIN_CELL pixels wide)."""
    arr = to_uint8(images)
    n, h, w, c = arr.shape
    nrow = max(1, min(nrow, n))
    if labels is not None and len(labels) != n:
        raise ValueError(f"got {len(labels)} labels for {n} images; give one label per image")
    if scale is None:
        scale = 1 if labels is None else max(1, min(8, math.ceil(LABEL_MIN_CELL / max(w, 1))))
    if scale < 1:
        raise ValueError(f"scale must be an integer >= 1, got {scale}")
    if scale > 1:
        arr = arr.repeat(scale, axis=1).repeat(scale, axis=2)
        h, w = h * scale, w * scale
    if labels is None:
        return _mosaic(arr, nrow, padding)
    return _labelled(arr, nrow, padding, list(labels))


def _labelled(arr: np.ndarray, nrow: int, padding: int, labels: list[str]) -> np.ndarray:
    from PIL import Image, ImageDraw

    n, h, w, c = arr.shape
    rows = math.ceil(n / nrow)
    size = int(max(10, min(16, w // 6)))
    font = caption_font(size)
    line_h = int(size * 1.25)
    kind, caps = label_layout(labels, nrow)
    col_w = w + padding
    if kind == "cell":
        wrapped = [_wrap(t, font, w) for t in caps]
        cap_h = max(len(x) for x in wrapped) * line_h + 2
        base = _mosaic(arr, nrow, padding, cap_h)
        im = Image.fromarray(base[..., 0] if c == 1 else base)
        draw = ImageDraw.Draw(im)
        for i, lines in enumerate(wrapped):
            r, q = divmod(i, nrow)
            x0, y0 = padding + q * col_w, padding + r * (h + cap_h + padding) + h + 1
            _draw_lines(draw, lines, font, x0, y0, w, line_h)
        out = np.asarray(im)
        return out[..., None] if out.ndim == 2 else out
    base = _mosaic(arr, nrow, padding)
    gh, gw = base.shape[:2]
    if kind == "row":
        margin = int(min(max(font.getlength(t) for t in caps) + 2 * padding + 4, max(2 * w, 96)))
        wrapped = [_wrap(t, font, margin - 2 * padding, max_lines=max(1, h // line_h)) for t in caps]
        canvas = np.full((gh, gw + margin, c), 255, dtype=np.uint8)
        canvas[:, margin:] = base
        im = Image.fromarray(canvas[..., 0] if c == 1 else canvas)
        draw = ImageDraw.Draw(im)
        for r, lines in enumerate(wrapped):
            y0 = padding + r * (h + padding) + (h - len(lines) * line_h) // 2
            _draw_lines(draw, lines, font, padding, y0, margin - 2 * padding, line_h, align="right")
    else:  # a caption strip under the grid: one per column, or one for all
        widths = [w] * len(caps) if kind == "column" else [gw - 2 * padding]
        wrapped = [_wrap(t, font, wd) for t, wd in zip(caps, widths)]
        strip = max(len(x) for x in wrapped) * line_h + padding + 2
        canvas = np.full((gh + strip, gw, c), 255, dtype=np.uint8)
        canvas[:gh] = base
        im = Image.fromarray(canvas[..., 0] if c == 1 else canvas)
        draw = ImageDraw.Draw(im)
        for q, (lines, wd) in enumerate(zip(wrapped, widths)):
            _draw_lines(draw, lines, font, padding + q * col_w, gh, wd, line_h)
    out = np.asarray(im)
    return out[..., None] if out.ndim == 2 else out


def _draw_lines(draw: Any, lines: list[str], font: Any, x0: int, y0: int, width: int, line_h: int,
                align: str = "center") -> None:
    for k, line in enumerate(lines):
        tw = font.getlength(line)
        x = x0 + (width - tw) / 2 if align == "center" else x0 + width - tw
        draw.text((x, y0 + k * line_h), line, fill=0, font=font)


def save_grid(images: Tensor, path: str | Path, nrow: int = 8, labels: Sequence[str] | None = None,
              scale: int | None = None) -> Path:
    """Save a batch as one PNG mosaic (with captions when `labels` are given, see make_grid)."""
    from PIL import Image

    g = make_grid(images, nrow, labels=labels, scale=scale)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(g[..., 0] if g.shape[-1] == 1 else g).save(path)
    return path
