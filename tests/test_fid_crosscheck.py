"""FID numerics against an independent implementation: torch-fidelity's FeatureExtractorInceptionV3, a pure-torch
port of the TF 2015-12-05 Inception graph (its own layer code, not torchvision's), on identical random weights.

torch-fidelity's package __init__ imports torchvision, which does not install beside our torch build, so its
three torchvision-free files (feature_extractor_base, helpers, interpolate_compat_tensorflow) and the extractor
are imported file by file (tests/extras.py: load_module_files). It is a test-only dependency installed with
--no-deps (Makefile). Random weights with batch-norm statistics calibrated on a batch, so every layer carries
signal: a wrong padding rule in a pooling branch, a max pool where the graph averages, a wrong batch-norm epsilon
or a missing ReLU changes the pool3 features by far more than the tolerance.

What is compared: 299x299 inputs (both resizes are then the identity), uint8 pixels u fed to torch-fidelity and
(u - 128) / 128 to ours (its normalisation; ours takes [-1, 1]); pool3 features [N, 2048] and the unbiased logits
[N, 1008] (pool3 @ fc.weight.T, the Inception Score input). Not compared: the resize of smaller images, where
the two FID conventions differ by design (pytorch-fid's bilinear, which ours follows, vs TF1's resize_bilinear).
"""

from __future__ import annotations

import pytest
import torch

from extras import load_module_files
from versadiff.eval.inception import FIDInceptionV3


@pytest.fixture(scope="module")
def fidelity_inception_class():
    mods = load_module_files("torch-fidelity", "torch_fidelity", ["feature_extractor_inceptionv3"])
    return mods["feature_extractor_inceptionv3"].FeatureExtractorInceptionV3


def _random_calibrated_inception(seed: int = 0) -> FIDInceptionV3:
    torch.manual_seed(seed)
    model = FIDInceptionV3()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.2)
                m.momentum = None  # cumulative average: one batch sets the statistics
        model.fc.weight.normal_(0, 0.02)
        model.train()
        model(torch.rand(3, 3, 299, 299) * 2 - 1)  # batch statistics -> running mean / var
    return model.eval()


def test_fid_inception_equals_torch_fidelity_on_identical_random_weights(fidelity_inception_class, tmp_path, one_thread):
    ours = _random_calibrated_inception()
    path = tmp_path / "random_inception.pth"
    torch.save(ours.state_dict(), path)
    theirs = fidelity_inception_class("inception-v3-compat", ["2048", "logits_unbiased"],
                                      feature_extractor_weights_path=str(path))
    g = torch.Generator().manual_seed(1)
    u = torch.randint(0, 256, (2, 3, 299, 299), generator=g, dtype=torch.uint8)
    with torch.no_grad():
        pool_ref, logits_ref = theirs(u)
        pool, logits = ours((u.float() - 128) / 128, with_logits=True)
    assert pool.shape == (2, 2048) and logits.shape == (2, 1008)
    assert pool_ref.abs().max() > 0.1 and pool_ref.std() > 0.01  # the calibration kept the signal alive
    # same float32 ops in the same order up to the final mean: agreement to float rounding
    torch.testing.assert_close(pool, pool_ref, rtol=1e-4, atol=1e-5 * float(pool_ref.abs().max()))
    torch.testing.assert_close(logits, logits_ref, rtol=1e-4, atol=1e-5 * float(logits_ref.abs().max()))
    assert not torch.allclose(pool[0], pool[1], rtol=1e-2)  # two random images stay distinct
