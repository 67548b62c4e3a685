"""The Versatile Diffusion applications behind the UI's dual-guided, disentanglement and I2T2I tabs.

Each tab calls `run_application(pipeline, name, ...)`; this module is the one place that knows the library API
(versadiff.applications: dual_guided, disentangle, i2t2i). For a model without the flows an application needs,
or a versadiff without that API, the tab stays in the page and answers with `unavailable(pipeline, name)`'s message.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Sequence

from versadiff.serve.limits import UserError

__all__ = ["Application", "APPLICATIONS", "ApplicationUnavailable", "unavailable", "run_application", "parse_edit_text"]


class ApplicationUnavailable(UserError):
    """The served model (or this versadiff) cannot run the application; the message says why."""


@dataclass(frozen=True)
class Application:
    name: str
    title: str
    needs: tuple[str, ...]  # flows the model must have
    function: str           # its function in versadiff.applications


APPLICATIONS: dict[str, Application] = {a.name: a for a in (
    Application("dual-guided", "dual-guided generation", ("text-to-image", "image-variation"), "dual_guided"),
    Application("disentangle", "disentanglement", ("image-variation",), "disentangle"),
    Application("i2t2i", "I2T2I editing", ("image-to-text", "text-to-image"), "i2t2i"),
)}

#: the flows dual-guided needs to generate a caption instead of an image
TEXT_TARGET_NEEDS = ("text-variation", "image-to-text")


def _library_function(app: Application) -> Any:
    try:
        module = importlib.import_module("versadiff.applications")
    except ImportError:
        return None
    fn = getattr(module, app.function, None)
    return fn if callable(fn) else None


def unavailable(pipeline: Any, name: str) -> str | None:
    """Why `pipeline` cannot run application `name` (a sentence for the page), or None when it can."""
    app = APPLICATIONS[name]
    missing = [f for f in app.needs if f not in pipeline.flows]
    if missing:
        return (f"{app.title} is not available in this model: it needs the {' and '.join(app.needs)} "
                f"flow{'s' * (len(app.needs) > 1)} (this model has {', '.join(pipeline.flows)})")
    if _library_function(app) is None:
        return (f"{app.title} is not available in this model: this versadiff has no "
                f"versadiff.applications.{app.function}")
    return None


def parse_edit_text(text: str) -> list[str]:
    """I2T2I word edits from the page's one-line field: "red=blue, circle=square" -> ["red=blue", "circle=square"]."""
    return [part.strip() for part in str(text or "").replace(";", ",").split(",") if part.strip()]


def run_application(pipeline: Any, name: str, *, seeds: Sequence[int], inputs: dict[str, Any], sampler: str | None,
                    steps: int | None, guidance: float | None, batch_size: int, device: Any,
                    progress: bool) -> tuple[Any, list[str] | None, dict[str, Any]]:
    """(images [N, 3, H, W] in [-1, 1] or None, captions or None, what the application reports) for one request.

    inputs by application (checked by the caller): dual-guided {prompt, image, strength (the text's weight r:
    0 = the image alone, 1 = the text alone), mixing (attention | layer | model), target (image | text)};
    disentangle {image, level (-2..2: semantic .. style focus)}; i2t2i {image, edits ("old=new, ..."), positive,
    negative (prompts, may be empty), image_strength}. The library's own checks become UserErrors.
    """
    reason = unavailable(pipeline, name)
    if reason is not None:
        raise ApplicationUnavailable(reason)
    fn = _library_function(APPLICATIONS[name])
    common = dict(sampler=sampler, steps=steps, guidance=guidance, batch_size=batch_size, device=device,
                  progress=progress)
    seeds = list(seeds)
    try:
        if name == "dual-guided":
            target = inputs.get("target") or "image"
            if target == "text":
                missing = [f for f in TEXT_TARGET_NEEDS if f not in pipeline.flows]
                if missing:
                    raise ApplicationUnavailable("dual-guided captions are not available in this model: they need the "
                                                 f"{' and '.join(TEXT_TARGET_NEEDS)} flows")
            out = fn(pipeline, inputs["prompt"], inputs["image"], seeds, strength=inputs["strength"],
                     mixing=inputs["mixing"], data=target, **common)
            if target == "text":
                return None, list(out), {"target": "text"}
            return out, None, {"target": "image"}
        if name == "disentangle":
            return fn(pipeline, inputs["image"], seeds, level=int(inputs["level"]), **common), None, {}
        edits = parse_edit_text(inputs.get("edits", ""))
        res = fn(pipeline, inputs["image"], seeds, edits=edits or None, positive=inputs.get("positive") or None,
                 negative=inputs.get("negative") or None, image_strength=inputs["image_strength"], **common)
        return res.images, None, {"captions": list(res.captions), "prompts": list(res.prompts)}
    except UserError:
        raise
    except ValueError as e:  # the library's checks of what the user typed
        raise UserError(" ".join(str(e).split())) from None
