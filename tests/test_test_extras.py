"""The test set-up itself: every test extra that is installed imports (a broken one fails here, loudly, and in
every file that needs it -- never a silent skip), and under CI every extra is installed."""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

import pytest

from extras import EXTRA_MODULES, _installed, in_ci, require_extra

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def listed_test_extras():
    spec = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]["test"]
    return [re.split(r"[<>=!~ \[;]", s, maxsplit=1)[0].strip() for s in spec]


@pytest.mark.parametrize("distribution", listed_test_extras())
def test_installed_test_extras_import(distribution):
    module = EXTRA_MODULES.get(distribution, distribution.replace("-", "_"))
    if not _installed(distribution):
        assert not in_ci(), f"CI runs `make test`, which installs the test extras; {distribution} is missing"
        pytest.skip(f"{distribution} is not installed here (pip install -e '.[test]')")
    require_extra(distribution, module)  # fails with the import error when broken


def test_a_broken_extra_fails_instead_of_skipping(monkeypatch):
    # an installed distribution whose import raises (as a wheel with a missing dependency does)
    monkeypatch.setitem(sys.modules, "diffusers", None)  # `import diffusers` now raises ImportError
    if not _installed("diffusers"):
        pytest.skip("needs diffusers installed to simulate its breakage")
    with pytest.raises(pytest.fail.Exception, match="installed but `import diffusers` fails"):
        require_extra("diffusers")


def test_a_missing_extra_skips_with_its_reason_or_fails_under_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="not installed"):
        require_extra("no-such-distribution-xyz")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI installs the test extras"):
        require_extra("no-such-distribution-xyz")
