"""Optimus text VAE: the latent-conditioned GPT-2 against transformers' GPT2Model given the latent as explicit
past keys/values, the KV-cached decoding against full recomputation, loading Optimus' checkpoint layout, the
training losses and schedules, the codec, and the full-size sizes on the meta device."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
import torch.nn.functional as F

from versadiff.autoencoders.base import CODECS
from versadiff.autoencoders.text_vae import (
    TextVAE,
    TextVAECodec,
    TextVAEConfig,
    frange_cycle_zero_linear,
    kl_beta,
)
from versadiff.convert.optimus import infer_optimus_config, load_optimus, optimus_to_versadiff, read_optimus_state

import transformers  # a core dependency (pyproject dependencies): missing is an error  # noqa: E402

CAPS = ["a red circle", "there is a blue square in the top left", "At the bottom, a small cyan triangle"]


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    return TextVAE(TextVAEConfig(gpt2_layers=3, latent_size=24)).eval()


def _gpt2_reference(decoder):
    """transformers' GPT2Model holding the decoder's transformer weights (the latent parts excluded)."""
    from transformers import GPT2Config, GPT2Model

    t = decoder.transformer
    V, C = t.wte.weight.shape
    cfg = GPT2Config(vocab_size=V, n_embd=C, n_layer=len(t.h), n_head=decoder.heads, n_positions=decoder.positions,
                     activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     layer_norm_epsilon=1e-5)  # fmt: skip
    ref = GPT2Model(cfg).eval()
    sd = {k[len("transformer.") :]: v for k, v in decoder.state_dict().items()
          if k.startswith("transformer.") and not k.startswith(("transformer.linear.", "transformer.linear_emb."))}  # fmt: skip
    ref.load_state_dict(sd, strict=True)
    return ref


def _reference_logits(ref, wte, linear, linear_emb, heads, ids, z):
    """Logits of GPT2Model given the Optimus latent: per layer one past key = value = the raw slice of
    linear(z) (a DynamicCache of length 1, so positions start at 1) and linear_emb(z) added to the embeddings."""
    from transformers import DynamicCache

    B, L, C = z.shape[0], ref.config.n_layer, ref.config.n_embd
    mem = linear(z).view(B, L, heads, 1, C // heads)
    cache = DynamicCache()
    for layer in range(L):
        cache.update(mem[:, layer], mem[:, layer], layer)
    emb = wte(ids) + linear_emb(z)[:, None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            out = ref(inputs_embeds=emb, cache=cache, use_cache=True)
        except TypeError:  # transformers before the `cache` keyword
            out = ref(inputs_embeds=emb, past_key_values=cache, use_cache=True)
    return out.last_hidden_state @ wte.weight.t()


def test_decoder_equals_gpt2_with_latent_past(vae):
    dec = vae.decoder
    ref = _gpt2_reference(dec)
    torch.manual_seed(1)
    z = torch.randn(3, vae.latent_size)
    ids, _ = vae.gpt2_tokenizer(CAPS)
    t = dec.transformer
    with torch.no_grad():
        want = _reference_logits(ref, t.wte, t.linear, t.linear_emb, dec.heads, ids, z)
        got = dec(ids, z)
    assert got.shape == (3, ids.shape[1], t.wte.num_embeddings)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert dec.lm_head.weight is t.wte.weight  # tied
    # the memory is what the reference was given: not passed through c_attn
    mem = dec.memory(z)
    torch.testing.assert_close(mem[1, :, :, 0].reshape(3, -1), t.linear(z)[:, t.wte.embedding_dim : 2 * t.wte.embedding_dim])


def test_kv_cache_equals_recomputation(vae):
    torch.manual_seed(2)
    z = torch.randn(4, vae.latent_size) * 3
    # step by step, the cached logits equal the full forward
    ids, _ = vae.gpt2_tokenizer(CAPS[:1] * 4)
    full = vae.decoder(ids, z)
    cache = vae.decoder.init_cache(z, ids.shape[1])
    steps = torch.cat([vae.decoder(ids[:, i : i + 1], z, cache) for i in range(ids.shape[1])], dim=1)
    torch.testing.assert_close(steps, full, atol=1e-5, rtol=1e-5)
    cache = vae.decoder.init_cache(z, ids.shape[1])  # several tokens per call (prefill, then the rest)
    parts = torch.cat([vae.decoder(ids[:, :3], z, cache), vae.decoder(ids[:, 3:], z, cache)], dim=1)
    torch.testing.assert_close(parts, full, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="cache holds"):
        vae.decoder(ids[:, :1], z, cache)
    # whole decodes, token for token
    a = vae.generate_ids(z, "greedy", max_length=30)
    b = vae.generate_ids(z, "greedy", max_length=30, use_cache=False)
    assert a == b and all(len(r) <= 28 for r in a)
    for strategy, kw in (("sample", {}), ("top_p", {"top_p": 0.8}), ("sample", {"temperature": 0.7})):
        s1 = vae.generate_ids(z, strategy, generator=torch.Generator().manual_seed(5), **kw)
        s2 = vae.generate_ids(z, strategy, generator=torch.Generator().manual_seed(5), use_cache=False, **kw)
        assert s1 == s2
    assert vae.generate_ids(z[:2], "beam", num_beams=3, max_length=12) == vae.generate_ids(
        z[:2], "beam", num_beams=3, max_length=12, use_cache=False
    )


def test_beam_and_top_p_semantics(vae):
    torch.manual_seed(3)
    z = torch.randn(2, vae.latent_size)
    assert vae.generate_ids(z, "beam", num_beams=1, max_length=10) == vae.generate_ids(z, "greedy", max_length=10)
    # top_p that keeps only the most likely token is greedy
    g = torch.Generator().manual_seed(0)
    assert vae.generate_ids(z, "top_p", top_p=1e-6, generator=g, max_length=10) == vae.generate_ids(z, "greedy", max_length=10)


def test_stops_at_eos_and_strips_specials():
    torch.manual_seed(4)
    m = TextVAE(TextVAEConfig()).eval()
    tok = m.gpt2_tokenizer
    target = tok.encode("a red circle") + [m.eos_id]
    # make the decoder spell "a red circle <EOS>": the position embedding at position p (larger than any token
    # embedding) points at the p-th target token (positions start at 1, the memory holds position 0)
    with torch.no_grad():
        t = m.decoder.transformer
        for p in m.decoder.parameters():
            p.zero_()
        for blk in t.h:
            blk.ln_1.weight.fill_(1.0), blk.ln_2.weight.fill_(1.0)
        t.ln_f.weight.fill_(1.0)
        C = t.wte.embedding_dim
        for pos, tid in enumerate(target, start=1):
            t.wpe.weight[pos, pos % C] = 30.0
            t.wte.weight[tid, pos % C] = 10.0
    assert m.generate_ids(torch.zeros(2, m.latent_size), "greedy") == [target[:-1]] * 2
    assert m.decode(torch.zeros(1, m.latent_size), strategy="beam", num_beams=2) == ["a red circle"]
    assert m.decode(torch.zeros(1, m.latent_size), strategy="greedy", max_length=4) == ["a red"]  # <BOS> a red <EOS>


def _optimus_checkpoint(path, bert_tok, gpt2_tok, latent=16, positions=64):
    """A tiny random checkpoint in Optimus' original key layout, built from transformers' own modules."""
    from transformers import BertConfig, BertModel, GPT2Config, GPT2Model

    torch.manual_seed(7)
    bert = BertModel(BertConfig(vocab_size=bert_tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=48, max_position_embeddings=96), add_pooling_layer=True).eval()  # fmt: skip
    gpt2 = GPT2Model(GPT2Config(vocab_size=gpt2_tok.vocab_size, n_embd=32, n_layer=3, n_head=2, n_positions=positions,
                                resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)).eval()  # fmt: skip
    linear = torch.nn.Linear(32, 2 * latent, bias=False)
    mem, emb = torch.nn.Linear(latent, 32 * 3, bias=False), torch.nn.Linear(latent, 32, bias=False)
    state = {f"encoder.{k}": v for k, v in bert.state_dict().items()}
    state["encoder.linear.weight"] = linear.weight.detach().clone()
    state["encoder.embeddings.position_ids"] = torch.arange(96)[None]  # stored by some versions
    for k, v in gpt2.state_dict().items():
        state[f"decoder.transformer.{k}"] = v
    for i in range(3):  # the original Attention modules carry their causal mask
        state[f"decoder.transformer.h.{i}.attn.bias"] = torch.tril(torch.ones(positions, positions)).view(1, 1, positions, positions)
    state["decoder.transformer.linear.weight"] = mem.weight.detach().clone()
    state["decoder.transformer.linear_emb.weight"] = emb.weight.detach().clone()
    state["decoder.lm_head.weight"] = gpt2.wte.weight.detach().clone()
    torch.save(state, str(path))
    return bert, gpt2, linear, mem, emb


def test_optimus_checkpoint_loads(tmp_path, vae):
    path = tmp_path / "optimus-vae.pth"
    bert, gpt2, linear, mem, emb = _optimus_checkpoint(path, vae.bert_tokenizer, vae.gpt2_tokenizer)
    model = load_optimus(path, bert_tokenizer="bert_shapes", gpt2_tokenizer="gpt2_shapes", bert_heads=2, gpt2_heads=2)
    cfg = model.config
    assert (cfg.latent_size, cfg.bert_layers, cfg.gpt2_layers, cfg.gpt2_positions) == (16, 2, 3, 64)
    ids, mask = vae.bert_tokenizer(CAPS)
    with torch.no_grad():
        want_mu, want_lv = linear(bert(input_ids=ids, attention_mask=mask).pooler_output).chunk(2, dim=-1)
        mu, lv = model.encode_stats(ids, mask)
        torch.testing.assert_close(mu, want_mu, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(lv, want_lv, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(model.encode(CAPS), want_mu, atol=1e-6, rtol=1e-5)  # lower-cased text, mu
        dec_ids, _ = vae.gpt2_tokenizer(CAPS)
        want = _reference_logits(gpt2, gpt2.wte, mem, emb, 2, dec_ids, mu)
        torch.testing.assert_close(model.decoder(dec_ids, mu), want, atol=1e-5, rtol=1e-5)
    # the same from safetensors, from a wrapped dict with a prefix, and through the codec folder
    state = read_optimus_state(path)
    from safetensors.torch import save_file

    conv = optimus_to_versadiff(state)
    assert not any(k.endswith((".attn.bias", "position_ids")) and ".c_attn." not in k for k in conv)
    assert "decoder.lm_head.weight" not in conv and "decoder.transformer.h.0.attn.c_attn.bias" in conv
    save_file({k: v.contiguous() for k, v in conv.items()}, str(tmp_path / "o.safetensors"))
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, str(tmp_path / "wrapped.pth"))
    for other in (tmp_path / "o.safetensors", tmp_path / "wrapped.pth"):
        m2 = load_optimus(other, model.config)
        with torch.no_grad():
            torch.testing.assert_close(m2.decoder(dec_ids, mu), model.decoder(dec_ids, mu))
    # a config that does not fit: one line naming the problem
    with pytest.raises(ValueError, match="shape"):
        load_optimus(path, model.config.replace(latent_size=8))
    bad = dict(state)
    bad["decoder.lm_head.weight"] = bad["decoder.lm_head.weight"] + 1
    with pytest.raises(ValueError, match="tie"):
        optimus_to_versadiff(bad)


class _Evil:
    def __reduce__(self):
        return (print, ("this ran",))


def test_checkpoint_reading_is_safe(tmp_path):
    p = tmp_path / "evil.pth"
    torch.save({"encoder.embeddings.word_embeddings.weight": torch.zeros(2, 2), "x": _Evil()}, str(p))
    with pytest.raises(ValueError, match="weights_only") as e:
        read_optimus_state(p)
    assert "\n" not in str(e.value)
    with pytest.raises(FileNotFoundError, match="optimus-vae.pth"):
        read_optimus_state(tmp_path / "optimus-vae.pth")
    torch.save({"a.weight": torch.zeros(1)}, str(tmp_path / "other.pth"))
    with pytest.raises(ValueError, match="not an Optimus"):
        optimus_to_versadiff(read_optimus_state(tmp_path / "other.pth"))


def test_losses_free_bits_and_schedule(vae):
    torch.manual_seed(5)
    m = TextVAE(TextVAEConfig(latent_size=8, free_bits=0.0)).train()
    out = m.loss(CAPS, beta=0.5, generator=torch.Generator().manual_seed(0))
    for k in ("loss", "rec", "kl", "kl_full", "tokens"):
        assert out[k].shape == (3,)
    torch.testing.assert_close(out["loss"], out["rec"] + 0.5 * out["kl"])
    torch.testing.assert_close(out["kl"], out["kl_full"])
    out["loss"].mean().backward()
    assert m.encoder.linear.weight.grad.abs().sum() > 0 and m.decoder.transformer.linear.weight.grad.abs().sum() > 0
    assert m.decoder.transformer.linear_emb.weight.grad.abs().sum() > 0
    # free bits: dimensions whose KL is below the threshold leave the loss (applied only when beta > 0)
    m.eval()
    fb = TextVAE(m.config.replace(free_bits=1e9)).eval()
    fb.load_state_dict(m.state_dict())
    o = fb.loss(CAPS, beta=1.0, generator=torch.Generator().manual_seed(0))
    assert (o["kl"] == 0).all() and (o["kl_full"] > 0).all() and float(o["active_dims"]) == 0
    torch.testing.assert_close(o["loss"], o["rec"])
    o0 = fb.loss(CAPS, beta=0.0, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(o0["kl"], o0["kl_full"])
    lw = TextVAE(m.config.replace(length_weighted=True)).eval()
    lw.load_state_dict(m.state_dict())
    o1 = lw.loss(CAPS, beta=0.0, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(o1["loss"], o1["rec"] / o1["tokens"])
    # the reconstruction term is the summed token cross-entropy of <BOS> text <EOS>
    ids, mask = m.gpt2_tokenizer(CAPS[:1])
    mu, logvar = m.encode_texts(CAPS[:1])
    eps = torch.randn(mu.shape, generator=torch.Generator().manual_seed(9))
    logits = m.decoder(ids, mu + eps * (0.5 * logvar).exp())
    want = F.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="sum")
    got = m.loss(CAPS[:1], beta=0.0, generator=torch.Generator().manual_seed(9))["rec"]
    torch.testing.assert_close(got[0], want)


def test_frange_cycle_zero_linear():
    # Optimus' schedule: per period of 10, three steps at 0 then (from 0) +0.4 per step up to 1
    got = frange_cycle_zero_linear(20, 0.0, 1.0, n_cycle=2, ratio_increase=0.25, ratio_zero=0.25)
    want = [0, 0, 0, 0, 0.4, 0.8, 1, 1, 1, 1] * 2
    assert got.tolist() == pytest.approx(want)
    assert frange_cycle_zero_linear(8, 0.0, 2.0, 1, 0.5, 0.0).tolist() == pytest.approx([0, 0.5, 1.0, 1.5, 2.0, 2, 2, 2])
    assert kl_beta(0, 100) == 0.0 and kl_beta(99, 100) == 1.0 and kl_beta(10**6, 100) == 1.0
    assert 0 < kl_beta(40, 100) < 1
    with pytest.raises(ValueError):
        frange_cycle_zero_linear(10, n_cycle=0)


def test_training_reconstructs_captions():
    caps = ["a red circle", "a large blue square in the top left", "there is a green triangle at the bottom",
            "on the right, a small cyan circle", "a magenta square to the left of a yellow triangle",
            "a small yellow circle", "a blue triangle in the center", "a red square on the left"]  # fmt: skip
    torch.manual_seed(0)
    m = TextVAE(TextVAEConfig(latent_size=16, dropout=0.0))
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    first = None
    for _ in range(400):  # beta 0: Optimus' auto-encoding stage
        out = m.loss(caps, beta=0.0, generator=g)
        first = first if first is not None else float(out["rec"].detach().mean())
        opt.zero_grad()
        out["loss"].mean().backward()
        opt.step()
    assert float(out["rec"].detach().mean()) < first / 20
    m.eval()
    rec = m.decode(m.encode(caps).detach(), strategy="greedy")
    assert sum(a == b for a, b in zip(rec, caps)) >= 6, rec


def test_codec_registry_and_folder(tmp_path, vae):
    assert "text_vae" in CODECS.names()
    codec = CODECS.build({"type": "text_vae", "latent_size": 24, "gpt2_layers": 3})
    assert codec.modality == "text" and codec.space == "continuous" and codec.scale == 1.0
    codec.module.load_state_dict(vae.state_dict())
    z = codec.encode(CAPS)
    assert z.shape == (3, 24) and z.dtype == torch.float32 and not z.requires_grad
    assert codec.latent_shape(()) == (24,)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(codec.encode(CAPS), z)
    texts = codec.decode(z, strategy="greedy", max_length=12)
    assert isinstance(texts, list) and len(texts) == 3 and all(isinstance(t, str) for t in texts)
    folder = vae.save_pretrained(tmp_path / "optimus_mini")
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["type"] == "text_vae" and cfg["bert_tokenizer"] == "bert_tokenizer" and cfg["path"] is None
    assert (folder / "bert_tokenizer" / "vocab.txt").is_file() and (folder / "gpt2_tokenizer" / "merges.txt").is_file()
    again = CODECS.build({"type": "text_vae", "path": str(folder)})
    torch.testing.assert_close(again.encode(CAPS), z)
    assert again.decode(z, strategy="greedy", max_length=12) == texts
    loaded = TextVAE.load_pretrained(folder)
    assert loaded.decoder.lm_head.weight is loaded.decoder.transformer.wte.weight
    for name in ("config.json", "model.safetensors"):
        broken = tmp_path / f"no_{name}"
        broken.mkdir()
        for f in folder.iterdir():
            if f.name != name and f.is_file():
                (broken / f.name).write_bytes(f.read_bytes())
        with pytest.raises(FileNotFoundError, match=name) as e:
            TextVAE.load_pretrained(broken)
        assert "\n" not in str(e.value)


def test_bad_decode_and_encode_inputs(vae):
    z = torch.zeros(2, vae.latent_size)
    with pytest.raises(ValueError, match="strategy"):
        vae.decode(z, strategy="nucleus")
    with pytest.raises(ValueError, match=r"latents \[B, 24\]"):
        vae.decode(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="empty batch"):
        vae.decode(torch.zeros(0, vae.latent_size))
    with pytest.raises(ValueError, match="temperature"):
        vae.decode(z, temperature=0.0)
    with pytest.raises(ValueError, match="max_length"):
        vae.decode(z, max_length=10_000)
    with pytest.raises(ValueError, match="top_p"):
        vae.decode(z, strategy="top_p", top_p=0.0)
    with pytest.raises(ValueError, match="empty batch"):
        vae.encode([])
    with pytest.raises(TypeError, match="list of strings"):
        vae.encode(torch.zeros(2))
    bare = TextVAE(TextVAEConfig(bert_tokenizer=None, gpt2_tokenizer=None, bert_vocab_size=50, gpt2_vocab_size=60))
    with pytest.raises(ValueError, match="without a BERT tokenizer"):
        bare.encode(["a"])
    assert (bare.pad_id, bare.bos_id, bare.eos_id) == (57, 58, 59)
    assert len(bare.generate_ids(torch.zeros(1, 32), "greedy", max_length=5)[0]) <= 3


def test_optimus_full_size_on_meta():
    """Optimus as in VD: BERT-base cased 108,310,272 + connector 768 x 1536; GPT-2 small with 50,260 tokens
    124,442,112 (tied head) + memory 768 x 12*768 + embedding 768 x 768 = 241,599,744 parameters. The original
    modules also store a 1024 x 1024 causal mask per GPT-2 layer: 254,182,656 tensor elements, 1.0167 GB in
    float32, the size of VD's optimus-vae.pth (1.017 GB)."""
    with torch.device("meta"):
        m = TextVAE(TextVAEConfig.optimus())
        logits = m.decoder(torch.zeros(1, 5, dtype=torch.long), torch.zeros(1, 768))
    assert logits.shape == (1, 5, 50260)
    count = lambda mod: sum(p.numel() for p in mod.parameters())  # noqa: E731
    bert = count(m.encoder) - m.encoder.linear.weight.numel()
    assert bert == 108_310_272 and m.encoder.linear.weight.shape == (1536, 768)
    t = m.decoder.transformer
    assert count(m.decoder) - t.linear.weight.numel() - t.linear_emb.weight.numel() == 124_442_112
    assert t.linear.weight.shape == (12 * 768, 768) and t.wte.weight.shape == (50260, 768)
    total = count(m)
    assert total == 241_599_744
    assert total + 12 * 1024 * 1024 == 254_182_656
    cfg = infer_optimus_config({k: v for k, v in m.state_dict().items()})
    assert (cfg.latent_size, cfg.bert_layers, cfg.gpt2_layers, cfg.bert_heads, cfg.gpt2_vocab_size) == (768, 12, 12, 12, 50260)
