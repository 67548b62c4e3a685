"""ImageFolderDataset on tiny image folders written by the test."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from versadiff.data import ImageFolderDataset


def save(path: Path, mode: str = "RGB", value: int = 128, size: tuple[int, int] = (20, 12)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    rng = np.random.default_rng(value)
    a = rng.integers(0, 256, size=(size[1], size[0], channels), dtype=np.uint8)
    if mode == "RGBA":
        a[..., 3] = 255
    Image.fromarray(a[..., 0] if mode == "L" else a, mode=mode).save(path)


def test_flat_folder_mixed_formats_and_modes(tmp_path):
    save(tmp_path / "a.png", "RGBA", 1)
    save(tmp_path / "b.JPG", "RGB", 2)
    save(tmp_path / "c.bmp", "L", 3)
    save(tmp_path / "d.webp", "RGB", 4)
    (tmp_path / "notes.txt").write_text("not an image")
    ds = ImageFolderDataset(tmp_path, resolution=8)
    assert len(ds) == 4 and ds.num_classes == 0 and ds.class_names == []
    assert [p.name for p in ds.files] == ["a.png", "b.JPG", "c.bmp", "d.webp"]
    for i in range(4):
        item = ds[i]
        assert set(item) == {"image"}
        assert item["image"].shape == (3, 8, 8) and item["image"].dtype == torch.float32
        assert -1 <= item["image"].min() and item["image"].max() <= 1
    grey = ds[2]["image"]
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])
    assert ImageFolderDataset(tmp_path, resolution=8, channels=1)[0]["image"].shape == (1, 8, 8)


def test_class_subfolders_are_sorted_and_searched_recursively(tmp_path):
    save(tmp_path / "zebra" / "z1.png")
    save(tmp_path / "ant" / "deep" / "nested" / "a1.png")
    save(tmp_path / "ant" / "a2.jpeg")
    save(tmp_path / "moth" / "m1.png")
    ds = ImageFolderDataset(tmp_path, resolution=8)
    assert ds.class_names == ["ant", "moth", "zebra"] and ds.num_classes == 3
    labels = {p.name: ds[i]["label"] for i, p in enumerate(ds.files)}
    assert labels == {"a1.png": 0, "a2.jpeg": 0, "m1.png": 1, "z1.png": 2}
    assert len(ImageFolderDataset(tmp_path, resolution=8, classes="none")) == 4


def test_captions_from_sidecar_files(tmp_path):
    save(tmp_path / "x.png")
    (tmp_path / "x.txt").write_text("a red circle\n")
    assert ImageFolderDataset(tmp_path, resolution=8, captions=True)[0]["caption"] == "a red circle"
    save(tmp_path / "y.png")
    with pytest.raises(FileNotFoundError, match="y.txt"):
        ImageFolderDataset(tmp_path, resolution=8, captions=True)


def test_augmentations_follow_seed_and_epoch(tmp_path):
    for i in range(6):
        save(tmp_path / f"{i}.png", value=i, size=(24, 24))
    cfg = {"crop": "random", "hflip": 0.5, "resize": False}
    a = ImageFolderDataset(tmp_path, resolution=12, transform=cfg, seed=5)
    b = ImageFolderDataset(tmp_path, resolution=12, transform=cfg, seed=5)
    a.set_epoch(3)
    b.set_epoch(3)
    first = [a[i]["image"] for i in range(6)]
    assert all(torch.equal(b[i]["image"], first[i]) for i in reversed(range(6)))  # fresh instance, other order
    a.set_epoch(4)
    assert any(not torch.equal(a[i]["image"], first[i]) for i in range(6))


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageFolderDataset(tmp_path / "missing", resolution=8)
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "readme.md").write_text("x")
    with pytest.raises(FileNotFoundError, match=r"no images found .*\.png, \.jpg, \.jpeg, \.webp, \.bmp"):
        ImageFolderDataset(tmp_path / "empty", resolution=8)
    save(tmp_path / "mixed" / "loose.png")
    save(tmp_path / "mixed" / "cls" / "x.png")
    with pytest.raises(ValueError, match="both loose images and class sub-folders"):
        ImageFolderDataset(tmp_path / "mixed", resolution=8)
    assert len(ImageFolderDataset(tmp_path / "mixed", resolution=8, classes="folders")) == 1
    with pytest.raises(ValueError, match="classes must be one of"):
        ImageFolderDataset(tmp_path / "mixed", resolution=8, classes="yes")
    with pytest.raises(IndexError):
        ImageFolderDataset(tmp_path / "mixed", resolution=8, classes="none")[5]
