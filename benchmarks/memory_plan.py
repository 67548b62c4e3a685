"""Memory plan for training VD's full-size multi-flow diffuser (vd_four_flow) on N GPUs: bytes per GPU for weights,
gradients, optimizer state, EMA and activations under DDP, ZeRO-2 and ZeRO-3 (FSDP2 shard_grad_op / full_shard,
versadiff's train.fsdp), fp32 or bf16, with and without gradient checkpointing.

    python benchmarks/memory_plan.py [--gpus 8] [--gpu-gib 80] [--batch 8] [--json plan.json]
                                     [--measured-img-per-s X]   # per-GPU training throughput, when measured

What is measured and what is computed:
  * the parameter count of the real network on the meta device (2,566,318,852), and of its FSDP units
    (versadiff.train.distributed.block_classes);
  * activations: the bytes autograd saves for backward in one VD training step (the four flows of a micro-batch:
    text->image, image variation, image->text, text variation; VD's 64x64x4 latents, 768-d Optimus latents,
    77 CLIP text and 257 CLIP image tokens), from saved_tensors_hooks with parameters excluded, for the full
    network run on fake tensors (FakeTensorMode: shapes only, no memory, no compute) at batch 1 and 2, so that
    act(b) = fixed + b * per_sample. The anchor: on the CPU miniature (vd_shapes) the same count on real tensors
    and on fake tensors is printed side by side (they agree to <0.3%); bf16 uses CPU autocast.
    With gradient checkpointing the backward pass also recomputes one block at a time: the largest block's own
    saved bytes (measured per block) are added.
  * everything else is arithmetic on P and N, with the assumptions printed under the table.
"""

from __future__ import annotations

import argparse
import contextlib
import json

import torch
from torch import nn

GiB = 2**30
#: VD's training contexts and latents (CLIP ViT-L/14: 77 text tokens, 257 image tokens; Optimus: 768-d)
FULL_CONTEXT = (77, 257)
MINI_CONTEXT = (32, 65)


class SavedBytes:
    """saved_tensors_hooks that add up the distinct storages autograd keeps for backward (parameters excluded),
    also per top-level block (the modules FSDP wraps)."""

    def __init__(self, net: nn.Module, fake: bool, blocks: set[str]) -> None:
        self.fake = fake
        self.params = {self._key(p) for p in net.parameters()}
        self.seen: set = set()
        self.total = 0
        self.per_block: dict[int, int] = {}
        self._stack: list[int] = []
        self._handles = []
        for m in net.modules():
            if type(m).__name__ in blocks:
                self._handles.append(m.register_forward_pre_hook(self._enter))
                self._handles.append(m.register_forward_hook(self._leave))

    def _key(self, t: torch.Tensor):
        st = t.untyped_storage()
        return id(st) if self.fake else st.data_ptr()

    def _enter(self, module, args):
        self._stack.append(id(module))

    def _leave(self, module, args, out):
        self._stack.pop()

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        key = self._key(t)
        if key not in self.seen and key not in self.params:
            self.seen.add(key)
            n = t.untyped_storage().nbytes()
            self.total += n
            if self._stack:
                self.per_block[self._stack[0]] = self.per_block.get(self._stack[0], 0) + n
        return t

    def close(self) -> None:
        for h in self._handles:
            h.remove()


def step_activations(net: nn.Module, batch: int, contexts: tuple[int, int], *, fake: bool, ckpt: bool, bf16: bool,
                     blocks: set[str], latent: int | None = None) -> tuple[int, dict[int, int]]:
    """(saved bytes of one four-flow training forward, {top-level block: its own saved bytes})."""
    cfg = net.config
    net.set_gradient_checkpointing(ckpt)
    counter = SavedBytes(net, fake, blocks)
    side = latent or cfg.image_size
    img = torch.randn(batch, cfg.image_channels, side, side)
    txt = torch.randn(batch, cfg.text_dim)
    ct, ci = torch.randn(batch, contexts[0], cfg.context_dim), torch.randn(batch, contexts[1], cfg.context_dim)
    t = torch.rand(batch) * 999
    cast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    try:
        with torch.autograd.graph.saved_tensors_hooks(counter.pack, lambda x: x), cast:
            loss = 0.0
            for stream, x, kw in (("image", img, {"context_text": ct}), ("image", img, {"context_image": ci}),
                                  ("text", txt, {"context_image": ci}), ("text", txt, {"context_text": ct})):
                out = net(x, t, data_stream=stream, **kw)
                loss = loss + (out.float() - x.reshape(out.shape)).pow(2).mean()
    finally:
        counter.close()
        net.set_gradient_checkpointing(False)
    return counter.total, counter.per_block


def anchor(blocks: set[str]) -> list[dict]:
    """The miniature, real tensors against fake tensors (the check that the fake-tensor count is the real one)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from versadiff.nets import build_net

    spec = {"preset": "vd_shapes", "text_dim": 32}
    torch.manual_seed(0)
    real = build_net(spec)
    rows = []
    for ckpt in (False, True):
        for bf16 in (False, True):
            r, _ = step_activations(real, 4, MINI_CONTEXT, fake=False, ckpt=ckpt, bf16=bf16, blocks=blocks)
            with FakeTensorMode():
                f, _ = step_activations(build_net(spec), 4, MINI_CONTEXT, fake=True, ckpt=ckpt, bf16=bf16,
                                        blocks=blocks)
            rows.append({"ckpt": ckpt, "bf16": bf16, "real_bytes_per_sample": r / 4, "fake_bytes_per_sample": f / 4})
    return rows


def full_size(latent: int = 64) -> dict:
    """Parameter counts, FSDP units and activation figures of vd_four_flow (fake tensors)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils.flop_counter import FlopCounterMode

    from versadiff.nets import build_net
    from versadiff.train.distributed import block_classes

    with torch.device("meta"):
        meta = build_net({"preset": "vd_four_flow"})
    blocks = set(block_classes(meta))
    params = sum(p.numel() for p in meta.parameters())
    units = []  # the top-level FSDP units (nested ones are inside them)

    def visit(m: nn.Module) -> None:
        for c in m.children():
            if type(c).__name__ in blocks:
                units.append(sum(p.numel() for p in c.parameters()))
            else:
                visit(c)

    visit(meta)
    out = {"params": params, "blocks": sorted(blocks), "units": len(units), "largest_unit": max(units),
           "root_params": params - sum(units), "act": {}}
    with FakeTensorMode():
        net = build_net({"preset": "vd_four_flow"})
        for ckpt in (False, True):
            for bf16 in (False, True):
                a1, _ = step_activations(net, 1, FULL_CONTEXT, fake=True, ckpt=ckpt, bf16=bf16, blocks=blocks,
                                         latent=latent)
                a2, _ = step_activations(net, 2, FULL_CONTEXT, fake=True, ckpt=ckpt, bf16=bf16, blocks=blocks,
                                         latent=latent)
                act = {"per_sample": a2 - a1, "fixed": 2 * a1 - a2, "blocks": []}
                if ckpt:  # each block's own saved bytes, as its recomputation in the backward pass materialises
                    _, b1 = step_activations(net, 1, FULL_CONTEXT, fake=True, ckpt=False, bf16=bf16,
                                             blocks=blocks, latent=latent)
                    _, b2 = step_activations(net, 2, FULL_CONTEXT, fake=True, ckpt=False, bf16=bf16,
                                             blocks=blocks, latent=latent)
                    act["blocks"] = [(2 * b1[k] - b2[k], b2[k] - b1[k]) for k in b1]  # (fixed, per sample)
                out["act"][(ckpt, bf16)] = act
        b = 1
        img, txt = torch.randn(b, 4, latent, latent), torch.randn(b, 768)
        ct, ci, t = torch.randn(b, 77, 768), torch.randn(b, 257, 768), torch.rand(b)
        counter = FlopCounterMode(display=False)
        with counter:
            for stream, x, kw in (("image", img, {"context_text": ct}), ("image", img, {"context_image": ci}),
                                  ("text", txt, {"context_image": ci}), ("text", txt, {"context_text": ct})):
                net(x, t, data_stream=stream, **kw)
        out["fwd_flops_per_sample"] = counter.get_total_flops()
    return out, blocks


ASSUMPTIONS = """
Assumptions (P = {p:.3f}B parameters, N = {n} GPUs):
  * weights: fp32 master copy (4P), sharded 1/N under FSDP; the AdamW state is two fp32 moments (8P), the EMA fp32
    (4P), both sharded like the weights under FSDP (versadiff's sharded EMA).
  * DDP: gradients 4P plus DDP's bucket copy 4P (accelerate's default gradient_as_bucket_view=False); bf16 is
    autocast, whose weight-cast cache holds a bf16 copy of every weight during the forward (2P; measured as the
    batch-independent 4.7 GiB of "bf16, off"); the trainer's sampling copy of the EMA (4P) sits on every GPU.
  * FSDP (train.fsdp): bf16 gathers the weights in bf16 and reduces gradients in fp32 (MixedPrecisionPolicy);
    ZeRO-2 = shard_grad_op keeps every unit gathered from its forward to its backward (P in the compute dtype);
    ZeRO-3 = full_shard holds the current and the prefetched unit (2 x the largest unit) plus the root's own
    parameters; the unsharded gradient of one unit (compute dtype + its fp32 cast) is transient; the sampling
    copy of the EMA is in the main process's host memory, not on the GPU. With train.grad_accum > 1 the
    gradient reduce-scatter is skipped on all but the last micro-batch (accelerate's no_sync), which keeps
    every unit's unsharded gradient between micro-batches: add P in the compute dtype (4.8 GiB bf16, 9.6 fp32).
  * activations: measured (above) for VD's four-flow step (768-d text latents, 77/257 context tokens); attention is SDPA (flash: no token x token matrix is kept). With checkpointing the largest
    block's activations are added (its recomputation in the backward pass).
  * not in the table: the frozen encoders when data are encoded on the fly (CLIP ViT-L/14 pair 0.43B, Optimus
    0.24B, KL-f8 0.084B: ~1.4 GiB in bf16, 2.8 GiB in fp32 per GPU; nothing with cached latents/contexts), and
    the allocator's fragmentation (the reserve); 2.5 GiB are kept for the CUDA context, NCCL and cuBLAS/cuDNN
    workspaces.
  * host memory under FSDP: the main process holds the sampling copy (4P) and, while it writes a checkpoint or an
    export, the gathered EMA (4P) and its serialized bytes (4P); at start every process briefly holds a copy."""

STRATEGIES = ("DDP", "ZeRO-2 (FSDP shard_grad_op)", "ZeRO-3 (FSDP full_shard)")


def plan(full: dict, n: int, batch: int, strategy: str, bf16: bool, ckpt: bool) -> dict[str, float]:
    """Bytes per GPU, by component (see the assumptions printed by main)."""
    p, unit = full["params"], full["largest_unit"]
    cd = 2 if bf16 else 4  # bytes of the compute copy of a parameter
    a = full["act"][(ckpt, bf16)]
    shard = strategy != "DDP"
    rows: dict[str, float] = {}
    rows["weights (fp32 master)"] = 4 * p / (n if shard else 1)
    if strategy == "DDP":
        # autocast keeps one bf16 copy of every weight for the whole forward (its weight-cast cache); without
        # checkpointing those copies are also what autograd saves (the measured fixed part)
        rows["gathered / cast weights"] = 2 * p if bf16 else 0
    elif strategy.startswith("ZeRO-2"):
        rows["gathered / cast weights"] = cd * p  # all units stay gathered from their forward to their backward
    else:
        rows["gathered / cast weights"] = cd * (2 * unit + full["root_params"])  # current + prefetched unit, root
    if strategy == "DDP":
        rows["gradients"] = 4 * p + 4 * p  # .grad plus DDP's bucket copy (gradient_as_bucket_view=False)
    else:
        rows["gradients"] = 4 * p / n + (cd + 4) * unit  # sharded fp32 + one unit's unsharded grad and its fp32 cast
    rows["AdamW state (fp32 m, v)"] = 8 * p / (n if shard else 1)
    rows["EMA (fp32)"] = 4 * p / (n if shard else 1)
    rows["sampling copy of the EMA"] = 4 * p if not shard else 0  # the trainer's ema_net (host memory under FSDP)
    # bf16 without checkpointing: the measured batch-independent part is autocast's bf16 weight copies, which
    # are the "gathered / cast weights" row (DDP) or absent (FSDP gathers bf16 weights, no cast is saved)
    cast_cache = bf16 and not ckpt
    rows["activations"] = a["per_sample"] * batch + (0 if cast_cache else max(0, a["fixed"]))
    if ckpt:  # the backward pass recomputes one block at a time: the largest at this batch
        rows["activations"] += recompute(a, batch)
    rows["CUDA context, NCCL, workspace"] = 2.5 * GiB
    return rows


def recompute(act: dict, batch: int) -> float:
    """The largest block's saved bytes at `batch` (materialised while that block is recomputed)."""
    return max((max(0, f) + p * batch for f, p in act["blocks"]), default=0)


def max_batch(full: dict, n: int, strategy: str, bf16: bool, ckpt: bool, budget: float) -> int:
    b = 0
    while b < 4096 and sum(plan(full, n, b + 1, strategy, bf16, ckpt).values()) <= budget:
        b += 1
    return b


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--gpu-gib", type=float, default=80.0, help="device memory per GPU in GiB (A100/H100 80 GB: 80)")
    ap.add_argument("--reserve", type=float, default=0.10, help="fraction kept free for allocator fragmentation")
    ap.add_argument("--batch", type=int, default=8, help="micro-batch per GPU for the table")
    ap.add_argument("--image-size", type=int, default=512, help="training resolution in pixels (latents: 1/8)")
    ap.add_argument("--measured-img-per-s", type=float, default=None,
                    help="measured per-GPU training throughput of one configuration, to scale to --gpus")
    ap.add_argument("--no-anchor", action="store_true", help="skip the miniature real-vs-fake check")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)

    full, blocks = full_size(args.image_size // 8)
    n, budget = args.gpus, args.gpu_gib * GiB * (1 - args.reserve)
    print(f"vd_four_flow: {full['params']:,} parameters; {full['units']} FSDP units (largest "
          f"{full['largest_unit'] / 1e6:.1f}M params, root {full['root_params'] / 1e6:.1f}M); forward "
          f"{full['fwd_flops_per_sample'] / 1e12:.3f} TFLOP per sample (four flows, {args.image_size} px)\n")
    if not args.no_anchor:
        print("Anchor, the CPU miniature vd_shapes (batch 4, bytes saved for backward per sample):")
        print("| grad. ckpt | dtype | real tensors | fake tensors |\n|---|---|---|---|")
        for r in anchor(blocks):
            print(f"| {'on' if r['ckpt'] else 'off'} | {'bf16' if r['bf16'] else 'fp32'} | "
                  f"{r['real_bytes_per_sample'] / 2**20:.3f} MiB | {r['fake_bytes_per_sample'] / 2**20:.3f} MiB |")
        print()
    side = args.image_size // 8
    print(f"Full size at {args.image_size} px ({side}x{side}x4 latents), activations saved per training step (four "
          "flows), fake tensors:")
    print(f"| grad. ckpt | dtype | per sample | fixed (batch-independent) | + largest block recomputed, at "
          f"batch {args.batch} |")
    print("|---|---|---|---|---|")
    for (ckpt, bf16), a in full["act"].items():
        extra = f"{recompute(a, args.batch) / GiB:.3f} GiB" if ckpt else "-"
        print(f"| {'on' if ckpt else 'off'} | {'bf16' if bf16 else 'fp32'} | {a['per_sample'] / GiB:.3f} GiB | "
              f"{a['fixed'] / GiB:.3f} GiB | {extra} |")
    print(f"\nPer GPU on {n} x {args.gpu_gib:g} GiB, micro-batch {args.batch} per GPU (GiB; budget "
          f"{budget / GiB:.1f} GiB after a {args.reserve:.0%} fragmentation reserve):\n")
    configs = [(s, bf16, ckpt) for s in STRATEGIES for bf16 in (False, True) for ckpt in (False, True)]
    names = list(plan(full, n, args.batch, *configs[0]).keys())
    print("| strategy | dtype | grad. ckpt | " + " | ".join(names) + " | total | fits | max micro-batch |")
    print("|---|---|---|" + "---|" * (len(names) + 3))
    table = []
    for s, bf16, ckpt in configs:
        rows = plan(full, n, args.batch, s, bf16, ckpt)
        total = sum(rows.values())
        mb = max_batch(full, n, s, bf16, ckpt, budget)
        table.append({"strategy": s, "bf16": bf16, "ckpt": ckpt, "rows": rows, "total": total, "max_batch": mb})
        print(f"| {s} | {'bf16' if bf16 else 'fp32'} | {'on' if ckpt else 'off'} | "
              + " | ".join(f"{v / GiB:.1f}" for v in rows.values())
              + f" | {total / GiB:.1f} | {'yes' if total <= budget else 'no'} | {mb} |")
    print(ASSUMPTIONS.format(p=full["params"] / 1e9, n=n))
    f = full["fwd_flops_per_sample"]
    print(f"\nTraining FLOPs per sample: {3 * f / 1e12:.2f} TFLOP (forward + backward = 3x forward), "
          f"{4 * f / 1e12:.2f} TFLOP with gradient checkpointing (one more forward).")
    if args.measured_img_per_s:
        print(f"Expected: {n} GPUs x {args.measured_img_per_s:g} img/s = {n * args.measured_img_per_s:.1f} img/s "
              "before communication losses (FSDP full_shard moves ~3 x 2P bytes of bf16 weights/gradients per "
              "GPU and micro-batch).")
    else:
        print("No per-GPU throughput measured (no GPU in this run): pass --measured-img-per-s X from a 1-GPU run of "
              "the chosen configuration. For scale: at 40% of a 989 TFLOP/s (H100 SXM bf16 dense) peak, "
              f"{0.4 * 989e12 / (4 * f):.1f} img/s per GPU with checkpointing, {0.4 * 989e12 / (3 * f):.1f} without.")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"full": {k: v for k, v in full.items() if k != "act"},
                       "act": {f"ckpt={k[0]},bf16={k[1]}": {n: v for n, v in a.items() if n != "blocks"}
                               for k, a in full["act"].items()},
                       "gpus": n, "batch": args.batch, "table": table}, fh, indent=2, default=str)


if __name__ == "__main__":
    main()
