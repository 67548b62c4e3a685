"""The FID Inception-v3 network, defined here so that FID needs neither torchvision nor a download.

Why our own definition: pytorch-fid and torch-fidelity (and torchmetrics' default FID network, which is
torch-fidelity's) import torchvision, which does not import beside our torch build. The network below is
the TF Inception graph of 2015-12-05 in torchvision's Inception3 layout with pytorch-fid's FID patches
(Heusel et al. 2017 reference implementation, ported by pytorch-fid):
  * the pooling branches of Mixed_5b..5d, Mixed_6b..6e and Mixed_7b average without counting padding;
  * the pooling branch of Mixed_7c is a 3x3 max pool (stride 1), not an average pool;
  * 1008 output classes; no auxiliary head; every BasicConv2d = conv (no bias) + batch norm (eps 1e-3) + ReLU.
Its state-dict keys and shapes match the file `pt_inception-2015-12-05-6726825d.pth` released by
pytorch-fid (see tests/test_eval_inception.py for the full list), which the user provides as a local file.
Inputs are resized to 299x299 with bilinear interpolation (align_corners=False), as pytorch-fid does.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "WEIGHTS_FILENAME",
    "WEIGHTS_SHA256_PREFIX",
    "WEIGHTS_URL",
    "WEIGHTS_ENV",
    "FIDInceptionV3",
    "resolve_inception_weights",
    "load_fid_inception",
]

WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
#: torch-hub naming convention: the suffix of the file name is the start of the file's sha256
WEIGHTS_SHA256_PREFIX = "6726825d"
#: where the file is published (for the user to fetch on a connected machine; never downloaded by versadiff)
WEIGHTS_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + WEIGHTS_FILENAME
#: environment variable naming the weights file (or a folder holding it) when no path is passed
WEIGHTS_ENV = "VERSADIFF_INCEPTION_WEIGHTS"


class BasicConv2d(nn.Module):
    """conv (no bias) -> batch norm (eps 1e-3, as in the TF graph) -> ReLU."""

    def __init__(self, cin: int, cout: int, kernel_size, stride=1, padding=0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_no_pad(x: Tensor) -> Tensor:
    # the TF graph's average pools ignore padded cells (pytorch-fid's FID patch)
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """35x35 block: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1; out 224 + pool_features channels."""

    def __init__(self, cin: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, 1)
        self.branch5x5_1 = BasicConv2d(cin, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, 1)

    def forward(self, x: Tensor) -> Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_avg_pool_no_pad(x))], 1)


class InceptionB(nn.Module):
    """35x35 -> 17x17 reduction: 3x3/2 | 1x1-3x3-3x3/2 | maxpool/2; out 480 + cin channels."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionC(nn.Module):
    """17x17 block with factorised 7x7 convolutions; out 768 channels."""

    def __init__(self, cin: int, c7: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 192, 1)
        self.branch7x7_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3,
                      self.branch7x7dbl_4, self.branch7x7dbl_5):
            d = layer(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg_pool_no_pad(x))], 1)


class InceptionD(nn.Module):
    """17x17 -> 8x8 reduction: 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool/2; out 512 + cin channels."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionE(nn.Module):
    """8x8 block with split 1x3/3x1 branches; out 2048 channels.

    max_pool=False: average pool without padding (Mixed_7b); True: 3x3 max pool (Mixed_7c), per the TF graph.
    """

    def __init__(self, cin: int, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(cin, 320, 1)
        self.branch3x3_1 = BasicConv2d(cin, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        d = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg_pool_no_pad(x)
        return torch.cat([self.branch1x1(x), b3, d, self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    """Inception-v3 for FID: images [N, 3, H, W] in [-1, 1] -> pool3 features [N, 2048] (and logits [N, 1008])."""

    feature_dim = 2048
    num_classes = 1008

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, c7=128)
        self.Mixed_6c = InceptionC(768, c7=160)
        self.Mixed_6d = InceptionC(768, c7=160)
        self.Mixed_6e = InceptionC(768, c7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, max_pool=False)
        self.Mixed_7c = InceptionE(2048, max_pool=True)
        self.fc = nn.Linear(2048, self.num_classes)

    def forward(self, images: Tensor, with_logits: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """pool3 features [N, 2048]; with_logits=True also returns logits [N, 1008] without the fc bias."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"FID Inception takes RGB images [N, 3, H, W] in [-1, 1]; got {tuple(images.shape)}")
        # bilinear resizing commutes with the affine map [0, 1] -> [-1, 1], so resizing in [-1, 1] equals
        # pytorch-fid's resize-then-normalise
        x = F.interpolate(images.float(), size=(299, 299), mode="bilinear", align_corners=False)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b,
                      self.Mixed_6c, self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        pool = x.mean(dim=(2, 3))
        if not with_logits:
            return pool
        # Inception Score uses the softmax of pool3 @ W without the bias, as the original TF IS code does
        return pool, pool @ self.fc.weight.T


def resolve_inception_weights(path: str | os.PathLike | None = None) -> Path:
    """The weights file: `path` (a file, or a folder holding WEIGHTS_FILENAME), else $VERSADIFF_INCEPTION_WEIGHTS."""
    if path is None:
        path = os.environ.get(WEIGHTS_ENV)
    hint = (f"FID needs the Inception weights file {WEIGHTS_FILENAME} (sha256 {WEIGHTS_SHA256_PREFIX}...): "
            f"download it on a connected machine from {WEIGHTS_URL} and pass its path with --inception PATH "
            f"or set {WEIGHTS_ENV}")
    if path is None:
        raise FileNotFoundError(hint)
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / WEIGHTS_FILENAME
    if not p.is_file():
        raise FileNotFoundError(f"{p} does not exist. {hint}")
    return p


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_fid_inception(path: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                       check_hash: bool = True) -> FIDInceptionV3:
    """FIDInceptionV3 in eval mode with the pytorch-fid weights from a local file (see resolve_inception_weights).

    check_hash: verify that the file's sha256 starts with WEIGHTS_SHA256_PREFIX (turn off only for your own
    re-exported copy of the same weights; FID values are comparable only with the standard file).
    """
    p = resolve_inception_weights(path)
    digest = _sha256(p) if check_hash else None
    if digest is not None and not digest.startswith(WEIGHTS_SHA256_PREFIX):
        raise ValueError(f"{p} has sha256 {digest[:16]}..., not {WEIGHTS_SHA256_PREFIX}...; "
                         f"it is not the standard {WEIGHTS_FILENAME} (get it from {WEIGHTS_URL})")
    state = torch.load(p, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{p} does not hold a state dict (found {type(state).__name__})")
    model = FIDInceptionV3()
    # batch-norm step counters are not weights; old exports lack them, newer ones carry them
    expected = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    found = {k for k in state if not k.endswith("num_batches_tracked")}
    if expected != found:
        missing, extra = sorted(expected - found), sorted(found - expected)
        raise ValueError(f"{p} does not match the FID Inception layout: missing {missing[:3]}, "
                         f"unexpected {extra[:3]} ({len(missing)} missing, {len(extra)} unexpected keys)")
    for k in expected:
        if tuple(state[k].shape) != tuple(model.state_dict()[k].shape):
            raise ValueError(f"{p}: {k} has shape {tuple(state[k].shape)}, "
                             f"expected {tuple(model.state_dict()[k].shape)}")
    model.load_state_dict({k: state[k] for k in expected}, strict=False)
    return model.to(device).eval().requires_grad_(False)
