"""VD's applications, the parts that need no model: the PCA disentanglement recipe (v0 levels, v1 focus), the
I2T2I edits (word substitutions, text-latent arithmetic), the model-level step schedule and the sweep figures."""

from __future__ import annotations

import math

import pytest
import torch

from versadiff.applications import (
    StepSwitchDenoiser,
    deficit_schedule,
    disentangle_tokens,
    edit_latent,
    focus_transform,
    parse_edits,
    substitute_words,
    sweep_figure,
)
from versadiff.applications.disentangle import _v1_ramps


def tokens(batch=2, n=48, d=32, spectrum=(12.0, 7.0, 4.0, 3.0, 2.5, 2.0, 1.6, 1.3, 1.1, 1.0, 0.9, 0.8), seed=0):
    """A CLIP-like context [B, 1 + n, d] whose local tokens have a clear, known spectrum."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(batch):
        u, _ = torch.linalg.qr(torch.randn(n, n, generator=g))
        v, _ = torch.linalg.qr(torch.randn(d, d, generator=g))
        s = torch.zeros(min(n, d))
        s[: len(spectrum)] = torch.tensor(spectrum)
        s[len(spectrum):] = 0.05
        local = u[:, : len(s)] @ torch.diag(s) @ v[:, : len(s)].T + 0.3 * torch.randn(n, 1, generator=g)
        out.append(torch.cat([torch.randn(1, d, generator=g), local]))
    return torch.stack(out)


def demeaned_svd(local):
    x = local - local.mean(-1, keepdim=True)
    return torch.linalg.svd(x, full_matrices=False)


def test_level_zero_and_focus_half_change_nothing():
    c = tokens()
    assert disentangle_tokens(c, 0) is c and disentangle_tokens(c, focus=0.5) is c
    assert focus_transform(0) is None and focus_transform(focus=0.5) is None


@pytest.mark.parametrize("level", [-2, -1, 1, 2])
def test_levels_keep_the_cls_token_and_the_shape(level):
    c = tokens()
    out = disentangle_tokens(c, level)
    assert out.shape == c.shape and torch.equal(out[:, 0], c[:, 0])
    assert not torch.allclose(out[:, 1:], c[:, 1:])


def test_style_levels_keep_only_the_top_components():
    c = tokens()
    local = c[:, 1:]
    mean = local.mean(-1, keepdim=True)
    for level, k in ((1, 10), (2, 2)):
        rec = disentangle_tokens(c, level)[:, 1:] - mean
        s = torch.linalg.svdvals(rec)
        assert (s[:, k:] < 1e-3).all() and (s[:, k - 1] > 0.5).all()
        # the kept part is the best rank-k approximation of the demeaned tokens
        U, S, Vh = demeaned_svd(local)
        best = U[:, :, :k] @ torch.diag_embed(S[:, :k]) @ Vh[:, :k]
        torch.testing.assert_close(rec, best, atol=2e-3, rtol=0)


def test_semantic_levels_remove_the_top_components():
    c = tokens()
    local = c[:, 1:]
    mean = local.mean(-1, keepdim=True)
    U, S, Vh = demeaned_svd(local)
    for level, k in ((-1, 1), (-2, 2)):
        rec = disentangle_tokens(c, level)[:, 1:] - mean
        along = rec @ Vh[:, :k].transpose(1, 2)  # what is left along the removed directions
        assert along.abs().max() < 1e-3
        keep = U[:, :, k:] @ torch.diag_embed(S[:, k:]) @ Vh[:, k:]  # the rest is untouched (within q = 50)
        torch.testing.assert_close(rec, keep, atol=2e-3, rtol=0)


def test_only_the_first_50_components_are_computed(monkeypatch):
    seen = []
    real = torch.pca_lowrank

    def spy(x, q=None, center=True, niter=2):
        seen.append((tuple(x.shape), q, center, niter))
        return real(x, q=q, center=center, niter=niter)

    monkeypatch.setattr(torch, "pca_lowrank", spy)
    c = torch.randn(1, 1 + 256, 96)  # VD: 256 local tokens (here 96 features, so q = 50 < min(256, 96))
    for level in (-2, -1, 1, 2):
        disentangle_tokens(c, level)
    disentangle_tokens(torch.randn(1, 1 + 8, 16), 1)  # a small token matrix caps q at its rank
    disentangle_tokens(c, focus=0.2)
    assert seen[:4] == [((1, 256, 96), 50, False, 10)] * 4
    assert seen[4] == ((1, 8, 16), 8, False, 10)
    assert seen[5] == ((1, 256, 96), 20, False, 100)  # v1's continuous control: q = 20, niter 100


def test_pca_does_not_touch_the_global_rng_and_is_deterministic():
    c = tokens()
    state = torch.get_rng_state()
    a = disentangle_tokens(c, -1)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(123)
    assert torch.equal(a, disentangle_tokens(c, -1))


def test_v1_focus_ramps():
    """adjust_rank(max_drop_rank=[1, 5], q=20): factors of VD v1's code, checked at hand-computed points."""
    f, keep = _v1_ramps(0.0, 20, (1, 5))
    assert f == {0: 0.0, 1: 0.0} and keep
    e = lambda t: math.exp((t - 0.5) * 2)  # noqa: E731
    y0 = (e(0.25) - e(0)) / (1 - e(0)) * 2 - 1  # -0.245
    f, _ = _v1_ramps(0.25, 20, (1, 5))
    assert f[0] == 0.0 and f[1] == pytest.approx(0.5 * (1 - y0) + y0)
    f, keep = _v1_ramps(1.0, 20, (1, 5))
    assert set(f) == set(range(5, 20)) and all(v == 0.0 for v in f.values()) and not keep
    f, _ = _v1_ramps(0.75, 20, (1, 5))
    assert all(0.0 <= v <= 1.0 for v in f.values()) and f[5] >= f[19]


def test_continuous_focus():
    c = tokens(n=64, d=64)
    local = c[:, 1:]
    U, S, Vh = demeaned_svd(local)
    std = local.std(dim=(-2, -1))
    sem = disentangle_tokens(c, focus=0.0)[:, 1:]
    torch.testing.assert_close(sem.std(dim=(-2, -1)), std, rtol=1e-4, atol=0)  # rescaled to the input's std
    assert ((sem - sem.mean(-1, keepdim=True)) @ Vh[:, :2].transpose(1, 2)).abs().max() < 1e-2  # top 2 gone
    sty = disentangle_tokens(c, focus=1.0)[:, 1:]
    s = torch.linalg.svdvals(sty)
    assert (s[:, 6:] < 1e-3).all() and (s[:, 5] > 0.1).all()  # the top 5 components + the token means: residual gone
    with pytest.raises(ValueError, match="level or a focus, not both"):
        disentangle_tokens(c, 1, focus=0.2)


@pytest.mark.parametrize("bad", [3, -3, 0.5, "1", True])
def test_bad_levels(bad):
    with pytest.raises(ValueError, match="integer in -2..2"):
        disentangle_tokens(tokens(), bad)


def test_bad_focus():
    with pytest.raises(ValueError, match=r"focus must lie in \[0, 1\]"):
        disentangle_tokens(tokens(), focus=1.5)


# ------------------------------------------------------------------------------------------------ I2T2I edits


def test_word_substitutions():
    assert substitute_words("a red circle on the left", {"red": "blue"}) == "a blue circle on the left"
    assert substitute_words("a Red circle", {"red": "blue"}) == "a blue circle"
    assert substitute_words("a reddish red", {"red": "blue"}) == "a reddish blue"  # whole words only
    swap = {"red": "blue", "blue": "red"}  # all at once
    assert substitute_words("a red circle to the left of a blue square", swap) == \
        "a blue circle to the left of a red square"
    assert substitute_words("in the top left", {"top left": "bottom right"}) == "in the bottom right"
    assert substitute_words("a small red circle", {"small": ""}) == "a red circle"
    assert substitute_words("unchanged", {}) == "unchanged"


def test_parse_edits():
    assert parse_edits(["red=blue", " circle = square "]) == {"red": "blue", "circle": "square"}
    assert parse_edits({"red": "blue"}) == {"red": "blue"} and parse_edits(None) == {}
    for bad, msg in ((["red"], "OLD=NEW"), (["a=b=c"], "OLD=NEW"), (["=blue"], "word to replace"),
                     (["red=blue", "Red=green"], "edited twice")):
        with pytest.raises(ValueError, match=msg):
            parse_edits(bad)


def test_latent_arithmetic_is_vd_v0s():
    g = torch.Generator().manual_seed(0)
    z, n, p = torch.randn(3, 8, generator=g), torch.randn(1, 8, generator=g), torch.randn(1, 8, generator=g)
    out = edit_latent(z, p, n)
    n_hat = n[0] / n[0].norm()
    expect = z - (z @ n_hat)[:, None] * n_hat + p
    torch.testing.assert_close(out, expect)
    assert (edit_latent(z, None, n) @ n_hat).abs().max() < 1e-5  # the negative direction is gone
    torch.testing.assert_close(edit_latent(z, p, None), z + p)
    assert edit_latent(z) is z
    rows = torch.randn(3, 8, generator=g)  # one negative / positive per row
    torch.testing.assert_close(edit_latent(z, rows, rows)[1:2], edit_latent(z[1:2], rows[1], rows[1]))


# ------------------------------------------------------------------------------------------ model-level baseline


@pytest.mark.parametrize("r, pattern", [(0.5, [0, 1, 0, 1, 0, 1, 0, 1]), (1.0, [0] * 8), (0.0, [1] * 8),
                                        (0.25, [1, 0, 1, 1, 1, 0, 1, 1]), (0.75, [0, 0, 1, 0, 0, 0, 1, 0])])
def test_model_level_schedule(r, pattern):
    """Stream 0 is the text (weight r), stream 1 the image (1 - r): r = 0.5 alternates, other r in proportion."""
    sched = deficit_schedule([r, 1 - r], 8)
    assert sched == pattern
    for k in range(1, 9):  # every prefix as close to the weights as whole steps allow
        assert abs(sched[:k].count(0) - r * k) < 1


def test_model_level_schedule_errors():
    with pytest.raises(ValueError, match="not all zero"):
        deficit_schedule([0, 0], 4)


def test_step_switch_denoiser_picks_by_grid_point():
    grid = torch.tensor([0.9, 0.6, 0.3, 0.1], dtype=torch.float64)
    calls = []
    dens = [lambda x, t, i=i: calls.append(i) or (x, x) for i in range(2)]
    den = StepSwitchDenoiser(dens, [0, 1, 0, 1], grid)
    x = torch.zeros(2, 3)
    for t in (0.9, 0.6, 0.6, 0.3, 0.31, 0.1):  # a second evaluation near a grid point uses that step's flow
        den(x, torch.full((2,), t, dtype=torch.float64))
    assert calls == [0, 1, 1, 0, 0, 1] and den.calls == [3, 3]


def test_sweep_figure_layout():
    img = torch.rand(3, 32, 32) * 2 - 1
    fig = sweep_figure([([img, "a red circle"], [img] * 5), ([img, "a blue square"], [img] * 3)],
                       ["r=0", "r=0.25", "r=0.5", "r=0.75", "r=1"], input_titles=["image", "text"], size=48,
                       title="dual-guided")
    assert fig.size == (4 + 2 * 52 + 12 + 5 * 52, 32 + 2 * 52 + 4)
    with pytest.raises(ValueError, match="at least one row"):
        sweep_figure([], [])
