"""Checkpoints users already hold -> versadiff weights (and back): format detection, one loader per format,
the `versadiff convert` command.

    name = detect_format("vd-four-flow-v1-0.pth")              # "vd_v1"
    foreign = load_foreign("vd-four-flow-v1-0.pth", vae="kl-f8.pth")
    write_foreign(foreign, "converted/vd")                     # converted/vd/model.safetensors (+ vae/, ...)
    model = load_foreign_model("nnet_ema.pth")                 # a Pipeline, without writing anything

A converter produces exactly what a versadiff weight file holds -- (run config dict, network state dict in
versadiff's names, model facts) -- plus the codecs / context encoders that travel with the model
(`Component`s: an autoencoder or text VAE to save, a transformers CLIP folder to copy). Each family lives in
its own module with the original layout's source named in its docstring: vd_files (Versatile Diffusion v0 /
v1.0 / diffusers folders), sd (Stable Diffusion 1.x), uvit (U-ViT), vq_diffusion (VQ-Diffusion and taming
VQGANs), vdpm (v-diffusion-torch); diffusers_export writes diffusers folders.

Reading is safe: safetensors, or torch.load(weights_only=True) (a pickle that needs code is refused with a
one-line error). Missing / unexpected / wrongly shaped keys give a one-line summary; the full list is written
to a file. Source keys a converter does not use (VAEs, CLIP, optimizer state, schedule buffers) are listed in
the report, never silently dropped.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from versadiff.convert.base import (  # noqa: F401  (re-exported: the converters' shared pieces)
    BUILTIN_MODULES,
    FORMATS,
    REPORT_FILE,
    Component,
    Foreign,
    Format,
    KeyReport,
    Probe,
    cast_state,
    check_state,
    read_checkpoint,
    register_format,
    tensors_of,
)

__all__ = [
    "Component",
    "Foreign",
    "Format",
    "FORMATS",
    "KeyReport",
    "register_format",
    "detect_format",
    "foreign_format",
    "list_formats",
    "load_foreign",
    "read_checkpoint",
    "cast_state",
    "check_state",
    "write_versadiff",
    "write_foreign",
    "load_foreign_model",
    "convert",
    "main",
]

def _register_builtin() -> None:
    import importlib

    for name in BUILTIN_MODULES:  # each registers its formats on import
        importlib.import_module(f"versadiff.convert.{name}")


def list_formats() -> dict[str, Format]:
    """Every registered format (the built-in families are imported on first use)."""
    _register_builtin()
    return dict(FORMATS)


def detect_format(path: str | Path) -> str:
    """The name of the format of `path` (a file or folder); a one-line ValueError when none fits."""
    _register_builtin()
    probe = Probe(path)
    if not probe.path.exists():
        raise FileNotFoundError(f"{str(probe.path)!r} does not exist")
    if _is_versadiff(probe):
        return "versadiff"
    for fmt in FORMATS.values():
        if fmt.detect(probe):
            return fmt.name
    raise ValueError(
        f"{probe.path} is in no format versadiff knows; formats: {', '.join(FORMATS)} "
        "(pass --format NAME if detection is wrong)"
    )


CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")


def foreign_format(path: str | Path) -> str | None:
    """The foreign format of `path`, or None when it is a versadiff model or nothing a converter claims -- for
    load_model, which keeps its own messages for those. A .pth / .pt / .ckpt / .bin is never versadiff's, so its
    read errors (a pickle that needs code) and an unknown layout raise here."""
    _register_builtin()
    p = Path(path).expanduser()
    if p.is_file() and p.suffix in CHECKPOINT_SUFFIXES:
        return detect_format(p)
    if not (p.is_dir() or (p.is_file() and p.suffix == ".safetensors")):
        return None
    try:
        probe = Probe(p)
        if _is_versadiff(probe):
            return None
        return next((f.name for f in FORMATS.values() if f.detect(probe)), None)
    except Exception:  # an unreadable .safetensors: load_model's own reading says why
        return None


def _is_versadiff(probe: Probe) -> bool:
    from versadiff.weights import CONFIG_KEY

    if probe.path.is_file() and probe.path.suffix == ".safetensors":
        return CONFIG_KEY in (probe.obj or {}).get("__metadata__", {})
    if probe.is_dir:
        from versadiff.weights import is_checkpoint

        return (
            is_checkpoint(probe.path)
            or (probe.path / "export" / "model.safetensors").is_file()
            or (probe.path / "checkpoints").is_dir()
            or ((probe.path / "model.safetensors").is_file() and not (probe.path / "config.json").is_file())
        )
    return False


def load_foreign(
    path: str | Path, *, format: str | None = None, dtype: str | None = "float32", **options: Any
) -> Foreign:
    """Convert `path` (format detected unless given) to a Foreign; options go to the format's loader."""
    _register_builtin()
    name = format or detect_format(path)
    if name == "versadiff":
        raise ValueError(f"{path} is already a versadiff model; load it with versadiff.models.load_model")
    if name not in FORMATS:
        raise ValueError(f"unknown format {name!r}; formats: {', '.join(FORMATS)}")
    loader = FORMATS[name].load
    params = inspect.signature(loader).parameters
    if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        valid = [n for n in params if n != "path"]
        unknown = sorted(k for k in options if k not in params)
        if unknown:
            raise ValueError(f"format {name!r} takes no option {unknown[0]!r}; its options: {', '.join(valid)}")
    foreign = loader(Path(path).expanduser(), **options)
    foreign.state = cast_state(foreign.state, dtype)
    foreign.format, foreign.source = name, str(path)
    foreign.info.setdefault("source", str(path))
    foreign.info["source_format"] = name
    return foreign


# ----------------------------------------------------------------------------------------------- writing


def _checked_network(
    cfg: dict[str, Any], state: Mapping[str, Tensor], source: str, report_path: str | Path | None = None
) -> tuple[Any, nn.Module]:
    """(RunConfig, network on the meta device) after validating the config and the state's keys and shapes."""
    from versadiff.config import config_from_dict
    from versadiff.tasks import check_config, task_class

    run = check_config(config_from_dict(cfg))
    with torch.device("meta"):
        net = task_class(run.task).build_network(run)
    check_state(net, state).raise_if_bad(source, report_path)
    return run, net


def write_versadiff(
    path_out: str | Path, cfg_dict: dict[str, Any], state: Mapping[str, Tensor], info: dict[str, Any]
) -> Path:
    """A normal versadiff .safetensors (config and facts in its metadata) that load_model reads; the config is
    validated and the state checked against the network it builds (strict) before anything is written."""
    from versadiff.weights import CONFIG_KEY, INFO_KEY, save_tensors

    path_out = Path(path_out)
    if path_out.suffix != ".safetensors":
        path_out = path_out / "model.safetensors"
    run, _ = _checked_network(cfg_dict, state, str(path_out), path_out.parent / "missing_keys.json")
    path_out.parent.mkdir(parents=True, exist_ok=True)
    tmp = path_out.with_name(path_out.name + ".tmp")
    save_tensors(tmp, dict(state), {CONFIG_KEY: json.dumps(run.to_dict()), INFO_KEY: json.dumps(info)})
    tmp.replace(path_out)
    return path_out


def write_foreign(foreign: Foreign, out: str | Path) -> Path:
    """out/model.safetensors, the components' folders and out/conversion_report.json; returns the weight file."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = foreign.materialized_config(out)
    path = write_versadiff(out / "model.safetensors", cfg, foreign.state, foreign.info)
    foreign.report.write(out / REPORT_FILE)
    return path


_CACHE: list[tempfile.TemporaryDirectory] = []


def load_foreign_model(
    path: str | Path, *, device: str | torch.device = "cpu", format: str | None = None, **options: Any
) -> Any:
    """Any supported foreign checkpoint as a versadiff Pipeline (what load_model returns for versadiff weights).

    Components held in memory (a converted VAE) are written to a temporary folder kept for the process.
    """
    from versadiff.tasks import task_class

    foreign = load_foreign(path, format=format, **options)
    needs_folder = any(c.module is not None or c.siblings for c in foreign.components if c.configured)
    if needs_folder:
        tmp = tempfile.TemporaryDirectory(prefix="versadiff-convert-")
        _CACHE.append(tmp)
        cfg = foreign.materialized_config(Path(tmp.name))
    else:
        cfg = json.loads(json.dumps(foreign.config))
        for comp in (c for c in foreign.components if c.configured):
            cfg.setdefault(comp.section, {})[comp.modality] = {**comp.spec, "path": str(comp.folder)}
    run, _ = _checked_network(cfg, foreign.state, str(path))
    task = task_class(run.task)
    net = task.build_network(run)
    net.load_state_dict(foreign.state, strict=True)
    return task.pipeline(net.to(device), run, foreign.info, source=str(path), device=device)


# ----------------------------------------------------------------------------------------------- convert


def convert(
    src: str | Path, to: str, out: str | Path, *, format: str | None = None, **options: Any
) -> tuple[Path, KeyReport]:
    """`versadiff convert`: src in any known format -> out (a versadiff model folder or a diffusers folder)."""
    _register_builtin()
    out = Path(out)
    if to == "versadiff":
        foreign = load_foreign(src, format=format, **options)
        return write_foreign(foreign, out), foreign.report
    if to == "diffusers":
        from versadiff.convert.diffusers_export import export_diffusers, model_parts

        name = format or detect_format(src)
        if name == "versadiff":
            from versadiff.weights import load_tensors, read_metadata, resolve_weights

            weights = resolve_weights(src)
            cfg, _ = read_metadata(weights)
            parts = model_parts(cfg, load_tensors(weights))
        else:
            fmt = FORMATS.get(name)
            if fmt is None or "diffusers" not in fmt.exports:
                have = ", ".join(n for n, f in FORMATS.items() if "diffusers" in f.exports)
                raise ValueError(
                    f"format {name!r} has no diffusers layout to export to; formats that do: {have}, "
                    "versadiff (a converted multi-flow model)"
                )
            foreign = load_foreign(src, format=name, **options)
            with tempfile.TemporaryDirectory(prefix="versadiff-convert-") as tmp:
                parts = model_parts(foreign.materialized_config(Path(tmp)), foreign.state)
                path = export_diffusers(parts, out)
            return path, KeyReport(notes=parts[4])
        return export_diffusers(parts, out), KeyReport(notes=parts[4])
    raise ValueError(f"--to must be versadiff or diffusers, got {to!r}")


def _parse_options(items: Sequence[str]) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--option takes KEY=VALUE, got {item!r}")
        out[key.replace("-", "_")] = yaml.safe_load(value) if value else None
    return out


def build_parser() -> argparse.ArgumentParser:
    _register_builtin()
    formats = "\n".join(f"  {n:<22} {f.description}" for n, f in FORMATS.items())
    p = argparse.ArgumentParser(
        prog="versadiff convert",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Convert a checkpoint you already have into versadiff weights or a diffusers folder.",
        epilog=f"formats (detected from the file or folder):\n{formats}",
    )
    p.add_argument("src", metavar="SRC", help="checkpoint file or folder")
    p.add_argument("--to", choices=("versadiff", "diffusers"), default="versadiff")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--format", help="skip detection (a name listed below)")
    p.add_argument("--dtype", default="float32", help="float32 (default), bfloat16 or float16")
    p.add_argument("--ema", dest="ema", action="store_true", default=None, help="require the EMA weights")
    p.add_argument("--no-ema", dest="ema", action="store_false", help="take the raw weights even when EMA is present")
    p.add_argument("--vae", help="an image autoencoder to bundle (kl-f8.pth, a diffusers vae/ folder)")
    p.add_argument("--text-vae", help="an Optimus text VAE to bundle (optimus-vae.pth)")
    p.add_argument("--text-encoder", help="a transformers CLIP folder for the text context")
    p.add_argument("--image-encoder", help="a transformers CLIP folder for the image context")
    p.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a format-specific option (e.g. num_heads=8, context=image, config=cifar10_cond.json)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """`versadiff convert SRC --to versadiff|diffusers --out DIR`; prints what was written and a one-line key
    summary (the full lists are in DIR/conversion_report.json)."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    options = _parse_options(args.option)
    for key in ("ema", "vae", "text_vae", "text_encoder", "image_encoder"):
        value = getattr(args, key)
        if value is not None:
            options[key] = value
    if args.to == "versadiff":
        options["dtype"] = args.dtype
    path, report = convert(args.src, args.to, args.out, format=args.format, **options)
    print(f"wrote {path}")
    if args.to == "versadiff":
        print(f"keys: {report.summary()} (details: {Path(args.out) / REPORT_FILE})")
    for note in report.notes:
        print(f"note: {note}")
    return 0
