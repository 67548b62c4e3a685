"""KL and VQ autoencoders: same outputs as diffusers on the same weights, LDM key mapping, I/O, training steps."""

import json

import pytest
import torch
from safetensors.torch import save_file

from versadiff.autoencoders import AutoencoderKL, AutoencoderLoss, KLConfig, VQAutoencoder, VQConfig
from versadiff.convert.ldm_vae import ldm_to_versadiff, versadiff_to_ldm


TINY = dict(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
KL_TINY = KLConfig(base_channels=8, channel_mult=(1, 2), num_res_blocks=1, z_channels=4, norm_groups=4)
VQ_TINY = VQConfig(base_channels=8, channel_mult=(1, 2), num_res_blocks=1, z_channels=4, embed_dim=3, n_embed=16, norm_groups=4)


def _randomise(module):
    # diffusers zero-initialises nothing here, but GroupNorm starts at identity: perturb every tensor
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))


@pytest.fixture(scope="module")
def diffusers_kl(tmp_path_factory):
    from diffusers import AutoencoderKL as DiffusersKL

    torch.manual_seed(0)
    ref = DiffusersKL(latent_channels=4, scaling_factor=0.3, **TINY).eval()
    _randomise(ref)
    path = tmp_path_factory.mktemp("kl")
    ref.save_pretrained(path, safe_serialization=True)
    return ref, path


def test_kl_matches_diffusers(diffusers_kl):
    ref, path = diffusers_kl
    ours = AutoencoderKL.from_diffusers(path).eval()
    assert ours.config.scale_factor == 0.3 and ours.config.channel_mult == (1, 2)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        a, b = ref.encode(x).latent_dist, ours.encode(x)
        assert torch.allclose(a.mean, b.mean, atol=1e-5) and torch.allclose(a.logvar, b.logvar, atol=1e-5)
        assert torch.allclose(ref.decode(z).sample, ours.decode(z), atol=1e-5)
        sampled = ours.encode_latents(x, generator=torch.Generator().manual_seed(3))
        expect = a.sample(generator=torch.Generator().manual_seed(3)) * 0.3
        assert torch.allclose(sampled, expect, atol=1e-5)
        assert torch.allclose(ours.decode_latents(z * 0.3), ours.decode(z), atol=1e-5)


def test_kl_ldm_state_dict_roundtrip_and_diffusers_converter(diffusers_kl, tmp_path):
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    ref, path = diffusers_kl
    ours = AutoencoderKL.from_diffusers(path).eval()
    ldm = versadiff_to_ldm(ours.state_dict(), 2)
    assert ldm["encoder.mid.attn_1.q.weight"].shape == (16, 16, 1, 1)
    assert "decoder.up.1.upsample.conv.weight" in ldm and "encoder.down.0.downsample.conv.weight" in ldm
    # diffusers' own LDM converter reads our LDM-layout dict back into its layout, key for key
    back = convert_ldm_vae_checkpoint(ldm, dict(ref.config))
    own = ref.state_dict()
    assert set(back) == set(own)
    assert all(torch.allclose(back[k].reshape(own[k].shape), own[k]) for k in own)
    # a whole-checkpoint file with a prefix and training-only loss keys
    full = {f"first_stage_model.{k}": v.contiguous() for k, v in ldm.items()}
    full["first_stage_model.loss.logvar"] = torch.zeros(())
    full["model.diffusion_model.x"] = torch.zeros(1)
    save_file(full, str(tmp_path / "sd.safetensors"))
    cfg = KLConfig.from_dict({**KL_TINY.to_dict(), "scale_factor": 0.3})
    loaded = AutoencoderKL.from_ldm(tmp_path / "sd.safetensors", cfg, prefix="first_stage_model.").eval()
    z = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        assert torch.allclose(loaded.decode(z), ref.decode(z).sample, atol=1e-5)
    torch.save({"state_dict": ldm}, tmp_path / "kl.ckpt")
    assert torch.equal(AutoencoderKL.from_ldm(tmp_path / "kl.ckpt", cfg).decoder.conv_out.weight, loaded.decoder.conv_out.weight)
    assert set(ldm_to_versadiff(ldm, 2)) == set(ours.state_dict())


def test_kl_save_load_and_clear_errors(tmp_path, diffusers_kl):
    model = AutoencoderKL(KL_TINY)
    model.save_pretrained(tmp_path / "m")
    again = AutoencoderKL.load_pretrained(tmp_path / "m")
    assert again.config == model.config
    assert torch.equal(again.encoder.conv_in.weight, model.encoder.conv_in.weight)
    with pytest.raises(FileNotFoundError, match="config.json"):
        AutoencoderKL.from_diffusers(tmp_path)
    (tmp_path / "m" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        AutoencoderKL.load_pretrained(tmp_path / "m")
    bad = tmp_path / "bad"
    bad.mkdir()
    _, path = diffusers_kl
    (bad / "config.json").write_text((path / "config.json").read_text())
    state = AutoencoderKL.from_diffusers(path).state_dict()
    state["encoder.extra.weight"] = torch.zeros(1)
    save_file({k: v.contiguous() for k, v in state.items()}, str(bad / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(ValueError, match="unexpected key"):
        AutoencoderKL.from_diffusers(bad)
    cfg = json.loads((path / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "_class_name": "VQModel"}))
    with pytest.raises(ValueError, match="not a AutoencoderKL"):
        AutoencoderKL.from_diffusers(bad)
    with pytest.raises(ValueError, match="unknown KLConfig key"):
        KLConfig.from_dict({"ch": 3})
    with pytest.raises(ValueError, match="divisible by 2"):
        model.encode(torch.zeros(1, 3, 15, 16))


def test_kl_training_with_discriminator_reduces_loss():
    torch.manual_seed(0)
    model = AutoencoderKL(KL_TINY)
    loss_fn = AutoencoderLoss(rec="l1", reg_weight=1e-6, disc_weight=0.5, disc_start=5, disc_channels=8, disc_layers=2)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    opt_d = torch.optim.Adam(loss_fn.discriminator.parameters(), lr=2e-4)
    # smooth images: learnable in a few steps by a tiny model
    x = torch.nn.functional.interpolate(torch.rand(4, 3, 2, 2, generator=torch.Generator().manual_seed(0)) * 2 - 1, size=16)
    g = torch.Generator().manual_seed(1)
    recs = []
    for step in range(30):
        out = model.training_losses(x, loss_fn, step, generator=g)
        opt.zero_grad()
        out["loss"].mean().backward()
        opt.step()
        d = loss_fn.discriminator_losses(x, out["recon"], step)
        assert d.shape == (4,) and (d == 0).all() == (step < 5)
        if step >= 5:
            opt_d.zero_grad()
            d.mean().backward()
            opt_d.step()
        assert (out["gan"] != 0).any() == (step >= 5)
        recs.append(out["rec"].mean().item())
    assert recs[-1] < 0.7 * recs[0]
    with pytest.raises(ValueError, match="LPIPS"):
        AutoencoderLoss(rec="lpips")


def test_vq_matches_diffusers(tmp_path):
    from diffusers import VQModel

    torch.manual_seed(0)
    ref = VQModel(latent_channels=4, num_vq_embeddings=16, vq_embed_dim=3, **TINY).eval()
    _randomise(ref)
    ref.save_pretrained(tmp_path, safe_serialization=True)
    ours = VQAutoencoder.from_diffusers(tmp_path).eval()
    assert ours.config == VQ_TINY
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        h = ref.encode(x).latents
        assert torch.allclose(ours.encode_pre_quant(x), h, atol=1e-5)
        zq_ref, _, (_, _, idx_ref) = ref.quantize(h)
        assert torch.equal(ours.encode_tokens(x).flatten(), idx_ref.flatten())
        assert torch.allclose(ours.encode(x), zq_ref, atol=1e-5)
        assert torch.allclose(ours.decode(ours.encode(x)), ref.decode(h).sample, atol=1e-5)
        assert torch.allclose(ours(x)[0], ref(x).sample, atol=1e-5)
        tokens = ours.encode_tokens(x)
        assert tokens.shape == (2, 64)
        assert torch.allclose(ours.decode_tokens(tokens, (8, 8)), ref.decode(h).sample, atol=1e-5)
    # LDM / taming layout round trip
    ldm = versadiff_to_ldm(ours.state_dict(), 2)
    assert "quantize.embedding.weight" in ldm and "decoder.mid.block_2.conv2.weight" in ldm
    again = VQAutoencoder.from_ldm({f"first_stage_model.{k}": v for k, v in ldm.items()}, VQ_TINY, prefix="first_stage_model.")
    assert all(torch.equal(again.state_dict()[k], v) for k, v in ours.state_dict().items())


@pytest.mark.parametrize("ema", [False, True])
def test_vq_training_codebook_and_usage(ema, tmp_path):
    torch.manual_seed(0)
    model = VQAutoencoder(VQConfig.from_dict({**VQ_TINY.to_dict(), "ema": ema}))
    loss_fn = AutoencoderLoss(rec="l2", reg_weight=1.0)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    book0 = model.quantize.embedding.weight.detach().clone()
    first = None
    for _ in range(25):
        out = model.training_losses(x, loss_fn)
        opt.zero_grad()
        out["loss"].mean().backward()
        opt.step()
        first = out["rec"].mean().item() if first is None else first
    assert out["rec"].mean().item() < first
    assert not torch.allclose(model.quantize.embedding.weight, book0)  # the codebook learned, by grads or EMA
    usage = model.quantize.codebook_usage()
    assert usage["total"] == 25 * 4 * 64 and 1 <= usage["used"] <= 16
    assert 1.0 <= usage["perplexity"] <= usage["used"] + 1e-9
    model.quantize.reset_usage()
    assert model.quantize.codebook_usage()["used"] == 0
    model.eval()
    with torch.no_grad():
        model(x)
    assert model.quantize.codebook_usage()["total"] == 0  # eval passes do not count
    model.save_pretrained(tmp_path / "vq")
    again = VQAutoencoder.load_pretrained(tmp_path / "vq")
    assert torch.equal(again.quantize.embedding.weight, model.quantize.embedding.weight)
    with pytest.raises(ValueError, match="code indices"):
        model.decode_tokens(torch.full((1, 64), 16), (8, 8))
