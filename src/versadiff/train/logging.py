"""Training statistics: a JSON-lines file (stats.jsonl) and TensorBoard scalars when tensorboard is installed."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from versadiff.errors import CheckpointError

__all__ = ["StatsLogger"]


def _json_safe(v: Any) -> Any:
    """NaN/inf are not JSON: write them as strings ("nan", "inf") so every line stays parseable."""
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


class StatsLogger:
    """Append one JSON object per log event to run_dir/stats.jsonl; mirror scalars to run_dir/tensorboard/."""

    def __init__(self, run_dir: str | Path, *, tensorboard: bool = True) -> None:
        self.path = Path(run_dir) / "stats.jsonl"
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # optional dependency: the JSON log is the record
                SummaryWriter = None
            if SummaryWriter is not None:
                self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    @staticmethod
    def entries(path: str | Path, *, warn: bool = True) -> list[str]:
        """The parseable lines of a stats.jsonl. A half-written last line (the run was killed while logging) is
        dropped (with a warning); a damaged line before it is a one-line CheckpointError naming the file and line."""
        path = Path(path)
        if not path.exists():
            return []
        try:
            lines = path.read_text().splitlines()
        except UnicodeDecodeError:
            raise CheckpointError(f"{path} is not text (damaged); move it aside to resume") from None
        keep = []
        for i, ln in enumerate(lines):
            if not ln.strip():
                continue
            try:
                entry = json.loads(ln)
                if not isinstance(entry, dict) or not isinstance(entry.get("step", 0), int):
                    raise ValueError
            except ValueError:
                if all(not rest.strip() for rest in lines[i + 1 :]):
                    if warn:
                        sys.stderr.write(f"versadiff: warning: {path} line {i + 1} was cut short (the run was "
                                         "stopped while logging); dropped\n")
                    break
                raise CheckpointError(f"{path} line {i + 1} is not valid JSON (damaged); repair or delete that "
                                      "line to resume") from None
            keep.append(ln)
        return keep

    def truncate_after(self, step: int) -> None:
        """Drop entries logged after `step` (a resumed run re-logs them), rewriting the file atomically."""
        if not self.path.exists():
            return
        keep = [ln for ln in self.entries(self.path) if int(json.loads(ln).get("step", 0)) <= step]
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        with open(tmp, "w") as f:
            f.write("".join(ln + "\n" for ln in keep))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def log(self, step: int, stats: dict[str, Any]) -> None:
        """Record `stats` at `step`; numeric values also go to TensorBoard."""
        entry = {"step": step, **{k: _json_safe(v) for k, v in stats.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(entry) + "\n")
        if self.writer is not None:
            for k, v in stats.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.writer.add_scalar(k, v, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
