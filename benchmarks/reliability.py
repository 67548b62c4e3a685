"""Reliability benchmark: random SIGKILLs of a tiny training run, then resume, compared bitwise with an uninterrupted
run; and >= 100 malformed inputs across the CLI and the config, each outcome classified.

    .venv/bin/python benchmarks/reliability.py                 # default: 24 kills + the malformed-input matrix
    .venv/bin/python benchmarks/reliability.py --kills 6 --inputs 30 --json out.json   (quicker)

Part 1 (kills). One uninterrupted run of a tiny shapes UNet (checkpoint_every=1, keep_last=2) is the reference.
Each trial starts the same run in a fresh folder and SIGKILLs it at a random moment, on one of three triggers:
a random delay; the moment a checkpoint is being written (a .tmp-step-* folder appears); the moment an old
checkpoint is being deleted (a .tmp-del-* / .tmp-old-* folder appears). Half the trials kill the first resume too.
Then `versadiff train --out DIR --resume` (no config: the run's own) continues; a run killed before its first
checkpoint is started over with --force. The final model, EMA and optimizer tensors must equal the reference bit
for bit, and no temporary or half-deleted checkpoint may be left behind.

Part 2 (malformed inputs). Systematic cases: bad numbers for every numeric config key, bad paths, damaged files,
bad option values. Every call runs in a fresh copy of a workspace (a finished run, a sample folder, a foreign
folder, ...); every file present before the call is hashed, and after it each must still exist with its content
(possibly moved aside by --force / set aside as damaged-*), else it counts as destroyed. Outcomes:
  one-line error   exit != 0 and stderr is exactly one `versadiff: error: ...` line (warnings aside)
  recovered        exit 0 with a warning, where the input is a damaged *latest* checkpoint (fallback expected)
  traceback        "Traceback" in stderr
  internal error   a `versadiff: internal error` line (a bug without a traceback)
  silent success   exit 0 without error or warning: a malformed input accepted (silent wrong)
  other            anything else (several lines, wrong exit status)
  hang             no exit within --timeout seconds
Prints markdown tables; --json writes every case.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TINY = ["data.size=16", "train.batch_size=8", "model.base_channels=16", "model.norm_groups=8",
        "model.channel_mult=[1, 2]", "model.num_res_blocks=1", "model.attention_resolutions=[]",
        "model.emb_channels=32", "model.dropout=0.1", "train.log_every=1", "sample.n=2", "sample.steps=2",
        "sample.guidance=0", "train.mixed_precision=no", "train.sample_every=0"]
KILL_RUN = TINY + ["train.max_steps=10", "train.checkpoint_every=1", "train.keep_last=2", "train.warmup_steps=2"]


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("VERSADIFF_DEBUG", None)
    return env


def vd(*args: str) -> list[str]:
    return [sys.executable, "-m", "versadiff.cli", *args]


def run(cmd: list[str], cwd: Path, timeout: float) -> tuple[int | None, str, float]:
    """(exit status or None on timeout, stderr, seconds)."""
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           timeout=timeout)
        return p.returncode, p.stderr, time.perf_counter() - t0
    except subprocess.TimeoutExpired as e:
        err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        return None, err, time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------------------------
# part 1: kills


def final_tensors(run_dir: Path) -> dict[str, object]:
    import torch

    from versadiff.train import checkpoint as ck

    c = ck.latest_checkpoint(run_dir / "checkpoints")
    out = {"step": json.loads((c / "state.json").read_text())["step"]}
    for name in ("model.safetensors", "ema.safetensors"):
        out[name] = ck.load_tensors(c / name)
    out["export"] = ck.load_tensors(run_dir / "export" / "model.safetensors")
    opt = torch.load(c / "optimizer.pt", weights_only=True)
    out["optimizer"] = {f"{k}.{n}": v for k, st in opt["state"].items() for n, v in st.items() if torch.is_tensor(v)}
    return out


def bitwise_equal(a: dict, b: dict) -> bool:
    import torch

    if a["step"] != b["step"]:
        return False
    for key in ("model.safetensors", "ema.safetensors", "export", "optimizer"):
        x, y = a[key], b[key]
        if x.keys() != y.keys() or not all(torch.equal(x[k], y[k]) for k in x):
            return False
    return True


def leftovers(run_dir: Path) -> list[str]:
    """Temporaries and half checkpoints left in a finished run folder (there must be none)."""
    from versadiff.weights import is_checkpoint

    c = run_dir / "checkpoints"
    found = [p.name for p in c.iterdir()
             if p.name.startswith(".tmp-") or (p.name.startswith("step-") and not is_checkpoint(p))]
    for folder in (run_dir, run_dir / "export"):
        found += [f"{folder.name}/{p.name}" for p in folder.iterdir() if ".tmp-" in p.name]
    return sorted(found)


def kill_once(cmd: list[str], run_dir: Path, mode: str, rng: random.Random, duration: float) -> str:
    """Start `cmd`, SIGKILL it on `mode`'s trigger; returns what the checkpoints folder showed at the kill."""
    proc = subprocess.Popen(cmd, cwd=run_dir.parent, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckdir = run_dir / "checkpoints"
    deadline = time.perf_counter() + duration * 1.5 + 5
    if mode == "random":
        time.sleep(rng.uniform(0.3, duration))
    else:
        want = (".tmp-step",) if mode == "write" else (".tmp-del", ".tmp-old")
        # skip a random number of matching events so kills spread over the run
        skip = rng.randint(0, 6)
        seen_prev = False
        while time.perf_counter() < deadline and proc.poll() is None:
            try:
                names = os.listdir(ckdir)
            except OSError:
                names = []
            hit = any(n.startswith(w) for n in names for w in want)
            if hit and not seen_prev:
                if skip == 0:
                    break
                skip -= 1
            seen_prev = hit
            time.sleep(0.0002)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    try:
        names = os.listdir(ckdir)
    except OSError:
        names = []
    if proc.returncode == 0:
        return "after the run finished"
    if any(n.startswith(".tmp-del") or n.startswith(".tmp-old") for n in names):
        return "during a checkpoint deletion"
    if any(n.startswith(".tmp-step") for n in names):
        return "during a checkpoint write"
    if not any(n.startswith("step-") for n in names):
        return "before the first checkpoint"
    return "between checkpoints (training, sampling, export)"


def kill_benchmark(n: int, workdir: Path, rng: random.Random, timeout: float) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    ref_dir = workdir / "reference"
    t0 = time.perf_counter()
    rc, err, dt = run(vd("train", "shapes_unet_tiny", "--out", str(ref_dir), "--quiet", "--set", *KILL_RUN), workdir,
                      timeout)
    if rc != 0:
        raise SystemExit(f"reference run failed ({rc}): {err}")
    duration = dt
    ref = final_tensors(ref_dir)
    modes = ["random", "write", "delete"]
    trials, kills = [], 0
    for i in range(n):
        run_dir = workdir / f"killed-{i:03d}"
        mode = modes[i % 3]
        start = vd("train", "shapes_unet_tiny", "--out", str(run_dir), "--quiet", "--set", *KILL_RUN)
        for _ in range(4):  # a trigger that never came (the run finished first): try again in a fresh folder
            phases = [kill_once(start, run_dir, mode, rng, duration)]
            if phases[0] != "after the run finished":
                break
            shutil.rmtree(run_dir, ignore_errors=True)
        kills += phases[0] != "after the run finished"
        restarts, resume_errors = 0, []
        resume = vd("train", "--out", str(run_dir), "--resume", "--quiet")
        second = i % 2 == 1
        for attempt in range(4):
            if second and attempt == 0 and phases[0] != "after the run finished":
                if (run_dir / "checkpoints").is_dir() and any(p.name.startswith("step-")
                                                              for p in (run_dir / "checkpoints").iterdir()):
                    phases.append(kill_once(resume, run_dir, rng.choice(modes), rng, duration))
                    kills += phases[-1] != "after the run finished"
            rc, err, _ = run(resume, workdir, timeout)
            if rc == 0:
                break
            if rc == 2 and "no checkpoint to resume" in err:  # killed before its first checkpoint: start over
                restarts += 1
                rc, err, _ = run(start[:-len(KILL_RUN) - 1] + ["--force", "--set", *KILL_RUN], workdir, timeout)
                if rc == 0:
                    break
            resume_errors.append((rc, err.strip().splitlines()[-1:] if err.strip() else []))
        ok = rc == 0 and bitwise_equal(ref, final_tensors(run_dir))
        trials.append({"trial": i, "mode": mode, "killed": phases, "restarts": restarts, "bitwise_equal": ok,
                       "leftovers": leftovers(run_dir) if rc == 0 else ["(did not finish)"],
                       "errors": resume_errors})
        shutil.rmtree(run_dir, ignore_errors=True)
    return {"trials": trials, "kills": kills, "seconds": time.perf_counter() - t0, "reference_seconds": duration}


# ---------------------------------------------------------------------------------------------------------------
# part 2: malformed inputs


BASE = TINY + ["train.max_steps=2", "train.checkpoint_every=1", "train.keep_last=3"]


def make_template(workdir: Path, timeout: float) -> Path:
    """A workspace: a finished run, its export, a sample folder, a report, a foreign folder and files."""
    t = workdir / "template"
    t.mkdir(parents=True)
    rc, err, _ = run(vd("train", "shapes_unet_tiny", "--out", "run", "--quiet", "--set", *BASE), t, timeout)
    if rc != 0:
        raise SystemExit(f"template run failed: {err}")
    rc, err, _ = run(vd("sample", "run", "--n", "2", "--steps", "1", "--out", "samples", "--quiet"), t, timeout)
    if rc != 0:
        raise SystemExit(f"template sample failed: {err}")
    shutil.copy(t / "run" / "export" / "model.safetensors", t / "weights.safetensors")
    (t / "foreign").mkdir()
    (t / "foreign" / "notes.txt").write_text("someone's notes\n")
    (t / "afile.txt").write_text("a plain file\n")
    (t / "dir.safetensors").mkdir()
    (t / "report.json").write_text(json.dumps({"mine": True}) + "\n")
    (t / "list.yaml").write_text("- 1\n- 2\n")
    (t / "broken.yaml").write_text("train: {lr: [1,\n")
    (t / "empty.yaml").write_text("")
    (t / "typo.yaml").write_text("train:\n  lr: 1e-4\n")
    return t


def _damage(ws: Path, target: str, how: str) -> None:
    f = ws / target
    data = f.read_bytes() if f.exists() else b""
    if how == "empty":
        f.write_bytes(b"")
    elif how == "truncate":
        f.write_bytes(data[: max(1, len(data) // 3)])
    elif how == "flip":
        i = len(data) - 7
        f.write_bytes(data[:i] + bytes([data[i] ^ 0x20]) + data[i + 1 :])
    elif how == "random":
        f.write_bytes(random.Random(0).randbytes(max(64, len(data))))
    elif how == "json":
        f.write_text('{"step": 2, "epoch"')
    elif how == "delete":
        f.unlink()
    elif how == "halfline":
        with open(f, "a") as fh:
            fh.write('{"step": 3, "lo')
    elif how == "midline":
        lines = data.decode().splitlines()
        f.write_text("\n".join([lines[0], "###", *lines[1:]]) + "\n")
    elif how == "noconfig":  # a safetensors file without versadiff metadata
        from safetensors.torch import load_file, save_file

        save_file(load_file(str(f)), str(f))
    else:
        raise ValueError(how)


def malformed_cases() -> list[dict]:
    """Every case: argv (run in the workspace), optional damage, and whether a fallback recovery is expected."""
    cases: list[dict] = []

    def train_set(*sets: str, category: str = "bad number", name: str = "") -> None:
        cases.append({"category": category, "name": name or " ".join(sets),
                      "argv": ["train", "shapes_unet_tiny", "--out", "new", "--quiet", "--set", *TINY,
                               "train.max_steps=2", *sets]})

    bad_numbers = {
        "train.lr": [".nan", ".inf", "-.inf", "0", "-1.0e-3", "abc"],
        "train.grad_clip": [".nan", ".inf", "-1", "0", "abc"],
        "train.weight_decay": [".nan", ".inf", "-0.1", "abc"],
        "train.adam_eps": [".nan", "0", "-1.0"],
        "train.adam_betas": ["[0.9, 1.0]", "[-0.1, 0.9]", "[.nan, 0.9]", "[0.9]"],
        "train.ema_decay": [".nan", "1.0", "-0.1", "2"],
        "train.batch_size": ["0", "-8", "2.5", "abc"],
        "train.max_steps": ["0", "-1", "abc"],
        "train.grad_accum": ["0"],
        "train.log_every": ["0"],
        "train.keep_last": ["0"],
        "train.warmup_steps": ["-1"],
        "train.checkpoint_every": ["-1"],
        "train.mixed_precision": ["fp8", "fp16"],
        "sample.guidance": [".nan", ".inf"],
        "sample.steps": ["0", "-5"],
        "sample.n": ["0"],
        "sample.sampler": ["nope"],
        "sample.truncation": ["0", "1.5"],
        "diffusion.p_uncond": [".nan", "1.0", "-0.1"],
        "diffusion.clip_x0": ["0", ".nan"],
        "diffusion.intp_frac": ["1.5"],
        "diffusion.prediction": ["z"],
        "diffusion.schedule.logsnr_min": [".nan"],
        "data.size": ["0"],
        "model.num_classes": ["5"],
    }
    for key, values in bad_numbers.items():
        for v in values:
            train_set(f"{key}={v}")
    train_set("model.num_classes=0", "sample.guidance=1.0", category="bad number",
              name="guidance on an unconditional model (flat folder recipe)")
    train_set("train.lrr=1", category="bad option value", name="unknown key train.lrr")
    train_set("train.lr.x=1", category="bad option value", name="--set into a number")

    def case(category: str, name: str, argv: list[str], damage: tuple[str, str] | None = None,
             recover: bool = False) -> None:
        cases.append({"category": category, "name": name, "argv": argv, "damage": damage, "recover": recover})

    s = ["sample", "run", "--n", "2", "--steps", "1", "--quiet"]
    # bad paths
    case("bad path", "train --out a file", ["train", "shapes_unet_tiny", "--out", "afile.txt", "--set", *BASE])
    case("bad path", "train --out a foreign folder", ["train", "shapes_unet_tiny", "--out", "foreign", "--set", *BASE])
    case("bad path", "train --out an existing run (no --resume)",
         ["train", "shapes_unet_tiny", "--out", "run", "--set", *BASE])
    case("bad path", "train --out below a file", ["train", "shapes_unet_tiny", "--out", "afile.txt/x", "--set", *BASE])
    case("bad path", "train --resume a folder without checkpoints", ["train", "--out", "foreign", "--resume"])
    case("bad path", "train --resume a missing folder", ["train", "--out", "missing", "--resume"])
    case("bad path", "train --resume PATH missing", ["train", "--resume", "missing/step-00000001"])
    case("bad path", "train a missing config file", ["train", "missing.yaml"])
    case("bad path", "train a broken YAML", ["train", "broken.yaml", "--out", "new"])
    case("bad path", "train a YAML list", ["train", "list.yaml", "--out", "new"])
    case("bad path", "train an empty YAML", ["train", "empty.yaml", "--out", "new"])
    case("bad path", "train a YAML with 1e-4", ["train", "typo.yaml", "--out", "new"])
    case("bad path", "sample a missing checkpoint", ["sample", "missing", "--n", "1", "--out", "s"])
    case("bad path", "sample a text file", ["sample", "afile.txt", "--n", "1", "--out", "s"])
    case("bad path", "sample a foreign folder", ["sample", "foreign", "--n", "1", "--out", "s"])
    case("bad path", "sample --out a file", [*s, "--out", "afile.txt"])
    case("bad path", "sample --out a foreign folder", [*s, "--out", "foreign"])
    case("bad path", "sample --out the run folder", [*s, "--out", "run", "--force"])
    case("bad path", "sample --out an old sample folder (no --force)", [*s, "--out", "samples"])
    case("bad path", "sample --out below a file", [*s, "--out", "afile.txt/s"])
    case("bad path", "export --out the run's config.yaml", ["export", "run", "--out", "run/config.yaml"])
    case("bad path", "export --out an existing file", ["export", "run", "--out", "weights.safetensors"])
    case("bad path", "export --out a foreign file with --force", ["export", "run", "--out", "afile.txt", "--force"])
    case("bad path", "export --out its own source", ["export", "run", "--out", "run/export/model.safetensors",
                                                     "--force"])
    case("bad path", "export --out a folder", ["export", "run", "--out", "dir.safetensors"])
    case("bad path", "export a missing source", ["export", "missing", "--out", "e.safetensors"])
    case("bad path", "eval --out an existing foreign report", ["eval", "run", "--n", "2", "--metrics", "shapes_acc",
                                                               "--out", "report.json"])
    case("bad path", "eval --out it with --force", ["eval", "run", "--n", "2", "--metrics", "shapes_acc",
                                                    "--out", "report.json", "--force"])
    case("bad path", "eval --out a folder", ["eval", "run", "--n", "2", "--metrics", "shapes_acc", "--out", "foreign"])
    case("bad path", "eval --images missing", ["eval", "--images", "missing", "--metrics", "shapes_acc",
                                               "--out", "r.json"])
    # damaged files
    ck2 = "run/checkpoints/step-00000002"
    for target, hows in {"weights.safetensors": ["empty", "truncate", "flip", "random", "noconfig"]}.items():
        for how in hows:
            case("bad file", f"sample from a {how} export", [*s[:1], target, *s[2:], "--out", "s"], (target, how))
            case("bad file", f"export a {how} weights file", ["export", target, "--out", "e.safetensors"],
                 (target, how))
    for name, hows in {"ema.safetensors": ["truncate", "flip"], "model.safetensors": ["empty", "flip"],
                       "optimizer.pt": ["empty", "truncate"], "rng.pt": ["truncate", "random"],
                       "state.json": ["json"], "scheduler.pt": ["delete"], "manifest.json": ["json"]}.items():
        for how in hows:
            target = f"{ck2}/{name}"
            case("bad file", f"resume a run whose latest {name} is {how}", ["train", "--out", "run", "--resume",
                                                                            "--quiet"], (target, how), recover=True)
            case("bad file", f"resume a checkpoint whose {name} is {how}", ["train", "--resume", ck2, "--quiet"],
                 (target, how))
    case("bad file", "resume with a half-written stats.jsonl line", ["train", "--out", "run", "--resume", "--quiet"],
         ("run/stats.jsonl", "halfline"), recover=True)
    case("bad file", "resume with a damaged stats.jsonl line", ["train", "--out", "run", "--resume", "--quiet"],
         ("run/stats.jsonl", "midline"))
    # bad option values
    for opt, val in (("--n", "0"), ("--n", "-1"), ("--n", "abc"), ("--steps", "0"), ("--guidance", "nan"),
                     ("--guidance", "inf"), ("--batch-size", "0"), ("--truncation", "2"), ("--truncation", "0.5"),
                     ("--class", "99"), ("--class", "purple blob"), ("--sampler", "nope"), ("--device", "cuda"),
                     ("--device", "toaster"), ("--precision", "fp16"), ("--precision", "fp8"),
                     ("--seed", str(2**64))):
        argv = ["sample", "run", "--n", "2", "--steps", "1", "--out", "s", "--quiet"]
        if opt in argv:
            argv[argv.index(opt) + 1] = val
        else:
            argv += [opt, val]
        case("bad option value", f"sample {opt} {val}", argv)
    for opt, val in (("--n", "0"), ("--metrics", "nope"), ("--sampler", "nope"), ("--device", "cuda"),
                     ("--guidance", "nan"), ("--precision", "fp16")):
        argv = ["eval", "run", "--n", "2", "--metrics", "shapes_acc", "--out", "r.json", "--quiet"]
        if opt in argv:
            argv[argv.index(opt) + 1] = val
        else:
            argv += [opt, val]
        case("bad option value", f"eval {opt} {val}", argv)
    case("bad option value", "train --allow-change without --resume",
         ["train", "shapes_unet_tiny", "--allow-change", "train.lr", "--out", "new"])
    case("bad option value", "train --resume with a changed lr", ["train", "--out", "run", "--resume", "--set",
                                                                  "train.lr=0.5"])
    case("bad option value", "train --resume with a changed batch size",
         ["train", "shapes_unet_tiny", "--out", "run", "--resume", "--set", *BASE, "train.batch_size=4"])
    case("bad option value", "train --set without =", ["train", "shapes_unet_tiny", "--set", "train.lr", "--out",
                                                       "new"])
    case("bad option value", "export without --out", ["export", "run"])
    case("bad option value", "an unknown command", ["frobnicate"])
    for c in cases:
        c.setdefault("damage", None)
        c.setdefault("recover", False)
    return cases


def _snapshot(ws: Path) -> dict[str, str]:
    return {str(p.relative_to(ws)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in ws.rglob("*") if p.is_file() and not p.is_symlink()}


def classify(rc: int | None, err: str, recover: bool) -> str:
    if rc is None:
        return "hang"
    if "Traceback" in err:
        return "traceback"
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    if any(ln.startswith("versadiff: internal error") for ln in lines):
        return "internal error"
    warnings = [ln for ln in lines if ln.startswith("versadiff: warning:")]
    errors = [ln for ln in lines if ln.startswith("versadiff: error: ")]
    stray = [ln for ln in lines if not ln.startswith("versadiff: ")]  # "versadiff: training in ..." notes are fine
    if rc == 0:
        return "recovered" if recover and warnings else "silent success"
    if len(errors) == 1 and not stray and rc == 2:
        return "one-line error"
    return "other"


def input_benchmark(workdir: Path, limit: int | None, timeout: float) -> dict:
    t0 = time.perf_counter()
    template = make_template(workdir, timeout)
    cases = malformed_cases()
    if limit is not None:
        step = max(1, len(cases) // limit)
        cases = cases[::step][:limit]
    results = []
    for i, c in enumerate(cases):
        ws = workdir / f"ws-{i:03d}"
        shutil.copytree(template, ws)
        if c["damage"] is not None:
            _damage(ws, *c["damage"])
        before = _snapshot(ws)
        rc, err, dt = run(vd(*c["argv"]), ws, timeout)
        after = _snapshot(ws)
        contents = set(after.values())
        destroyed = []
        for rel, digest in before.items():
            if after.get(rel) == digest or digest in contents:
                continue  # intact, or moved aside whole (replaced-*/, damaged-*)
            if rc == 0 and c["recover"] and Path(rel).name in ("stats.jsonl", "run.json"):
                continue  # a resumed run rewrites its own log and run record
            destroyed.append(rel)
        outcome = classify(rc, err, c["recover"])
        results.append({**{k: c[k] for k in ("category", "name", "recover")}, "argv": c["argv"],
                        "damage": c["damage"], "exit": rc, "outcome": outcome, "destroyed": destroyed,
                        "seconds": round(dt, 2), "stderr_tail": err.strip().splitlines()[-2:]})
        shutil.rmtree(ws, ignore_errors=True)
    return {"cases": results, "seconds": time.perf_counter() - t0}


# ---------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=24, help="kill trials (default 24; half also kill the first resume)")
    ap.add_argument("--inputs", type=int, default=None, help="run at most this many malformed inputs (default: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds before a call counts as a hang")
    ap.add_argument("--workdir", help="where to work (default: a temporary folder, removed afterwards)")
    ap.add_argument("--json", help="write every trial and case here")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))
    rng = random.Random(args.seed)
    tmp = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="vd-reliability-"))
    tmp.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        kills = kill_benchmark(args.kills, tmp / "kills", rng, args.timeout) if args.kills else None
        inputs = input_benchmark(tmp / "inputs", args.inputs, args.timeout) if args.inputs != 0 else None
    finally:
        if not args.workdir:
            shutil.rmtree(tmp, ignore_errors=True)
    total = time.perf_counter() - t0

    import platform

    import torch

    print(f"# Reliability benchmark\n\nCommand: `{Path(sys.executable).name} benchmarks/reliability.py "
          f"{' '.join(argv if argv is not None else sys.argv[1:])}` ({total:.0f} s wall). "
          f"torch {torch.__version__}, {platform.machine()}, {os.cpu_count()} CPUs, subprocesses on 1 thread.\n")
    rows = []
    if kills is not None:
        tr = kills["trials"]
        eq = sum(t["bitwise_equal"] for t in tr)
        phases: dict[str, int] = {}
        for t in tr:
            for ph in t["killed"]:
                if ph != "after the run finished":  # the trigger never came: no kill happened
                    phases[ph] = phases.get(ph, 0) + 1
        rows += [("SIGKILLs (trials)", f"{kills['kills']} ({len(tr)})"),
                 *[(f"  killed {k}", str(v)) for k, v in sorted(phases.items())],
                 ("resumes bitwise equal to the uninterrupted run", f"{eq}/{len(tr)}"),
                 ("  of which started over with --force (no finished checkpoint yet)",
                  str(sum(t["restarts"] > 0 for t in tr))),
                 ("temporaries / half checkpoints left after resume", str(sum(len(t["leftovers"]) for t in tr)))]
    if inputs is not None:
        cs = inputs["cases"]
        count = lambda o: sum(c["outcome"] == o for c in cs)  # noqa: E731
        rows += [("malformed inputs", str(len(cs))),
                 ("  one-line errors", str(count("one-line error"))),
                 ("  recovered with a warning (damaged latest checkpoint, cut stats line)", str(count("recovered"))),
                 ("tracebacks", str(count("traceback"))),
                 ("internal errors", str(count("internal error"))),
                 ("silent wrong (exit 0 on a malformed input)", str(count("silent success"))),
                 ("other (several lines, wrong status)", str(count("other"))),
                 ("hangs", str(count("hang"))),
                 ("files destroyed", str(sum(len(c["destroyed"]) for c in cs)))]
    print("| measure | value |\n|---|---|")
    for k, v in rows:
        print(f"| {k} | {v} |")
    if inputs is not None:
        cats: dict[str, dict[str, int]] = {}
        for c in inputs["cases"]:
            cats.setdefault(c["category"], {}).setdefault(c["outcome"], 0)
            cats[c["category"]][c["outcome"]] += 1
        outcomes = ["one-line error", "recovered", "traceback", "internal error", "silent success", "other", "hang"]
        print("\n| category | cases | " + " | ".join(outcomes) + " |\n|---|---|" + "---|" * len(outcomes))
        for cat, d in cats.items():
            print(f"| {cat} | {sum(d.values())} | " + " | ".join(str(d.get(o, 0)) for o in outcomes) + " |")
        bad = [c for c in inputs["cases"] if c["outcome"] not in ("one-line error", "recovered") or c["destroyed"]]
        if bad:
            print("\nCases that did not end in a one-line error or a recovery:\n")
            for c in bad:
                print(f"- {c['category']}: {c['name']}: {c['outcome']} (exit {c['exit']}) "
                      f"{' | '.join(c['stderr_tail'])}{' destroyed: ' + ', '.join(c['destroyed']) if c['destroyed'] else ''}")
    if kills is not None:
        badk = [t for t in kills["trials"] if not t["bitwise_equal"] or t["leftovers"]]
        for t in badk:
            print(f"- kill trial {t['trial']} ({t['mode']}, killed {t['killed']}): bitwise {t['bitwise_equal']}, "
                  f"leftovers {t['leftovers']}, errors {t['errors']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"kills": kills, "inputs": inputs, "seconds": total}, indent=2,
                                              default=str) + "\n")
    failed = (kills is not None and any(not t["bitwise_equal"] or t["leftovers"] for t in kills["trials"])) or \
        (inputs is not None and any(c["outcome"] not in ("one-line error", "recovered") or c["destroyed"]
                                    for c in inputs["cases"]))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
