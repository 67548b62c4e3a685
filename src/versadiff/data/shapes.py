"""The built-in dataset: coloured shapes on black, drawn from a seed with no files.

Each image holds one or two shapes (circle, square, upright triangle) in one of six colours,
two sizes and a 3x3 grid of positions (+-0.75 px jitter at 32 px). Item i is a pure function of
(seed, i): its parameters come from `np.random.default_rng([seed, i])`, never a global RNG.

Label rule: class = colour_index * 3 + shape_index ("red circle" = 0, ... "cyan triangle" = 17).
Two-shape images put one shape in the left column and one in the right column (distinct
colours); their label is the class of the LEFT shape, and `describe(i)` lists both.

Geometry (at 32 px; everything scales with resolution / 32): "radius" r = 4 (small) or
6.5 (large); circle of radius r, axis-aligned square of side 2r, upright triangle with base
2r and height 2r, all centred on the bounding-box centre. Edges are anti-aliased by 4x4
supersampling (pixel value = area coverage x colour).
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = [
    "COLORS",
    "COLOR_RGB",
    "SHAPES",
    "SIZES",
    "SIZE_RADIUS",
    "POSITIONS",
    "POSITION_PHRASES",
    "ShapeSpec",
    "ShapesDataset",
    "shape_class_names",
    "coverage",
    "position_name",
    "parse_caption",
]

COLORS = ["red", "green", "blue", "yellow", "magenta", "cyan"]
# Corners of the RGB cube: any two differ by a full step in at least one channel.
COLOR_RGB = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1], [0, 1, 1]], dtype=np.float32)
SHAPES = ["circle", "square", "triangle"]
SIZES = ["small", "large"]
SIZE_RADIUS = {"small": 4.0, "large": 6.5}  # at 32 px
JITTER = 0.75  # at 32 px: keeps a 1.5 px gap between the two columns
GRID = (0.25, 0.5, 0.75)  # cell centres as fractions of the side
_ROWS, _COLS = ("top", "middle", "bottom"), ("left", "center", "right")
POSITIONS = [
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
]  # fmt: skip
POSITION_PHRASES = {
    "top left": "in the top left", "top": "at the top", "top right": "in the top right",
    "left": "on the left", "center": "in the center", "right": "on the right",
    "bottom left": "in the bottom left", "bottom": "at the bottom", "bottom right": "in the bottom right",
}  # fmt: skip
_ONE = [
    "a {color} {shape}",
    "a {size} {color} {shape}",
    "a {color} {shape} {where}",
    "a {size} {color} {shape} {where}",
    "there is a {color} {shape} {where}",
    "{where}, a {size} {color} {shape}",
]
_TWO = [
    "a {c0} {s0} on the left and a {c1} {s1} on the right",
    "{c0} {s0} on the left and a {c1} {s1} on the right",
    "a {c1} {s1} on the right and a {c0} {s0} on the left",
    "a {z0} {c0} {s0} and a {z1} {c1} {s1}",
    "a {c0} {s0} to the left of a {c1} {s1}",
    "a {c1} {s1} to the right of a {c0} {s0}",
]
_SS = 4  # supersampling factor per axis


def shape_class_names() -> list[str]:
    """The 18 class names, index = colour_index * 3 + shape_index."""
    return [f"{c} {s}" for c in COLORS for s in SHAPES]


def position_name(row: int, col: int) -> str:
    """Name of grid cell (row, col), e.g. (0, 0) -> "top left", (1, 1) -> "center"."""
    return POSITIONS[3 * row + col]


def coverage(kind: np.ndarray, cx: np.ndarray, cy: np.ndarray, r: np.ndarray, resolution: int, ss: int = _SS) -> np.ndarray:
    """Area coverage [N, R, R] of N shapes (kind 0/1/2 = circle/square/triangle) in pixel units.

    Pixel (y, x) covers [x, x+1) x [y, y+1); coverage is estimated on an ss x ss sub-grid.
    """
    n = np.asarray(kind).size
    zero = np.zeros(n, dtype=np.int64)
    return _raster(kind, cx, cy, r, zero, zero, int(resolution), ss)


def _raster(kind, cx, cy, r, x0, y0, k: int, ss: int = _SS) -> np.ndarray:
    """Coverage [N, k, k] of each shape inside its own k x k window whose top-left pixel is (x0, y0)."""
    kind = np.asarray(kind, dtype=np.int64).reshape(-1)
    cx, cy, r = (np.asarray(a, dtype=np.float32).reshape(-1) for a in (cx, cy, r))
    x0, y0 = (np.asarray(a, dtype=np.float32).reshape(-1) for a in (x0, y0))
    sub = (np.arange(k * ss, dtype=np.float32) + 0.5) / ss
    out = np.zeros((len(kind), k, k), dtype=np.float32)
    for shape in range(3):
        idx = np.flatnonzero(kind == shape)
        if idx.size == 0:
            continue
        dx = (x0[idx, None] + sub[None, :] - cx[idx, None])[:, None, :]
        dy = (y0[idx, None] + sub[None, :] - cy[idx, None])[:, :, None]
        rr = r[idx, None, None]
        if shape == 0:
            inside = dx * dx + dy * dy <= rr * rr
        elif shape == 1:
            inside = (np.abs(dx) <= rr) & (np.abs(dy) <= rr)
        else:  # apex at (cx, cy - r), base from (cx - r, cy + r) to (cx + r, cy + r)
            inside = (dy <= rr) & (np.abs(dx) <= (dy + rr) * 0.5)
        out[idx] = inside.reshape(idx.size, k, ss, k, ss).mean(axis=(2, 4), dtype=np.float32)
    return out


@dataclass(frozen=True)
class ShapeSpec:
    """Ground truth of one drawn shape (pixel units)."""

    color: int
    shape: int
    size: int
    row: int
    col: int
    cx: float
    cy: float
    r: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "color": COLORS[self.color],
            "shape": SHAPES[self.shape],
            "size": SIZES[self.size],
            "position": position_name(self.row, self.col),
            "center": (self.cx, self.cy),
            "radius": self.r,
            "label": self.color * 3 + self.shape,
        }


def _parse_num_shapes(num_shapes: int | str) -> tuple[int, int]:
    table = {1: (1, 1), 2: (2, 2), "1": (1, 1), "2": (2, 2), "1-2": (1, 2)}
    if num_shapes not in table:
        raise ValueError(f"num_shapes must be 1, 2 or '1-2', got {num_shapes!r}")
    return table[num_shapes]


class ShapesDataset(Dataset):
    """`size` procedurally drawn images of coloured shapes; items {"image", "label", "caption"}.

    size: number of items; seed: selects the whole dataset; resolution: side in pixels (>= 16);
    num_shapes: 1, 2 or "1-2" (each item picks one or two shapes).
    """

    def __init__(self, size: int = 10000, seed: int = 0, resolution: int = 32, num_shapes: int | str = 1) -> None:
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be a positive int, got {size!r}")
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        if not isinstance(resolution, int) or resolution < 16:
            raise ValueError(f"resolution must be an int >= 16, got {resolution!r}")
        self.size, self.seed, self.resolution = size, seed, resolution
        self.num_shapes = num_shapes
        self._n_range = _parse_num_shapes(num_shapes)
        self.channels = 3
        self.class_names = shape_class_names()
        self.num_classes = len(self.class_names)

    def __len__(self) -> int:
        return self.size

    def set_epoch(self, epoch: int) -> None:
        """No-op: items do not change between epochs (kept for a uniform dataset interface)."""

    def _check_index(self, index: int) -> int:
        try:
            index = operator.index(index)  # ints, numpy ints and 0-d integer tensors
        except TypeError:
            raise TypeError(f"dataset indices must be integers, got {type(index).__name__}") from None
        if not -self.size <= index < self.size:
            raise IndexError(f"index {index} out of range for a dataset of {self.size} items")
        return index % self.size

    def _params(self, index: int) -> tuple[list[ShapeSpec], str]:
        """The shapes (left to right) and caption of item `index`, from its own RNG."""
        rng = np.random.default_rng([self.seed, index])
        s = self.resolution / 32.0
        # Always draw every value in the same order so each item's stream layout is fixed.
        n_mixed = int(rng.integers(1, 3))
        colors = rng.choice(len(COLORS), size=2, replace=False)
        shapes = rng.integers(0, len(SHAPES), size=2)
        sizes = rng.integers(0, len(SIZES), size=2)
        rows = rng.integers(0, 3, size=2)
        col_single = int(rng.integers(0, 3))
        jitter = rng.uniform(-JITTER, JITTER, size=(2, 2)) * s
        template = int(rng.integers(0, 1 << 30))
        lo, hi = self._n_range
        n = n_mixed if lo != hi else lo
        cols = [col_single] if n == 1 else [0, 2]
        specs = []
        for j in range(n):
            row, col = int(rows[j]), cols[j]
            specs.append(
                ShapeSpec(
                    color=int(colors[j]), shape=int(shapes[j]), size=int(sizes[j]), row=row, col=col,
                    cx=float(GRID[col] * self.resolution + jitter[j, 0]),
                    cy=float(GRID[row] * self.resolution + jitter[j, 1]),
                    r=SIZE_RADIUS[SIZES[int(sizes[j])]] * s,
                )  # fmt: skip
            )
        return specs, _caption(specs, template)

    def describe(self, index: int) -> dict[str, Any]:
        """Ground-truth attributes of item `index`: label, caption and the shapes left to right."""
        specs, caption = self._params(self._check_index(index))
        return {
            "label": specs[0].color * 3 + specs[0].shape,
            "caption": caption,
            "num_shapes": len(specs),
            "shapes": [sp.as_dict() for sp in specs],
        }

    def render(self, indices: list[int]) -> Tensor:
        """Images [len(indices), 3, R, R] in [-1, 1], drawn in one vectorised pass."""
        specs = [self._params(self._check_index(i))[0] for i in indices]
        return _draw(specs, self.resolution)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        """Batched fetch (used by torch's DataLoader): one vectorised drawing for all items."""
        params = [self._params(self._check_index(i)) for i in indices]
        images = _draw([p[0] for p in params], self.resolution)
        return [
            {"image": img, "label": specs[0].color * 3 + specs[0].shape, "caption": caption}
            for img, (specs, caption) in zip(images, params)
        ]


def _caption(specs: list[ShapeSpec], template: int) -> str:
    if len(specs) == 1:
        sp = specs[0]
        fmt = _ONE[template % len(_ONE)]
        where = POSITION_PHRASES[position_name(sp.row, sp.col)]
        text = fmt.format(color=COLORS[sp.color], shape=SHAPES[sp.shape], size=SIZES[sp.size], where=where)
    else:
        a, b = specs
        fmt = _TWO[template % len(_TWO)]
        text = fmt.format(
            c0=COLORS[a.color], s0=SHAPES[a.shape], z0=SIZES[a.size],
            c1=COLORS[b.color], s1=SHAPES[b.shape], z1=SIZES[b.size],
        )  # fmt: skip
    return text


def _template_regex(fmt: str) -> "re.Pattern[str]":
    alternatives = {"color": COLORS, "shape": SHAPES, "size": SIZES, "where": list(POSITION_PHRASES.values()),
                    "c0": COLORS, "c1": COLORS, "s0": SHAPES, "s1": SHAPES, "z0": SIZES, "z1": SIZES}
    parts = re.split(r"\{(\w+)\}", fmt)
    out = []
    for i, part in enumerate(parts):
        out.append(re.escape(part) if i % 2 == 0 else f"(?P<{part}>{'|'.join(map(re.escape, alternatives[part]))})")
    return re.compile("^" + "".join(out) + "$")


_ONE_RE = [_template_regex(f) for f in _ONE]
_TWO_RE = [_template_regex(f) for f in _TWO]
_PHRASE_POSITION = {v: k for k, v in POSITION_PHRASES.items()}


def parse_caption(text: str) -> dict[str, Any] | None:
    """The attributes a shapes caption states, or None when it is not one the dataset can write.

    One shape: {"color", "shape"} plus "size" and "position" when the caption names them. Two shapes:
    {"shapes": [left, right]} with colour, shape and (when named) size each. Case and outer spaces are ignored.
    """
    t = " ".join(str(text).lower().split())
    for rx in _ONE_RE:
        m = rx.match(t)
        if m:
            d = m.groupdict()
            out = {"color": d["color"], "shape": d["shape"]}
            if d.get("size"):
                out["size"] = d["size"]
            if d.get("where"):
                out["position"] = _PHRASE_POSITION[d["where"]]
            return out
    for rx in _TWO_RE:
        m = rx.match(t)
        if m:
            d = m.groupdict()
            shapes = []
            for j in "01":
                sp = {"color": d[f"c{j}"], "shape": d[f"s{j}"]}
                if d.get(f"z{j}"):
                    sp["size"] = d[f"z{j}"]
                shapes.append(sp)
            return {"shapes": shapes}
    return None


def _draw(items: list[list[ShapeSpec]], resolution: int) -> Tensor:
    flat = [(b, sp) for b, specs in enumerate(items) for sp in specs]
    out = np.zeros((len(items), resolution, resolution, 3), dtype=np.float32)
    if flat:
        # Rasterise each shape only inside a small window that surely contains it (4x faster
        # than the whole canvas at 32 px); windows stay inside the canvas like the shapes do.
        k = min(resolution, int(np.ceil(2 * max(sp.r for _, sp in flat))) + 3)
        x0 = np.array([min(max(int(np.floor(sp.cx)) - k // 2, 0), resolution - k) for _, sp in flat])
        y0 = np.array([min(max(int(np.floor(sp.cy)) - k // 2, 0), resolution - k) for _, sp in flat])
        cov = _raster(
            [sp.shape for _, sp in flat], [sp.cx for _, sp in flat], [sp.cy for _, sp in flat],
            [sp.r for _, sp in flat], x0, y0, k,
        )  # fmt: skip
        for j, (b, sp) in enumerate(flat):
            # Shapes never overlap (separate grid columns), so adding their colours is exact.
            out[b, y0[j] : y0[j] + k, x0[j] : x0[j] + k] += cov[j, :, :, None] * COLOR_RGB[sp.color]
    return torch.from_numpy(out).permute(0, 3, 1, 2).mul(2.0).sub(1.0).contiguous()
