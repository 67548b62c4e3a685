"""U-ViT originals (baofff/U-ViT nnet_ema.pth) -> versadiff's UViT.

Every published model's original key/shape layout (written out here from libs/uvit.py / uvit_t2i.py, on the meta
device) is recognised, gets its config file's settings and loads strictly, with the parameter counts of the
reference table; tiny random checkpoints of each architecture variant give the original forward's outputs
(`original_forward` below re-derives libs/uvit.py's forward on the original names).
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from versadiff.convert.formats import _checked_network, detect_format, load_foreign, load_foreign_model, write_foreign
from versadiff.convert.uvit import PUBLISHED, uvit_foreign
from versadiff.nets import build_net
from versadiff.nets.uvit import UViTConfig

HAS_NULL_FIELD = "null_class" in {f.name for f in dataclasses.fields(UViTConfig)}
# reference uvit_unidiffuser.md §1.6 (params, millions)
PARAMS = {
    "cifar10_uvit_small": 44.3,
    "celeba64_uvit_small": 44.3,
    "imagenet64_uvit_mid": 130.9,
    "imagenet64_uvit_large": 286.8,
    "imagenet256_uvit_large": 286.8,
    "imagenet256_uvit_huge": 500.8,
    "imagenet512_uvit_large": 286.9,
    "imagenet512_uvit_huge": 500.9,
    "mscoco_uvit_small": 44.7,
    "mscoco_uvit_small_deep": 58.35,
}  # the table prints 58.4: 58,345,636 rounded up
HEADS = {512: 8, 768: 12, 1024: 16, 1152: 16}


def original_shapes(cin, size, patch, dim, depth, rows=0, cdim=None, conv=True, ntok=77):
    """Parameter names and shapes of the original UViT / UViT-t2i (mlp_time_embed=False, qkv_bias=False)."""
    n = (size // patch) ** 2
    extras = 1 + (1 if rows else 0) + (ntok if cdim else 0)
    s = {
        "patch_embed.proj.weight": (dim, cin, patch, patch),
        "patch_embed.proj.bias": (dim,),
        "pos_embed": (1, extras + n, dim),
    }
    if rows:
        s["label_emb.weight"] = (rows, dim)
    if cdim:
        s.update({"context_embed.weight": (dim, cdim), "context_embed.bias": (dim,)})

    def block(p, skip=False):
        for ln in ("norm1", "norm2"):
            s.update({f"{p}.{ln}.weight": (dim,), f"{p}.{ln}.bias": (dim,)})
        s.update(
            {
                f"{p}.attn.qkv.weight": (3 * dim, dim),
                f"{p}.attn.proj.weight": (dim, dim),
                f"{p}.attn.proj.bias": (dim,),
                f"{p}.mlp.fc1.weight": (4 * dim, dim),
                f"{p}.mlp.fc1.bias": (4 * dim,),
                f"{p}.mlp.fc2.weight": (dim, 4 * dim),
                f"{p}.mlp.fc2.bias": (dim,),
            }
        )
        if skip:
            s.update({f"{p}.skip_linear.weight": (dim, 2 * dim), f"{p}.skip_linear.bias": (dim,)})

    for i in range(depth // 2):
        block(f"in_blocks.{i}")
    block("mid_block")
    for i in range(depth // 2):
        block(f"out_blocks.{i}", skip=True)
    s.update(
        {
            "norm.weight": (dim,),
            "norm.bias": (dim,),
            "decoder_pred.weight": (patch * patch * cin, dim),
            "decoder_pred.bias": (patch * patch * cin,),
        }
    )
    if conv:
        s.update({"final_layer.weight": (cin, cin, 3, 3), "final_layer.bias": (cin,)})
    return s


def original_forward(sd, x, t, y=None, context=None, heads=2):
    """libs/uvit.py UViT.forward (and uvit_t2i's) on the original parameter names, in float64."""
    p = sd["patch_embed.proj.weight"].shape[-1]
    h = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=p).flatten(2).transpose(1, 2)
    b, n, d = h.shape
    half = d // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    parts = [torch.cat([torch.cos(args), torch.sin(args)], dim=-1).to(x.dtype)[:, None]]
    if context is not None:
        parts.append(F.linear(context, sd["context_embed.weight"], sd["context_embed.bias"]))
    h = torch.cat(parts + [h], dim=1)
    if y is not None:
        h = torch.cat([sd["label_emb.weight"][y][:, None], h], dim=1)
    h = h + sd["pos_embed"]

    def block(pre, h, skip=None):
        if skip is not None:
            h = F.linear(torch.cat([h, skip], -1), sd[pre + "skip_linear.weight"], sd[pre + "skip_linear.bias"])
        a = F.layer_norm(h, (d,), sd[pre + "norm1.weight"], sd[pre + "norm1.bias"])
        qkv = F.linear(a, sd[pre + "attn.qkv.weight"]).reshape(b, -1, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
        w = (qkv[0] @ qkv[1].transpose(-2, -1)) * (d // heads) ** -0.5
        a = (w.softmax(-1) @ qkv[2]).transpose(1, 2).reshape(b, -1, d)
        h = h + F.linear(a, sd[pre + "attn.proj.weight"], sd[pre + "attn.proj.bias"])
        m = F.layer_norm(h, (d,), sd[pre + "norm2.weight"], sd[pre + "norm2.bias"])
        m = F.linear(
            F.gelu(F.linear(m, sd[pre + "mlp.fc1.weight"], sd[pre + "mlp.fc1.bias"])),
            sd[pre + "mlp.fc2.weight"],
            sd[pre + "mlp.fc2.bias"],
        )
        return h + m

    depth = len({k.split(".")[1] for k in sd if k.startswith("in_blocks.")})
    skips = []
    for i in range(depth):
        h = block(f"in_blocks.{i}.", h)
        skips.append(h)
    h = block("mid_block.", h)
    for i in range(depth):
        h = block(f"out_blocks.{i}.", h, skips.pop())
    h = F.layer_norm(h, (d,), sd["norm.weight"], sd["norm.bias"])
    h = F.linear(h, sd["decoder_pred.weight"], sd["decoder_pred.bias"])[:, h.shape[1] - n :]
    c = x.shape[1]
    g = int(n**0.5)
    img = h.reshape(b, g, g, p, p, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, g * p, g * p)  # B (h w) (p1 p2 C)
    if "final_layer.weight" in sd:
        img = F.conv2d(img, sd["final_layer.weight"], sd["final_layer.bias"], padding=1)
    return img


@pytest.mark.parametrize("pub", PUBLISHED, ids=lambda p: p.name)
def test_published_layouts_load_strictly_with_their_settings(pub):
    cin, size, patch, dim, depth, rows, cdim = pub.signature
    shapes = original_shapes(cin, size, patch, dim, depth, rows, cdim, conv=dim != 1152)
    assert abs(sum(math.prod(s) for s in shapes.values()) / 1e6 - PARAMS[pub.name]) < 0.051  # the table rounds
    state = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    f = uvit_foreign(state)
    assert f"recognised as {pub.name} ({pub.config_file})" in f.report.notes
    m = f.config["model"]
    assert m["num_heads"] == HEADS[dim] and m["conv_head"] == (dim != 1152) and m["image_size"] == size
    if rows:
        assert m["num_classes"] == 1000
        if rows == 1000:  # ImageNet-64: no null class in the original
            assert (m.get("null_class") is False) == HAS_NULL_FIELD
    _checked_network(f.config, f.state, pub.name)  # the config validates and the weights fit it exactly
    d, s = f.config["diffusion"], f.config["sample"]
    if "huge" in pub.name or "mscoco" in pub.name:
        assert d["schedule"]["type"] == "discrete" and s["sampler"] == "dpmpp"
    else:
        assert d["schedule"]["type"] == "vpsde"
    assert s["guidance"] == {"imagenet256": 0.4, "imagenet512": 0.7, "mscoco_uvit": 1.0}.get(pub.name[:11], 0.0)
    assert s["steps"] == (1000 if pub.name.startswith(("cifar", "celeba")) else 50)


VARIANTS = {  # tiny versions of each published architecture: (cin, size, patch, dim, depth, label rows, cdim, conv)
    "uncond_pixel": (3, 8, 2, 32, 4, 0, None, True),  # CIFAR-10 / CelebA
    "class_no_null": (3, 8, 2, 32, 4, 10, None, True),  # ImageNet-64
    "class_null_latent": (4, 8, 2, 32, 4, 11, None, True),  # ImageNet-256/512 L
    "class_null_no_conv": (4, 8, 4, 32, 4, 11, None, False),  # ImageNet H
    "text": (4, 8, 2, 32, 6, 0, 8, True),  # MS-COCO (Deep: more blocks)
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_tiny_checkpoint_equals_original_forward(name, tmp_path):
    cin, size, patch, dim, depth, rows, cdim, conv = VARIANTS[name]
    gen = torch.Generator().manual_seed(0)
    sd = {
        k: torch.randn(s, generator=gen, dtype=torch.float64) * (0.3 if len(s) > 1 else 0.1)
        for k, s in original_shapes(cin, size, patch, dim, depth, rows, cdim, conv).items()
    }
    for k in sd:
        if k.endswith(("norm1.weight", "norm2.weight", "norm.weight")):
            sd[k] = 1 + sd[k]
    path = tmp_path / "nnet_ema.pth"
    torch.save({k: v.float() for k, v in sd.items()}, path)
    assert detect_format(path) == "uvit"
    f = load_foreign(path, num_heads=2, dtype=None, null_row=True if rows == 11 else None)
    net = build_net(f.config["model"]).double().eval()
    strict = rows != 10 or HAS_NULL_FIELD
    net.load_state_dict({k: v.double() for k, v in f.state.items()}, strict=True)
    if not strict:
        assert any("mean class embedding" in n for n in f.report.notes)
    x = torch.randn(3, cin, size, size, generator=gen, dtype=torch.float64)
    t = torch.tensor([1.0, 250.5, 999.0], dtype=torch.float64)
    sdf = {k: v.float().double() for k, v in sd.items()}  # the file holds float32
    kw, ours = {}, {}
    if rows:
        y = torch.tensor([0, 3, 9])
        kw["y"], ours["class_labels"] = y, y
    if cdim:
        c = torch.randn(3, 77, cdim, generator=gen, dtype=torch.float64)
        kw["context"], ours["context"] = c, c
    with torch.no_grad():
        expected = original_forward(sdf, x, t, heads=2, **kw)
        got = net(x, t, **ours)
    assert ((got - expected).norm() / expected.norm()).item() < 1e-10
    if rows == 11:  # the null row is the original's index 1000 (here 10): label -1
        with torch.no_grad():
            null = net(x, t, class_labels=torch.full((3,), -1))
            assert torch.allclose(
                null, original_forward(sdf, x, t, y=torch.full((3,), 10), heads=2), rtol=1e-9, atol=1e-9
            )


def test_written_model_samples(tmp_path):
    """A pixel model (CIFAR-10 architecture in miniature) converts, writes and samples through load_model's path."""
    gen = torch.Generator().manual_seed(1)
    sd = {k: torch.randn(s, generator=gen) * 0.05 for k, s in original_shapes(3, 8, 2, 32, 4).items()}
    torch.save(sd, tmp_path / "nnet_ema.pth")
    out = write_foreign(load_foreign(tmp_path / "nnet_ema.pth", num_heads=2), tmp_path / "out")
    from versadiff.weights import read_metadata

    cfg, info = read_metadata(out)
    assert cfg.model["type"] == "uvit" and cfg.diffusion.schedule["type"] == "vpsde"
    model = load_foreign_model(tmp_path / "nnet_ema.pth", num_heads=2)
    images = model.generate([0, 1], sampler="dpm", steps=3)
    assert images.shape == (2, 3, 8, 8) and torch.isfinite(images).all()
