"""The multi-process pieces that need no second process: train.fsdp checks, FSDP units, the launcher guard, the
shipped accelerate configs, sharded-checkpoint bookkeeping and the memory plan's arithmetic (one process, fast)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import yaml

from versadiff.config import ConfigError, load_config
from versadiff.train import checkpoint as ck
from versadiff.train.distributed import block_classes, fsdp_options, fsdp_plugin, set_wrap, shard_name
from versadiff.train.trainer import Trainer, _check_world, _merge_data_states

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model.base_channels=16", "model.norm_groups=8", "model.channel_mult=[1, 2]", "model.num_res_blocks=1",
        "model.attention_resolutions=[16]", "model.emb_channels=32", "data.size=8", "train.batch_size=4",
        "train.max_steps=1", "train.mixed_precision=no", "sample.n=2", "sample.steps=2", "sample.guidance=0"]


def test_fsdp_options_and_one_line_errors():
    assert fsdp_options({}) is None
    assert fsdp_options({"strategy": "shard_grad_op"}) == {"strategy": "shard_grad_op", "wrap": "auto",
                                                          "cpu_offload": False}
    for spec, fragment in (({"strategy": "zero3"}, "train.fsdp.strategy must be one of"),
                           ({"shard": "full"}, "unknown key 'shard'"),
                           ({"wrap": "ResBlock"}, "train.fsdp.wrap must be 'auto' or a list"),
                           ({"cpu_offload": "yes"}, "cpu_offload must be true or false"),
                           ("full_shard", "must be a mapping")):
        with pytest.raises(ConfigError, match=fragment) as e:
            fsdp_options(spec)
        assert "\n" not in str(e.value)
    cfg = load_config("shapes_unet_tiny", ["train.fsdp.strategy=full_shard"])
    assert cfg.train.fsdp == {"strategy": "full_shard"}


def test_fsdp_units_are_the_blocks_of_the_network():
    from versadiff.nets import build_net

    with torch.device("meta"):
        net = build_net({"preset": "vd_shapes"})
    classes = block_classes(net)
    assert {"ResBlock", "FCResBlock", "SpatialTransformer"} <= set(classes)
    assert "ModuleList" not in classes and "MultiFlowDiffuser" not in classes  # FSDP2 cannot shard a container
    plugin = fsdp_plugin(fsdp_options({"strategy": "full_shard"}), "bf16")
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
    assert plugin.mixed_precision_policy.param_dtype == torch.bfloat16
    assert plugin.mixed_precision_policy.reduce_dtype == torch.float32  # gradients are reduced in fp32
    assert set_wrap(plugin, fsdp_options({"strategy": "full_shard"}), net) == classes
    with pytest.raises(ConfigError, match="names 'Nope', which the network has no module of"):
        set_wrap(plugin, fsdp_options({"wrap": ["Nope"]}), net)


def test_launcher_fsdp_without_train_fsdp_is_refused_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ConfigError, match="the launcher asks for FSDP") as e:
        Trainer(load_config("shapes_unet_tiny", TINY), out=tmp_path / "run", quiet=True)
    assert "\n" not in str(e.value) and not (tmp_path / "run").exists()


def test_fsdp_with_one_process_trains_unsharded(tmp_path):
    trainer = Trainer(load_config("shapes_unet_tiny", TINY + ["train.fsdp.strategy=full_shard"]),
                      out=tmp_path / "run", quiet=True)
    assert trainer.fsdp is False and trainer.world == 1
    trainer.run()
    last = ck.latest_checkpoint(tmp_path / "run" / "checkpoints")
    assert (last / "model.safetensors").is_file() and "sharded" not in json.loads((last / "state.json").read_text())


def test_shipped_accelerate_configs():
    from accelerate.commands.config.config_args import ClusterConfig

    for name, machines, processes in (("1node_8gpu.yaml", 1, 8), ("2node_8gpu.yaml", 2, 16)):
        path = ROOT / "configs" / "accelerate" / name
        raw = yaml.safe_load(path.read_text())
        assert raw["distributed_type"] == "MULTI_GPU" and raw["num_machines"] == machines
        assert raw["num_processes"] == processes and raw["mixed_precision"] == "no"
        cfg = ClusterConfig.from_yaml_file(str(path))  # what accelerate launch --config_file reads
        assert cfg.num_processes == processes and cfg.num_machines == machines


def test_process_count_and_shard_state_rules(tmp_path):
    (tmp_path / "state.json").write_text(json.dumps({"world_size": 2}))
    with pytest.raises(ValueError, match="was written by 2 processes, this run has 1; resume with the same number"):
        _check_world(tmp_path, 1)
    _check_world(tmp_path, 2)
    # streamed shards: every rank restarts from the prefix all ranks had consumed, in the earliest epoch
    assert _merge_data_states([{"epoch": 1, "shards_done": 4}, {"epoch": 1, "shards_done": 2}]) == \
        {"epoch": 1, "shards_done": 2}
    assert _merge_data_states([{"epoch": 2, "shards_done": 1}, {"epoch": 1, "shards_done": 6}]) == \
        {"epoch": 1, "shards_done": 6}


def test_sharded_checkpoint_files(tmp_path):
    state = {"step": 2, "epoch": 0, "position": 2, "world_size": 2, "sharded": "fsdp2"}
    need = ck.required_files(state)
    assert {shard_name("model", 1, 2), shard_name("optimizer", 0, 2), "ema.safetensors"} <= set(need)
    assert "model.safetensors" not in need and ck.required_files({"step": 1}) == ck.REQUIRED_FILES
    # a sharded step folder whose deletion was cut short (no state.json left) is cleaned like a plain one
    cut = tmp_path / "step-00000002"
    cut.mkdir()
    for name in (shard_name("model", 0, 2), shard_name("optimizer", 1, 2), "rng.pt"):
        (cut / name).write_bytes(b"x")
    assert ck.clean_checkpoints(tmp_path) == [cut] and not cut.exists()
    # a missing shard makes the checkpoint incomplete
    done = tmp_path / "step-00000004"
    done.mkdir()
    (done / "state.json").write_text(json.dumps(state))
    for name in need:
        if name != "state.json":
            (done / name).write_bytes(b"x")
    (done / shard_name("model", 1, 2)).unlink()
    with pytest.raises(Exception, match="model-00001-of-00002.safetensors is missing"):
        ck.verify_checkpoint(done)


def test_memory_plan_arithmetic():
    spec = importlib.util.spec_from_file_location("memory_plan", ROOT / "benchmarks" / "memory_plan.py")
    mp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mp)
    p = 1_000_000
    act = {"per_sample": 10.0, "fixed": 0.0, "blocks": [(0.0, 1.0)]}
    full = {"params": p, "largest_unit": 1000, "root_params": 10,
            "act": {(c, b): act for c in (False, True) for b in (False, True)}}
    ddp = mp.plan(full, 8, 2, "DDP", False, False)
    zero3 = mp.plan(full, 8, 2, mp.STRATEGIES[2], False, False)
    for row in ("weights (fp32 master)", "AdamW state (fp32 m, v)", "EMA (fp32)"):
        assert zero3[row] == ddp[row] / 8
    assert ddp["AdamW state (fp32 m, v)"] == 8 * p and ddp["activations"] == 20.0
    assert mp.plan(full, 8, 2, "DDP", False, True)["activations"] == 20.0 + 2.0  # + one block recomputed
