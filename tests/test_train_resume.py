"""The trainer end to end on a tiny UNet: exact resume, checkpoint cadence, export round trip."""

import json

import pytest
import torch

from versadiff.config import load_config
from versadiff.models import load_model
from versadiff.train import checkpoint as ck
from versadiff.train.trainer import Trainer


TINY = [
    "model.base_channels=16", "model.norm_groups=8", "model.channel_mult=[1, 2]", "model.num_res_blocks=1",
    "model.attention_resolutions=[16]", "model.emb_channels=32", "model.dropout=0.1",  # dropout: global RNG matters
    "data.size=24", "train.batch_size=8", "train.grad_accum=2", "train.log_every=1", "train.sample_every=0",
    "train.warmup_steps=3", "train.ema_decay=0.9", "train.mixed_precision=no", "sample.n=4", "sample.steps=3", "sample.guidance=0",
]


def tiny_config(*extra):
    return load_config("shapes_unet_tiny", TINY + list(extra))


def _final_state(run):
    c = ck.latest_checkpoint(run / "checkpoints")
    return (ck.load_tensors(c / "model.safetensors"), ck.load_tensors(c / "ema.safetensors"),
            ck.load_torch(c / "optimizer.pt"), json.loads((c / "state.json").read_text()))


def _assert_same(a, b):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    elif torch.is_tensor(a):
        assert torch.equal(a, b)  # bitwise
    else:
        assert a == b


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """6 optimizer steps x 2 micro-batches of 8 over 24 images: 4 epochs, uninterrupted."""
    run = tmp_path_factory.mktemp("full") / "run"
    trainer = Trainer(tiny_config("train.max_steps=6", "train.checkpoint_every=2", "train.keep_last=2"),
                      out=run, quiet=True)
    trainer.run()
    return run, trainer


def test_resumed_run_equals_uninterrupted_run_bitwise(full_run, tmp_path):
    run, _ = full_run
    cfg = tiny_config("train.max_steps=6", "train.checkpoint_every=2", "train.keep_last=2")
    killed = tmp_path / "run"
    Trainer(cfg, out=killed, quiet=True).run(until=5)  # "killed" after step 5; last checkpoint is step 4
    assert ck.latest_checkpoint(killed / "checkpoints").name == "step-00000004"
    assert not (killed / "export" / "model.safetensors").exists()
    resumed = Trainer(cfg, out=killed, resume=True, quiet=True)
    assert (resumed.step, resumed.epoch, resumed.position) == (4, 2, 2)  # 8 micro-batches of 3 per epoch
    resumed.run()
    model_a, ema_a, opt_a, state_a = _final_state(run)
    model_b, ema_b, opt_b, state_b = _final_state(killed)
    assert state_a == state_b and state_a["step"] == 6
    _assert_same(model_a, model_b)
    _assert_same(ema_a, ema_b)
    _assert_same(opt_a, opt_b)
    steps = [json.loads(x)["step"] for x in (killed / "stats.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]  # the killed run's step-5 entry was replaced, not duplicated


def test_run_folder_layout_and_keep_last(full_run):
    run, _ = full_run
    assert [p.name for p in ck.list_checkpoints(run / "checkpoints")] == ["step-00000004", "step-00000006"]
    for name in ("config.yaml", "config.json", "stats.jsonl", "export/model.safetensors", "samples/step-00000006.png"):
        assert (run / name).is_file(), name
    assert any((run / "tensorboard").iterdir())
    stats = [json.loads(x) for x in (run / "stats.jsonl").read_text().splitlines()]
    assert {"loss", "lr", "grad_norm", "img_per_s", "epoch"} <= stats[-1].keys()
    assert stats[0]["lr"] == pytest.approx(2 * 1.0e-3 / 3)  # linear warm-up, lr after the first step
    assert stats[-1]["lr"] == pytest.approx(1.0e-3)


def test_export_round_trip_gives_the_ema_samples(full_run):
    run, trainer = full_run
    loaded = load_model(run)  # the run folder resolves to export/model.safetensors
    assert loaded.source.endswith("export/model.safetensors") and loaded.step == 6
    assert (loaded.num_classes, loaded.image_shape, loaded.class_names[0]) == (18, (3, 32, 32), "red circle")
    ema = ck.load_tensors(ck.latest_checkpoint(run / "checkpoints") / "ema.safetensors")
    for k, v in loaded.net.state_dict().items():
        assert torch.equal(v, ema[k]), k
    labels = [0, 5, 17, -1]
    want = trainer.loaded_ema().generate([3, 4, 5, 6], class_labels=labels, steps=3)
    got = loaded.generate([3, 4, 5, 6], class_labels=labels, steps=3, batch_size=3)  # other batching
    assert got.shape == (4, 3, 32, 32) and got.min() >= -1 and got.max() <= 1
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    from_ckpt = load_model(ck.latest_checkpoint(run / "checkpoints"))
    torch.testing.assert_close(from_ckpt.generate([3], class_labels=[0], steps=3), want[:1], rtol=0, atol=1e-6)


def test_load_model_errors(full_run, tmp_path):
    run, _ = full_run
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "missing")
    with pytest.raises(ValueError, match="not a versadiff run folder or checkpoint"):
        load_model(tmp_path)
    plain = tmp_path / "plain.safetensors"
    ck.save_tensors(plain, {"w": torch.zeros(1)})
    with pytest.raises(ValueError, match="not a versadiff checkpoint"):
        load_model(plain)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a tensor file")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_model(junk)
    model = load_model(run)
    with pytest.raises(ValueError, match="class index 18 out of range: this model has 18 classes"):
        model.generate([0], class_labels=[18], steps=2)
    with pytest.raises(ValueError, match="got 2 class labels for 1 seeds"):
        model.generate([0], class_labels=[1, 2], steps=2)


def test_trainer_config_errors(tmp_path):
    with pytest.raises(ValueError, match=r"dataset .cifar10. reads local files: set its root"):
        Trainer(load_config("vdpm_cifar10_cond"), out=tmp_path / "a")
    with pytest.raises(ValueError, match=r"set autoencoder.path=\.\.\."):
        Trainer(load_config("uvit_imagenet256_latent", ["data.root=/x"]), out=tmp_path / "b")
    with pytest.raises(ValueError, match="model.num_classes is 5 but the dataset has 18 classes"):
        Trainer(tiny_config("model.num_classes=5"), out=tmp_path / "c")
    with pytest.raises(FileNotFoundError, match="no checkpoint to resume"):
        Trainer(tiny_config(), out=tmp_path / "d", resume=True)
    assert not any((tmp_path / n).exists() for n in "abc")  # rejected before any run folder is made


def test_gradient_checkpointing_and_bf16_switches(tmp_path):
    def two_steps(name, *extra):
        t = Trainer(tiny_config("train.max_steps=2", "model.dropout=0.0", *extra), out=tmp_path / name, quiet=True)
        t.run(until=2)
        return t

    plain = two_steps("plain")
    ckpt = two_steps("ckpt", "train.gradient_checkpointing=true")
    assert ckpt.net.gradient_checkpointing and not plain.net.gradient_checkpointing
    for (k, a), b in zip(plain.model.state_dict().items(), ckpt.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=k)  # recomputation, same maths
    bf16 = two_steps("bf16", "train.mixed_precision=bf16")
    assert bf16.accelerator.mixed_precision == "bf16"
    assert all(v.dtype == torch.float32 for v in bf16.ema.shadow.values() if v.is_floating_point())
    w_plain, w_bf16 = plain.model.state_dict(), bf16.model.state_dict()
    assert any(not torch.equal(w_plain[k], w_bf16[k]) for k in w_plain)  # autocast really changed the maths
    loss = [json.loads(x)["loss"] for x in (tmp_path / "bf16" / "stats.jsonl").read_text().splitlines()]
    assert all(0 < v < 10 for v in loss)


def test_existing_run_needs_resume_and_a_matching_config(full_run):
    run, _ = full_run
    with pytest.raises(ValueError, match="is not empty: it holds an earlier run .*continue that run with --resume"):
        Trainer(tiny_config("train.max_steps=6"), out=run)
    with pytest.raises(ValueError, match=r"config differs from the one .* was trained with: model.emb_channels: 32 -> 16"):
        Trainer(tiny_config("train.max_steps=6", "train.checkpoint_every=2", "train.keep_last=2",
                            "model.emb_channels=16"), out=run, resume=True)
