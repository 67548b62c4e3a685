"""Devices and numeric precision: which device a run asked for exists, and what `mixed_precision: auto` means here.

`auto` (the default of every preset, of `versadiff sample` and `versadiff eval`) is bf16 only where the device
runs bf16 natively, else fp32 ("no"); fp16 is used only when asked for, and only on a GPU:
  CUDA  bf16 when torch.cuda.is_bf16_supported() (Ampere and newer), else fp32
  CPU   bf16 when the CPU has AVX512-BF16 or AMX-BF16 and torch runs its AVX-512 kernels, else fp32
        (on AVX2-only CPUs bf16 autocast is emulated and 8-18x slower than fp32)
  other fp32
The CPU check reads torch's kernel capability (torch.backends.cpu.get_cpu_capability(): "AVX2", "AVX512", ...;
it does not name bf16 itself), the CPU flags of /proc/cpuinfo (avx512_bf16, amx_bf16; aarch64: bf16) and
torch's own probes (torch.cpu._is_avx512_bf16_supported / _is_amx_tile_supported) where they exist.
"""

from __future__ import annotations

import contextlib
import functools
import platform
from pathlib import Path
from typing import Any

import torch

from versadiff.errors import DeviceError

__all__ = ["PRECISIONS", "cpu_flags", "cpu_native_bf16", "resolve_precision", "resolve_device", "autocast"]

PRECISIONS = ("auto", "no", "bf16", "fp16")
_X86_BF16_FLAGS = {"avx512_bf16", "amx_bf16"}


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of /proc/cpuinfo (x86 `flags`, aarch64 `Features`); empty where unreadable."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return frozenset()
    flags: set[str] = set()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return frozenset(flags)


def _torch_probes() -> bool:
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        probe = getattr(torch.cpu, name, None)
        try:
            if probe is not None and probe():
                return True
        except Exception:  # a private API: absent or failing means "unknown", not "yes"
            pass
    return False


def cpu_native_bf16(capability: str | None = None, flags: set[str] | frozenset[str] | None = None,
                    machine: str | None = None) -> bool:
    """Whether this CPU runs bf16 natively. With no arguments: this machine; the arguments fake it (tests).

    x86: torch must run AVX-512 kernels (capability AVX512, or one naming BF16/AMX) and the CPU must have
    AVX512-BF16 or AMX-BF16 (from `flags`, or torch's probes when detecting). An AVX2 capability is never native
    (also when ATEN_CPU_CAPABILITY=avx2 forces it on an AVX-512 machine). aarch64: the `bf16` feature.
    """
    real = capability is None and flags is None
    cap = (torch.backends.cpu.get_cpu_capability() if capability is None else capability).upper().replace(" ", "_")
    have = set(cpu_flags() if flags is None else flags)
    arch = (machine or platform.machine()).lower()
    if arch in ("aarch64", "arm64"):
        return "bf16" in have or "BF16" in cap
    if "BF16" in cap or "AMX" in cap:
        return True
    if not cap.startswith("AVX512"):
        return False
    return bool(have & _X86_BF16_FLAGS) or (real and _torch_probes())


def _cuda_bf16() -> bool:
    try:
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    except Exception:
        return False


def resolve_precision(requested: str, device: str | torch.device = "cpu", *, cpu_bf16: bool | None = None,
                      cuda_bf16: bool | None = None, key: str = "train.mixed_precision") -> tuple[str, str]:
    """(precision, why) for `requested` in auto | no | bf16 | fp16 on `device`; precision is no | bf16 | fp16.

    fp16 off a GPU is a DeviceError naming `key` (the option that asked for it)."""
    kind = torch.device(device).type
    if requested not in PRECISIONS:
        raise DeviceError(f"{key} must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    if requested == "fp16":
        if kind != "cuda":
            raise DeviceError(f"{key}=fp16 needs a CUDA GPU; on {kind} use auto, bf16 or no")
        return "fp16", "fp16 as asked"
    if requested == "no":
        return "no", "fp32 as asked"
    native = None
    if kind == "cuda":
        native = _cuda_bf16() if cuda_bf16 is None else cuda_bf16
        where = "this GPU"
    elif kind == "cpu":
        native = cpu_native_bf16() if cpu_bf16 is None else cpu_bf16
        where = "this CPU"
    else:
        where = f"device {kind}"
    if requested == "bf16":
        return "bf16", "bf16 as asked" + ("" if native else f" (emulated on {where}: expect it to be slow)")
    if native:
        return "bf16", f"auto: {where} runs bf16 natively"
    return "no", f"auto: fp32, {where} has no native bf16"


def resolve_device(spec: str | torch.device | None, option: str = "--device") -> torch.device:
    """A device that exists on this machine (default: cuda when available, else cpu); one-line DeviceError else."""
    if spec is None or spec == "":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(spec)
    except (RuntimeError, ValueError, TypeError):
        raise DeviceError(f"{option} {spec!r} is not a device; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"{option} {spec}: this machine has no CUDA GPU (or torch was built without CUDA); "
                              "use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(f"{option} {spec}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                              f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise DeviceError(f"{option} {spec}: MPS is not available on this machine; use --device cpu")
    elif dev.type != "cpu":
        backend = getattr(torch, dev.type, None)
        available = getattr(backend, "is_available", None)
        if available is None or not available():
            raise DeviceError(f"{option} {spec}: device type {dev.type!r} is not available here; use --device cpu")
    return dev


def autocast(precision: str, device: str | torch.device) -> Any:
    """torch.autocast for a resolved precision (no | bf16 | fp16) on `device`; a no-op context for "no"."""
    if precision == "no":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return torch.autocast(torch.device(device).type, dtype=dtype)
