"""Training statistics: a JSON-lines file (stats.jsonl) and TensorBoard scalars when tensorboard is installed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["StatsLogger"]


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

    def truncate_after(self, step: int) -> None:
        """Drop entries logged after `step` (a resumed run re-logs them)."""
        if not self.path.exists():
            return
        keep = [ln for ln in self.path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= step]
        self.path.write_text("".join(ln + "\n" for ln in keep))

    def log(self, step: int, stats: dict[str, Any]) -> None:
        """Record `stats` at `step`; numeric values also go to TensorBoard."""
        entry = {"step": step, **stats}
        with self.path.open("a") as f:
            f.write(json.dumps(entry) + "\n")
        if self.writer is not None:
            for k, v in stats.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.writer.add_scalar(k, v, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
