"""`versadiff serve` without a browser: the request limits and their messages, every tab's request on tiny real
models (a tiny Versatile Diffusion model and the shipped class-conditional UNet), the results zip and its settings,
the command's options, and -- where gradio is installed -- the page's wiring (one bounded queue, one sampling slot)
and a failing request that leaves the server serving (through gradio's own client on localhost)."""

from __future__ import annotations

import argparse
import json
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from versadiff.serve.backend import TASKS, Controls, Studio, default_checkpoints, served_name
from versadiff.serve.limits import (Limits, UserError, check_count, check_guidance, check_prompt, check_seed,
                                    check_steps, load_upload)
from tiny_vd import write_tiny_vd_parts  # tests/tiny_vd.py

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:gradio.*")  # gradio's pandas calls

VD_FLOWS = ["text-to-image", "image-variation", "image-to-text", "text-variation"]


def make_tiny_vd(root: Path) -> Path:
    """A tiny random VD model trained one step on its four flows (tests/test_vd.py's parts), as a run folder."""
    from versadiff.config import load_config
    from versadiff.train.trainer import Trainer

    root.mkdir(parents=True, exist_ok=True)
    write_tiny_vd_parts(root)
    overrides = [
        "model.model_channels=16", "model.context_dim=16", "model.text_dim=8", "model.image_size=16",
        "model.num_heads=2", "model.data_streams=['image', 'text']", "model.norm_groups=8", f"flows={VD_FLOWS}",
        f"codecs.image.path={root / 'kl'}", f"codecs.text.path={root / 'tvae'}", f"encoders.text.path={root / 'clip'}",
        f"encoders.image.path={root / 'clip'}", "data.size=32", "train.batch_size=2", "train.log_every=1",
        "train.sample_every=0", "train.warmup_steps=1", "train.mixed_precision=no", "sample.n=2", "sample.steps=3",
        "train.max_steps=1",
    ]
    return Trainer(load_config("vd_shapes", overrides), out=root / "vd-tiny", quiet=True).run()


def write_image(path: Path, size=(32, 32), color=(255, 0, 0), fmt: str | None = None) -> Path:
    Image.new("RGB", size, color).save(path, format=fmt)
    return path


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    run = make_tiny_vd(root / "vd")
    s = Studio.load([str(run), "shapes-unet"], Limits(max_upload_mb=0.05, max_image_side=256, max_prompt_chars=40,
                                                     max_samples=3, max_steps=5, queue_size=2, batch_size=2))
    yield s
    s.close()


@pytest.fixture()
def red(tmp_path):
    return write_image(tmp_path / "red.png")


# -- limits -----------------------------------------------------------------------------------------------


def test_limits_refuse_bad_values():
    with pytest.raises(ValueError, match=r"max_samples \(--max-samples\) must be a positive number"):
        Limits(max_samples=0)
    with pytest.raises(ValueError, match="queue_size"):
        Limits(queue_size=float("nan"))
    assert "up to 8 samples" in Limits().describe()


@pytest.mark.parametrize("text, fragment", [
    ("", "the prompt is empty"), ("   \n", "the prompt is empty"), (None, "the prompt is empty"),
    ("x" * 11, "has 11 characters; the limit is 10"), ("a\x00b", "control characters"),
])
def test_prompt_checks(text, fragment):
    with pytest.raises(UserError, match=fragment):
        check_prompt(text, Limits(max_prompt_chars=10))


def test_prompt_is_stripped_and_may_be_empty_where_optional():
    assert check_prompt("  a red circle \n", Limits()) == "a red circle"
    assert check_prompt("", Limits(), "positive prompt", allow_empty=True) == ""


@pytest.mark.parametrize("fn, value, fragment", [
    (check_count, 0, "between 1 and 8"), (check_count, 9, "between 1 and 8"), (check_count, 2.5, "whole number"),
    (check_count, None, "missing"), (check_steps, 101, "between 1 and 100"), (check_steps, "x", "whole number"),
    (check_guidance, float("nan"), "guidance must be a number"), (check_guidance, 31, "between -30 and 30"),
])
def test_control_checks(fn, value, fragment):
    with pytest.raises(UserError, match=fragment):
        fn(value, Limits())


def test_seed_checks():
    assert check_seed(5.0, 4) == 5
    for bad in (-1, 2**31, float("inf")):
        with pytest.raises(UserError, match="seed"):
            check_seed(bad, 1)


def test_upload_checks(tmp_path):
    lim = Limits(max_upload_mb=0.01, max_image_side=64)
    im = load_upload(write_image(tmp_path / "ok.png"), lim)
    assert im.mode == "RGB" and im.size == (32, 32)
    Image.new("L", (8, 8)).save(tmp_path / "gray.jpg")
    assert load_upload(tmp_path / "gray.jpg", lim).mode == "RGB"
    with pytest.raises(UserError, match="no image: upload"):
        load_upload(None, lim)
    with pytest.raises(UserError, match="is 65x20 pixels; the limit is 64 pixels a side"):
        load_upload(write_image(tmp_path / "wide.png", (65, 20)), lim)
    noise = Image.frombytes("RGB", (64, 64), torch.randint(0, 256, (64 * 64 * 3,), dtype=torch.uint8).numpy().tobytes())
    noise.save(tmp_path / "noise.png")
    with pytest.raises(UserError, match=r"MB; the limit is 0.01 MB"):
        load_upload(tmp_path / "noise.png", lim)
    (tmp_path / "bad.png").write_bytes(b"not an image" * 10)
    with pytest.raises(UserError, match="could not be read as an image"):
        load_upload(tmp_path / "bad.png", lim)
    Image.new("RGB", (8, 8)).save(tmp_path / "x.tiff")
    with pytest.raises(UserError, match="is a TIFF file"):
        load_upload(tmp_path / "x.tiff", lim)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_huge_dimensions_are_refused_from_the_header(tmp_path, monkeypatch):
    """A decompression bomb (small file, enormous canvas) is refused before its pixels are decoded."""
    Image.new("1", (10000, 10000)).save(tmp_path / "bomb.png")  # ~15 KB of PNG, 100 M pixels
    Image.new("1", (20000, 20000)).save(tmp_path / "bigger.png")  # past PIL's own bomb limit
    assert (tmp_path / "bomb.png").stat().st_size < 100_000
    decoded = []
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded.append(1))
    with pytest.raises(UserError, match="is 10000x10000 pixels; the limit is 4096 pixels a side"):
        load_upload(tmp_path / "bomb.png", Limits(max_image_side=4096))
    with pytest.raises(UserError, match="far too many pixels; the limit is 4096"):
        load_upload(tmp_path / "bigger.png", Limits(max_image_side=4096))
    assert not decoded


# -- the tabs' requests -------------------------------------------------------------------------------------


def test_every_task_has_a_model_and_the_names_are_short(studio):
    assert list(studio.models) == ["vd-tiny", "shapes-unet"]
    assert all(studio.models_for(k) for k in TASKS), {k: studio.unavailable(k) for k in TASKS}
    assert studio.models_for("class-to-image") == ["shapes-unet"]
    assert studio.models_for("text-to-image") == ["vd-tiny"]
    assert studio.class_choices("shapes-unet")[0] == "red circle" and studio.class_choices("vd-tiny") == ["(unconditional)"]
    assert studio.samplers("shapes-unet")[:2] == ["ddpm", "ddim"]


INPUTS = {"prompt": "a red circle", "strength": 0.5, "mixing": "attention", "target": "image", "level": -1,
          "edits": "red=blue", "positive": "a square", "negative": "", "image_strength": 0.33}


@pytest.mark.parametrize("key", list(TASKS))
def test_every_task_runs_and_writes_its_zip(studio, key, red, one_thread):
    name = studio.default_model(key)
    inputs = dict(INPUTS, image=str(red), **({"class": "blue square"} if key == "class-to-image" else {}))
    r = studio.run(key, name, inputs, Controls(seed=7, n=2, steps=2, guidance=1.0))
    assert r.seeds == [7, 8]
    names = zipfile.ZipFile(r.zip_path).namelist()
    settings = json.loads(zipfile.ZipFile(r.zip_path).read("settings.json"))
    assert settings["task"] == key and settings["model"] == name and settings["seeds"] == [7, 8]
    assert settings["steps"] == 2 and settings["guidance"] == 1.0 and settings["guidance_scale"] == 2.0
    assert settings["files"] == names and "versions" in settings and settings["checkpoint"]
    if TASKS[key].output == "images":
        assert r.images.shape == (2, 3, 32, 32) and r.images.min() >= -1 and r.images.max() <= 1
        assert {"seed000007.png", "seed000008.png", "grid.png"} <= set(names)
        with zipfile.ZipFile(r.zip_path) as z, z.open("seed000008.png") as f:
            assert Image.open(f).size == (32, 32)
    else:
        caps = json.loads(zipfile.ZipFile(r.zip_path).read("captions.json"))
        assert [c["seed"] for c in caps] == [7, 8] and all(isinstance(c["text"], str) for c in caps)
        assert len(r.lines) == 2 and r.lines[0].startswith("seed 7: ")
    assert ("input.png" in names) == ("image" in TASKS[key].inputs)
    if key == "class-to-image":
        assert settings["inputs"]["class"] == "blue square"
    if key == "i2t2i":
        assert len(settings["application"]["prompts"]) == 2 and " → " in r.lines[0]
    assert "2 " in r.summary() and "seeds 7–8" in r.summary()


def test_a_sample_does_not_depend_on_its_request(studio, one_thread):
    """Sample i uses seed + i: the same seed alone gives the same image, whatever the batch (as the CLI)."""
    c = Controls(seed=0, n=3, steps=2)
    three = studio.run("class-to-image", "shapes-unet", {"class": "red circle"}, c).images
    alone = studio.run("class-to-image", "shapes-unet", {"class": "red circle"}, Controls(seed=2, n=1, steps=2)).images
    torch.testing.assert_close(three[2:], alone, rtol=0, atol=1e-4)
    d = studio.defaults("shapes-unet")
    direct = studio.models["shapes-unet"].generate([2], class_labels="red circle", steps=2, sampler=d["sampler"],
                                                   guidance=d["guidance"])
    torch.testing.assert_close(alone, direct, rtol=0, atol=1e-4)


def test_dual_guided_can_caption_and_mix_by_model(studio, red, one_thread):
    r = studio.run("dual-guided", "vd-tiny", dict(INPUTS, image=str(red), target="text", mixing="layer"),
                   Controls(seed=0, n=2, steps=2))
    assert r.images is None and len(r.captions) == 2
    assert "captions.json" in zipfile.ZipFile(r.zip_path).namelist()
    r = studio.run("dual-guided", "vd-tiny", dict(INPUTS, image=str(red), mixing="model"), Controls(seed=0, n=1, steps=2))
    assert r.images.shape == (1, 3, 32, 32) and r.settings["inputs"]["mixing"] == "model"


@pytest.mark.parametrize("key, model, change, controls, fragment", [
    ("text-to-image", "vd-tiny", {"prompt": ""}, {}, "the prompt is empty: type a prompt first"),
    ("text-variation", "vd-tiny", {"prompt": " "}, {}, "the text is empty"),
    ("text-to-image", "vd-tiny", {"prompt": "x" * 41}, {}, "the limit is 40"),
    ("image-variation", "vd-tiny", {"image": None}, {}, "no image: upload a PNG or JPEG image first"),
    ("image-to-text", "vd-tiny", {"image": "BIG"}, {}, "MB; the limit is 0.05 MB"),
    ("text-to-image", "vd-tiny", {}, {"n": 4}, "number of samples must be between 1 and 3"),
    ("text-to-image", "vd-tiny", {}, {"steps": 6}, "steps must be between 1 and 5"),
    ("text-to-image", "vd-tiny", {}, {"sampler": "magic"}, "unknown sampler 'magic'"),
    ("text-to-image", "shapes-unet", {}, {}, "Text → image is not available in this model: shapes-unet has no"),
    ("dual-guided", "shapes-unet", {}, {}, "dual-guided generation is not available in this model"),
    ("text-to-image", "nope", {}, {}, "no served model is called 'nope'"),
    ("class-to-image", "shapes-unet", {"class": "green hexagon"}, {}, "unknown class 'green hexagon'"),
    ("class-to-image", "shapes-unet", {"class": "99"}, {}, "class index 99 out of range"),
    ("disentangle", "vd-tiny", {"level": 0.5}, {}, "the level must be a whole number"),
    ("dual-guided", "vd-tiny", {"strength": 1.5}, {}, "the strength must be a number between 0 and 1"),
    ("dual-guided", "vd-tiny", {"mixing": "blender"}, {}, "the mixing level must be one of attention, layer, model"),
    ("i2t2i", "vd-tiny", {"edits": "red"}, {}, "word edits: an edit is OLD=NEW"),
])
def test_bad_requests_are_one_line_messages_before_any_work(studio, red, tmp_path, monkeypatch, key, model, change,
                                                           controls, fragment):
    noise = Image.frombytes("RGB", (160, 160), torch.randint(0, 256, (160 * 160 * 3,), dtype=torch.uint8).numpy().tobytes())
    noise.save(tmp_path / "big.png")
    inputs = dict(INPUTS, image=str(red), **{"class": "red circle"})
    inputs.update({k: (str(tmp_path / "big.png") if v == "BIG" else v) for k, v in change.items()})
    for m in studio.models.values():  # nothing may be sampled for a refused request
        monkeypatch.setattr(m, "generate", lambda *a, **k: pytest.fail("sampled a refused request"))
    before = sorted(studio.workdir.iterdir())
    with pytest.raises(UserError) as e:
        studio.run(key, model, inputs, Controls(**{"seed": 0, "n": 1, "steps": 2, **controls}))
    assert fragment in str(e.value) and "\n" not in str(e.value)
    assert sorted(studio.workdir.iterdir()) == before


def test_class_tab_serves_uvit_and_vq_diffusion(tmp_path, one_thread):
    """The class-conditional tab on the other model kinds: a U-ViT and a VQ-Diffusion model (its own samplers)."""
    from versadiff.config import load_config
    from versadiff.train.trainer import Trainer

    run = ["data.size=16", "train.batch_size=4", "train.log_every=1", "train.sample_every=0", "train.warmup_steps=1",
           "train.max_steps=1", "train.mixed_precision='no'", "sample.n=1"]
    uvit = Trainer(load_config("shapes_uvit_tiny", run + ["sample.steps=2"]), out=tmp_path / "uvit", quiet=True).run()
    ae = Trainer(load_config("shapes_vqae", run + ["model.base_channels=8", "model.norm_groups=4", "model.z_channels=8",
                                                    "model.embed_dim=4", "model.n_embed=16"]), out=tmp_path / "ae",
                 quiet=True).run()
    vq = Trainer(load_config("shapes_vqdiffusion", run + [
        "model.depth=1", "model.dim=16", "model.num_heads=2", "model.num_embed=16", "model.num_steps=10",
        "discrete.num_steps=10", "sample.steps=5", f"autoencoder.path={ae}"]), out=tmp_path / "vq", quiet=True).run()
    s = Studio.load([str(uvit), str(vq)], Limits(max_steps=10))
    assert s.models_for("class-to-image") == ["uvit", "vq"]
    assert s.samplers("vq") == ["standard", "fast", "fast_exact", "purity"] and s.defaults("vq")["sampler"] == "fast"
    for name in ("uvit", "vq"):
        r = s.run("class-to-image", name, {"class": "green square"}, Controls(seed=1, n=2, steps=2))
        assert r.images.shape == (2, 3, 32, 32) and r.settings["model"] == name
    with pytest.raises(UserError, match="sampler 'standard' takes all 10 steps"):
        s.run("class-to-image", "vq", {"class": "green square"}, Controls(n=1, steps=2, sampler="standard"))
    r = s.run("class-to-image", "vq", {"class": "(unconditional)"}, Controls(n=1, steps=10, sampler="standard"))
    assert r.images.shape == (1, 3, 32, 32) and r.settings["inputs"]["class"] is None
    s.close()


def test_old_results_are_removed(tmp_path, one_thread):
    from versadiff.models import load_model

    s = Studio({"u": load_model("shapes-unet")}, Limits(), workdir=tmp_path / "w", keep_results=2)
    zips = [s.run("class-to-image", "u", {"class": "red circle"}, Controls(seed=i, n=1, steps=1)).zip_path
            for i in range(3)]
    assert not zips[0].exists() and zips[1].exists() and zips[2].exists()


def test_names_and_defaults(tmp_path):
    assert served_name("shapes-unet", []) == "shapes-unet"
    assert served_name("shapes-unet", ["shapes-unet"]) == "shapes-unet-2"
    assert served_name(str(tmp_path / "runs" / "mine" / "export" / "model.safetensors"), []) == "mine"
    assert served_name(str(tmp_path / "pets.safetensors"), []) == "pets"
    assert served_name(str(tmp_path / "runs" / "00003-x"), []) == "00003-x"
    assert "shapes-unet" in default_checkpoints()
    with pytest.raises(ValueError, match="no model to serve"):
        Studio({})


# -- the command -----------------------------------------------------------------------------------------


def _parse(argv):
    from versadiff.serve import register_serve_command

    p = argparse.ArgumentParser()
    register_serve_command(p.add_subparsers(dest="command"))
    return p.parse_args(["serve", *argv])


def test_command_defaults_are_safe():
    a = _parse([])
    assert a.checkpoints == [] and a.host == "127.0.0.1" and a.port == 7860 and a.max_samples == 8
    a = _parse(["shapes-unet", "runs/x", "--port", "9000", "--max-steps", "20", "--queue-size", "4"])
    assert a.checkpoints == ["shapes-unet", "runs/x"] and a.port == 9000 and a.max_steps == 20 and a.queue_size == 4


def test_the_versadiff_command_has_serve(capsys):
    from versadiff.cli import main

    with pytest.raises(SystemExit) as e:
        main(["serve", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--max-upload-mb" in out and "127.0.0.1" in out


def test_command_without_gradio_says_how_to_install(monkeypatch, capsys):
    import sys

    from versadiff.serve.command import main

    import os

    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio -> ImportError
    monkeypatch.setattr(os, "environ", os.environ.copy())  # the command sets gradio's no-phone-home variables
    assert main(["shapes-unet"]) == 2
    err = capsys.readouterr().err
    assert "versadiff serve needs gradio: pip install 'versadiff[serve]'" in err and err.count("\n") == 1


# -- the page (gradio installed) ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def page_app(studio):
    from extras import require_extra

    require_extra("gradio")  # installed but broken, or missing under CI: fails, never a silent skip
    import os

    from versadiff.serve.app import build_app, launch

    env = dict(os.environ)
    demo = build_app(studio)  # sets gradio's and huggingface_hub's no-phone-home variables
    launch(demo, studio, host="127.0.0.1", port=_free_port(), block=False)
    yield demo
    demo.close()
    os.environ.clear()
    os.environ.update(env)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_page_has_one_bounded_queue_and_one_sampling_slot(page_app, studio):
    import os

    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False" and not page_app.analytics_enabled
    assert page_app._queue.max_size == studio.limits.queue_size
    runs = [fn for fn in page_app.fns.values() if fn.api_name in {k.replace("-", "_") for k in TASKS}]
    assert len(runs) == len(TASKS)
    assert {fn.concurrency_id for fn in runs} == {"sampling"} and {fn.concurrency_limit for fn in runs} == {1}
    assert page_app.local_url.startswith("http://127.0.0.1:") and not page_app.share
    assert page_app.max_file_size == studio.limits.max_upload_bytes


def test_a_failing_request_leaves_the_server_serving(page_app, studio, monkeypatch, one_thread):
    """A bug inside sampling is a line in the page ("internal error"), never a traceback; the next request works."""
    from gradio_client import Client

    client = Client(page_app.local_url, verbose=False, download_files=False)
    args = dict(api_name="/class_to_image")

    def call(**kw):
        # the handler takes its inputs as one dict: the client sends them by component, in the page's order
        return client.predict(*kw["values"], **args)

    info = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/class_to_image"]
    labels = [p["label"] for p in info["parameters"]]
    values = {"Model": "shapes-unet", "Class": "red circle", "Sampler": "ddim", "Steps": 1, "Samples": 1,
              "Seed (sample i: seed + i)": 0}
    ordered = [values.get(lbl, next((p.get("parameter_default") for p in info["parameters"] if p["label"] == lbl), None))
               for lbl in labels]

    def boom(*a, **k):
        raise RuntimeError("something broke deep inside")

    monkeypatch.setattr(studio.models["shapes-unet"], "generate", boom)
    status = call(values=ordered)[0]
    assert "internal error (RuntimeError)" in status and "Traceback" not in status and "deep inside" not in status
    monkeypatch.undo()
    status = call(values=ordered)[0]
    assert "Done: 1 image" in status
