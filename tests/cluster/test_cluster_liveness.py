"""Liveness both ways: nodes and clients notice a coordinator that stopped
answering (SIGSTOP), reconnect, and after SIGCONT every task still yields
exactly one result."""

from __future__ import annotations

import signal

import pyq_cluster_tasks as T
import pytest
from pyq_cluster_harness import check, wait_until

from pyqueue.cluster.config import FAST_TIMINGS

pytestmark = pytest.mark.slow


def test_sigstopped_coordinator_is_noticed_and_nothing_is_lost(harness, tmp_path):
    coord = harness.coordinator(store=str(tmp_path / "q.db"))
    node = harness.node(workers=2, prefetch=4, name="live0")
    c = harness.client(timings=FAST_TIMINGS)
    harness.wait_nodes(c, 1)
    hs = [c.submit(T.slow, i, 0.01) for i in range(300)]
    wait_until(lambda: sum(h.done() for h in hs) > 10, 20, "some tasks to finish")
    before = c.channel.connections
    coord.send_signal(signal.SIGSTOP)
    try:
        # both sides notice within the dead interval (0.6 s here) and drop the link
        wait_until(lambda: not c.channel.connected, 5, "the client to notice")
        wait_until(lambda: "has not answered" in harness.log(node), 5, "the node to notice")
    finally:
        coord.send_signal(signal.SIGCONT)
    delivered = [(t.id, t.result()) for t in c.results(timeout=60)]
    rep = check({h.id: i for i, h in enumerate(hs)}, delivered)
    assert rep.clean, rep
    assert c.channel.connections > before  # it really reconnected
