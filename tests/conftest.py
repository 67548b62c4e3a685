"""Shared test setup."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Run the suite on one torch thread: on the shared two-core CI machine extra threads only contend
    (multi-threaded CPU kernels were 4-30x slower there), and results do not depend on thread scheduling."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
