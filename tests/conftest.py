"""Shared test setup."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread_session():
    """Tiny tensors: one intra-op thread is faster than two on a shared, busy 2-core CPU.

    Session-scoped, so module-scoped fixtures (exported bundles, trained tiny models) run single-threaded too.
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _one_thread(_one_thread_session):
    """Back to one thread before each test, whatever the previous test's code set."""
    torch.set_num_threads(1)
    yield
