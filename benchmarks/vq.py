"""VQ-Diffusion on shapes end to end: train shapes_vqae then shapes_vqdiffusion through `versadiff train`, then

  0. the first stage's ceiling: shapes_acc / shapes_fd of VQ AE reconstructions of held-out images,
  1. VQ-Diffusion quality (shapes_acc, shapes_fd) vs sampling steps (fast sampler, stride 100 // steps), vs the
     truncation rate r and with / without classifier-free guidance,
  2. sampling img/s of the VQ-Diffusion model vs a Gaussian UNet of about the same parameter count
     (shapes_unet_tiny's network, untrained: speed does not depend on weights) at equal network calls,
     measured side by side (interleaved) in this run.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/vq.py

Training steps default to the presets' train.max_steps. Prints markdown tables naming the CPU; paste them into
benchmarks/README.md ("## VQ-Diffusion (issue 7)"). Run folders under --work are reused when they hold an export.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from versadiff.config import load_config
from versadiff.eval.evaluate import DatasetSource, EvalOptions, GeneratorSource, ImageSource, evaluate
from versadiff.autoencoders import load_autoencoder
from versadiff.nets import build_net, count_parameters
from versadiff.models import load_model
from versadiff.tasks import task_class

METRICS = ["shapes_acc", "shapes_fd"]


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def train(preset: str, out: Path, overrides: list[str]) -> tuple[str, float, dict]:
    """Run `versadiff train` (or reuse a finished run); returns (command, wall seconds, last stats line)."""
    exe = Path(sys.executable).with_name("versadiff")
    cmd = [str(exe), "train", preset, "--out", str(out), "--quiet"] + (["--set", *overrides] if overrides else [])
    shown = "OMP_NUM_THREADS=1 .venv/bin/versadiff " + shlex.join(cmd[1:])
    seconds = float("nan")
    if not (out / "export" / "model.safetensors").is_file():
        if out.exists():
            raise FileExistsError(f"{out} holds an unfinished run; delete it or pass another --work")
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True)
        seconds = time.perf_counter() - t0
    lines = (out / "stats.jsonl").read_text().splitlines()
    return shown, seconds, json.loads(lines[-1])


class ReconSource(ImageSource):
    """Held-out dataset images passed through the VQ autoencoder (encode -> nearest codes -> decode)."""

    def __init__(self, data: DatasetSource, autoencoder: torch.nn.Module) -> None:
        self.data, self.ae = data, autoencoder
        self.description = {"kind": "vq_reconstruction", "data": data.description}

    def __len__(self) -> int:
        return len(self.data)

    @torch.no_grad()
    def batch(self, indices: Sequence[int]) -> tuple[Tensor, Tensor | None]:
        x, labels = self.data.batch(indices)
        rec = self.ae(x)[0].float().clamp(-1, 1)
        # 8-bit quantisation, as GeneratorSource does for samples
        return ((rec + 1) * 127.5).round() / 127.5 - 1, labels


def scores(src: ImageSource, ref: ImageSource, cache: Path) -> dict[str, float]:
    return evaluate(src, [ref], EvalOptions(metrics=METRICS, batch_size=96), cache_dir=cache)["metrics"]


def img_per_s(model, steps: int, n: int, **kw) -> float:
    labels = [i % 18 for i in range(n)]
    t0 = time.perf_counter()
    model.generate(range(n), class_labels=labels, steps=steps, batch_size=n, **kw)
    return n / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="runs/bench_vq", help="run folders (runs/ is git-ignored)")
    p.add_argument("--ae-steps", type=int, default=None, help="default: shapes_vqae's train.max_steps")
    p.add_argument("--vq-steps", type=int, default=None, help="default: shapes_vqdiffusion's train.max_steps")
    p.add_argument("--n", type=int, default=288, help="samples per quality point (16 per class)")
    p.add_argument("--trunc-steps", type=int, default=20, help="step count of the truncation / guidance rows")
    p.add_argument("--speed-n", type=int, default=36, help="batch of the img/s rows")
    p.add_argument("--speed-reps", type=int, default=3, help="interleaved repeats per img/s row (median)")
    args = p.parse_args()
    work = Path(args.work)
    cpu, threads = cpu_name(), torch.get_num_threads()

    # sample_every=0: the timed wall clock is training (+ one checkpoint / export), not grid sampling
    ae_over = ["train.sample_every=0"] + ([f"train.max_steps={args.ae_steps}"] if args.ae_steps else [])
    ae_cmd, ae_s, ae_last = train("shapes_vqae", work / "vqae", ae_over)
    vq_over = [f"autoencoder.path={work / 'vqae'}", "train.sample_every=0"]
    vq_over += [f"train.max_steps={args.vq_steps}"] if args.vq_steps else []
    vq_cmd, vq_s, vq_last = train("shapes_vqdiffusion", work / "vqdiffusion", vq_over)
    model = load_model(work / "vqdiffusion")
    ae = load_autoencoder(work / "vqae")

    print(f"device: {cpu}, {threads} thread(s), shared with other jobs (times are noisy)\n")
    for cmd, last, sec in ((ae_cmd, ae_last, ae_s), (vq_cmd, vq_last, vq_s)):
        took = "reused (trained by an earlier run)" if sec != sec else f"{sec:.0f} s wall"
        print(f"    {cmd}    # {last['step']} steps, {took}")
    print()
    print(f"last logged window: VQ AE rec_l2_per_pixel {ae_last['rec_l2_per_pixel']:.4f}, codes in use "
          f"{ae_last['codebook_used']}/{model.autoencoder.config.n_embed} (perplexity "
          f"{ae_last['codebook_perplexity']:.1f}); VQ-Diffusion loss {vq_last['loss']:.3f}\n")

    data_cfg = dict(model.config.data)
    ref = DatasetSource(data_cfg, n=2000)  # the training images' distribution (seed 0)
    cache = work / "ref_cache"
    held_out = DatasetSource({**data_cfg, "seed": 1}, n=args.n)  # images the autoencoder never saw
    print("| images | steps | truncation r | guidance w | shapes_acc | shapes_fd | device |")
    print("|---|---|---|---|---|---|---|")
    rows: list[tuple[str, dict]] = [
        ("held-out dataset images (reader ceiling)", {"src": held_out}),
        ("VQ AE reconstructions of them (VQ-Diffusion ceiling)", {"src": ReconSource(held_out, ae)}),
    ]
    for label, spec in rows:
        m = scores(spec["src"], ref, cache)
        print(f"| {label} | - | - | - | {m['shapes_acc']:.3f} | {m['shapes_fd']:.2f} | {cpu} |", flush=True)
    # (steps, truncation r, guidance w): steps at r = 1, w = 0; then truncation and guidance at --trunc-steps
    # and one row each at 50 steps (the preset's default)
    grid = [(s, 1.0, 0.0) for s in (100, 50, 20, 10)]
    grid += [(args.trunc_steps, r, 0.0) for r in (0.9, 0.8)] + [(50, 0.8, 0.0)]
    grid += [(args.trunc_steps, r, 1.0) for r in (1.0, 0.9, 0.8)] + [(50, 0.8, 1.0)]
    for steps, r, w in grid:
        t0 = time.perf_counter()
        src = GeneratorSource(model, args.n, seed=0, sampler="fast", steps=steps, guidance=w, truncation=r)
        m = scores(src, ref, cache)
        print(f"| VQ-Diffusion samples, {args.n} ({time.perf_counter() - t0:.0f} s) | {steps} | {r} | {w} | "
              f"{m['shapes_acc']:.3f} | {m['shapes_fd']:.2f} | {cpu} |", flush=True)

    g_cfg = load_config("shapes_unet_tiny")
    torch.manual_seed(0)
    gauss = task_class(g_cfg.task).pipeline(build_net(g_cfg.model).eval(), g_cfg,
                                            {"num_classes": 18, "image_shape": [3, 32, 32]})
    vq_params, g_params = count_parameters(model.config.model), count_parameters(g_cfg.model)
    print(f"\nimg/s, batch {args.speed_n}, median of {args.speed_reps} interleaved repeats, CFG w=1 for both "
          f"(a doubled batch for both), {cpu}, {threads} thread(s):\n")
    print(f"| network calls | VQ-Diffusion img/s ({vq_params / 1e6:.2f}M, fast sampler, 8x8 tokens + decoder) | "
          f"Gaussian UNet img/s ({g_params / 1e6:.2f}M, DDIM, 32x32 pixels) | ratio VQ/Gaussian | device |")
    print("|---|---|---|---|---|")
    img_per_s(model, 2, 2, sampler="fast", guidance=1.0)  # warm-up both
    img_per_s(gauss, 2, 2, sampler="ddim", guidance=1.0)
    for steps in (20, 10):
        v, g = [], []
        for _ in range(args.speed_reps):
            v.append(img_per_s(model, steps, args.speed_n, sampler="fast", guidance=1.0))
            g.append(img_per_s(gauss, steps, args.speed_n, sampler="ddim", guidance=1.0))
        vm, gm = statistics.median(v), statistics.median(g)
        print(f"| {steps} | {vm:.1f} | {gm:.1f} | {vm / gm:.2f} | {cpu} |", flush=True)


if __name__ == "__main__":
    main()
