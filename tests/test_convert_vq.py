"""VQ-Diffusion weights -> versadiff: the released training checkpoints (model + EMA + optimizer state; EMA taken),
diffusers VQDiffusionPipeline folders and taming VQGANs, on tiny random checkpoints in the real layouts.

`original_forward` re-derives transformer_utils.py's Text2Image / Condition2Image transformers on the original
parameter names; diffusers' Transformer2DModel and VQModel check the diffusers folders and the VQGAN layout.
"""

from __future__ import annotations

import json
import math

import pytest
from extras import require_extra
import torch
import torch.nn.functional as F

from tiny_clip import tiny_clip_text  # noqa: E402
from versadiff.convert.formats import detect_format, load_foreign, load_foreign_model, write_foreign
from versadiff.convert.ldm_vae import versadiff_to_ldm
from versadiff.nets import build_net

D, HEADS, T, CDIM = 32, 2, 10, 8


def rand(gen, *shape, scale=0.3):
    return torch.randn(*shape, generator=gen, dtype=torch.float64) * scale


def original_transformer(gen, *, k, grid, depth=2, kind="text", conv=False, rows=10, table=None):
    """State dict of an original transformer (names of transformer_utils.py / dalle_mask_image_embedding.py)."""
    th, tw = table or grid
    s = {
        "content_emb.emb.weight": rand(gen, k + 1, D),
        "content_emb.height_emb.weight": rand(gen, th, D),
        "content_emb.width_emb.weight": rand(gen, tw, D),
    }

    def ada(p, n):
        s.update(
            {
                p + "emb.weight": rand(gen, n, D),
                p + "linear.weight": rand(gen, 2 * D, D),
                p + "linear.bias": rand(gen, 2 * D, scale=0.1),
            }
        )

    def attn(p, kv=D):
        for x, fin in (("query", D), ("key", kv), ("value", kv), ("proj", D)):
            s.update({p + f"{x}.weight": rand(gen, D, fin) / math.sqrt(fin), p + f"{x}.bias": rand(gen, D, scale=0.1)})

    for n in range(depth):
        b = f"blocks.{n}."
        ada(b + "ln1.", T)
        if kind == "text":
            attn(b + "attn1.")
            attn(b + "attn2.", CDIM)
            ada(b + "ln1_1.", T)
            s[b + "attn2.mask"] = torch.tril(torch.ones(grid[0] * grid[1], grid[0] * grid[1])).view(
                1, 1, grid[0] * grid[1], -1
            )
        else:
            attn(b + "attn.")
        if kind == "class":
            ada(b + "ln2.", rows)
        else:
            s.update({b + "ln2.weight": 1 + rand(gen, D, scale=0.1), b + "ln2.bias": rand(gen, D, scale=0.1)})
        if conv:
            s.update(
                {
                    b + "mlp.conv1.weight": rand(gen, 2 * D, D, 3, 3) / math.sqrt(9 * D),
                    b + "mlp.conv1.bias": rand(gen, 2 * D, scale=0.1),
                    b + "mlp.conv2.weight": rand(gen, D, 2 * D, 3, 3) / math.sqrt(18 * D),
                    b + "mlp.conv2.bias": rand(gen, D, scale=0.1),
                }
            )
        else:
            s.update(
                {
                    b + "mlp.0.weight": rand(gen, 4 * D, D) / math.sqrt(D),
                    b + "mlp.0.bias": rand(gen, 4 * D, scale=0.1),
                    b + "mlp.2.weight": rand(gen, D, 4 * D) / math.sqrt(4 * D),
                    b + "mlp.2.bias": rand(gen, D, scale=0.1),
                }
            )
    s.update(
        {
            "to_logits.0.weight": 1 + rand(gen, D, scale=0.1),
            "to_logits.0.bias": rand(gen, D, scale=0.1),
            "to_logits.1.weight": rand(gen, k, D),
            "to_logits.1.bias": rand(gen, k, scale=0.1),
        }
    )
    return s


def original_forward(sd, tokens, t, cond=None, cls=None):
    """Text2ImageTransformer / Condition2ImageTransformer.forward (attention without mask, GELU2, AdaLN with the
    mean-row fallback for an index past the table) on the original names; logits [B, L, K]."""
    b, n = tokens.shape
    h_emb, w_emb = sd["content_emb.height_emb.weight"], sd["content_emb.width_emb.weight"]
    pos = (h_emb[:, None] + w_emb[None]).reshape(1, -1, D)[:, :n]
    x = sd["content_emb.emb.weight"][tokens] + pos

    def ada(p, x, idx):
        table = sd[p + "emb.weight"]
        e = table.mean(0, keepdim=True).repeat(b, 1) if idx[0] >= table.shape[0] else table[idx]
        scale, shift = F.linear(F.silu(e), sd[p + "linear.weight"], sd[p + "linear.bias"])[:, None].chunk(2, dim=2)
        return F.layer_norm(x, (D,)) * (1 + scale) + shift

    def attn(p, x, kv):
        lin = lambda name, v: F.linear(v, sd[p + name + ".weight"], sd[p + name + ".bias"])  # noqa: E731
        heads = lambda v: v.view(b, v.shape[1], HEADS, -1).transpose(1, 2)  # noqa: E731
        q, k, v = heads(lin("query", x)), heads(lin("key", kv)), heads(lin("value", kv))
        y = ((q @ k.transpose(-2, -1)) / math.sqrt(k.shape[-1])).softmax(-1) @ v
        return lin("proj", y.transpose(1, 2).reshape(b, x.shape[1], D))

    def mlp(p, x):
        g = lambda v: v * torch.sigmoid(1.702 * v)  # noqa: E731
        if p + "mlp.0.weight" in sd:
            return F.linear(
                g(F.linear(x, sd[p + "mlp.0.weight"], sd[p + "mlp.0.bias"])),
                sd[p + "mlp.2.weight"],
                sd[p + "mlp.2.bias"],
            )
        side = int(math.sqrt(n))
        h = x.transpose(1, 2).reshape(b, D, side, side)
        h = F.conv2d(
            g(F.conv2d(h, sd[p + "mlp.conv1.weight"], sd[p + "mlp.conv1.bias"], padding=1)),
            sd[p + "mlp.conv2.weight"],
            sd[p + "mlp.conv2.bias"],
            padding=1,
        )
        return h.flatten(2).transpose(1, 2)

    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    for i in range(depth):
        p = f"blocks.{i}."
        if p + "attn1.query.weight" in sd:
            a = ada(p + "ln1.", x, t)
            x = x + attn(p + "attn1.", a, a)
            x = x + attn(p + "attn2.", ada(p + "ln1_1.", x, t), cond)
            x = x + mlp(p, F.layer_norm(x, (D,), sd[p + "ln2.weight"], sd[p + "ln2.bias"]))
        else:
            a = ada(p + "ln1.", x, t)
            x = x + attn(p + "attn.", a, a)
            norm = (
                ada(p + "ln2.", x, cls)
                if p + "ln2.emb.weight" in sd
                else F.layer_norm(x, (D,), sd[p + "ln2.weight"], sd[p + "ln2.bias"])
            )
            x = x + mlp(p, norm)
    x = F.layer_norm(x, (D,), sd["to_logits.0.weight"], sd["to_logits.0.bias"])
    return F.linear(x, sd["to_logits.1.weight"], sd["to_logits.1.bias"])


def tiny_vq(k_full, seed=3):
    from versadiff.autoencoders import VQAutoencoder, VQConfig

    torch.manual_seed(seed)
    ae = VQAutoencoder(
        VQConfig(
            base_channels=16,
            channel_mult=(1, 2),
            num_res_blocks=1,
            z_channels=8,
            embed_dim=4,
            n_embed=k_full,
            norm_groups=8,
        )
    )
    with torch.no_grad():
        for p in ae.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return ae.eval()


def checkpoint(inner, *, codec=None, ema_inner=None, empty=None):
    """A released training checkpoint: solver.py's dict, the DALLE model state and the EMA DiffusionTransformer."""
    buffers = {"log_at": torch.zeros(T), "Lt_history": torch.zeros(T), "Lt_count": torch.zeros(T)}
    diff = {**{"transformer." + k: v.float() for k, v in inner.items()}, **buffers}
    ema = {**{"transformer." + k: v.float() for k, v in (ema_inner or inner).items()}, **buffers}
    if empty is not None:
        diff["empty_text_embed"] = ema["empty_text_embed"] = empty
    model = {"transformer." + k: v for k, v in diff.items()}
    model["condition_codec.dummy"] = torch.zeros(2)
    if codec is not None:
        ldm = versadiff_to_ldm(codec.state_dict(), 2)
        model.update(
            {
                f"content_codec.enc.{k}": v
                for k, v in ldm.items()
                if k.startswith(("encoder.", "quant_conv.", "quantize."))
            }
        )
        model.update(
            {
                f"content_codec.dec.{k}": v
                for k, v in ldm.items()
                if k.startswith(("decoder.", "post_quant_conv.", "quantize."))
            }
        )
    return {
        "last_epoch": 3,
        "last_iter": 120,
        "model": model,
        "ema": ema,
        "clip_grad_norm": {"last_epoch": 0},
        "optimizer_and_scheduler": {
            "default": {
                "optimizer": {
                    "module": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0]}]},
                    "step_iteration": 1,
                }
            }
        },
    }


def test_text_checkpoint_takes_ema_and_equals_original(tmp_path):
    gen = torch.Generator().manual_seed(0)
    k, grid = 5, (4, 4)
    raw = original_transformer(gen, k=k, grid=grid)
    ema = {
        kk: v + 0.01 * torch.randn(v.shape, generator=gen, dtype=v.dtype) if kk.endswith("weight") else v
        for kk, v in raw.items()
    }
    codec = tiny_vq(8)
    full_to_quantize = torch.tensor([0, 1, 0, 2, 3, 0, 4, 0])  # 5 kept codes, the unused ones share id 0
    torch.save(full_to_quantize, tmp_path / "taming_vqvae_5.pt")
    empty = torch.randn(77, CDIM, generator=gen, dtype=torch.float64)
    path = tmp_path / "coco_pretrained.pth"
    torch.save(checkpoint(raw, codec=codec, ema_inner=ema, empty=empty), path)
    assert detect_format(path) == "vq_diffusion"
    f = load_foreign(path, num_heads=HEADS, mapping=tmp_path / "taming_vqvae_5.pt", vae_norm_groups=8, dtype=None)
    assert "EMA transformer used" in f.report.notes
    groups = f.report.unused_groups()
    assert {"model", "optimizer_and_scheduler", "last_epoch", "log_at"} <= set(groups)
    net = build_net(f.config["model"]).double().eval()
    net.load_state_dict({kk: v.double() for kk, v in f.state.items()}, strict=True)
    assert torch.equal(net.null_context.float(), empty.float())
    tokens = torch.randint(0, k + 1, (3, 16), generator=gen)
    t = torch.tensor([0, 4, 9])
    cond = torch.randn(3, 77, CDIM, generator=gen, dtype=torch.float64)
    ema32 = {kk: v.float().double() for kk, v in ema.items()}
    with torch.no_grad():
        for tt in (t[:1].repeat(3), t):  # the original's AdaLN reads one timestep per batch; ours one per sample
            if tt[0] != tt[-1]:
                expected = torch.cat(
                    [original_forward(ema32, tokens[i : i + 1], tt[i : i + 1], cond[i : i + 1]) for i in range(3)]
                )
            else:
                expected = original_forward(ema32, tokens, tt, cond)
            got = net(tokens, tt, context=cond).transpose(1, 2)
            assert ((got - expected).norm() / expected.norm()).item() < 1e-10
    raw_f = load_foreign(path, ema=False, num_heads=HEADS, mapping=tmp_path / "taming_vqvae_5.pt", vae_norm_groups=8)
    assert torch.equal(raw_f.state["head.weight"], raw["to_logits.1.weight"].float())
    # the content codec with its codebook reduced to the kept codes decodes like the original (quantize_to_full)
    vq = next(c for c in f.components if c.section == "codecs").module
    q_to_full = torch.tensor([0, 1, 3, 4, 6])
    ids = torch.randint(0, k, (2, 2, 2), generator=gen)
    with torch.no_grad():
        assert torch.allclose(
            vq.decode(vq.quantize.lookup(ids)), codec.decode(codec.quantize.lookup(q_to_full[ids])), atol=1e-6
        )
    out = write_foreign(f, tmp_path / "out")
    model = load_foreign_model(path, num_heads=HEADS, mapping=tmp_path / "taming_vqvae_5.pt", vae_norm_groups=8)
    images = model.generate([0, 1], sampler="fast", steps=5, guidance=0.0)
    assert images.shape == (2, 3, 8, 8) and out.is_file()


def test_class_checkpoint_without_null_row(tmp_path):
    """Condition2ImageTransformer with a 10-row class table (no CF null) and conv MLPs: the null label gets the
    original's mean-row embedding."""
    gen = torch.Generator().manual_seed(1)
    raw = original_transformer(gen, k=6, grid=(4, 4), kind="class", conv=True, rows=10)
    path = tmp_path / "imagenet_like.pth"
    torch.save(checkpoint(raw), path)
    f = load_foreign(path, num_heads=HEADS, dtype=None, vqvae=None)
    assert f.config["model"]["num_classes"] == 10 and f.config["model"]["mlp_type"] == "conv"
    net = build_net(f.config["model"]).double().eval()
    net.load_state_dict({kk: v.double() for kk, v in f.state.items()}, strict=True)
    r32 = {kk: v.float().double() for kk, v in raw.items()}
    tokens = torch.randint(0, 7, (2, 16), generator=gen)
    t = torch.tensor([5, 5])
    with torch.no_grad():
        for label, ours, tol in (
            (torch.tensor([3, 7]), torch.tensor([3, 7]), 1e-10),
            (torch.tensor([10, 10]), torch.tensor([-1, -1]), 1e-7),
        ):  # mean row stored in fp32
            expected = original_forward(r32, tokens, t, cls=label)
            got = net(tokens, t, class_labels=ours).transpose(1, 2)
            assert ((got - expected).norm() / expected.norm()).item() < tol


def test_sliced_position_tables_are_refused(tmp_path):
    gen = torch.Generator().manual_seed(2)
    raw = original_transformer(
        gen, k=6, grid=(4, 4), kind="class", conv=True, rows=11, table=(8, 8)
    )  # 64-entry table, 16 tokens
    torch.save(checkpoint(raw), tmp_path / "ffhq_like.pth")
    with pytest.raises(ValueError, match="cannot represent that") as err:
        load_foreign(tmp_path / "ffhq_like.pth", num_heads=HEADS, token_grid=[4, 4])
    assert "\n" not in str(err.value)


def test_diffusers_vq_diffusion_folder(tmp_path):
    require_extra("diffusers")
    from diffusers import Transformer2DModel, VQDiffusionScheduler, VQModel
    from diffusers.pipelines.deprecated.vq_diffusion.pipeline_vq_diffusion import (
        LearnedClassifierFreeSamplingEmbeddings,
    )

    torch.manual_seed(0)
    k = 12
    transformer = Transformer2DModel(
        num_attention_heads=HEADS,
        attention_head_dim=D // HEADS,
        num_vector_embeds=k + 1,
        sample_size=4,
        num_layers=2,
        cross_attention_dim=CDIM,
        num_embeds_ada_norm=T,
        activation_fn="geglu-approximate",
        attention_bias=True,
        norm_type="ada_norm",
    ).eval()
    with torch.no_grad():
        for p in transformer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    vqvae = VQModel(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(16, 32),
        layers_per_block=1,
        latent_channels=4,
        num_vq_embeddings=k,
        vq_embed_dim=4,
        norm_num_groups=8,
    ).eval()
    cf = LearnedClassifierFreeSamplingEmbeddings(learnable=True, hidden_size=CDIM, length=77)
    with torch.no_grad():
        cf.embeddings.normal_()
    folder = tmp_path / "vq-diffusion"
    transformer.save_pretrained(folder / "transformer")
    vqvae.save_pretrained(folder / "vqvae")
    cf.save_pretrained(folder / "learned_classifier_free_sampling_embeddings")
    VQDiffusionScheduler(num_vec_classes=k + 1, num_train_timesteps=T).save_config(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "VQDiffusionPipeline"}))
    text_encoder = tiny_clip_text(folder, hidden=CDIM)
    assert detect_format(folder) == "vq_diffusion_diffusers"
    f = load_foreign(folder)
    net = build_net(f.config["model"]).eval()
    net.load_state_dict(f.state, strict=True)
    assert torch.equal(net.null_context, cf.embeddings.detach())
    tokens = torch.randint(0, k + 1, (2, 16))
    t = torch.tensor([3, 3])
    cond = torch.randn(2, 77, CDIM)
    with torch.no_grad():
        expected = transformer(
            tokens, encoder_hidden_states=cond, timestep=t[0]
        ).sample  # log p(x0) [B, K, L]; scalar t
        got = torch.log_softmax(net(tokens, t, context=cond).double(), dim=1).float()
    assert torch.allclose(got, expected, atol=1e-5)
    vq = f.components[0].module
    z = torch.randn(1, 4, 2, 2)
    with torch.no_grad():
        assert torch.allclose(vq.decode(z), vqvae.decode(z, force_not_quantize=True).sample, atol=1e-5)
    assert f.config["discrete"]["num_steps"] == T and f.config["task"] == "vq_diffusion"
    # the pipeline's text_encoder/ + tokenizer/ become the text context encoder, as VQDiffusionPipeline encodes
    written = f.materialized_config(tmp_path / "converted")
    assert written["encoders"]["text"]["type"] == "clip_text" and written["encoders"]["text"]["context"] == "normalized"
    model = load_foreign_model(folder)
    enc = model.flows["text-to-image"].encoder
    prompts = ["a red circle", "a blue square on the left"]
    with torch.no_grad():
        h = text_encoder(enc.tokenizer(prompts))[0]
        assert torch.allclose(enc.encode(prompts), h / h.norm(dim=-1, keepdim=True), atol=1e-6)
    assert model.text_to_image("a red circle", seeds=[0], sampler="fast", steps=2).shape == (1, 3, 8, 8)


def test_taming_vqgans(tmp_path):
    """A taming VQModel checkpoint (Lightning state_dict with loss.*) and a GumbelVQ one; level attention is refused."""
    require_extra("diffusers")
    from diffusers import VQModel
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    codec = tiny_vq(8, seed=5)
    ldm = versadiff_to_ldm(codec.state_dict(), 2)
    torch.save(
        {"state_dict": {**ldm, "loss.discriminator.main.0.weight": torch.zeros(2)}, "global_step": 3},
        tmp_path / "last.ckpt",
    )
    assert detect_format(tmp_path / "last.ckpt") == "taming_vqgan"
    f = load_foreign(tmp_path / "last.ckpt", norm_groups=8)
    out = write_foreign(f, tmp_path / "vqgan")
    from versadiff.autoencoders import load_autoencoder

    ae = load_autoencoder(out)
    ref = VQModel(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(16, 32),
        layers_per_block=1,
        latent_channels=8,
        num_vq_embeddings=8,
        vq_embed_dim=4,
        norm_num_groups=8,
    ).eval()
    conv = convert_ldm_vae_checkpoint({k: v for k, v in ldm.items() if not k.startswith("quantize.")}, dict(ref.config))
    ref.load_state_dict(
        {**conv, "quantize.embedding.weight": ldm["quantize.embedding.weight"]}
    )  # diffusers' own reading
    x = torch.rand(1, 3, 8, 8) * 2 - 1
    with torch.no_grad():
        z = ref.encode(x).latents
        assert torch.allclose(ae.encode_pre_quant(x), z, atol=1e-5)
        assert torch.allclose(ae.decode(ae.quantize.lookup(ae.quantize.indices(z))), ref.decode(z).sample, atol=1e-5)
    gumbel = {kk: v for kk, v in ldm.items() if not kk.startswith("quantize.")}
    gumbel.update(
        {
            "quantize.embed.weight": ldm["quantize.embedding.weight"],
            "quantize.proj.weight": torch.zeros(8, 8, 1, 1),
            "quantize.proj.bias": torch.zeros(8),
        }
    )
    torch.save({"state_dict": gumbel}, tmp_path / "gumbel.ckpt")
    g = load_foreign(tmp_path / "gumbel.ckpt", norm_groups=8)
    assert any("GumbelVQ" in n for n in g.report.notes) and torch.equal(
        g.state["quantize.embedding.weight"], ldm["quantize.embedding.weight"]
    )
    attn = {**ldm, "encoder.down.1.attn.0.q.weight": torch.zeros(32, 32, 1, 1)}
    torch.save({"state_dict": attn}, tmp_path / "f16.ckpt")
    with pytest.raises(ValueError, match="attention inside its resolution levels"):
        load_foreign(tmp_path / "f16.ckpt", norm_groups=8)
