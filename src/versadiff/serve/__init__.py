"""`versadiff serve`: a local web UI (gradio) for every flow of the served models and the Versatile Diffusion
applications. `versadiff.serve.backend` holds what each tab does (no gradio needed), `versadiff.serve.app` the page,
`versadiff.serve.limits` the per-request limits and checks, `versadiff.serve.applications` the adapter to
versadiff.applications. gradio is the `serve` extra: `pip install 'versadiff[serve]'`.
"""

from versadiff.serve.command import cmd_serve, register_serve_command

__all__ = ["register_serve_command", "cmd_serve"]
