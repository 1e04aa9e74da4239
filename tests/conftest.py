"""Suite-wide settings.

The tests use small tensors, for which PyTorch's intra-op thread pool costs more than it saves, and
on a busy 2-core machine two spinning OpenMP threads can slow tiny kernels a hundredfold. One thread
keeps the suite fast and its timings stable; tests that need more set it themselves.
"""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def float64():
    """Exact-answer tests in float64; the default dtype is put back for the rest of the suite
    (a module opts in with ``pytestmark = pytest.mark.usefixtures("float64")``)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)
