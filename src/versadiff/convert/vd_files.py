"""Versatile Diffusion checkpoints -> versadiff: v0 / vd-official, v1.0 and diffusers folders.

Layouts (reference versatile_diffusion.md §6, vd/README.md; SHI-Labs/Versatile-Diffusion v0 @51dcd3b
`lib/model_zoo/vd.py` + `openaimodel.py` UNetModelVD, v1.0 `UNetModel2D_Next` / `UNetModel0D_Next`; diffusers
`pipelines/deprecated/versatile_diffusion` and `scripts/convert_versatile_diffusion_to_diffusers.py`):
  v0 (`vd-official.pth`, the 13.3 GB `vd-four-flow-v1-0-deprecated.pth`): one state dict,
      model.diffusion_model.{time_embed, unet_image, unet_text}.* (LDM module names), autokl.* (the KL VAE),
      optimus.* (the text VAE), clip.* (CLIP ViT-L/14), DDPM buffers; `model_ema.*` (LitEma, names without
      dots) when trained with EMA -- taken by default (diffusers' own script's --extract_ema does nothing).
  v1.0 (`vd-four-flow-v1-0.pth`, 10.3 GB): diffuser.{image,text}.{time_embed, data_blocks, context_blocks}.*
      only; the VAEs are separate files (kl-f8.pth, optimus-vae.pth) and CLIP is openai/clip-vit-large-patch14.
  diffusers (`shi-labs/versatile-diffusion`): image_unet/ (UNet2DConditionModel), text_unet/
      (UNetFlatConditionModel), vae/, text_encoder/ (CLIPTextModelWithProjection), image_encoder/
      (CLIPVisionModelWithProjection), tokenizer/, image_feature_extractor/, scheduler/.
VD-DC's `vd-dc.pth` (SD-1 names with dual transformers) is read by versadiff.convert.sd (format vd_dc).
The diffuser's key mapping is versadiff.convert.vd; this module adds the network config (read from the
shapes, or from the diffusers configs), the run config (VD's flows, SD-1 schedule, DDIM 50, guidance 7.5) and
the components (VAE, Optimus, CLIP). Not readable from a state dict: the attention head count (VD and SD-1: 8),
the GroupNorm group count (32) and the latent size (64): options num_heads / norm_groups / image_size.
"""

from __future__ import annotations

import itertools
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
    V1_PREFIX,
    multiflow_state_from_diffusers,
    multiflow_state_from_v0,
    multiflow_state_from_v1,
)
from versadiff.nets.multiflow import DATA_STREAM_KINDS, MultiFlowConfig, StreamLayout

__all__ = [
    "VD_SCHEDULER",
    "FLOW_NAMES",
    "infer_multiflow_config",
    "multiflow_run_config",
    "load_vd_file",
    "load_vd_diffusers",
    "vd_components",
]

#: VD's sampler (vd/README.md): DDIM 50 on the original grid {1, 21, ..., 981} = diffusers' leading grid with
#: steps_offset=1, set_alpha_to_one=False; SD-1's scaled-linear betas 0.00085 -> 0.012 over 1000 steps
VD_SCHEDULER = {
    "_class_name": "DDIMScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}
#: (data stream, context stream) -> flow name, in VD's order
FLOW_NAMES = {
    ("image", "text"): "text-to-image",
    ("image", "image"): "image-variation",
    ("text", "image"): "image-to-text",
    ("text", "text"): "text-variation",
}
VD_GUIDANCE = 6.5  # VD / diffusers: u + 7.5 (c - u) = (1 + w) c - w u with w = 6.5


# ----------------------------------------------------------------------------------------------- network config


def _block(state: Mapping[str, Tensor], stream: str, n: int) -> dict[str, Tensor]:
    prefix = f"{stream}.data_blocks.{n}.0."
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def infer_multiflow_config(
    state: Mapping[str, Tensor],
    *,
    num_heads: int = 8,
    head_channels: int | None = None,
    norm_groups: int = 32,
    image_size: int = 64,
    attention_levels: tuple[bool, ...] | None = None,
    dropout: float = 0.0,
) -> MultiFlowConfig:
    """The MultiFlowConfig of a diffuser state dict in versadiff's (= VD v1.0) names, read from the shapes.

    The walk of the first data stream gives the levels and ResBlocks per level; the context blocks' widths give
    the levels with context slots. v1.0 indices cannot tell two levels of equal width apart: such ties resolve
    to VD's (context at every level but the last) or must be passed as `attention_levels`.
    """
    streams = [m for m in DATA_STREAM_KINDS if any(k.startswith(f"{m}.") for k in state)]
    streams += sorted({k.split(".", 1)[0] for k in state} - set(streams))
    data = tuple(m for m in streams if any(k.startswith(f"{m}.data_blocks.") for k in state))
    context = tuple(m for m in streams if any(k.startswith(f"{m}.context_blocks.") for k in state))
    if not data or not context:
        raise ValueError(
            "a multi-flow diffuser needs data blocks and context blocks; this state dict lacks "
            f"{'data' if not data else 'context'} blocks"
        )
    ref = data[0]
    if f"{ref}.time_embed.0.weight" not in state:
        raise ValueError(f"{ref}.time_embed.0.weight is missing (the global time embedding)")
    mc = int(state[f"{ref}.time_embed.0.weight"].shape[1])
    spatial = DATA_STREAM_KINDS.get(ref) == "spatial"
    kinds, widths = [], []
    n = 0
    while blk := _block(state, ref, n):
        if "in_layers.2.weight" in blk:
            kinds.append("R")
            widths.append(int(blk["in_layers.2.weight"].shape[0]))
        elif n == 0:
            kinds.append("I")
            widths.append(0)
        elif "0.weight" in blk and "2.weight" in blk:
            kinds.append("O")
            widths.append(0)
        else:
            kinds.append("S")  # a resampler
            widths.append(0)
        n += 1
    if kinds[:1] != ["I"] or kinds[-1:] != ["O"]:
        raise ValueError(f"{ref}.data_blocks do not start with an input layer and end with a head")
    tokens = 4
    if not spatial:
        head = _block(state, ref, n - 1)
        tokens = int(head["2.weight"].shape[1]) // int(head["0.weight"].shape[0])
        widths = [w // tokens for w in widths]
    levels = kinds.count("S") // 2 + 1
    n_res = kinds.count("R")
    nrb, rem = divmod(n_res - 2 - levels, 2 * levels)
    if rem or nrb < 1:
        raise ValueError(f"{ref}.data_blocks ({n} layers, {n_res} ResBlocks) do not form a UNet walk")
    mult, pos = [], 1
    for level in range(levels):
        pos += nrb
        mult.append(widths[pos - 1] // mc)
        pos += level < levels - 1
    ctx_ref = context[0]
    cwidths = []
    k = 0
    while f"{ctx_ref}.context_blocks.{k}.0.norm.weight" in state:
        cwidths.append(int(state[f"{ctx_ref}.context_blocks.{k}.0.norm.weight"].shape[0]))
        k += 1
    depth = len(
        {
            m.group(1)
            for key in state
            if (m := re.match(rf"{ctx_ref}\.context_blocks\.0\.0\.transformer_blocks\.(\d+)\.", key))
        }
    )
    cdim = int(state[f"{ctx_ref}.context_blocks.0.0.transformer_blocks.0.attn2.to_k.weight"].shape[1])
    image_channels = int(state["image.data_blocks.0.0.weight"].shape[1]) if "image" in data else 4
    text_dim = int(state["text.data_blocks.0.0.weight"].shape[1]) if "text" in data else 768
    base = dict(
        data_streams=data,
        context_streams=context,
        model_channels=mc,
        channel_mult=tuple(mult),
        num_res_blocks=nrb,
        num_heads=num_heads,
        head_channels=head_channels,
        transformer_depth=depth,
        context_dim=cdim,
        image_channels=image_channels,
        image_size=image_size,
        text_dim=text_dim,
        text_tokens=tokens,
        norm_groups=norm_groups,
        dropout=dropout,
    )

    def context_widths(att: tuple[bool, ...]) -> list[int]:
        lay = StreamLayout(mc, tuple(mult), nrb, att, num_heads, head_channels, depth)
        return [s.width for s in lay.slots() if s.kind == "context"]

    if attention_levels is not None:
        att = tuple(bool(a) for a in attention_levels)
        if context_widths(att) != cwidths:
            raise ValueError(f"attention_levels={list(att)} do not give the checkpoint's {len(cwidths)} context blocks")
    else:
        vd_default = tuple([True] * (levels - 1) + [False]) if levels > 1 else (True,)
        options = [vd_default] + [c for c in itertools.product((True, False), repeat=levels) if c != vd_default]
        matches = [c for c in options if context_widths(c) == cwidths]
        if not matches:
            raise ValueError(f"no placement of context slots gives the checkpoint's context blocks (widths {cwidths})")
        att = matches[0]
    return MultiFlowConfig.from_dict({**base, "attention_levels": att})


def _v0_attention_levels(state: Mapping[str, Tensor], nrb: int, levels: int) -> tuple[bool, ...]:
    """Levels with transformers, read from the LDM names of a v0 image/text UNet (input_blocks.k.1 = a transformer)."""
    att = [False] * levels
    for key in state:
        m = re.match(rf"{re.escape(V0_PREFIX)}unet_\w+\.input_blocks\.(\d+)\.1\.", key)
        if m:
            att[min((int(m.group(1)) - 1) // (nrb + 1), levels - 1)] = True
    return tuple(att)


# ----------------------------------------------------------------------------------------------- run config


def multiflow_run_config(
    net: MultiFlowConfig,
    *,
    scheduler: Mapping[str, Any] | None = None,
    name: str = "vd",
    description: str = "",
    flows: list[str] | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """(run config dict, notes) for a converted multi-flow diffuser: its flows, the scheduler's schedule and
    sampler (VD's DDIM 50 by default), guidance 7.5 in VD's convention."""
    from versadiff.config import RunConfig
    from versadiff.convert.schedulers import from_diffusers_scheduler_config

    conv = from_diffusers_scheduler_config(dict(scheduler or VD_SCHEDULER))
    cfg = RunConfig().to_dict()
    if flows is None:
        flows = [f for (d, c), f in FLOW_NAMES.items() if d in net.data_streams and c in net.context_streams]
    cfg.update(name=name, description=description or f"converted {name}", model=net.to_spec(), flows=flows)
    cfg["diffusion"].update(
        schedule=conv.schedule, prediction=conv.prediction, weighting="snr", clip_x0=conv.clip_x0, p_uncond=0.1
    )
    cfg["sample"].update(sampler=conv.sampler, steps=50, guidance=VD_GUIDANCE, options=conv.options)
    return cfg, list(conv.notes)


def _info(net: MultiFlowConfig, components: list[Component], flows: list[str]) -> dict[str, Any]:
    shapes: dict[str, list[int]] = {}
    codecs = {c.modality: c for c in components if c.section == "codecs" and c.configured}
    if "image" in net.data_streams:
        vae = codecs.get("image")
        f = vae.module.config.downsample_factor if vae is not None and vae.module is not None else 1
        shapes["image"] = [3 if vae is not None else net.image_channels, net.image_size * f, net.image_size * f]
    if "text" in net.data_streams and "text" not in codecs:
        shapes["text"] = [net.text_dim]
    info: dict[str, Any] = {"data_shapes": shapes, "num_classes": 0, "class_names": [], "flows": flows}
    if "image" in shapes:
        info["image_shape"] = shapes["image"]
    return info


def vd_components(
    *,
    vae: Any = None,
    text_vae: Any = None,
    text_encoder: Any = None,
    image_encoder: Any = None,
    state: Mapping[str, Tensor] | None = None,
    notes: list[str] | None = None,
    vae_norm_groups: int = 32,
    bert_tokenizer: Any = None,
    gpt2_tokenizer: Any = None,
) -> list[Component]:
    """The components given as options, else those found in a v0 state dict (autokl.*, optimus.*).
    vae_norm_groups: the GroupNorm groups of an LDM VAE (not in its weights; 32 in kl-f8). bert_tokenizer /
    gpt2_tokenizer: the Optimus tokenizer folders (bert-base-cased vocab.txt; GPT-2 vocab.json + merges.txt),
    which VD's files do not hold (without them the text VAE converts but cannot read or write text)."""
    from versadiff.autoencoders.base import CODECS
    from versadiff.convert.components import clip_component, kl_vae_component, text_vae_component

    notes = notes if notes is not None else []
    out = []
    if vae is not None:
        out.append(kl_vae_component(vae, norm_groups=vae_norm_groups))
    elif state is not None and any(k.startswith("autokl.") for k in state):
        out.append(kl_vae_component(state, prefix="autokl.", norm_groups=vae_norm_groups))
    if text_vae is not None or (state is not None and any(k.startswith("optimus.") for k in state)):
        try:
            toks = {k: str(v) for k, v in (("bert_tokenizer", bert_tokenizer), ("gpt2_tokenizer", gpt2_tokenizer)) if v}
            if text_vae is not None:
                comp = text_vae_component(text_vae, **toks)
            else:
                from versadiff.autoencoders.text_vae import TextVAE
                from versadiff.convert.optimus import infer_optimus_config, optimus_to_versadiff

                sub = optimus_to_versadiff({k: v.float() for k, v in state.items() if k.startswith("optimus.")})
                model = TextVAE(infer_optimus_config(sub, **toks))
                model.load_weights(sub, "optimus.* of the checkpoint")
                comp = Component("codecs", "text", {"type": "text_vae"}, "text_vae", module=model)
            if "text_vae" not in CODECS:
                comp.configured = False
                notes.append(
                    "the text VAE is written to text_vae/ but not named in the config: versadiff has no "
                    "'text_vae' codec registered yet, so text flows generate raw 768-d latents"
                )
            if not toks:
                notes.append(
                    "the text VAE has no tokenizers (options bert_tokenizer / gpt2_tokenizer): it cannot "
                    "encode or decode text until they are set in text_vae/config.json"
                )
            out.append(comp)
        except (ImportError, ValueError) as e:
            notes.append(f"text VAE not converted: {e}")
    for modality, folder in (("text", text_encoder), ("image", image_encoder)):
        if folder is not None:
            out.append(clip_component(folder, modality))
    return out


# ----------------------------------------------------------------------------------------------- loaders


def _finish(
    fmt: str,
    net_state: dict[str, Tensor],
    cfg_net: MultiFlowConfig,
    report: KeyReport,
    components: list[Component],
    scheduler: Mapping[str, Any] | None = None,
) -> Foreign:
    cfg, notes = multiflow_run_config(cfg_net, scheduler=scheduler, name=fmt)
    report.notes += notes
    encoders = {c.modality for c in components if c.section == "encoders"}
    missing = sorted({FLOW_NAMES_CONTEXT[f] for f in cfg["flows"]} - encoders)
    if missing:
        report.notes.append(
            f"no {' / '.join(missing)} context encoder given (--text-encoder / --image-encoder): "
            "the flows that need one cannot sample until encoders.<modality>.path is set"
        )
    return Foreign(fmt, cfg, net_state, _info(cfg_net, components, cfg["flows"]), components, report)


FLOW_NAMES_CONTEXT = {f: c for (_, c), f in FLOW_NAMES.items()}


def load_vd_file(
    path: Path,
    *,
    ema: bool | None = None,
    num_heads: int = 8,
    norm_groups: int = 32,
    image_size: int = 64,
    attention_levels: Any = None,
    vae: Any = None,
    text_vae: Any = None,
    text_encoder: Any = None,
    image_encoder: Any = None,
    scheduler: Any = None,
    vae_norm_groups: int = 32,
    bert_tokenizer: Any = None,
    gpt2_tokenizer: Any = None,
) -> Foreign:
    """A v0 / vd-official or v1.0 checkpoint file (.pth / .ckpt / .safetensors).

    ema: None takes the EMA weights when the file has them (v0 `model_ema.*`), True requires them, False
    takes the raw weights. fp16-stored files load like fp32 ones (the caller casts).
    """
    state = tensors_of(read_checkpoint(path), str(path))
    report = KeyReport()
    notes = report.notes
    if any(k.startswith(V1_PREFIX) for k in state):
        if ema:
            raise ValueError(f"{path} is a VD v1.0 file: it holds one set of diffuser weights (no EMA)")
        conv = multiflow_state_from_v1(state)
        fmt = "vd_v1"
        hint_att = attention_levels
    else:
        has_ema = any(k.startswith("model_ema.") for k in state)
        use_ema = has_ema if ema is None else bool(ema)
        conv = multiflow_state_from_v0(state, ema=use_ema)
        notes.append(
            "EMA weights (model_ema.*) used"
            if use_ema
            else ("raw weights used; the file also has EMA weights" if has_ema else "the file has no EMA weights")
        )
        fmt = "vd_v0"
        hint_att = attention_levels
        if hint_att is None:
            probe = infer_multiflow_config(
                conv.state, num_heads=num_heads, norm_groups=norm_groups, image_size=image_size
            )
            hint_att = _v0_attention_levels(state, probe.num_res_blocks, len(probe.channel_mult))
    net = infer_multiflow_config(
        conv.state, num_heads=num_heads, norm_groups=norm_groups, image_size=image_size, attention_levels=hint_att
    )
    components = vd_components(
        vae=vae,
        text_vae=text_vae,
        text_encoder=text_encoder,
        image_encoder=image_encoder,
        state=state,
        notes=notes,
        vae_norm_groups=vae_norm_groups,
        bert_tokenizer=bert_tokenizer,
        gpt2_tokenizer=gpt2_tokenizer,
    )
    from_state = [
        p
        for p, name, given in (("autokl.", "vae", vae), ("optimus.", "text_vae", text_vae))
        if given is None and any(c.name == name for c in components)
    ]
    report.unused = [k for k in conv.ignored if not k.startswith(tuple(from_state))]
    return _finish(fmt, conv.state, net, report, components, scheduler)


def _diffusers_net_config(
    image_cfg: dict[str, Any] | None, text_cfg: dict[str, Any] | None, state: Mapping[str, Tensor], **hints: Any
) -> MultiFlowConfig:
    ref = image_cfg or text_cfg or {}
    kinds = ref.get("down_block_types") or []
    att = tuple("CrossAttn" in k for k in kinds) if kinds else None
    heads = ref.get("num_attention_heads") or ref.get("attention_head_dim") or 8
    if isinstance(heads, (list, tuple)):
        if len(set(heads)) != 1:
            raise ValueError(f"per-level head counts {heads} are not supported (VD uses one head count)")
        heads = heads[0]
    size = (image_cfg or {}).get("sample_size") or 64
    return infer_multiflow_config(
        state,
        num_heads=int(hints.get("num_heads") or heads),
        norm_groups=int(hints.get("norm_groups") or ref.get("norm_num_groups", 32)),
        image_size=int(hints.get("image_size") or size),
        attention_levels=att,
    )


def _unet_state(folder: Path) -> dict[str, Tensor]:
    for name in (
        "diffusion_pytorch_model.safetensors",
        "diffusion_pytorch_model.fp16.safetensors",
        "diffusion_pytorch_model.bin",
        "diffusion_pytorch_model.fp16.bin",
    ):
        if (folder / name).is_file():
            return tensors_of(read_checkpoint(folder / name), str(folder / name))
    raise FileNotFoundError(f"no diffusion_pytorch_model weights in {folder}")


def load_vd_diffusers(
    path: Path,
    *,
    text_vae: Any = None,
    vae: Any = None,
    text_encoder: Any = None,
    image_encoder: Any = None,
    num_heads: int | None = None,
    norm_groups: int | None = None,
    image_size: int | None = None,
    check_time_embedding: bool = True,
    ema: bool | None = None,
    vae_norm_groups: int = 32,
    bert_tokenizer: Any = None,
    gpt2_tokenizer: Any = None,
) -> Foreign:
    """A diffusers Versatile Diffusion folder (image_unet/, text_unet/ optional, vae/, text_encoder/,
    image_encoder/, tokenizer/, scheduler/). diffusers folders hold one set of weights (no EMA)."""
    if ema:
        raise ValueError(f"{path} is a diffusers folder: it holds one set of weights (no EMA)")
    image_state = _unet_state(path / "image_unet")
    text_state = _unet_state(path / "text_unet") if (path / "text_unet").is_dir() else None
    state = multiflow_state_from_diffusers(image_state, text_state, check_time_embedding=check_time_embedding)
    read = lambda rel: json.loads((path / rel).read_text()) if (path / rel).is_file() else None  # noqa: E731
    net = _diffusers_net_config(
        read("image_unet/config.json"),
        read("text_unet/config.json"),
        state,
        num_heads=num_heads,
        norm_groups=norm_groups,
        image_size=image_size,
    )
    report = KeyReport()
    components = vd_components(
        vae=vae if vae is not None else (path / "vae" if (path / "vae").is_dir() else None),
        text_vae=text_vae,
        notes=report.notes,
        vae_norm_groups=vae_norm_groups,
        bert_tokenizer=bert_tokenizer,
        gpt2_tokenizer=gpt2_tokenizer,
        text_encoder=text_encoder or (path / "text_encoder" if (path / "text_encoder").is_dir() else None),
        image_encoder=image_encoder or (path / "image_encoder" if (path / "image_encoder").is_dir() else None),
    )
    scheduler = read("scheduler/scheduler_config.json")
    if scheduler is not None:
        try:
            from versadiff.convert.schedulers import from_diffusers_scheduler_config

            from_diffusers_scheduler_config(scheduler)
        except ValueError as e:
            report.notes.append(f"scheduler/ not usable ({e}); VD's DDIM 50 is used")
            scheduler = None
    if text_state is None:
        report.notes.append("no text_unet/: only the image data stream and image context stream are converted")
    return _finish("vd_diffusers", state, net, report, components, scheduler)


def load_optimus_vae(
    path: Path, *, bert_tokenizer: Any = None, gpt2_tokenizer: Any = None, ema: bool | None = None
) -> Foreign:
    """VD's Optimus text VAE on its own (optimus-vae.pth) as a versadiff text_vae run; its save_pretrained folder
    (OUT/text_vae, what codecs.text.path takes) is written next to the weights."""
    from versadiff.config import RunConfig
    from versadiff.convert.components import text_vae_component

    toks = {k: str(v) for k, v in (("bert_tokenizer", bert_tokenizer), ("gpt2_tokenizer", gpt2_tokenizer)) if v}
    comp = text_vae_component(path, **toks)
    comp.configured = False
    model = comp.module
    cfg = RunConfig().to_dict()
    spec = model.config.to_dict()
    spec.pop("path", None)
    cfg.update(name="optimus", description="Optimus text VAE (VD), converted", task="text_vae", model=spec)
    report = KeyReport(notes=["the text VAE folder for codecs.text.path is OUT/text_vae"])
    if not (bert_tokenizer and gpt2_tokenizer):
        report.notes.append(
            "no tokenizers given (options bert_tokenizer / gpt2_tokenizer): the text VAE cannot read "
            "or write text until they are set"
        )
    state = {k: v.clone() for k, v in model.state_dict().items()}  # lm_head is tied to wte: one copy each
    return Foreign("optimus", cfg, state, {"data_shapes": {}, "num_classes": 0, "class_names": []}, [comp], report)


# ----------------------------------------------------------------------------------------------- registration


def _is_vd_diffusers(p: Probe) -> bool:
    if not p.is_dir:
        return False
    index = p.json("model_index.json") or {}
    return str(index.get("_class_name", "")).startswith("VersatileDiffusion") or (p.path / "image_unet").is_dir()


register_format(
    Format(
        "vd_v0",
        "Versatile Diffusion v0 / vd-official (model.diffusion_model.unet_image.*)",
        lambda p: p.path.is_file() and p.has_prefix(V0_PREFIX + "unet_image.", V0_PREFIX + "unet_text."),
        load_vd_file,
        exports=("diffusers",),
        command="versadiff convert vd-official.pth --out vd [--text-encoder clip-vit-large-patch14]",
    )
)
register_format(
    Format(
        "vd_v1",
        "Versatile Diffusion v1.0 (diffuser.image.data_blocks.*)",
        lambda p: p.path.is_file() and p.has_prefix(V1_PREFIX),
        load_vd_file,
        exports=("diffusers",),
        command="versadiff convert vd-four-flow-v1-0.pth --vae kl-f8.pth --text-vae optimus-vae.pth --out vd",
    )
)
register_format(
    Format(
        "vd_diffusers",
        "Versatile Diffusion diffusers folder (image_unet/, text_unet/, vae/, ...)",
        _is_vd_diffusers,
        load_vd_diffusers,
        exports=("diffusers",),
        command="versadiff convert versatile-diffusion/ --out vd",
    )
)
register_format(
    Format(
        "optimus",
        "VD's Optimus text VAE (optimus-vae.pth: encoder.* BERT + decoder.* GPT-2)",
        lambda p: p.path.is_file()
        and p.has_prefix("encoder.embeddings.word_embeddings.")
        and p.has_prefix("decoder.transformer."),
        load_optimus_vae,
        command="versadiff convert optimus-vae.pth --option bert_tokenizer=DIR --option gpt2_tokenizer=DIR --out optimus",
    )
)
