"""IDX reading (raw, gzip, damaged) and the MNIST / Fashion-MNIST dataset on tiny files."""

import gzip

import numpy as np
import pytest
import torch

from versadiff.data import FASHION_MNIST_CLASSES, MNISTDataset, build_dataset, find_fashion_mnist, read_idx, write_idx
from versadiff.data import idx as idx_module


def tiny_mnist(folder, n=6, size=28, names=("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")):
    rng = np.random.default_rng(n)
    images = rng.integers(0, 256, size=(n, size, size), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    write_idx(folder / names[0], images)
    write_idx(folder / names[1], labels)
    return images, labels


@pytest.mark.parametrize("name", ["a.idx", "a.idx.gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32, np.float32, np.float64])
def test_idx_round_trip(tmp_path, name, dtype):
    a = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype) if dtype != np.uint8 else np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / name, a)
    back = read_idx(tmp_path / name)
    assert back.dtype == a.dtype and back.shape == a.shape and np.array_equal(back, a)
    assert (tmp_path / name).read_bytes()[:2] == (b"\x1f\x8b" if name.endswith(".gz") else b"\x00\x00")


def test_idx_header_layout_is_the_published_one(tmp_path):
    # MNIST label files start with magic 0x00000801 followed by the count, big-endian.
    write_idx(tmp_path / "l.idx", np.array([7, 2, 1], dtype=np.uint8))
    assert (tmp_path / "l.idx").read_bytes() == bytes.fromhex("00000801 00000003 070201")


def test_idx_damaged_files_raise_one_line_errors(tmp_path):
    (tmp_path / "magic.idx").write_bytes(bytes.fromhex("08030000") + bytes(16))
    with pytest.raises(ValueError, match="bad magic 08030000"):
        read_idx(tmp_path / "magic.idx")
    (tmp_path / "magic.gz").write_bytes(gzip.compress(b"PK\x03\x04 zipfile"))
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "magic.gz")
    (tmp_path / "dtype.idx").write_bytes(bytes.fromhex("00000a01 00000001 00"))
    with pytest.raises(ValueError, match="unknown IDX dtype code 0x0a"):
        read_idx(tmp_path / "dtype.idx")
    (tmp_path / "short.idx").write_bytes(bytes.fromhex("00000802 00000002 00000002 010203"))
    with pytest.raises(ValueError, match="holds 3 data bytes but its header \\(2, 2\\) needs 4"):
        read_idx(tmp_path / "short.idx")
    (tmp_path / "bad.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(ValueError, match="cannot be decompressed"):
        read_idx(tmp_path / "bad.gz")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_idx(tmp_path / "nope.idx")


def test_mnist_dataset_pad_resize_channels(tmp_path):
    images, labels = tiny_mnist(tmp_path)
    ds = MNISTDataset(tmp_path)
    assert len(ds) == 6 and ds.resolution == 28 and ds.num_classes == 10 and ds.class_names[3] == "3"
    item = ds[4]
    assert item["label"] == 4 and item["image"].shape == (1, 28, 28)
    assert torch.equal(item["image"][0], torch.from_numpy(images[4]).float() / 127.5 - 1)
    padded = MNISTDataset(tmp_path, resolution=32, channels=3)[4]["image"]
    assert padded.shape == (3, 32, 32)
    assert torch.equal(padded[:, 2:30, 2:30], item["image"].expand(3, -1, -1))
    assert (padded[:, :2] == -1).all() and (padded[:, :, 30:] == -1).all()
    resized = MNISTDataset(tmp_path, resolution=16, resize="resize")[4]["image"]
    assert resized.shape == (1, 16, 16) and -1 <= resized.min() and resized.max() <= 1
    with pytest.raises(ValueError, match="cannot pad 28x28 images down to 16"):
        MNISTDataset(tmp_path, resolution=16)


def test_mnist_split_names_and_file_pairs(tmp_path):
    tiny_mnist(tmp_path, n=3, names=("t10k-images.idx3-ubyte", "t10k-labels.idx1-ubyte"))
    assert len(MNISTDataset(tmp_path, split="test")) == 3
    with pytest.raises(FileNotFoundError, match="no train images file"):
        MNISTDataset(tmp_path, split="train")
    with pytest.raises(ValueError, match="split must be one of"):
        MNISTDataset(tmp_path, split="val")
    pair = (tmp_path / "t10k-images.idx3-ubyte", tmp_path / "t10k-labels.idx1-ubyte")
    assert len(MNISTDataset(pair)) == 3
    with pytest.raises(ValueError, match="pair the right files"):
        MNISTDataset((pair[0], pair[0]))


def test_hflip_is_seeded_per_item_and_epoch(tmp_path):
    tiny_mnist(tmp_path, n=8)
    a, b = MNISTDataset(tmp_path, hflip=0.5, seed=1), MNISTDataset(tmp_path, hflip=0.5, seed=1)
    plain = MNISTDataset(tmp_path)
    flips = [not torch.equal(a[i]["image"], plain[i]["image"]) for i in range(8)]
    assert 0 < sum(flips) < 8
    assert all(torch.equal(a[i]["image"], b[i]["image"]) for i in reversed(range(8)))
    for i in range(8):
        assert torch.equal(a[i]["image"], plain[i]["image"].flip(-1) if flips[i] else plain[i]["image"])
    a.set_epoch(1)
    assert [not torch.equal(a[i]["image"], plain[i]["image"]) for i in range(8)] != flips


def test_find_fashion_mnist_uses_env_then_reports_apt(tmp_path, monkeypatch):
    monkeypatch.setattr(idx_module, "FASHION_MNIST_APT_DIR", tmp_path / "no-such-dir")
    monkeypatch.delenv("VERSADIFF_DATA", raising=False)
    assert find_fashion_mnist() is None
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        build_dataset({"name": "fashion_mnist"})
    tiny_mnist(tmp_path / "data" / "fashion-mnist", n=4)
    monkeypatch.setenv("VERSADIFF_DATA", str(tmp_path / "data"))
    assert find_fashion_mnist() == tmp_path / "data" / "fashion-mnist"
    ds = build_dataset({"name": "fashion_mnist", "root": None, "split": "train", "resolution": 32})
    assert len(ds) == 4 and ds.class_names == FASHION_MNIST_CLASSES and ds[3]["image"].shape == (1, 32, 32)
    assert ds.class_names[ds[3]["label"]] == "Dress"
