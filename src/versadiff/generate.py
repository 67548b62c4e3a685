"""`versadiff generate`: run one flow of a model -- text-to-image, image-variation, image-to-text, text-variation
(and class-to-image) -- writing PNGs and grid.png, or captions.json, and always settings.json.

Guidance: `--guidance W` is the classifier-free weight w of (1 + w) c - w u (w = 0 is plain conditional, this
project's convention and the default); `--guidance-scale S` is diffusers' s of u + s (c - u) (s = 1 is off),
i.e. w = s - 1. VD's published default is s = 7.5 (w = 6.5).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

__all__ = ["register_generate_command", "cmd_generate", "TASK_INPUTS"]

#: what each flow's context is given by on the command line
TASK_INPUTS = {"text": "--prompt", "image": "--image", "class": "--class"}


def register_generate_command(sub: Any) -> None:
    g = sub.add_parser("generate", help="run one flow of a model: text-to-image, image-variation, image-to-text, ...")
    g.add_argument("checkpoint", metavar="CHECKPOINT", help="exported .safetensors, run folder, checkpoint dir or shipped model")
    g.add_argument("--task", required=True, metavar="FLOW",
                   help="text-to-image | image-variation | image-to-text | text-variation | class-to-image | unconditional")
    g.add_argument("--prompt", help="the text context (text-to-image, text-variation)")
    g.add_argument("--image", help="the image context (image-variation, image-to-text): a PNG/JPEG path")
    g.add_argument("--class", dest="cls", help="the class context (class-to-image): index or name")
    g.add_argument("--n", type=int, default=4, help="number of samples (default 4)")
    g.add_argument("--seed", type=int, default=0, help="first seed; sample i uses seed + i")
    g.add_argument("--steps", type=int, help="sampling steps (default: the run's)")
    g.add_argument("--sampler", help="ddim, dpmpp, ddpm, euler, heun, ... (default: the run's)")
    guide = g.add_mutually_exclusive_group()
    guide.add_argument("--guidance", type=float, help="CFG weight w: (1 + w) cond - w uncond; 0 = off (default: the run's)")
    guide.add_argument("--guidance-scale", type=float, help="diffusers' scale s: uncond + s (cond - uncond); 1 = off")
    g.add_argument("--batch-size", type=int, default=16)
    g.add_argument("--device", help="cpu, cuda, ... (default: cuda if available)")
    g.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    g.add_argument("--quiet", action="store_true")
    g.set_defaults(func=cmd_generate)


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
    if want == "--image":
        from versadiff.data import load_image

        return load_image(Path(value)).convert("RGB")
    return value


def cmd_generate(args: argparse.Namespace) -> int:
    import torch

    from versadiff.images import save_grid, to_pil
    from versadiff.models import load_model
    from versadiff.outputs import library_versions, prepare_output_dir, write_json

    if args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    out = prepare_output_dir(args.out)
    model = load_model(args.checkpoint)
    if args.task not in model.flows:
        raise ValueError(f"{args.checkpoint} has no {args.task!r} flow; its flows: {', '.join(model.flows)}")
    flow = model.flows[args.task]
    context = _context(flow, args)
    guidance = args.guidance if args.guidance_scale is None else args.guidance_scale - 1.0
    seeds = list(range(args.seed, args.seed + args.n))
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    kw = dict(flow=args.task, context=context, sampler=args.sampler, steps=args.steps, guidance=guidance,
              batch_size=args.batch_size)
    req = model.request(seeds, **kw)  # every check before any work
    result = model.generate(seeds, device=device, progress=not args.quiet and sys.stderr.isatty(), **kw)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    if torch.is_tensor(result):
        for seed, img in zip(seeds, to_pil(result)):
            img.save(out / f"seed{seed:06d}.png")
            files.append(f"seed{seed:06d}.png")
        save_grid(result, out / "grid.png", nrow=min(8, len(seeds)))
        files.append("grid.png")
    else:
        write_json(out / "captions.json", [{"seed": s, "text": t} for s, t in zip(seeds, result)])
        files.append("captions.json")
    settings = {"checkpoint": model.source, "step": model.step, "task": args.task, "n": args.n, "seed": args.seed,
                "prompt": args.prompt, "image": args.image, "class": args.cls, "sampler": req.sampler,
                "steps": req.steps, "guidance": req.guidance, "guidance_scale": req.guidance + 1.0,
                "guidance_convention": "(1 + w) * cond - w * uncond = uncond + s * (cond - uncond), s = 1 + w",
                "batch_size": args.batch_size, "device": str(device), "files": files, "versions": library_versions()}
    write_json(out / "settings.json", settings)
    if not args.quiet:
        print(f"wrote {', '.join(files[:3])}{' ...' if len(files) > 3 else ''} and settings.json to {out}")
    return 0
