"""Text-to-image pieces: the CLIP text context kinds (VD's, U-ViT's hidden states, VQ-Diffusion's normalised
tokens), the context cache, the published text-to-image presets (sizes on the meta device, one-line errors naming
what to set) and the checks that tie a network's context tokens to its encoder."""

import pytest
import torch
from safetensors.torch import load_file

from versadiff.assets import resolve_path
from versadiff.cli import main
from versadiff.config import ConfigError, load_config
from versadiff.data import ShapesDataset, build_dataset
from versadiff.data.context_cache import (
    CachedContextDataset,
    ContextCache,
    build_context_cache,
    dataset_captions,
    same_encoder,
)
from versadiff.encoders import build_encoder
from versadiff.flows import flow_entries
from versadiff.tasks import check_config, task_class

CLIP = str(resolve_path("asset:vd_shapes/clip"))


def _enc(**kw):
    return build_encoder({"type": "clip_text", "path": CLIP, **kw})


def test_clip_text_context_kinds():
    prompts = ["a red circle", "a small blue square on the left"]
    vd, hidden, normed = _enc(), _enc(context="hidden"), _enc(context="normalized")
    h = hidden.model(input_ids=hidden.tokenizer(prompts)).last_hidden_state  # after the final LayerNorm
    assert torch.equal(hidden.encode(prompts), h)
    assert torch.equal(normed.encode(prompts), h / h.norm(dim=-1, keepdim=True))
    z = vd.model.text_projection(h)  # VD's (the default, unchanged): projected tokens / norm of the projected EOS
    eos = vd.model(input_ids=vd.tokenizer(prompts)).text_embeds
    assert torch.allclose(vd.encode(prompts), z / eos.norm(dim=-1, keepdim=True)[:, None], atol=1e-6)
    assert hidden.context_shape() == normed.context_shape() == (32, 64)
    assert torch.equal(hidden.null(3), hidden.encode([""]).expand(3, -1, -1))  # "empty": the encoding of ""
    assert not normed.null(2, "zeros").any() and normed.null(2, "zeros").shape == (2, 32, 64)
    with pytest.raises(ValueError, match="one of empty, zeros"):
        hidden.null(1, "black")
    with pytest.raises(ValueError, match="context must be one of vd, hidden, normalized"):
        _enc(context="pooled")
    ids = _enc(context="normalized", pad_token="!").tokenizer(["a"])[0]  # VQ-Diffusion pads with id 0 ("!")
    assert ids[3:].tolist() == [0] * 29 and _enc().tokenizer(["a"])[0, 3] == ids[2]  # default: pad = EOS


def test_hidden_context_loads_a_bare_clip_text_model(tmp_path):
    from transformers import CLIPModel, CLIPTextModel

    full = CLIPModel.from_pretrained(CLIP)
    bare = CLIPTextModel(full.config.text_config)  # SD's text_encoder/ layout: no projection
    bare.load_state_dict({k.split("text_model.", 1)[1]: v for k, v in full.state_dict().items()
                          if k.startswith("text_model.")}, strict=False)
    bare.save_pretrained(tmp_path)
    for name in ("vocab.json", "merges.txt"):
        (tmp_path / name).write_bytes((resolve_path("asset:vd_shapes/clip") / name).read_bytes())
    got = build_encoder({"type": "clip_text", "path": str(tmp_path), "context": "hidden"}).encode(["a red circle"])
    assert torch.equal(got, _enc(context="hidden").encode(["a red circle"]))
    with pytest.raises(ValueError, match="without text_projection.*context=hidden"):
        build_encoder({"type": "clip_text", "path": str(tmp_path)})


def test_context_cache_file_and_folder(tmp_path):
    ds = ShapesDataset(size=40, seed=0)
    enc = _enc(context="hidden")
    caps = dataset_captions(ds)
    assert len(caps) == len(set(caps)) and set(caps) == {ds[i]["caption"] for i in range(40)}
    a = build_context_cache(ds, enc, tmp_path / "c.safetensors", chunk=16)
    b = build_context_cache(ds, enc, tmp_path / "folder", chunk=16)
    with pytest.raises(FileExistsError):
        build_context_cache(ds, enc, a)
    for path in (a, b):
        cache = ContextCache(path)
        wrapped = CachedContextDataset(ds, cache)
        items = wrapped.__getitems__(list(range(16)))
        fly = enc.encode([it["caption"] for it in items])  # a batch of 16, as in training
        assert torch.equal(torch.stack([it["context.text"] for it in items]), fly)
        assert torch.equal(cache.null(2), enc.null(2))  # the empty-string feature
        assert wrapped.num_classes == 18 and len(wrapped) == 40 and wrapped[3]["caption"] == ds[3]["caption"]
        with pytest.raises(ValueError, match="is not in the context cache"):
            cache.lookup("a purple hexagon")
    assert load_file(str(a))["contexts"].shape == (len(caps), 32, 64)


def test_context_cache_dataset_config(tmp_path):
    spec = {"type": "clip_text", "path": "asset:vd_shapes/clip", "context": "hidden"}
    data = {"name": "context_cache", "dataset": {"name": "shapes", "size": 20}, "encoder": spec,
            "path": str(tmp_path / "c.safetensors")}
    ds = build_dataset(data, needs_text=True)
    assert ds[0]["context.text"].shape == (32, 64) and (tmp_path / "c.safetensors").is_file()
    assert torch.equal(build_dataset(data)[5]["context.text"], ds[5]["context.text"])  # read back, not rebuilt
    with pytest.raises(ValueError, match="built with another encoder"):
        build_dataset({**data, "encoder": {**spec, "context": "normalized"}})
    with pytest.raises(ValueError, match="built with another dataset"):
        build_dataset({**data, "dataset": {"name": "shapes", "size": 21}})
    assert same_encoder(spec, {**spec, "path": CLIP}) and not same_encoder(spec, {**spec, "context": "vd"})


def test_yaml_null_key_of_a_flows_entry():
    (flow, _), = flow_entries([{"name": "text-to-image", None: "zeros"}])  # YAML's bare `null: zeros`
    assert flow.null == "zeros"


@pytest.mark.parametrize("preset, params, arch", [
    ("uvit_mscoco", 44.69, {"embed_dim": 512, "depth": 12, "context_dim": 768, "num_context_tokens": 77}),
    ("uvit_mscoco_deep", 58.35, {"embed_dim": 512, "depth": 16, "context_dim": 768, "num_context_tokens": 77}),
    ("vq_diffusion_coco", 388.82, {"depth": 19, "dim": 1024, "num_heads": 16, "num_embed": 2887, "height": 32,
                                   "context_dim": 512, "context_len": 77, "mlp_type": "fc"}),
    ("vq_diffusion_cub", 388.82, {"depth": 19, "dim": 1024, "num_heads": 16, "num_embed": 2887, "height": 32,
                                  "context_dim": 512, "context_len": 77, "mlp_type": "fc"}),
])
def test_published_text_to_image_presets(preset, params, arch):
    cfg = check_config(load_config(preset))
    task = task_class(cfg.task)
    assert abs(task.count_parameters(cfg) / 1e6 - params) < 0.01  # reference tables: 44.7M, 58.4M, 388.8M [run]
    with torch.device("meta"):
        net = task.build_network(cfg)
    assert {k: getattr(net.config, k) for k in arch} == arch
    flows = flow_entries(cfg.flows)
    assert [f.name for f, _ in flows] == ["text-to-image"]
    text = cfg.encoders["text"]
    if preset.startswith("uvit"):
        assert text["context"] == "hidden" and flows[0][0].null is None and cfg.diffusion.p_uncond == 0.1
        assert cfg.train.adam_betas == (0.9, 0.9) and cfg.sample.sampler == "dpmpp" and cfg.sample.guidance == 1.0
    else:
        assert text["context"] == "normalized" and text["pad_token"] == "!" and flows[0][0].null == "zeros"
        assert cfg.discrete["aux_weight"] == 5e-4 and cfg.discrete["p_uncond"] == 0.1
        assert cfg.train.adam_betas == (0.9, 0.96) and cfg.train.grad_clip == 0.5


@pytest.mark.parametrize("preset, names", [
    ("uvit_mscoco", ["autoencoder.path", "encoders.text.path", "data.annotations", "data.images"]),
    ("vq_diffusion_cub", ["autoencoder.path", "encoders.text.path", "data.root"]),
    ("shapes_vqdiffusion_text", ["train one first: versadiff train shapes_vqae"]),
])
def test_presets_needing_local_files_stop_with_one_line(preset, names, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", preset]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and all(n in err for n in names) and "Traceback" not in err


def test_network_context_tokens_must_fit_the_encoder(tmp_path, monkeypatch):
    from versadiff.train.trainer import Trainer

    monkeypatch.setenv("VERSADIFF_CACHE", str(tmp_path))
    small = ["data.dataset.size=16", "train.batch_size=8", "model.embed_dim=32", "model.depth=2", "model.num_heads=2"]
    with pytest.raises(ValueError, match="gives contexts of 32 x 64 .* set model.context_dim=64 model.num_context_tokens=32"):
        Trainer(load_config("shapes_uvit_text", small + ["model.context_dim=48"]), out=tmp_path / "a", quiet=True)
    # the preset's YAML alias makes --set encoders.text.* set data.encoder too; two different specs are refused
    same = load_config("shapes_uvit_text", small + ["encoders.text.context=normalized"])
    assert same.data["encoder"]["context"] == "normalized"
    other = load_config("shapes_uvit_text", small)
    other.data = {**other.data, "encoder": {**other.data["encoder"], "context": "normalized"}}
    with pytest.raises(ValueError, match="encoded by another encoder than encoders.text"):
        Trainer(other, out=tmp_path / "b", quiet=True)
    bad = load_config("shapes_uvit_text", small)
    bad.encoders["text"] = {"type": "clip_text", "path": None, "context": "hidden"}
    with pytest.raises(ValueError, match="set encoders.text.path="):
        task_class("gaussian").check_run(bad)
