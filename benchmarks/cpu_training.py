"""bf16 training on a CPU: the two hot paths issue 17 changed, each timed against what it replaced, in one process.

    OMP_NUM_THREADS=1 python benchmarks/cpu_training.py            # ~2 min on an AVX512 + AMX CPU, 1 thread

  attention  forward + backward of versadiff.nets.layers.attention's explicit bf16 form against SDPA's flash
             kernel, at U-ViT shapes [B, heads, L, d] (the largest is past the explicit path's size limit)
  adamw      one AdamW step on U-ViT-S/2's 44M parameters: torch's multi-tensor form against the fused kernel
             (versadiff.train.optim.adamw)
  step       a whole fmnist_uvit_tiny training step (batch 64, bf16 autocast) with the explicit path on and off
  matmul     (run alone: --sections matmul) GFLOP/s of U-ViT-S/2's bf16 matmuls at batch 16 (4112 token rows):
             the forward form x W^T against the weight gradient's g^T x, beside the 2048^3 peak
  profile    (run alone) where one U-ViT-S/2 bf16 training step at batch 16 spends its time (torch.profiler)
Each figure is the best of --repeats (5) calls, interleaved. Prints a markdown table with the CPU capability.
"""

from __future__ import annotations

import argparse
import platform
import time
from typing import Callable

import torch
import torch.nn.functional as F

ATTENTION_SHAPES = [(4, 8, 257, 64), (64, 2, 50, 64), (32, 4, 256, 32), (16, 8, 1024, 64)]


def best_ms(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Best milliseconds per call of each fn, timed A B A B after one warm-up each."""
    for fn in fns.values():
        fn()
    best = {k: float("inf") for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[k] = min(best[k], 1e3 * (time.perf_counter() - t0))
    return best


def attention_rows(repeats: int) -> list[tuple[str, str, float, float]]:
    from versadiff.nets import layers

    rows = []
    for shape in ATTENTION_SHAPES:
        q, k, v = (torch.randn(*shape, dtype=torch.bfloat16) for _ in range(3))

        def explicit() -> None:
            a, b, c = (x.detach().requires_grad_(True) for x in (q, k, v))
            ((a @ b.transpose(-1, -2)) * shape[-1] ** -0.5).softmax(-1).matmul(c).float().sum().backward()

        def flash() -> None:
            a, b, c = (x.detach().requires_grad_(True) for x in (q, k, v))
            F.scaled_dot_product_attention(a, b, c).float().sum().backward()

        got = best_ms({"flash": flash, "explicit": explicit}, repeats)
        path = "explicit" if layers._explicit_attention(q.requires_grad_(True), k) else "flash"
        rows.append((f"attention fwd+bwd {list(shape)} (versadiff takes: {path})", "ms", got["flash"],
                     got["explicit"]))
    return rows


def adamw_rows(repeats: int) -> list[tuple[str, str, float, float]]:
    from versadiff.nets import build_net
    from versadiff.train.optim import adamw

    net = build_net("uvit_s2")
    for p in net.parameters():
        p.grad = torch.randn_like(p)
    kw = dict(lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    # one group list each: an optimizer writes its defaults (fused=...) into the dicts it is given
    foreach = adamw([{"params": list(net.parameters())}], fused=False, **kw)
    fused = adamw([{"params": list(net.parameters())}], **kw)
    assert fused.defaults["fused"] and fused.param_groups[0]["fused"], "the fused kernel does not apply here"
    got = best_ms({"foreach": foreach.step, "fused": fused.step}, repeats)
    return [("AdamW step, U-ViT-S/2 (44M parameters)", "ms", got["foreach"], got["fused"])]


def step_rows(repeats: int) -> list[tuple[str, str, float, float]]:
    from versadiff.config import load_config
    from versadiff.nets import build_net, layers
    from versadiff.train.optim import adamw

    torch.manual_seed(0)
    net = build_net(load_config("fmnist_uvit_tiny").model)
    opt = adamw([{"params": list(net.parameters())}], lr=1e-4, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.0)
    x, t, y = torch.randn(64, 1, 28, 28), torch.rand(64) * 999, torch.randint(0, 10, (64,))
    limit = layers._EXPLICIT_ATTENTION_MAX_WEIGHTS

    def step(explicit: bool) -> Callable[[], None]:
        def run() -> None:
            layers._EXPLICIT_ATTENTION_MAX_WEIGHTS = limit if explicit else 0
            try:
                opt.zero_grad(set_to_none=True)
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    loss = net.train()(x, t, class_labels=y).float().square().mean()
                loss.backward()
                opt.step()
            finally:
                layers._EXPLICIT_ATTENTION_MAX_WEIGHTS = limit
        return run

    got = best_ms({"flash": step(False), "explicit": step(True)}, repeats)
    return [("fmnist_uvit_tiny training step, batch 64", "ms", got["flash"], got["explicit"])]


def matmul_report(repeats: int) -> None:
    bf = torch.bfloat16
    a = torch.randn(2048, 2048, dtype=bf)
    peak = 2 * 2048**3 / best_ms({"mm": lambda: a @ a}, repeats)["mm"] / 1e6
    print(f"2048^3 bf16 matmul: {peak:.0f} GFLOP/s\n")
    print("| U-ViT-S/2 layer [rows, in] -> out | x W^T (forward) GFLOP/s | g^T x (weight gradient) GFLOP/s |")
    print("|---|---|---|")
    rows = 16 * 257
    for d_in, d_out in ((512, 1536), (512, 2048), (2048, 512)):
        x, w = torch.randn(rows, d_in, dtype=bf), torch.randn(d_out, d_in, dtype=bf)
        g = torch.randn(rows, d_out, dtype=bf)
        got = best_ms({"fwd": lambda: x @ w.t(), "dw": lambda: g.t() @ x}, repeats)
        gflop = 2 * rows * d_in * d_out / 1e6
        print(f"| [{rows}, {d_in}] -> {d_out} | {gflop / got['fwd']:.0f} | {gflop / got['dw']:.0f} |")


def profile_report(repeats: int) -> None:
    from torch.profiler import ProfilerActivity, profile

    from versadiff.nets import build_net
    from versadiff.train.optim import adamw

    torch.manual_seed(0)
    net = build_net("uvit_s2")
    opt = adamw([{"params": list(net.parameters())}], lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    x, t = torch.randn(16, 3, 32, 32), torch.rand(16) * 999

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = net.train()(x, t).float().square().mean()
        loss.backward()
        opt.step()

    for _ in range(max(1, repeats // 2)):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    print(f"one U-ViT-S/2 bf16 training step, batch 16: {total / 1e3:.0f} ms of operator time\n")
    print("| operator | share |")
    print("|---|---|")
    for e in events[:12]:
        print(f"| {e.key} | {100 * e.self_cpu_time_total / total:.1f}% |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sections", default="attention,adamw,step",
                   help="comma list of attention, adamw, step; or one of matmul, profile (their own tables)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls of each variant (the best counts)")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error(f"--repeats must be >= 1, got {args.repeats}")
    sections = {"attention": attention_rows, "adamw": adamw_rows, "step": step_rows}
    reports = {"matmul": matmul_report, "profile": profile_report}
    chosen = [s.strip() for s in args.sections.split(",") if s.strip()]
    bad = [s for s in chosen if s not in sections and s not in reports]
    if bad or not chosen:
        p.error(f"unknown sections {bad}; choose from {', '.join([*sections, *reports])}")
    if any(s in reports for s in chosen) and len(chosen) > 1:
        p.error(f"{', '.join(reports)} print their own tables: give one of them alone to --sections")
    cap = torch.backends.cpu.get_cpu_capability()
    print(f"CPU capability {cap}, {torch.get_num_threads()} thread(s), {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}\n")
    if chosen[0] in reports:
        reports[chosen[0]](args.repeats)
        return 0
    print("| what | unit | before (flash / multi-tensor) | now (explicit / fused) | speed-up |")
    print("|---|---|---|---|---|")
    for name in chosen:
        for what, unit, before, now in sections[name](args.repeats):
            print(f"| {what} | {unit} | {before:.1f} | {now:.1f} | {before / now:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
