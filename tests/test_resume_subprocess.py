"""Exact resume across processes: a run killed by SIGKILL in the middle of a step, resumed by `versadiff train
--out RUN --resume` in a fresh interpreter, ends bit for bit where the uninterrupted run ends.

The data path draws from numpy's and Python's global RNGs (tests/plugins/rng_signal.py: numpy noise and a
random.random() flip per item), so a resume that does not restore those states (or the torch, noise or data
position states) feeds the resumed steps other batches, and the weights differ. In-process tests cannot see
state that survives only because the interpreter does; this one shares nothing with the killed process but
the run folder.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "plugins"))
import rng_signal  # noqa: E402,F401  (registers rng_toy_signal)

from versadiff.cli import main  # noqa: E402
from versadiff.train import checkpoint as ck  # noqa: E402

CONFIG = {
    "name": "rng_toy_signal", "task": "gaussian",
    "model": {"type": "toy_signal_net", "width": 32},
    "data": {"name": "rng_toy_signal", "size": 32},
    "flows": ["frequency-to-signal"],
    "codecs": {"signal": {"type": "toy_signal_gain", "gain": 1.25}},
    "encoders": {"frequency": {"type": "toy_frequency", "dim": 16}},
    "diffusion": {"prediction": "eps", "p_uncond": 0.1, "clip_x0": None},
    "train": {"batch_size": 8, "max_steps": 6, "lr": 2.0e-3, "log_every": 1, "checkpoint_every": 2,
              "sample_every": 0, "warmup_steps": 1, "mixed_precision": "no", "num_workers": 0},
    "sample": {"sampler": "ddim", "steps": 2, "n": 2, "guidance": 1.0},
}
# dataset_facts reads item 0 once; each step reads 8 items: the 38th item is the 5th of step 5's batch, after
# the step-4 checkpoint
KILL_AT = 1 + 8 * 4 + 5

DRIVER = (
    "import sys; sys.path.insert(0, {plugins!r}); import torch; torch.set_num_threads(1); import rng_signal; "
    "from versadiff.cli import main; sys.exit(main(sys.argv[1:]))"
)


def _cli(args: list[str], **env: str) -> subprocess.CompletedProcess:
    code = DRIVER.format(plugins=str(HERE / "plugins"))
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **env})


def _final(run: Path) -> dict[str, dict]:
    c = ck.latest_checkpoint(run / "checkpoints")
    return {"model": ck.load_tensors(c / "model.safetensors"), "ema": ck.load_tensors(c / "ema.safetensors"),
            "state": json.loads((c / "state.json").read_text()), "name": c.name}


def test_killed_run_resumed_in_a_fresh_process_equals_the_uninterrupted_run(tmp_path, one_thread):
    cfg = tmp_path / "rng.yaml"
    cfg.write_text(yaml.safe_dump(CONFIG))
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert main(["train", str(cfg), "--out", str(full), "--quiet"]) == 0  # uninterrupted, in this process

    crash = _cli(["train", str(cfg), "--out", str(killed), "--quiet"], VERSADIFF_TEST_KILL_AT=str(KILL_AT))
    assert crash.returncode == -signal.SIGKILL, crash.stderr[-2000:]
    assert ck.latest_checkpoint(killed / "checkpoints").name == "step-00000004"
    assert not (killed / "export").exists() or not any((killed / "export").iterdir())

    done = _cli(["train", "--out", str(killed), "--resume", "--quiet"])
    assert done.returncode == 0, done.stderr[-2000:]

    a, b = _final(full), _final(killed)
    assert a["name"] == b["name"] == "step-00000006" and a["state"] == b["state"]
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys()
        differ = [k for k in a[part] if not torch.equal(a[part][k], b[part][k])]
        assert not differ, f"{part}: {len(differ)} tensors differ after the fresh-process resume, e.g. {differ[0]}"
    losses = lambda run: [json.loads(x)["loss"] for x in (run / "stats.jsonl").read_text().splitlines()]  # noqa: E731
    assert losses(full) == losses(killed)  # the same batches, step by step
