"""Sweep figures: each row shows its inputs on the left (images, or prompts drawn as text tiles) and its outputs
across a sweep (strength, level, edit) on the right, with column titles."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any, Sequence

import torch

__all__ = ["sweep_figure", "save_sweep_figure"]

_BG, _INK, _GAP = (255, 255, 255), (0, 0, 0), 4


def _tile(item: Any, size: int) -> Any:
    """A tile of size x size: an image tensor [C, H, W] in [-1, 1] (nearest upscaling) or a text."""
    from PIL import Image, ImageDraw, ImageFont

    if torch.is_tensor(item):
        from versadiff.images import to_pil

        img = to_pil(item[None] if item.ndim == 3 else item)[0].convert("RGB")
        return img.resize((size, size), Image.Resampling.NEAREST)
    tile = Image.new("RGB", (size, size), (240, 240, 240))
    draw = ImageDraw.Draw(tile)
    font = ImageFont.load_default()
    chars = max(6, size // 7)
    lines = textwrap.wrap(str(item), chars)[: max(1, size // 12)]
    for i, line in enumerate(lines):
        draw.text((3, 3 + 12 * i), line, fill=_INK, font=font)
    return tile


def sweep_figure(rows: Sequence[tuple[Sequence[Any], Sequence[Any]]], columns: Sequence[str],
                 input_titles: Sequence[str] = (), title: str = "", size: int = 96) -> Any:
    """A PIL image: rows of (inputs, outputs); inputs are tensors [C, H, W] or strings, outputs tensors (or
    strings, e.g. captions). `columns` titles the output columns, `input_titles` the input columns."""
    from PIL import Image, ImageDraw, ImageFont

    if not rows:
        raise ValueError("a sweep figure needs at least one row")
    n_in = max(len(r[0]) for r in rows)
    n_out = max(len(r[1]) for r in rows)
    head = 16 + (16 if title else 0)
    sep = 12  # between inputs and outputs
    width = _GAP + n_in * (size + _GAP) + sep + n_out * (size + _GAP)
    height = head + len(rows) * (size + _GAP) + _GAP
    fig = Image.new("RGB", (width, height), _BG)
    draw = ImageDraw.Draw(fig)
    font = ImageFont.load_default()
    if title:
        draw.text((_GAP, 2), title, fill=_INK, font=font)
    y0 = head - 14
    for j, name in enumerate(list(input_titles)[:n_in]):
        draw.text((_GAP + j * (size + _GAP), y0), str(name)[: size // 6], fill=_INK, font=font)
    x_out = _GAP + n_in * (size + _GAP) + sep
    for j, name in enumerate(list(columns)[:n_out]):
        draw.text((x_out + j * (size + _GAP), y0), str(name)[: size // 6], fill=_INK, font=font)
    draw.line([(x_out - sep // 2, head), (x_out - sep // 2, height - _GAP)], fill=(160, 160, 160), width=1)
    for i, (inputs, outputs) in enumerate(rows):
        y = head + i * (size + _GAP)
        for j, item in enumerate(inputs):
            fig.paste(_tile(item, size), (_GAP + j * (size + _GAP), y))
        for j, item in enumerate(outputs):
            fig.paste(_tile(item, size), (x_out + j * (size + _GAP), y))
    return fig


def save_sweep_figure(path: str | Path, rows: Sequence[tuple[Sequence[Any], Sequence[Any]]], columns: Sequence[str],
                      **kw: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_figure(rows, columns, **kw).save(path)
    return path
