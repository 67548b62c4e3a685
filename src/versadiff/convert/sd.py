"""Stable Diffusion 1.x -> versadiff: the UNet as a multi-flow image stream (VD-basic starts from SD), its KL VAE.

Layouts (CompVis/stable-diffusion `ldm/models/diffusion/ddpm.py` LatentDiffusion + `openaimodel.py` UNetModel;
diffusers `loaders/single_file_utils.py` convert_ldm_unet_checkpoint, which the tests use as the independent
reference):
  original (`sd-v1-4.ckpt`, `sd-v1-4-full-ema.ckpt`, VD's `sd-v1-4.pth`): {"state_dict": ...} or a flat dict with
      model.diffusion_model.{time_embed, input_blocks, middle_block, output_blocks, out}.* (LDM names),
      first_stage_model.* (the KL VAE), cond_stage_model.transformer.* (CLIP ViT-L/14 text, HF names), DDPM
      buffers, and model_ema.* (LitEma: `model_ema.diffusion_model<name without dots>`) in full-EMA files --
      taken by default.
  diffusers: unet/ (UNet2DConditionModel), vae/, text_encoder/ (CLIPTextModel), tokenizer/, scheduler/; or a
      bare UNet2DConditionModel folder.
SD-1's UNet is VD's image stream exactly (859,520,964 parameters): ResBlocks are the image data stream, the
16 SpatialTransformers the context stream of its condition -- "text" (text-to-image, the default) or "image"
(option context=image: VD-basic's image-variation start). SD-2 (linear projections, per-level head widths,
1024-d contexts) is not SD-1's layout and is refused.
Not converted: SD's text encoder. Its context is CLIPTextModel's last_hidden_state (no projection, no
normalisation), which versadiff's clip_text encoder (VD's projected, normalised context) does not produce;
a given text encoder folder is copied next to the model but not named in its config.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Mapping

from torch import Tensor

from versadiff.convert.base import (
    Component,
    Foreign,
    Format,
    KeyReport,
    Probe,
    read_checkpoint,
    register_format,
    tensors_of,
)
from versadiff.convert.vd import (
    V0_PREFIX,
    multiflow_state_from_diffusers,
    multiflow_state_from_v0,
    multiflow_state_to_diffusers,
    multiflow_state_to_v0,
)
from versadiff.convert.vd_files import FLOW_NAMES, _v0_attention_levels, infer_multiflow_config, multiflow_run_config
from versadiff.nets.multiflow import MultiFlowConfig

__all__ = [
    "SD_SCHEDULER",
    "sd_state_from_ldm",
    "sd_state_to_ldm",
    "multiflow_state_to_sd_diffusers",
    "load_sd_ldm",
    "load_sd_diffusers",
]

LDM_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model."
#: the original repo samples with DDIM / PLMS on the same leading grid (steps_offset 1 in diffusers' SD configs)
SD_SCHEDULER = {
    "_class_name": "DDIMScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}


def _context(context: str) -> str:
    if context not in ("text", "image"):
        raise ValueError(
            f"context must be 'text' (text-to-image) or 'image' (VD-basic image variation), got {context!r}"
        )
    return context


def _move_context(state: Mapping[str, Tensor], src: str, dest: str) -> dict[str, Tensor]:
    a, b = f"{src}.context_blocks.", f"{dest}.context_blocks."
    return {(b + k[len(a) :] if k.startswith(a) else k): v for k, v in state.items()}


def sd_state_from_ldm(
    state: Mapping[str, Tensor], *, ema: bool | None = None, context: str = "text", _raw: bool = False
) -> tuple[dict[str, Tensor], list[str], list[str]]:
    """(our state, unused source keys, notes) of an original SD-1 checkpoint's UNet.

    ema None: the LitEma weights when the file has them; True requires them; False takes the raw weights.
    (_raw: return the chosen weights under their LDM names instead of converting them.)
    """
    context = _context(context)
    keys = [k for k in state if k.startswith(LDM_PREFIX)]
    if not keys:
        raise ValueError(f"no key starts with {LDM_PREFIX!r}: not a Stable Diffusion checkpoint")
    ema_name = {k: "model_ema." + k[len("model.") :].replace(".", "") for k in keys}
    has_ema = all(n in state for n in ema_name.values())
    if ema and not has_ema:
        missing = next(n for n in ema_name.values() if n not in state)
        raise ValueError(f"ema=True but the checkpoint has no EMA weights (e.g. {missing!r} is missing)")
    use_ema = has_ema if ema is None else bool(ema)
    notes = [
        (
            "EMA weights (model_ema.*) used"
            if use_ema
            else ("raw weights used; the file also has EMA weights" if has_ema else "the file has no EMA weights")
        )
    ]
    used = set(ema_name.values()) if use_ema else set(keys)
    if _raw:
        return (
            {k: state[ema_name[k]] if use_ema else state[k] for k in keys},
            sorted(k for k in state if k not in used),
            notes,
        )
    as_vd = {}
    for k in keys:
        rest = k[len(LDM_PREFIX) :]
        v = state[ema_name[k]] if use_ema else state[k]
        as_vd[f"{V0_PREFIX}{rest}" if rest.startswith("time_embed.") else f"{V0_PREFIX}unet_image.{rest}"] = v
    ours = multiflow_state_from_v0(as_vd).state
    if context == "text":
        ours = _move_context(ours, "image", "text")
    return ours, sorted(k for k in state if k not in used), notes


def _image_view(config: MultiFlowConfig, context: str) -> MultiFlowConfig:
    """The config with the context stream renamed to "image" (the layout diffusers' single UNet holds)."""
    over = dict(config.stream_overrides)
    if context in over:
        over["image"] = {**over.get("image", {}), **over.pop(context)}
    return config.replace(context_streams=("image",), stream_overrides=over)


def sd_state_to_ldm(state: Mapping[str, Tensor], config: MultiFlowConfig) -> dict[str, Tensor]:
    """Ours (image data + one context stream) -> the original SD-1 `model.diffusion_model.*` names."""
    context = config.context_streams[0]
    v0 = multiflow_state_to_v0(_move_context(state, context, "image"), _image_view(config, context))
    out = {}
    for k, v in v0.items():
        rest = k[len(V0_PREFIX) :]
        out[LDM_PREFIX + (rest[len("unet_image.") :] if rest.startswith("unet_image.") else rest)] = v
    return out


def multiflow_state_to_sd_diffusers(state: Mapping[str, Tensor], config: MultiFlowConfig) -> dict[str, Tensor]:
    """Ours (image data + one context stream) -> a diffusers UNet2DConditionModel state dict."""
    if tuple(config.data_streams) != ("image",) or len(config.context_streams) != 1:
        raise ValueError("a Stable Diffusion UNet is one image data stream with one context stream")
    context = config.context_streams[0]
    image, _ = multiflow_state_to_diffusers(_move_context(state, context, "image"), _image_view(config, context))
    return image


def _sd_net(state: Mapping[str, Tensor], context: str, **hints: Any) -> MultiFlowConfig:
    net = infer_multiflow_config(state, **hints)
    if context == "text" and net.stream_overrides:
        raise ValueError("per-stream overrides are not expected in an SD UNet")
    return net


def _finish(
    fmt: str,
    ours: dict[str, Tensor],
    net: MultiFlowConfig,
    report: KeyReport,
    components: list[Component],
    context: str,
    scheduler: Mapping[str, Any] | None,
    text_encoder: Any,
    image_encoder: Any = None,
) -> Foreign:
    flows = [FLOW_NAMES[("image", context)]]
    cfg, notes = multiflow_run_config(
        net,
        scheduler=scheduler,
        name=fmt,
        flows=flows,
        description=f"Stable Diffusion 1.x UNet ({flows[0]}), converted",
    )
    report.notes += notes
    from versadiff.convert.components import clip_component

    if context == "text" and text_encoder is not None:  # SD reads CLIPTextModel's last_hidden_state, unprojected
        components.append(clip_component(text_encoder, "text", context="hidden"))
    elif context == "text":
        report.notes.append("a text-to-image model without --text-encoder: encoders.text is left unset (convert "
                            "again with --text-encoder CLIP_DIR, SD's text_encoder/ folder, for text-to-image)")
    if image_encoder is not None:  # VD-basic's image context: VD's CLIP image encoder
        components.append(clip_component(image_encoder, "image"))
    shapes: dict[str, list[int]] = {}
    vae = next((c.module for c in components if c.section == "codecs" and c.module is not None), None)
    f = vae.config.downsample_factor if vae is not None else 1
    shapes["image"] = [3 if vae is not None else net.image_channels, net.image_size * f, net.image_size * f]
    info = {"data_shapes": shapes, "image_shape": shapes["image"], "num_classes": 0, "class_names": [], "flows": flows}
    return Foreign(fmt, cfg, ours, info, components, report)


def load_sd_ldm(
    path: Path,
    *,
    ema: bool | None = None,
    context: str = "text",
    num_heads: int = 8,
    norm_groups: int = 32,
    image_size: int = 64,
    vae: Any = None,
    text_encoder: Any = None,
    scheduler: Any = None,
    vae_norm_groups: int = 32,
    image_encoder: Any = None,
) -> Foreign:
    """An original SD-1 checkpoint (.ckpt / .pth / .safetensors): the UNet, and its first_stage_model VAE."""
    from versadiff.convert.components import kl_vae_component

    state = tensors_of(read_checkpoint(path), str(path))
    context = _context(context)
    ours, unused, notes = sd_state_from_ldm(state, ema=ema, context=context)
    levels_probe = infer_multiflow_config(ours, num_heads=num_heads, norm_groups=norm_groups, image_size=image_size)
    att = _v0_attention_levels(
        {V0_PREFIX + "unet_image." + k[len(LDM_PREFIX) :]: v for k, v in state.items() if k.startswith(LDM_PREFIX)},
        levels_probe.num_res_blocks,
        len(levels_probe.channel_mult),
    )
    net = _sd_net(
        ours, context, num_heads=num_heads, norm_groups=norm_groups, image_size=image_size, attention_levels=att
    )
    report = KeyReport(notes=notes)
    components = []
    if vae is not None:
        components.append(kl_vae_component(vae, norm_groups=vae_norm_groups))
    elif any(k.startswith(VAE_PREFIX) for k in state):
        components.append(kl_vae_component(state, prefix=VAE_PREFIX, norm_groups=vae_norm_groups))
        unused = [k for k in unused if not k.startswith(VAE_PREFIX)]
    report.unused = unused
    return _finish("sd_ldm", ours, net, report, components, context, scheduler, text_encoder, image_encoder)


def load_sd_diffusers(
    path: Path,
    *,
    context: str = "text",
    vae: Any = None,
    text_encoder: Any = None,
    num_heads: int | None = None,
    norm_groups: int | None = None,
    image_size: int | None = None,
    ema: bool | None = None,
    vae_norm_groups: int = 32,
    image_encoder: Any = None,
) -> Foreign:
    """A diffusers SD-1 folder (unet/, vae/, text_encoder/, scheduler/) or a bare UNet2DConditionModel folder
    (vae_norm_groups applies to a --vae given as an LDM state dict)."""
    from versadiff.convert.components import kl_vae_component
    from versadiff.convert.vd_files import _unet_state

    if ema:
        raise ValueError(f"{path} is a diffusers folder: it holds one set of weights (no EMA)")
    context = _context(context)
    unet_dir = path / "unet" if (path / "unet").is_dir() else path
    cfg = json.loads((unet_dir / "config.json").read_text())
    if cfg.get("_class_name") != "UNet2DConditionModel":
        raise ValueError(
            f"{unet_dir / 'config.json'} describes a {cfg.get('_class_name')!r}, not a UNet2DConditionModel"
        )
    for key, ok in (
        ("use_linear_projection", (False, None)),
        ("class_embed_type", (None,)),
        ("addition_embed_type", (None,)),
        ("resnet_time_scale_shift", ("default", None)),
        ("upcast_attention", (False, None)),
        ("num_class_embeds", (None,)),
    ):
        if cfg.get(key) not in ok:
            raise ValueError(
                f"UNet2DConditionModel {key}={cfg[key]!r} is not SD-1's layout (SD 2.x / SDXL / "
                "variants are not supported)"
            )
    heads = cfg.get("num_attention_heads") or cfg.get("attention_head_dim", 8)
    if isinstance(heads, list):
        if len(set(heads)) != 1:
            raise ValueError(f"per-level attention_head_dim {heads} is not SD-1's layout (8 heads everywhere)")
        heads = heads[0]
    ours = multiflow_state_from_diffusers(_unet_state(unet_dir))
    if context == "text":
        ours = _move_context(ours, "image", "text")
    att = tuple("CrossAttn" in k for k in cfg.get("down_block_types", ()))
    net = _sd_net(
        ours,
        context,
        num_heads=int(num_heads or heads),
        norm_groups=int(norm_groups or cfg.get("norm_num_groups", 32)),
        image_size=int(image_size or cfg.get("sample_size") or 64),
        attention_levels=att or None,
    )
    report = KeyReport()
    components = []
    vae_src = vae if vae is not None else (path / "vae" if (path / "vae").is_dir() else None)
    if vae_src is not None:
        components.append(kl_vae_component(vae_src, norm_groups=vae_norm_groups))
    scheduler = None
    sched_file = path / "scheduler" / "scheduler_config.json"
    if sched_file.is_file():
        scheduler = json.loads(sched_file.read_text())
        try:
            from versadiff.convert.schedulers import from_diffusers_scheduler_config

            from_diffusers_scheduler_config(scheduler)
        except ValueError as e:
            report.notes.append(f"scheduler/ not usable ({e}); DDIM 50 is used")
            scheduler = None
    if text_encoder is None and (path / "text_encoder").is_dir():
        text_encoder = path / "text_encoder"
    return _finish(
        "sd_diffusers", ours, net, report, components, context, scheduler or SD_SCHEDULER, text_encoder, image_encoder
    )


def load_vd_dc(
    path: Path,
    *,
    ema: bool | None = None,
    num_heads: int = 8,
    norm_groups: int = 32,
    image_size: int = 64,
    vae: Any = None,
    text_encoder: Any = None,
    image_encoder: Any = None,
    vae_norm_groups: int = 32,
    scheduler: Any = None,
) -> Foreign:
    """VD-DC's v0 checkpoint (vd-dc.pth): the dual-context diffuser, its first_stage_model VAE, VD's CLIP encoders
    when given (options text_encoder / image_encoder: VD's projected, normalised contexts)."""
    from versadiff.convert.components import clip_component, kl_vae_component
    from versadiff.convert.vd_files import _finish as vd_finish

    state = tensors_of(read_checkpoint(path), str(path))
    ours, unused, notes = vd_dc_state_from_ldm(state, ema=ema)
    probe = infer_multiflow_config(ours, num_heads=num_heads, norm_groups=norm_groups, image_size=image_size)
    att = _v0_attention_levels(
        {V0_PREFIX + "unet_image." + k[len(LDM_PREFIX) :]: v for k, v in state.items() if k.startswith(LDM_PREFIX)},
        probe.num_res_blocks,
        len(probe.channel_mult),
    )
    net = infer_multiflow_config(
        ours, num_heads=num_heads, norm_groups=norm_groups, image_size=image_size, attention_levels=att
    )
    components = []
    if vae is not None:
        components.append(kl_vae_component(vae, norm_groups=vae_norm_groups))
    elif any(k.startswith(VAE_PREFIX) for k in state):
        components.append(kl_vae_component(state, prefix=VAE_PREFIX, norm_groups=vae_norm_groups))
        unused = [k for k in unused if not k.startswith(VAE_PREFIX)]
    for modality, folder in (("text", text_encoder), ("image", image_encoder)):
        if folder is not None:
            components.append(clip_component(folder, modality))
    return vd_finish("vd_dc", ours, net, KeyReport(unused=unused, notes=notes), components, scheduler)


def _is_vd_dc(p: Probe) -> bool:
    return (
        p.path.is_file()
        and p.has_prefix(LDM_PREFIX + "input_blocks.")
        and any(".proj_in_0." in k for k in p.keys() if isinstance(k, str))
    )


def _is_sd_ldm(p: Probe) -> bool:
    return p.path.is_file() and p.has_prefix(LDM_PREFIX + "input_blocks.") and not _is_vd_dc(p)


def _is_sd_diffusers(p: Probe) -> bool:
    if not p.is_dir:
        return False
    index = p.json("model_index.json") or {}
    if str(index.get("_class_name", "")).startswith("StableDiffusion"):
        return True
    cfg = p.json("unet/config.json") or p.json("config.json") or {}
    return cfg.get("_class_name") == "UNet2DConditionModel"


register_format(
    Format(
        "vd_dc",
        "Versatile Diffusion VD-DC v0 (vd-dc.pth: SD names, dual transformers *_0 text / *_1 image)",
        _is_vd_dc,
        load_vd_dc,
        command="versadiff convert vd-dc.pth --text-encoder CLIP --image-encoder CLIP --out vd-dc",
    )
)
register_format(
    Format(
        "sd_ldm",
        "Stable Diffusion 1.x original checkpoint (model.diffusion_model.input_blocks.*)",
        _is_sd_ldm,
        load_sd_ldm,
        exports=("diffusers",),
        command="versadiff convert sd-v1-4.ckpt --out sd14 [--option context=image]",
    )
)
register_format(
    Format(
        "sd_diffusers",
        "Stable Diffusion 1.x diffusers folder or UNet2DConditionModel folder",
        _is_sd_diffusers,
        load_sd_diffusers,
        exports=("diffusers",),
        command="versadiff convert stable-diffusion-v1-4/ --out sd14",
    )
)


# ----------------------------------------------------------------------------------------------- VD-DC (v0)

_DUAL = re.compile(r"(.*?\.1\.)(norm|proj_in|transformer_blocks|proj_out)_([01])(\..*)")


def vd_dc_state_from_ldm(
    state: Mapping[str, Tensor], *, ema: bool | None = None
) -> tuple[dict[str, Tensor], list[str], list[str]]:
    """(our state, unused source keys, notes) of VD-DC's v0 checkpoint (`vd-dc.pth`, SHI-Labs @51dcd3b
    `openaimodel.py` UNetModelDualContext + `attention.py` DualSpatialTransformer): SD-1 names whose transformers
    hold two branches, `{norm,proj_in,transformer_blocks,proj_out}_0` (the text context, which_attn=0) and `_1`
    (the image context). One image data stream, image and text context streams (versadiff's vd_dc)."""
    keys = [k for k in state if k.startswith(LDM_PREFIX)]
    split: dict[str, dict[str, Tensor]] = {"text": {}, "image": {}}
    for k in keys:
        m = _DUAL.fullmatch(k)
        if m:
            split["text" if m.group(3) == "0" else "image"][m.group(1) + m.group(2) + m.group(4)] = k
        else:
            split["text"][k] = split["image"][k] = k
    # EMA names are those of the original (dual) keys: pick the weights first, then rename
    picked, unused, notes = sd_state_from_ldm(
        {k: state[k] for k in keys} | {k: v for k, v in state.items() if k.startswith("model_ema.")},
        ema=ema,
        context="image",
        _raw=True,
    )
    image = sd_state_from_ldm({new: picked[old] for new, old in split["image"].items()}, ema=False, context="image")[0]
    text = sd_state_from_ldm({new: picked[old] for new, old in split["text"].items()}, ema=False, context="text")[0]
    ours = {**image, **{k: v for k, v in text.items() if k.startswith("text.context_blocks.")}}
    return ours, sorted(set(unused) | {k for k in state if not k.startswith((LDM_PREFIX, "model_ema."))}), notes


# ----------------------------------------------------------------------------------------------- the KL VAE alone


def load_ldm_kl_vae(
    path: Path, *, norm_groups: int = 32, scale_factor: float = 0.18215, ema: bool | None = None
) -> Foreign:
    """An LDM / SD KL autoencoder on its own (kl-f8.pth, VD's kl-f8, U-ViT's autoencoder_kl.pth, or a whole LDM
    checkpoint's first_stage_model.*) as a versadiff autoencoder run: point codecs.image / --vae at the output."""
    from versadiff.config import RunConfig
    from versadiff.convert.components import kl_vae

    state = tensors_of(read_checkpoint(path), str(path))
    prefix = VAE_PREFIX if any(k.startswith(VAE_PREFIX + "encoder.") for k in state) else ""
    ae = kl_vae(state, prefix, norm_groups=norm_groups, scale_factor=scale_factor)
    cfg = RunConfig().to_dict()
    cfg.update(
        name="kl_vae",
        description="KL autoencoder (LDM layout), converted",
        task="autoencoder",
        model=ae.config.to_spec(),
    )
    used = {k for k in state if k.startswith(prefix) and not k[len(prefix) :].startswith("loss.")}
    report = KeyReport(unused=sorted(set(state) - used))
    shape = [ae.config.in_channels, 256, 256]
    return Foreign(
        "ldm_kl_vae",
        cfg,
        dict(ae.state_dict()),
        {"data_shapes": {"image": shape}, "image_shape": shape, "num_classes": 0, "class_names": []},
        [],
        report,
    )


def _is_kl_vae(p: Probe) -> bool:
    if not p.path.is_file() or p.has_prefix(LDM_PREFIX, "quantize."):
        return False
    return (p.has_prefix("encoder.down.") and p.has_prefix("quant_conv.")) or (
        p.has_prefix(VAE_PREFIX + "encoder.down.") and not p.has_prefix(LDM_PREFIX)
    )


register_format(
    Format(
        "ldm_kl_vae",
        "LDM / SD KL autoencoder (kl-f8.pth, autoencoder_kl.pth)",
        _is_kl_vae,
        load_ldm_kl_vae,
        command="versadiff convert kl-f8.pth --out kl-f8  (then --vae kl-f8 or codecs.image.path)",
    )
)
