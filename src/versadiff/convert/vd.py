"""Versatile Diffusion diffuser weights <-> `MultiFlowDiffuser` state dicts.

Layouts (reference versatile_diffusion.md §6.2, vd/README.md "Checkpoint layouts"):
  ours = VD v1.0: {image,text}.{time_embed, data_blocks.N.0, context_blocks.K.0}.*; v1.0 files add "diffuser.".
  v0 / vd-official: model.diffusion_model.{time_embed, unet_image.*, unet_text.*} with LDM module names
      input_blocks.k.j, middle_block.j, output_blocks.k.j, out. v1's indices are these modules enumerated in
      forward order, data layers and SpatialTransformers counted separately; names inside a module are unchanged.
  diffusers: `image_unet` (UNet2DConditionModel) and `text_unet` (UNetFlatConditionModel) state dicts, each with
      its own copy of the one time embedding; VD's converter renames ResBlock layers and keeps transformer names.
Reading v0 and diffusers files is structural (no config is needed: modules are enumerated in forward order);
writing them walks a config's slot order.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from pathlib import Path
from typing import Mapping, NamedTuple

import torch
from torch import Tensor

from versadiff.convert.ldm_vae import read_state_dict
from versadiff.nets.multiflow import DATA_STREAM_KINDS, MultiFlowConfig, Slot

__all__ = [
    "Converted",
    "multiflow_state_from_vd",
    "multiflow_state_from_v1",
    "multiflow_state_from_v0",
    "multiflow_state_from_diffusers",
    "multiflow_state_to_v1",
    "multiflow_state_to_v0",
    "multiflow_state_to_diffusers",
    "v0_module_names",
]

V1_PREFIX = "diffuser."
V0_PREFIX = "model.diffusion_model."
V0_UNETS = {"image": "unet_image", "text": "unet_text"}
# diffusers ResnetBlock2D / ResnetBlockFlat names -> LDM ResBlock names (VD's diffusers converter, inverted)
_RES_TO_LDM = {
    "norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0",
    "conv2": "out_layers.3", "conv_shortcut": "skip_connection",
}
_RES_TO_DIFFUSERS = {v: k for k, v in _RES_TO_LDM.items()}
_TIME_TO_DIFFUSERS = {"0": "time_embedding.linear_1", "2": "time_embedding.linear_2"}


class Converted(NamedTuple):
    """A converted state dict and the source keys that were not used (VAEs, CLIP, schedule buffers, ...)."""

    state: dict[str, Tensor]
    ignored: list[str]

    def ignored_prefixes(self) -> dict[str, int]:
        """Counts of the ignored keys by their first name component, e.g. {"autokl": 130, "optimus": 401}."""
        return dict(Counter(k.split(".", 1)[0] for k in self.ignored))


# ------------------------------------------------------------------------------------------- the index rule


@dataclasses.dataclass(frozen=True)
class _Place:
    """Where one v1 block lives in the other layouts."""

    kind: str  # "data" | "context"
    index: int  # position in data_blocks / context_blocks
    op: str  # data: in / res / down / up / out; context: "" (a SpatialTransformer)
    v0: str  # LDM module path, e.g. input_blocks.4.1
    diffusers: str  # diffusers module path, e.g. down_blocks.1.attentions.0 ("" for the head, which splits)


def _places(slots: tuple[Slot, ...]) -> list[_Place]:
    """Walk the slot order the way LDM builds its UNet: a push closes an input block, the middle block runs from the
    last push to the first pop, each pop opens an output block, and the final data slot is `out`."""
    last_push = max(i for i, s in enumerate(slots) if s.kind == "push")
    places: list[_Place] = []
    stage, block, j = "input", 0, 0  # LDM: block index within the stage, module index within the block
    level, res = 0, 0  # diffusers: down/up block index, resnet index within it
    counts = {"data": 0, "context": 0}
    for i, s in enumerate(slots):
        if s.kind == "push":
            block, j = block + 1, 0
            if i == last_push:
                stage, j, res = "middle", 0, 0
            continue
        if s.kind == "pop":
            if stage != "output":
                stage, block, level, res = "output", -1, 0, 0
            block, j = block + 1, 0
            continue
        if s.kind == "data" and s.op == "out":
            v0, dif = "out", ""
        else:
            v0 = {"input": f"input_blocks.{block}.{j}", "middle": f"middle_block.{j}",
                  "output": f"output_blocks.{block}.{j}"}[stage]
            outer = {"input": f"down_blocks.{level}", "middle": "mid_block", "output": f"up_blocks.{level}"}[stage]
            if s.kind == "context":
                dif = f"{outer}.attentions.{res - 1}"  # the transformer follows its level's last ResBlock
            elif s.op == "in":
                dif = "conv_in"
            elif s.op == "res":
                dif, res = f"{outer}.resnets.{res}", res + 1
            else:  # down / up: closes the diffusers block
                dif = f"{outer}.{'downsamplers' if s.op == 'down' else 'upsamplers'}.0"
                level, res = level + 1, 0
        places.append(_Place(s.kind, counts[s.kind], s.op, v0, dif))
        counts[s.kind] += 1
        j += 1
    return places


def v0_module_names(config: MultiFlowConfig) -> dict[str, list[str]]:
    """v1 index -> v0 (LDM) module name: {"data_blocks": [...], "context_blocks": [...]} (the same for every stream)."""
    places = _places(config.layout(config.modalities[0]).slots())
    return {
        "data_blocks": [p.v0 for p in places if p.kind == "data"],
        "context_blocks": [p.v0 for p in places if p.kind == "context"],
    }


# --------------------------------------------------------------------------------------------- v1.0 layout


def multiflow_state_from_v1(state: Mapping[str, Tensor]) -> Converted:
    """VD v1.0 (`diffuser.*`) -> ours: strip the prefix; other keys (autokl, optimus, clip, buffers) are ignored."""
    out = {k[len(V1_PREFIX):]: v for k, v in state.items() if k.startswith(V1_PREFIX)}
    if not out:
        raise ValueError(f"no key starts with {V1_PREFIX!r}; this is not a VD v1.0 diffuser checkpoint")
    return Converted(out, sorted(k for k in state if not k.startswith(V1_PREFIX)))


def multiflow_state_to_v1(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Ours -> VD v1.0 diffuser keys (`diffuser.` prefix)."""
    return {V1_PREFIX + k: v for k, v in state.items()}


# ----------------------------------------------------------------------------------------------- v0 layout

_V0_MODULE = re.compile(r"(input_blocks\.(\d+)\.(\d+)|middle_block\.(\d+)|output_blocks\.(\d+)\.(\d+)|out)\.(.+)")


def _v0_order(m: re.Match) -> tuple[int, int, int]:
    if m.group(2) is not None:
        return (0, int(m.group(2)), int(m.group(3)))
    if m.group(4) is not None:
        return (1, int(m.group(4)), 0)
    if m.group(5) is not None:
        return (2, int(m.group(5)), int(m.group(6)))
    return (3, 0, 0)


def _enumerate_modules(
    modality: str, entries: list[tuple[tuple, str, str, bool, Tensor]]
) -> dict[str, Tensor]:
    """entries: (forward order, module id, name inside the module, is_transformer, value) -> our keys.
    v1's rule: data modules and transformers, each counted in forward order."""
    modules = sorted({(order, mod) for order, mod, *_ in entries})
    context = {mod for _, mod, _, is_ctx, _ in entries if is_ctx}
    index, counts = {}, {"data": 0, "context": 0}
    for _, mod in modules:
        kind = "context" if mod in context else "data"
        index[mod] = f"{modality}.{kind}_blocks.{counts[kind]}.0"
        counts[kind] += 1
    return {f"{index[mod]}.{rest}": v for _, mod, rest, _, v in entries}


def multiflow_state_from_v0(state: Mapping[str, Tensor], *, ema: bool = False) -> Converted:
    """VD v0 / vd-official (`model.diffusion_model.{time_embed, unet_image, unet_text}`) -> ours.

    ema=True takes the weights from LitEma's `model_ema.*` buffers (names without dots), which VD's diffusers
    converter fails to do; other keys (autokl, optimus, clip, schedule buffers) are ignored and reported.
    """
    keys = [k for k in state if k.startswith(V0_PREFIX)]
    if not keys:
        raise ValueError(f"no key starts with {V0_PREFIX!r}; this is not a VD v0 / vd-official checkpoint")
    known = tuple(f"{V0_PREFIX}{p}." for p in ("time_embed", *V0_UNETS.values()))
    unknown = [k for k in keys if not k.startswith(known)]
    if unknown:
        more = " ..." if len(unknown) > 3 else ""
        raise ValueError(f"unexpected VD v0 diffuser keys: {', '.join(unknown[:3])}{more}")
    source = {k: "model_ema." + _ema_name(k) for k in keys} if ema else {k: k for k in keys}
    if ema:
        _check_ema(state, keys)
    out: dict[str, Tensor] = {}
    for modality, unet in V0_UNETS.items():
        prefix = f"{V0_PREFIX}{unet}."
        entries = []
        for k in (k for k in keys if k.startswith(prefix)):
            m = _V0_MODULE.fullmatch(k[len(prefix):])
            if m is None:
                raise ValueError(f"unexpected key {k!r} in a VD v0 {unet}")
            rest = m.group(7)
            entries.append((_v0_order(m), m.group(1), rest, rest.startswith("transformer_blocks."), state[source[k]]))
        out.update(_enumerate_modules(modality, entries))
    for k in (k for k in keys if k.startswith(known[0])):
        out["image." + k[len(V0_PREFIX):]] = state[source[k]]  # the shared global layer (v0 moved it out of unet_image)
    used = set(source.values())
    return Converted(out, sorted(k for k in state if k not in used))


def _ema_name(key: str) -> str:
    # LitEma registers each parameter of the DDPM's `model` as a buffer named without dots
    return key[len("model."):].replace(".", "")


def _check_ema(state: Mapping[str, Tensor], keys: list[str]) -> None:
    names = Counter(_ema_name(k) for k in keys)
    clashes = [n for n, c in names.items() if c > 1]
    if clashes:
        raise ValueError(f"EMA names are ambiguous once dots are removed: {clashes[:3]}")
    missing = [k for k in keys if "model_ema." + _ema_name(k) not in state]
    if missing:
        raise ValueError(
            f"ema=True but the checkpoint has no model_ema weights for {len(missing)} keys (e.g. {missing[0]!r})"
        )


def multiflow_state_to_v0(state: Mapping[str, Tensor], config: MultiFlowConfig) -> dict[str, Tensor]:
    """Ours -> VD v0 / vd-official diffuser keys (`model.diffusion_model.*`), by the config's slot order."""
    places = {(p.kind, p.index): p for p in _places(config.layout(config.modalities[0]).slots())}
    out = {}
    for key, v in state.items():
        modality, part, rest = key.split(".", 2)
        if part == "time_embed":
            out[f"{V0_PREFIX}time_embed.{rest}"] = v
            continue
        if modality not in V0_UNETS:
            raise ValueError(f"the v0 layout has no place for modality {modality!r} ({key})")
        index, zero, inner = rest.split(".", 2)
        place = places[(part.removesuffix("_blocks"), int(index))]
        out[f"{V0_PREFIX}{V0_UNETS[modality]}.{place.v0}.{inner}"] = v
    return out


# ------------------------------------------------------------------------------------------ diffusers layout

_DIFFUSERS_MODULE = re.compile(
    r"(conv_in|conv_norm_out|conv_out|time_embedding\.linear_[12]"
    r"|(down|up)_blocks\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)"
    r"|mid_block\.(resnets|attentions)\.(\d+))\.(.+)"
)


def _diffusers_entry(m: re.Match) -> tuple[tuple[int, ...], str, str, bool]:
    """(forward order, module id, name inside the module in LDM terms, is_transformer) of one diffusers key."""
    head, rest = m.group(1), m.group(8)
    if head == "conv_in":
        return (0, 0, 0, 0), head, rest, False
    if head in ("conv_norm_out", "conv_out"):  # the head: GN at index 0, the last layer at index 2
        return (4, 0, 0, 0), "out", f"{'0' if head == 'conv_norm_out' else '2'}.{rest}", False
    if m.group(2):  # down_blocks / up_blocks
        stage, b, sub, j = {"down": 1, "up": 3}[m.group(2)], int(m.group(3)), m.group(4), int(m.group(5))
    else:  # mid_block: resnets.0, attentions.0, resnets.1
        stage, b, sub, j = 2, 0, m.group(6), int(m.group(7))
    if sub == "resnets":
        first, _, tail = rest.partition(".")
        rest = f"{_RES_TO_LDM[first]}.{tail}"
    elif sub == "downsamplers" and rest.startswith("conv."):
        rest = "op." + rest[len("conv."):]  # LDM names the image downsampler's conv `op`
    if sub in ("downsamplers", "upsamplers"):
        return (stage, b, 1 << 30, 0), head, rest, False  # after the block's resnets and attentions
    if stage == 2:
        return (stage, j, int(sub == "attentions"), 0), head, rest, sub == "attentions"
    return (stage, b, j, int(sub == "attentions")), head, rest, sub == "attentions"


def _from_diffusers_unet(modality: str, state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """One diffusers UNet -> (our keys of this modality, its time embedding in our names)."""
    entries, time = [], {}
    for key, v in state.items():
        m = _DIFFUSERS_MODULE.fullmatch(key)
        if m is None:
            raise ValueError(f"unexpected key {key!r} in a diffusers VD {modality} UNet")
        if m.group(1).startswith("time_embedding"):
            time[f"{'0' if m.group(1).endswith('1') else '2'}.{m.group(8)}"] = v
        else:
            entries.append((*_diffusers_entry(m), v))
    return _enumerate_modules(modality, entries), time


def multiflow_state_from_diffusers(
    image_unet_state: Mapping[str, Tensor],
    text_unet_state: Mapping[str, Tensor] | None = None,
    *,
    check_time_embedding: bool = True,
) -> dict[str, Tensor]:
    """diffusers' VD pair -> ours. Without `text_unet_state`, only the image modality (a vd_basic network).

    VD has one time embedding; diffusers copies it into both UNets. The image UNet's copy is used, and a text UNet
    whose copy differs raises (check_time_embedding=False uses the image copy anyway).
    """
    out, time = _from_diffusers_unet("image", image_unet_state)
    out.update({f"image.time_embed.{k}": v for k, v in time.items()})
    if text_unet_state is not None:
        text, text_time = _from_diffusers_unet("text", text_unet_state)
        if check_time_embedding and (
            text_time.keys() != time.keys() or any(not torch.equal(text_time[k], time[k]) for k in time)
        ):
            raise ValueError(
                "text_unet's time_embedding differs from image_unet's, but VD shares one time embedding "
                "(diffusers stores two copies); pass check_time_embedding=False to use image_unet's"
            )
        out.update(text)
    return out


def multiflow_state_to_diffusers(
    state: Mapping[str, Tensor], config: MultiFlowConfig
) -> tuple[dict[str, Tensor], dict[str, Tensor] | None]:
    """Ours -> (image_unet state, text_unet state or None), by the config's slot order.

    diffusers keeps a modality's context transformers inside that modality's UNet, so every exported modality needs
    both streams; the time embedding is copied into each UNet (as VD's diffusers converter does).
    """
    places = {(p.kind, p.index): p for p in _places(config.layout(config.modalities[0]).slots())}
    for name in config.modalities:
        if name not in V0_UNETS or (name in config.data_streams) != (name in config.context_streams):
            raise ValueError(
                f"diffusers' VD layout has no place for modality {name!r}: each UNet holds one modality's data "
                "stream together with its context stream (image and text only)"
            )
    unets: dict[str, dict[str, Tensor]] = {name: {} for name in config.data_streams}
    time = {}
    for key, v in state.items():
        modality, part, rest = key.split(".", 2)
        if part == "time_embed":
            layer, _, p = rest.partition(".")
            time[f"{_TIME_TO_DIFFUSERS[layer]}.{p}"] = v
            continue
        index, _, inner = rest.split(".", 2)
        place = places[(part.removesuffix("_blocks"), int(index))]
        spatial = DATA_STREAM_KINDS[modality] == "spatial"
        if place.kind == "context":
            name = f"{place.diffusers}.{inner}"
        elif place.op == "out":
            layer, _, p = inner.partition(".")
            name = f"{'conv_norm_out' if layer == '0' else 'conv_out'}.{p}"
        elif place.op == "res":
            ldm = next(n for n in _RES_TO_DIFFUSERS if inner.startswith(n + "."))
            name = f"{place.diffusers}.{_RES_TO_DIFFUSERS[ldm]}{inner[len(ldm):]}"
        elif place.op == "down" and spatial:
            name = f"{place.diffusers}.conv.{inner.removeprefix('op.')}"
        else:  # conv_in, image upsampler (`conv.*`), text resamplers (plain Linear)
            name = f"{place.diffusers}.{inner}"
        unets[modality][name] = v
    for unet in unets.values():
        unet.update(time)
    return unets["image"] if "image" in unets else None, unets.get("text")


# --------------------------------------------------------------------------------------------- any VD file


def multiflow_state_from_vd(source: str | Path | Mapping[str, Tensor], *, ema: bool = False) -> Converted:
    """Read a VD diffuser from a dict or a .pth/.ckpt (torch.load weights_only=True) / .safetensors file, in the v1.0
    (`diffuser.*`), v0 (`model.diffusion_model.*`) or our own layout."""
    state = read_state_dict(dict(source) if isinstance(source, Mapping) else source)
    if any(k.startswith(V1_PREFIX) for k in state):
        if ema:
            raise ValueError("VD v1.0 checkpoints hold one set of diffuser weights; ema=True applies to v0 files only")
        return multiflow_state_from_v1(state)
    if any(k.startswith(V0_PREFIX) for k in state):
        return multiflow_state_from_v0(state, ema=ema)
    if any(k.startswith(("image.", "text.")) for k in state):
        ours = ("image.", "text.")
        return Converted({k: v for k, v in state.items() if k.startswith(ours)},
                         sorted(k for k in state if not k.startswith(ours)))
    raise ValueError(
        f"not a VD diffuser checkpoint: no key starts with {V1_PREFIX!r} (v1.0), {V0_PREFIX!r} (v0) or 'image.'"
    )
