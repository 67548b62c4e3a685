"""The `versadiff` command: train, sample, generate, eval, demo, presets, models, export, convert, shards, serve.

Start-up stays fast: this module and the parsers import no torch; each command imports what it runs.

Every error a user can cause (bad config or option, missing or damaged file, a device the machine lacks, an output
that would overwrite something) prints `versadiff: error: <one line naming the file or option and the fix>` and
exits with status 2; anything else is a bug and prints `versadiff: internal error: ...` (status 1). Tracebacks
only with `--debug` (anywhere on the command line) or VERSADIFF_DEBUG=1.
Several GPUs: `accelerate launch --num_processes 4 -m versadiff.cli train CONFIG ...` (no code change).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any, NoReturn, Sequence

from versadiff.errors import OutputExistsError, VersadiffError, report_error

__all__ = ["main", "build_parser", "CLIError"]

DEMO_ASSET = "demo_shapes_unet.safetensors"
DEMO_PER_CLASS = 4
DEMO_SAMPLER, DEMO_STEPS = "dpmpp", 20  # DPM-Solver++(2M): 20 steps match 50 DDIM steps here (README) at 2.5x less time


class CLIError(VersadiffError):
    """A user error with a one-line message."""


class _Parser(argparse.ArgumentParser):
    """argparse with the project's one-line error format."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"versadiff: error: {message} (see {self.prog} --help)\n")
        sys.exit(2)


# ---------------------------------------------------------------------------------------------------
# train


def cmd_train(args: argparse.Namespace) -> int:
    from versadiff.config import format_config, load_config

    overrides = list(args.set or [])
    config = args.config
    if config is None and overrides and "=" not in overrides[-1]:
        config = overrides.pop()  # `train --set a=1 CONFIG`: --set took CONFIG, which is no KEY=VALUE
    resume = args.resume
    if config is None and not resume:
        raise CLIError("the following arguments are required: CONFIG (a preset name or YAML path; with --resume "
                       "the run's own config is used)")
    if args.allow_change and not resume:
        raise CLIError("--allow-change only applies with --resume")
    from versadiff.tasks import check_config

    if config is None:  # --resume: the run's own config (as its checkpoint recorded it), --set applied on top
        from versadiff.train.trainer import resume_config

        resume, cfg = resume_config(resume, args.out, overrides, tidy=not args.dry_run)
    else:
        cfg = check_config(load_config(config, overrides))
    if args.dry_run:
        sys.stdout.write(format_config(cfg))
        return 0
    from versadiff.train.trainer import Trainer

    trainer = Trainer(cfg, out=args.out, resume=resume, quiet=args.quiet, force=args.force,
                      allow_change=[k.strip() for a in args.allow_change or [] for k in a.split(",") if k.strip()])
    run_dir = trainer.run()
    if trainer.accelerator.is_main_process and not args.quiet:
        print(f"run folder: {run_dir}")
        print(f"exported weights: {run_dir / 'export' / 'model.safetensors'}")
    return 0


# ---------------------------------------------------------------------------------------------------
# sample


def _package_version() -> str:
    from versadiff import _version

    return _version()


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    import torch

    return {"versadiff": version("versadiff"), "torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform()}


def _cycle_labels(model: Any, n: int, cls: str | None) -> list[int] | None:
    """--class C for all images, or cycle through the classes (class-conditional models)."""
    if cls is not None:
        return [model.class_index(cls)] * n
    if model.num_classes:
        return [i % model.num_classes for i in range(n)]
    return None


def _cycle_prompts(model: Any, n: int, prompts: list[str] | None, cls: str | None) -> list[str] | None:
    """--prompt TEXT (repeatable: image i uses prompt i mod k) for a model with a text-to-image flow."""
    if not prompts:
        return None
    if cls is not None:
        raise CLIError("give --class or --prompt, not both")
    if "text-to-image" not in model.flows:
        raise CLIError(f"--prompt needs a text-to-image model; {model.source} has the flows {', '.join(model.flows)}")
    return [prompts[i % len(prompts)] for i in range(n)]


SAMPLE_MARK = "versadiff sample"  # settings.json's "written_by": what `sample --force` may replace


def _sample_files(settings: dict[str, Any]) -> set[str] | None:
    """The files a previous `versadiff sample` wrote into its folder (from its settings.json); None if it is not one."""
    images = settings.get("images") if isinstance(settings, dict) else None
    if not isinstance(images, list) or not ("checkpoint" in settings and "sampler" in settings):
        return None
    files = {"settings.json", "grid.png"}
    for r in images:
        if not isinstance(r, dict) or not isinstance(r.get("file"), str) or "/" in r["file"] or r["file"].startswith("."):
            return None
        files.add(r["file"])
    return files


def prepare_sample_dir(path: str | Path, force: bool, option: str = "--out") -> tuple[Path, list[Path]]:
    """(folder, files to remove first): a folder that is new or empty, or -- with force -- a previous `versadiff
    sample` folder holding nothing but what it wrote. Anything else is a one-line OutputExistsError."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{option} {out} is a file; give a folder (new or empty)")
    anc = out
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if anc.exists() and not anc.is_dir():
        raise OutputExistsError(f"{option} {out}: {anc} is a file, not a folder")
    if anc.exists() and not os.access(anc, os.W_OK | os.X_OK):
        raise OutputExistsError(f"{option} {out}: no permission to write in {anc}; choose another folder")
    if not out.is_dir() or not any(out.iterdir()):
        return out, []
    entries = {p.name for p in out.iterdir()}
    ours = None
    if (out / "settings.json").is_file():
        try:
            ours = _sample_files(json.loads((out / "settings.json").read_text()))
        except (ValueError, UnicodeDecodeError):
            ours = None
    if ours is None:
        raise OutputExistsError(f"{option} {out} is not empty and is not a versadiff sample folder; give a new or "
                                "empty folder (nothing is overwritten)")
    foreign = sorted(entries - ours)
    if foreign:
        raise OutputExistsError(f"{option} {out} holds files versadiff sample did not write ({', '.join(foreign[:3])}"
                                f"{' ...' if len(foreign) > 3 else ''}); give a new or empty folder")
    if not force:
        raise OutputExistsError(f"{option} {out} holds an earlier versadiff sample run ({len(entries)} files); add "
                                "--force to replace it (its files are removed first, never mixed) or give a new folder")
    return out, [out / name for name in sorted(entries)]


def _write_text(path: Path, text: str) -> None:
    from versadiff.weights import write_bytes_durable

    write_bytes_durable(path, text.encode())


def cmd_sample(args: argparse.Namespace) -> int:
    from versadiff.precision import autocast, resolve_device, resolve_precision

    from versadiff.eval.cli import check_sampling_options

    check_sampling_options(args)
    out, stale = prepare_sample_dir(args.out, args.force)  # before any work
    device = resolve_device(args.device)
    precision, why = resolve_precision(args.precision, device, key="--precision")

    from versadiff.images import save_grid, to_pil
    from versadiff.models import load_model

    model = load_model(args.checkpoint)
    s = model.config.sample
    sampler = args.sampler or s.sampler
    steps = args.steps if args.steps is not None else s.steps
    prompts = _cycle_prompts(model, args.n, args.prompt, args.cls)
    conditional = bool(model.num_classes) or prompts is not None
    guidance = args.guidance if args.guidance is not None else (s.guidance if conditional else 0.0)
    labels = _cycle_labels(model, args.n, args.cls) if prompts is None else None
    seeds = list(range(args.seed, args.seed + args.n))
    truncation = args.truncation if args.truncation is not None else getattr(s, "truncation", 1.0)
    kw = dict(sampler=sampler, steps=steps, guidance=guidance, class_labels=labels, batch_size=args.batch_size,
              truncation=truncation)
    if prompts is not None:
        kw.update(flow="text-to-image", context=prompts)
    model.request(seeds, **kw)  # every check before any sampling
    with autocast(precision, device):
        images = model.generate(seeds, device=device, progress=not args.quiet and sys.stderr.isatty(), **kw)
    for p in stale:  # --force on a previous sample folder: its files go first, the new ones are never mixed in
        p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    records = [{"file": f"seed{seed:06d}.png", "seed": seed, "class": None if labels is None else labels[i],
                "class_name": _name(model, labels[i]) if labels is not None else None,
                **({} if prompts is None else {"prompt": prompts[i]})} for i, seed in enumerate(seeds)]
    settings = {"written_by": SAMPLE_MARK, "complete": False, "checkpoint": str(model.source), "step": model.step,
                "n": args.n, "sampler": sampler, "steps": steps,
                "guidance": guidance, "guidance_convention": "(1 + w) * cond - w * uncond", "seed": args.seed,
                "truncation": truncation, **({} if prompts is None else {"prompts": list(args.prompt)}),
                "batch_size": args.batch_size, "device": str(device), "precision": precision,
                "precision_requested": args.precision, "precision_reason": why,
                "sampler_options": model.config.sample.options,
                "images": records, "versions": _versions(), "config": model.config.to_dict()}
    # settings.json first (listing every file to come), so that a killed run's folder is still recognised
    _write_text(out / "settings.json", json.dumps(settings, indent=2) + "\n")
    for rec, img in zip(records, to_pil(images)):
        img.save(out / rec["file"])
    nrow = model.num_classes if labels is not None and args.cls is None and model.num_classes <= 20 else 8
    save_grid(images, out / "grid.png", nrow=nrow, labels=None if args.no_labels else _grid_labels(records))
    settings["complete"] = True
    _write_text(out / "settings.json", json.dumps(settings, indent=2) + "\n")
    print(f"wrote {args.n} images, grid.png and settings.json to {out}")
    return 0


def _name(model: Any, label: int) -> str | None:
    return model.class_names[label] if 0 <= label < len(model.class_names) else None


def _grid_labels(records: list[dict[str, Any]]) -> list[str] | None:
    """grid.png's captions: each image's prompt, else its class name (index when the class has no name)."""
    if all("prompt" in r for r in records):
        return [r["prompt"] for r in records]
    if all(r.get("class") is not None for r in records):
        return [r["class_name"] or f"class {r['class']}" for r in records]
    return None


# ---------------------------------------------------------------------------------------------------
# demo


def demo_asset_path() -> Path:
    """Where the shipped demo weights live inside the package."""
    return Path(__file__).resolve().parent / "assets" / DEMO_ASSET


def cmd_demo(args: argparse.Namespace) -> int:
    """The four-flow Versatile Diffusion demo (default) or the class-conditional shapes demo. The demo rewrites
    only its own files in --out (index.html, flows.png, demo_grid.png, demo.json)."""
    import torch

    from versadiff import demo

    out = Path(args.out)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if not args.class_conditional:
        if args.train or args.set:
            raise CLIError("--train/--set retrain the class-conditional demo (add --class-conditional); the VD "
                           "miniature's pieces train with versadiff train shapes_klae, shapes_clip, shapes_text_vae, "
                           "then vd_shapes (benchmarks/README.md)")
        report = demo.run_vd_demo(out, n_score=args.n_score, device=device, quiet=args.quiet)
        if not args.quiet:
            print(f"page:   {report['page']}\nfigure: {report['figure']}  ({report['sampler']}, {report['steps']} steps, "
                  f"guidance w {report['guidance']}; {report['seconds']:.0f} s)")
        return 0
    if args.train:
        from versadiff.config import load_config
        from versadiff.train.trainer import Trainer

        cfg = load_config("shapes_unet_tiny", args.set or [])
        run_dir = Trainer(cfg, runs_root=out / "runs", quiet=args.quiet).run()
        weights = run_dir / "export" / "model.safetensors"
    else:
        if args.set:
            raise CLIError("--set only applies with --train (it overrides the shapes_unet_tiny preset)")
        weights = demo_asset_path()
        if not weights.is_file():
            raise CLIError(f"the demo weights {weights} are not installed; produce them with: "
                           "versadiff demo --class-conditional --train")
    demo.run_class_demo(out, weights, batch_size=args.batch_size, device=device, quiet=args.quiet,
                        per_class=DEMO_PER_CLASS, sampler=DEMO_SAMPLER, steps=DEMO_STEPS, labels=not args.no_labels)
    if args.train:
        print(f"to make these the shipped demo weights: cp {weights} {demo_asset_path()}")
    return 0


# ---------------------------------------------------------------------------------------------------
# presets / export


def _cache_dir() -> Path:
    """$VERSADIFF_CACHE, else $XDG_CACHE_HOME/versadiff, else ~/.cache/versadiff."""
    if os.environ.get("VERSADIFF_CACHE"):
        return Path(os.environ["VERSADIFF_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "versadiff"


def _source_fingerprint() -> str:
    """sha256 of the package's Python sources and of the libraries a network's size may depend on: a cached
    parameter count is used only for exactly the code that counted it."""
    import hashlib
    from importlib.metadata import PackageNotFoundError, version

    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes() + b"\0")
    for pkg in ("torch", "transformers"):
        try:
            h.update(f"{pkg}={version(pkg)}".encode())
        except PackageNotFoundError:
            pass
    return h.hexdigest()


def preset_param_counts(configs: dict[str, Any]) -> dict[str, str]:
    """Each preset's network size ("60.8M", or "error: ..."), counted on the meta device; counts are cached under
    _cache_dir()/preset_params.json, keyed by the preset's resolved config and the source fingerprint."""
    import hashlib

    path = _cache_dir() / "preset_params.json"
    fingerprint = _source_fingerprint()
    try:
        cache = json.loads(path.read_text())
        counts = dict(cache["counts"]) if cache.get("source") == fingerprint else {}
    except (OSError, ValueError, KeyError, TypeError):
        counts = {}
    out, changed = {}, False
    for name, cfg in configs.items():
        key = hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()
        if key not in counts:
            from versadiff.tasks import task_class

            try:
                counts[key] = f"{task_class(cfg.task).count_parameters(cfg) / 1e6:.1f}M"
            except ValueError as e:  # a preset whose network does not build is worth showing, not hiding
                counts[key] = f"error: {e}"
            changed = True
        out[name] = counts[key]
    if changed:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            tmp.write_text(json.dumps({"source": fingerprint, "counts": counts}) + "\n")
            os.replace(tmp, path)
        except OSError:  # a read-only home: the counts are recomputed next time
            pass
    return out


def cmd_presets(args: argparse.Namespace) -> int:
    from versadiff.config import list_presets, load_config

    configs = {name: load_config(name) for name in list_presets()}
    params = preset_param_counts(configs) if args.params else {}
    rows = []
    for name, cfg in configs.items():
        model = cfg.model.get("preset") or cfg.model.get("type") or "?"
        row = (name, str(model), str(cfg.data.get("name", "?")))
        rows.append(row + ((params[name],) if args.params else ()) + (cfg.description,))
    head = ("name", "model", "data") + (("params",) if args.params else ()) + ("description",)
    k = len(head) - 1
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(k)]
    for r in [head] + rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:k], widths)) + "  " + r[k])
    return 0


def _header(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(tensor entries, metadata) of a safetensors file, read from its JSON header (no torch)."""
    import struct

    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    return header, header.pop("__metadata__", {}) or {}


def shipped_models() -> list[dict[str, Any]]:
    """The shipped models (versadiff.assets.SHIPPED_MODELS) with their flows, size and file."""
    import math

    from versadiff.assets import ASSET_DIR, SHIPPED_MODELS

    CONFIG_KEY, INFO_KEY = "versadiff_config", "versadiff_info"  # versadiff.weights' keys (that module loads torch)

    rows = []
    for m in SHIPPED_MODELS.values():
        path = ASSET_DIR / m.path
        row: dict[str, Any] = {"name": m.name, "path": str(path), "description": m.description, "installed": path.is_file()}
        if path.is_file():
            tensors, meta = _header(path)
            cfg, info = json.loads(meta.get(CONFIG_KEY, "{}")), json.loads(meta.get(INFO_KEY, "{}"))
            flows = info.get("flows") or cfg.get("flows") or (["class-to-image"] if info.get("num_classes") else
                                                              ["unconditional"])
            row.update(flows=list(flows), params=sum(math.prod(t["shape"]) for t in tensors.values()),
                       num_classes=int(info.get("num_classes", 0) or 0), image_shape=info.get("image_shape"),
                       step=info.get("step"), megabytes=round(path.stat().st_size / 2**20, 1))
        rows.append(row)
    return rows


def cmd_models(args: argparse.Namespace) -> int:
    rows = shipped_models()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = [("name", "flows", "params", "description")]
    for r in rows:
        if not r["installed"]:
            table.append((r["name"], "(not installed)", "-", r["description"]))
            continue
        flows = ", ".join(r["flows"]) + (f" ({r['num_classes']} classes)" if r["num_classes"] else "")
        table.append((r["name"], flows, f"{r['params'] / 1e6:.1f}M", r["description"]))
    widths = [max(len(t[i]) for t in table) for i in range(3)]
    for t in table:
        print("  ".join(c.ljust(w) for c, w in zip(t[:3], widths)) + "  " + t[3])
    print("\nload one by name from anywhere: versadiff sample NAME -n 8 -o out/ ; load_model(\"NAME\") in Python")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from versadiff.train.trainer import export_weights

    path = export_weights(args.source, args.out, force=args.force)
    print(f"exported EMA weights to {path}")
    return 0


# ---------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="versadiff", description="Diffusion models: train, sample, evaluate.",
                epilog="shipped models by name: versadiff models; presets: versadiff presets; "
                       "versadiff COMMAND --help for each command")
    p.add_argument("-V", "--version", action="version", version=f"versadiff {_package_version()}")
    p.add_argument("--debug", action="store_true", help="show tracebacks (also anywhere after the command, or "
                                                        "VERSADIFF_DEBUG=1)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train a preset or a YAML config")
    t.add_argument("config", metavar="CONFIG", nargs="?", help="preset name (versadiff presets) or YAML path; "
                                                                "optional with --resume (the run's own config)")
    t.add_argument("--set", action="extend", nargs="+", metavar="KEY=VALUE", help="override, e.g. train.lr=1.0e-4")
    t.add_argument("-o", "--out", help="run folder, new or empty (default: runs/NNNNN-<name>-<desc>)")
    t.add_argument("--resume", nargs="?", const=True, default=None, metavar="PATH",
                   help="continue from the latest good checkpoint of --out, or from PATH (checkpoint or run folder), "
                        "with the run's own config (a CONFIG / --set given is compared with it)")
    t.add_argument("--allow-change", action="append", metavar="KEY[,KEY]", default=None,
                   help="with --resume: config keys (or sections) that may differ from the run's, e.g. "
                        "train.max_steps (repeatable; name, description, log_every, sample_every, checkpoint_every "
                        "and keep_last always may)")
    t.add_argument("--force", action="store_true",
                   help="start over in a used --out: its earlier run files are moved to replaced-<time>/ (never "
                        "deleted)")
    t.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("sample", help="generate images from trained weights")
    s.add_argument("checkpoint", metavar="CHECKPOINT", help="exported .safetensors, run folder, checkpoint dir or "
                                                            "shipped model name (versadiff models)")
    s.add_argument("-n", "--n", type=int, required=True, help="number of images")
    s.add_argument("--sampler", help="ddpm, ddim, dpmpp, dpm, euler, heun; VQ-Diffusion: standard, fast, fast_exact, "
                                     "purity (default: the run's)")
    s.add_argument("--steps", type=int, help="sampling steps (default: the run's)")
    s.add_argument("--guidance", type=float, help="CFG weight w: (1 + w) cond - w uncond (default: the run's)")
    s.add_argument("--truncation", type=float, metavar="R",
                   help="VQ-Diffusion: keep the top codes holding mass R per token, 0 < R <= 1 (default: the run's)")
    s.add_argument("--class", dest="cls", metavar="C", help="class index or name (default: cycle through classes)")
    s.add_argument("--prompt", action="append", metavar="TEXT",
                   help="text-to-image models: the prompt (repeat it for several: image i uses prompt i mod k; "
                        "without one, a text model samples unconditionally)")
    s.add_argument("--seed", type=int, default=0, help="first seed; image i uses seed + i")
    s.add_argument("--batch-size", type=int, default=64)
    s.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    s.add_argument("--precision", choices=["auto", "no", "bf16", "fp16"], default="auto",
                   help="auto (default): bf16 where the device runs it natively, else fp32; no: fp32; fp16: GPU only")
    s.add_argument("-o", "--out", required=True, help="output folder (new or empty)")
    s.add_argument("--no-labels", action="store_true", help="grid.png without the class names / prompts under it")
    s.add_argument("--force", action="store_true", help="replace an earlier versadiff sample folder at --out (its "
                                                       "files are removed first; other folders are never touched)")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_sample)

    d = sub.add_parser("demo", help="Versatile Diffusion's four flows on the shipped miniature, scored (or the "
                                    "class-conditional shapes model)")
    d.add_argument("--class-conditional", action="store_true", help="the class-conditional shapes UNet demo instead")
    d.add_argument("--n-score", type=int, default=100, help="held-out items each VD flow is scored on (default 100)")
    d.add_argument("--train", action="store_true", help="with --class-conditional: first retrain shapes_unet_tiny")
    d.add_argument("--set", action="extend", nargs="+", metavar="KEY=VALUE", help="preset overrides for --train")
    d.add_argument("-o", "--out", default="outputs/demo", help="output folder (default: outputs/demo)")
    d.add_argument("--batch-size", type=int, default=72)
    d.add_argument("--no-labels", action="store_true", help="--class-conditional: demo_grid.png without the class "
                                                          "names under its columns")
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=cmd_demo)

    pr = sub.add_parser("presets", help="list the packaged training presets")
    pr.add_argument("--params", action="store_true", help="add each network's parameter count (built on the meta "
                                                          "device; cached in ~/.cache/versadiff once counted)")
    pr.set_defaults(func=cmd_presets)

    mo = sub.add_parser("models", help="list the shipped models (load them by name: versadiff sample NAME ..., "
                                       "load_model(NAME))")
    mo.add_argument("--json", action="store_true", help="print the list as JSON (with paths, sizes, steps)")
    mo.set_defaults(func=cmd_models)

    e = sub.add_parser("export", help="write EMA-only inference weights from a checkpoint or run folder")
    e.add_argument("source", metavar="SOURCE", help="checkpoint directory or run folder")
    e.add_argument("-o", "--out", required=True, help="output .safetensors file (.safetensors is added to a name without "
                                                "extension; an existing file is refused)")
    e.add_argument("--force", action="store_true", help="replace an existing versadiff weight file at --out")
    e.set_defaults(func=cmd_export)

    cv = sub.add_parser("convert", add_help=False,
                        help="convert weights you already have (VD, SD 1.x, U-ViT, VQ-Diffusion, VDPM, diffusers) to versadiff or diffusers")
    cv.add_argument("convert_args", nargs=argparse.REMAINDER, help="SRC --out DIR [--to versadiff|diffusers] [--format NAME] ...")
    cv.set_defaults(func=cmd_convert)

    sh = sub.add_parser("shards", add_help=False, help="write an image folder as webdataset shards (img2dataset layout)")
    sh.add_argument("shard_args", nargs=argparse.REMAINDER, help="SOURCE OUT_DIR [--samples-per-shard N] ...")
    sh.set_defaults(func=cmd_shards)

    from versadiff.eval.cli import register_eval_command

    register_eval_command(sub)
    from versadiff.generate import register_generate_command

    register_generate_command(sub)
    from versadiff.serve import register_serve_command

    register_serve_command(sub)
    return p


def cmd_convert(args: argparse.Namespace) -> int:
    from versadiff.convert.formats import main as convert_main

    return int(convert_main(args.convert_args) or 0)


def cmd_shards(args: argparse.Namespace) -> int:
    from versadiff.data.shard_writer import shards_main

    return shards_main(args.shard_args)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `versadiff` command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = bool(os.environ.get("VERSADIFF_DEBUG")) or "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    try:
        if argv[:1] == ["convert"]:  # its own parser (versadiff.convert.formats), like shards
            from versadiff.convert.formats import main as convert_main

            return int(convert_main(argv[1:]) or 0)
        if argv[:1] == ["shards"]:  # its own parser: argparse's REMAINDER would not take a leading --help
            from versadiff.data.shard_writer import shards_main

            return int(shards_main(argv[1:]) or 0)
        args = build_parser().parse_args(argv)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        sys.stderr.write("versadiff: interrupted\n")
        return 130
    except BrokenPipeError:  # `versadiff presets | head`: the reader left; nothing to report
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 0
    except Exception as e:
        if debug:
            raise
        return report_error(e)


if __name__ == "__main__":
    sys.exit(main())
