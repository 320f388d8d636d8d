"""Soak: a durable coordinator stays flat in memory and on disk through a
long run once retention purges what finished (bounded: about a minute here)."""

from __future__ import annotations

import os
import sqlite3
import time

import pyq_cluster_tasks as T
import pytest
from pyq_cluster_harness import wait_until

from pyqueue.cluster import LocalCluster

pytestmark = pytest.mark.slow

TASKS = 300_000
STEPS = 6


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_durable_coordinator_stays_flat_with_a_one_second_result_ttl(tmp_path):
    store = str(tmp_path / "soak.db")
    with LocalCluster(nodes=2, workers=1, store=store, result_ttl=1.0) as cluster:
        c = cluster.client
        pid = cluster.coordinator.pid
        step = TASKS // STEPS
        samples = []
        for _ in range(STEPS):
            for _ in c.map(T.noop, range(step)):
                pass
            samples.append(rss_bytes(pid))
        # over the second half of the run the coordinator grows < 200 bytes per task
        half = samples[STEPS // 2 - 1]
        per_task = (samples[-1] - half) / (step * (STEPS - STEPS // 2))
        assert per_task < 200, f"{per_task:.0f} bytes per task; samples {samples}"
        # one retention period later nothing finished is older than the TTL
        time.sleep(1.0)  # the retention period itself, not a synchronisation
        wait_until(lambda: c.status()["tasks"]["succeeded"] == 0, 10, "the purge")
        st = c.status()
        assert st["purged"] == TASKS
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
        assert db.execute("SELECT count(*) FROM tasks").fetchone()[0] == 0
