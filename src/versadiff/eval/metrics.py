"""Sample-quality metrics on feature arrays: Fréchet distance, KID, Inception Score, precision/recall, accuracy.

All math runs in float64 (numpy / scipy, or torch float64 for the chunked distances) so that a metric is
a deterministic function of its inputs. Feature extraction lives in features.py; statistics in stats.py.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.linalg
import scipy.special
import torch

__all__ = [
    "frechet_distance",
    "kernel_inception_distance",
    "inception_score",
    "precision_recall",
    "class_accuracy",
    "clip_score",
]


def _as_2d(name: str, x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-d array [N, D] of features; got shape {x.shape}")
    return x


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)): Fréchet distance of two Gaussians (Heusel et al. 2017)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.shape[0],) * 2:
        raise ValueError(f"statistics disagree in shape: mu {mu1.shape} vs {mu2.shape}, "
                         f"sigma {s1.shape} vs {s2.shape}; were they computed with the same feature extractor?")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(s1 @ s2)
    if caught or not np.isfinite(covmean).all():
        # singular product (fewer samples than dimensions, or discrete features): shift both covariances
        # by eps * I, the remedy of the FID reference code, instead of trusting an inaccurate root; the
        # traces below use the shifted matrices too, so identical statistics still give exactly 0
        s1, s2 = s1 + np.eye(s1.shape[0]) * eps, s2 + np.eye(s1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm(s1 @ s2)
    if np.iscomplexobj(covmean):
        # tiny imaginary parts are round-off; large ones mean the covariances are not PSD
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"the covariance square root has imaginary part {np.abs(covmean.imag).max():.3g}; "
                             "the statistics are not valid covariances")
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))


def kernel_inception_distance(real: np.ndarray, fake: np.ndarray, num_subsets: int = 100,
                              subset_size: int = 1000, degree: int = 3, coef0: float = 1.0,
                              seed: int = 0) -> tuple[float, float]:
    """KID (Bińkowski et al. 2018): mean and std over random subsets of the unbiased MMD^2 estimate
    with the polynomial kernel k(x, y) = (x.y / d + coef0)^degree. Subsets come from a seeded RNG."""
    real, fake = _as_2d("real", real), _as_2d("fake", fake)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"real and fake features differ in dimension: {real.shape[1]} vs {fake.shape[1]}")
    m = min(subset_size, len(real), len(fake))
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples on each side; got {len(real)} real, {len(fake)} fake")
    d = real.shape[1]
    rng = np.random.default_rng(seed)
    vals = np.empty(num_subsets)
    for i in range(num_subsets):
        x = real[rng.choice(len(real), m, replace=False)]
        y = fake[rng.choice(len(fake), m, replace=False)]
        kxx = (x @ x.T / d + coef0) ** degree
        kyy = (y @ y.T / d + coef0) ** degree
        kxy = (x @ y.T / d + coef0) ** degree
        # unbiased: the diagonal (self-similarity) terms are left out of the within-set means
        vals[i] = ((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                   - 2.0 * kxy.mean())
    return float(vals.mean()), float(vals.std())


def inception_score(logits: np.ndarray, splits: int = 10) -> tuple[float, float]:
    """IS (Salimans et al. 2016): exp E_x KL(p(y|x) || p(y)), mean and std over `splits` consecutive chunks."""
    logits = _as_2d("logits", logits)
    if len(logits) < splits:
        raise ValueError(f"Inception Score with {splits} splits needs at least {splits} samples; got {len(logits)}")
    logp = logits - scipy.special.logsumexp(logits, axis=1, keepdims=True)
    scores = []
    for part in np.array_split(logp, splits):
        log_py = scipy.special.logsumexp(part, axis=0) - np.log(len(part))
        kl = (np.exp(part) * (part - log_py)).sum(axis=1).mean()
        scores.append(np.exp(kl))
    return float(np.mean(scores)), float(np.std(scores))


def _kth_nn_radius(x: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """Distance of every row of x to its k-th nearest other row."""
    out = torch.empty(len(x), dtype=x.dtype, device=x.device)
    for i in range(0, len(x), chunk):
        d = torch.cdist(x[i:i + chunk], x)
        out[i:i + chunk] = d.kthvalue(k + 1, dim=1).values  # k + 1: the row itself is at distance 0
    return out


def _coverage(points: torch.Tensor, centers: torch.Tensor, radii: torch.Tensor, chunk: int) -> float:
    """Fraction of `points` inside at least one ball (center, radius)."""
    inside = 0
    for i in range(0, len(points), chunk):
        d = torch.cdist(points[i:i + chunk], centers)
        inside += int((d <= radii[None]).any(dim=1).sum())
    return inside / len(points)


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3, chunk: int = 1024,
                     device: str | torch.device = "cpu") -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) with k-nearest-neighbour manifolds.

    precision: fraction of fake samples inside the real manifold (union of balls around real points with
    radius = distance to the k-th nearest real neighbour); recall: the same with the roles swapped.
    Pairwise distances are computed in float64 chunks of `chunk` rows.
    """
    real, fake = _as_2d("real", real), _as_2d("fake", fake)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"real and fake features differ in dimension: {real.shape[1]} vs {fake.shape[1]}")
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} samples on each side; "
                         f"got {len(real)} real, {len(fake)} fake")
    r = torch.as_tensor(real, dtype=torch.float64, device=device)
    f = torch.as_tensor(fake, dtype=torch.float64, device=device)
    precision = _coverage(f, r, _kth_nn_radius(r, k, chunk), chunk)
    recall = _coverage(r, f, _kth_nn_radius(f, k, chunk), chunk)
    return precision, recall


def class_accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of samples whose predicted class (an int, -1 = unreadable) is the class they were made for.

    pred: predicted classes [N], or logits [N, C] (their argmax is taken).
    """
    pred, labels = np.asarray(pred), np.asarray(labels)
    if pred.ndim == 2:
        pred = pred.argmax(axis=1)
    if pred.shape != labels.shape or labels.ndim != 1:
        raise ValueError(f"class accuracy needs predictions [N] (or logits [N, C]) and labels [N]; "
                         f"got {pred.shape} and {labels.shape}")
    if (labels < 0).any():
        raise ValueError("class accuracy needs a class label for every sample; found the null label -1")
    return float((pred == labels).mean())


def clip_score(image_emb: np.ndarray, text_emb: np.ndarray) -> float:
    """CLIP score (Hessel et al. 2021, torchmetrics' scaling): mean of 100 * max(cos(image_i, text_i), 0)."""
    a, b = _as_2d("image embeddings", image_emb), _as_2d("text embeddings", text_emb)
    if a.shape != b.shape:
        raise ValueError(f"CLIP score pairs each image with one prompt; got {a.shape} and {b.shape} embeddings")
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(np.mean(100.0 * np.maximum(cos, 0.0)))
