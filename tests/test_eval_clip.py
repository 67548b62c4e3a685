"""CLIP score: the math, and the metric end to end on a tiny random CLIP saved as a local folder."""

import json
import string

import numpy as np
import pytest
import torch
from PIL import Image

from versadiff.eval.metrics import clip_score


def test_clip_score_math():
    a = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 0.0]])
    b = np.array([[3.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
    # cos = 1, 0, -1 -> 100 * max(cos, 0) averages to 100 / 3
    assert clip_score(a, b) == pytest.approx(100.0 / 3)
    with pytest.raises(ValueError, match="one prompt"):
        clip_score(a, b[:2])


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    import transformers  # a core dependency: missing is an error
    d = tmp_path_factory.mktemp("clip")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in list(string.ascii_lowercase) + [c + "</w>" for c in string.ascii_lowercase]:
        vocab[c] = len(vocab)
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\n")
    transformers.CLIPTokenizer(str(d / "vocab.json"), str(d / "merges.txt")).save_pretrained(d)
    torch.manual_seed(0)
    text = dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=32, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  image_size=32, patch_size=8)
    cfg = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
    transformers.CLIPModel(cfg).save_pretrained(d)
    return d


def test_clip_metric_through_cli(tiny_clip, tmp_path):
    from versadiff.cli import main
    from versadiff.eval.features import CLIPFeatures

    ex = CLIPFeatures(str(tiny_clip))
    x = torch.rand(3, 3, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    emb = ex(x)["features"]
    assert emb.shape == (3, 16)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(ex(x[:1])["features"], emb[:1], rtol=1e-4, atol=1e-5)

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, a in enumerate(((x + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()):
        Image.fromarray(a).save(folder / f"{i}.png")
    (tmp_path / "prompts.txt").write_text("a red circle\nbag\ndress\n")
    out = tmp_path / "r.json"
    assert main(["eval", "--images", str(folder), "--metrics", "clip", "--clip", str(tiny_clip),
                 "--prompts", str(tmp_path / "prompts.txt"), "--out", str(out), "--quiet"]) == 0
    score = json.loads(out.read_text())["metrics"]["clip"]
    expected = clip_score(emb.numpy(), ex.text_features(["a red circle", "bag", "dress"]).numpy())
    assert 0.0 <= score <= 100.0 and score == pytest.approx(expected, abs=0.5)  # PNG rounding moves it a little


def test_clip_needs_a_model_folder(tmp_path):
    from versadiff.eval.features import CLIPFeatures

    with pytest.raises(FileNotFoundError, match="--clip DIR"):
        CLIPFeatures(str(tmp_path))
