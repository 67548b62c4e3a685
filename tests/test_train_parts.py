"""Trainer parts without a training loop: EMA arithmetic, the optimizer, atomic checkpoint directories, run folders,
stats log."""

import json

import pytest
import torch
from torch import nn

from versadiff.train import checkpoint as ck
from versadiff.train.ema import EMA
from versadiff.train.logging import StatsLogger
from versadiff.train.optim import adamw, fused_applies
from versadiff.train.rundir import new_run_dir


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))


def test_ema_warmup_decay_matches_vdpm_formula():
    net = _net()
    ema = EMA(net, decay=0.999, warmup=True)
    w0 = net[0].weight.detach().clone()
    expected = w0.clone()
    for n in range(5):
        with torch.no_grad():
            net[0].weight.add_(1.0)
        d = min(0.999, (1 + n) / (10 + n))
        assert ema.current_decay() == pytest.approx(d)
        ema.update(net)
        expected = d * expected + (1 - d) * net[0].weight.detach()
    torch.testing.assert_close(ema.shadow["0.weight"], expected)
    assert ema.shadow["1.num_batches_tracked"].dtype == torch.long  # integer buffers copied, not averaged
    assert EMA(net, 0.9, warmup=False).current_decay() == 0.9


def test_ema_keeps_fp32_and_copies_into_net():
    net = _net().to(torch.bfloat16)
    ema = EMA(net, 0.5)
    assert all(v.dtype == torch.float32 for k, v in ema.shadow.items() if v.is_floating_point())
    ema.update(net)
    target = _net()
    ema.copy_to(target)
    torch.testing.assert_close(target[0].weight, ema.shadow["0.weight"])
    with pytest.raises(ValueError, match="EMA decay must lie in"):
        EMA(net, 1.0)


def _write(step):
    def write(tmp):
        ck.save_tensors(tmp / "ema.safetensors", {"w": torch.full((2,), float(step))})
        (tmp / "state.json").write_text(json.dumps({"step": step}))
    return write


def test_adamw_is_fused_on_plain_cpu_parameters_and_updates_as_the_foreach_form():
    nets = [_net(), _net()]
    kw = dict(lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.01)
    fused = adamw([{"params": list(nets[0].parameters())}], **kw)
    plain = adamw([{"params": list(nets[1].parameters())}], fused=False, **kw)
    assert fused.defaults["fused"] and not plain.defaults["fused"]
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(1))
    for _ in range(3):
        for net, opt in zip(nets, (fused, plain)):
            opt.zero_grad()
            net(x).square().mean().backward()
            opt.step()
    for a, b in zip(*(n.parameters() for n in nets)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    plain.load_state_dict(fused.state_dict())  # one state layout: a checkpoint loads into either form
    assert not fused_applies([]) and not fused_applies([torch.zeros(2, dtype=torch.int64)])


def test_checkpoints_atomic_and_pruned(tmp_path):
    for step in (10, 20, 30):
        ck.write_atomic_dir(tmp_path / ck.checkpoint_name(step), _write(step))
    assert [p.name for p in ck.list_checkpoints(tmp_path)] == ["step-00000010", "step-00000020", "step-00000030"]
    ck.prune_checkpoints(tmp_path, keep_last=2)
    assert [p.name for p in ck.list_checkpoints(tmp_path)] == ["step-00000020", "step-00000030"]

    def failing(tmp):
        _write(40)(tmp)
        ck.save_torch(tmp / "optimizer.pt", {"not_serialisable": lambda: 0})  # fails mid-write

    with pytest.raises(Exception):
        ck.write_atomic_dir(tmp_path / ck.checkpoint_name(40), failing)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000020", "step-00000030"]  # nothing partial
    assert ck.latest_checkpoint(tmp_path).name == "step-00000030"

    ck.write_atomic_dir(tmp_path / ck.checkpoint_name(30), _write(31))  # rewriting a step replaces it whole
    assert ck.load_tensors(tmp_path / "step-00000030" / "ema.safetensors")["w"][0] == 31.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000020", "step-00000030"]


def test_stale_temporary_is_ignored_and_cleaned(tmp_path):
    stale = tmp_path / ".tmp-step-00000050-123"
    stale.mkdir()
    (tmp_path / "step-00000060").mkdir()  # no state.json: an unfinished foreign dir, not a checkpoint
    assert ck.latest_checkpoint(tmp_path) is None
    ck.write_atomic_dir(tmp_path / ck.checkpoint_name(70), _write(70))
    assert not stale.exists() and ck.latest_checkpoint(tmp_path).name == "step-00000070"


def test_torch_state_loads_with_weights_only(tmp_path):
    opt = torch.optim.AdamW(_net().parameters(), lr=1e-3, betas=(0.9, 0.99))
    ck.save_torch(tmp_path / "o.pt", opt.state_dict())
    assert ck.load_torch(tmp_path / "o.pt")["param_groups"][0]["betas"] == (0.9, 0.99)


def test_run_dirs_are_numbered(tmp_path):
    a = new_run_dir(tmp_path, "shapes", "unet-bs8")
    b = new_run_dir(tmp_path, "shapes", "unet bs/8")
    (tmp_path / "00041-other").mkdir()
    c = new_run_dir(tmp_path, "x")
    assert (a.name, b.name, c.name) == ("00000-shapes-unet-bs8", "00001-shapes-unet_bs_8", "00042-x")


def test_stats_logger_jsonl_and_truncate(tmp_path):
    log = StatsLogger(tmp_path, tensorboard=False)
    for s in (1, 2, 3):
        log.log(s, {"loss": 0.1 * s})
    log.truncate_after(2)
    rows = [json.loads(x) for x in (tmp_path / "stats.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and rows[1]["loss"] == pytest.approx(0.2)
