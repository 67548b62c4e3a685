"""Metric math against closed forms and synthetic data with known answers."""

import numpy as np
import pytest

from versadiff.eval.metrics import (
    class_accuracy,
    frechet_distance,
    inception_score,
    kernel_inception_distance,
    precision_recall,
)
from versadiff.eval.stats import StatsAccumulator, load_stats, save_stats, stats_from_features


def _spd(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T + 0.1 * np.eye(d)


def _psd_sqrt(s):
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def test_frechet_distance_matches_gaussian_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    s1, s2 = _spd(rng, 5), _spd(rng, 5)
    # W2^2 between Gaussians: |mu1-mu2|^2 + Tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2), via symmetric eigh roots
    r1 = _psd_sqrt(s1)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * _psd_sqrt(r1 @ s2 @ r1))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-8)
    # diagonal covariances: sum of (sqrt(a) - sqrt(b))^2
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
    assert frechet_distance(np.zeros(3), np.diag(a), np.ones(3), np.diag(b)) == pytest.approx(3 + 1 + 1 + 0)


def test_frechet_distance_of_sample_stats_converges_and_rejects_mismatch():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(20000, 3))
    y = rng.normal(size=(20000, 3)) * 2.0 + 1.0
    sx, sy = stats_from_features(x, "t"), stats_from_features(y, "t")
    # N(0, I) vs N(1, 4I) in 3-d: 3 * 1 + 3 * (1 - 2)^2 = 6
    assert frechet_distance(sx.mu, sx.sigma, sy.mu, sy.sigma) == pytest.approx(6.0, rel=0.03)
    # fewer samples than dimensions: singular covariances are regularised, identical stats still give 0
    few = stats_from_features(x[:3], "t")  # rank 2 in 3-d
    assert frechet_distance(few.mu, few.sigma, few.mu, few.sigma) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="same feature extractor"):
        frechet_distance(sx.mu, sx.sigma, np.zeros(4), np.eye(4))


def test_accumulator_matches_full_array_and_npz_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(300, 4)) + 3.0
    acc = StatsAccumulator("feat")
    for chunk in np.array_split(x, 7):
        acc.update(chunk)
    a, b = acc.finalize(), stats_from_features(x, "feat", keep_features=True)
    np.testing.assert_allclose(a.mu, b.mu, rtol=1e-12)
    np.testing.assert_allclose(a.sigma, b.sigma, rtol=1e-9)
    path = save_stats(b, tmp_path / "ref.npz")
    c = load_stats(path, "feat")
    assert c.n == 300 and c.feature == "feat" and c.features.shape == (300, 4)
    np.testing.assert_array_equal(c.sigma, b.sigma)
    with pytest.raises(ValueError, match="holds feat statistics but other"):
        load_stats(path, "other")
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load_stats(tmp_path / "missing.npz")


def _mmd2_unbiased(x, y):
    k = lambda a, b: (a @ b / x.shape[1] + 1.0) ** 3  # noqa: E731
    m = len(x)
    kxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kyy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kxy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return kxx + kyy - 2 * kxy


def test_kid_equals_unbiased_mmd_and_separates_distributions():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(12, 3)), rng.normal(size=(12, 3)) + 0.5
    # one subset holding all samples is a permutation, under which MMD^2 is invariant
    mean, std = kernel_inception_distance(x, y, num_subsets=1, subset_size=12)
    assert mean == pytest.approx(_mmd2_unbiased(x, y), rel=1e-10) and std == 0.0
    same = kernel_inception_distance(rng.normal(size=(400, 8)), rng.normal(size=(400, 8)), 20, 100)[0]
    far = kernel_inception_distance(rng.normal(size=(400, 8)), rng.normal(size=(400, 8)) + 1, 20, 100)[0]
    assert abs(same) < 0.05 < far
    # subsets come from a seeded RNG: same call, same number
    assert kernel_inception_distance(x, y, 5, 6, seed=4) == kernel_inception_distance(x, y, 5, 6, seed=4)


def test_inception_score_known_values():
    k = 10
    labels = np.arange(1000) % k
    confident = 50.0 * np.eye(k)[labels]  # every sample certain, classes balanced in each split: IS = K
    mean, std = inception_score(confident, splits=10)
    assert mean == pytest.approx(k, rel=1e-6) and std < 1e-6
    assert inception_score(np.zeros((100, k)), splits=10)[0] == pytest.approx(1.0)  # uniform p(y|x): IS = 1
    with pytest.raises(ValueError, match="at least 10 samples"):
        inception_score(np.zeros((5, k)))


def test_precision_recall_on_point_clouds_with_known_answers(one_thread):
    rng = np.random.default_rng(5)
    a = rng.normal(size=(200, 4))
    b = rng.normal(size=(200, 4)) + 100.0  # a second, far-away cluster
    real = np.concatenate([a, b])
    assert precision_recall(real, real.copy()) == (1.0, 1.0)
    assert precision_recall(real, real + 1000.0) == (0.0, 0.0)
    # mode collapse: fake covers only cluster a -> all fakes are realistic, half the real data is missed
    p, r = precision_recall(real, a + 1e-9)
    assert p == 1.0 and r == 0.5
    # chunking does not change the answer
    fake = rng.normal(size=(150, 4)) * 1.5
    assert precision_recall(real, fake, chunk=37) == precision_recall(real, fake, chunk=1024)
    with pytest.raises(ValueError, match="more than 3 samples"):
        precision_recall(real[:3], fake)


def test_class_accuracy():
    logits = np.eye(3)[[0, 1, 2, 2]]
    assert class_accuracy(logits, np.array([0, 1, 2, 0])) == 0.75
    assert class_accuracy(np.array([-1, 1]), np.array([0, 1])) == 0.5  # -1 = unreadable never counts
    with pytest.raises(ValueError, match="null label"):
        class_accuracy(logits, np.array([0, 1, 2, -1]))
