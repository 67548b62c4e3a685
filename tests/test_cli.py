"""The `versadiff` command, run in-process: train -> sample, resume, export, dry run, presets, demo, errors."""

import json

import pytest
import torch
import yaml

from versadiff.cli import demo_asset_path, main
from versadiff.config import list_presets, load_config


TINY = ["model.base_channels=16", "model.norm_groups=8", "model.channel_mult=[1, 2]", "model.num_res_blocks=1",
        "model.attention_resolutions=[]", "model.emb_channels=32", "data.size=16", "train.batch_size=8",
        "train.log_every=1", "train.sample_every=0", "sample.n=2", "sample.steps=2", "sample.guidance=0"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "shapes_unet_tiny", "--out", str(folder), "--quiet",
                 "--set", *TINY, "train.max_steps=2", "train.checkpoint_every=1"]) == 0
    return folder


def test_train_writes_a_complete_run_folder(run):
    for name in ("config.yaml", "config.json", "stats.jsonl", "export/model.safetensors", "samples/step-00000002.png"):
        assert (run / name).is_file(), name
    assert json.loads((run / "config.json").read_text())["train"]["max_steps"] == 2
    assert [json.loads(x)["step"] for x in (run / "stats.jsonl").read_text().splitlines()] == [1, 2]


def test_sample_writes_pngs_grid_and_settings(run, tmp_path):
    out = tmp_path / "s"
    assert main(["sample", str(run), "--n", "3", "--steps", "2", "--guidance", "0", "--seed", "5",
                 "--batch-size", "2", "--out", str(out), "--quiet"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "grid.png", "seed000005.png", "seed000006.png", "seed000007.png", "settings.json"]
    s = json.loads((out / "settings.json").read_text())
    assert [r["class"] for r in s["images"]] == [0, 1, 2]  # cycles through the classes by default
    assert (s["sampler"], s["steps"], s["guidance"], s["batch_size"]) == ("dpmpp", 2, 0.0, 2)
    assert {"versadiff", "torch", "python"} <= s["versions"].keys() and s["config"]["name"] == "shapes_unet_tiny"
    out2 = tmp_path / "s2"
    assert main(["sample", str(run / "export" / "model.safetensors"), "--n", "2", "--class", "red square",
                 "--steps", "2", "--guidance", "0", "--out", str(out2), "--quiet"]) == 0
    s2 = json.loads((out2 / "settings.json").read_text())
    assert [r["class_name"] for r in s2["images"]] == ["red square", "red square"]
    out3 = tmp_path / "s3"  # classifier-free guidance changes the images; the seeds stay the same
    assert main(["sample", str(run), "--n", "3", "--steps", "2", "--guidance", "2.0", "--seed", "5",
                 "--out", str(out3), "--quiet"]) == 0
    assert json.loads((out3 / "settings.json").read_text())["guidance"] == 2.0
    from versadiff.models import load_model

    model = load_model(run)  # after 2 training steps the effect is below PNG resolution: compare floats
    plain, guided = (model.generate([6], class_labels=[1], steps=2, guidance=w) for w in (0.0, 2.0))
    assert not torch.equal(plain, guided)


def test_resume_from_cli_continues_the_run(run, tmp_path):
    # the run's own config: no preset and no repeated --set; extending max_steps is allowed explicitly
    assert main(["train", "--out", str(run), "--resume", "--quiet", "--allow-change", "train.max_steps",
                 "--set", "train.max_steps=3", "train.keep_last=2"]) == 0
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["step-00000002", "step-00000003"]
    assert [json.loads(x)["step"] for x in (run / "stats.jsonl").read_text().splitlines()] == [1, 2, 3]
    out = tmp_path / "e.safetensors"
    assert main(["export", str(run / "checkpoints" / "step-00000002"), "--out", str(out)]) == 0
    from versadiff.models import load_model

    assert load_model(out).step == 2 and load_model(run).step == 3


def test_dry_run_prints_the_resolved_config(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "shapes_unet_tiny", "--dry-run", "--set", "train.lr=3e-4", "train.max_steps=9"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed == load_config("shapes_unet_tiny", ["train.lr=3e-4", "train.max_steps=9"]).to_dict()
    assert not (tmp_path / "runs").exists()


def test_config_may_follow_the_overrides(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--set", "train.max_steps=9", "shapes_unet_tiny", "--dry-run"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["train"]["max_steps"] == 9
    assert main(["train", "--set", "train.max_steps=9", "--dry-run"]) == 2
    assert "required: CONFIG" in capsys.readouterr().err


def test_presets_table(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("VERSADIFF_CACHE", str(tmp_path))  # the counted sizes are cached there
    assert main(["presets", "--params"]) == 0  # plain `presets` prints no sizes (and imports no torch)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:5] == ["name", "model", "data", "params", "description"]
    rows = {ln.split()[0]: ln.split() for ln in lines[1:]}
    assert set(rows) == set(list_presets())
    assert all(r[3].endswith("M") for r in rows.values())  # every preset's network builds
    assert rows["vdpm_cifar10_cond"][3] == "60.8M" and rows["uvit_imagenet64_mid"][3] == "130.9M"


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["train", "nope"], "unknown preset 'nope'"),
        (["train", "shapes_unet_tiny", "--set", "train.nope=1", "--dry-run"], "unknown config key 'train.nope'"),
        (["train", "shapes_unet_tiny", "--set", "train.max_steps=x", "--dry-run"], "'train.max_steps' expects integer"),
        (["train", "vdpm_cifar10_cond"], "set its root (e.g. data.root=/path/to/folder)"),
        (["train", "uvit_imagenet256_latent", "--set", "data.root=/x"], "set autoencoder.path=..."),
        (["sample", "missing_dir", "--n", "1", "--out", "o"], "missing_dir does not exist"),
        (["sample", "config.yaml", "--n", "1", "--out", "o"], "is not a .safetensors file"),
        (["train", "shapes_unet_tiny", "--resume"], "--resume without a path needs --out"),
    ],
)
def test_user_errors_are_one_line(argv, fragment, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.yaml").write_text("name: x\n")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("versadiff: error: ") and fragment in err and err.count("\n") == 1
    assert "Traceback" not in err


def test_sample_class_out_of_range(run, tmp_path, capsys):
    assert main(["sample", str(run), "--n", "1", "--class", "18", "--out", str(tmp_path)]) == 2
    assert "class index 18 out of range: this model has 18 classes" in capsys.readouterr().err


def test_argparse_errors_use_the_same_format(capsys):
    with pytest.raises(SystemExit) as e:
        main(["sample", "x"])  # --n and --out missing
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("versadiff: error: the following arguments are required: -n/--n, -o/--out") and \
        err.count("\n") == 1


def test_class_conditional_demo_retrains_and_scores(tmp_path, capsys):
    # --train retrains the preset (tiny overrides here) and samples 4 images per class from the new weights
    assert main(["demo", "--class-conditional", "--train", "--out", str(tmp_path), "--set", *TINY,
                 "train.max_steps=1", "--batch-size", "72"]) == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "demo.json").read_text())
    assert (tmp_path / "demo_grid.png").is_file() and report["n"] == 72
    assert f"conditional accuracy (shapes attribute reader): {report['conditional_accuracy']:.3f}" in out
    assert report["weights"].endswith("export/model.safetensors") and "/runs/00000-shapes_unet_tiny-" in report["weights"]


def test_demo_train_is_for_the_class_demo(tmp_path, capsys):
    assert main(["demo", "--train", "--out", str(tmp_path)]) == 2
    assert "add --class-conditional" in capsys.readouterr().err
