"""Corrupt files in the map-style image readers: skipped with a seeded replacement, counted, never fatal;
a folder of only broken images is a one-line DataExhaustedError at construction."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from versadiff.data import ImageFolderDataset, build_dataset
from versadiff.data.captions import caption_folder_dataset
from versadiff.data.celeba import celeba_dataset, write_celeba_attributes
from versadiff.data.classindex import class_index_dataset
from versadiff.data.skips import CorruptImageError, DataExhaustedError, load_image


def save(path: Path, value: int = 0, size=(12, 12)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.full((size[1], size[0], 3), value, np.uint8)
    Image.fromarray(a).save(path)


def png_bytes(value: int = 0) -> bytes:
    """A 12x12 noise PNG (about 500 bytes, so a cut lands inside the pixel data)."""
    import io

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(value).integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def break_files(root: Path) -> dict[str, str]:
    """Three kinds of bad files: JPEG header then garbage, a truncated PNG, text named .png."""
    bad = {"cat/broken.jpg": "jpeg", "dog/truncated.png": "truncated", "dog/text.png": "text"}
    (root / "cat").mkdir(parents=True, exist_ok=True)
    (root / "dog").mkdir(parents=True, exist_ok=True)
    (root / "cat/broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00garbage" * 20)
    (root / "dog/truncated.png").write_bytes(png_bytes(9)[:250])
    (root / "dog/text.png").write_text("not an image at all")
    return bad


def test_corrupt_images_are_replaced_counted_and_logged_once(tmp_path, caplog):
    for i in range(3):
        save(tmp_path / "cat" / f"c{i}.png", value=10 + i)
        save(tmp_path / "dog" / f"d{i}.png", value=100 + i)
    break_files(tmp_path)
    with caplog.at_level(logging.WARNING, logger="versadiff.data.skips"):
        ds = ImageFolderDataset(tmp_path, resolution=8)
        assert len(ds) == 9 and ds.class_names == ["cat", "dog"]
        items = [ds[i] for i in range(len(ds))] + [ds[i] for i in range(len(ds))]  # two passes
    assert all(it["image"].shape == (3, 8, 8) for it in items)
    assert ds.stats == {"samples": 18, "corrupt": 6, "unusable": 0}  # 3 bad files, asked for twice
    assert sorted(p.name for p in ds.bad_files) == ["broken.jpg", "text.png", "truncated.png"]
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 3 and all("skipping corrupt image" in w for w in warnings)
    assert any("broken.jpg" in w for w in warnings)

    # a replacement is a whole item: its label belongs to its image
    for i, path in enumerate(ds.files):
        value = int(round((float(ds[i]["image"][0, 0, 0]) + 1) * 127.5))
        assert ds[i]["label"] == (0 if value < 50 else 1)
    # deterministic: a fresh instance (no knowledge of the bad files) picks the same replacements
    bad = [i for i, p in enumerate(ds.files) if p in ds.bad_files]
    fresh = ImageFolderDataset(tmp_path, resolution=8)
    assert all(torch.equal(fresh[i]["image"], ds[i]["image"]) for i in reversed(bad))
    ds.set_epoch(1)  # and another epoch may pick others, but still deterministically
    fresh.set_epoch(1)
    assert all(torch.equal(fresh[i]["image"], ds[i]["image"]) for i in bad)


def test_dataloader_workers_never_crash_and_counts_reach_the_parent(tmp_path):
    for i in range(6):
        save(tmp_path / f"ok{i}.png", value=i)
    (tmp_path / "zz_bad.png").write_bytes(png_bytes()[:250])
    ds = build_dataset({"name": "image_folder", "root": str(tmp_path), "resolution": 8})
    batches = list(DataLoader(ds, batch_size=7, num_workers=2, sampler=list(range(7)) * 2))
    assert [b["image"].shape[0] for b in batches] == [7, 7]
    assert ds.stats["samples"] == 14 and ds.stats["corrupt"] == 2


def test_folder_of_only_corrupt_images_is_one_line_error(tmp_path):
    root = tmp_path / "bad"
    break_files(root)
    with pytest.raises(DataExhaustedError) as err:
        ImageFolderDataset(root, resolution=8)
    msg = str(err.value)
    assert "\n" not in msg and "all 3 images" in msg and "corrupt=3" in msg and "first error" in msg
    assert err.value.counts == {"corrupt": 3, "unusable": 0} and isinstance(err.value, ValueError)
    with pytest.raises(DataExhaustedError, match="corrupt=3"):
        build_dataset({"name": "image_folder", "root": str(root), "resolution": 8, "classes": "folders"})
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no images found"):
        ImageFolderDataset(empty, resolution=8)


def test_too_small_images_are_unusable_not_fatal(tmp_path):
    save(tmp_path / "big.png", size=(16, 16))
    save(tmp_path / "small.png", size=(4, 4))
    ds = ImageFolderDataset(tmp_path, resolution=8, transform={"resize": False})
    assert ds[1]["image"].shape == (3, 8, 8) and ds.stats["unusable"] == 1
    (tmp_path / "big.png").unlink()
    with pytest.raises(DataExhaustedError, match=r"unusable=1.*cannot crop 8x8 from a 4x4 image"):
        ImageFolderDataset(tmp_path, resolution=8, transform={"resize": False})


def test_list_readers_skip_corrupt_files(tmp_path):
    # caption folder
    cap = tmp_path / "cap"
    save(cap / "a.png", 1)
    (cap / "a.txt").write_text("a grey square")
    (cap / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (cap / "b.txt").write_text("never seen")
    ds = caption_folder_dataset(cap, resolution=8)
    assert [ds[i]["caption"] for i in range(2)] == ["a grey square"] * 2 and ds.stats["corrupt"] == 1
    # class-index folder
    ci = tmp_path / "ci"
    save(ci / "n01" / "x.JPEG", 5)
    (ci / "n02").mkdir()
    (ci / "n02" / "y.JPEG").write_bytes(b"\xff\xd8\xff" + bytes(100))
    (tmp_path / "index.json").write_text(json.dumps({"0": ["n01", "one"], "1": ["n02", "two"]}))
    ds = class_index_dataset(ci, tmp_path / "index.json", resolution=8)
    assert [ds[i]["label"] for i in range(2)] == [0, 0] and ds.stats["corrupt"] == 1
    # CelebA: a corrupt file and one too small for the 148x148 crop
    cel = tmp_path / "celeba"
    files = ["000001.jpg", "000002.jpg", "000003.jpg"]
    (cel / "img_align_celeba").mkdir(parents=True)
    write_celeba_attributes(cel / "list_attr_celeba.txt", ["Male"], files, np.array([[1], [1], [1]]))
    save(cel / "img_align_celeba" / files[0], 3, size=(178, 218))
    save(cel / "img_align_celeba" / files[1], 3, size=(40, 40))
    (cel / "img_align_celeba" / files[2]).write_bytes(b"garbage")
    ds = celeba_dataset(cel, resolution=8, split="all")
    tags = [ds[i]["tags"].tolist() for i in range(3)]
    assert tags == [[1.0]] * 3 and ds.stats == {"samples": 3, "corrupt": 1, "unusable": 1}


def test_load_image_names_the_file(tmp_path):
    save(tmp_path / "ok.png", 7)
    assert load_image(tmp_path / "ok.png").size == (12, 12)
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 nope")
    with pytest.raises(CorruptImageError, match=r"cannot read image '.*bad.jpg': UnidentifiedImageError") as err:
        load_image(tmp_path / "bad.jpg")
    assert err.value.path.name == "bad.jpg" and isinstance(err.value, ValueError)
    with pytest.raises(CorruptImageError, match="FileNotFoundError"):
        load_image(tmp_path / "gone.png")
