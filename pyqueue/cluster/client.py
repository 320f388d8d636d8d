"""Submit tasks to a cluster and collect their results.

A submit is *acknowledged* once the coordinator has written it to its store;
from then on it will run at least once and yield exactly one result.  Until
then the client keeps it and resubmits it after a reconnect (submits are
idempotent on the task id, so a resubmit never makes a second task).
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import ssl
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any, Callable

from pyqueue.errors import TaskCancelled, TaskDead, TaskLost

from . import protocol as P
from .channel import Channel
from .config import load_key
from .protocol import MsgType
from .serialize import decode_result, encode_call
from .store import TERMINAL, TaskState

__all__ = ["Client", "ClusterTask"]

log = logging.getLogger("pyqueue.cluster.client")

_SUBMIT_BATCH = 2048
_MISSING = object()


class ClusterTask:
    """Handle of one submitted task.

    Thread safety
    -------------
    All methods are thread-safe.
    """

    __slots__ = (
        "id",
        "_client",
        "_done",
        "_acked",
        "_state",
        "_ok",
        "_data",
        "_error",
        "_value",
        "_callbacks",
        "_lost",
        "__weakref__",
    )

    def __init__(self, task_id: str, client: Client) -> None:
        self.id = task_id
        self._client = client
        self._done = threading.Event()
        self._acked = threading.Event()
        self._state: TaskState | None = None
        self._ok = False
        self._data: bytes | None = None
        self._error: str | None = None
        self._value: Any = _MISSING
        self._callbacks: list[Callable[[ClusterTask], None]] = []
        self._lost = False

    def __repr__(self) -> str:
        state = (
            self._state.name
            if self._state is not None
            else ("ACKED" if self._acked.is_set() else "SENT")
        )
        return f"<ClusterTask {self.id} {state}>"

    @property
    def state(self) -> TaskState | None:
        """Terminal state once done, else None."""
        return self._state

    def acknowledged(self, timeout: float | None = None) -> bool:
        """Wait until the coordinator has durably accepted the submit."""
        return self._acked.wait(timeout)

    def done(self) -> bool:
        """True once the task has ended (any terminal state)."""
        return self._done.is_set()

    def result(self, timeout: float | None = None) -> Any:
        """The task's return value.

        Raises
        ------
        TimeoutError
            If it has not ended within ``timeout`` seconds.
        TaskDead, TaskCancelled
            If it was dead-lettered or cancelled.
        Exception
            Whatever the task raised (with the remote traceback as a note).
        """
        if not self._done.wait(timeout):
            raise TimeoutError(f"task {self.id} did not finish within {timeout} s")
        # Looked at: results() with no argument will not yield it again (and the
        # client stops holding it, so fire-and-check loops do not leak).
        self._client._collected(self.id)
        st = self._state
        if self._lost:
            raise TaskLost(f"task {self.id}: {self._error}")
        if st is TaskState.DEAD:
            raise TaskDead(f"task {self.id} was dead-lettered: {self._error}")
        if st is TaskState.CANCELLED:
            raise TaskCancelled(f"task {self.id} was cancelled")
        if self._value is _MISSING:
            try:
                self._value = ("ok", decode_result(self._ok, self._data, self._error))
            except BaseException as exc:
                self._value = ("raise", exc)
        kind, value = self._value
        if kind == "raise":
            raise value
        return value

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The exception :meth:`result` would raise, or None.

        Raises
        ------
        TimeoutError
            If the task has not ended within ``timeout`` seconds.
        """
        if not self._done.wait(timeout):
            raise TimeoutError(f"task {self.id} did not finish within {timeout} s")
        try:
            self.result(0)
        except BaseException as exc:
            return exc
        return None

    def cancel(self, timeout: float | None = 10.0) -> bool:
        """Cancel the task if it has not ended; True if the coordinator cancelled it."""
        if self._done.is_set():
            return False
        return self._client._cancel([self.id], timeout)[0]

    def add_done_callback(self, fn: Callable[[ClusterTask], None]) -> None:
        """Call ``fn(self)`` when the task ends (at once if it has)."""
        with self._client._lock:
            if not self._done.is_set():
                self._callbacks.append(fn)
                return
        fn(self)

    def _finish(
        self, state: TaskState, data: bytes | None, error: str | None
    ) -> list[Callable[[ClusterTask], None]]:
        self._state = state
        self._ok = state is TaskState.SUCCEEDED
        self._data = data
        self._error = error
        self._acked.set()
        self._done.set()
        cbs, self._callbacks = self._callbacks, []
        return cbs


class Client:
    """Connection to a coordinator, with the verbs of a TaskQueue.

    Parameters
    ----------
    address : str
        ``"HOST:PORT"`` of the coordinator.
    key : bytes, optional
        Shared secret; defaults to :func:`~pyqueue.cluster.config.load_key`.
    connect_timeout : float
        How long the constructor waits for the first connection.

    Thread safety
    -------------
    All public methods are thread-safe.
    """

    def __init__(
        self,
        address: str,
        *,
        key: bytes | None = None,
        name: str | None = None,
        connect_timeout: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.address = address
        self._lock = threading.RLock()
        self._tasks: dict[str, ClusterTask] = {}  # not yet ended
        self._unacked: dict[str, list[Any]] = {}  # submit rows not yet acknowledged
        self._outbox: list[list[Any]] = []
        self._inflight: dict[int, list[str]] = {}
        self._waits: set[int] = set()
        self._replies: dict[int, queue.SimpleQueue[dict[str, Any]]] = {}
        self._unyielded: dict[str, ClusterTask] = {}
        self._ids = itertools.count()
        self._prefix = f"{os.getpid():x}-{os.urandom(4).hex()}-"
        self._wake = threading.Event()
        self._closed = threading.Event()
        self.duplicate_pushes = 0
        self.channel = Channel(
            address,
            key if key is not None else load_key(),
            role="client",
            name=name or f"client:{os.getpid()}",
            on_message=self._on_message,
            on_connect=self._on_connect,
            ssl_context=ssl_context,
        )
        self._sender = threading.Thread(
            target=self._send_loop, name="pyqueue-client-sender", daemon=True
        )
        self.channel.start()
        self._sender.start()
        if not self.channel.wait_connected(connect_timeout):
            self.close()
            raise ConnectionError(
                f"could not connect to the coordinator at {address} within {connect_timeout} s"
                + (f": {self.channel.fatal}" if self.channel.fatal else "")
            )

    # -- context manager -----------------------------------------------------------
    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Disconnect.  Unacknowledged submits are abandoned."""
        self._closed.set()
        self._wake.set()
        self.channel.close()

    # -- submit ---------------------------------------------------------------
    def submit(
        self, fn: Callable[..., Any], /, *args: Any, task_id: str | None = None, **kwargs: Any
    ) -> ClusterTask:
        """Submit ``fn(*args, **kwargs)``; returns its handle at once.

        ``task_id`` makes the submit idempotent: submitting an id the
        coordinator knows returns a handle to the existing task.
        """
        return self.submit_call(fn, args, kwargs, task_id=task_id)

    def submit_call(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        task_id: str | None = None,
        retries: int = 0,
        backoff: float = 1.0,
        delay: float = 0.0,
    ) -> ClusterTask:
        """Submit with options.

        Parameters
        ----------
        retries : int
            How many times to rerun the task when it raises (default none).
        backoff : float
            Delay before the first retry; doubles each time, with jitter.
        delay : float
            Seconds to wait before the task may run (it starts SCHEDULED).
        """
        if self._closed.is_set():
            raise RuntimeError("client is closed")
        payload = encode_call(fn, args, kwargs or {})
        tid = task_id if task_id is not None else self._prefix + str(next(self._ids))
        if not isinstance(tid, str) or not tid or len(tid) > 512:
            raise ValueError("task_id must be a non-empty string of at most 512 characters")
        row = [
            tid,
            payload,
            int(retries),
            float(backoff),
            time.time() + delay if delay > 0 else 0.0,
        ]
        with self._lock:
            handle = self._tasks.get(tid)
            if handle is None:
                handle = ClusterTask(tid, self)
                self._tasks[tid] = handle
                self._unyielded[tid] = handle
            self._unacked[tid] = row
            self._outbox.append(row)
        self._wake.set()
        return handle

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        window: int = 10000,
    ) -> Iterator[Any]:
        """Like ``map(fn, *iterables)``: results in order, at most ``window`` tasks ahead."""
        pending: deque[ClusterTask] = deque()
        deadline = None if timeout is None else time.monotonic() + timeout
        for args in zip(*iterables):
            t = self.submit_call(fn, args)
            with self._lock:
                self._unyielded.pop(t.id, None)  # map() consumes its own results
            pending.append(t)
            if len(pending) >= window:
                yield pending.popleft().result(_left(deadline))
        while pending:
            yield pending.popleft().result(_left(deadline))

    def results(
        self, tasks: Iterable[ClusterTask] | None = None, timeout: float | None = None
    ) -> Iterator[ClusterTask]:
        """Yield tasks in completion order.

        With no argument: every task submitted through this client that was
        not yet yielded by an earlier ``results()`` call nor collected with
        ``result()``/``exception()``.

        Raises
        ------
        TimeoutError
            If ``timeout`` seconds pass before all have ended.
        """
        if tasks is None:
            with self._lock:
                todo = list(self._unyielded.values())
                self._unyielded.clear()
        else:
            todo = list(tasks)
        done_q: queue.SimpleQueue[ClusterTask] = queue.SimpleQueue()
        for t in todo:
            t.add_done_callback(done_q.put)
        deadline = None if timeout is None else time.monotonic() + timeout
        for _ in range(len(todo)):
            try:
                yield done_q.get(timeout=_left(deadline))
            except queue.Empty:
                raise TimeoutError(f"results() timed out after {timeout} s") from None

    def _collected(self, task_id: str) -> None:
        if task_id in self._unyielded:
            with self._lock:
                self._unyielded.pop(task_id, None)

    # -- admin -------------------------------------------------------------------------
    def _request(
        self, mtype: MsgType, body: dict[str, Any], timeout: float | None
    ) -> dict[str, Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            corr = self.channel.next_corr()
            q: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
            with self._lock:
                self._replies[corr] = q
            try:
                if self.channel.send(mtype, body, corr):
                    try:
                        # A reply lost to a reconnect is retried after a bounded wait.
                        return q.get(timeout=min(_left(deadline) or 5.0, 5.0))
                    except queue.Empty:
                        pass
                elif not self.channel.wait_connected(min(_left(deadline) or 1.0, 1.0)):
                    pass
            finally:
                with self._lock:
                    self._replies.pop(corr, None)
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"no reply to {mtype.name} within {timeout} s")

    def _cancel(self, ids: list[str], timeout: float | None) -> list[bool]:
        return [bool(x) for x in self._request(MsgType.CANCEL, {"ids": ids}, timeout)["cancelled"]]

    def status(self, timeout: float | None = 10.0) -> dict[str, Any]:
        """The coordinator's status: nodes, queue depth, in flight, dead, counters."""
        return self._request(MsgType.STATUS, {}, timeout)

    def dead_tasks(self, limit: int = 100, timeout: float | None = 10.0) -> list[dict[str, Any]]:
        """Summaries of dead-lettered tasks."""
        return list(self._request(MsgType.DEAD_LIST, {"limit": limit}, timeout)["tasks"])

    def requeue(self, ids: list[str], timeout: float | None = 10.0) -> list[bool]:
        """Requeue dead-lettered tasks; True for each one requeued.

        Get handles for them with :meth:`wait_for`.
        """
        return [
            bool(x) for x in self._request(MsgType.REQUEUE, {"ids": list(ids)}, timeout)["requeued"]
        ]

    def wait_for(self, task_id: str) -> ClusterTask:
        """A handle for a task submitted elsewhere (or requeued) that ends later."""
        with self._lock:
            handle = self._tasks.get(task_id)
            if handle is None:
                handle = ClusterTask(task_id, self)
                handle._acked.set()
                self._tasks[task_id] = handle
        self.channel.send(MsgType.WAIT, {"ids": [task_id]})
        return handle

    # -- channel callbacks ------------------------------------------------------------
    def _on_connect(self) -> None:
        with self._lock:
            self._inflight.clear()
            self._outbox = list(self._unacked.values())
            waiting = [tid for tid in self._tasks if tid not in self._unacked]
        for i in range(0, len(waiting), _SUBMIT_BATCH):
            corr = self.channel.next_corr()
            with self._lock:
                self._waits.add(corr)
            self.channel.send(MsgType.WAIT, {"ids": waiting[i : i + _SUBMIT_BATCH]}, corr)
        self._wake.set()

    def _on_message(self, msg: P.Message) -> None:
        if msg.type == MsgType.RESULTS:
            self._on_results(msg.body["results"])
        elif msg.type == MsgType.SUBMIT_ACK and msg.corr in self._waits:
            self._on_wait_reply(msg.corr, msg.body.get("unknown", []))
        elif msg.type == MsgType.SUBMIT_ACK:
            with self._lock:
                ids = self._inflight.pop(msg.corr, None)
                if ids is None:
                    return
                for tid in ids:
                    self._unacked.pop(tid, None)
                    h = self._tasks.get(tid)
                    if h is not None:
                        h._acked.set()
        else:
            with self._lock:
                q = self._replies.get(msg.corr)
            if q is not None:
                q.put(msg.body)

    def _on_wait_reply(self, corr: int, unknown: list[str]) -> None:
        # Acknowledged tasks the coordinator no longer knows: it restarted
        # without a durable store.  Fail them loudly instead of waiting forever.
        callbacks = []
        with self._lock:
            self._waits.discard(corr)
            for tid in unknown:
                h = self._tasks.pop(tid, None)
                if h is not None:
                    h._lost = True
                    msg = "the coordinator does not know this task (restarted without --store?)"
                    callbacks.append((h, h._finish(TaskState.DEAD, None, msg)))
        if unknown:
            log.error(
                "tasks lost by the coordinator",
                extra={"event": "tasks_lost", "count": len(unknown)},
            )
        for h, cbs in callbacks:
            for cb in cbs:
                cb(h)

    def _on_results(self, rows: list[list[Any]]) -> None:
        callbacks = []
        with self._lock:
            for tid, state, data, error in rows:
                h = self._tasks.pop(tid, None)
                if h is None:
                    self.duplicate_pushes += 1  # e.g. pushed again after a resubmit
                    continue
                self._unacked.pop(tid, None)
                st = TaskState(state)
                if st not in TERMINAL:
                    continue
                callbacks.append((h, h._finish(st, data, error)))
        for h, cbs in callbacks:
            for cb in cbs:
                try:
                    cb(h)
                except Exception:
                    log.exception("done callback failed")

    def _send_loop(self) -> None:
        while not self._closed.is_set():
            self._wake.wait()
            self._wake.clear()
            if not self.channel.connected:
                continue  # _on_connect refills the outbox
            with self._lock:
                rows, self._outbox = self._outbox, []
            for i in range(0, len(rows), _SUBMIT_BATCH):
                chunk = rows[i : i + _SUBMIT_BATCH]
                corr = self.channel.next_corr()
                with self._lock:
                    self._inflight[corr] = [r[0] for r in chunk]
                if not self.channel.send(MsgType.SUBMIT, {"tasks": chunk}, corr):
                    break  # still in _unacked: resent by _on_connect


def _left(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    return max(0.0, deadline - time.monotonic())
