"""Train the miniature tokenizers of the shapes dataset (deterministic) and write them in the original formats.

    python scripts/train_tokenizers.py                 # (re)writes src/versadiff/assets/tokenizers/*_shapes
    python scripts/train_tokenizers.py --out /tmp/tok  # somewhere else
    python scripts/train_tokenizers.py --check         # exit 1 if the shipped folders differ from a fresh run

The corpus is every caption the shapes dataset can write (`shapes_caption_corpus()`, sorted). Each tokenizer is
trained with the `tokenizers` library, then laid out exactly like the full-size vocabulary it stands in for, so
`versadiff.encoders.tokenizers` reads both with the same code:

  clip_shapes/  vocab.json + merges.txt  CLIP's layout: the 256 byte symbols, the same with "</w>", one entry per
                                         merge in merge order, then <|startoftext|> and <|endoftext|> (last ids).
  bert_shapes/  vocab.txt                [PAD]=0 [UNK] [CLS] [SEP] [MASK], characters, "##" continuations, words.
  gpt2_shapes/  vocab.json + merges.txt  GPT-2's layout: the 256 byte symbols, one entry per merge, then
                                         <|endoftext|>; Optimus' <PAD>/<BOS>/<EOS> are added when it is loaded.
Every symbol of the byte-level alphabets is kept, so any text encodes without unknown tokens (CLIP, GPT-2).
"""

from __future__ import annotations

import argparse
import filecmp
import json
import sys
import tempfile
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from versadiff.encoders.tokenizers import (  # noqa: E402
    ASSETS,
    BERT_SPECIALS,
    CLIP_BOS,
    CLIP_EOS,
    GPT2_EOT,
    shapes_caption_corpus,
)

# CLIP's pre-tokenisation (the same regex as transformers' CLIPTokenizer)
CLIP_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
MERGES_HEADER = "#version: 0.2"


def byte_symbols() -> list[str]:
    """The 256 printable stand-ins of byte-level BPE, in GPT-2's order (id order of its first 256 tokens):
    printable Latin-1 bytes stand for themselves, the other bytes get code points from 256 upwards."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in sorted(keep)] + [table[b] for b in range(256) if b not in keep]


def _trained_merges(tok: Tokenizer) -> list[tuple[str, str]]:
    raw = json.loads(tok.to_str())["model"]["merges"]
    return [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in raw]  # type: ignore[misc]


def _write_bpe(folder: Path, vocab: list[str], merges: list[tuple[str, str]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if len(set(vocab)) != len(vocab):
        raise RuntimeError(f"duplicate tokens in the vocabulary of {folder}")
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False) + "\n", encoding="utf-8")
    (folder / "merges.txt").write_text("\n".join([MERGES_HEADER, *(f"{a} {b}" for a, b in merges)]) + "\n", encoding="utf-8")


def train_clip(corpus: list[str], folder: Path) -> None:
    tok = Tokenizer(models.BPE(unk_token=CLIP_EOS, end_of_word_suffix="</w>", continuing_subword_prefix=""))
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=4096, min_frequency=1, special_tokens=[], initial_alphabet=byte_symbols(),
        end_of_word_suffix="</w>", show_progress=False,
    )  # fmt: skip
    tok.train_from_iterator(corpus, trainer)
    merges = _trained_merges(tok)
    base = byte_symbols()
    vocab = base + [s + "</w>" for s in base] + [a + b for a, b in merges] + [CLIP_BOS, CLIP_EOS]
    _write_bpe(folder, vocab, merges)


def train_gpt2(corpus: list[str], folder: Path) -> None:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=4096, min_frequency=1, special_tokens=[], initial_alphabet=byte_symbols(), show_progress=False
    )
    tok.train_from_iterator(corpus, trainer)
    merges = _trained_merges(tok)
    vocab = byte_symbols() + [a + b for a, b in merges] + [GPT2_EOT]
    _write_bpe(folder, vocab, merges)


def train_bert(corpus: list[str], folder: Path) -> None:
    # WordPiece marks continuations with "##"; the tokenizers library's WordPiece trainer creates those symbols
    # in hash order, so ties between equally frequent pairs (many, on this corpus) break differently from run to
    # run. Train a plain BPE instead on words that carry a word-start marker (deterministic, like the byte-level
    # ones) and read it as WordPiece: a piece with the marker starts a word, one without it is a "##" continuation.
    mark = "\u2581"
    split = pre_tokenizers.BertPreTokenizer()
    words = [mark + w for c in corpus for w, _ in split.pre_tokenize_str(c.lower())]
    chars = [chr(c) for c in range(33, 127) if not chr(c).isupper()]  # printable ASCII but upper case
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.BpeTrainer(
        vocab_size=4096, min_frequency=1, special_tokens=[], initial_alphabet=[mark, *chars], show_progress=False
    )
    tok.train_from_iterator(words, trainer)
    # every character alone and (letters, digits) as a continuation, so unseen lower-case words still split
    # into pieces instead of becoming [UNK]
    vocab = list(BERT_SPECIALS) + chars + ["##" + c for c in chars if c.isalnum()]
    seen = set(vocab)
    for a, b in _trained_merges(tok):
        piece = a + b
        piece = piece[1:] if piece.startswith(mark) else "##" + piece
        if piece not in seen and piece != "##":
            seen.add(piece)
            vocab.append(piece)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")


def build(out: Path) -> list[Path]:
    corpus = shapes_caption_corpus()
    train_clip(corpus, out / "clip_shapes")
    train_bert(corpus, out / "bert_shapes")
    train_gpt2(corpus, out / "gpt2_shapes")
    return [out / n for n in ("clip_shapes", "bert_shapes", "gpt2_shapes")]


def verify(folders: list[Path]) -> None:
    """Every shapes caption must round-trip through each tokenizer (BERT: lower-cased)."""
    from versadiff.encoders.tokenizers import ClipTokenizer, OptimusBertTokenizer, OptimusGPT2Tokenizer

    clip, bert, gpt2 = ClipTokenizer(folders[0]), OptimusBertTokenizer(folders[1]), OptimusGPT2Tokenizer(folders[2])
    for c in shapes_caption_corpus():
        for tok, want in ((clip, c), (bert, c.lower()), (gpt2, c)):
            got = tok.decode(tok.encode(c))
            if got != want:
                raise SystemExit(f"{type(tok).__name__} does not round-trip {c!r}: {got!r}")
    for tok in (clip, bert, gpt2):
        print(f"{tok.folder.name}: {tok.vocab_size} tokens")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ASSETS, help=f"output folder (default {ASSETS})")
    ap.add_argument("--check", action="store_true", help="compare a fresh run with the folders under --out")
    args = ap.parse_args(argv)
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            fresh = build(Path(tmp))
            bad = []
            for f in fresh:
                for file in sorted(f.iterdir()):
                    shipped = args.out / f.name / file.name
                    if not shipped.is_file() or not filecmp.cmp(file, shipped, shallow=False):
                        bad.append(str(shipped))
            if bad:
                print("differs from a fresh run: " + ", ".join(bad))
                return 1
        print(f"the tokenizers under {args.out} are up to date")
        return 0
    folders = build(args.out)
    verify(folders)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
