"""versadiff: multi-flow, multimodal diffusion models (Versatile Diffusion, U-ViT, VQ-Diffusion, VDPM).

    import versadiff
    model = versadiff.load_model("shapes-unet")      # a shipped model by name, a run folder or a weight file
    versadiff.__version__

This file stays import-light (nothing here imports torch until it is used), so that `versadiff --help` and the
library's small modules start fast; every module keeps its own imports.
"""

from __future__ import annotations

from typing import Any

__all__ = ["__version__", "load_model"]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("versadiff")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"


def __getattr__(name: str) -> Any:
    if name == "__version__":
        value: Any = _version()
    elif name == "load_model":
        from versadiff.models import load_model as value
    else:
        raise AttributeError(f"module 'versadiff' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
