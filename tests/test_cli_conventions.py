"""The conventions users bring from diffusers / accelerate: `--version` and `versadiff.__version__`, short flags,
shipped models by name from any folder (`versadiff models`), `model.num_classes: auto`, `export` adding
.safetensors, and a CLI that starts without importing torch for --help, presets and models."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

import versadiff
from versadiff.cli import build_parser, main
from versadiff.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]

TINY = [
    "model.base_channels=16", "model.norm_groups=8", "model.channel_mult=[1, 2]", "model.num_res_blocks=1",
    "model.attention_resolutions=[16]", "model.emb_channels=32", "data.size=8", "train.batch_size=4",
    "train.mixed_precision=no", "train.max_steps=1", "train.sample_every=0", "sample.n=2", "sample.steps=1",
    "sample.guidance=0", "train.log_with=none",
]


def _run_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """`versadiff ARGS` in a fresh interpreter that then reports whether torch was imported."""
    code = ("import sys\nfrom versadiff.cli import main\ntry:\n    rc = main(sys.argv[1:])\nexcept SystemExit as e:\n"
            "    rc = e.code\nsys.stderr.write('TORCH=%s\\n' % ('torch' in sys.modules))\nsys.exit(rc)")
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args", [["--help"], ["presets"], ["models"], ["--version"], ["train", "--help"],
                                  ["eval", "--help"]])
def test_light_commands_do_not_import_torch(args):
    r = _run_cli(*args)
    assert r.returncode == 0, r.stderr
    assert "TORCH=False" in r.stderr and r.stdout.strip()


def test_import_versadiff_is_light():
    code = "import sys, versadiff; versadiff.__version__; print('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "False", r.stderr


def test_version_flag_and_attribute(capsys):
    assert versadiff.__version__ == version("versadiff")
    for flag in ("--version", "-V"):
        with pytest.raises(SystemExit) as e:
            main([flag])
        assert e.value.code == 0
        assert capsys.readouterr().out.strip() == f"versadiff {versadiff.__version__}"
    assert callable(versadiff.load_model) and "load_model" in dir(versadiff)
    with pytest.raises(AttributeError):
        versadiff.no_such_thing  # noqa: B018


def test_short_flags_equal_the_long_ones():
    p = build_parser()
    for argv, want in (
        (["sample", "m", "-n", "3", "-o", "x"], {"n": 3, "out": "x"}),
        (["generate", "m", "--task", "class-to-image", "-n", "2", "-o", "y"], {"n": 2, "out": "y"}),
        (["eval", "m", "-n", "5", "-o", "r.json"], {"n": 5, "out": "r.json"}),
        (["train", "shapes_unet_tiny", "-o", "runs/a"], {"out": "runs/a"}),
        (["export", "runs/a", "-o", "exports/mine"], {"out": "exports/mine"}),
        (["demo", "-o", "d"], {"out": "d"}),
    ):
        args = vars(p.parse_args(argv))
        assert {k: args[k] for k in want} == want, argv


def test_presets_params_column_is_cached(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VERSADIFF_CACHE", str(tmp_path / "cache"))
    assert main(["presets"]) == 0
    plain = capsys.readouterr().out.splitlines()
    assert plain[0].split()[:4] == ["name", "model", "data", "description"]
    from versadiff.cli import preset_param_counts
    from versadiff.tasks import task_class

    cfg = load_config("shapes_unet_tiny")
    counts = preset_param_counts({"shapes_unet_tiny": cfg})
    assert counts["shapes_unet_tiny"] == f"{task_class(cfg.task).count_parameters(cfg) / 1e6:.1f}M"
    cache = json.loads((tmp_path / "cache" / "preset_params.json").read_text())
    assert list(cache["counts"].values()) == [counts["shapes_unet_tiny"]]
    cache["counts"] = {k: "7.7M" for k in cache["counts"]}  # a cached count is what is shown
    (tmp_path / "cache" / "preset_params.json").write_text(json.dumps(cache))
    assert preset_param_counts({"shapes_unet_tiny": cfg}) == {"shapes_unet_tiny": "7.7M"}


def test_presets_into_a_closed_pipe_is_quiet():
    r = subprocess.run(f"'{sys.executable}' -m versadiff.cli presets | head -1", shell=True, capture_output=True,
                       text=True, timeout=60, cwd=ROOT)
    assert r.stdout.startswith("name") and "Traceback" not in r.stderr and "error" not in r.stderr


def test_models_lists_the_shipped_models(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "shapes-unet" in out and "class-to-image (18 classes)" in out and "vd-shapes" in out
    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["vd-shapes"]["flows"] == ["text-to-image", "image-variation", "image-to-text", "text-variation"]
    assert rows["shapes-unet"]["installed"] and rows["shapes-unet"]["num_classes"] == 18
    assert Path(rows["shapes-unet"]["path"]).is_file()


def test_shipped_models_load_by_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = versadiff.load_model("shapes-unet")
    assert model.num_classes == 18 and model.class_names[0] == "red circle"
    assert main(["sample", "shapes-unet", "-n", "2", "--steps", "1", "-o", "out", "--quiet"]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["grid.png", "seed000000.png", "seed000001.png",
                                                                   "settings.json"]
    (tmp_path / "shapes-unet").mkdir()  # a folder of the user's with that name wins over the shipped model
    with pytest.raises(ValueError, match="is not a versadiff run folder"):
        versadiff.load_model("shapes-unet")


def test_num_classes_auto_comes_from_the_data_and_export_adds_the_suffix(tmp_path):
    from versadiff.train.trainer import Trainer

    cfg = load_config("shapes_unet_tiny", TINY + ["model.num_classes=auto"])
    run = tmp_path / "run"
    Trainer(cfg, out=run, quiet=True).run()
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["num_classes"] == 18  # recorded resolved
    assert versadiff.load_model(run).num_classes == 18
    resumed = Trainer(load_config("shapes_unet_tiny", TINY + ["model.num_classes=auto", "train.max_steps=2"]),
                      out=run, resume=True, quiet=True, allow_change=["train.max_steps"])
    assert resumed.cfg.model["num_classes"] == 18 and resumed.step == 1
    with pytest.raises(ConfigError, match=r"^model.num_classes is 3 but the dataset has 18 classes .*=auto to take "
                                          r"it from the data$"):
        Trainer(load_config("shapes_unet_tiny", TINY + ["model.num_classes=3"]), out=tmp_path / "bad", quiet=True)
    assert not (tmp_path / "bad").exists()
    assert main(["export", str(run), "-o", str(tmp_path / "exports" / "mine")]) == 0
    assert (tmp_path / "exports" / "mine.safetensors").is_file()
    assert versadiff.load_model(tmp_path / "exports" / "mine.safetensors").num_classes == 18
