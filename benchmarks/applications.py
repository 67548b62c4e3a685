"""Versatile Diffusion's applications measured on a VD checkpoint (default: the shipped miniature `vd-shapes`).

    python benchmarks/applications.py                       # vd-shapes, N = 200 per point, 1 thread
    python benchmarks/applications.py --model runs/vd/vd --n 500 --steps 50 --parts dual cost

Every point uses the same N held-out shapes items (ShapesDataset(seed=1), one shape each) and seeds 0..N-1, so the
points of a sweep are paired. Outputs are read by the shapes attribute reader (versadiff.eval.flows).

  dual        text + image -> image. Item i: its image (colour c, shape s) and the prompt "a {c'} {s'}" with c' != c
              and s' != s. Target: the output has the TEXT's colour AND the IMAGE's shape. Per mixing level
              (attention, layer, model) over r = 0, 0.25, 0.5, 0.75, 1 (r = 0 / 1 are the single flows, identical at
              every level, so they are sampled once).
  cost        per level: network forwards per step, context transformers per slot, GFLOP per step and per sample
              (FlopCounterMode, guidance included), measured ms per step per sample.
  disentangle image variation at levels -2..2 and v1 focus 0, 0.25, 0.75, 1: how often colour, shape, size, position
              of the input survive.
  i2t2i       image -> caption -> edit -> image. Edits: the true colour word -> another colour, the true shape word
              -> another shape (word substitutions), and latent arithmetic (negative "a {c} {s}", positive
              "a {c'} {s}"); with the image context at weight 0.33 (VD v0) and 0 (text only). Success = the edited
              attribute present and the other three (of colour, shape, size, position) preserved.
  blend       two images (different colour and shape), no text, image B's weight swept 0..1: whose colour / shape
              the output takes.
  figures     one sweep picture per application (inputs left, outputs across the sweep) in --figures.

Prints markdown tables naming the CPU capability; writes every number to --out (JSON).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from versadiff.applications import blend, disentangle, dual_guided, i2t2i, save_sweep_figure
from versadiff.data.shapes import COLORS, SHAPES, parse_caption
from versadiff.eval.flows import held_out, image_attributes
from versadiff.models import load_model

DEFAULT_STRENGTHS = (0.0, 0.25, 0.5, 0.75, 1.0)
MIXINGS = ("attention", "layer", "model")
ATTRS = ("color", "shape", "size", "position")
PARTS = ("dual", "cost", "disentangle", "i2t2i", "blend", "figures")


def other(values: list[str], current: str, rng: np.random.Generator) -> str:
    choices = [v for v in values if v != current]
    return choices[int(rng.integers(len(choices)))]


def dual_items(n: int) -> tuple[list[dict[str, Any]], torch.Tensor, list[str], list[dict[str, str]]]:
    """Held-out items with a conflicting prompt: (truth, images, prompts, prompt attributes)."""
    truth, images, _ = held_out(n)
    prompts, stated = [], []
    for i, t in enumerate(truth):
        rng = np.random.default_rng([1, i, 7])
        c, s = other(COLORS, t["color"], rng), other(SHAPES, t["shape"], rng)
        prompts.append(f"a {c} {s}")
        stated.append({"color": c, "shape": s})
    return truth, images, prompts, stated


def frac(flags: list[bool]) -> float:
    return sum(flags) / max(1, len(flags))


def se(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 1e-12) / max(1, n))


def paired_diff(a: list[bool], b: list[bool]) -> tuple[float, float]:
    """Mean and standard error of the paired difference a - b."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    return float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else 0.0


# ----------------------------------------------------------------------------------------------- dual-guided


def run_dual(model: Any, args: argparse.Namespace, out: dict[str, Any]) -> None:
    strengths = args.strengths
    truth, images, prompts, stated = dual_items(args.n)
    seeds = list(range(args.n))
    rows: dict[tuple[str, float], dict[str, Any]] = {}
    cache: dict[float, dict[str, Any]] = {}
    for mixing in MIXINGS:
        for r in strengths:
            if r in (0.0, 1.0) and r in cache:  # exactly the single flow at every level
                rows[(mixing, r)] = cache[r]
                continue
            t0 = time.perf_counter()
            imgs = dual_guided(model, prompts, images, seeds, strength=r, mixing=mixing, **args.common)
            dt = time.perf_counter() - t0
            got = image_attributes(imgs)
            flags = {
                "target": [g is not None and g["color"] == p["color"] and g["shape"] == t["shape"]
                           for g, p, t in zip(got, stated, truth)],
                "text colour": [g is not None and g["color"] == p["color"] for g, p in zip(got, stated)],
                "image shape": [g is not None and g["shape"] == t["shape"] for g, t in zip(got, truth)],
                "image colour": [g is not None and g["color"] == t["color"] for g, t in zip(got, truth)],
                "text shape": [g is not None and g["shape"] == p["shape"] for g, p in zip(got, stated)],
                "readable": [g is not None for g in got],
            }
            row = {"flags": flags, "seconds": dt, **{k: frac(v) for k, v in flags.items()}}
            rows[(mixing, r)] = row
            if r in (0.0, 1.0):
                cache[r] = row
            if mixing == "attention" and r == 0.5:
                out.setdefault("_examples", {})["dual"] = imgs[: args.fig_rows]
            print(f"  dual {mixing:9s} r={r:.2f}: target {row['target']:.3f} ({dt:.0f} s)", flush=True)
    n = args.n
    print(f"\n### Dual-guided: text colour AND image shape (N = {n} per point, {args.desc})\n")
    print("| mixing | " + " | ".join(f"r = {r:g}" for r in strengths) + " |")
    print("|---|" + "---|" * len(strengths))
    for mixing in MIXINGS:
        cells = [f"{rows[(mixing, r)]['target']:.3f} ± {se(rows[(mixing, r)]['target'], n):.3f}" for r in strengths]
        print(f"| {mixing} | " + " | ".join(cells) + " |")
    print("\nPer attribute (text colour / image shape / image colour / text shape / one readable shape):\n")
    print("| mixing | r | text colour | image shape | image colour | text shape | readable | s |")
    print("|---|---|---|---|---|---|---|---|")
    for mixing in MIXINGS:
        for r in strengths:
            row = rows[(mixing, r)]
            print(f"| {mixing} | {r:g} | {row['text colour']:.3f} | {row['image shape']:.3f} | "
                  f"{row['image colour']:.3f} | {row['text shape']:.3f} | {row['readable']:.3f} | "
                  f"{row['seconds']:.0f} |")
    print("\nPaired differences of the target rate (same items and seeds; ± one standard error):\n")
    print("| r | attention - layer | layer - model | attention - model | attention > layer > model? |")
    print("|---|---|---|---|---|")
    verdicts = {}
    for r in [x for x in strengths if 0 < x < 1]:
        a, la, m = (rows[(k, r)]["flags"]["target"] for k in MIXINGS)
        d1, d2, d3 = paired_diff(a, la), paired_diff(la, m), paired_diff(a, m)
        sig = lambda d: "yes" if d[0] > 2 * d[1] else ("no (reversed)" if d[0] < -2 * d[1] else "tie")  # noqa: E731
        verdict = f"att>layer: {sig(d1)}; layer>model: {sig(d2)}"
        verdicts[r] = {"attention-layer": d1, "layer-model": d2, "attention-model": d3, "verdict": verdict}
        print(f"| {r:g} | {d1[0]:+.3f} ± {d1[1]:.3f} | {d2[0]:+.3f} ± {d2[1]:.3f} | {d3[0]:+.3f} ± {d3[1]:.3f} | "
              f"{verdict} |")
    out["dual"] = {"n": n, "points": [{"mixing": k, "r": r, **{a: b for a, b in v.items() if a != "flags"}}
                                      for (k, r), v in rows.items()], "paired": verdicts,
                   "prompt_rule": "a {colour != image colour} {shape != image shape}"}


# ------------------------------------------------------------------------------------------------------ cost


def run_cost(model: Any, args: argparse.Namespace, out: dict[str, Any]) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    net = model.net
    truth, images, prompts, _ = dual_items(8)
    text_enc = model.flows["text-to-image"].encoder
    img_enc = model.flows["image-variation"].encoder
    ct, ci = text_enc.encode(prompts[:1]), img_enc.encode([images[0]])
    shape = model.sample_shape("text-to-image")
    x = torch.randn(2, *shape)  # [uncond; cond] of one sample: one guided evaluation
    t = torch.full((2,), 500.0)
    ctx = {"context_text": ct.expand(2, -1, -1), "context_image": ci.expand(2, -1, -1)}

    def flops(**kw: Any) -> float:
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            net(x, t, data_stream="image", **kw)
        return fc.get_total_flops() / 1e9

    single_t = flops(context_text=ctx["context_text"])
    single_i = flops(context_image=ctx["context_image"])
    att = flops(**ctx, context_weights={"text": 0.5, "image": 0.5}, mixing="attention")
    g = torch.Generator().manual_seed(0)
    layer = float(np.mean([flops(**ctx, context_weights={"text": 0.5, "image": 0.5}, mixing="layer",
                                 mixing_generator=g) for _ in range(8)]))
    model_level = 0.5 * (single_t + single_i)
    # measured time per step per sample (guided) at r = 0.5: the four runs interleaved, best of --cost-rounds rounds
    # (the shared CPU's load changes over minutes; interleaving and the minimum keep the ratios honest)
    n = min(args.n, 100)
    seeds = list(range(n))
    steps = args.common.get("steps") or model.config.sample.steps
    sample_kw = {k: v for k, v in args.common.items() if k in ("sampler", "steps", "guidance")}
    runs = {"text-to-image": lambda: model.generate(seeds, flow="text-to-image", context=prompts[:1] * n,
                                                    batch_size=n, **sample_kw)}
    for mixing in MIXINGS:
        runs[mixing] = lambda mixing=mixing: dual_guided(model, prompts[:1] * n, [images[0]] * n, seeds, strength=0.5,
                                                         mixing=mixing, **{**args.common, "batch_size": n})
    timing = {name: math.inf for name in runs}
    for _ in range(args.cost_rounds):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            timing[name] = min(timing[name], (time.perf_counter() - t0) / (n * steps) * 1e3)
    slots = net.num_context_slots
    table = [
        ("single flow (text-to-image)", 1, 1, single_t, timing["text-to-image"]),
        ("attention", 1, 2, att, timing["attention"]),
        ("layer", 1, 1, layer, timing["layer"]),
        ("model (alternating)", 1, 1, model_level, timing["model"]),
    ]
    print(f"\n### Cost per sampling step (guided: uncond and cond in one batched forward; {args.desc})\n")
    print(f"The network has {slots} context slots. GFLOP per step per sample include both guidance branches; "
          f"the time (best of {args.cost_rounds} interleaved rounds, {n} samples) includes the CLIP encoders and the "
          "decoder, spread over the steps.\n")
    print("| mixing | forwards per step | transformers per context slot | GFLOP / step / sample | "
          "x single flow | ms / step / sample (measured) | x single flow |")
    print("|---|---|---|---|---|---|---|")
    for name, fw, tr, gf, ms in table:
        base = timing["text-to-image"]
        print(f"| {name} | {fw} | {tr} | {gf:.4f} | {gf / single_t:.2f} | {ms:.2f} | {ms / base:.2f} |")
    out["cost"] = {"context_slots": slots, "gflop_per_step": {r[0]: r[3] for r in table},
                   "ms_per_step_per_sample": timing, "n_timed": n, "rounds": args.cost_rounds}


# ---------------------------------------------------------------------------------------------- disentangle


def run_disentangle(model: Any, args: argparse.Namespace, out: dict[str, Any]) -> None:
    truth, images, _ = held_out(args.n)
    seeds = list(range(args.n))
    points = [("level", lv) for lv in (-2, -1, 0, 1, 2)] + [("focus", f) for f in (0.0, 0.25, 0.75, 1.0)]
    rows = []
    for kind, value in points:
        t0 = time.perf_counter()
        kw = {"level": value} if kind == "level" else {"focus": value}
        imgs = disentangle(model, images, seeds, **kw, **args.common)
        got = image_attributes(imgs)
        row = {"control": kind, "value": value, "seconds": time.perf_counter() - t0,
               "readable": frac([g is not None for g in got]),
               **{a: frac([g is not None and g[a] == t[a] for g, t in zip(got, truth)]) for a in ATTRS},
               "all four": frac([g is not None and all(g[a] == t[a] for a in ATTRS) for g, t in zip(got, truth)])}
        rows.append(row)
        print(f"  disentangle {kind} {value}: colour {row['color']:.3f} shape {row['shape']:.3f}", flush=True)
    print(f"\n### Disentanglement: attributes of the input kept (N = {args.n} per point, {args.desc})\n")
    print("| control | colour | shape | size | position | all four | readable |")
    print("|---|---|---|---|---|---|---|")
    names = {-2: "level -2 (remove top 2)", -1: "level -1 (remove top 1)", 0: "level 0 (image variation)",
             1: "level +1 (keep top 10)", 2: "level +2 (keep top 2)"}
    for row in rows:
        name = names[row["value"]] if row["control"] == "level" else f"focus {row['value']:g} (v1)"
        print(f"| {name} | {row['color']:.3f} | {row['shape']:.3f} | {row['size']:.3f} | {row['position']:.3f} | "
              f"{row['all four']:.3f} | {row['readable']:.3f} |")
    out["disentangle"] = {"n": args.n, "points": rows}


# ---------------------------------------------------------------------------------------------------- I2T2I


def run_i2t2i(model: Any, args: argparse.Namespace, out: dict[str, Any]) -> None:
    truth, images, _ = held_out(args.n)
    seeds = list(range(args.n))
    new_color, new_shape = [], []
    for i, t in enumerate(truth):
        rng = np.random.default_rng([1, i, 11])
        new_color.append(other(COLORS, t["color"], rng))
        new_shape.append(other(SHAPES, t["shape"], rng))
    # step 1 once: the captions every edit starts from
    t0 = time.perf_counter()
    base = i2t2i(model, images, seeds, image_strength=0.0, **args.common)
    z, captions = base.caption_latents, base.captions
    parsed = [parse_caption(c) for c in captions]
    cap_ok = frac([p is not None and "shapes" not in p and p["color"] == t["color"] and p["shape"] == t["shape"]
                   for p, t in zip(parsed, truth)])
    print(f"  i2t captions: colour and shape right {cap_ok:.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    edits = {
        "colour word (OLD=NEW)": ("color", new_color, lambda i: {"edits": {truth[i]["color"]: new_color[i]}}),
        "shape word (OLD=NEW)": ("shape", new_shape, lambda i: {"edits": {truth[i]["shape"]: new_shape[i]}}),
        "colour, latent (+/-)": ("color", new_color, lambda i: {
            "negative": f"a {truth[i]['color']} {truth[i]['shape']}",
            "positive": f"a {new_color[i]} {truth[i]['shape']}"}),
    }
    rows = []
    for name, (attr, targets, make) in edits.items():
        for strength in (0.33, 0.0):
            t0 = time.perf_counter()
            per = [make(i) for i in range(args.n)]  # one edit per item (per seed)
            kw = {k: [p[k] for p in per] for k in per[0]}
            res = i2t2i(model, images, seeds, image_strength=strength, caption_latents=z, **kw, **args.common)
            imgs, prompts = res.images, res.prompts
            got = image_attributes(imgs)
            keep = [a for a in ATTRS if a != attr]
            edited = [g is not None and g[attr] == tg for g, tg in zip(got, targets)]
            kept = {a: [g is not None and g[a] == t[a] for g, t in zip(got, truth)] for a in keep}
            core = "shape" if attr == "color" else "color"
            row = {"edit": name, "image_strength": strength, "seconds": time.perf_counter() - t0,
                   "edited": frac(edited), **{f"kept {a}": frac(v) for a, v in kept.items()},
                   "success": frac([e and all(kept[a][i] for a in keep) for i, e in enumerate(edited)]),
                   f"success ({attr} + {core})": frac([e and kept[core][i] for i, e in enumerate(edited)]),
                   "prompt states edit": frac([(p := parse_caption(q)) is not None and "shapes" not in p
                                               and p.get(attr) == tg for q, tg in zip(prompts, targets)])}
            rows.append(row)
            if strength == 0.33 and name.startswith("colour word"):
                out.setdefault("_examples", {})["i2t2i"] = (imgs[: args.fig_rows], prompts[: args.fig_rows])
            print(f"  i2t2i {name} s={strength}: success {row['success']:.3f} ({row['seconds']:.0f} s)", flush=True)
    print(f"\n### Editable I2T2I (N = {args.n} per point, {args.desc})\n")
    print(f"Step 1 (image -> caption): the caption states the image's colour and shape for {cap_ok:.3f} of the "
          "items.\n")
    print("| edit | image weight | edited attribute | kept: the other three (each) | success: edited AND all "
          "three kept | success: edited AND colour/shape kept | edited caption states the edit |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        kept = ", ".join(f"{k[5:]} {v:.3f}" for k, v in row.items() if k.startswith("kept "))
        core = next(v for k, v in row.items() if k.startswith("success ("))
        print(f"| {row['edit']} | {row['image_strength']:g} | {row['edited']:.3f} | {kept} | {row['success']:.3f} | "
              f"{core:.3f} | {row['prompt states edit']:.3f} |")
    out["i2t2i"] = {"n": args.n, "caption_colour_shape_right": cap_ok, "points": rows, "target": 0.8}


# ---------------------------------------------------------------------------------------------------- blend


def run_blend(model: Any, args: argparse.Namespace, out: dict[str, Any]) -> None:
    truth, images, _ = held_out(2 * args.n)
    a_t, b_t = truth[: args.n], truth[args.n :]
    a_img, b_img = images[: args.n], images[args.n :]
    seeds = list(range(args.n))
    rows = []
    for wb in (0.0, 0.25, 0.5, 0.75, 1.0):
        imgs = blend(model, seeds, images=[list(a_img), list(b_img)], image_weights=[1.0, wb], **args.common)
        got = image_attributes(imgs)
        differ = [i for i in range(args.n) if a_t[i]["color"] != b_t[i]["color"]]
        differ_s = [i for i in range(args.n) if a_t[i]["shape"] != b_t[i]["shape"]]
        row = {"weight_b": wb,
               "A colour": frac([got[i] is not None and got[i]["color"] == a_t[i]["color"] for i in differ]),
               "B colour": frac([got[i] is not None and got[i]["color"] == b_t[i]["color"] for i in differ]),
               "A shape": frac([got[i] is not None and got[i]["shape"] == a_t[i]["shape"] for i in differ_s]),
               "B shape": frac([got[i] is not None and got[i]["shape"] == b_t[i]["shape"] for i in differ_s]),
               "readable": frac([g is not None for g in got])}
        rows.append(row)
        print(f"  blend w_B={wb}: A colour {row['A colour']:.3f} B colour {row['B colour']:.3f}", flush=True)
    print(f"\n### Blender: image A (weight 1) + image B (weight w), no text (N = {args.n}; colour columns over the "
          f"pairs whose colours differ, shape columns over those whose shapes differ; {args.desc})\n")
    print("| w_B | A's colour | B's colour | A's shape | B's shape | readable |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['weight_b']:g} | {r['A colour']:.3f} | {r['B colour']:.3f} | {r['A shape']:.3f} | "
              f"{r['B shape']:.3f} | {r['readable']:.3f} |")
    out["blend"] = {"n": args.n, "points": rows}


# -------------------------------------------------------------------------------------------------- figures


def run_figures(model: Any, args: argparse.Namespace, out: dict[str, Any]) -> None:
    folder = args.figures
    k = args.fig_rows
    strengths = DEFAULT_STRENGTHS
    truth, images, prompts, _ = dual_items(k)
    seeds = list(range(k))
    cols = [f"r={r:g}" for r in strengths]
    rows = []
    for mixing in MIXINGS:
        sweep = [dual_guided(model, prompts, images, seeds, strength=r, mixing=mixing, **args.common)
                 for r in strengths]
        rows += [([images[i], f"{prompts[i]}  [{mixing} mixing]"], [s[i] for s in sweep]) for i in range(k)]
    p1 = save_sweep_figure(folder / "applications_dual_guided.png", rows, cols, input_titles=["image", "text"],
                           title="dual-guided: text strength r (rows: attention, layer, model mixing)")
    levels = [("level", v) for v in (-2, -1, 0, 1, 2)] + [("focus", 0.0), ("focus", 1.0)]
    outs = [disentangle(model, images, seeds, **{kind: v}, **args.common) for kind, v in levels]
    p2 = save_sweep_figure(folder / "applications_disentangle.png",
                           [([images[i]], [o[i] for o in outs]) for i in range(k)],
                           [f"L={v:+d}" if kind == "level" else f"f={v:g}" for kind, v in levels],
                           input_titles=["image"], title="disentanglement: semantic (-) .. style (+)")
    base = i2t2i(model, images, seeds, image_strength=0.0, **args.common)
    irows = []
    for i in range(k):
        t = truth[i]
        rng = np.random.default_rng([1, i, 11])
        c2, s2 = other(COLORS, t["color"], rng), other(SHAPES, t["shape"], rng)
        cells = []
        latent = {"negative": f"a {t['color']} {t['shape']}", "positive": f"a {c2} {t['shape']}"}
        for kw in ({"edits": {t["color"]: c2}, "image_strength": 0.33}, {"edits": {t["color"]: c2}, "image_strength": 0.0},
                   {"edits": {t["shape"]: s2}, "image_strength": 0.33}, {**latent, "image_strength": 0.33}):
            res = i2t2i(model, images[i : i + 1], [i], caption_latents=base.caption_latents[i : i + 1], **kw,
                        **args.common)
            cells += [res.prompts[0], res.images[0]]
        irows.append(([images[i], base.captions[i]], cells))
    p3 = save_sweep_figure(folder / "applications_i2t2i.png", irows,
                           ["colour edit", "s=0.33", "colour edit", "s=0", "shape edit", "s=0.33", "latent +/-",
                            "s=0.33"], input_titles=["image", "caption"], title="I2T2I: edited caption, image")
    a_img, b_img = images, images.flip(0)
    brows, wcols = [], (0.0, 0.25, 0.5, 0.75, 1.0)
    sweep = [blend(model, seeds, images=[list(a_img), list(b_img)], prompts=[prompts[0]], image_weights=[1.0, 1.0],
                   strength=r, **args.common) for r in wcols]
    brows = [([a_img[i], b_img[i], prompts[0]], [s[i] for s in sweep]) for i in range(k)]
    p4 = save_sweep_figure(folder / "applications_blend.png", brows, [f"r={r:g}" for r in wcols],
                           input_titles=["image A", "image B", "text"], title="blend: A + B (weights 1, 1) + text")
    print(f"\nfigures: {p1}, {p2}, {p3}, {p4}")
    out["figures"] = [str(p) for p in (p1, p2, p3, p4)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="vd-shapes", help="a VD run, weight file or shipped model name")
    p.add_argument("--n", type=int, default=200, help="items per point (default 200)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the run's)")
    p.add_argument("--sampler", default=None, help="default: the run's")
    p.add_argument("--guidance", type=float, default=None, help="CFG weight w (default: the run's)")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    p.add_argument("--strengths", type=float, nargs="+", default=list(DEFAULT_STRENGTHS),
                   help="dual-guided text strengths r (default 0 0.25 0.5 0.75 1)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cost-rounds", type=int, default=3, help="cost: interleaved timing rounds (best is kept)")
    p.add_argument("--fig-rows", type=int, default=4)
    p.add_argument("--figures", type=Path, default=Path(__file__).resolve().parent)
    p.add_argument("--out", type=Path, default=Path("runs/bench_applications.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    s = model.config.sample
    args.common = {"sampler": args.sampler, "steps": args.steps, "guidance": args.guidance,
                   "batch_size": args.batch_size}
    cpu = torch.backends.cpu.get_cpu_capability()
    sampler = args.sampler or s.sampler
    steps = args.steps or s.steps
    w = s.guidance if args.guidance is None else args.guidance
    args.desc = f"{sampler} {steps} steps, guidance w = {w:g}, CPU {cpu}, {args.threads} thread(s)"
    out: dict[str, Any] = {"model": model.source, "step": model.step, "cpu_capability": cpu, "threads": args.threads,
                           "sampler": sampler, "steps": steps, "guidance": w, "n": args.n}
    t_all = time.perf_counter()
    print(f"# Applications on {model.source} (step {model.step}); {args.desc}")
    for part in PARTS:
        if part in args.parts:
            globals()[f"run_{part}"](model, args, out)
    out.pop("_examples", None)
    out["seconds"] = time.perf_counter() - t_all
    print(f"\nTotal: {out['seconds'] / 60:.1f} min")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
