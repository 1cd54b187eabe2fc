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


# -- optional eval extras (pip install -e .[eval]) -----------------------------------------------------------------
#: The packages of the ``eval`` extra that tests use (metrics, reports, test-only references).
EVAL_EXTRAS = ("pesq", "pystoi", "speechmos", "pocketsphinx", "librosa", "matplotlib")
_FOUND: dict = {}


def extra_available(name: str) -> bool:
    """Whether the optional package ``name`` can be imported (found on the path and not blocked in
    ``sys.modules``), without importing it (librosa and matplotlib are slow to import)."""
    import importlib.util
    import sys

    if name in sys.modules:
        return sys.modules[name] is not None
    if name not in _FOUND:
        try:
            _FOUND[name] = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            _FOUND[name] = False
    return _FOUND[name]


def pytest_configure(config):
    config.addinivalue_line("markers", "needs_eval(*packages): the test needs these packages of the eval extra "
                                       "(none named: all of them); skipped with a reason when one is missing")


def pytest_runtest_setup(item):
    for mark in item.iter_markers("needs_eval"):
        missing = [m for m in (mark.args or EVAL_EXTRAS) if not extra_available(m)]
        if missing:
            pytest.skip(f"needs the eval extra ({', '.join(missing)} not installed): pip install -e '.[eval]'")
