"""`versadiff serve [CHECKPOINT ...]`: the web UI on this machine (localhost unless --host says otherwise)."""

from __future__ import annotations

import argparse
import ipaddress
import sys
import time
from typing import Any, Sequence

from versadiff.errors import VersadiffError

__all__ = ["register_serve_command", "cmd_serve", "build_serve_parser", "main"]


class ServeError(VersadiffError):
    """A serve option or set-up problem, as one line."""


def _add_arguments(g: Any) -> None:
    from versadiff.serve.limits import Limits

    d = Limits()
    g.add_argument("checkpoints", metavar="CHECKPOINT", nargs="*",
                   help="exported .safetensors, run folders, checkpoint dirs or shipped model names "
                        "(default: the shipped miniature models)")
    g.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 opens it to the network)")
    g.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    g.add_argument("--device", help="cpu, cuda, ... (default: cuda if available)")
    g.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    g.add_argument("--max-upload-mb", type=float, default=d.max_upload_mb, help=f"largest upload (default {d.max_upload_mb:g})")
    g.add_argument("--max-image-side", type=int, default=d.max_image_side,
                   help=f"largest uploaded image side in pixels (default {d.max_image_side})")
    g.add_argument("--max-prompt-chars", type=int, default=d.max_prompt_chars,
                   help=f"longest prompt (default {d.max_prompt_chars})")
    g.add_argument("--max-samples", type=int, default=d.max_samples, help=f"samples per request (default {d.max_samples})")
    g.add_argument("--max-steps", type=int, default=d.max_steps, help=f"sampling steps per request (default {d.max_steps})")
    g.add_argument("--queue-size", type=int, default=d.queue_size,
                   help=f"requests waiting at most; more are refused (default {d.queue_size})")


def register_serve_command(sub: Any) -> None:
    g = sub.add_parser("serve", help="a web UI (gradio) for every flow of the models and the VD applications")
    _add_arguments(g)
    g.set_defaults(func=cmd_serve)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cmd_serve(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    from versadiff.serve.app import quiet_gradio_env

    quiet_gradio_env()  # before gradio (and huggingface_hub, which reads its telemetry switch on import)
    try:
        import gradio  # noqa: F401  (checked first: a missing extra is a one-line error, not a traceback)
    except ImportError:
        raise ServeError("versadiff serve needs gradio: pip install 'versadiff[serve]'") from None
    if not 1 <= args.port <= 65535:
        raise ServeError(f"--port must be between 1 and 65535, got {args.port}")
    import torch

    from versadiff.serve.app import build_app, launch
    from versadiff.serve.backend import Studio
    from versadiff.serve.limits import Limits

    limits = Limits(max_upload_mb=args.max_upload_mb, max_image_side=args.max_image_side,
                    max_prompt_chars=args.max_prompt_chars, max_samples=args.max_samples, max_steps=args.max_steps,
                    queue_size=args.queue_size, batch_size=min(8, args.max_samples))
    if args.threads is not None:
        if args.threads < 1:
            raise ServeError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    studio = Studio.load(args.checkpoints, limits, device=device)
    t_models = time.perf_counter()
    demo = build_app(studio)
    launch(demo, studio, host=args.host, port=args.port, block=False)
    t_ready = time.perf_counter()
    url = f"http://{'[' + args.host + ']' if ':' in args.host else args.host}:{args.port}/"
    print(f"versadiff serve: {len(studio.models)} model{'s' * (len(studio.models) != 1)} "
          f"({', '.join(studio.models)}) on {url}", flush=True)
    print(f"versadiff serve: start-up {t_ready - t0:.2f} s (models {t_models - t0:.2f} s, page and server "
          f"{t_ready - t_models:.2f} s); Ctrl+C stops", flush=True)
    if not _is_loopback(args.host):
        print(f"versadiff serve: warning: listening on {args.host}: anyone who can reach this machine can use the "
              "models (there is no authentication)", file=sys.stderr, flush=True)
    _stop_on_sigterm()
    try:
        demo.block_thread()  # returns on Ctrl+C or SIGTERM, the server closed
    finally:
        studio.close()  # the results folder
    return 0


def _stop_on_sigterm() -> None:
    """SIGTERM (a service manager, a test's terminate()) stops the server as Ctrl+C does, so that it cleans up."""
    import signal
    import threading

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)


def build_serve_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="versadiff serve", description=__doc__)
    _add_arguments(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m versadiff.serve ...`: the same as `versadiff serve ...`, with the CLI's one-line errors."""
    from versadiff.errors import report_error

    args = build_serve_parser().parse_args(argv)
    try:
        return cmd_serve(args)
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        return report_error(e)
