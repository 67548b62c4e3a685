"""Latent caching: encode once through a deterministic encoder, train on the cached latents."""

import pytest
import torch
import torch.nn.functional as F

from versadiff.data import build_dataset
from versadiff.data.latents import LatentDataset, cache_latents


def encoder(x: torch.Tensor) -> torch.Tensor:
    """A stand-in autoencoder: 4x average pooling (32x32x3 -> 8x8x3), deterministic."""
    return F.avg_pool2d(x, 4)


@pytest.fixture(scope="module")
def shapes():
    return build_dataset({"name": "shapes", "size": 10, "seed": 0, "resolution": 32})


@pytest.mark.parametrize("name", ["cache.safetensors", "cache_dir"])
def test_cache_round_trip(tmp_path, shapes, name):
    out = cache_latents(shapes, encoder, tmp_path / name, batch_size=4, flips=True)
    ds = LatentDataset(out, flip_prob=0.0)
    assert len(ds) == 10 and ds.channels == 3 and ds.resolution == 8
    assert ds.num_classes == shapes.num_classes and ds.class_names == shapes.class_names
    for i in (0, 9):
        item = ds[i]
        assert item["label"] == shapes[i]["label"]
        assert torch.allclose(item["image"], encoder(shapes[i]["image"][None])[0], atol=1e-6)
    flipped = LatentDataset(out, flip_prob=1.0)[3]["image"]
    assert torch.allclose(flipped, encoder(shapes[3]["image"][None].flip(-1))[0], atol=1e-6)


def test_flips_drawn_per_epoch_from_seed(tmp_path, shapes):
    out = cache_latents(shapes, encoder, tmp_path / "c.safetensors", batch_size=3, flips=True)
    plain = LatentDataset(out, flip_prob=0.0)
    a, b = LatentDataset(out, seed=1), LatentDataset(out, seed=1)

    def flips(ds, epoch):
        ds.set_epoch(epoch)
        return [not torch.equal(ds[i]["image"], plain[i]["image"]) for i in range(10)]

    first = flips(a, 0)
    assert first == flips(b, 0) and 0 < sum(first) < 10
    assert any(flips(a, e) != first for e in (1, 2, 3))
    assert len(build_dataset({"name": "latents", "path": str(out)})) == 10


def test_cache_errors(tmp_path, shapes):
    out = cache_latents(shapes, encoder, tmp_path / "c.safetensors", batch_size=5)
    with pytest.raises(FileExistsError, match="already exists"):
        cache_latents(shapes, encoder, out)
    with pytest.raises(ValueError, match=r"encoder_fn must return a tensor \[B, ...\] with B=5"):
        cache_latents(shapes, lambda x: x[:1], tmp_path / "bad.safetensors", batch_size=5)
    with pytest.raises(FileNotFoundError, match="write it with cache_latents"):
        LatentDataset(tmp_path / "nope.safetensors")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="is not a versadiff latent cache"):
        LatentDataset(tmp_path / "other.safetensors")
