"""No background thread dies silently: an exception injected into each sender,
receiver, heartbeat and the coordinator's flush is logged with its traceback,
and every task still completes exactly once (or its handle fails)."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from typing import Any, Callable

import pyq_cluster_tasks as T
import pytest
from pyq_cluster_harness import wait_until

from pyqueue.cluster import Client, Coordinator, Node
from pyqueue.cluster.config import FAST_TIMINGS
from pyqueue.cluster.protocol import MsgType

KEY = os.urandom(32)


class Injected(RuntimeError):
    """The exception these tests plant."""


def fail_once(fn: Callable[..., Any], when: Callable[..., bool]) -> Callable[..., Any]:
    """Wrap ``fn`` so that its first call for which ``when(*args)`` holds raises."""
    fired = threading.Event()

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not fired.is_set() and when(*args):
            fired.set()
            raise Injected("planted by the test")
        return fn(*args, **kwargs)

    wrapper.fired = fired  # type: ignore[attr-defined]
    return wrapper


@contextlib.contextmanager
def cluster() -> Iterator[tuple[Coordinator, Node, Client]]:
    coord = Coordinator(KEY, timings=FAST_TIMINGS)
    host, port = coord.start_in_thread()
    node = Node(f"{host}:{port}", key=KEY, workers=2, executor="threads", timings=FAST_TIMINGS)
    client = Client(f"{host}:{port}", key=KEY)
    try:
        yield coord, node, client
    finally:
        client.close()
        node.stop(5)
        coord.stop()


def run_all(client: Client, n: int = 200) -> None:
    hs = [client.submit(T.square_plus, i, 1) for i in range(n)]
    assert [h.result(timeout=30) for h in hs] == [i * i + 1 for i in range(n)]


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.exc_info and r.exc_info[0] is Injected and r.levelno >= logging.ERROR
    ]


def is_msg(mtype: MsgType) -> Callable[..., bool]:
    return lambda t, *rest: t == mtype


@pytest.mark.parametrize(
    "where",
    ["client-sender", "client-reader", "node-sender", "node-reader", "node-heartbeat", "flush"],
)
def test_injected_exception_is_logged_and_nothing_is_lost(where, caplog):
    caplog.set_level(logging.INFO, logger="pyqueue")
    with cluster() as (coord, node, client):
        if where == "client-sender":
            ch = client.channel
            ch.encode = fail_once(ch.encode, is_msg(MsgType.SUBMIT))  # type: ignore[method-assign]
            planted = ch.encode
        elif where == "client-reader":
            client._on_results = fail_once(client._on_results, lambda rows: True)  # type: ignore[method-assign]
            planted = client._on_results
        elif where == "node-sender":
            ch = node.channel
            ch.encode = fail_once(ch.encode, is_msg(MsgType.DONE))  # type: ignore[method-assign]
            planted = ch.encode
        elif where == "node-reader":
            node._on_tasks = fail_once(node._on_tasks, lambda rows: True)  # type: ignore[method-assign]
            planted = node._on_tasks
        elif where == "node-heartbeat":
            ch = node.channel
            ch.send = fail_once(ch.send, is_msg(MsgType.HEARTBEAT))  # type: ignore[method-assign]
            planted = ch.send
        else:
            b = coord.backend
            b.commit = fail_once(b.commit, lambda: True)  # type: ignore[method-assign]
            planted = b.commit
        node.start()
        run_all(client)
        wait_until(planted.fired.is_set, 10, "the planted exception to fire")
        if where == "node-heartbeat":  # the heartbeat thread kept beating afterwards
            wait_until(lambda: node._heart.is_alive(), 2, "heartbeat alive")
            run_all(client, 20)
        wait_until(lambda: tracebacks(caplog), 5, "the traceback in the log")
        # every thread is still alive and serving
        assert client.outbox._thread.is_alive() and node.outbox._thread.is_alive()
        assert client.channel._thread.is_alive() and node.channel._thread.is_alive()
        assert node._heart.is_alive()
        run_all(client, 50)


def test_a_submit_that_cannot_be_encoded_fails_its_handle(caplog):
    with cluster() as (_, node, client):
        node.start()
        real = client.channel.encode

        def refuse_marked(mtype: MsgType, body: dict[str, Any], corr: int = 0) -> bytes:
            if mtype == MsgType.SUBMIT and any(r[0] == "cannot-send" for r in body["tasks"]):
                raise ValueError("this row cannot be encoded")
            return real(mtype, body, corr)

        client.channel.encode = refuse_marked  # type: ignore[method-assign]
        bad = client.submit(T.square_plus, 1, 1, task_id="cannot-send")
        good = client.submit(T.square_plus, 2, 1)
        assert good.result(timeout=20) == 5
        with pytest.raises(ValueError, match="cannot be encoded"):
            bad.result(timeout=20)
        assert "cannot-send" not in client.outbox
