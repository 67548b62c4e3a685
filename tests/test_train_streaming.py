"""Training on webdataset shards through the trainer: streaming, skip counting, shard-boundary resume."""

import json

import pytest

from versadiff.config import load_config
from versadiff.data import ShardDataset, build_dataset, write_shards
from versadiff.train.trainer import Trainer


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    write_shards(build_dataset({"name": "shapes", "size": 48, "seed": 3}), out, samples_per_shard=8)
    (out / "00006.tar").write_bytes(b"this is not a tar file at all" * 40)  # must be skipped, never fatal
    return out


def config(shards, *extra):
    return load_config("shapes_unet_tiny", [
        f"data={{name: webdataset, shards: {shards}, resolution: 32, shuffle_buffer: 4}}",
        "model.num_classes=0", "model.base_channels=16", "model.norm_groups=8", "model.channel_mult=[1, 2]",
        "model.attention_resolutions=[16]", "model.emb_channels=32", "train.batch_size=4", "train.log_every=1",
        "train.sample_every=0", "train.checkpoint_every=3", "train.mixed_precision=no", "sample.n=2",
        "sample.steps=2", "sample.guidance=0", *extra,
    ])


def test_trains_on_shards_and_resumes_at_a_shard_boundary(tmp_path, shard_dir):
    cfg = config(shard_dir, "train.max_steps=14")
    first = Trainer(cfg, out=tmp_path / "run", quiet=True)
    assert isinstance(first.dataset, ShardDataset) and first.image_shape == (3, 32, 32)
    first.run(until=12)  # 48 good samples = 12 batches of 4: the whole first epoch
    stats = [json.loads(x) for x in (tmp_path / "run" / "stats.jsonl").read_text().splitlines()]
    assert stats[-1]["step"] == 12 and stats[-1]["data_skipped"] >= 1  # the broken shard was counted
    assert all(0 < s["loss"] < 10 for s in stats)

    resumed = Trainer(cfg, out=tmp_path / "run", resume=True, quiet=True)
    assert resumed.step == 12
    # the checkpoint at step 12 records how far the shard order was consumed; resume starts there
    state = resumed.dataset.state_dict()
    assert state["epoch"] == resumed.epoch and 0 < state["shards_done"] <= len(resumed.dataset.shards)
    resumed.run()
    assert resumed.step == 14 and (tmp_path / "run" / "export" / "model.safetensors").is_file()
