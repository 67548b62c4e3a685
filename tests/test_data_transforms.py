"""Transforms: geometry, channel conversion, [-1, 1] scaling and seeded determinism."""

import numpy as np
import pytest
import torch
from PIL import Image

from versadiff.data.transforms import (
    ImageTransform,
    build_transform,
    center_crop,
    convert_channels,
    item_seed,
    resize_shorter,
    to_tensor,
)


def gradient(w: int = 48, h: int = 40) -> Image.Image:
    """RGB image whose pixel value encodes its position, so every crop/flip is distinguishable."""
    x = np.arange(w)[None, :].repeat(h, 0)
    y = np.arange(h)[:, None].repeat(w, 1)
    return Image.fromarray(np.stack([x * 5, y * 6, (x + y) % 256], -1).astype(np.uint8))


def test_to_tensor_scales_uint8_to_minus_one_one():
    a = np.array([[0, 255], [51, 204]], dtype=np.uint8)
    t = to_tensor(a)
    assert t.shape == (1, 2, 2) and t.dtype == torch.float32
    assert t[0, 0, 0] == -1.0 and t[0, 0, 1] == 1.0
    assert torch.allclose(t[0, 1], torch.tensor([51 / 127.5 - 1, 204 / 127.5 - 1]))
    with pytest.raises(ValueError, match="uint8"):
        to_tensor(a.astype(np.float32))


def test_resize_shorter_keeps_aspect_and_center_crop_takes_middle():
    img = resize_shorter(gradient(48, 40), 20)
    assert img.size == (24, 20)
    crop = np.asarray(center_crop(gradient(48, 40), 10))
    assert crop.shape == (10, 10, 3)
    assert crop[0, 0, 0] == 19 * 5 and crop[0, 0, 1] == 15 * 6  # left = (48-10)//2, top = (40-10)//2


def test_channel_conversion_grey_and_alpha():
    grey = Image.fromarray(np.full((4, 4), 100, dtype=np.uint8), mode="L")
    rgb = np.asarray(convert_channels(grey, 3))
    assert rgb.shape == (4, 4, 3) and (rgb == 100).all()
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 255  # red everywhere, but only the left half is opaque
    rgba[:, :2, 3] = 255
    out = np.asarray(convert_channels(Image.fromarray(rgba, mode="RGBA"), 3))
    assert (out[:, :2] == [255, 0, 0]).all() and (out[:, 2:] == 255).all()  # transparent -> white
    black = np.asarray(convert_channels(Image.fromarray(rgba, mode="RGBA"), 3, background="black"))
    assert (black[:, 2:] == 0).all()
    assert np.asarray(convert_channels(Image.fromarray(rgba, mode="RGBA"), 1)).shape == (4, 4)


def test_random_transform_is_a_function_of_the_seed():
    tf = build_transform({"crop": "random", "hflip": 0.5, "resize": False}, resolution=16)
    img = gradient()
    outs = [tf(img, seed=s) for s in range(12)]
    assert all(torch.equal(tf(img, seed=s), outs[s]) for s in range(12))
    assert len({o.numpy().tobytes() for o in outs}) > 6  # crops and flips really vary with the seed
    assert outs[0].shape == (3, 16, 16) and outs[0].min() >= -1 and outs[0].max() <= 1
    with pytest.raises(ValueError, match="seed"):
        tf(img)


def test_hflip_probability_one_and_zero():
    img = gradient(16, 16)
    plain = ImageTransform(resolution=16)(img)
    flipped = ImageTransform(resolution=16, hflip=1.0)(img, seed=3)
    assert torch.equal(flipped, plain.flip(-1))
    assert not ImageTransform(resolution=16).is_random


def test_item_seed_distinguishes_epochs_and_items():
    seeds = {item_seed(7, e, i, 10) for e in range(3) for i in range(10)}
    assert len(seeds) == 30 and item_seed(7, 0, 0, 10) == 7


def test_build_transform_rejects_bad_config():
    with pytest.raises(ValueError, match="unknown transform keys \\['flip'\\]"):
        build_transform({"flip": 0.5})
    with pytest.raises(ValueError, match="disagrees"):
        build_transform({"resolution": 64}, resolution=32)
    with pytest.raises(ValueError, match="unknown crop"):
        build_transform({"crop": "middle"})
    with pytest.raises(ValueError, match="probability"):
        build_transform({"hflip": 2})
    with pytest.raises(ValueError, match="cannot crop"):
        build_transform({"resize": False}, resolution=64)(gradient())
