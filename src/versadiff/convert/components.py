"""The codecs and context encoders that travel with a converted diffusion model.

Image autoencoders: an original latent-diffusion / taming state dict (SD's `first_stage_model.*`, VD's `autokl.*`,
`kl-f8.pth`; names in versadiff.convert.ldm_vae), a diffusers AutoencoderKL folder, or a versadiff autoencoder.
Text VAE: VD's `optimus-vae.pth` (versadiff.convert.optimus). CLIP: a local transformers folder (a CLIPModel, or
the single tower as in a diffusers pipeline's text_encoder/ or image_encoder/), with its tokenizer found there or
in the pipeline's tokenizer/ folder.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Mapping

from torch import Tensor

from versadiff.convert.base import Component, read_checkpoint, tensors_of

__all__ = ["infer_kl_config", "kl_vae", "kl_vae_component", "clip_component", "text_vae_component"]


def _levels(state: Mapping[str, Tensor], pattern: str) -> list[int]:
    return sorted({int(m.group(1)) for k in state if (m := re.match(pattern, k))})


def infer_kl_config(ldm: Mapping[str, Tensor], **overrides: Any) -> Any:
    """The KLConfig of an LDM AutoencoderKL state dict (kl-f8 layout), read from the shapes.

    Not readable from shapes: norm_groups (32), dropout, scale_factor (0.18215): pass them as overrides.
    """
    from versadiff.autoencoders.kl import KLConfig

    try:
        base = int(ldm["encoder.conv_in.weight"].shape[0])
        levels = _levels(ldm, r"encoder\.down\.(\d+)\.")
        mult = tuple(int(ldm[f"encoder.down.{i}.block.0.conv1.weight"].shape[0]) // base for i in levels)
        fields = dict(
            in_channels=int(ldm["encoder.conv_in.weight"].shape[1]),
            out_channels=int(ldm["decoder.conv_out.weight"].shape[0]),
            base_channels=base,
            channel_mult=mult,
            num_res_blocks=len(_levels(ldm, r"encoder\.down\.0\.block\.(\d+)\.")),
            z_channels=int(ldm["decoder.conv_in.weight"].shape[1]),
            mid_attention="encoder.mid.attn_1.q.weight" in ldm,
            use_quant_conv="quant_conv.weight" in ldm,
            use_post_quant_conv="post_quant_conv.weight" in ldm,
        )
    except KeyError as e:
        raise ValueError(f"not an LDM AutoencoderKL state dict: {e.args[0]!r} is missing") from None
    if any(re.match(r"(encoder\.down|decoder\.up)\.\d+\.attn\.", k) for k in ldm):
        raise ValueError(
            "this autoencoder has attention inside its resolution levels (attn_resolutions), which "
            "versadiff's AutoencoderKL does not build (only the middle block's attention)"
        )
    return KLConfig.from_dict({**fields, **overrides})


def kl_vae(source: str | Path | Mapping[str, Tensor], prefix: str = "", **overrides: Any) -> Any:
    """An AutoencoderKL from an LDM state dict / file (keys under `prefix`) or a diffusers AutoencoderKL folder
    (`overrides`, e.g. norm_groups, apply to LDM state dicts only: a folder carries its config)."""
    from versadiff.autoencoders.kl import AutoencoderKL
    from versadiff.convert.ldm_vae import ldm_to_versadiff

    if isinstance(source, (str, Path)) and Path(source).is_dir():
        folder = Path(source).expanduser()
        if (folder / "vae" / "config.json").is_file():
            folder = folder / "vae"
        cfg = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
        if cfg.get("type") == "autoencoder_kl":  # a versadiff save_pretrained folder
            return AutoencoderKL.load_pretrained(folder)
        return AutoencoderKL.from_diffusers(folder)
    state = dict(source) if isinstance(source, Mapping) else tensors_of(read_checkpoint(source), str(source))
    if prefix:
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    state = {k: v for k, v in state.items() if not k.startswith("loss.")}
    model = AutoencoderKL(infer_kl_config(state, **overrides))
    from versadiff.autoencoders.blocks import load_state_strict

    load_state_strict(
        model,
        ldm_to_versadiff({k: v.float() for k, v in state.items()}, len(model.config.channel_mult)),
        f"LDM autoencoder {source if isinstance(source, (str, Path)) else '(in memory)'}",
    )
    return model.eval()


def kl_vae_component(source: Any, prefix: str = "", scale_factor: float | None = None, **overrides: Any) -> Component:
    ae = kl_vae(source, prefix, **overrides)
    spec: dict[str, Any] = {"type": "kl"}
    if scale_factor is not None:
        spec["scale_factor"] = float(scale_factor)
    return Component("codecs", "image", spec, "vae", module=ae)


def _tokenizer_folder(folder: Path) -> Path | None:
    for cand in (folder, folder / "tokenizer", folder.parent / "tokenizer"):
        if (cand / "vocab.json").is_file() and (cand / "merges.txt").is_file():
            return cand
    return None


def clip_component(folder: str | Path, modality: str, **spec: Any) -> Component:
    """A CLIP context encoder (clip_text / clip_image) read from a local transformers folder."""
    folder = Path(folder).expanduser()
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{str(folder)!r} is not a transformers CLIP folder (no config.json)")
    name = "text_encoder" if modality == "text" else "image_encoder"
    comp = Component("encoders", modality, {"type": f"clip_{modality}", **spec}, name, folder=folder)
    if modality == "text":
        tok = _tokenizer_folder(folder)
        if tok is None:
            raise FileNotFoundError(
                f"no CLIP tokenizer (vocab.json + merges.txt) in {folder}, {folder}/tokenizer or "
                f"{folder.parent}/tokenizer"
            )
        if tok != folder:
            comp.siblings["tokenizer"] = tok
    return comp


def text_vae_component(source: str | Path, **overrides: Any) -> Component:
    """VD's Optimus text VAE (optimus-vae.pth, or a versadiff text_vae folder) as the text codec."""
    from versadiff.autoencoders.text_vae import TextVAE

    p = Path(source).expanduser()
    if p.is_dir():
        model = TextVAE.load_pretrained(p)  # a versadiff folder carries its tokenizers
    else:
        from versadiff.convert.optimus import load_optimus

        model = load_optimus(p, **overrides)
    return Component("codecs", "text", {"type": "text_vae"}, "text_vae", module=model)
