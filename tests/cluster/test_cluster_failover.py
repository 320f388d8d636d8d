"""Several coordinator addresses: nodes and clients connect to the first that
answers and move on to the next when it is lost.  With a standby coordinator
over the same durable store, that failover loses and doubles nothing."""

from __future__ import annotations

import json
import logging
import os
import socket
import sqlite3
import subprocess
from collections.abc import Iterator

import pyq_cluster_tasks as T
import pytest
from pyq_cluster_harness import check, wait_until
from redis_server import free_port

from pyqueue.cluster import Client, Coordinator, Node
from pyqueue.cluster.channel import Channel
from pyqueue.cluster.config import FAST_TIMINGS, parse_addresses
from pyqueue.cluster.local import cli_command

KEY = os.urandom(32)
WAIT = 20.0  # the bound on every wait below; each one normally ends at once


@pytest.fixture
def coordinators() -> Iterator[list[str]]:
    """Two in-process coordinators (memory stores, fast timings), as "HOST:PORT"."""
    made = [Coordinator(KEY, timings=FAST_TIMINGS) for _ in range(2)]
    try:
        yield [f"{h}:{p}" for h, p in (c.start_in_thread() for c in made)]
    finally:
        for c in made:
            c.stop()


def _switches(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [
        (r.previous, r.coordinator)  # type: ignore[attr-defined]
        for r in caplog.records
        if getattr(r, "event", None) == "coordinator_switch"
    ]


def test_parse_addresses():
    assert parse_addresses("10.0.0.1:80") == ["10.0.0.1:80"]
    assert parse_addresses("a:1,b:2") == parse_addresses(" a:1 , b:2 ") == ["a:1", "b:2"]
    assert parse_addresses(["a:1", "b:2"]) == parse_addresses(("a:1", "b:2")) == ["a:1", "b:2"]
    assert parse_addresses("[::1]:82,:83") == ["[::1]:82", ":83"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "no coordinator address given"),
        ([], "no coordinator address given"),
        ("a:1,nonsense", "address 'nonsense' must look like HOST:PORT"),
        (["a:1", "b:99999"], "address 'b:99999' has a bad port"),
        ("a:1,,b:2", "empty address in the list 'a:1,,b:2'"),
        ("a:1,", "empty address"),
        ("a:1,b:2,a:1", "address 'a:1' is in the list twice"),
        (":7878,127.0.0.1:7878", "address '127.0.0.1:7878' is in the list twice (as ':7878')"),
        (["a:1,b:2"], "one address per item"),
    ],
)
def test_bad_address_lists_are_refused_naming_the_culprit(value, message):
    with pytest.raises(ValueError) as err:
        parse_addresses(value)
    assert message in str(err.value)


def test_client_and_node_refuse_a_bad_address_before_connecting(monkeypatch):
    monkeypatch.delenv("PYQUEUE_KEY", raising=False)
    monkeypatch.delenv("PYQUEUE_KEY_FILE", raising=False)
    # checked before anything else: no key is configured, and nothing listens
    with pytest.raises(ValueError, match="address 'nonsense'"):
        Client(["127.0.0.1:9", "nonsense"], connect_timeout=0.1)
    with pytest.raises(ValueError, match="in the list twice"):
        Client("127.0.0.1:9,127.0.0.1:9", connect_timeout=0.1)
    with pytest.raises(ValueError, match="address 'x:y'"):
        Node("127.0.0.1:9,x:y", workers=1, executor="threads")
    with pytest.raises(ValueError, match="no coordinator address"):
        Node([], workers=1, executor="threads")


def test_single_address_behaves_as_before(coordinators, caplog):
    caplog.set_level(logging.INFO, logger="pyqueue.cluster.channel")
    a = coordinators[0]
    node = Node(a, key=KEY, workers=1, executor="threads", timings=FAST_TIMINGS).start()
    try:
        with Client(a, key=KEY, timings=FAST_TIMINGS) as c:
            assert (c.address, c.addresses) == (a, (a,))
            assert (c.channel.host, c.channel.port) == ("127.0.0.1", int(a.rsplit(":", 1)[1]))
            assert c.submit(T.square_plus, 3, 1).result(WAIT) == 10
            assert node.address == a and c.channel.connections == 1
    finally:
        node.stop(timeout=5)
    assert _switches(caplog) == []


def test_unreachable_first_address_connects_to_the_second(coordinators, caplog):
    caplog.set_level(logging.INFO, logger="pyqueue.cluster.channel")
    dead = f"127.0.0.1:{free_port()}"  # nobody listens there: refused
    good = coordinators[1]
    node = Node([dead, good], key=KEY, workers=1, executor="threads", timings=FAST_TIMINGS)
    node.start()
    try:
        with Client(f"{dead},{good}", key=KEY, timings=FAST_TIMINGS) as c:
            assert c.address == good and c.addresses == (dead, good)
            assert c.submit(T.square_plus, 4, 1).result(WAIT) == 17  # the node is there too
            assert node.address == good
    finally:
        node.stop(timeout=5)
    assert _switches(caplog) == []  # never connected to the first: no switch


def test_silent_first_address_times_out_and_the_second_answers(coordinators):
    silent = socket.create_server(("127.0.0.1", 0))  # accepts, never says a word
    dead = f"127.0.0.1:{silent.getsockname()[1]}"
    ch = Channel(
        [dead, coordinators[0]],
        KEY,
        role="client",
        name="silent-test",
        on_message=lambda msg: None,
        on_connect=lambda: None,
        handshake_timeout=0.3,
        timings=FAST_TIMINGS,
    )
    try:
        assert ch.address == dead  # the first, until a connection is made
        ch.start()
        assert ch.wait_connected(WAIT)
        assert ch.address == coordinators[0]
    finally:
        ch.close()
        silent.close()


def test_authentication_failure_on_one_address_does_not_stop_the_others(coordinators):
    other = Coordinator(os.urandom(32), timings=FAST_TIMINGS)  # another cluster's key
    h, p = other.start_in_thread()
    try:
        with Client([f"{h}:{p}", coordinators[0]], key=KEY, timings=FAST_TIMINGS) as c:
            assert c.address == coordinators[0]
            assert c.status()["nodes"] == []
    finally:
        other.stop()


def test_a_lost_coordinator_makes_the_client_move_to_the_next(caplog):
    caplog.set_level(logging.INFO, logger="pyqueue.cluster.channel")
    first, second = (Coordinator(KEY, timings=FAST_TIMINGS) for _ in range(2))
    a, b = (f"{h}:{p}" for h, p in (first.start_in_thread(), second.start_in_thread()))
    try:
        with Client([a, b], key=KEY, timings=FAST_TIMINGS) as c:
            assert c.address == a
            first.stop()
            wait_until(lambda: c.channel.connected and c.address == b, WAIT, "a switch to b")
            assert c.status()["nodes"] == []  # b answers
            assert _switches(caplog) == [(a, b)]  # one line, naming both
    finally:
        second.stop()


@pytest.mark.slow
def test_standby_coordinator_takes_over_a_durable_store_after_kill9(harness, tmp_path):
    store = str(tmp_path / "coord.db")
    harness.coordinator(store)
    a, b = harness.address, f"127.0.0.1:{free_port()}"  # b: the standby, not started yet
    workers, prefetch = 2, 2
    node = harness.node(workers, prefetch, "n0", connect=f"{a},{b}")  # the CLI parses the list
    c = harness.client([a, b])
    harness.wait_nodes(c, 1)
    n = 1000
    hs = [c.submit(T.slow, i, 0.004, task_id=f"job-{i}") for i in range(n)]
    expected = {h.id: i for i, h in enumerate(hs)}
    wait_until(lambda: sum(h.done() for h in hs) >= 100, 60, "100 tasks to end on a")
    harness.kill(harness.coord)  # kill -9 a mid-run; its store lock dies with it
    assert not all(h.done() for h in hs)  # the kill really landed mid-run
    harness.coordinator(store, True, port=int(b.rsplit(":", 1)[1]))  # b over the same file
    delivered = [(t.id, t.result()) for t in c.results(timeout=120)]
    rep = check(expected, delivered)
    assert rep.clean, rep  # 0 lost, 0 duplicate results
    assert c.address == b and c.channel.connections >= 2
    execs = harness.executions()
    assert set(execs) == set(expected)
    repeated = sum(k - 1 for k in execs.values())
    assert repeated <= workers + prefetch, f"{repeated} repeated executions"  # a's leases only
    db = sqlite3.connect(store)
    try:
        rows = db.execute("SELECT state, count(*) FROM tasks GROUP BY state").fetchall()
    finally:
        db.close()
    assert rows == [(3, n)], rows  # one row per task, every one SUCCEEDED
    wait_until(lambda: "switched from the coordinator at" in harness.log(node), 20, "node log")
    assert f"at {a} to the one at {b}" in harness.log(node)
    assert node.poll() is None
    harness.wait_nodes(c, 1)  # the node is b's now


def test_cli_status_takes_a_list_and_skips_an_unreachable_address(harness):
    harness.coordinator()
    dead = f"127.0.0.1:{free_port()}"
    out = subprocess.run(
        cli_command("status", "--json", "--connect", f"{dead},{harness.address}"),
        env=harness.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out
    assert json.loads(out.stdout)["nodes"] == []
