"""The diffusers peer of the Fashion-MNIST quality benchmark (issue 6, item 4): our own short script.

A class-conditional diffusers `UNet2DModel` (~2.1M parameters, the topology of versadiff's
`unet_tiny_gray`: 28 -> 14 -> 7, attention at 14x14, 2 heads) trained with the standard DDPM recipe
(Ho et al. 2020: linear betas 1e-4..0.02 over 1000 steps, eps-prediction, plain MSE, Algorithm 1),
AdamW with linear warm-up, gradient clipping, EMA with warm-up (diffusers' `EMAModel`), and label
dropout to a null class so that classifier-free guidance works. Same data as our preset: the
Fashion-MNIST train split from versadiff's IDX reader, [-1, 1], 28x28, horizontal flips p = 0.5.

    python benchmarks/peer_diffusers_fmnist.py train --out runs/peer --max-steps 400
    python benchmarks/peer_diffusers_fmnist.py sample runs/peer --sampler dpmpp --steps 20 --guidance 1 \
        --n 1000 --out samples.npz

Samples are written as an .npz of uint8 images [N, 28, 28] under "images" (the [-1, 1] model output
quantised exactly as our PNG writer does) and int64 "labels", which `versadiff eval --images` reads.
Guidance uses versadiff's convention w: eps = (1 + w) * eps(cond) - w * eps(null), i.e. diffusers'
guidance_scale = 1 + w.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

NUM_CLASSES = 10
NULL_LABEL = NUM_CLASSES  # the extra embedding row used for "no class" (label dropout, CFG)
TRAIN_STEPS = 1000
SAMPLERS = ("ddim", "dpmpp", "ddpm")


def build_unet() -> Any:
    """The peer network: ~2.1M parameters, close to versadiff's unet_tiny_gray (2.0M)."""
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=28, in_channels=1, out_channels=1,
        block_out_channels=(40, 72, 72), layers_per_block=2, norm_num_groups=8, attention_head_dim=36,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        num_class_embeds=NUM_CLASSES + 1,
    )


def build_train_scheduler() -> Any:
    """DDPM's training schedule (Ho et al. 2020, section 4): linear betas 1e-4..0.02, T = 1000."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=TRAIN_STEPS, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                         clip_sample=True)


def build_sampler(name: str, train_config: Any) -> Any:
    """A diffusers scheduler for sampling, built from the training scheduler's config."""
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    if name == "ddim":  # eta = 0; "trailing" spacing reaches t = T at few steps (Lin et al. 2024, table 2)
        return DDIMScheduler.from_config(train_config, timestep_spacing="trailing", clip_sample=True)
    if name == "dpmpp":  # DPM-Solver++(2M); thresholding with max value 1 clips x0 to [-1, 1] like clip_sample
        return DPMSolverMultistepScheduler.from_config(train_config, algorithm_type="dpmsolver++", solver_order=2,
                                                       thresholding=True, sample_max_value=1.0)
    if name == "ddpm":  # ancestral sampling with the fixed-small variance of the paper
        return DDPMScheduler.from_config(train_config)
    raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")


def count_parameters(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


# ---------------------------------------------------------------------------------------------------
# training


def _dataset(seed: int) -> Any:
    from versadiff.data.idx import FASHION_MNIST_CLASSES, MNISTDataset, require_fashion_mnist

    return MNISTDataset(require_fashion_mnist(), split="train", class_names=FASHION_MNIST_CLASSES, hflip=0.5,
                        seed=seed)


def _batches(dataset: Any, batch_size: int, seed: int):
    """Endless shuffled batches, one new permutation (and flip draw) per epoch."""
    epoch = 0
    while True:
        dataset.set_epoch(epoch)
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed * 1000 + epoch))
        for s in range(0, len(order) - batch_size + 1, batch_size):
            items = [dataset[i] for i in order[s:s + batch_size].tolist()]
            yield torch.stack([it["image"] for it in items]), torch.tensor([it["label"] for it in items])
        epoch += 1


def train(out: str | Path, max_steps: int, batch_size: int = 64, lr: float = 1e-3, warmup: int = 200,
          p_uncond: float = 0.1, ema_decay: float = 0.999, grad_clip: float = 1.0, seed: int = 0,
          log_every: int = 50) -> dict[str, Any]:
    """Train the peer for `max_steps` steps; writes out/unet (EMA weights, diffusers format) and out/train.json."""
    from diffusers.training_utils import EMAModel

    if max_steps < 1 or log_every < 1:
        raise ValueError(f"max_steps and log_every must be >= 1, got {max_steps} and {log_every}")
    if not 0.0 <= p_uncond < 1.0:
        raise ValueError(f"p_uncond is a probability in [0, 1), got {p_uncond}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    start = time.perf_counter()
    unet = build_unet().train()
    sched = build_train_scheduler()
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
    lr_sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, warmup)))
    # diffusers' EMA warms up as min(decay, (1 + n) / (10 + n)), like versadiff's
    ema = EMAModel(unet.parameters(), decay=ema_decay, use_ema_warmup=False)
    batches = _batches(_dataset(seed), batch_size, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    log, window, busy = [], [], 0.0
    setup_s = time.perf_counter() - start
    for step in range(1, max_steps + 1):
        t0 = time.perf_counter()
        x0, y = next(batches)
        # label dropout: the null row teaches the unconditional model needed by classifier-free guidance
        drop = torch.rand(len(y), generator=gen) < p_uncond
        y = torch.where(drop, torch.full_like(y, NULL_LABEL), y)
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, TRAIN_STEPS, (len(x0),), generator=gen)
        eps_hat = unet(sched.add_noise(x0, noise, t), t, class_labels=y).sample
        loss = F.mse_loss(eps_hat, noise)  # L_simple, Ho et al. 2020 eq. 14
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), grad_clip)
        opt.step()
        lr_sched.step()
        opt.zero_grad(set_to_none=True)
        ema.step(unet.parameters())
        busy += time.perf_counter() - t0
        window.append(loss.item())
        if step % log_every == 0 or step == max_steps:
            log.append({"step": step, "loss": sum(window) / len(window), "steps_per_s": len(window) / busy})
            window, busy = [], 0.0
    ema.copy_to(unet.parameters())
    unet.eval().save_pretrained(out / "unet", safe_serialization=True)
    record = {"steps": max_steps, "batch_size": batch_size, "lr": lr, "warmup": warmup, "p_uncond": p_uncond,
              "ema_decay": ema_decay, "grad_clip": grad_clip, "seed": seed, "parameters": count_parameters(unet),
              "setup_s": setup_s, "wall_s": time.perf_counter() - start, "log": log}
    (out / "train.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


# ---------------------------------------------------------------------------------------------------
# sampling


def load_unet(run: str | Path) -> Any:
    """The EMA network saved by `train` (safetensors)."""
    from diffusers import UNet2DModel

    path = Path(run) / "unet"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} holds no trained peer network; run `peer_diffusers_fmnist.py train --out {run}`")
    return UNet2DModel.from_pretrained(path, use_safetensors=True).eval()


@torch.no_grad()
def generate(unet: Any, seeds: Sequence[int], labels: Sequence[int], sampler: str, steps: int,
             guidance: float = 0.0, batch_size: int = 250) -> torch.Tensor:
    """Images [N, 1, 28, 28] in [-1, 1]; the starting noise of image i depends only on seeds[i]."""
    if len(seeds) != len(labels):
        raise ValueError(f"got {len(labels)} labels for {len(seeds)} seeds; give one label per seed")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if guidance < 0:
        raise ValueError(f"guidance w must be >= 0, got {guidance}")
    train_config = build_train_scheduler().config
    out = []
    for s in range(0, len(seeds), batch_size):
        chunk, y = list(seeds[s:s + batch_size]), torch.tensor(list(labels[s:s + batch_size]))
        x = torch.cat([torch.randn(1, 1, 28, 28, generator=torch.Generator().manual_seed(int(i))) for i in chunk])
        sched = build_sampler(sampler, train_config)
        sched.set_timesteps(steps)
        gen = torch.Generator().manual_seed(int(chunk[0]) + 10**6)  # ancestral noise of this batch
        for t in sched.timesteps:
            if guidance:
                both = unet(torch.cat([x, x]), t, class_labels=torch.cat([y, torch.full_like(y, NULL_LABEL)])).sample
                cond, uncond = both.chunk(2)
                eps = cond + guidance * (cond - uncond)  # = (1 + w) cond - w uncond
            else:
                eps = unet(x, t, class_labels=y).sample
            x = sched.step(eps, t, x, generator=gen).prev_sample
        out.append(x.clamp(-1, 1))
    return torch.cat(out)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[-1, 1] floats [N, 1, H, W] -> uint8 [N, H, W], rounded like versadiff's PNG writer."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)[:, 0].numpy()


def save_npz(path: str | Path, images: torch.Tensor, labels: Sequence[int]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, images=to_uint8(images), labels=np.asarray(labels, dtype=np.int64))
    return path


# ---------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="peer_diffusers_fmnist", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train the peer")
    t.add_argument("--out", required=True, help="run folder")
    t.add_argument("--max-steps", type=int, required=True)
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--warmup", type=int, default=200)
    t.add_argument("--p-uncond", type=float, default=0.1)
    t.add_argument("--ema-decay", type=float, default=0.999)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--log-every", type=int, default=50, help="steps per logged loss / throughput window")
    s = sub.add_parser("sample", help="sample a trained peer into an .npz")
    s.add_argument("run", help="run folder written by `train`")
    s.add_argument("--sampler", choices=SAMPLERS, required=True)
    s.add_argument("--steps", type=int, required=True)
    s.add_argument("--guidance", type=float, default=0.0, help="w in (1 + w) cond - w uncond")
    s.add_argument("--n", type=int, required=True)
    s.add_argument("--seed", type=int, default=0, help="image i uses seed + i and class i mod 10")
    s.add_argument("--batch-size", type=int, default=250)
    s.add_argument("--out", required=True, help="output .npz")
    args = p.parse_args(argv)
    try:
        if args.command == "train":
            rec = train(args.out, args.max_steps, args.batch_size, args.lr, args.warmup, args.p_uncond,
                        args.ema_decay, seed=args.seed, log_every=args.log_every)
            print(json.dumps({k: v for k, v in rec.items() if k != "log"}))
        else:
            if args.n < 1:
                raise ValueError(f"--n must be >= 1, got {args.n}")
            seeds = list(range(args.seed, args.seed + args.n))
            labels = [i % NUM_CLASSES for i in range(args.n)]
            images = generate(load_unet(args.run), seeds, labels, args.sampler, args.steps, args.guidance,
                              args.batch_size)
            print(f"wrote {save_npz(args.out, images, labels)}")
    except (ValueError, FileNotFoundError) as e:
        sys.stderr.write(f"peer_diffusers_fmnist: error: {e}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
