"""versadiff models -> diffusers folders that diffusers' `from_pretrained` loads (diffusers is not needed to write them).

Targets (diffusers 0.39 classes and folder layouts; `pipelines/deprecated/versatile_diffusion`,
`pipelines/stable_diffusion`):
  a multi-flow diffuser with image + text data and context streams -> VersatileDiffusionPipeline
      (image_unet/ UNet2DConditionModel, text_unet/ UNetFlatConditionModel, vae/, text_encoder/, image_encoder/,
      tokenizer/, image_feature_extractor/, scheduler/);
  image data + image context only (VD-basic)                       -> VersatileDiffusionImageVariationPipeline;
  image data + text context only (a Stable Diffusion UNet)          -> StableDiffusionPipeline (no safety checker);
  any of them without codecs / encoders: the UNet folders alone (what is there is written, the rest reported).
The UNet weights come from versadiff.convert.vd.multiflow_state_to_diffusers (one time embedding copied into
each UNet); KL VAE names are diffusers' already; CLIP towers are transformers models (save_pretrained); the
scheduler config comes from versadiff.convert.schedulers.to_diffusers_scheduler_config.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Mapping

from torch import Tensor

__all__ = ["export_diffusers", "model_parts", "unet_config", "vae_config", "write_diffusers_model"]

DIFFUSERS_VERSION = "0.39.0"


def _save(folder: Path, config: dict[str, Any], state: Mapping[str, Tensor]) -> Path:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(
        json.dumps({**config, "_diffusers_version": DIFFUSERS_VERSION}, indent=2) + "\n"
    )
    save_file(
        {k: v.detach().contiguous().cpu() for k, v in state.items()},
        str(folder / "diffusion_pytorch_model.safetensors"),
        metadata={"format": "pt"},
    )
    return folder


write_diffusers_model = _save


def unet_config(net_cfg: Any, modality: str, *, context: str | None = None) -> dict[str, Any]:
    """The diffusers UNet config of one modality of a MultiFlowConfig: UNet2DConditionModel (image) or
    UNetFlatConditionModel (text), with the heads of the context stream it holds (`context`, default the same
    modality)."""
    lay = net_cfg.layout(context or modality)
    if lay.head_channels:
        raise ValueError("diffusers' VD UNets take a head count, not head_channels; export needs num_heads")
    levels = len(lay.channel_mult)
    flat = modality == "text"
    suffix = "Flat" if flat else "2D"
    down = [("CrossAttnDownBlock" if a else "DownBlock") + suffix for a in lay.attention_levels]
    up = [("CrossAttnUpBlock" if lay.attention_levels[i] else "UpBlock") + suffix for i in reversed(range(levels))]
    if flat and net_cfg.text_tokens != 4:
        raise ValueError(
            f"diffusers' UNetFlatConditionModel has 4 pseudo-tokens; this network has text_tokens={net_cfg.text_tokens}"
        )
    if net_cfg.norm_eps != 1e-5 or net_cfg.transformer_norm_eps != 1e-6:
        raise ValueError("diffusers' VD UNets use GroupNorm eps 1e-5 (ResBlocks) and 1e-6 (transformers)")
    channels = [net_cfg.text_dim, 1, 1] if flat else net_cfg.image_channels
    return {
        "_class_name": "UNetFlatConditionModel" if flat else "UNet2DConditionModel",
        "sample_size": None if flat else net_cfg.image_size,
        "in_channels": channels,
        "out_channels": channels,
        "down_block_types": down,
        "up_block_types": up,
        "mid_block_type": "UNetMidBlockFlatCrossAttn" if flat else "UNetMidBlock2DCrossAttn",
        "block_out_channels": [lay.model_channels * m for m in lay.channel_mult],
        "layers_per_block": lay.num_res_blocks,
        "cross_attention_dim": net_cfg.context_dim,
        "attention_head_dim": lay.num_heads,
        "transformer_layers_per_block": lay.transformer_depth,
        "norm_num_groups": net_cfg.norm_groups,
        "norm_eps": 1e-5,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "act_fn": "silu",
        "downsample_padding": 1,
        "use_linear_projection": False,
        "upcast_attention": False,
        "dropout": net_cfg.dropout,
    }


def vae_config(ae: Any, sample_size: int | None = None) -> dict[str, Any]:
    """diffusers AutoencoderKL config of a versadiff AutoencoderKL (the weight names are diffusers' already)."""
    c = ae.config
    n = len(c.channel_mult)
    return {
        "_class_name": "AutoencoderKL",
        "in_channels": c.in_channels,
        "out_channels": c.out_channels,
        "down_block_types": ["DownEncoderBlock2D"] * n,
        "up_block_types": ["UpDecoderBlock2D"] * n,
        "block_out_channels": list(c.block_out_channels),
        "layers_per_block": c.num_res_blocks,
        "act_fn": "silu",
        "latent_channels": c.z_channels,
        "norm_num_groups": c.norm_groups,
        "sample_size": sample_size or 512,
        "scaling_factor": c.scale_factor,
        "shift_factor": c.shift_factor or None,
        "mid_block_add_attention": c.mid_attention,
        "use_quant_conv": c.use_quant_conv,
        "use_post_quant_conv": c.use_post_quant_conv,
        "force_upcast": True,
    }


def _scheduler_config(run: Any) -> dict[str, Any]:
    from versadiff.convert.schedulers import to_diffusers_scheduler_config

    d, s = run.diffusion, run.sample
    try:
        return to_diffusers_scheduler_config(d.schedule, s.sampler, dict(s.options), d.prediction, clip_x0=d.clip_x0)
    except ValueError as e:
        import warnings

        from versadiff.convert.vd_files import VD_SCHEDULER

        # diffusers' pipelines need a scheduler folder; the closest is VD's own, but it is not this model's
        warnings.warn(f"the run's schedule has no diffusers scheduler ({e}); the export gets VD's DDIM scheduler, "
                      "so diffusers will sample this model wrongly (the networks and weights are exact)", stacklevel=2)
        return dict(VD_SCHEDULER)


def _copy_tokenizer(folder: Path, dest: Path, max_length: int) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("vocab.json", "merges.txt", "special_tokens_map.json"):
        if (folder / name).is_file():
            shutil.copyfile(folder / name, dest / name)
    cfg_src = folder / "tokenizer_config.json"
    cfg = json.loads(cfg_src.read_text()) if cfg_src.is_file() else {}
    cfg.setdefault("tokenizer_class", "CLIPTokenizer")
    cfg["model_max_length"] = max_length
    for key, default in (
        ("bos_token", "<|startoftext|>"),
        ("eos_token", "<|endoftext|>"),
        ("unk_token", "<|endoftext|>"),
        ("pad_token", "<|endoftext|>"),
    ):
        cfg.setdefault(key, default)
    (dest / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n")


def _save_hf(module: Any, dest: Path) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module.save_pretrained(str(dest))


def model_parts(cfg: Any, state: Mapping[str, Tensor]) -> tuple[Any, Any, dict[str, Any], dict[str, Any], list[str]]:
    """(network with `state`, RunConfig, codecs by modality, context encoders by modality, notes) of a run config;
    a codec or encoder that cannot be built (a missing path) is left out with a note, so the network still exports."""
    from versadiff.autoencoders.codecs import build_codec, codec_spec_from_autoencoder
    from versadiff.config import config_from_dict
    from versadiff.encoders.base import build_encoder
    from versadiff.tasks import task_class

    run = cfg if not isinstance(cfg, dict) else config_from_dict(cfg)
    net = task_class(run.task).build_network(run)
    net.load_state_dict(dict(state), strict=True)
    notes: list[str] = []
    specs = dict(run.codecs)
    if run.autoencoder is not None and "image" not in specs:
        specs["image"] = codec_spec_from_autoencoder(run.autoencoder, "latent")
    codecs, encoders = {}, {}
    for table, build, out in ((specs, build_codec, codecs), (run.encoders, build_encoder, encoders)):
        for modality, spec in table.items():
            try:
                out[modality] = build(spec)
            except (ValueError, FileNotFoundError, OSError) as e:
                notes.append(f"{modality} {'codec' if table is specs else 'encoder'} not exported: {e}")
    return net, run, codecs, encoders, notes


def export_diffusers(model: Any, out: str | Path) -> Path:
    """Write a multi-flow diffuser as a diffusers pipeline folder; returns the folder.

    model: a versadiff Pipeline, or the (net, run config, codecs, encoders, notes) of `model_parts`."""
    from versadiff.convert.vd import multiflow_state_to_diffusers
    from versadiff.nets.multiflow import MultiFlowDiffuser

    if isinstance(model, tuple):
        net, run, codecs, encoders = model[:4]
    else:
        net, run = model.net, model.config
        codecs = {f.flow.data: f.codec for f in model.flows.values()}
        encoders = {f.flow.context: f.encoder for f in model.flows.values() if f.encoder is not None}
    if not isinstance(net, MultiFlowDiffuser):
        raise ValueError(
            f"diffusers has no layout for a versadiff {type(net).__name__}; export takes Versatile "
            "Diffusion / Stable Diffusion diffusers (multi-flow networks)"
        )
    c = net.config
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().cpu() for k, v in net.state_dict().items()}
    sd_like = tuple(c.data_streams) == ("image",) and tuple(c.context_streams) == ("text",)
    index: dict[str, Any] = {"_diffusers_version": DIFFUSERS_VERSION}
    if sd_like:
        from versadiff.convert.sd import multiflow_state_to_sd_diffusers

        _save(out / "unet", unet_config(c, "image", context="text"), multiflow_state_to_sd_diffusers(state, c))
        index.update(
            _class_name="StableDiffusionPipeline",
            unet=["diffusers", "UNet2DConditionModel"],
            safety_checker=[None, None],
            feature_extractor=[None, None],
            requires_safety_checker=False,
        )
    else:
        image_state, text_state = multiflow_state_to_diffusers(state, c)
        if image_state is not None:
            _save(out / "image_unet", unet_config(c, "image"), image_state)
            index["image_unet"] = ["diffusers", "UNet2DConditionModel"]
        if text_state is not None:
            _save(out / "text_unet", unet_config(c, "text"), text_state)
            # the hub uses ["versatile_diffusion", ...], which diffusers 0.39 no longer resolves (the pipeline moved to
            # pipelines/deprecated); its current module path resolves
            index["text_unet"] = [
                "diffusers.pipelines.deprecated.versatile_diffusion.modeling_text_unet",
                "UNetFlatConditionModel",
            ]
        both = image_state is not None and text_state is not None
        index["_class_name"] = "VersatileDiffusionPipeline" if both else "VersatileDiffusionImageVariationPipeline"
    image_codec = codecs.get("image")
    if image_codec is not None and getattr(image_codec, "module", None) is not None:
        ae = image_codec.module
        cfg = vae_config(ae, c.image_size * ae.config.downsample_factor)
        cfg["scaling_factor"] = float(image_codec.scale)
        _save(out / "vae", cfg, ae.state_dict())
        index["vae"] = ["diffusers", "AutoencoderKL"]
    text_enc, image_enc = encoders.get("text"), encoders.get("image")
    if text_enc is not None and hasattr(text_enc, "model"):
        _save_hf(text_enc.model, out / "text_encoder")
        _copy_tokenizer(text_enc.tokenizer.folder, out / "tokenizer", text_enc.context_length)
        index["text_encoder"] = ["transformers", "CLIPTextModelWithProjection" if not sd_like else "CLIPTextModel"]
        index["tokenizer"] = ["transformers", "CLIPTokenizer"]
    if image_enc is not None and hasattr(image_enc, "model"):
        _save_hf(image_enc.model, out / "image_encoder")
        size = image_enc.image_size
        fe = out / "image_feature_extractor"
        fe.mkdir(parents=True, exist_ok=True)
        (fe / "preprocessor_config.json").write_text(
            json.dumps(
                {
                    "image_processor_type": "CLIPImageProcessor",
                    "feature_extractor_type": "CLIPFeatureExtractor",
                    "crop_size": {"height": size, "width": size},
                    "size": {"shortest_edge": size},
                    "do_center_crop": True,
                    "do_normalize": True,
                    "do_resize": True,
                    "do_rescale": True,
                    "rescale_factor": 1 / 255,
                    "resample": 3,
                    "image_mean": list(image_enc.config.image_mean),
                    "image_std": list(image_enc.config.image_std),
                    "do_convert_rgb": True,
                },
                indent=2,
            )
            + "\n"
        )
        index["image_encoder"] = ["transformers", "CLIPVisionModelWithProjection"]
        index["image_feature_extractor"] = ["transformers", "CLIPImageProcessor"]
    sched = out / "scheduler"
    sched.mkdir(parents=True, exist_ok=True)
    sched_cfg = _scheduler_config(run)
    (sched / "scheduler_config.json").write_text(
        json.dumps({**sched_cfg, "_diffusers_version": DIFFUSERS_VERSION}, indent=2) + "\n"
    )
    index["scheduler"] = ["diffusers", sched_cfg["_class_name"]]
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return out
