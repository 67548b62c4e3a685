"""Optimus' original checkpoint (`optimus-vae.pth` of Versatile Diffusion) -> versadiff's TextVAE.

The original layout (VD `lib/model_zoo/optimus.py` `optimus_vae_next`, modules `BertForLatentConnector_XX` and
`GPT2ForLatentConnector_XX`):

    encoder.embeddings.{word,position,token_type}_embeddings.weight, encoder.embeddings.LayerNorm.*
    encoder.encoder.layer.N.{attention.self.{query,key,value}, attention.output.{dense,LayerNorm},
                             intermediate.dense, output.{dense,LayerNorm}}.*
    encoder.pooler.dense.*, encoder.linear.weight                      (latent connector, 768 -> 2 x 768)
    decoder.transformer.{wte,wpe}.weight, decoder.transformer.ln_f.*
    decoder.transformer.h.N.{ln_1, attn.c_attn, attn.c_proj, ln_2, mlp.c_fc, mlp.c_proj}.*   (Conv1D [in, out])
    decoder.transformer.h.N.attn.bias                                  (a 1024 x 1024 causal-mask buffer)
    decoder.transformer.linear.weight, decoder.transformer.linear_emb.weight
    decoder.lm_head.weight                                             (tied to wte)

TextVAE uses the same names, so conversion drops the mask buffers (and `position_ids` / `masked_bias`, which
other versions of the code store) and checks the tie. A common prefix (e.g. `module.`, or a VD model's
`vae.text.`) is stripped. Files are read with `torch.load(weights_only=True)` (no pickled code runs) or
safetensors.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from versadiff.autoencoders.text_vae import TextVAE, TextVAEConfig

__all__ = ["read_optimus_state", "optimus_to_versadiff", "versadiff_to_optimus", "infer_optimus_config", "load_optimus"]

_ANCHOR = "encoder.embeddings.word_embeddings.weight"
_DROP = re.compile(r"(^decoder\.transformer\.h\.\d+\.attn\.(bias|masked_bias)$)|(position_ids$)")


def read_optimus_state(path: str | Path) -> dict[str, Tensor]:
    """The tensors of an Optimus checkpoint (.pth / .pt / .bin via torch.load(weights_only=True), or .safetensors);
    a {"state_dict": ...} or {"model": ...} wrapper is unwrapped."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"Optimus checkpoint {str(path)!r} does not exist (e.g. pretrained/optimus-vae.pth)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state: Any = load_file(str(path))
    else:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:  # pickled objects other than tensors: refuse rather than run them
            raise ValueError(f"{str(path)!r} cannot be read with torch.load(weights_only=True): {str(e).splitlines()[0]}") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict) and _has_anchor(state[key]):
            state = state[key]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(f"{str(path)!r} is not a state dict of tensors")
    return dict(state)


def _has_anchor(state: dict[str, Any]) -> bool:
    return any(k.endswith(_ANCHOR) for k in state)


def optimus_to_versadiff(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Optimus names -> TextVAE names: strip a common prefix, drop buffers, keep lm_head only if it is the tie."""
    anchors = [k for k in state if k.endswith(_ANCHOR)]
    if len(anchors) != 1:
        raise ValueError(f"not an Optimus VAE state dict: expected one '{_ANCHOR}' key, found {len(anchors)}")
    prefix = anchors[0][: -len(_ANCHOR)]
    out = {}
    for k, v in state.items():
        if not k.startswith(prefix):
            continue
        k = k[len(prefix) :]
        if _DROP.search(k):
            continue
        out[k] = v
    head, wte = out.get("decoder.lm_head.weight"), out.get("decoder.transformer.wte.weight")
    if head is not None and wte is not None and not torch.equal(head, wte):
        raise ValueError("decoder.lm_head.weight differs from decoder.transformer.wte.weight: Optimus ties them")
    out.pop("decoder.lm_head.weight", None)
    return out


def versadiff_to_optimus(state: dict[str, Tensor], positions: int | None = None) -> dict[str, Tensor]:
    """TextVAE state -> Optimus' layout (lm_head written as the tie; with `positions`, the causal-mask buffers
    attn.bias [1, 1, positions, positions] that the original modules carry)."""
    out = {k: v for k, v in state.items()}
    out["decoder.lm_head.weight"] = out["decoder.transformer.wte.weight"]
    if positions is not None:
        layers = sorted({int(m.group(1)) for k in out if (m := re.match(r"decoder\.transformer\.h\.(\d+)\.", k))})
        mask = torch.tril(torch.ones(positions, positions)).view(1, 1, positions, positions)
        for i in layers:
            out[f"decoder.transformer.h.{i}.attn.bias"] = mask
    return out


def _count(state: dict[str, Tensor], pattern: str) -> int:
    idx = {int(m.group(1)) for k in state if (m := re.match(pattern, k))}
    return max(idx) + 1 if idx else 0


def infer_optimus_config(state: dict[str, Tensor], **overrides: Any) -> TextVAEConfig:
    """The TextVAEConfig of a (converted) Optimus state dict. Head counts cannot be read from shapes: they
    default to hidden / 64 (12 for BERT-base and GPT-2 small); pass bert_heads / gpt2_heads otherwise.
    Tokenizers default to None: pass bert_tokenizer / gpt2_tokenizer folders to encode and decode text."""
    s = state
    try:
        bert_vocab, bert_hidden = s["encoder.embeddings.word_embeddings.weight"].shape
        gpt2_vocab, gpt2_hidden = s["decoder.transformer.wte.weight"].shape
        fields = dict(
            latent_size=s["encoder.linear.weight"].shape[0] // 2,
            bert_vocab_size=int(bert_vocab), bert_hidden_size=int(bert_hidden),
            bert_layers=_count(s, r"encoder\.encoder\.layer\.(\d+)\."), bert_heads=max(int(bert_hidden) // 64, 1),
            bert_intermediate_size=int(s["encoder.encoder.layer.0.intermediate.dense.weight"].shape[0]),
            bert_max_positions=int(s["encoder.embeddings.position_embeddings.weight"].shape[0]),
            bert_type_vocab_size=int(s["encoder.embeddings.token_type_embeddings.weight"].shape[0]),
            gpt2_vocab_size=int(gpt2_vocab), gpt2_hidden_size=int(gpt2_hidden),
            gpt2_layers=_count(s, r"decoder\.transformer\.h\.(\d+)\."), gpt2_heads=max(int(gpt2_hidden) // 64, 1),
            gpt2_positions=int(s["decoder.transformer.wpe.weight"].shape[0]),
            bert_tokenizer=None, gpt2_tokenizer=None,
        )  # fmt: skip
        fields["max_encoder_length"] = min(TextVAEConfig.max_encoder_length, fields["bert_max_positions"] - 2)
        fields["max_decoder_length"] = min(TextVAEConfig.max_decoder_length, fields["gpt2_positions"] - 1)
    except KeyError as e:
        raise ValueError(f"not an Optimus VAE state dict: {e.args[0]!r} is missing") from None
    return TextVAEConfig(**{**fields, **overrides})


def load_optimus(path: str | Path, config: TextVAEConfig | None = None, **overrides: Any) -> TextVAE:
    """A TextVAE (eval mode) with the weights of an Optimus checkpoint. config None: inferred from the shapes
    (see infer_optimus_config; `overrides` go to it, e.g. the tokenizer folders)."""
    state = optimus_to_versadiff(read_optimus_state(path))
    cfg = config if config is not None else infer_optimus_config(state, **overrides)
    model = TextVAE(cfg)
    model.load_weights(state, str(path))
    return model.eval()
