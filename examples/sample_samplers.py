"""Sample the shipped class-conditional shapes UNet with every sampler, from the same seeds and classes.

    python examples/sample_samplers.py --out outputs/samplers --steps 20

Writes one grid (a row per sampler, its name at the left) so the samplers can be compared side by side:
DDPM (ancestral), DDIM, DPM-Solver++ (2M), DPM-Solver, Euler and Heun (EDM). Any model loads the same way:
`load_model` takes a shipped model's name (versadiff models), a run folder or an exported .safetensors file.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from versadiff import load_model
from versadiff.images import save_grid
from versadiff.samplers import SAMPLERS


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="shapes-unet", help="shipped model name, run folder or .safetensors")
    p.add_argument("--out", default="outputs/samplers")
    p.add_argument("--n", type=int, default=6, help="images per sampler (seeds 0..n-1, classes 0..n-1)")
    p.add_argument("--steps", type=int, default=20)
    args = p.parse_args()

    model = load_model(args.model)
    seeds = list(range(args.n))
    classes = [i % model.num_classes for i in seeds] if model.num_classes else None
    rows, names = [], []
    for sampler in SAMPLERS:
        images = model.generate(seeds, class_labels=classes, sampler=sampler, steps=args.steps)
        rows.append(images)
        names += [sampler] * len(seeds)
        print(f"{sampler:6s} {args.steps} steps: {tuple(images.shape)}")
    out = Path(args.out)
    grid = save_grid(torch.cat(rows), out / "samplers.png", nrow=args.n, labels=names)
    print(f"wrote {grid}")


if __name__ == "__main__":
    main()
