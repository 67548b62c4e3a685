"""Training records: the JSON-lines log (stats.jsonl, always), experiment trackers through 🤗 accelerate
(`train.log_with`: tensorboard by default, wandb, mlflow, ...), and the curves drawn from the log (loss.png,
eval.png in the run folder, with PIL: no plotting library needed)."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from versadiff.config import ConfigError, names_list
from versadiff.errors import CheckpointError

__all__ = ["StatsLogger", "tracker_names", "check_trackers", "Trackers", "plot_curves", "plot_run", "read_stats"]

#: accelerate's built-in trackers -> the pip package each needs
TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "comet_ml": "comet-ml",
                    "aim": "aim", "clearml": "clearml", "dvclive": "dvclive", "swanlab": "swanlab",
                    "trackio": "trackio"}


def _json_safe(v: Any) -> Any:
    """NaN/inf are not JSON: write them as strings ("nan", "inf") so every line stays parseable."""
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


class StatsLogger:
    """Append one JSON object per log event to run_dir/stats.jsonl (the run's own record; trackers are extra)."""

    def __init__(self, run_dir: str | Path, *, tensorboard: bool = False) -> None:
        """tensorboard: accepted for callers of the former built-in writer; TensorBoard is now one of the run's
        trackers (Trackers, `train.log_with`), so True only warns that nothing is mirrored here."""
        self.path = Path(run_dir) / "stats.jsonl"
        self.writer = None  # the former TensorBoard writer; scalars reach TensorBoard through Trackers
        if tensorboard:
            import warnings

            warnings.warn("StatsLogger(tensorboard=True) no longer writes TensorBoard events; log them with "
                          "versadiff.train.logging.Trackers (train.log_with: tensorboard)", DeprecationWarning,
                          stacklevel=2)

    @staticmethod
    def entries(path: str | Path, *, warn: bool = True) -> list[str]:
        """The parseable lines of a stats.jsonl. A half-written last line (the run was killed while logging) is
        dropped (with a warning); a damaged line before it is a one-line CheckpointError naming the file and line."""
        path = Path(path)
        if not path.exists():
            return []
        try:
            lines = path.read_text().splitlines()
        except UnicodeDecodeError:
            raise CheckpointError(f"{path} is not text (damaged); move it aside to resume") from None
        keep = []
        for i, ln in enumerate(lines):
            if not ln.strip():
                continue
            try:
                entry = json.loads(ln)
                if not isinstance(entry, dict) or not isinstance(entry.get("step", 0), int):
                    raise ValueError
            except ValueError:
                if all(not rest.strip() for rest in lines[i + 1 :]):
                    if warn:
                        sys.stderr.write(f"versadiff: warning: {path} line {i + 1} was cut short (the run was "
                                         "stopped while logging); dropped\n")
                    break
                raise CheckpointError(f"{path} line {i + 1} is not valid JSON (damaged); repair or delete that "
                                      "line to resume") from None
            keep.append(ln)
        return keep

    def truncate_after(self, step: int) -> None:
        """Drop entries logged after `step` (a resumed run re-logs them), rewriting the file atomically."""
        if not self.path.exists():
            return
        keep = [ln for ln in self.entries(self.path) if int(json.loads(ln).get("step", 0)) <= step]
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        with open(tmp, "w") as f:
            f.write("".join(ln + "\n" for ln in keep))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def log(self, step: int, stats: dict[str, Any]) -> None:
        """Record `stats` at `step`."""
        entry = {"step": step, **{k: _json_safe(v) for k, v in stats.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(entry) + "\n")

    def close(self) -> None:
        """Nothing to close (each entry is appended and closed); kept for callers of the former writer."""


def read_stats(path: str | Path) -> list[dict[str, Any]]:
    """The entries of a stats.jsonl as dicts (a cut-short last line is dropped silently)."""
    return [json.loads(ln) for ln in StatsLogger.entries(path, warn=False)]


# ---------------------------------------------------------------------------------------------------
# experiment trackers (accelerate)


def tracker_names(value: str | list | None) -> list[str]:
    """train.log_with as tracker names ("tensorboard", "wandb,tensorboard", [..]; "none" / [] -> [])."""
    names = names_list(value)
    return list(dict.fromkeys(names))  # repeats once


def check_trackers(names: Sequence[str]) -> None:
    """Every tracker is one accelerate knows and its package is installed; else a one-line ConfigError."""
    if not names:
        return
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS
    from accelerate.utils import imports

    for name in names:
        if name == "all":
            raise ConfigError("train.log_with: name the trackers (e.g. tensorboard,wandb), not 'all'")
        if name not in LOGGER_TYPE_TO_CLASS:
            raise ConfigError(f"train.log_with: unknown tracker {name!r}; choose from "
                              f"{', '.join(sorted(LOGGER_TYPE_TO_CLASS))} or none (custom trackers: register them "
                              "with accelerate.tracking.register_tracker_class first)")
        check = getattr(imports, f"is_{name}_available", None)
        if name in TRACKER_PACKAGES and check is not None and not check():
            raise ConfigError(f"train.log_with: {name} is not installed (pip install {TRACKER_PACKAGES[name]}); or "
                              "log with train.log_with=tensorboard (stats.jsonl is always written)")


def _hparams(cfg_dict: dict[str, Any]) -> dict[str, Any]:
    """The run config flattened to scalars (what every tracker's store_init_configuration accepts)."""
    out: dict[str, Any] = {}

    def walk(v: Any, key: str) -> None:
        if isinstance(v, dict) and v:
            for k, x in v.items():
                walk(x, f"{key}.{k}" if key else str(k))
        elif isinstance(v, bool) or isinstance(v, (int, float, str)):
            out[key] = v
        else:
            out[key] = json.dumps(v)
    walk(cfg_dict, "")
    return out


class Trackers:
    """The run's accelerate trackers: started once the run folder is known, fed the numeric stats, the sample
    grids (as images) and the evaluation results, and finished at the end (never accelerate's end_training,
    which would also end the process group)."""

    def __init__(self, accelerator: Any, names: Sequence[str]) -> None:
        self.acc, self.names, self.started = accelerator, list(names), False

    def start(self, run_dir: Path, project: str, cfg_dict: dict[str, Any], run_id: str,
              user_kwargs: dict[str, Any] | None = None) -> None:
        if not self.names or self.started:
            return
        acc = self.acc
        # TensorBoard writes RUN/tensorboard/<project>/ (accelerate joins the logging dir and the project name)
        acc.project_configuration.set_directories(str(run_dir))
        acc.project_configuration.logging_dir = str(run_dir / "tensorboard")
        defaults: dict[str, dict[str, Any]] = {
            "wandb": {"dir": str(run_dir), "name": run_dir.name, "id": run_id, "resume": "allow"},
            "mlflow": {"run_name": run_dir.name},
            "comet_ml": {"experiment_name": run_dir.name}, "swanlab": {"experiment_name": run_dir.name},
        }
        kwargs = {n: {**defaults.get(n, {}), **dict((user_kwargs or {}).get(n, {}))} for n in self.names}
        acc.init_trackers(project, config=_hparams(cfg_dict), init_kwargs=kwargs)
        self.started = True

    def log(self, stats: dict[str, Any], step: int) -> None:
        if not self.started:
            return
        numbers = {k: v for k, v in stats.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
        if numbers:
            self.acc.log(numbers, step=step)

    def log_image(self, key: str, image: Any, step: int, path: Path | None = None) -> None:
        """One image (uint8 [H, W, C]) to every tracker that takes images (TensorBoard, wandb, ...; mlflow gets
        the PNG file at `path` as an artifact)."""
        if not self.started or not self.acc.is_main_process:
            return
        for t in self.acc.trackers:
            try:
                if t.name == "tensorboard":
                    t.log_images({key: image[None]}, step=step, dataformats="NHWC")
                elif t.name == "mlflow" and path is not None:
                    t.log_artifact(str(path), artifact_path=key)
                elif hasattr(t, "log_images"):
                    t.log_images({key: [image]}, step=step)
            except Exception as e:  # a tracker's image failing must not stop the run; its scalars still go
                sys.stderr.write(f"versadiff: warning: tracker {t.name} could not log image {key} "
                                 f"({type(e).__name__}: {e})\n")

    def finish(self) -> None:
        if not self.started:
            return
        for t in self.acc.trackers:
            t.finish()
        self.acc.trackers = []
        self.started = False


# ---------------------------------------------------------------------------------------------------
# curves (PIL)

_COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127)]


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if not hi > lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step) * step
    ticks, v = [], start
    while v <= hi + step * 1e-9:
        ticks.append(round(v, 12))
        v += step
    return ticks


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1e4 or abs(v) < 1e-3:
        return f"{v:.0e}".replace("e+0", "e").replace("e-0", "e-")
    return f"{v:.4g}"


def _smooth(ys: list[float], window: int) -> list[float]:
    """Trailing moving average over `window` points (what TensorBoard's smoothing shows, simply)."""
    out, acc, q = [], 0.0, []
    for y in ys:
        q.append(y)
        acc += y
        if len(q) > window:
            acc -= q.pop(0)
        out.append(acc / len(q))
    return out


def _panel(draw: Any, box: tuple[int, int, int, int], title: str, series: list[tuple[str, list, list, tuple]],
           log_y: bool, font: Any, small: Any, marks: list[tuple[float, float, str]] = ()) -> None:
    x0, y0, x1, y1 = box
    draw.text((x0 + 4, y0 + 2), title, fill=(0, 0, 0), font=font)
    left, top, right, bottom = x0 + 62, y0 + 24, x1 - 12, y1 - 30
    draw.rectangle((left, top, right, bottom), outline=(0, 0, 0))
    pts = [(x, y) for _, xs, ys, _ in series for x, y in zip(xs, ys) if isinstance(y, (int, float)) and math.isfinite(y)
           and (not log_y or y > 0)]
    if not pts:
        draw.text((left + 8, top + 8), "no finite values yet", fill=(120, 120, 120), font=small)
        return
    xlo, xhi = min(p[0] for p in pts), max(p[0] for p in pts)
    if xhi == xlo:
        xlo, xhi = xlo - 1, xhi + 1
    f = (lambda v: math.log10(v)) if log_y else (lambda v: v)
    ylo, yhi = min(f(p[1]) for p in pts), max(f(p[1]) for p in pts)
    pad = (yhi - ylo) * 0.05 or (abs(ylo) * 0.05 or 0.05)
    ylo, yhi = ylo - pad, yhi + pad

    def px(x: float) -> float:
        return left + (x - xlo) / (xhi - xlo) * (right - left)

    def py(y: float) -> float:
        return bottom - (f(y) - ylo) / (yhi - ylo) * (bottom - top)

    for t in _nice_ticks(xlo, xhi, 6):
        if xlo <= t <= xhi:
            draw.line((px(t), bottom, px(t), bottom + 4), fill=(0, 0, 0))
            draw.line((px(t), top, px(t), bottom), fill=(235, 235, 235))
            s = _fmt(t)
            draw.text((px(t) - small.getlength(s) / 2, bottom + 6), s, fill=(0, 0, 0), font=small)
    if log_y:
        yticks = [10 ** e * m for e in range(math.floor(ylo) - 1, math.ceil(yhi) + 1) for m in (1, 2, 5)]
        yticks = [t for t in yticks if ylo <= math.log10(t) <= yhi]
        if len(yticks) > 8:
            yticks = [t for t in yticks if round(t / 10 ** math.floor(math.log10(t))) == 1] or yticks[::3]
        if len(yticks) < 2:  # a narrow range: linear ticks inside it
            yticks = [t for t in _nice_ticks(10 ** ylo, 10 ** yhi, 4) if t > 0]
    else:
        yticks = _nice_ticks(ylo, yhi, 5)
    for t in yticks:
        if (math.log10(t) if log_y else t) < ylo or (math.log10(t) if log_y else t) > yhi:
            continue
        y = py(t)
        draw.line((left - 4, y, left, y), fill=(0, 0, 0))
        draw.line((left, y, right, y), fill=(235, 235, 235))
        s = _fmt(t)
        draw.text((left - 6 - small.getlength(s), y - 6), s, fill=(0, 0, 0), font=small)
    draw.text(((left + right) / 2 - small.getlength("step") / 2, bottom + 17), "step", fill=(90, 90, 90), font=small)
    lx = left + 8
    for label, xs, ys, color in series:
        line = [(px(x), py(y)) for x, y in zip(xs, ys)
                if isinstance(y, (int, float)) and math.isfinite(y) and (not log_y or y > 0)]
        if len(line) > 1:
            draw.line(line, fill=color, width=2)
        if len(line) <= 30:
            for x, y in line:
                draw.ellipse((x - 2.5, y - 2.5, x + 2.5, y + 2.5), fill=color)
        if label:
            draw.line((lx, top + 10, lx + 14, top + 10), fill=color, width=3)
            draw.text((lx + 18, top + 3), label, fill=(0, 0, 0), font=small)
            lx += 26 + small.getlength(label)
    for x, y, text in marks:
        if isinstance(y, (int, float)) and math.isfinite(y) and (not log_y or y > 0):
            cx, cy = px(x), py(y)
            draw.ellipse((cx - 5, cy - 5, cx + 5, cy + 5), outline=(214, 39, 40), width=2)
            draw.text((min(cx + 7, right - small.getlength(text) - 2), max(cy - 16, top + 2)), text,
                      fill=(214, 39, 40), font=small)


def plot_curves(panels: list[dict[str, Any]], path: str | Path, width: int = 720, panel_height: int = 280) -> Path:
    """Draw panels [{title, series: [(label, xs, ys, color?)], log_y, marks: [(x, y, text)]}] one under the
    other into a PNG at `path` (written to a temporary sibling, then renamed)."""
    from PIL import Image, ImageDraw

    from versadiff.images import caption_font

    font, small = caption_font(15), caption_font(11)
    im = Image.new("RGB", (width, panel_height * max(1, len(panels))), (255, 255, 255))
    draw = ImageDraw.Draw(im)
    for i, p in enumerate(panels):
        series = [(s[0], s[1], s[2], s[3] if len(s) > 3 else _COLORS[k % len(_COLORS)])
                  for k, s in enumerate(p["series"])]
        _panel(draw, (0, i * panel_height, width, (i + 1) * panel_height), p["title"], series, bool(p.get("log_y")),
               font, small, list(p.get("marks", ())))
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
    im.save(tmp)
    os.replace(tmp, path)
    return path


def _loss_panels(stats: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = [s for s in stats if isinstance(s.get("loss"), (int, float))]
    if not rows:
        return []
    xs, ys = [s["step"] for s in rows], [float(s["loss"]) for s in rows]
    finite = [y for y in ys if math.isfinite(y)]
    log_y = bool(finite) and min(finite) > 0 and max(finite) / min(finite) > 20
    series = [("loss", xs, ys, (170, 200, 230))]
    if len(ys) >= 8:
        series.append((f"mean of {max(2, len(ys) // 20)}", xs, _smooth(ys, max(2, len(ys) // 20)), _COLORS[0]))
    panels = [{"title": f"training loss (stats.jsonl, {len(ys)} entries)", "series": series, "log_y": log_y}]
    per_flow = sorted({k for s in rows for k in s if k.startswith("loss_")})
    if per_flow:
        panels.append({"title": "loss per flow", "log_y": log_y, "series": [
            (k[len("loss_"):], [s["step"] for s in rows if k in s], [float(s[k]) for s in rows if k in s])
            for k in per_flow]})
    return panels


def _eval_panels(stats: list[dict[str, Any]], best: dict[str, Any] | None) -> list[dict[str, Any]]:
    keys = sorted({k for s in stats for k in s if k.startswith("eval/") and not k.endswith("_std")})
    panels = []
    for k in keys:
        rows = [s for s in stats if isinstance(s.get(k), (int, float))]
        name = k[len("eval/"):]
        marks = []
        if best and best.get("metric") == name:
            marks = [(best["step"], best["value"], f"best {best['value']:.4g} (step {best['step']})")]
        panels.append({"title": f"{name} (evaluation on {rows[-1].get('eval_n', '?')} samples)" if rows else name,
                       "series": [("", [s["step"] for s in rows], [float(s[k]) for s in rows])], "marks": marks})
    return panels


def plot_run(run_dir: str | Path, best: dict[str, Any] | None = None) -> list[Path]:
    """RUN/loss.png from stats.jsonl, and RUN/eval.png (one panel per evaluated value) when the run evaluates."""
    run_dir = Path(run_dir)
    stats = read_stats(run_dir / "stats.jsonl")
    written = []
    loss = _loss_panels(stats)
    if loss:
        written.append(plot_curves(loss, run_dir / "loss.png"))
    ev = _eval_panels(stats, best)
    if ev:
        written.append(plot_curves(ev, run_dir / "eval.png", panel_height=240))
    return written
