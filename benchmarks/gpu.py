"""The speed comparisons of issue 17 in one shot, for a lent GPU (or this CPU): one command, its own timeouts.

    python benchmarks/gpu.py --out runs/gpu_bench            # on the GPU machine: <= 8 min in all
    python benchmarks/gpu.py --smoke --out /tmp/gpu_smoke    # toy sizes on CPU, < 60 s (tests/test_gpu_bench.py)

Sections (each with its own time limit, all under one --total limit; a section that fails or runs out of time
becomes a row saying so and the others still run):
  matmul   the measured matmul peak per dtype (4096^3 on GPU, 2048^3 on CPU; 256^3 in --smoke): "% of peak"
           below divides by these
  unet     the tiny UNet (unet_tiny, conv resampling) vs the diffusers UNet2DModel of about the same size
           (benchmarks/nets.py's pair): training img/s (fwd + bwd + each library's AdamW step: versadiff's trainer's,
           fused where it applies; torch's default for diffusers) and sampling img/s (a DDIM loop:
           versadiff's sampler against diffusers' DDIMScheduler loop), interleaved call by call
  compiled the same pair again with our network eager, in channels_last and under torch.compile
           (versadiff.nets.speed.compile_net, inductor, falling back to eager with a warning; its training graph
           compiles in the untimed warm-up call; sampling also in mode max-autotune-no-cudagraphs), all
           interleaved with the eager diffusers peer: training and sampling img/s
  uvit     U-ViT-S/2 forward and training img/s in every dtype and its % of the measured matmul peak, at
           batch 4 and 16 on a CPU, 64 on a GPU
  vd       VD text->image (the shipped vd-shapes miniature), eager, with generate(compile=True) and with
           compile="max-autotune-no-cudagraphs", vs diffusers' VersatileDiffusionTextToImagePipeline on the same
           weights (benchmarks/vd_speed.py's set-up)
  vq       VQ-Diffusion text->image, eager and compiled (both modes), vs diffusers' VQDiffusionPipeline on the
           same weights (benchmarks/text_to_image.py's converter), both taking every step of the process (equal
           network calls); the model is --vq RUN, or one trained for 1 step here (speed does not depend on the
           weights)
Writes OUT/gpu_bench.md (the tables) and OUT/gpu_bench.json (every row, the device, the CPU capability).
Peak memory is torch.cuda.max_memory_allocated per row (GPU only). Dtypes: fp32 and the native half type
(bf16 where supported, per versadiff.precision; fp16 too on a GPU), autocast.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import nets as nets_bench  # noqa: E402  (benchmarks/nets.py: the diffusers peer and the FLOP counter)

SECTIONS = ("matmul", "unet", "uvit", "vd", "vq", "compiled")  # compiled last: its compiles are the slowest part
TIMEOUT_S = {"matmul": 30, "unet": 90, "uvit": 60, "vd": 120, "vq": 120, "compiled": 200}
HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}


class SectionTimeout(BaseException):
    """A BaseException, like KeyboardInterrupt: the `except Exception` of a fallback (CompiledNet's) must not
    swallow it and carry on past the section's limit."""


@contextlib.contextmanager
def time_limit(seconds: float):
    """SIGALRM after `seconds` (main thread, POSIX): the section stops at its next Python instruction."""
    if seconds <= 0:
        raise SectionTimeout("no time left in the total budget")

    def fire(signum: int, frame: Any) -> None:
        raise SectionTimeout(f"ran past its {seconds:.0f} s limit")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


class Bench:
    def __init__(self, device: torch.device, smoke: bool, repeats: int) -> None:
        self.device, self.smoke, self.repeats = device, smoke, repeats
        self.cuda = device.type == "cuda"
        self.peaks: dict[str, float] = {}
        self.rows: list[dict[str, Any]] = []
        self.ratios: list[dict[str, Any]] = []
        self.dtypes = ["fp32"] + self._half_dtypes()

    def _half_dtypes(self) -> list[str]:
        from versadiff.precision import resolve_precision

        if self.smoke:  # toy sizes: fp32 only, except on a GPU
            return ["bf16"] if self.cuda and torch.cuda.is_bf16_supported() else []
        out = []
        if resolve_precision("auto", self.device)[0] == "bf16":
            out.append("bf16")
        if self.cuda:
            out.append("fp16")
        return out

    # -- timing --------------------------------------------------------------------------------

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def autocast(self, dtype: str):
        return torch.autocast(self.device.type, dtype=HALF.get(dtype, torch.bfloat16), enabled=dtype in HALF)

    def interleaved(self, fns: dict[str, Callable[[], Any]]) -> dict[str, dict[str, float]]:
        """Best seconds per call of each fn, timed A B A B after one warm-up each; peak memory per fn."""
        best = {k: float("inf") for k in fns}
        peak = {k: 0.0 for k in fns}
        for fn in fns.values():
            fn()
        self.sync()
        for _ in range(self.repeats):
            for name, fn in fns.items():
                if self.cuda:
                    torch.cuda.reset_peak_memory_stats(self.device)
                self.sync()
                t0 = time.perf_counter()
                fn()
                self.sync()
                best[name] = min(best[name], time.perf_counter() - t0)
                if self.cuda:
                    peak[name] = max(peak[name], torch.cuda.max_memory_allocated(self.device) / 2**20)
        return {k: {"s": best[k], "peak_mib": peak[k] if self.cuda else None} for k in fns}

    def row(self, section: str, model: str, dtype: str, batch: int, **values: Any) -> dict[str, Any]:
        r = {"section": section, "model": model, "dtype": dtype, "batch": batch, "status": "ok", **values}
        self.rows.append(r)
        return r

    def pct(self, flops_per_img: float, img_per_s: float, dtype: str) -> float | None:
        peak = self.peaks.get(dtype)
        return 100.0 * flops_per_img * img_per_s / peak if peak else None

    # -- sections ------------------------------------------------------------------------------

    def matmul(self) -> None:
        n = 256 if self.smoke else (4096 if self.cuda else 2048)
        for dname in self.dtypes:
            dt = HALF.get(dname, torch.float32)
            a = torch.randn(n, n, device=self.device, dtype=dt)
            t = self.interleaved({dname: lambda: torch.mm(a, a)})[dname]
            self.peaks[dname] = 2 * n**3 / t["s"]
            self.row("matmul", f"matmul {n}^3", dname, 1, gflops=self.peaks[dname] / 1e9)

    def _unet_pair(self) -> tuple[dict[str, torch.nn.Module], dict[str, float]]:
        from versadiff.nets import build_net

        torch.manual_seed(0)
        models = {"unet_tiny, conv resampling (ours)": build_net({"preset": "unet_tiny", "resblock_resample": False}),
                  "diffusers UNet2DModel (32,64,64)x3": nets_bench.diffusers_unet((32, 64, 64), 3, 1)}
        x, t = torch.randn(1, 3, 32, 32), torch.rand(1) * 999
        flops = {k: float(nets_bench.count_flops(m, x, t, train=False)) for k, m in models.items()}
        return {k: m.to(self.device) for k, m in models.items()}, flops

    def _train_steps(self, models: dict[str, torch.nn.Module], x: torch.Tensor, t: torch.Tensor,
                     dtype: str, peer: str) -> dict[str, Callable[[], None]]:
        """One AdamW training step per model (a fresh optimizer each), on the same batch, for interleaved(). Each
        library's step is its trainer's: versadiff's AdamW (fused where it applies, versadiff.train.optim) for
        ours, torch.optim.AdamW with its defaults (the multi-tensor form, as diffusers' training examples) for
        `peer`."""
        opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-4) if k == peer else _our_adamw(m)
                for k, m in models.items()}

        def train_step(name: str) -> Callable[[], None]:
            def step() -> None:
                m = models[name]
                m.train()  # not m = m.train(): a CompiledNet's train() is its network's and returns the network
                opts[name].zero_grad(set_to_none=True)
                with self.autocast(dtype):
                    loss = m(x, t).float().square().mean()
                loss.backward()
                opts[name].step()
            return step

        return {k: train_step(k) for k in models}

    def _our_sampler(self, net: torch.nn.Module, batch: int, steps: int, dtype: str) -> Callable[[], Any]:
        from versadiff.config import load_config
        from versadiff.sampling import GaussianSampling

        family = GaussianSampling(load_config("shapes_unet_tiny"))

        def run() -> Any:
            with self.autocast(dtype):
                return family.sample(net, (3, 32, 32), range(batch), {}, None, 0.0, sampler="ddim", steps=steps,
                                     device=self.device)
        return run

    def _diffusers_sampler(self, wrapped: torch.nn.Module, batch: int, steps: int, dtype: str) -> Callable[[], Any]:
        from diffusers import DDIMScheduler

        sched = DDIMScheduler(num_train_timesteps=1000)
        unet = wrapped.model

        def run() -> Any:
            sched.set_timesteps(steps)
            g = torch.Generator(self.device).manual_seed(0)
            x = torch.randn(batch, 3, 32, 32, generator=g, device=self.device)
            with torch.no_grad(), self.autocast(dtype):
                for t in sched.timesteps:  # DDIMPipeline's loop
                    eps = unet(x, t).sample
                    x = sched.step(eps.float(), t, x).prev_sample
            return x
        return run

    def unet(self) -> None:
        batch, steps = (2, 2) if self.smoke else (64 if self.cuda else 16, 20)
        models, flops = self._unet_pair()
        (ours, our_net), (peer, peer_net) = models.items()
        x = torch.randn(batch, 3, 32, 32, device=self.device)
        t = torch.rand(batch, device=self.device) * 999
        for dname in self.dtypes:
            tr = self.interleaved(self._train_steps(models, x, t, dname, peer))
            for m in models.values():
                m.eval()
            sa = self.interleaved({ours: self._our_sampler(our_net, batch, steps, dname),
                                   peer: self._diffusers_sampler(peer_net, batch, steps, dname)})
            for name in models:
                train_ips, sample_ips = batch / tr[name]["s"], batch / sa[name]["s"]
                self.row("unet", name, dname, batch, train_img_s=train_ips, sample_img_s=sample_ips,
                         sample_steps=steps, peak_mib=tr[name]["peak_mib"], sample_peak_mib=sa[name]["peak_mib"],
                         pct_peak=self.pct(3 * flops[name], train_ips, dname))
            self.ratios.append({"pair": f"{ours} / {peer}", "dtype": dname,
                                "train": tr[peer]["s"] / tr[ours]["s"], "sample": sa[peer]["s"] / sa[ours]["s"]})

    def compiled(self) -> None:
        from versadiff.nets import build_net
        from versadiff.nets.speed import channels_last, compile_net

        batch, steps = (2, 2) if self.smoke else (64 if self.cuda else 16, 20)
        models, _ = self._unet_pair()
        (ours, net), (peer, peer_net) = models.items()
        cl = channels_last(build_net({"preset": "unet_tiny", "resblock_resample": False})).to(self.device)
        cl.load_state_dict(net.state_dict())
        x = torch.randn(batch, 3, 32, 32, device=self.device)
        t = torch.rand(batch, device=self.device) * 999
        for dname in self.dtypes[:2]:  # fp32 and the first half type: each dtype is a compile of its own
            # --smoke: dynamo with the eager backend (the compile path without inductor's code generation)
            comps = {"torch.compile": compile_net(net.eval(), backend="eager" if self.smoke else "inductor")}
            if not self.smoke:  # inductor also tuning its matmuls (no CUDA graphs: those are reduce-overhead's row)
                comps["torch.compile max-autotune"] = compile_net(net, mode="max-autotune-no-cudagraphs")
            if self.cuda:  # CUDA graphs: the tiny UNet's step is launch-bound on a GPU
                comps["torch.compile reduce-overhead"] = compile_net(net, mode="reduce-overhead")
            compile_s = {}
            for name, comp in comps.items():
                t0 = time.perf_counter()
                self._our_sampler(comp, batch, steps, dname)()  # compiles here, outside the timed calls
                compile_s[name] = time.perf_counter() - t0
            variants = {"eager": net, "channels_last": cl, **comps}
            for m in (net, cl, peer_net):
                m.eval()
            fns = {name: self._our_sampler(m, batch, steps, dname) for name, m in variants.items()}
            fns[peer] = self._diffusers_sampler(peer_net, batch, steps, dname)
            sa = self.interleaved(fns)
            # training under torch.compile: the same wrapper, which compiles its training graph in the warm-up call
            train_variants = {"eager": net, "channels_last": cl, "torch.compile": comps["torch.compile"],
                              peer: peer_net}
            tr = self.interleaved(self._train_steps(train_variants, x, t, dname, peer))
            for name in (*variants, peer):
                extra = {"compile_s": compile_s[name], "compiled": comps[name].is_compiled} if name in comps else {}
                label = peer if name == peer else f"{ours}, {name}"
                self.row("compiled", label, dname, batch, sample_img_s=batch / sa[name]["s"], sample_steps=steps,
                         train_img_s=batch / tr[name]["s"] if name in tr else None,
                         peak_mib=tr[name]["peak_mib"] if name in tr else None,
                         sample_peak_mib=sa[name]["peak_mib"], **extra)
            for name in variants:
                self.ratios.append({"pair": f"{ours}, {name} / {peer}", "dtype": dname,
                                    "train": tr[peer]["s"] / tr[name]["s"] if name in tr else None,
                                    "sample": sa[peer]["s"] / sa[name]["s"]})

    def uvit(self) -> None:
        from versadiff.nets import build_net

        # batches: the CPU's small one of earlier tables, and 16, where the CPU's matmuls run best
        name, batches = ("uvit_tiny", (2,)) if self.smoke else ("uvit_s2", (64,) if self.cuda else (4, 16))
        torch.manual_seed(0)
        net = build_net(name)
        x1, t1 = torch.randn(1, 3, 32, 32), torch.rand(1) * 999
        fwd_flops = float(nets_bench.count_flops(net, x1, t1, train=False))
        train_flops = float(nets_bench.count_flops(net, x1, t1, train=True))
        net = net.to(self.device)
        opt = _our_adamw(net)
        for batch, dname in ((b, d) for b in batches for d in self.dtypes):
            x = torch.randn(batch, 3, 32, 32, device=self.device)
            t = torch.rand(batch, device=self.device) * 999

            def fwd() -> None:
                with torch.no_grad(), self.autocast(dname):
                    net.eval()(x, t)

            def train() -> None:
                opt.zero_grad(set_to_none=True)
                with self.autocast(dname):
                    loss = net.train()(x, t).float().square().mean()
                loss.backward()
                opt.step()

            got = self.interleaved({"fwd": fwd, "train": train})
            f_ips, t_ips = batch / got["fwd"]["s"], batch / got["train"]["s"]
            self.row("uvit", f"U-ViT ({name}, ours)", dname, batch, fwd_img_s=f_ips, train_img_s=t_ips,
                     peak_mib=got["train"]["peak_mib"], pct_peak=self.pct(train_flops, t_ips, dname),
                     fwd_pct_peak=self.pct(fwd_flops, f_ips, dname), gflop_per_img=fwd_flops / 1e9)

    def vd(self) -> None:
        from diffusers import VersatileDiffusionTextToImagePipeline

        from versadiff.convert.diffusers_export import export_diffusers
        from versadiff.models import load_model

        batch, steps, scale = (1, 2, 2.0) if self.smoke else (32 if self.cuda else 8, 50, 7.5)
        model = load_model("vd-shapes")
        prompts = (["a red circle", "a small blue square in the top left"] * batch)[:batch]
        with tempfile.TemporaryDirectory() as tmp:
            pipe = VersatileDiffusionTextToImagePipeline.from_pretrained(export_diffusers(model, Path(tmp) / "vd"),
                                                                         torch_dtype=torch.float32)
        pipe = pipe.to(self.device)
        pipe.set_progress_bar_config(disable=True)
        compile_with = "eager" if self.smoke else True  # the untimed warm-up call compiles

        def ours(compile: bool | str) -> Callable[[], Any]:
            return lambda: model.text_to_image(prompts, seeds=range(batch), sampler="ddim", steps=steps,
                                               guidance=scale - 1.0, batch_size=batch, device=self.device,
                                               compile=compile)
        fns = {"versadiff VD text-to-image (vd-shapes)": ours(False),
               "versadiff VD text-to-image (vd-shapes), torch.compile": ours(compile_with),
               **({} if self.smoke else {"versadiff VD text-to-image (vd-shapes), torch.compile max-autotune":
                                         ours("max-autotune-no-cudagraphs")}),
               "diffusers VersatileDiffusionTextToImagePipeline": lambda: pipe(
                   prompts, num_inference_steps=steps, guidance_scale=scale, output_type="np",
                   generator=torch.Generator(self.device).manual_seed(0))}
        self._time_pipelines("vd", fns, batch, steps)

    def _time_pipelines(self, section: str, fns: dict[str, Callable[[], Any]], batch: int, steps: int) -> None:
        """Times a pipeline section's calls in fp32 and the first half type (autocast around the whole call; a
        compiled network compiles again for it in the warm-up call); rows, and the ratio of each of ours (all but
        the last entry) to diffusers (the last)."""
        for dname in self.dtypes[:2]:
            with torch.no_grad(), self.autocast(dname):
                got = self.interleaved(fns)
            for name, r in got.items():
                self.row(section, name, dname, batch, sample_img_s=batch / r["s"], sample_steps=steps,
                         sample_peak_mib=r["peak_mib"])
            *ours, theirs = got
            for name in ours:
                self.ratios.append({"pair": f"{name} / {theirs}", "dtype": dname,
                                    "sample": got[theirs]["s"] / got[name]["s"]})

    def _vq_model(self, work: Path) -> Any:
        from versadiff.config import load_config
        from versadiff.models import load_model
        from versadiff.train.trainer import Trainer

        run = ["train.max_steps=1", "train.log_every=1", "train.sample_every=0", "train.checkpoint_every=0",
               "train.batch_size=4", "train.mixed_precision=no", "data.size=16", "sample.n=1"]
        ae = ["model.base_channels=8", "model.norm_groups=4", "model.z_channels=8", "model.embed_dim=4",
              "model.n_embed=16"] if self.smoke else []
        vq = ["model.depth=1", "model.dim=16", "model.num_heads=2", "model.num_embed=16", "model.num_steps=10",
              "discrete.num_steps=10", "sample.steps=2"] if self.smoke else []
        Trainer(load_config("shapes_vqae", run + ae), out=work / "vqae", quiet=True).run()
        Trainer(load_config("shapes_vqdiffusion_text", run + vq + [f"autoencoder.path={work / 'vqae'}"]),
                out=work / "vq", quiet=True).run()
        return load_model(work / "vq")

    def vq(self, vq_run: str | None) -> None:
        import text_to_image as t2i  # benchmarks/text_to_image.py

        from versadiff.models import load_model

        with tempfile.TemporaryDirectory() as tmp:
            model = load_model(vq_run) if vq_run else self._vq_model(Path(tmp))
            pipe = t2i.vq_diffusers_pipeline(model).to(self.device)
        # Under autocast diffusers' VQ-VAE decodes to a half tensor, which the pipeline's .numpy() refuses
        # (TypeError: unsupported ScalarType BFloat16): its decoder runs outside autocast, as versadiff's codecs do.
        decode = pipe.vqvae.decode
        pipe.vqvae.decode = lambda *a, **k: _without_autocast(decode, self.device, *a, **k)
        T = model.sampling.process.num_steps
        batch, w, r = (1 if self.smoke else (32 if self.cuda else 8)), 1.0, 0.8
        prompts = (["a red circle", "a blue square"] * batch)[:batch]
        label = f"versadiff VQ-Diffusion text-to-image ({'--vq' if vq_run else '1-step weights'})"

        def ours(compile: bool | str) -> Callable[[], Any]:
            return lambda: model.generate(range(batch), flow="text-to-image", context=prompts, sampler="standard",
                                          steps=T, guidance=w, truncation=r, batch_size=batch, device=self.device,
                                          compile=compile)
        fns = {label: ours(False), f"{label}, torch.compile": ours("eager" if self.smoke else True),
               **({} if self.smoke else {f"{label}, torch.compile max-autotune": ours("max-autotune-no-cudagraphs")}),
               "diffusers VQDiffusionPipeline": lambda: pipe(
                   prompts, num_inference_steps=T, guidance_scale=1.0 + w, truncation_rate=r, output_type="np",
                   generator=torch.Generator(self.device).manual_seed(0))}
        self._time_pipelines("vq", fns, batch, T)


def _without_autocast(fn: Callable[..., Any], device: torch.device, *args: Any, **kwargs: Any) -> Any:
    with torch.autocast(device.type, enabled=False):
        return fn(*args, **kwargs)


def _our_adamw(net: torch.nn.Module) -> torch.optim.Optimizer:
    from versadiff.train.optim import adamw

    return adamw([{"params": list(net.parameters())}], lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)


def device_name(device: torch.device) -> str:
    cap = torch.backends.cpu.get_cpu_capability()
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (host CPU capability {cap})"
    model = platform.processor() or "CPU"
    for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return f"{model}, CPU capability {cap}, {torch.get_num_threads()} thread(s)"


def fmt(v: Any, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def markdown(result: dict[str, Any]) -> str:
    dev = result["device"]
    lines = [f"Device: {dev}; torch {result['torch']}; total {result['total_s']:.0f} s"
             + (" (--smoke: toy sizes)" if result["smoke"] else ""), ""]
    peaks = ", ".join(f"{k} {v / 1e9:.1f}" for k, v in result["matmul_peak_flops"].items())
    lines += [f"Matmul peak (GFLOP/s, measured in this run): {peaks or '-'}", ""]
    lines += ["| section | model | dtype | batch | train img/s | sample img/s (steps) | peak MiB (train / sample) "
              "| % matmul peak | status |", "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        if r["section"] == "matmul":
            continue
        sample = f"{fmt(r.get('sample_img_s'), '.2f')} ({r['sample_steps']})" if r.get("sample_img_s") else "-"
        if r.get("fwd_img_s"):
            sample = f"fwd {r['fwd_img_s']:.1f}"
        mem = f"{fmt(r.get('peak_mib'), '.0f')} / {fmt(r.get('sample_peak_mib'), '.0f')}"
        pct = fmt(r.get("pct_peak"), ".0f") + ("%" if r.get("pct_peak") is not None else "")
        if r.get("fwd_pct_peak") is not None:
            pct += f" (fwd {r['fwd_pct_peak']:.0f}%)"
        status = r["status"] + (f", compiled in {r['compile_s']:.0f} s" if "compile_s" in r else "")
        if r.get("compiled") is False:
            status += " (fell back to eager)"
        lines.append(f"| {r['section']} | {r['model']} | {r['dtype']} | {r['batch']} | {fmt(r.get('train_img_s'), '.1f')} "
                     f"| {sample} | {mem} | {pct} | {status} |")
    lines += ["", "| ratio (speed, first / second) | dtype | training | sampling |", "|---|---|---|---|"]
    for q in result["ratios"]:
        lines.append(f"| {q['pair']} | {q['dtype']} | {fmt(q.get('train'), '.2f')} | {fmt(q.get('sample'), '.2f')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/gpu_bench", help="folder for gpu_bench.md and gpu_bench.json")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--smoke", action="store_true", help="toy sizes, fp32, 1 timed repeat (CPU, < 60 s)")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--total", type=float, default=480.0, help="seconds for all sections together")
    p.add_argument("--timeout-scale", type=float, default=1.0,
                   help="multiply every section's time limit (a CPU run at full size needs ~5)")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per figure (default 3; 1 with --smoke)")
    p.add_argument("--vq", default=None, help="a trained VQ-Diffusion text-to-image run (default: 1-step weights)")
    args = p.parse_args(argv)
    from versadiff.precision import resolve_device

    device = resolve_device(args.device)
    wanted = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(wanted) - set(SECTIONS))
    if unknown:
        p.error(f"unknown sections {unknown}; choose from {', '.join(SECTIONS)}")
    if "matmul" not in wanted:
        wanted.insert(0, "matmul")  # the % of peak columns need it
    bench = Bench(device, args.smoke, args.repeats or (1 if args.smoke else 3))
    t_start = time.perf_counter()
    status: dict[str, str] = {}
    for name in wanted:
        left = args.total - (time.perf_counter() - t_start)
        limit = min(TIMEOUT_S[name] * (0.5 if args.smoke else 1.0) * args.timeout_scale, left)
        t0 = time.perf_counter()
        try:
            with time_limit(limit):
                getattr(bench, name)(*([args.vq] if name == "vq" else []))
            status[name] = "ok"
        except SectionTimeout as err:
            status[name] = f"timed out: {err}"
        except Exception as err:  # one section's failure must not lose the others' figures
            status[name] = f"failed: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            traceback.print_exc()
        if status[name] != "ok":
            bench.rows.append({"section": name, "model": "-", "dtype": "-", "batch": 0, "status": status[name]})
        print(f"[{name}] {status[name]} ({time.perf_counter() - t0:.1f} s)", flush=True)
        if bench.cuda:
            torch.cuda.empty_cache()
    result = {"device": device_name(device), "device_type": device.type,
              "cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
              "smoke": args.smoke, "sections": status, "matmul_peak_flops": bench.peaks, "rows": bench.rows,
              "ratios": bench.ratios, "total_s": time.perf_counter() - t_start}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_bench.json").write_text(json.dumps(result, indent=2) + "\n")
    md = markdown(result)
    (out / "gpu_bench.md").write_text(md)
    print(md)
    return 0 if all(v == "ok" for v in status.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
