"""A coordinator that sends a bad body: the node or client drops that
connection as for any protocol error, reconnects and resends what was not
acknowledged; nothing is lost or forgotten.  And the client refuses, with a
ValueError, what a coordinator would have to refuse."""

from __future__ import annotations

import contextlib
import logging
import math
import operator
import os
import pickle
import queue
import socket
import threading
from collections.abc import Iterator
from typing import Any, Callable

import pytest

from pyqueue.cluster import Client, Node
from pyqueue.cluster import protocol as P
from pyqueue.cluster.config import FAST_TIMINGS
from pyqueue.cluster.protocol import MsgType
from pyqueue.cluster.serialize import encode_call

KEY = os.urandom(32)
WAIT = 20.0  # the bound on every wait below; each one normally ends at once

# (connection number, message) -> the frames to answer with: (type, body, corr)
Script = Callable[[int, P.Message], list[tuple[MsgType, dict[str, Any], int]]]


class FakeCoordinator:
    """Serves one peer at a time with the protocol's own Connection and
    answers its messages as ``script`` says; HEARTBEATs are answered."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.lsock = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.lsock.getsockname()[1]}"
        self.seen: queue.SimpleQueue[tuple[int, P.Message]] = queue.SimpleQueue()
        self.connections = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def next(self, mtype: MsgType) -> tuple[int, P.Message]:
        """The next message of type ``mtype`` the peer sent (skipping others)."""
        while True:
            n, msg = self.seen.get(timeout=WAIT)
            if msg.type == mtype:
                return n, msg

    def _serve(self) -> None:
        while True:
            try:
                sock, _ = self.lsock.accept()
            except OSError:
                return  # closed
            self.connections += 1
            with sock:
                self._talk(self.connections, sock)

    def _talk(self, n: int, sock: socket.socket) -> None:
        conn = P.Connection(KEY, server=True)
        try:
            while data := sock.recv(65536):
                for ev in conn.receive_data(data):
                    if not isinstance(ev, P.Message):
                        continue
                    if ev.type == MsgType.HEARTBEAT:
                        conn.send(MsgType.HEARTBEAT_ACK, {})
                        continue
                    self.seen.put((n, ev))
                    for mtype, body, corr in self.script(n, ev):
                        conn.send(mtype, body, corr)
                sock.sendall(conn.data_to_send())
        except OSError:
            pass  # the peer dropped us: what these tests make it do

    def close(self) -> None:
        self.lsock.close()


@pytest.fixture
def fake() -> Iterator[Callable[[Script], FakeCoordinator]]:
    made: list[FakeCoordinator] = []

    def make(script: Script) -> FakeCoordinator:
        made.append(FakeCoordinator(script))
        return made[-1]

    yield make
    for f in made:
        f.close()


@contextlib.contextmanager
def running_node(coord: FakeCoordinator) -> Iterator[Node]:
    node = Node(coord.address, key=KEY, workers=1, executor="threads", timings=FAST_TIMINGS)
    node.start()
    try:
        yield node
    finally:
        node.stop(timeout=5)


def test_client_drops_a_connection_with_bad_results_and_resubmits(fake, caplog):
    caplog.set_level(logging.WARNING, logger="pyqueue")

    def script(n: int, msg: P.Message) -> list[tuple[MsgType, dict[str, Any], int]]:
        if msg.type != MsgType.SUBMIT:
            return []
        tid = msg.body["tasks"][0][0]
        if n == 1:  # a value that is not bytes: the client must not take it
            return [(MsgType.RESULTS, {"results": [[tid, 3, "not bytes", None]]}, 0)]
        return [
            (MsgType.SUBMIT_ACK, {"states": [1]}, msg.corr),
            (MsgType.RESULTS, {"results": [[tid, 3, pickle.dumps(42), None]]}, 0),
        ]

    coord = fake(script)
    with Client(coord.address, key=KEY, timings=FAST_TIMINGS) as client:
        task = client.submit(operator.add, 40, 2)
        assert task.result(timeout=WAIT) == 42
        first, _ = coord.next(MsgType.SUBMIT)
        again, resent = coord.next(MsgType.SUBMIT)
        assert (first, again) == (1, 2)  # the same submit, resent on the new connection
        assert resent.body["tasks"][0][0] == task.id
        assert client.channel.connections == 2
    assert any("bad RESULTS body" in r.getMessage() for r in caplog.records)


def test_client_keeps_an_unacknowledged_submit_when_the_ack_is_bad(fake):
    def script(n: int, msg: P.Message) -> list[tuple[MsgType, dict[str, Any], int]]:
        if msg.type != MsgType.SUBMIT:
            return []
        states = ["PENDING"] if n == 1 else [1]  # a name where the value is wanted
        return [(MsgType.SUBMIT_ACK, {"states": states}, msg.corr)]

    coord = fake(script)
    with Client(coord.address, key=KEY, timings=FAST_TIMINGS) as client:
        task = client.submit(operator.add, 1, 2)
        assert task.acknowledged(WAIT)
        assert [coord.next(MsgType.SUBMIT)[0] for _ in range(2)] == [1, 2]


def test_client_request_with_a_reply_of_the_wrong_type_is_asked_again(fake):
    status = {
        "nodes": [],
        "queue_depth": 0,
        "in_flight": 0,
        "dead": 0,
        "tasks": {"pending": 0},
        "completions": {},
        "purged": 0,
        "peers": 1,
        "rejected_peers": 0,
    }

    def script(n: int, msg: P.Message) -> list[tuple[MsgType, dict[str, Any], int]]:
        if msg.type != MsgType.STATUS:
            return []
        if n == 1:  # a well-formed answer to another question
            return [(MsgType.REQUEUE_ACK, {"requeued": []}, msg.corr)]
        if n == 2:  # the right type with a bad body
            return [(MsgType.STATUS_REPLY, {**status, "queue_depth": -1}, msg.corr)]
        return [(MsgType.STATUS_REPLY, status, msg.corr)]

    coord = fake(script)
    with Client(coord.address, key=KEY, timings=FAST_TIMINGS) as client:
        assert client.status(timeout=WAIT) == {**status, "queues": [], "schedules": []}
        assert [coord.next(MsgType.STATUS)[0] for _ in range(3)] == [1, 2, 3]


def test_node_drops_a_connection_with_bad_tasks_and_runs_the_good_ones(fake):
    payload = encode_call(operator.mul, (6, 7), {})

    def script(n: int, msg: P.Message) -> list[tuple[MsgType, dict[str, Any], int]]:
        if msg.type == MsgType.READY and n == 1:  # a token that is not an int
            return [(MsgType.TASKS, {"tasks": [["t1", "1", payload]]}, 0)]
        if msg.type == MsgType.READY:
            return [(MsgType.TASKS, {"tasks": [["t1", 1, payload]]}, 0)]
        if msg.type == MsgType.DONE:
            return [(MsgType.DONE_ACK, {"status": ["accepted"]}, msg.corr)]
        return []

    coord = fake(script)
    with running_node(coord) as node:
        n, done = coord.next(MsgType.DONE)
        assert n == 2
        tid, token, ok, value, error, cancelled, run_s = done.body["results"][0]
        assert (tid, token, ok, error, cancelled) == ("t1", 1, True, None, False)
        assert isinstance(run_s, float) and run_s >= 0.0  # the node measured it
        assert pickle.loads(value) == 42
        assert node.stats["received"] == 1  # the bad TASKS ran nothing


def test_node_resends_a_result_whose_ack_was_bad(fake):
    payload = encode_call(operator.mul, (2, 3), {})

    def script(n: int, msg: P.Message) -> list[tuple[MsgType, dict[str, Any], int]]:
        if msg.type == MsgType.READY and n == 1:
            return [(MsgType.TASKS, {"tasks": [["t1", 1, payload]]}, 0)]
        if msg.type == MsgType.DONE:
            verdict = "maybe" if n == 1 else "accepted"
            return [(MsgType.DONE_ACK, {"status": [verdict]}, msg.corr)]
        return []

    coord = fake(script)
    with running_node(coord) as node:
        first, done1 = coord.next(MsgType.DONE)
        again, done2 = coord.next(MsgType.DONE)
        assert (first, again) == (1, 2)
        assert done1.body == done2.body  # the result was kept until a good ack
        # on the wire: all six fields of the row, and the run time the node measured
        assert len(done2.body["results"][0]) == 7
    assert node.stats["accepted"] == 1
    assert "maybe" not in node.stats


# -- what the client refuses before sending ------------------------------------------


@pytest.fixture
def client(fake) -> Iterator[Client]:
    coord = fake(lambda n, msg: [])
    with Client(coord.address, key=KEY, timings=FAST_TIMINGS) as c:
        yield c


@pytest.mark.parametrize(
    ("option", "match"),
    [
        ({"retries": -1}, "retries must be in"),
        ({"backoff": math.nan}, "backoff must be finite"),
        ({"backoff": -0.5}, "backoff must not be negative"),
        ({"delay": math.inf}, "not_before must be finite"),
        ({"result_ttl": -1.0}, "result_ttl must not be negative"),
        ({"result_ttl": math.inf}, "result_ttl must be finite"),
    ],
)
def test_submit_refuses_an_option_the_coordinator_would_refuse(client, option, match):
    with pytest.raises(ValueError, match=match):
        client.submit_call(operator.add, (1, 2), **option)
    assert len(client.outbox) == 0  # nothing queued to be resent forever


@pytest.mark.parametrize("bad", ["", "x" * 513, 7], ids=["empty", "too-long", "not-a-str"])
def test_wait_for_and_requeue_refuse_what_is_not_a_task_id(client, bad):
    with pytest.raises(ValueError, match="task id"):
        client.wait_for(bad)
    with pytest.raises(ValueError, match="task id"):
        client.requeue(["ok", bad])


@pytest.mark.parametrize("bad", [-1, True, 2.0, "10"])
def test_dead_tasks_refuses_a_bad_limit(client, bad):
    with pytest.raises(ValueError, match="limit must be a non-negative int"):
        client.dead_tasks(bad)
