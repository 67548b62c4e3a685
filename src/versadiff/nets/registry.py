"""Named network presets, building from names/dicts/configs, and config.json + safetensors files.

Preset sources: VDPM configs (tqch/v-diffusion-torch configs/*.json, reference
samplers_schedules.md §1.6) and U-ViT configs (baofff/U-ViT configs/*.py, reference
uvit_unidiffuser.md §1.6). Every preset is a function `(**overrides) -> config`.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from versadiff.component import Registry
from versadiff.nets.layers import NetConfig
from versadiff.nets.multiflow import MULTIFLOW_PRESETS, MultiFlowDiffuser
from versadiff.nets.unet import UNet, UNetConfig
from versadiff.nets.uvit import UViT, UViTConfig
from versadiff.nets.vq_transformer import VQ_PRESETS, VQTransformer

__all__ = [
    "PRESETS",
    "NETS",
    "build_net",
    "config_from",
    "config_to_dict",
    "save_pretrained",
    "load_pretrained",
    "count_parameters",
]

#: every network type, by its config's type_name (plug-ins register more)
NETS: Registry[nn.Module] = Registry("network")
for _net in (UNet, UViT, VQTransformer, MultiFlowDiffuser):
    NETS.register(_net)

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"


def _preset(cls: type[NetConfig], **base: Any) -> Callable[..., NetConfig]:
    def make(**overrides: Any) -> NetConfig:
        return cls.from_dict({**base, **overrides})

    return make


_vdpm = partial(_preset, UNetConfig)
_uvit = partial(_preset, UViTConfig)

PRESETS: dict[str, Callable[..., NetConfig]] = {
    # VDPM cifar10_cond.json: 10 classes + null row (VDPM's one-hot Linear(10, 1024) has the same 11x1024
    # parameters); v-prediction, so out_channels = in_channels. 60.8M parameters.
    "vdpm_cifar10": _vdpm(
        image_size=32, base_channels=256, channel_mult=(1, 1, 1), num_res_blocks=3, attention_resolutions=(16, 8),
        emb_channels=1024, num_heads=1, dropout=0.2, num_classes=10,
    ),
    # VDPM celeba.json: 64x64, 40 CelebA attributes as multi-hot tags, "both" output (2C channels). 301M.
    "vdpm_celeba": _vdpm(
        image_size=64, base_channels=192, channel_mult=(1, 2, 3, 4), num_res_blocks=3,
        attention_resolutions=(32, 16, 8), emb_channels=768, head_channels=64, dropout=0.1, num_tags=40,
        out_channels=6,
    ),
    # (VDPM publishes no MNIST config, so there is no vdpm_mnist preset.)
    # CPU-sized: 32x32 RGB, ~2.3M parameters; pass num_classes=... for class conditioning.
    "unet_tiny": _vdpm(
        image_size=32, base_channels=32, channel_mult=(1, 2, 2), num_res_blocks=2, attention_resolutions=(16,),
        emb_channels=128, num_heads=2, dropout=0.0,
    ),
    # 28x28 grey (MNIST-like): two downsamples 28 -> 14 -> 7, since 28 is not divisible by 8.
    "unet_tiny_gray": _vdpm(
        image_size=28, in_channels=1, base_channels=32, channel_mult=(1, 2, 2), num_res_blocks=2,
        attention_resolutions=(14,), emb_channels=128, num_heads=2, dropout=0.0,
    ),
    # U-ViT, paper configs (names: size/patch). Pixel models unconditional as published.
    "uvit_s2": _uvit(image_size=32, patch_size=2, embed_dim=512, depth=12, num_heads=8),  # CIFAR-10, 44.3M
    "uvit_s4": _uvit(image_size=64, patch_size=4, embed_dim=512, depth=12, num_heads=8),  # CelebA 64, 44.3M
    "uvit_m4": _uvit(image_size=64, patch_size=4, embed_dim=768, depth=16, num_heads=12, num_classes=1000),  # IN64
    "uvit_l4": _uvit(image_size=64, patch_size=4, embed_dim=1024, depth=20, num_heads=16, num_classes=1000),  # IN64
    # ImageNet-256 latents (SD-VAE 32x32x4), class token with null row for CFG
    "uvit_l2": _uvit(
        image_size=32, in_channels=4, patch_size=2, embed_dim=1024, depth=20, num_heads=16, num_classes=1000
    ),
    "uvit_h2": _uvit(
        image_size=32, in_channels=4, patch_size=2, embed_dim=1152, depth=28, num_heads=16, num_classes=1000,
        conv_head=False,
    ),
    # ImageNet-512 latents (64x64x4)
    "uvit_h4": _uvit(
        image_size=64, in_channels=4, patch_size=4, embed_dim=1152, depth=28, num_heads=16, num_classes=1000,
        conv_head=False,
    ),
    # MS-COCO text-to-image on 32x32x4 latents with 77 CLIP ViT-L/14 tokens (768-d)
    "uvit_s2_coco": _uvit(
        image_size=32, in_channels=4, patch_size=2, embed_dim=512, depth=12, num_heads=8, context_dim=768,
        num_context_tokens=77,
    ),
    "uvit_s2_deep_coco": _uvit(
        image_size=32, in_channels=4, patch_size=2, embed_dim=512, depth=16, num_heads=8, context_dim=768,
        num_context_tokens=77,
    ),
    # CPU-sized: 32x32 RGB, patch 4, D 128, 7 blocks (~1.5M parameters)
    "uvit_tiny": _uvit(image_size=32, patch_size=4, embed_dim=128, depth=6, num_heads=4),
}
# VQ-Diffusion transformers (token inputs; versadiff.nets.vq_transformer): vq_diffusion_s/b/f/imagenet/ffhq, vq_tiny
PRESETS.update(VQ_PRESETS)
# Versatile Diffusion multi-flow diffusers (versadiff.nets.multiflow): vd_four_flow/dc/basic (full size), vd_tiny, vd_shapes
PRESETS.update(MULTIFLOW_PRESETS)


def config_to_dict(config: NetConfig) -> dict[str, Any]:
    """The config as a dict with its "type" tag, the form `build_net` and config.json use."""
    return config.to_spec()


def config_from(spec: str | dict[str, Any] | NetConfig, **overrides: Any) -> NetConfig:
    """Resolve a preset name, a dict ({"type": ...} or {"preset": ...}) or a config, plus overrides."""
    if isinstance(spec, NetConfig):
        return spec.replace(**overrides) if overrides else spec
    if isinstance(spec, str):
        if spec not in PRESETS:
            raise ValueError(f"unknown network preset {spec!r}; choose one of {', '.join(sorted(PRESETS))}")
        return PRESETS[spec](**overrides)
    if isinstance(spec, dict):
        d = {**spec, **overrides}
        if "preset" in d:
            if "type" in d:
                raise ValueError("network dict has both 'preset' and 'type'; give one of them")
            return config_from(d.pop("preset"), **d)
        kind = d.get("type")
        if kind not in NETS:
            raise ValueError(f"network dict needs 'type' in {NETS.names()} or a 'preset' name, got type={kind!r}")
        return NETS.config_of(d)
    raise ValueError(f"cannot build a network from {type(spec).__name__}; pass a preset name, dict or config")


def build_net(name_or_config: str | dict[str, Any] | NetConfig, **overrides: Any) -> nn.Module:
    """Build a network from a preset name, a dict or a config object (fields overridable by keyword)."""
    config = config_from(name_or_config, **overrides)
    return NETS.build(config)


def count_parameters(config: str | dict[str, Any] | NetConfig) -> int:
    """Number of parameters, counted on the meta device (no memory is allocated)."""
    with torch.device("meta"):
        net = build_net(config)
    return sum(p.numel() for p in net.parameters())


def save_pretrained(net: nn.Module, directory: str | Path) -> Path:
    """Write `config.json` and `model.safetensors` for a network built by this package."""
    config = getattr(net, "config", None)
    if not isinstance(config, NetConfig):
        raise ValueError(f"{type(net).__name__} has no versadiff network config; build it with build_net")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG_FILE).write_text(json.dumps(config_to_dict(config), indent=2) + "\n")
    state = {k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE), metadata={"format": "pt", "type": config.type_name})
    return directory


def load_pretrained(
    directory: str | Path, device: str | torch.device | None = None, dtype: torch.dtype | None = None
) -> nn.Module:
    """Rebuild a network saved by `save_pretrained` (weights via safetensors, never pickle)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"network directory {str(directory)!r} does not exist")
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{str(directory / name)!r} is missing; save the network with save_pretrained")
    try:
        spec = json.loads((directory / CONFIG_FILE).read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{str(directory / CONFIG_FILE)!r} is not valid JSON ({err})") from None
    config = config_from(spec)
    with torch.device("meta"):
        net = NETS.build(config)
    state = load_file(str(directory / WEIGHTS_FILE))
    expected = {k: v.shape for k, v in net.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in expected.keys() & state.keys() if tuple(state[k].shape) != tuple(expected[k]))
    if missing or unexpected or wrong:
        detail = "; ".join(
            f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
            if keys
        )
        raise ValueError(f"weights in {str(directory)!r} do not match config.json ({detail})")
    net.load_state_dict(state, assign=True)
    return net.to(device=device, dtype=dtype)
