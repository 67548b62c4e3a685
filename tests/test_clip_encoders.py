"""CLIP context encoders: VD's normalisation (cross-checked against diffusers' VD pipelines), preprocessing,
null contexts, loading, the contrastive ClipPair, and the full-size ViT-L/14 shapes on the meta device."""

from __future__ import annotations

import shutil
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from versadiff.encoders import (
    CLIP_MEAN,
    CLIP_STD,
    ENCODERS,
    ClipImageEncoder,
    ClipImageEncoderConfig,
    ClipPair,
    ClipPairConfig,
    ClipTextEncoder,
    ClipTextEncoderConfig,
    ClipTokenizer,
    build_encoder,
    preprocess_clip_images,
    tokenizer_folder,
)

import transformers  # a core dependency of versadiff (pyproject dependencies): missing is an error  # noqa: E402

SIZE = 32  # vision image size of the tiny model; patch 8 -> 1 + 16 tokens
PROJ = 24


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A tiny random transformers CLIPModel saved with save_pretrained, with the clip_shapes tokenizer files."""
    from transformers import CLIPConfig, CLIPModel

    tok = ClipTokenizer("clip_shapes")
    text = dict(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=77, bos_token_id=tok.bos_id,
                eos_token_id=tok.eos_id, pad_token_id=tok.pad_id, projection_dim=PROJ)  # fmt: skip
    vision = dict(image_size=SIZE, patch_size=8, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, projection_dim=PROJ)  # fmt: skip
    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=PROJ)).eval()
    folder = tmp_path_factory.mktemp("tiny_clip")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save_pretrained(str(folder))
    for f in ("vocab.json", "merges.txt"):
        shutil.copyfile(tokenizer_folder("clip_shapes") / f, folder / f)
    return model, folder


@pytest.fixture(scope="module")
def encoders(tiny_clip):
    _, folder = tiny_clip
    te = build_encoder({"type": "clip_text", "path": str(folder)})
    ie = build_encoder({"type": "clip_image", "path": str(folder)})
    return te, ie


def _vd_pipeline_self(model, folder):
    """The attributes diffusers' VD pipelines read in _encode_text_prompt / _encode_image_prompt."""
    from transformers import CLIPImageProcessorPil, CLIPTextModelWithProjection, CLIPTokenizer, CLIPVisionModelWithProjection

    text = CLIPTextModelWithProjection(model.config.text_config).eval()
    text.text_model, text.text_projection = model.text_model, model.text_projection
    vision = CLIPVisionModelWithProjection(model.config.vision_config).eval()
    vision.vision_model, vision.visual_projection = model.vision_model, model.visual_projection
    return SimpleNamespace(
        tokenizer=CLIPTokenizer.from_pretrained(str(folder), model_max_length=77),
        text_encoder=text,
        image_encoder=vision,
        image_feature_extractor=CLIPImageProcessorPil(size={"shortest_edge": SIZE}, crop_size={"height": SIZE, "width": SIZE}),
    )


def test_registered():
    assert {"clip_text", "clip_image"} <= set(ENCODERS.names())
    assert ClipTextEncoder.modality == "text" and ClipImageEncoder.modality == "image"


def test_text_matches_diffusers_vd(tiny_clip, encoders):
    from diffusers.pipelines.deprecated.versatile_diffusion.pipeline_versatile_diffusion_dual_guided import (
        VersatileDiffusionDualGuidedPipeline as VD,
    )

    model, folder = tiny_clip
    te, _ = encoders
    prompts = ["a red circle", "", "there is a large yellow triangle in the top left", "A Green Square, at the bottom"]
    ref_self = _vd_pipeline_self(model, folder)
    with torch.no_grad():
        ref = VD._encode_text_prompt(ref_self, prompts, "cpu", 1, False)
    got = te.encode(prompts)
    assert got.shape == ref.shape == (4, 77, PROJ) and got.dtype == torch.float32
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=0)
    # the same ids as transformers' own tokenizer call on the folder (padding to 77, truncation)
    hf = ref_self.tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    assert torch.equal(te.tokenizer(prompts), hf)
    # the EOS token of each prompt has unit norm after the normalisation
    eos = (hf == te.tokenizer.eos_id).int().argmax(dim=1)
    torch.testing.assert_close(got[torch.arange(4), eos].norm(dim=-1), torch.ones(4))


def test_text_truncation_one_warning(tiny_clip, encoders):
    from diffusers.pipelines.deprecated.versatile_diffusion.pipeline_versatile_diffusion_dual_guided import (
        VersatileDiffusionDualGuidedPipeline as VD,
    )

    model, folder = tiny_clip
    te, _ = encoders
    long = " and ".join(["a small red circle in the top left"] * 12)
    prompts = [long, long + " again", "a blue square"]
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        got = te.encode(prompts)
    assert len([x for x in w if "truncated" in str(x.message)]) == 1
    # diffusers' call cannot batch long prompts of different lengths (its untruncated re-tokenisation pads to
    # max_length but does not truncate, so the rows differ in length): one prompt per call
    ref_self = _vd_pipeline_self(model, folder)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = torch.cat([VD._encode_text_prompt(ref_self, [p], "cpu", 1, False) for p in prompts])
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=0)
    with pytest.warns(UserWarning, match="2 of 3 prompt"):
        ids = te.tokenizer(prompts)
    assert ids.shape == (3, 77) and (ids[:2, -1] == te.tokenizer.eos_id).all()


def _odd_images():
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (37, 45, 3), dtype=np.uint8))
    gray = Image.fromarray(rng.integers(0, 256, (64, 20), dtype=np.uint8))  # mode L, portrait
    rgba = Image.fromarray(rng.integers(0, 256, (50, 50, 4), dtype=np.uint8))  # half-transparent pixels
    pal = rgb.convert("P")
    small = Image.fromarray(rng.integers(0, 256, (9, 13, 3), dtype=np.uint8))  # upsampled
    return [rgb, gray, rgba, pal, small]


def test_image_matches_diffusers_vd(tiny_clip, encoders):
    from diffusers.pipelines.deprecated.versatile_diffusion.pipeline_versatile_diffusion_dual_guided import (
        VersatileDiffusionDualGuidedPipeline as VD,
    )

    model, folder = tiny_clip
    _, ie = encoders
    images = _odd_images()
    ref_self = _vd_pipeline_self(model, folder)
    with torch.no_grad():
        ref = VD._encode_image_prompt(ref_self, images, "cpu", 1, False)
    got = ie.encode(images)
    assert got.shape == ref.shape == (5, 17, PROJ)
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(got[:, 0].norm(dim=-1), torch.ones(5))
    # the pixels equal transformers' CLIP processor (PIL backend) on every mode / size
    px = ref_self.image_feature_extractor(images=images, return_tensors="pt").pixel_values
    torch.testing.assert_close(ie.preprocess(images), px, atol=1e-6, rtol=0)


def test_gray_is_mid_gray_not_black(encoders):
    """diffusers' VD null image (a float 0.5 image) goes through transformers' processor, which rescales it by
    1/255 again: near-black. Here every gray input is preprocessed as gray."""
    from transformers import CLIPImageProcessorPil

    _, ie = encoders
    mean, std = torch.tensor(CLIP_MEAN).view(3, 1, 1), torch.tensor(CLIP_STD).view(3, 1, 1)
    gray = ((0.5 - mean) / std).expand(3, SIZE, SIZE)
    for image in (np.zeros((48, 48, 3)) + 0.5, torch.zeros(1, 3, 48, 48), torch.zeros(2, 3, SIZE, SIZE),
                  torch.full((1, 3, 40, 60), 0.5), ):  # fmt: skip
        vr = (0.0, 1.0) if torch.is_tensor(image) and image.max() > 0 else None
        px = ie.preprocess(image, value_range=vr)
        torch.testing.assert_close(px, gray.expand_as(px), atol=1e-5, rtol=0)
    px = ie.preprocess(np.full((48, 48, 3), 128, np.uint8))[0]
    torch.testing.assert_close(px, ((128 / 255 - mean) / std).expand(3, SIZE, SIZE), atol=1e-6, rtol=0)
    # the mistake being avoided: the processor turns the float 0.5 image into (0.5 / 255 - mean) / std
    proc = CLIPImageProcessorPil(size={"shortest_edge": SIZE}, crop_size={"height": SIZE, "width": SIZE})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bad = proc(images=[np.zeros((48, 48, 3)) + 0.5], return_tensors="pt").pixel_values[0]
    black = ((0.0 - mean) / std).expand(3, SIZE, SIZE)
    assert (bad - black).abs().max() < 0.03 < (gray - black).abs().min()


def test_tensor_and_array_inputs(encoders):
    _, ie = encoders
    rng = np.random.default_rng(1)
    u8 = rng.integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8)
    t = torch.from_numpy(u8).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # the project's [-1, 1] convention
    a = ie.encode(list(u8))  # uint8 arrays, one per image
    torch.testing.assert_close(ie.encode(u8), a)  # a [B, H, W, 3] array
    torch.testing.assert_close(ie.encode(t), a, atol=1e-5, rtol=0)
    torch.testing.assert_close(ie.encode(torch.from_numpy(u8).permute(0, 3, 1, 2)), a, atol=1e-5, rtol=0)  # uint8 tensor
    torch.testing.assert_close(ie.encode(u8.astype(np.float32) / 255), a, atol=1e-5, rtol=0)  # float array in [0, 1]
    # resizing: the tensor path (antialiased bicubic) stays close to PIL's bicubic on the same image
    big = rng.integers(0, 256, (48, 72, 3), dtype=np.uint8)
    p_pil = ie.preprocess(Image.fromarray(big))
    p_ten = ie.preprocess(torch.from_numpy(big).permute(2, 0, 1).float() / 127.5 - 1.0)
    assert p_ten.shape == p_pil.shape == (1, 3, SIZE, SIZE)
    assert (p_ten - p_pil).abs().mean() < 0.02
    # gray and RGBA tensors
    assert ie.preprocess(torch.zeros(1, 1, SIZE, SIZE)).shape == (1, 3, SIZE, SIZE)
    rgba = torch.cat([torch.full((1, 3, SIZE, SIZE), -1.0), torch.full((1, 1, SIZE, SIZE), -1.0)], dim=1)
    white = ((1 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)).view(1, 3, 1, 1)
    torch.testing.assert_close(ie.preprocess(rgba), white.expand(1, 3, SIZE, SIZE))  # fully transparent -> white


def test_null_contexts(encoders):
    te, ie = encoders
    n = te.null(3)
    assert n.shape == (3, 77, PROJ)
    torch.testing.assert_close(n, te.encode(["", "", ""]))
    cached = te._null
    te.null(2)
    assert te._null is cached  # computed once
    z = ie.null(2)
    assert z.shape == (2, 17, PROJ) and not z.any()
    b = ie.null(2, "black")
    torch.testing.assert_close(b[0], ie.encode(Image.new("RGB", (64, 64)))[0])
    torch.testing.assert_close(b[0], ie.encode(torch.full((1, 3, SIZE, SIZE), -1.0))[0])
    black_default = build_encoder(ie.config.replace(null_mode="black"))
    torch.testing.assert_close(black_default.null(1), b[:1])
    with pytest.raises(ValueError, match="zeros, black"):
        ie.null(1, "gray")
    with pytest.raises(ValueError, match="null_mode"):
        build_encoder({"type": "clip_image", "null_mode": "grey"})


def test_frozen_float32_under_autocast(encoders):
    te, ie = encoders
    assert not any(p.requires_grad for p in te.parameters()) and not any(p.requires_grad for p in ie.parameters())
    te.train()
    assert not te.training and not te.model.training
    ref = te.encode(["a red circle"])
    x = torch.zeros(1, 3, SIZE, SIZE)
    ref_i = ie.encode(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, got_i = te.encode(["a red circle"]), ie.encode(x)
    assert got.dtype == got_i.dtype == torch.float32 and not got.requires_grad
    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(got_i, ref_i)


def test_single_tower_folders(tiny_clip, encoders, tmp_path):
    from transformers import CLIPTextModelWithProjection, CLIPVisionModelWithProjection

    model, folder = tiny_clip
    te, ie = encoders
    text = CLIPTextModelWithProjection(model.config.text_config)
    text.text_model, text.text_projection = model.text_model, model.text_projection
    vision = CLIPVisionModelWithProjection(model.config.vision_config)
    vision.vision_model, vision.visual_projection = model.vision_model, model.visual_projection
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        text.save_pretrained(str(tmp_path / "text_encoder"))
        vision.save_pretrained(str(tmp_path / "image_encoder"))
    (tmp_path / "tokenizer").mkdir()
    for f in ("vocab.json", "merges.txt"):
        shutil.copyfile(folder / f, tmp_path / "tokenizer" / f)
    te2 = ClipTextEncoder(ClipTextEncoderConfig(path=str(tmp_path / "text_encoder")))  # finds ../tokenizer
    ie2 = ClipImageEncoder(ClipImageEncoderConfig(path=str(tmp_path / "image_encoder")))
    torch.testing.assert_close(te2.encode(["a red circle"]), te.encode(["a red circle"]))
    x = torch.rand(2, 3, SIZE, SIZE) * 2 - 1
    torch.testing.assert_close(ie2.encode(x), ie.encode(x))


def test_bad_inputs_and_files(tiny_clip, encoders, tmp_path):
    _, folder = tiny_clip
    te, ie = encoders
    for bad in ("photo.png", [1, 2], {"image": 1}):
        with pytest.raises(TypeError, match="PIL images"):
            ie.encode(bad)
    with pytest.raises(ValueError, match="empty batch"):
        ie.encode([])
    with pytest.raises(ValueError, match="empty batch"):
        ie.encode(torch.zeros(0, 3, SIZE, SIZE))
    with pytest.raises(ValueError, match="channels"):
        ie.encode(torch.zeros(2, 5, SIZE, SIZE))
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        ie.encode(torch.zeros(SIZE, SIZE))
    with pytest.raises(ValueError, match="uint8"):
        ie.encode(np.full((8, 8, 3), 200.0))  # 0..255 floats
    with pytest.raises(ValueError, match="empty batch"):
        te.encode([])
    with pytest.raises(TypeError, match="item 1"):
        te.encode(["a", 3])
    # missing files: one line naming the file
    for name in ("config.json", "model.safetensors", "merges.txt"):
        broken = tmp_path / f"no_{name}"
        shutil.copytree(folder, broken)
        (broken / name).unlink()
        kind = "clip_text" if name == "merges.txt" else "clip_image"
        with pytest.raises(FileNotFoundError, match=name) as e:
            build_encoder({"type": kind, "path": str(broken)})
        assert "\n" not in str(e.value)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_encoder({"type": "clip_text", "path": str(tmp_path / "nowhere")})


def test_vit_l14_on_meta():
    with torch.device("meta"):
        te = ClipTextEncoder(ClipTextEncoderConfig.vit_l14(tokenizer="clip_shapes"))
        ie = ClipImageEncoder(ClipImageEncoderConfig.vit_l14())
        ctx_t = te.encode_ids(torch.zeros(2, 77, dtype=torch.long))
        ctx_i = ie.encode_pixels(torch.zeros(2, 3, 224, 224))
    assert ctx_t.shape == (2, 77, 768) and te.context_shape() == (77, 768)
    assert ctx_i.shape == (2, 257, 768) and ie.context_shape() == (257, 768)
    # openai/clip-vit-large-patch14: text tower 123,060,480 + projection 768 x 768; vision tower 303,179,776 +
    # projection 1024 x 768 (CLIPModel total 427,616,513 with the logit scale)
    assert sum(p.numel() for p in te.model.parameters()) == 123_060_480 + 768 * 768
    assert sum(p.numel() for p in ie.model.parameters()) == 303_179_776 + 1024 * 768


def test_clip_pair_loss_training_and_reload(tmp_path):
    from versadiff.data.shapes import ShapesDataset

    torch.manual_seed(0)
    cfg = ClipPairConfig(context_length=24, image_size=32, patch_size=8, text_hidden_size=32, text_layers=1,
                         text_intermediate_size=64, vision_hidden_size=32, vision_layers=1,
                         vision_intermediate_size=64, projection_dim=32)  # fmt: skip
    pair = ClipPair(cfg)
    ds = ShapesDataset(size=64, seed=3)
    items = ds.__getitems__(list(range(16)))
    images = torch.stack([it["image"] for it in items])
    captions = [it["caption"] for it in items]
    loss = pair.clip_loss(images, captions)
    assert loss.shape == (16,) and torch.isfinite(loss).all()
    # equals transformers' CLIP loss (batch mean) on the same inputs
    px = (((images + 1) / 2) - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    ref = pair.model(input_ids=pair.tokenizer(captions), pixel_values=px, return_loss=True).loss
    torch.testing.assert_close(loss.mean(), ref, atol=1e-5, rtol=1e-5)
    loss.mean().backward()
    assert pair.model.logit_scale.grad is not None
    assert pair.model.text_model.embeddings.token_embedding.weight.grad.abs().sum() > 0
    assert pair.model.vision_model.embeddings.patch_embedding.weight.grad.abs().sum() > 0
    # a few steps on one batch lower the loss
    opt = torch.optim.AdamW(pair.parameters(), lr=3e-3)
    first = float(loss.detach().mean())
    for _ in range(40):
        opt.zero_grad()
        pair.clip_loss(images, captions).mean().backward()
        opt.step()
    with torch.no_grad():
        assert float(pair.clip_loss(images, captions).mean()) < 0.6 * first
    with pytest.raises(ValueError, match="at least 2"):
        pair.clip_loss(images[:1], captions[:1])
    # the saved folder loads into both context encoders, whose normalised pooled tokens are the pair's features
    folder = pair.save_pretrained(tmp_path / "mini_clip")
    te = ClipTextEncoder(cfg.text_encoder_config(str(folder)))
    ie = ClipImageEncoder(cfg.image_encoder_config(str(folder)))
    pair.eval()
    with torch.no_grad():
        ft, fi = pair.text_features(captions[:4]), pair.image_features(images[:4])
    ids = te.tokenizer(captions[:4])
    eos = (ids == te.tokenizer.eos_id).int().argmax(dim=1)
    ct = te.encode(captions[:4])
    torch.testing.assert_close(ct[torch.arange(4), eos], ft, atol=1e-5, rtol=0)
    torch.testing.assert_close(ie.encode(images[:4])[:, 0], fi, atol=1e-5, rtol=0)
    again = ClipPair.load_pretrained(folder).eval()
    with torch.no_grad():
        torch.testing.assert_close(again.clip_loss(images, captions), pair.clip_loss(images, captions))


def test_preprocess_function_defaults():
    px = preprocess_clip_images(torch.zeros(1, 3, 8, 8), 8)
    torch.testing.assert_close(px[0, :, 0, 0], (0.5 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD))
