"""The attribute reader: exact on clean shapes, robust to small noise, hard to fool."""

import numpy as np
import pytest
import torch

from versadiff.data import ShapesDataset, conditional_accuracy, predict_class, read_attributes

KEYS = ("color", "shape", "size", "position")


def clean(num_shapes, n, seed=11, resolution=32):
    ds = ShapesDataset(size=n, seed=seed, num_shapes=num_shapes, resolution=resolution)
    idx = list(range(n))
    return ds, ds.render(idx), torch.tensor([ds.describe(i)["label"] for i in idx])


def canvas(*blobs, res=32):
    """Image in [-1, 1] with each (mask, rgb in [0, 1]) painted on black."""
    img = np.zeros((res, res, 3), dtype=np.float32)
    for mask, rgb in blobs:
        img[mask] = rgb
    return torch.from_numpy(img).permute(2, 0, 1) * 2 - 1


YY, XX = np.mgrid[0:32, 0:32] + 0.5


def disc(cx, cy, r):
    return (XX - cx) ** 2 + (YY - cy) ** 2 <= r * r


@pytest.mark.parametrize("num_shapes,n", [(1, 300), (2, 150)])
def test_reads_every_attribute_of_clean_images(num_shapes, n):
    ds, x, y = clean(num_shapes, n)
    attrs = read_attributes(x)
    assert conditional_accuracy(x, y, num_shapes=num_shapes) >= 0.99
    exact = 0
    for i, a in enumerate(attrs):
        truth = ds.describe(i)["shapes"]
        exact += a["num_shapes"] == len(truth) and all(
            all(got[k] == want[k] for k in KEYS) for got, want in zip(a["shapes"], truth)
        )
    assert exact / n >= 0.99


def test_other_resolution_is_read_too():
    _, x, y = clean(1, 60, seed=4, resolution=48)
    assert conditional_accuracy(x, y) >= 0.98


def test_small_gaussian_noise_keeps_accuracy_and_pure_noise_is_unreadable():
    _, x, y = clean(1, 200, seed=5)
    g = torch.Generator().manual_seed(0)
    for sigma in (0.1, 0.2):
        assert conditional_accuracy(x + sigma * torch.randn(x.shape, generator=g), y) >= 0.95
    noise = torch.randn(x.shape, generator=g)
    pred = predict_class(noise)
    assert (pred == -1).float().mean() >= 0.9
    assert (pred == y).float().mean() <= 0.1  # chance would be 1/18
    uniform = torch.rand(x.shape, generator=g) * 2 - 1
    assert conditional_accuracy(uniform, y) <= 0.1


def test_blank_wrong_colour_and_blobs_do_not_count():
    red_circle = canvas((disc(16, 16, 6), (1, 0, 0)))
    cases = {
        "blank": -torch.ones(3, 32, 32),
        "grey": torch.zeros(3, 32, 32),
        "full frame": canvas((np.ones((32, 32), bool), (1, 0, 0))),
        "ellipse": canvas((((XX - 16) / 10) ** 2 + ((YY - 16) / 3.5) ** 2 <= 1, (1, 0, 0))),
        "orange": canvas((disc(16, 16, 6), (1, 0.5, 0))),
        "dim red": canvas((disc(16, 16, 6), (0.6, 0, 0))),
        "white": canvas((disc(16, 16, 6), (1, 1, 1))),
        "speck": canvas((disc(16, 16, 1.2), (1, 0, 0))),
        "three": canvas((disc(6, 16, 4), (1, 0, 0)), (disc(16, 16, 4), (0, 1, 0)), (disc(26, 16, 4), (0, 0, 1))),
        "ring": canvas((disc(16, 16, 7) & ~disc(16, 16, 4), (1, 0, 0))),
    }
    images = torch.stack([red_circle, *cases.values()])
    pred = predict_class(images)
    assert pred[0] == 0  # the control: a red circle is read as class 0
    assert pred[1:].tolist() == [-1] * len(cases), dict(zip(cases, pred[1:].tolist()))
    # A green circle drawn for the label "red circle" is wrong, not unreadable.
    green = canvas((disc(16, 16, 6), (0, 1, 0)))
    assert predict_class(green[None]).item() == 3
    assert conditional_accuracy(green[None], [0]) == 0.0


def test_touching_shapes_of_related_colours_are_told_apart():
    red = (XX >= 4) & (XX < 16) & (YY >= 10) & (YY < 22)
    yellow = (XX >= 16) & (XX < 28) & (YY >= 10) & (YY < 22)  # shares the red channel and an edge
    (a,) = read_attributes(canvas((red, (1, 0, 0)), (yellow, (1, 1, 0)))[None])
    assert [(s["color"], s["shape"]) for s in a["shapes"]] == [("red", "square"), ("yellow", "square")]
    assert a["label"] == 1


def test_mild_blur_degrades_gracefully():
    from scipy.ndimage import gaussian_filter

    _, x, y = clean(1, 100, seed=9)
    blurred = torch.from_numpy(gaussian_filter(x.numpy(), sigma=(0, 0, 0.5, 0.5)))
    assert conditional_accuracy(blurred, y) >= 0.95


def test_expected_shape_count_is_enforced():
    _, x, y = clean(2, 10, seed=6)
    assert (predict_class(x) == y).all()
    assert (predict_class(x, num_shapes=1) == -1).all()


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        read_attributes(torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match="one label per image"):
        conditional_accuracy(torch.zeros(2, 3, 32, 32), [0])
    with pytest.raises(ValueError, match="num_shapes must be"):
        predict_class(torch.zeros(1, 3, 32, 32), num_shapes=3)
