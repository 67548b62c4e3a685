"""Convolutional encoder / decoder shared by the KL and VQ autoencoders (the LDM / taming architecture).

Module names follow diffusers' AutoencoderKL / VQModel layout (encoder.down_blocks.i.resnets.j...), so a
diffusers folder loads without renaming; original latent-diffusion names are mapped in versadiff.convert.ldm_vae.
Also here: the JSON config base and the config.json + model.safetensors I/O both autoencoders share.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, ClassVar

import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from versadiff.component import ComponentConfig

__all__ = ["AEConfig", "Encoder", "Decoder", "PretrainedMixin", "load_state_strict", "CONFIG_FILE", "WEIGHTS_FILE"]

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"


@dataclasses.dataclass
class AEConfig(ComponentConfig):
    """Base of the autoencoder configs (versadiff.component.ComponentConfig; `type_name` is the autoencoder type)."""

    @property
    def block_out_channels(self) -> tuple[int, ...]:
        return tuple(self.base_channels * m for m in self.channel_mult)  # type: ignore[attr-defined]


def _norm(ch: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, ch, eps=1e-6)


class ResnetBlock(nn.Module):
    """GroupNorm-SiLU-Conv twice, plus a 1x1 shortcut when the width changes."""

    def __init__(self, cin: int, cout: int, groups: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1, self.conv1 = _norm(cin, groups), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = _norm(cout, groups), nn.Conv2d(cout, cout, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.conv_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h


class SpatialSelfAttention(nn.Module):
    """Single-head self-attention over all H*W positions with a residual connection."""

    def __init__(self, ch: int, groups: int) -> None:
        super().__init__()
        self.group_norm = _norm(ch, groups)
        self.to_q, self.to_k, self.to_v = nn.Linear(ch, ch), nn.Linear(ch, ch), nn.Linear(ch, ch)
        self.to_out = nn.ModuleList([nn.Linear(ch, ch)])

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        y = self.group_norm(x).reshape(b, c, h * w).transpose(1, 2)
        q, k, v = self.to_q(y)[:, None], self.to_k(y)[:, None], self.to_v(y)[:, None]
        y = F.scaled_dot_product_attention(q, k, v)[:, 0]
        return x + self.to_out[0](y).transpose(1, 2).reshape(b, c, h, w)


class Downsample(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # asymmetric padding, as LDM / taming


class Upsample(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    def __init__(self, cin: int, cout: int, n: int, groups: int, dropout: float, resample: str | None) -> None:
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(cin if i == 0 else cout, cout, groups, dropout) for i in range(n)])
        if resample == "down":
            self.downsamplers = nn.ModuleList([Downsample(cout)])
        elif resample == "up":
            self.upsamplers = nn.ModuleList([Upsample(cout)])

    def forward(self, x: Tensor) -> Tensor:
        for r in self.resnets:
            x = r(x)
        for s in getattr(self, "downsamplers", getattr(self, "upsamplers", [])):
            x = s(x)
        return x


class MidBlock(nn.Module):
    def __init__(self, ch: int, groups: int, dropout: float, attention: bool) -> None:
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(ch, ch, groups, dropout), ResnetBlock(ch, ch, groups, dropout)])
        if attention:
            self.attentions = nn.ModuleList([SpatialSelfAttention(ch, groups)])

    def forward(self, x: Tensor) -> Tensor:
        x = self.resnets[0](x)
        if hasattr(self, "attentions"):
            x = self.attentions[0](x)
        return self.resnets[1](x)


class Encoder(nn.Module):
    """Image [B, in, H, W] -> [B, out, H/f, W/f] with f = 2^(levels - 1)."""

    def __init__(self, cin: int, cout: int, chans: tuple[int, ...], n_res: int, groups: int, dropout: float, attention: bool) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(cin, chans[0], 3, padding=1)
        prev, blocks = chans[0], []
        for i, ch in enumerate(chans):
            blocks.append(_Level(prev, ch, n_res, groups, dropout, "down" if i < len(chans) - 1 else None))
            prev = ch
        self.down_blocks = nn.ModuleList(blocks)
        self.mid_block = MidBlock(chans[-1], groups, dropout, attention)
        self.conv_norm_out = _norm(chans[-1], groups)
        self.conv_out = nn.Conv2d(chans[-1], cout, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for block in self.down_blocks:
            h = block(h)
        h = self.mid_block(h)
        return self.conv_out(F.silu(self.conv_norm_out(h)))


class Decoder(nn.Module):
    """Latent [B, in, h, w] -> image [B, out, h*f, w*f]; levels mirror the encoder (n_res + 1 resnets each)."""

    def __init__(self, cin: int, cout: int, chans: tuple[int, ...], n_res: int, groups: int, dropout: float, attention: bool) -> None:
        super().__init__()
        rev = tuple(reversed(chans))
        self.conv_in = nn.Conv2d(cin, rev[0], 3, padding=1)
        self.mid_block = MidBlock(rev[0], groups, dropout, attention)
        prev, blocks = rev[0], []
        for i, ch in enumerate(rev):
            blocks.append(_Level(prev, ch, n_res + 1, groups, dropout, "up" if i < len(rev) - 1 else None))
            prev = ch
        self.up_blocks = nn.ModuleList(blocks)
        self.conv_norm_out = _norm(rev[-1], groups)
        self.conv_out = nn.Conv2d(rev[-1], cout, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            h = block(h)
        return self.conv_out(F.silu(self.conv_norm_out(h)))


def load_state_strict(module: nn.Module, state: dict[str, Tensor], source: str) -> None:
    """load_state_dict with one-line errors naming the first offending keys and the source."""
    own = module.state_dict()
    unexpected = sorted(set(state) - set(own))
    missing = sorted(set(own) - set(state))
    if unexpected:
        raise ValueError(f"{source} has {len(unexpected)} unexpected key(s), e.g. {unexpected[:3]}; is it the right model/config?")
    if missing:
        raise ValueError(f"{source} lacks {len(missing)} key(s), e.g. {missing[:3]}; is it the right model/config?")
    for k, v in state.items():
        if v.shape != own[k].shape:
            raise ValueError(f"{source}: {k!r} has shape {tuple(v.shape)} but the model expects {tuple(own[k].shape)}; check the config")
    module.load_state_dict(state)


class PretrainedMixin:
    """config.json + model.safetensors save / load for modules with a `config` (AEConfig) and a `config_class`."""

    config_class: ClassVar[type[AEConfig]]
    config: AEConfig

    def save_pretrained(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG_FILE).write_text(json.dumps({"type": self.config.type_name, **self.config.to_dict()}, indent=2) + "\n")
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}  # type: ignore[attr-defined]
        save_file(state, str(directory / WEIGHTS_FILE), metadata={"format": "pt", "type": self.config.type_name})
        return directory

    @classmethod
    def load_pretrained(cls, directory: str | Path):
        directory = Path(directory)
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"{str(directory / name)!r} is missing; save the autoencoder with save_pretrained")
        model = cls(cls.config_class.from_dict(json.loads((directory / CONFIG_FILE).read_text())))  # type: ignore[call-arg]
        load_state_strict(model, load_file(str(directory / WEIGHTS_FILE)), str(directory / WEIGHTS_FILE))
        return model


def read_diffusers_folder(directory: str | Path, class_name: str) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(config dict, state dict) of a diffusers model folder: config.json + diffusion_pytorch_model.safetensors."""
    directory = Path(directory)
    cfg_path, w_path = directory / "config.json", directory / "diffusion_pytorch_model.safetensors"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{str(cfg_path)!r} is missing; pass a diffusers {class_name} folder (e.g. <model>/vae)")
    if not w_path.is_file():
        hint = " (only a pickled .bin is present: convert it to safetensors first)" if (directory / "diffusion_pytorch_model.bin").is_file() else ""
        raise FileNotFoundError(f"{str(w_path)!r} is missing{hint}")
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("_class_name", class_name) != class_name:
        raise ValueError(f"{str(cfg_path)!r} describes a {cfg['_class_name']}, not a {class_name}")
    state = load_file(str(w_path))
    # diffusers before 0.14 named the mid-block attention query/key/value/proj_attn
    old = {"query.": "to_q.", "key.": "to_k.", "value.": "to_v.", "proj_attn.": "to_out.0."}
    renamed = {}
    for k, v in state.items():
        for a, b in old.items():
            if ".attentions.0." + a in k:
                k = k.replace(".attentions.0." + a, ".attentions.0." + b)
        renamed[k] = v
    return cfg, renamed


def config_from_diffusers(cfg: dict[str, Any], class_name: str) -> dict[str, Any]:
    """Translate the diffusers encoder/decoder fields into ours, rejecting variants we do not implement."""
    boc = tuple(cfg.get("block_out_channels", (64,)))
    for key, want in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
        kinds = set(cfg.get(key, (want,)))
        if kinds != {want}:
            raise ValueError(f"{class_name} {key} {sorted(kinds)} not supported; only {want} blocks are implemented")
    if cfg.get("act_fn", "silu") != "silu":
        raise ValueError(f"{class_name} act_fn {cfg['act_fn']!r} not supported; only 'silu'")
    if any(c % boc[0] for c in boc):
        raise ValueError(f"block_out_channels {boc} are not multiples of the first entry; cannot express as channel_mult")
    return {
        "in_channels": cfg.get("in_channels", 3),
        "out_channels": cfg.get("out_channels", 3),
        "base_channels": boc[0],
        "channel_mult": tuple(c // boc[0] for c in boc),
        "num_res_blocks": cfg.get("layers_per_block", 1),
        "norm_groups": cfg.get("norm_num_groups", 32),
        "mid_attention": cfg.get("mid_block_add_attention", True),
    }
