"""Feature statistics (mu, sigma, n, feature name) in float64, saved as .npz and reused as FID references.

A statistics file may also keep the raw features (float32), which KID and precision/recall need.
Keys of the .npz: mu [D], sigma [D, D], n (), feature (str), and optionally features [n, D]; the
same mu / sigma names as pytorch-fid's `--save-stats` files, whose statistics load here too (they
carry no feature name: pass feature="inception_v3_pool3" to `load_stats`, or --ref-feature, to vouch for them).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["FeatureStats", "StatsAccumulator", "stats_from_features", "save_stats", "load_stats", "cache_key"]


@dataclass
class FeatureStats:
    """Mean and covariance of n feature vectors from the extractor named `feature`."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int
    feature: str
    features: np.ndarray | None = None  # the raw features, when kept (for KID / precision-recall)


class StatsAccumulator:
    """Running float64 sums (sum x, sum x x^T) so statistics of any number of samples fit in O(D^2) memory."""

    def __init__(self, feature: str) -> None:
        self.feature = feature
        self.n = 0
        self.sum: np.ndarray | None = None
        self.outer: np.ndarray | None = None

    def update(self, feats: np.ndarray) -> None:
        x = np.asarray(feats, dtype=np.float64)
        if x.ndim != 2:
            raise ValueError(f"features must be [N, D]; got shape {x.shape}")
        if self.sum is None:
            self.sum, self.outer = np.zeros(x.shape[1]), np.zeros((x.shape[1], x.shape[1]))
        elif x.shape[1] != self.sum.shape[0]:
            raise ValueError(f"feature dimension changed from {self.sum.shape[0]} to {x.shape[1]}")
        self.n += len(x)
        self.sum += x.sum(axis=0)
        self.outer += x.T @ x

    def finalize(self) -> FeatureStats:
        """Mean and unbiased covariance (divides by n - 1, like numpy.cov)."""
        if self.n < 2:
            raise ValueError(f"statistics need at least 2 samples; got {self.n}")
        mu = self.sum / self.n
        sigma = (self.outer - self.n * np.outer(mu, mu)) / (self.n - 1)
        return FeatureStats(mu, sigma, self.n, self.feature)


def stats_from_features(feats: np.ndarray, feature: str, keep_features: bool = False) -> FeatureStats:
    """Statistics of a full feature array [N, D] (float64 math; the rows' order does not matter)."""
    x = np.asarray(feats, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"statistics need features [N >= 2, D]; got shape {x.shape}")
    mu = x.mean(axis=0)
    sigma = np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])
    return FeatureStats(mu, sigma, len(x), feature, np.asarray(feats, np.float32) if keep_features else None)


def save_stats(stats: FeatureStats, path: str | Path) -> Path:
    """Write a .npz (mu, sigma, n, feature[, features])."""
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"statistics files end in .npz; got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"mu": stats.mu, "sigma": stats.sigma, "n": np.int64(stats.n), "feature": np.str_(stats.feature)}
    if stats.features is not None:
        arrays["features"] = stats.features
    tmp = path.with_name(path.name + ".tmp.npz")  # write then rename: a killed run leaves no half file
    np.savez(tmp, **arrays)
    tmp.replace(path)
    return path


def load_stats(path: str | Path, feature: str | None = None) -> FeatureStats:
    """Read a statistics .npz. `feature`: the extractor name the caller needs; a mismatch is an error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"statistics file {path} not found; "
                                f"compute it with `versadiff eval --ref DATASET --save-ref {path}`")
    with np.load(path, allow_pickle=False) as f:
        if "mu" not in f or "sigma" not in f:
            raise ValueError(f"{path} is not a statistics file (it has {sorted(f.keys())}, needs mu and sigma)")
        stored = str(f["feature"]) if "feature" in f else None
        if stored is None and feature is None:
            raise ValueError(f"{path} does not name its feature extractor; say which one produced it")
        if stored is not None and feature is not None and stored != feature:
            raise ValueError(f"{path} holds {stored} statistics but {feature} statistics are needed")
        mu, sigma = f["mu"].astype(np.float64), f["sigma"].astype(np.float64)
        n = int(f["n"]) if "n" in f else -1
        features = f["features"] if "features" in f else None
    return FeatureStats(mu, sigma, n, stored or feature, features)


def cache_key(description: dict, feature: str) -> str:
    """A file-name-safe key for the statistics of a dataset description under a feature extractor."""
    text = json.dumps({"data": description, "feature": feature}, sort_keys=True, default=str)
    return f"{feature}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"
