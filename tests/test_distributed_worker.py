"""The training processes that tests/test_distributed.py launches with torchrun (no tests here).

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/test_distributed_worker.py JOB.json

JOB: {"runs": [RUN, ...], "kill": bool}; the runs are trained one after the other in the same processes, then
with `kill` every process SIGKILLs itself (no cleanup, no export, no process-group teardown).
RUN: {"preset": str, "overrides": [str], "out": str, "resume": bool, "until": int | null, "keys": str | null},
or {"cli": [ARG, ...]}: `versadiff ARG ...` through versadiff.cli.main (its exit status must be 0).
`until` stops the run after that step exactly as a kill there would leave it (the last checkpoint on disk, no
export); `resume` continues the run in `out` from its newest checkpoint with its own config. `keys` records,
per rank, the sample keys of every batch the trainer consumed (KEYS.rank-R.jsonl: {"step", "epoch", "keys"}).
"""

from __future__ import annotations

import json
import os
import signal
import sys


def train(run: dict) -> None:
    from versadiff.config import load_config
    from versadiff.train.trainer import Trainer

    cfg = None if run.get("resume") else load_config(run["preset"], run["overrides"])
    trainer = Trainer(cfg, out=run["out"], resume=True if run.get("resume") else None, quiet=True)
    if run.get("keys"):
        record = open(f"{run['keys']}.rank-{trainer.rank}.jsonl", "a")
        batches = trainer._batches

        def recorded():
            for batch in batches():
                # trainer.step is the number of steps done: this batch belongs to step trainer.step + 1
                record.write(json.dumps({"step": trainer.step + 1, "epoch": trainer.epoch,
                                         "keys": list(batch["key"])}) + "\n")
                record.flush()
                yield batch

        trainer._batches = recorded
    trainer.run(until=run.get("until"))


def main(job_path: str) -> None:
    import torch

    torch.set_num_threads(1)
    with open(job_path) as f:
        job = json.load(f)
    for run in job["runs"]:
        if "cli" in run:
            from versadiff.cli import main as cli

            status = cli(run["cli"])
            if status != 0:
                raise SystemExit(f"versadiff {' '.join(run['cli'])} exited with {status}")
        else:
            train(run)
    if job.get("kill"):
        sys.stdout.flush()
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    main(sys.argv[1])
