"""Run configs: presets load, overrides parse, bad keys/types give one-line errors, saving round-trips."""

import json

import pytest
import yaml

from versadiff.config import (
    ConfigError,
    RunConfig,
    config_from_dict,
    list_presets,
    load_config,
    parse_override,
    save_config,
)

REQUIRED_PRESETS = {
    "shapes_unet_tiny", "shapes_uvit_tiny", "fmnist_unet_tiny", "fmnist_uvit_tiny", "vdpm_mnist",
    "vdpm_cifar10_cond", "vdpm_cifar10_uncond", "vdpm_celeba", "uvit_cifar10", "uvit_celeba64",
    "uvit_imagenet64_mid", "uvit_imagenet64_large", "uvit_imagenet256_latent", "uvit_imagenet512_latent",
    "uvit_mscoco",
}


def test_every_preset_loads_and_validates():
    assert REQUIRED_PRESETS <= set(list_presets())
    for name in list_presets():
        cfg = load_config(name)
        assert cfg.name == name and cfg.description and cfg.model and cfg.data


def test_published_hyperparameters():
    c = load_config("vdpm_cifar10_cond")
    assert (c.diffusion.prediction, c.diffusion.variance, c.diffusion.intp_frac) == ("v", "fixed_medium", 0.3)
    assert (c.train.lr, c.train.weight_decay, c.train.warmup_steps, c.train.batch_size) == (2e-4, 1e-3, 10000, 128)
    u = load_config("uvit_imagenet256_latent")
    assert u.train.adam_betas == (0.99, 0.99) and u.diffusion.p_uncond == 0.15 and u.sample.guidance == 0.4
    assert u.autoencoder == {"path": None, "kind": "kl", "scale_factor": 0.18215}
    assert load_config("uvit_mscoco").train.adam_betas == (0.9, 0.9)


def test_overrides_parse_yaml_scalars_and_lists():
    cfg = load_config("shapes_unet_tiny", ["train.lr=1e-4", "train.adam_betas=[0.5, 0.6]", "model.base_channels=16",
                                           "train.grad_clip=null", "diffusion.schedule.kind=linear", "name=x"])
    assert cfg.train.lr == 1e-4 and cfg.train.adam_betas == (0.5, 0.6)
    assert cfg.model["base_channels"] == 16 and cfg.train.grad_clip is None
    assert cfg.diffusion.schedule["kind"] == "linear" and cfg.name == "x"
    assert parse_override("train.max_steps=30") == (["train", "max_steps"], 30)
    assert parse_override("data.root=/tmp/a.b") == (["data", "root"], "/tmp/a.b")
    assert isinstance(load_config("shapes_unet_tiny", ["train.lr=1"]).train.lr, float)  # int widened to float


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("train.lrr=1", "unknown config key 'train.lrr'"),
        ("bogus=1", "unknown config key 'bogus'"),
        ("train.batch_size=abc", "'train.batch_size' expects integer"),
        ("train.batch_size=2.5", "'train.batch_size' expects integer"),
        ("train.ema_warmup=3", "'train.ema_warmup' expects true/false"),
        ("train.adam_betas=[1, 2, 3]", "'train.adam_betas' expects list of 2 numbers"),
        ("train.mixed_precision=fp8", "'train.mixed_precision' must be one of auto, no, fp16, bf16"),
        ("train.batch_size=0", "'train.batch_size' must be > 0"),
        ("diffusion.p_uncond=1.5", "'diffusion.p_uncond' must lie in [0, 1)"),
        ("train=3", "'train' expects mapping"),
        ("train.lr.x=3", "'train.lr' is a float, not a mapping"),
        ("noequals", "is not of the form key.sub=value"),
    ],
)
def test_bad_overrides_give_one_line_errors(override, fragment):
    with pytest.raises(ConfigError) as e:
        load_config("shapes_unet_tiny", [override])
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_unknown_preset_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="unknown preset 'nope'; choose one of .*shapes_unet_tiny"):
        load_config("nope")
    with pytest.raises(FileNotFoundError, match="config file .*missing.yaml not found"):
        load_config(str(tmp_path / "missing.yaml"))


def test_yaml_file_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: 1e-4\n")  # YAML 1.1 reads this as a string
    with pytest.raises(ConfigError, match=r"'train.lr' expects number, got str '1e-4' \(YAML reads 1e-4"):
        load_config(bad)
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="invalid YAML at line"):
        load_config(bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_config(bad)


def test_save_config_round_trip(tmp_path):
    cfg = load_config("shapes_unet_tiny", ["train.max_steps=7"])
    save_config(cfg, tmp_path)
    from_json = config_from_dict(json.loads((tmp_path / "config.json").read_text()))
    from_yaml = load_config(tmp_path / "config.yaml")
    assert from_json == cfg == from_yaml
    assert isinstance(cfg, RunConfig) and yaml.safe_load((tmp_path / "config.yaml").read_text())["train"]["max_steps"] == 7
