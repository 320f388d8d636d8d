"""Shared fixtures.  Every test gets a fresh queue that is shut down after it."""

import threading

import pytest

import pyqueue


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
