"""The small Fashion-MNIST classifier shipped with versadiff (a domain evaluator that needs no download).

Its argmax gives class accuracy of class-conditional samples ("fmnist_acc"); its 128-d penultimate
activations are the feature space of a Fréchet distance ("fmnist_fd"). The weights in
`versadiff/assets/fmnist_classifier.safetensors` are made by `scripts/train_fmnist_classifier.py`;
the file's metadata records the seed, the epochs and the test accuracy.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, safe_open
from torch import Tensor, nn

__all__ = [
    "FMNIST_CLASSES",
    "FMNISTClassifier",
    "shipped_classifier_path",
    "load_fmnist_classifier",
    "classifier_metadata",
]

#: class names in label order (Zalando's Fashion-MNIST README)
FMNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)


class FMNISTClassifier(nn.Module):
    """Three convolutions and two linear layers on 1x28x28 images in [-1, 1] (356k parameters, 1.4 MB)."""

    feature_dim = 128

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)  # 28x28, then max-pool to 14x14
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)  # 14x14, then max-pool to 7x7
        self.conv3 = nn.Conv2d(64, 128, 3, stride=2, padding=1)  # 4x4
        self.fc1 = nn.Linear(128 * 4 * 4, self.feature_dim)
        self.fc2 = nn.Linear(self.feature_dim, num_classes)

    @staticmethod
    def check_input(x: Tensor) -> None:
        if x.ndim != 4 or tuple(x.shape[1:]) != (1, 28, 28):
            raise ValueError(f"the Fashion-MNIST classifier takes images [N, 1, 28, 28]; got {tuple(x.shape)}")

    def features(self, x: Tensor) -> Tensor:
        """Penultimate activations [N, 128] of images [N, 1, 28, 28] in [-1, 1]."""
        self.check_input(x)
        h = F.max_pool2d(F.relu(self.conv1(x)), 2)
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)
        h = F.relu(self.conv3(h))
        return F.relu(self.fc1(h.flatten(1)))

    def forward(self, x: Tensor) -> Tensor:
        """Class logits [N, 10]."""
        return self.fc2(self.features(x))


def shipped_classifier_path() -> Path:
    """Path of the weights file that ships inside the package."""
    return Path(__file__).resolve().parent.parent / "assets" / "fmnist_classifier.safetensors"


def classifier_metadata(path: str | Path | None = None) -> dict[str, str]:
    """The metadata stored with the classifier weights (seed, epochs, test accuracy, ...)."""
    path = Path(path) if path is not None else shipped_classifier_path()
    if not path.is_file():
        raise FileNotFoundError(f"Fashion-MNIST classifier weights not found at {path}; "
                                "run scripts/train_fmnist_classifier.py to make them")
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def load_fmnist_classifier(path: str | Path | None = None, device: str | torch.device = "cpu") -> FMNISTClassifier:
    """The classifier in eval mode, with the shipped weights (or those at `path`)."""
    path = Path(path) if path is not None else shipped_classifier_path()
    if not path.is_file():
        raise FileNotFoundError(f"Fashion-MNIST classifier weights not found at {path}; "
                                "run scripts/train_fmnist_classifier.py to make them")
    model = FMNISTClassifier()
    model.load_state_dict(load_file(str(path)))
    return model.to(device).eval().requires_grad_(False)
