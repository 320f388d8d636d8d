"""The stress tests, like the unit tests, must leave the engine holding
nothing (checked in a PYQUEUE_DEBUG=1 build: make test-py-debug)."""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator

import pytest

from pyqueue import _native


@pytest.fixture(autouse=True)
def engine_counters_back_to_zero() -> Iterator[None]:
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
