"""What the web UI does, without the web: the served models, one task per tab, and one request from checked input
to images or captions, a results zip and its settings.

    studio = Studio.load(["vd-shapes", "runs/mine"])           # or Studio({"name": pipeline}, Limits())
    result = studio.run("text-to-image", "vd-shapes", {"prompt": "a red circle"}, Controls(seed=0, n=4))
    result.images, result.captions, result.zip_path, result.settings

Every input is checked (versadiff.serve.limits, then Pipeline.request) before any sampling; what a user can get
wrong raises UserError with the sentence the page shows.
"""

from __future__ import annotations

import io
import json
import shutil
import tempfile
import threading
import time
import zipfile
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from versadiff.serve import applications as apps
from versadiff.serve.limits import (Limits, UserError, check_count, check_fraction, check_guidance, check_prompt,
                                    check_seed, check_steps, load_upload)

__all__ = ["Task", "TASKS", "Controls", "Result", "Studio", "served_name", "default_checkpoints", "printable"]

UNCONDITIONAL = "(unconditional)"
MIXINGS = ("attention", "layer", "model")


@dataclass(frozen=True)
class Task:
    """One tab: a flow of the model, or a VD application over several flows."""

    key: str
    title: str
    inputs: tuple[str, ...]       # prompt image class strength mixing target level edits positive negative image_strength
    output: str                   # images | captions
    flows: tuple[str, ...] = ()   # a flow task: any of these flows (first present wins)
    application: str | None = None
    blurb: str = ""

    def flow_of(self, pipeline: Any) -> str | None:
        return next((f for f in self.flows if f in pipeline.flows), None)


TASKS: dict[str, Task] = {t.key: t for t in (
    Task("text-to-image", "Text → image", ("prompt",), "images", flows=("text-to-image",),
         blurb="Images from a prompt."),
    Task("image-variation", "Image variation", ("image",), "images", flows=("image-variation",),
         blurb="New images that keep what the uploaded image shows."),
    Task("image-to-text", "Image → text", ("image",), "captions", flows=("image-to-text",),
         blurb="Captions of the uploaded image."),
    Task("text-variation", "Text variation", ("prompt",), "captions", flows=("text-variation",),
         blurb="New captions that keep what the text says."),
    Task("dual-guided", "Dual-guided", ("prompt", "image", "strength", "mixing", "target"), "images",
         application="dual-guided",
         blurb="Samples guided by a prompt and an image at once: the strength is the text's weight "
               "(0 = the image alone, 1 = the text alone), the mixing level where the two contexts meet."),
    Task("disentangle", "Disentanglement", ("image", "level"), "images", application="disentangle",
         blurb="Image variations that keep the image's semantics (level −1, −2) or its style (level +1, +2); "
               "level 0 is plain image variation."),
    Task("i2t2i", "I2T2I editing", ("image", "edits", "positive", "negative", "image_strength"), "images",
         application="i2t2i",
         blurb="Image → caption → edited caption → image: word edits (old=new), and a positive / negative prompt "
               "added to / removed from the caption's latent."),
    Task("class-to-image", "Class → image", ("class",), "images", flows=("class-to-image", "unconditional"),
         blurb="Class-conditional (or unconditional) samples of UNet, U-ViT and VQ-Diffusion models."),
)}


@dataclass
class Controls:
    """The sampling controls every tab has; None takes the model's default (its run's `sample` section)."""

    seed: Any = 0
    n: Any = 1
    sampler: str | None = None
    steps: Any = None
    guidance: Any = None


@dataclass
class Result:
    task: str
    model: str
    images: Any | None            # [N, C, H, W] in [-1, 1], or None
    captions: list[str] | None
    seeds: list[int]
    settings: dict[str, Any]
    zip_path: Path
    elapsed_s: float
    lines: list[str] = field(default_factory=list)  # what the captions box shows

    def summary(self) -> str:
        what = f"{len(self.seeds)} image{'s' * (len(self.seeds) != 1)}" if self.images is not None else \
            f"{len(self.seeds)} caption{'s' * (len(self.seeds) != 1)}"
        s = self.settings
        seeds = f"seed {self.seeds[0]}" if len(self.seeds) == 1 else f"seeds {self.seeds[0]}–{self.seeds[-1]}"
        return (f"{what} in {self.elapsed_s:.2f} s ({self.model}; {seeds}; {s.get('sampler')}, {s.get('steps')} steps, "
                f"guidance {s.get('guidance'):g})")


def printable(text: str) -> str:
    """A caption for display: characters that cannot be shown become U+FFFD."""
    return "".join(c if c.isprintable() or c == " " else "\ufffd" for c in str(text))


def served_name(checkpoint: str, taken: Sequence[str]) -> str:
    """A short unique name for a served checkpoint: a shipped model's name, else its file or folder name."""
    from versadiff.assets import SHIPPED_MODELS

    p = Path(checkpoint)
    if checkpoint in SHIPPED_MODELS and not p.exists():
        base = checkpoint
    else:
        parts = [x for x in p.resolve().parts if x not in ("export", "checkpoints")]
        base = p.stem if p.suffix == ".safetensors" and p.stem not in ("model", "ema") else parts[-1] if parts else str(p)
        if p.suffix == ".safetensors" and p.stem in ("model", "ema") and len(parts) >= 2:
            base = parts[-2]
    name, i = base, 2
    while name in taken:
        name, i = f"{base}-{i}", i + 1
    return name


def default_checkpoints() -> list[str]:
    """The shipped models whose weights are present (the VD miniature first, then the class-conditional UNet)."""
    from versadiff.assets import ASSET_DIR, SHIPPED_MODELS

    order = sorted(SHIPPED_MODELS, key=lambda n: (n != "vd-shapes", n))
    return [n for n in order if (ASSET_DIR / SHIPPED_MODELS[n].path).is_file()]


class Studio:
    """The served models and the per-request logic of every tab."""

    def __init__(self, models: dict[str, Any], limits: Limits | None = None, *, device: Any = "cpu",
                 workdir: str | Path | None = None, keep_results: int = 32) -> None:
        if not models:
            raise ValueError("no model to serve")
        self.models = dict(models)
        self.limits = limits or Limits()
        self.device = device
        self._tmp = None
        if workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="versadiff-serve-")
            workdir = self._tmp.name
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._results: deque[Path] = deque()
        self._keep = keep_results
        self._counter = 0
        self._lock = threading.Lock()

    @classmethod
    def load(cls, checkpoints: Sequence[str] = (), limits: Limits | None = None, *, device: Any = "cpu",
             **kw: Any) -> "Studio":
        """Load each checkpoint (a path or a shipped model's name); none: the shipped models."""
        from versadiff.models import load_model

        checkpoints = list(checkpoints) or default_checkpoints()
        if not checkpoints:
            raise ValueError("no shipped model weights found; give a CHECKPOINT (a run folder or .safetensors file)")
        models: dict[str, Any] = {}
        for ck in checkpoints:
            models[served_name(ck, list(models))] = load_model(ck, device=device)
        return cls(models, limits, device=device, **kw)

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    # -- what each tab offers ---------------------------------------------------------------------------

    def models_for(self, key: str) -> list[str]:
        """Served models that can run task `key`."""
        task = TASKS[key]
        if task.application:
            return [n for n, m in self.models.items() if apps.unavailable(m, task.application) is None]
        return [n for n, m in self.models.items() if task.flow_of(m) is not None]

    def unavailable(self, key: str) -> str | None:
        """Why no served model runs task `key` (a sentence for the page), or None."""
        if self.models_for(key):
            return None
        task = TASKS[key]
        if task.application:
            reasons = {apps.unavailable(m, task.application) for m in self.models.values()}
            return "; ".join(sorted(r for r in reasons if r))
        return (f"{task.title} is not available in the served models ({', '.join(self.models)}): none has a "
                f"{' or '.join(task.flows)} flow")

    def default_model(self, key: str) -> str:
        found = self.models_for(key)
        return found[0] if found else next(iter(self.models))

    def samplers(self, name: str) -> list[str]:
        from versadiff.sampling import DiscreteSampling

        m = self.models[name]
        if isinstance(m.sampling, DiscreteSampling):
            from versadiff.samplers.discrete import VQ_METHODS

            return list(VQ_METHODS)
        from versadiff.samplers import SAMPLERS

        return list(SAMPLERS)

    def defaults(self, name: str) -> dict[str, Any]:
        """The model's own sampler, steps and guidance (its run's `sample` section), clipped to the limits."""
        s = self.models[name].config.sample
        return {"sampler": s.sampler, "steps": int(min(max(1, s.steps), self.limits.max_steps)),
                "guidance": float(s.guidance), "samplers": self.samplers(name)}

    def class_choices(self, name: str) -> list[str]:
        m = self.models[name]
        if "class-to-image" not in m.flows:
            return [UNCONDITIONAL]
        names = m.class_names or [str(i) for i in range(m.num_classes)]
        return list(names) + [UNCONDITIONAL]

    def describe(self) -> list[dict[str, Any]]:
        """One row per served model: its name, checkpoint, step and flows."""
        return [{"name": n, "checkpoint": m.source, "step": m.step, "flows": list(m.flows),
                 "image_shape": list(m.image_shape)} for n, m in self.models.items()]

    # -- one request ------------------------------------------------------------------------------------

    def _model(self, key: str, name: Any) -> Any:
        if key not in TASKS:
            raise UserError(f"unknown task {key!r}")
        if name not in self.models:
            raise UserError(f"no served model is called {name!r}; choose one of {', '.join(self.models)}")
        task, m = TASKS[key], self.models[name]
        if task.application:
            reason = apps.unavailable(m, task.application)
            if reason:
                raise UserError(reason)
        elif task.flow_of(m) is None:
            raise UserError(f"{task.title} is not available in this model: {name} has no "
                            f"{' or '.join(task.flows)} flow (its flows: {', '.join(m.flows)})")
        return m

    def check(self, key: str, name: Any, inputs: dict[str, Any], controls: Controls) -> dict[str, Any]:
        """Every check of one request, before any work: the model, its inputs and the controls.

        Returns the checked request: {model, inputs (images loaded), seeds, sampler, steps, guidance, flow}."""
        m = self._model(key, name)
        task, lim = TASKS[key], self.limits
        got: dict[str, Any] = {}
        for item in task.inputs:
            value = inputs.get(item)
            if item == "prompt":
                got[item] = check_prompt(value, lim, "text" if key == "text-variation" else "prompt")
            elif item == "image":
                got[item] = load_upload(value, lim)
            elif item in ("positive", "negative"):
                got[item] = check_prompt(value, lim, f"{item} prompt", allow_empty=True)
            elif item == "edits":
                got[item] = check_prompt(value, lim, "word edits", allow_empty=True)
                try:
                    from versadiff.applications import parse_edits

                    parse_edits(apps.parse_edit_text(got[item]))
                except ImportError:
                    pass
                except ValueError as e:
                    raise UserError(f"word edits: {e}; write them as old=new, old=new") from None
            elif item in ("strength", "image_strength"):
                default = 0.5 if item == "strength" else 0.33
                got[item] = check_fraction(default if value is None else value, f"the {item.replace('_', ' ')}")
            elif item == "mixing":
                if (value or "attention") not in MIXINGS:
                    raise UserError(f"the mixing level must be one of {', '.join(MIXINGS)}, got {value!r}")
                got[item] = value or "attention"
            elif item == "target":
                if (value or "image") not in ("image", "text"):
                    raise UserError(f"the output must be image or text, got {value!r}")
                got[item] = value or "image"
            elif item == "level":
                level = check_fraction(0 if value is None else value, "the level", -2.0, 2.0)
                if level != int(level):
                    raise UserError(f"the level must be a whole number from -2 to 2, got {value!r}")
                got[item] = int(level)
            elif item == "class":
                choices = self.class_choices(name)
                if value in (None, ""):
                    raise UserError(f"no class chosen: pick one of {', '.join(choices[:6])}{', ...' * (len(choices) > 6)}")
                if str(value) not in choices and not str(value).lstrip("-").isdigit():
                    raise UserError(f"unknown class {value!r}; choose one of the list")
                got[item] = None if str(value) == UNCONDITIONAL else str(value)
        n = check_count(controls.n, lim)
        seed = check_seed(controls.seed, n)
        d = self.defaults(name)
        steps = check_steps(d["steps"] if controls.steps in (None, "") else controls.steps, lim)
        guidance = check_guidance(d["guidance"] if controls.guidance in (None, "") else controls.guidance, lim)
        sampler = controls.sampler or d["sampler"]
        if sampler not in d["samplers"]:
            raise UserError(f"unknown sampler {sampler!r} for {name}; choose one of {', '.join(d['samplers'])}")
        seeds = list(range(seed, seed + n))
        flow = task.flow_of(m) if not task.application else None
        if flow is not None:
            bound = m.flows[flow]
            if bound.encoder is None:
                guidance = 0.0  # an unconditional model has nothing to guide towards
            context = got.get("prompt", got.get("image", got.get("class")))
            if flow == "class-to-image" and context is not None:
                try:
                    context = m.class_index(context)
                except ValueError as e:
                    raise UserError(str(e)) from None
            try:
                m.request(seeds, flow=flow, context=context, sampler=sampler, steps=steps, guidance=guidance,
                          batch_size=lim.batch_size)
            except ValueError as e:
                raise UserError(" ".join(str(e).split())) from None
            got["context"] = context
        else:
            try:  # sampler, steps and guidance against the application's first flow, before any work
                m.request(seeds, flow=apps.APPLICATIONS[task.application].needs[0], sampler=sampler, steps=steps,
                          guidance=guidance, batch_size=lim.batch_size)
            except ValueError as e:
                raise UserError(" ".join(str(e).split())) from None
        return {"model": m, "name": name, "inputs": got, "seeds": seeds, "seed": seed, "n": n, "sampler": sampler,
                "steps": steps, "guidance": guidance, "flow": flow}

    def run(self, key: str, name: Any, inputs: dict[str, Any], controls: Controls,
            progress: Callable[[float, str], None] | None = None) -> Result:
        """One request: check everything, sample in batches (reporting progress), write the results zip."""
        t0 = time.perf_counter()
        req = self.check(key, name, inputs, controls)
        m, task, seeds = req["model"], TASKS[key], req["seeds"]
        images, captions, extra, lines = None, None, {}, []
        bs = self.limits.batch_size
        if req["flow"] is not None:
            parts: list[Any] = []
            for start in range(0, len(seeds), bs):
                if progress is not None:
                    progress(start / len(seeds), f"sampling {start + 1}–{min(start + bs, len(seeds))} of {len(seeds)}")
                chunk = seeds[start:start + bs]
                parts.append(m.generate(chunk, flow=req["flow"], context=req["inputs"].get("context"),
                                        sampler=req["sampler"], steps=req["steps"], guidance=req["guidance"],
                                        batch_size=bs, device=self.device, progress=progress is not None))
            if parts and isinstance(parts[0], list):
                captions = [c for p in parts for c in p]
            else:
                import torch

                images = torch.cat(parts)
        else:
            if progress is not None:
                progress(0.0, f"{task.title}: sampling {len(seeds)}")
            images, captions, extra = apps.run_application(
                m, task.application, seeds=seeds, inputs=req["inputs"], sampler=req["sampler"], steps=req["steps"],
                guidance=req["guidance"], batch_size=bs, device=self.device, progress=progress is not None)
            if "captions" in extra:  # I2T2I: the caption of each sample and the edited prompt it was drawn from
                lines = [f"seed {s}: {printable(c)} → {printable(q)}"
                         for s, c, q in zip(seeds, extra["captions"], extra["prompts"])]
        if progress is not None:
            progress(1.0, "writing the results")
        elapsed = time.perf_counter() - t0
        settings = self._settings(key, req, extra, elapsed)
        zip_path = self._write_results(key, req, images, captions, settings)
        if captions is not None:
            lines = [f"seed {s}: {printable(t)}" for s, t in zip(seeds, captions)]
        return Result(key, req["name"], images, captions, seeds, settings, zip_path, elapsed, lines=lines)

    def _settings(self, key: str, req: dict[str, Any], extra: dict[str, Any], elapsed: float) -> dict[str, Any]:
        from versadiff.outputs import library_versions

        m, got = req["model"], req["inputs"]
        inputs = {k: v for k, v in got.items() if k not in ("image", "context")}
        if "image" in got:
            inputs["image"] = {"file": "input.png", "size": list(got["image"].size)}
        return {"task": key, "model": req["name"], "checkpoint": m.source, "step": m.step, "flow": req["flow"],
                "inputs": inputs, "n": req["n"], "seed": req["seed"], "seeds": req["seeds"],
                "sampler": req["sampler"], "steps": req["steps"], "guidance": req["guidance"],
                "guidance_scale": req["guidance"] + 1.0,
                "guidance_convention": "(1 + w) * cond - w * uncond = uncond + s * (cond - uncond), s = 1 + w",
                **({"application": extra} if extra else {}), "device": str(self.device),
                "elapsed_s": round(elapsed, 3), "versions": library_versions()}

    def _write_results(self, key: str, req: dict[str, Any], images: Any, captions: list[str] | None,
                       settings: dict[str, Any]) -> Path:
        from versadiff.images import make_grid, to_pil

        with self._lock:
            self._counter += 1
            folder = self.workdir / f"{self._counter:06d}-{key}"
            self._results.append(folder)
            while len(self._results) > self._keep:
                shutil.rmtree(self._results.popleft(), ignore_errors=True)
        folder.mkdir(parents=True)
        files: list[tuple[str, bytes]] = []

        def png(img: Any) -> bytes:
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            return buf.getvalue()

        if images is not None:
            from PIL import Image

            for seed, img in zip(req["seeds"], to_pil(images)):
                files.append((f"seed{seed:06d}.png", png(img)))
            g = make_grid(images, nrow=min(8, len(req["seeds"])))
            files.append(("grid.png", png(Image.fromarray(g[..., 0] if g.shape[-1] == 1 else g))))
        if captions is not None:
            files.append(("captions.json", (json.dumps([{"seed": s, "text": t} for s, t in zip(req["seeds"], captions)],
                                                       indent=2) + "\n").encode()))
        if "image" in req["inputs"]:
            files.append(("input.png", png(req["inputs"]["image"])))
        settings["files"] = [f for f, _ in files] + ["settings.json"]
        files.append(("settings.json", (json.dumps(settings, indent=2) + "\n").encode()))
        zip_path = folder / f"versadiff-{key}-seed{req['seed']}.zip"
        with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as z:
            for fname, data in files:
                z.writestr(fname, data)
        (folder / "settings.json").write_bytes(files[-1][1])
        return zip_path
