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

Settings run in priority order, each for every contender before the next starts; a setting whose
estimated cost (from the measured sampling throughput) would pass the --sample-minutes deadline is
skipped and listed as such, so all contenders always share the same set of settings.

    python benchmarks/quality_fmnist.py --out runs/quality_fmnist --budget-min 8 --n 250

Every process runs with one torch thread: on this shared 2-core machine, two threads per process
made a training step 4x slower (measured), because each op waits for its descheduled second thread.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
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


def _run(cmd: list[str], log: Path) -> float:
    """Run a command (one torch thread), its output appended to `log`; returns its wall time in seconds."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    t0 = time.perf_counter()
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
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


def calibrate(name: str, work: Path, steps: int, log: Path) -> float:
    """Training steps/s from a short run whose first half (warm-up of caches, allocator) is not counted."""
    out = work / "calibrate" / name
    _run(train_command(name, out, steps, 1, max(1, steps // 2)), log)
    return measured_steps_per_s(name, out)


def train_contender(name: str, work: Path, budget_s: float, rate: float, log: Path) -> dict[str, Any]:
    steps = max(1, int(budget_s * rate))
    warmup = warmup_for(steps, preset_warmup(name))
    out = work / "train" / name
    cmd = train_command(name, out, steps, warmup, max(1, steps // 10))
    wall = _run(cmd, log)
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


def make_generator(name: str, run: Path) -> tuple[Callable[[Setting], torch.Tensor], int]:
    """(function Setting -> images [N, 1, 28, 28] in [-1, 1], parameter count) of a trained contender."""
    if name == "peer":
        sys.path.insert(0, str(HERE))
        import peer_diffusers_fmnist as peer

        unet = peer.load_unet(run)

        def gen(s: Setting) -> torch.Tensor:
            return peer.generate(unet, list(range(s.n)), [i % 10 for i in range(s.n)], s.sampler, s.steps,
                                 s.guidance, batch_size=250)

        return gen, peer.count_parameters(unet)

    from versadiff.pipelines import load_model

    model = load_model(run)

    def gen(s: Setting) -> torch.Tensor:
        return model.generate(list(range(s.n)), sampler=s.sampler, steps=s.steps, guidance=s.guidance,
                              class_labels=[i % 10 for i in range(s.n)], batch_size=250)

    return gen, sum(p.numel() for p in model.net.parameters())


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


def run_settings(gens: dict[str, Callable], settings: list[Setting], work: Path, deadline: float,
                 results: dict[str, Any], save: Callable[[], None]) -> None:
    """Each setting for every contender, in order; skip settings whose estimated cost passes the deadline."""
    throughput: dict[str, float] = {}  # contender -> network evaluations x images per second
    for s in settings:
        if len(throughput) == len(gens):
            need = sum(s.nfe_images / throughput[c] for c in gens)
            if time.perf_counter() + need > deadline:
                results["skipped"].append({"setting": s.key, "n": s.n, "estimated_s": round(need)})
                save()
                continue
        for c, gen in gens.items():
            row = {"contender": c, "setting": s.key, "sampler": s.sampler, "steps": s.steps,
                   "guidance": s.guidance, "n": s.n}
            t0 = time.perf_counter()
            try:
                images = gen(s)
            except (ValueError, RuntimeError) as e:  # e.g. guidance missing from the install: shown in the table
                row["error"] = " ".join(str(e).split())
            else:
                dt = time.perf_counter() - t0
                throughput[c] = s.nfe_images / dt
                npz = save_samples(work / "samples" / f"{c}_{s.key}.npz", images, s.n)
                row.update(sample_s=dt, **score(npz, work / "cache"))
            results["rows"].append(row)
            print(json.dumps(row), flush=True)
            save()


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
    if results["skipped"]:
        lines += ["", "Not run (estimated cost past the sampling deadline): " + ", ".join(
            f"{s['setting']} (N={s['n']}, ~{s['estimated_s']} s)" for s in results["skipped"])]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/quality_fmnist", help="work folder (runs, samples, results.json)")
    p.add_argument("--budget-min", type=float, default=8.0, help="training wall clock per contender (minutes)")
    p.add_argument("--sample-minutes", type=float, default=15.0, help="deadline for all sampling (minutes)")
    p.add_argument("--n", type=int, default=1000, help="samples per few-step setting")
    p.add_argument("--n-ancestral", type=int, default=200, help="samples for 1000-step ancestral sampling")
    p.add_argument("--guidance", type=float, default=1.0, help="w of the guided settings: (1 + w) cond - w uncond")
    p.add_argument("--calibrate-steps", type=int, default=10, help="steps of each calibration run")
    p.add_argument("--contenders", default=",".join(CONTENDERS), help="comma list (default: all three)")
    p.add_argument("--skip-train", action="store_true", help="reuse the trained runs in --out")
    p.add_argument("--table", action="store_true", help="only re-render --out/table.md from its results.json")
    args = p.parse_args(argv)
    if args.table:
        res = Path(args.out) / "results.json"
        if not res.is_file():
            p.error(f"{res} does not exist; run the benchmark first")
        text = markdown(json.loads(res.read_text()))
        (res.parent / "table.md").write_text(text)
        print(text)
        return 0
    torch.set_num_threads(1)
    names = [c.strip() for c in args.contenders.split(",") if c.strip()]
    bad = [c for c in names if c not in CONTENDERS]
    if bad or not names:
        p.error(f"unknown contenders {bad}; choose from {', '.join(CONTENDERS)}")
    if min(args.n, args.n_ancestral) < 10 or args.budget_min <= 0:
        p.error("--n and --n-ancestral must be >= 10 (one image per class at least) and --budget-min > 0")
    work = Path(args.out).resolve()
    work.mkdir(parents=True, exist_ok=True)
    (work / "samples").mkdir(exist_ok=True)
    log = work / "commands.log"
    res_path = work / "results.json"
    start = time.perf_counter()
    results: dict[str, Any] = {"device": cpu_model(), "budget_min": args.budget_min, "n": args.n,
                               "n_ancestral": args.n_ancestral, "guidance": args.guidance, "torch_threads": 1,
                               "train": {}, "rows": [], "skipped": []}
    if args.skip_train:
        results["train"] = json.loads(res_path.read_text())["train"]

    def save() -> None:
        results["elapsed_s"] = time.perf_counter() - start
        res_path.write_text(json.dumps(results, indent=2) + "\n")
        (work / "table.md").write_text(markdown(results))

    if not args.skip_train:
        rates = {}
        for c in names:  # calibrate all first, so each rate is measured under comparable load
            rates[c] = calibrate(c, work, args.calibrate_steps, log)
            print(f"calibrated {c}: {rates[c]:.3f} steps/s", flush=True)
        for c in names:
            results["train"][c] = train_contender(c, work, args.budget_min * 60, rates[c], log)
            print(f"trained {c}: {json.dumps(results['train'][c])}", flush=True)
            save()
    gens = {}
    for c in names:
        gens[c], params = make_generator(c, Path(results["train"][c]["run"]))
        results["train"][c]["parameters"] = params
    ws = (0.0,) if args.guidance == 0 else (0.0, args.guidance)  # --guidance 0: unguided settings only
    settings = [Setting(s, k, w, args.n_ancestral if s == "ddpm" else args.n) for s, k in SETTINGS for w in ws]
    run_settings(gens, settings, work, time.perf_counter() + args.sample_minutes * 60, results, save)
    save()
    print(markdown(results))
    print(f"total wall time {time.perf_counter() - start:.0f} s; results in {res_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
