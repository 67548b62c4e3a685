"""benchmarks/gpu.py --smoke on CPU: every section runs at toy size and the table has every row.

The script is what a lent GPU runs in one shot (python benchmarks/gpu.py); this checks that all of its sections
(matmul peak, the tiny UNet pair, compiled / channels_last sampling, U-ViT, VD and VQ-Diffusion against their
diffusers pipelines) work end to end with real tiny components, so a GPU session spends its minutes measuring.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu.py"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    pytest.importorskip("diffusers")
    out = tmp_path_factory.mktemp("gpu_bench")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--device", "cpu", "--out", str(out)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "gpu_bench.json").read_text()), (out / "gpu_bench.md").read_text()


def test_every_section_runs_and_is_named_in_the_table(smoke):
    result, md = smoke
    sys.path.insert(0, str(SCRIPT.parent))
    from gpu import SECTIONS

    assert result["sections"] == {name: "ok" for name in SECTIONS}
    assert result["smoke"] and result["device_type"] == "cpu"
    assert result["cpu_capability"] in md and "CPU capability" in result["device"]
    rows = [r for r in result["rows"] if r["section"] != "matmul"]
    lines = [line for line in md.splitlines() if line.startswith("| ")]
    for r in rows:  # one table line per measured row, with its figures
        assert r["status"] == "ok"
        hits = [line for line in lines if f"| {r['section']} | {r['model']} | {r['dtype']} |" in line]
        assert len(hits) == 1, (r, md)
        figures = [r[k] for k in ("sample_img_s", "train_img_s", "fwd_img_s") if r.get(k) is not None]
        assert figures and all(f > 0 for f in figures), r
    by_section = {s: [r for r in rows if r["section"] == s] for s in SECTIONS if s != "matmul"}
    n_dtypes = len({r["dtype"] for r in by_section["unet"]})
    assert [len(by_section[s]) for s in ("unet", "compiled", "uvit", "vd", "vq")] == [2 * n_dtypes, 4 * min(n_dtypes, 2), n_dtypes, 3, 3]
    assert all(r["pct_peak"] > 0 for r in by_section["unet"] + by_section["uvit"])  # needs the matmul peak
    assert result["matmul_peak_flops"]["fp32"] > 0


def test_ratios_pair_ours_with_diffusers(smoke):
    result, md = smoke
    pairs = [q["pair"] for q in result["ratios"]]
    assert any("diffusers UNet2DModel" in p for p in pairs)
    assert any("VersatileDiffusionTextToImagePipeline" in p for p in pairs)
    assert any("VQDiffusionPipeline" in p for p in pairs)
    assert any("torch.compile" in p for p in pairs) and any("channels_last" in p for p in pairs)
    for q in result["ratios"]:
        assert q["sample"] > 0 and f"| {q['pair']} | {q['dtype']} |" in md


def test_a_section_past_its_limit_becomes_a_row_and_the_run_goes_on(tmp_path):
    pytest.importorskip("diffusers")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    # 0.02 x the compiled section's 100 s smoke limit: it stops inside its first compile (even inside the compiled
    # network's eager fallback, which catches Exception), and the summary is still written
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--device", "cpu", "--out", str(tmp_path),
                           "--sections", "compiled", "--timeout-scale", "0.02"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads((tmp_path / "gpu_bench.json").read_text())
    assert result["sections"]["matmul"] == "ok" and result["sections"]["compiled"].startswith("timed out")
    assert "| compiled | - | - | 0 |" in (tmp_path / "gpu_bench.md").read_text()
