"""Shared test setup."""

import pytest
import torch


def pytest_configure(config):
    # no silent skips: every skip prints its reason in the summary (as -rs would)
    chars = config.option.reportchars or ""
    if "s" not in chars and "a" not in chars and "A" not in chars:
        config.option.reportchars = chars + "s"


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Run the suite on one torch thread: on the shared two-core CI machine extra threads only contend
    (multi-threaded CPU kernels were 4-30x slower there), and results do not depend on thread scheduling."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def fashion_mnist():
    """The Fashion-MNIST folder, installed from Debian's dataset-fashion-mnist when absent and installable
    (tests/extras.py: fails when the install was possible but gave no files; skips only where it is impossible)."""
    from extras import fashion_mnist_root

    return fashion_mnist_root()
