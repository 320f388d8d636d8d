"""A loopback proxy that cuts every connection, repeatedly, under load."""

from __future__ import annotations

import random
import time

import pyq_cluster_tasks as T
import pytest
from pyq_cluster_harness import check, wait_until
from pyq_cluster_proxy import CuttingProxy

pytestmark = pytest.mark.slow


def test_cut_connections_lose_and_double_nothing(harness):
    rng = random.Random(99)
    harness.coordinator()
    host, port = harness.address.rsplit(":", 1)
    proxy = CuttingProxy((host, int(port)))
    try:
        direct = harness.client()
        harness.address = (
            f"127.0.0.1:{proxy.port}"  # nodes and the working client go through the proxy
        )
        for i in range(2):
            harness.node(workers=2, prefetch=4, name=f"p{i}")
        c = harness.client()
        harness.wait_nodes(direct, 2)
        hs = [c.submit(T.slow, i, rng.uniform(0.0, 0.01)) for i in range(600)]
        cuts = 0
        while not all(h.done() for h in hs) and cuts < 6:
            time.sleep(rng.uniform(0.1, 0.3))
            cuts += proxy.cut() > 0
        delivered = [(t.id, t.result()) for t in c.results(timeout=60)]
        rep = check({h.id: i for i, h in enumerate(hs)}, delivered)
        assert rep.clean, rep
        assert cuts >= 2 and proxy.accepted > 3  # connections really were cut and re-made
        st = wait_until(
            lambda: (lambda s: s if len(s["nodes"]) == 2 else None)(direct.status()),
            20,
            "nodes back",
        )
        assert st["tasks"]["succeeded"] == 600
        execs = harness.executions()
        assert set(execs) == {h.id for h in hs}
    finally:
        proxy.close()
