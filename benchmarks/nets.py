"""Network throughput, FLOP efficiency and activation memory on this CPU (issue 4).

Run:  .venv/bin/python benchmarks/nets.py [--tiny-batch 16] [--small-batch 2] [--iters 3]

Compares, in one run and side by side at the same batch size:
  unet_tiny (ours)    vs a diffusers UNet2DModel of about the same parameter count
  U-ViT-S/2 (ours)    vs a diffusers UNet2DModel of about the same parameter count (47M vs 44M)
  unet_tiny with conv resampling (no attention on the resampling blocks) vs the same tiny diffusers UNet
for forward and training-step (fwd + bwd + AdamW) throughput in fp32 and bf16 autocast
(best of --iters timed calls after one warm-up; the two models of a pair are timed interleaved, A B A B).

Memory: CPU has no allocator statistics, so "act MiB" is the size of the tensors autograd saves for
the backward pass during one training forward (measured with torch.autograd.graph.saved_tensors_hooks,
parameters excluded); this is the memory that grows with batch size and that checkpointing removes.
FLOPs come from torch.utils.flop_counter.FlopCounterMode on a meta-device copy (matmul/conv/attention;
training = forward + backward); "%peak" divides the best achieved FLOP/s by the best FLOP/s of a 2048^3
matmul of the same dtype timed in the same rounds.
"""

from __future__ import annotations

import argparse
import copy
import time
from typing import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from versadiff.nets import build_net

DTYPES = {"fp32": None, "bf16": torch.bfloat16}


def cpu_name() -> str:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown CPU"


class DiffusersWrap(nn.Module):
    """diffusers UNet2DModel behind our forward(x, t) signature."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.model(x, t).sample

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        if enabled:
            self.model.enable_gradient_checkpointing()
        else:
            self.model.disable_gradient_checkpointing()


def diffusers_unet(channels: tuple[int, ...], layers: int, attn_level: int) -> nn.Module:
    from diffusers import UNet2DModel

    n = len(channels)
    down = tuple("AttnDownBlock2D" if i == attn_level else "DownBlock2D" for i in range(n))
    up = tuple("AttnUpBlock2D" if n - 1 - i == attn_level else "UpBlock2D" for i in range(n))
    return DiffusersWrap(
        UNet2DModel(sample_size=32, block_out_channels=channels, layers_per_block=layers,
                    down_block_types=down, up_block_types=up, attention_head_dim=32)
    )


def autocast(dtype: torch.dtype | None):
    return torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None)


def timed(fn: Callable[[], None], iters: int) -> float:
    """Best-of-iters seconds per call after one warm-up; the minimum is the most robust statistic on a
    CPU shared with other jobs (interference only ever adds time)."""
    fn()  # warm-up (kernel selection, allocator)
    best = float("inf")
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def matmul_flops(dtype: torch.dtype, n: int = 2048, iters: int = 3) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return 2 * n**3 / timed(lambda: torch.mm(a, b), iters)


def count_flops(model: nn.Module, x: torch.Tensor, t: torch.Tensor, train: bool) -> int:
    # counted on a meta-device copy: the formulas see every op (the CPU flash-attention kernel is not
    # registered with the counter) and nothing is computed
    model, x, t = copy.deepcopy(model).to("meta"), x.to("meta"), t.to("meta")
    with FlopCounterMode(display=False) as counter:
        if train:
            model(x, t).square().mean().backward()
        else:
            with torch.no_grad():
                model(x, t)
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def saved_bytes(model: nn.Module, x: torch.Tensor, t: torch.Tensor, dtype: torch.dtype | None) -> int:
    params = {p.data_ptr() for p in model.parameters()}
    total = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        if tensor.data_ptr() not in params:
            total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), autocast(dtype):
        model(x, t)
    return total


def bench_pair(pair: list[tuple[str, nn.Module]], batch: int, iters: int, peaks: dict[str, float]) -> list[dict]:
    """Time two models interleaved call by call (A B A B ...), same dtype, batch and inputs, so both see
    the same machine load; each figure is the best call. A 2048^3 matmul is timed in the same rounds
    and `peaks` keeps its best FLOP/s, so %peak compares best case with best case."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, 32, 32, generator=g)
    t = torch.rand(batch, generator=g) * 999
    info = {}
    for name, model in pair:
        info[name] = dict(
            params=sum(p.numel() for p in model.parameters()),
            fwd_flops=count_flops(model.eval(), x[:1], t[:1], train=False),
            train_flops=count_flops(model.train(), x[:1], t[:1], train=True),
            opt=torch.optim.AdamW(model.parameters(), lr=1e-4),
        )
    rows = []
    for dname, dtype in DTYPES.items():
        a_mm = torch.randn(2048, 2048, dtype=dtype or torch.float32)

        def forward(model: nn.Module, opt: torch.optim.Optimizer) -> None:
            model.eval()
            with torch.no_grad(), autocast(dtype):
                model(x, t)

        def train_step(model: nn.Module, opt: torch.optim.Optimizer) -> None:
            model.train()
            opt.zero_grad(set_to_none=True)
            with autocast(dtype):
                loss = model(x, t).float().square().mean()
            loss.backward()
            opt.step()

        best = {(name, kind): float("inf") for name, _ in pair for kind in ("fwd", "train")}
        for kind, fn in (("fwd", forward), ("train", train_step)):
            for name, model in pair:  # warm-up
                fn(model, info[name]["opt"])
            for _ in range(iters):
                for name, model in pair:
                    start = time.perf_counter()
                    fn(model, info[name]["opt"])
                    best[name, kind] = min(best[name, kind], time.perf_counter() - start)
                start = time.perf_counter()
                torch.mm(a_mm, a_mm)
                peaks[dname] = max(peaks[dname], 2 * 2048**3 / (time.perf_counter() - start))
        for name, model in pair:
            fl = info[name]
            rows.append(dict(
                model=name, params=fl["params"] / 1e6, gflop=fl["fwd_flops"] / 1e9, train_gflop=fl["train_flops"] / 1e9, dtype=dname, batch=batch,
                fwd=batch / best[name, "fwd"], train=batch / best[name, "train"],
                fwd_s=best[name, "fwd"], train_s=best[name, "train"],
                act=saved_bytes(model.train(), x, t, dtype) / 2**20,
            ))
            print(f"  measured {name} {dname}", flush=True)
    return rows


def checkpoint_saving(name: str, model: nn.Module, batch: int) -> tuple[str, float, float]:
    x, t = torch.randn(batch, 3, 32, 32), torch.rand(batch) * 999
    model.train()
    model.set_gradient_checkpointing(False)
    full = saved_bytes(model, x, t, None)
    model.set_gradient_checkpointing(True)
    ckpt = saved_bytes(model, x, t, None)
    model.set_gradient_checkpointing(False)
    return name, full / 2**20, ckpt / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny-batch", type=int, default=16)
    ap.add_argument("--small-batch", type=int, default=2, help="batch for U-ViT-S/2 and its UNet peer")
    ap.add_argument("--iters", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    cpu = f"{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    print(f"device: {cpu}", flush=True)
    peaks = {"fp32": matmul_flops(torch.float32), "bf16": matmul_flops(torch.bfloat16)}

    tiny_peer = ("diffusers UNet2DModel (32,64,64)x3", diffusers_unet((32, 64, 64), 3, 1), args.tiny_batch)
    models = [
        ("unet_tiny (ours)", build_net("unet_tiny"), args.tiny_batch),
        tiny_peer,
        ("U-ViT-S/2 (ours)", build_net("uvit_s2"), args.small_batch),
        ("diffusers UNet2DModel (128,256,256,256)x3", diffusers_unet((128, 256, 256, 256), 3, 1), args.small_batch),
        # unet_tiny without VDPM's attention on resampling blocks (one of which runs over 32x32 = 1024 tokens)
        ("unet_tiny, conv resampling (ours)", build_net({"preset": "unet_tiny", "resblock_resample": False}),
         args.tiny_batch),
        tiny_peer,
    ]
    rows = []
    savings = []
    for k in range(0, len(models), 2):
        batch = models[k][2]
        rows += bench_pair([models[k][:2], models[k + 1][:2]], batch, args.iters, peaks)
    for name, model, batch in models[:4]:  # the last pair repeats the tiny peer
        savings.append(checkpoint_saving(name, model, batch))

    print(f"\nDevice: {cpu}. Matmul peak (2048^3, best in this run): fp32 {peaks['fp32'] / 1e9:.1f} GFLOP/s, "
          f"bf16 {peaks['bf16'] / 1e9:.1f} GFLOP/s\n")
    dev = cpu_name()
    print("| device | model | params (M) | fwd GFLOP/img | dtype | batch | fwd img/s | train img/s | fwd %peak "
          "| train %peak | act MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        fl = r["gflop"] * 1e9 * r["batch"]
        r["fwd_pct"] = 100 * fl / r["fwd_s"] / peaks[r["dtype"]]
        r["train_pct"] = 100 * r["train_gflop"] * 1e9 * r["batch"] / r["train_s"] / peaks[r["dtype"]]
        print(f"| {dev} | {r['model']} | {r['params']:.2f} | {r['gflop']:.2f} | {r['dtype']} | {r['batch']} "
              f"| {r['fwd']:.1f} | {r['train']:.2f} | {r['fwd_pct']:.0f}% | {r['train_pct']:.0f}% | {r['act']:.1f} |")
    print("\nSpeed ratio ours / diffusers peer (same batch, same run):\n")
    print("| device | pair | dtype | fwd ratio | train ratio |")
    print("|---|---|---|---|---|")
    for first in range(0, len(rows), 2 * len(DTYPES)):  # rows per pair: [ours fp32, peer fp32, ours bf16, peer bf16]
        for k in range(len(DTYPES)):
            a, b = rows[first + 2 * k], rows[first + 2 * k + 1]
            print(f"| {dev} | {a['model']} / {b['model']} | {a['dtype']} | {a['fwd'] / b['fwd']:.2f} "
                  f"| {a['train'] / b['train']:.2f} |")
    print("\nActivation memory saved by per-block gradient checkpointing (fp32, saved tensors):\n")
    print("| device | model | batch | without MiB | with MiB | saved |")
    print("|---|---|---|---|---|---|")
    for (name, full, ckpt), (_, _, batch) in zip(savings, models):
        print(f"| {dev} | {name} | {batch} | {full:.1f} | {ckpt:.1f} | {100 * (1 - ckpt / full):.0f}% |")


if __name__ == "__main__":
    main()
