"""Mask-and-replace process: schedule tables, transitions, log-space posterior vs dense Bayes and diffusers, loss."""

import pytest
from extras import require_extra
import torch
import torch.nn.functional as F

from versadiff.processes.discrete import (
    DiscreteProcess,
    MaskReplaceSchedule,
    index_to_log_onehot,
    multinomial_kl,
)


K = 4


def _proc(preset="released", k=K, **kw):
    return DiscreteProcess(MaskReplaceSchedule.preset(preset, k), **kw)


def test_released_schedule_matches_the_released_formula():
    """Oracle: diffusers' alpha_schedules / gamma_schedules (scheduling_vq_diffusion.py), a port of the released
    VQ-Diffusion code's alpha_schedule (att 0.99999 -> 9e-6, ctt 9e-6 -> 0.99999, bt = (1 - at - ct) / K)."""
    vq = require_extra("diffusers").schedulers.scheduling_vq_diffusion
    k = 4096
    s = MaskReplaceSchedule.preset("released", k)
    a, b, c = s.one_step()
    abar, bbar, cbar = s.cumulative()
    at, att = (torch.from_numpy(v) for v in vq.alpha_schedules(100))
    ct, ctt = (torch.from_numpy(v) for v in vq.gamma_schedules(100))
    assert torch.allclose(a, at, rtol=1e-8) and torch.allclose(c, ct, rtol=1e-8)
    assert torch.allclose(b, (1 - at - ct) / k, rtol=1e-6)
    assert torch.allclose(abar, att, rtol=1e-8) and torch.allclose(cbar, ctt, rtol=1e-8, atol=1e-15)
    assert torch.allclose(bbar, (1 - att - ctt) / k, rtol=1e-6, atol=1e-15)
    assert (abar[100], bbar[100], cbar[100]) == (1.0, 0.0, 0.0)  # index -1 = identity
    paper = MaskReplaceSchedule.preset("paper", 10)
    pa, pb, pc = paper.cumulative()
    assert pc[99] == pytest.approx(0.9) and 10 * pb[99] == pytest.approx(1 - 0.9 - 9e-6)


@pytest.mark.parametrize("preset", ["released", "paper"])
def test_transition_columns_sum_to_one_and_compose(preset):
    s = MaskReplaceSchedule.preset(preset, K, num_steps=20)
    prod = torch.eye(K + 1, dtype=torch.float64)
    abar, bbar, cbar = s.cumulative()
    for t in range(20):
        q = s.dense_step_matrix(t)
        assert torch.allclose(q.sum(0), torch.ones(K + 1, dtype=torch.float64), atol=1e-12)
        assert (q >= 0).all()
        prod = q @ prod
        closed = torch.full((K + 1, K + 1), float(bbar[t]), dtype=torch.float64)
        closed[:K, :K] += torch.eye(K, dtype=torch.float64) * abar[t]
        closed[K, :K], closed[:K, K], closed[K, K] = cbar[t], 0.0, 1.0
        assert torch.allclose(prod, closed, atol=1e-12)
    # a multi-step jump equals the product of its one-step matrices
    jump = s.dense_step_matrix(15, 9)
    assert torch.allclose(jump.sum(0), torch.ones(K + 1, dtype=torch.float64), atol=1e-12)
    chain = torch.eye(K + 1, dtype=torch.float64)
    for t in range(10, 16):
        chain = s.dense_step_matrix(t) @ chain
    assert torch.allclose(jump, chain, atol=1e-12)


def _dense_posterior(s, p_x0, x_t, t, sidx):
    """sum_x0 p(x0) q(x_t | x_s) q(x_s | x0) / q(x_t | x0), dense (K+1)^2 matrices, float64."""
    qbar_s = torch.eye(K + 1, dtype=torch.float64)
    if sidx >= 0:
        qbar_s = s.dense_step_matrix(sidx, -1)
    qbar_t = s.dense_step_matrix(t, -1)
    jump = s.dense_step_matrix(t, sidx)
    out = torch.zeros(K + 1, x_t.shape[0], dtype=torch.float64)
    for pos, xt in enumerate(x_t.tolist()):
        for x0 in range(K):
            out[:, pos] += p_x0[x0, pos] * jump[xt, :] * qbar_s[:, x0] / qbar_t[xt, x0]
    return out


@pytest.mark.parametrize("preset", ["released", "paper"])
@pytest.mark.parametrize("t,s", [(0, None), (1, None), (50, None), (99, None), (60, 40), (99, -1)])
def test_log_posterior_equals_dense_bayes(preset, t, s):
    torch.manual_seed(0)
    proc = _proc(preset)
    x_t = torch.tensor([[0, 1, 2, 3, K, K, 2, K]])
    log_p = F.log_softmax(torch.randn(1, K, 8, dtype=torch.float64) * 2, dim=1)
    out = proc.q_posterior(log_p, x_t, torch.tensor([t]), None if s is None else torch.tensor([s]), clamp=False)
    dense = _dense_posterior(proc.schedule, log_p[0].exp(), x_t[0], t, t - 1 if s is None else s)
    assert torch.allclose(out[0].exp(), dense, atol=1e-9)
    assert torch.allclose(out[0].exp().sum(0), torch.ones(8, dtype=torch.float64), atol=1e-9)


def test_posterior_on_a_fixed_input_equals_diffusers():
    """A fixed hand-made input (every code, a masked position) against diffusers' VQDiffusionScheduler.q_posterior
    (a port of the released code) -- the oracle, not stored numbers."""
    VQDiffusionScheduler = require_extra("diffusers").VQDiffusionScheduler
    logits = torch.tensor([[0, 1, 2, 3, 4, 5], [1, 0, 2, 1, 0, 1], [2, 2, 0, 0, 1, 3], [0.5, 0, 1, 2, 3, 0]])
    log_p = F.log_softmax(logits[None].float(), dim=1)
    x_t = torch.tensor([[0, 1, 2, 3, 4, 4]])
    sched = VQDiffusionScheduler(num_vec_classes=K + 1, num_train_timesteps=100)
    for t in (1, 50):
        ref = sched.q_posterior(log_p, x_t, torch.tensor(t)).clamp(-70, 0)
        ours = _proc().q_posterior(log_p, x_t, torch.tensor([t]))
        assert torch.allclose(ours.exp(), ref.exp(), atol=2e-6)


@pytest.mark.parametrize("num_classes", [5, 257])
@pytest.mark.parametrize("t", [1, 2, 50, 99])
def test_posterior_matches_diffusers_scheduler(num_classes, t):
    VQDiffusionScheduler = require_extra("diffusers").VQDiffusionScheduler

    g = torch.Generator().manual_seed(t)
    k = num_classes - 1
    sched = VQDiffusionScheduler(num_vec_classes=num_classes, num_train_timesteps=100)
    x_t = torch.randint(0, num_classes, (3, 16), generator=g)
    x_t[:, ::2] = k  # half masked
    log_p = F.log_softmax(torch.rand(3, k, 16, generator=g, dtype=torch.float64) * 4, dim=1).float()
    ref = sched.q_posterior(log_p, x_t, torch.tensor(t)).clamp(-70, 0)
    ours = _proc(k=k).q_posterior(log_p, x_t, torch.tensor([t]).expand(3))
    assert torch.allclose(ours, ref, atol=1e-5)


def test_q_sample_marginals_follow_schedule():
    proc = _proc("paper", k=8)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, 8, (4, 4096), generator=g)
    for t in (10, 80):
        xt = proc.q_sample(x0, torch.tensor([t]), torch.rand(4, 9, 4096, generator=g))
        _, bbar, cbar = proc.schedule.cumulative()
        masked = (xt == 8).double().mean()
        assert abs(masked - cbar[t]) < 0.02
        changed = ((xt != x0) & (xt != 8)).double().mean()
        assert abs(changed - 7 * bbar[t]) < 0.02


class _TinyNet(torch.nn.Module):
    def __init__(self, k=K, length=8):
        super().__init__()
        self.emb = torch.nn.Embedding(k + 1, 16)
        self.t_emb = torch.nn.Embedding(100, 16)
        self.cls = torch.nn.Embedding(3, 16)
        self.out = torch.nn.Linear(16, k)

    def forward(self, x, t, class_labels=None, context=None):
        h = self.emb(x) + self.t_emb(t.long())[:, None]
        if class_labels is not None:
            h = h + self.cls(class_labels + 1)[:, None]
        return self.out(h).transpose(1, 2)


def test_training_loss_per_sample_and_gradients():
    torch.manual_seed(0)
    net = _TinyNet()
    proc = _proc(aux_weight=1e-3)
    x0 = torch.randint(0, K, (6, 8))
    loss = proc.training_losses(net, x0, generator=torch.Generator().manual_seed(1))
    assert loss.shape == (6,) and torch.isfinite(loss).all() and (loss >= 0).all()
    loss.mean().backward()
    assert net.out.weight.grad.abs().sum() > 0
    # same generator -> same loss; t=0 term is the decoder NLL plus its aux copy weighted 2*lambda
    proc2 = _proc(aux_weight=1e-3)
    again = proc2.training_losses(net, x0, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(loss, again)
    l0 = proc2.training_losses(net, x0, t=torch.zeros(6, dtype=torch.long), generator=torch.Generator().manual_seed(2))
    x_t_is_x0_mostly = l0 * 8 / 100 / (1 + 2 * 1e-3)
    assert (x_t_is_x0_mostly > 0).all()


def test_perfect_model_has_near_zero_kl():
    # a model that returns the true x0 makes the posterior KL vanish (the bound's terms are KLs)
    proc = _proc(aux_weight=0.0)
    x0 = torch.randint(0, K, (4, 8), generator=torch.Generator().manual_seed(0))

    def oracle(x_t, t, **_):
        return index_to_log_onehot(x0, K) * 1.0

    loss = proc.training_losses(oracle, x0, t=torch.tensor([5, 30, 60, 90]), generator=torch.Generator().manual_seed(0))
    assert loss.abs().max() < 1e-4


def test_importance_sampling_kicks_in_and_state_roundtrips():
    proc = _proc(k=K)
    proc.lt_count[:] = 11
    proc.lt_history[:] = 1e-6
    proc.lt_history[70] = 100.0
    t, pt = proc.sample_t(2000, generator=torch.Generator().manual_seed(0))
    assert (t == 70).double().mean() > 0.5
    assert torch.allclose(pt[t == 70], pt[t == 70][0].expand((t == 70).sum()))
    fresh = _proc(k=K)
    t_u, pt_u = fresh.sample_t(10, generator=torch.Generator().manual_seed(0))
    assert torch.all(pt_u == 0.01)
    fresh.load_state_dict(proc.state_dict())
    assert torch.equal(fresh.lt_history, proc.lt_history)
    proc.update_importance(torch.tensor([3, 3]), torch.tensor([2.0, 2.0]))
    assert proc.lt_history[3] == pytest.approx(0.1 * 4 + 0.9 * (0.1 * 4 + 0.9 * 1e-6))


def test_condition_dropout_uses_null_class():
    seen = []

    def net(x_t, t, class_labels=None):
        seen.append(class_labels.clone())
        return torch.zeros(x_t.shape[0], K, x_t.shape[1])

    proc = _proc(p_uncond=0.5)
    proc.training_losses(net, torch.zeros(64, 8, dtype=torch.long), {"class_labels": torch.ones(64, dtype=torch.long)},
                         generator=torch.Generator().manual_seed(0))
    frac = (seen[0] == -1).double().mean()
    assert 0.3 < frac < 0.7 and set(seen[0].tolist()) == {-1, 1}


def test_bad_inputs_raise_clear_errors():
    proc = _proc()
    with pytest.raises(ValueError, match="must lie in"):
        proc.q_posterior(torch.zeros(1, K, 2), torch.tensor([[0, 9]]), torch.tensor([3]))
    with pytest.raises(ValueError, match="shape"):
        proc.q_posterior(torch.zeros(1, K + 1, 2), torch.tensor([[0, 1]]), torch.tensor([3]))
    with pytest.raises(ValueError, match="timestep"):
        proc.q_posterior(torch.zeros(1, K, 2), torch.tensor([[0, 1]]), torch.tensor([100]))
    with pytest.raises(ValueError, match="MASK"):
        proc.training_losses(_TinyNet(), torch.full((1, 8), K))
    with pytest.raises(ValueError, match="preset"):
        MaskReplaceSchedule.preset("cosine", 4)
    with pytest.raises(ValueError, match="abar"):
        MaskReplaceSchedule(4, 100, 0.5, 0.1, 0.6, 0.9)
    assert multinomial_kl(torch.zeros(1, 1, 3), torch.zeros(1, 1, 3)).abs().sum() == 0
