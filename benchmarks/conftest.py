"""Fixtures for the pytest-benchmark microbenchmarks in this folder.

Every fixture that needs pyqueue skips the test, with the reason, when the
native extension is not built, so ``pytest benchmarks/ --benchmark-only`` runs
(and reports skips) on a bare source tree.
"""

from __future__ import annotations

import pytest

try:
    import pyqueue

    pyqueue.TaskQueue  # noqa: B018 - a half-built package lacks it
    _NOT_BUILT = None
except Exception as exc:  # noqa: BLE001 - ImportError, AttributeError, a broken build
    pyqueue = None
    _NOT_BUILT = (
        f"pyqueue is not built ({type(exc).__name__}: {exc}); "
        "build it with `make build` or `pip install -e .`"
    )

#: Pool size of the microbenchmarks: the 2 cores of the reference machine.
WORKERS = 2


@pytest.fixture(scope="session")
def pq():
    """The ``pyqueue`` module, or a skip when it is not built."""
    if _NOT_BUILT:
        pytest.skip(_NOT_BUILT)
    return pyqueue


@pytest.fixture
def queue(pq):
    """A fresh ``TaskQueue(workers=2)``, shut down (draining) after the test."""
    with pq.TaskQueue(workers=WORKERS) as q:
        yield q


@pytest.fixture
def executor(pq):
    """A fresh ``pyqueue.Executor(max_workers=2)``."""
    with pq.Executor(max_workers=WORKERS) as ex:
        yield ex
