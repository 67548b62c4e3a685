"""`evaluate`: images (a checkpoint's samples, a folder, an .npz batch) -> features -> metrics -> JSON report.

Reproducibility and scale (the EDM recipe): image i of a checkpoint always uses seed base + i (and
class i mod num_classes for class-conditional models). The N indices are cut into fixed batches
[0, B), [B, 2B), ...; process r of W (accelerate) takes batches r, r + W, ...; the per-batch features
are gathered and put back in index order before any statistic is computed in float64. Every batch
thus holds the same images whatever W is, so 1 or 8 processes give the same report, bit for bit. (A
different --batch-size changes the last bits of the features, since kernels depend on the batch shape;
the batch size is recorded in the report.)
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from .features import FeatureExtractor, build_feature_extractor
from .metrics import (
    class_accuracy,
    clip_score,
    frechet_distance,
    inception_score,
    kernel_inception_distance,
    precision_recall,
)
from .stats import FeatureStats, cache_key, load_stats, save_stats, stats_from_features

__all__ = [
    "METRICS",
    "ImageSource",
    "GeneratorSource",
    "FolderSource",
    "NpzSource",
    "DatasetSource",
    "EvalOptions",
    "extract_features",
    "map_batches",
    "quantize_images",
    "evaluate",
    "compute_reference",
    "parse_metrics",
    "versions",
]

#: metric name -> (feature extractor, kind)
METRICS: dict[str, tuple[str, str]] = {
    "fid": ("inception", "fd"),
    "kid": ("inception", "kid"),
    "is": ("inception", "is"),
    "pr": ("inception", "pr"),
    "fmnist_fd": ("fmnist", "fd"),
    "fmnist_acc": ("fmnist", "acc"),
    "shapes_fd": ("shapes", "fd"),
    "shapes_acc": ("shapes", "acc"),
    "clip": ("clip", "clip"),
}
#: dataset name in a run config's `data.name` -> domain evaluator ("acc" / "fd" resolve to it)
DOMAINS = {"fashion_mnist": "fmnist", "shapes": "shapes"}


def parse_metrics(text: str | Sequence[str], domain: str | None = None) -> list[str]:
    """Metric names from "fid,kid,pr,acc"; "acc" and "fd" mean the domain evaluator's (fmnist_* / shapes_*)."""
    names = [m.strip() for m in (text.split(",") if isinstance(text, str) else text) if m.strip()]
    if not names:
        raise ValueError("no metric given; pass --metrics with some of " + ", ".join([*METRICS, "acc", "fd"]))
    out = []
    for m in names:
        if m in ("acc", "fd"):
            if domain not in DOMAINS.values():
                raise ValueError(f"metric '{m}' needs a domain evaluator: pass --domain fmnist or --domain shapes "
                                 f"(or name fmnist_{m} / shapes_{m})")
            m = f"{domain}_{m}"
        if m not in METRICS:
            raise ValueError(f"unknown metric {m!r}; choose from {', '.join([*METRICS, 'acc', 'fd'])}")
        if m not in out:
            out.append(m)
    return out


# ---------------------------------------------------------------------------------------------------
# image sources: len() and batch(indices) -> (images [B, C, H, W] in [-1, 1], labels [B] or None)


class ImageSource:
    description: dict[str, Any] = {}

    def __len__(self) -> int:
        raise NotImplementedError

    def batch(self, indices: Sequence[int]) -> tuple[Tensor, Tensor | None]:
        raise NotImplementedError


@dataclass
class GeneratorSource(ImageSource):
    """Samples of a loaded model (a versadiff.pipelines.Pipeline, or anything with the same `generate`)."""

    model: Any
    n: int
    seed: int = 0
    sampler: str | None = None
    steps: int | None = None
    guidance: float | None = None
    device: str | torch.device = "cpu"
    labels: list[int] | None = field(default=None, init=False)
    truncation: float | None = None  # VQ-Diffusion models only (None: the run's)

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"--n must be >= 1, got {self.n}")
        num_classes = int(getattr(self.model, "num_classes", 0))
        # same rule as `versadiff sample`: cycle through the classes
        self.labels = [i % num_classes for i in range(self.n)] if num_classes else None
        if self.guidance is None:
            self.guidance = self.model.config.sample.guidance if num_classes else 0.0
        s = getattr(getattr(self.model, "config", None), "sample", None)
        self.sampler = self.sampler or (s.sampler if s else None)
        self.steps = self.steps or (s.steps if s else None)
        self.description = {"kind": "checkpoint", "source": str(getattr(self.model, "source", "")),
                            "step": getattr(self.model, "step", None), "n": self.n,
                            "seeds": [self.seed, self.seed + self.n - 1], "sampler": self.sampler,
                            "steps": self.steps, "guidance": self.guidance, "truncation": self.truncation,
                            "labels": "i mod num_classes" if num_classes else None}

    def __len__(self) -> int:
        return self.n

    def batch(self, indices: Sequence[int]) -> tuple[Tensor, Tensor | None]:
        labels = None if self.labels is None else [self.labels[i] for i in indices]
        extra = {} if self.truncation is None else {"truncation": self.truncation}
        images = self.model.generate([self.seed + i for i in indices], sampler=self.sampler, steps=self.steps,
                                     guidance=self.guidance, class_labels=labels, batch_size=len(indices),
                                     device=self.device, **extra)
        return quantize_images(images), None if labels is None else torch.tensor(labels)


def quantize_images(images: Tensor) -> Tensor:
    """Images in [-1, 1] rounded to 8 bits as saving a PNG does, so scoring a checkpoint's samples equals
    scoring the PNGs `versadiff sample` / `generate` write of them."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1


def _read_labels(path: Path, n: int) -> list[int]:
    if path.suffix == ".npy":
        labels = [int(v) for v in np.load(path, allow_pickle=False).reshape(-1)]
    else:
        labels = [int(line) for line in path.read_text().split()]
    if len(labels) != n:
        raise ValueError(f"{path} holds {len(labels)} labels for {n} images; give one label per image")
    return labels


class FolderSource(ImageSource):
    """Image files under a folder, sorted by path; for a folder written by `versadiff sample`, the samples its
    settings.json lists, in its order, with their classes. Labels can also come from `labels` (a .txt with one
    integer per line, or a .npy)."""

    def __init__(self, root: str | Path, labels: str | Path | None = None, n: int | None = None) -> None:
        from versadiff.data.folder import list_images

        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {self.root} does not exist")
        settings = self.root / "settings.json"
        records = json.loads(settings.read_text()).get("images") if settings.is_file() else None
        if records:
            # a `versadiff sample` folder: its settings.json lists the samples (grid.png is not one)
            self.files = [self.root / r["file"] for r in records]
            missing = [f for f in self.files if not f.is_file()]
            if missing:
                raise FileNotFoundError(f"{missing[0]} is listed in {settings} but missing")
        else:
            self.files = list_images(self.root)
        if not self.files:
            raise ValueError(f"no image files (.png, .jpg, ...) under {self.root}")
        self.labels: list[int] | None = None
        if labels is not None:
            self.labels = _read_labels(Path(labels), len(self.files))
        elif records and all(r.get("class") is not None for r in records):
            self.labels = [int(r["class"]) for r in records]
        if n is not None:
            if n > len(self.files):
                raise ValueError(f"--n {n} exceeds the {len(self.files)} images under {self.root}")
            self.files = self.files[:n]
            self.labels = None if self.labels is None else self.labels[:n]
        self.description = {"kind": "folder", "path": str(self.root.resolve()), "n": len(self.files),
                            "labels": "given" if self.labels is not None else None}

    def __len__(self) -> int:
        return len(self.files)

    def batch(self, indices: Sequence[int]) -> tuple[Tensor, Tensor | None]:
        from versadiff.data import load_image

        arrs = []
        for i in indices:
            # a corrupt file is a one-line error naming it: skipping it would score a different sample set
            im = load_image(self.files[i])
            if im.mode not in ("L", "RGB"):
                im = im.convert("RGB")
            arrs.append(np.asarray(im))
        shapes = {a.shape for a in arrs}
        if len(shapes) != 1:
            raise ValueError(f"images under {self.root} differ in size/channels {sorted(shapes)}; make them uniform")
        return _uint8_to_tensor(np.stack(arrs)), self._labels(indices)

    def _labels(self, indices: Sequence[int]) -> Tensor | None:
        return None if self.labels is None else torch.tensor([self.labels[i] for i in indices])


def _uint8_to_tensor(arr: np.ndarray) -> Tensor:
    """uint8 [N, H, W] or [N, H, W, C] -> float [N, C, H, W] in [-1, 1]."""
    if arr.dtype != np.uint8 or arr.ndim not in (3, 4):
        raise ValueError(f"expected uint8 images [N, H, W(, C)], got {arr.dtype} {arr.shape}")
    x = torch.from_numpy(np.ascontiguousarray(arr)).float().div(127.5).sub(1.0)
    return x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2)


class NpzSource(ImageSource):
    """An .npz batch of uint8 images [N, H, W(, C)] under "images" or "arr_0" (the ADM / guided-diffusion
    sample format), with optional labels under "labels" or "arr_1"."""

    def __init__(self, path: str | Path, n: int | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"image batch {self.path} does not exist")
        with np.load(self.path, allow_pickle=False) as f:
            key = "images" if "images" in f else "arr_0" if "arr_0" in f else None
            if key is None:
                raise ValueError(f"{self.path} holds no images (keys {sorted(f.keys())}; expected 'images' or 'arr_0')")
            self.images = f[key]
            lkey = "labels" if "labels" in f else "arr_1" if "arr_1" in f else None
            self.labels = f[lkey].astype(np.int64) if lkey else None
        _uint8_to_tensor(self.images[:1])  # validate dtype / layout now, with a clear message
        if n is not None:
            if n > len(self.images):
                raise ValueError(f"--n {n} exceeds the {len(self.images)} images in {self.path}")
            self.images = self.images[:n]
            self.labels = None if self.labels is None else self.labels[:n]
        self.description = {"kind": "npz", "path": str(self.path.resolve()), "n": len(self.images)}

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, indices: Sequence[int]) -> tuple[Tensor, Tensor | None]:
        idx = np.asarray(indices)
        return _uint8_to_tensor(self.images[idx]), None if self.labels is None else torch.from_numpy(self.labels[idx])


class DatasetSource(ImageSource):
    """A versadiff dataset (items {"image": [-1, 1] CHW, "label": int}) built from a data config mapping."""

    def __init__(self, data_cfg: dict[str, Any], n: int | None = None) -> None:
        from versadiff.data import build_dataset

        self.dataset = build_dataset(dict(data_cfg))
        self.n = len(self.dataset) if n is None else min(n, len(self.dataset))
        self.description = {"kind": "dataset", "config": dict(data_cfg), "n": self.n}

    def __len__(self) -> int:
        return self.n

    def batch(self, indices: Sequence[int]) -> tuple[Tensor, Tensor | None]:
        items = [self.dataset[i] for i in indices]
        labels = [it.get("label") for it in items]
        images = torch.stack([it["image"] for it in items])
        return images, None if any(c is None for c in labels) else torch.tensor(labels)


# ---------------------------------------------------------------------------------------------------
# sharded feature extraction


def _state():
    """accelerate's process state. `accelerate launch --cpu` (ACCELERATE_USE_CPU) asks for a CPU process group,
    which PartialState only forms when told so."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


def map_batches(n: int, batch_size: int, fn: Callable[[list[int]], Any], progress: bool = False,
                desc: str = "eval batches") -> list[Any]:
    """`fn(indices)` for every fixed batch [0, B), [B, 2B), ... of n indices, split across the accelerate
    processes (process r of W takes batches r, r + W, ...) and gathered: every process gets the list of all
    results in batch order. Results must be picklable (numpy arrays, strings)."""
    from accelerate.utils import gather_object

    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    state = _state()
    batches = [list(range(s, min(s + batch_size, n))) for s in range(0, n, batch_size)]
    mine = list(range(state.process_index, len(batches), state.num_processes))
    results = [(k, fn(batches[k])) for k in _progress(mine, progress and state.is_main_process, desc)]
    if state.num_processes > 1:
        results = gather_object(results)
    results.sort(key=lambda r: r[0])
    if [r[0] for r in results] != list(range(len(batches))):
        raise RuntimeError("feature gathering lost batches; all processes must evaluate the same source")
    return [r[1] for r in results]


def extract_features(source: ImageSource, extractors: dict[str, FeatureExtractor], batch_size: int = 64,
                     progress: bool = False) -> tuple[dict[str, dict[str, np.ndarray]], np.ndarray | None]:
    """Run every extractor on every image, split across the accelerate processes (`map_batches`).

    Returns ({extractor: {"features": [N, D] float32, "logits"?: [N, K]}}, labels [N] or None) on every
    process, rows in image-index order.
    """

    def one_batch(indices: list[int]) -> tuple[dict[str, dict[str, np.ndarray]], np.ndarray | None]:
        images, labels = source.batch(indices)
        outs = {name: {key: v.numpy() for key, v in ex(images).items()} for name, ex in extractors.items()}
        return outs, None if labels is None else labels.numpy()

    results = map_batches(len(source), batch_size, one_batch, progress)
    merged = {name: {key: np.concatenate([r[0][name][key] for r in results]) for key in results[0][0][name]}
              for name in extractors} if results else {}
    labels = None if any(r[1] is None for r in results) else np.concatenate([r[1] for r in results])
    return merged, labels


def _progress(items: list, show: bool, desc: str = "eval batches") -> Any:
    if not show:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc)


# ---------------------------------------------------------------------------------------------------
# options and reference statistics


@dataclass
class EvalOptions:
    """Everything that changes the numbers, recorded verbatim in the report."""

    metrics: list[str]
    batch_size: int = 64
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    is_splits: int = 10
    pr_k: int = 3
    ref_n: int | None = None
    ref_feature: str | None = None  # feature name of --ref statistics files that do not carry one
    inception_weights: str | None = None
    fmnist_input: str | None = None
    clip_model: str | None = None
    prompts: list[str] | None = None  # CLIP score: one prompt per image (default: the class names)
    seed: int = 0


def reference_stats(ref: Sequence[str | Path | ImageSource], feature: str, extractor: FeatureExtractor | None,
                    need_features: bool, opts: EvalOptions, cache_dir: str | Path | None = None,
                    save_to: str | Path | None = None) -> FeatureStats:
    """Statistics of the reference under `feature`: from a matching .npz among `ref`, else computed from the
    first image source in `ref` (and cached under `cache_dir`)."""
    npz = [Path(r) for r in ref if not isinstance(r, ImageSource) and Path(r).suffix == ".npz"
           and Path(r).is_file() and _is_stats(Path(r))]
    for p in npz:
        st = _load_ref_stats(p, opts)
        if st.feature == feature:
            if need_features and st.features is None:
                raise ValueError(f"{p} holds only mu/sigma, but KID / precision-recall need the reference features; "
                                 "pass the dataset as --ref instead (its statistics keep them)")
            return st
    sources = [r for r in ref if not (not isinstance(r, ImageSource) and Path(r) in npz)]
    if not sources:
        found = ", ".join(f"{p} ({_load_ref_stats(p, opts).feature})" for p in npz) or "none"
        raise ValueError(f"no reference for {feature} features: the --ref statistics are {found}; "
                         "pass a matching .npz or a dataset / image folder")
    source = sources[0] if isinstance(sources[0], ImageSource) else open_source(sources[0], n=opts.ref_n)
    # the key covers what changes the numbers: the source, its size, the feature space and its input mode
    key = cache_key({**source.description, "fmnist_input": opts.fmnist_input}, feature)
    cached = Path(cache_dir) / f"{key}.npz" if cache_dir else None
    st = load_stats(cached, feature) if cached is not None and cached.is_file() else None
    if st is None or (need_features and st.features is None):
        if extractor is None:
            raise ValueError(f"cannot compute {feature} reference statistics without its feature extractor")
        feats, _ = extract_features(source, {feature: extractor}, opts.batch_size)
        # raw features only when KID / precision-recall need them (50k Inception features are 400 MB)
        st = stats_from_features(feats[feature]["features"], feature, keep_features=need_features)
        if cached is not None and _state().is_main_process:
            save_stats(st, cached)
    if save_to is not None and _state().is_main_process:
        save_stats(st, save_to)
    return st


def _load_ref_stats(path: Path, opts: EvalOptions) -> FeatureStats:
    """A --ref statistics file; files without a feature name (pytorch-fid's --save-stats) need --ref-feature."""
    with np.load(path, allow_pickle=False) as f:
        named = "feature" in f
    if not named and opts.ref_feature is None:
        raise ValueError(f"{path} does not name its feature extractor (a pytorch-fid stats file?); "
                         "pass --ref-feature inception_v3_pool3 to vouch that it holds FID Inception statistics")
    return load_stats(path, None if named else opts.ref_feature)


def _is_stats(path: Path) -> bool:
    with np.load(path, allow_pickle=False) as f:
        return "mu" in f and "sigma" in f


def open_source(spec: str | Path, n: int | None = None, labels: str | Path | None = None) -> ImageSource:
    """An image source from a path: an image folder, an .npz image batch, or a YAML/JSON data config
    (a mapping for versadiff.data.build_dataset, or a run config whose `data` section is used)."""
    p = Path(spec)
    if p.is_dir():
        return FolderSource(p, labels=labels, n=n)
    if not p.exists():
        raise FileNotFoundError(f"{p} does not exist; give an image folder, an .npz batch or statistics, "
                                "or a YAML data config")
    if p.suffix == ".npz":
        return NpzSource(p, n=n)
    if p.suffix in (".yaml", ".yml", ".json"):
        import yaml

        cfg = yaml.safe_load(p.read_text())
        if isinstance(cfg, dict) and isinstance(cfg.get("data"), dict):
            cfg = cfg["data"]
        if not isinstance(cfg, dict) or "name" not in cfg:
            raise ValueError(f"{p} is not a data config (a mapping with a 'name', "
                             "or a run config with a 'data' section)")
        return DatasetSource(cfg, n=n)
    raise ValueError(f"{p}: unsupported reference/sample type; give an image folder, .npz, or .yaml data config")


# ---------------------------------------------------------------------------------------------------
# the evaluation


def versions() -> dict[str, str]:
    """Versions of everything that can change a metric's value."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("versadiff", "torch", "numpy", "scipy", "accelerate"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def build_extractors(metrics: Sequence[str], opts: EvalOptions, device: str | torch.device,
                     custom: dict[str, FeatureExtractor] | None = None) -> dict[str, FeatureExtractor]:
    """One extractor per feature space the metrics need; `custom` overrides a built-in by its key."""
    out: dict[str, FeatureExtractor] = {}
    for m in metrics:
        key = METRICS[m][0]
        if key in out:
            continue
        if custom and key in custom:
            out[key] = custom[key]
        elif key == "inception":
            out[key] = build_feature_extractor(key, weights=opts.inception_weights, device=device)
        elif key == "fmnist":
            out[key] = build_feature_extractor(key, device=device, input_mode=opts.fmnist_input)
        elif key == "clip":
            out[key] = build_feature_extractor(key, model_dir=opts.clip_model, device=device)
        else:
            out[key] = build_feature_extractor(key, device=device)
    return out


def evaluate(source: ImageSource, ref: Sequence[str | Path | ImageSource], opts: EvalOptions,
             device: str | torch.device = "cpu", cache_dir: str | Path | None = None,
             extractors: dict[str, FeatureExtractor] | None = None, progress: bool = False,
             save_ref: str | Path | None = None) -> dict[str, Any]:
    """Compute `opts.metrics` for `source` against `ref`; returns the report (same on every process)."""
    unknown = [m for m in opts.metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; choose from {', '.join(METRICS)}")
    ex = build_extractors(opts.metrics, opts, device, extractors)
    feats, labels = extract_features(source, ex, opts.batch_size, progress)
    results: dict[str, Any] = {}
    refs: dict[str, dict[str, Any]] = {}
    for m in opts.metrics:
        key, kind = METRICS[m]
        fname = ex[key].name
        f = feats[key]
        if kind == "is":
            mean, std = inception_score(f["logits"], splits=opts.is_splits)
            results[m] = {"mean": mean, "std": std}
        elif kind == "clip":
            prompts = _prompts(opts, source, labels, len(f["features"]))
            results[m] = clip_score(f["features"], ex[key].text_features(prompts).numpy())
        elif kind == "acc":
            if labels is None:
                raise ValueError(f"metric {m} needs the class of every image: evaluate a class-conditional checkpoint "
                                 "or pass --labels FILE with --images")
            results[m] = class_accuracy(f["pred"] if "pred" in f else f["logits"], labels)
        else:
            if not ref:
                raise ValueError(f"metric {m} needs reference statistics or a reference dataset: pass --ref")
            st = reference_stats(ref, fname, ex[key], kind in ("kid", "pr"), opts, cache_dir,
                                 save_to=_save_path(save_ref, key, opts.metrics))
            refs[fname] = {"n": st.n, "feature": st.feature}
            if kind == "fd":
                mine = stats_from_features(f["features"], fname)
                results[m] = frechet_distance(mine.mu, mine.sigma, st.mu, st.sigma)
            elif kind == "kid":
                mean, std = kernel_inception_distance(st.features, f["features"], opts.kid_subsets,
                                                      opts.kid_subset_size, seed=opts.seed)
                results[m] = {"mean": mean, "std": std}
            else:
                p, r = precision_recall(st.features, f["features"], k=opts.pr_k)
                results[m] = {"precision": p, "recall": r}
    state = _state()
    return {
        "metrics": results,
        "samples": dict(source.description),
        "reference": {"given": [r.description if isinstance(r, ImageSource) else str(r) for r in ref],
                      "statistics": refs},
        "settings": {k: v for k, v in vars(opts).items()},
        "features": {k: e.name for k, e in ex.items()},
        "versions": versions(),
        "runtime": {"num_processes": state.num_processes, "device": str(device)},
    }


def compute_reference(ref: Sequence[str | Path | ImageSource], opts: EvalOptions, save_ref: str | Path,
                      device: str | torch.device = "cpu", cache_dir: str | Path | None = None) -> dict[str, Any]:
    """Compute and save the reference statistics the metrics need (no samples); returns a small report."""
    if not ref:
        raise ValueError("pass --ref DATASET (an image folder, .npz batch or YAML data config) "
                         "to compute statistics of")
    ex = build_extractors(opts.metrics, opts, device)
    written = {}
    for key, extractor in ex.items():
        kinds = {METRICS[m][1] for m in opts.metrics if METRICS[m][0] == key}
        if not kinds & {"fd", "kid", "pr"}:
            continue
        path = _save_path(save_ref, key, opts.metrics)
        st = reference_stats(ref, extractor.name, extractor, bool(kinds & {"kid", "pr"}), opts, cache_dir, path)
        written[str(path)] = {"feature": st.feature, "n": st.n, "with_features": st.features is not None}
    if not written:
        raise ValueError(f"metrics {opts.metrics} need no reference statistics; pick fid, kid, pr or a *_fd metric")
    return {"reference_statistics": written, "settings": dict(vars(opts)), "versions": versions()}


def _prompts(opts: EvalOptions, source: ImageSource, labels: np.ndarray | None, n: int) -> list[str]:
    """One prompt per image: the given list, else the class name each image was generated for."""
    if opts.prompts is not None:
        if len(opts.prompts) != n:
            raise ValueError(f"got {len(opts.prompts)} prompts for {n} images; give one prompt per image")
        return list(opts.prompts)
    names = list(getattr(getattr(source, "model", None), "class_names", None) or [])
    if labels is None or not names:
        raise ValueError("CLIP score needs a prompt per image: pass --prompts FILE (one line per image)")
    return [names[int(c)] for c in labels]


def _save_path(save_ref: str | Path | None, key: str, metrics: Sequence[str]) -> Path | None:
    """Where --save-ref OUT.npz puts the statistics of feature space `key`: OUT.npz when the metrics need
    reference statistics in one feature space only, else OUT.<key>.npz for each (e.g. OUT.inception.npz)."""
    if save_ref is None:
        return None
    p = Path(save_ref)
    spaces = {METRICS[m][0] for m in metrics if METRICS[m][1] in ("fd", "kid", "pr")}
    return p if len(spaces) <= 1 else p.with_name(f"{p.stem}.{key}.npz")


def write_report(report: dict[str, Any], path: str | Path) -> Path:
    """Write the report as indented JSON (main process only)."""
    path = Path(path)
    if _state().is_main_process:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return path
