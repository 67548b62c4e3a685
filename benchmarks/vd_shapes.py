"""Versatile Diffusion's four flows on the miniature shapes model: scores over steps and guidance, and speed.

    python benchmarks/vd_shapes.py --model src/versadiff/assets/vd_shapes/vd.safetensors --n 200

Each flow is scored on n held-out shapes items by versadiff.eval.flows (attribute reader / caption parser) at
10/20/50 DDIM steps and two guidance weights; the table is printed as markdown and written as JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from versadiff.eval.flows import FLOW_INPUTS, score_flow
from versadiff.models import load_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="vd-shapes", help="a VD run, weight file or shipped model name")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--steps", type=int, nargs="+", default=[10, 20, 50])
    p.add_argument("--guidance", type=float, nargs="+", default=[1.0, 3.0], help="CFG weights w (scale s = 1 + w)")
    p.add_argument("--sampler", default="ddim")
    p.add_argument("--flows", nargs="+", default=list(FLOW_INPUTS))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("runs/bench_vd_shapes.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    cpu = torch.backends.cpu.get_cpu_capability()
    rows = []
    print(f"| flow | sampler | steps | guidance w | score | per attribute | n | s | CPU |")
    print("|---|---|---|---|---|---|---|---|---|")
    for flow in args.flows:
        for steps in args.steps:
            for w in args.guidance:
                t0 = time.perf_counter()
                r = score_flow(model, flow, args.n, steps=steps, guidance=w, sampler=args.sampler)
                dt = time.perf_counter() - t0
                r.pop("outputs"), r.pop("inputs")
                attrs = ", ".join(f"{k} {v:.3f}" for k, v in r.items() if k not in ("flow", "n", "score"))
                rows.append({**r, "steps": steps, "guidance": w, "sampler": args.sampler, "seconds": dt})
                print(f"| {flow} | {args.sampler} | {steps} | {w} | {r['score']:.3f} | {attrs} | {args.n} | "
                      f"{dt:.0f} | {cpu}, {args.threads} thread(s) |", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": str(model.source), "cpu_capability": cpu, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
