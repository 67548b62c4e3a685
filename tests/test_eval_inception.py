"""The FID Inception network: layout of the standard weights, forward on random weights, local-file loading.

EXPECTED_CONVS is written from the Inception-v3 architecture (Szegedy et al. 2016, torchvision's
Inception3 naming, pytorch-fid's 1008-class FID variant without auxiliary head). The state dict it
implies must match the key list and shapes of pytorch-fid's pt_inception-2015-12-05-6726825d.pth:
for each BasicConv2d "<name>" the keys <name>.conv.weight [out, in, kh, kw] and <name>.bn.{weight,
bias, running_mean, running_var} [out]; plus fc.weight [1008, 2048] and fc.bias [1008].
"""

import pytest
import torch

from versadiff.eval.features import InceptionFeatures
from versadiff.eval.inception import (
    WEIGHTS_ENV,
    WEIGHTS_FILENAME,
    WEIGHTS_URL,
    FIDInceptionV3,
    load_fid_inception,
)


def _block_a(cin, pool):
    return {"branch1x1": (64, cin, 1, 1), "branch5x5_1": (48, cin, 1, 1), "branch5x5_2": (64, 48, 5, 5),
            "branch3x3dbl_1": (64, cin, 1, 1), "branch3x3dbl_2": (96, 64, 3, 3),
            "branch3x3dbl_3": (96, 96, 3, 3), "branch_pool": (pool, cin, 1, 1)}


def _block_c(c7):
    return {"branch1x1": (192, 768, 1, 1), "branch7x7_1": (c7, 768, 1, 1), "branch7x7_2": (c7, c7, 1, 7),
            "branch7x7_3": (192, c7, 7, 1), "branch7x7dbl_1": (c7, 768, 1, 1), "branch7x7dbl_2": (c7, c7, 7, 1),
            "branch7x7dbl_3": (c7, c7, 1, 7), "branch7x7dbl_4": (c7, c7, 7, 1), "branch7x7dbl_5": (192, c7, 1, 7),
            "branch_pool": (192, 768, 1, 1)}


def _block_e(cin):
    return {"branch1x1": (320, cin, 1, 1), "branch3x3_1": (384, cin, 1, 1), "branch3x3_2a": (384, 384, 1, 3),
            "branch3x3_2b": (384, 384, 3, 1), "branch3x3dbl_1": (448, cin, 1, 1),
            "branch3x3dbl_2": (384, 448, 3, 3), "branch3x3dbl_3a": (384, 384, 1, 3),
            "branch3x3dbl_3b": (384, 384, 3, 1), "branch_pool": (192, cin, 1, 1)}


EXPECTED_CONVS = {
    "Conv2d_1a_3x3": (32, 3, 3, 3), "Conv2d_2a_3x3": (32, 32, 3, 3), "Conv2d_2b_3x3": (64, 32, 3, 3),
    "Conv2d_3b_1x1": (80, 64, 1, 1), "Conv2d_4a_3x3": (192, 80, 3, 3),
    **{f"Mixed_5b.{k}": v for k, v in _block_a(192, 32).items()},
    **{f"Mixed_5c.{k}": v for k, v in _block_a(256, 64).items()},
    **{f"Mixed_5d.{k}": v for k, v in _block_a(288, 64).items()},
    "Mixed_6a.branch3x3": (384, 288, 3, 3), "Mixed_6a.branch3x3dbl_1": (64, 288, 1, 1),
    "Mixed_6a.branch3x3dbl_2": (96, 64, 3, 3), "Mixed_6a.branch3x3dbl_3": (96, 96, 3, 3),
    **{f"Mixed_6b.{k}": v for k, v in _block_c(128).items()},
    **{f"Mixed_6c.{k}": v for k, v in _block_c(160).items()},
    **{f"Mixed_6d.{k}": v for k, v in _block_c(160).items()},
    **{f"Mixed_6e.{k}": v for k, v in _block_c(192).items()},
    "Mixed_7a.branch3x3_1": (192, 768, 1, 1), "Mixed_7a.branch3x3_2": (320, 192, 3, 3),
    "Mixed_7a.branch7x7x3_1": (192, 768, 1, 1), "Mixed_7a.branch7x7x3_2": (192, 192, 1, 7),
    "Mixed_7a.branch7x7x3_3": (192, 192, 7, 1), "Mixed_7a.branch7x7x3_4": (192, 192, 3, 3),
    **{f"Mixed_7b.{k}": v for k, v in _block_e(1280).items()},
    **{f"Mixed_7c.{k}": v for k, v in _block_e(2048).items()},
}


def expected_state_shapes():
    out = {}
    for name, shape in EXPECTED_CONVS.items():
        out[f"{name}.conv.weight"] = shape
        for k in ("weight", "bias", "running_mean", "running_var"):
            out[f"{name}.bn.{k}"] = (shape[0],)
    out["fc.weight"], out["fc.bias"] = (1008, 2048), (1008,)
    return out


def test_layout_matches_standard_weights_key_list():
    model = FIDInceptionV3()
    got = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert got == expected_state_shapes()
    assert len(EXPECTED_CONVS) == 94
    # every batch norm uses the TF graph's epsilon
    assert {m.eps for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {1e-3}


def test_forward_on_random_weights_and_local_file_round_trip(tmp_path, monkeypatch, one_thread):
    torch.manual_seed(0)
    model = FIDInceptionV3()
    path = tmp_path / WEIGHTS_FILENAME
    torch.save(model.state_dict(), path)
    # a random file is not the standard one: the sha256 check names the problem
    with pytest.raises(ValueError, match="sha256"):
        load_fid_inception(tmp_path)
    monkeypatch.setenv(WEIGHTS_ENV, str(path))
    loaded = load_fid_inception(check_hash=False)  # from the environment variable
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    ex = InceptionFeatures(model=loaded)
    grey = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(1)) * 2 - 1
    out = ex(grey)  # grey is repeated to RGB, resized to 299
    assert out["features"].shape == (2, 2048) and out["logits"].shape == (2, 1008)
    assert torch.isfinite(out["features"]).all() and (out["features"] >= 0).all()  # post-ReLU average
    assert not torch.allclose(out["features"][0], out["features"][1])  # the two images stay distinct


def test_missing_weights_message_names_the_file(tmp_path, monkeypatch):
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    with pytest.raises(FileNotFoundError) as e:
        load_fid_inception()
    msg = str(e.value)
    assert WEIGHTS_FILENAME in msg and WEIGHTS_URL in msg and WEIGHTS_ENV in msg and "\n" not in msg
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}.*{WEIGHTS_FILENAME}"):
        load_fid_inception(tmp_path)  # a folder without the file


def test_wrong_layout_is_rejected(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="does not match the FID Inception layout"):
        load_fid_inception(path, check_hash=False)
