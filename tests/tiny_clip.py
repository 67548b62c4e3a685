"""Tiny CLIP text towers saved in the layouts users hold them (a diffusers pipeline's text_encoder/ + tokenizer/),
with the shipped shapes tokenizer, for the converter tests."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import torch
from transformers import CLIPTextConfig, CLIPTextModel

from versadiff.encoders import ClipTokenizer, tokenizer_folder


def tiny_clip_text(folder: Path, hidden: int) -> CLIPTextModel:
    """A tiny CLIPTextModel in folder/text_encoder and the shapes CLIP tokenizer in folder/tokenizer, as a
    diffusers pipeline folder holds them; returns the model."""
    tok = ClipTokenizer("clip_shapes")
    torch.manual_seed(1)
    model = CLIPTextModel(CLIPTextConfig(vocab_size=tok.vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                                         num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=77,
                                         bos_token_id=tok.bos_id, eos_token_id=tok.eos_id,
                                         pad_token_id=tok.pad_id)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save_pretrained(str(folder / "text_encoder"))
    (folder / "tokenizer").mkdir()
    for name in ("vocab.json", "merges.txt"):
        shutil.copyfile(tokenizer_folder("clip_shapes") / name, folder / "tokenizer" / name)
    return model
