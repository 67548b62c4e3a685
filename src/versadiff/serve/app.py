"""The gradio page of `versadiff serve`: one tab per task (versadiff.serve.backend.TASKS), each with its inputs, the
sampling controls, a status line, the results and a zip of them with settings.json.

Nothing here phones home: gradio's analytics, share links, run history, MCP and server-side rendering are off,
and the page uses system fonts (no font service). Every handler catches everything: a user's mistake is one line
in the tab's status, anything else is "internal error" there (the traceback goes to the server's log only), and
the server goes on serving.
"""

from __future__ import annotations

import html
import itertools
import logging
import os
import traceback
from typing import Any

from versadiff.serve.backend import TASKS, Controls, Studio, Task
from versadiff.serve.limits import UserError

__all__ = ["build_app", "launch", "quiet_gradio_env", "DISPLAY_MIN_SIDE"]

log = logging.getLogger("versadiff.serve")

#: results are shown enlarged (nearest neighbour) to at least this many pixels a side; the zip keeps the originals
DISPLAY_MIN_SIDE = 128

CSS = """
.vd-status { padding: 0.5em 0.8em; border-radius: 6px; margin: 0.25em 0; }
.vd-ok { background: #e8f5e9; color: #1b5e20; }
.vd-error { background: #fdecea; color: #8a1c12; font-weight: 600; }
.vd-note { background: #fff8e1; color: #6d4c00; }
.vd-idle { color: #555; }
"""


def quiet_gradio_env() -> None:
    """Turn off everything in gradio and huggingface_hub that would reach outside this machine. Call before
    importing gradio."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["GRADIO_RUN_HISTORY"] = "False"
    os.environ["GRADIO_SSR_MODE"] = "False"
    os.environ["GRADIO_MCP_SERVER"] = "False"
    os.environ.pop("GRADIO_SHARE", None)


_answers = itertools.count(1)


def _status(kind: str, text: str) -> str:
    """The tab's status line; data-answer numbers the server's answers (a page or a test can tell a new answer
    from an identical earlier one)."""
    return (f'<div class="vd-status vd-{kind}" data-kind="{kind}" data-answer="{next(_answers)}">'
            f'{html.escape(text)}</div>')


def _display(images: Any, seeds: list[int]) -> list[tuple[Any, str]]:
    from versadiff.images import to_pil

    out = []
    for seed, im in zip(seeds, to_pil(images)):
        k = max(1, -(-DISPLAY_MIN_SIDE // max(1, min(im.size))))
        out.append((im.resize((im.width * k, im.height * k), 0) if k > 1 else im, f"seed {seed}"))
    return out


def build_app(studio: Studio) -> Any:
    """The gr.Blocks page for `studio` (not launched; `launch` starts it)."""
    quiet_gradio_env()
    import gradio as gr

    lim = studio.limits
    with gr.Blocks(title="versadiff", analytics_enabled=False, delete_cache=(600, 3600)) as demo:
        rows = "\n".join(f"| `{m['name']}` | {', '.join(m['flows'])} | {m['step'] if m['step'] is not None else '–'} |"
                         for m in studio.describe())
        gr.Markdown(f"# versadiff\nMulti-flow diffusion on the served models. Each tab samples on this machine; "
                    f"requests wait in one queue.\n\n| model | flows | step |\n|---|---|---|\n{rows}\n\n"
                    f"<small>Limits: {html.escape(lim.describe())}.</small>", elem_id="vd-header")
        with gr.Tabs(elem_id="vd-tabs"):
            for task in TASKS.values():
                with gr.Tab(task.title, id=task.key, elem_id=f"tab-{task.key}"):
                    _task_tab(gr, studio, task)
    demo.queue(max_size=lim.queue_size, default_concurrency_limit=1)
    return demo


def _guarded_image(gr: Any, component: Any) -> Any:
    """An image input whose unreadable uploads reach the handler as their file, so that its checks
    (versadiff.serve.limits.load_upload) put the message in the tab's status (gradio's own preprocess fails with a
    bare "Error")."""
    inner = component.preprocess

    def preprocess(payload: Any) -> Any:
        try:
            return inner(payload)
        except Exception:
            path = getattr(payload, "path", None)
            if path:
                return str(path)
            raise gr.Error("the uploaded image could not be read as an image; give a PNG or JPEG file",
                           title="Invalid image", print_exception=False) from None

    component.preprocess = preprocess
    return component


def _task_tab(gr: Any, studio: Studio, task: Task) -> None:
    key, lim = task.key, studio.limits
    reason = studio.unavailable(key)
    model_name = studio.default_model(key)
    d = studio.defaults(model_name)
    gr.Markdown(task.blurb)
    if reason:
        gr.HTML(_status("note", reason), elem_id=f"{key}-unavailable")
    comps: dict[str, Any] = {}
    with gr.Row():
        with gr.Column(scale=1):
            comps["model"] = gr.Dropdown(studio.models_for(key) or list(studio.models), value=model_name, label="Model",
                                         elem_id=f"{key}-model", interactive=True)
            if "prompt" in task.inputs:
                comps["prompt"] = gr.Textbox(label="Text" if key == "text-variation" else "Prompt", lines=2,
                                             max_length=lim.max_prompt_chars, elem_id=f"{key}-prompt",
                                             placeholder="a large red circle in the center")
            if "image" in task.inputs:
                comps["image"] = _guarded_image(gr, gr.Image(label="Image", type="filepath", image_mode=None,
                                                             sources=["upload", "clipboard"], height=220,
                                                             elem_id=f"{key}-image"))
            if "strength" in task.inputs:
                comps["strength"] = gr.Slider(0, 1, value=0.5, step=0.05,
                                              label="Strength: the text's weight (0 = image only, 1 = text only)",
                                              elem_id=f"{key}-strength")
            if "mixing" in task.inputs:
                comps["mixing"] = gr.Radio(["attention", "layer", "model"], value="attention", label="Mixing level",
                                           elem_id=f"{key}-mixing")
            if "target" in task.inputs:
                comps["target"] = gr.Radio(["image", "text"], value="image", label="Generate", elem_id=f"{key}-target")
            if "level" in task.inputs:
                comps["level"] = gr.Slider(-2, 2, value=0, step=1, label="Level (−2 semantic … 0 … +2 style)",
                                           elem_id=f"{key}-level")
            if "edits" in task.inputs:
                comps["edits"] = gr.Textbox(label="Word edits (old=new, comma-separated)", max_length=lim.max_prompt_chars,
                                            placeholder="red=blue, circle=square", elem_id=f"{key}-edits")
            if "positive" in task.inputs:
                comps["positive"] = gr.Textbox(label="Positive prompt (added to the caption)",
                                               max_length=lim.max_prompt_chars, elem_id=f"{key}-positive")
            if "negative" in task.inputs:
                comps["negative"] = gr.Textbox(label="Negative prompt (removed from the caption)",
                                               max_length=lim.max_prompt_chars, elem_id=f"{key}-negative")
            if "image_strength" in task.inputs:
                comps["image_strength"] = gr.Slider(0, 1, value=0.33, step=0.01,
                                                    label="Image strength (the input image's weight; 0 = caption only)",
                                                    elem_id=f"{key}-image_strength")
            if "class" in task.inputs:
                choices = studio.class_choices(model_name)
                comps["class"] = gr.Dropdown(choices, value=choices[0], label="Class", elem_id=f"{key}-class")
            with gr.Accordion("Sampling", open=True):
                comps["sampler"] = gr.Dropdown(d["samplers"], value=d["sampler"], label="Sampler",
                                               elem_id=f"{key}-sampler")
                comps["steps"] = gr.Slider(1, lim.max_steps, value=d["steps"], step=1, label="Steps",
                                           elem_id=f"{key}-steps")
                comps["guidance"] = gr.Slider(0, lim.max_guidance, value=d["guidance"], step=0.1,
                                              label="Guidance w ((1 + w) cond − w uncond; 0 = off)",
                                              elem_id=f"{key}-guidance")
                with gr.Row():
                    comps["seed"] = gr.Number(value=0, precision=0, minimum=0, label="Seed (sample i: seed + i)",
                                              elem_id=f"{key}-seed")
                    comps["n"] = gr.Slider(1, lim.max_samples, value=min(4, lim.max_samples), step=1,
                                           label="Samples", elem_id=f"{key}-n")
            run = gr.Button("Generate" if task.output == "images" else "Caption", variant="primary",
                            elem_id=f"{key}-run")
        with gr.Column(scale=1):
            status = gr.HTML(_status("idle", "ready"), elem_id=f"{key}-status")
            gallery = captions = None
            if task.output == "images":
                gallery = gr.Gallery(label="Results", columns=4, height=300, format="png", elem_id=f"{key}-gallery",
                                     object_fit="contain")
            if task.output == "captions" or key in ("i2t2i", "dual-guided"):
                captions = gr.Textbox(label={"i2t2i": "Captions (caption → edited prompt)"}.get(key, "Captions"),
                                      lines=4, interactive=False, elem_id=f"{key}-captions")
            download = gr.File(label="Download: PNGs / captions.json with settings.json (zip)", interactive=False,
                               elem_id=f"{key}-download")
            with gr.Accordion("Settings (settings.json)", open=False):
                settings = gr.JSON(elem_id=f"{key}-settings")
    outputs = [c for c in (status, gallery, captions, download, settings) if c is not None]

    def handler(values: dict[Any, Any], progress: Any = gr.Progress(track_tqdm=True)) -> dict[Any, Any]:
        got = {name: values.get(c) for name, c in comps.items()}
        out: dict[Any, Any] = {}
        try:
            controls = Controls(seed=got["seed"], n=got["n"], sampler=got["sampler"], steps=got["steps"],
                                guidance=got["guidance"])
            result = studio.run(key, got["model"], got, controls,
                                progress=lambda frac, desc: progress(frac, desc=desc))
        except UserError as e:
            out[status] = _status("error", f"Error: {e}")
        except Exception as e:  # a bug or a failed resource: the page gets a line, the log the traceback
            from versadiff.errors import describe

            message = describe(e)
            log.error("request to %s failed:\n%s", key, traceback.format_exc())
            out[status] = _status("error", f"Error: {message}" if message else
                                  f"Error: internal error ({type(e).__name__}); the server log has the details")
        else:
            out[status] = _status("ok", "Done: " + result.summary())
            if gallery is not None:
                out[gallery] = _display(result.images, result.seeds) if result.images is not None else None
            if captions is not None:
                out[captions] = "\n".join(result.lines)
            out[download] = str(result.zip_path)
            out[settings] = result.settings
            return out
        for c in (gallery, captions, download, settings):
            if c is not None:
                out[c] = None
        return out

    run.click(handler, inputs=set(comps.values()), outputs=outputs, concurrency_id="sampling", concurrency_limit=1,
              api_name=key.replace("-", "_"))

    def on_model(name: str) -> list[Any]:
        if name not in studio.models:
            return [gr.update()] * (4 if "class" in comps else 3)
        dd = studio.defaults(name)
        ups = [gr.update(choices=dd["samplers"], value=dd["sampler"]), gr.update(value=dd["steps"]),
               gr.update(value=dd["guidance"])]
        if "class" in comps:
            ch = studio.class_choices(name)
            ups.append(gr.update(choices=ch, value=ch[0]))
        return ups

    targets = [comps["sampler"], comps["steps"], comps["guidance"]] + ([comps["class"]] if "class" in comps else [])
    comps["model"].change(on_model, inputs=comps["model"], outputs=targets, concurrency_limit=None,
                          concurrency_id=f"{key}-model", show_progress="hidden", api_name=False)


def launch(demo: Any, studio: Studio, *, host: str = "127.0.0.1", port: int = 7860, block: bool = True) -> Any:
    """Start the server (no share link, uploads capped at the limit); returns the demo (blocks unless block=False)."""
    import gradio as gr

    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])
    demo.launch(server_name=host, server_port=int(port), share=False, inbrowser=False, show_error=False, quiet=True,
                prevent_thread_lock=True, max_file_size=studio.limits.max_upload_bytes, ssr_mode=False,
                mcp_server=False, run_history=False, enable_monitoring=False, footer_links=["api", "settings"],
                theme=theme, css=CSS, max_threads=8)
    if block:
        demo.block_thread()
    return demo
