"""Output folders of the sampling commands: checked before any work, never mixed with stale files."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

__all__ = ["library_versions", "prepare_output_dir", "write_json"]


def library_versions() -> dict[str, str]:
    """Versions that a settings file records next to the results."""
    from importlib.metadata import version

    import torch

    return {"versadiff": version("versadiff"), "torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def prepare_output_dir(path: str | Path, option: str = "--out") -> Path:
    """An output folder that does not exist yet or is empty; anything else is refused with a one-line error."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{option} {out} is a file; give a folder that does not exist yet or is empty")
    if out.is_dir() and any(out.iterdir()):
        raise ValueError(f"{option} {out} is not empty; give a new folder (nothing is overwritten)")
    parent = out.parent if out.parent != Path("") else Path(".")
    if parent.exists() and not parent.is_dir():
        raise ValueError(f"{option} {out}: {parent} is a file")
    return out


def write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path
