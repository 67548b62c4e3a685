"""Run configurations: typed, nested dataclasses read from YAML presets (never executed).

This module checks structure, types and ranges; the task a config names checks its own sections
(versadiff.tasks.check_config), so that this module depends on no other part of the package.

A run is described by `RunConfig`; `load_config("shapes_unet_tiny", ["train.lr=1.0e-4"])` reads a
packaged preset (or a YAML path), applies `--set` overrides and validates every key and type.
Free-form sections (`model`, `data`, `diffusion.schedule`, `sample.options`, `autoencoder`) are passed
untouched to their builders, which validate them (NaN is rejected everywhere, inf in every typed section).
Errors are one-line `ConfigError`s (a ValueError) that name the key and what it expects.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "ConfigError",
    "DiffusionConfig",
    "TrainConfig",
    "SampleConfig",
    "RunConfig",
    "load_config",
    "parse_override",
    "apply_overrides",
    "list_presets",
    "preset_path",
    "save_config",
    "config_from_dict",
    "format_config",
    "config_diff",
    "key_allowed",
    "RESUME_HARMLESS",
    "EVAL_OPTIONS",
    "names_list",
]

PRESET_PACKAGE = "versadiff.configs"


class ConfigError(ValueError):
    """A configuration problem; the message is one line naming the key and the fix."""


@dataclass
class DiffusionConfig:
    """The Gaussian process used for training and the defaults for sampling."""

    #: passed to versadiff.processes.build_schedule
    schedule: dict = field(
        default_factory=lambda: {"type": "logsnr", "kind": "cosine", "logsnr_min": -20.0, "logsnr_max": 20.0}
    )
    prediction: str = "eps"  # what the network outputs: eps | x0 | v | both
    loss: str = "mse"
    # mse weight on |x_hat - x|^2: constant | snr (= eps-MSE) | truncated_snr | alpha2 (= v-MSE) | min_snr
    weighting: str = "snr"
    # 0: continuous t ~ U(0, 1); T > 0: t = (randint(T) + 1) / T (VDPM); None: the schedule's table size, else 0
    train_steps: int | None = None
    variance: str = "fixed_small"  # reverse variance (kl loss, ancestral sampling): fixed_small | fixed_large | fixed_medium
    intp_frac: float = 0.3  # fixed_medium interpolation fraction (VDPM cifar10_cond)
    p_uncond: float = 0.0  # probability of dropping the condition while training (classifier-free guidance)
    clip_x0: float | None = 1.0  # clamp x0_hat to [-c, c] when sampling pixel models; None: no clamp


@dataclass
class TrainConfig:
    """Optimisation, EMA, logging and checkpoint cadence. `batch_size` is per device and micro-batch."""

    batch_size: int = 32
    max_steps: int = 1000  # optimizer steps
    lr: float = 2.0e-4
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1.0e-8
    warmup_steps: int = 0  # linear warm-up from 0 to lr, then constant (VDPM / U-ViT)
    grad_accum: int = 1  # micro-batches per optimizer step
    grad_clip: float | None = 1.0  # max global grad norm, > 0; None: no clipping (the norm is still logged)
    #: auto | no | bf16 | fp16. auto: bf16 where the device runs it natively (CPU with AVX512-BF16/AMX, CUDA
    #: with bf16), else fp32 (versadiff.precision); the resolved choice is recorded in run.json and stats.jsonl
    mixed_precision: str = "auto"
    ema_decay: float = 0.9999
    ema_warmup: bool = True  # decay = min(ema_decay, (1 + n) / (10 + n)), as VDPM
    gradient_checkpointing: bool = False
    seed: int = 0
    num_workers: int = 0
    log_every: int = 10
    sample_every: int = 0  # 0: only at the end
    checkpoint_every: int = 0  # 0: only at the end
    keep_last: int = 3  # checkpoints kept on disk
    compile: bool = False  # torch.compile the network
    #: per-parameter learning-rate and gradient multipliers, first match wins: [{match: REGEX over parameter
    #: names, lr_mult: 1.0, grad_mult: 1.0}, ...] (VD: image data layers grad 0.2, global layers 0.1)
    param_groups: list = field(default_factory=list)
    #: sharded data parallel across processes (FSDP2 through accelerate's plugin); {} = plain DDP. {strategy:
    #: full_shard (ZeRO-3) | shard_grad_op (ZeRO-2), wrap: auto | [block class names], cpu_offload: false};
    #: checked by versadiff.train.distributed (added with the multi-process / FSDP work)
    fsdp: dict = field(default_factory=dict)
    #: experiment trackers, through accelerate's (Accelerator(log_with=...)): tensorboard (the default; logs in
    #: RUN/tensorboard/), wandb, mlflow, comet_ml, aim, clearml, dvclive, swanlab, trackio, a tracker registered
    #: with accelerate.tracking.register_tracker_class, a list or comma list of them, or none. stats.jsonl is always
    #: written. Offline: WANDB_MODE=offline (wandb), MLFLOW_TRACKING_URI=file:... (mlflow)
    log_with: str | list = "tensorboard"
    #: keyword arguments per tracker for accelerate's init_trackers, e.g. {wandb: {entity: me, tags: [a, b]}}
    log_kwargs: dict = field(default_factory=dict)
    #: evaluation during training (the metrics of `versadiff eval`) every N steps and at the end; 0: never
    eval_every: int = 0
    #: metric names as `versadiff eval --metrics` takes them (fid, kid, is, pr, clip, acc, fd, shapes_acc, ...), a
    #: list or comma list; auto: fd (+ acc for class-conditional models) where the data has a domain evaluator
    #: (shapes, fashion_mnist), else fid
    eval_metrics: str | list = "auto"
    eval_n: int = 256  # samples per evaluation: seeds eval_seed + i, class i mod num_classes (the same every time)
    eval_seed: int = 0
    #: the reference for fid / kid / pr / *_fd: train-data (the run's data, no flips), a statistics .npz, an image
    #: folder, an .npz batch or a YAML data config
    eval_ref: str = "train-data"
    #: the scalar whose best value is kept in RUN/best/ (EMA weights + best.json): a metric name (fid, shapes_acc,
    #: precision, recall, kid, is, ...); auto: the first metric; null: keep no best/
    eval_best: str | None = "auto"
    eval_batch_size: int = 64
    #: more evaluation settings (versadiff.eval.EvalOptions): inception_weights, clip_model, ref_n (reference images,
    #: default all up to 50000), kid_subsets, kid_subset_size, pr_k, fmnist_input, prompts
    eval_options: dict = field(default_factory=dict)


@dataclass
class SampleConfig:
    """Defaults for sample grids during training and for `versadiff sample`."""

    sampler: str = "ddim"
    steps: int = 50
    guidance: float = 0.0  # classifier-free guidance weight w: (1 + w) * cond - w * uncond; 0 = plain conditional
    n: int = 16  # images in the training-time sample grid
    seed: int = 0  # first seed; image i uses seed + i
    options: dict = field(default_factory=dict)  # extra sampler keyword options (e.g. eta)
    # VQ-Diffusion only: keep the top codes holding this much probability mass per token (1.0 = off)
    truncation: float = 1.0
    labels: bool = True  # training-time grids: class names under their columns (class-conditional models)


@dataclass
class RunConfig:
    """Everything a run needs; saved resolved into the run folder and into exported weights."""

    name: str = "run"
    description: str = ""
    #: what is trained (versadiff.tasks): gaussian (a diffusion model on pixels or latents), autoencoder (a
    #: KL / VQ autoencoder), vq_diffusion (a VQ transformer on the tokens of a trained VQ autoencoder)
    task: str = "gaussian"
    model: dict = field(default_factory=dict)  # passed to versadiff.nets.build_net
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    data: dict = field(default_factory=dict)  # passed to versadiff.data.build_dataset
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    #: latent models: {"path": <local autoencoder dir>, "scale_factor": ...}; None for pixel models
    autoencoder: dict | None = None
    #: task vq_diffusion: the mask-and-replace process ({schedule, num_steps, aux_weight, adaptive_aux,
    #: time_sampling, mask_weight}; see versadiff.tasks.diffusion)
    discrete: dict = field(default_factory=dict)
    #: task autoencoder: versadiff.autoencoders.AutoencoderLoss keywords ({rec, reg_weight})
    ae_loss: dict = field(default_factory=dict)
    #: the flows the network is trained on and samples (versadiff.flows): names or {name, weight, null};
    #: empty: class-to-image for a class-conditional network, else unconditional
    flows: list = field(default_factory=list)
    #: codec per data modality ({image: {type: kl, path: ...}, text: {type: text_vae, path: ...}});
    #: the `autoencoder` section is the image codec's short form
    codecs: dict = field(default_factory=dict)
    #: context encoder per context modality ({text: {type: clip_text, path: ...}, image: {...}})
    encoders: dict = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A plain, JSON-serialisable dict (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


CHOICES: dict[str, tuple[str, ...]] = {
    "diffusion.prediction": ("eps", "x0", "v", "both"),
    "train.mixed_precision": ("auto", "no", "fp16", "bf16"),
}
POSITIVE: tuple[str, ...] = ("train.batch_size", "train.max_steps", "train.grad_accum", "train.keep_last",
                             "train.log_every", "sample.steps", "sample.n", "train.lr", "train.adam_eps",
                             "train.grad_clip", "diffusion.clip_x0", "train.eval_n", "train.eval_batch_size")
NON_NEGATIVE: tuple[str, ...] = ("train.warmup_steps", "train.sample_every", "train.checkpoint_every",
                                 "train.num_workers", "diffusion.train_steps", "train.weight_decay",
                                 "train.eval_every")
#: keys a resumed run may change without --allow-change: they change what is logged/kept, never the maths
RESUME_HARMLESS: tuple[str, ...] = ("name", "description", "train.log_every", "train.sample_every",
                                    "train.checkpoint_every", "train.keep_last", "train.log_with", "train.log_kwargs",
                                    "train.eval_every", "train.eval_metrics", "train.eval_n", "train.eval_seed",
                                    "train.eval_ref", "train.eval_best", "train.eval_batch_size", "train.eval_options",
                                    "sample.labels")
#: the keys of train.eval_options (versadiff.eval.EvalOptions fields a run may set)
EVAL_OPTIONS: tuple[str, ...] = ("inception_weights", "clip_model", "ref_n", "kid_subsets", "kid_subset_size", "pr_k",
                                 "is_splits", "fmnist_input", "prompts")


# ---------------------------------------------------------------------------------------------------
# dict -> dataclass with type checks


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"list of {len(typing.get_args(tp))} numbers"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return {dict: "mapping", list: "list", str: "string", int: "integer", float: "number",
            bool: "true/false"}.get(tp, str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`; return it converted (int -> float, list -> tuple)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError:
                pass
        _bad_type(value, tp, key)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            _bad_type(value, tp, key)
        return _build(tp, value, key + ".")
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            _bad_type(value, tp, key)
        return tuple(_coerce(v, a, key) for v, a in zip(value, args))
    if tp is bool:
        if not isinstance(value, bool):
            _bad_type(value, tp, key)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            _bad_type(value, tp, key)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            _bad_type(value, tp, key)
        return float(value)
    if tp is str:
        if isinstance(value, bool):  # YAML 1.1 reads a bare `no` (accelerate's "no" precision) as False
            return "yes" if value else "no"
        if not isinstance(value, str):
            _bad_type(value, tp, key)
        return value
    if tp is dict:
        if not isinstance(value, dict):
            _bad_type(value, tp, key)
        return value
    if tp is list:
        if not isinstance(value, list):
            _bad_type(value, tp, key)
        return value
    raise TypeError(f"unsupported annotation {tp!r} for {key}")  # a bug in this file, not user input


def _bad_type(value: Any, tp: Any, key: str) -> typing.NoReturn:
    hint = ""
    if isinstance(value, str) and "e" in value.lower():
        try:
            float(value)
            hint = " (YAML reads 1e-4 as a string: write 1.0e-4)"
        except ValueError:
            pass
    raise ConfigError(f"config key '{key}' expects {_type_name(tp)}, got {type(value).__name__} {value!r}{hint}")


def _build(cls: type, data: dict, prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for k, v in data.items():
        if k not in names:
            raise ConfigError(f"unknown config key '{prefix}{k}'; valid keys under '{prefix or '.'}': {', '.join(names)}")
        kwargs[k] = _coerce(v, hints[k], prefix + k)
    return cls(**kwargs)


def _check_finite(obj: Any, prefix: str) -> None:
    """Every number of the typed sections must be finite: NaN/inf would train or sample silently wrong."""
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        key = prefix + f.name
        if dataclasses.is_dataclass(v):
            _check_finite(v, key + ".")
            continue
        for x in (v if isinstance(v, tuple) else (v,)):
            if isinstance(x, float) and not math.isfinite(x):
                raise ConfigError(f"config key '{key}' must be a finite number, got {x!r}")


def _check_no_nan(value: Any, key: str) -> None:
    """No NaN anywhere in the free-form sections either (a NaN is never a setting)."""
    if isinstance(value, float) and value != value:
        raise ConfigError(f"config key '{key}' must be a number, got nan")
    if isinstance(value, dict):
        for k, v in value.items():
            _check_no_nan(v, f"{key}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_no_nan(v, f"{key}[{i}]")


def _check_values(cfg: RunConfig) -> None:
    _check_finite(cfg, "")
    for name, value in dataclasses.asdict(cfg).items():
        _check_no_nan(value, name)
    for key, options in CHOICES.items():
        v = _get(cfg, key)
        if v not in options:
            raise ConfigError(f"config key '{key}' must be one of {', '.join(options)}, got {v!r}")
    for key in POSITIVE:
        v = _get(cfg, key)
        if v is not None and v <= 0:
            hint = " or null (no clipping)" if key == "train.grad_clip" else ""
            hint = " or null (no clamp)" if key == "diffusion.clip_x0" else hint
            raise ConfigError(f"config key '{key}' must be > 0{hint}, got {v!r}")
    for key in NON_NEGATIVE:
        if _get(cfg, key) is not None and _get(cfg, key) < 0:
            raise ConfigError(f"config key '{key}' must be >= 0, got {_get(cfg, key)!r}")
    if not 0.0 <= cfg.diffusion.p_uncond < 1.0:
        raise ConfigError(f"config key 'diffusion.p_uncond' must lie in [0, 1), got {cfg.diffusion.p_uncond!r}")
    if not 0.0 <= cfg.train.ema_decay < 1.0:
        raise ConfigError(f"config key 'train.ema_decay' must lie in [0, 1), got {cfg.train.ema_decay!r}")
    for i, beta in enumerate(cfg.train.adam_betas):
        if not 0.0 <= beta < 1.0:
            raise ConfigError(f"config key 'train.adam_betas' must hold two numbers in [0, 1), got "
                              f"{list(cfg.train.adam_betas)!r} (item {i})")
    if not 0.0 <= cfg.diffusion.intp_frac <= 1.0:
        raise ConfigError(f"config key 'diffusion.intp_frac' must lie in [0, 1], got {cfg.diffusion.intp_frac!r}")
    if not 0.0 < cfg.sample.truncation <= 1.0:
        raise ConfigError(f"config key 'sample.truncation' must lie in (0, 1], got {cfg.sample.truncation!r}")
    _check_shared_sections(cfg)


def _check_shared_sections(cfg: RunConfig) -> None:
    """The sections every task shares. A task checks its own sections (versadiff.tasks.check_config)."""
    if cfg.autoencoder is not None:
        unknown = sorted(set(cfg.autoencoder) - {"path", "kind", "scale_factor"})
        if unknown:
            raise ConfigError(f"unknown config key 'autoencoder.{unknown[0]}'; valid keys under 'autoencoder': "
                              "path, kind, scale_factor")
        if cfg.autoencoder.get("kind") not in (None, "kl", "vq"):
            raise ConfigError(f"config key 'autoencoder.kind' must be one of kl, vq, got {cfg.autoencoder['kind']!r}")
    for section in ("codecs", "encoders"):
        for modality, spec in getattr(cfg, section).items():
            if not isinstance(spec, dict) or "type" not in spec:
                raise ConfigError(f"config key '{section}.{modality}' must be a mapping with a 'type', got {spec!r}")
    _check_names(cfg.train.log_with, "train.log_with")
    _check_names(cfg.train.eval_metrics, "train.eval_metrics")
    unknown = sorted(set(cfg.train.eval_options) - set(EVAL_OPTIONS))
    if unknown:
        raise ConfigError(f"unknown config key 'train.eval_options.{unknown[0]}'; valid keys under 'train.eval_options': "
                          f"{', '.join(EVAL_OPTIONS)}")
    for i, group in enumerate(cfg.train.param_groups):
        if not isinstance(group, dict) or "match" not in group or set(group) - {"match", "lr_mult", "grad_mult"}:
            raise ConfigError(f"config key 'train.param_groups[{i}]' must be {{match: REGEX, lr_mult: x, grad_mult: y}}, "
                              f"got {group!r}")
        for k in ("lr_mult", "grad_mult"):
            v = group.get(k, 1.0)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < float("inf"):
                raise ConfigError(f"config key 'train.param_groups[{i}].{k}' must be a finite number >= 0, got {v!r}")


def names_list(value: str | list | None) -> list[str]:
    """A comma list or a list of names as a list ("a, b" -> ["a", "b"]; "none", "" or [] -> [])."""
    items = value.split(",") if isinstance(value, str) else list(value or [])
    names = [str(v).strip() for v in items if str(v).strip()]
    return [] if names in (["none"], ["None"], ["null"]) else names


def _check_names(value: Any, key: str) -> None:
    if isinstance(value, list) and not all(isinstance(v, str) for v in value):
        raise ConfigError(f"config key '{key}' expects a name, a comma list of names or a list of names, got {value!r}")


def _get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def config_from_dict(data: dict) -> RunConfig:
    """Validate a plain dict (e.g. parsed YAML/JSON) into a RunConfig."""
    if not isinstance(data, dict):
        raise ConfigError(f"a run config must be a mapping at the top level, got {type(data).__name__}")
    cfg = _build(RunConfig, data, "")
    _check_values(cfg)
    return cfg


# ---------------------------------------------------------------------------------------------------
# --set overrides


def parse_override(text: str) -> tuple[list[str], Any]:
    """'train.lr=1e-4' -> (['train', 'lr'], 0.0001). The value is read as a YAML scalar or list."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not p for p in key.split(".")):
        raise ConfigError(f"override {text!r} is not of the form key.sub=value (e.g. train.lr=1.0e-4)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        raise ConfigError(f"override {text!r}: the value is not valid YAML (quote strings with special characters)")
    if isinstance(value, str):
        # YAML 1.1 reads "1e-4" as a string; a number is what anyone typing it on a command line means.
        try:
            value = float(value) if any(c in value.lower() for c in ".e") and "nan" not in value.lower() else value
        except ValueError:
            pass
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `key.sub=value` overrides to a raw config dict (in place) and return it."""
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for i, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: '{'.'.join(path[: i + 1])}' is a {type(child).__name__}, not a mapping")
            node = child
        node[path[-1]] = value
    return data


# ---------------------------------------------------------------------------------------------------
# presets and files


def list_presets() -> list[str]:
    """Names of the packaged presets (src/versadiff/configs/*.yaml), sorted."""
    root = resources.files(PRESET_PACKAGE)
    return sorted(p.name[: -len(".yaml")] for p in root.iterdir() if p.name.endswith(".yaml"))


def preset_path(name: str) -> Path:
    """Path of a packaged preset; one-line error listing the presets when unknown."""
    if name not in list_presets():
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(list_presets())} or give a path to a YAML file")
    return Path(str(resources.files(PRESET_PACKAGE) / f"{name}.yaml"))


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: invalid YAML{where}; check indentation and quoting") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a run config must be a mapping at the top level")
    return data


def load_config(name_or_path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a preset name or a YAML/JSON file, apply `--set` overrides, validate and return a RunConfig."""
    text = str(name_or_path)
    is_path = text.endswith((".yaml", ".yml", ".json")) or "/" in text or Path(text).is_file()
    if is_path:
        path = Path(text)
        if not path.is_file():
            raise FileNotFoundError(f"config file {text} not found; give a preset name (versadiff presets) or a YAML path")
        default_name = path.stem
    else:
        path = preset_path(text)
        default_name = text
    data = _read_yaml(path)
    data.setdefault("name", default_name)
    apply_overrides(data, list(overrides or []))
    return config_from_dict(data)


def _write_atomic(path: Path, text: str) -> None:
    """Write `text` to a temporary sibling, fsync it, rename it over `path` (a kill leaves old or new, whole)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_config(cfg: RunConfig, folder: str | Path, *, header: str = "") -> None:
    """Write the resolved config as config.yaml and config.json into `folder` (each atomically).

    header: comment lines put at the top of config.yaml (e.g. what `mixed_precision: auto` resolved to)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    d = cfg.to_dict()
    comment = "".join(f"# {line}\n" for line in header.splitlines() if line.strip())
    _write_atomic(folder / "config.yaml", comment + yaml.safe_dump(d, sort_keys=False))
    _write_atomic(folder / "config.json", json.dumps(d, indent=2) + "\n")


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> dict[str, Any]:
    if isinstance(value, dict) and value:
        for k, v in value.items():
            _flatten(v, f"{prefix}.{k}" if prefix else str(k), out)
    else:
        out[prefix] = value
    return out


def config_diff(old: RunConfig, new: RunConfig) -> list[tuple[str, Any, Any]]:
    """(dotted key, old value, new value) for every setting that differs; a key absent on one side is None."""
    a, b = _flatten(old.to_dict(), "", {}), _flatten(new.to_dict(), "", {})
    keys = list(a) + [k for k in b if k not in a]
    return [(k, a.get(k), b.get(k)) for k in keys if a.get(k) != b.get(k)]


def key_allowed(key: str, allowed: list[str] | tuple[str, ...]) -> bool:
    """Whether `key` is one of `allowed` or lies under one of them (train.max_steps under train)."""
    return any(key == a or key.startswith(a + ".") for a in allowed)


def format_config(cfg: RunConfig) -> str:
    """The resolved config as YAML text (what `versadiff train --dry-run` prints)."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
