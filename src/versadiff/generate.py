"""`versadiff generate`: run one flow of a model -- text-to-image, image-variation, image-to-text, text-variation
(and class-to-image) -- or one of VD's applications (dual-guided, disentangle, i2t2i, blend; see
versadiff.applications), writing PNGs and grid.png, or captions.json, and always settings.json.

Guidance: `--guidance W` is the classifier-free weight w of (1 + w) c - w u (w = 0 is plain conditional, this
project's convention and the default); `--guidance-scale S` is diffusers' s of u + s (c - u) (s = 1 is off),
i.e. w = s - 1. VD's published default is s = 7.5 (w = 6.5).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

__all__ = ["register_generate_command", "cmd_generate", "TASK_INPUTS", "APPLICATIONS"]

#: what each flow's context is given by on the command line
TASK_INPUTS = {"text": "--prompt", "image": "--image", "class": "--class"}
#: VD's applications (versadiff.applications) and the options only they take
APPLICATIONS = ("dual-guided", "disentangle", "i2t2i", "blend")
_APP_OPTIONS = {  # option -> (args attribute, the tasks that take it)
    "--strength": ("strength", ("dual-guided", "blend")),
    "--mixing": ("mixing", ("dual-guided", "i2t2i", "blend")),
    "--mixing-seed": ("mixing_seed", ("dual-guided", "i2t2i", "blend")),
    "--target": ("target", ("dual-guided",)),
    "--level": ("level", ("dual-guided", "disentangle", "blend")),
    "--focus": ("focus", ("dual-guided", "disentangle", "blend")),
    "--edit": ("edit", ("i2t2i",)),
    "--positive": ("positive", ("i2t2i",)),
    "--negative": ("negative", ("i2t2i",)),
    "--image-strength": ("image_strength", ("i2t2i",)),
    "--weights": ("weights", ("blend",)),
}


def register_generate_command(sub: Any) -> None:
    g = sub.add_parser("generate", help="run one flow of a model: text-to-image, image-variation, image-to-text, ...")
    g.add_argument("checkpoint", metavar="CHECKPOINT", help="exported .safetensors, run folder, checkpoint dir or shipped model")
    g.add_argument("--task", required=True, metavar="FLOW",
                   help="text-to-image | image-variation | image-to-text | text-variation | class-to-image | unconditional"
                        " | dual-guided | disentangle | i2t2i | blend")
    g.add_argument("--prompt", action="append", help="the text context (text-to-image, text-variation, dual-guided; "
                                                     "blend: repeat it for several prompts)")
    g.add_argument("--image", action="append", help="the image context (image-variation, image-to-text, dual-guided, "
                                                    "disentangle, i2t2i; blend: repeat it): a PNG/JPEG path")
    g.add_argument("--class", dest="cls", help="the class context (class-to-image): index or name")
    app = g.add_argument_group("applications (versadiff.applications)")
    app.add_argument("--strength", type=float, help="dual-guided / blend: the text's weight r in [0, 1] (dual-guided "
                                                   "default 0.5; blend default: the prompts' share of --weights)")
    app.add_argument("--mixing", choices=("attention", "layer", "model"),
                     help="how the contexts mix (default attention)")
    app.add_argument("--mixing-seed", type=int, help="layer mixing: seed of the per-slot draws (default 0)")
    app.add_argument("--target", choices=("image", "text"),
                     help="dual-guided: generate an image (default) or a caption")
    app.add_argument("--level", type=int, help="disentanglement level -2..2 (-1/-2 semantic focus, +1/+2 style focus)")
    app.add_argument("--focus", type=float, help="continuous disentanglement focus in [0, 1] (0.5 = unchanged)")
    app.add_argument("--edit", action="append", metavar="OLD=NEW", help="i2t2i: a word substitution (repeatable)")
    app.add_argument("--positive", help="i2t2i: a prompt added in the text-VAE latent space")
    app.add_argument("--negative", help="i2t2i: a prompt whose direction is removed in the text-VAE latent space")
    app.add_argument("--image-strength", type=float, help="i2t2i: the input image's weight in the final generation "
                                                         "(default 0.33, VD v0)")
    app.add_argument("--weights", type=float, nargs="+", help="blend: one weight per --image, then per --prompt")
    g.add_argument("-n", "--n", type=int, default=4, help="number of samples (default 4)")
    g.add_argument("--seed", type=int, default=0, help="first seed; sample i uses seed + i")
    g.add_argument("--steps", type=int, help="sampling steps (default: the run's)")
    g.add_argument("--sampler", help="ddim, dpmpp, ddpm, euler, heun, ... (default: the run's)")
    guide = g.add_mutually_exclusive_group()
    guide.add_argument("--guidance", type=float, help="CFG weight w: (1 + w) cond - w uncond; 0 = off (default: the run's)")
    guide.add_argument("--guidance-scale", type=float, help="diffusers' scale s: uncond + s (cond - uncond); 1 = off")
    g.add_argument("--batch-size", type=int, default=16)
    g.add_argument("--device", help="cpu, cuda, ... (default: cuda if available)")
    g.add_argument("-o", "--out", required=True, help="output folder (must not exist or be empty)")
    g.add_argument("--no-labels", action="store_true", help="grid.png without the prompt / class under it")
    g.add_argument("--quiet", action="store_true")
    g.set_defaults(func=cmd_generate)


def _load_image(value: str) -> Any:
    from versadiff.data import load_image

    return load_image(Path(value)).convert("RGB")


def _context(flow: Any, args: argparse.Namespace) -> Any:
    """The flow's context from the command line, with one-line errors for what is missing or extra."""
    want = TASK_INPUTS.get(flow.flow.context) if flow.flow.context else None
    given = {opt: v for opt, v in (("--prompt", args.prompt), ("--image", args.image), ("--class", args.cls))
             if v is not None}
    extra = sorted(set(given) - {want})
    if extra:
        raise ValueError(f"--task {flow.name} takes {want or 'no context'}, not {', '.join(extra)}")
    if want is None:
        return None
    if want not in given:
        raise ValueError(f"--task {flow.name} needs {want} ({flow.flow.context} context)")
    value = given[want]
    if isinstance(value, list):
        if len(value) != 1:
            raise ValueError(f"--task {flow.name} takes one {want}, got {len(value)}")
        value = value[0]
    if want == "--image":
        return _load_image(value)
    return value


def _check_app_options(args: argparse.Namespace) -> None:
    """Application options only with the tasks that take them (one-line errors)."""
    for opt, (attr, tasks) in _APP_OPTIONS.items():
        if getattr(args, attr, None) is not None and args.task not in tasks:
            raise ValueError(f"{opt} applies to --task {' / '.join(tasks)}, not {args.task}")


def cmd_generate(args: argparse.Namespace) -> int:
    import torch

    from versadiff.images import save_grid, to_pil
    from versadiff.models import load_model
    from versadiff.outputs import library_versions, prepare_output_dir, write_json

    if args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    _check_app_options(args)
    out = prepare_output_dir(args.out)
    model = load_model(args.checkpoint)
    guidance = args.guidance if args.guidance_scale is None else args.guidance_scale - 1.0
    seeds = list(range(args.seed, args.seed + args.n))
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    progress = not args.quiet and sys.stderr.isatty()
    extra: dict[str, Any] = {}
    rows = None
    if args.task in APPLICATIONS:
        req, result, extra, rows = _run_application(model, args, seeds, guidance, device, progress)
    else:
        if args.task not in model.flows:
            raise ValueError(f"{args.checkpoint} has no {args.task!r} flow; its flows: {', '.join(model.flows)}")
        flow = model.flows[args.task]
        context = _context(flow, args)
        kw = dict(flow=args.task, context=context, sampler=args.sampler, steps=args.steps, guidance=guidance,
                  batch_size=args.batch_size)
        req = model.request(seeds, **kw)  # every check before any work
        result = model.generate(seeds, device=device, progress=progress, **kw)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    if torch.is_tensor(result):
        for seed, img in zip(seeds, to_pil(result)):
            img.save(out / f"seed{seed:06d}.png")
            files.append(f"seed{seed:06d}.png")
        save_grid(result, out / "grid.png", nrow=min(8, len(seeds)),
                  labels=None if args.no_labels else _grid_labels(model, args, len(seeds), rows))
        files.append("grid.png")
    else:
        rows = [{"seed": s, "text": t} for s, t in zip(seeds, result)]
    if rows is not None:
        write_json(out / "captions.json", rows)
        files.append("captions.json")
    one = lambda v: v[0] if isinstance(v, list) and len(v) == 1 else v  # noqa: E731
    settings = {"checkpoint": model.source, "step": model.step, "task": args.task, "n": args.n, "seed": args.seed,
                "prompt": one(args.prompt), "image": one(args.image), "class": args.cls, **extra,
                "sampler": req.sampler, "steps": req.steps, "guidance": req.guidance,
                "guidance_scale": req.guidance + 1.0,
                "guidance_convention": "(1 + w) * cond - w * uncond = uncond + s * (cond - uncond), s = 1 + w",
                "batch_size": args.batch_size, "device": str(device), "files": files, "versions": library_versions()}
    write_json(out / "settings.json", settings)
    if not args.quiet:
        print(f"wrote {', '.join(files[:3])}{' ...' if len(files) > 3 else ''} and settings.json to {out}")
    return 0


def _grid_labels(model: Any, args: argparse.Namespace, n: int, rows: list[dict[str, Any]] | None) -> list[str] | None:
    """grid.png's captions: each image's own prompt (i2t2i), else the prompt(s) or class every image was made for."""
    if rows and all("prompt" in r for r in rows) and len(rows) == n:
        return [str(r["prompt"]) for r in rows]
    if args.prompt:
        return [" + ".join(args.prompt)] * n
    if args.cls is not None:
        try:
            k = model.class_index(args.cls)
            names = list(model.class_names or [])
            return [names[k] if 0 <= k < len(names) else f"class {k}"] * n
        except (ValueError, AttributeError, TypeError):
            return [str(args.cls)] * n
    return None


def _inputs(args: argparse.Namespace, prompts: str, images: str) -> tuple[list[str], list[str]]:
    """The --prompt / --image values of an application, counted: "1" exactly one, "0" none, "+" any number."""
    given = {"--prompt": list(args.prompt or []), "--image": list(args.image or [])}
    for opt, rule in (("--prompt", prompts), ("--image", images)):
        n = len(given[opt])
        if rule == "0" and n:
            raise ValueError(f"--task {args.task} takes no {opt}")
        if rule == "1" and n != 1:
            raise ValueError(f"--task {args.task} needs one {opt}" + (f", got {n}" if n else ""))
    return given["--prompt"], given["--image"]


def _run_application(model: Any, args: argparse.Namespace, seeds: list[int], guidance: float | None, device: str,
                     progress: bool) -> tuple[Any, Any, dict[str, Any], list[dict[str, Any]] | None]:
    """One of VD's applications from the command line: (request, result, settings entries, caption rows)."""
    from versadiff.applications import check_strength, parse_edits
    from versadiff.applications.disentangle import check_focus, check_level
    from versadiff.applications.mixing import flow_for

    task = args.task
    if args.level is not None and args.focus is not None:
        raise ValueError("give --level or --focus, not both")
    level = check_level(args.level) if args.level is not None else 0
    focus = check_focus(args.focus) if args.focus is not None else None
    common = dict(sampler=args.sampler, steps=args.steps, guidance=guidance, batch_size=args.batch_size,
                  device=device, progress=progress)
    mixing = args.mixing or "attention"
    if args.mixing_seed is not None:
        common["mixing_seed"] = args.mixing_seed
    target = args.target or "image"
    if task == "dual-guided":
        prompts, images = _inputs(args, "1", "1")
        r = check_strength(0.5 if args.strength is None else args.strength)
        ref = flow_for(model, target, "text" if r > 0 else "image")
        req = model.request(seeds, flow=ref.name, sampler=args.sampler, steps=args.steps, guidance=guidance,
                            batch_size=args.batch_size)
        result = model.dual_guided(prompts[0], _load_image(images[0]), seeds, strength=r, mixing=mixing,
                                   data=target, level=level, focus=focus, **common)
        return req, result, {"strength": r, "mixing": mixing, "target": target, "level": level, "focus": focus}, None
    if task == "disentangle":
        _, images = _inputs(args, "0", "1")
        ref = flow_for(model, "image", "image")
        req = model.request(seeds, flow=ref.name, sampler=args.sampler, steps=args.steps, guidance=guidance,
                            batch_size=args.batch_size)
        common.pop("mixing_seed", None)
        result = model.disentangle(_load_image(images[0]), seeds, level=level, focus=focus, **common)
        return req, result, {"level": level, "focus": focus}, None
    if task == "i2t2i":
        _, images = _inputs(args, "0", "1")
        edits = parse_edits(args.edit)
        s = check_strength(0.33 if args.image_strength is None else args.image_strength, "--image-strength")
        flow_for(model, "text", "image")
        req = model.request(seeds, flow=flow_for(model, "image", "text").name, sampler=args.sampler,
                            steps=args.steps, guidance=guidance, batch_size=args.batch_size)
        res = model.i2t2i(_load_image(images[0]), seeds, edits=edits, positive=args.positive, negative=args.negative,
                          image_strength=s, mixing=mixing, **common)
        rows = [{"seed": sd, "caption": c, "prompt": p} for sd, c, p in zip(seeds, res.captions, res.prompts)]
        return req, res.images, {"edits": edits, "positive": args.positive, "negative": args.negative,
                                 "image_strength": s, "mixing": mixing}, rows
    # blend
    prompts, images = _inputs(args, "+", "+")
    if not prompts and not images:
        raise ValueError("--task blend needs at least one --image or --prompt")
    weights = list(args.weights) if args.weights is not None else [1.0] * (len(images) + len(prompts))
    if len(weights) != len(images) + len(prompts):
        raise ValueError(f"--weights takes one weight per --image, then per --prompt: {len(images)} + "
                         f"{len(prompts)} = {len(images) + len(prompts)}, got {len(weights)}")
    strength = check_strength(args.strength) if args.strength is not None else None
    req = model.request(seeds, flow=flow_for(model, "image", "image" if images else "text").name,
                        sampler=args.sampler, steps=args.steps, guidance=guidance, batch_size=args.batch_size)
    result = model.blend(seeds, images=[_load_image(p) for p in images], prompts=prompts,
                         image_weights=weights[: len(images)], prompt_weights=weights[len(images):],
                         strength=strength, mixing=mixing, level=level, focus=focus, **common)
    return req, result, {"weights": weights, "strength": strength, "mixing": mixing, "level": level,
                         "focus": focus}, None
