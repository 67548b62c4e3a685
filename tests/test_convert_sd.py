"""Stable Diffusion 1.x weights -> VD's image stream: original LDM checkpoints (with LitEma weights and the
first-stage VAE) and diffusers folders, on tiny random UNets; the layout we write is checked against diffusers'
own single-file converter, the outputs against diffusers' UNet2DConditionModel."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from extras import require_extra  # noqa: E402

diffusers = require_extra("diffusers")  # broken fails loudly; missing skips with the reason (fails under CI)
from diffusers import AutoencoderKL as DiffusersKL  # noqa: E402
from diffusers import UNet2DConditionModel  # noqa: E402
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint  # noqa: E402
from tiny_clip import tiny_clip_text  # noqa: E402

from versadiff.convert.formats import detect_format, load_foreign, load_foreign_model, main  # noqa: E402
from versadiff.convert.ldm_vae import versadiff_to_ldm  # noqa: E402
from versadiff.convert.sd import sd_state_to_ldm  # noqa: E402
from versadiff.nets import build_net  # noqa: E402

UNET = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(16, 32, 48),
    layers_per_block=1,
    cross_attention_dim=24,
    attention_head_dim=4,
    norm_num_groups=16,
)
VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2,
    block_out_channels=(16, 32),
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=16,
    sample_size=16,
)
OPTS = dict(num_heads=4, norm_groups=16, image_size=8, vae_norm_groups=16)


@pytest.fixture(autouse=True)
def plain_cpu_convs():
    previous = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    yield
    torch.backends.mkldnn.enabled = previous


def randomize(module, seed):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype)
            if p.ndim == 1:
                p.copy_(1 + 0.2 * noise if "norm" in name and name.endswith("weight") else 0.2 * noise)
            else:
                p.copy_(noise / p[0].numel() ** 0.5)
    return module


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd")
    unet = randomize(UNet2DConditionModel(**UNET), 1).eval()
    ema_unet = randomize(UNet2DConditionModel(**UNET), 2).eval()
    vae = randomize(DiffusersKL(**VAE), 3).eval()
    folder = root / "diffusers"
    unet.save_pretrained(folder / "unet")
    vae.save_pretrained(folder / "vae")
    (folder / "scheduler").mkdir()
    (folder / "scheduler" / "scheduler_config.json").write_text(
        json.dumps(
            {
                "_class_name": "PNDMScheduler",
                "beta_start": 0.00085,
                "beta_end": 0.012,
                "beta_schedule": "scaled_linear",
                "set_alpha_to_one": False,
                "skip_prk_steps": True,
                "steps_offset": 1,
                "num_train_timesteps": 1000,
            }
        )
    )
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    gen = torch.Generator().manual_seed(4)
    data = dict(
        x=torch.randn(2, 4, 8, 8, generator=gen, dtype=torch.float64),
        t=torch.tensor([3.0, 517.0], dtype=torch.float64),
        c=torch.randn(2, 5, 24, generator=gen, dtype=torch.float64),
    )
    return dict(root=root, folder=folder, unet=unet.double(), ema_unet=ema_unet.double(), vae=vae, data=data)


def run(net, d, key="context_text"):
    with torch.no_grad():
        return net(d["x"], d["t"], data_stream="image", **{key: d["c"]})


def expected(unet, d):
    with torch.no_grad():
        return unet(d["x"], d["t"], encoder_hidden_states=d["c"], return_dict=False)[0]


def net_of(foreign):
    net = build_net(foreign.config["model"]).double().eval()
    net.load_state_dict(foreign.state, strict=True)
    return net


def test_diffusers_folder_and_bare_unet(sd):
    assert detect_format(sd["folder"]) == "sd_diffusers"
    f = load_foreign(sd["folder"], **OPTS)
    assert f.report.ok and f.config["flows"] == ["text-to-image"]
    assert f.config["model"]["data_streams"] == ["image"] and f.config["model"]["context_streams"] == ["text"]
    assert f.config["sample"]["sampler"] == "dpm" and any("PNDM" in n for n in f.report.notes)  # nearest, said so
    assert rel(run(net_of(f), sd["data"]), expected(sd["unet"], sd["data"])) < 1e-6
    vd_basic = load_foreign(sd["folder"] / "unet", context="image", **OPTS)  # VD-basic's start: image context
    assert vd_basic.config["flows"] == ["image-variation"]
    assert rel(run(net_of(vd_basic), sd["data"], "context_image"), expected(sd["unet"], sd["data"])) < 1e-6


def test_diffusers_folder_text_encoder_is_the_hidden_state_context(sd, tmp_path):
    import shutil

    folder = tmp_path / "sd-with-text"
    shutil.copytree(sd["folder"], folder)
    text = tiny_clip_text(folder, hidden=UNET["cross_attention_dim"])
    f = load_foreign(folder, **OPTS)
    written = f.materialized_config(tmp_path / "converted")
    assert written["encoders"]["text"]["type"] == "clip_text" and written["encoders"]["text"]["context"] == "hidden"
    assert not any("text-to-image model without --text-encoder" in n for n in f.report.notes)
    model = load_foreign_model(folder, **OPTS)
    enc = model.flows["text-to-image"].encoder
    prompts = ["a red circle", "a blue square on the left"]
    with torch.no_grad():  # SD's context: CLIPTextModel's last_hidden_state (after the final LayerNorm), unprojected
        assert torch.allclose(enc.encode(prompts), text(enc.tokenizer(prompts)).last_hidden_state, atol=1e-6)
    assert model.text_to_image("a red circle", seeds=[0], steps=2).shape == (1, 3, 16, 16)
    bare = load_foreign(sd["folder"], **OPTS)  # no text_encoder/: said so, and no encoder configured
    assert any("without --text-encoder" in n for n in bare.report.notes)
    assert "text" not in bare.materialized_config(tmp_path / "bare").get("encoders", {})


def test_ldm_checkpoint_with_ema_and_vae(sd, tmp_path):
    from versadiff.convert.sd import _move_context
    from versadiff.convert.vd import multiflow_state_from_diffusers

    f0 = load_foreign(sd["folder"], **OPTS)
    ours, net_cfg = f0.state, build_net(f0.config["model"]).config
    ema = _move_context(
        multiflow_state_from_diffusers({k: v.float() for k, v in sd["ema_unet"].state_dict().items()}), "image", "text"
    )
    ldm = sd_state_to_ldm(ours, net_cfg)
    ldm_ema = sd_state_to_ldm(ema, net_cfg)
    from versadiff.autoencoders import AutoencoderKL

    ae = AutoencoderKL.from_diffusers(sd["folder"] / "vae")
    ckpt = {
        **ldm,
        **{"model_ema." + k[len("model.") :].replace(".", ""): v for k, v in ldm_ema.items()},
        "model_ema.decay": torch.tensor(0.9999),
        "model_ema.num_updates": torch.tensor(7),
        **{"first_stage_model." + k: v for k, v in versadiff_to_ldm(ae.state_dict(), 2).items()},
        "cond_stage_model.transformer.text_model.final_layer_norm.weight": torch.ones(4),
        "betas": torch.linspace(1e-4, 2e-2, 10),
    }
    # the layout is SD's: diffusers' own single-file converter reads it back (raw and EMA), and the VAE too
    cfg = dict(sd["unet"].config)
    for extract, ref in ((False, sd["unet"]), (True, sd["ema_unet"])):
        back = convert_ldm_unet_checkpoint(ckpt, cfg, extract_ema=extract)
        assert set(back) == set(ref.state_dict()) and all(
            torch.equal(back[k].double(), v) for k, v in ref.state_dict().items()
        )
    vae_back = convert_ldm_vae_checkpoint(
        {k: v for k, v in ckpt.items() if k.startswith("first_stage_model.")}, dict(sd["vae"].config)
    )
    assert all(torch.allclose(vae_back[k].reshape(v.shape), v) for k, v in sd["vae"].state_dict().items())

    path = tmp_path / "sd-v1-4-full-ema.ckpt"
    torch.save({"state_dict": ckpt, "global_step": 470000}, path)
    assert detect_format(path) == "sd_ldm"
    f = load_foreign(path, **OPTS)
    assert f.report.ok and "EMA weights (model_ema.*) used" in f.report.notes
    assert rel(run(net_of(f), sd["data"]), expected(sd["ema_unet"], sd["data"])) < 1e-6
    raw = load_foreign(path, ema=False, **OPTS)
    assert rel(run(net_of(raw), sd["data"]), expected(sd["unet"], sd["data"])) < 1e-6
    assert set(f.report.unused_groups()) == {"model", "model_ema", "cond_stage_model", "betas"}
    vae = f.components[0].module
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(
            vae.decode(vae.encode(x).mode()), sd["vae"].decode(sd["vae"].encode(x).latent_dist.mode()).sample, atol=1e-5
        )
    with pytest.raises(ValueError, match="no EMA weights"):
        torch.save({k: v for k, v in ckpt.items() if not k.startswith("model_ema.")}, tmp_path / "plain.ckpt")
        load_foreign(tmp_path / "plain.ckpt", ema=True, **OPTS)


def test_written_model_and_diffusers_export(sd, tmp_path):
    out = tmp_path / "sd"
    assert main([str(sd["folder"]), "--out", str(out), *[f"--option={k}={v}" for k, v in OPTS.items()]]) == 0
    with pytest.raises(ValueError, match="needs a text context encoder"):  # SD's encoder is not in versadiff yet
        load_foreign_model(sd["folder"], **OPTS)
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    vision = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            image_size=16,
            patch_size=8,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=4,
            projection_dim=24,
        )
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vision.save_pretrained(str(tmp_path / "image_encoder"))
    basic = load_foreign_model(sd["folder"], context="image", image_encoder=tmp_path / "image_encoder", **OPTS)
    assert list(basic.flows) == ["image-variation"]  # VD-basic, started from SD, with VD's CLIP image context
    images = basic.generate([0], context=torch.zeros(1, 3, 16, 16), steps=2, guidance=1.0)
    assert images.shape == (1, 3, 16, 16) and torch.isfinite(images).all()
    exported = tmp_path / "exported"
    assert main([str(out / "model.safetensors"), "--to", "diffusers", "--out", str(exported)]) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        unet = UNet2DConditionModel.from_pretrained(str(exported / "unet")).double().eval()
        vae = DiffusersKL.from_pretrained(str(exported / "vae"))
    assert all(torch.equal(unet.state_dict()[k], v) for k, v in sd["unet"].state_dict().items())
    assert all(torch.equal(vae.state_dict()[k], v) for k, v in sd["vae"].state_dict().items())
    assert json.loads((exported / "model_index.json").read_text())["_class_name"] == "StableDiffusionPipeline"


def test_sd2_layout_is_refused(sd, tmp_path):
    folder = tmp_path / "sd2"
    UNet2DConditionModel(**{**UNET, "use_linear_projection": True}).save_pretrained(folder)
    with pytest.raises(ValueError, match="use_linear_projection=True is not SD-1's layout"):
        load_foreign(folder, **OPTS)


def test_kl_vae_alone(sd, tmp_path):
    """kl-f8.pth (the LDM names) on its own becomes a versadiff autoencoder that decodes like diffusers' reading."""
    from versadiff.autoencoders import AutoencoderKL, load_autoencoder

    ae = AutoencoderKL.from_diffusers(sd["folder"] / "vae")
    torch.save(
        {"state_dict": {**versadiff_to_ldm(ae.state_dict(), 2), "loss.logvar": torch.zeros(())}}, tmp_path / "kl-f8.pth"
    )
    assert detect_format(tmp_path / "kl-f8.pth") == "ldm_kl_vae"
    out = tmp_path / "kl"
    assert main([str(tmp_path / "kl-f8.pth"), "--out", str(out), "--option", "norm_groups=16"]) == 0
    loaded = load_autoencoder(out)
    z = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        assert torch.allclose(loaded.decode(z), sd["vae"].decode(z).sample, atol=1e-5)
