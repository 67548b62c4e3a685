"""One text->image comparison on held-out shapes prompts: VD's text-to-image flow, U-ViT (context tokens) and
VQ-Diffusion (cross-attention, learned null), each with the same captions and the same miniature CLIP text tower,
and the diffusers pipelines built from the same weights where diffusers has one (VD: VersatileDiffusionTextToImage-
Pipeline; VQ-Diffusion: VQDiffusionPipeline; U-ViT: none).

    python benchmarks/text_to_image.py --vd vd-shapes --uvit runs/<shapes_uvit_text run> \
        --vq runs/<shapes_vqdiffusion_text run> --n 200 --threads 1

Columns: attribute accuracy on n held-out prompts (versadiff.eval.flows.score_flow: colour and shape, and position
when the prompt names it; "all" = every stated attribute right), Fréchet distance of the shapes evaluator's
features (versadiff.eval.features "shapes") against the n real held-out images of the same prompts, img/s of the
generation at each model's default sampler / steps / guidance (its run's `sample` section), network parameters, and
training CPU-minutes (from the run's stats.jsonl: the logged img/s of every interval, times --train-threads; or
--minutes LABEL=M). A "real images" row gives the FD floor (held-out images vs another draw of the same size).
Prints markdown with the CPU capability and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

# ----------------------------------------------------------------------------------------------- facts


def run_folder(source: str) -> Path | None:
    """The run folder of a run / checkpoint / export path (the folder holding stats.jsonl), if any."""
    p = Path(source)
    for cand in (p, *p.parents):
        if (cand / "stats.jsonl").is_file():
            return cand
        if cand == cand.parent:
            break
    return None


def training_cpu_minutes(run: Path | None, threads: int = 1) -> float | None:
    """CPU-minutes of a run: sum over the logged intervals of (images in the interval / img_per_s), x threads."""
    if run is None:
        return None
    cfg = json.loads((run / "config.json").read_text()) if (run / "config.json").is_file() else {}
    train = cfg.get("train", {})
    per_step = int(train.get("batch_size", 1)) * int(train.get("grad_accum", 1))
    seconds, last = 0.0, 0
    for line in (run / "stats.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "img_per_s" not in row or not row["img_per_s"]:
            continue
        seconds += (int(row["step"]) - last) * per_step / float(row["img_per_s"])
        last = int(row["step"])
    return seconds * threads / 60.0 if last else None


def parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ----------------------------------------------------------------------------------------------- diffusers


def vq_transformer_to_diffusers(net: Any) -> Any:
    """diffusers' discrete Transformer2DModel with the weights of a versadiff VQTransformer (text cross-attention,
    fc MLP x4, square grid): the layout diffusers' VQ-Diffusion port uses."""
    from diffusers import Transformer2DModel

    c = net.config
    if c.height != c.width or c.mlp_type != "fc" or c.mlp_ratio != 4.0 or c.context_dim is None:
        raise ValueError("diffusers' VQ-Diffusion transformer is square, fc MLP x4, with cross-attention")
    t = Transformer2DModel(
        num_attention_heads=c.num_heads, attention_head_dim=c.dim // c.num_heads, num_layers=c.depth,
        cross_attention_dim=c.context_dim, attention_bias=True, sample_size=c.height, num_vector_embeds=c.num_embed + 1,
        activation_fn="geglu-approximate", num_embeds_ada_norm=c.num_steps, norm_type="ada_norm", dropout=0.0,
    )  # fmt: skip
    s = {k: v.detach().float() for k, v in net.state_dict().items()}
    out = {
        "latent_image_embedding.emb.weight": s["tok_emb.weight"],
        "latent_image_embedding.height_emb.weight": s["row_emb.weight"],
        "latent_image_embedding.width_emb.weight": s["col_emb.weight"],
        "norm_out.weight": s["norm_out.weight"], "norm_out.bias": s["norm_out.bias"],
        "out.weight": s["head.weight"], "out.bias": s["head.bias"],
    }  # fmt: skip
    for n in range(c.depth):
        o, b = f"blocks.{n}.", f"transformer_blocks.{n}."
        for norm in ("norm1", "norm2"):
            for p in ("emb.weight", "linear.weight", "linear.bias"):
                out[f"{b}{norm}.{p}"] = s[f"{o}{norm}.{p}"]
        for p in ("weight", "bias"):
            q, k, v = s[f"{o}attn.qkv.{p}"].chunk(3, dim=0)
            out.update({f"{b}attn1.to_q.{p}": q, f"{b}attn1.to_k.{p}": k, f"{b}attn1.to_v.{p}": v})
            out[f"{b}attn1.to_out.0.{p}"] = s[f"{o}attn.proj.{p}"]
            out[f"{b}attn2.to_q.{p}"] = s[f"{o}cross.q.{p}"]
            k, v = s[f"{o}cross.kv.{p}"].chunk(2, dim=0)
            out.update({f"{b}attn2.to_k.{p}": k, f"{b}attn2.to_v.{p}": v})
            out[f"{b}attn2.to_out.0.{p}"] = s[f"{o}cross.proj.{p}"]
            out[f"{b}norm3.{p}"] = s[f"{o}norm3.{p}"]
            out[f"{b}ff.net.0.proj.{p}"] = s[f"{o}mlp.fc1.{p}"]
            out[f"{b}ff.net.2.{p}"] = s[f"{o}mlp.fc2.{p}"]
    t.load_state_dict(out, strict=True)
    return t.eval()


def vq_autoencoder_to_diffusers(ae: Any) -> Any:
    """diffusers VQModel with a versadiff VQAutoencoder's weights (its names are diffusers' already)."""
    from diffusers import VQModel

    c = ae.config
    n = len(c.channel_mult)
    m = VQModel(
        in_channels=c.in_channels, out_channels=c.out_channels, down_block_types=["DownEncoderBlock2D"] * n,
        up_block_types=["UpDecoderBlock2D"] * n, block_out_channels=[c.base_channels * k for k in c.channel_mult],
        layers_per_block=c.num_res_blocks, act_fn="silu", latent_channels=c.z_channels, num_vq_embeddings=c.n_embed,
        vq_embed_dim=c.embed_dim, norm_num_groups=c.norm_groups, mid_block_add_attention=c.mid_attention,
    )  # fmt: skip
    state = {k: v for k, v in ae.state_dict().items() if not k.startswith(("quantize.ema_", "quantize.usage"))}
    m.load_state_dict(state, strict=True)
    return m.eval()


def vq_diffusers_pipeline(model: Any) -> Any:
    """VQDiffusionPipeline on a versadiff VQ-Diffusion text-to-image model's weights (transformer, VQ autoencoder,
    CLIP text tower, tokenizer with the encoder's padding, learned null)."""
    from diffusers import VQDiffusionPipeline, VQDiffusionScheduler
    from diffusers.pipelines.deprecated.vq_diffusion.pipeline_vq_diffusion import (
        LearnedClassifierFreeSamplingEmbeddings,
    )
    from transformers import CLIPTextModel, CLIPTokenizer

    flow = model.flows["text-to-image"]
    enc = flow.encoder
    if enc.config.context != "normalized":
        raise ValueError("VQDiffusionPipeline encodes prompts as VQ-Diffusion does: the encoder needs context=normalized")
    text = CLIPTextModel(enc.model.config)
    own = {k: v for k, v in enc.model.state_dict().items() if k.startswith("text_model.")}
    if not any(k.startswith("text_model.") for k in text.state_dict()):
        own = {k[len("text_model."):]: v for k, v in own.items()}
    text.load_state_dict(own, strict=True)
    vocab = enc.tokenizer.backend.convert_ids_to_tokens(enc.tokenizer.pad_id)
    tok = CLIPTokenizer(str(enc.tokenizer.folder / "vocab.json"), str(enc.tokenizer.folder / "merges.txt"),
                        pad_token=vocab, model_max_length=enc.context_length)
    net = model.net
    null = LearnedClassifierFreeSamplingEmbeddings(True, hidden_size=net.config.context_dim,
                                                   length=net.config.context_len)
    null.embeddings.data.copy_(net.null_context.detach().float())
    sched = VQDiffusionScheduler(num_vec_classes=net.config.num_embed + 1, num_train_timesteps=net.config.num_steps)
    pipe = VQDiffusionPipeline(vqvae=vq_autoencoder_to_diffusers(flow.codec.module), text_encoder=text.eval(),
                               tokenizer=tok, transformer=vq_transformer_to_diffusers(net), scheduler=sched,
                               learned_classifier_free_sampling_embeddings=null)
    pipe.set_progress_bar_config(disable=True)
    return pipe


class DiffusersTextToImage:
    """A diffusers text-to-image pipeline behind Pipeline.generate's signature (for score_flow): one generator per
    batch seeded by its first seed; guidance w -> diffusers' scale s = 1 + w."""

    def __init__(self, pipe: Any, kind: str, steps: int, guidance: float, truncation: float = 1.0) -> None:
        self.pipe, self.kind, self.steps, self.guidance, self.truncation = pipe, kind, steps, guidance, truncation

    def generate(self, seeds: list[int], *, flow: str, context: list[str], steps: int | None = None,
                 guidance: float | None = None, sampler: str | None = None, batch_size: int = 50,
                 device: Any = "cpu") -> torch.Tensor:
        steps = steps or self.steps
        w = self.guidance if guidance is None else guidance
        out = []
        for start in range(0, len(seeds), batch_size):
            prompts = list(context[start : start + batch_size])
            g = torch.Generator().manual_seed(int(seeds[start]))
            kw: dict[str, Any] = dict(num_inference_steps=steps, guidance_scale=1.0 + w, generator=g, output_type="np")
            if self.kind == "vq":
                kw["truncation_rate"] = self.truncation
            with torch.no_grad():
                images = self.pipe(prompts, **kw).images
            out.append(torch.from_numpy(np.asarray(images, dtype=np.float32)).permute(0, 3, 1, 2) * 2 - 1)
        return torch.cat(out)


# ----------------------------------------------------------------------------------------------- scoring


class Timed:
    """Forwards generate() and keeps its wall time (the scoring around it is not counted)."""

    def __init__(self, model: Any) -> None:
        self.model, self.seconds = model, 0.0

    def generate(self, *args: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        out = self.model.generate(*args, **kw)
        self.seconds += time.perf_counter() - t0
        return out


def shapes_fd(fake: torch.Tensor, real: torch.Tensor) -> float:
    from versadiff.eval.features import build_feature_extractor
    from versadiff.eval.metrics import frechet_distance
    from versadiff.eval.stats import stats_from_features

    ext = build_feature_extractor("shapes")
    a, b = (stats_from_features(ext(x)["features"].numpy(), ext.name) for x in (fake, real))
    return frechet_distance(a.mu, a.sigma, b.mu, b.sigma)


def score(model: Any, n: int, batch: int, steps: int | None, guidance: float | None, sampler: str | None,
          real: torch.Tensor) -> dict[str, Any]:
    from versadiff.eval.flows import score_flow

    timed = Timed(model)
    r = score_flow(timed, "text-to-image", n, steps=steps, guidance=guidance, sampler=sampler, batch_size=batch)
    images = r.pop("outputs")
    r.pop("inputs")
    return {**r, "fd": shapes_fd(images, real), "img_per_s": n / timed.seconds, "seconds": timed.seconds}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--vd", help="VD model: a run, weight file or shipped name (vd-shapes)")
    p.add_argument("--uvit", help="shapes_uvit_text run")
    p.add_argument("--vq", help="shapes_vqdiffusion_text run")
    p.add_argument("--n", type=int, default=200, help="held-out prompts (ShapesDataset seed 1)")
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--train-threads", type=int, default=1, help="threads the runs trained with (for CPU-minutes)")
    p.add_argument("--minutes", action="append", default=[], metavar="LABEL=M",
                   help="training CPU-minutes of a model without a run folder, e.g. vd=85")
    p.add_argument("--no-diffusers", action="store_true", help="skip the diffusers pipelines")
    p.add_argument("--out", type=Path, default=Path("runs/bench_text_to_image.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from versadiff.eval.flows import held_out
    from versadiff.models import load_model

    given = {k: float(v) for k, v in (m.split("=", 1) for m in args.minutes)}
    _, real, _ = held_out(args.n)
    floor = shapes_fd(held_out(args.n, seed=2)[1], real)
    rows: list[dict[str, Any]] = []
    for label, family, source in (("vd", "VD text-to-image flow", args.vd), ("uvit", "U-ViT", args.uvit),
                                  ("vq", "VQ-Diffusion", args.vq)):
        if not source:
            continue
        model = load_model(source)
        s = model.config.sample
        minutes = given.get(label, training_cpu_minutes(run_folder(str(model.source) or source), args.train_threads))
        base = {"label": label, "family": family, "source": str(model.source), "params": parameters(model.net),
                "train_cpu_minutes": minutes, "step": model.step}
        r = score(model, args.n, args.batch, None, None, None, real)
        rows.append({**base, "pipeline": "versadiff", "sampler": s.sampler, "steps": s.steps, "guidance": s.guidance,
                     "truncation": s.truncation if label == "vq" else None, **r})
        print(f"{label}: {rows[-1]['score']:.3f} in {r['seconds']:.0f} s", flush=True)
        if args.no_diffusers or label == "uvit":
            continue
        if label == "vd":
            import tempfile

            from diffusers import VersatileDiffusionTextToImagePipeline

            from versadiff.convert.diffusers_export import export_diffusers

            tmp = tempfile.mkdtemp()
            pipe = VersatileDiffusionTextToImagePipeline.from_pretrained(export_diffusers(model, Path(tmp) / "vd"),
                                                                         torch_dtype=torch.float32)
            pipe.set_progress_bar_config(disable=True)
            # the export's scheduler is the run's sampler on its schedule (DDIM for vd_shapes)
            adapter, steps, sampler = DiffusersTextToImage(pipe, "vd", s.steps, s.guidance), s.steps, s.sampler
        else:
            # diffusers has no strided sampler: its VQ-Diffusion samples all T steps
            T = model.net.config.num_steps
            adapter = DiffusersTextToImage(vq_diffusers_pipeline(model), "vq", T, s.guidance, s.truncation)
            steps, sampler = T, "standard"
        r = score(adapter, args.n, args.batch, None, None, None, real)
        rows.append({**base, "pipeline": "diffusers", "sampler": sampler, "steps": steps, "guidance": s.guidance,
                     "truncation": s.truncation if label == "vq" else None, **r})
        print(f"{label} (diffusers): {rows[-1]['score']:.3f} in {r['seconds']:.0f} s", flush=True)

    cpu = torch.backends.cpu.get_cpu_capability()
    print(f"\nText->image on {args.n} held-out shapes prompts (seed 1); CPU {cpu}, {args.threads} thread(s); "
          f"FD floor (two sets of {args.n} real images): {floor:.3f}\n")
    print("| model | pipeline | sampler, steps, w | all attributes | colour | shape | position | shapes FD | img/s "
          "| parameters | training CPU-min |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        how = f"{r['sampler']}, {r['steps']}, {r['guidance']:g}" + (f", r {r['truncation']:g}" if r["truncation"] else "")
        mins = "–" if r["train_cpu_minutes"] is None else f"{r['train_cpu_minutes']:.1f}"
        print(f"| {r['family']} | {r['pipeline']} | {how} | {r['score']:.3f} | {r.get('color', 0):.3f} | "
              f"{r.get('shape', 0):.3f} | {r.get('position', 0):.3f} | {r['fd']:.3f} | {r['img_per_s']:.2f} | "
              f"{r['params'] / 1e6:.2f}M | {mins} |")
    if args.uvit:
        print("\n(U-ViT: diffusers has no U-ViT pipeline; UniDiffuserPipeline is a different, joint model.)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"cpu_capability": cpu, "threads": args.threads, "n": args.n, "fd_floor": floor,
                                    "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
