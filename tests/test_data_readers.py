"""Readers for CIFAR, CelebA, class-index folders, captioned pairs and sklearn digits, on tiny real-format files."""

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from versadiff.data import build_dataset
from versadiff.data.captions import caption_folder_dataset, coco_captions_dataset, cub_captions_dataset
from versadiff.data.celeba import CELEBA_CROP, celeba_dataset, read_celeba_attributes, write_celeba_attributes
from versadiff.data.cifar import CIFARDataset, safe_load_pickle, write_cifar
from versadiff.data.classindex import class_index_dataset, read_class_index
from versadiff.data.digits import DigitsDataset


def save(path: Path, size=(20, 12), value: int = 0) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.random.default_rng(value).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(a).save(path)
    return a


# ---- CIFAR ---------------------------------------------------------------------------------
def test_cifar10_pixels_labels_and_names(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 256, size=(5, 32, 32, 3), dtype=np.uint8)
    names = ["airplane", "automobile", "bird"]
    write_cifar(tmp_path, imgs, [2, 0, 1, 1, 2], names)
    write_cifar(tmp_path, imgs[:2], [0, 1], names, split="test")
    ds = CIFARDataset(tmp_path)
    assert len(ds) == 5 and ds.class_names == names and ds.num_classes == 3
    item = ds[3]
    assert item["label"] == 1 and item["image"].shape == (3, 32, 32)
    # the batch stores 1024 red, then green, then blue values per image, each row-major
    expected = torch.from_numpy(imgs[3].transpose(2, 0, 1).astype(np.float32)) / 127.5 - 1
    assert torch.allclose(item["image"], expected)
    assert len(CIFARDataset(tmp_path, split="test")) == 2
    assert CIFARDataset(tmp_path, resolution=16)[0]["image"].shape == (3, 16, 16)
    flip = CIFARDataset(tmp_path, hflip=1.0)[3]["image"]
    assert torch.equal(flip, expected.flip(-1))


def test_cifar100_fine_and_coarse(tmp_path):
    imgs = np.zeros((3, 32, 32, 3), np.uint8)
    fine = [f"class{i}" for i in range(100)]
    write_cifar(tmp_path, imgs, [5, 99, 0], fine, variant="cifar100", coarse_labels=np.array([1, 19, 0]))
    ds = CIFARDataset(tmp_path, variant="cifar100")
    assert ds.num_classes == 100 and [ds[i]["label"] for i in range(3)] == [5, 99, 0]
    coarse = CIFARDataset(tmp_path, variant="cifar100", labels="coarse")
    assert coarse.num_classes == 20 and [coarse[i]["label"] for i in range(3)] == [1, 19, 0]


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_safe_unpickler_refuses_code(tmp_path, capsys):
    path = tmp_path / "data_batch_1"
    with path.open("wb") as f:
        pickle.dump({b"data": _Evil()}, f, protocol=2)
    with pytest.raises(ValueError, match=r"refusing to load global (__builtin__|builtins)\.print"):
        safe_load_pickle(path)
    assert "pwned" not in capsys.readouterr().out


def test_cifar_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"cifar10 files .*data_batch_1"):
        CIFARDataset(tmp_path)
    (tmp_path / "cifar-10-batches-py").mkdir()
    with pytest.raises(FileNotFoundError, match="point root there"):
        CIFARDataset(tmp_path)
    with pytest.raises(ValueError, match="labels must be 'fine'"):
        CIFARDataset(tmp_path, labels="coarse")


# ---- CelebA --------------------------------------------------------------------------------
ATTRS = ["Black_Hair", "Blond_Hair", "Smiling", "Male"]


def test_celeba_tags_labels_split_and_crop(tmp_path):
    (tmp_path / "img_align_celeba").mkdir()
    files = [f"{i:06d}.jpg" for i in range(1, 5)]
    values = np.array([[1, 0, 1, 0], [0, 1, 0, 1], [1, 1, 0, 0], [0, 0, 0, 0]])
    write_celeba_attributes(tmp_path / "list_attr_celeba.txt", ATTRS, files, values)
    (tmp_path / "list_eval_partition.txt").write_text("".join(f"{f} {s}\n" for f, s in zip(files, [0, 0, 0, 2])))
    pixels = []
    for i, f in enumerate(files):
        a = np.random.default_rng(i).integers(0, 256, size=(218, 178, 3), dtype=np.uint8)
        # PNG bytes under the official .jpg names: PIL reads them by content, and the pixel check stays exact.
        Image.fromarray(a).save(tmp_path / "img_align_celeba" / f, format="PNG")
        pixels.append(a)
    names, listed, parsed = read_celeba_attributes(tmp_path / "list_attr_celeba.txt")
    assert names == ATTRS and listed == files and np.array_equal(parsed, values)

    ds = celeba_dataset(tmp_path, resolution=148, label_attributes=["Black_Hair", "Blond_Hair"])
    assert len(ds) == 3 and ds.class_names == ["Black_Hair", "Blond_Hair"]
    item = ds[1]
    assert item["tags"].dtype == torch.float32 and item["tags"].tolist() == [0, 1, 0, 1]
    assert [ds[i]["label"] for i in range(3)] == [0, 1, -1]  # two hair colours active -> null class
    top, left, h, w = CELEBA_CROP
    crop = pixels[1][top : top + h, left : left + w].transpose(2, 0, 1).astype(np.float32) / 127.5 - 1
    assert torch.allclose(item["image"], torch.from_numpy(crop))

    test = celeba_dataset(tmp_path, resolution=16, split="test", attributes=["Male", "Smiling"], crop="center")
    assert len(test) == 1 and test.tag_names == ["Male", "Smiling"] and test[0]["image"].shape == (3, 16, 16)
    assert "label" not in test[0]
    assert len(build_dataset({"name": "celeba", "root": str(tmp_path), "resolution": 8, "split": "all"})) == 4
    with pytest.raises(ValueError, match=r"unknown CelebA attributes \['Bald'\]"):
        celeba_dataset(tmp_path, attributes=["Bald"])
    (tmp_path / "list_eval_partition.txt").unlink()
    with pytest.raises(FileNotFoundError, match="list_eval_partition.txt'; add it or use split='all'"):
        celeba_dataset(tmp_path)


# ---- class-index folders -------------------------------------------------------------------
def test_class_index_folder_json_and_txt(tmp_path):
    save(tmp_path / "train" / "n02" / "a.JPEG", value=1)
    save(tmp_path / "train" / "n02" / "b.JPEG", value=2)
    save(tmp_path / "train" / "n00" / "c.JPEG", value=3)
    index = {"0": ["n00", "tench"], "1": ["n01", "goldfish"], "2": ["n02", "shark"]}
    (tmp_path / "index.json").write_text(json.dumps(index))
    ds = class_index_dataset(tmp_path / "train", tmp_path / "index.json", resolution=8)
    assert ds.class_names == ["tench", "goldfish", "shark"] and ds.num_classes == 3
    assert sorted((p.name, ds[i]["label"]) for i, p in enumerate(ds.files)) == [("a.JPEG", 2), ("b.JPEG", 2), ("c.JPEG", 0)]
    (tmp_path / "synsets.txt").write_text("n02 shark, great white\nn00 tench\n")
    assert read_class_index(tmp_path / "synsets.txt") == (["n02", "n00"], ["shark, great white", "tench"])
    ds2 = class_index_dataset(tmp_path / "train", tmp_path / "synsets.txt", resolution=8)
    assert sorted(ds2[i]["label"] for i in range(3)) == [0, 0, 1]
    (tmp_path / "small.json").write_text(json.dumps({"0": ["n00", "tench"]}))
    with pytest.raises(ValueError, match=r"folders \['n02'\] .* are not in the class index"):
        class_index_dataset(tmp_path / "train", tmp_path / "small.json", resolution=8)


# ---- captions ------------------------------------------------------------------------------
def test_coco_captions_one_per_epoch_from_seed(tmp_path):
    save(tmp_path / "train2017" / "000000000009.jpg", value=1)
    save(tmp_path / "train2017" / "000000000025.jpg", value=2)
    save(tmp_path / "train2017" / "000000000030.jpg", value=3)
    caps = [f"a giraffe number {k}" for k in range(5)]
    ann = {
        "images": [{"id": 25, "file_name": "000000000025.jpg"}, {"id": 9, "file_name": "000000000009.jpg"},
                   {"id": 30, "file_name": "000000000030.jpg"}],
        "annotations": [{"id": k, "image_id": 25, "caption": c} for k, c in enumerate(caps)]
        + [{"id": 99, "image_id": 9, "caption": "a plate of food "}],
    }
    (tmp_path / "captions_train2017.json").write_text(json.dumps(ann))
    ds = coco_captions_dataset(tmp_path / "captions_train2017.json", tmp_path / "train2017", resolution=8)
    assert len(ds) == 2 and ds.uncaptioned == 1 and [p.name for p in ds.files] == ["000000000009.jpg", "000000000025.jpg"]
    assert ds[0]["caption"] == "a plate of food"
    seen = set()
    for epoch in range(12):
        ds.set_epoch(epoch)
        seen.add(ds[1]["caption"])
        again = coco_captions_dataset(tmp_path / "captions_train2017.json", tmp_path / "train2017", resolution=8)
        again.set_epoch(epoch)
        assert again[1]["caption"] == ds[1]["caption"]  # resumable: same epoch, same caption
    assert seen <= set(caps) and len(seen) >= 3


def test_cub_and_caption_folder(tmp_path):
    root = tmp_path / "cub"
    save(root / "images" / "002.Laysan_Albatross" / "L_1.jpg", value=1)
    save(root / "images" / "001.Black_footed_Albatross" / "B_1.jpg", value=2)
    (root / "text" / "002.Laysan_Albatross").mkdir(parents=True)
    (root / "text" / "001.Black_footed_Albatross").mkdir(parents=True)
    (root / "text" / "002.Laysan_Albatross" / "L_1.txt").write_text("white bird\n\nlong wings\n")
    (root / "text" / "001.Black_footed_Albatross" / "B_1.txt").write_text("dark bird\n")
    ds = cub_captions_dataset(root, resolution=8)
    assert ds.class_names == ["Black_footed_Albatross", "Laysan_Albatross"]
    assert ds[0] | {"image": None} == {"image": None, "label": 0, "caption": "dark bird"}
    assert ds.captions[1] == ["white bird", "long wings"]
    (root / "text" / "001.Black_footed_Albatross" / "B_1.txt").unlink()
    with pytest.raises(FileNotFoundError, match="B_1.txt"):
        cub_captions_dataset(root, resolution=8)

    flat = tmp_path / "flat"
    save(flat / "x.png")
    (flat / "x.txt").write_text("one\ntwo\n")
    fds = build_dataset({"name": "caption_folder", "root": str(flat), "resolution": 8})
    assert fds[0]["caption"] in {"one", "two"} and fds.captions == [["one", "two"]]
    (flat / "x.txt").write_text("\n")
    with pytest.raises(ValueError, match="1 images have no caption"):
        caption_folder_dataset(flat, resolution=8)


# ---- digits --------------------------------------------------------------------------------
def test_sklearn_digits():
    from sklearn.datasets import load_digits

    raw = load_digits()
    ds = DigitsDataset()
    assert len(ds) == 1797 and ds.num_classes == 10
    item = ds[5]
    assert item["label"] == raw.target[5] and item["image"].shape == (1, 8, 8)
    assert torch.allclose(item["image"][0], torch.from_numpy(raw.images[5] / 8.0 - 1.0).float())
    big = DigitsDataset(resolution=32, channels=3, split="train")
    assert len(big) == 1500 and big[5]["image"].shape == (3, 32, 32)
    assert torch.equal(big[5]["image"][0, ::4, ::4], item["image"][0])  # nearest keeps each pixel as a 4x4 block
    assert len(build_dataset({"name": "digits", "split": "test", "resolution": 16, "upsample": "bilinear"})) == 297
    with pytest.raises(ValueError, match="multiple of 8"):
        DigitsDataset(resolution=12)
