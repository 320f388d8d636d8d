"""Submit tasks to a cluster and collect their results.

A submit is *acknowledged* once the coordinator has written it to its store;
from then on it will run at least once and yield exactly one result.  Until
then the client keeps it in its outbox and resubmits it after a reconnect
(submits are idempotent on the task id, so a resubmit never makes a second
task).

Memory: the client holds a task's handle only weakly, so a program that
submits and forgets (fire-and-forget) stays flat in memory.  What it keeps
per task is the submit itself until it is acknowledged, then only a note
that :meth:`Client.results` has not yielded it yet: one bit for an id the
client made, the id itself for one you chose; a result that
arrives for a handle nobody holds any more is dropped, and fetched again from
the coordinator if ``results()`` asks for it later.
"""

from __future__ import annotations

import datetime
import itertools
import logging
import math
import operator
import os
import queue
import ssl
import threading
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Generator, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Callable, Generic, Literal, TypeVar, overload

from pyqueue import _aio as aio
from pyqueue._aio import await_handle
from pyqueue.errors import PayloadTooLarge, TaskCancelled, TaskDead, TaskLost, UnexpectedMessage

from . import messages as M
from . import protocol as P
from ._outbox import Outbox
from .channel import Channel
from .config import DEFAULT_TIMINGS, Timings, load_key, parse_addresses
from .protocol import MsgType
from .schedules import Schedule, ScheduleSpec
from .schedules import check as check_schedule
from .serialize import decode_result, encode_call
from .states import (
    CANCELLED,
    DEAD,
    DEFAULT_QUEUE,
    SUCCEEDED,
    TERMINAL,
    Outcome,
    SubmitSpec,
    TaskState,
)

if TYPE_CHECKING:  # typing.ParamSpec is 3.10+; only the type checker needs it
    from typing import ParamSpec

    Params = ParamSpec("Params")

__all__ = ["Client", "ClusterTask"]

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)

log = logging.getLogger("pyqueue.cluster.client")

_MISSING = object()
_Reply = TypeVar("_Reply", bound=M.AppMessage)


def _check_queue(name: object) -> None:
    why = M.queue_problem(name)
    if why is not None:
        raise ValueError(why)


def _not_before(delay: float, eta: float | datetime.datetime | None) -> float:
    """The wall-clock time a task may run from (0.0: at once)."""
    if eta is not None:
        if delay:
            raise ValueError("give delay= or eta=, not both")
        if isinstance(eta, datetime.datetime):
            if eta.tzinfo is None or eta.utcoffset() is None:
                raise ValueError(
                    "eta= must be an aware datetime (with tzinfo), or epoch seconds;"
                    " a naive one has no single meaning"
                )
            return eta.timestamp()
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not math.isfinite(eta):
            raise ValueError(f"eta= must be an aware datetime or epoch seconds, not {eta!r}")
        return float(eta) if eta > time.time() else 0.0
    if isinstance(delay, bool) or not isinstance(delay, (int, float)):
        raise ValueError(f"delay= is a number of seconds, not {delay!r}")
    if delay < 0:
        raise ValueError(f"delay= must not be negative, got {delay}")
    return time.time() + delay if delay > 0 else 0.0


def _check_time_limit(value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"time_limit= is a number of seconds or None, not {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"time_limit= must be a finite number of seconds > 0, got {value!r}")


#: tasks purged per PURGE request (the coordinator caps it too)
_PURGE_BATCH = 10_000


class _SerialSet:
    """A set of small non-negative integers, one bit each (the serial numbers
    of the ids a client makes)."""

    __slots__ = ("_bits", "count")

    def __init__(self) -> None:
        self._bits = bytearray()
        self.count = 0  # members (read as an attribute on the hot path: len() is a call)

    def add(self, n: int) -> None:
        byte, bit = n >> 3, 1 << (n & 7)
        if byte >= len(self._bits):
            self._bits.extend(bytes(max(byte + 1 - len(self._bits), len(self._bits) // 2)))
        if not self._bits[byte] & bit:
            self._bits[byte] |= bit
            self.count += 1

    def discard(self, n: int) -> None:
        byte, bit = n >> 3, 1 << (n & 7)
        if byte < len(self._bits) and self._bits[byte] & bit:
            self._bits[byte] &= ~bit & 0xFF
            self.count -= 1

    def __len__(self) -> int:
        return self.count

    def take(self) -> list[int]:
        """Every member, in order; the set is left empty."""
        out = [(i << 3) | b for i, v in enumerate(self._bits) if v for b in range(8) if v >> b & 1]
        self._bits = bytearray()
        self.count = 0
        return out


_new = tuple.__new__
#: what _finish returns when no callback was added (shared: only iterated)
_NO_CALLBACKS: list[Any] = []


# by index: a namedtuple's field names cost a descriptor call each, twice per task
# here; the key is an itemgetter (the id), which makes no Python call at all
_submit_key: Callable[[SubmitSpec], str] = operator.itemgetter(0)


def _submit_size(row: SubmitSpec) -> int:
    return len(row[0]) + len(row[1]) + 32


class ClusterTask(Generic[T_co]):
    """Handle of one submitted task.

    Thread safety
    -------------
    All methods are thread-safe.
    """

    __slots__ = (
        "id",
        "_client",
        "_acked",
        "_state",
        "_data",
        "_error",
        "_value",
        "_callbacks",
        "_lost",
        "__weakref__",
    )

    def __init__(self, task_id: str, client: Client, acked: bool = False) -> None:
        self.id = task_id
        self._client = client
        self._acked = acked
        self._state: TaskState | None = None  # set once, when the task ends
        self._data: bytes | None = None
        self._error: str | None = None
        self._value: Any = _MISSING
        self._callbacks: list[Callable[[ClusterTask[T_co]], None]] | None = None
        self._lost = False

    def __repr__(self) -> str:
        state = (
            self._state.name if self._state is not None else ("ACKED" if self._acked else "SENT")
        )
        return f"<ClusterTask {self.id} {state}>"

    @property
    def state(self) -> TaskState | None:
        """Terminal state once done, else None."""
        return self._state

    def acknowledged(self, timeout: float | None = None) -> bool:
        """Wait until the coordinator has durably accepted the submit."""
        return self._client._wait(lambda: self._acked, timeout)

    def done(self) -> bool:
        """True once the task has ended (any terminal state)."""
        return self._state is not None

    def cancelled(self) -> bool:
        """True if the task ended cancelled."""
        return self._state is TaskState.CANCELLED

    def __await__(self) -> Generator[Any, None, T_co]:
        """``await task``: its value, on any running loop (see :mod:`pyqueue._aio`).

        Cancelling the awaiting coroutine does not cancel the task; a
        cancelled task raises an ``asyncio.CancelledError``.
        """
        return await_handle(self)

    def _wait_done(self, timeout: float | None) -> None:
        if self._state is None and not self._client._wait(lambda: self._state is not None, timeout):
            raise TimeoutError(f"task {self.id} did not finish within {timeout} s")

    def result(self, timeout: float | None = None) -> T_co:
        """The task's return value.

        Raises
        ------
        TimeoutError
            If it has not ended within ``timeout`` seconds.
        TaskDead, TaskCancelled
            If it was dead-lettered or cancelled.
        PayloadTooLarge
            If its argument or result was larger than the cluster's limit.
        Exception
            Whatever the task raised (with the remote traceback as a note).
        """
        if self._state is None:  # (no call at all for a task that has ended)
            self._wait_done(timeout)
        # Looked at: results() with no argument will not yield it again.
        self._client._collected(self.id)
        if self._value is _MISSING:
            try:
                self._value = ("ok", self._decode())
            except BaseException as exc:
                self._value = ("raise", exc)
        kind, value = self._value
        if kind == "raise":
            raise value
        return value  # type: ignore[no-any-return]  # (no cast() call per result)

    def _decode(self) -> Any:
        st = self._state
        if self._lost:
            raise TaskLost(f"task {self.id}: {self._error}")
        if st is DEAD:
            raise TaskDead(f"task {self.id} was dead-lettered: {self._error}")
        if st is CANCELLED:
            raise TaskCancelled(f"task {self.id} was cancelled")
        return decode_result(st is SUCCEEDED, self._data, self._error)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The exception :meth:`result` would raise, or None.

        Raises
        ------
        TimeoutError
            If the task has not ended within ``timeout`` seconds.
        TaskCancelled
            If it was cancelled (as ``concurrent.futures`` raises).
        """
        self._wait_done(timeout)
        if self._state is TaskState.CANCELLED:
            raise TaskCancelled(f"task {self.id} was cancelled")
        try:
            self.result(0)
        except BaseException as exc:
            return exc
        return None

    def cancel(self, timeout: float | None = 10.0, *, terminate: bool = False) -> bool:
        """Cancel the task; True only once it is certain it will not run.

        A task still waiting to run, or leased to a node that has not started
        it, is cancelled (the node drops it).  A running task is left to
        finish and ``False`` is returned, as :mod:`concurrent.futures` does,
        unless ``terminate=True``: then
        :class:`~pyqueue.errors.TaskCancelled` is raised inside the task, and
        True is returned once the task has ended cancelled (False if it caught
        the exception and finished anyway).  A task that ended otherwise
        returns False; one already cancelled returns True.

        Raises
        ------
        TimeoutError
            If the coordinator has not answered within ``timeout`` seconds.
        """
        if self._state is not None:
            return self._state is TaskState.CANCELLED
        # the CANCEL must not overtake the SUBMIT (they go by different threads)
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self.acknowledged(timeout):
            raise TimeoutError(f"task {self.id} was not acknowledged within {timeout} s")
        if not self._client._cancel([self.id], _left(deadline), terminate)[0]:
            return False
        self._client._cancelled_here(self)  # certain now: no need to wait for the push
        return True

    def add_done_callback(self, fn: Callable[[ClusterTask[T_co]], None]) -> None:
        """Call ``fn(self)`` when the task ends (at once if it has)."""
        with self._client._lock:
            if self._state is None:
                if self._callbacks is None:
                    self._callbacks = []
                self._callbacks.append(fn)
                return
        _run_callbacks([(self, [fn])])

    def _finish(
        self, state: TaskState, data: bytes | None, error: str | None
    ) -> list[Callable[[ClusterTask[T_co]], None]]:
        """Record the outcome (the client's lock is held); return the callbacks to run."""
        self._data = data
        self._error = error
        self._acked = True
        self._state = state
        cbs, self._callbacks = self._callbacks, None
        return cbs or _NO_CALLBACKS


class Client:
    """Connection to a coordinator, with the verbs of a TaskQueue.

    Parameters
    ----------
    address : str or sequence of str
        ``"HOST:PORT"`` of the coordinator, or of several: a list
        (``["A:7878", "B:7878"]``) or one string joined by commas
        (``"A:7878,B:7878"``).  The client connects to the first that
        answers, in order, and moves on to the next one (round robin) when a
        connection is lost or refused; each new connection resends the
        unacknowledged submits and waits again for the tasks not yet ended,
        so that a standby coordinator over the same durable store takes over
        without losing a task.  Every address is checked here: a malformed
        one, an empty list or the same address twice raises ValueError.
    key : bytes, optional
        Shared secret; defaults to :func:`~pyqueue.cluster.config.load_key`.
    connect_timeout : float
        How long the constructor waits for the first connection (to any of
        the addresses).
    max_payload : int
        Largest encoded call accepted by :meth:`submit` (the coordinator's
        own limit, if smaller, wins); larger ones raise
        :class:`~pyqueue.errors.PayloadTooLarge` at once.
    timings : Timings
        A coordinator silent for ``timings.dead_after`` seconds is taken for
        stopped: the client reconnects and resends what is unacknowledged.

    Attributes
    ----------
    address : str
        The coordinator connected to now, or last connected to while
        reconnecting, spelled as given (with one address: that address).
    addresses : tuple of str
        Every coordinator address, in the order given.

    Thread safety
    -------------
    All public methods are thread-safe.
    """

    def __init__(
        self,
        address: str | Iterable[str],
        *,
        key: bytes | None = None,
        name: str | None = None,
        connect_timeout: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
        max_payload: int = P.DEFAULT_MAX_PAYLOAD,
        timings: Timings = DEFAULT_TIMINGS,
    ) -> None:
        addresses = parse_addresses(address)  # first: a bad one fails before anything starts
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)  # a handle was acked or ended
        # Handles of tasks not yet ended, held weakly: a dropped handle costs nothing.
        # A plain dict of weak references (no callbacks: cheaper than a
        # WeakValueDictionary); an entry goes when its task's outcome arrives.
        self._tasks: dict[str, weakref.ref[ClusterTask[Any]]] = {}
        self._waits: set[int] = set()
        # correlation id -> the reply class expected, and where it goes
        self._replies: dict[int, tuple[type[M.AppMessage], queue.SimpleQueue[M.AppMessage]]] = {}
        # what results() with no argument yields: the ids we made, as serial
        # numbers, and the ids callers chose
        self._unyielded_serials = _SerialSet()
        self._unyielded: dict[str, None] = {}
        self._ids = itertools.count()
        self._prefix = f"{os.getpid():x}-{os.urandom(4).hex()}-"
        self._closed = False  # a plain flag: read once per submit
        self.duplicate_pushes = 0
        self._results_taken = 0  # result rows handled, not yet acknowledged
        self.channel = Channel(
            addresses,
            key if key is not None else load_key(),
            role="client",
            name=name or f"client:{os.getpid()}",
            on_message=self._on_message,
            on_connect=self._on_connect,
            after_read=self._ack_results,
            ssl_context=ssl_context,
            max_payload=max_payload,
            timings=timings,
        )
        self.outbox: Outbox[str] = Outbox(
            self.channel,
            M.Submit,
            key=_submit_key,
            size=_submit_size,
            on_rejected=self._on_rejected,
            name="client-sender",
        )
        self.channel.start()
        self.outbox.start()
        if not self.channel.wait_connected(connect_timeout):
            self.close()
            where = (
                f"at {addresses[0]}" if len(addresses) == 1 else f"at any of {', '.join(addresses)}"
            )
            raise ConnectionError(
                f"could not connect to the coordinator {where} within {connect_timeout} s"
                + (f": {self.channel.fatal}" if self.channel.fatal else "")
            )

    @property
    def address(self) -> str:
        """The coordinator connected to now (or last, while reconnecting)."""
        return self.channel.address

    @property
    def addresses(self) -> tuple[str, ...]:
        """Every coordinator address given, in order."""
        return self.channel.addresses

    # -- context manager -----------------------------------------------------------
    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Disconnect.  Unacknowledged submits are abandoned."""
        self._closed = True
        self.outbox.close()
        self.channel.close()

    # -- submit ---------------------------------------------------------------
    # Two overloads because PEP 612 allows no keyword-only parameter between
    # ``*args: P.args`` and ``**kwargs: P.kwargs``: with ``task_id`` only the
    # result type is inferred; without it the arguments are checked against ``fn``.
    @overload
    def submit(
        self, fn: Callable[..., T], /, *args: Any, task_id: str, **kwargs: Any
    ) -> ClusterTask[T]: ...
    @overload
    def submit(
        self, fn: Callable[Params, T], /, *args: Params.args, **kwargs: Params.kwargs
    ) -> ClusterTask[T]: ...
    def submit(  # task_id: Any, as signature 2's kwargs could hold any (checked in _submit)
        self, fn: Callable[..., T], /, *args: Any, task_id: Any = None, **kwargs: Any
    ) -> ClusterTask[T]:
        """Submit ``fn(*args, **kwargs)``; returns its handle at once.

        ``task_id`` makes the submit idempotent: submitting an id the
        coordinator knows returns a handle to the existing task.
        """
        return self.submit_call(fn, args, kwargs, task_id=task_id)

    def submit_call(
        self,
        fn: Callable[..., T],
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        task_id: str | None = None,
        retries: int = 0,
        backoff: float = 1.0,
        delay: float = 0.0,
        result_ttl: float | None = None,
        queue: str = DEFAULT_QUEUE,
        priority: int = 0,
        eta: float | datetime.datetime | None = None,
        time_limit: float | None = None,
    ) -> ClusterTask[T]:
        """Submit with options.

        Parameters
        ----------
        retries : int
            How many times to rerun the task when it raises (default none).
        backoff : float
            Delay before the first retry; doubles each time, with jitter.
        delay : float
            Seconds to wait before the task may run (it starts SCHEDULED).
        eta : datetime or float, optional
            Or the time it may run from: an aware datetime, or epoch seconds
            (``time.time()``).  Not both ``delay`` and ``eta``.
        result_ttl : float, optional
            Keep this task's result this long after it ends (default: the
            coordinator's ``--result-ttl``, 1 hour); then it is purged, and
            submitting its id again starts a new task.
        queue : str
            The named queue it waits in; only nodes serving that queue run it.
        priority : int
            Higher runs first within its queue (FIFO among equals).
        time_limit : float, optional
            Seconds the task may run on its node (default: no limit).  Past
            it, :class:`~pyqueue.errors.TaskTimeout` is raised inside the task;
            if it is still running ``--time-limit-grace`` seconds later (stuck
            in C code), its node is replaced and the task fails with
            ``TaskTimeout`` all the same.  A failure, so ``retries`` applies.

        Raises
        ------
        PayloadTooLarge
            If the pickled call is larger than the cluster's ``max_payload``.
        ValueError
            If ``task_id`` is not a non-empty string of at most 512 characters,
            a queue name is not 1-128 of letters, digits and ``_.:-``, ``delay``
            is negative, ``eta`` is a naive datetime, or ``time_limit`` is not a
            finite number of seconds > 0.
        """
        not_before = _not_before(delay, eta)
        _check_time_limit(time_limit)
        ttl = None if result_ttl is None else float(result_ttl)
        return self._submit(
            fn, args, kwargs, task_id, int(retries), float(backoff), not_before, True, ttl,
            queue, priority, time_limit,
        )  # fmt: skip

    def _submit(
        self,
        fn: Callable[..., T],
        args: tuple[Any, ...],
        kwargs: dict[str, Any] | None,
        task_id: str | None,
        retries: int,
        backoff: float,
        not_before: float,
        yield_later: bool,
        result_ttl: float | None = None,
        queue: str = DEFAULT_QUEUE,
        priority: int = 0,
        time_limit: float | None = None,
    ) -> ClusterTask[T]:
        # retries, backoff and result_ttl come as int, float and float or None
        # (submit_call converts them; map passes the defaults)
        if self._closed:
            raise RuntimeError("client is closed")
        payload = encode_call(fn, args, kwargs or {}, time_limit)
        limit = self.channel.max_payload
        if len(payload) > limit:
            raise PayloadTooLarge(
                f"the call's arguments pickle to {len(payload)} bytes; the cluster's"
                f" max_payload is {limit}"
            )
        if task_id is None:
            serial = next(self._ids)
            tid = self._prefix + str(serial)
        elif not isinstance(task_id, str) or not task_id or len(task_id) > 512:
            raise ValueError("task_id must be a non-empty string of at most 512 characters")
        else:
            serial, tid = -1, task_id
        # tuple.__new__: the namedtuple's own __new__ is a Python call per task
        row = _new(
            SubmitSpec,
            (tid, payload, retries, backoff, not_before, result_ttl, queue, priority),
        )
        # refused here, not by the coordinator: a refused row would be resent forever
        problem = M.spec_problem(row)
        if problem is not None:
            raise ValueError(f"cannot submit task {tid}: {problem}")
        with self._lock:
            handle = self._handle(tid)
            if handle is None:
                handle = ClusterTask(tid, self)
                self._tasks[tid] = weakref.ref(handle)
            if not yield_later:
                pass
            elif serial >= 0:
                self._unyielded_serials.add(serial)
            else:
                self._unyielded[tid] = None
            # inside the lock: a reconnect in between would WAIT for an id the
            # coordinator has not seen, and fail its handle as lost
            self.outbox.put(row)
        return handle

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        window: int = 10000,
    ) -> Iterator[T]:
        """Like ``map(fn, *iterables)``: results in order, at most ``window`` tasks ahead."""
        pending: deque[ClusterTask[T]] = deque()
        deadline = None if timeout is None else time.monotonic() + timeout
        submit = self._submit
        for args in zip(*iterables):
            pending.append(submit(fn, args, None, None, 0, 1.0, 0.0, False))
            if len(pending) >= window:
                yield pending.popleft().result(None if deadline is None else _left(deadline))
        while pending:
            yield pending.popleft().result(None if deadline is None else _left(deadline))

    @overload
    def results(
        self, tasks: None = None, timeout: float | None = None
    ) -> Iterator[ClusterTask[Any]]: ...
    @overload
    def results(
        self, tasks: Iterable[ClusterTask[T]], timeout: float | None = None
    ) -> Iterator[ClusterTask[T]]: ...
    def results(
        self, tasks: Iterable[ClusterTask[T]] | None = None, timeout: float | None = None
    ) -> Iterator[ClusterTask[Any]]:
        """Yield tasks in completion order.

        With no argument: every task submitted through this client that was
        not yet yielded by an earlier ``results()`` call nor collected with
        ``result()``/``exception()``.  For those the client keeps only the
        ids; a result whose handle you dropped is fetched again from the
        coordinator.

        Raises
        ------
        TimeoutError
            If ``timeout`` seconds pass before all have ended.
        """
        if tasks is None:
            todo = self._take_unyielded()
        else:
            todo = list(tasks)
        done_q: queue.SimpleQueue[ClusterTask[Any]] = queue.SimpleQueue()
        for t in todo:
            t.add_done_callback(done_q.put)
        deadline = None if timeout is None else time.monotonic() + timeout
        for _ in range(len(todo)):
            try:
                yield done_q.get(timeout=_left(deadline))
            except queue.Empty:
                raise TimeoutError(f"results() timed out after {timeout} s") from None

    def _take_unyielded(self) -> list[ClusterTask[Any]]:
        fetch = []
        with self._lock:
            prefix = self._prefix
            ids = [prefix + str(n) for n in self._unyielded_serials.take()]
            ids += self._unyielded
            self._unyielded = {}
            todo = []
            for tid in ids:
                h = self._handle(tid)
                if h is None:  # dropped by the caller: ask the coordinator again
                    h = ClusterTask(tid, self, acked=True)
                    self._tasks[tid] = weakref.ref(h)
                    if tid not in self.outbox:
                        fetch.append(tid)
                todo.append(h)
        self._send_waits(fetch)
        return todo

    def _cancelled_here(self, handle: ClusterTask[Any]) -> None:
        with self._lock:
            if handle._state is not None:
                return
            self._tasks.pop(handle.id, None)  # the coordinator's push is now a duplicate
            cbs = handle._finish(TaskState.CANCELLED, None, "cancelled")
            self._changed.notify_all()
        _run_callbacks([(handle, cbs)])

    def as_completed(
        self, tasks: Iterable[ClusterTask[T]], timeout: float | None = None
    ) -> AsyncIterator[ClusterTask[T]]:
        """``async for t in client.as_completed(tasks)``: in completion order."""
        return aio.as_completed(tasks, timeout)

    @overload
    async def gather(
        self, tasks: Iterable[ClusterTask[T]], *, return_exceptions: Literal[False] = False
    ) -> list[T]: ...
    @overload
    async def gather(
        self, tasks: Iterable[ClusterTask[T]], *, return_exceptions: bool
    ) -> list[T | BaseException]: ...
    async def gather(
        self, tasks: Iterable[ClusterTask[T]], *, return_exceptions: bool = False
    ) -> list[Any]:
        """``await client.gather(tasks)``: their values, in the order given."""
        return await aio.gather(tasks, return_exceptions=return_exceptions)

    def _handle(self, task_id: str) -> ClusterTask[Any] | None:
        ref = self._tasks.get(task_id)
        return ref() if ref is not None else None

    def _collected(self, task_id: str) -> None:
        if not self._unyielded_serials.count and not self._unyielded:
            return  # the common case for map(): nothing noted, nothing to parse
        prefix = self._prefix
        if task_id.startswith(prefix) and task_id[len(prefix) :].isdigit():
            with self._lock:
                self._unyielded_serials.discard(int(task_id[len(prefix) :]))
        elif task_id in self._unyielded:
            with self._lock:
                self._unyielded.pop(task_id, None)

    def _wait(self, pred: Callable[[], bool], timeout: float | None) -> bool:
        with self._changed:
            return self._changed.wait_for(pred, timeout)

    # -- admin -------------------------------------------------------------------------
    def _request(self, request: M.AppMessage, reply: type[_Reply], timeout: float | None) -> _Reply:
        deadline = None if timeout is None else time.monotonic() + timeout
        mtype, body = request.TYPE, request.to_body()
        while True:
            corr = self.channel.next_corr()
            q: queue.SimpleQueue[M.AppMessage] = queue.SimpleQueue()
            with self._lock:
                self._replies[corr] = (reply, q)
            try:
                if self.channel.send(mtype, body, corr):
                    try:
                        # A reply lost to a reconnect is retried after a bounded wait.
                        got = q.get(timeout=min(_left(deadline) or 5.0, 5.0))
                        assert isinstance(got, reply)  # the reader checked its type
                        return got
                    except queue.Empty:
                        pass
                elif not self.channel.wait_connected(min(_left(deadline) or 1.0, 1.0)):
                    pass
            finally:
                with self._lock:
                    self._replies.pop(corr, None)
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"no reply to {mtype.name} within {timeout} s")

    def _cancel(self, ids: list[str], timeout: float | None, terminate: bool) -> list[bool]:
        return self._request(M.Cancel(ids, terminate), M.CancelAck, timeout).cancelled

    def status(self, timeout: float | None = 10.0) -> dict[str, Any]:
        """The coordinator's status: nodes, queue depth, in flight, dead, counters."""
        return self._request(M.Status(), M.StatusReply, timeout).to_body()

    def dead_tasks(self, limit: int = 100, timeout: float | None = 10.0) -> list[dict[str, Any]]:
        """Summaries of dead-lettered tasks.

        Raises
        ------
        ValueError
            If ``limit`` is not a non-negative int.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or not 0 <= limit < 2**63:
            raise ValueError(f"limit must be a non-negative int, got {limit!r}")
        reply = self._request(M.DeadList(limit), M.DeadReply, timeout)
        tasks: list[dict[str, Any]] = reply.to_body()["tasks"]
        return tasks

    def requeue(self, ids: list[str], timeout: float | None = 10.0) -> list[bool]:
        """Requeue dead-lettered tasks; True for each one requeued.

        Get handles for them with :meth:`wait_for`.

        Raises
        ------
        ValueError
            If an id is not a task id (a non-empty string of at most 512 characters).
        """
        ids = list(ids)
        for tid in ids:
            _check_id(tid)
        return self._request(M.Requeue(ids), M.RequeueAck, timeout).requeued

    # -- queues and schedules -------------------------------------------------------
    def configure_queue(
        self,
        name: str,
        rate_limit: float | None = None,
        paused: bool = False,
        timeout: float | None = 10.0,
    ) -> dict[str, Any]:
        """Set a queue's rate limit (tasks started per second over every node;
        None: no limit) and pause; kept in the coordinator's store.  Returns
        the queue as ``status()["queues"]`` shows it.

        Raises
        ------
        ValueError
            For a bad queue name, or a rate that is not a number > 0.
        """
        _check_queue(name)
        if rate_limit is not None:
            if isinstance(rate_limit, bool) or not isinstance(rate_limit, (int, float)):
                raise ValueError(f"rate_limit= is tasks per second, not {rate_limit!r}")
            if not (math.isfinite(rate_limit) and rate_limit > 0):
                raise ValueError(f"rate_limit= must be a finite number > 0, not {rate_limit}")
            rate_limit = float(rate_limit)
        if not isinstance(paused, bool):
            raise ValueError(f"paused= is True or False, not {paused!r}")
        return self._configure_queue(M.ConfigureQueue(name, rate_limit, paused), timeout)

    def _configure_queue(self, request: M.ConfigureQueue, timeout: float | None) -> dict[str, Any]:
        return self._request(request, M.QueueInfoReply, timeout).queue

    def schedule(
        self,
        schedule_id: str,
        fn: Callable[..., Any],
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        cron: str | None = None,
        every: float | None = None,
        queue: str = DEFAULT_QUEUE,
        priority: int = 0,
        misfire: str = "coalesce",
        timezone: str = "UTC",
        timeout: float | None = 10.0,
    ) -> Schedule:
        """Run ``fn(*args, **kwargs)`` on a schedule: a 5-field ``cron``
        expression in ``timezone``, or ``every`` so many seconds.

        Each fire is one task with the id ``"<schedule_id>@<fire time, UTC>"``,
        so no time is fired twice (running it is at-least-once).  ``misfire``
        says what happens to fires missed while no coordinator ran:
        ``"coalesce"`` (one run for all), ``"skip"`` (none), ``"all"`` (each,
        up to 1000).  Declaring an id again updates that schedule.

        Raises
        ------
        ValueError
            Before anything is sent, for a bad cron expression, time zone,
            period, misfire policy, queue name or id.
        """
        payload = encode_call(fn, args, kwargs or {})
        spec = ScheduleSpec(schedule_id, payload, cron, every, queue, priority, misfire, timezone)
        check_schedule(spec)
        _check_queue(queue)
        if every is not None:
            spec = spec._replace(every=float(every))
        row = self._request(M.SetSchedule(spec), M.ScheduleInfo, timeout).schedule
        assert row is not None
        return Schedule(**row)

    def schedules(self, timeout: float | None = 10.0) -> list[Schedule]:
        """Every schedule, by id."""
        rows = self._request(M.Schedules(), M.ScheduleList, timeout).schedules
        return [Schedule(**row) for row in rows]

    def _schedule_ctl(
        self, schedule_id: str, action: str, timeout: float | None
    ) -> Schedule | None:
        if not isinstance(schedule_id, str) or not schedule_id:
            raise ValueError(f"a schedule id is a non-empty str, not {schedule_id!r}")
        row = self._request(M.ScheduleCtl(schedule_id, action), M.ScheduleInfo, timeout).schedule
        return None if row is None else Schedule(**row)

    def pause_schedule(self, schedule_id: str, timeout: float | None = 10.0) -> Schedule:
        """Stop a schedule firing until :meth:`resume_schedule`; KeyError if unknown."""
        got = self._schedule_ctl(schedule_id, "pause", timeout)
        if got is None:
            raise KeyError(f"no schedule {schedule_id!r}")
        return got

    def resume_schedule(self, schedule_id: str, timeout: float | None = 10.0) -> Schedule:
        """Let a paused schedule fire again (what fell while paused is not run)."""
        got = self._schedule_ctl(schedule_id, "resume", timeout)
        if got is None:
            raise KeyError(f"no schedule {schedule_id!r}")
        return got

    def unschedule(self, schedule_id: str, timeout: float | None = 10.0) -> bool:
        """Delete a schedule (the tasks it fired stay); False if there was none."""
        before = {s.id for s in self.schedules(timeout)}
        self._schedule_ctl(schedule_id, "delete", timeout)
        return schedule_id in before

    def purge(
        self,
        finished_before: float | None = None,
        *,
        dead: bool = False,
        timeout: float | None = 60.0,
    ) -> int:
        """Forget finished tasks now, ahead of their retention; return how many.

        ``finished_before``: wall-clock seconds (``time.time()``); tasks that
        succeeded, failed or were cancelled before then are purged with their
        results.  ``dead``: also every dead-lettered task.  The coordinator
        purges in bounded batches, so dispatch never stalls; a purged id is
        unknown from then on (submitting it again starts a new task).
        """
        if finished_before is None and not dead:
            raise ValueError("purge needs finished_before, dead=True, or both")
        if finished_before is not None and not isinstance(finished_before, (int, float)):
            raise TypeError("finished_before is wall-clock seconds (a float), as time.time()")
        before = None if finished_before is None else float(finished_before)
        request = M.Purge(before, dead, _PURGE_BATCH)
        total = 0
        while True:
            n = self._request(request, M.PurgeAck, timeout).purged
            total += n
            if n < _PURGE_BATCH:
                return total

    def wait_for(self, task_id: str) -> ClusterTask[Any]:
        """A handle for a task submitted elsewhere (or requeued) that ends later.

        Raises
        ------
        ValueError
            If ``task_id`` is not a non-empty string of at most 512 characters.
        """
        _check_id(task_id)
        with self._lock:
            handle = self._handle(task_id)
            if handle is None:
                handle = ClusterTask(task_id, self, acked=True)
                self._tasks[task_id] = weakref.ref(handle)
        self.channel.send(M.Wait.TYPE, M.Wait([task_id]).to_body())
        return handle

    # -- channel callbacks ------------------------------------------------------------
    def _send_waits(self, ids: list[str]) -> None:
        for batch in P.split_batches(ids, len):
            corr = self.channel.next_corr()
            with self._lock:
                self._waits.add(corr)
            self.channel.send(M.Wait.TYPE, M.Wait(batch).to_body(), corr)

    def _ack_results(self) -> None:
        # One RESULTS_TAKEN per read, not per RESULTS message: a third of the
        # client's sends in a map.  Reader thread only, as is the count.
        n, self._results_taken = self._results_taken, 0
        if n:
            self.channel.send(MsgType.RESULTS_TAKEN, {"n": n})

    def _on_connect(self) -> None:
        self._results_taken = 0  # the window is per connection: a new one starts empty
        with self._lock:
            waiting = [
                tid
                for tid, ref in self._tasks.items()
                if (h := ref()) is not None and h._state is None and tid not in self.outbox
            ]
        self.outbox.on_connect()
        self._send_waits(waiting)

    def _on_message(self, msg: P.Message) -> None:
        # A bad body raises MalformedFrame here: the channel drops the
        # connection and makes a new one, as for any protocol error, and
        # every unacknowledged submit is resent.
        if msg.type == MsgType.RESULTS:
            rows = msg.body.get("results") if isinstance(msg.body, dict) else None
            try:
                self._on_results(M.Results.from_body(msg.body).results)
            finally:  # taken, even if handling failed: the window must reopen
                self._results_taken += len(rows) if isinstance(rows, list) else 0
        elif msg.type == MsgType.SUBMIT_ACK and msg.corr in self._waits:
            self._on_wait_reply(msg.corr, M.WaitAck.from_body(msg.body).unknown)
        elif msg.type == MsgType.SUBMIT_ACK:
            M.SubmitAck.from_body(msg.body)  # checked before its rows are forgotten
            acked = self.outbox.acked(msg.corr)
            if acked is None:
                return
            with self._lock:
                get = self._tasks.get
                for tid in acked:
                    ref = get(tid)
                    h = ref() if ref is not None else None
                    if h is not None:
                        h._acked = True
                self._changed.notify_all()
        else:
            with self._lock:
                waiting = self._replies.get(msg.corr)
            if waiting is None:
                return  # a reply nobody waits for any more (timed out, or resent)
            reply, q = waiting
            if msg.type != reply.TYPE:
                raise UnexpectedMessage(
                    f"{msg.type.name} in answer to a request that expects {reply.TYPE.name}"
                )
            q.put(reply.from_body(msg.body))

    def _on_wait_reply(self, corr: int, unknown: list[str]) -> None:
        # Acknowledged tasks the coordinator no longer knows: it restarted
        # without a durable store.  Fail them loudly instead of waiting forever.
        msg = "the coordinator does not know this task (restarted without --store?)"
        finished = []
        with self._lock:
            self._waits.discard(corr)
            for tid in unknown:
                ref = self._tasks.pop(tid, None)
                h = ref() if ref is not None else None
                if h is not None:
                    h._lost = True
                    finished.append((h, h._finish(TaskState.DEAD, None, msg)))
            self._changed.notify_all()
        if unknown:
            log.error(
                "%d task(s) lost by the coordinator at %s",
                len(unknown),
                self.address,
                extra={"event": "tasks_lost", "count": len(unknown)},
            )
        _run_callbacks(finished)

    def _on_results(self, rows: list[Outcome]) -> None:
        finished = []
        with self._lock:
            pop = self._tasks.pop
            self.outbox.discard_all([row[0] for row in rows])  # ended: no need to resubmit
            for tid, st, data, error in rows:
                if st not in TERMINAL:
                    continue
                ref = pop(tid, None)
                h = ref() if ref is not None else None
                if h is None:
                    self.duplicate_pushes += 1  # pushed again, or nobody holds the handle
                    continue
                cbs = h._finish(st, data, error)
                if cbs:  # map() and result() add none: nothing to keep per task
                    finished.append((h, cbs))
            self._changed.notify_all()
        _run_callbacks(finished)

    def _on_rejected(self, tid: str, row: SubmitSpec, exc: BaseException) -> None:
        # A submit the coordinator could never take: its handle fails with the reason.
        with self._lock:
            ref = self._tasks.pop(tid, None)
            h = ref() if ref is not None else None
            if h is None:
                return
            h._value = ("raise", exc)
            cbs = h._finish(TaskState.FAILED, None, str(exc))
            self._changed.notify_all()
        _run_callbacks([(h, cbs)])


def _run_callbacks(
    finished: list[tuple[ClusterTask[Any], list[Callable[[ClusterTask[Any]], None]]]],
) -> None:
    for h, cbs in finished:
        for cb in cbs:
            try:
                cb(h)
            except Exception:
                log.exception("done callback of task %s failed", h.id)


def _check_id(task_id: object) -> None:
    problem = M.id_problem(task_id)
    if problem is not None:
        raise ValueError(problem)


def _left(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    return max(0.0, deadline - time.monotonic())
