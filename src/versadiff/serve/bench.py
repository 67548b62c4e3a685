"""Measure `versadiff serve`: its start-up time and each tab's request latency over HTTP, on this machine.

    python -m versadiff.serve.bench [CHECKPOINT ...] [--steps N] [--n 4] [--repeat 3] [--threads 1] [--out t.json]

Starts `python -m versadiff.serve` (the command `versadiff serve` runs) on a free local port, times it from the
process start to its "ready" line (and until the page answers), then sends each tab's request through gradio's own
client (the page's API, as the browser sends it) `--repeat` times and reports the median wall time per tab, with
the server's own sampling time from the tab's status line. Steps: each model's default (its run's `sample`
section) unless --steps is given.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Sequence

__all__ = ["main"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _test_image(folder: Path) -> str:
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (32, 32), "black")
    ImageDraw.Draw(im).ellipse([6, 6, 26, 26], fill=(230, 30, 30))
    path = folder / "red_circle.png"
    im.save(path)
    return str(path)


INPUTS = {"Prompt": "a large red circle in the center", "Text": "a small blue square in the top left",
          "Word edits (old=new, comma-separated)": "red=blue"}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m versadiff.serve.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="*", metavar="CHECKPOINT")
    p.add_argument("--steps", type=int, help="sampling steps (default: each model's own)")
    p.add_argument("--n", type=int, default=4, help="samples per request (default 4)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="the server's torch threads (default 1)")
    p.add_argument("--out", help="write the measurements as JSON here")
    args = p.parse_args(argv)

    from gradio_client import Client, handle_file

    import torch

    port = _free_port()
    tmp = Path(tempfile.mkdtemp(prefix="versadiff-serve-bench-"))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_TEMP_DIR": str(tmp)}
    cmd = [sys.executable, "-m", "versadiff.serve", *args.checkpoints, "--port", str(port), "--threads",
           str(args.threads), "--device", "cpu", "--max-samples", str(max(8, args.n))]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if "start-up" in line:
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    result: dict[str, Any] = {"command": " ".join(["versadiff serve", *args.checkpoints]), "threads": args.threads,
                              "n": args.n, "repeat": args.repeat, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                              "torch": torch.__version__, "tabs": {}}
    try:
        if not ready.wait(300):
            raise SystemExit("the server did not start:\n" + "".join(lines[-30:]))
        result["startup_ready_line_s"] = round(time.perf_counter() - t0, 2)
        url = f"http://127.0.0.1:{port}/"
        urllib.request.urlopen(url, timeout=30).read()
        result["startup_first_page_s"] = round(time.perf_counter() - t0, 2)
        m = re.search(r"start-up ([\d.]+) s \(models ([\d.]+) s", "".join(lines))
        if m:
            result["startup_in_process_s"], result["models_load_s"] = float(m.group(1)), float(m.group(2))
        client = Client(url, verbose=False, download_files=False)
        api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
        image = _test_image(tmp)
        from versadiff.serve.backend import TASKS

        for key, task in TASKS.items():
            ep = api.get("/" + key.replace("-", "_"))
            if ep is None:
                continue
            values = []
            for prm in ep["parameters"]:
                label, default = prm["label"], prm.get("parameter_default")
                if label == "Image":
                    values.append(handle_file(image))
                elif label in INPUTS:
                    values.append(INPUTS[label])
                elif label == "Samples":
                    values.append(args.n)
                elif label == "Steps" and args.steps:
                    values.append(args.steps)
                elif label == "Class":
                    values.append(default if default is not None else "red circle")
                else:
                    values.append(default)
            times, server = [], []
            status = ""
            for _ in range(args.repeat):
                t = time.perf_counter()
                out = client.predict(*values, api_name="/" + key.replace("-", "_"))
                times.append(time.perf_counter() - t)
                status = re.sub(r"<[^>]+>", "", out[0] if isinstance(out, (list, tuple)) else str(out))
                ms = re.search(r"in ([\d.]+) s", status)
                if ms:
                    server.append(float(ms.group(1)))
            row = {"available": status.strip().startswith("Done"), "median_s": round(statistics.median(times), 3),
                   "min_s": round(min(times), 3), "status": status.strip()}
            if server:
                row["server_median_s"] = round(statistics.median(server), 3)
            result["tabs"][key] = row
            print(f"{key:16s} {row['median_s']:7.3f} s  {row['status']}", flush=True)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps({k: v for k, v in result.items() if k != "tabs"}))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
