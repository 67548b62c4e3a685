"""One error path for every entry point: any failure a user can cause becomes one line naming the file or option
and the fix.

The library raises these (all ValueErrors except TrainingDivergedError, so `except ValueError` keeps working):
  OutputExistsError       an output path holds files versadiff did not write (or may not replace without --force)
  CheckpointError         a checkpoint or weight file is unreadable, truncated or fails its sha256 check
  DeviceError             a --device the machine does not have, or a precision it cannot run
  TrainingDivergedError   the loss or gradient norm became NaN/inf (training stops before the bad update)
`describe(exc)` turns these and the errors of the libraries underneath (safetensors, pickle, EOFError, OSError,
YAML, JSON, torch device requests) into that one line; it returns None for anything else (a bug: the CLI then
says "internal error" and `--debug` shows the traceback).
"""

from __future__ import annotations

import errno
import json
import pickle
import re
import sys

__all__ = ["VersadiffError", "OutputExistsError", "CheckpointError", "DeviceError", "TrainingDivergedError",
           "describe", "one_line", "report_error"]


class VersadiffError(Exception):
    """Base of versadiff's own user-facing errors; the message is one line naming the file/option and the fix."""


class OutputExistsError(VersadiffError, ValueError):
    """An output would overwrite or mix with files versadiff did not create."""


class CheckpointError(VersadiffError, ValueError):
    """A checkpoint or weight file is unreadable, truncated, or its contents fail the recorded sha256."""


class DeviceError(VersadiffError, ValueError):
    """A device or precision this machine does not have."""


class TrainingDivergedError(VersadiffError, RuntimeError):
    """A non-finite loss or gradient: training stopped before applying it; the last checkpoint is good."""


def one_line(text: object) -> str:
    """`text` with all whitespace runs (newlines included) collapsed to single spaces."""
    return " ".join(str(text).split())


_OS_HINTS = {
    errno.ENOSPC: "free some disk space or choose another folder",
    errno.EDQUOT: "free some disk space or choose another folder",
    errno.EACCES: "check its permissions or choose another path",
    errno.EPERM: "check its permissions or choose another path",
    errno.EROFS: "the file system is read-only: choose another path",
    errno.ENOENT: "check the path",
    errno.EISDIR: "give a file, not a folder",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EEXIST: "choose another path",
    errno.ENAMETOOLONG: "use a shorter path",
}

_DEVICE_PATTERNS = (
    "torch not compiled with cuda", "no cuda gpus are available", "found no nvidia driver", "cuda driver",
    "invalid device string", "expected one of cpu", "invalid device ordinal", "cuda error: invalid device",
    "mps backend", "device type at start of device string", "is not available", "xpu",
)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return one_line(text.splitlines()[0] if text else type(e).__name__)


def describe(e: BaseException) -> str | None:
    """One line for an error a user can cause (bad input, file or device); None for a bug."""
    if isinstance(e, VersadiffError):
        return one_line(e)
    if isinstance(e, json.JSONDecodeError):  # a ValueError without a file name: say what it is
        return f"invalid JSON ({e.msg} at line {e.lineno}, column {e.colno}); fix or replace the file"
    if isinstance(e, (pickle.UnpicklingError, EOFError)):
        return (f"a torch file is truncated or not a torch file ({type(e).__name__}: {_first_line(e)}); "
                "use an earlier checkpoint")
    try:
        import yaml

        if isinstance(e, yaml.YAMLError):
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            name = f"{mark.name}: " if mark is not None and getattr(mark, "name", "") not in ("", "<unicode string>") else ""
            return f"{name}invalid YAML{where}; check indentation and quoting"
    except ImportError:  # pragma: no cover
        pass
    if type(e).__name__ == "SafetensorError":
        return f"a .safetensors file is damaged or not a safetensors file ({_first_line(e)}); re-export it"
    if isinstance(e, ValueError):
        return one_line(e) or type(e).__name__
    if isinstance(e, OSError):
        name = e.filename if e.filename is not None else ""
        what = e.strerror or _first_line(e)
        hint = _OS_HINTS.get(e.errno or -1)
        if not e.strerror and str(e):  # our own FileNotFoundError("... not found; give ...") messages
            return one_line(e)
        return one_line(f"{name}: {what}" + (f"; {hint}" if hint else "") if name else what + (f"; {hint}" if hint else ""))
    if isinstance(e, MemoryError):
        return "out of memory; lower the batch size (--batch-size / train.batch_size) or the image count"
    if isinstance(e, RuntimeError):
        text = str(e).lower()
        if "out of memory" in text:
            return "out of memory on the device; lower the batch size (--batch-size / train.batch_size)"
        if any(p in text for p in _DEVICE_PATTERNS) and re.search(r"cuda|device|mps|xpu", text):
            return f"device not available ({_first_line(e)}); use --device cpu or a device this machine has"
    return None


def report_error(e: BaseException) -> int:
    """Print `e` to stderr as the one error line (an "internal error" line for a bug); returns the exit status:
    2 for a user error, 1 for a bug."""
    message = describe(e)
    if message is None:
        text = str(e).strip()
        first = one_line(text.splitlines()[0]) if text else ""
        sys.stderr.write(f"versadiff: internal error: {type(e).__name__}{': ' + first if first else ''} (a bug: rerun "
                         "with --debug for the traceback and report it)\n")
        return 1
    sys.stderr.write(f"versadiff: error: {message}\n")
    return 2
