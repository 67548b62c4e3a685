"""Evaluation: FID / KID / IS / precision-recall on pytorch-fid's Inception, and domain evaluators.

Modules: inception (the FID network, local weights), features (pluggable extractors), metrics (math),
stats (float64 reference statistics as .npz), classifier (shipped Fashion-MNIST classifier),
evaluate (sources, sharded extraction, reports), cli (`versadiff eval`).
"""

from .evaluate import (
    EvalOptions,
    FolderSource,
    GeneratorSource,
    NpzSource,
    compute_reference,
    evaluate,
    extract_features,
)
from .features import FeatureExtractor, build_feature_extractor, register_feature_extractor
from .metrics import (
    class_accuracy,
    clip_score,
    frechet_distance,
    inception_score,
    kernel_inception_distance,
    precision_recall,
)
from .stats import FeatureStats, load_stats, save_stats, stats_from_features

__all__ = [
    "EvalOptions", "FolderSource", "GeneratorSource", "NpzSource", "compute_reference", "evaluate",
    "extract_features", "FeatureExtractor", "build_feature_extractor", "register_feature_extractor",
    "class_accuracy", "clip_score", "frechet_distance", "inception_score", "kernel_inception_distance",
    "precision_recall", "FeatureStats", "load_stats", "save_stats", "stats_from_features",
]
