"""Numbered, descriptive run folders (EDM style): runs/00003-shapes_unet_tiny-bs32-fp32/."""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["new_run_dir", "RUN_SUBDIRS"]

RUN_SUBDIRS = ("samples", "checkpoints", "export")
_SAFE = re.compile(r"[^A-Za-z0-9_.+-]+")


def new_run_dir(root: str | Path, name: str, desc: str = "") -> Path:
    """Create root/NNNNN-name-desc with the next free number (one more than the highest present)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    numbers = [int(m.group(1)) for p in root.iterdir() if (m := re.match(r"(\d{5})-", p.name))]
    n = max(numbers, default=-1) + 1
    label = "-".join(_SAFE.sub("_", s) for s in (name, desc) if s)
    while True:  # another process may take the number between listing and creating
        path = root / f"{n:05d}-{label}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            n += 1
