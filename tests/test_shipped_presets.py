"""Every shipped weight file was produced by the committed preset it names: the run config stored in its metadata
equals `load_config(name)` on every key that shapes the weights (network, data, objective, training), and it was
trained for the preset's max_steps. A preset edited without retraining and re-shipping (for example the demo's
switch to conv resampling) fails here, before a user's `versadiff train PRESET` stops reproducing the shipped model.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors import safe_open

from versadiff.assets import ASSET_DIR
from versadiff.config import RESUME_HARMLESS, config_diff, config_from_dict, key_allowed, load_config
from versadiff.weights import CONFIG_KEY, INFO_KEY

#: keys that say how a model is sampled, logged or kept, never what its weights are
NOT_WEIGHT_SHAPING = ("sample", *RESUME_HARMLESS)

SHIPPED_WEIGHT_FILES = sorted(p.relative_to(ASSET_DIR).as_posix() for p in ASSET_DIR.rglob("*.safetensors")
                              if CONFIG_KEY in (safe_open(str(p), framework="pt").metadata() or {}))


def _meta(rel: str) -> tuple[dict, dict]:
    with safe_open(str(ASSET_DIR / rel), framework="pt") as f:
        meta = f.metadata()
    return json.loads(meta[CONFIG_KEY]), json.loads(meta.get(INFO_KEY, "{}"))


def test_the_shipped_weight_files_are_found():
    assert {"demo_shapes_unet.safetensors", "vd_shapes/vd.safetensors", "vd_shapes/klae.safetensors"} <= set(
        SHIPPED_WEIGHT_FILES)


@pytest.mark.parametrize("rel", SHIPPED_WEIGHT_FILES)
def test_shipped_weights_equal_their_committed_preset(rel: str):
    stored, info = _meta(rel)
    preset = load_config(stored["name"])
    diffs = []
    for key, want, got in config_diff(preset, config_from_dict(stored)):
        if key_allowed(key, NOT_WEIGHT_SHAPING):
            continue
        if key == "train.mixed_precision" and want == "auto":  # auto resolves on the training machine
            continue
        diffs.append(f"{key}: preset {want!r}, shipped {got!r}")
    assert not diffs, (f"{rel} was not trained with the committed preset {stored['name']!r}: " + "; ".join(diffs)
                       + " -- retrain with the preset and ship the result, or revert the preset")
    assert info.get("step") == preset.train.max_steps, (
        f"{rel} stopped at step {info.get('step')}, its preset trains {preset.train.max_steps} steps")


def test_a_preset_edit_without_retraining_is_caught(tmp_path: Path):
    """The check above can fail: the demo's weights against the demo preset with one network key changed."""
    stored, _ = _meta("demo_shapes_unet.safetensors")
    edited = load_config(stored["name"]).to_dict()
    edited["model"] = {**edited["model"], "resblock_resample": not edited["model"].get("resblock_resample", True)}
    diffs = [k for k, _, _ in config_diff(config_from_dict(edited), config_from_dict(stored))
             if not key_allowed(k, NOT_WEIGHT_SHAPING)]
    assert "model.resblock_resample" in diffs
