"""The pieces every checkpoint converter shares: what a conversion produces (Foreign, Component, KeyReport),
safe checkpoint reading, and the registry of formats (each family module registers its own; versadiff.convert.
formats detects and runs them)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

__all__ = ["Component", "Foreign", "Format", "FORMATS", "KeyReport", "Probe", "register_format", "read_checkpoint",
           "tensors_of", "cast_state", "check_state", "REPORT_FILE", "DTYPES", "BUILTIN_MODULES"]

REPORT_FILE = "conversion_report.json"
DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


# ----------------------------------------------------------------------------------------------- data types


@dataclasses.dataclass
class Component:
    """A codec or context encoder that travels with a converted model.

    section/modality: where its spec goes in the run config (codecs.image, encoders.text, ...); spec: that entry
    without "path"; name: its sub-folder in a written model. Either `module` (saved with save_pretrained) or
    `folder` (a local folder copied as is); `siblings` are extra folders copied next to it (a tokenizer).
    configured=False: written next to the model but not named in its config (versadiff cannot use it yet).
    """

    section: str
    modality: str
    spec: dict[str, Any]
    name: str
    module: Any = None
    folder: Path | None = None
    siblings: dict[str, Path] = dataclasses.field(default_factory=dict)
    configured: bool = True

    def write(self, out: Path) -> Path:
        """Save / copy into out/<name> (and the siblings next to it); returns the component's folder."""
        dest = out / self.name
        if self.module is not None:
            self.module.save_pretrained(dest)
        elif self.folder is not None:
            _copy_folder(Path(self.folder), dest)
        else:
            raise ValueError(f"component {self.name!r} has neither a module nor a folder")
        for sub, src in self.siblings.items():
            _copy_folder(Path(src), out / sub)
        return dest


def _copy_folder(src: Path, dest: Path) -> None:
    if src.resolve() == dest.resolve():
        return
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest)


@dataclasses.dataclass
class KeyReport:
    """How a source state dict met the network: keys the network lacked / did not get / got with another shape,
    and source keys the converter did not use (with the reason)."""

    missing: list[str] = dataclasses.field(default_factory=list)
    unexpected: list[str] = dataclasses.field(default_factory=list)
    wrong_shape: list[str] = dataclasses.field(default_factory=list)
    unused: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.wrong_shape)

    def unused_groups(self) -> dict[str, int]:
        """Unused source keys counted by their first name component ({"autokl": 130, "optimus": 401})."""
        out: dict[str, int] = {}
        for k in self.unused:
            head = k.split(".", 1)[0]
            out[head] = out.get(head, 0) + 1
        return out

    def summary(self) -> str:
        """One line."""
        parts = []
        for label, keys in (
            ("missing", self.missing),
            ("unexpected", self.unexpected),
            ("wrong shape", self.wrong_shape),
        ):
            if keys:
                parts.append(f"{len(keys)} {label} (e.g. {', '.join(keys[:2])})")
        if self.unused:
            groups = ", ".join(f"{k}: {v}" for k, v in sorted(self.unused_groups().items()))
            parts.append(f"{len(self.unused)} source keys not used ({groups})")
        return "; ".join(parts) if parts else "all keys matched"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    def raise_if_bad(self, source: str, report_path: str | Path | None = None) -> None:
        """One-line ValueError when keys are missing / unexpected / misshapen; the full lists go to a file."""
        if self.ok:
            return
        if report_path is None:
            fd, report_path = tempfile.mkstemp(prefix="versadiff-keys-", suffix=".json")
            os.close(fd)
        written = self.write(report_path)
        raise ValueError(f"{source} does not fit the network: {self.summary()}; full key lists in {written}")


@dataclasses.dataclass
class Foreign:
    """A converted checkpoint: what a versadiff weight file holds, plus the components that travel with it."""

    format: str
    config: dict[str, Any]
    state: dict[str, Tensor]
    info: dict[str, Any]
    components: list[Component] = dataclasses.field(default_factory=list)
    report: KeyReport = dataclasses.field(default_factory=KeyReport)
    source: str = ""

    def materialized_config(self, out: Path) -> dict[str, Any]:
        """The run config with each component written into `out` and its spec pointing there."""
        cfg = json.loads(json.dumps(self.config))
        for comp in self.components:
            dest = comp.write(out)
            if comp.configured:
                cfg.setdefault(comp.section, {})[comp.modality] = {**comp.spec, "path": str(dest.resolve())}
        return cfg


# ----------------------------------------------------------------------------------------------- reading


def read_checkpoint(path: str | Path) -> Any:
    """The object in a checkpoint file: safetensors (a flat dict) or torch.load(weights_only=True, mmap when
    possible). A pickle that needs code (classes, functions) is refused with a one-line ValueError."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:
            raise ValueError(f"{path} is not a readable safetensors file ({type(e).__name__})") from None
    try:
        try:
            return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:  # old (non-zip) serialisation cannot be memory-mapped
            if "mmap" not in str(e) and "zip" not in str(e):
                raise
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()] or [type(e).__name__]
        code = re.search(r"Unsupported global: GLOBAL ([\w.]+)|Trying to load unsupported[^.]*", str(e))
        if code is not None:
            what = f"it refers to {code.group(1)}" if code.group(1) else code.group(0)
            raise ValueError(
                f"{path} is a pickle that needs code to load ({what}); versadiff only reads tensors "
                "(torch.load weights_only=True) or safetensors: re-save its state_dict"
            ) from None
        reason = next(
            (ln for ln in lines if ln.startswith("Unsupported operand") or "Error" in ln.split(":")[0]),
            lines[-1] if "Weights only load failed" in lines[0] else lines[0],
        )
        raise ValueError(f"{path} cannot be read as a checkpoint ({reason.rstrip('.')})") from None


def tensors_of(obj: Any, where: str = "checkpoint") -> dict[str, Tensor]:
    """A flat {name: tensor} dict (a "state_dict" wrapper unwrapped); non-tensor entries are an error."""
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{where} holds a {type(obj).__name__}, not a state dict")
    out = {k: v for k, v in obj.items() if torch.is_tensor(v)}
    if not out:
        raise ValueError(f"{where} holds no tensors")
    return dict(out)


def cast_state(state: Mapping[str, Tensor], dtype: str | torch.dtype | None = "float32") -> dict[str, Tensor]:
    """Floating-point tensors cast to `dtype` (fp16-stored weights load into fp32 / bf16); None keeps them."""
    if dtype is None:
        return dict(state)
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; choose one of float32, bfloat16, float16")
        dtype = DTYPES[dtype]
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}


def check_state(
    expected: nn.Module | Mapping[str, Tensor], state: Mapping[str, Tensor], report: KeyReport | None = None
) -> KeyReport:
    """Compare a state dict with a network's (or an expected state dict's) names and shapes."""
    own = expected.state_dict() if isinstance(expected, nn.Module) else expected
    report = report or KeyReport()
    report.missing = sorted(set(own) - set(state))
    report.unexpected = sorted(set(state) - set(own))
    report.wrong_shape = sorted(
        f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if tuple(state[k].shape) != tuple(own[k].shape)
    )
    return report


# ----------------------------------------------------------------------------------------------- registry


@dataclasses.dataclass(frozen=True)
class Format:
    """A checkpoint format: how to recognise it and how to load it.

    detect(probe) -> bool looks at a `Probe` (the path, its folder files and top-level keys); load(path, **options)
    -> Foreign. exports: the targets besides "versadiff" that `convert --to` offers for it.
    """

    name: str
    description: str
    detect: Callable[["Probe"], bool]
    load: Callable[..., Foreign]
    exports: tuple[str, ...] = ()
    command: str = ""


FORMATS: dict[str, Format] = {}
#: the modules that register the built-in formats, in detection order
BUILTIN_MODULES = ("vd_files", "sd", "uvit", "vq_diffusion", "vdpm")


def register_format(fmt: Format) -> Format:
    FORMATS[fmt.name] = fmt
    return fmt


class Probe:
    """What detection looks at, computed lazily: folder files, JSON configs, the checkpoint's keys."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self._obj: Any = None
        self._loaded = False

    @property
    def is_dir(self) -> bool:
        return self.path.is_dir()

    def json(self, rel: str) -> dict[str, Any] | None:
        p = self.path / rel
        if not p.is_file():
            return None
        try:
            return json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    @property
    def obj(self) -> Any:
        if not self._loaded:
            self._loaded = True
            if self.path.is_file() and self.path.suffix == ".safetensors":
                from safetensors import safe_open

                with safe_open(str(self.path), framework="pt") as f:
                    meta = f.metadata() or {}
                    self._obj = {k: None for k in f.keys()}
                    self._obj["__metadata__"] = meta
            elif self.path.is_file():
                self._obj = read_checkpoint(self.path)
        return self._obj

    def keys(self, *sub: str) -> list[str]:
        """Keys of the checkpoint (of obj[sub[0]][sub[1]]... when given); [] when absent."""
        obj = self.obj
        for s in sub:
            if not isinstance(obj, Mapping) or not isinstance(obj.get(s), Mapping):
                return []
            obj = obj[s]
        if isinstance(obj, Mapping) and not sub and isinstance(obj.get("state_dict"), Mapping):
            obj = obj["state_dict"]
        return [k for k in obj] if isinstance(obj, Mapping) else []

    def has_prefix(self, *prefixes: str, sub: Sequence[str] = ()) -> bool:
        return any(k.startswith(prefixes) for k in self.keys(*sub) if isinstance(k, str))


