"""VQ-Diffusion originals, diffusers VQDiffusionPipeline folders and taming VQGANs -> versadiff.

Layouts (reference vq_diffusion.md; microsoft/VQ-Diffusion @d1d3948 `image_synthesis/engine/solver.py`,
`modeling/transformers/transformer_utils.py`, `modeling/embeddings/dalle_mask_image_embedding.py`,
`modeling/codecs/image_codec/taming_gumbel_vqvae.py`; CompVis/taming-transformers `taming/models/vqgan.py`,
`taming/modules/vqvae/quantize.py`; diffusers `models/transformers/transformer_2d.py` (discrete input),
`pipelines/deprecated/vq_diffusion`):
  released training checkpoints (coco_pretrained.pth, cub_pretrained.pth, imagenet_pretrained.pth, ithq_learnable.pth,
      ...): {"last_epoch", "last_iter", "model": the whole model (content_codec.*, condition_codec.*,
      transformer.{transformer.*, condition_emb.*, empty_text_embed, schedule buffers}), "ema": the
      DiffusionTransformer alone (transformer.*, ...), "clip_grad_norm", "optimizer_and_scheduler"} -- the EMA
      weights are taken (as the authors' inference script does), the optimizer state is ignored.
      Transformer: content_emb.{emb, height_emb, width_emb}, blocks.N.{ln1, attn1|attn, ln1_1, attn2, ln2,
      mlp}, to_logits.{0,1}; attention key/query/value/proj Linears (q, k, v fused into versadiff's qkv / kv).
  diffusers folders: transformer/ (Transformer2DModel, num_vector_embeds), vqvae/ (VQModel),
      learned_classifier_free_sampling_embeddings/, text_encoder/, tokenizer/, scheduler/.
  taming VQGANs (vqgan_imagenet_f16_16384, vqgan_ffhq_f16_1024, taming_f8_8192_openimages GumbelVQ): Lightning
      {"state_dict": {encoder.*, decoder.*, quant_conv, post_quant_conv, quantize.embedding | quantize.embed +
      quantize.proj (Gumbel), loss.*}}; the LDM names of versadiff.convert.ldm_vae.
Not representable, and refused with a one-line error rather than approximated:
  - VQGANs with attention inside their resolution levels (attn_resolutions, e.g. [16] in the f16 ImageNet and
    [32] in the f8 OpenImages models): versadiff's VQAutoencoder has attention in its middle block only;
  - the ImageNet / FFHQ transformers' 32x32 position tables sliced to a 16x16 token grid (row r of a 32-wide grid
    is not a 16-wide grid's row), unless VQTransformerConfig gains a `pos_grid` field.
Exact with a documented difference: GumbelVQ decodes exactly, but versadiff encodes by the nearest code instead
of the argmax of the Gumbel logits (quantize.proj is dropped); the reduced codebooks (2887 / 974 of 8192 / 16384
codes, help_folder/statistics/taming_vqvae_*.pt: option `mapping`) decode exactly, and encode by the nearest
kept code where the original sends every unused code to id 0. A 1000-row class table (no CF null) gets the
mean row as its null: exactly what the original computes for the null label.
VQ-Diffusion's text context (CLIP ViT-B/32 ln_final tokens, each L2-normalised) is the CLIP text encoder with
context=normalized (a diffusers folder's text_encoder/ + tokenizer/, or --text-encoder CLIP_DIR).
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any, Mapping

import torch
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

__all__ = [
    "vq_transformer_state_from_original",
    "vq_transformer_state_from_diffusers",
    "infer_vq_config",
    "taming_vq_state",
    "taming_vq",
    "load_vq_diffusion",
    "load_vq_diffusion_diffusers",
    "load_taming_vqgan",
]

#: VQ-Diffusion's guidance scale s and truncation per released model family (reference 4.2-4.3); w = s - 1
RELEASED_SAMPLING = {
    "text": {"guidance": 2.0, "truncation": 0.86, "aux_weight": 5.0e-4},
    "class": {"guidance": 0.5, "truncation": 0.86, "aux_weight": 1.0e-3},
    "none": {"guidance": 0.0, "truncation": 0.86, "aux_weight": 1.0e-3},
}


# ----------------------------------------------------------------------------------------------- transformer


def _cat(*ts: Tensor) -> Tensor:
    return torch.cat(list(ts), dim=0)


def vq_transformer_state_from_original(
    state: Mapping[str, Tensor], *, num_classes: int | None = None
) -> tuple[dict[str, Tensor], list[str]]:
    """(versadiff VQTransformer state, source keys not used) of an original Text2Image / Condition2Image /
    UnCondition2Image transformer state dict (keys content_emb.*, blocks.*, to_logits.*; plus an optional
    `empty_text_embed`). A class table without a null row gets the mean row appended (the original's null)."""
    s = dict(state)
    out: dict[str, Tensor] = {}
    used: set[str] = set()

    def take(src: str, dst: str, value: Tensor | None = None) -> None:
        out[dst] = s[src] if value is None else value
        used.add(src)

    take("content_emb.emb.weight", "tok_emb.weight")
    for src, dst in (("height_emb", "row_emb"), ("width_emb", "col_emb")):
        key = f"content_emb.{src}.weight" if f"content_emb.{src}.weight" in s else f"content_emb.{src}"
        take(key, f"{dst}.weight", s[key].reshape(-1, s[key].shape[-1]))
    blocks = sorted({int(m.group(1)) for k in s if (m := re.match(r"blocks\.(\d+)\.", k))})
    for n in blocks:
        b, o = f"blocks.{n}.", f"blocks.{n}."
        for p in ("emb.weight", "linear.weight", "linear.bias"):
            take(b + "ln1." + p, o + "norm1." + p)
        self_attn = "attn1" if b + "attn1.query.weight" in s else "attn"
        for p in ("weight", "bias"):
            take(
                b + f"{self_attn}.query.{p}",
                o + f"attn.qkv.{p}",
                _cat(*(s[b + f"{self_attn}.{x}.{p}"] for x in ("query", "key", "value"))),
            )
            used.update(b + f"{self_attn}.{x}.{p}" for x in ("key", "value"))
            take(b + f"{self_attn}.proj.{p}", o + f"attn.proj.{p}")
        if b + "attn2.query.weight" in s:
            for p in ("emb.weight", "linear.weight", "linear.bias"):
                take(b + "ln1_1." + p, o + "norm2." + p)
            for p in ("weight", "bias"):
                take(b + f"attn2.query.{p}", o + f"cross.q.{p}")
                take(
                    b + f"attn2.key.{p}", o + f"cross.kv.{p}", _cat(s[b + f"attn2.key.{p}"], s[b + f"attn2.value.{p}"])
                )
                used.add(b + f"attn2.value.{p}")
                take(b + f"attn2.proj.{p}", o + f"cross.proj.{p}")
        if b + "ln2.emb.weight" in s:  # class AdaLN (selfcondition)
            emb = s[b + "ln2.emb.weight"]
            if num_classes is not None and emb.shape[0] == num_classes:
                emb = torch.cat([emb, emb.double().mean(0, keepdim=True).to(emb.dtype)])  # AdaLayerNorm's null
            take(b + "ln2.emb.weight", o + "norm3.emb.weight", emb)
            for p in ("linear.weight", "linear.bias"):
                take(b + "ln2." + p, o + "norm3." + p)
        else:
            for p in ("weight", "bias"):
                take(b + f"ln2.{p}", o + f"norm3.{p}")
        fc = ("mlp.0", "mlp.2") if b + "mlp.0.weight" in s else ("mlp.conv1", "mlp.conv2")
        for src, dst in zip(fc, ("mlp.fc1", "mlp.fc2")):
            for p in ("weight", "bias"):
                take(b + f"{src}.{p}", o + f"{dst}.{p}")
    for src, dst in (("to_logits.0", "norm_out"), ("to_logits.1", "head")):
        for p in ("weight", "bias"):
            take(f"{src}.{p}", f"{dst}.{p}")
    if "empty_text_embed" in s:
        take("empty_text_embed", "null_context", s["empty_text_embed"].float())
    return out, sorted(k for k in s if k not in used)


def vq_transformer_state_from_diffusers(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """diffusers' discrete Transformer2DModel -> versadiff VQTransformer (null_context not included)."""
    s = dict(state)
    out = {
        "tok_emb.weight": s["latent_image_embedding.emb.weight"],
        "row_emb.weight": s["latent_image_embedding.height_emb.weight"],
        "col_emb.weight": s["latent_image_embedding.width_emb.weight"],
        "norm_out.weight": s["norm_out.weight"],
        "norm_out.bias": s["norm_out.bias"],
        "head.weight": s["out.weight"],
        "head.bias": s["out.bias"],
    }
    blocks = sorted({int(m.group(1)) for k in s if (m := re.match(r"transformer_blocks\.(\d+)\.", k))})
    for n in blocks:
        b, o = f"transformer_blocks.{n}.", f"blocks.{n}."
        for p in ("emb.weight", "linear.weight", "linear.bias"):
            out[o + "norm1." + p] = s[b + "norm1." + p]
            if b + "norm2." + p in s:
                out[o + "norm2." + p] = s[b + "norm2." + p]
        for p in ("weight", "bias"):
            out[o + f"attn.qkv.{p}"] = _cat(*(s[b + f"attn1.to_{x}.{p}"] for x in "qkv"))
            out[o + f"attn.proj.{p}"] = s[b + f"attn1.to_out.0.{p}"]
            if b + f"attn2.to_q.{p}" in s:
                out[o + f"cross.q.{p}"] = s[b + f"attn2.to_q.{p}"]
                out[o + f"cross.kv.{p}"] = _cat(s[b + f"attn2.to_k.{p}"], s[b + f"attn2.to_v.{p}"])
                out[o + f"cross.proj.{p}"] = s[b + f"attn2.to_out.0.{p}"]
            out[o + f"norm3.{p}"] = s[b + f"norm3.{p}"]
            out[o + f"mlp.fc1.{p}"] = s[b + f"ff.net.0.proj.{p}"]
            out[o + f"mlp.fc2.{p}"] = s[b + f"ff.net.2.{p}"]
    return out


def infer_vq_config(
    state: Mapping[str, Tensor],
    *,
    height: int | None = None,
    width: int | None = None,
    num_heads: int = 16,
    context_len: int = 77,
) -> dict[str, Any]:
    """VQTransformerConfig fields of a versadiff-named state dict. The head count is not in the weights (16 in
    every released model); the token grid defaults to the position tables' sizes."""
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    dim = int(state["tok_emb.weight"].shape[1])
    h = height or int(state["row_emb.weight"].shape[0])
    w = width or int(state["col_emb.weight"].shape[0])
    fc1 = state["blocks.0.mlp.fc1.weight"]
    cfg: dict[str, Any] = dict(
        num_embed=int(state["head.weight"].shape[0]),
        height=h,
        width=w,
        depth=depth,
        dim=dim,
        num_heads=num_heads,
        mlp_ratio=fc1.shape[0] / dim,
        mlp_type="fc" if fc1.ndim == 2 else "conv",
        num_steps=int(state["blocks.0.norm1.emb.weight"].shape[0]),
    )
    if "blocks.0.cross.kv.weight" in state:
        cfg.update(context_dim=int(state["blocks.0.cross.kv.weight"].shape[1]), context_len=context_len)
    if "blocks.0.norm3.emb.weight" in state:
        cfg["num_classes"] = int(state["blocks.0.norm3.emb.weight"].shape[0]) - 1
    return cfg


def _position_grid(cfg: dict[str, Any], tokens: int | None) -> None:
    """Fix the token grid when the position tables are larger than it (ImageNet / FFHQ: 32x32 tables, 256 tokens)."""
    rows, cols = cfg["height"], cfg["width"]
    if tokens is None or tokens == rows * cols:
        return
    from versadiff.nets.vq_transformer import VQTransformerConfig

    side = round(tokens**0.5)
    if "pos_grid" in {f.name for f in dataclasses.fields(VQTransformerConfig)}:
        cfg.update(height=side, width=side, pos_grid=[rows, cols])
        return
    raise ValueError(
        f"this transformer's position tables are {rows}x{cols} but it runs on {tokens} tokens "
        f"({side}x{side}), using the first {tokens} entries of the flattened {rows}x{cols} table; "
        "versadiff's VQTransformer cannot represent that (it needs a pos_grid field)"
    )


# ----------------------------------------------------------------------------------------------- VQGANs


def taming_vq_state(
    state: Mapping[str, Tensor], *, mapping: Tensor | None = None
) -> tuple[dict[str, Tensor], list[str]]:
    """A taming VQModel / GumbelVQ state dict in versadiff's VQAutoencoder names (notes returned); `mapping` is
    VQ-Diffusion's full_to_quantize table, which reduces the codebook to the kept codes."""
    from versadiff.convert.ldm_vae import ldm_to_versadiff

    s = {k: v for k, v in state.items() if not k.startswith("loss.")}
    notes = []
    if any(re.match(r"(encoder\.down|decoder\.up)\.\d+\.attn\.", k) for k in s):
        raise ValueError(
            "this VQGAN has attention inside its resolution levels (attn_resolutions); versadiff's "
            "VQAutoencoder has attention in its middle block only, so it cannot hold these weights"
        )
    if "quantize.embed.weight" in s:  # GumbelQuantize
        s["quantize.embedding.weight"] = s.pop("quantize.embed.weight")
        s.pop("quantize.proj.weight", None), s.pop("quantize.proj.bias", None)
        notes.append(
            "GumbelVQ: decoding is exact; encoding uses the nearest code instead of the argmax of the "
            "dropped Gumbel logits (quantize.proj)"
        )
    if mapping is not None:
        full_to_q = mapping.long().flatten()
        k = int(full_to_q.max()) + 1
        q_to_full = torch.full((k,), -1, dtype=torch.long)
        for full in range(full_to_q.numel() - 1, -1, -1):  # the first full id of each reduced id
            q_to_full[full_to_q[full]] = full
        s["quantize.embedding.weight"] = s["quantize.embedding.weight"][q_to_full]
        notes.append(f"codebook reduced to the {k} kept codes (decoding exact; encoding picks the nearest kept code)")
    levels = len({k.split(".")[2] for k in s if k.startswith("encoder.down.")})
    return ldm_to_versadiff(s, levels), notes


def taming_vq(
    state: Mapping[str, Tensor], *, mapping: Tensor | None = None, norm_groups: int = 32
) -> tuple[Any, list[str]]:
    """(VQAutoencoder, notes) of a taming VQGAN state dict (config read from the shapes; the GroupNorm group count
    is not in the weights: 32 in every taming model)."""
    from versadiff.autoencoders.blocks import load_state_strict
    from versadiff.autoencoders.vq import VQAutoencoder, VQConfig

    ours, notes = taming_vq_state(state, mapping=mapping)
    base = int(ours["encoder.conv_in.weight"].shape[0])
    levels = sorted({int(k.split(".")[2]) for k in ours if k.startswith("encoder.down_blocks.")})
    cfg = VQConfig(
        in_channels=int(ours["encoder.conv_in.weight"].shape[1]),
        out_channels=int(ours["decoder.conv_out.weight"].shape[0]),
        base_channels=base,
        channel_mult=tuple(
            int(ours[f"encoder.down_blocks.{i}.resnets.0.conv1.weight"].shape[0]) // base for i in levels
        ),
        num_res_blocks=len({k.split(".")[4] for k in ours if k.startswith("encoder.down_blocks.0.resnets.")}),
        z_channels=int(ours["encoder.conv_out.weight"].shape[0]),
        embed_dim=int(ours["quant_conv.weight"].shape[0]),
        n_embed=int(ours["quantize.embedding.weight"].shape[0]),
        mid_attention="encoder.mid_block.attentions.0.to_q.weight" in ours,
        norm_groups=norm_groups,
    )
    model = VQAutoencoder(cfg)
    load_state_strict(model, {k: v.float() for k, v in ours.items()}, "taming VQGAN")
    return model.eval(), notes


def _vq_component(model: Any) -> Component:
    return Component("codecs", "image", {"type": "vq_tokens"}, "vqvae", module=model)


def _vqvae_option(source: Any, mapping: Tensor | None, notes: list[str], norm_groups: int = 32) -> Component:
    from versadiff.autoencoders.vq import VQAutoencoder

    p = Path(source).expanduser()
    if p.is_dir():
        cfg = json.loads((p / "config.json").read_text()) if (p / "config.json").is_file() else {}
        model = (
            VQAutoencoder.load_pretrained(p) if cfg.get("type") == "autoencoder_vq" else VQAutoencoder.from_diffusers(p)
        )
        return _vq_component(model)
    model, more = taming_vq(tensors_of(read_checkpoint(p), str(p)), mapping=mapping, norm_groups=norm_groups)
    notes += more
    return _vq_component(model)


# ----------------------------------------------------------------------------------------------- run config


def _run_config(net: dict[str, Any], kind: str, num_steps: int, name: str) -> dict[str, Any]:
    from versadiff.config import RunConfig

    cfg = RunConfig().to_dict()
    rel = RELEASED_SAMPLING[kind]
    cfg.update(
        name=name,
        description=f"VQ-Diffusion ({kind}-conditional), converted",
        task="vq_diffusion",
        model={"type": "vq_transformer", **net},
    )
    cfg["discrete"] = {
        "schedule": "released",
        "num_steps": num_steps,
        "aux_weight": rel["aux_weight"],
        "p_uncond": 0.1 if kind != "none" else 0.0,
    }
    cfg["sample"].update(sampler="standard", steps=num_steps, guidance=rel["guidance"], truncation=rel["truncation"])
    return cfg


def _finish(
    fmt: str,
    state: dict[str, Tensor],
    net: dict[str, Any],
    report: KeyReport,
    components: list[Component],
    text_encoder: Any = None,
) -> Foreign:
    kind = "text" if net.get("context_dim") else ("class" if net.get("num_classes") else "none")
    cfg = _run_config(net, kind, int(net["num_steps"]), fmt)
    vq = next((c for c in components if c.section == "codecs"), None)
    f = vq.module.config.downsample_factor if vq is not None else 1
    shapes = {"image": [3, net["height"] * f, net["width"] * f]}
    info = {
        "data_shapes": shapes,
        "image_shape": shapes["image"],
        "num_classes": int(net.get("num_classes") or 0),
        "class_names": [],
        "token_grid": [net["height"], net["width"]],
    }
    if kind == "text" and text_encoder is not None:
        from versadiff.convert.components import clip_component

        # VQ-Diffusion's context: CLIP ViT-B/32's last_hidden_state (after ln_final), each token L2-normalised;
        # the zeros null is replaced by the network's learned null embedding (VQTransformer._context)
        components.append(clip_component(text_encoder, "text", context="normalized",
                                         context_length=int(net["context_len"])))
        cfg["flows"] = [{"name": "text-to-image", "null": "zeros"}]
    elif kind == "text":
        report.notes.append("a text-to-image model without --text-encoder: it samples with its null context "
                            "(convert again with --text-encoder CLIP_DIR, the pipeline's text_encoder/ folder)")
    if vq is None:
        report.notes.append("no image codec (option vqvae=...): versadiff's vq_diffusion task needs one to load")
    return Foreign(fmt, cfg, state, info, components, report)


# ----------------------------------------------------------------------------------------------- loaders


def _sub(obj: Mapping[str, Any], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix) :]: v for k, v in obj.items() if k.startswith(prefix) and torch.is_tensor(v)}


def load_vq_diffusion(
    path: Path,
    *,
    ema: bool | None = None,
    mapping: Any = None,
    vqvae: Any = None,
    num_heads: int = 16,
    text_encoder: Any = None,
    vae: Any = None,
    token_grid: Any = None,
    null_row: bool | None = None,
    vae_norm_groups: int = 32,
) -> Foreign:
    """A released VQ-Diffusion training checkpoint ({"model", "ema", "optimizer_and_scheduler", ...}).

    ema None / True: the EMA transformer (True requires it); False: the model's. mapping: the content codec's
    full_to_quantize table (a .pt LongTensor, help_folder/statistics/taming_vqvae_2887.pt) when the transformer
    has fewer codes than the VQGAN. vqvae: another image codec (taming ckpt, diffusers VQModel, versadiff folder).
    null_row: whether a class table's last row is the CF null (default: yes unless it has a round 1000 rows, as the
    released ImageNet model; imagenet_cf models have 1001). token_grid: the token grid when the weights do not say.
    """
    obj = read_checkpoint(path)
    if not isinstance(obj, Mapping) or not isinstance(obj.get("model"), Mapping):
        raise ValueError(f"{path} is not a VQ-Diffusion training checkpoint (no 'model' state dict)")
    model = obj["model"]
    report = KeyReport()
    has_ema = isinstance(obj.get("ema"), Mapping) and any(k.startswith("transformer.") for k in obj["ema"])
    if ema and not has_ema:
        raise ValueError(f"ema=True but {path} has no 'ema' transformer weights")
    use_ema = has_ema if ema is None else bool(ema)
    diffusion = _sub(obj["ema"], "") if use_ema else _sub(model, "transformer.")
    report.notes.append(
        "EMA transformer used"
        if use_ema
        else ("raw weights used; the file also has EMA weights" if has_ema else "the file has no EMA weights")
    )
    inner = _sub(diffusion, "transformer.")
    if "empty_text_embed" in diffusion:
        inner["empty_text_embed"] = diffusion["empty_text_embed"]
    classes = None
    if "blocks.0.ln2.emb.weight" in inner:
        rows = int(inner["blocks.0.ln2.emb.weight"].shape[0])
        if null_row is None:
            null_row = rows % 10 != 0  # 1000 (no CF null: the mean row is the null) or 1001
        classes = rows - 1 if null_row else rows
    state, unused = vq_transformer_state_from_original(inner, num_classes=classes)
    net = infer_vq_config(state, num_heads=num_heads)
    content_codec = _sub(model, "content_codec.")
    table = _table(mapping)
    tokens = _token_count(diffusion)
    if token_grid is not None:
        tokens = int(token_grid[0]) * int(token_grid[1])
    elif tokens is None and "context_dim" not in net and net["height"] * net["width"] == 1024:
        tokens = 256  # the released ImageNet / FFHQ transformers: 32x32 tables on a 16x16 grid
        report.notes.append("token grid assumed 16x16 (the released ImageNet / FFHQ configs; option token_grid)")
    _position_grid(net, tokens)
    if "context_dim" in net and "null_context" not in state:
        state["null_context"] = torch.zeros(net["context_len"], net["context_dim"])
        report.notes.append(
            "no learnable null (empty_text_embed): null_context set to zeros; the original's "
            "classifier-free null was the CLIP encoding of ''"
        )
    report.unused = sorted(
        set(f"transformer.{k}" for k in unused)
        | {k for k in diffusion if not k.startswith("transformer.") and k != "empty_text_embed"}
        | ({f"model.{k}" for k in model if not k.startswith("content_codec.")} if use_ema else set())
        | {k for k in obj if k not in ("model", "ema")}
        | ({"ema"} if has_ema and not use_ema else set())
    )
    components: list[Component] = []
    source = vqvae or vae
    if source is not None:
        components.append(_vqvae_option(source, table, report.notes, vae_norm_groups))
    elif content_codec:
        vq_state = {**_sub(content_codec, "enc."), **_sub(content_codec, "dec.")}
        try:
            codec, notes = taming_vq(vq_state, mapping=table, norm_groups=vae_norm_groups)
            if codec.config.n_embed != net["num_embed"]:
                raise ValueError(
                    f"the content codec has {codec.config.n_embed} codes but the transformer {net['num_embed']}: "
                    "pass its reduction table as mapping=taming_vqvae_<K>.pt"
                )
            report.notes += notes
            components.append(_vq_component(codec))
        except (ValueError, KeyError) as e:
            report.notes.append(f"content codec not converted: {e}")
    return _finish("vq_diffusion", state, net, report, components, text_encoder)


def _token_count(diffusion: Mapping[str, Tensor]) -> int | None:
    """The content sequence length where the weights hold it: the text models' (unused) causal-mask buffer."""
    mask = next((v for k, v in diffusion.items() if k.endswith("attn2.mask")), None)
    return int(mask.shape[-1]) if mask is not None else None


def _table(mapping: Any) -> Tensor | None:
    """VQ-Diffusion's full_to_quantize reduction table from a tensor or a .pt file."""
    if mapping is None or torch.is_tensor(mapping):
        return mapping
    raw = read_checkpoint(mapping)
    return raw if torch.is_tensor(raw) else next(v for v in raw.values() if torch.is_tensor(v))


def load_vq_diffusion_diffusers(
    path: Path,
    *,
    num_heads: int | None = None,
    vqvae: Any = None,
    text_encoder: Any = None,
    ema: bool | None = None,
    vae: Any = None,
    vae_norm_groups: int = 32,
) -> Foreign:
    """A diffusers VQDiffusionPipeline folder (transformer/, vqvae/, learned_classifier_free_sampling_embeddings/,
    text_encoder/, tokenizer/, scheduler/)."""
    from versadiff.autoencoders.vq import VQAutoencoder
    from versadiff.convert.vd_files import _unet_state

    if ema:
        raise ValueError(f"{path} is a diffusers folder: it holds one set of weights (no EMA)")
    tdir = path / "transformer"
    cfg = json.loads((tdir / "config.json").read_text())
    if not cfg.get("num_vector_embeds"):
        raise ValueError(f"{tdir} is not a discrete (VQ-Diffusion) Transformer2DModel")
    state = vq_transformer_state_from_diffusers(_unet_state(tdir))
    heads = int(num_heads or cfg.get("num_attention_heads", 16))
    net = infer_vq_config(state, height=cfg["sample_size"], width=cfg["sample_size"], num_heads=heads)
    report = KeyReport()
    emb_dir = path / "learned_classifier_free_sampling_embeddings"
    if "context_dim" in net:
        emb = None
        if emb_dir.is_dir():
            emb = _unet_state(emb_dir).get("embeddings")
        if emb is None:
            emb = torch.zeros(net["context_len"], net["context_dim"])
            report.notes.append("no learned classifier-free embeddings: null_context set to zeros")
        state["null_context"] = emb.float()
    sched = path / "scheduler" / "scheduler_config.json"
    if sched.is_file():
        sc = json.loads(sched.read_text())
        defaults = {
            "alpha_cum_start": 0.99999,
            "alpha_cum_end": 0.000009,
            "gamma_cum_start": 0.000009,
            "gamma_cum_end": 0.99999,
        }
        if any(abs(float(sc.get(k, v)) - v) > 1e-12 for k, v in defaults.items()):
            raise ValueError(
                f"{sched}: a VQDiffusionScheduler with non-released alpha/gamma ramps has no versadiff preset"
            )
        if int(sc.get("num_train_timesteps", net["num_steps"])) != net["num_steps"]:
            raise ValueError(f"{sched}: num_train_timesteps differs from the transformer's {net['num_steps']} steps")
    components: list[Component] = []
    source = vqvae or vae
    if source is not None:
        components.append(_vqvae_option(source, None, report.notes, vae_norm_groups))
    elif (path / "vqvae").is_dir():
        components.append(_vq_component(VQAutoencoder.from_diffusers(path / "vqvae")))
    if text_encoder is None and (path / "text_encoder").is_dir():
        text_encoder = path / "text_encoder"
    return _finish("vq_diffusion_diffusers", state, net, report, components, text_encoder)


def load_taming_vqgan(path: Path, *, mapping: Any = None, ema: bool | None = None, norm_groups: int = 32) -> Foreign:
    """A taming VQGAN on its own becomes a versadiff autoencoder run (task autoencoder)."""
    from versadiff.config import RunConfig

    table = _table(mapping)
    model, notes = taming_vq(tensors_of(read_checkpoint(path), str(path)), mapping=table, norm_groups=norm_groups)
    cfg = RunConfig().to_dict()
    cfg.update(
        name="taming_vqgan", description="taming VQGAN, converted", task="autoencoder", model=model.config.to_spec()
    )
    report = KeyReport(notes=notes)
    state = {k: v for k, v in model.state_dict().items()}
    info = {
        "data_shapes": {"image": [model.config.in_channels, 256, 256]},
        "image_shape": [model.config.in_channels, 256, 256],
        "num_classes": 0,
        "class_names": [],
    }
    return Foreign("taming_vqgan", cfg, state, info, [], report)


# ----------------------------------------------------------------------------------------------- registration


def _is_vq_diffusion(p: Probe) -> bool:
    return p.path.is_file() and (
        p.has_prefix("transformer.transformer.", sub=("model",))
        or p.has_prefix("transformer.content_emb.", sub=("ema",))
    )


def _is_vq_diffusers(p: Probe) -> bool:
    if not p.is_dir:
        return False
    index = p.json("model_index.json") or {}
    cfg = p.json("transformer/config.json") or {}
    return index.get("_class_name") == "VQDiffusionPipeline" or bool(cfg.get("num_vector_embeds"))


def _is_taming(p: Probe) -> bool:
    return (
        p.path.is_file()
        and p.has_prefix("quantize.")
        and p.has_prefix("encoder.down.")
        and p.has_prefix("post_quant_conv.")
    )


register_format(
    Format(
        "vq_diffusion",
        "VQ-Diffusion released checkpoint (model + ema + optimizer; EMA taken)",
        _is_vq_diffusion,
        load_vq_diffusion,
        command="versadiff convert coco_pretrained.pth --option mapping=taming_vqvae_2887.pt --out vqd_coco",
    )
)
register_format(
    Format(
        "vq_diffusion_diffusers",
        "diffusers VQDiffusionPipeline folder",
        _is_vq_diffusers,
        load_vq_diffusion_diffusers,
        command="versadiff convert vq-diffusion-ithq/ --out vqd_ithq",
    )
)
register_format(
    Format(
        "taming_vqgan",
        "taming-transformers VQGAN (VQModel / GumbelVQ Lightning checkpoint)",
        _is_taming,
        load_taming_vqgan,
        command="versadiff convert vqgan_imagenet_f16_16384.ckpt --out vqgan_f16",
    )
)
