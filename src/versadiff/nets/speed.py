"""Speed options for a network in the sampling loop: torch.compile with a clean fallback, and channels_last.

    fast = compile_net(net)            # torch.compile (inductor); on any compile failure: eager, one warning
    images = model.generate(range(64), compile=True)     # the same inside Pipeline.generate
    images = model.generate(range(64), compile="max-autotune")  # inductor's mode that also tunes its matmuls
    net = channels_last(net)           # conv weights in NHWC (in place); outputs follow the weights' layout

Neither changes results beyond float rounding. channels_last is not a default: on the AVX-512 CPU of
benchmarks/README.md it is worth little for the tiny UNet's sampling and the weights it makes are not contiguous,
which safetensors refuses to save (call `.contiguous()` per tensor or convert back before exporting).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

__all__ = ["CompiledNet", "COMPILE_MODES", "compile_net", "compile_options", "channels_last", "has_convs"]


def has_convs(net: nn.Module) -> bool:
    """Whether the network has 2-D convolutions (the layers channels_last changes)."""
    return any(isinstance(m, nn.Conv2d) for m in net.modules())


def channels_last(net: nn.Module) -> nn.Module:
    """`net` with its 4-D parameters and buffers in channels_last (in place; returns net)."""
    return net.to(memory_format=torch.channels_last)


class CompiledNet:
    """`net` called through torch.compile; the first failure of the compiled call (dynamo, inductor, a missing C
    compiler) warns once and every later call runs `net` eagerly. An error that eager mode raises as well (wrong
    inputs) is raised as it is, not hidden behind the fallback."""

    def __init__(self, net: nn.Module, **compile_options: Any) -> None:
        self.net = net
        self.compiled: Any = None
        self.error: str | None = None
        try:
            self.compiled = torch.compile(net, **compile_options)
        except Exception as err:  # e.g. torch.compile unsupported on this Python
            self._fall_back(err)

    @property
    def is_compiled(self) -> bool:
        return self.compiled is not None

    def _fall_back(self, err: BaseException) -> None:
        def first_line(e: BaseException) -> str:
            text = str(e).strip()
            return f"{type(e).__name__}: {text.splitlines()[0][:200]}" if text else type(e).__name__

        # dynamo wraps the compiler's own error (BackendCompilerFailed, "backend=... raised:"): name the root cause
        root = getattr(err, "inner_exception", None) or err.__cause__
        self.error = first_line(err) if root is None else f"{type(err).__name__}, {first_line(root)}"
        self.compiled = None
        warnings.warn(f"torch.compile failed ({self.error}); running the network eagerly", RuntimeWarning,
                      stacklevel=3)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.compiled is not None:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as err:
                out = self.net(*args, **kwargs)  # raises here if the inputs themselves are wrong
                self._fall_back(err)
                return out
        return self.net(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:  # config, parameters(), ... of the wrapped network
        return getattr(self.__dict__["net"], name)


# torch.compile's modes (all inductor's); any other name given where a mode may go is a backend
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compile_options(how: bool | str) -> dict[str, Any]:
    """compile_net's keywords for a `compile=` argument: True is inductor's default mode, a torch.compile mode
    name ("max-autotune", ...) that mode of inductor, any other string a backend ("eager", "aot_eager", ...)."""
    if how is True or how == "inductor":
        return {"backend": "inductor"}
    if not isinstance(how, str) or not how:
        raise ValueError(f"compile must be True, a torch.compile mode ({', '.join(COMPILE_MODES)}) or a backend "
                         f"name, got {how!r}")
    return {"backend": "inductor", "mode": how} if how in COMPILE_MODES else {"backend": how}


def compile_net(net: nn.Module, *, backend: str = "inductor", mode: str | None = None,
                dynamic: bool | None = None) -> CompiledNet:
    """A CompiledNet of `net` (see CompiledNet); `backend="eager"` runs dynamo without code generation."""
    options: dict[str, Any] = {"backend": backend, "dynamic": dynamic}
    if mode is not None:
        options["mode"] = mode
    return CompiledNet(net, **options)
