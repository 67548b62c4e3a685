"""Evaluation: FID / KID / IS / precision-recall on pytorch-fid's Inception, and domain evaluators.

Modules: inception (the FID network, local weights), features (pluggable extractors), metrics (math),
stats (float64 reference statistics as .npz), classifier (shipped Fashion-MNIST classifier),
evaluate (sources, sharded extraction, reports), training (evaluation during training), captions (COCO-captions
sets), text_metrics (BLEU / chrF through sacrebleu), vd (`--task text-to-image | image-to-text`: VD's flows scored
against a caption set), flows (VD's flows scored on shapes), cli (`versadiff eval`).

The names below load on first use, so that `versadiff --help` (which registers `eval`) does not import torch.
"""

from __future__ import annotations

import sys
import types
from importlib import import_module
from typing import Any

_EXPORTS = {
    "evaluate": ("EvalOptions", "FolderSource", "GeneratorSource", "NpzSource", "compute_reference", "evaluate",
                 "extract_features"),
    "features": ("FeatureExtractor", "build_feature_extractor", "register_feature_extractor"),
    "metrics": ("class_accuracy", "clip_score", "frechet_distance", "inception_score", "kernel_inception_distance",
                "precision_recall"),
    "stats": ("FeatureStats", "load_stats", "save_stats", "stats_from_features"),
    "training": ("TrainingEvaluator",),
    "captions": ("CaptionSet", "load_caption_set", "write_caption_set"),
    "text_metrics": ("caption_metric",),
    "vd": ("evaluate_flow",),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = [name for names in _EXPORTS.values() for name in names]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'versadiff.eval' has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """Keeps `versadiff.eval.evaluate` the function: importing the submodule of the same name would otherwise
    replace the package attribute with the module (as the eager imports this package had never did)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and name in _WHERE and hasattr(value, name):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
