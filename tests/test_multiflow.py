"""MultiFlowDiffuser (VD multi-flow diffuser): config, full-size layout, slot order, inputs, mixing, conversion."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from versadiff.conditioning import concat_conditions, null_condition
from versadiff.convert.vd import (
    multiflow_state_from_v0,
    multiflow_state_from_v1,
    multiflow_state_from_vd,
    multiflow_state_to_diffusers,
    multiflow_state_to_v0,
    multiflow_state_to_v1,
    v0_module_names,
)
from versadiff.nets.multiflow import (
    MULTIFLOW_PRESETS,
    MultiFlowConfig,
    MultiFlowDiffuser,
    parameter_groups,
    vd_basic,
    vd_dc,
    vd_four_flow,
    vd_shapes,
)

REFERENCE = Path("/work/shared/reference/vd")

# reference vd/README.md "Numerical facts"
FULL_SIZE_GROUPS = {
    "global": 2_050_560,
    "data.image": 590_231_044,
    "context.image": 267_239_360,
    "data.text": 1_439_558_528,
    "context.text": 267_239_360,
}
PRESET_COUNTS = {
    "vd_four_flow": 2_566_318_852,
    "vd_dc": 1_126_760_324,
    "vd_basic": 859_520_964,  # = SD-1's UNet
    "vd_tiny": 25_553_940,  # tiny_vd_configs.json pair minus the duplicated time embedding
    "vd_shapes": 3_057_444,
}


@pytest.fixture(autouse=True)
def plain_cpu_convs():
    """oneDNN compiles a kernel per new conv shape, which dominates these tiny runs; plain kernels compute the same."""
    previous = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    yield
    torch.backends.mkldnn.enabled = previous


def randomize(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights everywhere (zero-initialised output layers too), so no check passes by a zero branch."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.ndim == 1:
                p.copy_(1 + 0.2 * noise if "norm" in name and name.endswith("weight") else 0.2 * noise)
            else:
                p.copy_(noise / p[0].numel() ** 0.5)
    return net


@pytest.fixture(scope="module")
def shapes():
    """vd_shapes network with random weights, plus inputs for every stream."""
    cfg = vd_shapes()
    net = randomize(MultiFlowDiffuser(cfg)).eval()
    gen = torch.Generator().manual_seed(1)
    data = dict(
        image=torch.randn(2, 4, 8, 8, generator=gen),
        text=torch.randn(2, 64, generator=gen),
        t=torch.tensor([5.0, 800.0]),
        c_text=torch.randn(2, 6, 64, generator=gen),
        c_image=torch.randn(2, 9, 64, generator=gen),
    )
    return net, cfg, data


def count(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


# --------------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize("name", sorted(MULTIFLOW_PRESETS))
def test_config_json_round_trip(name):
    cfg = MULTIFLOW_PRESETS[name]()
    d = cfg.to_dict()
    assert all(not isinstance(v, tuple) for v in d.values())
    again = MultiFlowConfig.from_dict(json.loads(json.dumps({"type": "multiflow", **d})))
    assert again == cfg


def test_config_round_trip_with_overrides():
    cfg = vd_shapes(stream_overrides={"text": {"num_heads": 2, "attention_levels": (True, True)}})
    d = cfg.to_dict()
    assert d["stream_overrides"] == {"text": {"num_heads": 2, "attention_levels": [True, True]}}
    assert MultiFlowConfig.from_dict(json.loads(json.dumps(d))) == cfg
    assert cfg.layout("text").num_heads == 2 and cfg.layout("image").num_heads == 4


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"data_streams": ["audio"]}, "unknown data stream 'audio'"),
        ({"context_streams": []}, "at least one data stream and one context stream"),
        ({"context_streams": ["text", "text"]}, "lists a stream twice"),
        ({"attention_levels": [True]}, "attention_levels has 1 entries for 2 levels"),
        ({"norm_groups": 12}, "not divisible by norm_groups=12"),
        ({"num_heads": 5}, "cannot be split into attention heads"),
        ({"stream_overrides": {"audio": {"num_heads": 2}}}, "stream_overrides names 'audio'"),
        ({"stream_overrides": {"text": {"dropout": 0.1}}}, "key 'dropout' is not one of"),
        ({"color": 1}, "unknown MultiFlowConfig key 'color'"),
    ],
)
def test_config_errors(overrides, match):
    with pytest.raises(ValueError, match=match):
        vd_shapes(**overrides)


# ------------------------------------------------------------------------------------------ full-size layout


def test_full_size_layout_matches_vd_v1():
    with torch.device("meta"):
        net = MultiFlowDiffuser(vd_four_flow())
    state = net.state_dict()
    assert len(state) == 1368
    assert count(net) == 2_566_318_852
    groups = parameter_groups(net)
    params = dict(net.named_parameters())
    assert {g: sum(params[n].numel() for n in names) for g, names in groups.items()} == FULL_SIZE_GROUPS
    image_unet = FULL_SIZE_GROUPS["global"] + FULL_SIZE_GROUPS["data.image"] + FULL_SIZE_GROUPS["context.image"]
    assert image_unet == 859_520_964
    layout = REFERENCE / "v1_fullsize_keys_shapes.json"
    if layout.is_file():  # the fact sheet lives outside the repository
        assert {"diffuser." + k: list(v.shape) for k, v in state.items()} == json.loads(layout.read_text())


@pytest.mark.parametrize("name", sorted(PRESET_COUNTS))
def test_preset_parameter_counts(name):
    with torch.device("meta"):
        net = MultiFlowDiffuser(MULTIFLOW_PRESETS[name]())
    assert count(net) == PRESET_COUNTS[name]


def test_variants_hold_their_streams():
    with torch.device("meta"):
        dc, basic = MultiFlowDiffuser(vd_dc()), MultiFlowDiffuser(vd_basic())
    assert set(parameter_groups(dc)) == {"global", "data.image", "context.image", "context.text"}
    assert set(parameter_groups(basic)) == {"global", "data.image", "context.image"}
    assert not hasattr(dc.text, "data_blocks") and not hasattr(dc.text, "time_embed")


def test_parameter_groups_cover_every_parameter(shapes):
    net, *_ = shapes
    groups = parameter_groups(net)
    names = [n for ns in groups.values() for n in ns]
    assert sorted(names) == sorted(n for n, _ in net.named_parameters())
    assert groups["global"] == [n for n, _ in net.named_parameters() if n.startswith("image.time_embed.")]
    assert all(n.startswith("text.context_blocks.") for n in groups["context.text"])


# ----------------------------------------------------------------------------------------------- slot order


def test_slot_order_is_vds():
    with torch.device("meta"):
        net = MultiFlowDiffuser(vd_four_flow())
    kinds = [s.kind for s in net.slots]
    assert kinds.count("data") == 30 and kinds.count("context") == 16
    assert kinds.count("push") == kinds.count("pop") == 12
    assert len(net.image.data_blocks) == len(net.text.data_blocks) == 30
    assert len(net.image.context_blocks) == len(net.text.context_blocks) == 16
    # VD: context layers at the 3 attention levels of the input (6), the middle (1) and the output (9)
    assert [s.width for s in net.slots if s.kind == "context"] == [320] * 2 + [640] * 2 + [1280] * 3 + [1280] * 3 + \
        [640] * 3 + [320] * 3


@pytest.mark.parametrize(
    "override, match",
    [
        ({"num_res_blocks": 2}, r"slot 5: 'image' has data/down\(32\) but 'text' has data/res\(32\)"),
        ({"attention_levels": [False, True]}, r"slot 3: 'image' has context\(32\) but 'text' has push\(32\)"),
        ({"model_channels": 16}, r"slot 0: 'image' has data/in\(32\) but 'text' has data/in\(16\)"),
    ],
)
def test_mismatched_streams_raise_one_line(override, match):
    with pytest.raises(ValueError, match=match) as err:
        MultiFlowDiffuser(vd_shapes(stream_overrides={"text": override}))
    assert "\n" not in str(err.value)


def test_heads_may_differ_between_streams():
    net = MultiFlowDiffuser(vd_shapes(stream_overrides={"text": {"num_heads": 2}}))
    assert net.text.context_blocks[0][0].transformer_blocks[0].attn1.heads == 2
    assert net.image.context_blocks[0][0].transformer_blocks[0].attn1.heads == 4


# ------------------------------------------------------------------------------------------------- forward


@torch.no_grad()
def test_every_flow_runs_and_keeps_the_input_shape(shapes):
    net, _, d = shapes
    for stream, x in (("image", d["image"]), ("text", d["text"]), ("text", d["text"][:, :, None, None])):
        for key in ("context_text", "context_image"):
            out = net(x, d["t"], data_stream=stream, **{key: d["c" + key[7:]]})
            assert out.shape == x.shape and torch.isfinite(out).all()
    flat = net(d["text"], d["t"], data_stream="text", context_text=d["c_text"])
    v0 = net(d["text"][:, :, None, None], d["t"], data_stream="text", context_text=d["c_text"])
    assert torch.equal(flat, v0.flatten(1))
    # swapping the context stream changes the output
    a = net(d["image"], d["t"], data_stream="image", context_text=d["c_text"])
    b = net(d["image"], d["t"], data_stream="image", context_image=d["c_text"])
    assert (a - b).abs().max() > 1e-3


CTX = object()  # stands for a valid context_text tensor


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(data_stream="audio"), "unknown data_stream 'audio'"),
        (dict(data_stream="image", context_audio=0), r"unknown context stream 'audio' \(context_audio\)"),
        (dict(data_stream="image", context=0), "pass context_<stream>"),
        (dict(data_stream="image", class_labels=0), "unexpected keyword 'class_labels'"),
        (dict(data_stream="image"), "needs at least one context keyword"),
        (dict(data_stream="image", context_text=None), "needs at least one context keyword"),
        (dict(data_stream="image", context_text="bad"), r"context_text must have shape \[B=2, L, 64\], got str"),
        (dict(data_stream="image", context_text=CTX, context_weights={"image": 1.0}), "no context_image was given"),
        (dict(data_stream="image", context_text=CTX, context_weights={}), "without a weight in context_weights"),
        (dict(data_stream="image", context_text=CTX, context_weights={"text": -1.0}), "non-negative"),
        (dict(data_stream="image", context_text=CTX, context_weights={"text": 0.0}), "not all zero"),
        (dict(data_stream="image", context_text=CTX, mixing="model"), "mixing must be 'attention' or 'layer'"),
    ],
)
def test_input_errors(shapes, kwargs, match):
    net, _, d = shapes
    kwargs = {k: d["c_text"] if v is CTX else v for k, v in kwargs.items()}
    with pytest.raises(ValueError, match=match):
        net(d["image"], d["t"], **kwargs)


def test_shape_errors(shapes):
    net, _, d = shapes
    c = d["c_text"]
    with pytest.raises(ValueError, match=r"context_text must have shape \[B=2, L, 64\], got \(2, 6, 32\)"):
        net(d["image"], d["t"], data_stream="image", context_text=c[..., :32])
    with pytest.raises(ValueError, match=r"context_text must have shape \[B=2, L, 64\], got \(1, 6, 64\)"):
        net(d["image"], d["t"], data_stream="image", context_text=c[:1])
    with pytest.raises(ValueError, match=r"expects x \[B, 4, H, W\] with H and W divisible by 2, got \(2, 4, 7, 7\)"):
        net(d["image"][..., :7, :7], d["t"], data_stream="image", context_text=c)
    with pytest.raises(ValueError, match=r"expects x \[B, 64\] or \[B, 64, 1, 1\], got \(2, 4, 8, 8\)"):
        net(d["image"], d["t"], data_stream="text", context_text=c)
    with pytest.raises(ValueError, match=r"t must have shape \[B\]=\[2\]"):
        net(d["image"], d["t"][:1], data_stream="image", context_text=c)


@torch.no_grad()
def test_attention_mixing_weights(shapes):
    net, _, d = shapes
    x, t, ct, ci = d["image"], d["t"], d["c_text"], d["c_image"]
    mixed = net(x, t, data_stream="image", context_text=ct, context_image=ci, context_weights={"text": 1, "image": 3})
    same = net(x, t, data_stream="image", context_image=ci, context_text=ct,
               context_weights={"image": 0.75, "text": 0.25})
    torch.testing.assert_close(mixed, same, rtol=1e-6, atol=1e-6)
    equal = net(x, t, data_stream="image", context_text=ct, context_image=ci)
    half = net(x, t, data_stream="image", context_text=ct, context_image=ci, context_weights={"text": 2, "image": 2})
    torch.testing.assert_close(equal, half, rtol=1e-6, atol=1e-6)
    single = net(x, t, data_stream="image", context_text=ct)
    assert torch.equal(single, net(x, t, data_stream="image", context_text=ct, context_image=ci,
                                   context_weights={"text": 1, "image": 0}))
    assert (mixed - single).abs().max() > 1e-3


@torch.no_grad()
def test_layer_mixing_draws_one_stream_per_slot(shapes):
    net, cfg, d = shapes
    ran: list[tuple[str, int]] = []
    hooks = [
        net.get_submodule(f"{name}.context_blocks.{k}.0").register_forward_hook(
            lambda *_, name=name, k=k: ran.append((name, k))
        )
        for name in ("image", "text")
        for k in range(net.num_context_slots)
    ]
    try:
        kw = dict(data_stream="text", context_text=d["c_text"], context_image=d["c_image"],
                  context_weights={"text": 0.3, "image": 0.7}, mixing="layer")
        out = net(d["text"], d["t"], mixing_generator=torch.Generator().manual_seed(7), **kw)
    finally:
        for h in hooks:
            h.remove()
    # streams are ordered as in config.context_streams (image, text); one draw per slot for the whole batch
    picks = torch.multinomial(torch.tensor([0.7, 0.3], dtype=torch.float64), net.num_context_slots,
                              replacement=True, generator=torch.Generator().manual_seed(7)).tolist()
    assert ran == [(cfg.context_streams[p], k) for k, p in enumerate(picks)]
    assert torch.equal(out, net(d["text"], d["t"], mixing_generator=torch.Generator().manual_seed(7), **kw))
    outs = {net(d["text"], d["t"], mixing_generator=torch.Generator().manual_seed(s), **kw).sum().item()
            for s in range(6)}
    assert len(outs) > 1  # different seeds (generally) pick different layers
    # all weight on one stream: that single flow, and no draw is made
    only_image = dict(kw, context_weights={"text": 0.0, "image": 1.0})
    gen = torch.Generator().manual_seed(3)
    assert torch.equal(net(d["text"], d["t"], mixing_generator=gen, **only_image),
                       net(d["text"], d["t"], data_stream="text", context_image=d["c_image"]))


@torch.no_grad()
def test_classifier_free_guidance_batches(shapes):
    """The project's condition dicts: tensors concatenated along the batch, other values passed through."""
    net, _, d = shapes
    cond = {"data_stream": "image", "context_text": d["c_text"], "context_image": d["c_image"],
            "context_weights": {"text": 0.4, "image": 0.6}}
    null = {"context_text": torch.zeros(1, 6, 64), "context_image": torch.zeros(1, 9, 64)}  # VD v1: zero embeddings
    uncond = null_condition(cond, null)
    both = concat_conditions([uncond, cond])
    assert both["data_stream"] == "image" and both["context_weights"] == cond["context_weights"]
    out = net(torch.cat([d["image"]] * 2), d["t"].repeat(2), **both)
    torch.testing.assert_close(out[2:], net(d["image"], d["t"], **cond), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[:2], net(d["image"], d["t"], **uncond), rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_bfloat16_weights_run_close_to_float32(shapes):
    net, _, d = shapes
    half = MultiFlowDiffuser(net.config).to(torch.bfloat16).eval()
    half.load_state_dict(net.state_dict())
    for stream in ("image", "text"):
        kw = dict(data_stream=stream, context_text=d["c_text"], context_image=d["c_image"])
        ref = net(d[stream], d["t"], **kw)
        out = half(d[stream].bfloat16(), d["t"], **kw)  # contexts are cast to x's dtype
        assert out.dtype == torch.bfloat16 and ((out.float() - ref).norm() / ref.norm()) < 0.05


def test_gradient_checkpointing_matches(shapes):
    net, _, d = shapes
    kw = dict(data_stream="image", context_text=d["c_text"], context_image=d["c_image"])
    results = []
    for enabled in (False, True):
        net.set_gradient_checkpointing(enabled)
        net.zero_grad()
        out = net(d["image"], d["t"], **kw)
        out.square().mean().backward()
        results.append((out.detach(), [p.grad.clone() for p in net.parameters() if p.grad is not None]))
    net.set_gradient_checkpointing(False)
    (out0, g0), (out1, g1) = results
    assert torch.equal(out0, out1) and len(g0) == len(g1) > 0
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(g0, g1))
    # text data stream parameters get no gradient from an image flow
    assert all(p.grad is None for n, p in net.named_parameters() if n.startswith("text.data_blocks."))
    net.zero_grad(set_to_none=True)


# ---------------------------------------------------------------------------------------------- conversion

# v1 index -> v0 module for vd_shapes (2 levels, 1 ResBlock each, context at both levels), written out by hand
# from LDM's UNet construction: input_blocks 0 conv, 1 res+ctx, 2 down, 3 res+ctx; output_blocks 0-1 at level 1
# (the upsampler after the context layer, at index 2), 2-3 at level 0.
SHAPES_V0_DATA = [
    "input_blocks.0.0", "input_blocks.1.0", "input_blocks.2.0", "input_blocks.3.0", "middle_block.0",
    "middle_block.2", "output_blocks.0.0", "output_blocks.1.0", "output_blocks.1.2", "output_blocks.2.0",
    "output_blocks.3.0", "out",
]
SHAPES_V0_CONTEXT = [
    "input_blocks.1.1", "input_blocks.3.1", "middle_block.1", "output_blocks.0.1", "output_blocks.1.1",
    "output_blocks.2.1", "output_blocks.3.1",
]


def test_v0_index_rule():
    assert v0_module_names(vd_shapes()) == {"data_blocks": SHAPES_V0_DATA, "context_blocks": SHAPES_V0_CONTEXT}
    fact_sheet = REFERENCE / "v1_index_to_v0_name.json"
    if fact_sheet.is_file():
        facts = json.loads(fact_sheet.read_text())
        assert facts["image"] == facts["text"] == v0_module_names(vd_four_flow())


def _v0_state_by_hand(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The vd_shapes weights in v0 key names, written from the hand-made table above (not by the converter)."""
    out = {}
    for key, v in state.items():
        modality, part, rest = key.split(".", 2)
        if part == "time_embed":
            out[f"model.diffusion_model.time_embed.{rest}"] = v
            continue
        index, _, inner = rest.split(".", 2)
        module = (SHAPES_V0_DATA if part == "data_blocks" else SHAPES_V0_CONTEXT)[int(index)]
        out[f"model.diffusion_model.unet_{modality}.{module}.{inner}"] = v
    return out


EXTRAS = {  # what real VD files carry besides the diffuser
    "autokl.encoder.conv_in.weight": torch.zeros(2),
    "optimus.decoder.transformer.linear.weight": torch.zeros(2),
    "clip.model.text_model.embeddings.position_ids": torch.zeros(2),
    "betas": torch.zeros(3),
}


@torch.no_grad()
def test_v0_layout_loads_strictly(shapes):
    net, cfg, d = shapes
    state = net.state_dict()
    v0 = {**_v0_state_by_hand(state), **EXTRAS}
    assert multiflow_state_to_v0(state, cfg) == {k: v for k, v in v0.items() if k not in EXTRAS}
    converted = multiflow_state_from_v0(v0)
    assert converted.ignored == sorted(EXTRAS)
    assert converted.ignored_prefixes() == {"autokl": 1, "optimus": 1, "clip": 1, "betas": 1}
    loaded = MultiFlowDiffuser(cfg).eval()
    loaded.load_state_dict(converted.state, strict=True)
    for stream, x in (("image", d["image"]), ("text", d["text"])):
        kw = dict(data_stream=stream, context_text=d["c_text"], context_image=d["c_image"])
        assert torch.equal(loaded(x, d["t"], **kw), net(x, d["t"], **kw))


def test_v0_ema_weights(shapes):
    net, cfg, _ = shapes
    v0 = multiflow_state_to_v0(net.state_dict(), cfg)
    ema = {"model_ema." + k[len("model."):].replace(".", ""): v + 1 for k, v in v0.items()}
    both = {**v0, **ema, "model_ema.decay": torch.tensor(0.9999), "model_ema.num_updates": torch.tensor(5)}
    converted = multiflow_state_from_v0(both, ema=True)
    assert all(torch.equal(converted.state[k], v + 1) for k, v in net.state_dict().items())
    assert set(converted.ignored) == set(v0) | {"model_ema.decay", "model_ema.num_updates"}
    with pytest.raises(ValueError, match="no model_ema weights"):
        multiflow_state_from_v0(v0, ema=True)


@torch.no_grad()
def test_v1_layout_loads_strictly(shapes, tmp_path):
    net, cfg, d = shapes
    state = net.state_dict()
    v1 = {"diffuser." + k: v for k, v in state.items()}
    assert multiflow_state_to_v1(state) == v1
    converted = multiflow_state_from_v1({**v1, **EXTRAS})
    assert converted.ignored == sorted(EXTRAS)
    loaded = MultiFlowDiffuser(cfg).eval()
    loaded.load_state_dict(converted.state, strict=True)
    kw = dict(data_stream="text", context_image=d["c_image"])
    assert torch.equal(loaded(d["text"], d["t"], **kw), net(d["text"], d["t"], **kw))
    # files: .pth (torch.load weights_only) and .safetensors, v1 and v0 layouts detected by their prefixes
    torch.save({**v1, **EXTRAS}, tmp_path / "vd-four-flow-v1-0.pth")
    v0 = {k: v.contiguous() for k, v in multiflow_state_to_v0(state, cfg).items()}
    save_file(v0, str(tmp_path / "v0.safetensors"))
    for path in (tmp_path / "vd-four-flow-v1-0.pth", tmp_path / "v0.safetensors"):
        got = multiflow_state_from_vd(path).state
        assert got.keys() == state.keys() and all(torch.equal(got[k], state[k]) for k in state)
    assert multiflow_state_from_vd(state).ignored == []
    with pytest.raises(ValueError, match="not a VD diffuser checkpoint"):
        multiflow_state_from_vd({"autokl.x": torch.zeros(1)})
    with pytest.raises(ValueError, match="ema=True applies to v0 files only"):
        multiflow_state_from_vd(v1, ema=True)


def test_diffusers_export_needs_paired_streams():
    cfg = vd_shapes(data_streams=["image"])  # text context without a text data stream (VD-DC style)
    with torch.device("meta"):
        state = MultiFlowDiffuser(cfg).state_dict()
    with pytest.raises(ValueError, match="no place for modality 'text'"):
        multiflow_state_to_diffusers(state, cfg)
