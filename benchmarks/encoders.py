"""The miniature encoders of the VD shapes model, measured on held-out shapes items.

    python benchmarks/encoders.py --clip RUN_CLIP --text-vae RUN_TEXT_VAE [--n 1000]

CLIP: zero-shot colour x shape classification by the 18 prompts "a {colour} {shape}" (target >= 0.95), and
caption->image / image->caption top-1 retrieval among 100 held-out pairs (chance 0.01).
Text VAE: reconstruction (mu, greedy decode): every stated attribute (colour, shape, size, position) read back
from the caption (target >= 0.95), exact match; captions decoded from the midpoint of two captions' latents
that parse as shapes captions (target >= 0.9); greedy decoding with the KV cache vs full recomputation.
Held-out items: ShapesDataset(seed=1), which the presets (seed 0) never train on.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from versadiff.autoencoders.text_vae import TextVAE
from versadiff.data.shapes import COLORS, SHAPES, ShapesDataset, parse_caption
from versadiff.encoders.clip import ClipImageEncoder, ClipImageEncoderConfig, ClipTextEncoder, ClipTextEncoderConfig


def clip_scores(folder: Path, n: int) -> dict[str, float]:
    text = ClipTextEncoder(ClipTextEncoderConfig(path=str(folder)))
    image = ClipImageEncoder(ClipImageEncoderConfig(path=str(folder)))
    ds = ShapesDataset(size=n, seed=1)
    items = ds.__getitems__(list(range(n)))
    images = torch.stack([it["image"] for it in items])
    labels = torch.tensor([it["label"] for it in items])
    with torch.no_grad():
        img = torch.cat([image.encode(images[i : i + 100])[:, 0] for i in range(0, n, 100)])  # unit-norm CLS token
        prompts = [f"a {c} {s}" for c in COLORS for s in SHAPES]
        txt = _pooled(text, prompts)
        zero_shot = float(((img @ txt.t()).argmax(1) == labels).float().mean())
        cap = _pooled(text, [it["caption"] for it in items[:100]])
        sim = img[:100] @ cap.t()
        i2t = float((sim.argmax(1) == torch.arange(100)).float().mean())
        t2i = float((sim.argmax(0) == torch.arange(100)).float().mean())
    return {"zero_shot_acc": zero_shot, "image_to_caption_top1": i2t, "caption_to_image_top1": t2i, "n": n}


def _pooled(text: ClipTextEncoder, prompts: list[str]) -> torch.Tensor:
    """The unit-norm projected EOS token of each prompt (VD's context divides every token by its norm)."""
    ids = text.tokenizer(prompts)
    ctx = text.encode_ids(ids)
    eos = (ids == text.tokenizer.eos_id).int().argmax(1)
    return ctx[torch.arange(len(prompts)), eos]


def _matches(orig: dict | None, got: dict | None) -> dict[str, bool]:
    keys = ("color", "shape", "size", "position")
    if orig is None:
        return {}
    return {k: got is not None and got.get(k) == orig[k] for k in keys if k in orig} | {
        "all": got is not None and got == orig}


def text_vae_scores(folder: Path, n: int) -> dict[str, float]:
    vae = TextVAE.load_pretrained(folder).eval()
    ds = ShapesDataset(size=n, seed=1)
    captions = [ds.describe(i)["caption"] for i in range(n)]
    with torch.no_grad():
        z = torch.cat([vae.encode(captions[i : i + 200]) for i in range(0, n, 200)])
        recon = [t for i in range(0, n, 200) for t in vae.decode(z[i : i + 200], strategy="greedy")]
        mid = (z[: n // 2] + z[n // 2 : 2 * (n // 2)]) / 2
        mids = [t for i in range(0, len(mid), 200) for t in vae.decode(mid[i : i + 200], strategy="greedy")]
        torch.manual_seed(0)
        t0 = time.perf_counter()
        vae.decode(z[:64], strategy="greedy", use_cache=True)
        cached = time.perf_counter() - t0
        t0 = time.perf_counter()
        vae.decode(z[:64], strategy="greedy", use_cache=False)
        full = time.perf_counter() - t0
    per = [_matches(parse_caption(c), parse_caption(r)) for c, r in zip(captions, recon)]
    out = {f"recon_{k}": sum(m[k] for m in per if k in m) / max(1, sum(k in m for m in per))
           for k in ("color", "shape", "size", "position", "all")}
    out["recon_exact"] = sum(c == r for c, r in zip(captions, recon)) / n
    out["recon_attributes"] = sum(all(v for k, v in m.items() if k != "all") for m in per) / n
    out["midpoint_valid"] = sum(parse_caption(t) is not None for t in mids) / len(mids)
    out["kv_cache_speedup"] = full / cached
    out["examples"] = [{"caption": c, "recon": r} for c, r in zip(captions[:3], recon[:3])] + [
        {"a": captions[i], "b": captions[n // 2 + i], "midpoint": mids[i]} for i in range(3)]
    out["n"] = n
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clip", type=Path, help="a shapes_clip run folder (or its export/clip folder)")
    p.add_argument("--text-vae", type=Path, help="a shapes_text_vae run folder (or its export/text_vae folder)")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--out", type=Path, help="write the figures as JSON")
    args = p.parse_args()
    torch.set_num_threads(1)
    report = {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__}
    if args.clip:
        folder = args.clip / "export" / "clip" if (args.clip / "export").is_dir() else args.clip
        report["clip"] = clip_scores(folder, args.n)
    if args.text_vae:
        folder = args.text_vae / "export" / "text_vae" if (args.text_vae / "export").is_dir() else args.text_vae
        report["text_vae"] = text_vae_scores(folder, args.n)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
