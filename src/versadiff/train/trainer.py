"""The training loop on 🤗 accelerate: one CPU, one GPU or several GPUs (`accelerate launch`) unchanged.

One optimizer step = `grad_accum` micro-batches of `batch_size` images on each process. The data order is a
permutation drawn from (seed, epoch), split across processes, and the diffusion noise comes from a dedicated
torch.Generator; both are checkpointed, so a resumed run continues exactly where the interrupted one stopped
(bitwise on CPU).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import random
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from versadiff.config import RunConfig, save_config
from versadiff.images import save_grid
from versadiff.train import checkpoint as ck
from versadiff.train.ema import EMA
from versadiff.train.logging import StatsLogger
from versadiff.train.rundir import RUN_SUBDIRS, new_run_dir
from versadiff.weights import CONFIG_KEY, INFO_KEY

__all__ = ["Trainer", "train", "export_weights", "resolve_resume", "param_groups"]


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


def resolve_resume(resume: str | bool | None, run_dir: Path | None) -> Path | None:
    """The checkpoint to resume from: a given path, or the latest checkpoint of `run_dir`."""
    if resume is None or resume is False:
        return None
    if resume is True or resume == "":
        if run_dir is None:
            raise ValueError("--resume without a path needs --out RUN_FOLDER (the run to continue)")
        latest = ck.latest_checkpoint(run_dir / "checkpoints")
        if latest is None:
            raise FileNotFoundError(f"no checkpoint to resume in {run_dir / 'checkpoints'}; drop --resume to start fresh")
        return latest
    p = Path(resume)
    if ck.is_checkpoint(p):
        return p
    latest = ck.latest_checkpoint(p / "checkpoints")
    if latest is not None:
        return latest
    raise FileNotFoundError(f"--resume {p}: not a checkpoint directory nor a run folder with checkpoints/")


class Trainer:
    """Build everything a run needs from a RunConfig; `run()` trains, checkpoints, samples and exports."""

    def __init__(
        self,
        cfg: RunConfig,
        *,
        out: str | Path | None = None,
        runs_root: str | Path = "runs",
        resume: str | bool | None = None,
        quiet: bool = False,
    ) -> None:
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState

        from versadiff.data import build_dataset
        from versadiff.tasks import build_task, check_config, task_class

        task_class(check_config(cfg).task).check_run(cfg)
        _check_data(cfg)
        self.cfg, tc = cfg, cfg.train
        if not torch.cuda.is_available() and tc.mixed_precision == "fp16":
            raise ValueError("mixed_precision fp16 needs a GPU; on CPU use --set train.mixed_precision=bf16 or no")
        # accelerate keeps one process-wide state that refuses a second, different precision; a run's
        # config is the authority, so reset it (the distributed PartialState is kept).
        AcceleratorState._reset_state(reset_partial_state=False)
        self.accelerator = acc = Accelerator(mixed_precision=tc.mixed_precision)
        self.rank, self.world = acc.process_index, acc.num_processes
        self.quiet = quiet
        run_dir = Path(out) if out is not None else None
        self.resume_from = resolve_resume(resume, run_dir)
        if self.resume_from is None and run_dir is not None and ck.latest_checkpoint(run_dir / "checkpoints"):
            raise ValueError(f"{run_dir} already holds a run with checkpoints; add --resume to continue it "
                             "or choose another --out")

        # Everything that can reject the config is built before a run folder is created.
        self._seed_globals(_seed_for(tc.seed, self.rank))
        self.dataset = build_dataset(cfg.data, needs_text=_needs_text(cfg))
        # Streamed datasets (webdataset shards) have no length and no random access: each rank reads its own
        # shards, starts its next epoch on its own when they run out, and resumes at a shard boundary.
        self.streaming = isinstance(self.dataset, IterableDataset)
        if not self.streaming and len(self.dataset) < tc.batch_size * self.world:
            raise ValueError(f"the dataset has {len(self.dataset)} items, fewer than one batch "
                             f"({tc.batch_size} x {self.world} processes); lower train.batch_size")

        torch.manual_seed(_seed_for(tc.seed, 0, 1))  # same initial weights on every process
        # the task (versadiff.tasks) builds the network and owns the losses, sample grids and task state
        self.task = build_task(cfg, self.dataset, acc.device, _seed_for(tc.seed, self.rank, 6))
        net = self.task.net
        if tc.gradient_checkpointing:
            net.set_gradient_checkpointing(True)
        self.ema_net = copy.deepcopy(net).requires_grad_(False).eval()  # sampling copy, fp32
        groups, self.grad_mults = param_groups(net, tc.param_groups, tc.lr)
        optimizer = torch.optim.AdamW(groups, lr=tc.lr, betas=tuple(tc.adam_betas), eps=tc.adam_eps,
                                      weight_decay=tc.weight_decay)
        # The LR scheduler is stepped by hand once per optimizer step (accelerate would step it per process).
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_lambda(tc.warmup_steps))
        # self.net is the plain module (EMA, checkpoints, export); self.model the compiled/DDP-wrapped view
        # that shares its parameters and runs the training forward pass.
        self.net = net
        self.model, self.optimizer = acc.prepare(torch.compile(net) if tc.compile else net, optimizer)
        self.ema = EMA(net, tc.ema_decay, tc.ema_warmup)  # after prepare: the shadow lives on the training device
        self.noise_gen = torch.Generator(device=acc.device)
        self.noise_gen.manual_seed(_seed_for(tc.seed, self.rank, 2))
        self.step, self.epoch, self.position = 0, 0, 0
        self._seed_globals(_seed_for(tc.seed, self.rank, 3))
        if self.resume_from is not None:
            self._load(self.resume_from)

        # Run folder: --out names it (a resumed run keeps its folder); otherwise a new numbered one.
        if run_dir is None and self.resume_from is not None:
            run_dir = self.resume_from.parent.parent
        if run_dir is None:
            if acc.is_main_process:
                run_dir = new_run_dir(runs_root, cfg.name, self._desc())
            run_dir = Path(self._broadcast(str(run_dir) if run_dir else None))
        self.run_dir = run_dir
        if acc.is_main_process:
            for sub in RUN_SUBDIRS:
                (run_dir / sub).mkdir(parents=True, exist_ok=True)
            save_config(cfg, run_dir)
        self.logger = StatsLogger(run_dir) if acc.is_main_process else None
        if self.logger is not None:
            self.logger.truncate_after(self.step)

    # -- setup helpers -------------------------------------------------------------------------

    def _desc(self) -> str:
        tc = self.cfg.train
        model = self.cfg.model.get("preset") or self.cfg.model.get("type") or "net"
        precision = "fp32" if tc.mixed_precision == "no" else tc.mixed_precision
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
        return {**self.task.info(), "step": self.step, "format": "versadiff-weights-1", "task": self.cfg.task}

    def _metadata(self) -> dict[str, str]:
        return {CONFIG_KEY: json.dumps(self.cfg.to_dict()), INFO_KEY: json.dumps(self.info)}

    # -- data ----------------------------------------------------------------------------------

    def _loader(self, epoch: int, start: int) -> DataLoader:
        """This process's batches of `epoch`, skipping the first `start` (already consumed)."""
        tc = self.cfg.train
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        g = torch.Generator().manual_seed(_seed_for(tc.seed, epoch, 4))
        order = torch.randperm(len(self.dataset), generator=g)[self.rank :: self.world]
        n_batches = len(order) // tc.batch_size  # drop the ragged tail so every process steps alike
        indices = order[start * tc.batch_size : n_batches * tc.batch_size].tolist()
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
                self._log({"loss": window_loss / window_n, "lr": self.scheduler.get_last_lr()[0],
                           "grad_norm": grad_norm, "img_per_s": imgs / max(busy, 1e-9), "epoch": self.epoch,
                           **self.task.log_stats(), **self._data_stats()})
                window_loss, window_n, busy, imgs = 0.0, 0, 0.0, 0
            if tc.sample_every and self.step % tc.sample_every == 0:
                self.save_samples()
            if tc.checkpoint_every and self.step % tc.checkpoint_every == 0:
                self.save_checkpoint()
        if bar is not None:
            bar.close()
        if until is None or stop == tc.max_steps:
            if not (tc.checkpoint_every and self.step % tc.checkpoint_every == 0):
                self.save_checkpoint()
            if not (tc.sample_every and self.step % tc.sample_every == 0):
                self.save_samples()
            self.export()
        if self.logger is not None:
            self.logger.close()
        acc.wait_for_everyone()
        return self.run_dir

    def _train_step(self, batches: Iterator[dict[str, Any]]) -> tuple[float, float]:
        tc, acc = self.cfg.train, self.accelerator
        total = 0.0
        self.task.begin_step(self.step)
        for micro in range(tc.grad_accum):
            batch = next(batches)
            last = micro == tc.grad_accum - 1
            sync = contextlib.nullcontext() if last or self.world == 1 else acc.no_sync(self.model)
            with sync, acc.autocast():
                losses = self.task.losses(self.model, batch, self.noise_gen)
                loss = losses.float().mean() / tc.grad_accum
            acc.backward(loss)
            total += loss.detach()
        for params, mult in self.grad_mults:  # per-group gradient multipliers (VD), before clipping
            for p in params:
                if p.grad is not None:
                    p.grad.mul_(mult)
        max_norm = tc.grad_clip if tc.grad_clip else math.inf
        grad_norm = acc.clip_grad_norm_(self.model.parameters(), max_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.update(self.net)
        total = acc.reduce(total.reshape(1), reduction="mean") if self.world > 1 else total
        return float(total), float(grad_norm)

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
        if self.logger is not None:
            self.logger.log(self.step, stats)

    # -- outputs -------------------------------------------------------------------------------

    def loaded_ema(self) -> Any:
        """The EMA weights as a loaded model with `generate` (the autoencoder itself for task autoencoder)."""
        self.ema.copy_to(self.ema_net)
        return self.task.loaded(self.ema_net, self.info, str(self.run_dir))

    def save_samples(self) -> Path | None:
        """A grid from the EMA weights with fixed seeds, run_dir/samples/step-N.png (main process)."""
        if not self.accelerator.is_main_process:
            return None
        self.ema.copy_to(self.ema_net)
        # Sampling must not disturb the training RNG streams (runs with other sample_every stay identical).
        with torch.random.fork_rng(devices=[]):
            grid = self.task.sample_grid(self.ema_net, self.info, str(self.run_dir))
        if grid is None:
            return None
        images, nrow = grid
        return save_grid(images, self.run_dir / "samples" / f"step-{self.step:08d}.png", nrow=nrow)

    def save_checkpoint(self) -> Path | None:
        """Write checkpoints/step-N atomically and prune to keep_last (RNG states of all processes)."""
        acc = self.accelerator
        rng = {"torch": torch.get_rng_state(), "noise": self.noise_gen.get_state(),
               "numpy": _numpy_state(), "python": _python_state(),
               "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
               "task": self.task.state_dict(),  # per process, like the RNG states
               "data": self.dataset.state_dict() if self.streaming else {}}
        if self.world > 1:
            from accelerate.utils import gather_object

            rngs = gather_object([rng])
        else:
            rngs = [rng]
        path = None
        if acc.is_main_process:
            net = self.net
            meta = self._metadata()
            state = {"step": self.step, "epoch": self.epoch, "position": self.position,
                     "ema_updates": self.ema.num_updates, "world_size": self.world}

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
        acc.wait_for_everyone()
        return path

    def _load(self, path: Path) -> None:
        acc = self.accelerator
        state = json.loads((path / "state.json").read_text())
        if state.get("world_size", 1) != self.world:
            raise ValueError(f"{path} was written by {state.get('world_size')} processes, this run has {self.world}; "
                             "resume with the same number of processes")
        net = self.net
        try:
            net.load_state_dict(ck.load_tensors(path / "model.safetensors"))
        except RuntimeError as e:  # torch lists every mismatch over many lines; keep the first
            first = str(e).strip().splitlines()[-1].strip() if str(e).strip() else type(e).__name__
            raise ValueError(f"{path} does not fit this config's network ({first}); "
                             "resume with the config the run was started with") from None
        self.ema.load_state_dict(ck.load_tensors(path / "ema.safetensors"), state["ema_updates"])
        self.optimizer.load_state_dict(ck.load_torch(path / "optimizer.pt"))
        self.scheduler.load_state_dict(ck.load_torch(path / "scheduler.pt"))
        if acc.scaler is not None and (path / "scaler.pt").exists():
            acc.scaler.load_state_dict(ck.load_torch(path / "scaler.pt"))
        rng = ck.load_torch(path / "rng.pt")[self.rank]
        torch.set_rng_state(rng["torch"])
        self.noise_gen.set_state(rng["noise"])
        np.random.set_state(_numpy_from(rng["numpy"]))
        random.setstate(_python_from(rng["python"]))
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        self.task.load_state_dict(rng.get("task", {}))
        self.step, self.epoch, self.position = state["step"], state["epoch"], state["position"]
        if self.streaming and rng.get("data"):
            # a streamed run restarts at the last fully consumed shard of this rank (a partly read shard is re-read)
            self.dataset.load_state_dict(rng["data"])
            self.epoch, self.position = int(rng["data"]["epoch"]), 0

    def export(self, path: str | Path | None = None) -> Path | None:
        """EMA-only weights with the config in the metadata: run_dir/export/model.safetensors."""
        if not self.accelerator.is_main_process:
            return None
        path = Path(path) if path is not None else self.run_dir / "export" / "model.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        ck.save_tensors(tmp, self.ema.state_dict(), self._metadata())
        tmp.replace(path)
        self.ema.copy_to(self.ema_net)
        self.task.export_files(self.ema_net, path.parent)  # e.g. a CLIP pair's transformers folder
        return path


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


def export_weights(source: str | Path, out: str | Path) -> Path:
    """Write an EMA-only inference file from a checkpoint directory or run folder (on demand)."""
    from versadiff.weights import read_raw_metadata, resolve_weights

    weights = resolve_weights(source)
    meta = read_raw_metadata(weights)
    if CONFIG_KEY not in meta:
        raise ValueError(f"{weights} is not a versadiff checkpoint (no '{CONFIG_KEY}' in its metadata)")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    ck.save_tensors(out, ck.load_tensors(weights), meta)
    return out


def param_groups(net: torch.nn.Module, spec: list[dict[str, Any]], lr: float) -> tuple[list[dict[str, Any]], list]:
    """Optimizer parameter groups from `train.param_groups` (first matching regex wins), and the
    (parameters, gradient multiplier) pairs to apply after backward. With no spec: one group, no multipliers."""
    import re

    params = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    if not spec:
        return [{"params": [p for _, p in params]}], []
    rules = [(re.compile(g["match"]), float(g.get("lr_mult", 1.0)), float(g.get("grad_mult", 1.0))) for g in spec]
    buckets: dict[int, list] = {}
    for name, p in params:
        i = next((k for k, (rx, _, _) in enumerate(rules) if rx.search(name)), len(rules))
        buckets.setdefault(i, []).append(p)
    for k, (rx, _, _) in enumerate(rules):
        if k not in buckets:
            raise ValueError(f"train.param_groups[{k}].match {rx.pattern!r} matches no parameter of the network")
    groups, mults = [], []
    for i in sorted(buckets):
        lr_mult, grad_mult = (rules[i][1], rules[i][2]) if i < len(rules) else (1.0, 1.0)
        groups.append({"params": buckets[i], "lr": lr * lr_mult})
        if grad_mult != 1.0:
            mults.append((buckets[i], grad_mult))
    return groups, mults


def train(cfg: RunConfig, *, out: str | Path | None = None, runs_root: str | Path = "runs",
          resume: str | bool | None = None, quiet: bool = False) -> Path:
    """Train a run to completion; returns its folder."""
    return Trainer(cfg, out=out, runs_root=runs_root, resume=resume, quiet=quiet).run()
