"""Text->image speed of versadiff's VD pipeline against diffusers' VersatileDiffusionTextToImagePipeline built on the
same weights (exported with versadiff.convert.diffusers_export), DDIM 50 steps with guidance, one batch.

    python benchmarks/vd_speed.py --model vd-shapes --batch 8 --repeats 3

Both run the same networks (the image data stream with the text context stream swapped in), the same CLIP
text encoder and the same KL decoder; the two calls are interleaved, and the best of `repeats` is kept.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="vd-shapes")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance-scale", type=float, default=7.5, help="diffusers' s (versadiff w = s - 1)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from diffusers import VersatileDiffusionTextToImagePipeline

    from versadiff.convert.diffusers_export import export_diffusers
    from versadiff.models import load_model

    model = load_model(args.model)
    prompts = ["a red circle", "a small blue square in the top left"] * (args.batch // 2) + ["a cyan triangle"] * (args.batch % 2)
    with tempfile.TemporaryDirectory() as tmp:
        folder = export_diffusers(model, Path(tmp) / "vd")
        pipe = VersatileDiffusionTextToImagePipeline.from_pretrained(folder, torch_dtype=torch.float32)
        pipe.set_progress_bar_config(disable=True)

        def ours() -> None:
            model.text_to_image(prompts, seeds=range(args.batch), sampler="ddim", steps=args.steps,
                                guidance=args.guidance_scale - 1.0, batch_size=args.batch)

        def theirs() -> None:
            pipe(prompts, num_inference_steps=args.steps, guidance_scale=args.guidance_scale,
                 generator=torch.Generator().manual_seed(0), output_type="np")

        times: dict[str, list[float]] = {"versadiff": [], "diffusers": []}
        ours(), theirs()  # warm-up
        for _ in range(args.repeats):
            for name, fn in (("versadiff", ours), ("diffusers", theirs)):
                t0 = time.perf_counter()
                with torch.no_grad():
                    fn()
                times[name].append(time.perf_counter() - t0)
    cpu = torch.backends.cpu.get_cpu_capability()
    best = {k: min(v) for k, v in times.items()}
    print(f"| pipeline | batch | DDIM steps | guidance scale | best s | img/s | device |")
    print("|---|---|---|---|---|---|---|")
    for name in ("versadiff", "diffusers"):
        print(f"| {name} | {args.batch} | {args.steps} | {args.guidance_scale} | {best[name]:.2f} | "
              f"{args.batch / best[name]:.2f} | CPU {cpu}, {args.threads} thread(s) |")
    print(f"\nratio versadiff / diffusers speed: {best['diffusers'] / best['versadiff']:.2f}x")


if __name__ == "__main__":
    main()
