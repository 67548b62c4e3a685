"""VQ-Diffusion on shapes end to end: train shapes_vqae then shapes_vqdiffusion for a short CPU budget, then

  1. quality (shapes_acc, shapes_fd) vs sampling steps (fast sampler, stride T // steps) and truncation rate r,
  2. sampling img/s of the VQ-Diffusion model vs a Gaussian UNet of about the same parameter count
     (shapes_unet_tiny's network) at equal network calls, measured side by side in this run.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/vq.py --ae-steps 300 --vq-steps 600 --n 180

Prints markdown tables naming the CPU; paste them into benchmarks/README.md ("## VQ-Diffusion (issue 7)").
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from versadiff.config import load_config
from versadiff.eval.evaluate import DatasetSource, EvalOptions, GeneratorSource, evaluate
from versadiff.nets import build_net, count_parameters
from versadiff.pipelines import LoadedModel, load_model
from versadiff.train.trainer import Trainer


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def train(preset: str, out: Path, steps: int, extra: list[str]) -> tuple[Path, float]:
    """Train (or reuse) a run; returns (run folder, training seconds)."""
    if (out / "export" / "model.safetensors").is_file():
        return out, float("nan")
    cfg = load_config(preset, [f"train.max_steps={steps}", "train.sample_every=0",
                               f"train.checkpoint_every={steps}", *extra])
    t0 = time.perf_counter()
    Trainer(cfg, out=out, quiet=True).run()
    return out, time.perf_counter() - t0


def quality(model, n: int, ref: DatasetSource, cache: Path, **kw) -> dict[str, float]:
    src = GeneratorSource(model, n, seed=0, **kw)
    opts = EvalOptions(metrics=["shapes_acc", "shapes_fd"], batch_size=60)
    return evaluate(src, [ref], opts, cache_dir=cache)["metrics"]


def img_per_s(model, steps: int, n: int, **kw) -> float:
    labels = [i % 18 for i in range(n)]
    model.generate(range(2), class_labels=labels[:2], steps=steps, **kw)  # warm-up
    t0 = time.perf_counter()
    model.generate(range(n), class_labels=labels, steps=steps, batch_size=n, **kw)
    return n / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="runs/bench_vq", help="run folders (reused when present; runs/ is git-ignored)")
    p.add_argument("--ae-steps", type=int, default=300)
    p.add_argument("--vq-steps", type=int, default=600)
    p.add_argument("--n", type=int, default=180, help="samples per quality point (10 per class)")
    p.add_argument("--speed-n", type=int, default=36)
    args = p.parse_args()
    work = Path(args.work)
    cpu = cpu_name()
    threads = torch.get_num_threads()

    ae, ae_s = train("shapes_vqae", work / "vqae", args.ae_steps, [])
    vq, vq_s = train("shapes_vqdiffusion", work / "vqdiffusion", args.vq_steps, [f"autoencoder.path={ae}"])
    model = load_model(vq)
    print(f"device: {cpu}, {threads} thread(s); shapes_vqae {args.ae_steps} steps ({ae_s:.0f} s), "
          f"shapes_vqdiffusion {args.vq_steps} steps ({vq_s:.0f} s); {args.n} samples per point, CFG w=1\n")

    ref = DatasetSource(dict(model.config.data), n=2000)
    cache = work / "ref_cache"
    print("| steps (fast, stride 100/steps) | truncation r | shapes_acc | shapes_fd | device |")
    print("|---|---|---|---|---|")
    for steps, r in [(100, 1.0), (50, 1.0), (20, 1.0), (10, 1.0), (20, 0.9), (20, 0.85), (20, 0.8)]:
        m = quality(model, args.n, ref, cache, steps=steps, truncation=r, guidance=1.0)
        print(f"| {steps} | {r} | {m['shapes_acc']:.3f} | {m['shapes_fd']:.2f} | {cpu} |", flush=True)

    # speed: same class labels, batch, device; the Gaussian net is untrained (speed does not depend on weights)
    g_cfg = load_config("shapes_unet_tiny")
    g_net = build_net(g_cfg.model).eval()
    gauss = LoadedModel.from_net(g_net, g_cfg, {"num_classes": 18, "image_shape": [3, 32, 32]})
    vq_params = count_parameters(model.config.model)
    g_params = count_parameters(g_cfg.model)
    print(f"\n| network calls | VQ-Diffusion img/s ({vq_params / 1e6:.2f}M, 8x8 tokens + decoder) | "
          f"Gaussian UNet img/s ({g_params / 1e6:.2f}M, DDIM, 32x32 pixels) | ratio VQ/Gaussian | device |")
    print("|---|---|---|---|---|")
    for steps in (50, 20):
        # guidance doubles the batch of both models alike; run both with CFG w=1
        v = img_per_s(model, steps, args.speed_n, guidance=1.0)
        g = img_per_s(gauss, steps, args.speed_n, guidance=1.0, sampler="ddim")
        print(f"| {steps} | {v:.1f} | {g:.1f} | {v / g:.2f} | {cpu} |", flush=True)


if __name__ == "__main__":
    main()
