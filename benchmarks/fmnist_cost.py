"""The cost of sampling 1,000 Fashion-MNIST images at the quality of DDIM-50 (issue 17, item 4).

    python benchmarks/fmnist_cost.py --model runs/fmnist_cost_unet [--n 1000] [--n-score 250] [--threads 1]

The reference is DDIM with 50 steps at the run's guidance: n-score images, seeds 0.., class i mod 10, scored by
versadiff.eval in fp32 (fmnist_acc: the shipped classifier on the requested class; fmnist_fd: Fréchet distance of
its 128-d features against the 10k test images). Candidate settings of every sampler are tried in order of their
network calls per sample, fewest first, until one matches the reference: accuracy no lower than the reference's
minus one binomial standard error and FD no more than 5% above it. That setting is then timed for n images in
fp32 and in bf16 (where the CPU runs it natively), eager and under torch.compile (Pipeline.generate(compile=True);
the first call compiles and is not timed), and DDIM-50 eager on n-score images, scaled to n (sampling time is
linear in the number of batches). Prints markdown tables and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from versadiff.eval.evaluate import DatasetSource, EvalOptions, GeneratorSource, evaluate
from versadiff.models import load_model
from versadiff.precision import autocast, cpu_native_bf16

#: (sampler, steps, network calls per sample), tried fewest calls first
CANDIDATES: list[tuple[str, int, int]] = sorted(
    [("dpmpp", s, s) for s in (5, 8, 10, 15, 20)] + [("ddim", s, s) for s in (10, 15, 20, 30)]
    + [("heun", s, 2 * s - 1) for s in (3, 5, 8)] + [("euler", s, s) for s in (15, 30)],
    key=lambda c: (c[2], c[0] != "dpmpp"))


def score(model: Any, sampler: str, steps: int, n: int, guidance: float | None, cache: Path) -> dict[str, float]:
    """fmnist_acc and fmnist_fd of n samples of one setting."""
    src = GeneratorSource(model, n, seed=0, sampler=sampler, steps=steps, guidance=guidance)
    ref = DatasetSource({"name": "fashion_mnist", "split": "test"})
    opts = EvalOptions(metrics=["fmnist_acc", "fmnist_fd"], batch_size=250)
    t0 = time.perf_counter()
    m = evaluate(src, [ref], opts, cache_dir=cache)["metrics"]
    return {"acc": float(m["fmnist_acc"]), "fd": float(m["fmnist_fd"]), "seconds": time.perf_counter() - t0}


def matches(row: dict[str, float], ref: dict[str, float], n: int) -> bool:
    se = math.sqrt(max(ref["acc"] * (1 - ref["acc"]), 1e-12) / n)
    return row["acc"] >= ref["acc"] - se and row["fd"] <= 1.05 * ref["fd"]


def timed(model: Any, sampler: str, steps: int, n: int, guidance: float | None, precision: str,
          compile: bool) -> float:
    """Seconds to sample n images (batches of up to 250) in one setting; compiled: after one warm-up batch."""
    labels = [i % model.num_classes for i in range(n)]
    b = min(250, n)
    kw = dict(sampler=sampler, steps=steps, guidance=guidance, batch_size=b, compile=compile)
    with autocast(precision, "cpu"):
        if compile:
            model.generate(list(range(b)), class_labels=labels[:b], **kw)
        t0 = time.perf_counter()
        model.generate(list(range(n)), class_labels=labels, **kw)
        return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="a class-conditional Fashion-MNIST run, weight file or name")
    p.add_argument("--n", type=int, default=1000, help="images timed per setting")
    p.add_argument("--n-score", type=int, default=250, help="images scored per setting")
    p.add_argument("--guidance", type=float, default=None, help="CFG weight w (default: the run's)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("runs/bench_fmnist_cost.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    cache = args.out.parent / "fmnist_cost_cache"
    cpu = torch.backends.cpu.get_cpu_capability()
    ns = args.n_score
    ref = score(model, "ddim", 50, ns, args.guidance, cache)
    rows = [{"sampler": "ddim", "steps": 50, "calls": 50, **ref, "match": True}]
    print(f"model {args.model}; scored on {ns}, timed on {args.n}; CPU {cpu}, {args.threads} thread(s)\n")
    print("| sampler | steps | network calls | acc | FD | matches DDIM-50 | s (scoring included) |")
    print("|---|---|---|---|---|---|---|")
    print(f"| ddim | 50 | 50 | {ref['acc']:.3f} | {ref['fd']:.2f} | reference | {ref['seconds']:.0f} |", flush=True)
    for sampler, steps, calls in CANDIDATES:
        r = score(model, sampler, steps, ns, args.guidance, cache)
        ok = matches(r, ref, ns)
        rows.append({"sampler": sampler, "steps": steps, "calls": calls, **r, "match": ok})
        print(f"| {sampler} | {steps} | {calls} | {r['acc']:.3f} | {r['fd']:.2f} | {'yes' if ok else 'no'} | "
              f"{r['seconds']:.0f} |", flush=True)
        if ok:
            break
    best = min((r for r in rows if r["match"]), key=lambda r: (r["calls"], r["sampler"] != "ddim"))
    print(f"\nfewest network calls at DDIM-50 quality: {best['sampler']} {best['steps']} steps ({best['calls']} calls)\n")
    precisions = ["no"] + (["bf16"] if cpu_native_bf16() else [])
    timing = []
    print(f"| setting | precision | compiled | s for {args.n} images | images/s |")
    print("|---|---|---|---|---|")
    plan = [(best, args.n, (False, True)), (rows[0], ns, (False,))]
    for r, n, compiled in plan:
        for prec in precisions:
            for comp in compiled:
                s = timed(model, r["sampler"], r["steps"], n, args.guidance, prec, comp) * args.n / n
                timing.append({"sampler": r["sampler"], "steps": r["steps"], "precision": prec, "compile": comp,
                               "seconds": s, "timed_images": n})
                note = "" if n == args.n else f" (timed on {n}, x{args.n / n:g})"
                print(f"| {r['sampler']} {r['steps']} | {'fp32' if prec == 'no' else prec} | {'yes' if comp else 'no'} | "
                      f"{s:.1f}{note} | {args.n / s:.1f} |", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": str(args.model), "n": args.n, "n_score": ns, "cpu_capability": cpu,
                                    "threads": args.threads, "quality": rows, "best": best, "timing": timing},
                                   indent=2) + "\n")


if __name__ == "__main__":
    main()
