"""Evaluation during training (train.eval_every) on a tiny class-conditional UNet with the shapes reader:
eval/<name> lines in stats.jsonl, the best checkpoint in RUN/best/, loss.png / eval.png, the training RNG streams
untouched (a run with evaluation, killed and resumed, equals one without evaluation bit for bit), bad settings
refused in one line before the run folder exists, and 2 DDP processes scoring like one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from versadiff.config import ConfigError, load_config
from versadiff.models import load_model
from versadiff.train import checkpoint as ck
from versadiff.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]

TINY = [
    "model.base_channels=16", "model.norm_groups=8", "model.channel_mult=[1, 2]", "model.num_res_blocks=1",
    "model.attention_resolutions=[16]", "model.emb_channels=32", "model.dropout=0.1",  # dropout: global RNG matters
    "data.size=24", "train.batch_size=8", "train.log_every=1", "train.sample_every=0", "train.warmup_steps=2",
    "train.ema_decay=0.5", "train.mixed_precision=no", "train.lr=3e-3", "sample.n=4", "sample.steps=3",
    "sample.guidance=0", "train.max_steps=6", "train.checkpoint_every=2", "train.keep_last=3",
]
EVAL = ["train.eval_every=2", "train.eval_n=8", "train.eval_batch_size=4", "train.eval_options={ref_n: 24}"]


def tiny(*extra: str):
    return load_config("shapes_unet_tiny", TINY + list(extra))


def _stats(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "stats.jsonl").read_text().splitlines()]


def _evals(run: Path) -> dict[int, dict]:
    return {s["step"]: {k: v for k, v in s.items() if k.startswith("eval/")} for s in _stats(run)
            if any(k.startswith("eval/") for k in s)}


@pytest.fixture(scope="module")
def eval_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("eval") / "run"
    Trainer(tiny(*EVAL), out=run, quiet=True).run()
    return run


def test_evaluation_is_logged_at_every_eval_step(eval_run):
    evals = _evals(eval_run)
    assert sorted(evals) == [2, 4, 6]  # every 2 steps; the end (step 6) once, not twice
    for values in evals.values():
        assert set(values) == {"eval/shapes_fd", "eval/shapes_acc"}  # auto: the domain's fd, and acc (classes)
        assert values["eval/shapes_fd"] >= 0 and 0 <= values["eval/shapes_acc"] <= 1
    line = next(s for s in _stats(eval_run) if "eval/shapes_fd" in s)
    assert line["eval_n"] == 8 and line["eval_seconds"] > 0


def test_best_checkpoint_is_the_ema_of_the_best_step(eval_run):
    best = json.loads((eval_run / "best" / "best.json").read_text())
    evals = _evals(eval_run)
    fds = {step: v["eval/shapes_fd"] for step, v in evals.items()}
    want_step = min(fds, key=lambda s: (fds[s], s))  # lowest FD; the first on ties (strictly better replaces)
    assert (best["metric"], best["mode"], best["step"]) == ("shapes_fd", "min", want_step)
    assert best["value"] == fds[want_step] and best["metrics"]["shapes_fd"] == fds[want_step]
    got = ck.load_tensors(eval_run / "best" / "model.safetensors")
    ema = ck.load_tensors(eval_run / "checkpoints" / f"step-{want_step:08d}" / "ema.safetensors")
    assert got.keys() == ema.keys() and all(torch.equal(got[k], ema[k]) for k in got)
    model = load_model(eval_run / "best")  # loads like an export
    assert model.step == want_step and model.num_classes == 18
    assert not list(eval_run.glob(".tmp-*"))  # written to a temporary folder and renamed


def test_loss_and_eval_plots_are_drawn(eval_run):
    for name in ("loss.png", "eval.png"):
        with Image.open(eval_run / name) as im:
            assert im.format == "PNG" and im.width >= 600 and im.height >= 200
            px = im.convert("RGB").getcolors(1 << 16)
            assert len(px) > 3  # curves and text were drawn, not a blank page


def test_evaluation_does_not_consume_training_rng_and_resumes_bitwise(eval_run, tmp_path):
    plain = tmp_path / "plain"
    Trainer(tiny(), out=plain, quiet=True).run()  # no evaluation at all
    killed = tmp_path / "killed"
    Trainer(tiny(*EVAL), out=killed, quiet=True).run(until=5)  # last checkpoint: step 4
    Trainer(None, out=killed, resume=True, quiet=True).run()
    for run in (eval_run, killed):
        for name in ("model.safetensors", "ema.safetensors"):
            a = ck.load_tensors(plain / "checkpoints" / "step-00000006" / name)
            b = ck.load_tensors(run / "checkpoints" / "step-00000006" / name)
            assert all(torch.equal(a[k], b[k]) for k in a), (run, name)
    assert [s["loss"] for s in _stats(plain)] == [s["loss"] for s in _stats(killed) if "loss" in s]
    assert _evals(killed) == _evals(eval_run)  # fixed seeds: the same scores at the same steps, no duplicates
    assert json.loads((killed / "best" / "best.json").read_text())["step"] == \
        json.loads((eval_run / "best" / "best.json").read_text())["step"]


@pytest.mark.parametrize("extra, message", [
    (["train.eval_metrics=fid_typo"], r"train.eval_metrics: unknown metric 'fid_typo'"),
    (["train.eval_metrics=fid", "train.eval_ref=/nonexistent/ref.npz"], r"train.eval_ref /nonexistent/ref.npz does "
                                                                        r"not exist"),
    (["train.eval_metrics=clip", "model.num_classes=0"], r"clip needs a prompt per sample"),
    (["train.eval_metrics=clip"], r"would fail: CLIP score needs a local CLIP model .* set train.eval_options.clip_model=DIR$"),
    (["train.eval_metrics=clip", "train.eval_options={prompts: [a, b]}"], r"holds 2 prompts for train.eval_n=8"),
    (["train.eval_metrics=acc", "model.num_classes=0"], r"shapes_acc scores the class of each sample"),
    (["train.eval_best=kid"], r"train.eval_best 'kid' is not one of the evaluated values"),
])
def test_bad_eval_settings_fail_before_the_run_folder(tmp_path, extra, message):
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=message) as e:
        Trainer(tiny(*EVAL, *extra), out=out, quiet=True)
    assert "\n" not in str(e.value)
    assert not out.exists()


def test_unknown_eval_option_is_a_config_error():
    with pytest.raises(ConfigError, match=r"unknown config key 'train.eval_options.ref_size'"):
        tiny("train.eval_options={ref_size: 3}")


def test_two_ddp_processes_evaluate_like_one(tmp_path, eval_run):
    """2 CPU processes x batch 4 train on the same global batches as 1 x batch 4 x grad_accum 2 (tests/
    test_distributed.py); their evaluation splits the samples over the processes and must score alike."""
    ddp = ["train.batch_size=4", "model.dropout=0"]
    ref = tmp_path / "ref"
    Trainer(tiny(*EVAL, *ddp, "train.grad_accum=2"), out=ref, quiet=True).run()
    job = {"runs": [{"preset": "shapes_unet_tiny", "overrides": TINY + EVAL + ddp, "out": str(tmp_path / "ddp")}]}
    (tmp_path / "job.json").write_text(json.dumps(job))
    drop = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "FSDP_")) and k not in drop}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(ROOT / "tests" / "test_distributed_worker.py"), str(tmp_path / "job.json")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    got, want = _evals(tmp_path / "ddp"), _evals(ref)
    assert sorted(got) == sorted(want) == [2, 4, 6]
    for step in want:
        for k, v in want[step].items():
            assert got[step][k] == pytest.approx(v, abs=1e-6), (step, k)
    assert (tmp_path / "ddp" / "best" / "best.json").is_file()
