"""`versadiff eval`: score a checkpoint's samples, or images made elsewhere, against reference statistics.

    versadiff eval CHECKPOINT --n 50000 --ref stats.npz --metrics fid,kid,pr,acc --out report.json
    versadiff eval --images samples/ --ref data.yaml --metrics fid --out report.json
    versadiff eval --ref data.yaml --metrics fid,pr --save-ref ref.npz --out ref.json   (reference statistics only)
    accelerate launch --num_processes 8 -m versadiff.cli eval CHECKPOINT ...   (seed range split across GPUs)

A multi-flow (VD) model's flows, against a caption set in COCO-captions JSON format (versadiff.eval.vd):

    versadiff eval --write-caption-set shapes -n 200 -o shapes_captions/     (held-out shapes as a caption set)
    versadiff eval vd-shapes --task text-to-image --captions shapes_captions/ --metrics fid,clip -o t2i.json
    versadiff eval vd-shapes --task image-to-text --captions shapes_captions/ --metrics bleu,chrf,clip -o i2t.json

Every output (--out, --save-ref) and the sampling request are checked before any work: an existing report or
statistics file is refused, and with --force replaced only when versadiff wrote it. --precision (default auto:
bf16 where the device runs it natively, else fp32) applies to sampling only, never to the feature extractors.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["register_eval_command", "cmd_eval", "check_sampling_options", "check_outputs"]

TRAIN_DATA = "train-data"


def register_eval_command(subparsers: Any) -> argparse.ArgumentParser:
    """Add the `eval` sub-command to an argparse sub-parser collection."""
    e = subparsers.add_parser("eval", help="FID, KID, IS, precision/recall, class accuracy and CLIP score of samples; "
                                           "BLEU / chrF / CLIP score of VD's image -> text captions")
    e.add_argument("checkpoint", nargs="?", metavar="CHECKPOINT",
                   help="exported .safetensors, run folder, checkpoint dir or shipped model name to sample from")
    e.add_argument("--images", metavar="PATH", help="evaluate these images instead: a folder or an .npz batch")
    e.add_argument("--labels", metavar="FILE", help="class of each --images file (.txt one per line, or .npy)")
    e.add_argument("-n", "--n", type=int, help="number of samples (checkpoint: required; images: default all)")
    e.add_argument("--ref", action="append", default=[], metavar="STATS_OR_DATASET",
                   help=f"reference: statistics .npz, image folder, .npz batch, YAML data config, or "
                        f"'{TRAIN_DATA}' (the checkpoint's training data, without flips); repeat for several "
                        "feature spaces")
    e.add_argument("--ref-n", type=int, help="use the first N reference images (default: all)")
    e.add_argument("--ref-feature", metavar="NAME", help="feature space of --ref statistics that name none, e.g. "
                                                        "inception_v3_pool3 for pytorch-fid --save-stats files")
    e.add_argument("--metrics", help="comma list: fid, kid, is, pr, fmnist_fd, fmnist_acc, shapes_fd, shapes_acc, "
                                     "clip, acc, fd (default: fid); --task image-to-text: bleu, chrf, clip (default: "
                                     "all three); --task text-to-image: the image metrics without *_acc (default: "
                                     "fid,clip)")
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
    e.add_argument("--clip", "--clip-model", dest="clip", metavar="DIR",
                   help="local CLIP model folder for 'clip' (transformers CLIPModel, or a versadiff ClipPair folder; "
                        "default with --task: the model's own CLIP)")
    e.add_argument("--prompts", metavar="FILE", help="CLIP score prompts, one line per image "
                                                     "(default: each image's class name)")
    vd = e.add_argument_group("multi-flow (VD) models: score a flow against a caption set (versadiff.eval.vd)")
    vd.add_argument("--task", metavar="FLOW", help="text-to-image (image metrics against the caption set's images, "
                                                   "CLIP score against the prompts) or image-to-text (BLEU, chrF "
                                                   "against every reference caption, CLIP score against the image)")
    vd.add_argument("--captions", metavar="DIR_OR_JSON",
                    help="the caption set: a COCO-captions JSON ({images: [{id, file_name}], annotations: "
                         "[{image_id, caption}]}) or a folder holding captions.json; -n defaults to its image count")
    vd.add_argument("--caption-images", metavar="DIR",
                    help="folder the JSON's file_name entries are under (default: the JSON's folder)")
    vd.add_argument("--write-caption-set", metavar="NAME",
                    help="write a caption set instead of evaluating: 'shapes' (-n held-out shapes items) as the new "
                         "folder -o DIR (captions.json + PNGs)")
    e.add_argument("--kid-subsets", type=int, default=100)
    e.add_argument("--kid-subset-size", type=int, default=1000)
    e.add_argument("--cache", metavar="DIR", help="cache reference statistics computed from datasets here")
    e.add_argument("--save-ref", metavar="OUT.npz", help="also write the computed reference statistics here")
    e.add_argument("--precision", choices=["auto", "no", "bf16", "fp16"], default="auto",
                   help="sampling precision: auto (default; bf16 where the device runs it natively, else fp32), no "
                        "(fp32), bf16, fp16 (GPU only); metrics are always computed in fp32")
    e.add_argument("-o", "--out", required=True, metavar="REPORT.json",
                   help="where to write the JSON report (a new file); with --write-caption-set the new folder")
    e.add_argument("--force", action="store_true", help="replace an existing versadiff report / statistics file")
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


def check_sampling_options(args: argparse.Namespace) -> None:
    """The numbers of `sample` / `eval` options, before anything is loaded: one line naming the option."""
    import math

    n = getattr(args, "n", None)
    if n is not None and n < 1:
        raise ValueError(f"--n must be >= 1, got {n}")
    if getattr(args, "batch_size", 1) < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if getattr(args, "steps", None) is not None and args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    g = getattr(args, "guidance", None)
    if g is not None and not math.isfinite(g):
        raise ValueError(f"--guidance must be a finite number, got {g}")
    r = getattr(args, "truncation", None)
    if r is not None and not 0.0 < r <= 1.0:
        raise ValueError(f"--truncation must lie in (0, 1], got {r}")
    seed = getattr(args, "seed", 0)
    if seed is not None and not -(2**63) <= seed <= 2**64 - 1 - (n or 1):
        raise ValueError(f"--seed must lie in [-2**63, 2**64 - n), got {seed}")


def _is_report(path: Path) -> bool:
    """A JSON report `versadiff eval` wrote (metrics or reference statistics, with library versions)."""
    import json

    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(data, dict) and "versions" in data and ("metrics" in data or "reference_statistics" in data)


def _is_stats(path: Path) -> bool:
    """A statistics .npz versadiff wrote (mu, sigma, n, feature)."""
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as z:
            return {"mu", "sigma", "n", "feature"} <= set(z.files)
    except Exception:
        return False


def _check_output(path: Path, option: str, force: bool, ours: Any, what: str) -> None:
    from versadiff.errors import OutputExistsError

    if path.is_dir():
        raise OutputExistsError(f"{option} {path} is a folder; give a file name")
    anc = path.parent if str(path.parent) else Path(".")
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if anc.exists() and not anc.is_dir():
        raise OutputExistsError(f"{option} {path}: {anc} is a file, not a folder")
    if not path.exists():
        return
    if not force:
        raise OutputExistsError(f"{option} {path} exists; choose another name, or add --force to replace it (only a "
                                f"{what} versadiff wrote is ever replaced)")
    if not ours(path):
        raise OutputExistsError(f"{option} {path} exists and is not a {what} versadiff wrote; refusing to replace it "
                                "even with --force")


def check_outputs(args: argparse.Namespace) -> None:
    """--out and every --save-ref file, before any work."""
    from .evaluate import METRICS, _save_path, parse_metrics

    _check_output(Path(args.out), "--out", args.force, _is_report, "report")
    if args.save_ref is not None:
        if not str(args.save_ref).endswith(".npz"):
            raise ValueError(f"--save-ref {args.save_ref}: statistics files end in .npz")
        if getattr(args, "task", None) is not None:
            from .vd import parse_task_metrics

            metrics = parse_task_metrics(args.task, args.metrics)
        else:
            metrics = parse_metrics(args.metrics or "fid", args.domain)
        keys = sorted({METRICS[m][0] for m in metrics if m in METRICS})
        for key in keys or [None]:
            path = _save_path(args.save_ref, key, metrics) if key else Path(args.save_ref)
            if path is not None:
                _check_output(Path(path), "--save-ref", args.force, _is_stats, "statistics file")


def _with_precision(model: Any, precision: str, device: Any) -> Any:
    """`model` whose generate() runs under autocast at `precision` (the feature extractors stay fp32)."""
    from versadiff.precision import autocast

    if precision == "no":
        return model
    generate = model.generate

    def generate_at_precision(*args: Any, **kw: Any) -> Any:
        with autocast(precision, kw.get("device", device)):
            return generate(*args, **kw)

    model.generate = generate_at_precision
    return model


def _reference_only(args: argparse.Namespace, device: str) -> int:
    """`versadiff eval --ref DATASET --save-ref OUT.npz`: write reference statistics, sample nothing."""
    import json

    from .evaluate import EvalOptions, _state, compute_reference, parse_metrics, write_report

    if TRAIN_DATA in args.ref:
        raise ValueError(f"--ref {TRAIN_DATA} needs a CHECKPOINT; give the dataset itself")
    opts = EvalOptions(metrics=parse_metrics(args.metrics or "fid", args.domain), batch_size=args.batch_size,
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

    from versadiff.precision import resolve_device, resolve_precision

    check_sampling_options(args)
    if args.write_caption_set is not None:
        return _write_caption_set(args)
    if args.task is not None:
        return _flow_eval(args)
    for opt, value in (("--captions", args.captions), ("--caption-images", args.caption_images)):
        if value is not None:
            raise ValueError(f"{opt} applies to --task text-to-image / image-to-text (a VD model's flows)")
    check_outputs(args)  # nothing is computed before every output path is known to be writable and new
    state = _state()
    device = str(resolve_device(args.device)) if args.device else str(state.device)
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
        precision, why = resolve_precision(args.precision, device, key="--precision")
        model = load_model(args.checkpoint, device=device)
        d, mode = _domain_defaults(model)
        domain, fmnist_input = domain or d, fmnist_input or mode
        source = GeneratorSource(model, args.n, seed=args.seed, sampler=args.sampler, steps=args.steps,
                                 guidance=args.guidance, truncation=args.truncation, device=device)
        extra = {} if args.truncation is None else {"truncation": args.truncation}
        model.request(list(range(args.seed, args.seed + min(args.n, args.batch_size))), sampler=source.sampler,
                      steps=source.steps, guidance=source.guidance, batch_size=args.batch_size,
                      class_labels=None if source.labels is None else source.labels[: min(args.n, args.batch_size)],
                      **extra)  # a bad sampler / guidance fails here, not after the feature extractors loaded
        _with_precision(model, precision, device)
        source.description["precision"] = precision
        # the training data as the network saw it, minus the random flips (a reference is not augmented)
        train_data = {k: v for k, v in dict(model.config.data).items() if k != "hflip"}
        for r in args.ref:
            refs.append(DatasetSource(train_data, n=args.ref_n) if r == TRAIN_DATA else r)
    else:
        if any(v is not None for v in (args.sampler, args.steps, args.guidance, args.truncation)):
            raise ValueError("--sampler / --steps / --guidance / --truncation only apply when sampling a CHECKPOINT")
        if args.precision not in ("auto", "no"):
            raise ValueError("--precision only applies when sampling a CHECKPOINT")
        if TRAIN_DATA in args.ref:
            raise ValueError(f"--ref {TRAIN_DATA} needs a CHECKPOINT; with --images give the dataset itself")
        source = open_source(args.images, n=args.n, labels=args.labels)
        refs = list(args.ref)
    opts = EvalOptions(metrics=parse_metrics(args.metrics or "fid", domain), batch_size=args.batch_size,
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


def _write_caption_set(args: argparse.Namespace) -> int:
    """`versadiff eval --write-caption-set shapes -n N -o DIR`: a COCO-captions folder, nothing evaluated."""
    from .captions import write_caption_set

    extra = [opt for opt, v in (("CHECKPOINT", args.checkpoint), ("--task", args.task), ("--images", args.images),
                                ("--captions", args.captions), ("--ref", args.ref or None)) if v is not None]
    if extra:
        raise ValueError(f"--write-caption-set writes a caption set and evaluates nothing: drop {', '.join(extra)}")
    if args.n is None:
        raise ValueError("--write-caption-set needs -n N (how many images to write)")
    path = write_caption_set(args.write_caption_set, args.out, args.n)
    if not args.quiet:
        print(f"wrote {args.n} images and {path}")
    return 0


def _flow_eval(args: argparse.Namespace) -> int:
    """`versadiff eval CHECKPOINT --task text-to-image|image-to-text --captions SET`: a VD flow's metrics."""
    import json

    from versadiff.precision import resolve_device, resolve_precision

    from .captions import load_caption_set
    from .evaluate import EvalOptions, _state, write_report
    from .vd import check_task, evaluate_flow, parse_task_metrics

    if args.checkpoint is None:
        raise ValueError(f"--task {args.task} needs a CHECKPOINT (a VD model: shipped name, run folder or "
                         ".safetensors)")
    for opt, value in (("--images", args.images), ("--labels", args.labels), ("--ref", args.ref or None),
                       ("--prompts", args.prompts), ("--truncation", args.truncation), ("--domain", args.domain),
                       ("--ref-feature", args.ref_feature)):
        if value is not None:
            raise ValueError(f"{opt} does not apply to --task {args.task}: the caption set (--captions) gives the "
                             "inputs and the reference")
    metrics = parse_task_metrics(args.task, args.metrics)
    check_outputs(args)
    if args.captions is None:
        raise ValueError(f"--task {args.task} needs --captions DIR_OR_JSON (a COCO-captions set; write the shapes one "
                         "with: versadiff eval --write-caption-set shapes -n 200 -o DIR)")
    captions = load_caption_set(args.captions, args.caption_images)
    state = _state()
    device = str(resolve_device(args.device)) if args.device else str(state.device)
    precision, _ = resolve_precision(args.precision, device, key="--precision")
    from versadiff.models import load_model

    model = load_model(args.checkpoint, device=device)
    check_task(model, args.task, str(args.checkpoint))
    _with_precision(model, precision, device)
    opts = EvalOptions(metrics=metrics, batch_size=args.batch_size, kid_subsets=args.kid_subsets,
                       kid_subset_size=args.kid_subset_size, ref_n=args.ref_n, inception_weights=args.inception,
                       fmnist_input=args.fmnist_input, clip_model=args.clip, seed=args.seed)
    report = evaluate_flow(model, args.task, captions, opts, n=args.n, sampler=args.sampler, steps=args.steps,
                           guidance=args.guidance, device=device, cache_dir=args.cache, progress=not args.quiet,
                           save_ref=args.save_ref)
    report["samples"]["precision"] = precision
    write_report(report, args.out)
    if state.is_main_process:
        print(json.dumps(report["metrics"]))
        print(f"wrote {Path(args.out)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m versadiff.eval.cli ...` runs the eval command alone (same errors as `versadiff eval`)."""
    import os
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = bool(os.environ.get("VERSADIFF_DEBUG")) or "--debug" in argv
    p = argparse.ArgumentParser(prog="versadiff")
    register_eval_command(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(["eval", *[a for a in argv if a != "--debug"]])
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        sys.stderr.write("versadiff: interrupted\n")
        return 130
    except Exception as e:
        if debug:
            raise
        from versadiff.errors import report_error

        return report_error(e)


if __name__ == "__main__":
    raise SystemExit(main())
