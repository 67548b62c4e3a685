"""The training loop on 🤗 accelerate: one CPU, one GPU or several GPUs (`accelerate launch`) unchanged.

One optimizer step = `grad_accum` micro-batches of `batch_size` images on each process. The data order is a
permutation drawn from (seed, epoch), cut in batches that go round-robin to the processes, and the diffusion
noise comes from one torch.Generator per micro-batch slot (micro-batch m of process r reads the step's global
batch m * world + r and draws slot m * world + r's noise): N processes x grad_accum A train on the same samples
with the same noise as 1 process x grad_accum N*A (equal bit for bit with 2 CPU processes, tests/
test_distributed.py). Both are checkpointed, so a resumed run continues exactly where the interrupted one
stopped (bitwise on CPU), with the number of processes it started with. `train.fsdp` shards the network, its
gradients, the optimizer and the EMA across the processes (FSDP2; versadiff.train.distributed).

Reliability rules (README "Runs are never overwritten"):
  * `--out` must be a new or empty folder, or the folder of the run being resumed; `force=True` starts over in
    a used folder after moving its previous run files into `replaced-<time>/` inside it (nothing is deleted).
  * Everything that can fail is checked before step 0: the config, the data, the training-time sample grid
    (sampler, guidance against the model: Pipeline.request), the device and precision, the output folder.
  * A resumed run uses the config recorded in its checkpoint; a different config is refused with the keys that
    differ unless they are allowed (`allow_change`, plus RESUME_HARMLESS: logging / checkpoint cadence). A damaged
    latest checkpoint (manifest sha256) is set aside with a warning and the previous good one is used.
  * A NaN/inf loss or gradient norm stops training before the update is applied (TrainingDivergedError); the last
    checkpoint stays the last good one, and no checkpoint with non-finite weights is ever written.

Records: stats.jsonl (every log line and evaluation), accelerate's trackers (`train.log_with`, TensorBoard by
default: scalars and sample grids), loss.png / eval.png redrawn at every checkpoint, and with `train.eval_every` the
metrics of `versadiff eval` on the EMA weights (fixed seeds), the best of them kept in RUN/best/ (EMA weights and
best.json, replaced atomically; nothing else is ever deleted for it).
"""

from __future__ import annotations

import contextlib
import copy
import errno
import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from versadiff.config import (RESUME_HARMLESS, ConfigError, RunConfig, apply_overrides, config_diff,
                              config_from_dict, key_allowed, save_config)
from versadiff.errors import CheckpointError, OutputExistsError, TrainingDivergedError
from versadiff.images import make_grid
from versadiff.train import checkpoint as ck
from versadiff.train import distributed as dist_
from versadiff.train.ema import EMA
from versadiff.train.logging import StatsLogger, Trackers, check_trackers, plot_run, read_stats, tracker_names
from versadiff.train.optim import adamw, param_groups
from versadiff.train.rundir import RUN_FILES, RUN_SUBDIRS, move_run_files_aside, new_run_dir
from versadiff.weights import CONFIG_KEY, INFO_KEY

__all__ = ["Trainer", "train", "export_weights", "resolve_resume", "resume_config"]


def _seed_for(*parts: int) -> int:
    """A 63-bit seed mixed from integers (SplitMix64 steps), stable across runs and platforms."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


def _warmup_lambda(warmup_steps: int):
    """Linear warm-up from 0 to 1 over `warmup_steps`, then constant (U-ViT / VDPM)."""

    def f(step: int) -> float:
        return 1.0 if warmup_steps <= 0 else min(1.0, (step + 1) / warmup_steps)

    return f


def _needs_text(cfg: RunConfig) -> bool:
    """Whether the run reads captions (so that readers require them, and only then)."""
    from versadiff.tasks import task_class

    return task_class(cfg.task).needs_text(cfg)


def _check_data(cfg: RunConfig) -> None:
    if cfg.data.get("name") == "image_folder" and not cfg.data.get("root"):
        raise ValueError("this preset reads a folder of images: set data.root=... (a folder of class sub-folders)")


def _is_main_process() -> bool:
    from accelerate import PartialState

    dist_.init_processes()  # the first use of accelerate's state in a process: join the launched process group
    return PartialState().is_main_process


_VERIFIED: dict[str, tuple] = {}  # checkpoints verified in this process (path -> manifest stat), not re-hashed


def _verified(path: Path) -> Path:
    """`path` after verify_checkpoint (once per process and manifest version)."""
    m = path / ck.MANIFEST
    key = (m.stat().st_mtime_ns, m.stat().st_size) if m.is_file() else None
    if key is None or _VERIFIED.get(str(path.resolve())) != key:
        ck.verify_checkpoint(path)
        if key is not None:
            _VERIFIED[str(path.resolve())] = key
    return path


def _latest_good(folder: Path, tidy: bool = True) -> Path | None:
    """The newest checkpoint of a run's checkpoints/ that verifies (with a warning for each damaged newer one);
    with `tidy`, damaged ones are set aside (damaged-step-*) and what killed writes/deletes left is removed."""
    tidy = tidy and _is_main_process()  # one process renames and removes; the others only read
    if tidy:
        ck.clean_checkpoints(folder)
    good = ck.latest_good_checkpoint(folder, quarantine=tidy)
    m = good / ck.MANIFEST if good is not None else None
    if m is not None and m.is_file():
        _VERIFIED[str(good.resolve())] = (m.stat().st_mtime_ns, m.stat().st_size)
    return good


def resolve_resume(resume: str | bool | None, run_dir: Path | None, *, tidy: bool = True) -> Path | None:
    """The checkpoint to resume from: a given checkpoint (verified), or the newest good checkpoint of a run
    folder (`resume` itself, or `run_dir` when resume is True). tidy=False changes nothing on disk (dry runs)."""
    if resume is None or resume is False:
        return None
    if resume is True or resume == "":
        if run_dir is None:
            raise ValueError("--resume without a path needs --out RUN_FOLDER (the run to continue)")
        if run_dir.exists() and not run_dir.is_dir():
            raise OutputExistsError(f"--out {run_dir} is a file, not a run folder")
        latest = _latest_good(run_dir / "checkpoints", tidy)
        if latest is None:
            hint = ("start over there with --force (its files are moved aside, nothing is deleted) or choose "
                    "another --out" if run_dir.is_dir() and any(run_dir.iterdir()) else "drop --resume to start fresh")
            raise FileNotFoundError(f"no checkpoint to resume in {run_dir / 'checkpoints'}; {hint}")
        return latest
    p = Path(resume)
    if p.is_dir() and p.name.startswith("step-") and (p / "state.json").exists():
        return _verified(p)
    if ck.is_checkpoint(p):
        return _verified(p)
    latest = _latest_good(p / "checkpoints", tidy) if (p / "checkpoints").is_dir() else None
    if latest is not None:
        return latest
    raise FileNotFoundError(f"--resume {p}: not a checkpoint directory nor a run folder with a good checkpoint in "
                            "checkpoints/")


def _checkpoint_meta(path: Path) -> tuple[RunConfig, dict[str, Any]]:
    """(config, info) recorded in a checkpoint's weights."""
    from versadiff.weights import read_metadata

    weights = path / "model.safetensors"
    if not weights.is_file():  # a sharded (FSDP) checkpoint: its consolidated EMA carries the same metadata
        weights = path / "ema.safetensors"
    return read_metadata(weights)


def resume_config(resume: str | bool | None, out: str | Path | None,
                  overrides: list[str] | tuple[str, ...] = (), *, tidy: bool = True) -> tuple[Path, RunConfig]:
    """(checkpoint, config) for `--resume` without a CONFIG: the run's own config as its checkpoint recorded it,
    with `overrides` (--set) applied on top (the trainer then refuses any change that is not allowed)."""
    from versadiff.tasks import check_config

    path = resolve_resume(True if resume in (None, "") else resume, Path(out) if out is not None else None,
                          tidy=tidy)
    cfg, _ = _checkpoint_meta(path)
    if overrides:
        cfg = config_from_dict(apply_overrides(cfg.to_dict(), list(overrides)))
    return path, check_config(cfg)


def _short(v: Any, n: int = 40) -> str:
    text = json.dumps(v) if not isinstance(v, str) else repr(v)
    return text if len(text) <= n else text[: n - 3] + "..."


class _SampleGridChecked(Exception):
    """Raised by the request-only stand-in once the training-time grid's generate() call has been checked."""


class _RequestOnly:
    """A Pipeline whose generate() only checks its arguments (Pipeline.request) and then stops the grid."""

    def __init__(self, pipeline: Any) -> None:
        self._pipeline = pipeline

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pipeline, name)

    def generate(self, seeds: Any, *, device: Any = None, progress: bool = False, **kw: Any) -> Any:
        self._pipeline.request(seeds, **kw)
        raise _SampleGridChecked


class Trainer:
    """Build everything a run needs from a RunConfig; `run()` trains, checkpoints, samples and exports."""

    def __init__(
        self,
        cfg: RunConfig | None,
        *,
        out: str | Path | None = None,
        runs_root: str | Path = "runs",
        resume: str | bool | None = None,
        quiet: bool = False,
        force: bool = False,
        allow_change: list[str] | tuple[str, ...] = (),
        trackers: Sequence[Any] = (),
    ) -> None:
        """cfg: the run's config; None with `resume`: the config the checkpoint recorded. out: the run folder
        (new, empty, or the run to resume). resume: True (the newest good checkpoint of `out`), a checkpoint or
        a run folder. force: start over in a used `out` (its run files are moved aside). allow_change: config
        keys (or sections) a resumed run may change, besides RESUME_HARMLESS. trackers: accelerate GeneralTracker
        instances to log to besides `train.log_with` (already initialised, as accelerate takes them)."""
        from accelerate import Accelerator, PartialState
        from accelerate.state import AcceleratorState

        from versadiff.data import build_dataset
        from versadiff.precision import resolve_precision
        from versadiff.tasks import build_task, check_config, task_class

        self.quiet = quiet
        dist_.init_processes()  # before anything asks accelerate which process this is
        run_dir = Path(out) if out is not None else None
        self.resume_from = resolve_resume(resume, run_dir)
        if self.resume_from is not None:  # before anything is built: a wrong process count is refused at once
            _check_world(self.resume_from, PartialState().num_processes)
        ckpt_info: dict[str, Any] = {}
        self.changes: list[tuple[str, Any, Any]] = []
        if self.resume_from is not None:
            ckpt_cfg, ckpt_info = _checkpoint_meta(self.resume_from)
            cfg = ckpt_cfg if cfg is None else _num_classes_as_recorded(cfg, ckpt_cfg)
            self.changes = _check_resume_config(ckpt_cfg, cfg, self.resume_from, allow_change)
        elif cfg is None:
            raise ValueError("no config given: name a preset or YAML file, or --resume a run")
        if run_dir is None and self.resume_from is not None:
            run_dir = self.resume_from.parent.parent
        resuming_here = self.resume_from is not None and run_dir is not None and \
            self.resume_from.parent.parent.resolve() == run_dir.resolve()
        self._move_aside = _check_out_dir(run_dir, resuming_here, force) if run_dir is not None else False
        if resuming_here:
            StatsLogger.entries(run_dir / "stats.jsonl", warn=False)  # a damaged log stops the resume before any write

        task_class(check_config(cfg).task).check_run(cfg)
        _check_data(cfg)
        self.cfg, tc = cfg, cfg.train
        self.tracker_names = tracker_names(tc.log_with)
        check_trackers(self.tracker_names)  # a tracker that is not installed is named before anything is built
        # The precision: `auto` resolves on this device (versadiff.precision); a resumed run keeps the one it
        # started with (its checkpoint records it), so that it continues bit for bit.
        device = PartialState().device
        if tc.mixed_precision == "auto" and ckpt_info.get("mixed_precision") in ("no", "bf16", "fp16"):
            self.precision = ckpt_info["mixed_precision"]
            self.precision_reason = "auto, as resolved when the run started (recorded in its checkpoint)"
            if self.precision == "fp16" and device.type != "cuda":
                raise ValueError(f"{self.resume_from} was trained with fp16 on a GPU; resume it on a GPU")
        else:
            self.precision, self.precision_reason = resolve_precision(tc.mixed_precision, device)
        # Sharding (train.fsdp) is the run config's choice, recorded in its checkpoints; a launcher's FSDP config
        # (accelerate launch --config_file with distributed_type FSDP) without it is refused rather than obeyed.
        fsdp_opts = dist_.fsdp_options(tc.fsdp)
        if fsdp_opts is None and dist_.launcher_wants_fsdp():
            raise ConfigError("the launcher asks for FSDP (ACCELERATE_USE_FSDP, an accelerate config with "
                              "distributed_type: FSDP) but the run's train.fsdp is {}: set train.fsdp.strategy="
                              "full_shard (the run config decides the sharding) or launch with a DDP config such as "
                              "configs/accelerate/1node_8gpu.yaml")
        # FSDP with one process has nothing to shard: the run trains (and checkpoints) unsharded
        self.fsdp = fsdp_opts is not None and PartialState().num_processes > 1
        if self.fsdp and tc.compile:
            raise ConfigError("train.compile with train.fsdp (several processes) is not supported yet; set "
                              "train.compile=false")
        # accelerate keeps one process-wide state that refuses a second, different precision; a run's
        # config is the authority, so reset it (the distributed PartialState is kept).
        AcceleratorState._reset_state(reset_partial_state=False)
        plugin = dist_.fsdp_plugin(fsdp_opts, self.precision) if self.fsdp else None
        if self.fsdp and tc.eval_every:
            raise ConfigError("train.eval_every with train.fsdp (several processes) is not supported yet: evaluate the "
                              "checkpoints with versadiff eval, or set train.eval_every=0")
        from accelerate.utils import ProjectConfiguration

        # the trackers' folder is set once the run folder is known (Trackers.start)
        log_with = [*self.tracker_names, *trackers]
        self.accelerator = acc = Accelerator(mixed_precision=self.precision, fsdp_plugin=plugin,
                                             log_with=log_with or None,
                                             project_config=ProjectConfiguration(project_dir=str(run_dir or runs_root)))
        self.trackers = Trackers(acc, [*self.tracker_names, *(t.name for t in trackers)])
        self.rank, self.world = acc.process_index, acc.num_processes

        # Everything that can reject the config is built before a run folder is created.
        self._seed_globals(_seed_for(tc.seed, self.rank))
        try:
            self.dataset = build_dataset(cfg.data, needs_text=_needs_text(cfg))
        except ValueError as e:  # say which section a reader's message is about
            if type(e) not in (ValueError, ConfigError) or "data" in str(e):
                raise
            raise ConfigError(f"config section 'data' ({cfg.data.get('name', '?')}): {' '.join(str(e).split())}") \
                from None
        # Streamed datasets (webdataset shards) have no length and no random access: each rank reads its own
        # shards, starts its next epoch on its own when they run out, and resumes at a shard boundary.
        self.streaming = isinstance(self.dataset, IterableDataset)
        if not self.streaming and len(self.dataset) < tc.batch_size * self.world:
            raise ValueError(f"the dataset has {len(self.dataset)} items, fewer than one batch "
                             f"({tc.batch_size} x {self.world} processes); lower train.batch_size")
        # model.num_classes: auto -> the data's classes (recorded in the saved config); a conflict is one line
        self.cfg = cfg = _resolve_num_classes(cfg, self.dataset, None if quiet or not acc.is_main_process else _note)

        torch.manual_seed(_seed_for(tc.seed, 0, 1))  # same initial weights on every process
        # the task (versadiff.tasks) builds the network and owns the losses, sample grids and task state
        self.task = build_task(cfg, self.dataset, acc.device, _seed_for(tc.seed, self.rank, 6))
        net = self.task.net
        if tc.gradient_checkpointing:
            net.set_gradient_checkpointing(True)
        # sampling copy, fp32; under FSDP kept in host memory (a whole network per GPU is what FSDP avoids)
        self.ema_net = copy.deepcopy(net).requires_grad_(False).eval()
        if self.fsdp:
            self.ema_net.cpu()
        groups, self.grad_mults = param_groups(net, tc.param_groups, tc.lr)
        # FSDP shards the parameters after this point (DTensors), which the fused kernel does not take
        optimizer = adamw(groups, lr=tc.lr, betas=tuple(tc.adam_betas), eps=tc.adam_eps,
                          weight_decay=tc.weight_decay, fused=False if self.fsdp else None)
        # The LR scheduler is stepped by hand once per optimizer step (accelerate would step it per process).
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_lambda(tc.warmup_steps))
        # self.net is the plain module (EMA, checkpoints, export); self.model the compiled/DDP-wrapped view
        # that shares its parameters and runs the training forward pass.
        self.net = net
        if self.fsdp:
            # accelerate's FSDP2 preparation shards `net` in place (its parameters become DTensors; the optimizer's
            # groups are remapped by name), so the gradient multipliers are looked up again on the sharded module.
            dist_.set_wrap(plugin, fsdp_opts, net)
            dist_.enable_fsdp(acc, plugin)
            self.model, self.optimizer = acc.prepare(net, optimizer)
            _, self.grad_mults = param_groups(net, tc.param_groups, tc.lr)
        else:
            self.model, self.optimizer = acc.prepare(torch.compile(net) if tc.compile else net, optimizer)
        self.ema = EMA(net, tc.ema_decay, tc.ema_warmup)  # after prepare: the shadow lives on the training device
        # One diffusion-noise stream per micro-batch slot (micro m of rank r is slot m * world + r, the slot of the
        # global batch it reads, see _loader): N processes x grad_accum A then draw the noise of 1 process x N*A.
        self.noise_gens = [torch.Generator(device=acc.device).manual_seed(
            _seed_for(tc.seed, m * self.world + self.rank, 2)) for m in range(tc.grad_accum)]
        self.noise_gen = self.noise_gens[0]
        self.step, self.epoch, self.position = 0, 0, 0
        self._seed_globals(_seed_for(tc.seed, self.rank, 3))
        self._check_sample_grid()  # the grid at the end must not be what fails a finished run
        # evaluation during training: metrics, reference and feature networks resolved now (a bad name, a missing
        # reference or weight file stops the run here, before its folder exists); building them draws no training RNG
        self.evaluator = self._build_evaluator() if tc.eval_every else None
        self.best: dict[str, Any] | None = None
        if self.fsdp and not acc.is_main_process:
            self.ema_net = None  # under FSDP only the main process samples and exports (host memory: 4 B/param)
        if self.resume_from is not None:
            self._load(self.resume_from)

        # Run folder: --out names it (a resumed run keeps its folder); otherwise a new numbered one. Nothing is
        # created before every check above passed (on every process).
        acc.wait_for_everyone()
        if run_dir is None:
            if acc.is_main_process:
                run_dir = new_run_dir(runs_root, cfg.name, self._desc())
            run_dir = Path(self._broadcast(str(run_dir) if run_dir else None))
        self.run_dir = run_dir
        self._stats_started = False
        if acc.is_main_process:
            if self._move_aside:
                moved = move_run_files_aside(run_dir)
                if not quiet:
                    _note(f"--force: moved the previous run files of {run_dir} to {moved}")
            for sub in RUN_SUBDIRS:
                (run_dir / sub).mkdir(parents=True, exist_ok=True)
            ck.clean_checkpoints(run_dir / "checkpoints")
            _clean_temporaries(run_dir)
            save_config(cfg, run_dir, header=f"train.mixed_precision: {tc.mixed_precision} -> resolved "
                                             f"{self.precision} ({self.precision_reason})")
            self._write_run_json()
        self.logger = StatsLogger(run_dir) if acc.is_main_process else None
        if self.logger is not None:
            self.logger.truncate_after(self.step)
            self.best = self._best_so_far()
        if self.evaluator is not None:  # reference statistics, computed at the first evaluation, kept for the next
            self.evaluator.cache_dir = run_dir / "eval_ref"
        self._start_trackers()
        if acc.is_main_process and not quiet:
            what = f"resuming {self.resume_from} at step {self.step}" if self.resume_from else "training"
            _note(f"{what} in {run_dir}: mixed precision {self.precision} ({self.precision_reason})")
            for key, old, new in self.changes:
                _note(f"resume changes {key}: {_short(old)} -> {_short(new)}")

    def _write_run_json(self) -> None:
        """run.json: the resolved precision and device, and every start / resume with the changes it allowed."""
        path = self.run_dir / "run.json"
        record: dict[str, Any] = {}
        if path.is_file() and self.resume_from is not None:
            try:
                record = json.loads(path.read_text())
            except ValueError:
                record = {}
        record.setdefault("run_id", os.urandom(6).hex())  # the trackers' run id (wandb resumes the same run)
        record.update({"format": "versadiff-run-1", "mixed_precision": self.cfg.train.mixed_precision,
                       "mixed_precision_resolved": self.precision, "mixed_precision_reason": self.precision_reason,
                       "device": str(self.accelerator.device), "num_processes": self.world,
                       "sharding": f"fsdp2 {self.cfg.train.fsdp.get('strategy', 'full_shard')}" if self.fsdp
                       else ("ddp" if self.world > 1 else "none")})
        record.setdefault("sessions", []).append({
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "from_step": self.step,
            "resumed_from": str(self.resume_from) if self.resume_from else None,
            "changed": {k: [old, new] for k, old, new in self.changes}, "mixed_precision_resolved": self.precision})
        from versadiff.weights import write_bytes_durable

        write_bytes_durable(path, (json.dumps(record, indent=2) + "\n").encode())

    def _check_sample_grid(self) -> None:
        """Check the training-time sample grid's generate() call (the run's `sample` section against this model:
        sampler, steps, guidance on an unconditional model, ...) without sampling anything."""
        real = self.task.loaded

        def request_only(*args: Any, **kw: Any) -> Any:
            model = real(*args, **kw)
            if not hasattr(model, "request"):  # e.g. an autoencoder: its grid is a reconstruction, nothing to check
                raise _SampleGridChecked
            return _RequestOnly(model)

        self.task.loaded = request_only
        try:
            with torch.random.fork_rng(devices=[]):
                self.task.sample_grid(self.ema_net, self.info, "")
        except _SampleGridChecked:
            pass
        except ValueError as e:
            text = " ".join(str(e).split()).replace("set guidance to 0", "set sample.guidance=0")
            raise ConfigError(f"the training-time sample grid (config section 'sample') would fail at the end of the "
                              f"run: {text}") from None
        finally:
            del self.task.loaded

    def _build_evaluator(self) -> Any:
        """The run's TrainingEvaluator, its sampling request checked against the EMA model; a bad setting is one
        ConfigError line. Built under an RNG guard: constructing feature networks must not move the training RNGs."""
        from versadiff.eval.training import TrainingEvaluator

        cfg = self.cfg
        with _rng_guard(self.accelerator.device):
            try:
                ev = TrainingEvaluator(cfg, self.info, self.accelerator.device)
                model = self.task.loaded(self.ema_net, self.info, "")
                if not hasattr(model, "request"):
                    raise ConfigError(f"train.eval_every: task {cfg.task!r} makes no samples to evaluate (its "
                                      "checkpoints are scored otherwise); set train.eval_every=0")
                ev.check(model)
            except ConfigError:
                raise
            except (ValueError, FileNotFoundError) as e:  # a bad name, a missing reference or weight file
                text = " ".join(str(e).split())
                for flag, key in _EVAL_FLAGS:  # the messages of `versadiff eval` name its options; a run has keys
                    text = text.replace(flag, key)
                if not text.startswith("train.eval"):
                    text = f"train.eval_every: the evaluation would fail: {text}"
                raise ConfigError(text) from None
        return ev

    def _best_so_far(self) -> dict[str, Any] | None:
        """The best evaluation in stats.jsonl (already cut at the resumed step): {metric, value, step}."""
        ev = self.evaluator
        if ev is None or ev.best is None:
            return None
        best = None
        for entry in read_stats(self.run_dir / "stats.jsonl"):
            v = entry.get(f"eval/{ev.best}")
            if isinstance(v, (int, float)) and ev.better(float(v), None if best is None else best["value"]):
                best = {"metric": ev.best, "value": float(v), "step": int(entry["step"])}
        return best

    def _start_trackers(self) -> None:
        """accelerate's trackers, in the run folder, with the run config as hyper-parameters; a resumed run's
        TensorBoard drops the events after its checkpoint (they are logged again)."""
        tc = self.cfg.train
        defaults: dict[str, dict[str, Any]] = {}
        if self.resume_from is not None:
            defaults["tensorboard"] = {"purge_step": self.step + 1}
        run_id = ""
        if self.accelerator.is_main_process:
            try:
                run_id = str(json.loads((self.run_dir / "run.json").read_text()).get("run_id", ""))
            except (OSError, ValueError):
                run_id = ""
        user = {k: dict(v or {}) for k, v in dict(tc.log_kwargs).items()}
        kwargs = {n: {**defaults.get(n, {}), **user.get(n, {})} for n in {*defaults, *user}}
        self.trackers.start(self.run_dir, self.cfg.name, self.cfg.to_dict(), run_id or self.run_dir.name, kwargs)

    # -- setup helpers -------------------------------------------------------------------------

    def _desc(self) -> str:
        tc = self.cfg.train
        model = self.cfg.model.get("preset") or self.cfg.model.get("type") or "net"
        precision = "fp32" if self.precision == "no" else self.precision
        return f"{model}-bs{tc.batch_size * tc.grad_accum * self.world}-{precision}"

    def _broadcast(self, value: Any) -> Any:
        if self.world == 1:
            return value
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([value])[0]

    @staticmethod
    def _seed_globals(seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)

    @property
    def image_shape(self) -> tuple[int, ...]:
        return self.task.image_shape

    @property
    def info(self) -> dict[str, Any]:
        """Model facts stored next to the config in every weight file."""
        return {**self.task.info(), "step": self.step, "format": "versadiff-weights-1", "task": self.cfg.task,
                "mixed_precision": self.precision}

    def _metadata(self) -> dict[str, str]:
        return {CONFIG_KEY: json.dumps(self.cfg.to_dict()), INFO_KEY: json.dumps(self.info)}

    # -- data ----------------------------------------------------------------------------------

    def _loader(self, epoch: int, start: int) -> DataLoader:
        """This process's batches of `epoch`, skipping the first `start` (already consumed)."""
        tc = self.cfg.train
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        g = torch.Generator().manual_seed(_seed_for(tc.seed, epoch, 4))
        order = torch.randperm(len(self.dataset), generator=g)
        # The epoch's permutation cut in batches; batch j of this rank is the epoch's batch j * world + rank, so the
        # global batches do not depend on how they are spread over processes and micro-batches. The ragged tail
        # is dropped so that every process steps alike.
        n_batches = len(order) // tc.batch_size // self.world
        order = order[: n_batches * self.world * tc.batch_size].view(n_batches, self.world, tc.batch_size)
        indices = order[start:, self.rank].reshape(-1).tolist()
        # The loader draws its workers' base seed from `generator`; without one it would draw from the global
        # RNG at a point that differs between an uninterrupted and a resumed run.
        workers_gen = torch.Generator().manual_seed(_seed_for(tc.seed, epoch, self.rank, 5))
        return DataLoader(self.dataset, batch_size=tc.batch_size, sampler=indices, num_workers=tc.num_workers,
                          drop_last=True, pin_memory=self.accelerator.device.type != "cpu", generator=workers_gen)

    def _stream_loader(self, epoch: int) -> DataLoader:
        """This process's batches of a streamed dataset for `epoch` (it splits shards across ranks itself)."""
        tc = self.cfg.train
        self.dataset.set_epoch(epoch)
        self.dataset.check_workers(tc.num_workers)
        workers_gen = torch.Generator().manual_seed(_seed_for(tc.seed, epoch, self.rank, 5))
        return DataLoader(self.dataset, batch_size=tc.batch_size, num_workers=tc.num_workers, drop_last=True,
                          pin_memory=self.accelerator.device.type != "cpu", generator=workers_gen)

    def _batches(self) -> Iterator[dict[str, Any]]:
        """Endless stream of batches; self.epoch / self.position always say what was consumed."""
        if self.streaming:
            from versadiff.data import check_epoch

            while True:
                n = 0
                for batch in self._stream_loader(self.epoch):
                    self.dataset.track(batch)  # shard-boundary resume state
                    self.position, n = self.position + 1, n + 1
                    yield batch
                check_epoch(self.dataset, n, self.cfg.train.batch_size)  # a pass with no batch would loop forever
                self.epoch, self.position = self.epoch + 1, 0
        while True:
            for batch in self._loader(self.epoch, self.position):
                self.position += 1
                yield batch
            self.epoch, self.position = self.epoch + 1, 0

    # -- the loop ------------------------------------------------------------------------------

    def run(self, until: int | None = None) -> Path:
        """Train to `train.max_steps` then export; with `until`, stop at that step without exporting
        (as if the run had been killed there). Returns the run folder."""
        tc, acc = self.cfg.train, self.accelerator
        stop = tc.max_steps if until is None else min(until, tc.max_steps)
        self.model.train()
        batches = self._batches()
        bar = self._progress(stop)
        # without a terminal (nohup, Slurm, CI) a plain line every log_every steps instead of a progress bar
        console = bar is None and not self.quiet and acc.is_main_process
        # throughput counts training-step time only (not sampling or checkpoint writes)
        window_loss, window_n, busy, imgs = 0.0, 0, 0.0, 0
        while self.step < stop:
            t0 = time.perf_counter()
            loss, grad_norm = self._train_step(batches)
            busy += time.perf_counter() - t0
            self.step += 1
            window_loss, window_n = window_loss + loss, window_n + 1
            imgs += tc.batch_size * tc.grad_accum * self.world
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}")
            if self.step % tc.log_every == 0 or self.step == stop:
                stats = {"loss": window_loss / window_n, "lr": self.scheduler.get_last_lr()[0],
                         "grad_norm": grad_norm, "img_per_s": imgs / max(busy, 1e-9), "epoch": self.epoch,
                         **self.task.log_stats(), **self._data_stats()}
                if not self._stats_started:  # the first line of every (re)start says how it computes
                    stats["mixed_precision_resolved"] = self.precision
                    self._stats_started = True
                self._log(stats)
                if console:
                    sys.stderr.write(f"{self.cfg.name} step {self.step}/{stop} loss {stats['loss']:.4f} "
                                     f"lr {stats['lr']:.3g} grad_norm {grad_norm:.3g} "
                                     f"{stats['img_per_s']:.1f} img/s\n")
                    sys.stderr.flush()
                window_loss, window_n, busy, imgs = 0.0, 0, 0.0, 0
            if tc.sample_every and self.step % tc.sample_every == 0:
                self.save_samples()
            # before the checkpoint of the same step: a checkpoint at step N means its evaluation is recorded
            if self.evaluator is not None and self.step % tc.eval_every == 0:
                self.evaluate()
            if tc.checkpoint_every and self.step % tc.checkpoint_every == 0:
                self.save_checkpoint()
        if bar is not None:
            bar.close()
        if until is None or stop == tc.max_steps:
            if self.evaluator is not None and self.step % tc.eval_every != 0:
                self.evaluate()  # the final weights are always evaluated
            if not (tc.checkpoint_every and self.step % tc.checkpoint_every == 0):
                self.save_checkpoint()
            if not (tc.sample_every and self.step % tc.sample_every == 0):
                self.save_samples()
            self.export()
        self._close_records()
        acc.wait_for_everyone()
        return self.run_dir

    def _close_records(self) -> None:
        if self.logger is not None:
            self.logger.close()
        self.trackers.finish()

    def _train_step(self, batches: Iterator[dict[str, Any]]) -> tuple[float, float]:
        tc, acc = self.cfg.train, self.accelerator
        total = 0.0
        self.task.begin_step(self.step)
        for micro in range(tc.grad_accum):
            batch = next(batches)
            last = micro == tc.grad_accum - 1
            sync = contextlib.nullcontext() if last or self.world == 1 else acc.no_sync(self.model)
            with sync, acc.autocast():
                losses = self.task.losses(self.model, batch, self.noise_gens[micro])
                loss = losses.float().mean() / tc.grad_accum
            acc.backward(loss)
            total += loss.detach()
        for params, mult in self.grad_mults:  # per-group gradient multipliers (VD), before clipping
            for p in params:
                if p.grad is not None:
                    p.grad.mul_(mult)
        max_norm = tc.grad_clip if tc.grad_clip else math.inf
        grad_norm = acc.clip_grad_norm_(self.model.parameters(), max_norm)
        if dist_.is_dtensor(grad_norm):  # FSDP: the global norm, replicated
            grad_norm = grad_norm.full_tensor()
        # a NaN/inf loss or gradient stops the run before the update (fp16's scaler skips inf steps itself)
        loss_value, norm_value = float(total), float(grad_norm)
        if not math.isfinite(loss_value) or (acc.scaler is None and not math.isfinite(norm_value)):
            self._diverged(loss_value, norm_value)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.update(self.net)
        total = acc.reduce(total.reshape(1), reduction="mean") if self.world > 1 else total
        return float(total), float(grad_norm)

    def _diverged(self, loss: float, grad_norm: float) -> None:
        last = ck.latest_checkpoint(self.run_dir / "checkpoints")
        self._close_records()
        where = (f"the last checkpoint {last} (step {int(last.name.split('-')[1])}) is good: continue from it with "
                 "--resume --allow-change train.lr --set train.lr=... (lower)" if last is not None else
                 "no checkpoint was written yet: lower train.lr (or set train.grad_clip) and start over with --force")
        raise TrainingDivergedError(f"training diverged at step {self.step + 1}: loss {loss}, gradient norm "
                                    f"{grad_norm}; stopped before applying it. {where}")

    def _progress(self, stop: int):
        if self.quiet or not self.accelerator.is_main_process or not sys.stderr.isatty():
            return None
        from tqdm.auto import tqdm

        return tqdm(total=stop, initial=self.step, desc=self.cfg.name, unit="it", dynamic_ncols=True)

    def _data_stats(self) -> dict[str, int]:
        """Samples the dataset skipped or replaced (corrupt, filtered), so bad data is visible in the log."""
        stats = getattr(self.dataset, "stats", None)
        return {"data_skipped": sum(v for k, v in stats.items() if k != "samples")} if stats else {}

    def _log(self, stats: dict[str, Any]) -> None:
        """stats.jsonl (everything) and the trackers (the numbers)."""
        if self.logger is not None:
            self.logger.log(self.step, stats)
        self.trackers.log(stats, self.step)

    # -- outputs -------------------------------------------------------------------------------

    def _ema_to_net(self) -> dict[str, torch.Tensor] | None:
        """Load the EMA into the sampling copy (main process) and return the full EMA tensors there (None on the
        other processes). Under FSDP every process must call it: the sharded EMA is gathered."""
        if self.fsdp:
            full = dist_.gather_full(self.ema.state_dict(), self.accelerator.is_main_process)
            if full is not None:
                self.ema_net.load_state_dict(full)
            return full
        self.ema.copy_to(self.ema_net)
        return self.ema.state_dict() if self.accelerator.is_main_process else None

    def loaded_ema(self) -> Any:
        """The EMA weights as a loaded model with `generate` (the autoencoder itself for task autoencoder).
        Under FSDP: a collective call, with the model on the main process only (None elsewhere)."""
        self._ema_to_net()
        if self.fsdp and not self.accelerator.is_main_process:
            return None
        return self.task.loaded(self.ema_net, self.info, str(self.run_dir))

    def save_samples(self) -> Path | None:
        """A grid from the EMA weights with fixed seeds, run_dir/samples/step-N.png (main process)."""
        if self.fsdp:
            self._ema_to_net()  # collective
        if not self.accelerator.is_main_process:
            return None
        if not self.fsdp:
            self.ema.copy_to(self.ema_net)
        # Sampling must not disturb the training RNG streams (runs with other sample_every stay identical).
        with torch.random.fork_rng(devices=[]):
            grid = self.task.sample_grid(self.ema_net, self.info, str(self.run_dir))
        if self.fsdp:
            self.ema_net.cpu()  # the sampling copy goes back to host memory
        if grid is None:
            return None
        from versadiff.tasks.base import SampleGrid

        images, nrow, prompts = SampleGrid(*grid)
        mosaic = make_grid(images, nrow, labels=self._grid_labels(len(images), prompts))
        path = _save_png(mosaic, self.run_dir / "samples" / f"step-{self.step:08d}.png")
        self.trackers.log_image("samples", mosaic if mosaic.shape[-1] == 3 else mosaic.repeat(3, axis=-1),
                                self.step, path)
        return path

    def _grid_labels(self, n: int, prompts: list[str] | None = None) -> list[str] | None:
        """The training grid's captions (sample.labels): the prompt of each image when the task gives them, else
        the class of each column of a class-conditional grid, whose sample i is of class i mod num_classes."""
        if prompts is not None and self.cfg.sample.labels and len(prompts) == n:
            return [str(p) for p in prompts]
        k = int(self.info.get("num_classes", 0) or 0)
        flows = getattr(self.task, "flows", None) or []
        image_flow = next((f for f in flows if f.flow.data == "image"), None)
        if not self.cfg.sample.labels or not k or image_flow is None or image_flow.flow.context != "class" \
                or n != self.cfg.sample.n:
            return None
        names = list(self.info.get("class_names") or [])
        return [names[i % k] if i % k < len(names) else f"class {i % k}" for i in range(n)]

    # -- evaluation ----------------------------------------------------------------------------

    def evaluate(self) -> dict[str, float] | None:
        """Score the EMA weights with the run's evaluation (train.eval_*): the same N seeds every time, results
        in stats.jsonl as eval/<name> and to the trackers; a new best replaces RUN/best/. Every process calls it
        (the samples are split over them); the training RNG streams are left as they were."""
        ev = self.evaluator
        if ev is None:
            return None
        t0 = time.perf_counter()
        with _rng_guard(self.accelerator.device), torch.no_grad():
            results = ev(self.loaded_ema())
        stats: dict[str, Any] = {f"eval/{k}": v for k, v in results.items()}
        stats.update(eval_n=ev.n, eval_seconds=round(time.perf_counter() - t0, 3))
        self._log(stats)
        if self.accelerator.is_main_process and ev.best is not None:
            value = results.get(ev.best)
            if value is not None and ev.better(float(value), None if self.best is None else self.best["value"]):
                self._save_best(float(value), results)
            if not self.quiet:
                what = ", ".join(f"{k} {v:.4g}" for k, v in results.items() if not k.endswith("_std"))
                tail = f" (best {self.best['value']:.4g} at step {self.best['step']})" if self.best else ""
                _note(f"step {self.step} evaluation on {ev.n} samples: {what}{tail}")
        self.accelerator.wait_for_everyone()
        return results

    def _save_best(self, value: float, results: dict[str, float]) -> Path:
        """RUN/best/: the EMA weights (loadable like an export: versadiff sample RUN/best/model.safetensors) and
        best.json, written to a temporary folder and renamed over the previous best."""
        ev = self.evaluator
        record = {"metric": ev.best, "mode": ev.mode, "value": value, "step": self.step, "metrics": results,
                  "eval_n": ev.n, "eval_seed": ev.seed, "metrics_requested": list(ev.metrics)}
        tensors, meta = self.ema.state_dict(), self._metadata()

        def write(tmp: Path) -> None:
            ck.save_tensors(tmp / "model.safetensors", tensors, meta)
            self.task.export_files(self.ema_net, tmp)  # what an export holds beside the weights (e.g. encoders)
            (tmp / "best.json").write_text(json.dumps(record, indent=2) + "\n")

        path = ck.write_atomic_dir(self.run_dir / "best", write)
        self.best = {"metric": ev.best, "value": value, "step": self.step}
        return path

    def plot(self) -> list[Path]:
        """Redraw RUN/loss.png (and eval.png when the run evaluates) from stats.jsonl (main process)."""
        if not self.accelerator.is_main_process:
            return []
        try:
            return plot_run(self.run_dir, self.best)
        except Exception as e:  # a picture must never be what stops a run
            _note(f"warning: could not draw loss.png ({type(e).__name__}: {e})")
            return []

    def _rng_states(self) -> list[dict[str, Any]]:
        """Every process's RNG, task and data states (gathered on all processes)."""
        rng = {"torch": torch.get_rng_state(), "noise": self.noise_gens[0].get_state(),
               "noise_micro": [g.get_state() for g in self.noise_gens],
               "numpy": _numpy_state(), "python": _python_state(),
               "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
               "task": self.task.state_dict(),  # per process, like the RNG states
               "data": self.dataset.state_dict() if self.streaming else {}}
        if self.world > 1:
            from accelerate.utils import gather_object

            return gather_object([rng])
        return [rng]

    def _state_json(self) -> dict[str, Any]:
        state = {"step": self.step, "epoch": self.epoch, "position": self.position,
                 "ema_updates": self.ema.num_updates, "world_size": self.world}
        if self.fsdp:
            state["sharded"] = dist_.SHARDED
        return state

    def _diverged_weights(self, tensors: dict[str, torch.Tensor]) -> str | None:
        return next((k for k, v in tensors.items()
                     if v.is_floating_point() and not torch.isfinite(dist_.local(v)).all()), None)

    def save_checkpoint(self) -> Path | None:
        """Write checkpoints/step-N atomically and prune to keep_last (RNG states of all processes)."""
        if self.fsdp:
            return self._save_sharded()
        acc = self.accelerator
        rngs = self._rng_states()
        path = None
        if acc.is_main_process:
            net = self.net
            for what, tensors in (("network", net.state_dict()), ("EMA", self.ema.state_dict())):
                bad = self._diverged_weights(tensors)
                if bad is not None:
                    raise TrainingDivergedError(f"the {what} weights hold NaN/inf ({bad}) at step {self.step}; no "
                                                "checkpoint written, the last one on disk is the last good one")
            meta = self._metadata()
            state = self._state_json()

            def write(tmp: Path) -> None:
                ck.save_tensors(tmp / "model.safetensors", net.state_dict(), meta)
                ck.save_tensors(tmp / "ema.safetensors", self.ema.state_dict(), meta)
                ck.save_torch(tmp / "optimizer.pt", self.optimizer.state_dict())
                ck.save_torch(tmp / "scheduler.pt", self.scheduler.state_dict())
                if acc.scaler is not None:
                    ck.save_torch(tmp / "scaler.pt", acc.scaler.state_dict())
                ck.save_torch(tmp / "rng.pt", rngs)
                (tmp / "state.json").write_text(json.dumps(state, indent=2) + "\n")

            path = ck.write_atomic_dir(self.run_dir / "checkpoints" / ck.checkpoint_name(self.step), write)
            ck.prune_checkpoints(self.run_dir / "checkpoints", self.cfg.train.keep_last)
            self.plot()
        acc.wait_for_everyone()
        return path

    def _save_sharded(self) -> Path | None:
        """The FSDP checkpoint (versadiff.train.distributed): every process writes its model and optimizer shards
        into one temporary folder and hashes them; the main process adds the consolidated EMA and the shared
        files, writes the manifest with every hash and renames the folder into place."""
        from accelerate.utils import gather_object

        acc, main = self.accelerator, self.accelerator.is_main_process
        net_state, ema_state = self.net.state_dict(), self.ema.state_dict()
        bad = self._diverged_weights(net_state) or self._diverged_weights(ema_state)
        if dist_.any_rank(bad is not None, acc.device):
            raise TrainingDivergedError(f"the network or EMA weights hold NaN/inf ({bad or 'on another process'}) at "
                                        f"step {self.step}; no checkpoint written, the last one on disk is the last "
                                        "good one")
        rngs = self._rng_states()
        ema_full = dist_.gather_full(ema_state, main)
        final = self.run_dir / "checkpoints" / ck.checkpoint_name(self.step)
        tmp = Path(self._broadcast(str(ck.new_tmp_dir(final)) if main else None))
        meta = self._metadata()
        mine = [dist_.shard_name("model", self.rank, self.world), dist_.shard_name("optimizer", self.rank, self.world)]
        try:
            ck.save_tensors(tmp / mine[0], {k: dist_.local(v) for k, v in net_state.items()},
                            {**meta, dist_.SHARD_META_KEY: json.dumps(dist_.shard_meta(net_state))})
            ck.save_torch(tmp / mine[1], dist_.optimizer_state_local(self.optimizer))
            result: dict[str, Any] = {"files": ck.hash_files(tmp, mine)}
        except OSError as e:
            result = {"error": f"{type(e).__name__}: {e}"}
        results = gather_object([result])
        failed = next((r["error"] for r in results if "error" in r), None)
        path = None
        if main:
            try:
                if failed is not None:
                    raise CheckpointError(f"a process could not write its checkpoint shard ({failed}); no checkpoint "
                                          "written, the last one on disk is the last good one")
                ck.save_tensors(tmp / "ema.safetensors", ema_full, meta)
                ck.save_torch(tmp / "scheduler.pt", self.scheduler.state_dict())
                if acc.scaler is not None:
                    ck.save_torch(tmp / "scaler.pt", acc.scaler.state_dict())
                ck.save_torch(tmp / "rng.pt", rngs)
                (tmp / "state.json").write_text(json.dumps(self._state_json(), indent=2) + "\n")
                known = {n: rec for r in results for n, rec in r["files"].items()}
                path = ck.commit_dir(tmp, final, known)
            except BaseException:
                import shutil

                shutil.rmtree(tmp, ignore_errors=True)
                raise
            ck.prune_checkpoints(self.run_dir / "checkpoints", self.cfg.train.keep_last)
            self.plot()
        elif failed is not None:
            raise CheckpointError(f"a process could not write its checkpoint shard ({failed})")
        acc.wait_for_everyone()
        return path

    def _load(self, path: Path) -> None:
        acc = self.accelerator
        state = ck.read_json(path / "state.json")
        _check_world(path, self.world, state)
        sharded = bool(state.get("sharded"))
        if sharded != self.fsdp:
            how = "sharded (train.fsdp with several processes)" if sharded else "unsharded"
            raise ValueError(f"{path} was written {how}; resume it with the sharding it was trained with")
        net = self.net
        try:
            if sharded:
                shard = path / dist_.shard_name("model", self.rank, self.world)
                dist_.load_local_(net.state_dict(), ck.load_tensors(shard), str(shard))
            else:
                net.load_state_dict(ck.load_tensors(path / "model.safetensors"))
        except (RuntimeError, ValueError) as e:  # torch lists every mismatch over many lines; keep the first
            first = str(e).strip().splitlines()[-1].strip() if str(e).strip() else type(e).__name__
            raise ValueError(f"{path} does not fit this config's network ({first}); "
                             "resume with the config the run was started with") from None
        try:
            if sharded:  # each process reads its rows of the consolidated EMA
                dist_.load_rows_(self.ema.shadow, path / "ema.safetensors")
                self.ema.num_updates = int(state["ema_updates"])
            else:
                self.ema.load_state_dict(ck.load_tensors(path / "ema.safetensors"), state["ema_updates"])
        except (KeyError, RuntimeError, ValueError) as e:
            raise CheckpointError(f"{path}: EMA state does not load ({type(e).__name__}: {e}); use an earlier "
                                  "checkpoint") from None
        try:
            if sharded:
                opt = ck.load_torch(path / dist_.shard_name("optimizer", self.rank, self.world))
                self.optimizer.load_state_dict(dist_.optimizer_state_from_local(self.optimizer, opt))
            else:
                self.optimizer.load_state_dict(ck.load_torch(path / "optimizer.pt"))
            self.scheduler.load_state_dict(ck.load_torch(path / "scheduler.pt"))
        except (KeyError, ValueError, RuntimeError) as e:
            if isinstance(e, CheckpointError):
                raise
            raise CheckpointError(f"{path}: the optimizer state does not fit this run's parameters ({type(e).__name__}: "
                                  f"{' '.join(str(e).split())[:100]}); resume with the config the run was started "
                                  "with") from None
        if acc.scaler is not None and (path / "scaler.pt").exists():
            acc.scaler.load_state_dict(ck.load_torch(path / "scaler.pt"))
        rngs = ck.load_torch(path / "rng.pt")
        rng = rngs[self.rank]
        torch.set_rng_state(rng["torch"])
        micro = rng.get("noise_micro")
        if micro is not None and len(micro) == len(self.noise_gens):
            for g, st in zip(self.noise_gens, micro):
                g.set_state(st)
        else:  # written before one stream per micro-batch slot
            self.noise_gens[0].set_state(rng["noise"])
        np.random.set_state(_numpy_from(rng["numpy"]))
        random.setstate(_python_from(rng["python"]))
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        self.task.load_state_dict(rng.get("task", {}))
        self.step, self.epoch, self.position = state["step"], state["epoch"], state["position"]
        if self.streaming and rng.get("data"):
            # a streamed run restarts at the last shard that every rank had fully consumed (partly read shards are
            # read again); all ranks must restart from the same prefix, or they would split the shards differently
            data = _merge_data_states([r["data"] for r in rngs if r.get("data")])
            self.dataset.load_state_dict(data)
            self.epoch, self.position = int(data["epoch"]), 0

    def export(self, path: str | Path | None = None) -> Path | None:
        """EMA-only weights with the config in the metadata: run_dir/export/model.safetensors."""
        full = self._ema_to_net()  # collective under FSDP
        if not self.accelerator.is_main_process:
            return None
        path = Path(path) if path is not None else self.run_dir / "export" / "model.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        ck.save_tensors(path, full, self._metadata())  # temporary sibling, fsync, rename
        self.task.export_files(self.ema_net, path.parent)  # e.g. a CLIP pair's transformers folder
        return path


def _num_classes_as_recorded(cfg: RunConfig, recorded: RunConfig) -> RunConfig:
    """A resumed run's `model.num_classes: auto` is what its checkpoint resolved it to (so the configs compare)."""
    if cfg.model.get("num_classes") == "auto" and "num_classes" in recorded.model:
        import dataclasses

        return dataclasses.replace(cfg, model={**cfg.model, "num_classes": recorded.model["num_classes"]})
    return cfg


def _resolve_num_classes(cfg: RunConfig, dataset: Any, note: Any = None) -> RunConfig:
    """`model.num_classes: auto` becomes the number of classes of the data (0: unconditional); a number that
    conflicts with the data is a one-line ConfigError naming both."""
    import dataclasses

    nc = cfg.model.get("num_classes")
    k = int(getattr(dataset, "num_classes", 0) or 0)
    data = cfg.data.get("name", "?")
    if nc == "auto":
        if note is not None:
            note(f"model.num_classes=auto: {k} classes from the data ({data})" if k else
                 f"model.num_classes=auto: the data ({data}) has no classes; training an unconditional model")
        return dataclasses.replace(cfg, model={**cfg.model, "num_classes": k})
    if nc is None:
        return cfg
    if isinstance(nc, bool) or not isinstance(nc, int) or nc < 0:
        raise ConfigError(f"config key 'model.num_classes' must be an integer >= 0 or auto (the data's classes), "
                          f"got {nc!r}")
    if nc and nc != k:
        have = f"{k} classes" if k else "no classes"
        fix = f"set model.num_classes={k}" if k else "set model.num_classes=0 (unconditional) or use data with classes"
        raise ConfigError(f"model.num_classes is {nc} but the dataset has {have} (data.name {data}); {fix}, or "
                          "model.num_classes=auto to take it from the data")
    return cfg


def _check_world(path: Path, world: int, state: dict[str, Any] | None = None) -> None:
    """A checkpoint resumes with the number of processes that wrote it (per-process RNG streams, data split,
    optimizer shards); one line otherwise."""
    state = ck.read_json(path / "state.json") if state is None else state
    written = int(state.get("world_size", 1))
    if written != world:
        raise ValueError(f"{path} was written by {written} processes, this run has {world}; resume with the same "
                         f"number of processes (e.g. torchrun --nproc_per_node {written})")


def _merge_data_states(states: list[dict[str, int]]) -> dict[str, int]:
    """The shard position every rank restarts from: the earliest epoch any rank is in, and the shortest prefix
    of its shard order that the ranks in that epoch have fully consumed."""
    epoch = min(int(s["epoch"]) for s in states)
    return {"epoch": epoch, "shards_done": min(int(s["shards_done"]) for s in states if int(s["epoch"]) == epoch)}


def _numpy_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached": float(cached)}


def _numpy_from(d: dict[str, Any]) -> tuple:
    return (d["name"], d["keys"].numpy().astype(np.uint32), d["pos"], d["has_gauss"], d["cached"])


def _python_state() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _python_from(s: list) -> tuple:
    return (s[0], tuple(s[1]), s[2])


def export_path(out: str | Path) -> Path:
    """Where `export --out NAME` writes: NAME, with .safetensors added when it has no extension."""
    out = Path(out)
    if not out.suffix:
        out = out.with_name(out.name + ".safetensors")
    if out.suffix != ".safetensors":
        raise ValueError(f"--out {out}: exported weights are a .safetensors file; give a name ending in "
                         ".safetensors (or none: it is added)")
    return out


def export_weights(source: str | Path, out: str | Path, *, force: bool = False) -> Path:
    """Write an EMA-only inference file from a checkpoint directory or run folder (on demand).

    `out` gets .safetensors when it has no extension; an existing `out` is refused, with `force` replaced only
    when it is a versadiff weight file (anything else is never overwritten), and never when it is the source."""
    from versadiff.weights import is_versadiff_weights, read_raw_metadata, resolve_weights, verify_weights

    out = export_path(out)
    weights = resolve_weights(source)
    if out.exists():
        if out.is_dir():
            raise OutputExistsError(f"--out {out} is a folder; give a file name ending in .safetensors")
        if out.resolve() == weights.resolve():
            raise OutputExistsError(f"--out {out} is the file being exported; choose another name")
        if not force:
            raise OutputExistsError(f"--out {out} exists; choose another name, or add --force to replace it "
                                    "(only a versadiff weight file is ever replaced)")
        if not is_versadiff_weights(out):
            raise OutputExistsError(f"--out {out} exists and is not a versadiff weight file; refusing to replace it "
                                    "even with --force")
    parent = out.parent if str(out.parent) else Path(".")
    if parent.exists() and not parent.is_dir():
        raise OutputExistsError(f"--out {out}: {parent} is a file, not a folder")
    meta = read_raw_metadata(weights)
    if CONFIG_KEY not in meta:
        raise ValueError(f"{weights} is not a versadiff checkpoint (no '{CONFIG_KEY}' in its metadata)")
    verify_weights(weights)
    tensors = ck.load_tensors(weights)
    out.parent.mkdir(parents=True, exist_ok=True)
    ck.save_tensors(out, tensors, meta)
    return out


def train(cfg: RunConfig | None, *, out: str | Path | None = None, runs_root: str | Path = "runs",
          resume: str | bool | None = None, quiet: bool = False, force: bool = False,
          allow_change: list[str] | tuple[str, ...] = (), trackers: Sequence[Any] = ()) -> Path:
    """Train a run to completion; returns its folder."""
    return Trainer(cfg, out=out, runs_root=runs_root, resume=resume, quiet=quiet, force=force,
                   allow_change=allow_change, trackers=trackers).run()


def _clean_temporaries(run_dir: Path) -> None:
    """Remove the hidden temporaries a killed write left next to the run's own files (.config.yaml.tmp-PID, ...)."""
    for folder, names in ((run_dir, ("config.yaml", "config.json", "stats.jsonl", "run.json", "loss.png", "eval.png")),
                          (run_dir / "export", ("model.safetensors",))):
        for name in names:
            for stale in folder.glob(f".{name}.tmp-*"):
                if stale.is_file():
                    stale.unlink(missing_ok=True)


#: `versadiff eval` options named in the evaluation's messages -> the run config keys that set them
_EVAL_FLAGS = (("pass --clip DIR", "set train.eval_options.clip_model=DIR"),
               ("with --inception PATH", "in train.eval_options.inception_weights"),
               ("with --fmnist-input", "with train.eval_options.fmnist_input"))


@contextlib.contextmanager
def _rng_guard(device: Any) -> Iterator[None]:
    """Run a block without moving the training RNG streams: torch (CPU and this CUDA device), numpy, random."""
    py, npy = random.getstate(), np.random.get_state()
    devices = [device] if getattr(device, "type", str(device)) == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)


def _save_png(mosaic: np.ndarray, path: Path) -> Path:
    """A uint8 [H, W, C] mosaic as a PNG."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mosaic[..., 0] if mosaic.shape[-1] == 1 else mosaic).save(path)
    return path


def _note(message: str) -> None:
    sys.stderr.write(f"versadiff: {message}\n")
    sys.stderr.flush()


def _check_resume_config(old: RunConfig, new: RunConfig, checkpoint: Path,
                         allow_change: list[str] | tuple[str, ...]) -> list[tuple[str, Any, Any]]:
    """The allowed differences between a checkpoint's config and the one given; a one-line ConfigError listing
    the keys that differ when any is not allowed."""
    changes = config_diff(old, new)
    refused = [(k, a, b) for k, a, b in changes if not key_allowed(k, list(allow_change) + list(RESUME_HARMLESS))]
    if refused:
        listed = "; ".join(f"{k}: {_short(a)} -> {_short(b)}" for k, a, b in refused[:6])
        more = f" (and {len(refused) - 6} more)" if len(refused) > 6 else ""
        keys = " ".join(f"--allow-change {k}" for k, _, _ in refused[:3])
        raise ConfigError(f"--resume: the config differs from the one {checkpoint} was trained with: {listed}{more}; "
                          f"resume without CONFIG/--set to use the run's own config, or allow it with {keys}")
    return changes


def _check_out_dir(run_dir: Path, resuming_here: bool, force: bool) -> bool:
    """Check a run folder before any work. Returns whether --force must move an earlier run's files aside."""
    if run_dir.exists() and not run_dir.is_dir():
        raise OutputExistsError(f"--out {run_dir} is a file; give a folder for the run (new or empty)")
    anc = run_dir
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if anc.exists() and not anc.is_dir():
        raise OutputExistsError(f"--out {run_dir}: {anc} is a file, not a folder")
    if anc.exists() and not os.access(anc, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, "cannot create or write the run folder here (no write permission)",
                              str(anc))
    if resuming_here or not run_dir.is_dir():
        return False
    entries = sorted(p.name for p in run_dir.iterdir())
    if not entries:
        return False
    if not force:
        ours = [e for e in entries if e in RUN_FILES]
        what = "an earlier run (" + ", ".join(ours[:4]) + ")" if ours else f"{len(entries)} other entries"
        raise OutputExistsError(f"--out {run_dir} is not empty: it holds {what}; continue that run with --resume, "
                                "choose a new folder, or add --force to start over there (its run files are moved "
                                "to replaced-<time>/ inside it; nothing is deleted)")
    return any(e in RUN_FILES for e in entries)
