"""Several training processes on CPU (gloo), launched the way users launch them (torchrun; accelerate launch with
the shipped configs/accelerate/1node_8gpu.yaml), 2 processes x 1 thread:

  * DDP: 2 processes x batch 4 equal 1 process x batch 4 x grad_accum 2 (the same global batches and noise), and
    a run killed after step 3 resumes from its step-2 checkpoint to the same weights;
  * FSDP2 (train.fsdp) on a tiny multi-flow VD diffuser with per-group gradient multipliers and EMA: equal to one
    process, sharded checkpoints (one model/optimizer shard per process) resumed after a kill, the EMA
    consolidated in ema.safetensors and the training weights consolidated offline;
  * webdataset shards split over 2 ranks x 2 DataLoader workers: every sample once per epoch, and a resume
    continues after the last shard both ranks had fully consumed;
  * resuming with another process count is refused with one line.

All launches happen once, in the module fixture: one launch trains and kills, one resumes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from versadiff.cli import main
from versadiff.config import load_config
from versadiff.train import checkpoint as ck
from versadiff.train.distributed import consolidate, shard_name
from versadiff.train.trainer import Trainer
from tiny_vd import write_tiny_vd_parts  # tests/tiny_vd.py

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "test_distributed_worker.py"
TIMEOUT = 300  # seconds per launch (they take 10-30 s on the shared 2-core CI machine)

#: 1 vs 2 processes: DDP averages two gradients (exact in binary floating point) -> equal bit for bit here;
#: FSDP reduce-scatters and shards the clipping norm's sum -> float32 rounding (measured max 1.2e-7)
DDP_ATOL, FSDP_ATOL = 1e-6, 1e-5

UNET = ["model.base_channels=16", "model.norm_groups=8", "model.channel_mult=[1, 2]", "model.num_res_blocks=1",
        "model.attention_resolutions=[16]", "model.emb_channels=32", "model.dropout=0", "train.log_every=1",
        "train.mixed_precision=no", "train.warmup_steps=2", "train.ema_decay=0.9", "sample.n=2", "sample.steps=2",
        "sample.guidance=0"]
# dropout 0: dropout draws from each process's global RNG, which 1 and 2 processes cannot share
DDP = UNET + ["data.size=32", "train.batch_size=4", "train.max_steps=4", "train.checkpoint_every=2"]
FLOWS = ["text-to-image", "image-variation", "image-to-text", "text-variation"]


def vd(parts: Path) -> list[str]:
    return [
        "model.model_channels=16", "model.context_dim=16", "model.text_dim=8", "model.image_size=16",
        "model.num_heads=2", "model.data_streams=[image, text]", "model.norm_groups=8", f"flows={FLOWS}",
        f"codecs.image.path={parts / 'kl'}", f"codecs.text.path={parts / 'tvae'}",
        f"encoders.text.path={parts / 'clip'}", f"encoders.image.path={parts / 'clip'}",
        "data.size=16", "train.batch_size=2", "train.max_steps=4", "train.checkpoint_every=2", "train.log_every=1",
        "train.sample_every=0", "train.warmup_steps=1", "train.mixed_precision=no", "train.ema_decay=0.5",
        "sample.n=2", "sample.steps=2",
        # VD's per-group gradient multipliers (image data layers x0.2, the global time embedding x0.1)
        "train.param_groups=[{match: '^image\\.data_blocks\\.', grad_mult: 0.2}, {match: 'time_embed', grad_mult: 0.1}]",
    ]


def shard_overrides(shards: Path) -> list[str]:
    # 8 shards x 8 samples; 2 ranks x 2 workers: 2 shards per worker, 8 batches of 4 per rank and epoch. Stopped at
    # step 14 (epoch 1, 6 batches in: each worker has finished its first shard of the epoch and is half-way
    # through its second); resumed to step 30. After a resume the ranks' shares of the rest of the epoch can
    # differ (the rank with more partly read shards reads more again), so their epochs drift apart by a few
    # steps: 30 = 14 + at most 8 batches left of epoch 1 + the 8 of epoch 2, on each rank.
    return UNET + ["model.num_classes=0", f"data={{name: webdataset, shards: {shards}, resolution: 32, "
                   "shuffle_buffer: 4}", "train.batch_size=4", "train.num_workers=2", "train.max_steps=30",
                   "train.checkpoint_every=7", "train.keep_last=5"]


def _env() -> dict[str, str]:
    drop = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "FSDP_")) and k not in drop}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    return env


def _start(argv: list[str], log: Path) -> subprocess.Popen:
    """A launcher in its own process group (so that a failed test can stop it and its training processes)."""
    with open(log, "w") as f:
        return subprocess.Popen(argv, env=_env(), stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)


def _wait(proc: subprocess.Popen) -> int:
    try:
        return proc.wait(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:  # timed out, or the test failed meanwhile: stop this launch's processes
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]


def _tail(log: Path) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-25:])


def _parts(root: Path) -> Path:
    """Tiny random encoders and codecs in the folder layouts the real ones load from (as tests/test_vd.py)."""
    write_tiny_vd_parts(root)
    return root


class Runs:
    """The folders of the launched runs and of their one-process references."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.parts = _parts(root / "parts")
        self.shards = root / "shards"
        self.ddp, self.ddp_ref = root / "ddp", root / "ddp_ref"
        self.fsdp, self.fsdp_ref = root / "fsdp", root / "fsdp_ref"
        self.stream, self.keys = root / "stream", root / "keys"
        self.logs: dict[str, Path] = {}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from versadiff.data import build_dataset, write_shards

    t0 = time.perf_counter()
    r = Runs(tmp_path_factory.mktemp("dist"))
    write_shards(build_dataset({"name": "shapes", "size": 64, "seed": 3}), r.shards, samples_per_shard=8)
    job = {"kill": True, "runs": [
        # stopped after step 3 (last checkpoint: step 2), then SIGKILLed with the processes below
        {"preset": "shapes_unet_tiny", "overrides": DDP, "out": str(r.ddp), "until": 3},
        # streamed shards: stopped after step 14 (checkpoint 14), resumed in the same processes to step 30
        {"preset": "shapes_unet_tiny", "overrides": shard_overrides(r.shards), "out": str(r.stream), "until": 14,
         "keys": str(r.keys / "first")},
        {"resume": True, "out": str(r.stream), "keys": str(r.keys / "resumed")},
        # FSDP: the processes are SIGKILLed after step 3 of this run (last checkpoint: step 2)
        {"preset": "vd_shapes", "overrides": vd(r.parts) + ["train.fsdp.strategy=full_shard"], "out": str(r.fsdp),
         "until": 3},
    ]}
    r.keys.mkdir()
    (r.root / "job.json").write_text(json.dumps(job))
    r.logs["killed"] = r.root / "killed.log"
    killed = _start(torchrun(str(WORKER), str(r.root / "job.json")), r.logs["killed"])
    try:  # meanwhile, the one-process references: the same global batches as 1 process x grad_accum 2
        Trainer(load_config("shapes_unet_tiny", DDP + ["train.grad_accum=2"]), out=r.ddp_ref, quiet=True).run()
        Trainer(load_config("vd_shapes", vd(r.parts) + ["train.grad_accum=2"]), out=r.fsdp_ref, quiet=True).run()
    finally:
        rc = _wait(killed)
    sys.stderr.write(f"[references and launch 1: {time.perf_counter() - t0:.1f}s]\n")
    text = r.logs["killed"].read_text(errors="replace")
    assert rc != 0 and "SIGKILL" in text, f"the first launch did not end in the kill (rc {rc}):\n{_tail(r.logs['killed'])}"
    # both killed runs resumed by `versadiff train --resume` in processes started by accelerate launch with the
    # shipped 1 node x 8 GPUs config (2 processes here)
    resume = {"runs": [{"cli": ["train", "--resume", "--out", str(run), "--quiet"]} for run in (r.ddp, r.fsdp)]}
    (r.root / "resume.json").write_text(json.dumps(resume))
    r.logs["resumed"] = r.root / "resumed.log"
    rc = _wait(_start([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                       str(ROOT / "configs" / "accelerate" / "1node_8gpu.yaml"), "--num_processes", "2",
                       str(WORKER), str(r.root / "resume.json")], r.logs["resumed"]))
    sys.stderr.write(f"[launch 2: {time.perf_counter() - t0:.1f}s]\n")
    assert rc == 0, _tail(r.logs["resumed"])
    return r


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].numel()), default=0.0)


def _losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "stats.jsonl").read_text().splitlines()]


def test_ddp_two_processes_equal_one_and_resume_after_a_kill(runs):
    record = json.loads((runs.ddp / "run.json").read_text())
    assert record["num_processes"] == 2 and record["sharding"] == "ddp" and len(record["sessions"]) == 2
    for step in ("step-00000002", "step-00000004"):  # step 2: before the kill; step 4: after the resume
        for name in ("model.safetensors", "ema.safetensors"):
            got, want = (ck.load_tensors(run / "checkpoints" / step / name) for run in (runs.ddp, runs.ddp_ref))
            assert _max_diff(got, want) <= DDP_ATOL, (step, name)
    got, want = _losses(runs.ddp), _losses(runs.ddp_ref)
    assert len(got) == 4 and max(abs(a - b) for a, b in zip(got, want)) <= DDP_ATOL  # the killed step 3 re-run once
    assert (runs.ddp / "export" / "model.safetensors").is_file()


def test_fsdp_multiflow_equals_one_process_sharded_resume_and_consolidation(runs, tmp_path):
    last = runs.fsdp / "checkpoints" / "step-00000004"
    state = json.loads((last / "state.json").read_text())
    assert state["sharded"] == "fsdp2" and state["world_size"] == 2
    assert json.loads((runs.fsdp / "run.json").read_text())["sharding"] == "fsdp2 full_shard"
    names = {p.name for p in last.iterdir()}
    assert {shard_name(k, r, 2) for k in ("model", "optimizer") for r in (0, 1)} <= names
    assert "model.safetensors" not in names and "optimizer.pt" not in names
    ref = runs.fsdp_ref / "checkpoints"
    for step in ("step-00000002", "step-00000004"):
        ckpt = runs.fsdp / "checkpoints" / step
        model = consolidate(ckpt, tmp_path / f"{step}.safetensors", "model")  # the training weights, joined
        assert _max_diff(ck.load_tensors(model), ck.load_tensors(ref / step / "model.safetensors")) <= FSDP_ATOL
        assert _max_diff(ck.load_tensors(ckpt / "ema.safetensors"),
                         ck.load_tensors(ref / step / "ema.safetensors")) <= FSDP_ATOL
    got, want = _losses(runs.fsdp), _losses(runs.fsdp_ref)
    assert len(got) == 4 and max(abs(a - b) for a, b in zip(got, want)) <= FSDP_ATOL
    # every flow trained: per-flow losses logged; the export is the consolidated EMA
    assert {f"loss_{f}" for f in FLOWS} <= set(json.loads((runs.fsdp / "stats.jsonl").read_text().splitlines()[-1]))
    export = ck.load_tensors(runs.fsdp / "export" / "model.safetensors")
    assert _max_diff(export, ck.load_tensors(last / "ema.safetensors")) == 0.0
    # the consolidated EMA file is what inference and `versadiff export` read (one file, config in metadata)
    out = tmp_path / "vd.safetensors"
    assert main(["export", str(last), "--out", str(out)]) == 0 and _max_diff(ck.load_tensors(out), export) == 0.0


def _records(prefix: Path) -> list[dict]:
    rows = []
    for rank in (0, 1):
        path = Path(f"{prefix}.rank-{rank}.jsonl")
        rows += [dict(json.loads(line), rank=rank) for line in path.read_text().splitlines()]
    return rows


def test_shards_split_over_ranks_and_workers_once_per_epoch_and_resume_at_a_shard(runs):
    from versadiff.data import ShardDataset, build_dataset

    all_keys = {k for p in sorted(runs.shards.glob("*.tar")) for k in _shard_keys(p)}
    assert len(all_keys) == 64
    first, resumed = _records(runs.keys / "first"), _records(runs.keys / "resumed")
    assert {r["step"] for r in first} == set(range(1, 15)) and {r["step"] for r in resumed} == set(range(15, 31))

    def epoch(rows, e):
        return [k for r in rows if r["epoch"] == e for k in r["keys"]]

    # whole epochs (0 before the stop, 2 after the resume): every sample exactly once over 2 ranks x 2 workers
    for keys in (epoch(first, 0), epoch(resumed, 2)):
        assert len(keys) == 64 and set(keys) == all_keys
    assert [sum(r["epoch"] == 2 for r in resumed if r["rank"] == k) for k in (0, 1)] == [8, 8]
    # the resume point: the shortest prefix of epoch 1's shard order that both ranks had fully consumed
    rng = ck.load_torch(runs.stream / "checkpoints" / "step-00000014" / "rng.pt")
    assert [r["data"]["epoch"] for r in rng] == [1, 1]
    done = min(r["data"]["shards_done"] for r in rng)
    assert 0 < done < 8
    ds = build_dataset(load_config("shapes_unet_tiny", shard_overrides(runs.shards)).data, needs_text=False)
    assert isinstance(ds, ShardDataset)
    ds.set_epoch(1)
    order = [Path(ds.shards[i]) for i in ds.shard_order()]
    consumed = {k for p in order[:done] for k in _shard_keys(p)}
    rest = {k for p in order[done:] for k in _shard_keys(p)}
    after = epoch(resumed, 1)
    # it continues at shard `done` of the epoch's order: no consumed shard is read again, every other shard once
    # (a shard read part-way before the stop is read again from its start: its samples are never lost)
    assert len(after) == len(rest) and set(after) == rest and not consumed & set(after)
    before = set(epoch(first, 1))
    assert consumed <= before and before | set(after) == all_keys


def _shard_keys(path: Path) -> list[str]:
    import tarfile

    with tarfile.open(path) as tar:
        return sorted({m.name.rsplit("/", 1)[-1].split(".")[0] for m in tar.getmembers() if m.isfile()})


@pytest.mark.parametrize("which", ["ddp", "fsdp"])
def test_resume_with_another_process_count_is_refused_in_one_line(runs, which, capsys):
    run = getattr(runs, which)
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert main(["train", "--resume", "--out", str(run), "--quiet"]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "was written by 2 processes, this run has 1" in err, err
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before
