"""Original latent-diffusion / taming autoencoder keys <-> versadiff (diffusers-style) keys.

LDM names: encoder.down.{i}.block.{j}.*, encoder.down.{i}.downsample.conv, {encoder,decoder}.mid.{block_1,attn_1,
block_2}, attention q/k/v/proj_out as 1x1 convolutions, norm_out, nin_shortcut, decoder.up.{i} indexed by
resolution level (so decoder.up.{n-1} runs first). versadiff: encoder.down_blocks.{i}.resnets.{j}.*, ...,
decoder.up_blocks.{n-1-i} and Linear attention weights. quant_conv, post_quant_conv, quantize.embedding, conv_in,
conv_out keep their names.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor

__all__ = ["ldm_to_versadiff", "versadiff_to_ldm", "read_state_dict"]

_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "nin_shortcut": "conv_shortcut"}


def _rename_ldm(key: str, levels: int) -> str:
    if m := re.fullmatch(r"(encoder|decoder)\.mid\.block_([12])\.(\w+)\.(weight|bias)", key):
        part, n, layer, p = m.groups()
        return f"{part}.mid_block.resnets.{int(n) - 1}.{_RESNET[layer]}.{p}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid\.attn_1\.(\w+)\.(weight|bias)", key):
        part, layer, p = m.groups()
        return f"{part}.mid_block.attentions.0.{_ATTN[layer]}.{p}"
    if m := re.fullmatch(r"encoder\.down\.(\d+)\.block\.(\d+)\.(\w+)\.(weight|bias)", key):
        i, j, layer, p = m.groups()
        return f"encoder.down_blocks.{i}.resnets.{j}.{_RESNET[layer]}.{p}"
    if m := re.fullmatch(r"encoder\.down\.(\d+)\.downsample\.conv\.(weight|bias)", key):
        return f"encoder.down_blocks.{m.group(1)}.downsamplers.0.conv.{m.group(2)}"
    if m := re.fullmatch(r"decoder\.up\.(\d+)\.block\.(\d+)\.(\w+)\.(weight|bias)", key):
        i, j, layer, p = m.groups()
        return f"decoder.up_blocks.{levels - 1 - int(i)}.resnets.{j}.{_RESNET[layer]}.{p}"
    if m := re.fullmatch(r"decoder\.up\.(\d+)\.upsample\.conv\.(weight|bias)", key):
        return f"decoder.up_blocks.{levels - 1 - int(m.group(1))}.upsamplers.0.conv.{m.group(2)}"
    if m := re.fullmatch(r"(encoder|decoder)\.norm_out\.(weight|bias)", key):
        return f"{m.group(1)}.conv_norm_out.{m.group(2)}"
    return key  # conv_in, conv_out, quant_conv, post_quant_conv, quantize.*: same names


def ldm_to_versadiff(state: dict[str, Tensor], levels: int) -> dict[str, Tensor]:
    """Rename an LDM autoencoder state dict; `levels` = len(channel_mult). 1x1-conv attention weights become Linear."""
    out = {}
    for k, v in state.items():
        nk = _rename_ldm(k, levels)
        if ".attentions.0.to_" in nk and nk.endswith("weight") and v.ndim == 4:
            v = v[:, :, 0, 0]
        out[nk] = v
    return out


def versadiff_to_ldm(state: dict[str, Tensor], levels: int) -> dict[str, Tensor]:
    """Inverse of ldm_to_versadiff (attention weights back to [C, C, 1, 1])."""
    inv_attn = {v: k for k, v in _ATTN.items()}
    inv_res = {v: k for k, v in _RESNET.items()}
    out = {}
    for k, v in state.items():
        nk = k
        if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.([01])\.(\w+)\.(weight|bias)", k):
            nk = f"{m.group(1)}.mid.block_{int(m.group(2)) + 1}.{inv_res[m.group(3)]}.{m.group(4)}"
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(\w+(?:\.0)?)\.(weight|bias)", k):
            nk = f"{m.group(1)}.mid.attn_1.{inv_attn[m.group(2)]}.{m.group(3)}"
            if m.group(2) != "group_norm" and m.group(3) == "weight":
                v = v[:, :, None, None]
        elif m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.(weight|bias)", k):
            nk = f"encoder.down.{m.group(1)}.block.{m.group(2)}.{inv_res[m.group(3)]}.{m.group(4)}"
        elif m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(weight|bias)", k):
            nk = f"encoder.down.{m.group(1)}.downsample.conv.{m.group(2)}"
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.(weight|bias)", k):
            nk = f"decoder.up.{levels - 1 - int(m.group(1))}.block.{m.group(2)}.{inv_res[m.group(3)]}.{m.group(4)}"
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(weight|bias)", k):
            nk = f"decoder.up.{levels - 1 - int(m.group(1))}.upsample.conv.{m.group(2)}"
        elif m := re.fullmatch(r"(encoder|decoder)\.conv_norm_out\.(weight|bias)", k):
            nk = f"{m.group(1)}.norm_out.{m.group(2)}"
        out[nk] = v
    return out


def read_state_dict(source: str | Path | dict[str, Tensor], prefix: str = "") -> dict[str, Tensor]:
    """A state dict from memory, a .safetensors file, or a .ckpt/.pth (torch.load weights_only=True).

    A top-level "state_dict" entry (Lightning checkpoints) is unwrapped; `prefix` is stripped and only keys
    carrying it are kept when it is given; "loss." keys (training-only discriminator/LPIPS) are dropped.
    """
    if isinstance(source, dict):
        state = source
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    if "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if prefix:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if not state:
            raise ValueError(f"no key starts with prefix {prefix!r}; check the prefix (e.g. 'first_stage_model.')")
    return {k: v for k, v in state.items() if not k.startswith("loss.") and torch.is_tensor(v)}
