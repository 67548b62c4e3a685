"""Versatile Diffusion's flows with the shipped miniature (`vd-shapes`): text -> image -> text.

    python examples/generate_vd.py --prompt "a big red circle at the top left" --n 4

One network: the prompt is drawn (text-to-image), each drawing is captioned back (image-to-text), and the
drawings get variations (image-variation). A grid with the prompt under the drawings and one with each caption
under its variation are written to --out. The same calls work for every flow of a VD model: `versadiff
generate vd-shapes --task FLOW ...` on the command line.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from versadiff import load_model
from versadiff.images import save_grid


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--prompt", default="a big red circle at the top left")
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--out", default="outputs/vd")
    args = p.parse_args()

    model = load_model("vd-shapes")
    seeds = list(range(args.n))
    images = model.generate(seeds, flow="text-to-image", context=args.prompt, steps=args.steps)
    captions = model.generate(seeds, flow="image-to-text", context=list(images), steps=args.steps)
    variations = model.generate(seeds, flow="image-variation", context=list(images), steps=args.steps)
    out = Path(args.out)
    save_grid(images, out / "text_to_image.png", nrow=args.n, labels=[args.prompt] * args.n)
    save_grid(torch.as_tensor(variations), out / "variations.png", nrow=args.n, labels=list(captions))
    for seed, caption in zip(seeds, captions):
        print(f"seed {seed}: {caption}")
    print(f"wrote {out / 'text_to_image.png'} and {out / 'variations.png'}")


if __name__ == "__main__":
    main()
