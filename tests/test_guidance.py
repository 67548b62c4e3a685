"""Classifier-free guidance: conventions, one batched forward, several contexts, guidance rescale."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from versadiff.denoiser import Denoiser
from versadiff.guidance import GuidedDenoiser, guided
from versadiff.processes.schedules import DiscreteSchedule, linear_betas
from versadiff.samplers import sample

SCHED = DiscreteSchedule.from_betas(linear_betas(1000))
B = 3


class CondNet(nn.Module):
    """A tiny class-conditional net that counts its forward calls and records batch sizes."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.emb = nn.Parameter(torch.randn(11, 2, generator=g))  # row 0 = null class (label -1)
        self.calls: list[int] = []

    def forward(self, x, t, class_labels):
        self.calls.append(x.shape[0])
        e = self.emb[class_labels + 1].reshape(-1, 2, 1, 1)
        return torch.tanh(x * (1 + e[:, :1]) + e[:, 1:]) * (0.5 + t.reshape(-1, 1, 1, 1) / 2000)


def setup(pred="eps", clip=None):
    net = CondNet()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, 2, 4, 4, generator=g)
    t = torch.full((B,), 0.6, dtype=torch.float64)
    return net, Denoiser(net, SCHED, pred, clip_x0=clip), x, t


COND = {"class_labels": torch.tensor([3, 0, 7])}
COND2 = {"class_labels": torch.tensor([1, 1, 9])}
NULL = {"class_labels": torch.tensor([-1, -1, -1])}


@pytest.mark.parametrize("pred", ["eps", "x0", "v"])
def test_matches_separate_evaluations_in_one_forward(pred):
    net, den, x, t = setup(pred)
    x0, eps = guided(den, COND, 4.0)(x, t)
    assert net.calls == [2 * B]  # one batched forward over [uncond; cond]
    x0_u, eps_u = den(x, t, NULL)
    x0_c, eps_c = den(x, t, COND)
    # guidance is affine in the raw output, so mixing raw outputs equals mixing eps (and x0) directly
    assert torch.allclose(eps, eps_u + 4.0 * (eps_c - eps_u), atol=1e-5)
    assert torch.allclose(x0, x0_u + 4.0 * (x0_c - x0_u), atol=1e-5)


def test_scale_equals_cfg_w_plus_one():
    _, den, x, t = setup("v")
    a = guided(den, COND, 3.5)(x, t)
    b = guided(den, COND, 2.5, convention="cfg_w")(x, t)
    assert torch.allclose(a[0], b[0], atol=1e-6) and torch.allclose(a[1], b[1], atol=1e-6)
    assert not torch.allclose(a[1], guided(den, COND, 3.5, convention="cfg_w")(x, t)[1], atol=1e-3)


def test_unit_scale_skips_the_unconditional_branch():
    net, den, x, t = setup()
    out = guided(den, COND, 0.0, convention="cfg_w")(x, t)
    assert net.calls == [B]
    ref = den(x, t, COND)
    assert torch.equal(out[0], ref[0]) and torch.equal(out[1], ref[1])


def test_multi_context_weights():
    net, den, x, t = setup()
    x0, eps = GuidedDenoiser(den, [(COND, 2.0), (COND2, 1.5)])(x, t)
    assert net.calls == [3 * B]
    eu, e1, e2 = den(x, t, NULL)[1], den(x, t, COND)[1], den(x, t, COND2)[1]
    assert torch.allclose(eps, eu + 2.0 * (e1 - eu) + 1.5 * (e2 - eu), atol=1e-5)
    # cfg_w: each context enters with 1 + w_i
    eps_w = GuidedDenoiser(den, [(COND, 1.0), (COND2, 0.5)], convention="cfg_w")(x, t)[1]
    assert torch.allclose(eps_w, eps, atol=1e-6)


def test_explicit_uncond_is_used():
    _, den, x, t = setup()
    neg = {"class_labels": torch.tensor([5, 5, 5])}
    eps = guided(den, COND, 3.0, uncond=neg)(x, t)[1]
    en, ec = den(x, t, neg)[1], den(x, t, COND)[1]
    assert torch.allclose(eps, en + 3.0 * (ec - en), atol=1e-5)


def test_rescale():
    _, den, x, t = setup()
    plain = guided(den, COND, 7.5)(x, t)[1]
    assert torch.equal(guided(den, COND, 7.5, rescale=0.0)(x, t)[1], plain)
    full = guided(den, COND, 7.5, rescale=1.0)(x, t)[1]
    eps_c = den(x, t, COND)[1]
    assert torch.allclose(full.std(dim=(1, 2, 3)), eps_c.std(dim=(1, 2, 3)), rtol=1e-4)
    assert not torch.allclose(full, plain, atol=1e-3)
    half = guided(den, COND, 7.5, rescale=0.5)(x, t)[1]
    assert torch.allclose(half, 0.5 * (full + plain), atol=1e-5)


def test_clip_applied_once_and_eps_consistent():
    _, den, x, t = setup("x0", clip=0.2)
    x0, eps = guided(den, COND, 5.0)(x, t)
    a, s = SCHED.alpha_sigma(t)
    assert float(x0.detach().abs().max()) <= 0.2 + 1e-7
    assert torch.allclose(eps, (x - a[0].float() * x0) / s[0].float(), atol=1e-5)


def test_guided_sampling_runs_and_w0_is_conditional():
    _, den, _, _ = setup("v")
    kw = dict(sampler="ddim", steps=5, seeds=[0, 1, 2], spacing="trailing")
    out = sample(guided(den, COND, 0.0, convention="cfg_w"), (2, 4, 4), SCHED, **kw)
    ref = sample(den.with_cond(**COND), (2, 4, 4), SCHED, **kw)
    assert torch.allclose(out, ref, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs,match",
    [({"convention": "w"}, "convention"), ({"rescale": 2.0}, "rescale"), ({"conds": []}, "at least one")],
)
def test_bad_arguments_raise(kwargs, match):
    _, den, _, _ = setup()
    args = {"conds": [(COND, 2.0)], **kwargs}
    with pytest.raises(ValueError, match=match):
        GuidedDenoiser(den, **args)


def test_batch_mismatch_raises():
    _, den, x, t = setup()
    with pytest.raises(ValueError, match="batch size"):
        guided(den, {"class_labels": torch.tensor([1, 2])}, 2.0)(x, t)
