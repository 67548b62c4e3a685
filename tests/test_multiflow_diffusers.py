"""MultiFlowDiffuser equals diffusers' Versatile Diffusion arrangement, flow by flow, in float64.

diffusers' port equals the original v0 code to 4e-15 (reference vd/README.md), so this is a proxy for the
original. Flows in diffusers: text->image = image_unet with the text_unet's Transformer2DModels swapped in at the
same module paths; image variation = image_unet; text variation = text_unet; image->text = text_unet with the
image_unet's transformers; dual-guided = DualTransformer2DModel wrappers (its forward cannot take the
`encoder_attention_mask` keyword the blocks pass, diffusers issue 13651, so a wrapper drops it).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from extras import require_extra  # noqa: E402

diffusers = require_extra("diffusers")  # broken fails loudly; missing skips with the reason (fails under CI)
from diffusers import UNet2DConditionModel  # noqa: E402
from diffusers.models import DualTransformer2DModel, Transformer2DModel  # noqa: E402
from diffusers.pipelines.deprecated.versatile_diffusion.modeling_text_unet import (  # noqa: E402
    UNetFlatConditionModel,
)

from versadiff.convert.vd import multiflow_state_from_diffusers, multiflow_state_to_diffusers  # noqa: E402
from versadiff.nets.multiflow import MultiFlowConfig, MultiFlowDiffuser, vd_tiny  # noqa: E402

# the workplace's reference notes (shared/ beside the repository, as CI lays it, or the development machine's)
_REF = "reference/vd/tiny_vd_configs.json"
TINY_JSON = next((p for p in (Path(__file__).resolve().parents[2] / "shared" / _REF, Path("/work/shared") / _REF)
                  if p.is_file()), Path("/work/shared") / _REF)

# tiny_vd_configs.json (copied so the test runs without the reference folder)
TINY_IMAGE = dict(
    sample_size=8, in_channels=4, out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(32, 64, 128, 128), layers_per_block=2, cross_attention_dim=32, attention_head_dim=8,
)
TINY_TEXT = dict(
    TINY_IMAGE, sample_size=None, in_channels=(16, 1, 1), out_channels=(16, 1, 1),
    down_block_types=("CrossAttnDownBlockFlat",) * 3 + ("DownBlockFlat",),
    up_block_types=("UpBlockFlat",) + ("CrossAttnUpBlockFlat",) * 3,
)
# a second shape: 3 levels, no context at the top level, 1 ResBlock per level, 16 norm groups, 4 heads in the
# image-context transformers and 2 in the text-context ones (a per-modality override)
OTHER_IMAGE = dict(
    sample_size=8, in_channels=4, out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(16, 32, 48), layers_per_block=1, cross_attention_dim=24, attention_head_dim=4,
    norm_num_groups=16,
)
OTHER_TEXT = dict(
    OTHER_IMAGE, sample_size=None, in_channels=(12, 1, 1), out_channels=(12, 1, 1), attention_head_dim=2,
    down_block_types=("DownBlockFlat", "CrossAttnDownBlockFlat", "CrossAttnDownBlockFlat"),
    up_block_types=("CrossAttnUpBlockFlat", "CrossAttnUpBlockFlat", "UpBlockFlat"),
)
OTHER_CONFIG = dict(
    model_channels=16, channel_mult=(1, 2, 3), num_res_blocks=1, attention_levels=(False, True, True), num_heads=4,
    context_dim=24, image_size=8, text_dim=12, norm_groups=16, stream_overrides={"text": {"num_heads": 2}},
)
CASES = {
    "tiny": (TINY_IMAGE, TINY_TEXT, vd_tiny()),
    "other": (OTHER_IMAGE, OTHER_TEXT, MultiFlowConfig.from_dict(OTHER_CONFIG)),
}
TEXT_TOKENS, IMAGE_TOKENS = 5, 7  # context lengths (VD: 77 and 257)


@pytest.fixture(autouse=True)
def plain_cpu_convs():
    """oneDNN compiles a kernel per new conv shape, which dominates these tiny runs; plain kernels compute the same."""
    previous = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    yield
    torch.backends.mkldnn.enabled = previous


def randomize(module: nn.Module, seed: int) -> None:
    """Random weights everywhere, zero-initialised output layers included (no test may pass by a zero branch)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            if p.ndim == 1:  # norm weights around 1, biases around 0
                p.copy_(1 + 0.2 * noise if "norm" in name and name.endswith("weight") else 0.2 * noise)
            else:
                p.copy_(noise / p[0].numel() ** 0.5)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def swapped(unet: nn.Module, donor: nn.Module) -> nn.Module:
    """A copy of `unet` with `donor`'s Transformer2DModels at the same module paths (diffusers'
    `_swap_unet_attention_blocks`, without modifying either model)."""
    out = copy.deepcopy(unet)
    for name, module in unet.named_modules():
        if isinstance(module, Transformer2DModel):
            parent, index = name.rsplit(".", 1)
            out.get_submodule(parent)[int(index)] = copy.deepcopy(donor.get_submodule(name))
    return out


class DropEncoderMask(nn.Module):
    """Calls a DualTransformer2DModel without the `encoder_attention_mask` keyword it cannot take."""

    def __init__(self, dual: DualTransformer2DModel) -> None:
        super().__init__()
        self.dual = dual

    def forward(self, hidden_states, encoder_hidden_states=None, encoder_attention_mask=None, **kwargs):
        return self.dual(hidden_states, encoder_hidden_states, **kwargs)


def dual_guided(image_unet: nn.Module, text_unet: nn.Module, ratio: float) -> nn.Module:
    """image_unet with every transformer replaced as in diffusers' `_convert_to_dual_attention`."""
    out = copy.deepcopy(image_unet)
    for name, module in image_unet.named_modules():
        if isinstance(module, Transformer2DModel):
            cfg = module.config
            dual = DualTransformer2DModel(
                num_attention_heads=cfg.num_attention_heads, attention_head_dim=cfg.attention_head_dim,
                in_channels=cfg.in_channels, num_layers=cfg.num_layers, norm_num_groups=cfg.norm_num_groups,
                cross_attention_dim=cfg.cross_attention_dim,
            )
            dual.transformers[0] = copy.deepcopy(module)  # image-context transformer
            dual.transformers[1] = copy.deepcopy(text_unet.get_submodule(name))  # text-context transformer
            dual.mix_ratio = ratio  # weight of the text context
            dual.condition_lengths = [TEXT_TOKENS, IMAGE_TOKENS]
            dual.transformer_index_for_condition = [1, 0]
            parent, index = name.rsplit(".", 1)
            out.get_submodule(parent)[int(index)] = DropEncoderMask(dual)
    return out.double()


@pytest.fixture(scope="module", params=sorted(CASES))
def models(request):
    image_cfg, text_cfg, config = CASES[request.param]
    image_unet = UNet2DConditionModel(**image_cfg).double().eval()
    text_unet = UNetFlatConditionModel(**text_cfg).double().eval()
    randomize(image_unet, 1)
    randomize(text_unet, 2)
    # VD has one time embedding; diffusers' converter copies it into both UNets
    text_unet.time_embedding.load_state_dict(image_unet.time_embedding.state_dict())
    net = MultiFlowDiffuser(config).double().eval()
    net.load_state_dict(multiflow_state_from_diffusers(image_unet.state_dict(), text_unet.state_dict()), strict=True)

    gen = torch.Generator().manual_seed(3)
    d = config.context_dim
    data = dict(
        image=torch.randn(2, config.image_channels, 8, 8, generator=gen, dtype=torch.float64),
        text=torch.randn(2, config.text_dim, 1, 1, generator=gen, dtype=torch.float64),
        t=torch.tensor([3.0, 517.0], dtype=torch.float64),
        c_text=torch.randn(2, TEXT_TOKENS, d, generator=gen, dtype=torch.float64),
        c_image=torch.randn(2, IMAGE_TOKENS, d, generator=gen, dtype=torch.float64),
    )
    return image_unet, text_unet, net, config, data


def test_tiny_case_matches_reference_json():
    if not TINY_JSON.is_file():
        pytest.skip(f"the reference notes are not beside this checkout ({TINY_JSON}); the copy below stands in")
    ref = json.loads(TINY_JSON.read_text())
    norm = lambda d: {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}  # noqa: E731
    assert norm(ref["image_unet"]) == norm(TINY_IMAGE)
    assert norm(ref["text_unet"]) == norm(TINY_TEXT)


@torch.no_grad()
def test_four_flows_equal_diffusers(models):
    image_unet, text_unet, net, _, d = models
    t = d["t"]
    flows = {  # (diffusers arrangement, its input and context; our data stream and context keyword)
        "text->image": (swapped(image_unet, text_unet), d["image"], d["c_text"], "image", "context_text"),
        "image variation": (image_unet, d["image"], d["c_image"], "image", "context_image"),
        "text variation": (text_unet, d["text"], d["c_text"], "text", "context_text"),
        "image->text": (swapped(text_unet, image_unet), d["text"], d["c_image"], "text", "context_image"),
    }
    for name, (unet, x, c, stream, key) in flows.items():
        expected = unet(x, t, encoder_hidden_states=c, return_dict=False)[0]
        got = net(x, t, data_stream=stream, **{key: c})
        assert got.shape == expected.shape, name
        assert rel(got, expected) <= 1e-6, (name, rel(got, expected))
        if stream == "text":  # v1 takes [B, D]; the weights and the result are the same
            flat = net(x.flatten(1), t, data_stream=stream, **{key: c})
            assert flat.shape == x.shape[:2] and torch.equal(flat, got.flatten(1))
    # the flows really differ (a swapped stream changes the output)
    a = net(d["image"], t, data_stream="image", context_text=d["c_text"])
    b = net(d["image"], t, data_stream="image", context_image=d["c_text"])
    assert rel(a, b) > 1e-3


@torch.no_grad()
@pytest.mark.parametrize("ratio", [0.0, 0.3, 1.0])
def test_attention_mixing_equals_dual_transformer(models, ratio):
    image_unet, text_unet, net, _, d = models
    t, x = d["t"], d["image"]
    dual = dual_guided(image_unet, text_unet, ratio)
    context = torch.cat([d["c_text"], d["c_image"]], dim=1)  # diffusers: [text tokens | image tokens]
    expected = dual(x, t, encoder_hidden_states=context, return_dict=False)[0]
    got = net(x, t, data_stream="image", context_text=d["c_text"], context_image=d["c_image"],
              context_weights={"text": ratio, "image": 1 - ratio})
    assert rel(got, expected) <= 1e-6, rel(got, expected)
    # the extremes are the single flows, exactly
    if ratio == 1.0:
        assert torch.equal(got, net(x, t, data_stream="image", context_text=d["c_text"]))
    if ratio == 0.0:
        assert torch.equal(got, net(x, t, data_stream="image", context_image=d["c_image"]))


def test_diffusers_round_trip(models):
    image_unet, text_unet, net, config, _ = models
    image_state, text_state = multiflow_state_to_diffusers(net.state_dict(), config)
    for ours, theirs in ((image_state, image_unet.state_dict()), (text_state, text_unet.state_dict())):
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_time_embedding_must_agree(models):
    image_unet, text_unet, *_ = models
    text_state = dict(text_unet.state_dict())
    text_state["time_embedding.linear_1.bias"] = text_state["time_embedding.linear_1.bias"] + 1
    with pytest.raises(ValueError, match="time_embedding differs"):
        multiflow_state_from_diffusers(image_unet.state_dict(), text_state)
    state = multiflow_state_from_diffusers(image_unet.state_dict(), text_state, check_time_embedding=False)
    assert torch.equal(state["image.time_embed.0.bias"], image_unet.state_dict()["time_embedding.linear_1.bias"])


def test_image_unet_alone_is_a_basic_network(models):
    image_unet, _, net, config, d = models
    basic = MultiFlowDiffuser(
        config.replace(data_streams=["image"], context_streams=["image"], stream_overrides={})
    ).double().eval()
    basic.load_state_dict(multiflow_state_from_diffusers(image_unet.state_dict()), strict=True)
    with torch.no_grad():
        expected = image_unet(d["image"], d["t"], encoder_hidden_states=d["c_image"], return_dict=False)[0]
        got = basic(d["image"], d["t"], data_stream="image", context_image=d["c_image"])
    assert rel(got, expected) <= 1e-6


def test_transformer_depth_equals_diffusers():
    """Two transformer blocks per context layer (diffusers transformer_layers_per_block=2; its flat text blocks
    ignore that setting outside the mid block, so only an image UNet is compared)."""
    image_unet = UNet2DConditionModel(**OTHER_IMAGE, transformer_layers_per_block=2).double().eval()
    randomize(image_unet, 4)
    config = MultiFlowConfig.from_dict(
        {**OTHER_CONFIG, "data_streams": ["image"], "context_streams": ["image"], "transformer_depth": 2,
         "stream_overrides": {}}
    )
    net = MultiFlowDiffuser(config).double().eval()
    net.load_state_dict(multiflow_state_from_diffusers(image_unet.state_dict()), strict=True)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 4, 8, 8, generator=gen, dtype=torch.float64)
    c = torch.randn(2, IMAGE_TOKENS, 24, generator=gen, dtype=torch.float64)
    t = torch.tensor([10.0, 990.0], dtype=torch.float64)
    with torch.no_grad():
        expected = image_unet(x, t, encoder_hidden_states=c, return_dict=False)[0]
        got = net(x, t, data_stream="image", context_image=c)
    assert rel(got, expected) <= 1e-6
    image_state, text_state = multiflow_state_to_diffusers(net.state_dict(), config)
    assert text_state is None and image_state.keys() == image_unet.state_dict().keys()
