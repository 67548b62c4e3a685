"""VQ-Diffusion samplers: truncation, log-space guidance, per-sample seeds, fast/exact strided chains, purity."""

import math

import pytest
import torch
import torch.nn.functional as F

from versadiff.processes.discrete import DiscreteProcess, MaskReplaceSchedule, index_to_log_onehot
from versadiff.samplers.discrete import VQDenoiser, guide, sample_vq, truncate, vq_timesteps


K = 6


def _proc(k=K, preset="released"):
    return DiscreteProcess(MaskReplaceSchedule.preset(preset, k))


class _Net(torch.nn.Module):
    """Tiny real network: token + time + class embeddings -> logits [B, K, L]."""

    def __init__(self, k=K):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.emb = torch.nn.Parameter(torch.randn(k + 1, 8, generator=g))
        self.t_emb = torch.nn.Parameter(torch.randn(100, 8, generator=g) * 0.1)
        self.cls = torch.nn.Parameter(torch.randn(4, 8, generator=g))
        self.out = torch.nn.Parameter(torch.randn(8, k, generator=g))

    def forward(self, x, t, class_labels=None, context=None):
        h = self.emb[x] + self.t_emb[t.long()][:, None]
        if class_labels is not None:
            h = h + self.cls[class_labels + 1][:, None]  # row 0 = null class
        # mix positions so tokens see each other
        h = h + h.mean(dim=1, keepdim=True)
        return (h @ self.out).transpose(1, 2)


def test_truncate_keeps_smallest_set_reaching_r():
    p = torch.tensor([0.5, 0.3, 0.15, 0.05]).reshape(1, 4, 1)
    out = truncate(p.log(), 0.7).exp()[0, :, 0]
    assert torch.allclose(out[:2], torch.tensor([0.5, 0.3])) and (out[2:] < 1e-30).all()
    out = truncate(p.log(), 0.8).exp()[0, :, 0]  # 0.5 + 0.3 = 0.8 is not < 0.8, so 0.15 is still dropped
    assert (out[2:] < 1e-30).all()
    out = truncate(p.log(), 0.81).exp()[0, :, 0]
    assert out[2] == pytest.approx(0.15) and out[3] < 1e-30
    assert torch.equal(truncate(p.log(), 1.0), p.log())
    # the top-1 survives any r; order along the class axis is irrelevant
    perm = torch.tensor([2, 0, 3, 1])
    assert torch.allclose(truncate(p.log()[:, perm], 0.01).exp()[0, :, 0], torch.tensor([0, 0.5, 0, 0]), atol=1e-29)
    with pytest.raises(ValueError, match="truncation"):
        truncate(p.log(), 0.0)


def test_guidance_in_log_space():
    lc = F.log_softmax(torch.tensor([[1.0, 2.0, 0.0]]), dim=1)[..., None]
    lu = F.log_softmax(torch.tensor([[0.0, 0.0, 0.0]]), dim=1)[..., None]
    assert torch.allclose(guide(lc, lu, 1.0), lc, atol=1e-6)
    g = guide(lc, lu, 3.0)
    assert torch.allclose(g.exp().sum(1), torch.ones(1, 1))
    assert torch.allclose(g[0, :, 0], F.log_softmax(torch.tensor([3.0, 6.0, 0.0]), 0), atol=1e-6)


def test_denoiser_guides_against_null_class():
    net, proc = _Net(), _proc()
    x = torch.full((2, 5), K)
    t = torch.tensor([50, 50])
    labels = torch.tensor([1, 2])
    den = VQDenoiser(net, proc, {"class_labels": labels}, guidance_scale=3.0)
    lc = proc.log_x0_from_logits(net(x, t.float(), class_labels=labels))
    lu = proc.log_x0_from_logits(net(x, t.float(), class_labels=torch.tensor([-1, -1])))
    assert torch.allclose(den(x, t), guide(lc, lu, 3.0), atol=1e-5)
    with pytest.raises(ValueError, match="needs a condition"):
        VQDenoiser(net, proc, guidance_scale=2.0)


@pytest.mark.parametrize("method,stride", [("standard", 1), ("fast", 5), ("fast_exact", 5), ("purity", 1)])
def test_oracle_model_recovers_its_tokens(method, stride):
    proc = _proc()
    target = torch.randint(0, K, (3, 20), generator=torch.Generator().manual_seed(0))

    def oracle(x_t, t):
        return index_to_log_onehot(target, K).clamp(min=-70)

    out = sample_vq(oracle, proc, 20, seeds=[0, 1, 2], method=method, stride=stride)
    assert torch.equal(out, target)


@pytest.mark.parametrize("method,stride", [("standard", 1), ("fast_exact", 4), ("purity", 1)])
def test_per_sample_seeds_ignore_batch_composition(method, stride):
    proc, net = _proc(), _Net().eval()
    den = lambda x, t: VQDenoiser(net, proc)(x, t)  # noqa: E731
    batch = sample_vq(den, proc, 12, seeds=[5, 6, 7], method=method, stride=stride)
    alone = sample_vq(den, proc, 12, seeds=[7], method=method, stride=stride)
    assert torch.equal(batch[2], alone[0])
    assert not torch.equal(batch[0], batch[1])
    assert batch.min() >= 0 and batch.max() < K


def test_constant_model_marginals_are_its_distribution():
    # if p(x0 | x_t) = p for every x_t, each position's final token is distributed as p, whatever the method
    proc = _proc(preset="paper")
    p = torch.tensor([0.4, 0.25, 0.15, 0.1, 0.06, 0.04])
    const = lambda x, t: p.log().reshape(1, K, 1).expand(x.shape[0], K, x.shape[1])  # noqa: E731
    for method, stride in [("standard", 1), ("fast_exact", 3)]:
        out = sample_vq(const, proc, 4000, seeds=[0, 1], method=method, stride=stride)
        freq = torch.bincount(out.flatten(), minlength=K).double() / out.numel()
        assert torch.allclose(freq, p.double(), atol=0.02), method


def test_released_fast_sampler_leaves_masks_for_the_last_call_exact_does_not():
    # reference 4.4: at speed 10 the released approximation leaves ~66% masked before t = 0
    proc = _proc()
    const = lambda x, t: torch.full((x.shape[0], K, x.shape[1]), -math.log(K))  # noqa: E731
    fractions = {}
    for method in ("fast", "fast_exact"):
        seen = []
        sample_vq(const, proc, 4096, seeds=[0], method=method, stride=10,
                  callback=lambda d: seen.append((d["t"], (d["x"] == K).double().mean().item())))
        fractions[method] = seen[-2][1]  # after the step at t = 9
        assert [s[0] for s in seen] == vq_timesteps(100, 10)
    assert abs(fractions["fast"] - 0.66) < 0.03
    assert fractions["fast_exact"] < 1e-3


def test_purity_reveals_at_most_max_reveal_per_call():
    proc, net = _proc(), _Net().eval()
    masked = []
    sample_vq(VQDenoiser(net, proc), proc, 16, seeds=[0], method="purity", max_reveal=1,
              callback=lambda d: masked.append(int((d["x"] == K).sum())))
    drops = [a - b for a, b in zip([16] + masked[:-1], masked)]
    assert max(drops[:-1]) <= 1 and masked[-1] == 0


def test_sampler_rejects_bad_arguments():
    proc = _proc()
    const = lambda x, t: torch.zeros(x.shape[0], K, x.shape[1])  # noqa: E731
    with pytest.raises(ValueError, match="method"):
        sample_vq(const, proc, 4, seeds=[0], method="ancestral")
    with pytest.raises(ValueError, match="stride"):
        sample_vq(const, proc, 4, seeds=[0], stride=2)
    with pytest.raises(ValueError, match="seed"):
        sample_vq(const, proc, 4, seeds=[])
    with pytest.raises(ValueError, match="expected log p"):
        sample_vq(lambda x, t: torch.zeros(1, K + 1, 4), proc, 4, seeds=[0])
