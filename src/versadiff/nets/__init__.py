"""Denoising networks: ADM/VDPM UNet, U-ViT, the VQ transformer and VD's multi-flow diffuser, with presets and
config.json + safetensors I/O.

Single-stream networks have forward(x [B,C,H,W], t [B] net_time, class_labels=None, context=None); the VQ
transformer takes token indices x [B, L] and returns logits over its codes; the multi-flow diffuser takes
forward(x, t, data_stream=..., context_<stream>=...) and says how through flow_condition().
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
from versadiff.nets.multiflow import MULTIFLOW_PRESETS, MultiFlowConfig, MultiFlowDiffuser
from versadiff.nets.unet import UNet, UNetConfig
from versadiff.nets.uvit import UViT, UViTConfig
from versadiff.nets.vq_transformer import VQ_PRESETS, VQTransformer, VQTransformerConfig, vq_transformer

__all__ = [
    "MULTIFLOW_PRESETS",
    "MultiFlowConfig",
    "MultiFlowDiffuser",
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
