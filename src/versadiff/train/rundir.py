"""Numbered, descriptive run folders (EDM style): runs/00003-shapes_unet_tiny-bs32-fp32/, and what a run folder
holds (RUN_FILES): `--force` moves exactly these aside, never anything else."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

__all__ = ["new_run_dir", "RUN_SUBDIRS", "RUN_FILES", "move_run_files_aside"]

RUN_SUBDIRS = ("samples", "checkpoints", "export")
#: every entry the trainer writes into a run folder
RUN_FILES = frozenset({*RUN_SUBDIRS, "config.yaml", "config.json", "stats.jsonl", "run.json", "tensorboard",
                       "best", "loss.png", "eval.png", "eval_ref"})
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


def move_run_files_aside(run_dir: str | Path) -> Path:
    """Move the run entries (RUN_FILES) of `run_dir` into run_dir/replaced-<UTC time>/; returns that folder.
    Nothing is deleted, and entries that are not run files stay where they are."""
    run_dir = Path(run_dir)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    target, n = run_dir / f"replaced-{stamp}", 1
    while target.exists():
        target, n = run_dir / f"replaced-{stamp}-{n}", n + 1
    target.mkdir()
    for name in sorted(RUN_FILES):
        if (run_dir / name).exists() or (run_dir / name).is_symlink():
            os.replace(run_dir / name, target / name)
    return target
