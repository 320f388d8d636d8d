"""Retention keeps a long-running coordinator bounded: finished tasks leave
memory and disk once their TTL has passed."""

from __future__ import annotations

import sqlite3
import time

import pyq_cluster_tasks as T
import pytest
from pyq_cluster_harness import wait_until

pytestmark = pytest.mark.slow


def test_finished_tasks_leave_memory_and_disk_after_the_ttl(harness, tmp_path):
    store = tmp_path / "q.db"
    harness.coordinator(str(store), True, "--result-ttl", "1")
    harness.node(workers=2, name="ret0")
    c = harness.client()
    harness.wait_nodes(c, 1)
    hs = [c.submit(T.square_plus, i, 0, task_id=f"r{i}") for i in range(2000)]
    assert [h.result(timeout=60) for h in hs] == [i * i for i in range(2000)]
    st = wait_until(
        lambda: (lambda s: s if s["tasks"]["succeeded"] == 0 else None)(c.status()),
        15,
        "the finished tasks to be purged",
    )
    assert st["purged"] == 2000
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:  # readable beside it
        assert db.execute("SELECT count(*) FROM tasks").fetchone()[0] == 0
    # a purged id is a new task: it runs again
    again = c.submit(T.square_plus, 3, 0, task_id="r3")
    assert again.result(timeout=20) == 9
    assert harness.executions()["r3"] == 2


def test_an_operator_purges_ahead_of_retention_from_the_client_and_the_cli(harness, tmp_path):
    store = tmp_path / "q.db"
    harness.coordinator(str(store), True)
    harness.node(workers=2, name="purge0")
    c = harness.client()
    harness.wait_nodes(c, 1)
    old = [c.submit(T.square_plus, i, 0, task_id=f"old{i}") for i in range(50)]
    assert [h.result(timeout=60) for h in old] == [i * i for i in range(50)]
    cut = time.time()
    new = [c.submit(T.square_plus, i, 1, task_id=f"new{i}") for i in range(20)]
    assert [h.result(timeout=60) for h in new] == [i * i + 1 for i in range(20)]
    with pytest.raises(ValueError, match="finished_before"):
        c.purge()  # nothing said: refused, nothing purged
    assert c.purge(cut) == 50  # only those that finished before the cut
    st = c.status()
    assert st["tasks"]["succeeded"] == 20 and st["purged"] == 50
    assert [h.result(timeout=5) for h in new][:3] == [1, 2, 5]  # delivered results stay
    out = harness.cli("purge", "--older-than", "0")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "purged 20 task(s)"
    refused = harness.cli("purge")
    assert refused.returncode == 2 and "say what to purge" in refused.stderr
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as db:
        assert db.execute("SELECT count(*) FROM tasks").fetchone()[0] == 0
