"""Fashion-MNIST quality benchmark (issue 6, item 4): versadiff's presets against a diffusers peer at equal budget.

Contenders, each trained for the same wall-clock budget on this CPU:
  ours-unet   `versadiff train fmnist_unet_tiny`   (v-prediction, continuous cosine log-SNR, CFG dropout)
  ours-uvit   `versadiff train fmnist_uvit_tiny`
  peer        benchmarks/peer_diffusers_fmnist.py  (diffusers UNet2DModel + DDPMScheduler, eps, DDPM recipe)

Equal budget: a short calibration run measures each contender's training steps/s, then each trains for
max_steps = budget x its own rate; the real wall time of every run is recorded next to its results.
Every sample set is written as a uint8 .npz (images + labels, seeds base..base+N-1, class i mod 10) and
scored by the same call, versadiff.eval.evaluate: fmnist_acc (the shipped classifier's accuracy on the
requested class) and fmnist_fd (Fréchet distance of its 128-d features against the test split).

Every (contender, setting) pair is sampled and scored by its own worker process, --jobs at a time,
largest first; each scored row is appended to rows/<contender>.jsonl at once, so an interrupted run
resumes by running the same command again (with --skip-train once training is done).

    python benchmarks/quality_fmnist.py --out runs/quality_fmnist --budget-min 8 --n 200 --jobs 2

Every process runs with one torch thread: on this shared 2-core machine, two threads per process
made a training step 4x slower (measured), because each op waits for its descheduled second thread.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PY = sys.executable
VERSADIFF = [PY, "-m", "versadiff.cli"]
PEER = [PY, str(HERE / "peer_diffusers_fmnist.py")]

#: (sampler, steps) in priority order; each runs with guidance off (w = 0) and on (w = --guidance)
SETTINGS: list[tuple[str, int]] = [("dpmpp", 10), ("ddim", 10), ("dpmpp", 20), ("ddim", 20), ("dpmpp", 50),
                                   ("ddim", 50), ("ddpm", 1000)]
CONTENDERS = ("ours-unet", "ours-uvit", "peer")
PRESETS = {"ours-unet": "fmnist_unet_tiny", "ours-uvit": "fmnist_uvit_tiny"}
BATCH_SIZE = 64
PEER_WARMUP = 200  # the same as fmnist_unet_tiny's warmup_steps


def cpu_model() -> str:
    """The CPU named in /proc/cpuinfo (the device beside every figure)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return f"unknown CPU ({os.cpu_count()} cores)"


_LOG_LOCK = threading.Lock()


def _run(cmd: list[str], work: Path, name: str) -> float:
    """Run a command (one torch thread) with its output in work/logs/<name>.log, recorded in commands.log;
    returns its wall time in seconds."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    (work / "logs").mkdir(parents=True, exist_ok=True)
    log = work / "logs" / f"{name}.log"
    with _LOG_LOCK, open(work / "commands.log", "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
    t0 = time.perf_counter()
    with open(log, "a") as f:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise RuntimeError(f"command failed (exit {proc.returncode}), see {log}: {' '.join(cmd)}")
    return time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------------
# training at equal wall-clock budget


def warmup_for(steps: int, preset_warmup: int) -> int:
    """Warm-up for a short run: the preset's, but at most a fifth of the run (else lr never peaks)."""
    return max(1, min(preset_warmup, steps // 5))


def train_command(name: str, out: Path, steps: int, warmup: int, log_every: int) -> list[str]:
    """The exact training command of a contender."""
    if name == "peer":
        return [*PEER, "train", "--out", str(out), "--max-steps", str(steps), "--warmup", str(warmup),
                "--batch-size", str(BATCH_SIZE), "--log-every", str(log_every)]
    return [*VERSADIFF, "train", PRESETS[name], "--out", str(out), "--quiet", "--set",
            f"train.max_steps={steps}", f"train.warmup_steps={warmup}", f"train.batch_size={BATCH_SIZE}",
            f"train.log_every={log_every}", "train.sample_every=0", f"train.checkpoint_every={steps}"]


def preset_warmup(name: str) -> int:
    if name == "peer":
        return PEER_WARMUP
    from versadiff.config import load_config

    return int(load_config(PRESETS[name]).train.warmup_steps)


def measured_steps_per_s(name: str, out: Path) -> float:
    """Steps/s of the last logged window (training-step time only, so start-up is excluded)."""
    if name == "peer":
        return float(json.loads((out / "train.json").read_text())["log"][-1]["steps_per_s"])
    rows = [json.loads(line) for line in (out / "stats.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "img_per_s" in r]
    if not rows:
        raise RuntimeError(f"{out / 'stats.jsonl'} has no throughput rows")
    return float(rows[-1]["img_per_s"]) / BATCH_SIZE


def calibrate(name: str, work: Path, steps: int) -> float:
    """Training steps/s from a short run whose first half (warm-up of caches, allocator) is not counted."""
    out = work / "calibrate" / name
    _run(train_command(name, out, steps, 1, max(1, steps // 2)), work, f"calibrate_{name}")
    return measured_steps_per_s(name, out)


def train_contender(name: str, work: Path, budget_s: float, rate: float) -> dict[str, Any]:
    steps = max(1, int(budget_s * rate))
    warmup = warmup_for(steps, preset_warmup(name))
    out = work / "train" / name
    cmd = train_command(name, out, steps, warmup, max(1, steps // 10))
    wall = _run(cmd, work, f"train_{name}")
    return {"steps": steps, "warmup": warmup, "calibrated_steps_per_s": rate, "wall_s": wall,
            "train_steps_per_s": measured_steps_per_s(name, out), "run": str(out), "command": " ".join(cmd)}


# ---------------------------------------------------------------------------------------------------
# sampling and scoring


@dataclass
class Setting:
    sampler: str
    steps: int
    guidance: float
    n: int

    @property
    def key(self) -> str:
        return f"{self.sampler}{self.steps}_w{self.guidance:g}"

    @property
    def nfe_images(self) -> int:
        """Network evaluations x images (a guided step evaluates cond and null)."""
        return self.n * self.steps * (2 if self.guidance else 1)


def make_generator(name: str, run: Path) -> Callable[[Setting], torch.Tensor]:
    """Function Setting -> images [N, 1, 28, 28] in [-1, 1] of a trained contender (seeds 0..N-1, class i mod 10)."""
    labels = lambda s: [i % 10 for i in range(s.n)]  # noqa: E731
    if name == "peer":
        peer = _peer_module()
        unet = peer.load_unet(run)
        return lambda s: peer.generate(unet, list(range(s.n)), labels(s), s.sampler, s.steps, s.guidance,
                                       batch_size=250)
    from versadiff.models import load_model

    model = load_model(run)
    return lambda s: model.generate(list(range(s.n)), sampler=s.sampler, steps=s.steps, guidance=s.guidance,
                                    class_labels=labels(s), batch_size=250)


def count_parameters(name: str, run: Path) -> int:
    if name == "peer":
        return _peer_module().count_parameters(_peer_module().load_unet(run))
    from versadiff.models import load_model

    return sum(p.numel() for p in load_model(run).net.parameters())


def _peer_module() -> Any:
    sys.path.insert(0, str(HERE))
    import peer_diffusers_fmnist as peer

    return peer


def save_samples(path: Path, images: torch.Tensor, n: int) -> Path:
    """uint8 [N, 28, 28] + labels, the format `versadiff eval --images` reads."""
    arr = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)[:, 0].numpy()
    np.savez(path, images=arr, labels=np.arange(n, dtype=np.int64) % 10)
    return path


def score(npz: Path, cache: Path) -> dict[str, float]:
    """fmnist_acc and fmnist_fd (against the Fashion-MNIST test split) of an .npz of samples."""
    from versadiff.eval.evaluate import DatasetSource, EvalOptions, NpzSource, evaluate

    ref = DatasetSource({"name": "fashion_mnist", "split": "test"})
    opts = EvalOptions(metrics=["fmnist_acc", "fmnist_fd"], batch_size=250)
    m = evaluate(NpzSource(npz), [ref], opts, cache_dir=cache)["metrics"]
    return {"acc": float(m["fmnist_acc"]), "fd": float(m["fmnist_fd"])}


def real_floor(n: int, repeats: int, work: Path, seed: int = 0) -> list[float]:
    """FD of `repeats` class-balanced sets of n real training images (class i mod 10, as the samples): the
    metric's floor and spread at sample size n."""
    from versadiff.data import read_idx, require_fashion_mnist

    root = require_fashion_mnist()
    images, labels = read_idx(root / "train-images-idx3-ubyte.gz"), read_idx(root / "train-labels-idx1-ubyte.gz")
    rng = np.random.default_rng(seed)
    want = np.arange(n, dtype=np.int64) % 10
    (work / "floor").mkdir(parents=True, exist_ok=True)
    fds = []
    for rep in range(repeats):
        pick = [rng.choice(np.flatnonzero(labels == c)) for c in want]
        path = work / "floor" / f"real{n}_{rep}.npz"
        np.savez(path, images=images[pick].astype(np.uint8), labels=want)
        fds.append(score(path, work / "cache")["fd"])
    return fds


def rows_file(work: Path, contender: str) -> Path:
    """Where a contender's scored settings accumulate, one JSON row per line (the resume record)."""
    return work / "rows" / f"{contender}.jsonl"


def read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def sample_and_score(contender: str, work: Path, settings: list[Setting]) -> None:
    """Worker: sample and score each setting of one contender not already in its rows file, appending rows.

    Runs in its own process (one torch thread), so --jobs workers share the cores without sharing state.
    """
    torch.set_num_threads(1)
    path = rows_file(work, contender)
    path.parent.mkdir(parents=True, exist_ok=True)
    (work / "samples").mkdir(exist_ok=True)
    done = {r["setting"]: r["n"] for r in read_rows(path)}
    for s in settings:
        if done.get(s.key, s.n) != s.n:
            raise ValueError(f"{path} already scored {s.key} with N={done[s.key]}, not {s.n}; use another --out")
    todo = [s for s in settings if s.key not in done]
    if not todo:
        return
    gen = make_generator(contender, work / "train" / contender)
    for s in todo:
        row: dict[str, Any] = {"contender": contender, "setting": s.key, "sampler": s.sampler, "steps": s.steps,
                               "guidance": s.guidance, "n": s.n}
        t0 = time.perf_counter()
        try:
            images = gen(s)
        except (ValueError, RuntimeError) as e:  # e.g. guidance missing from the install: shown in the table
            row["error"] = " ".join(str(e).split())
        else:
            row["sample_s"] = time.perf_counter() - t0
            npz = save_samples(work / "samples" / f"{contender}_{s.key}.npz", images, s.n)
            row.update(score(npz, work / "cache"))
        with open(path, "a") as f:  # one complete line per setting: an interrupted run loses nothing scored
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)


def parallel(jobs: int, tasks: list[Callable[[], Any]]) -> list[Any]:
    """Run callables (each starts and waits on a subprocess) at most `jobs` at a time; the first error is raised."""
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return [f.result() for f in [pool.submit(t) for t in tasks]]


def worker_command(contender: str, args: argparse.Namespace, keys: list[str]) -> list[str]:
    return [PY, str(Path(__file__).resolve()), "--out", str(Path(args.out).resolve()), "--worker", contender,
            "--settings", ",".join(keys), "--n", str(args.n), "--n-ancestral", str(args.n_ancestral),
            "--guidance", str(args.guidance)]


def write_grid(work: Path, names: list[str], setting: str, per_class: int = 3) -> Path | None:
    """A PNG of the first per_class x 10 samples of `setting`, one block of rows per contender (top to bottom,
    columns = classes 0..9), or None when a contender has no samples for it."""
    from PIL import Image

    blocks = []
    for c in names:
        npz = work / "samples" / f"{c}_{setting}.npz"
        if not npz.is_file():
            return None
        with np.load(npz) as f:
            images = f["images"][: per_class * 10]
        block = np.full((per_class * 30 + 8, 300), 255, np.uint8)  # 28 px + a 2 px border, 8 px between blocks
        for i, im in enumerate(images):
            r, k = divmod(i, 10)
            block[r * 30 + 1 : r * 30 + 29, k * 30 + 1 : k * 30 + 29] = im
        blocks.append(block)
    path = work / f"samples_{setting}.png"
    Image.fromarray(np.concatenate(blocks)[:-8]).save(path, optimize=True)
    return path


# ---------------------------------------------------------------------------------------------------
# the table


def markdown(results: dict[str, Any]) -> str:
    """Results table (acc, FD per contender and setting) plus the margin of the better of ours vs the peer."""
    rows = results["rows"]
    dev = results["device"]
    cell = {(r["contender"], r["setting"]): r for r in rows if "error" not in r}
    errors = [f"{r['contender']} {r['setting']}: {r['error']}" for r in rows if "error" in r]
    keys = list(dict.fromkeys(r["setting"] for r in rows))
    lines = [f"Device: {dev}. Budget: {results['budget_min']:g} min of training per model; "
             "acc = classifier accuracy on the requested class (higher is better), FD = Fréchet distance in "
             "the classifier's 128-d features vs the 10k test images (lower is better).", "",
             "| contender | params | calibrated steps/s | train steps | steps/s, last log window | run wall time (s) |",
             "|---|---|---|---|---|---|"]
    for c in results["train"]:
        t = results["train"][c]
        # the wall time adds start-up, the final checkpoint / sample grid / export, and any load change
        lines.append(f"| {c} | {t.get('parameters', 0) / 1e6:.2f}M | {t['calibrated_steps_per_s']:.3f} | "
                     f"{t['steps']} | {t['train_steps_per_s']:.3f} | {t['wall_s']:.0f} |")
    lines += ["", "| setting | N | " + " | ".join(f"{c} acc | {c} FD" for c in CONTENDERS)
              + " | best ours vs peer: acc | FD |", "|---|---|" + "---|---|" * len(CONTENDERS) + "---|---|"]
    for k in keys:
        vals = [cell.get((c, k)) for c in CONTENDERS]
        n = next((v["n"] for v in vals if v), "—")
        parts = [f"{v['acc']:.3f} | {v['fd']:.2f}" if v else "— | —" for v in vals]
        ours = [v for v in vals[:2] if v]
        peer = vals[2]
        if ours and peer:
            acc_gap = max(v["acc"] for v in ours) - peer["acc"]
            fd_ratio = min(v["fd"] for v in ours) / peer["fd"]
            margin = f"{acc_gap:+.3f} | x{fd_ratio:.2f}"
        else:
            margin = "— | —"
        lines.append(f"| {k} | {n} | " + " | ".join(parts) + f" | {margin} |")
    if errors:
        lines += ["", "Failed (— in the table): " + "; ".join(errors)]
    missing = [f"{c} {k}" for k in results.get("requested", []) for c in results["train"] if (c, k) not in cell
               and not any(r["contender"] == c and r["setting"] == k for r in rows)]
    if missing:
        lines += ["", "Not run yet (rerun the same command to finish; scored rows are kept): " + ", ".join(missing)]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/quality_fmnist", help="work folder (runs, samples, results.json)")
    p.add_argument("--budget-min", type=float, default=8.0, help="training wall clock per contender (minutes)")
    p.add_argument("--n", type=int, default=200, help="samples per few-step setting")
    p.add_argument("--n-ancestral", type=int, default=50, help="samples for 1000-step ancestral sampling")
    p.add_argument("--guidance", type=float, default=1.0, help="w of the guided settings: (1 + w) cond - w uncond")
    p.add_argument("--settings", default="", help="comma list of setting keys such as ddim10_w1 (default: all)")
    p.add_argument("--calibrate-steps", type=int, default=20, help="steps of each calibration run")
    p.add_argument("--contenders", default=",".join(CONTENDERS), help="comma list (default: all three)")
    p.add_argument("--jobs", type=int, default=1, help="processes at once (one torch thread each)")
    p.add_argument("--skip-train", action="store_true", help="reuse the trained runs in --out")
    p.add_argument("--table", action="store_true", help="only re-render --out/table.md from its results.json")
    p.add_argument("--real-floor", type=int, metavar="N", help="only score 8 sets of N real images (the FD floor)")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # internal: sample and score one contender
    args = p.parse_args(argv)
    work = Path(args.out).resolve()
    res_path = work / "results.json"
    if args.real_floor is not None:
        if args.real_floor < 10:
            p.error(f"--real-floor must be >= 10 (one image per class at least), got {args.real_floor}")
        fds = real_floor(args.real_floor, 8, work)
        print(f"FD of 8 sets of {args.real_floor} real images: mean {np.mean(fds):.2f}, sd {np.std(fds, ddof=1):.2f}")
        return 0
    if args.table:
        if not res_path.is_file():
            p.error(f"{res_path} does not exist; run the benchmark first")
        text = markdown(json.loads(res_path.read_text()))
        (work / "table.md").write_text(text)
        print(text)
        return 0
    names = [c.strip() for c in args.contenders.split(",") if c.strip()]
    bad = [c for c in names if c not in CONTENDERS]
    if bad or not names:
        p.error(f"unknown contenders {bad}; choose from {', '.join(CONTENDERS)}")
    if min(args.n, args.n_ancestral) < 10 or args.budget_min <= 0 or args.jobs < 1:
        p.error("--n and --n-ancestral must be >= 10 (one image per class at least), --budget-min > 0, --jobs >= 1")
    ws = (0.0,) if args.guidance == 0 else (0.0, args.guidance)  # --guidance 0: unguided settings only
    settings = [Setting(s, k, w, args.n_ancestral if s == "ddpm" else args.n) for s, k in SETTINGS for w in ws]
    wanted = [k.strip() for k in args.settings.split(",") if k.strip()]
    unknown = sorted(set(wanted) - {s.key for s in settings})
    if unknown:
        p.error(f"unknown settings {unknown}; choose from {', '.join(s.key for s in settings)}")
    settings = [s for s in settings if not wanted or s.key in wanted]
    if args.worker:
        try:
            sample_and_score(args.worker, work, settings)
        except ValueError as e:
            p.error(str(e))
        return 0

    work.mkdir(parents=True, exist_ok=True)
    (work / "samples").mkdir(exist_ok=True)
    start = time.perf_counter()
    results: dict[str, Any] = {"device": cpu_model(), "budget_min": args.budget_min, "n": args.n,
                               "n_ancestral": args.n_ancestral, "guidance": args.guidance, "torch_threads": 1,
                               "jobs": args.jobs, "train": {}, "rows": [], "requested": [s.key for s in settings]}
    if args.skip_train:
        if not res_path.is_file():
            p.error(f"--skip-train needs the trained runs recorded in {res_path}; run once without it")
        results["train"] = {c: t for c, t in json.loads(res_path.read_text())["train"].items() if c in names}
        untrained = [c for c in names if c not in results["train"]]
        if untrained:
            p.error(f"{res_path} records no trained run for {', '.join(untrained)}; drop --skip-train or --contenders")

    def save() -> None:
        results["elapsed_s"] = time.perf_counter() - start
        res_path.write_text(json.dumps(results, indent=2) + "\n")
        (work / "table.md").write_text(markdown(results))

    if not args.skip_train:
        # calibrate one at a time, each alone on the machine: two processes side by side slow each other
        # (ours-unet measured 0.50 steps/s beside another run vs 0.64 alone), so the budget in steps is
        # "what this contender does in budget-min minutes alone"; training may then run --jobs at a time
        rates = {c: calibrate(c, work, args.calibrate_steps) for c in names}
        print("calibrated steps/s: " + json.dumps(rates), flush=True)
        trained = parallel(args.jobs, [lambda c=c: train_contender(c, work, args.budget_min * 60, rates[c])
                                       for c in names])
        results["train"] = dict(zip(names, trained))
        save()
    for c in names:
        results["train"][c]["parameters"] = count_parameters(c, work / "train" / c)
    # one worker process per (contender, setting), largest first so the last ones to finish are short
    items = sorted(((c, s) for s in settings for c in names), key=lambda cs: -cs[1].nfe_images)
    parallel(args.jobs, [lambda c=c, s=s: _run(worker_command(c, args, [s.key]), work, f"sample_{c}_{s.key}")
                         for c, s in items])
    order = {s.key: i for i, s in enumerate(settings)}
    rows = [r for c in names for r in read_rows(rows_file(work, c)) if r["setting"] in order]
    results["rows"] = sorted(rows, key=lambda r: (order[r["setting"]], names.index(r["contender"])))
    save()
    write_grid(work, names, "ddim20_w1")
    print(markdown(results))
    print(f"total wall time {time.perf_counter() - start:.0f} s; results in {res_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
