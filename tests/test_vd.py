"""Versatile Diffusion end to end on tiny real components: a multi-flow diffuser trained on its four flows over
a tiny KL autoencoder, a tiny CLIP pair and a tiny text VAE; exact resume; every flow through the pipeline and
through `versadiff generate`; one-line errors for bad requests."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from versadiff.cli import main
from versadiff.config import load_config
from versadiff.models import load_model
from versadiff.train import checkpoint as ck
from versadiff.train.trainer import Trainer
from tiny_vd import write_tiny_vd_parts  # tests/tiny_vd.py

FLOWS = ["text-to-image", "image-variation", "image-to-text", "text-variation"]


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """Tiny random encoders and codecs in the folder layouts the real ones load from."""
    root = tmp_path_factory.mktemp("vd_parts")
    write_tiny_vd_parts(root)
    return root


def vd_overrides(parts, flows=FLOWS, streams=("image", "text")) -> list[str]:
    return [
        "model.model_channels=16", "model.context_dim=16", "model.text_dim=8", "model.image_size=16",
        "model.num_heads=2", f"model.data_streams={list(streams)}", "model.norm_groups=8",
        f"flows={list(flows)}", f"codecs.image.path={parts / 'kl'}", f"codecs.text.path={parts / 'tvae'}",
        f"encoders.text.path={parts / 'clip'}", f"encoders.image.path={parts / 'clip'}",
        "data.size=32", "train.batch_size=4", "train.log_every=1", "train.sample_every=0", "train.warmup_steps=1",
        "train.mixed_precision=no", "train.ema_decay=0.5", "sample.n=2", "sample.steps=3",
    ]


@pytest.fixture(scope="module")
def vd_run(parts, tmp_path_factory):
    out = tmp_path_factory.mktemp("vd") / "run"
    cfg = load_config("vd_shapes", vd_overrides(parts) + ["train.max_steps=3"])
    Trainer(cfg, out=out, quiet=True).run()
    return out


def test_multi_flow_training_logs_every_flow(vd_run):
    rows = [json.loads(line) for line in (vd_run / "stats.jsonl").read_text().splitlines()]
    assert {f"loss_{f}" for f in FLOWS} <= set(rows[-1]) and all(r["loss"] > 0 for r in rows)
    assert (vd_run / "samples" / "step-00000003.png").is_file()  # the grid of the first image flow


def test_training_grid_carries_each_images_prompt(parts, tmp_path):
    """The text-to-image grid of a VD run is captioned with the prompts it was sampled for (sample.labels)."""
    import numpy as np

    from versadiff.images import make_grid
    from versadiff.tasks.base import SampleGrid

    grids = {}
    for on in (True, False):
        cfg = load_config("vd_shapes", vd_overrides(parts) + ["train.max_steps=1", f"sample.labels={str(on).lower()}"])
        trainer = Trainer(cfg, out=tmp_path / str(on), quiet=True)
        grid = SampleGrid(*trainer.task.sample_grid(trainer.ema_net, trainer.info, str(trainer.run_dir)))
        prompts = [trainer.dataset[i]["caption"] for i in range(2)]  # sample.n = 2: the first two items' captions
        assert grid.labels == prompts
        grids[on] = np.asarray(Image.open(trainer.save_samples()))
        want = make_grid(grid.images, grid.nrow, labels=prompts if on else None)
        assert np.array_equal(grids[on], want[..., 0] if want.shape[-1] == 1 else want)
    assert grids[True].shape[0] > grids[False].shape[0]  # a caption strip under the images


def test_multi_flow_resume_is_exact(parts, tmp_path, one_thread):
    cfg = load_config("vd_shapes", vd_overrides(parts) + ["train.max_steps=4", "train.checkpoint_every=2",
                                                          "train.param_groups=[{match: '^image\\.data_blocks\\.', lr_mult: 0.2}]"])
    Trainer(cfg, out=tmp_path / "full", quiet=True).run()
    Trainer(cfg, out=tmp_path / "killed", quiet=True).run(until=3)
    resumed = Trainer(cfg, out=tmp_path / "killed", resume=True, quiet=True)
    assert resumed.step == 2
    resumed.run()
    for name in ("model.safetensors", "ema.safetensors"):
        a = ck.load_tensors(ck.latest_checkpoint(tmp_path / "full" / "checkpoints") / name)
        b = ck.load_tensors(ck.latest_checkpoint(tmp_path / "killed" / "checkpoints") / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_every_flow_through_the_pipeline(vd_run, one_thread):
    model = load_model(vd_run)
    assert list(model.flows) == FLOWS and model.sample_shape("text-to-image") == (4, 16, 16)
    assert model.sample_shape("image-to-text") == (8,)
    img = torch.rand(3, 32, 32) * 2 - 1
    images = model.text_to_image("a red circle", seeds=[0, 1], steps=3, guidance=1.0)
    assert images.shape == (2, 3, 32, 32)
    # per-seed: a sample does not depend on its batch (same contexts)
    alone = model.text_to_image("a red circle", seeds=[1], steps=3, guidance=1.0)
    torch.testing.assert_close(images[1:], alone, rtol=0, atol=1e-4)
    assert model.image_variation(img, seeds=[0], steps=3).shape == (1, 3, 32, 32)
    captions = model.image_to_text(img, seeds=[0, 1], steps=3, guidance=1.0)
    assert len(captions) == 2 and all(isinstance(c, str) for c in captions)
    assert len(model.text_variation("a blue square", seeds=[5], steps=3)) == 1
    for sampler in ("dpmpp", "euler"):
        assert model.text_to_image("a green triangle", seeds=[0], steps=3, sampler=sampler).shape == (1, 3, 32, 32)


def test_guidance_uses_each_encoders_null_context(vd_run):
    """image-to-text's unconditional branch is the encoding of a black image; image variation's all zeros."""
    model = load_model(vd_run)
    i2t, iv, t2i = (model.flows[f] for f in ("image-to-text", "image-variation", "text-to-image"))
    _, null_black = i2t.contexts(None, 2, torch.device("cpu"))
    _, null_zeros = iv.contexts(None, 2, torch.device("cpu"))
    _, null_text = t2i.contexts(None, 2, torch.device("cpu"))
    assert null_black.abs().sum() > 0 and null_zeros.abs().sum() == 0
    torch.testing.assert_close(null_text, t2i.encoder.encode(["", ""]), rtol=1e-5, atol=1e-6)


def test_generate_cli_writes_each_tasks_files(vd_run, tmp_path):
    image = tmp_path / "in.png"
    Image.new("RGB", (20, 24), (255, 0, 0)).save(image)
    cases = {"text-to-image": ["--prompt", "a red circle"], "image-variation": ["--image", str(image)],
             "image-to-text": ["--image", str(image)], "text-variation": ["--prompt", "a blue square"]}
    for task, extra in cases.items():
        out = tmp_path / task
        assert main(["generate", str(vd_run), "--task", task, *extra, "--n", "3", "--seed", "10", "--steps", "2",
                     "--batch-size", "2", "--guidance-scale", "2.0", "--out", str(out), "--quiet"]) == 0
        settings = json.loads((out / "settings.json").read_text())
        assert settings["task"] == task and settings["guidance"] == 1.0 and settings["guidance_scale"] == 2.0
        if task.endswith("image") or task == "image-variation":
            assert sorted(p.name for p in out.glob("seed*.png")) == ["seed000010.png", "seed000011.png", "seed000012.png"]
            assert (out / "grid.png").is_file()
        else:
            caps = json.loads((out / "captions.json").read_text())
            assert [c["seed"] for c in caps] == [10, 11, 12] and all(isinstance(c["text"], str) for c in caps)


@pytest.mark.parametrize("argv, fragment", [
    (["--task", "text-to-music", "--prompt", "x"], "has no 'text-to-music' flow; its flows: text-to-image"),
    (["--task", "text-to-image"], "--task text-to-image needs --prompt"),
    (["--task", "image-to-text", "--prompt", "x"], "takes --image, not --prompt"),
    (["--task", "image-variation", "--image", "missing.png"], "missing.png"),
    (["--task", "text-to-image", "--prompt", "x", "--guidance", "nan"], "guidance must be a finite number"),
])
def test_generate_errors_are_one_line(vd_run, argv, fragment, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    assert main(["generate", str(vd_run), *argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert fragment in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()  # nothing written before the checks


def test_a_model_without_the_flow_says_so(parts, tmp_path, capsys):
    """A dual-context model (VD-DC: image data stream only) has no image-to-text flow."""
    cfg = load_config("vd_shapes", vd_overrides(parts, flows=FLOWS[:2], streams=("image",)) + ["train.max_steps=1"])
    run = Trainer(cfg, out=tmp_path / "dc", quiet=True).run()
    assert main(["generate", str(run), "--task", "image-to-text", "--image", "x.png", "--out", str(tmp_path / "o")]) == 2
    assert "has no 'image-to-text' flow; its flows: text-to-image, image-variation" in capsys.readouterr().err
    with pytest.raises(ValueError, match="no 'text' data stream"):
        Trainer(load_config("vd_shapes", vd_overrides(parts, streams=("image",)) + ["train.max_steps=1"]),
                out=tmp_path / "bad", quiet=True).run()


@pytest.mark.parametrize("preset, params, flows", [
    ("vd_official", 2_566_318_852, FLOWS),
    ("vd_dc", 1_126_760_324, FLOWS[:2]),
    ("vd_basic", 859_520_964, FLOWS[1:2]),
])
def test_full_size_presets_count_and_name_what_to_set(preset, params, flows, tmp_path, capsys):
    from versadiff.flows import flow_entries
    from versadiff.tasks import check_config, task_class

    cfg = check_config(load_config(preset))
    assert task_class(cfg.task).count_parameters(cfg) == params  # built on the meta device
    assert [f.name for f, _ in flow_entries(cfg.flows)] == flows
    assert main(["train", preset, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("versadiff: error: this preset reads local files: set codecs.image.path=") and "data.shards=" in err
    assert not (tmp_path / "run").exists()


def test_multi_flow_training_streams_captioned_shards(parts, tmp_path, one_thread):
    """VD streams Laion-style shards: images with their captions, written here from the shapes set."""
    shards = tmp_path / "shards"
    assert main(["shards", "--dataset", "{name: shapes, size: 24, seed: 3}", str(shards),
                 "--samples-per-shard", "8"]) == 0
    data = f'data={{name: webdataset, shards: "{shards}/{{00000..00002}}.tar", resolution: 32, shuffle_buffer: 8}}'
    cfg = load_config("vd_shapes", vd_overrides(parts) + ["train.max_steps=3", data])
    run = Trainer(cfg, out=tmp_path / "run", quiet=True).run()
    rows = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    assert {f"loss_{f}" for f in FLOWS} <= set(rows[-1])
    assert (run / "samples" / "step-00000003.png").is_file()  # grid prompts from the first streamed batch
    assert load_model(run).text_to_image("a red circle", seeds=[0], steps=2).shape == (1, 3, 32, 32)
