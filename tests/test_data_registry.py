"""build_dataset from config dicts, and its errors."""

import numpy as np
import pytest
from PIL import Image

from versadiff.data import DATASETS, ImageFolderDataset, MNISTDataset, ShapesDataset, build_dataset, write_idx


def test_builds_each_kind(tmp_path):
    ds = build_dataset({"name": "shapes", "size": 20, "seed": 0, "num_shapes": 1})
    assert isinstance(ds, ShapesDataset) and len(ds) == 20
    (tmp_path / "img" / "a").mkdir(parents=True)
    Image.fromarray(np.zeros((9, 9, 3), np.uint8)).save(tmp_path / "img" / "a" / "x.png")
    folder = build_dataset({"name": "image_folder", "root": str(tmp_path / "img"), "resolution": 8, "transform": {"hflip": 0.5}})
    assert isinstance(folder, ImageFolderDataset) and folder[0]["image"].shape == (3, 8, 8) and folder.num_classes == 1
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((2, 28, 28), np.uint8))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.array([3, 9], np.uint8))
    mnist = build_dataset({"name": "mnist", "root": str(tmp_path), "resolution": 32, "channels": 3})
    assert isinstance(mnist, MNISTDataset) and mnist[1]["label"] == 9 and mnist[1]["image"].shape == (3, 32, 32)
    assert mnist.class_names[9] == "9"
    assert {"fashion_mnist", "image_folder", "mnist", "shapes"} <= set(DATASETS)


def test_config_errors_list_valid_choices():
    with pytest.raises(ValueError, match=r"unknown dataset 'cifar'; valid names are \[.*'cifar10', .*'shapes'"):
        build_dataset({"name": "cifar"})
    with pytest.raises(ValueError, match=r"unknown keys \['sise'\] for dataset 'shapes'; valid keys are \['num_shapes', 'resolution', 'seed', 'size'\]"):
        build_dataset({"name": "shapes", "sise": 3})
    with pytest.raises(ValueError, match=r"needs the keys \['root', 'resolution'\]"):
        build_dataset({"name": "image_folder"})
    with pytest.raises(ValueError, match="dataset 'mnist' reads local files: set its root"):
        build_dataset({"name": "mnist", "root": None, "split": "train"})
    with pytest.raises(ValueError, match="'name' key"):
        build_dataset({"size": 3})
