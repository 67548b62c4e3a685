"""Reliability: nothing overwritten or lost, every bad input a one-line error before any work, damaged checkpoints
fall back, a diverged run stops with its last good checkpoint (benchmarks/reliability.py runs the same at scale)."""

import hashlib
import json
import os
import shutil

import pytest
import torch

from versadiff.cli import main
from versadiff.config import ConfigError, load_config
from versadiff.errors import CheckpointError, OutputExistsError, TrainingDivergedError
from versadiff.train import checkpoint as ck
from versadiff.train.trainer import Trainer

TINY = ["data.size=16", "train.batch_size=8", "model.base_channels=16", "model.norm_groups=8",
        "model.channel_mult=[1, 2]", "model.num_res_blocks=1", "model.attention_resolutions=[]", "model.emb_channels=32",
        "train.log_every=1", "sample.n=2", "sample.steps=2", "sample.guidance=0", "train.mixed_precision=no"]


def tiny(*extra):
    return load_config("shapes_unet_tiny", TINY + list(extra))


def _hashes(folder):
    """sha256 of every file under `folder` (relative path -> digest)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """A finished 2-step run with checkpoints at steps 1 and 2."""
    run = tmp_path_factory.mktemp("rel") / "run"
    Trainer(tiny("train.max_steps=2", "train.checkpoint_every=1"), out=run, quiet=True).run()
    return run


@pytest.fixture
def run_copy(base_run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(base_run, dst)
    return dst


def _one_line_error(capsys, fragment):
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if not ln.startswith("versadiff: warning:")]
    assert len(lines) == 1 and lines[0].startswith("versadiff: error: "), err
    assert fragment in lines[0], err
    assert "Traceback" not in err
    return lines[0]


# -- never overwrite ---------------------------------------------------------------------------------------


def test_train_refuses_a_used_out_folder(run_copy, tmp_path, capsys):
    before = _hashes(run_copy)
    assert main(["train", "shapes_unet_tiny", "--out", str(run_copy), "--quiet", "--set", *TINY]) == 2
    _one_line_error(capsys, "is not empty: it holds an earlier run")
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    assert main(["train", "shapes_unet_tiny", "--out", str(foreign), "--quiet", "--set", *TINY]) == 2
    _one_line_error(capsys, "1 other entries")
    assert _hashes(run_copy) == before and (foreign / "notes.txt").read_text() == "keep me"
    (tmp_path / "file").write_text("x")
    assert main(["train", "shapes_unet_tiny", "--out", str(tmp_path / "file"), "--set", *TINY]) == 2
    _one_line_error(capsys, "is a file; give a folder for the run")


def test_train_force_moves_the_old_run_aside_and_deletes_nothing(run_copy):
    before = _hashes(run_copy)
    (run_copy / "notes.txt").write_text("not a run file")
    Trainer(tiny("train.max_steps=1"), out=run_copy, quiet=True, force=True).run()
    aside = [p for p in run_copy.iterdir() if p.name.startswith("replaced-")]
    assert len(aside) == 1 and _hashes(aside[0]) == before  # every old file, byte for byte
    assert (run_copy / "notes.txt").read_text() == "not a run file"  # foreign files stay where they were
    assert [json.loads(x)["step"] for x in (run_copy / "stats.jsonl").read_text().splitlines()] == [1]


def test_export_never_overwrites_what_it_did_not_write(base_run, tmp_path, capsys):
    yaml_before = (base_run / "config.yaml").read_bytes()
    assert main(["export", str(base_run), "--out", str(base_run / "config.yaml")]) == 2
    _one_line_error(capsys, "give a name ending in .safetensors")
    assert (base_run / "config.yaml").read_bytes() == yaml_before
    assert main(["export", str(base_run), "--out", str(tmp_path / "w")]) == 0  # .safetensors added
    assert (tmp_path / "w.safetensors").is_file()
    assert main(["export", str(base_run), "--out", str(tmp_path / "w.safetensors")]) == 2
    _one_line_error(capsys, "exists; choose another name, or add --force")
    (tmp_path / "other.safetensors").write_bytes(b"someone else's file")
    assert main(["export", str(base_run), "--out", str(tmp_path / "other.safetensors"), "--force"]) == 2
    _one_line_error(capsys, "not a versadiff weight file; refusing to replace it even with --force")
    assert (tmp_path / "other.safetensors").read_bytes() == b"someone else's file"
    assert main(["export", str(base_run), "--out", str(tmp_path / "w.safetensors"), "--force"]) == 0
    src = base_run / "export" / "model.safetensors"
    assert main(["export", str(base_run), "--out", str(src), "--force"]) == 2
    _one_line_error(capsys, "is the file being exported")


def test_sample_folder_is_refused_or_replaced_whole(base_run, tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["sample", str(base_run), "--n", "3", "--steps", "1", "--out", str(out), "--quiet"]) == 0
    assert main(["sample", str(base_run), "--n", "1", "--steps", "1", "--out", str(out), "--quiet"]) == 2
    _one_line_error(capsys, "holds an earlier versadiff sample run (5 files); add --force")
    assert main(["sample", str(base_run), "--n", "1", "--steps", "1", "--seed", "7", "--out", str(out), "--quiet",
                 "--force"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["grid.png", "seed000007.png", "settings.json"]  # never mixed
    (out / "mine.txt").write_text("x")
    assert main(["sample", str(base_run), "--n", "1", "--steps", "1", "--out", str(out), "--force"]) == 2
    _one_line_error(capsys, "holds files versadiff sample did not write (mine.txt)")
    assert main(["sample", str(base_run), "--n", "1", "--steps", "1", "--out", str(base_run), "--force"]) == 2
    _one_line_error(capsys, "is not a versadiff sample folder")


def test_outputs_are_checked_before_any_work(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    # the checkpoint does not even exist: the --out problem is reported first, nothing is loaded
    assert main(["sample", str(tmp_path / "missing"), "--n", "1", "--out", str(tmp_path / "f")]) == 2
    _one_line_error(capsys, "is a file; give a folder")
    (tmp_path / "r.json").write_text("{}")
    assert main(["eval", str(tmp_path / "missing"), "--n", "2", "--metrics", "shapes_acc",
                 "--out", str(tmp_path / "r.json")]) == 2
    _one_line_error(capsys, "r.json exists; choose another name, or add --force")
    assert main(["eval", str(tmp_path / "missing"), "--n", "2", "--metrics", "shapes_acc",
                 "--out", str(tmp_path / "r.json"), "--force"]) == 2
    _one_line_error(capsys, "is not a report versadiff wrote")


# -- validate before work -----------------------------------------------------------------------------------


@pytest.mark.parametrize("extra, fragment", [
    (["sample.sampler=nope"], "unknown sampler 'nope'"),
    (["model.num_classes=0", "sample.guidance=1.0"], "guidance needs a conditional model"),  # a flat folder
    (["sample.steps=3", "sample.sampler=standard"], "unknown sampler 'standard'"),
])
def test_sample_grid_settings_fail_at_step_0(extra, fragment, tmp_path):
    with pytest.raises(ConfigError, match="training-time sample grid .* would fail") as e:
        Trainer(tiny("train.max_steps=2", *extra), out=tmp_path / "run", quiet=True)
    assert fragment in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "run").exists()  # no run folder, no checkpoint: nothing was done


@pytest.mark.parametrize("override, fragment", [
    ("train.lr=.inf", "'train.lr' must be a finite number"),
    ("train.lr=0", "'train.lr' must be > 0"),
    ("train.grad_clip=-1", "'train.grad_clip' must be > 0 or null"),
    ("train.grad_clip=.nan", "'train.grad_clip' must be a finite number"),
    ("train.weight_decay=.nan", "'train.weight_decay' must be a finite number"),
    ("train.weight_decay=-0.1", "'train.weight_decay' must be >= 0"),
    ("train.adam_betas=[0.9, 1.0]", "'train.adam_betas' must hold two numbers in [0, 1)"),
    ("train.adam_betas=[.nan, 0.9]", "'train.adam_betas' must be a finite number"),
    ("train.adam_eps=0", "'train.adam_eps' must be > 0"),
    ("train.ema_decay=.nan", "'train.ema_decay' must be a finite number"),
    ("train.ema_decay=1", "'train.ema_decay' must lie in [0, 1)"),
    ("sample.guidance=.nan", "'sample.guidance' must be a finite number"),
    ("sample.guidance=-.inf", "'sample.guidance' must be a finite number"),
    ("sample.steps=0", "'sample.steps' must be > 0"),
    ("sample.n=0", "'sample.n' must be > 0"),
    ("train.batch_size=-8", "'train.batch_size' must be > 0"),
    ("diffusion.p_uncond=.nan", "'diffusion.p_uncond' must be a finite number"),
    ("diffusion.p_uncond=1.0", "'diffusion.p_uncond' must lie in [0, 1)"),
    ("diffusion.clip_x0=0", "'diffusion.clip_x0' must be > 0 or null"),
    ("diffusion.schedule.logsnr_min=.nan", "'diffusion.schedule.logsnr_min' must be a number"),
])
def test_bad_numbers_are_one_line_config_errors(override, fragment):
    with pytest.raises(ConfigError) as e:
        load_config("shapes_unet_tiny", [override])
    assert fragment in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("argv, fragment", [
    (["--guidance", "nan"], "--guidance must be a finite number"),
    (["--steps", "0"], "--steps must be >= 1"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--sampler", "nope"], "unknown sampler 'nope'"),
    (["--device", "cuda"] if not torch.cuda.is_available() else ["--device", "cuda:99"], "--device cuda"),
    (["--device", "toaster"], "--device 'toaster' is not a device"),
    (["--precision", "fp16"] if not torch.cuda.is_available() else ["--truncation", "0.5"], "--precision=fp16 needs"
     if not torch.cuda.is_available() else "truncation applies to VQ-Diffusion"),
])
def test_bad_sample_options_fail_before_sampling(argv, fragment, base_run, tmp_path, capsys):
    assert main(["sample", str(base_run), "--n", "2", "--out", str(tmp_path / "s"), *argv]) == 2
    _one_line_error(capsys, fragment)
    assert not (tmp_path / "s").exists()


# -- non-finite training --------------------------------------------------------------------------------------


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    run = tmp_path / "run"
    t = Trainer(tiny("train.max_steps=4", "train.checkpoint_every=1"), out=run, quiet=True)
    t.run(until=2)
    good = ck.load_tensors(run / "checkpoints" / "step-00000002" / "model.safetensors")
    real = t.task.losses
    t.task.losses = lambda *a, **k: real(*a, **k) * float("nan")
    with pytest.raises(TrainingDivergedError, match=r"diverged at step 3: loss nan.*step-00000002 \(step 2\) is good"):
        t.run()
    assert [p.name for p in ck.list_checkpoints(run / "checkpoints")] == ["step-00000001", "step-00000002"]
    ck.verify_checkpoint(run / "checkpoints" / "step-00000002")
    assert all(torch.equal(v, good[k]) for k, v in t.net.state_dict().items())  # the bad update was not applied
    assert not (run / "export" / "model.safetensors").exists()
    with torch.no_grad():
        next(t.net.parameters()).fill_(float("inf"))
    with pytest.raises(TrainingDivergedError, match="hold NaN/inf .* no checkpoint written"):
        t.save_checkpoint()
    assert [p.name for p in ck.list_checkpoints(run / "checkpoints")] == ["step-00000001", "step-00000002"]


# -- resume ---------------------------------------------------------------------------------------------------


def test_resume_uses_the_runs_own_config_and_refuses_changes(run_copy, capsys):
    before = _hashes(run_copy)
    assert main(["train", "shapes_unet_tiny", "--out", str(run_copy), "--resume", "--quiet",
                 "--set", *TINY, "train.max_steps=2", "train.checkpoint_every=1", "train.lr=0.5",
                 "train.batch_size=4"]) == 2
    line = _one_line_error(capsys, "--resume: the config differs from the one")
    assert "train.batch_size: 8 -> 4" in line and "train.lr: 0.001 -> 0.5" in line and "--allow-change" in line
    assert _hashes(run_copy) == before  # config.yaml not rewritten, nothing touched
    t = Trainer(None, out=run_copy, resume=True, quiet=True)  # no config at all: the checkpoint's
    assert t.step == 2 and t.cfg.train.max_steps == 2 and t.cfg.model["base_channels"] == 16
    # harmless keys are allowed by default, others with allow_change; both are recorded in run.json
    cfg = tiny("train.max_steps=3", "train.checkpoint_every=1", "train.log_every=5")
    Trainer(cfg, out=run_copy, resume=True, quiet=True, allow_change=["train.max_steps"]).run()
    sessions = json.loads((run_copy / "run.json").read_text())["sessions"]
    assert sessions[-1]["changed"] == {"train.max_steps": [2, 3], "train.log_every": [1, 5]}
    assert json.loads((run_copy / "config.json").read_text())["train"]["max_steps"] == 3


@pytest.mark.parametrize("damage", ["truncate:ema.safetensors", "empty:model.safetensors", "flip:model.safetensors",
                                    "empty:optimizer.pt", "truncate:rng.pt", "garbage:state.json",
                                    "delete:scheduler.pt"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_good_one(damage, run_copy, capsys):
    how, name = damage.split(":")
    f = run_copy / "checkpoints" / "step-00000002" / name
    data = f.read_bytes()
    if how == "truncate":
        f.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        f.write_bytes(b"")
    elif how == "flip":
        f.write_bytes(data[:-5] + bytes([data[-5] ^ 1]) + data[-4:])
    elif how == "garbage":
        f.write_text('{"step": 2, "epo')
    else:
        f.unlink()
    t = Trainer(None, out=run_copy, resume=True, quiet=True)
    err = capsys.readouterr().err
    assert t.step == 1 and t.resume_from.name == "step-00000001"
    assert "checkpoint" in err and "step-00000002 is damaged and skipped" in err and "\n" == err[-1]
    assert (run_copy / "checkpoints" / "damaged-step-00000002").is_dir()  # kept for inspection, never pruned
    assert [json.loads(x)["step"] for x in (run_copy / "stats.jsonl").read_text().splitlines()] == [1]


def test_explicit_damaged_checkpoint_is_a_one_line_error_naming_the_file(run_copy, capsys):
    ckpt = run_copy / "checkpoints" / "step-00000002"
    (ckpt / "rng.pt").write_bytes(b"\x00" * 10)
    assert main(["train", "--resume", str(ckpt), "--quiet"]) == 2
    _one_line_error(capsys, f"{ckpt / 'rng.pt'} has 10 bytes, the manifest says")
    os.remove(ckpt / ck.MANIFEST)  # an older checkpoint without manifest: the file is read and named
    assert main(["train", "--resume", str(ckpt), "--quiet"]) == 2
    _one_line_error(capsys, f"{ckpt / 'rng.pt'} is truncated or damaged")


def test_stale_temporaries_and_half_deleted_checkpoints_are_cleaned(run_copy):
    c = run_copy / "checkpoints"
    (c / ".tmp-step-00000003-999").mkdir()
    (c / ".tmp-del-step-00000000-999").mkdir()
    (c / "step-00000000").mkdir()  # a prune killed half-way: some of its files gone
    (c / "step-00000000" / "rng.pt").write_bytes(b"x")
    (c / "step-00000009").mkdir()  # a folder holding something else is not ours: left alone
    (c / "step-00000009" / "notes.txt").write_text("x")
    Trainer(None, out=run_copy, resume=True, quiet=True)
    assert sorted(p.name for p in c.iterdir()) == ["step-00000001", "step-00000002", "step-00000009"]


def test_checkpoints_are_fsynced_before_the_rename_and_carry_a_manifest(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(f"replace {os.path.basename(b)}"),
                                                     real_replace(a, b))[1])

    def write(tmp):
        ck.save_tensors(tmp / "ema.safetensors", {"w": torch.ones(2)})
        ck.save_torch(tmp / "rng.pt", [1])
        (tmp / "state.json").write_text("{}")

    final = ck.write_atomic_dir(tmp_path / "step-00000005", write)
    i = events.index("replace step-00000005")
    assert events[i - 1] == "fsync" and events[i + 1] == "fsync"  # files + folder before, parent folder after
    assert events[:i].count("fsync") >= 4  # ema (written durably, then hashed), rng, state, manifest
    manifest = json.loads((final / ck.MANIFEST).read_text())
    assert set(manifest["files"]) == {"ema.safetensors", "rng.pt", "state.json"}
    assert manifest["files"]["rng.pt"]["sha256"] == hashlib.sha256((final / "rng.pt").read_bytes()).hexdigest()


def test_stats_log_damage_names_the_file(tmp_path):
    from versadiff.train.logging import StatsLogger

    log = StatsLogger(tmp_path, tensorboard=False)
    for s in (1, 2, 3):
        log.log(s, {"loss": 0.5})
    with open(log.path, "a") as f:
        f.write('{"step": 4, "lo')  # killed mid-line: dropped
    log.truncate_after(3)
    assert [json.loads(x)["step"] for x in log.path.read_text().splitlines()] == [1, 2, 3]
    lines = log.path.read_text().splitlines()
    log.path.write_text("\n".join([lines[0], "garbage", lines[2]]) + "\n")
    with pytest.raises(CheckpointError, match=r"stats.jsonl line 2 is not valid JSON"):
        log.truncate_after(3)


def test_a_flipped_byte_in_a_weight_file_is_detected(base_run, tmp_path, capsys):
    from versadiff.models import load_model

    w = tmp_path / "m.safetensors"
    data = bytearray((base_run / "export" / "model.safetensors").read_bytes())
    data[-100] ^= 0x10
    w.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="is damaged: its bytes do not match the sha256"):
        load_model(w)
    assert main(["export", str(w), "--out", str(tmp_path / "e.safetensors")]) == 2
    _one_line_error(capsys, "is damaged: its bytes do not match the sha256")


# -- one error path -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["empty_export", "truncated_export", "yaml", "resume_none"])
def test_library_errors_are_one_line(case, base_run, tmp_path, capsys):
    w = tmp_path / "m.safetensors"
    data = (base_run / "export" / "model.safetensors").read_bytes()
    if case == "empty_export":
        w.write_bytes(b"")
        argv, frag = ["sample", str(w), "--n", "1", "--out", str(tmp_path / "s")], "is not a readable safetensors"
    elif case == "truncated_export":
        w.write_bytes(data[:300])
        argv, frag = ["export", str(w), "--out", str(tmp_path / "e")], "m.safetensors"
    elif case == "yaml":
        (tmp_path / "c.yaml").write_text("train: {lr: [1, \n")
        argv, frag = ["train", str(tmp_path / "c.yaml")], "invalid YAML at line"
    else:
        argv, frag = ["train", "--out", str(tmp_path / "none"), "--resume"], "no checkpoint to resume"
    assert main(argv) == 2
    _one_line_error(capsys, frag)


def test_debug_shows_tracebacks_and_bugs_are_one_line_without(monkeypatch, tmp_path, capsys):
    import versadiff.cli as cli

    def boom(args):
        raise TypeError("an internal bug\nwith a second line")

    monkeypatch.setattr(cli, "cmd_presets", boom)
    assert main(["presets"]) == 1
    err = capsys.readouterr().err
    assert err == ("versadiff: internal error: TypeError: an internal bug (a bug: rerun with --debug for the traceback "
                   "and report it)\n")
    with pytest.raises(TypeError):
        main(["presets", "--debug"])
    monkeypatch.setenv("VERSADIFF_DEBUG", "1")
    with pytest.raises(OutputExistsError):
        (tmp_path / "x").write_text("x")
        main(["sample", "nowhere", "--n", "1", "--out", str(tmp_path / "x")])


def test_training_without_a_terminal_logs_plain_lines(tmp_path, capsys):
    Trainer(tiny("train.max_steps=2", "train.log_every=1"), out=tmp_path / "run").run()
    err = capsys.readouterr().err
    assert "versadiff: training in" in err and "mixed precision no" in err
    assert "shapes_unet_tiny step 1/2 loss " in err and "shapes_unet_tiny step 2/2 loss " in err and "\r" not in err
