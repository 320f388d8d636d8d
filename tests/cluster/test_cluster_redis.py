"""A coordinator on a Redis store, as operators run it: ``--store redis://...``,
real processes and a private redis-server (see redis_server.py)."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from pathlib import Path

import pyq_cluster_tasks as T
import pytest
from pyq_cluster_harness import check, wait_until
from redis_server import RedisServer, free_port

from pyqueue.cluster.config import generate_key
from pyqueue.cluster.local import child_env, cli_command

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    "sig, fsync",
    [(signal.SIGTERM, "everysec"), (signal.SIGKILL, "always")],
    ids=["sigterm", "kill-9-fsync-always"],
)
def test_a_redis_restart_mid_run_loses_no_acknowledged_task(harness, sig, fsync):
    server = RedisServer("--appendfsync", fsync)
    try:
        coord = harness.coordinator(server.url)
        harness.node(workers=2, name="n0")
        c = harness.client()
        harness.wait_nodes(c, 1)
        n = 1500
        handles = []
        restarted = threading.Event()

        def submitter():
            for i in range(n):
                handles.append(c.submit(T.square_plus, i, 3, task_id=f"job-{i}"))
                if i >= n // 3 and not restarted.is_set():
                    time.sleep(0.001)  # trickle until Redis is back

        th = threading.Thread(target=submitter)
        th.start()
        wait_until(lambda: len(handles) > n // 3, 30, "a third of the submits")
        server.restart(sig)
        restarted.set()
        th.join(60)
        delivered = [(t.id, t.result()) for t in c.results(timeout=90)]
        rep = check({f"job-{i}": i * i + 3 for i in range(n)}, delivered)
        assert rep.clean, rep
        assert coord.poll() is None, harness.log(coord)  # it rode out the outage
        # the whole log: resent DONEs after the outage may log many lines past it
        log = Path(coord.logfile).read_text(errors="replace")  # type: ignore[attr-defined]
        assert "store unavailable" in log and "Traceback" not in log  # one line each, no bug
        assert "store reachable again" in log
        assert {k: v for k, v in c.status()["tasks"].items() if v} == {"succeeded": n}
    finally:
        server.stop()


def _coordinator(*store: str) -> subprocess.CompletedProcess[str]:
    cmd = cli_command("coordinator", "--bind", f"127.0.0.1:{free_port()}", *store)
    return subprocess.run(
        cmd, env=child_env(generate_key()), capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("scheme", ["redis", "redis+cluster"])
def test_an_unreachable_redis_store_is_a_startup_error_naming_it_without_its_password(
    scheme,
):
    url = f"{scheme}://:s3cret@127.0.0.1:{free_port()}/0"
    done = _coordinator("--store", url)
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert "cannot open store" in last and f"127.0.0.1:{url.rsplit(':', 1)[1]}" in last
    assert "s3cret" not in done.stderr + done.stdout
    assert "***" in last


def test_a_redis_store_with_a_wrong_password_is_refused_at_startup():
    server = RedisServer(password="right")
    try:
        done = _coordinator("--store", server.url.replace(":right@", ":b4dpass@"))
        assert done.returncode == 2, done.stderr
        assert "authentication" in done.stderr and "b4dpass" not in done.stderr
    finally:
        server.stop()
