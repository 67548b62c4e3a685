"""VDPM checkpoints (tqch/v-diffusion-torch `.pt`) -> versadiff's UNet with the run's diffusion settings.

Layout (tqch/v-diffusion-torch @d399a63 `v_diffusion/models/unet.py`, `modules.py`, `train_utils.py`
Trainer.save_checkpoint, `utils.py` EMA; reference samplers_schedules.md §1.6): torch.save of
    {"model": UNet.state_dict() ("module." prefixed under DDP), "optimizer": ..., "ema": {"decay", "shadow":
     {parameter name: tensor}, "num_updates"}, "scheduler": ..., "epoch": int, ["rng": ...]}
UNet names: time_embed.{0,2}, class_embed.1 (Linear(K, E) after OneHot(exclude_zero)) or class_embed (multitags),
in_conv, downsamples.level_i.j[.0 ResidualBlock | .1 AttentionBlock], middle.{0,1,2},
upsamples.level_i.j[...], out_conv.{0,2}; ResidualBlock {norm1, conv1, fc, norm2, conv2, skip}; AttentionBlock
{norm, proj_in (1x1 conv to q|k|v, heads contiguous), proj_out}.
versadiff's UNet (versadiff.nets.unet) has the same layout: 1x1 convs become Linears, and the one-hot class
Linear becomes Embedding(K + 1): row k = W[:, k] + b (VDPM label k + 1), null row K = b (VDPM label 0, its
null). The EMA shadow is taken when present. Not in the weights: heads (cifar10 configs: 1 head; celeba: head
width 64), dropout and the diffusion settings -- from the run's config JSON (option config=configs/<run>.json)
or, for the published architectures, from their configs. `resample_with_res=False` (plain conv resamplers,
unpadded stride-2 conv) has no versadiff twin and is refused.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor

from versadiff.convert.base import Foreign, Format, KeyReport, Probe, read_checkpoint, register_format

__all__ = [
    "VDPM_PUBLISHED",
    "vdpm_state_from_original",
    "vdpm_state_to_original",
    "infer_vdpm_config",
    "vdpm_run_config",
    "load_vdpm",
]

#: the published configs (configs/*.json): architecture signature -> (packaged preset, model fields)
VDPM_PUBLISHED = {
    (256, (1, 1, 1), 3, True): ("vdpm_cifar10_cond", {"num_heads": 1, "dropout": 0.2}),
    (256, (1, 1, 1), 3, False): ("vdpm_cifar10_uncond", {"num_heads": 1, "dropout": 0.2}),
    (192, (1, 2, 3, 4), 3, False): ("vdpm_celeba", {"head_channels": 64, "dropout": 0.1}),
}
_RES = {"norm1": "norm1", "conv1": "conv1", "fc": "emb_proj", "norm2": "norm2", "conv2": "conv2", "skip": "skip"}
_WEIGHTING = {
    "snr_trunc": "truncated_snr",
    "truncated_snr": "truncated_snr",
    "snr": "snr",
    "constant": "constant",
    "snr_1plus": "alpha2",
    "alpha2": "alpha2",
}


def _levels(state: Mapping[str, Tensor], stage: str) -> dict[int, int]:
    """level -> number of layers in downsamples / upsamples."""
    out: dict[int, set] = {}
    for k in state:
        if m := re.match(rf"{stage}\.level_(\d+)\.(\d+)\.", k):
            out.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    return {lvl: len(js) for lvl, js in sorted(out.items())}


def _layer(src: str, dst: str, rest: str, v: Tensor, attn_level: bool) -> tuple[str, Tensor]:
    """One VDPM layer's parameter (rest) -> a versadiff Unit's."""
    if attn_level:
        part, _, rest = rest.partition(".")
        if part == "1":
            name, _, p = rest.partition(".")
            if name == "norm":
                return f"{dst}.attn.norm.{p}", v
            inner = {"proj_in": "qkv", "proj_out": "proj"}[name]
            return f"{dst}.attn.attn.{inner}.{p}", v[:, :, 0, 0] if v.ndim == 4 else v
    name, _, p = rest.partition(".")
    if name not in _RES:
        raise ValueError(f"unexpected VDPM parameter {src}{rest!r}")
    return f"{dst}.block.{_RES[name]}.{p}", v


def vdpm_state_from_original(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A VDPM UNet state dict (DDP "module." prefix allowed) -> versadiff UNet names."""
    s = {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state.items()}
    down, up = _levels(s, "downsamples"), _levels(s, "upsamples")
    attn = {lvl: any(k.startswith(f"downsamples.level_{lvl}.0.1.") for k in s) for lvl in down}
    for lvl in down:
        if lvl != len(down) - 1 and not any(
            re.match(rf"downsamples\.level_{lvl}\.{down[lvl] - 1}\.(0\.)?conv1\.", k) for k in s
        ):
            raise ValueError(
                "this VDPM UNet has plain conv resamplers (resample_with_res=False), which versadiff's "
                "UNet does not build the same way (VDPM's stride-2 conv has no padding)"
            )
    offset_down, k0 = {}, 0
    for lvl in sorted(down):
        offset_down[lvl], k0 = k0, k0 + down[lvl]
    offset_up, k0 = {}, 0
    for lvl in sorted(up, reverse=True):
        offset_up[lvl], k0 = k0, k0 + up[lvl]
    out: dict[str, Tensor] = {}
    for key, v in s.items():
        if m := re.match(r"(downsamples|upsamples)\.level_(\d+)\.(\d+)\.(.+)", key):
            stage, lvl, j, rest = m.group(1), int(m.group(2)), int(m.group(3)), m.group(4)
            idx = (offset_down if stage == "downsamples" else offset_up)[lvl] + j
            name, value = _layer(
                key[: -len(rest)], f"{'down' if stage == 'downsamples' else 'up'}.{idx}", rest, v, attn[lvl]
            )
            out[name] = value
        elif m := re.match(r"middle\.(\d)\.(.+)", key):
            i, rest = int(m.group(1)), m.group(2)
            if i == 1:
                name, _, p = rest.partition(".")
                out[
                    f"mid.0.attn.{'norm' if name == 'norm' else 'attn.' + {'proj_in': 'qkv', 'proj_out': 'proj'}[name]}.{p}"
                ] = (v[:, :, 0, 0] if v.ndim == 4 else v)
            else:
                name, _, p = rest.partition(".")
                out[f"mid.{0 if i == 0 else 1}.block.{_RES[name]}.{p}"] = v
        elif m := re.match(r"time_embed\.(\d)\.(.+)", key):
            out[f"time_mlp.{m.group(1)}.{m.group(2)}"] = v
        elif m := re.match(r"out_conv\.(\d)\.(.+)", key):
            out[f"{'out_norm' if m.group(1) == '0' else 'out_conv'}.{m.group(2)}"] = v
        elif key.startswith("in_conv."):
            out[key] = v
        elif key in ("class_embed.1.weight", "class_embed.1.bias"):
            continue
        elif key in ("class_embed.weight", "class_embed.bias"):  # multitags: a plain Linear
            out["tag_emb." + key.split(".")[1]] = v
        else:
            raise ValueError(f"unexpected VDPM UNet key {key!r}")
    if "class_embed.1.weight" in s:
        w, b = s["class_embed.1.weight"], s["class_embed.1.bias"]
        out["class_emb.weight"] = torch.cat([(w.double().T + b.double()), b.double()[None]]).to(w.dtype)
    return out


def vdpm_state_to_original(state: Mapping[str, Tensor], config: Any) -> dict[str, Tensor]:
    """versadiff UNet state (a VDPM-layout UNetConfig: resblock_resample, scale-shift norm) -> VDPM's names."""
    cfg = config
    levels, nrb = len(cfg.channel_mult), cfg.num_res_blocks
    attn = [(cfg.image_size >> lvl) in cfg.attention_resolutions for lvl in range(levels)]
    places: dict[str, tuple[str, bool]] = {}
    k = 0
    for lvl in range(levels):
        for j in range(nrb + (lvl != levels - 1)):
            places[f"down.{k}"] = (f"downsamples.level_{lvl}.{j}", attn[lvl])
            k += 1
    k = 0
    for lvl in reversed(range(levels)):
        for j in range(nrb + 1 + (lvl != 0)):
            places[f"up.{k}"] = (f"upsamples.level_{lvl}.{j}", attn[lvl])
            k += 1
    inv_res = {v: k for k, v in _RES.items()}
    out: dict[str, Tensor] = {}
    for key, v in state.items():
        if m := re.match(r"((?:down|up)\.\d+)\.(block|attn)\.(.+)", key):
            base, with_attn = places[m.group(1)]
            part, rest = m.group(2), m.group(3)
        elif m := re.match(r"mid\.(\d)\.(block|attn)\.(.+)", key):
            part, rest = m.group(2), m.group(3)
            base, with_attn = f"middle.{0 if part == 'attn' else 2 * int(m.group(1))}", False
            if part == "attn":
                base = "middle.1"
        elif m := re.match(r"time_mlp\.(\d)\.(.+)", key):
            out[f"time_embed.{m.group(1)}.{m.group(2)}"] = v
            continue
        elif key.startswith(("out_norm.", "out_conv.")):
            out[("out_conv.0." if key.startswith("out_norm.") else "out_conv.2.") + key.split(".", 1)[1]] = v
            continue
        elif key.startswith("in_conv."):
            out[key] = v
            continue
        elif key == "class_emb.weight":
            b = v[-1]
            out["class_embed.1.weight"] = (v[:-1] - b).T.contiguous()
            out["class_embed.1.bias"] = b.clone()
            continue
        elif key.startswith("tag_emb."):
            out["class_embed." + key.split(".", 1)[1]] = v
            continue
        else:
            raise ValueError(f"unexpected versadiff UNet key {key!r}")
        if part == "block":
            name, _, p = rest.partition(".")
            out[f"{base}{'.0' if with_attn else ''}.{inv_res[name]}.{p}"] = v
        else:
            sub, _, p = rest.partition(".")
            if sub == "norm":
                name = "norm"
            else:
                inner, _, p = p.partition(".")
                name = {"qkv": "proj_in", "proj": "proj_out"}[inner]
                v = v[:, :, None, None] if p == "weight" else v
            out[f"{base}{'.1' if with_attn else ''}.{name}.{p}"] = v
    return out


def infer_vdpm_config(
    original: Mapping[str, Tensor],
    *,
    num_heads: int | None = None,
    head_channels: int | None = None,
    dropout: float | None = None,
    image_size: int | None = None,
) -> tuple[dict[str, Any], str | None]:
    """(UNetConfig fields, matching published preset or None) of a VDPM UNet state dict in its original names
    (the levels are read from downsamples.level_i.j)."""
    o = {k[len("module.") :] if k.startswith("module.") else k: v for k, v in original.items()}
    state = vdpm_state_from_original(o)
    hid = int(state["in_conv.weight"].shape[0])
    cin = int(state["in_conv.weight"].shape[1])
    emb = int(state["time_mlp.0.weight"].shape[0])
    down = _levels(o, "downsamples")
    levels = len(down)
    nrb = down[0] - 1 if levels > 1 else down[0]
    attn = [any(k.startswith(f"downsamples.level_{lvl}.0.1.") for k in o) for lvl in range(levels)]
    conv1 = lambda lvl: o.get(
        f"downsamples.level_{lvl}.0.0.conv1.weight", o.get(f"downsamples.level_{lvl}.0.conv1.weight")
    )  # noqa: E731
    mult = tuple(int(conv1(lvl).shape[0]) // hid for lvl in range(levels))
    classes = int(state["class_emb.weight"].shape[0]) - 1 if "class_emb.weight" in state else 0
    tags = int(state["tag_emb.weight"].shape[1]) if "tag_emb.weight" in state else 0
    key = (hid, mult, nrb, bool(classes))
    preset, published = VDPM_PUBLISHED.get(key, (None, {}))
    size = image_size or (
        64 if preset == "vdpm_celeba" else 32
    )  # not in the weights: the dataset's (option image_size)
    cfg: dict[str, Any] = dict(
        image_size=size,
        in_channels=cin,
        out_channels=int(state["out_conv.weight"].shape[0]),
        base_channels=hid,
        channel_mult=mult,
        num_res_blocks=nrb,
        attention_resolutions=tuple(size >> lvl for lvl in range(levels) if attn[lvl]),
        emb_channels=emb,
        num_classes=classes,
        num_tags=tags,
        norm_groups=32,
        norm_eps=1e-6,
        dropout=published.get("dropout", 0.0) if dropout is None else dropout,
    )
    if cfg["out_channels"] == cin:
        cfg["out_channels"] = None
    if head_channels or (num_heads is None and "head_channels" in published):
        cfg["head_channels"] = head_channels or published["head_channels"]
    else:
        cfg["num_heads"] = num_heads or published.get("num_heads", 1)
    return cfg, preset


def vdpm_run_config(
    net: dict[str, Any], vdpm: Mapping[str, Any] | None, preset: str | None
) -> tuple[dict[str, Any], list[str]]:
    """The run config: a published preset's, or one built from the run's config JSON (diffusion/conditional)."""
    from versadiff.config import RunConfig, load_config

    notes = []
    cfg = load_config(preset).to_dict() if preset else RunConfig().to_dict()
    if vdpm is not None:
        d = dict(vdpm.get("diffusion", {}))
        out_type = d.get("model_out_type", "eps")
        cfg["diffusion"].update(
            schedule={
                "type": "logsnr",
                "kind": d.get("logsnr_schedule", "cosine"),
                "logsnr_min": float(d.get("logsnr_min", -20.0)),
                "logsnr_max": float(d.get("logsnr_max", 20.0)),
            },
            prediction={"x0": "x0", "x_0": "x0", "eps": "eps", "both": "both", "v": "v"}[out_type],
            weighting=_WEIGHTING.get(d.get("reweight_type", "snr"), "snr"),
            train_steps=int(d.get("train_timesteps", 0)),
            variance=d.get("model_var_type", "fixed_large"),
            intp_frac=float(d.get("intp_frac", 0.3)),
            loss=d.get("loss_type", "mse"),
        )
        cond = vdpm.get("conditional", {})
        if net.get("num_classes") or net.get("num_tags"):
            cfg["diffusion"]["p_uncond"] = float(cond.get("p_uncond", 0.1))
            cfg["sample"]["guidance"] = float(cond.get("w_guide", 0.1))
        else:
            cfg["diffusion"]["p_uncond"], cfg["sample"]["guidance"] = 0.0, 0.0
        if d.get("logsnr_schedule") == "legacy":
            cfg["diffusion"]["schedule"] = {"type": "logsnr", "kind": "legacy"}
    elif preset is None:
        notes.append("no VDPM config JSON (option config=...): cosine log-SNR, eps prediction assumed")
        cfg["diffusion"].update(
            schedule={"type": "logsnr", "kind": "cosine", "logsnr_min": -20.0, "logsnr_max": 20.0},
            prediction="both" if net.get("out_channels") else "eps",
            train_steps=0,
        )
    if preset is None:  # generate.py's default: 1024 ancestral steps
        cfg["sample"].update(sampler="ddpm", steps=1024)
    cfg["model"] = {"type": "unet", **net}
    cfg["name"] = preset or "vdpm"
    return cfg, notes


def load_vdpm(
    path: Path,
    *,
    ema: bool | None = None,
    config: Any = None,
    num_heads: int | None = None,
    head_channels: int | None = None,
    dropout: float | None = None,
    image_size: int | None = None,
) -> Foreign:
    """A tqch/v-diffusion-torch checkpoint (.pt). ema None: the EMA shadow when present; config: the run's
    configs/*.json (architecture extras and diffusion settings)."""
    obj = read_checkpoint(path)
    if not isinstance(obj, Mapping) or not isinstance(obj.get("model"), Mapping):
        raise ValueError(f"{path} is not a VDPM checkpoint (no 'model' state dict)")
    shadow = obj.get("ema", {}).get("shadow") if isinstance(obj.get("ema"), Mapping) else None
    if ema and shadow is None:
        raise ValueError(f"ema=True but {path} has no EMA shadow weights")
    use_ema = shadow is not None if ema is None else bool(ema)
    report = KeyReport(
        notes=[
            (
                "EMA weights (ema.shadow) used"
                if use_ema
                else (
                    "raw weights used; the file also has EMA weights"
                    if shadow is not None
                    else "the file has no EMA weights"
                )
            )
        ]
    )
    raw = {k: v for k, v in obj["model"].items() if torch.is_tensor(v)}
    if use_ema:
        sh = {k[len("module.") :] if k.startswith("module.") else k: v for k, v in shadow.items()}
        plain = {k[len("module.") :] if k.startswith("module.") else k: v for k, v in raw.items()}
        missing = sorted(set(plain) - set(sh))
        if missing:
            raise ValueError(f"the EMA shadow lacks {len(missing)} of the model's tensors (e.g. {missing[0]!r})")
        raw = sh
    vdpm_cfg = None
    if config is not None:
        vdpm_cfg = config if isinstance(config, Mapping) else json.loads(Path(config).expanduser().read_text())
    model = dict((vdpm_cfg or {}).get("model", {}))
    state = vdpm_state_from_original(raw)
    data = (vdpm_cfg or {}).get("data", {}).get("name")
    image_size = image_size or {"cifar10": 32, "celeba": 64}.get(data)
    net, preset = infer_vdpm_config(
        raw,
        num_heads=num_heads or model.get("num_heads"),
        head_channels=head_channels or model.get("head_dim"),
        dropout=dropout if dropout is not None else model.get("drop_rate"),
        image_size=image_size,
    )
    if image_size is None and preset is None:
        report.notes.append(f"image size not in the weights: {net['image_size']} assumed (option image_size)")
    if vdpm_cfg is not None:
        preset = None
    cfg, notes = vdpm_run_config(net, vdpm_cfg, preset)
    report.notes += notes
    if preset:
        report.notes.append(f"recognised as the published {preset} architecture")
    report.unused = sorted(f"{k}" for k in obj if k not in ("model", "ema"))
    shape = [net["in_channels"], net["image_size"], net["image_size"]]
    info = {
        "data_shapes": {"image": shape},
        "image_shape": shape,
        "num_classes": net["num_classes"],
        "class_names": [],
        "epoch": int(obj["epoch"]) if isinstance(obj.get("epoch"), int) else None,
    }
    return Foreign("vdpm", cfg, state, info, [], report)


def _is_vdpm(p: Probe) -> bool:
    if not p.path.is_file() or p.path.suffix == ".safetensors":
        return False
    return p.has_prefix("in_conv.", "module.in_conv.", sub=("model",)) and p.has_prefix(
        "downsamples.level_0.", "module.downsamples.level_0.", sub=("model",)
    )


register_format(
    Format(
        "vdpm",
        "v-diffusion-torch (VDPM) .pt checkpoint (model + ema + optimizer; EMA taken)",
        _is_vdpm,
        load_vdpm,
        command="versadiff convert cifar10_cond_5120.pt --option config=configs/cifar10_cond.json --out vdpm",
    )
)
