"""Evaluation during training (`train.eval_every`): the metrics of `versadiff eval`, on the EMA weights, the same N
samples (seeds eval_seed + i, class i mod num_classes) every time, against one reference.

`TrainingEvaluator(cfg, info, device)` resolves the metric names, builds the feature extractors and the reference
once (so that a missing Inception file or a bad metric name fails before step 0), and `evaluator(model)` returns
flat scalars ({"shapes_fd": 3.1, "shapes_acc": 0.97}, {"precision": .., "recall": ..}, {"kid": .., "kid_std": ..}).
Under several processes every process calls it (the sample batches are split over them, as in `versadiff eval`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .evaluate import DOMAINS, METRICS, DatasetSource, EvalOptions, GeneratorSource, build_extractors, evaluate, \
    parse_metrics

__all__ = ["TrainingEvaluator", "scalars", "resolve_metrics", "best_mode", "DEFAULT_REF_N"]

#: reference images read from the training data when train.eval_options.ref_n is not given
DEFAULT_REF_N = 50_000
TRAIN_DATA = "train-data"


def _data_name(data: dict[str, Any]) -> str | None:
    """The dataset a data section reads (a context cache's inner dataset)."""
    name = data.get("name")
    if name == "context_cache" and isinstance(data.get("dataset"), dict):
        return data["dataset"].get("name")
    return name


def resolve_metrics(spec: str | list, data: dict[str, Any], num_classes: int) -> list[str]:
    """train.eval_metrics as metric names (auto: the domain's fd, and acc for class-conditional models; else fid)."""
    from versadiff.config import names_list

    domain = DOMAINS.get(str(_data_name(data)))
    names = names_list(spec)
    if names == ["auto"]:
        names = (["fd"] + (["acc"] if num_classes else [])) if domain else ["fid"]
    if not names:
        raise ValueError("train.eval_metrics is empty; name some of " + ", ".join([*METRICS, "acc", "fd"]))
    try:
        metrics = parse_metrics(names, domain)
    except ValueError as e:
        raise ValueError(f"train.eval_metrics: {e}".replace("pass --domain fmnist or --domain shapes (or name",
                                                             "name")) from None
    for m in metrics:
        if METRICS[m][1] == "acc" and not num_classes:
            raise ValueError(f"train.eval_metrics: {m} scores the class of each sample, but this model is not "
                             "class-conditional; drop it (or train with model.num_classes)")
    return metrics


def scalars(metrics: dict[str, Any]) -> dict[str, float]:
    """A report's metrics as flat numbers: fid -> fid; kid / is -> kid, kid_std; pr -> precision, recall."""
    out: dict[str, float] = {}
    for name, v in metrics.items():
        if isinstance(v, dict) and "mean" in v:
            out[name], out[f"{name}_std"] = float(v["mean"]), float(v["std"])
        elif isinstance(v, dict):
            out.update({k: float(x) for k, x in v.items()})
        else:
            out[name] = float(v)
    return out


def _scalar_names(metrics: list[str]) -> list[str]:
    names = []
    for m in metrics:
        kind = METRICS[m][1]
        names += ["precision", "recall"] if kind == "pr" else [m]
    return names


def best_mode(name: str) -> str:
    """"min" for distances (fid, kid, *_fd), "max" for scores (acc, is, precision, recall, clip)."""
    kind = METRICS[name][1] if name in METRICS else None
    return "min" if kind in ("fd", "kid") else "max"


def resolve_best(spec: str | None, metrics: list[str], domain: str | None) -> str | None:
    """The scalar train.eval_best names (auto: the first metric's), or None for no best/."""
    if spec is None or spec == "none":
        return None
    names = _scalar_names(metrics)
    if spec == "auto":
        return names[0]
    name = f"{domain}_{spec}" if spec in ("acc", "fd") and domain else spec
    if name not in names:
        raise ValueError(f"train.eval_best {spec!r} is not one of the evaluated values ({', '.join(names)}); "
                         "name one of them, auto (the first) or null (keep no best/)")
    return name


class TrainingEvaluator:
    """The run's evaluation: its metrics, options, reference and extractors, built once."""

    def __init__(self, cfg: Any, info: dict[str, Any], device: Any, cache_dir: str | Path | None = None) -> None:
        tc = cfg.train
        self.device = device
        self.cache_dir = cache_dir
        num_classes = int(info.get("num_classes", 0) or 0)
        self.domain = DOMAINS.get(str(_data_name(cfg.data)))
        self.metrics = resolve_metrics(tc.eval_metrics, cfg.data, num_classes)
        self.best = resolve_best(tc.eval_best, self.metrics, self.domain)
        self.mode = best_mode(self.best) if self.best else None
        extra = dict(tc.eval_options)
        ref_n = extra.pop("ref_n", DEFAULT_REF_N)
        if "fmnist_input" not in extra and self.domain == "fmnist" and tuple(info.get("image_shape", ())[-2:]) != (28, 28):
            extra["fmnist_input"] = cfg.data.get("resize", "pad")
        self.n, self.seed = int(tc.eval_n), int(tc.eval_seed)
        self.opts = EvalOptions(metrics=self.metrics, batch_size=int(tc.eval_batch_size), seed=self.seed,
                                ref_n=ref_n, **extra)
        if any(METRICS[m][1] == "clip" for m in self.metrics) and self.opts.prompts is None \
                and not (num_classes and info.get("class_names")):
            raise ValueError("train.eval_metrics: clip needs a prompt per sample: a class-conditional model (its class "
                             "names) or train.eval_options.prompts")
        if self.opts.prompts is not None and len(self.opts.prompts) != self.n:
            raise ValueError(f"train.eval_options.prompts holds {len(self.opts.prompts)} prompts for train.eval_n="
                             f"{self.n} samples; give one prompt per sample")
        needs_ref = any(METRICS[m][1] in ("fd", "kid", "pr") for m in self.metrics)
        self.ref: list[Any] = []
        if needs_ref:
            if tc.eval_ref == TRAIN_DATA:
                data = {k: v for k, v in dict(cfg.data).items() if k != "hflip"}  # a reference is not augmented
                self.ref = [DatasetSource(data, n=ref_n)]
            else:
                if not Path(tc.eval_ref).exists():
                    raise FileNotFoundError(f"train.eval_ref {tc.eval_ref} does not exist; give {TRAIN_DATA}, a "
                                            "statistics .npz, an image folder, an .npz batch or a YAML data config")
                self.ref = [tc.eval_ref]
        # the extractors load now (Inception weights, the shapes reader, ...): a missing file stops the run at step 0
        self.extractors = build_extractors(self.metrics, self.opts, device)

    def source(self, model: Any) -> GeneratorSource:
        return GeneratorSource(model, self.n, seed=self.seed, device=self.device)

    def check(self, model: Any) -> None:
        """The sampling request of an evaluation (sampler, steps, guidance against the model), sampling nothing."""
        src = self.source(model)
        k = min(self.n, self.opts.batch_size)
        model.request(list(range(self.seed, self.seed + k)), sampler=src.sampler, steps=src.steps,
                      guidance=src.guidance, batch_size=self.opts.batch_size,
                      class_labels=None if src.labels is None else src.labels[:k])

    def __call__(self, model: Any) -> dict[str, float]:
        report = evaluate(self.source(model), self.ref, self.opts, device=self.device, cache_dir=self.cache_dir,
                          extractors=self.extractors)
        return scalars(report["metrics"])

    def better(self, value: float, best: float | None) -> bool:
        """Whether `value` of the best scalar beats `best` (strictly; a NaN never does)."""
        if value != value:
            return False
        if best is None:
            return True
        return value < best if self.mode == "min" else value > best
