"""`versadiff serve` end to end in a real browser: Playwright drives Debian's Chromium (headless) against the server
started as its own process on a free local port. Every tab runs on miniature weights (the shipped VD miniature when
its weights are present, else a tiny VD model made here; the shipped class-conditional UNet) and shows its images
or captions, a download of them with settings.json, and progress while sampling; an empty prompt, an oversized
upload, an over-wide and an unreadable image give a message in the page; the page makes no request off this machine.

Chromium: /usr/bin/chromium (`apt-get install chromium`), or VERSADIFF_CHROMIUM. Playwright's own browser download
is never used. VERSADIFF_SCREENSHOT=PATH saves the page's screenshot there (docs/serve.png is made so);
VERSADIFF_SERVE_TIMINGS=PATH writes the measured start-up and per-tab latencies as JSON.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path
from urllib.parse import urljoin

import pytest
from PIL import Image

from versadiff.serve.backend import TASKS

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
STEPS, N = 2, 2
UPLOAD_MB = 0.25


def _chromium() -> str | None:
    for cand in (os.environ.get("VERSADIFF_CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium",
                 shutil.which("chromium-browser")):
        if cand and Path(cand).is_file() and os.access(cand, os.X_OK):
            return cand
    return None


def _skip_reason() -> str | None:
    from extras import require_extra

    for module in ("gradio", "playwright"):
        require_extra(module)  # installed but broken, or missing under CI: fails, never a silent skip
    if _chromium() is None:
        return "no Chromium on this machine (apt-get install chromium, or set VERSADIFF_CHROMIUM to its executable)"
    return None


if _skip_reason():
    pytest.skip(_skip_reason(), allow_module_level=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    from versadiff.assets import ASSET_DIR, SHIPPED_MODELS

    if (ASSET_DIR / SHIPPED_MODELS["vd-shapes"].path).is_file():
        return ["vd-shapes", "shapes-unet"]
    from test_serve import make_tiny_vd

    return [str(make_tiny_vd(tmp_path_factory.mktemp("vd"))), "shapes-unet"]


@pytest.fixture(scope="module")
def timings():
    data = {"steps": STEPS, "samples": N, "tabs": {}}
    yield data
    out = os.environ.get("VERSADIFF_SERVE_TIMINGS")
    if out:
        import torch

        data["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        Path(out).write_text(json.dumps(data, indent=2) + "\n")
    print("\nversadiff serve timings:", json.dumps(data))


@pytest.fixture(scope="module")
def server(checkpoints, tmp_path_factory, timings):
    """`python -m versadiff.serve` (the command `versadiff serve` runs) on a free port; its URL once it serves."""
    port = _free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "GRADIO_ANALYTICS_ENABLED": "False",
           "GRADIO_TEMP_DIR": str(tmp_path_factory.mktemp("gradio"))}
    cmd = [sys.executable, "-m", "versadiff.serve", *checkpoints, "--port", str(port), "--threads", "1",
           "--device", "cpu", "--max-upload-mb", str(UPLOAD_MB), "--max-image-side", "512", "--max-steps", "10",
           "--max-samples", "4", "--queue-size", "4"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)
            if "start-up" in line:
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        if not ready.wait(120) or proc.poll() is not None:
            pytest.fail("versadiff serve did not start:\n" + "".join(lines[-40:]))
        timings["startup_wall_s"] = round(time.perf_counter() - t0, 2)
        m = re.search(r"start-up ([\d.]+) s \(models ([\d.]+) s", "".join(lines))
        timings["startup_reported_s"], timings["models_load_s"] = float(m.group(1)), float(m.group(2))
        yield {"url": f"http://127.0.0.1:{port}/", "proc": proc, "lines": lines, "checkpoints": checkpoints}
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture(scope="module")
def browser_page(server, tmp_path_factory):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=_chromium(), args=CHROMIUM_FLAGS,
            headless=True, viewport={"width": 1280, "height": 960}, accept_downloads=True)
        page = ctx.new_page()
        page.set_default_timeout(60_000)
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        page.goto(server["url"])
        page.wait_for_selector("#text-to-image-run")
        page.requests = requests  # type: ignore[attr-defined]
        yield page
        ctx.close()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("uploads")
    Image.new("RGB", (32, 32), (220, 30, 30)).save(root / "red.png")
    noise = Image.frombytes("RGB", (400, 400), os.urandom(400 * 400 * 3))  # incompressible: a PNG over the limit
    noise.save(root / "big.png")
    assert (root / "big.png").stat().st_size > UPLOAD_MB * 2**20
    Image.new("RGB", (600, 20), (0, 0, 255)).save(root / "wide.png")
    (root / "broken.png").write_bytes(b"this is not an image" * 20)
    return root


def _open_tab(page, key: str) -> None:
    page.get_by_role("tab", name=TASKS[key].title, exact=True).click()
    page.wait_for_selector(f"#{key}-run", state="visible")


def _set_number(page, key: str, control: str, value: int) -> None:
    box = page.locator(f"#{key}-{control} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def _upload(page, key: str, path: Path) -> None:
    page.set_input_files(f"#{key}-image input[type=file]", str(path))


def _run(page, key: str, timeout_s: float = 60) -> tuple[str, str, float]:
    """Click the tab's button; (kind, status text, seconds from the click to the answer) once the server answered."""
    status = page.locator(f"#{key}-status .vd-status")
    before = status.get_attribute("data-answer")
    t0 = time.perf_counter()
    page.click(f"#{key}-run")
    page.wait_for_function(
        """([sel, before]) => { const el = document.querySelector(sel);
             return el && el.dataset.answer !== before; }""",
        arg=[f"#{key}-status .vd-status", before], timeout=timeout_s * 1000, polling=20)
    took = time.perf_counter() - t0
    return status.get_attribute("data-kind"), status.inner_text(), took


def _fill_inputs(page, key: str, files: Path) -> None:
    task = TASKS[key]
    if "prompt" in task.inputs:
        page.fill(f"#{key}-prompt textarea", "a large red circle in the center")
    if "image" in task.inputs:
        _upload(page, key, files / "red.png")
        page.wait_for_selector(f"#{key}-image img", state="visible")
    if "edits" in task.inputs:
        page.fill(f"#{key}-edits textarea, #{key}-edits input", "red=blue")
    _set_number(page, key, "steps", STEPS)
    _set_number(page, key, "n", N)


def test_every_tab_runs_in_the_browser(browser_page, server, files, timings):
    page = browser_page
    for key, task in TASKS.items():
        _open_tab(page, key)
        assert page.locator(f"#{key}-unavailable").count() == 0, page.inner_text(f"#{key}-unavailable")
        _fill_inputs(page, key, files)
        kind, text, took = _run(page, key)
        assert kind == "ok", f"{key}: {text}"
        assert f"{N} " in text and f"{STEPS} steps" in text, text
        server_s = float(re.search(r"in ([\d.]+) s", text).group(1))
        timings["tabs"][key] = {"browser_s": round(took, 2), "server_s": server_s}
        if task.output == "images":
            page.wait_for_selector(f"#{key}-gallery img")
            assert page.locator(f"#{key}-gallery img").count() >= N
        else:
            captions = page.input_value(f"#{key}-captions textarea")
            assert captions.startswith("seed 0: ") and captions.count("\n") == N - 1, captions
        if key == "i2t2i":
            assert " → " in page.input_value(f"#{key}-captions textarea")
        # the results zip, fetched as a person's click on the download link would
        link = page.locator(f"#{key}-download a[href]").first
        link.wait_for()
        body = page.request.get(urljoin(server["url"], link.get_attribute("href"))).body()
        with zipfile.ZipFile(io.BytesIO(body)) as z:
            settings = json.loads(z.read("settings.json"))
            assert settings["task"] == key and settings["steps"] == STEPS and settings["seeds"] == list(range(N))
            assert set(settings["files"]) == set(z.namelist())
            if task.output == "images":
                assert Image.open(io.BytesIO(z.read("seed000001.png"))).size[0] >= 16


def _choose(page, key: str, control: str, option: str) -> None:
    page.click(f"#{key}-{control} input")
    page.get_by_role("option", name=option, exact=True).click()


def test_progress_is_shown_while_sampling(browser_page, server, tmp_path):
    """A longer request (10 DPM-Solver++ steps): the page counts the steps while it runs; its screenshot is the
    README's (the VD miniature's text -> image tab when its weights ship, else the class-conditional tab)."""
    page = browser_page
    key = "text-to-image" if "vd-shapes" in server["checkpoints"] else "class-to-image"
    _open_tab(page, key)
    if key == "class-to-image":
        _choose(page, key, "class", "blue triangle")
    else:
        page.fill(f"#{key}-prompt textarea", "a large red circle in the center")
    _choose(page, key, "sampler", "dpmpp")
    _set_number(page, key, "steps", 10)
    _set_number(page, key, "n", 4)
    before = page.locator(f"#{key}-status .vd-status").get_attribute("data-answer")
    page.click(f"#{key}-run")
    # gradio's progress text counts the sampler's steps ("3/10 steps") over the results while the request runs
    page.wait_for_function("""() => [...document.querySelectorAll('.meta-text, .meta-text-center, .progress-text')]
                                     .some(e => /\\d+\\/10 steps/.test(e.innerText))""", timeout=30_000, polling=20)
    page.wait_for_function("([sel, b]) => document.querySelector(sel).dataset.answer !== b",
                           arg=[f"#{key}-status .vd-status", before], timeout=60_000)
    text = page.inner_text(f"#{key}-status")
    assert "4 images" in text and "dpmpp, 10 steps" in text, text
    page.wait_for_selector(f"#{key}-gallery img")
    page.mouse.move(0, 0)
    shot = tmp_path / "serve.png"
    page.screenshot(path=str(shot), full_page=True)
    assert Image.open(shot).size[0] >= 1000
    if os.environ.get("VERSADIFF_SCREENSHOT"):
        Path(os.environ["VERSADIFF_SCREENSHOT"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, os.environ["VERSADIFF_SCREENSHOT"])


def test_bad_input_gives_a_message_in_the_page(browser_page, files):
    page = browser_page
    # an empty prompt
    _open_tab(page, "text-to-image")
    page.fill("#text-to-image-prompt textarea", "")
    kind, text, _ = _run(page, "text-to-image")
    assert kind == "error" and "the prompt is empty" in text
    # an over-long prompt cannot be typed: the box stops at the limit
    page.fill("#text-to-image-prompt textarea", "x" * 400)
    assert len(page.input_value("#text-to-image-prompt textarea")) == 300
    # an oversized upload: refused by the page and the server before it is stored, with the limit named
    _open_tab(page, "image-variation")
    _upload(page, "image-variation", files / "big.png")
    page.get_by_text(re.compile(r"exceed the maximum allowed size")).first.wait_for()
    kind, text, _ = _run(page, "image-variation")
    assert kind == "error" and "no image: upload a PNG or JPEG image first" in text
    # an image over the dimension limit, and a file that is no image
    _upload(page, "image-variation", files / "wide.png")
    page.wait_for_selector("#image-variation-image img", state="visible")
    kind, text, _ = _run(page, "image-variation")
    assert kind == "error" and "is 600x20 pixels; the limit is 512 pixels a side" in text
    _upload(page, "image-variation", files / "broken.png")
    time.sleep(1.0)
    kind, text, _ = _run(page, "image-variation")
    assert kind == "error" and "could not be read as an image" in text
    assert "Traceback" not in page.content()
    # the server still serves
    _upload(page, "image-variation", files / "red.png")
    page.wait_for_selector("#image-variation-image img", state="visible")
    _set_number(page, "image-variation", "n", 1)
    kind, text, _ = _run(page, "image-variation")
    assert kind == "ok" and "1 image " in text


def test_the_page_stays_on_this_machine(browser_page, server):
    off = [u for u in browser_page.requests if not re.match(r"^(http://127\.0\.0\.1:\d+/|data:|blob:)", u)]
    assert not off, off
    assert server["proc"].poll() is None
    assert not any("Traceback" in line for line in server["lines"]), "".join(server["lines"])
