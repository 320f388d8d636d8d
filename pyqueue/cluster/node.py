"""A worker node: leases tasks from the coordinator and runs them on an executor.

Threads
-------
* the channel's reader thread: (re)connects, receives TASKS and DONE_ACKs;
* a sender thread: batches finished results into DONE frames and sends
  capacity updates;
* a heartbeat thread: sends HEARTBEAT every ``timings.heartbeat`` seconds.

Limitation: the heartbeat thread is a plain Python thread.  CPython hands the
GIL to it within the switch interval (5 ms) while pure-Python tasks run, so
those never make a node look dead; a C extension that holds the GIL for
longer than ``missed_heartbeats * heartbeat`` without releasing it would.

Results are kept until the coordinator acknowledges them and are resent after
a reconnect, so a result is never lost to a broken connection.  On a graceful
:meth:`Node.stop` the node asks for no more work, gives back every task that
has not started, finishes the running ones and waits for their acks.
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import logging
import os
import socket
import ssl
import threading
from typing import Any

from . import protocol as P
from .channel import Channel
from .config import DEFAULT_TIMINGS, Timings, load_key
from .protocol import MsgType
from .serialize import run_payload

__all__ = ["Node", "_make_executor"]

log = logging.getLogger("pyqueue.cluster.node")

_DONE_BATCH = 1024


def _make_executor(workers: int, kind: str = "pyqueue") -> cf.Executor:
    """Build the executor a node runs tasks on: ``"pyqueue"`` (the engine's
    Executor, the default) or ``"threads"`` (the stdlib thread pool, for
    comparison and debugging)."""
    if kind == "pyqueue":
        import pyqueue

        return pyqueue.Executor(max_workers=workers, thread_name_prefix="pyqueue-node-worker")
    if kind == "threads":
        return cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pyqueue-node-worker")
    raise ValueError(f"unknown executor kind {kind!r}: expected 'pyqueue' or 'threads'")


Key = tuple[str, int]


class Node:
    """Run tasks leased from a coordinator.

    Parameters
    ----------
    address : str
        ``"HOST:PORT"`` of the coordinator.
    key : bytes, optional
        Shared secret; defaults to :func:`~pyqueue.cluster.config.load_key`.
    workers : int
        Task slots (executor threads).
    prefetch : int, optional
        Extra tasks held ready beyond the free slots (default 8; it hides
        the round trip to the coordinator for short tasks).  The
        coordinator never has more than ``workers + prefetch`` outstanding here.
    executor : concurrent.futures.Executor or str, optional
        Where tasks run; an executor object, or a kind for
        :func:`_make_executor` (``"pyqueue"`` when omitted).
    timings : Timings
        Heartbeat interval comes from here.

    Thread safety
    -------------
    :meth:`start`, :meth:`stop` and :meth:`wait` may be called from any thread.
    """

    def __init__(
        self,
        address: str,
        *,
        key: bytes | None = None,
        workers: int | None = None,
        prefetch: int | None = None,
        executor: cf.Executor | str | None = None,
        name: str | None = None,
        timings: Timings = DEFAULT_TIMINGS,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.workers = workers if workers is not None else (os.cpu_count() or 1)
        if self.workers < 1:
            raise ValueError("workers must be at least 1")
        self.prefetch = 8 if prefetch is None else prefetch
        if self.prefetch < 0:
            raise ValueError("prefetch must be >= 0")
        self.capacity = self.workers + self.prefetch
        self.timings = timings
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self._own_executor = not isinstance(executor, cf.Executor)
        self.executor = (
            executor
            if isinstance(executor, cf.Executor)
            else _make_executor(self.workers, executor or "pyqueue")
        )
        # Re-entrant: a future that is already done runs its callback inside submit.
        self._lock = threading.RLock()
        self._held: dict[Key, cf.Future[Any]] = {}
        self._old_gen: set[Key] = set()  # still running from a previous connection
        self._unacked: dict[Key, list[Any]] = {}
        self._outbox: list[list[Any]] = []
        self._inflight: dict[int, list[Key]] = {}
        self._release: list[Key] = []
        self._credit_dirty = False
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self.stats = {
            "received": 0,
            "completed": 0,
            "accepted": 0,
            "duplicate": 0,
            "stale": 0,
            "unknown": 0,
            "released": 0,
            "max_held": 0,
        }
        self.channel = Channel(
            address,
            key if key is not None else load_key(),
            role="node",
            name=self.name,
            on_message=self._on_message,
            on_connect=self._on_connect,
            ssl_context=ssl_context,
        )
        self._sender = threading.Thread(
            target=self._send_loop, name="pyqueue-node-sender", daemon=True
        )
        self._heart = threading.Thread(
            target=self._heartbeat_loop, name="pyqueue-node-heartbeat", daemon=True
        )

    # -- lifecycle ------------------------------------------------------------
    def start(self) -> Node:
        """Connect (in the background) and start serving."""
        self.channel.start()
        self._sender.start()
        self._heart.start()
        return self

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the node has stopped."""
        return self._stopped.wait(timeout)

    def stop(self, timeout: float = 30.0) -> None:
        """Graceful shutdown: release unstarted tasks, finish running ones, flush results."""
        if self._stopping.is_set():
            self._stopped.wait(timeout)
            return
        self._stopping.set()
        with self._lock:
            self._credit_dirty = True
            for key, fut in list(self._held.items()):
                if fut.cancel():  # not started: give it back
                    del self._held[key]
                    self._release.append(key)
            self._wake.set()
        deadline = threading.Event()
        timer = threading.Timer(timeout, deadline.set)
        timer.daemon = True
        timer.start()
        try:
            while not deadline.is_set():
                with self._lock:
                    idle = not self._held and not self._unacked and not self._release
                if idle or not self.channel.connected and not self._held:
                    break
                deadline.wait(0.02)  # bounded poll of a condition spread over three threads
        finally:
            timer.cancel()
        with self._lock:
            left = len(self._unacked) + len(self._held)
        if left:
            log.warning(
                "stopping with unfinished work", extra={"event": "stop_unflushed", "left": left}
            )
        self.channel.close()
        self._wake.set()
        if self._own_executor:
            self.executor.shutdown(wait=False, cancel_futures=True)
        self._stopped.set()
        log.info("node stopped", extra={"event": "node_stopped", **self.stats})

    # -- channel callbacks (reader thread) ---------------------------------------
    def _on_connect(self) -> None:
        with self._lock:
            self._old_gen = set(self._held)
            self._inflight.clear()
            resend = list(self._unacked.values())
            self._outbox = []  # everything in it is in resend too
            cap = 0 if self._stopping.is_set() else max(0, self.capacity - len(self._old_gen))
            # Anything we were going to release belonged to the dead connection.
            self._release.clear()
        self.channel.send(MsgType.READY, {"capacity": cap, "name": self.name})
        if resend:
            log.info(
                "resending unacknowledged results", extra={"event": "resend", "count": len(resend)}
            )
            self._send_done(resend)

    def _on_message(self, msg: P.Message) -> None:
        if msg.type == MsgType.TASKS:
            self._on_tasks(msg.body["tasks"])
        elif msg.type == MsgType.DONE_ACK:
            with self._lock:
                keys = self._inflight.pop(msg.corr, None)
                if keys is None:
                    return
                for key, verdict in zip(keys, msg.body["status"]):
                    self._unacked.pop(key, None)
                    self.stats[verdict] = self.stats.get(verdict, 0) + 1
                    if verdict != "accepted":
                        log.info(
                            "result answered %s",
                            verdict,
                            extra={"event": "late_result", "task": key[0], "verdict": verdict},
                        )
        else:
            log.warning("unexpected message %s", msg.type.name)

    def _on_tasks(self, rows: list[list[Any]]) -> None:
        if self._stopping.is_set():
            with self._lock:
                self._release.extend((str(r[0]), int(r[1])) for r in rows)
                self._wake.set()
            return
        submit = self.executor.submit
        with self._lock:
            for tid, token, payload in rows:
                key = (tid, token)
                fut = submit(run_payload, tid, token, payload)
                self._held[key] = fut
                fut.add_done_callback(functools.partial(self._on_finished, key))
            self.stats["received"] += len(rows)
            if len(self._held) > self.stats["max_held"]:
                self.stats["max_held"] = len(self._held)

    def _on_finished(self, key: Key, fut: cf.Future[Any]) -> None:
        if fut.cancelled():
            return
        try:
            ok, value, error = fut.result()
        except BaseException as exc:  # run_payload never raises; an executor might
            ok, value, error = False, None, f"executor failure: {exc!r}"
        row = [key[0], key[1], ok, value, error]
        with self._lock:
            self._held.pop(key, None)
            if key in self._old_gen:
                self._old_gen.discard(key)
                self._credit_dirty = True
            self._unacked[key] = row
            self._outbox.append(row)
            self.stats["completed"] += 1
        self._wake.set()

    # -- sender thread ---------------------------------------------------------------
    def _send_done(self, rows: list[list[Any]]) -> None:
        for i in range(0, len(rows), _DONE_BATCH):
            chunk = rows[i : i + _DONE_BATCH]
            corr = self.channel.next_corr()
            with self._lock:
                self._inflight[corr] = [(r[0], r[1]) for r in chunk]
            if not self.channel.send(MsgType.DONE, {"results": chunk}, corr):
                with self._lock:
                    self._inflight.pop(corr, None)
                return  # kept in _unacked; resent on reconnect

    def _send_loop(self) -> None:
        while not self._stopped.is_set():
            self._wake.wait()
            self._wake.clear()
            if self._stopped.is_set():
                return
            with self._lock:
                rows, self._outbox = self._outbox, []
                release, self._release = self._release, []
                credit = None
                if self._credit_dirty:
                    self._credit_dirty = False
                    credit = (
                        0 if self._stopping.is_set() else max(0, self.capacity - len(self._old_gen))
                    )
            if credit is not None:
                self.channel.send(MsgType.CREDIT, {"capacity": credit})
            if rows:
                self._send_done(rows)
            if release:
                if self.channel.send(MsgType.RELEASE, {"tasks": [list(k) for k in release]}):
                    self.stats["released"] += len(release)

    def _heartbeat_loop(self) -> None:
        period = self.timings.heartbeat
        while not self._stopped.wait(period):
            self.channel.send(MsgType.HEARTBEAT, {})
