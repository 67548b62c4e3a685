"""Tokenizers of Versatile Diffusion's text models, read from local folders (nothing is downloaded).

Three kinds, each in the on-disk format of the original model, so the same code reads the real vocabularies
and the miniature ones shipped for the shapes dataset (`src/versadiff/assets/tokenizers/`):

  CLIP  (ClipTokenizer)         vocab.json + merges.txt   byte-level BPE with "</w>" word ends, lower-cased;
                                 <|startoftext|> ... <|endoftext|>, padded/truncated to the context length (77).
  BERT  (OptimusBertTokenizer)  vocab.txt                  WordPiece of bert-base-cased; Optimus lower-cases
                                 the text first; [CLS] + at most 77 word-pieces + [SEP], padded with [PAD] = 0.
  GPT-2 (OptimusGPT2Tokenizer)  vocab.json + merges.txt   byte-level BPE plus Optimus' added <PAD>, <BOS>,
                                 <EOS> (ids 50257, 50258, 50259 on the real vocabulary).

A folder argument is a path or the name of a shipped miniature ("clip_shapes", "bert_shapes", "gpt2_shapes").
Prompts longer than the limit are truncated with one warning per call. The miniatures are produced by
`scripts/train_tokenizers.py` from `shapes_caption_corpus()`, every caption the shapes dataset can write.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

__all__ = [
    "SHIPPED_TOKENIZERS",
    "tokenizer_folder",
    "shapes_caption_corpus",
    "ClipTokenizer",
    "OptimusBertTokenizer",
    "OptimusGPT2Tokenizer",
    "load_clip_tokenizer",
    "load_bert_tokenizer",
    "load_gpt2_tokenizer",
]

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "tokenizers"
#: the miniature tokenizers shipped with the package (trained on the shapes captions)
SHIPPED_TOKENIZERS = ("clip_shapes", "bert_shapes", "gpt2_shapes")

CLIP_BOS, CLIP_EOS = "<|startoftext|>", "<|endoftext|>"
GPT2_EOT = "<|endoftext|>"
OPTIMUS_PAD, OPTIMUS_BOS, OPTIMUS_EOS = "<PAD>", "<BOS>", "<EOS>"
BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_NO_LIMIT = 10**30


# ----------------------------------------------------------------------------------------------- files


def tokenizer_folder(name_or_path: str | Path) -> Path:
    """The folder of a tokenizer: a shipped miniature by name, else a local path (which must exist)."""
    if isinstance(name_or_path, str) and name_or_path in SHIPPED_TOKENIZERS:
        return ASSETS / name_or_path
    p = Path(name_or_path).expanduser()
    if not p.is_dir():
        raise FileNotFoundError(
            f"tokenizer folder {str(p)!r} does not exist (give a local folder or one of {', '.join(SHIPPED_TOKENIZERS)})"
        )
    return p


def _need(folder: Path, name: str, kind: str) -> Path:
    f = folder / name
    if not f.is_file():
        raise FileNotFoundError(f"{kind} tokenizer file {str(f)!r} is missing")
    return f


def _read_vocab_json(path: Path) -> dict[str, int]:
    vocab = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(vocab, dict) or not vocab:
        raise ValueError(f"{str(path)!r} is not a BPE vocabulary (a JSON object token -> id)")
    return {str(k): int(v) for k, v in vocab.items()}


def _read_merges(path: Path) -> list[tuple[str, str]]:
    merges = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        if (n == 0 and line.startswith("#version")) or not line.strip():
            continue
        parts = line.split(" ")
        if len(parts) != 2:
            raise ValueError(f"{str(path)!r} line {n + 1} is not a merge 'a b': {line!r}")
        merges.append((parts[0], parts[1]))
    return merges


def _read_vocab_txt(path: Path) -> dict[str, int]:
    lines = path.read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    vocab: dict[str, int] = {}
    for i, tok in enumerate(lines):
        vocab.setdefault(tok.rstrip("\r"), i)
    if not vocab:
        raise ValueError(f"{str(path)!r} is an empty WordPiece vocabulary")
    return vocab


def _special_from_config(folder: Path, key: str, default: str) -> str:
    """A special token named in the folder's tokenizer_config.json / special_tokens_map.json, else `default`."""
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        f = folder / name
        if f.is_file():
            try:
                v = json.loads(f.read_text(encoding="utf-8")).get(key)
            except (json.JSONDecodeError, AttributeError):
                continue
            if isinstance(v, dict):
                v = v.get("content")
            if isinstance(v, str) and v:
                return v
    return default


def _check_texts(texts: Sequence[str] | str, who: str) -> list[str]:
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, (list, tuple)):
        raise TypeError(f"{who} takes a list of strings, got {type(texts).__name__}")
    if len(texts) == 0:
        raise ValueError(f"{who} got an empty batch: pass at least one string")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"{who} takes a list of strings, but item {i} is a {type(t).__name__}")
    return list(texts)


def _warn_truncated(count: int, total: int, limit: int, what: str) -> None:
    warnings.warn(
        f"{count} of {total} prompt(s) exceed {limit} {what} and were truncated",
        UserWarning,
        stacklevel=3,
    )


_SPACE_BEFORE = (" .", " ?", " !", " ,", " ;", " :", " ' ", " n't", " 'm", " 's", " 've", " 're")


def _clean_spaces(text: str) -> str:
    """Undo the space CLIP's decoding puts before punctuation and clitics ("bottom , a" -> "bottom, a")."""
    for s in _SPACE_BEFORE:
        text = text.replace(s, s[1:])
    return text


def _pad(rows: list[list[int]], pad_id: int, length: int | None = None) -> tuple[Tensor, Tensor]:
    n = max(len(r) for r in rows) if length is None else length
    ids = torch.full((len(rows), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), n), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask


# ----------------------------------------------------------------------------------------------- CLIP


class _Tokenizer:
    folder: Path
    vocab_size: int

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.folder)!r}, vocab_size={self.vocab_size})"


class ClipTokenizer(_Tokenizer):
    """CLIP's BPE tokenizer (transformers' fast CLIPTokenizer) with VD's batching.

    `tok(texts)` -> ids [B, context_length]: <|startoftext|> text <|endoftext|>, padded with the pad token
    (<|endoftext|> for OpenAI's CLIP, or the one named in the folder's tokenizer_config.json), truncated to
    the context length with the end token kept last (as transformers' truncation), one warning per call.
    """

    files = ("vocab.json", "merges.txt")

    def __init__(self, folder: str | Path, context_length: int = 77) -> None:
        from transformers import CLIPTokenizer

        self.folder = tokenizer_folder(folder)
        vocab = _read_vocab_json(_need(self.folder, "vocab.json", "CLIP"))
        merges = _read_merges(_need(self.folder, "merges.txt", "CLIP"))
        if int(context_length) < 2:
            raise ValueError(f"context_length must be >= 2 (start and end tokens), got {context_length}")
        self.context_length = int(context_length)
        pad = _special_from_config(self.folder, "pad_token", CLIP_EOS)
        for t in (CLIP_BOS, CLIP_EOS, pad):
            if t not in vocab:
                raise ValueError(f"{str(self.folder / 'vocab.json')!r} lacks the special token {t!r}")
        # model_max_length: no limit inside transformers (its per-call log line); truncation is done here
        self.backend = CLIPTokenizer(vocab=vocab, merges=merges, pad_token=pad, model_max_length=_NO_LIMIT)
        self.bos_id, self.eos_id, self.pad_id = vocab[CLIP_BOS], vocab[CLIP_EOS], vocab[pad]
        self.vocab_size = len(self.backend)

    def encode(self, text: str) -> list[int]:
        """Token ids of one text, without the start/end tokens and without truncation."""
        return list(self.backend(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: Sequence[int] | Tensor) -> str:
        """Text of token ids (special tokens dropped; "</w>" word ends become spaces, " ," becomes ",")."""
        if torch.is_tensor(ids):
            ids = ids.tolist()
        text = self.backend.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)
        return _clean_spaces(text)

    def tokenize(self, texts: Sequence[str] | str) -> Tensor:
        """ids [B, context_length] (long)."""
        texts = _check_texts(texts, "the CLIP tokenizer")
        L = self.context_length
        rows = [[self.bos_id, *r, self.eos_id] for r in self.backend(texts, add_special_tokens=False)["input_ids"]]
        long = sum(len(r) > L for r in rows)
        if long:
            _warn_truncated(long, len(rows), L - 2, "CLIP tokens")
            rows = [r if len(r) <= L else r[: L - 1] + [self.eos_id] for r in rows]
        return _pad(rows, self.pad_id, L)[0]

    __call__ = tokenize


def load_clip_tokenizer(folder: str | Path, context_length: int = 77) -> ClipTokenizer:
    """A CLIP tokenizer from a folder with vocab.json + merges.txt (or a shipped name, e.g. "clip_shapes")."""
    return ClipTokenizer(folder, context_length)


# ----------------------------------------------------------------------------------------------- BERT


class OptimusBertTokenizer(_Tokenizer):
    """Optimus' encoder tokenizer: WordPiece (transformers' fast BertTokenizer, cased vocabulary, no lower-casing
    of its own) on the lower-cased text (`sentence.lower()`, as Optimus / VD v1.0 do).

    `tok(texts)` -> (ids [B, T], attention mask [B, T]): [CLS] + the first `max_length` word-pieces + [SEP],
    padded with [PAD] to the longest row (T <= max_length + 2).
    """

    files = ("vocab.txt",)

    def __init__(self, folder: str | Path, max_length: int = 77, lower: bool = True) -> None:
        from transformers import BertTokenizer

        self.folder = tokenizer_folder(folder)
        vocab = _read_vocab_txt(_need(self.folder, "vocab.txt", "BERT"))
        for t in BERT_SPECIALS:
            if t not in vocab:
                raise ValueError(f"{str(self.folder / 'vocab.txt')!r} lacks the special token {t!r}")
        if int(max_length) < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        self.max_length, self.lower = int(max_length), bool(lower)
        self.backend = BertTokenizer(vocab=vocab, do_lower_case=False, model_max_length=_NO_LIMIT)
        self.cls_id, self.sep_id, self.pad_id, self.unk_id = (vocab[t] for t in ("[CLS]", "[SEP]", "[PAD]", "[UNK]"))
        self.vocab_size = len(self.backend)

    def _prep(self, text: str) -> str:
        return text.lower() if self.lower else text

    def encode(self, text: str) -> list[int]:
        """Word-piece ids of one (lower-cased) text, without [CLS]/[SEP] and without truncation."""
        return list(self.backend(self._prep(text), add_special_tokens=False)["input_ids"])

    def decode(self, ids: Sequence[int] | Tensor) -> str:
        if torch.is_tensor(ids):
            ids = ids.tolist()
        return self.backend.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=True)

    def tokenize(self, texts: Sequence[str] | str) -> tuple[Tensor, Tensor]:
        texts = _check_texts(texts, "the BERT tokenizer")
        pieces = self.backend([self._prep(t) for t in texts], add_special_tokens=False)["input_ids"]
        long = sum(len(p) > self.max_length for p in pieces)
        if long:
            _warn_truncated(long, len(pieces), self.max_length, "word-pieces")
        rows = [[self.cls_id, *p[: self.max_length], self.sep_id] for p in pieces]
        return _pad(rows, self.pad_id)

    __call__ = tokenize


def load_bert_tokenizer(folder: str | Path, max_length: int = 77, lower: bool = True) -> OptimusBertTokenizer:
    """Optimus' BERT tokenizer from a folder with vocab.txt (or "bert_shapes")."""
    return OptimusBertTokenizer(folder, max_length, lower)


# ----------------------------------------------------------------------------------------------- GPT-2


class OptimusGPT2Tokenizer(_Tokenizer):
    """Optimus' decoder tokenizer: GPT-2's byte-level BPE (transformers' fast GPT2Tokenizer) with the added
    tokens <PAD>, <BOS>, <EOS> (in that order, after the vocabulary: 50257-50259 on GPT-2's).

    `tok(texts, max_length)` -> (ids [B, T], mask [B, T]): <BOS> text <EOS> padded with <PAD>; rows longer
    than `max_length` keep their first max_length - 1 tokens and end with <EOS> (one warning per call).
    """

    files = ("vocab.json", "merges.txt")

    def __init__(self, folder: str | Path) -> None:
        from transformers import GPT2Tokenizer

        self.folder = tokenizer_folder(folder)
        vocab = _read_vocab_json(_need(self.folder, "vocab.json", "GPT-2"))
        merges = _read_merges(_need(self.folder, "merges.txt", "GPT-2"))
        eot = GPT2_EOT if GPT2_EOT in vocab else None
        if eot is None:
            raise ValueError(f"{str(self.folder / 'vocab.json')!r} lacks GPT-2's {GPT2_EOT!r} token")
        self.backend = GPT2Tokenizer(vocab=vocab, merges=merges, unk_token=eot, bos_token=eot, eos_token=eot,
                                     model_max_length=_NO_LIMIT)
        # Optimus: tokenizer.add_special_tokens({'pad_token': '<PAD>', 'bos_token': '<BOS>', 'eos_token': '<EOS>'})
        self.backend.add_special_tokens({"pad_token": OPTIMUS_PAD, "bos_token": OPTIMUS_BOS, "eos_token": OPTIMUS_EOS})
        conv = self.backend.convert_tokens_to_ids
        self.pad_id, self.bos_id, self.eos_id = conv(OPTIMUS_PAD), conv(OPTIMUS_BOS), conv(OPTIMUS_EOS)
        self.vocab_size = len(self.backend)
        self._special = {self.pad_id, self.bos_id, self.eos_id}

    def encode(self, text: str) -> list[int]:
        """BPE ids of one text, without <BOS>/<EOS>."""
        return list(self.backend(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: Sequence[int] | Tensor) -> str:
        """Text of ids; <BOS>, <EOS> and <PAD> are dropped."""
        if torch.is_tensor(ids):
            ids = ids.tolist()
        keep = [int(i) for i in ids if int(i) not in self._special]
        return self.backend.decode(keep, skip_special_tokens=False, clean_up_tokenization_spaces=False).strip()

    def tokenize(self, texts: Sequence[str] | str, max_length: int | None = None) -> tuple[Tensor, Tensor]:
        texts = _check_texts(texts, "the GPT-2 tokenizer")
        rows = [[self.bos_id, *r, self.eos_id] for r in self.backend(texts, add_special_tokens=False)["input_ids"]]
        if max_length is not None:
            if max_length < 2:
                raise ValueError(f"max_length must be >= 2 (<BOS> and <EOS>), got {max_length}")
            long = sum(len(r) > max_length for r in rows)
            if long:
                _warn_truncated(long, len(rows), max_length - 2, "GPT-2 tokens")
                rows = [r if len(r) <= max_length else r[: max_length - 1] + [self.eos_id] for r in rows]
        return _pad(rows, self.pad_id)

    __call__ = tokenize


def load_gpt2_tokenizer(folder: str | Path) -> OptimusGPT2Tokenizer:
    """Optimus' GPT-2 tokenizer from a folder with vocab.json + merges.txt (or "gpt2_shapes")."""
    return OptimusGPT2Tokenizer(folder)


# ----------------------------------------------------------------------------------------------- corpus


def shapes_caption_corpus() -> list[str]:
    """Every caption `versadiff.data.shapes.ShapesDataset` can produce (one- and two-shape templates), sorted."""
    from versadiff.data import shapes as S

    out: set[str] = set()
    for fmt in S._ONE:
        for color in S.COLORS:
            for shape in S.SHAPES:
                for size in S.SIZES:
                    for where in S.POSITION_PHRASES.values():
                        out.add(fmt.format(color=color, shape=shape, size=size, where=where))
    for fmt in S._TWO:
        for c0 in S.COLORS:
            for c1 in S.COLORS:
                if c0 == c1:
                    continue
                for s0 in S.SHAPES:
                    for s1 in S.SHAPES:
                        for z0 in S.SIZES:
                            for z1 in S.SIZES:
                                out.add(fmt.format(c0=c0, s0=s0, z0=z0, c1=c1, s1=s1, z1=z1))
    return sorted(out)
