"""Write the golden samples that pin inference across refactors (run from the repository root).

    python tests/golden/make_golden.py
    python tests/golden/make_golden.py --only demo,demo_unguided_ddim    # after replacing the shipped demo weights

Trains three tiny models for a few steps through `versadiff train` (a VQ autoencoder, a VQ-Diffusion model on
its tokens, a KL autoencoder and a latent UNet on its latents), exports them into tests/golden/, and records
float32 samples at fixed seeds of those and of the shipped demo model with `load_model(...).generate(...)`.
The samples were first written by commit c3c85d9's code (before the multi-flow foundation re-lay);
tests/test_golden_samples.py checks that today's code gives the same bits. `--only CASES` re-records just those
cases (no training) and keeps the others' samples and weights as they are: the demo cases were re-recorded so
when the shipped demo weights were retrained (issue 17: conv resampling).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT / "src"))

from versadiff.cli import main  # noqa: E402
from versadiff.models import load_model  # noqa: E402

TINY = ["train.log_every=1", "train.sample_every=0", "train.checkpoint_every=0", "train.mixed_precision=no",
        "data.size=64", "train.batch_size=8", "train.num_workers=0", "sample.n=2"]

#: (name, weights, generate keywords) of every golden sample set
CASES = {
    "demo": dict(seeds=[0, 1, 2, 3], class_labels=[0, 5, 11, 17], sampler="dpmpp", steps=6, guidance=1.0),
    "demo_unguided_ddim": dict(seeds=[7, 8], class_labels=[2, 3], sampler="ddim", steps=5, guidance=0.0),
    "vq": dict(seeds=[0, 1, 2], class_labels=[1, 4, 9], sampler="fast", steps=10, guidance=1.0, truncation=0.8),
    "latent": dict(seeds=[3, 4], class_labels=[0, 6], sampler="ddim", steps=5, guidance=1.0),
}


def _train(args: list[str]) -> None:
    if main(["train", *args, "--quiet"]) != 0:
        raise SystemExit(f"training failed: {args}")


DEMO = ROOT / "src/versadiff/assets/demo_shapes_unet.safetensors"


def rerecord(cases: list[str]) -> None:
    """Re-record the samples of `cases` (shipped-weight cases only) into samples.safetensors, keeping the rest."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    unknown = sorted(set(cases) - {"demo", "demo_unguided_ddim"})
    if unknown:
        raise SystemExit(f"--only re-records the shipped demo's cases; {unknown} need a full run (no --only)")
    path = HERE / "samples.safetensors"
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    out = load_file(str(path))
    if (meta["cpu_capability"], meta["torch"]) != (torch.backends.cpu.get_cpu_capability(), torch.__version__):
        raise SystemExit(f"the other cases were recorded on {meta['cpu_capability']} / torch {meta['torch']}; "
                         "re-record all of them (no --only) on this machine")
    for case in cases:
        out[case] = load_model(DEMO).generate(**CASES[case]).contiguous()
    save_file(out, str(path), metadata=meta)
    print("re-recorded", ", ".join(cases), "in", path)


def main_() -> None:
    torch.set_num_threads(1)
    if "--only" in sys.argv:
        rerecord(sys.argv[sys.argv.index("--only") + 1].split(","))
        return
    work = Path(tempfile.mkdtemp())
    try:
        _train(["shapes_vqae", "--out", str(work / "vqae"), "--set", "train.max_steps=3", *TINY, "model.base_channels=8"])
        _train(["shapes_vqdiffusion", "--out", str(work / "vq"), "--set", "train.max_steps=3", *TINY,
                f"autoencoder.path={work / 'vqae'}", "model.depth=2", "model.dim=32", "model.num_heads=2"])
        # (small widths: the golden weights live in the repository)
        _train(["shapes_klae", "--out", str(work / "klae"), "--set", "train.max_steps=3", *TINY,
                "model.base_channels=8"])
        _train(["shapes_latent_unet", "--out", str(work / "latent"), "--set", "train.max_steps=3", *TINY,
                f"autoencoder.path={work / 'klae'}", "model.base_channels=16", "model.emb_channels=32",
                "model.norm_groups=8"])
        for name in ("vqae", "vq", "klae", "latent"):
            shutil.copy(work / name / "export" / "model.safetensors", HERE / f"{name}.safetensors")
        weights = {"demo": ROOT / "src/versadiff/assets/demo_shapes_unet.safetensors",
                   "demo_unguided_ddim": ROOT / "src/versadiff/assets/demo_shapes_unet.safetensors",
                   "vq": work / "vq", "latent": work / "latent"}
        out = {}
        for case, kw in CASES.items():
            out[case] = load_model(weights[case]).generate(**kw).contiguous()
        save_file(out, str(HERE / "samples.safetensors"), metadata={"cases": json.dumps(CASES),
                  "cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__})
        print("wrote", HERE / "samples.safetensors")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main_()
