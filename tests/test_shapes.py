"""The procedural shapes dataset: determinism, labels, captions and pixels."""

import re

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from versadiff.data import COLORS, POSITIONS, SHAPES, SIZES, ShapesDataset
from versadiff.data.shapes import COLOR_RGB, POSITION_PHRASES


def test_items_are_pure_functions_of_seed_and_index():
    a, b = ShapesDataset(size=50, seed=7, num_shapes="1-2"), ShapesDataset(size=50, seed=7, num_shapes="1-2")
    forward = [a[i] for i in range(20)]
    backward = [b[i] for i in reversed(range(20))][::-1]
    for x, y in zip(forward, backward):
        assert torch.equal(x["image"], y["image"]) and x["label"] == y["label"] and x["caption"] == y["caption"]
    assert torch.equal(a.render(list(range(20))), torch.stack([x["image"] for x in forward]))
    assert torch.equal(a[-1]["image"], a[49]["image"])
    other = ShapesDataset(size=50, seed=8, num_shapes="1-2")
    assert sum(torch.equal(other[i]["image"], forward[i]["image"]) for i in range(20)) < 3
    # The size of the dataset does not change its items.
    assert torch.equal(ShapesDataset(size=5000, seed=7, num_shapes="1-2")[3]["image"], forward[3]["image"])


def test_item_format_and_dataset_attributes():
    ds = ShapesDataset(size=10)
    item = ds[0]
    assert set(item) == {"image", "label", "caption"}
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert item["image"].min() == -1 and item["image"].max() == 1  # black background, saturated colour
    assert ds.num_classes == 18 and len(ds.class_names) == 18 and ds.channels == 3 and ds.resolution == 32
    assert ds.class_names[0] == "red circle" and ds.class_names[17] == "cyan triangle"
    assert ShapesDataset(size=2, resolution=64)[1]["image"].shape == (3, 64, 64)


@pytest.mark.parametrize("num_shapes", [1, 2])
def test_labels_and_captions_agree_with_ground_truth(num_shapes):
    ds = ShapesDataset(size=300, seed=1, num_shapes=num_shapes)
    templates, sizes_seen = set(), set()
    for i in range(150):
        d, item = ds.describe(i), ds[i]
        shapes = d["shapes"]
        assert d["num_shapes"] == num_shapes == len(shapes)
        left = shapes[0]
        assert item["label"] == d["label"] == COLORS.index(left["color"]) * 3 + SHAPES.index(left["shape"])
        assert ds.class_names[item["label"]] == f"{left['color']} {left['shape']}"
        cap = item["caption"]
        assert cap == d["caption"]
        for sp in shapes:
            assert f"{sp['color']} {sp['shape']}" in cap
            sizes_seen.add(sp["size"])
        # Only colours, shapes and sizes of the drawn shapes may be named.
        words = set(re.findall(r"[a-z]+", cap))
        assert words & set(COLORS) == {sp["color"] for sp in shapes}
        assert words & set(SIZES) <= {sp["size"] for sp in shapes}
        if num_shapes == 1:
            named = [p for p in POSITION_PHRASES.values() if p in cap]
            assert named in ([], [POSITION_PHRASES[left["position"]]]), cap
        else:
            a, b = shapes
            assert a["center"][0] < b["center"][0] and a["color"] != b["color"]
            assert a["position"].endswith("left") and b["position"].endswith("right")
            if "left" in cap:  # "X on the left ...", "X to the left of Y" or "... Y on the left"
                assert re.search(rf"{a['color']} {a['shape']} (on|to) the left|{b['color']} {b['shape']} to the right", cap)
        templates.add(re.sub(r"\b(" + "|".join(COLORS + SHAPES + SIZES + POSITIONS) + r")\b", "_", cap))
    assert sizes_seen == set(SIZES)
    assert len(templates) >= 4  # several phrasings are in use


def test_pixels_match_the_described_shapes():
    ds = ShapesDataset(size=100, seed=2)
    for i in range(40):
        d, img = ds.describe(i)["shapes"][0], ds[i]["image"]
        cx, cy = d["center"]
        rgb = torch.from_numpy(COLOR_RGB[COLORS.index(d["color"])]) * 2 - 1
        # Circle, square and triangle all cover the pixel just below the box centre.
        assert torch.equal(img[:, int(cy + 1), int(cx)], rgb)
        lit = (img > 0).any(0)
        area = lit.sum().item()
        r = d["radius"]
        expected = {"circle": np.pi * r * r, "square": 4 * r * r, "triangle": 2 * r * r}[d["shape"]]
        assert abs(area - expected) < 0.15 * expected + 4
        ys, xs = torch.nonzero(lit, as_tuple=True)
        assert abs((xs.min() + xs.max() + 1) / 2 - cx) <= 1 and abs((ys.min() + ys.max() + 1) / 2 - cy) <= 1


def test_num_shapes_mix_and_dataloader_batches():
    ds = ShapesDataset(size=64, seed=3, num_shapes="1-2")
    counts = {ds.describe(i)["num_shapes"] for i in range(30)}
    assert counts == {1, 2}
    batch = next(iter(DataLoader(ds, batch_size=8, shuffle=False)))
    assert batch["image"].shape == (8, 3, 32, 32) and batch["label"].tolist() == [ds[i]["label"] for i in range(8)]
    assert batch["caption"] == [ds[i]["caption"] for i in range(8)]


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_shapes must be 1, 2 or '1-2'"):
        ShapesDataset(num_shapes=3)
    with pytest.raises(ValueError, match="resolution must be an int >= 16"):
        ShapesDataset(resolution=8)
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        ShapesDataset(seed=-1)
    with pytest.raises(IndexError, match="out of range"):
        ShapesDataset(size=5)[5]
    with pytest.raises(TypeError, match="indices must be integers"):
        ShapesDataset(size=5)[1.0]
    ds = ShapesDataset(size=5)
    assert torch.equal(ds[torch.tensor(2)]["image"], ds[np.int64(2)]["image"])


def test_parse_caption_reads_back_what_the_dataset_wrote():
    from versadiff.data.shapes import parse_caption

    ds = ShapesDataset(size=400, seed=3, num_shapes="1-2")
    for i in range(400):
        d = ds.describe(i)
        got = parse_caption(d["caption"])
        truth = d["shapes"]
        parsed = got["shapes"] if "shapes" in got else [got]
        assert len(parsed) == len(truth)
        order = {sp["color"]: sp for sp in truth}  # two-shape captions may name the right shape first
        for sp in parsed:
            t = order[sp["color"]]
            assert sp["shape"] == t["shape"] and sp.get("size", t["size"]) == t["size"]
            assert sp.get("position", t["position"]) == t["position"]
    assert parse_caption("a red blob") is None and parse_caption("a red circle on the moon") is None
    assert parse_caption("  A Red  Circle ") == {"color": "red", "shape": "circle"}
