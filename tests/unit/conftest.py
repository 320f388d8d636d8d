"""Helpers for the unit tests."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest


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
