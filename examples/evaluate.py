"""Score a model's samples with versadiff's evaluation API (what `versadiff eval` and train.eval_every use).

    python examples/evaluate.py --n 1000 --ref-n 5000

Samples N images of the shipped shapes UNet (seed i, class i mod 18), reads them with the shapes attribute
reader and reports the Fréchet distance of the attribute features against the shapes dataset (shapes_fd) and
the share of samples read as the class asked for (shapes_acc). For natural images use metrics fid / kid / pr
(Inception weights: VERSADIFF_INCEPTION_WEIGHTS) and an image folder or statistics .npz as reference.
"""

from __future__ import annotations

import argparse
import json

from versadiff import load_model
from versadiff.eval import EvalOptions, GeneratorSource, evaluate
from versadiff.eval.evaluate import DatasetSource


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="shapes-unet")
    p.add_argument("--n", type=int, default=1000, help="samples to score")
    p.add_argument("--ref-n", type=int, default=5000, help="reference images from the shapes dataset")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=100)
    args = p.parse_args()

    model = load_model(args.model)
    samples = GeneratorSource(model, args.n, seed=0, steps=args.steps)
    reference = DatasetSource({"name": "shapes", "size": args.ref_n, "seed": 1})
    opts = EvalOptions(metrics=["shapes_fd", "shapes_acc"], batch_size=args.batch_size)
    report = evaluate(samples, [reference], opts)
    print(json.dumps(report["metrics"], indent=2))


if __name__ == "__main__":
    main()
