"""Tokenizers of VD's text models: the shipped miniatures (round trips, layouts, determinism of the training
script), the batching rules (padding, truncation with one warning, lower-casing), and file errors."""

from __future__ import annotations

import importlib.util
import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from versadiff.data.shapes import ShapesDataset
from versadiff.encoders.tokenizers import (
    SHIPPED_TOKENIZERS,
    ClipTokenizer,
    OptimusBertTokenizer,
    OptimusGPT2Tokenizer,
    load_bert_tokenizer,
    load_clip_tokenizer,
    load_gpt2_tokenizer,
    shapes_caption_corpus,
    tokenizer_folder,
)

import transformers  # noqa: E402,F401  (a core dependency: missing is an error)
ROOT = Path(__file__).resolve().parents[1]
LONG = " and ".join(["a small red circle in the top left"] * 12)


@pytest.fixture(scope="module")
def toks():
    return load_clip_tokenizer("clip_shapes"), load_bert_tokenizer("bert_shapes"), load_gpt2_tokenizer("gpt2_shapes")


def test_shipped_folders_are_small():
    for name in SHIPPED_TOKENIZERS:
        folder = tokenizer_folder(name)
        files = sorted(p.name for p in folder.iterdir())
        assert files == (["vocab.txt"] if name.startswith("bert") else ["merges.txt", "vocab.json"])
        assert sum(p.stat().st_size for p in folder.iterdir()) < 100_000


def test_vocabulary_sizes(toks):
    clip, bert, gpt2 = toks
    assert 300 < clip.vocab_size < 1000 and 100 < bert.vocab_size < 1000 and 256 < gpt2.vocab_size < 1000
    # the layouts of the full-size vocabularies: CLIP's specials last, BERT's [PAD] = 0, Optimus' additions
    # right after GPT-2's vocabulary in the order <PAD>, <BOS>, <EOS>
    assert (clip.bos_id, clip.eos_id, clip.pad_id) == (clip.vocab_size - 2, clip.vocab_size - 1, clip.vocab_size - 1)
    assert bert.pad_id == 0
    n = len(json.loads((tokenizer_folder("gpt2_shapes") / "vocab.json").read_text()))
    assert (gpt2.pad_id, gpt2.bos_id, gpt2.eos_id) == (n, n + 1, n + 2) and gpt2.vocab_size == n + 3


def test_every_shapes_caption_round_trips(toks):
    clip, bert, gpt2 = toks
    corpus = shapes_caption_corpus()
    assert len(corpus) > 3000
    ds = ShapesDataset(size=300, seed=5, num_shapes="1-2")
    assert {ds.describe(i)["caption"] for i in range(300)} <= set(corpus)
    for c in corpus:
        assert clip.decode(clip.encode(c)) == c
        assert bert.decode(bert.encode(c)) == c.lower()
        assert gpt2.decode(gpt2.encode(c)) == c
    unk = bert.unk_id
    assert not any(unk in bert.encode(c) for c in corpus[::50])
    # every word of the corpus is one token
    words = {w for c in corpus for w in c.replace(",", " ").split()}
    assert all(len(clip.encode(w)) == 1 and len(bert.encode(w)) == 1 for w in words)


def test_same_ids_as_transformers_from_pretrained(toks):
    """The on-disk format is transformers' own: its from_pretrained reads the folders to the same ids."""
    from transformers import BertTokenizer, CLIPTokenizer, GPT2Tokenizer

    clip, bert, gpt2 = toks
    texts = ["a red circle", "At the bottom, a large Blue triangle", "purple hexagon 42!"]
    hf = CLIPTokenizer.from_pretrained(str(tokenizer_folder("clip_shapes")))
    ref = hf(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    assert torch.equal(clip(texts), ref)
    hb = BertTokenizer.from_pretrained(str(tokenizer_folder("bert_shapes")), do_lower_case=False)
    assert [bert.encode(t) for t in texts] == [hb(t.lower(), add_special_tokens=False).input_ids for t in texts]
    hg = GPT2Tokenizer.from_pretrained(str(tokenizer_folder("gpt2_shapes")))
    assert [gpt2.encode(t) for t in texts] == [hg(t).input_ids for t in texts]


def test_clip_padding_and_truncation(toks):
    clip = toks[0]
    ids = clip(["a red circle", ""])
    assert ids.shape == (2, 77) and ids.dtype == torch.long
    n = len(clip.encode("a red circle"))
    assert ids[0, 0] == clip.bos_id and ids[0, n + 1] == clip.eos_id and (ids[0, n + 2 :] == clip.pad_id).all()
    assert ids[1, :2].tolist() == [clip.bos_id, clip.eos_id]
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        ids = clip([LONG, LONG + " and more", "a blue square"])
    assert len(w) == 1 and "2 of 3" in str(w[0].message)
    assert ids.shape == (3, 77) and (ids[:2, -1] == clip.eos_id).all()
    assert ids[0, 1:76].tolist() == clip.encode(LONG)[:75]
    short = ClipTokenizer("clip_shapes", context_length=8)
    with pytest.warns(UserWarning, match="exceed 6 CLIP tokens"):
        assert short([LONG]).shape == (1, 8)
    # the real vocabulary pads with <|endoftext|> unless the folder's tokenizer_config.json names another


def test_bert_lowercase_specials_truncation(toks):
    bert = toks[1]
    a, ma = bert(["A Red Circle"])
    b, _ = bert(["a red circle"])
    assert torch.equal(a, b) and a[0, 0] == bert.cls_id and a[0, -1] == bert.sep_id and ma.all()
    ids, mask = bert(["a red circle", "there is a large yellow triangle in the top left"])
    assert ids.shape == mask.shape and (ids[0][mask[0] == 0] == bert.pad_id).all() and mask[1].all()
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        ids, mask = bert([LONG, LONG, "a red circle"])
    assert len(w) == 1 and "77 word-pieces" in str(w[0].message)
    assert ids.shape[1] == 79 and ids[0, 78] == bert.sep_id  # [CLS] + 77 word-pieces + [SEP]
    cased = OptimusBertTokenizer("bert_shapes", lower=False)
    assert bert.unk_id in cased.encode("RED")  # the miniature vocabulary has no upper case


def test_gpt2_rows(toks):
    gpt2 = toks[2]
    ids, mask = gpt2(["a red circle", "at the bottom, a small cyan triangle"])
    n = len(gpt2.encode("a red circle"))
    assert ids[0, 0] == gpt2.bos_id and ids[0, n + 1] == gpt2.eos_id and (ids[0, n + 2 :] == gpt2.pad_id).all()
    assert mask[0].sum() == n + 2 and mask[1].all()
    assert gpt2.decode(ids[0]) == "a red circle"  # <BOS>, <EOS>, <PAD> dropped
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        ids, _ = gpt2([LONG, LONG], max_length=10)
    assert len(w) == 1 and ids.shape == (2, 10) and (ids[:, -1] == gpt2.eos_id).all()
    assert gpt2.decode(gpt2.encode("Unseen Words: ünïcode ok")) == "Unseen Words: ünïcode ok"  # byte-level


def test_bad_inputs(toks):
    for tok in toks:
        with pytest.raises(ValueError, match="empty batch"):
            tok([])
        with pytest.raises(TypeError, match="item 1 is a int"):
            tok(["a", 1])
        with pytest.raises(TypeError, match="list of strings"):
            tok(42)
    assert toks[0]("a red circle").shape == (1, 77)  # one string is a batch of one


@pytest.mark.parametrize(
    "cls, name, missing",
    [(ClipTokenizer, "clip_shapes", "merges.txt"), (ClipTokenizer, "clip_shapes", "vocab.json"),
     (OptimusBertTokenizer, "bert_shapes", "vocab.txt"), (OptimusGPT2Tokenizer, "gpt2_shapes", "merges.txt")],
)  # fmt: skip
def test_missing_file_one_line(tmp_path, cls, name, missing):
    folder = tmp_path / name
    shutil.copytree(tokenizer_folder(name), folder)
    (folder / missing).unlink()
    with pytest.raises(FileNotFoundError, match=missing) as e:
        cls(folder)
    assert "\n" not in str(e.value)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        cls(tmp_path / "nowhere")


def test_training_script_is_deterministic(tmp_path):
    spec = importlib.util.spec_from_file_location("train_tokenizers", ROOT / "scripts" / "train_tokenizers.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for folder in mod.build(tmp_path):
        for f in folder.iterdir():
            shipped = tokenizer_folder(folder.name) / f.name
            assert f.read_bytes() == shipped.read_bytes(), f"{shipped} differs from a fresh run of the script"
