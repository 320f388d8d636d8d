"""Helpers for the unit tests."""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from pyqueue import _native


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


@pytest.fixture
def occupy() -> Iterator[Callable[[Any], tuple[Any, threading.Event]]]:
    """``occupy(q)`` submits a task that blocks one worker of ``q`` (a
    TaskQueue or an Executor) and returns ``(handle, gate)`` once a worker is
    running it; ``gate.set()`` lets it return True.  The task sets an event
    when it starts, so no test has to sleep and hope the worker took it."""
    gates: list[threading.Event] = []

    def start(q: Any) -> tuple[Any, threading.Event]:
        started, gate = threading.Event(), threading.Event()
        gates.append(gate)

        def block() -> bool:
            started.set()
            return gate.wait(10)

        handle = q.submit(block)
        assert started.wait(5), "no worker started the blocking task"
        return handle, gate

    yield start
    for gate in gates:  # never leave a worker blocked past its test
        gate.set()
