"""benchmarks/cpu_training.py: its whole-step section runs and reports a speed-up, and a wrong section is a
one-line error. The figures themselves live in benchmarks/README.md, not in a timed test."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "cpu_training.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=300)


def test_step_section_prints_its_row_with_the_cpu_capability():
    proc = _run("--sections", "step", "--repeats", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "CPU capability" in proc.stdout
    row = next(line for line in proc.stdout.splitlines() if line.startswith("| fmnist_uvit_tiny training step"))
    before, now, speedup = (cell.strip() for cell in row.strip("|").split("|")[2:5])
    assert float(before) > 0 and float(now) > 0 and speedup.endswith("x")


def test_unknown_section_is_a_one_line_error():
    proc = _run("--sections", "attention,nope")
    assert proc.returncode == 2 and "unknown sections ['nope']" in proc.stderr
    proc = _run("--sections", "profile,step")
    assert proc.returncode == 2 and "give one of them alone" in proc.stderr
