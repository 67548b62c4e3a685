"""Train the Fashion-MNIST classifier shipped as versadiff/assets/fmnist_classifier.safetensors.

    python scripts/train_fmnist_classifier.py [--data /usr/share/datasets/fashion-mnist] [--epochs 6]

The data come from the Debian package `dataset-fashion-mnist` (IDX files, gzip). Training is seeded
and runs on the CPU in a few minutes; the test accuracy is printed and stored in the file's metadata.
"""

from __future__ import annotations

import argparse
import gzip
import struct
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from versadiff.eval.classifier import FMNISTClassifier, shipped_classifier_path

DEFAULT_DATA = Path("/usr/share/datasets/fashion-mnist")


def read_idx_gz(path: Path) -> np.ndarray:
    """An IDX array (uint8 data) from a gzip file: magic 0x0000 0x08 ndim, big-endian dims, then bytes."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; install it with `apt-get install dataset-fashion-mnist` "
                                "or pass --data DIR holding the four *-ubyte.gz files")
    raw = gzip.decompress(path.read_bytes())
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path} is not a uint8 IDX file (magic {raw[:4].hex()})")
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_split(data: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images [N, 1, 28, 28] in [-1, 1] and labels [N] of the 'train' or 't10k' split."""
    x = read_idx_gz(data / f"{split}-images-idx3-ubyte.gz")
    y = read_idx_gz(data / f"{split}-labels-idx1-ubyte.gz")
    images = torch.from_numpy(x.copy()).float().div(127.5).sub(1.0).unsqueeze(1)
    return images, torch.from_numpy(y.copy()).long()


@torch.no_grad()
def accuracy(model: FMNISTClassifier, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    correct = sum(int((model(x[i:i + 1000]).argmax(1) == y[i:i + 1000]).sum()) for i in range(0, len(x), 1000))
    return correct / len(x)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=shipped_classifier_path())
    args = p.parse_args()

    torch.manual_seed(args.seed)
    xtr, ytr = load_split(args.data, "train")
    xte, yte = load_split(args.data, "t10k")
    model = FMNISTClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    steps = args.epochs * (len(xtr) // args.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps)
    gen = torch.Generator().manual_seed(args.seed)
    start = time.time()
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(xtr), generator=gen)
        for i in range(len(xtr) // args.batch_size):
            idx = perm[i * args.batch_size:(i + 1) * args.batch_size]
            x = xtr[idx]
            # random horizontal flips: the classes are left-right symmetric, so this is free augmentation
            flip = torch.rand(len(x), generator=gen) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            loss = F.cross_entropy(model(x), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        print(f"epoch {epoch + 1}/{args.epochs}: loss {loss.item():.3f}, "
              f"test accuracy {accuracy(model, xte, yte):.4f} ({time.time() - start:.0f} s)")

    test_acc = accuracy(model, xte, yte)
    meta = {"dataset": "Fashion-MNIST (dataset-fashion-mnist IDX files)", "test_accuracy": f"{test_acc:.4f}",
            "epochs": str(args.epochs), "seed": str(args.seed), "batch_size": str(args.batch_size),
            "lr": str(args.lr), "script": "scripts/train_fmnist_classifier.py", "torch": torch.__version__}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(args.out), metadata=meta)
    args.out.chmod(0o644)  # safetensors writes owner-only files; the asset ships to every user
    print(f"test accuracy {test_acc:.4f}; wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
