"""What one request to `versadiff serve` may ask for, and the checks that turn bad input into one-line messages.

Everything here runs before any sampling; a failed check is a `UserError` whose text the page shows as it is.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Limits", "UserError", "check_prompt", "check_count", "check_steps", "check_seed", "check_guidance",
           "check_fraction", "load_upload", "IMAGE_FORMATS"]

#: image formats an upload may have (what PIL reads safely and people have)
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF")


class UserError(ValueError):
    """Input the server refuses; the message (one line, naming the input and the fix) is shown in the page."""


@dataclass(frozen=True)
class Limits:
    """Per-request limits of the server (each is a `versadiff serve` option)."""

    max_upload_mb: float = 4.0      # size of one uploaded file
    max_image_side: int = 2048      # pixels, either side of an uploaded image
    max_prompt_chars: int = 300     # characters of a prompt or caption
    max_samples: int = 8            # samples per request
    max_steps: int = 100            # sampling steps per request
    max_guidance: float = 30.0      # |classifier-free guidance weight|
    queue_size: int = 16            # requests waiting in the one queue (more are refused with a message)
    batch_size: int = 8             # samples sampled together

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or not math.isfinite(value):
                option = "--" + name.replace("_", "-")
                raise ValueError(f"serve limit {name} ({option}) must be a positive number, got {value!r}")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    def describe(self) -> str:
        return (f"uploads up to {self.max_upload_mb:g} MB and {self.max_image_side} px a side; prompts up to "
                f"{self.max_prompt_chars} characters; up to {self.max_samples} samples and {self.max_steps} steps "
                f"a request; {self.queue_size} requests queued at most")


def check_prompt(text: Any, limits: Limits, what: str = "prompt", *, allow_empty: bool = False) -> str:
    """The prompt stripped of surrounding space; an empty or over-long one is refused."""
    text = "" if text is None else str(text)
    text = text.strip()
    if not text and not allow_empty:
        raise UserError(f"the {what} is empty: type a {what} first")
    if len(text) > limits.max_prompt_chars:
        raise UserError(f"the {what} has {len(text)} characters; the limit is {limits.max_prompt_chars}")
    if any(ord(c) < 32 and c not in "\t\n" for c in text):
        raise UserError(f"the {what} holds control characters; type plain text")
    return text


def _integer(value: Any, what: str) -> int:
    if value is None or value == "":
        raise UserError(f"{what} is missing: give a whole number")
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{what} must be a whole number, got {value!r}") from None
    if not math.isfinite(f) or f != int(f):
        raise UserError(f"{what} must be a whole number, got {value!r}")
    return int(f)


def check_count(value: Any, limits: Limits) -> int:
    n = _integer(value, "the number of samples")
    if not 1 <= n <= limits.max_samples:
        raise UserError(f"the number of samples must be between 1 and {limits.max_samples}, got {n}")
    return n


def check_steps(value: Any, limits: Limits) -> int:
    n = _integer(value, "steps")
    if not 1 <= n <= limits.max_steps:
        raise UserError(f"steps must be between 1 and {limits.max_steps}, got {n}")
    return n


def check_seed(value: Any, n: int) -> int:
    seed = _integer(value, "the seed")
    if not 0 <= seed <= 2**31 - 1 - n:
        raise UserError(f"the seed must be between 0 and {2**31 - 1 - n}, got {seed}")
    return seed


def check_guidance(value: Any, limits: Limits) -> float:
    try:
        g = float(value)
    except (TypeError, ValueError):
        raise UserError(f"guidance must be a number, got {value!r}") from None
    if not math.isfinite(g) or abs(g) > limits.max_guidance:
        raise UserError(f"guidance must be a number between -{limits.max_guidance:g} and {limits.max_guidance:g}, "
                        f"got {value!r}")
    return g


def check_fraction(value: Any, what: str, lo: float = 0.0, hi: float = 1.0) -> float:
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{what} must be a number between {lo:g} and {hi:g}, got {value!r}") from None
    if not math.isfinite(f) or not lo <= f <= hi:
        raise UserError(f"{what} must be a number between {lo:g} and {hi:g}, got {value!r}")
    return f


def load_upload(path: Any, limits: Limits, what: str = "image") -> Any:
    """An uploaded image file as an RGB PIL image, after the size, format and dimension checks.

    The header is read first: the pixel data of an image over the dimension limit is never decoded."""
    from PIL import Image, UnidentifiedImageError

    if path is None or path == "":
        raise UserError(f"no {what}: upload a PNG or JPEG image first")
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
    except OSError:
        raise UserError(f"the uploaded {what} is gone from the server; upload it again") from None
    if size > limits.max_upload_bytes:
        raise UserError(f"the uploaded {what} is {size / 2**20:.1f} MB; the limit is {limits.max_upload_mb:g} MB")
    try:
        with Image.open(path) as im:
            if im.format not in IMAGE_FORMATS:
                raise UserError(f"the uploaded {what} is a {im.format} file; give one of {', '.join(IMAGE_FORMATS)}")
            w, h = im.size
            if max(w, h) > limits.max_image_side:
                raise UserError(f"the uploaded {what} is {w}x{h} pixels; the limit is {limits.max_image_side} "
                                "pixels a side")
            im.seek(0)
            return im.convert("RGB")
    except UserError:
        raise
    except Image.DecompressionBombError:  # PIL refuses to open canvases beyond 2 x Image.MAX_IMAGE_PIXELS
        raise UserError(f"the uploaded {what} has far too many pixels; the limit is {limits.max_image_side} pixels a "
                        "side") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise UserError(f"the uploaded {what} could not be read as an image; give a PNG or JPEG file") from None
