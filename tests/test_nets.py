"""Network contract tests shared by UNet and U-ViT: presets, counts, I/O, determinism, checkpointing, null paths."""

from __future__ import annotations

import json

import pytest
import torch

from versadiff.nets import (
    MULTIFLOW_PRESETS,
    PRESETS,
    VQ_PRESETS,
    UNetConfig,
    UViTConfig,
    build_net,
    config_from,
    count_parameters,
    load_pretrained,
    save_pretrained,
)

@pytest.fixture(autouse=True)
def plain_cpu_convs(request):
    """oneDNN compiles a kernel for every new conv shape, which dominates these tiny tests' CPU time;
    the plain kernels compute the same convolutions. bf16 tests keep oneDNN, the path users run."""
    previous = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = "bf16" in request.node.name
    yield
    torch.backends.mkldnn.enabled = previous


# Published / reference parameter counts in millions (uvit_unidiffuser.md §1.6, samplers_schedules.md §1.6).
PUBLISHED_M = {
    "vdpm_cifar10": 60.8,
    "vdpm_celeba": 301.0,
    "uvit_s2": 44.3,
    "uvit_s4": 44.3,
    "uvit_m4": 130.9,
    "uvit_l4": 286.8,
    "uvit_l2": 286.8,
    "uvit_h2": 500.8,
    "uvit_h4": 500.9,
    "uvit_s2_coco": 44.7,
    "uvit_s2_deep_coco": 58.4,
}

# small-but-real configs covering every conditioning kind of both architectures
TINY_UNET = dict(type="unet", image_size=16, base_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                 attention_resolutions=(8,), emb_channels=64, num_heads=2)
TINY_UVIT = dict(type="uvit", image_size=16, patch_size=4, embed_dim=64, depth=4, num_heads=4)
CASES = {
    "unet_class": {**TINY_UNET, "num_classes": 5},
    "unet_tags": {**TINY_UNET, "num_tags": 6},
    "unet_context": {**TINY_UNET, "context_dim": 12},
    "uvit_class": {**TINY_UVIT, "num_classes": 5},
    "uvit_context": {**TINY_UVIT, "context_dim": 12, "num_context_tokens": 3},
}


def randomize(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Replace zero-initialised weights so that every path actually influences the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return net


def inputs(config, batch: int = 2, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, dict]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, config.in_channels, config.image_size, config.image_size, generator=g)
    t = torch.linspace(10.0, 900.0, batch)
    cond = {}
    if getattr(config, "num_classes", 0):
        cond["class_labels"] = torch.arange(batch) % config.num_classes
    if getattr(config, "num_tags", 0):
        cond["class_labels"] = (torch.rand(batch, config.num_tags, generator=g) > 0.5).float()
    if config.context_dim:
        length = getattr(config, "num_context_tokens", 4)
        cond["context"] = torch.randn(batch, length, config.context_dim, generator=g)
    return x, t, cond


@pytest.mark.parametrize("name", sorted(PUBLISHED_M))
def test_parameter_count_matches_published(name):
    assert count_parameters(name) / 1e6 == pytest.approx(PUBLISHED_M[name], rel=0.01)


# VQ transformer presets take tokens, not images (tests/test_vq_transformer.py); the multi-flow diffusers take
# streams (tests/test_multiflow.py)
@pytest.mark.parametrize("name", sorted(n for n in PRESETS if n not in VQ_PRESETS and n not in MULTIFLOW_PRESETS))
def test_every_preset_has_the_right_output_shape_on_meta(name):
    config = config_from(name)
    with torch.device("meta"):
        net = build_net(config)
        x, t, cond = inputs(config, batch=1)
        out = net(x, t, **cond)
    assert out.shape == (1, config.out_channels or config.in_channels, config.image_size, config.image_size)


@pytest.mark.parametrize("name,kw", [("unet_tiny", {"num_classes": 10}), ("unet_tiny_gray", {}),
                                     ("uvit_tiny", {})])
def test_tiny_presets_run_for_real(name, kw):
    torch.manual_seed(0)
    net = build_net(name, **kw)
    x, t, cond = inputs(net.config)
    out = net(x, t, **cond)
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert 1e6 <= count_parameters(net.config) <= 3e6


@pytest.mark.parametrize("case", sorted(CASES))
def test_build_is_deterministic_and_forward_repeatable(case):
    torch.manual_seed(3)
    a = build_net(CASES[case]).eval()
    torch.manual_seed(3)
    b = build_net(CASES[case]).eval()
    for (ka, pa), (kb, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(pa, pb)
    randomize(a)
    x, t, cond = inputs(a.config)
    assert torch.equal(a(x, t, **cond), a(x, t, **cond))


@pytest.mark.parametrize("case", ["unet_context", "uvit_class", "uvit_context"])
def test_gradient_checkpointing_gives_the_same_gradients(case):
    torch.manual_seed(0)
    overrides = {"dropout": 0.2} if CASES[case]["type"] == "unet" else {}  # RNG must be replayed too
    net = randomize(build_net(CASES[case], **overrides)).train()
    x, t, cond = inputs(net.config)

    def grads(enabled: bool) -> list[torch.Tensor]:
        net.zero_grad()
        net.set_gradient_checkpointing(enabled)
        torch.manual_seed(7)
        net(x, t, **cond).square().mean().backward()
        return [p.grad.clone() for p in net.parameters()]

    plain, ckpt = grads(False), grads(True)
    assert any(g.abs().max() > 0 for g in plain)
    for g0, g1 in zip(plain, ckpt):
        torch.testing.assert_close(g1, g0, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", ["unet_class", "uvit_class"])
def test_null_class_is_a_learned_label_shared_by_all_samples(case):
    net = randomize(build_net(CASES[case])).eval()
    x, t, _ = inputs(net.config, batch=1)
    x, t = x.expand(3, -1, -1, -1), t.expand(3)
    null = net(x, t, class_labels=torch.full((3,), -1))
    zero = net(x, t, class_labels=torch.zeros(3, dtype=torch.long))
    assert not torch.allclose(null, zero, atol=1e-4)
    torch.testing.assert_close(null[1:], null[:1].expand(2, -1, -1, -1))
    torch.testing.assert_close(net(x, t), null)  # None is the null class


def test_null_tags_and_null_context_equal_their_none_form():
    net = randomize(build_net(CASES["unet_tags"])).eval()
    x, t, cond = inputs(net.config)
    zeros = torch.zeros_like(cond["class_labels"])
    torch.testing.assert_close(net(x, t, class_labels=zeros), net(x, t))
    assert not torch.allclose(net(x, t, **cond), net(x, t), atol=1e-4)
    for case in ("unet_context", "uvit_context"):
        net = randomize(build_net(CASES[case])).eval()
        x, t, cond = inputs(net.config)
        torch.testing.assert_close(net(x, t, context=torch.zeros_like(cond["context"])), net(x, t))
        assert not torch.allclose(net(x, t, **cond), net(x, t), atol=1e-4)


@pytest.mark.parametrize("case", ["unet_class", "uvit_class"])
def test_unconditional_model_ignores_labels(case):
    spec = {**CASES[case], "num_classes": 0}
    net = randomize(build_net(spec)).eval()
    x, t, _ = inputs(net.config)
    torch.testing.assert_close(net(x, t, class_labels=torch.tensor([1, 2])), net(x, t))


@pytest.mark.parametrize("case", ["unet_tags", "uvit_context"])
def test_save_load_round_trip(tmp_path, case):
    torch.manual_seed(0)
    net = randomize(build_net(CASES[case], out_channels=6 if case.startswith("unet") else None)).eval()
    save_pretrained(net, tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["type"] == net.config.net_type
    loaded = load_pretrained(tmp_path / "m")
    assert loaded.config == net.config
    assert all(p.requires_grad for p in loaded.parameters())
    x, t, cond = inputs(net.config)
    assert torch.equal(loaded.eval()(x, t, **cond), net(x, t, **cond))
    half = load_pretrained(tmp_path / "m", dtype=torch.bfloat16).eval()
    assert next(half.parameters()).dtype == torch.bfloat16
    low = half(x.bfloat16(), t, **cond)  # a bf16 model runs on bf16 inputs without autocast
    assert low.dtype == torch.bfloat16 and (low.float() - net(x, t, **cond)).norm() < 0.05 * low.float().norm()


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_pretrained(tmp_path / "nope")
    net = build_net(CASES["uvit_class"])
    save_pretrained(net, tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").rename(tmp_path / "w")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_pretrained(tmp_path / "m")
    (tmp_path / "w").rename(tmp_path / "m" / "model.safetensors")
    spec = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps({**spec, "embed_dim": 32}))
    with pytest.raises(ValueError, match="do not match config.json.*wrong shape"):
        load_pretrained(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text(json.dumps({**spec, "depth": 6}))
    with pytest.raises(ValueError, match="missing: "):
        load_pretrained(tmp_path / "m")


def test_build_from_names_dicts_and_configs():
    assert config_from("uvit_s2", num_classes=10).num_classes == 10
    assert config_from({"preset": "unet_tiny", "num_classes": 3}).num_classes == 3
    cfg = config_from({"type": "uvit", "embed_dim": 64, "num_heads": 2})
    assert isinstance(cfg, UViTConfig) and cfg.embed_dim == 64
    assert config_from(cfg, depth=2).depth == 2 and cfg.depth == 12
    assert UNetConfig.from_dict(UNetConfig().to_dict()) == UNetConfig()
    with pytest.raises(ValueError, match="unknown network preset 'nope'"):
        build_net("nope")
    with pytest.raises(ValueError, match="unknown UViTConfig key 'emb_dim'"):
        build_net("uvit_tiny", emb_dim=3)
    with pytest.raises(ValueError, match="needs 'type'"):
        build_net({"embed_dim": 3})
    with pytest.raises(ValueError, match="has type 'unet'"):
        UViTConfig.from_dict({"type": "unet"})


@pytest.mark.parametrize("case", ["unet_context", "uvit_class"])
def test_bf16_autocast_is_close_to_fp32(case):
    net = randomize(build_net(CASES[case]), seed=2).eval()
    x, t, cond = inputs(net.config)
    ref = net(x, t, **cond)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = net(x, t, **cond)
    assert low.dtype in (torch.bfloat16, torch.float32)
    err = (low.float() - ref).norm() / ref.norm()
    assert err < 0.03, err


def test_bad_inputs_get_one_line_errors():
    net = build_net(CASES["unet_class"])
    x, t, cond = inputs(net.config)
    with pytest.raises(ValueError, match=r"expects x of shape \[B, 3, H, W\]"):
        net(x[:, :1], t)
    with pytest.raises(ValueError, match="expects t of shape"):
        net(x, t[:1])
    with pytest.raises(ValueError, match=r"class_labels must lie in \[-1, 4\]"):
        net(x, t, class_labels=torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="integer tensor"):
        net(x, t, class_labels=torch.zeros(2))
    uvit = build_net(CASES["uvit_context"])
    with pytest.raises(ValueError, match="context must have shape"):
        uvit(x, t, context=torch.zeros(2, 4, 12))
    with pytest.raises(ValueError, match="built for 16x16"):
        uvit(torch.zeros(2, 3, 32, 32), t)
