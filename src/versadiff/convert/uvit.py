"""U-ViT originals (baofff/U-ViT `nnet_ema.pth` / `nnet.pth`) -> versadiff's UViT, with each published model's
training and sampling settings.

Layout (baofff/U-ViT @ce55170 `libs/uvit.py`, `libs/uvit_t2i.py`; reference uvit_unidiffuser.md §1): a plain state
dict of the nnet, saved by `utils.TrainState.save` (nnet.pth, nnet_ema.pth -- take the EMA file):
    patch_embed.proj.{weight,bias}, [time_embed.{0,2}.* only if mlp_time_embed], [label_emb.weight],
    [context_embed.*], pos_embed, {in_blocks.N, mid_block, out_blocks.N}.{norm1, attn.qkv, attn.proj, norm2,
    mlp.fc1, mlp.fc2, skip_linear (out blocks)}.*, norm.*, decoder_pred.*, [final_layer.* (conv=True)]
versadiff's UViT uses the same names except patch_embed.{weight,bias}; everything else maps one to one, so
outputs are equal for equal time inputs. Not in the weights: the head count (published: head width 64, 16 heads
for the 1152-wide H models) -- option num_heads.
Null class: the latent ImageNet models have num_classes=1001 (row 1000 = the CFG null) = versadiff's
num_classes=1000 plus its null row. The ImageNet-64 models have 1000 rows and no null; versadiff's UViT always adds
a null row unless UViTConfig has `null_class` (then null_class=False, a strict load). Without it the converter
appends the mean class embedding as that row (never used by the original, which has no CFG) and says so.
Time input: the originals feed the network 999*t (continuous VP-SDE models) or the 1-based step n = 1000*t
(discrete models); versadiff's schedules feed 1000*t (VP-SDE) and the 0-based index 1000*t - 1 (discrete), a
difference of 0.1% / one step in the time token that the notes of every conversion state.
"""

from __future__ import annotations

import dataclasses
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
    "PUBLISHED",
    "uvit_state_from_original",
    "uvit_state_to_original",
    "infer_uvit_config",
    "load_uvit",
    "uvit_foreign",
]


@dataclasses.dataclass(frozen=True)
class Published:
    """A released U-ViT: its architecture signature and the run settings of its config file."""

    name: str
    config_file: str
    preset: str | None  # the packaged run preset with its training / sampling settings
    signature: tuple  # (in_channels, image_size, patch, dim, depth, label rows, context_dim)
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)  # run-config changes from the preset


_DISCRETE = {"type": "discrete", "betas": "scaled_linear", "num_steps": 1000}
PUBLISHED = [
    Published("cifar10_uvit_small", "configs/cifar10_uvit_small.py", "uvit_cifar10", (3, 32, 2, 512, 12, 0, None)),
    Published("celeba64_uvit_small", "configs/celeba64_uvit_small.py", "uvit_celeba64", (3, 64, 4, 512, 12, 0, None)),
    Published(
        "imagenet64_uvit_mid", "configs/imagenet64_uvit_mid.py", "uvit_imagenet64_mid", (3, 64, 4, 768, 16, 1000, None)
    ),
    Published(
        "imagenet64_uvit_large",
        "configs/imagenet64_uvit_large.py",
        "uvit_imagenet64_large",
        (3, 64, 4, 1024, 20, 1000, None),
    ),
    Published(
        "imagenet256_uvit_large",
        "configs/imagenet256_uvit_large.py",
        "uvit_imagenet256_latent",
        (4, 32, 2, 1024, 20, 1001, None),
    ),
    Published(
        "imagenet256_uvit_huge",
        "configs/imagenet256_uvit_huge.py",
        "uvit_imagenet256_latent",
        (4, 32, 2, 1152, 28, 1001, None),
        {
            "diffusion.schedule": _DISCRETE,
            "diffusion.p_uncond": 0.1,
            "sample.sampler": "dpmpp",
            "train.max_steps": 500000,
            "description": "U-ViT-H/2 ImageNet 256 latent, CFG (converted; discrete SD schedule, DPM-Solver++ 50, s = 0.4)",
        },
    ),
    Published(
        "imagenet512_uvit_large",
        "configs/imagenet512_uvit_large.py",
        "uvit_imagenet512_latent",
        (4, 64, 4, 1024, 20, 1001, None),
    ),
    Published(
        "imagenet512_uvit_huge",
        "configs/imagenet512_uvit_huge.py",
        "uvit_imagenet512_latent",
        (4, 64, 4, 1152, 28, 1001, None),
        {
            "diffusion.schedule": _DISCRETE,
            "diffusion.p_uncond": 0.1,
            "sample.sampler": "dpmpp",
            "description": "U-ViT-H/4 ImageNet 512 latent, CFG (converted; discrete SD schedule, DPM-Solver++ 50, s = 0.7)",
        },
    ),
    Published("mscoco_uvit_small", "configs/mscoco_uvit_small.py", "uvit_mscoco", (4, 32, 2, 512, 12, 0, 768)),
    Published(
        "mscoco_uvit_small_deep",
        "configs/mscoco_uvit_small.py --config.nnet.depth=16",
        "uvit_mscoco",
        (4, 32, 2, 512, 16, 0, 768),
        {"description": "U-ViT-S/2-Deep MS-COCO text-to-image (converted)"},
    ),
]


def uvit_state_from_original(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Original names -> versadiff's (patch_embed.proj.* -> patch_embed.*; the rest is unchanged)."""
    return {
        k.replace("patch_embed.proj.", "patch_embed.", 1) if k.startswith("patch_embed.proj.") else k: v
        for k, v in state.items()
    }


def uvit_state_to_original(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {
        ("patch_embed.proj." + k[len("patch_embed.") :]) if k.startswith("patch_embed.") else k: v
        for k, v in state.items()
    }


def _has_null_field() -> bool:
    from versadiff.nets.uvit import UViTConfig

    return "null_class" in {f.name for f in dataclasses.fields(UViTConfig)}


def infer_uvit_config(
    state: Mapping[str, Tensor],
    *,
    num_heads: int | None = None,
    latent_null: bool | None = None,
    num_context_tokens: int | None = None,
) -> dict[str, Any]:
    """The UViTConfig fields (plus "label_rows") of an original state dict (original or versadiff names).

    latent_null: whether the last label row is a CFG null (None: yes for 1001 rows, no for others).
    """
    s = uvit_state_from_original(state)
    try:
        dim = int(s["pos_embed"].shape[2])
        tokens = int(s["pos_embed"].shape[1])
        patch = int(s["patch_embed.weight"].shape[2])
        cin = int(s["patch_embed.weight"].shape[1])
    except KeyError as e:
        raise ValueError(f"not a U-ViT state dict: {e.args[0]!r} is missing") from None
    depth = 2 * len({k.split(".")[1] for k in s if k.startswith("in_blocks.")})
    rows = int(s["label_emb.weight"].shape[0]) if "label_emb.weight" in s else 0
    cdim = int(s["context_embed.weight"].shape[1]) if "context_embed.weight" in s else None
    out_ch = int(s["decoder_pred.weight"].shape[0]) // (patch * patch)
    extras = 2 if rows else 1
    heads = num_heads or (16 if dim == 1152 else max(dim // 64, 1))
    cfg: dict[str, Any] = dict(
        in_channels=cin,
        out_channels=None if out_ch == cin else out_ch,
        patch_size=patch,
        embed_dim=dim,
        depth=depth,
        num_heads=heads,
        mlp_ratio=s["in_blocks.0.mlp.fc1.weight"].shape[0] / dim,
        qkv_bias="in_blocks.0.attn.qkv.bias" in s,
        mlp_time_embed="time_embed.0.weight" in s,
        conv_head="final_layer.weight" in s,
        skip="out_blocks.0.skip_linear.weight" in s,
    )
    if cdim is not None:
        # tokens = 1 + L + (S / p)^2; U-ViT's text models use L = 77 CLIP tokens
        square = lambda n: n > 0 and round(n**0.5) ** 2 == n  # noqa: E731
        lengths = [n for n in [num_context_tokens or 77] + list(range(1, tokens - 1)) if square(tokens - 1 - n)]
        if not lengths:
            raise ValueError(f"pos_embed has {tokens} tokens: no context length leaves a square patch grid")
        cfg.update(context_dim=cdim, num_context_tokens=lengths[0])
        extras = 1 + lengths[0]
    grid = round((tokens - extras) ** 0.5)
    if grid * grid != tokens - extras:
        raise ValueError(f"pos_embed has {tokens} tokens, which is not {extras} extra tokens plus a square patch grid")
    cfg["image_size"] = grid * patch
    null = (rows == 1001) if latent_null is None else latent_null
    if rows:
        cfg["num_classes"] = rows - 1 if null else rows
        if not null and _has_null_field():
            cfg["null_class"] = False
    cfg["label_rows"] = rows
    cfg["has_null_row"] = bool(rows and null)
    return cfg


def _match(cfg: dict[str, Any]) -> Published | None:
    sig = (
        cfg["in_channels"],
        cfg["image_size"],
        cfg["patch_size"],
        cfg["embed_dim"],
        cfg["depth"],
        cfg["label_rows"],
        cfg.get("context_dim"),
    )
    return next((p for p in PUBLISHED if p.signature == sig), None)


def _set(d: dict[str, Any], dotted: str, value: Any) -> None:
    *path, last = dotted.split(".")
    for p in path:
        d = d.setdefault(p, {})
    d[last] = value


def load_uvit(
    path: Path,
    *,
    num_heads: int | None = None,
    vae: Any = None,
    text_encoder: Any = None,
    preset: str | None = None,
    ema: bool | None = None,
    null_row: bool | None = None,
    scale_factor: float | None = None,
) -> Foreign:
    """A U-ViT original (nnet_ema.pth / nnet.pth / .safetensors). The published model is recognised from its
    shapes (preset=NAME to choose the run settings yourself); vae: the KL autoencoder of latent models
    (U-ViT's autoencoder_kl.pth / autoencoder_kl_ema.pth, SD's kl-f8, or a diffusers vae/ folder); null_row: whether
    the last label row is the CFG null (default: yes for the 1001-row latent ImageNet models only)."""
    state = tensors_of(read_checkpoint(path), str(path))
    foreign = uvit_foreign(
        state,
        num_heads=num_heads,
        vae=vae,
        text_encoder=text_encoder,
        preset=preset,
        null_row=null_row,
        scale_factor=scale_factor,
    )
    if ema is True and "ema" not in Path(path).stem:
        foreign.report.notes.append(
            f"{Path(path).name} does not look like an EMA file; U-ViT saves EMA weights as nnet_ema.pth"
        )
    return foreign


def uvit_foreign(
    original: Mapping[str, Tensor],
    *,
    num_heads: int | None = None,
    vae: Any = None,
    text_encoder: Any = None,
    preset: str | None = None,
    null_row: bool | None = None,
    scale_factor: float | None = None,
) -> Foreign:
    """load_uvit on a state dict in memory (original names)."""
    from versadiff.config import RunConfig, load_config
    from versadiff.convert.components import clip_component, kl_vae_component

    state = uvit_state_from_original(original)
    report = KeyReport()
    net = infer_uvit_config(state, num_heads=num_heads, latent_null=null_row)
    pub = _match(net)
    rows, has_null = net.pop("label_rows"), net.pop("has_null_row")
    if rows and not has_null and "null_class" not in net:
        emb = state["label_emb.weight"]
        state["label_emb.weight"] = torch.cat([emb, emb.float().mean(0, keepdim=True).to(emb.dtype)])
        report.notes.append(
            f"label_emb has {rows} rows and no null class; versadiff's UViT adds a null row (no "
            "UViTConfig.null_class field yet): filled with the mean class embedding, unused by the "
            "original (no CFG), so the load is exact for labels 0..K-1 but not strict"
        )
    if preset is not None:
        cfg = load_config(preset).to_dict()
    elif pub is not None and pub.preset is not None:
        cfg = load_config(pub.preset).to_dict()
        for key, value in pub.overrides.items():
            _set(cfg, key, value)
    else:
        cfg = RunConfig().to_dict()
        cfg["diffusion"].update(
            schedule={"type": "vpsde", "beta_min": 0.1, "beta_max": 20.0},
            prediction="eps",
            weighting="snr",
            clip_x0=None,
        )
        cfg["sample"].update(sampler="dpm", steps=50)
        report.notes.append("not one of the published U-ViT models: VP-SDE schedule and DPM-Solver 50 assumed")
    cfg["name"] = pub.name if pub else "uvit"
    cfg["model"] = {"type": "uvit", **net}
    discrete = cfg["diffusion"]["schedule"].get("type") == "discrete"
    report.notes.append(
        "time input: the original feeds "
        + ("the 1-based step n (= 1000 t)" if discrete else "999 t")
        + "; versadiff's schedule feeds "
        + ("the 0-based index 1000 t - 1" if discrete else "1000 t")
    )
    components: list[Component] = []
    latent = net["in_channels"] == 4 and cfg.get("autoencoder") is not None
    if latent:
        sf = scale_factor if scale_factor is not None else cfg["autoencoder"].get("scale_factor")
        cfg["autoencoder"] = None
        if vae is not None:
            components.append(kl_vae_component(vae, scale_factor=sf))
        else:
            report.notes.append("a latent model without --vae: it samples latents (set codecs.image later)")
    if net.get("context_dim"):
        if text_encoder is not None:  # U-ViT reads CLIP ViT-L/14's unprojected last_hidden_state, 77 x 768
            components.append(clip_component(text_encoder, "text", context="hidden",
                                             context_length=net.get("num_context_tokens", 77)))
        else:
            cfg["flows"], cfg["encoders"] = [], {}
            report.notes.append("a text-to-image model without --text-encoder: it samples with no text context "
                                "(convert again with --text-encoder CLIP_DIR for text-to-image)")
    if pub is not None:
        report.notes.append(f"recognised as {pub.name} ({pub.config_file})")
    size = net["image_size"] * (8 if latent and vae is not None else 1)
    channels = 3 if (latent and vae is not None) or not latent else net["in_channels"]
    shapes = {"image": [channels, size, size]}
    info = {
        "data_shapes": shapes,
        "image_shape": shapes["image"],
        "num_classes": net.get("num_classes", 0),
        "class_names": [],
        "published": pub.name if pub else None,
    }
    return Foreign("uvit", cfg, state, info, components, report)


def _is_uvit(p: Probe) -> bool:
    return (
        p.path.is_file()
        and p.has_prefix("pos_embed")
        and p.has_prefix("in_blocks.0.attn.qkv.")
        and p.has_prefix("patch_embed.")
    )


register_format(
    Format(
        "uvit",
        "U-ViT original nnet_ema.pth (baofff/U-ViT; every published model)",
        _is_uvit,
        load_uvit,
        command="versadiff convert imagenet256_uvit_large/nnet_ema.pth --vae autoencoder_kl.pth --out uvit_l2",
    )
)
