"""Optimus, Versatile Diffusion's text VAE: a BERT encoder and a GPT-2 decoder around one latent vector.

    encoder: text (lower-cased, WordPiece) -> BERT -> pooled [CLS] (dense + tanh) -> Linear(no bias) -> mu, logvar
    decoder: GPT-2 whose every layer gets the latent twice:
      (a) memory: transformer.linear(z) (latent -> n_layer * hidden, no bias) split per layer; each piece is that
          layer's single past key AND value (raw, not passed through c_attn), so token positions start at 1;
      (b) embedding: transformer.linear_emb(z) added to every token embedding.
      lm_head is tied to the token embeddings.

The module names are those of Optimus' `optimus-vae.pth` (encoder.embeddings/encoder/pooler/linear,
decoder.transformer.{wte,wpe,h.N,ln_f,linear,linear_emb}, decoder.lm_head), so its weights load by name
(`versadiff.convert.optimus`). The BERT encoder is transformers' BertModel; the decoder is written here
(weights laid out as GPT-2's, Conv1D [in, out]) so that decoding keeps a key/value cache: every step feeds one
token (Optimus recomputes the whole sequence each step).

Training (Optimus): loss = rec + beta * KL per sample, rec the summed token cross-entropy of <BOS> text <EOS>
given a reparameterised z; KL with free bits (dimensions whose KL is below `free_bits` are left out, Optimus'
`dim_target_kl`, applied when beta > 0); beta follows `frange_cycle_zero_linear` (cyclical annealing with a
pure auto-encoding stage at the start of each cycle). Inference uses mu.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from versadiff.autoencoders.base import CODECS, Codec, no_autocast
from versadiff.component import ComponentConfig

__all__ = [
    "TextVAEConfig",
    "TextVAE",
    "TextVAECodec",
    "GPT2LatentDecoder",
    "KVCache",
    "frange_cycle_zero_linear",
    "kl_beta",
    "DECODE_STRATEGIES",
]

DECODE_STRATEGIES = ("sample", "greedy", "top_p", "beam")
CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
BERT_DIR, GPT2_DIR = "bert_tokenizer", "gpt2_tokenizer"


@dataclasses.dataclass
class TextVAEConfig(ComponentConfig):
    """Optimus-style text VAE. The defaults are a miniature for the shapes captions; `optimus()` is the real one.

    path: a `save_pretrained` folder to load instead of building (used by the codec; the other fields are then
    read from the folder). bert_tokenizer / gpt2_tokenizer: tokenizer folders or shipped names (None: build the
    network only, e.g. on the meta device). *_vocab_size: None = the tokenizer's (GPT-2: with the 3 added tokens).
    max_encoder_length: word-pieces per text (77, VD v1.0); max_decoder_length: GPT-2 tokens per training text
    (<BOS> and <EOS> included). Training: beta (the top of the schedule), kl_cycles, kl_ratio_increase,
    kl_ratio_zero (Optimus' frange_cycle_zero_linear), free_bits (Optimus' dim_target_kl; 0 disables),
    length_weighted (divide rec by the number of target tokens), word_dropout, ae_warmup.
    """

    type_name = "text_vae"
    path: str | None = None
    latent_size: int = 32
    bert_tokenizer: str | None = "bert_shapes"
    gpt2_tokenizer: str | None = "gpt2_shapes"
    bert_vocab_size: int | None = None
    bert_hidden_size: int = 64
    bert_layers: int = 2
    bert_heads: int = 4
    bert_intermediate_size: int = 256
    bert_max_positions: int = 128
    bert_type_vocab_size: int = 2
    gpt2_vocab_size: int | None = None
    gpt2_hidden_size: int = 64
    gpt2_layers: int = 2
    gpt2_heads: int = 4
    gpt2_positions: int = 128
    dropout: float = 0.1
    max_encoder_length: int = 77
    max_decoder_length: int = 64
    beta: float = 1.0
    kl_cycles: int = 1
    kl_ratio_increase: float = 0.25
    kl_ratio_zero: float = 0.25
    free_bits: float = 0.5
    length_weighted: bool = False
    #: training only: the probability of replacing each decoder input token after <BOS> by <PAD>, so the decoder
    #: must read the words from the latent (word dropout, Bowman et al. 2016, against KL vanishing); Optimus: 0
    word_dropout: float = 0.0
    #: training only: while beta is 0 (the autoencoder phase of the KL schedule) decode the mean, not a sample,
    #: so the decoder learns to read the latent before the posterior noise is trained down; Optimus: False
    ae_warmup: bool = False

    @classmethod
    def optimus(cls, **overrides: Any) -> "TextVAEConfig":
        """Optimus as in VD: BERT-base cased (28,996 tokens) + GPT-2 small (50,260 tokens), latent 768.
        Pass the tokenizer folders of bert-base-cased (vocab.txt) and GPT-2 (vocab.json + merges.txt)."""
        base = dict(
            latent_size=768, bert_tokenizer=None, gpt2_tokenizer=None, bert_vocab_size=28996, bert_hidden_size=768,
            bert_layers=12, bert_heads=12, bert_intermediate_size=3072, bert_max_positions=512, gpt2_vocab_size=50260,
            gpt2_hidden_size=768, gpt2_layers=12, gpt2_heads=12, gpt2_positions=1024,
        )  # fmt: skip
        return cls(**{**base, **overrides})


# ----------------------------------------------------------------------------------------------- schedules


def frange_cycle_zero_linear(
    n_iter: int, start: float = 0.0, stop: float = 1.0, n_cycle: int = 4, ratio_increase: float = 0.5, ratio_zero: float = 0.3
) -> np.ndarray:
    """Optimus' cyclical beta schedule over `n_iter` steps: each of `n_cycle` periods holds `start` for its
    first `ratio_zero` fraction, rises linearly to `stop` over the next `ratio_increase` fraction (the step is
    (stop - start) / (period * ratio_increase), counted from the end of the zero stage), then stays at `stop`."""
    if n_iter < 1 or n_cycle < 1:
        raise ValueError(f"n_iter and n_cycle must be >= 1, got {n_iter} and {n_cycle}")
    if not 0 < ratio_increase <= 1 or not 0 <= ratio_zero < 1:
        raise ValueError(f"need 0 < ratio_increase <= 1 and 0 <= ratio_zero < 1, got {ratio_increase}, {ratio_zero}")
    out = np.full(n_iter, float(stop))
    period = n_iter / n_cycle
    step = (stop - start) / (period * ratio_increase)
    for c in range(n_cycle):
        v, i = float(start), 0
        while v <= stop and int(i + c * period) < n_iter:
            if i < period * ratio_zero:
                out[int(i + c * period)] = start
            else:
                out[int(i + c * period)] = v
                v += step
            i += 1
    return out


def kl_beta(
    step: int, total_steps: int, beta: float = 1.0, cycles: int = 1, ratio_increase: float = 0.25, ratio_zero: float = 0.25
) -> float:
    """beta at `step` (0-based) of a `total_steps` run under frange_cycle_zero_linear (the last value after it)."""
    sched = frange_cycle_zero_linear(max(int(total_steps), 1), 0.0, beta, cycles, ratio_increase, ratio_zero)
    return float(sched[min(max(int(step), 0), len(sched) - 1)])


# ----------------------------------------------------------------------------------------------- decoder


class Conv1D(nn.Module):
    """GPT-2's linear layer: weight [in, out] (the transpose of nn.Linear), as in its checkpoints."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_in, n_out).normal_(std=0.02))
        self.bias = nn.Parameter(torch.zeros(n_out))

    def forward(self, x: Tensor) -> Tensor:
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).view(*x.shape[:-1], -1)


class KVCache:
    """Preallocated keys and values of every layer: k, v [n_layer, B, H, capacity, head_dim]; slot 0 holds the
    latent memory, `length` slots are filled."""

    def __init__(self, k: Tensor, v: Tensor, length: int) -> None:
        self.k, self.v, self.length = k, v, length

    @property
    def capacity(self) -> int:
        return self.k.shape[3]

    def reorder(self, index: Tensor) -> None:
        """Keep batch rows `index` (beam search)."""
        self.k = self.k.index_select(1, index)
        self.v = self.v.index_select(1, index)


class _Attention(nn.Module):
    def __init__(self, hidden: int, heads: int, dropout: float) -> None:
        super().__init__()
        if hidden % heads:
            raise ValueError(f"GPT-2 hidden size {hidden} is not divisible by its {heads} heads")
        self.heads, self.dropout = heads, dropout
        self.c_attn = Conv1D(hidden, 3 * hidden)
        self.c_proj = Conv1D(hidden, hidden)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, mem: Tensor, layer: int, cache: KVCache | None) -> Tensor:
        B, T, C = x.shape
        H = self.heads
        q, k, v = self.c_attn(x).view(B, T, 3, H, C // H).permute(2, 0, 3, 1, 4)  # each [B, H, T, hd]
        if cache is None:  # memory + all tokens: token i sees the memory and tokens 0..i
            k = torch.cat([mem, k], dim=2)
            v = torch.cat([mem, v], dim=2)
            mask = torch.ones(T, T + 1, dtype=torch.bool, device=x.device).tril(diagonal=1) if T > 1 else None
        else:
            s = cache.length
            cache.k[layer, :, :, s : s + T] = k
            cache.v[layer, :, :, s : s + T] = v
            k, v = cache.k[layer, :, :, : s + T], cache.v[layer, :, :, : s + T]
            mask = torch.ones(T, s + T, dtype=torch.bool, device=x.device).tril(diagonal=s) if T > 1 else None
        p = self.dropout if self.training else 0.0
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        return self.resid_dropout(self.c_proj(a.transpose(1, 2).reshape(B, T, C)))


class _MLP(nn.Module):
    def __init__(self, hidden: int, dropout: float) -> None:
        super().__init__()
        self.c_fc = Conv1D(hidden, 4 * hidden)
        self.c_proj = Conv1D(4 * hidden, hidden)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))  # GPT-2's gelu_new


class _Block(nn.Module):
    def __init__(self, hidden: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(hidden, eps=1e-5)
        self.attn = _Attention(hidden, heads, dropout)
        self.ln_2 = nn.LayerNorm(hidden, eps=1e-5)
        self.mlp = _MLP(hidden, dropout)

    def forward(self, x: Tensor, mem: Tensor, layer: int, cache: KVCache | None) -> Tensor:
        x = x + self.attn(self.ln_1(x), mem, layer, cache)
        return x + self.mlp(self.ln_2(x))


class _Transformer(nn.Module):
    def __init__(self, vocab: int, hidden: int, layers: int, heads: int, positions: int, latent: int, dropout: float) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, hidden)
        self.wpe = nn.Embedding(positions, hidden)
        self.drop = nn.Dropout(dropout)
        self.h = nn.ModuleList([_Block(hidden, heads, dropout) for _ in range(layers)])
        self.ln_f = nn.LayerNorm(hidden, eps=1e-5)
        self.linear = nn.Linear(latent, hidden * layers, bias=False)  # one memory vector per layer
        self.linear_emb = nn.Linear(latent, hidden, bias=False)  # added to every token embedding


class GPT2LatentDecoder(nn.Module):
    """GPT-2 conditioned on a latent z (Optimus' GPT2ForLatentConnector with latent_as_gpt_memory and
    latent_as_gpt_emb). `forward(ids, z)` -> logits [B, T, V] with positions 1..T; with a cache from
    `init_cache(z, capacity)` it continues the cached sequence."""

    def __init__(self, vocab: int, hidden: int, layers: int, heads: int, positions: int, latent: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.positions = heads, positions
        self.transformer = _Transformer(vocab, hidden, layers, heads, positions, latent, dropout)
        self.lm_head = nn.Linear(hidden, vocab, bias=False)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
        self.lm_head.weight = self.transformer.wte.weight  # tied

    def memory(self, z: Tensor) -> Tensor:
        """The per-layer memory [n_layer, B, H, 1, head_dim] (each layer's one key = value)."""
        t = self.transformer
        L, B = len(t.h), z.shape[0]
        C = t.wte.embedding_dim
        return t.linear(z).view(B, L, self.heads, 1, C // self.heads).permute(1, 0, 2, 3, 4)

    def init_cache(self, z: Tensor, capacity: int) -> KVCache:
        """An empty cache for up to `capacity` tokens after the memory slot."""
        mem = self.memory(z)
        L, B, H, _, hd = mem.shape
        k = mem.new_empty(L, B, H, capacity + 1, hd)
        v = mem.new_empty(L, B, H, capacity + 1, hd)
        k[:, :, :, :1] = mem
        v[:, :, :, :1] = mem
        return KVCache(k, v, 1)

    def forward(self, input_ids: Tensor, z: Tensor, cache: KVCache | None = None) -> Tensor:
        t = self.transformer
        T = input_ids.shape[1]
        start = 1 if cache is None else cache.length  # position 0 is the memory
        if start + T > self.positions:
            raise ValueError(f"the GPT-2 decoder has {self.positions} positions; {start + T} were asked for")
        if cache is not None and cache.length + T > cache.capacity:
            raise ValueError(f"the decoding cache holds {cache.capacity - 1} tokens; {cache.length - 1 + T} were asked for")
        pos = torch.arange(start, start + T, device=input_ids.device)
        x = t.drop(t.wte(input_ids) + t.wpe(pos)[None] + t.linear_emb(z)[:, None])
        mem = None if cache is not None else self.memory(z)
        for i, block in enumerate(t.h):
            x = block(x, None if mem is None else mem[i], i, cache)
        if cache is not None:
            cache.length += T
        return self.lm_head(t.ln_f(x))


# ----------------------------------------------------------------------------------------------- the VAE


def _resolve_tok(name: str | None, base: Path | None) -> str | None:
    if name is None or base is None:
        return name
    p = base / name
    return str(p) if p.is_dir() else name


class TextVAE(nn.Module):
    """Optimus (see the module docstring). `encode(texts)` -> mu [B, latent]; `decode(z, ...)` -> texts;
    `loss(texts, beta)` -> per-sample losses and statistics for training."""

    config_class = TextVAEConfig

    def __init__(self, config: TextVAEConfig | None = None, _base: Path | None = None) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        from versadiff.encoders.tokenizers import OptimusBertTokenizer, OptimusGPT2Tokenizer

        self.config = cfg = config or TextVAEConfig()
        bt, gt = _resolve_tok(cfg.bert_tokenizer, _base), _resolve_tok(cfg.gpt2_tokenizer, _base)
        self.bert_tokenizer = OptimusBertTokenizer(bt, cfg.max_encoder_length) if bt is not None else None
        self.gpt2_tokenizer = OptimusGPT2Tokenizer(gt) if gt is not None else None
        bert_vocab = cfg.bert_vocab_size or (self.bert_tokenizer.vocab_size if self.bert_tokenizer else None)
        gpt2_vocab = cfg.gpt2_vocab_size or (self.gpt2_tokenizer.vocab_size if self.gpt2_tokenizer else None)
        if bert_vocab is None or gpt2_vocab is None:
            raise ValueError("a TextVAE without tokenizers needs bert_vocab_size and gpt2_vocab_size")
        for tok, n, what in ((self.bert_tokenizer, bert_vocab, "BERT"), (self.gpt2_tokenizer, gpt2_vocab, "GPT-2")):
            if tok is not None and tok.vocab_size > n:
                raise ValueError(f"the {what} tokenizer has {tok.vocab_size} tokens but the model only {n}")
        if cfg.max_decoder_length > cfg.gpt2_positions - 1:
            raise ValueError(f"max_decoder_length {cfg.max_decoder_length} exceeds gpt2_positions - 1 = {cfg.gpt2_positions - 1}")
        if cfg.max_encoder_length + 2 > cfg.bert_max_positions:
            raise ValueError(f"max_encoder_length {cfg.max_encoder_length} + 2 exceeds bert_max_positions {cfg.bert_max_positions}")
        bert_cfg = BertConfig(
            vocab_size=bert_vocab, hidden_size=cfg.bert_hidden_size, num_hidden_layers=cfg.bert_layers,
            num_attention_heads=cfg.bert_heads, intermediate_size=cfg.bert_intermediate_size,
            max_position_embeddings=cfg.bert_max_positions, type_vocab_size=cfg.bert_type_vocab_size,
            hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.dropout, hidden_act="gelu",
            layer_norm_eps=1e-12, pad_token_id=0,
        )  # fmt: skip
        self.encoder = BertModel(bert_cfg, add_pooling_layer=True)
        # Optimus' connector sits inside the encoder (encoder.linear): pooled [CLS] -> (mu, logvar)
        self.encoder.linear = nn.Linear(cfg.bert_hidden_size, 2 * cfg.latent_size, bias=False)
        nn.init.normal_(self.encoder.linear.weight, std=0.02)
        self.decoder = GPT2LatentDecoder(gpt2_vocab, cfg.gpt2_hidden_size, cfg.gpt2_layers, cfg.gpt2_heads,
                                         cfg.gpt2_positions, cfg.latent_size, cfg.dropout)  # fmt: skip
        tok = self.gpt2_tokenizer
        # Optimus adds <PAD>, <BOS>, <EOS> after GPT-2's 50,257 tokens: the last three ids without a tokenizer
        if tok is not None:
            self.pad_id, self.bos_id, self.eos_id = tok.pad_id, tok.bos_id, tok.eos_id
        else:
            self.pad_id, self.bos_id, self.eos_id = gpt2_vocab - 3, gpt2_vocab - 2, gpt2_vocab - 1

    # --------------------------------------------------------------------------------------- encoder

    @property
    def latent_size(self) -> int:
        return self.config.latent_size

    def _need(self, tok: Any, what: str) -> Any:
        if tok is None:
            raise ValueError(f"this TextVAE was built without a {what} tokenizer (set {what.lower()}_tokenizer in its config)")
        return tok

    def encode_stats(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        """(mu, logvar) [B, latent] of BERT token ids [B, T] and their attention mask."""
        dev = self.encoder.linear.weight.device
        pooled = self.encoder(input_ids=input_ids.to(dev), attention_mask=attention_mask.to(dev)).pooler_output
        mu, logvar = self.encoder.linear(pooled).chunk(2, dim=-1)
        return mu, logvar

    def encode_texts(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        ids, mask = self._need(self.bert_tokenizer, "BERT")(texts)
        return self.encode_stats(ids, mask)

    def encode(self, texts: Sequence[str]) -> Tensor:
        """The posterior mean mu [B, latent] (VD: no sampling, no scaling)."""
        return self.encode_texts(texts)[0]

    # --------------------------------------------------------------------------------------- training

    def beta_at(self, step: int, total_steps: int) -> float:
        c = self.config
        return kl_beta(step, total_steps, c.beta, c.kl_cycles, c.kl_ratio_increase, c.kl_ratio_zero)

    def loss(self, texts: Sequence[str], beta: float | None = None, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Per-sample Optimus losses: {"loss", "rec", "kl", "kl_full", "tokens"} each [B] ("tokens": the length of
        <BOS> text <EOS>, which `length_weighted` divides rec by, as Optimus), plus "beta" (0-d) and
        "active_dims" (0-d: latent dimensions above the free-bits threshold, averaged over the batch).

        rec: summed cross-entropy of <BOS> text <EOS> (every target token, <EOS> included, pads ignored);
        kl: the KL term that enters the loss (free bits applied when beta > 0); kl_full: the plain KL.
        beta None: the config's beta."""
        cfg = self.config
        beta = cfg.beta if beta is None else float(beta)
        mu, logvar = self.encode_texts(texts)
        dec_ids, dec_mask = self._need(self.gpt2_tokenizer, "GPT2")(texts, max_length=cfg.max_decoder_length)
        dec_ids, dec_mask = dec_ids.to(mu.device), dec_mask.to(mu.device)
        std = (0.5 * logvar).exp()
        eps = torch.randn(mu.shape, generator=generator, device=generator.device if generator is not None else mu.device)
        z = mu if (cfg.ae_warmup and beta == 0) else mu + eps.to(mu.device) * std
        inputs = dec_ids
        if self.training and cfg.word_dropout > 0:
            drop = torch.rand(dec_ids.shape, generator=generator,
                              device=generator.device if generator is not None else dec_ids.device).to(dec_ids.device)
            drop = (drop < cfg.word_dropout) & (dec_mask == 1)
            drop[:, 0] = False  # keep <BOS>
            inputs = dec_ids.masked_fill(drop, self.gpt2_tokenizer.pad_id)
        logits = self.decoder(inputs, z)
        target = dec_ids[:, 1:].masked_fill(dec_mask[:, 1:] == 0, -100)
        ce = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="none")
        rec = ce.view(target.shape).sum(dim=1)
        tokens = dec_mask.sum(dim=1).to(rec.dtype)  # Optimus' sent_length: <BOS> text <EOS>
        kl_dim = 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1.0)
        kl_full = kl_dim.sum(dim=1)
        above = kl_dim > cfg.free_bits
        kl = (kl_dim * above).sum(dim=1) if (cfg.free_bits > 0 and beta > 0) else kl_full
        rec_term = rec / tokens.clamp(min=1) if cfg.length_weighted else rec
        return {
            "loss": rec_term + beta * kl,
            "rec": rec,
            "kl": kl,
            "kl_full": kl_full,
            "tokens": tokens,
            "beta": torch.tensor(beta),
            "active_dims": above.float().sum(dim=1).mean().detach(),
        }

    def forward(self, texts: Sequence[str], beta: float | None = None) -> dict[str, Tensor]:
        return self.loss(texts, beta)

    # --------------------------------------------------------------------------------------- decoding

    @torch.no_grad()
    def generate_ids(
        self,
        z: Tensor,
        strategy: str = "sample",
        temperature: float = 1.0,
        top_p: float = 0.9,
        num_beams: int = 4,
        max_length: int = 30,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
    ) -> list[list[int]]:
        """Token ids decoded from latents z [B, latent], <BOS>/<EOS> not included. A sequence stops at <EOS>;
        <BOS> text <EOS> holds at most `max_length` tokens (VD: 30, so at most 28 text tokens: VD overwrites the
        token sampled at the limit with <EOS>). use_cache=False recomputes the whole sequence every step
        (Optimus' way; the same tokens, slower)."""
        if strategy not in DECODE_STRATEGIES:
            raise ValueError(f"decoding strategy must be one of {', '.join(DECODE_STRATEGIES)}, got {strategy!r}")
        if not torch.is_tensor(z) or z.ndim != 2 or z.shape[1] != self.latent_size:
            got = tuple(z.shape) if torch.is_tensor(z) else type(z).__name__
            raise ValueError(f"decode takes latents [B, {self.latent_size}], got {got}")
        if z.shape[0] == 0:
            raise ValueError("decode got an empty batch of latents")
        if max_length < 3:
            raise ValueError(f"max_length must be >= 3 (<BOS>, a token, <EOS>), got {max_length}")
        if max_length > self.decoder.positions:
            raise ValueError(f"max_length {max_length} exceeds the decoder's {self.decoder.positions} positions")
        if strategy in ("sample", "top_p") and not temperature > 0:
            raise ValueError(f"temperature must be > 0 for sampling, got {temperature}")
        if strategy == "top_p" and not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        was = self.training
        self.eval()
        try:
            with no_autocast(z):
                z = z.to(self.encoder.linear.weight.device, torch.float32)
                if strategy == "beam":
                    return self._beam(z, int(num_beams), max_length, use_cache)
                return self._step_decode(z, strategy, float(temperature), float(top_p), max_length, generator, use_cache)
        finally:
            self.train(was)

    def _logits_fn(self, z: Tensor, capacity: int, use_cache: bool):
        """A function (all tokens so far [N, t]) -> next-token logits [N, V], with or without a cache."""
        if not use_cache:
            return (lambda seq: self.decoder(seq, z)[:, -1].float()), None
        cache = self.decoder.init_cache(z, capacity)

        def step(seq: Tensor) -> Tensor:
            new = seq[:, cache.length - 1 :]  # the tokens the cache has not seen
            return self.decoder(new, z, cache)[:, -1].float()

        return step, cache

    def _step_decode(self, z: Tensor, strategy: str, temperature: float, top_p: float, max_length: int,
                     generator: torch.Generator | None, use_cache: bool) -> list[list[int]]:  # fmt: skip
        B = z.shape[0]
        logits_of, _ = self._logits_fn(z, max_length, use_cache)
        seq = torch.full((B, 1), self.bos_id, dtype=torch.long, device=z.device)
        done = torch.zeros(B, dtype=torch.bool, device=z.device)
        for _ in range(max_length - 2):
            logits = logits_of(seq)
            if strategy == "greedy":
                nxt = logits.argmax(dim=-1)
            else:
                probs = F.softmax(logits / temperature, dim=-1)
                if strategy == "top_p":
                    probs = _top_p_filter(probs, top_p)
                nxt = torch.multinomial(probs.to(generator.device) if generator is not None else probs, 1,
                                        generator=generator).view(-1).to(z.device)  # fmt: skip
            nxt = nxt.masked_fill(done, self.pad_id)
            seq = torch.cat([seq, nxt[:, None]], dim=1)
            done |= nxt == self.eos_id
            if bool(done.all()):
                break
        return [self._strip(row) for row in seq[:, 1:].tolist()]

    def _strip(self, row: list[int]) -> list[int]:
        return row[: row.index(self.eos_id)] if self.eos_id in row else row

    def _beam(self, z: Tensor, K: int, max_length: int, use_cache: bool) -> list[list[int]]:
        """Beam search (sum of log-probabilities, hypotheses ranked by score / length); batched with a
        reordered cache."""
        if K < 1:
            raise ValueError(f"num_beams must be >= 1, got {K}")
        B = z.shape[0]
        zk = z.repeat_interleave(K, dim=0)
        logits_of, cache = self._logits_fn(zk, max_length, use_cache)
        seq = torch.full((B * K, 1), self.bos_id, dtype=torch.long, device=z.device)
        scores = torch.full((B, K), -math.inf, device=z.device)
        scores[:, 0] = 0.0  # all beams start identical: expand only the first
        finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(B)]
        closed = [False] * B
        for t in range(max_length - 2):
            logp = F.log_softmax(logits_of(seq), dim=-1)  # [B*K, V]
            V = logp.shape[-1]
            cand = (scores.view(-1, 1) + logp).view(B, K * V)
            top_s, top_i = cand.topk(2 * K, dim=1)
            new_rows, new_tok, new_scores = [], [], []
            last = t == max_length - 3
            for b in range(B):
                rows, toks, sc = [], [], []
                for s, i in zip(top_s[b].tolist(), top_i[b].tolist()):
                    if s == -math.inf:
                        break
                    beam, tok = divmod(i, V)
                    if tok == self.eos_id:
                        if not closed[b]:
                            body = seq[b * K + beam, 1:].tolist()
                            finished[b].append((s / (len(body) + 1), body))
                        continue
                    rows.append(b * K + beam)
                    toks.append(tok)
                    sc.append(s)
                    if len(rows) == K:
                        break
                while len(rows) < K:  # fewer live candidates than beams: pad with dead copies
                    rows.append(rows[-1] if rows else b * K)
                    toks.append(self.pad_id)
                    sc.append(-math.inf)
                if len(finished[b]) >= K:
                    closed[b] = True
                new_rows += rows
                new_tok += toks
                new_scores.append(sc)
            if last or all(closed):
                for b in range(B):  # at the length limit the live beams count as finished
                    if not closed[b]:
                        for k in range(K):
                            s = new_scores[b][k]
                            if s > -math.inf:
                                body = seq[new_rows[b * K + k], 1:].tolist() + [new_tok[b * K + k]]
                                finished[b].append((s / len(body), body))
                break
            index = torch.tensor(new_rows, device=z.device)
            seq = torch.cat([seq.index_select(0, index), torch.tensor(new_tok, device=z.device)[:, None]], dim=1)
            scores = torch.tensor(new_scores, device=z.device)
            if cache is not None:
                cache.reorder(index)
        return [max(f, key=lambda h: h[0])[1] if f else [] for f in finished]

    def decode(self, z: Tensor, strategy: str = "sample", temperature: float = 1.0, top_p: float = 0.9,
               num_beams: int = 4, max_length: int = 30, generator: torch.Generator | None = None,
               use_cache: bool = True) -> list[str]:  # fmt: skip
        """Texts decoded from latents z [B, latent] ("sample": VD's multinomial sampling at temperature 1;
        "greedy"; "top_p": nucleus sampling; "beam": beam search with `num_beams`)."""
        tok = self._need(self.gpt2_tokenizer, "GPT2")
        ids = self.generate_ids(z, strategy, temperature, top_p, num_beams, max_length, generator, use_cache)
        return [tok.decode(r) for r in ids]

    # --------------------------------------------------------------------------------------- files

    def save_pretrained(self, folder: str | Path) -> Path:
        """config.json + model.safetensors (lm_head stored once, as the tied embeddings) + the tokenizer folders
        (bert_tokenizer/, gpt2_tokenizer/)."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        cfg = self.config.to_dict()
        cfg["path"] = None
        for tok, sub, key, names in ((self.bert_tokenizer, BERT_DIR, "bert_tokenizer", ("vocab.txt",)),
                                     (self.gpt2_tokenizer, GPT2_DIR, "gpt2_tokenizer", ("vocab.json", "merges.txt"))):  # fmt: skip
            if tok is None:
                cfg[key] = None
                continue
            (folder / sub).mkdir(exist_ok=True)
            for n in names:
                if (tok.folder / n).resolve() != (folder / sub / n).resolve():
                    shutil.copyfile(tok.folder / n, folder / sub / n)
            cfg[key] = sub
        cfg["bert_vocab_size"] = self.encoder.config.vocab_size
        cfg["gpt2_vocab_size"] = self.decoder.transformer.wte.num_embeddings
        (folder / CONFIG_FILE).write_text(json.dumps({"type": TextVAEConfig.type_name, **cfg}, indent=2) + "\n")
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items() if k != "decoder.lm_head.weight"}
        save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": "pt", "type": TextVAEConfig.type_name})
        return folder

    @classmethod
    def load_pretrained(cls, folder: str | Path) -> "TextVAE":
        from safetensors.torch import load_file

        folder = Path(folder).expanduser()
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"text VAE file {str(folder / name)!r} is missing; save the model with save_pretrained")
        raw = json.loads((folder / CONFIG_FILE).read_text())
        if raw.get("type", TextVAEConfig.type_name) != TextVAEConfig.type_name:
            raise ValueError(f"{str(folder / CONFIG_FILE)!r} describes a {raw.get('type')!r}, not a text_vae")
        model = cls(TextVAEConfig.from_dict(raw), _base=folder)
        model.load_weights(load_file(str(folder / WEIGHTS_FILE)), str(folder / WEIGHTS_FILE))
        return model

    def load_weights(self, state: dict[str, Tensor], source: str = "the state dict") -> None:
        """Strict load of a TextVAE state dict (decoder.lm_head.weight optional: it is the tied embedding)."""
        state = dict(state)
        head = state.pop("decoder.lm_head.weight", None)
        own = {k: v for k, v in self.state_dict().items() if k != "decoder.lm_head.weight"}
        missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing:
            raise ValueError(f"{source} lacks {len(missing)} text VAE weight(s), e.g. {missing[:3]}; is it the right config?")
        if extra:
            raise ValueError(f"{source} has {len(extra)} unexpected weight(s), e.g. {extra[:3]}; is it the right config?")
        for k, v in state.items():
            if v.shape != own[k].shape:
                raise ValueError(f"{source}: {k} has shape {tuple(v.shape)}, the config expects {tuple(own[k].shape)}")
        wte = state["decoder.transformer.wte.weight"]
        if head is not None and not torch.equal(head.to(wte.dtype), wte):
            raise ValueError(f"{source}: decoder.lm_head.weight differs from decoder.transformer.wte.weight, but they are tied")
        self.load_state_dict({**state, "decoder.lm_head.weight": state["decoder.transformer.wte.weight"]}, strict=True)


def _top_p_filter(probs: Tensor, top_p: float) -> Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches top_p (at least one), renormalised."""
    sorted_p, idx = probs.sort(dim=-1, descending=True)
    drop = sorted_p.cumsum(dim=-1) - sorted_p >= top_p
    drop[..., 0] = False
    sorted_p = sorted_p.masked_fill(drop, 0.0)
    out = torch.zeros_like(probs).scatter(-1, idx, sorted_p)
    return out / out.sum(dim=-1, keepdim=True)


# ----------------------------------------------------------------------------------------------- codec


@CODECS.register
class TextVAECodec(Codec):
    """Text <-> the Optimus latent: encode(list[str]) -> mu * scale [B, latent] (scale 1: VD does not scale text
    latents; a codec spec's scale_factor sets it); decode(z, **options) -> list[str] (options of
    TextVAE.decode). Frozen, float32, no autocast.

    Built from a TextVAEConfig (a `path` loads a save_pretrained folder), a folder path, or a TextVAE."""

    config_class = TextVAEConfig
    modality = "text"
    space = "continuous"

    def __init__(self, config: TextVAEConfig | TextVAE | str | Path | None = None) -> None:
        if isinstance(config, TextVAE):
            vae = config
        elif isinstance(config, (str, Path)):
            vae = TextVAE.load_pretrained(config)
        elif config is not None and config.path is not None:
            vae = TextVAE.load_pretrained(config.path)
        else:
            vae = TextVAE(config)
        self.module: TextVAE = vae.eval().requires_grad_(False)
        self.scale = 1.0

    @property
    def latent_size(self) -> int:
        return self.module.latent_size

    def _device(self) -> torch.device:
        return self.module.encoder.linear.weight.device

    @torch.no_grad()
    def encode(self, data: Sequence[str]) -> Tensor:
        with no_autocast(self._device()):
            return self.module.encode(list(data)).float() * self.scale

    @torch.no_grad()
    def decode(self, latents: Tensor, **options: Any) -> list[str]:
        with no_autocast(self._device()):
            return self.module.decode(latents.float().to(self._device()) / self.scale, **options)

    def latent_shape(self, data_shape: tuple[int, ...] = ()) -> tuple[int, ...]:
        return (self.latent_size,)
