"""Test-only dependencies and test data, with no silent skips.

`require_extra("diffusers")` replaces `pytest.importorskip`: importorskip skips on any ImportError, so a test
extra that is installed but broken (a bad wheel, a missing dependency of its own, an incompatible torch) turned
whole files into skips. Here:

  * installed (its distribution's metadata is present) but not importable: the test FAILS with the import error;
  * not installed, under CI (CI=true, where `make test` installs the test extras): the test FAILS;
  * not installed elsewhere: the test is skipped with the install command as the reason (shown by -rs).

`fashion_mnist_root()` finds Fashion-MNIST ($VERSADIFF_DATA or Debian's dataset-fashion-mnist); when it is
absent and the install is possible here (root with apt-get, as CI runs) it installs the Debian package first.
It fails when an install was possible and did not give the files, and skips (with the reason) only where the
install is impossible (not root, no apt-get).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest

# the module each test-only distribution is imported as (pyproject.toml's [test] extra, plus torch-fidelity:
# installed with --no-deps by the Makefile, its package __init__ imports torchvision -- see load_module_files)
EXTRA_MODULES = {"diffusers": "diffusers", "scikit-learn": "sklearn", "gradio": "gradio", "playwright": "playwright",
                 "torch-fidelity": "torch_fidelity", "pytest": "pytest"}

FASHION_MNIST_PACKAGE = "dataset-fashion-mnist"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def require_extra(distribution: str, module: str | None = None) -> Any:
    """Import a test-only dependency (see the module docstring for when it fails, skips or returns the module)."""
    module = module or EXTRA_MODULES.get(distribution, distribution.replace("-", "_"))
    if not _installed(distribution):
        msg = f"test extra {distribution!r} is not installed (pip install -e '.[test]', or make test)"
        if in_ci():
            pytest.fail(f"{msg}; CI installs the test extras, so this is a broken set-up", pytrace=False)
        pytest.skip(msg, allow_module_level=True)
    try:
        return importlib.import_module(module)
    except Exception as e:  # noqa: BLE001 -- any import failure of an installed extra is the finding
        pytest.fail(f"test extra {distribution!r} is installed but `import {module}` fails: "
                    f"{type(e).__name__}: {e}", pytrace=False)


def load_module_files(distribution: str, package: str, modules: list[str]) -> dict[str, types.ModuleType]:
    """Import `package.<m>` for each m WITHOUT running `package/__init__.py` (e.g. torch-fidelity's, which imports
    torchvision): a stand-in package object points at the installed folder while the files are imported, then
    sys.modules is restored. Installed-but-broken fails, missing follows require_extra."""
    if not _installed(distribution):
        require_extra(distribution)  # skips or fails with the right message
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pytest.fail(f"{distribution!r} is installed but has no importable package folder {package!r}", pytrace=False)
    saved = {k: v for k, v in sys.modules.items() if k == package or k.startswith(package + ".")}
    stand_in = types.ModuleType(package)
    stand_in.__path__ = list(spec.submodule_search_locations)  # type: ignore[attr-defined]
    for k in saved:
        del sys.modules[k]
    sys.modules[package] = stand_in
    try:
        return {m: importlib.import_module(f"{package}.{m}") for m in modules}
    except Exception as e:  # noqa: BLE001
        pytest.fail(f"{distribution!r} is installed but importing {package}.{{{', '.join(modules)}}} fails: "
                    f"{type(e).__name__}: {e}", pytrace=False)
    finally:
        for k in [k for k in sys.modules if k == package or k.startswith(package + ".")]:
            del sys.modules[k]
        sys.modules.update(saved)


def _can_apt_install() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get") is not None


def _apt_install(package: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", package]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:  # a fresh machine may have no package lists yet
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, text=True, timeout=900)
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    return done


def fashion_mnist_root() -> Path:
    """The Fashion-MNIST folder; installs Debian's dataset-fashion-mnist when absent and installable."""
    from versadiff.data.idx import find_fashion_mnist

    root = find_fashion_mnist()
    if root is not None:
        return root
    if not _can_apt_install():
        msg = (f"Fashion-MNIST is not installed and cannot be installed here (needs root and apt-get): "
               f"sudo apt-get install {FASHION_MNIST_PACKAGE}, or set VERSADIFF_DATA to a folder with the IDX files")
        if in_ci():
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg, allow_module_level=True)
    done = _apt_install(FASHION_MNIST_PACKAGE)
    root = find_fashion_mnist()
    if root is None:
        tail = (done.stdout + done.stderr).strip().splitlines()[-3:]
        pytest.fail(f"apt-get install {FASHION_MNIST_PACKAGE} exited {done.returncode} and Fashion-MNIST is still "
                    f"not found: {' | '.join(tail)}", pytrace=False)
    return root
