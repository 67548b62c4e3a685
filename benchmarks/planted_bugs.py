"""Plant the bugs of issue 22 one at a time in a copy of the tree and show which tests catch each.

    python benchmarks/planted_bugs.py [--only B1 B3] [--keep]

Each bug is a literal text substitution in one source file of a fresh `git archive HEAD` copy (the working tree
is never touched); the named tests run against that copy (`PYTHONPATH=copy/src`). A bug counts as caught when the
substitution applied and at least one test failed. Prints a markdown table; exit status 1 if any bug is missed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# (id, what the bug does, file, old text, new text, tests that must catch it)
BUGS = [
    ("B1", "guidance w read as diffusers' scale s (cfg_w -> scale)", "src/versadiff/guidance.py",
     'float(w) + 1.0 if convention == "cfg_w"', 'float(w) if convention == "cfg_w"',
     ["tests/test_guidance_pipeline.py"]),
    ("B2", "guidance sign flipped (samples pushed away from the class)", "src/versadiff/guidance.py",
     'float(w) + 1.0 if convention == "cfg_w"', '1.0 - float(w) if convention == "cfg_w"',
     ["tests/test_guidance_pipeline.py"]),
    ("B3", "VQ pipeline drops the 1 + of its guidance scale", "src/versadiff/sampling.py",
     "guidance_scale=1.0 + guidance", "guidance_scale=guidance",
     ["tests/test_guidance_pipeline.py"]),
    ("B4", "trailing index grid with an integer stride", "src/versadiff/samplers/timesteps.py",
     "np.round(np.arange(T, 0, -T / n))[:n] - 1", "np.round(np.arange(T, 0, -(T // n)))[:n] - 1",
     ["tests/test_samplers_diffusers.py"]),
    ("B5", "resume forgets numpy's and Python's RNG", "src/versadiff/train/trainer.py",
     '        np.random.set_state(_numpy_from(rng["numpy"]))\n        random.setstate(_python_from(rng["python"]))\n',
     "", ["tests/test_resume_subprocess.py"]),
    ("B6", "demo preset's network changed without retraining (the shipped weights no longer come from it)",
     "src/versadiff/configs/shapes_unet_tiny.yaml", "num_res_blocks: 1,", "num_res_blocks: 2,",
     ["tests/test_shipped_presets.py"]),
    ("B7", "FID Inception: Mixed_7c pools by average instead of max", "src/versadiff/eval/inception.py",
     "F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else", "_avg_pool_no_pad(x) if self.max_pool else",
     ["tests/test_fid_crosscheck.py"]),
    ("B8", "Euler without diffusers' fractional timesteps (index grid rounded)", "src/versadiff/samplers/timesteps.py",
     "idx = np.linspace(0, T - 1, n, dtype=np.float32)[::-1].astype(np.float64)",
     "idx = np.linspace(0, T - 1, n).round()[::-1]", ["tests/test_samplers_diffusers.py"]),
    ("B9", "shipped classifier's accuracy read from a damaged head (logits negated)", "src/versadiff/eval/classifier.py",
     "return self.fc2(self.features(x))", "return -self.fc2(self.features(x))", ["tests/test_shipped_models.py"]),
]


def run(bug: tuple, base: Path, python: str) -> dict:
    bid, what, rel, old, new, tests = bug
    work = Path(tempfile.mkdtemp(prefix=f"planted-{bid}-"))
    shutil.copytree(base, work, dirs_exist_ok=True, symlinks=True)
    f = work / rel
    text = f.read_text()
    if text.count(old) != 1:
        return {"id": bid, "what": what, "applied": False, "failed": [], "seconds": 0.0, "dir": str(work)}
    f.write_text(text.replace(old, new))
    env = {**os.environ, "PYTHONPATH": str(work / "src"), "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    p = subprocess.run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", *tests], cwd=work, env=env,
                       capture_output=True, text=True)
    failed = [ln.split(" ")[1] for ln in p.stdout.splitlines() if ln.startswith("FAILED ")]
    if p.returncode != 0 and not failed:
        failed = [ln for ln in p.stdout.splitlines() if "error" in ln.lower()][:1] or [f"exit {p.returncode}"]
    return {"id": bid, "what": what, "applied": True, "failed": failed, "seconds": time.perf_counter() - t0,
            "dir": str(work), "tail": (p.stdout + p.stderr).strip().splitlines()[-3:]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", nargs="+", help="bug ids to plant (default: all)")
    ap.add_argument("--keep", action="store_true", help="keep the planted copies (default: removed)")
    ap.add_argument("--python", default=sys.executable)
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="planted-base-"))
    archive = subprocess.run(["git", "archive", "HEAD"], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(base)], input=archive, check=True)
    bugs = [b for b in BUGS if not args.only or b[0] in args.only]
    print("| bug | planted | caught by | s |\n|---|---|---|---|", flush=True)
    missed = 0
    for bug in bugs:
        r = run(bug, base, args.python)
        caught = r["applied"] and bool(r["failed"])
        missed += not caught
        by = ", ".join(r["failed"]) if caught else ("NOT APPLIED (text not found)" if not r["applied"] else "MISSED")
        print(f"| {r['id']} | {r['what']} | {by} | {r['seconds']:.0f} |", flush=True)
        if not caught and r.get("tail"):
            print("    " + " / ".join(r["tail"]), file=sys.stderr, flush=True)
        if not args.keep:
            shutil.rmtree(r["dir"], ignore_errors=True)
    shutil.rmtree(base, ignore_errors=True)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
