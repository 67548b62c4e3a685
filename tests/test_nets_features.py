"""Architecture details of the UNet and U-ViT: embeddings, attention numerics, token layout, switches."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.embeddings import get_timestep_embedding

from versadiff.nets import UNetConfig, UViTConfig, build_net, count_parameters, timestep_embedding
from versadiff.nets.layers import attention

@pytest.fixture(autouse=True)
def plain_cpu_convs(request):
    """oneDNN compiles a kernel for every new conv shape, which dominates these tiny tests' CPU time;
    the plain kernels compute the same convolutions. bf16 tests keep oneDNN, the path users run."""
    previous = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = "bf16" in request.node.name
    yield
    torch.backends.mkldnn.enabled = previous


TINY_UNET = dict(type="unet", image_size=16, base_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                 attention_resolutions=(8,), emb_channels=64, num_heads=2)
TINY_UVIT = dict(type="uvit", image_size=16, patch_size=4, embed_dim=64, depth=4, num_heads=4)


def randomize(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return net


def saved_bytes(net: torch.nn.Module, x: torch.Tensor, t: torch.Tensor) -> int:
    """Bytes of tensors autograd keeps for the backward pass (parameters excluded)."""
    params = {p.data_ptr() for p in net.parameters()}
    total = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        if tensor.data_ptr() not in params:
            total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        net(x, t).sum()
    return total


@pytest.mark.parametrize("cos_first,shift,dim", [(False, 1.0, 64), (True, 0.0, 64), (True, 0.0, 33)])
def test_timestep_embedding_matches_diffusers(cos_first, shift, dim):
    t = torch.tensor([0.0, 1.5, 250.0, 999.0])
    ours = timestep_embedding(t, dim, cos_first=cos_first, freq_shift=shift)
    ref = get_timestep_embedding(t, dim, flip_sin_to_cos=cos_first, downscale_freq_shift=shift)
    torch.testing.assert_close(ours, ref)


def test_fp16_attention_keeps_softmax_in_fp32():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 8, 16, generator=g) for _ in range(3))
    q = q * 300.0  # logits ~ 1e4 / 4: exp() overflows fp16 unless computed in fp32
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    out = attention(q.half(), k.half(), v.half())
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=1e-2)


def test_bf16_training_attention_takes_the_explicit_path_with_sdpas_values_and_gradients():
    from versadiff.nets import layers

    g = torch.Generator().manual_seed(0)
    base = [torch.randn(2, 2, 17, 8, generator=g) for _ in range(3)]
    ref = [t.clone().requires_grad_(True) for t in base]
    out_ref = torch.nn.functional.scaled_dot_product_attention(*ref)
    out_ref.square().sum().backward()
    got = [t.bfloat16().requires_grad_(True) for t in base]
    assert layers._explicit_attention(got[0], got[1])
    out = attention(*got)
    assert out.dtype == torch.bfloat16
    out.float().square().sum().backward()
    torch.testing.assert_close(out.float(), out_ref.detach(), atol=3e-2, rtol=3e-2)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a.grad.float(), b.grad, atol=6e-2, rtol=5e-2)
    # inference, fp32 and very long sequences keep SDPA's kernel
    with torch.no_grad():
        assert not layers._explicit_attention(got[0], got[1])
    assert not layers._explicit_attention(ref[0], ref[1])
    long_q = torch.empty(16, 8, 2048, 8, dtype=torch.bfloat16, requires_grad=True)
    assert not layers._explicit_attention(long_q, long_q)


@pytest.mark.parametrize("spec", [TINY_UNET, TINY_UVIT], ids=["unet", "uvit"])
def test_checkpointing_saves_most_activation_memory(spec):
    net = build_net(spec).train()
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([1.0, 2.0])
    full = saved_bytes(net, x, t)
    net.set_gradient_checkpointing(True)
    assert saved_bytes(net, x, t) < 0.5 * full


def test_uvit_unpatchify_inverts_the_paper_patch_layout():
    net = build_net(TINY_UVIT, out_channels=2)
    img = torch.randn(2, 2, 16, 16)
    # paper layout: B C (h p1) (w p2) -> B (h w) (p1 p2 C)
    tokens = img.reshape(2, 2, 4, 4, 4, 4).permute(0, 2, 4, 3, 5, 1).reshape(2, 16, 32)
    assert torch.equal(net._unpatchify(tokens), img)


def test_uvit_token_order_label_then_time_then_patches():
    net = randomize(build_net({**TINY_UVIT, "num_classes": 5})).eval()
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3.0, 400.0])
    tokens = net._tokens(x, t, torch.tensor([4, -1]), None)
    pos = net.pos_embed[0]
    assert tokens.shape == (2, 2 + 16, 64) and net.extras == 2
    torch.testing.assert_close(tokens[:, 0], net.label_emb.weight[[4, 5]] + pos[0])
    torch.testing.assert_close(tokens[:, 1], timestep_embedding(t, 64, cos_first=True, freq_shift=0.0) + pos[1])
    ctx = build_net({**TINY_UVIT, "context_dim": 8, "num_context_tokens": 3})
    assert ctx.extras == 4 and ctx.pos_embed.shape == (1, 4 + 16, 64)


def test_uvit_long_skips_pair_last_in_with_first_out():
    net = randomize(build_net({**TINY_UVIT, "depth": 6})).eval()
    assert len(net.in_blocks) == len(net.out_blocks) == 3  # depth 6 -> 7 blocks
    outs, skips = [], []
    for blk in net.in_blocks:
        blk.register_forward_hook(lambda m, a, out: outs.append(out))
    for blk in net.out_blocks:
        blk.register_forward_pre_hook(lambda m, args: skips.append(args[1]))
    net(torch.randn(1, 3, 16, 16), torch.tensor([5.0]))
    for skip, out in zip(skips, reversed(outs)):
        assert skip is out


@pytest.mark.parametrize(
    "spec",
    [
        {**TINY_UNET, "scale_shift_norm": False},
        {**TINY_UNET, "resblock_resample": False},
        {**TINY_UNET, "head_channels": 16, "out_channels": 6},
        {**TINY_UNET, "image_size": 28, "channel_mult": (1, 2, 2), "attention_resolutions": (14, 7), "in_channels": 1},
        {**TINY_UVIT, "pre_norm": False},
        {**TINY_UVIT, "conv_head": False, "mlp_time_embed": True},
        {**TINY_UVIT, "skip": False, "qkv_bias": True},
    ],
    ids=["additive_emb", "conv_resample", "head_channels_both", "gray28", "post_ln", "no_conv_mlp_time", "no_skip"],
)
def test_architecture_switches_run_and_train(spec):
    torch.manual_seed(0)
    net = randomize(build_net(spec))
    cfg = net.config
    x = torch.randn(2, cfg.in_channels, cfg.image_size, cfg.image_size)
    out = net(x, torch.tensor([1.0, 700.0]))
    assert out.shape == (2, cfg.out_channels or cfg.in_channels, cfg.image_size, cfg.image_size)
    out.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    other = randomize(build_net(spec), seed=5)
    assert not torch.allclose(other(x, torch.tensor([1.0, 700.0])), out)


def test_switches_change_the_architecture_as_documented():
    base = count_parameters(TINY_UNET)
    # FiLM needs 2C outputs per embedding projection instead of C
    assert count_parameters({**TINY_UNET, "scale_shift_norm": False}) < base
    d = 64
    uvit = count_parameters(TINY_UVIT)
    assert count_parameters({**TINY_UVIT, "skip": False}) == uvit - 2 * (2 * d * d + d)
    assert count_parameters({**TINY_UVIT, "conv_head": False}) == uvit - (3 * 3 * 9 + 3)
    # post-LN adds one LayerNorm after each skip merge
    assert count_parameters({**TINY_UVIT, "pre_norm": False}) == uvit + 2 * 2 * d


def test_zero_init_unet_starts_at_zero_and_uvit_has_paper_init():
    unet = build_net(TINY_UNET)
    assert torch.equal(unet(torch.randn(1, 3, 16, 16), torch.tensor([3.0])), torch.zeros(1, 3, 16, 16))
    torch.manual_seed(0)
    uvit = build_net({**TINY_UVIT, "embed_dim": 256, "num_heads": 4})
    w = uvit.in_blocks[0].mlp.fc1.weight
    assert w.std().item() == pytest.approx(0.02, rel=0.05) and w.abs().max() <= 2.0
    assert torch.equal(uvit.in_blocks[0].mlp.fc1.bias, torch.zeros_like(uvit.in_blocks[0].mlp.fc1.bias))
    assert uvit.pos_embed.std().item() == pytest.approx(0.02, rel=0.1)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(image_size=28, channel_mult=(1, 2, 2, 2)), "not divisible by 2"),
        (dict(attention_resolutions=(12,)), "attention resolution 12"),
        (dict(num_classes=3, num_tags=4), "not both"),
        (dict(base_channels=48), "norm_groups"),
    ],
)
def test_unet_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        UNetConfig(**kwargs)


def test_uvit_config_validation():
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        UViTConfig(image_size=30, patch_size=4)
    with pytest.raises(ValueError, match="not both"):
        UViTConfig(num_classes=3, context_dim=8)


def test_multi_hot_tags_are_scaled_by_active_count():
    net = randomize(build_net({**TINY_UNET, "num_tags": 4})).eval()
    emb_t = net.time_mlp(timestep_embedding(torch.tensor([2.0]), 32, freq_shift=1.0))
    tags = torch.tensor([[1.0, 1.0, 0.0, 1.0]])
    expected = emb_t + net.tag_emb(tags / 3**0.5)
    torch.testing.assert_close(net.embed(torch.tensor([2.0]), tags, 1), expected)
    with pytest.raises(ValueError, match="multi-hot"):
        net.embed(torch.tensor([2.0]), torch.tensor([1]), 1)
