"""The same weights give bit-identical samples across refactors (golden files: tests/golden/make_golden.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

GOLDEN = Path(__file__).resolve().parent / "golden"
DEMO = Path(__file__).resolve().parent.parent / "src/versadiff/assets/demo_shapes_unet.safetensors"


def _with_autoencoder(weights: Path, autoencoder: Path, out: Path) -> Path:
    """A copy of `weights` whose config points autoencoder.path at `autoencoder` (the golden run's was a temp dir)."""
    with safe_open(str(weights), framework="pt") as f:
        meta = dict(f.metadata())
    cfg = json.loads(meta["versadiff_config"])
    cfg["autoencoder"]["path"] = str(autoencoder)
    meta["versadiff_config"] = json.dumps(cfg)
    save_file(load_file(str(weights)), str(out), metadata=meta)
    return out


@pytest.fixture(scope="module")
def golden() -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    with safe_open(str(GOLDEN / "samples.safetensors"), framework="pt") as f:
        meta = f.metadata()
    return load_file(str(GOLDEN / "samples.safetensors")), json.loads(meta["cases"]), meta


@pytest.mark.parametrize("case", ["demo", "demo_unguided_ddim", "vq", "latent"])
def test_samples_are_bit_identical(case, golden, tmp_path, one_thread):
    from versadiff.models import load_model

    samples, cases, meta = golden
    weights = {"demo": DEMO, "demo_unguided_ddim": DEMO,
               "vq": _with_autoencoder(GOLDEN / "vq.safetensors", GOLDEN / "vqae.safetensors", tmp_path / "vq.safetensors"),
               "latent": _with_autoencoder(GOLDEN / "latent.safetensors", GOLDEN / "klae.safetensors",
                                           tmp_path / "latent.safetensors")}[case]
    got = load_model(weights).generate(**cases[case])
    want = samples[case]
    assert got.shape == want.shape and got.abs().sum() > 0
    same_kernels = (meta["cpu_capability"], meta["torch"]) == (torch.backends.cpu.get_cpu_capability(), torch.__version__)
    if same_kernels:
        assert torch.equal(got, want), f"{case}: max abs difference {(got - want).abs().max():.3g}"
    else:  # other CPU kernels (AVX2 vs AVX-512) round differently: the bits are not comparable, the values are
        torch.testing.assert_close(got, want, rtol=0, atol=2e-3)
