"""A client that submits and forgets stays flat in memory."""

from __future__ import annotations

import gc
import os

import pyq_cluster_tasks as T
import pytest
from pyq_cluster_harness import wait_until

pytestmark = pytest.mark.slow


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_fire_and_forget_client_grows_less_than_200_bytes_per_task(harness):
    harness.coordinator()
    harness.node(workers=1, prefetch=64, name="ff0")
    harness.node(workers=1, prefetch=64, name="ff1")
    c = harness.client()
    harness.wait_nodes(c, 2)
    done = 0

    def fire(n: int) -> None:
        nonlocal done
        for _ in range(n):
            c.submit(T.context)  # the handle is dropped at once
        done += n
        wait_until(lambda: c.status()["tasks"]["succeeded"] == done, 120, f"{done} tasks")

    fire(20_000)  # warm up allocator pools and caches
    gc.collect()
    before = rss_bytes()
    n = 200_000
    fire(n)
    gc.collect()
    per_task = (rss_bytes() - before) / n
    assert per_task < 200, f"client grew {per_task:.0f} bytes per task"
    assert len(c._tasks) == 0  # no handle kept alive by the client
    # results() with no argument still yields every task, fetched again by id
    yielded = list(c.results(timeout=120))
    assert len(yielded) == 20_000 + n
    assert all(t.result() == (t.id, 1) for t in yielded[:100])
