"""Versatile Diffusion weights users hold -> versadiff -> diffusers, on tiny random checkpoints in the real layouts.

v0 / vd-official (model.diffusion_model.unet_{image,text} + autokl + LitEma model_ema.*), v1.0 (diffuser.*) and
diffusers folders (image_unet/, text_unet/, vae/, text_encoder/, image_encoder/, tokenizer/, scheduler/) load into
the same MultiFlowDiffuser and give diffusers' outputs flow by flow; the diffusers export loads in diffusers'
VersatileDiffusionPipeline with the same outputs again.
"""

from __future__ import annotations

import copy
import json
import shutil
import warnings

import pytest
import torch
from safetensors.torch import save_file

from extras import require_extra  # noqa: E402

diffusers = require_extra("diffusers")  # broken fails loudly; missing skips with the reason (fails under CI)
from diffusers import AutoencoderKL as DiffusersKL  # noqa: E402
from diffusers import UNet2DConditionModel  # noqa: E402
from diffusers.models import Transformer2DModel  # noqa: E402
from diffusers.pipelines.deprecated.versatile_diffusion.modeling_text_unet import UNetFlatConditionModel  # noqa: E402

from versadiff.convert.formats import detect_format, load_foreign, load_foreign_model, main, write_foreign  # noqa: E402
from versadiff.convert.ldm_vae import versadiff_to_ldm  # noqa: E402
from versadiff.convert.vd import multiflow_state_to_v0, multiflow_state_to_v1  # noqa: E402
from versadiff.encoders import ClipTokenizer, tokenizer_folder  # noqa: E402
from versadiff.nets.multiflow import MultiFlowConfig, MultiFlowDiffuser  # noqa: E402

# a small VD-shaped pair (3 levels, no context at the top level, 16 norm groups, 4 heads)
IMAGE = dict(
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
TEXT = dict(
    IMAGE,
    sample_size=None,
    in_channels=(12, 1, 1),
    out_channels=(12, 1, 1),
    down_block_types=("DownBlockFlat", "CrossAttnDownBlockFlat", "CrossAttnDownBlockFlat"),
    up_block_types=("CrossAttnUpBlockFlat", "CrossAttnUpBlockFlat", "UpBlockFlat"),
)
NET = MultiFlowConfig.from_dict(
    dict(
        model_channels=16,
        channel_mult=(1, 2, 3),
        num_res_blocks=1,
        attention_levels=(False, True, True),
        num_heads=4,
        context_dim=24,
        image_size=8,
        text_dim=12,
        norm_groups=16,
    )
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


def swapped(unet, donor):
    out = copy.deepcopy(unet)
    for name, module in unet.named_modules():
        if isinstance(module, Transformer2DModel):
            parent, index = name.rsplit(".", 1)
            out.get_submodule(parent)[int(index)] = copy.deepcopy(donor.get_submodule(name))
    return out


def tiny_clip(folder):
    """A tiny transformers CLIP pair saved as a diffusers VD pipeline holds it (two towers + tokenizer/)."""
    from transformers import (
        CLIPTextConfig,
        CLIPTextModelWithProjection,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    tok = ClipTokenizer("clip_shapes")
    torch.manual_seed(0)
    text = CLIPTextModelWithProjection(
        CLIPTextConfig(
            vocab_size=tok.vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=tok.bos_id,
            eos_token_id=tok.eos_id,
            pad_token_id=tok.pad_id,
            projection_dim=24,
        )
    ).eval()
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
    ).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        text.save_pretrained(str(folder / "text_encoder"))
        vision.save_pretrained(str(folder / "image_encoder"))
    (folder / "tokenizer").mkdir()
    for f in ("vocab.json", "merges.txt"):
        shutil.copyfile(tokenizer_folder("clip_shapes") / f, folder / "tokenizer" / f)
    return text, vision


@pytest.fixture(scope="module")
def vd(tmp_path_factory):
    """diffusers' tiny VD (double precision) as a pipeline folder, plus the same weights as our network."""
    root = tmp_path_factory.mktemp("vd")
    image_unet = randomize(UNet2DConditionModel(**IMAGE), 1).eval()
    text_unet = randomize(UNetFlatConditionModel(**TEXT), 2).eval()
    text_unet.time_embedding.load_state_dict(image_unet.time_embedding.state_dict())  # VD: one time embedding
    vae = randomize(DiffusersKL(**VAE), 3).eval()
    folder = root / "diffusers"
    folder.mkdir()
    image_unet.save_pretrained(folder / "image_unet")
    text_unet.save_pretrained(folder / "text_unet")
    vae.save_pretrained(folder / "vae")
    text, vision = tiny_clip(folder)
    (folder / "scheduler").mkdir()
    (folder / "scheduler" / "scheduler_config.json").write_text(
        json.dumps(
            {
                "_class_name": "DDIMScheduler",
                "beta_start": 0.00085,
                "beta_end": 0.012,
                "beta_schedule": "scaled_linear",
                "clip_sample": False,
                "set_alpha_to_one": False,
                "steps_offset": 1,
                "num_train_timesteps": 1000,
            }
        )
    )
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "VersatileDiffusionPipeline"}))
    foreign = load_foreign(folder, **OPTS)
    net = MultiFlowDiffuser(
        MultiFlowConfig.from_dict({k: v for k, v in foreign.config["model"].items() if k != "type"})
    )
    net.load_state_dict(foreign.state, strict=True)
    gen = torch.Generator().manual_seed(5)
    data = dict(
        image=torch.randn(2, 4, 8, 8, generator=gen, dtype=torch.float64),
        text=torch.randn(2, 12, 1, 1, generator=gen, dtype=torch.float64),
        t=torch.tensor([3.0, 517.0], dtype=torch.float64),
        c_text=torch.randn(2, 5, 24, generator=gen, dtype=torch.float64),
        c_image=torch.randn(2, 7, 24, generator=gen, dtype=torch.float64),
    )
    return dict(
        root=root,
        folder=folder,
        image_unet=image_unet.double(),
        text_unet=text_unet.double(),
        vae=vae,
        text=text,
        vision=vision,
        foreign=foreign,
        net=net.double().eval(),
        data=data,
    )


def flows(image_unet, text_unet, d):
    return {
        "text-to-image": (swapped(image_unet, text_unet), d["image"], d["c_text"], "image", "context_text"),
        "image-variation": (image_unet, d["image"], d["c_image"], "image", "context_image"),
        "text-variation": (text_unet, d["text"], d["c_text"], "text", "context_text"),
        "image-to-text": (swapped(text_unet, image_unet), d["text"], d["c_image"], "text", "context_image"),
    }


def check_flows(net, image_unet, text_unet, d, tol=1e-6):
    with torch.no_grad():
        for name, (unet, x, c, stream, key) in flows(image_unet, text_unet, d).items():
            expected = unet(x, d["t"], encoder_hidden_states=c, return_dict=False)[0]
            got = net(x, d["t"], data_stream=stream, **{key: c})
            assert rel(got, expected) <= tol, (name, rel(got, expected))


def test_diffusers_folder_loads_with_diffusers_outputs(vd):
    assert detect_format(vd["folder"]) == "vd_diffusers"
    f = vd["foreign"]
    assert f.report.ok and not f.report.unused
    cfg = MultiFlowConfig.from_dict({k: v for k, v in f.config["model"].items() if k != "type"})
    assert cfg == NET
    assert f.config["flows"] == ["text-to-image", "image-variation", "image-to-text", "text-variation"]
    assert f.config["sample"]["sampler"] == "ddim" and f.config["sample"]["options"]["steps_offset"] == 1
    check_flows(vd["net"], vd["image_unet"], vd["text_unet"], vd["data"])
    names = {c.name for c in f.components}
    assert {"vae", "text_encoder", "image_encoder"} <= names


def test_v0_file_with_ema_and_v1_file(vd, tmp_path):
    net, d = vd["net"], vd["data"]
    ours = {k: v.float() for k, v in net.state_dict().items()}
    ema = {k: v + 0.01 * torch.randn_like(v) for k, v in ours.items()}  # different EMA weights
    v0 = multiflow_state_to_v0(ours, NET)
    ema_v0 = multiflow_state_to_v0(ema, NET)
    from versadiff.autoencoders import AutoencoderKL

    ae = AutoencoderKL.from_diffusers(vd["folder"] / "vae")
    from versadiff.autoencoders.text_vae import TextVAE, TextVAEConfig
    from versadiff.convert.optimus import versadiff_to_optimus

    torch.manual_seed(0)  # a miniature Optimus (BERT + GPT-2) in VD's optimus.* layout, 12-d latents
    optimus = TextVAE(
        TextVAEConfig(
            latent_size=12,
            bert_tokenizer=None,
            gpt2_tokenizer=None,
            bert_vocab_size=50,
            gpt2_vocab_size=60,
            bert_heads=1,
            gpt2_heads=1,
        )
    ).eval()
    ckpt = {
        **v0,
        **{"optimus." + k: v for k, v in versadiff_to_optimus(optimus.state_dict(), positions=128).items()},
        **{"model_ema." + k[len("model.") :].replace(".", ""): v for k, v in ema_v0.items()},
        "model_ema.decay": torch.tensor(0.9999),
        "model_ema.num_updates": torch.tensor(10),
        **{"autokl." + k: v for k, v in versadiff_to_ldm(ae.state_dict(), 2).items()},
        "clip.model.text_model.embeddings.token_embedding.weight": torch.zeros(3, 2),
        "betas": torch.linspace(1e-4, 2e-2, 10),
        "alphas_cumprod": torch.ones(10),
    }
    path = tmp_path / "vd-official.pth"
    torch.save({"state_dict": ckpt}, path)
    assert detect_format(path) == "vd_v0"
    f = load_foreign(path, **OPTS)
    assert f.report.ok and any("EMA" in n for n in f.report.notes)
    assert all(torch.equal(f.state[k], ema[k]) for k in ema)  # EMA taken by default
    assert set(f.report.unused_groups()) == {
        "model",
        "model_ema",
        "clip",
        "betas",
        "alphas_cumprod",
    }  # raw weights, EMA decay, extras
    vae = next(c for c in f.components if c.name == "vae").module
    assert all(torch.equal(vae.state_dict()[k], v) for k, v in ae.state_dict().items())
    text_vae = next(c for c in f.components if c.name == "text_vae")
    assert text_vae.spec == {"type": "text_vae"} and text_vae.configured
    assert all(torch.equal(text_vae.module.state_dict()[k], v) for k, v in optimus.state_dict().items())
    raw = load_foreign(path, ema=False, **OPTS)
    assert all(torch.equal(raw.state[k], ours[k]) for k in ours)
    assert MultiFlowConfig.from_dict({k: v for k, v in raw.config["model"].items() if k != "type"}) == NET

    # optimus-vae.pth on its own: a text_vae run plus the folder codecs.text takes
    torch.save(
        {k[len("optimus.") :]: v for k, v in ckpt.items() if k.startswith("optimus.")}, tmp_path / "optimus-vae.pth"
    )
    assert detect_format(tmp_path / "optimus-vae.pth") == "optimus"
    written = write_foreign(load_foreign(tmp_path / "optimus-vae.pth"), tmp_path / "optimus")
    from versadiff.autoencoders.text_vae import TextVAE as _TextVAE

    again = _TextVAE.load_pretrained(tmp_path / "optimus" / "text_vae")
    assert written.is_file() and all(torch.equal(again.state_dict()[k], v) for k, v in optimus.state_dict().items())

    # v1.0, stored in fp16: loads into fp32 (and bf16 on request)
    v1 = tmp_path / "vd-four-flow-v1-0-fp16.pth"
    torch.save({k: v.half() for k, v in multiflow_state_to_v1(ours).items()}, v1)
    assert detect_format(v1) == "vd_v1"
    f1 = load_foreign(v1, **OPTS)
    assert all(f1.state[k].dtype == torch.float32 and torch.equal(f1.state[k], ours[k].half().float()) for k in ours)
    assert load_foreign(v1, dtype="bfloat16", **OPTS).state["image.time_embed.0.weight"].dtype == torch.bfloat16
    with pytest.raises(ValueError, match="no EMA"):
        load_foreign(v1, ema=True, **OPTS)
    net16 = MultiFlowDiffuser(NET).double().eval()
    net16.load_state_dict(f1.state)
    with torch.no_grad():
        a = net16(d["image"], d["t"], data_stream="image", context_text=d["c_text"])
        b = net(d["image"], d["t"], data_stream="image", context_text=d["c_text"])
    assert rel(a, b) < 1e-2  # the fp16 rounding of the weights only


def test_written_model_loads_and_samples(vd, tmp_path):
    out = tmp_path / "vd"
    path = write_foreign(vd["foreign"], out)
    assert path == out / "model.safetensors" and (out / "vae" / "config.json").is_file()
    assert (out / "text_encoder").is_dir() and (out / "tokenizer" / "vocab.json").is_file()
    from versadiff.config import config_from_dict
    from versadiff.weights import read_metadata

    cfg, info = read_metadata(path)
    assert cfg.codecs["image"]["type"] == "kl" and cfg.encoders["text"]["type"] == "clip_text"
    model = load_foreign_model(vd["folder"], **OPTS)
    assert set(model.flows) == {"text-to-image", "image-variation", "image-to-text", "text-variation"}
    images = model.generate([0, 1], flow="text-to-image", context="a red circle", steps=2, guidance=1.0)
    assert images.shape == (2, 3, 16, 16) and torch.isfinite(images).all()
    assert config_from_dict(cfg.to_dict()) == cfg


def test_export_round_trips_through_diffusers(vd, tmp_path):
    from diffusers import VersatileDiffusionPipeline

    out = tmp_path / "exported"
    assert (
        main(
            [str(vd["folder"]), "--to", "diffusers", "--out", str(out), *[f"--option={k}={v}" for k, v in OPTS.items()]]
        )
        == 0
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = VersatileDiffusionPipeline.from_pretrained(str(out))
    image_unet, text_unet = pipe.image_unet.double().eval(), pipe.text_unet.double().eval()
    for a, b in (
        (image_unet, vd["image_unet"]),
        (text_unet, vd["text_unet"]),
        (pipe.vae, vd["vae"]),
        (pipe.text_encoder, vd["text"]),
        (pipe.image_encoder, vd["vision"]),
    ):
        sa, sb = a.state_dict(), b.state_dict()
        assert set(sa) == set(sb) and all(torch.equal(sa[k].double(), sb[k].double()) for k in sb)
    check_flows(vd["net"], image_unet, text_unet, vd["data"])
    ids = pipe.tokenizer(["a red circle"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    from versadiff.encoders import ClipTextEncoder, ClipTextEncoderConfig

    ours = ClipTextEncoder(ClipTextEncoderConfig(path=str(vd["folder"] / "text_encoder")))
    assert torch.equal(ids, ours.tokenizer(["a red circle"]))
    sched = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert sched["_class_name"] == "DDIMScheduler" and sched["steps_offset"] == 1 and not sched["set_alpha_to_one"]


def test_vd_basic_and_missing_keys_report(vd, tmp_path):
    """An image-only diffusers folder (VD-basic) converts; a v1 file missing a key gives a one-line error and
    the full key list in a file."""
    folder = tmp_path / "basic"
    folder.mkdir()
    shutil.copytree(vd["folder"] / "image_unet", folder / "image_unet")
    f = load_foreign(folder, **OPTS)
    assert f.config["model"]["data_streams"] == ["image"] and f.config["flows"] == ["image-variation"]
    bad = dict(multiflow_state_to_v1({k: v.float() for k, v in vd["net"].state_dict().items()}))
    bad.pop("diffuser.text.context_blocks.3.0.proj_out.weight")
    save_file(bad, str(tmp_path / "v1.safetensors"))
    with pytest.raises(ValueError) as err:
        write_foreign(load_foreign(tmp_path / "v1.safetensors", **OPTS), tmp_path / "out")
    msg = str(err.value)
    assert "\n" not in msg and "1 missing" in msg and "missing_keys.json" in msg
    report = json.loads((tmp_path / "out" / "missing_keys.json").read_text())
    assert report["missing"] == ["text.context_blocks.3.0.proj_out.weight"]


def test_vd_dc_file(tmp_path):
    """vd-dc.pth: SD-1 names whose transformers hold a text branch (*_0) and an image branch (*_1)."""
    import re

    from versadiff.convert.sd import sd_state_to_ldm

    cfg = NET.replace(data_streams=("image",))
    ours = {k: v.float() for k, v in randomize(MultiFlowDiffuser(cfg), 7).state_dict().items()}
    image = sd_state_to_ldm(
        {k: v for k, v in ours.items() if not k.startswith("text.")}, cfg.replace(context_streams=("image",))
    )
    text = sd_state_to_ldm(
        {k: v for k, v in ours.items() if not k.startswith("image.context_blocks.")},
        cfg.replace(context_streams=("text",)),
    )
    dual = {}
    for k, v in image.items():
        m = re.fullmatch(r"(.*?\.1\.)(norm|proj_in|transformer_blocks|proj_out)(\..*)", k)
        if m:
            dual[f"{m[1]}{m[2]}_0{m[3]}"], dual[f"{m[1]}{m[2]}_1{m[3]}"] = text[k], v
        else:
            dual[k] = v
    torch.save({"state_dict": {**dual, "betas": torch.zeros(3)}}, tmp_path / "vd-dc.pth")
    assert detect_format(tmp_path / "vd-dc.pth") == "vd_dc"
    f = load_foreign(tmp_path / "vd-dc.pth", **OPTS)
    assert f.report.ok and f.report.unused == ["betas"]
    assert f.config["flows"] == ["text-to-image", "image-variation"]
    assert set(f.state) == set(ours) and all(torch.equal(f.state[k], v) for k, v in ours.items())
    assert MultiFlowConfig.from_dict({k: v for k, v in f.config["model"].items() if k != "type"}) == cfg.replace(
        text_dim=768
    )  # no text data
