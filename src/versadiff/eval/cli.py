"""`versadiff eval`: score a checkpoint's samples, or images made elsewhere, against reference statistics.

    versadiff eval CHECKPOINT --n 50000 --ref stats.npz --metrics fid,kid,pr,acc --out report.json
    versadiff eval --images samples/ --ref data.yaml --metrics fid --out report.json
    versadiff eval --ref data.yaml --metrics fid,pr --save-ref ref.npz --out ref.json   (reference statistics only)
    accelerate launch --num_processes 8 -m versadiff.cli eval CHECKPOINT ...   (seed range split across GPUs)
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["register_eval_command", "cmd_eval"]

TRAIN_DATA = "train-data"


def register_eval_command(subparsers: Any) -> argparse.ArgumentParser:
    """Add the `eval` sub-command to an argparse sub-parser collection."""
    e = subparsers.add_parser("eval", help="FID, KID, IS, precision/recall and class accuracy of samples")
    e.add_argument("checkpoint", nargs="?", metavar="CHECKPOINT",
                   help="exported .safetensors, run folder or checkpoint dir to sample from")
    e.add_argument("--images", metavar="PATH", help="evaluate these images instead: a folder or an .npz batch")
    e.add_argument("--labels", metavar="FILE", help="class of each --images file (.txt one per line, or .npy)")
    e.add_argument("--n", type=int, help="number of samples (checkpoint: required; images: default all)")
    e.add_argument("--ref", action="append", default=[], metavar="STATS_OR_DATASET",
                   help=f"reference: statistics .npz, image folder, .npz batch, YAML data config, or "
                        f"'{TRAIN_DATA}' (the checkpoint's training data, without flips); repeat for several "
                        "feature spaces")
    e.add_argument("--ref-n", type=int, help="use the first N reference images (default: all)")
    e.add_argument("--ref-feature", metavar="NAME", help="feature space of --ref statistics that name none, e.g. "
                                                        "inception_v3_pool3 for pytorch-fid --save-stats files")
    e.add_argument("--metrics", default="fid", help="comma list: fid, kid, is, pr, fmnist_fd, fmnist_acc, "
                                                    "shapes_fd, shapes_acc, clip, acc, fd (default: fid)")
    e.add_argument("--domain", choices=["fmnist", "shapes"],
                   help="domain evaluator that 'acc' / 'fd' mean (default: from the checkpoint's dataset)")
    e.add_argument("--sampler", help="sampler (default: the run's)")
    e.add_argument("--steps", type=int, help="sampling steps (default: the run's)")
    e.add_argument("--guidance", type=float, help="CFG weight w (default: the run's)")
    e.add_argument("--truncation", type=float, metavar="R",
                   help="VQ-Diffusion truncation rate, 0 < R <= 1 (default: the run's)")
    e.add_argument("--seed", type=int, default=0, help="first seed; image i uses seed + i (default 0)")
    e.add_argument("--batch-size", type=int, default=64, help="images per batch (fixed batches keep results "
                                                               "independent of the process count)")
    e.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: the accelerate process's device)")
    e.add_argument("--inception", metavar="PATH", help="pt_inception-2015-12-05-6726825d.pth or its folder "
                                                       "(default: $VERSADIFF_INCEPTION_WEIGHTS)")
    e.add_argument("--fmnist-input", choices=["pad", "resize"],
                   help="how non-28x28 Fashion-MNIST images were enlarged (default: from the checkpoint's config)")
    e.add_argument("--clip", metavar="DIR", help="local CLIP model folder (transformers format) for 'clip'")
    e.add_argument("--prompts", metavar="FILE", help="CLIP score prompts, one line per image "
                                                     "(default: each image's class name)")
    e.add_argument("--kid-subsets", type=int, default=100)
    e.add_argument("--kid-subset-size", type=int, default=1000)
    e.add_argument("--cache", metavar="DIR", help="cache reference statistics computed from datasets here")
    e.add_argument("--save-ref", metavar="OUT.npz", help="also write the computed reference statistics here")
    e.add_argument("--out", required=True, metavar="REPORT.json", help="where to write the JSON report")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    e.set_defaults(func=cmd_eval)
    return e


def _domain_defaults(model: Any) -> tuple[str | None, str | None]:
    """(domain, fmnist input mode) implied by a checkpoint's training data config."""
    from .evaluate import DOMAINS

    data = dict(getattr(model.config, "data", {}) or {})
    domain = DOMAINS.get(str(data.get("name")))
    mode = None
    if domain == "fmnist" and tuple(model.image_shape[-2:]) != (28, 28):
        mode = data.get("resize", "pad")  # MNISTDataset's default enlargement
    return domain, mode


def _read_prompts(path: str | None) -> list[str] | None:
    if path is None:
        return None
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"prompts file {p} not found; give a text file with one prompt per line")
    return [line.strip() for line in p.read_text().splitlines() if line.strip()]


def _reference_only(args: argparse.Namespace, device: str) -> int:
    """`versadiff eval --ref DATASET --save-ref OUT.npz`: write reference statistics, sample nothing."""
    import json

    from .evaluate import EvalOptions, _state, compute_reference, parse_metrics, write_report

    if TRAIN_DATA in args.ref:
        raise ValueError(f"--ref {TRAIN_DATA} needs a CHECKPOINT; give the dataset itself")
    opts = EvalOptions(metrics=parse_metrics(args.metrics, args.domain), batch_size=args.batch_size,
                       ref_n=args.ref_n, ref_feature=args.ref_feature, inception_weights=args.inception,
                       fmnist_input=args.fmnist_input)
    report = compute_reference(args.ref, opts, args.save_ref, device=device, cache_dir=args.cache)
    write_report(report, args.out)
    if _state().is_main_process:
        print(json.dumps(report["reference_statistics"]))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Handler of `versadiff eval`: build the source, evaluate, write the report, print the metrics."""
    import json

    from .evaluate import (DatasetSource, EvalOptions, GeneratorSource, _state, evaluate, open_source,
                           parse_metrics, write_report)

    state = _state()
    device = args.device or str(state.device)
    if args.checkpoint is None and args.images is None and args.save_ref is not None:
        return _reference_only(args, device)
    if (args.checkpoint is None) == (args.images is None):
        raise ValueError("give either a CHECKPOINT to sample from or --images PATH (or only --ref with --save-ref)")
    domain, fmnist_input = args.domain, args.fmnist_input
    refs: list[Any] = []
    if args.checkpoint is not None:
        from versadiff.models import load_model

        if args.n is None:
            raise ValueError("--n is required with a CHECKPOINT (number of samples to generate)")
        if args.labels is not None:
            raise ValueError("--labels only applies to --images; a checkpoint's samples cycle through the classes")
        model = load_model(args.checkpoint, device=device)
        d, mode = _domain_defaults(model)
        domain, fmnist_input = domain or d, fmnist_input or mode
        source = GeneratorSource(model, args.n, seed=args.seed, sampler=args.sampler, steps=args.steps,
                                 guidance=args.guidance, truncation=args.truncation, device=device)
        # the training data as the network saw it, minus the random flips (a reference is not augmented)
        train_data = {k: v for k, v in dict(model.config.data).items() if k != "hflip"}
        for r in args.ref:
            refs.append(DatasetSource(train_data, n=args.ref_n) if r == TRAIN_DATA else r)
    else:
        if any(v is not None for v in (args.sampler, args.steps, args.guidance, args.truncation)):
            raise ValueError("--sampler / --steps / --guidance / --truncation only apply when sampling a CHECKPOINT")
        if TRAIN_DATA in args.ref:
            raise ValueError(f"--ref {TRAIN_DATA} needs a CHECKPOINT; with --images give the dataset itself")
        source = open_source(args.images, n=args.n, labels=args.labels)
        refs = list(args.ref)
    opts = EvalOptions(metrics=parse_metrics(args.metrics, domain), batch_size=args.batch_size,
                       kid_subsets=args.kid_subsets, kid_subset_size=args.kid_subset_size, ref_n=args.ref_n,
                       ref_feature=args.ref_feature,
                       inception_weights=args.inception, fmnist_input=fmnist_input, clip_model=args.clip,
                       prompts=_read_prompts(args.prompts), seed=args.seed)
    report = evaluate(source, refs, opts, device=device, cache_dir=args.cache, progress=not args.quiet,
                      save_ref=args.save_ref)
    write_report(report, args.out)
    if state.is_main_process:
        print(json.dumps(report["metrics"]))
        print(f"wrote {Path(args.out)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m versadiff.eval.cli ...` runs the eval command alone (same errors as `versadiff eval`)."""
    import sys

    p = argparse.ArgumentParser(prog="versadiff")
    register_eval_command(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(["eval", *(sys.argv[1:] if argv is None else argv)])
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as e:
        sys.stderr.write(f"versadiff: error: {' '.join(str(e).split())}\n")
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
