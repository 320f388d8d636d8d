"""Shared fixtures.  Every test gets a fresh queue that is shut down after it."""

import gc
import threading
import time
from collections.abc import Iterator

import pytest

import pyqueue
from pyqueue import _native


@pytest.fixture
def q():
    queue = pyqueue.TaskQueue(workers=2)
    yield queue
    queue.shutdown(wait=True, cancel_pending=True)


@pytest.fixture
def no_thread_leak():
    before = set(threading.enumerate())
    yield
    left = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    assert not left, f"threads left behind: {left}"


@pytest.fixture(autouse=True)
def engine_counters_back_to_zero() -> Iterator[None]:
    """In a PYQUEUE_DEBUG=1 build (make test-py-debug), every test must leave
    the engine holding nothing: no unfinished task, no ring reference, no
    native batch.  Dropped queues drain in their own threads, so the counters
    get a few seconds to settle."""
    yield
    counters = _native._debug_counters()
    if counters is None:  # a release build keeps no counters
        return
    deadline = time.monotonic() + 5
    while any(counters.values()) and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.01)  # polling a teardown invariant, not synchronising a test
        counters = _native._debug_counters() or {}
    assert not any(counters.values()), f"the engine still holds {counters}"
