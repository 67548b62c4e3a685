"""Every script in examples/ runs, as a user runs it (`python examples/X.py ...`), at a tiny size, so that the
examples never rot; each test checks what the script says it writes."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
UNET_TINY = ["model.base_channels=16", "model.norm_groups=8", "model.channel_mult=[1, 2]", "model.num_res_blocks=1",
             "model.attention_resolutions=[16]", "model.emb_channels=32", "train.mixed_precision=no",
             "sample.n=4", "sample.steps=2", "sample.guidance=0", "train.warmup_steps=1"]


def run_example(name: str, *args: str, cwd: Path) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, str(EXAMPLES / name), *args], cwd=cwd, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, f"{name} failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r.stdout


def test_every_example_has_a_docstring_and_a_test():
    tested = (Path(__file__).read_text())
    scripts = sorted(EXAMPLES.glob("*.py"))
    assert len(scripts) >= 5
    for script in scripts:
        doc = ast.get_docstring(ast.parse(script.read_text()))
        assert doc and f"python examples/{script.name}" in doc, script.name  # says how to run it
        assert f'"{script.name}"' in tested, f"{script.name} has no test"


def test_train_folder(tmp_path):
    data = tmp_path / "folder"
    g = np.random.default_rng(0)
    for cls, colour in (("red", (220, 30, 30)), ("blue", (30, 30, 220))):
        (data / cls).mkdir(parents=True)
        for i in range(4):
            arr = np.clip(np.array(colour) + g.normal(0, 20, (16, 16, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(data / cls / f"{i}.png")
    out = run_example("train_folder.py", "--data", str(data), "--out", "run", "--resolution", "32", "--steps", "2",
                      "--batch-size", "4", "--set", *UNET_TINY, cwd=tmp_path)
    run = tmp_path / "run"
    assert "loss curve" in out and (run / "loss.png").is_file() and (run / "export" / "model.safetensors").is_file()
    from versadiff import load_model

    model = load_model(run)
    assert model.num_classes == 2 and model.class_names == ["blue", "red"]  # num_classes: auto, from the folder


def test_sample_samplers(tmp_path):
    out = run_example("sample_samplers.py", "--n", "2", "--steps", "2", "--out", "o", cwd=tmp_path)
    from versadiff.samplers import SAMPLERS

    assert all(f"{s:6s} 2 steps" in out for s in SAMPLERS)
    with Image.open(tmp_path / "o" / "samplers.png") as im:
        assert im.height > len(SAMPLERS) * 64  # a row per sampler, images enlarged x2 for the captions


def test_evaluate(tmp_path):
    out = run_example("evaluate.py", "--n", "18", "--ref-n", "36", "--steps", "2", "--batch-size", "18", cwd=tmp_path)
    metrics = json.loads(out)
    assert set(metrics) == {"shapes_fd", "shapes_acc"} and metrics["shapes_fd"] >= 0 and 0 <= metrics["shapes_acc"] <= 1


def test_diffusers_vae(tmp_path):
    from diffusers import AutoencoderKL as DiffusersKL

    torch.manual_seed(0)
    vae = DiffusersKL(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4, latent_channels=4,
                      down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                      scaling_factor=0.5)
    vae.save_pretrained(tmp_path / "vae", safe_serialization=True)
    Image.fromarray(np.full((20, 24, 3), 128, np.uint8)).save(tmp_path / "in.png")
    out = run_example("diffusers_vae.py", "--vae", "vae", "--image", "in.png", "--size", "16", "--out", "o",
                      cwd=tmp_path)
    assert "latents (1, 4, 8, 8) (scale 0.5)" in out and "PSNR" in out
    assert (tmp_path / "o" / "reconstruction.png").is_file()


def test_generate_vd(tmp_path):
    out = run_example("generate_vd.py", "--n", "2", "--steps", "2", "--out", "o", cwd=tmp_path)
    assert out.count("seed ") == 2
    for name in ("text_to_image.png", "variations.png"):
        assert (tmp_path / "o" / name).is_file()
