"""Sample grids with class / prompt captions (versadiff.images): where captions go (per column, per row, once,
per image), that images stay pixel-exact inside a labelled grid, and the captions in `versadiff sample`,
`versadiff generate`, the class demo and the training grids (each with a way to turn them off)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from versadiff.cli import main
from versadiff.images import label_layout, make_grid, save_grid, to_uint8


def _batch(n: int, h: int = 8, w: int = 8, c: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, h, w, generator=g) * 2 - 1


def _ink(region: np.ndarray) -> int:
    """Pixels darker than mid-grey (caption text on the white strip)."""
    return int((region.reshape(-1, region.shape[-1]).min(axis=1) < 128).sum())


@pytest.mark.parametrize("labels, nrow, kind, caps", [
    (["a", "b", "c", "a", "b", "c"], 3, "column", ["a", "b", "c"]),
    (["x", "x", "y", "y"], 2, "row", ["x", "y"]),
    (["same"] * 5, 3, "all", ["same"]),
    (["p", "q", "r"], 3, "cell", ["p", "q", "r"]),  # one row: each image its own caption
    (["a", "b", "b", "a"], 2, "cell", ["a", "b", "b", "a"]),
])
def test_label_layout(labels, nrow, kind, caps):
    assert label_layout(labels, nrow) == (kind, caps)


def test_unlabelled_grid_is_the_plain_mosaic():
    images = _batch(5)
    g = make_grid(images, nrow=3, padding=2)
    assert g.shape == (2 * 10 + 2, 3 * 10 + 2, 3) and g.dtype == np.uint8
    arr = to_uint8(images)
    assert np.array_equal(g[2:10, 2:10], arr[0]) and np.array_equal(g[12:20, 12:20], arr[4])
    assert (g[:2] == 255).all() and (g[12:20, 22:30] == 255).all()  # white padding and the empty cell


def test_column_captions_sit_under_the_grid_and_keep_the_pixels():
    images = _batch(6)
    labels = ["red circle", "green square", "blue triangle"] * 2
    g = make_grid(images, nrow=3, labels=labels)  # 8 px images: enlarged x8 to 64 px cells
    scale, cell = 8, 64 + 2
    arr = to_uint8(images)
    big = arr.repeat(scale, axis=1).repeat(scale, axis=2)
    assert np.array_equal(g[2:66, 2:66], big[0])
    assert np.array_equal(g[2 + cell:2 + cell + 64, 2 + 2 * cell:2 + 2 * cell + 64], big[5])
    mosaic_h = 2 * cell + 2
    assert g.shape[0] > mosaic_h and g.shape[1] == 3 * cell + 2
    strip = g[mosaic_h:]
    for q in range(3):  # text under every column
        assert _ink(strip[:, 2 + q * cell:2 + q * cell + 64]) > 10, q
    assert _ink(g[:mosaic_h]) == _ink(make_grid(images, nrow=3, scale=8))  # no text drawn over the images


def test_row_captions_go_left_and_cell_captions_under_each_image():
    images = _batch(4, h=64, w=64)
    rows = make_grid(images, nrow=2, labels=["cat", "cat", "dog", "dog"])
    plain = make_grid(images, nrow=2)
    assert rows.shape[0] == plain.shape[0] and rows.shape[1] > plain.shape[1]
    margin = rows.shape[1] - plain.shape[1]
    assert np.array_equal(rows[:, margin:], plain) and _ink(rows[:, :margin]) > 10
    cells = make_grid(images, nrow=2, labels=["a b", "c", "d", "e f g"])
    assert cells.shape[1] == plain.shape[1] and cells.shape[0] > plain.shape[0]


def test_grid_argument_errors():
    with pytest.raises(ValueError, match="got 2 labels for 3 images"):
        make_grid(_batch(3), labels=["a", "b"])
    with pytest.raises(ValueError, match="scale must be an integer >= 1"):
        make_grid(_batch(3), scale=0)
    g = make_grid(_batch(2, c=1), labels=["one", "two"])  # grey images keep one channel
    assert g.ndim == 3 and g.shape[-1] == 1


def test_long_prompts_wrap_and_are_cut(tmp_path):
    long = "a very long prompt " * 20
    path = save_grid(_batch(2, h=64, w=64), tmp_path / "g.png", nrow=2, labels=[long, "short"])
    with Image.open(path) as im:
        assert im.height < 64 + 2 * 2 + 3 * 20 + 10  # at most 3 caption lines


def _read(path):
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def test_sample_grid_names_the_classes_unless_no_labels(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    common = ["shapes-unet", "-n", "3", "--steps", "2", "--quiet"]
    assert main(["sample", *common, "-o", str(a)]) == 0
    assert main(["sample", *common, "-o", str(b), "--no-labels"]) == 0
    files = sorted(p for p in a.glob("seed*.png"))
    images = torch.stack([torch.from_numpy(_read(p).copy()).permute(2, 0, 1).float() / 127.5 - 1 for p in files])
    settings = json.loads((a / "settings.json").read_text())
    names = [r["class_name"] for r in settings["images"]]
    assert names[:2] == ["red circle", "red square"]
    assert np.array_equal(_read(b / "grid.png"), make_grid(images, nrow=18))
    assert np.array_equal(_read(a / "grid.png"), make_grid(images, nrow=18, labels=names))


def test_generate_grid_carries_the_prompt(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    common = ["vd-shapes", "--task", "text-to-image", "--prompt", "a big red circle", "-n", "2", "--steps", "2",
              "--quiet"]
    assert main(["generate", *common, "-o", str(a)]) == 0
    assert main(["generate", *common, "-o", str(b), "--no-labels"]) == 0
    la, lb = _read(a / "grid.png"), _read(b / "grid.png")
    assert la.shape[0] > lb.shape[0]  # the caption strip
    assert _ink(la[-20:]) > 10


def test_class_demo_grid_labels(tmp_path):
    from versadiff.cli import demo_asset_path
    from versadiff.demo import run_class_demo

    for labels in (True, False):
        run_class_demo(tmp_path / str(labels), demo_asset_path(), per_class=1, steps=2, quiet=True, labels=labels)
    on, off = _read(tmp_path / "True" / "demo_grid.png"), _read(tmp_path / "False" / "demo_grid.png")
    assert off.shape == (32 + 4, 18 * 34 + 2, 3)  # the plain mosaic
    assert on.shape[0] > 2 * 32 and on.shape[1] == 18 * 66 + 2  # enlarged x2 with captions


def test_training_grid_names_the_classes_unless_sample_labels_false(tmp_path):
    from versadiff.config import load_config
    from versadiff.train.trainer import Trainer

    tiny = ["model.base_channels=16", "model.norm_groups=8", "model.channel_mult=[1, 2]", "model.num_res_blocks=1",
            "model.attention_resolutions=[16]", "model.emb_channels=32", "data.size=8", "train.batch_size=4",
            "train.mixed_precision=no", "sample.n=36", "sample.steps=1", "sample.guidance=0", "train.log_with=none"]
    grids = {}
    for on in (True, False):
        trainer = Trainer(load_config("shapes_unet_tiny", tiny + [f"sample.labels={str(on).lower()}"]),
                          out=tmp_path / str(on), quiet=True)
        grids[on] = _read(trainer.save_samples())
    assert grids[False].shape == (2 * 34 + 2, 18 * 34 + 2, 3)  # 36 samples: 2 rows of the 18 classes
    assert grids[True].shape[1] == 18 * 66 + 2 and grids[True].shape[0] > 2 * 66 + 2  # x2, a caption per column
    assert _ink(grids[True][2 * 66 + 2:]) > 100
