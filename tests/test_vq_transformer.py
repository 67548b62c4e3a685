"""VQ transformer: shapes, presets' sizes, null conditions, training and sampling through the discrete process."""

import pytest
import torch

from versadiff.nets.vq_transformer import VQ_PRESETS, VQTransformerConfig, vq_transformer
from versadiff.processes.discrete import DiscreteProcess, MaskReplaceSchedule
from versadiff.samplers.discrete import VQDenoiser, sample_vq


def _count(name):
    with torch.device("meta"):
        net = vq_transformer(name)
    return sum(p.numel() for p in net.parameters())


def test_preset_sizes():
    assert 34e6 < _count("vq_diffusion_s") < 37e6  # paper: ~34M
    assert abs(_count("vq_diffusion_b") - 388.8e6) < 0.1e6  # 19 x 1024, reference 2.4 [run]
    assert _count("vq_diffusion_f") == _count("vq_diffusion_b")
    assert VQ_PRESETS["vq_diffusion_imagenet"]().num_classes == 1000


@pytest.mark.parametrize("mlp_type", ["fc", "conv"])
def test_context_model_shapes_and_learned_null(mlp_type):
    torch.manual_seed(0)
    net = vq_transformer("vq_tiny", context_dim=8, context_len=3, mlp_type=mlp_type).eval()
    x = torch.randint(0, 17, (2, 16))
    t = torch.tensor([3.0, 50.0])
    ctx = torch.randn(2, 3, 8)
    out = net(x, t, context=ctx)
    assert out.shape == (2, 16, 16)
    # zero context = null: replaced by the learned null context, per sample
    mixed = torch.stack([ctx[0], torch.zeros(3, 8)])
    both = net(x, t, context=mixed)
    assert torch.allclose(both[0], out[0], atol=1e-6)
    assert torch.allclose(both[1], net(x[1:], t[1:])[0], atol=1e-6)
    assert not torch.allclose(both[1], out[1])
    # the null context is a trained parameter
    net(x, t, context=torch.zeros(2, 3, 8)).sum().backward()
    assert net.null_context.grad.abs().sum() > 0


def test_class_conditional_null_row_and_errors():
    net = vq_transformer("vq_tiny", num_classes=5).eval()
    x = torch.randint(0, 17, (3, 16))
    t = torch.tensor([0.0, 1.0, 99.0])
    a = net(x, t, class_labels=torch.tensor([0, 4, -1]))
    b = net(x, t, class_labels=torch.tensor([1, 4, -1]))
    assert not torch.allclose(a[0], b[0]) and torch.allclose(a[1:], b[1:])
    assert torch.allclose(net(x, t)[2], a[2], atol=1e-6)  # None = null class
    with pytest.raises(ValueError, match="class-conditional"):
        vq_transformer("vq_tiny")(x, t, class_labels=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="timestep"):
        net(x, torch.tensor([0.0, 1.0, 100.0]))
    with pytest.raises(ValueError, match="integer tokens"):
        net(x.float(), t)
    with pytest.raises(ValueError, match="not both"):
        VQTransformerConfig(context_dim=8, num_classes=3)


def test_trains_with_condition_dropout_and_samples():
    torch.manual_seed(0)
    net = vq_transformer("vq_tiny", num_classes=3)
    proc = DiscreteProcess(MaskReplaceSchedule.preset("released", 16, num_steps=100), p_uncond=0.1, aux_weight=1e-3)
    # two fixed "images": class 0 -> all code 1, class 1 -> codes 0..15
    x0 = torch.stack([torch.ones(16, dtype=torch.long), torch.arange(16)]).repeat(4, 1)
    labels = torch.tensor([0, 1]).repeat(4)
    opt = torch.optim.AdamW(net.parameters(), lr=5e-3)
    g = torch.Generator().manual_seed(0)
    first = None
    for _ in range(150):
        loss = proc.training_losses(net, x0, {"class_labels": labels}, generator=g, t=torch.randint(0, 100, (8,), generator=g))
        opt.zero_grad()
        loss.mean().backward()
        opt.step()
        first = loss.mean().item() if first is None else first
    assert loss.mean().item() < 0.5 * first
    net.eval()
    den = VQDenoiser(net, proc, {"class_labels": torch.tensor([0, 1])}, guidance_scale=2.0, truncation=0.9)
    out = sample_vq(den, proc, 16, seeds=[0, 1], method="fast_exact", stride=10)
    assert (out[0] == 1).double().mean() > 0.8
    assert (out[1] == torch.arange(16)).double().mean() > 0.8
