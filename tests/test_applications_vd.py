"""VD's applications on a tiny four-flow model (tiny CLIP, text VAE and KL parts, as tests/test_vd.py): the mixing
formulas at every context slot, guidance with each context's own null, r = 1 / r = 0 equal to the single flows
exactly, seeded layer mixing, the model-level baseline, disentanglement, I2T2I, the blender and the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from versadiff.applications import StreamContext, blend, disentangle, dual_guided, generate_multi, i2t2i
from versadiff.cli import main
from versadiff.config import load_config
from versadiff.models import load_model
from versadiff.train.trainer import Trainer
from tiny_vd import write_tiny_vd_parts  # tests/tiny_vd.py

FLOWS = ["text-to-image", "image-variation", "image-to-text", "text-variation"]
PROMPT = "a red circle"


@pytest.fixture(scope="module")
def vd_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("apps_parts")
    write_tiny_vd_parts(root)
    overrides = [
        "model.model_channels=16", "model.context_dim=16", "model.text_dim=8", "model.image_size=16",
        "model.num_heads=2", "model.norm_groups=8", f"flows={FLOWS}", f"codecs.image.path={root / 'kl'}",
        f"codecs.text.path={root / 'tvae'}", f"encoders.text.path={root / 'clip'}",
        f"encoders.image.path={root / 'clip'}", "data.size=8", "train.batch_size=4", "train.log_every=1",
        "train.sample_every=0", "train.warmup_steps=1", "train.mixed_precision=no", "sample.steps=3",
        "train.max_steps=1",
    ]
    out = tmp_path_factory.mktemp("apps_vd") / "run"
    Trainer(load_config("vd_shapes", overrides), out=out, quiet=True).run()
    return out


@pytest.fixture(scope="module")
def model(vd_run):
    """The tiny model with its zero-initialised layers (the context transformers' output projections, ...) filled
    with random values, so every context visibly changes the output."""
    m = load_model(vd_run)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in m.net.parameters():
            if not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return m


@pytest.fixture(scope="module")
def image():
    g = torch.Generator().manual_seed(2)
    return torch.rand(3, 32, 32, generator=g) * 2 - 1


def flow_latents(model, flow, context, seeds, steps=3, guidance=1.0):
    """What Pipeline.generate samples for a flow, before decoding (the reference for the exactness tests)."""
    bound = model.flows[flow]
    ctx, null = bound.contexts([context] * len(seeds), len(seeds), torch.device("cpu"))
    req = model.request(seeds, flow=flow, steps=steps, guidance=guidance)
    return model.sampling.sample(model.net, model.sample_shape(flow), seeds, bound.condition(model.net, ctx),
                                 bound.condition(model.net, null), guidance, sampler=req.sampler, steps=steps,
                                 device=torch.device("cpu"), options=req.options)


def encodings(model, image, n):
    text, img = model.flows["text-to-image"].encoder, model.flows["image-variation"].encoder
    return text.encode([PROMPT] * n), text.null(n), img.encode([image] * n), img.null(n, "zeros")


def record_slots(monkeypatch, net):
    """Record (index, h, output) at every context slot of every forward."""
    seen = []
    real = net._context_slot

    def spy(h, index, streams):
        out = real(h, index, streams)
        seen.append((index, h.clone(), out.clone()))
        return out

    monkeypatch.setattr(net, "_context_slot", spy)
    return seen


def transformer(net, stream, index, h, context):
    return getattr(net, stream).context_blocks[index][0](h, context)


# -------------------------------------------------------------------------------------------- mixing formulas


def test_attention_mixing_at_every_slot_with_each_contexts_own_null(model, image, monkeypatch):
    """The guided forward is [uncond; cond]; every slot gives h + r (T_text(h) - h) + (1 - r)(T_image(h) - h) with
    the conditional half on (prompt, image) and the unconditional half on ("" encoding, zeros)."""
    net, r, n = model.net, 0.3, 2
    ct, ut, ci, ui = encodings(model, image, n)
    seen = record_slots(monkeypatch, net)
    with torch.no_grad():
        dual_guided(model, PROMPT, image, seeds=[0, 1], strength=r, steps=1, guidance=1.5)
        assert len(seen) == net.num_context_slots  # one forward per step, uncond and cond batched
        for index, h, out in seen:
            t_text = transformer(net, "text", index, h, torch.cat([ut, ct]))
            t_img = transformer(net, "image", index, h, torch.cat([ui, ci]))
            torch.testing.assert_close(out, h + r * (t_text - h) + (1 - r) * (t_img - h), rtol=1e-5, atol=1e-5)


def test_attention_mixing_guidance_end_to_end(model, image):
    """Latents = sampling with cond {text: prompt, image: image} and uncond {text: "", image: zeros}, both mixed
    with weights (r, 1 - r) at the attention level, guided (1 + w) c - w u."""
    r, seeds = 0.4, [3, 4]
    ct, ut, ci, ui = encodings(model, image, 2)
    weights = {"text": r, "image": 1 - r}
    cond = {"data_stream": "image", "context_text": ct, "context_image": ci, "context_weights": weights,
            "mixing": "attention"}
    uncond = {**cond, "context_text": ut, "context_image": ui}
    req = model.request(seeds, flow="text-to-image", steps=3, guidance=2.0)
    with torch.no_grad():
        expect = model.sampling.sample(model.net, model.sample_shape("text-to-image"), seeds, cond, uncond, 2.0,
                                       sampler=req.sampler, steps=3, device=torch.device("cpu"), options=req.options)
    got = dual_guided(model, PROMPT, image, seeds=seeds, strength=r, steps=3, guidance=2.0, output="latents")
    torch.testing.assert_close(got, expect, rtol=0, atol=0)


def test_layer_mixing_runs_one_stream_per_slot_seeded(model, image, monkeypatch):
    net, n = model.net, 2
    ct, ut, ci, ui = encodings(model, image, n)
    seen = record_slots(monkeypatch, net)
    kw = dict(seeds=[0, 1], strength=0.5, mixing="layer", steps=4, guidance=1.0, output="latents")
    with torch.no_grad():
        a = dual_guided(model, PROMPT, image, **kw)
        picks = []
        for index, h, out in seen:
            t_text = transformer(net, "text", index, h, torch.cat([ut, ct]))
            t_img = transformer(net, "image", index, h, torch.cat([ui, ci]))
            is_text = torch.allclose(out, t_text, rtol=1e-5, atol=1e-5)
            assert is_text or torch.allclose(out, t_img, rtol=1e-5, atol=1e-5)  # exactly one stream per slot
            picks.append(is_text)
    assert len(picks) == 4 * net.num_context_slots and 0 < sum(picks) < len(picks)
    seen.clear()
    b = dual_guided(model, PROMPT, image, **kw)
    assert torch.equal(a, b)  # seeded: reproducible
    c = dual_guided(model, PROMPT, image, **kw, mixing_seed=7)
    assert not torch.equal(a, c)
    att = dual_guided(model, PROMPT, image, **{**kw, "mixing": "attention"})
    assert not torch.equal(a, att)


def test_model_level_takes_turns(model, image):
    stats = {}
    kw = dict(seeds=[0, 1], steps=1, guidance=1.0, output="latents")
    one = dual_guided(model, PROMPT, image, strength=0.5, mixing="model", stats=stats, **kw)
    assert stats["schedule"] == [0] and stats["calls"] == [1, 0]  # step 0 is the text flow's (tie: text first)
    torch.testing.assert_close(one, flow_latents(model, "text-to-image", PROMPT, [0, 1], steps=1), rtol=0, atol=0)
    four = dual_guided(model, PROMPT, image, strength=0.5, mixing="model", stats=stats, **{**kw, "steps": 4})
    assert stats["schedule"] == [0, 1, 0, 1] and stats["calls"] == [2, 2]
    dual_guided(model, PROMPT, image, strength=0.25, mixing="model", stats=stats, **{**kw, "steps": 4})
    assert stats["calls"] == [1, 3]
    for flow in ("text-to-image", "image-variation"):
        assert not torch.equal(four, flow_latents(model, flow, PROMPT if flow == "text-to-image" else image, [0, 1],
                                                  steps=4))


@pytest.mark.parametrize("mixing", ["attention", "layer", "model"])
def test_strength_one_is_text_to_image_and_zero_is_image_variation_exactly(model, image, mixing):
    seeds, kw = [5, 6, 7], dict(steps=3, guidance=1.0, batch_size=2)
    t2i = model.text_to_image(PROMPT, seeds=seeds, **kw)
    iv = model.image_variation(image, seeds=seeds, **kw)
    assert torch.equal(dual_guided(model, PROMPT, image, seeds, strength=1.0, mixing=mixing, **kw), t2i)
    assert torch.equal(dual_guided(model, PROMPT, image, seeds, strength=0.0, mixing=mixing, **kw), iv)
    mid = dual_guided(model, PROMPT, image, seeds, strength=0.5, mixing=mixing, **kw)
    assert not torch.equal(mid, t2i) and not torch.equal(mid, iv)


def test_text_and_image_to_text(model, image):
    """data="text": r = 1 is text variation, r = 0 image-to-text (its null is the black-image encoding)."""
    seeds = [0, 1]
    tv = dual_guided(model, PROMPT, image, seeds, strength=1.0, data="text", steps=3, guidance=1.0, output="latents")
    torch.testing.assert_close(tv, flow_latents(model, "text-variation", PROMPT, seeds), rtol=0, atol=0)
    i2t = dual_guided(model, PROMPT, image, seeds, strength=0.0, data="text", steps=3, guidance=1.0, output="latents")
    torch.testing.assert_close(i2t, flow_latents(model, "image-to-text", image, seeds), rtol=0, atol=0)
    caps = dual_guided(model, PROMPT, image, seeds, strength=0.5, data="text", steps=3, guidance=1.0)
    assert len(caps) == 2 and all(isinstance(c, str) for c in caps)
    assert caps == dual_guided(model, PROMPT, image, seeds, strength=0.5, data="text", steps=3, guidance=1.0)


def test_samples_do_not_depend_on_the_batch(model, image):
    kw = dict(strength=0.5, steps=2, guidance=1.0)
    both = dual_guided(model, PROMPT, image, [0, 1], **kw)
    torch.testing.assert_close(both[1:], dual_guided(model, PROMPT, image, [1], **kw), rtol=0, atol=1e-5)


def test_request_errors_before_any_work(model, image):
    with pytest.raises(ValueError, match=r"strength must lie in \[0, 1\]"):
        dual_guided(model, PROMPT, image, strength=1.5)
    with pytest.raises(ValueError, match="mixing must be one of attention, layer, model"):
        dual_guided(model, PROMPT, image, mixing="pixel")
    with pytest.raises(ValueError, match="steps must be an integer"):
        dual_guided(model, PROMPT, image, steps=0)
    with pytest.raises(ValueError, match="appear once"):
        generate_multi(model, [0], [StreamContext("text", [[PROMPT]]), StreamContext("text", [[PROMPT]])])
    with pytest.raises(ValueError, match="2 prompts for 3 seeds|got 2 prompts"):
        dual_guided(model, [PROMPT, PROMPT], image, seeds=[0, 1, 2])


# ----------------------------------------------------------------------------------------- other applications


def test_disentangle(model, image):
    kw = dict(steps=2, guidance=1.0)
    iv = model.image_variation(image, seeds=[0, 1], **kw)
    assert torch.equal(disentangle(model, image, [0, 1], level=0, **kw), iv)
    outs = [model.disentangle(image, [0, 1], level=lv, **kw) for lv in (-2, -1, 1, 2)]
    outs.append(model.disentangle(image, [0, 1], focus=0.1, **kw))
    assert all(o.shape == iv.shape and not torch.equal(o, iv) for o in outs)
    with pytest.raises(ValueError, match="integer in -2..2"):
        disentangle(model, image, level=3)


def test_i2t2i(model, image, monkeypatch):
    res = model.i2t2i(image, seeds=[0, 1], edits={"red": "blue"}, steps=2, guidance=1.0)
    assert res.images.shape == (2, 3, 32, 32) and len(res.captions) == len(res.prompts) == 2
    # the final generation's text context: the edited captions; its image context: CLS dropped, top 10 components
    captured = {}
    real = generate_multi

    def spy(m, seeds, contexts, **kw):
        captured.setdefault("calls", []).append((contexts, kw))
        return real(m, seeds, contexts, **kw)

    monkeypatch.setattr("versadiff.applications.apps.generate_multi", spy)
    res = i2t2i(model, image, [0, 1], positive="a blue circle", negative="a red circle", image_strength=0.33,
                steps=2, guidance=1.0)
    (cap_ctx, cap_kw), (gen_ctx, gen_kw) = captured["calls"]
    assert cap_kw["data"] == "text" and cap_kw["output"] == "latents"
    text, img = gen_ctx
    assert text.weight == pytest.approx(0.67) and img.weight == pytest.approx(0.33)
    assert text.parts == [res.prompts, ["a blue circle"] * 2]  # edited caption + the positive prompt (v0)
    enc = model.flows["image-variation"].encoder.encode([image])
    assert img.transform(enc).shape[1] == enc.shape[1] - 1


def test_i2t2i_edits_per_seed(model, image):
    base = i2t2i(model, image, [0, 1], image_strength=0.0, steps=2, guidance=1.0)
    words = [base.captions[0].split()[0], base.captions[1].split()[0]]
    res = i2t2i(model, image, [0, 1], edits=[{words[0]: "EDITED0"}, {words[1]: "EDITED1"}], image_strength=0.0,
                caption_latents=base.caption_latents, steps=2, guidance=1.0)
    assert res.captions == base.captions and "EDITED0" in res.prompts[0] and "EDITED1" in res.prompts[1]
    with pytest.raises(ValueError, match="got 1 edits for 2 seeds"):
        i2t2i(model, image, [0, 1], edits=[{"a": "b"}], steps=2)


def test_i2t2i_without_image_is_text_to_image_of_the_edit(model, image):
    res = i2t2i(model, image, [0, 1], edits=["circle=square"], image_strength=0.0, steps=2, guidance=1.0)
    expect = model.generate([0, 1], flow="text-to-image", context=res.prompts, steps=2, guidance=1.0)
    assert torch.equal(res.images, expect)


def test_blend_concatenates_weighted_tokens(model, image, monkeypatch):
    other = -image
    captured = []
    real = StreamContext.encode

    def spy(self, *a, **k):
        out = real(self, *a, **k)
        captured.append((self.stream, out))
        return out

    monkeypatch.setattr(StreamContext, "encode", spy)
    out = blend(model, [0, 1], images=[image, other], prompts=[PROMPT], image_weights=[1.0, 0.5],
                steps=1, guidance=1.0)
    assert out.shape == (2, 3, 32, 32)
    enc = model.flows["image-variation"].encoder
    a, b = enc.encode([image] * 2), enc.encode([other] * 2)
    (s_text, (ct, ut)), (s_img, (ci, ui)) = captured
    assert s_text == "text" and s_img == "image"
    torch.testing.assert_close(ci, torch.cat([a, 0.5 * b], dim=1))  # v1: tokens x weight, along the token axis
    assert ui.shape == ci.shape and not ui.any()
    # strength default: the prompts' share of all weights
    stats_r = []
    monkeypatch.setattr("versadiff.applications.apps.generate_multi",
                        lambda m, s, contexts, **kw: stats_r.append([c.weight for c in contexts]))
    blend(model, [0], images=[image, other], prompts=[PROMPT], image_weights=[1.0, 0.5], prompt_weights=[1.5])
    assert stats_r[-1] == pytest.approx([0.5, 0.5])
    with pytest.raises(ValueError, match="at least one image or prompt"):
        blend(model, [0], images=[image], image_weights=[0])


# ------------------------------------------------------------------------------------------------------- CLI


@pytest.fixture()
def png(tmp_path):
    path = tmp_path / "in.png"
    Image.new("RGB", (32, 32), (255, 0, 0)).save(path)
    return str(path)


def test_cli_tasks_write_the_usual_files(vd_run, tmp_path, png):
    cases = {
        "dual-guided": ["--prompt", PROMPT, "--image", png, "--strength", "0.25", "--mixing", "layer"],
        "disentangle": ["--image", png, "--level", "-1"],
        "i2t2i": ["--image", png, "--edit", "red=blue", "--positive", "a blue circle", "--negative", "a red circle"],
        "blend": ["--image", png, "--image", png, "--prompt", PROMPT, "--weights", "1", "0.5", "1"],
    }
    for task, extra in cases.items():
        out = tmp_path / task
        assert main(["generate", str(vd_run), "--task", task, *extra, "--n", "2", "--seed", "3", "--steps", "2",
                     "--out", str(out), "--quiet"]) == 0
        settings = json.loads((out / "settings.json").read_text())
        assert settings["task"] == task and settings["steps"] == 2
        assert sorted(p.name for p in out.glob("seed*.png")) == ["seed000003.png", "seed000004.png"]
        assert (out / "grid.png").is_file()
    assert json.loads((tmp_path / "dual-guided" / "settings.json").read_text())["strength"] == 0.25
    rows = json.loads((tmp_path / "i2t2i" / "captions.json").read_text())
    assert [r["seed"] for r in rows] == [3, 4] and {"caption", "prompt"} <= set(rows[0])
    out = tmp_path / "dual-text"
    assert main(["generate", str(vd_run), "--task", "dual-guided", "--prompt", PROMPT, "--image", png, "--target",
                 "text", "--n", "2", "--steps", "2", "--out", str(out), "--quiet"]) == 0
    assert len(json.loads((out / "captions.json").read_text())) == 2


@pytest.mark.parametrize("argv, fragment", [
    (["--task", "dual-guided", "--image", "IMG"], "--task dual-guided needs one --prompt"),
    (["--task", "dual-guided", "--prompt", "x", "--image", "IMG", "--strength", "1.5"], "strength must lie in [0, 1]"),
    (["--task", "disentangle", "--image", "IMG", "--level", "3"], "integer in -2..2"),
    (["--task", "disentangle", "--image", "IMG", "--level", "1", "--focus", "0.2"], "--level or --focus, not both"),
    (["--task", "i2t2i", "--image", "IMG", "--edit", "red"], "an edit is OLD=NEW"),
    (["--task", "blend", "--image", "IMG", "--weights", "1", "2"], "--weights takes one weight per --image"),
    (["--task", "text-to-image", "--prompt", "x", "--strength", "0.5"], "--strength applies to --task dual-guided"),
    (["--task", "text-to-image", "--prompt", "x", "--prompt", "y"], "takes one --prompt, got 2"),
])
def test_cli_errors_are_one_line(vd_run, argv, fragment, tmp_path, capsys, png):
    argv = [png if a == "IMG" else a for a in argv]
    assert main(["generate", str(vd_run), *argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert fragment in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()
