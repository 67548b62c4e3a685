"""VDPM (tqch/v-diffusion-torch) .pt checkpoints -> versadiff's UNet and the run's diffusion settings.

`vdpm_shapes` lists models/unet.py's parameter names and shapes, `vdpm_forward` re-derives its forward (OneHot
class Linear, BigGAN resampling ResBlocks, shift/scale FiLM, einsum attention) on those names; a tiny checkpoint
in trainer layout (model with DDP prefixes, optimizer, EMA shadow, epoch) equals it after conversion.
"""

from __future__ import annotations

import json
import math

import torch
import torch.nn.functional as F

from versadiff.convert.formats import detect_format, load_foreign, load_foreign_model
from versadiff.convert.vdpm import infer_vdpm_config, vdpm_state_to_original
from versadiff.nets import build_net
from versadiff.nets.layers import timestep_embedding

CIFAR10_COND = {
    "diffusion": {
        "logsnr_min": -20.0,
        "logsnr_max": 20.0,
        "logsnr_schedule": "cosine",
        "train_timesteps": 0,
        "model_out_type": "v",
        "model_var_type": "fixed_medium",
        "intp_frac": 0.3,
        "reweight_type": "snr_trunc",
        "loss_type": "mse",
    },
    "conditional": {"use_cfg": True, "w_guide": 0.1, "p_uncond": 0.1},
    "model": {"num_heads": 2, "drop_rate": 0.0},
}  # configs/cifar10_cond.json, tiny model


def vdpm_shapes(cin, hid, mult, nrb, attn, emb, classes=0, multitags=False, cout=None):
    """models/unet.py UNet parameter names and shapes (resample_with_res=True)."""
    s = {
        "time_embed.0.weight": (emb, hid),
        "time_embed.0.bias": (emb,),
        "time_embed.2.weight": (emb, emb),
        "time_embed.2.bias": (emb,),
        "in_conv.weight": (hid, cin, 3, 3),
        "in_conv.bias": (hid,),
    }
    if classes:
        s.update(
            {"class_embed.weight": (emb, classes), "class_embed.bias": (emb,)}
            if multitags
            else {"class_embed.1.weight": (emb, classes), "class_embed.1.bias": (emb,)}
        )

    def res(p, ci, co):
        s.update(
            {
                p + "norm1.weight": (ci,),
                p + "norm1.bias": (ci,),
                p + "conv1.weight": (co, ci, 3, 3),
                p + "conv1.bias": (co,),
                p + "fc.weight": (2 * co, emb),
                p + "fc.bias": (2 * co,),
                p + "norm2.weight": (co,),
                p + "norm2.bias": (co,),
                p + "conv2.weight": (co, co, 3, 3),
                p + "conv2.bias": (co,),
            }
        )
        if ci != co:
            s.update({p + "skip.weight": (co, ci, 1, 1), p + "skip.bias": (co,)})

    def block(p, ci, co, a):
        if a:
            res(p + ".0.", ci, co)
            s.update(
                {
                    p + ".1.norm.weight": (co,),
                    p + ".1.norm.bias": (co,),
                    p + ".1.proj_in.weight": (3 * co, co, 1, 1),
                    p + ".1.proj_in.bias": (3 * co,),
                    p + ".1.proj_out.weight": (co, co, 1, 1),
                    p + ".1.proj_out.bias": (co,),
                }
            )
        else:
            res(p + ".", ci, co)

    chs = [hid * m for m in mult]
    L = len(mult)
    for i in range(L):
        prev = chs[i - 1] if i else hid
        block(f"downsamples.level_{i}.0", prev, chs[i], attn[i])
        for j in range(1, nrb):
            block(f"downsamples.level_{i}.{j}", chs[i], chs[i], attn[i])
        if i != L - 1:
            block(f"downsamples.level_{i}.{nrb}", chs[i], chs[i], attn[i])
    res("middle.0.", chs[-1], chs[-1])
    s.update(
        {
            "middle.1.norm.weight": (chs[-1],),
            "middle.1.norm.bias": (chs[-1],),
            "middle.1.proj_in.weight": (3 * chs[-1], chs[-1], 1, 1),
            "middle.1.proj_in.bias": (3 * chs[-1],),
            "middle.1.proj_out.weight": (chs[-1], chs[-1], 1, 1),
            "middle.1.proj_out.bias": (chs[-1],),
        }
    )
    res("middle.2.", chs[-1], chs[-1])
    for i in range(L):
        nxt = hid if i == 0 else chs[i - 1]
        prv = chs[-1] if i == L - 1 else chs[i + 1]
        block(f"upsamples.level_{i}.0", prv + chs[i], chs[i], attn[i])
        for j in range(1, nrb):
            block(f"upsamples.level_{i}.{j}", 2 * chs[i], chs[i], attn[i])
        block(f"upsamples.level_{i}.{nrb}", nxt + chs[i], chs[i], attn[i])
        if i != 0:
            block(f"upsamples.level_{i}.{nrb + 1}", chs[i], chs[i], attn[i])
    s.update(
        {
            "out_conv.0.weight": (hid,),
            "out_conv.0.bias": (hid,),
            "out_conv.2.weight": (cout or cin, hid, 3, 3),
            "out_conv.2.bias": (cout or cin,),
        }
    )
    return s


def vdpm_forward(sd, x, t, y=None, *, heads, nrb, sinusoid=None):
    """models/unet.py UNet.forward on the original names (GroupNorm(32, eps 1e-6), SiLU); `sinusoid` replaces the
    time embedding's sinusoid (functions.get_timestep_embedding, computed here in x's dtype)."""
    gn = lambda h, p: F.group_norm(h, 32, sd[p + ".weight"], sd[p + ".bias"], eps=1e-6)  # noqa: E731
    conv = lambda h, p, pad=1: F.conv2d(h, sd[p + ".weight"], sd[p + ".bias"], padding=pad)  # noqa: E731
    hid = sd["in_conv.weight"].shape[0]
    half = hid // 2
    freqs = torch.exp(-torch.arange(half, dtype=x.dtype) * (math.log(10000) / (half - 1)))
    args = torch.outer(1000.0 * t, freqs)
    temb = torch.cat([torch.sin(args), torch.cos(args)], 1) if sinusoid is None else sinusoid
    temb = F.linear(
        F.silu(F.linear(temb, sd["time_embed.0.weight"], sd["time_embed.0.bias"])),
        sd["time_embed.2.weight"],
        sd["time_embed.2.bias"],
    )
    if y is not None:
        k = sd["class_embed.1.weight"].shape[1]
        onehot = F.one_hot((y - 1).clamp(min=0), k).to(x.dtype)
        onehot[y == 0] = 0
        temb = temb + F.linear(onehot, sd["class_embed.1.weight"], sd["class_embed.1.bias"])

    def res(p, h, resample=None):
        rs = {
            "down": lambda v: F.avg_pool2d(v, 2),
            "up": lambda v: F.interpolate(v, scale_factor=2.0, mode="nearest"),
            None: lambda v: v,
        }[resample]
        skip = rs(h)
        if p + "skip.weight" in sd:
            skip = conv(skip, p + "skip", 0)
        out = conv(rs(F.silu(gn(h, p + "norm1"))), p + "conv1")
        shift, scale = F.linear(F.silu(temb), sd[p + "fc.weight"], sd[p + "fc.bias"])[:, :, None, None].chunk(2, dim=1)
        out = (1 + scale) * gn(out, p + "norm2") + shift
        return conv(F.silu(out), p + "conv2") + skip

    def attn(p, h):
        b, c, hh, ww = h.shape
        q, k, v = conv(gn(h, p + "norm"), p + "proj_in", 0).reshape(b, 3 * heads, c // heads, hh, ww).chunk(3, dim=1)
        w = torch.einsum("bnchw, bncHW -> bnhwHW", q, k)
        w = torch.softmax(w.reshape(b, heads, hh, ww, hh * ww) / math.sqrt(c // heads), dim=-1)
        out = torch.einsum("bnhwC, bncC -> bnchw", w, v.flatten(start_dim=3)).reshape(b, c, hh, ww)
        return conv(out, p + "proj_out", 0) + h

    def layer(p, h, resample=None):
        if p + ".1.proj_in.weight" in sd:
            return attn(p + ".1.", res(p + ".0.", h, resample))
        return res(p + ".", h, resample)

    levels = len({k.split(".")[1] for k in sd if k.startswith("downsamples.")})
    hs = [conv(x, "in_conv")]
    for i in range(levels):
        for j in range(nrb + (i != levels - 1)):
            hs.append(layer(f"downsamples.level_{i}.{j}", hs[-1], "down" if j == nrb else None))
    h = res("middle.2.", attn("middle.1.", res("middle.0.", hs[-1])))
    for i in reversed(range(levels)):
        for j in range(nrb + 1 + (i != 0)):
            h = (
                layer(f"upsamples.level_{i}.{j}", torch.cat([h, hs.pop()], 1))
                if j != nrb + 1
                else layer(f"upsamples.level_{i}.{j}", h, "up")
            )
    return conv(F.silu(gn(h, "out_conv.0")), "out_conv.2")


def test_published_layouts():
    """The published configs' original names and shapes are what we write, and their sizes are the reference's."""
    for preset, kw, params in (
        (
            "vdpm_cifar10",
            dict(cin=3, hid=256, mult=(1, 1, 1), nrb=3, attn=(False, True, True), emb=1024, classes=10),
            60.8,
        ),
        (
            "vdpm_celeba",
            dict(
                cin=3,
                hid=192,
                mult=(1, 2, 3, 4),
                nrb=3,
                attn=(False, True, True, True),
                emb=768,
                classes=40,
                multitags=True,
                cout=6,
            ),
            301.0,
        ),
    ):
        shapes = vdpm_shapes(**kw)  # reference samplers_schedules.md §1.6: 60.8M and 301M
        assert abs(sum(math.prod(s) for s in shapes.values()) / 1e6 - params) < (0.051 if params < 100 else 0.5)
        with torch.device("meta"):
            net = build_net(preset)
        ours = vdpm_state_to_original(net.state_dict(), net.config)
        assert {k: tuple(v.shape) for k, v in ours.items()} == shapes
        cfg, found = infer_vdpm_config({k: torch.empty(s, device="meta") for k, s in shapes.items()})
        assert found == (preset + "_cond" if preset == "vdpm_cifar10" else preset)
        assert build_net({"type": "unet", **cfg}).config == net.config


def test_checkpoint_takes_ema_and_equals_original(tmp_path):
    gen = torch.Generator().manual_seed(0)
    shapes = vdpm_shapes(3, 32, (1, 2), 1, (False, True), 64, classes=10)
    raw = {
        k: torch.randn(s, generator=gen, dtype=torch.float64) * (0.2 if len(s) > 1 else 0.1) for k, s in shapes.items()
    }
    for k in raw:
        if "norm" in k and k.endswith("weight") or k == "out_conv.0.weight":
            raw[k] = 1 + raw[k]
    ema = {k: v + 0.01 * torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in raw.items()}
    ckpt = {
        "model": {"module." + k: v.float() for k, v in raw.items()},
        "optimizer": {"state": {}, "param_groups": [{"lr": 2e-4, "params": [0]}]},
        "ema": {"decay": 0.9999, "shadow": {k: v.float() for k, v in ema.items()}, "num_updates": 12},
        "epoch": 7,
        "rng": {0: torch.zeros(8, dtype=torch.uint8)},
    }
    path = tmp_path / "cifar10_cond_7.pt"
    torch.save(ckpt, path)
    (tmp_path / "cifar10_cond.json").write_text(json.dumps(CIFAR10_COND))
    assert detect_format(path) == "vdpm"
    f = load_foreign(path, config=tmp_path / "cifar10_cond.json", dtype=None, image_size=8)
    assert "EMA weights (ema.shadow) used" in f.report.notes and set(f.report.unused) == {"optimizer", "epoch", "rng"}
    d, s = f.config["diffusion"], f.config["sample"]
    assert (d["prediction"], d["variance"], d["weighting"], d["intp_frac"], d["p_uncond"]) == (
        "v",
        "fixed_medium",
        "truncated_snr",
        0.3,
        0.1,
    )
    assert d["schedule"] == {"type": "logsnr", "kind": "cosine", "logsnr_min": -20.0, "logsnr_max": 20.0}
    assert (s["sampler"], s["steps"], s["guidance"]) == ("ddpm", 1024, 0.1)
    net = build_net(f.config["model"]).double().eval()
    net.load_state_dict({k: v.double() for k, v in f.state.items()}, strict=True)
    e32 = {k: v.float().double() for k, v in ema.items()}
    x = torch.randn(3, 3, 8, 8, generator=gen, dtype=torch.float64)
    t = torch.tensor([0.001, 0.5, 0.999], dtype=torch.float64)
    with torch.no_grad():
        for y_vdpm, y_ours in (
            (torch.tensor([1, 5, 10]), torch.tensor([0, 4, 9])),
            (torch.zeros(3, dtype=torch.long), torch.full((3,), -1)),
        ):
            got = net(x, 1000.0 * t, class_labels=y_ours)  # versadiff's net_time of a continuous schedule is 1000 t
            # the conversion is exact: with our (float32) sinusoid the original forward gives our output, up to the
            # one float32 rounding of the merged class rows W[:, k] + b ...
            sinusoid = timestep_embedding(1000.0 * t, 32, cos_first=False, freq_shift=1.0).double()
            expected = vdpm_forward(e32, x, t, y_vdpm, heads=2, nrb=1, sinusoid=sinusoid)
            assert ((got - expected).norm() / expected.norm()).item() < 1e-7
            # ... and VDPM's sinusoid (float64 here) differs only by float32 rounding of 1000 t * freq (t up to 1)
            expected = vdpm_forward(e32, x, t, y_vdpm, heads=2, nrb=1)
            assert ((got - expected).norm() / expected.norm()).item() < 2e-5
    raw_f = load_foreign(path, ema=False, config=tmp_path / "cifar10_cond.json")
    assert torch.equal(raw_f.state["in_conv.weight"], raw["in_conv.weight"].float())
    model = load_foreign_model(path, config=tmp_path / "cifar10_cond.json", image_size=8)
    images = model.generate([0, 1], class_labels=[2, 3], steps=3, sampler="ddim", guidance=0.1)
    assert images.shape == (2, 3, 8, 8) and torch.isfinite(images).all()
