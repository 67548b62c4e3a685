"""Denoising networks: ADM/VDPM UNet and U-ViT, with presets and config.json + safetensors I/O.

Every network has forward(x [B,C,H,W], t [B] net_time, class_labels=None, context=None); the VQ transformer
takes token indices x [B, L] instead and returns logits over its codes.
"""

from versadiff.nets.layers import timestep_embedding
from versadiff.nets.registry import (
    NETS,
    PRESETS,
    build_net,
    config_from,
    config_to_dict,
    count_parameters,
    load_pretrained,
    save_pretrained,
)
from versadiff.nets.unet import UNet, UNetConfig
from versadiff.nets.uvit import UViT, UViTConfig
from versadiff.nets.vq_transformer import VQ_PRESETS, VQTransformer, VQTransformerConfig, vq_transformer

__all__ = [
    "NETS",
    "PRESETS",
    "UNet",
    "UNetConfig",
    "UViT",
    "UViTConfig",
    "VQ_PRESETS",
    "VQTransformer",
    "VQTransformerConfig",
    "build_net",
    "config_from",
    "config_to_dict",
    "count_parameters",
    "load_pretrained",
    "save_pretrained",
    "timestep_embedding",
    "vq_transformer",
]
