"""`versadiff demo`: Versatile Diffusion's four flows on the shipped miniature model, or (--class-conditional)
the class-conditional shapes UNet. Writes outputs/demo/index.html, a PNG of every flow's inputs and outputs and
demo.json, and prints each flow's score on held-out shapes items (versadiff.eval.flows)."""

from __future__ import annotations

import base64
import html
import io
import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = ["VD_DEMO_MODEL", "run_vd_demo", "run_class_demo", "flows_figure"]

VD_DEMO_MODEL = "vd-shapes"
PROMPTS = ["a red circle", "a small blue square in the top left", "a large yellow triangle", "a magenta circle on the right"]
TEXTS = ["a green square", "a small cyan triangle at the bottom", "a large red circle in the center", "a blue triangle"]
SHOWN = 4  # samples shown per flow


def _png(img: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _tile(images: Tensor, scale: int = 3) -> list:
    from versadiff.images import to_pil

    return [im.resize((im.width * scale, im.height * scale), 0) for im in to_pil(images)]


def flows_figure(rows: list[tuple[str, list[Any], list[Any]]], cell: int = 96) -> Any:
    """One PNG: a row per flow, its inputs on the left and outputs on the right (images, or text in boxes)."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    label_w, gap = 130, 8
    n_in = max(len(r[1]) for r in rows)
    n_out = max(len(r[2]) for r in rows)
    width = label_w + (n_in + 1 + n_out) * (cell + gap) + gap  # inputs, the arrow, outputs
    fig = Image.new("RGB", (width, len(rows) * (cell + gap) + gap), "white")
    draw = ImageDraw.Draw(fig)
    for r, (name, ins, outs) in enumerate(rows):
        y = gap + r * (cell + gap)
        draw.text((gap, y + cell // 2 - 6), name, fill="black", font=font)
        for j, item in enumerate(list(ins) + [None] + list(outs)):
            x = label_w + j * (cell + gap)
            if item is None:
                draw.text((x + cell // 3, y + cell // 2 - 6), "->", fill="black", font=font)
            elif isinstance(item, str):
                draw.rectangle([x, y, x + cell, y + cell], outline="gray")
                words, line, lines = item.split(), "", []
                for w in words:  # wrap to the box
                    if len(line) + len(w) + 1 > 15:
                        lines.append(line)
                        line = w
                    else:
                        line = f"{line} {w}".strip()
                lines.append(line)
                for k, text in enumerate(lines[:7]):
                    draw.text((x + 4, y + 4 + 13 * k), text, fill="black", font=font)
            else:
                fig.paste(item.resize((cell, cell), 0), (x, y))
    return fig


def run_vd_demo(out: Path, *, n_score: int = 100, device: str = "cpu", quiet: bool = False) -> dict[str, Any]:
    """The four-flow demo on the shipped miniature; returns the report written to demo.json."""
    from versadiff.eval.flows import held_out, score_flow
    from versadiff.models import load_model
    from versadiff.outputs import library_versions

    t0 = time.perf_counter()
    model = load_model(VD_DEMO_MODEL, device=device)
    _, images, _ = held_out(SHOWN, seed=7)
    show = {"text-to-image": PROMPTS, "image-variation": images, "image-to-text": images, "text-variation": TEXTS}
    s = model.config.sample
    rows, sections, scores = [], [], {}
    for flow, inputs in show.items():
        outs = model.generate(list(range(SHOWN)), flow=flow, context=inputs, device=device)
        shown_in = list(inputs) if isinstance(inputs, list) else _tile(inputs)
        shown_out = list(outs) if isinstance(outs, list) else _tile(outs)
        rows.append((flow, shown_in, shown_out))
        r = score_flow(model, flow, n_score, device=device)
        scores[flow] = {k: v for k, v in r.items() if k not in ("outputs", "inputs")}
        sections.append((flow, shown_in, shown_out, scores[flow]))
        if not quiet:
            print(f"{flow:16s} score {r['score']:.3f} over {n_score} held-out items")
    out.mkdir(parents=True, exist_ok=True)
    fig = flows_figure(rows)
    fig.save(out / "flows.png")
    (out / "index.html").write_text(_html(sections, s), encoding="utf-8")
    report = {"model": str(model.source), "sampler": s.sampler, "steps": s.steps, "guidance": s.guidance,
              "scores": scores, "seconds": time.perf_counter() - t0, "figure": str(out / "flows.png"),
              "page": str(out / "index.html"), "versions": library_versions()}
    (out / "demo.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _html(sections: list, s: Any) -> str:
    def cell(item: Any) -> str:
        if isinstance(item, str):
            return f'<div class="t">{html.escape(item)}</div>'
        return f'<img src="data:image/png;base64,{base64.b64encode(_png(item)).decode()}">'

    body = []
    for flow, ins, outs, score in sections:
        detail = ", ".join(f"{k} {v:.2f}" for k, v in score.items() if isinstance(v, float) and k != "score")
        body.append(f"<h2>{html.escape(flow)}</h2><p>score {score['score']:.3f} on {score['n']} held-out items "
                    f"({html.escape(detail)})</p><div class=row>{''.join(map(cell, ins))}<span>&rarr;</span>"
                    f"{''.join(map(cell, outs))}</div>")
    return ("<!doctype html><meta charset=utf-8><title>versadiff: Versatile Diffusion on shapes</title>"
            "<style>body{font-family:sans-serif;margin:2em} .row{display:flex;gap:8px;align-items:center}"
            " img{width:96px;height:96px;image-rendering:pixelated} .t{width:96px;height:96px;border:1px solid #aaa;"
            "font-size:12px;padding:4px;box-sizing:border-box} span{font-size:24px}</style>"
            f"<h1>Versatile Diffusion, four flows, one network</h1><p>sampler {s.sampler}, {s.steps} steps, "
            f"guidance w = {s.guidance} (scale {1 + s.guidance})</p>" + "".join(body))


def run_class_demo(out: Path, weights: Path, *, batch_size: int = 72, device: str = "cpu",
                   quiet: bool = False, per_class: int = 4, sampler: str = "dpmpp", steps: int = 20,
                   labels: bool = True) -> dict[str, Any]:
    """The class-conditional shapes demo: one image per class and seed, scored by the attribute reader; with
    `labels`, demo_grid.png names each column's class under it."""
    from versadiff.data.attributes import conditional_accuracy
    from versadiff.images import save_grid
    from versadiff.models import load_model
    from versadiff.outputs import library_versions

    captioned = labels  # `labels` below are the classes sampled
    model = load_model(weights)
    if not model.num_classes:
        raise ValueError(f"{weights} is not a class-conditional model; the class demo needs the shapes preset")
    k = model.num_classes
    labels = [c for _ in range(per_class) for c in range(k)]  # row r holds one image of every class
    g = model.config.sample.guidance
    images = model.generate(list(range(len(labels))), class_labels=labels, sampler=sampler, steps=steps, guidance=g,
                            batch_size=batch_size, device=device)
    out.mkdir(parents=True, exist_ok=True)
    names = list(model.class_names or [])
    captions = [names[c] if c < len(names) else f"class {c}" for c in labels]  # each column's class, under it
    grid = save_grid(images, out / "demo_grid.png", nrow=k, labels=captions if captioned else None)
    acc = float(conditional_accuracy(images, torch.tensor(labels)))
    report = {"weights": str(weights), "grid": str(grid), "conditional_accuracy": acc, "n": len(labels),
              "sampler": sampler, "steps": steps, "guidance": g, "versions": library_versions()}
    (out / "demo.json").write_text(json.dumps(report, indent=2) + "\n")
    if not quiet:
        print(f"weights:  {weights}")
        print(f"grid:     {grid}  ({per_class} rows x {k} classes; {sampler}, {steps} steps, guidance {g})")
        print(f"conditional accuracy (shapes attribute reader): {acc:.3f} over {len(labels)} samples")
    return report
