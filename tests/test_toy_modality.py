"""A new data modality and context encoder arrive as new files only (tests/plugins/toy_signal.py), then train
through `versadiff train` and sample through the one pipeline."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).parent / "plugins"))
import toy_signal  # noqa: E402  (registers the toy modality)

from versadiff.cli import main  # noqa: E402
from versadiff.models import load_model  # noqa: E402

CONFIG = {
    "name": "toy_signal", "task": "gaussian",
    "model": {"type": "toy_signal_net"},
    "data": {"name": "toy_signal", "size": 256},
    "flows": ["frequency-to-signal"],
    "codecs": {"signal": {"type": "toy_signal_gain", "gain": 1.25}},
    "encoders": {"frequency": {"type": "toy_frequency", "dim": 16}},
    "diffusion": {"prediction": "eps", "p_uncond": 0.1, "clip_x0": None},
    "train": {"batch_size": 32, "max_steps": 20, "lr": 2.0e-3, "log_every": 5, "mixed_precision": "no"},
    "sample": {"sampler": "ddim", "steps": 10, "n": 4, "guidance": 1.0},
}


def test_toy_modality_trains_and_samples(tmp_path, one_thread):
    cfg = tmp_path / "toy.yaml"
    cfg.write_text(yaml.safe_dump(CONFIG))
    assert main(["train", str(cfg), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    model = load_model(tmp_path / "run")
    assert list(model.flows) == ["frequency-to-signal"] and model.sample_shape() == (1, toy_signal.LENGTH)
    x = model.generate([0, 1, 2], context=[1.0, 2.0, 3.0], guidance=1.0)
    assert x.shape == (3, 1, toy_signal.LENGTH) and torch.isfinite(x).all()
    # sample i depends only on its seed and context, not on the batch
    alone = model.generate([1], context=[2.0], guidance=1.0)
    torch.testing.assert_close(x[1:2], alone, rtol=0, atol=1e-5)
    # the unconditional branch uses the encoder's null context (frequency 0), not zeros
    den_null = model.flows["frequency-to-signal"].encoder.null(1)
    assert den_null.abs().sum() > 0
