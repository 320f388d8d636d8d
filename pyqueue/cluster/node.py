"""A worker node: leases tasks from the coordinator and runs them on an executor.

Threads
-------
* the channel's reader thread: (re)connects, receives TASKS and DONE_ACKs;
* a sender thread (the :class:`~pyqueue.cluster._outbox.Outbox`): batches
  finished results into DONE frames cut by size, sends capacity updates and
  releases;
* a heartbeat thread: sends HEARTBEAT every ``timings.heartbeat`` seconds.

None of them dies silently: an error is logged with its traceback and the
connection is re-made, which resends every unacknowledged result.

Limitation: the heartbeat thread is a plain Python thread.  CPython hands the
GIL to it within the switch interval (5 ms) while pure-Python tasks run, so
those never make a node look dead; a C extension that holds the GIL for
longer than ``missed_heartbeats * heartbeat`` without releasing it would.

Results are kept until the coordinator acknowledges them and are resent after
a reconnect, so a result is never lost to a broken connection.  On a graceful
:meth:`Node.stop` the node asks for no more work, gives back every task that
has not started, finishes the running ones (up to a grace period) and waits
for their acks.

Cancel: the coordinator sends REVOKE for a leased task; the node drops it if
it has not started ("revoked"), and otherwise lets it run ("running") unless
asked to terminate it, in which case :class:`~pyqueue.errors.TaskCancelled`
is raised inside the task's worker thread ("terminating").  A task blocked in
C code (a long ``time.sleep``, a socket read) sees it only when it returns
to Python code.

Time limits (``Client.submit_call(..., time_limit=)``, carried in the
payload): a watchdog thread raises :class:`~pyqueue.errors.TaskTimeout` in
the task's worker thread when its limit passes (the soft limit, the same
asynchronous exception as a terminate).  A task that lets it propagate ends
FAILED with it, an ordinary failure: ``retries=`` applies, no loss is
charged.  A task still running ``time_limit_grace`` seconds later is stuck
(in C code that does not return to Python, or it swallowed the exception);
who reports it depends on whether this process can still run Python code:

* it can (the stuck code released the GIL): the watchdog reports the task
  FAILED with TaskTimeout over the node's own connection, then the node
  replaces itself: it stops as on SIGTERM (tasks not started are released,
  not charged; the running ones get ``time_limit_grace`` seconds, then are
  given back as lost by shutdown), waits for the acknowledgements and calls
  ``on_stuck`` (``pyqueue node`` exits with
  :data:`~pyqueue.cluster.supervisor.EXIT_TIME_LIMIT`; its supervisor starts
  a new worker at once);
* it cannot (the stuck code holds the GIL, so no thread here runs): before
  the task started, its worker thread posted "wedged after start + limit +
  grace + 1 s" on the :class:`~pyqueue.cluster.supervisor.DeadlineBoard`
  shared with the supervisor.  Past that time the supervisor reports the task
  FAILED with TaskTimeout through :func:`report_stuck` (a connection of its
  own; the coordinator accepts a completion that carries the current lease
  token from any node, and the wedged process's connection still holds the
  lease), then SIGKILLs the process and starts a new one.  The coordinator
  requeues the wedged process's other leases when its connection closes,
  each charged one loss (which of them had started cannot be asked); they
  complete on another process.  The node cannot heartbeat while wedged, so
  ``time_limit + time_limit_grace + 2`` s must stay under the coordinator's
  dead-node time (``missed_heartbeats * heartbeat``, 15 s by default), or it
  declares the node dead first and the stuck task is charged a loss instead.
"""

from __future__ import annotations

import concurrent.futures as cf
import ctypes
import functools
import heapq
import logging
import math
import operator
import os
import socket
import ssl
import threading
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Callable, Protocol

from pyqueue._executor import Executor
from pyqueue.errors import PayloadTooLarge, TaskCancelled, TaskTimeout

from . import messages as M
from . import protocol as P
from ._outbox import Outbox
from .channel import Channel
from .config import DEFAULT_TIMINGS, Timings, load_key, parse_addresses
from .protocol import MsgType
from .serialize import encode_exception, run_payload
from .states import ACCEPTED, DEFAULT_SERVED, Completion, Lease, Release, Verdict

if TYPE_CHECKING:
    from .supervisor import DeadlineBoard

__all__ = ["Node", "_make_executor", "report_stuck", "stuck_completion"]

log = logging.getLogger("pyqueue.cluster.node")

#: longest error text (a traceback) sent with a failure; the rest is cut
_MAX_ERROR_TEXT = 64 * 1024
#: automatic prefetch: hold about this much work ready (seconds), between the bounds
_PREFETCH_BUDGET = 0.002
_PREFETCH_START, _PREFETCH_MIN, _PREFETCH_MAX = 8, 1, 256
#: completions between two looks at the prefetch
_PREFETCH_TUNE_EVERY = 32
#: the supervisor takes a node for wedged this long after a stuck task's grace ended
_WEDGED_MARGIN = 1.0
#: ... and one that is replacing itself, this long after its stop should have ended
_REPLACE_MARGIN = 10.0


class _Running(Protocol):
    """What a node uses of a submitted task's handle: a Future, or the
    engine's own Task (see :meth:`pyqueue.Executor._submit_task`)."""

    def cancel(self) -> bool: ...
    def cancelled(self) -> bool: ...
    def result(self, timeout: float | None = None) -> Any: ...
    def add_done_callback(self, fn: Callable[[Any], object], /) -> None: ...


def _make_executor(workers: int, kind: str = "pyqueue") -> cf.Executor:
    """Build the executor a node runs tasks on: ``"pyqueue"`` (the engine's
    Executor, the default) or ``"threads"`` (the stdlib thread pool, for
    comparison and debugging)."""
    if kind == "pyqueue":
        return Executor(max_workers=workers, thread_name_prefix="pyqueue-node-worker")
    if kind == "threads":
        return cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pyqueue-node-worker")
    raise ValueError(f"unknown executor kind {kind!r}: expected 'pyqueue' or 'threads'")


Key = tuple[str, int]
_new = tuple.__new__


# by index: a namedtuple's field names cost a descriptor call each, twice per task
# here; the key is an itemgetter ((id, token)), which makes no Python call at all
_done_key: Callable[[Completion], Key] = operator.itemgetter(0, 1)


def _done_size(row: Completion) -> int:
    return len(row[0]) + len(row[3] or b"") + len(row[4] or "") + 32


def _raise_in_thread(ident: int, exc_type: type[BaseException]) -> bool:
    """Raise ``exc_type`` asynchronously in thread ``ident`` (CPython only)."""
    n: int = ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(ident), ctypes.py_object(exc_type)
    )
    return n == 1


def served_queues(queues: Mapping[str, int] | Iterable[str] | None) -> dict[str, int]:
    """The queues a node serves, with their weights, checked (ValueError)."""
    if queues is None:
        return dict(DEFAULT_SERVED)
    if isinstance(queues, str):
        raise ValueError("queues= is a list of names or a mapping of name to weight, not a str")
    pairs = queues.items() if isinstance(queues, Mapping) else ((q, 1) for q in queues)
    out: dict[str, int] = {}
    for name, weight in pairs:
        why = M.queue_problem(name)
        if why is not None:
            raise ValueError(why)
        if isinstance(weight, bool) or not isinstance(weight, int) or weight < 1:
            raise ValueError(f"queue {name!r}: weight must be an int >= 1, not {weight!r}")
        out[name] = weight
    if not out:
        raise ValueError("a node must serve at least one queue")
    return out


def parse_queues(text: str) -> dict[str, int]:
    """``"high:6,default:3,low:1"`` (a weight left out is 1) as a mapping."""
    out: dict[str, int] = {}
    for part in text.split(","):
        name, sep, weight = part.strip().partition(":")
        try:
            out[name] = int(weight) if sep else 1
        except ValueError:
            raise ValueError(f"queue {name!r}: weight {weight!r} is not an integer") from None
    return served_queues(out)


def stuck_completion(task_id: str, token: int, limit: float, grace: float, what: str) -> Completion:
    """The FAILED completion, with TaskTimeout, of a task stuck past its limit."""
    exc = TaskTimeout(
        f"task {task_id} was still running {grace:g} s past its time limit of {limit:g} s"
        f" (stuck in code that does not return to the interpreter); {what}"
    )
    value, error = encode_exception(exc)
    return Completion(task_id, token, False, value, error, False)


def report_stuck(
    address: str | Iterable[str],
    rows: list[Completion],
    *,
    key: bytes,
    name: str,
    ssl_context: ssl.SSLContext | None = None,
    timings: Timings = DEFAULT_TIMINGS,
    timeout: float = 10.0,
) -> list[Verdict] | None:
    """Send ``rows`` (completions of another node's leases) over a connection
    of our own, as a node with no capacity; the coordinator's verdicts, or
    None when it did not answer within ``timeout`` seconds."""
    answered = threading.Event()
    verdicts: list[Verdict] = []
    corr = 0

    def on_connect() -> None:
        channel.send(M.Ready.TYPE, M.Ready(0, name).to_body())
        for batch in P.split_batches(rows, _done_size):
            channel.send(M.Done.TYPE, M.Done(batch).to_body(), corr)

    def on_message(msg: P.Message) -> None:
        if msg.type == MsgType.DONE_ACK and msg.corr == corr:
            verdicts.extend(M.DoneAck.from_body(msg.body).status)
            if len(verdicts) >= len(rows):
                answered.set()

    channel = Channel(
        address,
        key,
        role="node",
        name=name,
        on_message=on_message,
        on_connect=on_connect,
        ssl_context=ssl_context,
        timings=timings,
        keepalive=False,
    )
    corr = channel.next_corr()
    channel.start()
    try:
        return verdicts if answered.wait(timeout) else None
    finally:
        channel.close()


class Node:
    """Run tasks leased from a coordinator.

    Parameters
    ----------
    address : str or sequence of str
        ``"HOST:PORT"`` of the coordinator, or of several: a list or one
        string joined by commas (``"A:7878,B:7878"``).  The node connects to
        the first that answers, in order, and moves on to the next one (round
        robin) when a connection is lost or refused; each new connection
        resends the unacknowledged results and announces the node again, so
        that a standby coordinator over the same durable store takes over.
        Every address is checked here: a malformed one, an empty list or the
        same address twice raises ValueError.  :attr:`address` is the one
        connected to now (or last).
    key : bytes, optional
        Shared secret; defaults to :func:`~pyqueue.cluster.config.load_key`.
    workers : int
        Task slots (executor threads).
    prefetch : int, optional
        Extra tasks held ready beyond the free slots; they hide the round
        trip to the coordinator for short tasks.  The coordinator never has
        more than ``workers + prefetch`` outstanding here.  By default it
        adapts to the tasks' run time, so that the tasks held ready add up
        to about 2 ms of work per node (between 1 and 256 tasks; 8 at first).
    executor : concurrent.futures.Executor or str, optional
        Where tasks run; an executor object, or a kind for
        :func:`_make_executor` (``"pyqueue"`` when omitted).
    timings : Timings
        Heartbeat interval comes from here.
    max_payload : int
        Largest result sent back; a larger one fails its task with
        :class:`~pyqueue.errors.PayloadTooLarge`.  The coordinator's own
        limit, if smaller, wins.
    queues : mapping or iterable, optional
        The named queues this node serves, with weights (``{"high": 6,
        "default": 3, "low": 1}``) or without (each weight 1); default: the
        ``"default"`` queue only.  A task in a queue it does not serve never
        comes here.
    strict : bool
        Drain higher-weight queues first, instead of choosing among the
        non-empty ones at random in proportion to their weights.
    time_limit_grace : float
        Seconds a task past its ``time_limit`` may keep running (after
        TaskTimeout was raised in it) before it counts as stuck and the node
        is replaced (see the module docstring); default 5.
    deadlines : DeadlineBoard, optional
        Shared with the supervisor, which enforces the hard limit when this
        process is wedged (``pyqueue node`` passes it on).
    on_stuck : callable, optional
        Called (from a thread of the node's) once a stuck task was reported
        and the node stopped: the process should be replaced now (default:
        nothing more; :attr:`replace_needed` is set).

    Thread safety
    -------------
    :meth:`start`, :meth:`stop` and :meth:`wait` may be called from any thread.
    """

    def __init__(
        self,
        address: str | Iterable[str],
        *,
        key: bytes | None = None,
        workers: int | None = None,
        prefetch: int | None = None,
        executor: cf.Executor | str | None = None,
        name: str | None = None,
        timings: Timings = DEFAULT_TIMINGS,
        ssl_context: ssl.SSLContext | None = None,
        max_payload: int = P.DEFAULT_MAX_PAYLOAD,
        queues: Mapping[str, int] | Iterable[str] | None = None,
        strict: bool = False,
        time_limit_grace: float = 5.0,
        deadlines: DeadlineBoard | None = None,
        on_stuck: Callable[[], object] | None = None,
    ) -> None:
        addresses = parse_addresses(address)  # first: a bad one fails before anything starts
        self.queues = served_queues(queues)
        self.strict = bool(strict)
        if (
            isinstance(time_limit_grace, bool)
            or not isinstance(time_limit_grace, (int, float))
            or not math.isfinite(time_limit_grace)
            or time_limit_grace < 0
        ):
            raise ValueError(
                f"time_limit_grace must be a finite number >= 0, not {time_limit_grace!r}"
            )
        self.time_limit_grace = float(time_limit_grace)
        self._board = deadlines
        self._free_slots = list(range(deadlines.slots))[::-1] if deadlines is not None else []
        self._on_stuck = on_stuck
        #: set once a task was stuck past its limit: this process should be replaced
        self.replace_needed = threading.Event()
        self.workers = workers if workers is not None else (os.cpu_count() or 1)
        if self.workers < 1:
            raise ValueError("workers must be at least 1")
        self._auto_prefetch = prefetch is None
        self.prefetch = _PREFETCH_START if prefetch is None else prefetch
        if self.prefetch < 0:
            raise ValueError("prefetch must be >= 0")
        self._run_time = _PREFETCH_BUDGET / _PREFETCH_START  # EWMA of task run time, s
        self._since_tune = 0
        self.capacity = self.workers + self.prefetch
        self.timings = timings
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self._own_executor = not isinstance(executor, cf.Executor)
        self.executor = (
            executor
            if isinstance(executor, cf.Executor)
            else _make_executor(self.workers, executor or "pyqueue")
        )
        # On pyqueue's engine a task's handle is the engine's Task, not a Future
        # (a Future and its Condition cost more than running a short task).
        self._submit: Callable[..., _Running] = (
            self.executor._submit_task
            if isinstance(self.executor, Executor)
            else self.executor.submit
        )
        # Re-entrant: a task that is already done runs its callback inside submit.
        self._lock = threading.RLock()
        self._held: dict[Key, _Running] = {}
        self._old_gen: set[Key] = set()  # still running from a previous connection
        self._running: dict[Key, int] = {}  # started tasks -> their worker thread
        self._terminating: set[Key] = set()  # TaskCancelled asked for
        # running tasks with a time limit -> (limit, board slot or -1)
        self._limited: dict[Key, tuple[float, int]] = {}
        self._stuck: set[Key] = set()  # reported FAILED while still running
        self._due: list[tuple[float, int, Key, bool]] = []  # (when, n, key, hard) heap
        self._due_n = 0
        self._due_changed = threading.Condition(self._lock)
        self._release: list[tuple[Key, bool]] = []  # (key, started)
        self._credit_dirty = False
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self.stats = {
            "received": 0,
            "completed": 0,
            "failed": 0,
            "accepted": 0,
            "duplicate": 0,
            "stale": 0,
            "unknown": 0,
            "released": 0,
            "revoked": 0,
            "terminated": 0,
            "timed_out": 0,
            "stuck": 0,
            "max_held": 0,
        }
        self.channel = Channel(
            addresses,
            key if key is not None else load_key(),
            role="node",
            name=self.name,
            on_message=self._on_message,
            on_connect=self._on_connect,
            ssl_context=ssl_context,
            max_payload=max_payload,
            timings=timings,
            keepalive=False,  # the heartbeat thread beats, also while tasks hold the GIL
        )
        self.outbox: Outbox[Key] = Outbox(
            self.channel,
            M.Done,
            key=_done_key,
            size=_done_size,
            on_rejected=self._on_rejected,
            before_send=self._send_control,
            name="node-sender",
        )
        self._heart = threading.Thread(
            target=self._heartbeat_loop, name="pyqueue-node-heartbeat", daemon=True
        )
        self._watchdog = threading.Thread(
            target=self._limits_loop, name="pyqueue-node-time-limits", daemon=True
        )

    @property
    def address(self) -> str:
        """The coordinator connected to now (or last, while reconnecting)."""
        return self.channel.address

    # -- lifecycle ------------------------------------------------------------
    def start(self) -> Node:
        """Connect (in the background) and start serving."""
        self.channel.start()
        self.outbox.start()
        self._heart.start()
        self._watchdog.start()
        return self

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the node has stopped."""
        return self._stopped.wait(timeout)

    def stop(self, timeout: float = 30.0) -> None:
        """Graceful shutdown, bounded by ``timeout`` seconds.

        Asks for no more work and gives back every task that has not started,
        then waits up to ``timeout`` for the running ones to finish and their
        results to be acknowledged.  Tasks still running after that are given
        back too, as lost by shutdown (the coordinator requeues them and
        charges them one loss), and the method returns: a task stuck in a loop
        cannot keep a node from stopping.  Its worker thread keeps running, so
        a process that must exit should do so with ``os._exit`` afterwards.
        """
        if self._stopping.is_set():
            self._stopped.wait(timeout)
            return
        self._stopping.set()
        with self._lock:
            self._credit_dirty = True
            for key, fut in list(self._held.items()):
                if fut.cancel():  # not started: give it back
                    del self._held[key]
                    self._release.append((key, False))
        self.outbox.wake()
        deadline = threading.Event()
        timer = threading.Timer(timeout, deadline.set)
        timer.daemon = True
        timer.start()
        try:
            while not deadline.is_set():
                with self._lock:
                    idle = not self._held and not len(self.outbox) and not self._release
                if idle or not self.channel.connected and not self._held:
                    break
                deadline.wait(0.02)  # bounded poll of a condition spread over three threads
        finally:
            timer.cancel()
        with self._lock:
            stuck = list(self._held)
            self._held.clear()
            self._release.extend((key, True) for key in stuck)
        if stuck:
            log.warning(
                "node %s: grace period over, giving back %d running task(s) as lost by shutdown",
                self.name,
                len(stuck),
                extra={"event": "stop_release_running", "count": len(stuck), "node": self.name},
            )
        self._send_control()
        left = len(self.outbox)
        if left:
            log.warning(
                "node %s stopping with %d unacknowledged result(s)",
                self.name,
                left,
                extra={"event": "stop_unflushed", "left": left, "node": self.name},
            )
        self.channel.close()
        self.outbox.close()
        if self._own_executor:
            self.executor.shutdown(wait=False, cancel_futures=True)
        self._stopped.set()
        with self._lock:
            self._due_changed.notify_all()
        log.info("node %s stopped", self.name, extra={"event": "node_stopped", **self.stats})

    # -- channel callbacks (reader thread) ---------------------------------------
    def _free_capacity(self) -> int:
        return 0 if self._stopping.is_set() else max(0, self.capacity - len(self._old_gen))

    def _on_connect(self) -> None:
        with self._lock:
            self._old_gen = set(self._held)
            cap = self._free_capacity()
            # Anything we were going to release belonged to the dead connection.
            self._release.clear()
        ready = M.Ready(cap, self.name, self.queues, self.strict)
        self.channel.send(M.Ready.TYPE, ready.to_body())
        if len(self.outbox):
            log.info(
                "node %s resending %d unacknowledged result(s)",
                self.name,
                len(self.outbox),
                extra={"event": "resend", "count": len(self.outbox)},
            )
        self.outbox.on_connect()

    def _on_message(self, msg: P.Message) -> None:
        # A bad body raises MalformedFrame here: the channel drops the
        # connection and makes a new one, as for any protocol error, and
        # every unacknowledged result is resent.
        if msg.type == MsgType.TASKS:
            self._on_tasks(M.Tasks.from_body(msg.body).tasks)
        elif msg.type == MsgType.DONE_ACK:
            verdicts = M.DoneAck.from_body(msg.body).status  # before the rows are forgotten
            acked = self.outbox.acked(msg.corr)
            if acked is None:
                return
            accepted = 0
            for key, verdict in zip(acked, verdicts):
                if verdict is ACCEPTED:  # the common case, counted once per message
                    accepted += 1
                    continue
                said = verdict.value
                self.stats[said] = self.stats.get(said, 0) + 1
                log.info(
                    "node %s: result of task %s (attempt %d) answered %s",
                    self.name,
                    key[0],
                    key[1],
                    said,
                    extra={"event": "late_result", "task": key[0], "verdict": said},
                )
            self.stats["accepted"] += accepted
        elif msg.type == MsgType.REVOKE:
            self._on_revoke(msg.corr, M.Revoke.from_body(msg.body).tasks)
        else:
            log.warning("node %s: unexpected message %s", self.name, msg.type.name)

    def _on_tasks(self, rows: list[Lease]) -> None:
        if self._stopping.is_set():
            with self._lock:
                self._release.extend(((r.id, r.token), False) for r in rows)
            self.outbox.wake()
            return
        submit = self._submit
        with self._lock:
            for tid, token, payload in rows:
                key = (tid, token)
                fut = submit(self._run_task, key, payload)
                self._held[key] = fut
                fut.add_done_callback(functools.partial(self._on_finished, key))
            self.stats["received"] += len(rows)
            if len(self._held) > self.stats["max_held"]:
                self.stats["max_held"] = len(self._held)

    def _on_revoke(self, corr: int, rows: list[M.Revocation]) -> None:
        outcomes: list[M.RevokeOutcome] = []
        with self._lock:
            for tid, token, terminate in rows:
                key = (tid, token)
                fut = self._held.get(key)
                if fut is None:
                    outcomes.append(M.RevokeOutcome.UNKNOWN)  # finished: its result is on the way
                elif fut.cancel():
                    del self._held[key]
                    if key in self._old_gen:
                        self._old_gen.discard(key)
                        self._credit_dirty = True
                    self.stats["revoked"] += 1
                    outcomes.append(M.RevokeOutcome.REVOKED)
                elif terminate:
                    if key not in self._terminating:
                        self._terminating.add(key)
                        ident = self._running.get(key)
                        # Not yet registered: _run_task sees _terminating first.
                        if ident is not None:
                            _raise_in_thread(ident, TaskCancelled)
                        self.stats["terminated"] += 1
                    outcomes.append(M.RevokeOutcome.TERMINATING)
                else:
                    outcomes.append(M.RevokeOutcome.RUNNING)
        self.channel.send(M.RevokeAck.TYPE, M.RevokeAck(outcomes).to_body(), corr)

    # -- worker threads ----------------------------------------------------------------
    def _run_task(self, key: Key, payload: bytes) -> tuple[bool, bytes, str | None, str, float]:
        with self._lock:
            if key in self._terminating:
                raise TaskCancelled(f"task {key[0]} was cancelled before it started")
            self._running[key] = threading.get_ident()
        t0 = time.perf_counter()
        try:
            return (*run_payload(key[0], key[1], payload, self._arm), time.perf_counter() - t0)
        finally:
            while True:
                try:
                    with self._lock:
                        self._running.pop(key, None)
                        # (no lookup at all while no task has a time limit)
                        limited = self._limited.pop(key, None) if self._limited else None
                        if limited is not None and limited[1] >= 0:
                            assert self._board is not None
                            self._board.clear(limited[1])
                            self._free_slots.append(limited[1])
                    break
                except (TaskCancelled, TaskTimeout):
                    continue  # arrived after the task returned: too late to stop it

    def _arm(self, task_id: str, token: int, limit: float, name: str) -> None:
        """Start a task's time limit (its worker thread, just before it runs)."""
        key = (task_id, token)
        now = time.monotonic()
        with self._lock:
            slot = self._free_slots.pop() if self._free_slots else -1
            if slot >= 0:
                assert self._board is not None
                kill_at = now + limit + self.time_limit_grace + _WEDGED_MARGIN
                self._board.post(slot, key[0], key[1], kill_at, limit, self.time_limit_grace)
            elif self._board is not None:
                log.warning(
                    "node %s: no deadline slot free for task %s: if it holds the GIL"
                    " past its time limit, nothing will stop it",
                    self.name,
                    key[0],
                    extra={"event": "no_deadline_slot", "task": key[0]},
                )
            self._limited[key] = (limit, slot)
            self._push_due(now + limit, key, False)

    def _tune_prefetch(self, seconds: float) -> None:
        """Hold about _PREFETCH_BUDGET of work ready (lock held)."""
        self._run_time += (seconds - self._run_time) * 0.1
        self._since_tune += 1
        if self._since_tune < _PREFETCH_TUNE_EVERY:
            return
        self._since_tune = 0
        want = int(_PREFETCH_BUDGET * self.workers / max(self._run_time, 1e-6))
        want = min(_PREFETCH_MAX, max(_PREFETCH_MIN, want))
        # move only on a real change, so that credits do not chatter
        if abs(want - self.prefetch) * 4 >= self.prefetch + 1:
            self.prefetch = want
            self.capacity = self.workers + want
            self._credit_dirty = True

    def _push_due(self, when: float, key: Key, hard: bool) -> None:
        """Lock held."""
        self._due_n += 1
        heapq.heappush(self._due, (when, self._due_n, key, hard))
        self._due_changed.notify()

    def _limits_loop(self) -> None:
        """Watchdog thread: the soft limit, then the stuck check, of every limited task."""
        while not self._stopped.is_set():
            try:
                stuck = self._limits_step()
                for key in stuck:
                    self._on_stuck_task(key)
            except Exception:  # keep watching: a dead watchdog would let tasks run forever
                log.exception("node %s: time-limit watchdog failed", self.name)
                self._stopped.wait(0.1)

    def _limits_step(self) -> list[Key]:
        with self._lock:
            now = time.monotonic()
            due = self._due
            if not due or due[0][0] > now:
                self._due_changed.wait(None if not due else due[0][0] - now)
                return []
            stuck = []
            while due and due[0][0] <= now:
                when, _, key, hard = heapq.heappop(due)
                limited = self._limited.get(key)
                ident = self._running.get(key)
                if limited is None or ident is None or key in self._stuck:
                    continue  # it ended meanwhile
                if hard:
                    stuck.append(key)
                    continue
                self.stats["timed_out"] += 1
                _raise_in_thread(ident, TaskTimeout)
                self._push_due(when + self.time_limit_grace, key, True)
            return stuck

    def _on_stuck_task(self, key: Key) -> None:
        """``key`` is still running past its limit and grace, and we can run: report
        it FAILED with TaskTimeout ourselves, then stop and ask to be replaced."""
        with self._lock:
            limited = self._limited.get(key)
            if limited is None or key in self._stuck or key not in self._running:
                return
            self._stuck.add(key)
            self._held.pop(key, None)
            if key in self._old_gen:
                self._old_gen.discard(key)
                self._credit_dirty = True
            self.stats["stuck"] += 1
            self.stats["completed"] += 1
            self.stats["failed"] += 1
            limit, slot = limited
            if slot >= 0:  # the supervisor steps in only if our own stop hangs too
                assert self._board is not None
                kill_at = time.monotonic() + 2 * self.time_limit_grace + _REPLACE_MARGIN
                self._board.post(slot, key[0], key[1], kill_at, limit, self.time_limit_grace)
        row = stuck_completion(
            key[0], key[1], limit, self.time_limit_grace, "its worker process is replaced"
        )
        self._log_failure(key, "?", row.error, False)
        self.outbox.put(row)
        if self.replace_needed.is_set():
            return
        self.replace_needed.set()
        log.error(
            "node %s: task %s (attempt %d) is stuck past its time limit; replacing this worker",
            self.name,
            key[0],
            key[1],
            extra={"event": "task_stuck", "task": key[0], "attempt": key[1]},
        )
        threading.Thread(target=self._replace, name="pyqueue-node-replace", daemon=True).start()

    def _replace(self) -> None:
        try:
            self.stop(self.time_limit_grace)
        except BaseException:
            log.exception("node %s: error while stopping to be replaced", self.name)
        finally:
            if self._on_stuck is not None:
                self._on_stuck()

    def _on_finished(self, key: Key, fut: _Running) -> None:
        if fut.cancelled():
            return
        # Read without the lock: the watchdog marks a task stuck only while it
        # is in _running, which _run_task left before this future completed.
        if key in self._stuck:  # reported already
            with self._lock:
                self._stuck.discard(key)
                self._terminating.discard(key)
            return
        try:
            ok, value, error, fn_name, seconds = fut.result()
        except BaseException as exc:  # run_payload never raises; a terminate or executor might
            ok, fn_name, seconds = False, "?", 0.0
            value, error = encode_exception(exc)
        ran_ok = ok
        limit = self.channel.max_payload
        if value is not None and len(value) > limit:
            what = "returned" if ok else "raised an exception of"
            ok = False
            value, error = encode_exception(
                PayloadTooLarge(
                    f"task {key[0]} {what} {len(value)} bytes; the cluster's max_payload is {limit}"
                )
            )
        if error is not None and len(error) > _MAX_ERROR_TEXT:
            error = error[: _MAX_ERROR_TEXT // 2] + "\n[...]\n" + error[-_MAX_ERROR_TEXT // 2 :]
        with self._lock:  # once per task: everything the other threads read
            self._running.pop(key, None)
            if self._auto_prefetch:
                self._tune_prefetch(seconds)
            cancelled = key in self._terminating and not ran_ok
            self._terminating.discard(key)
            self._held.pop(key, None)
            if key in self._old_gen:
                self._old_gen.discard(key)
                self._credit_dirty = True
            self.stats["completed"] += 1
            if not ok:
                self.stats["failed"] += 1
        if not ok:
            self._log_failure(key, fn_name, error, cancelled)
        if seconds < 0.0:
            seconds = 0.0
        # tuple.__new__: the namedtuple's own __new__ is a Python call per task
        self.outbox.put(_new(Completion, (key[0], key[1], ok, value, error, cancelled, seconds)))

    def _log_failure(self, key: Key, fn_name: str, error: str | None, cancelled: bool) -> None:
        text = (error or "").rstrip()
        last = text.rsplit("\n", 1)[-1] if text else "unknown error"
        what = "was cancelled" if cancelled else "failed"
        log.warning(
            "node %s: task %s (%s, attempt %d) %s: %s",
            self.name,
            key[0],
            fn_name,
            key[1],
            what,
            last,
            extra={"event": "task_failed", "task": key[0], "function": fn_name, "attempt": key[1]},
        )
        if text and log.isEnabledFor(logging.DEBUG):
            log.debug("traceback of task %s (attempt %d):\n%s", key[0], key[1], text)

    # -- sender thread ---------------------------------------------------------------
    def _on_rejected(self, key: Key, row: Completion, exc: BaseException) -> None:
        # A result that cannot be encoded at all: send the failure instead.
        value, error = encode_exception(exc)
        self.outbox.put(Completion(key[0], key[1], False, value, error, False))

    def _send_control(self) -> None:
        """Send a changed capacity and pending releases (sender thread, or stop())."""
        with self._lock:
            release, self._release = self._release, []
            credit = None
            if self._credit_dirty:
                self._credit_dirty = False
                credit = self._free_capacity()
        if credit is not None:
            self.channel.send(M.Credit.TYPE, M.Credit(credit).to_body())
        if release:
            rows = [Release(k[0], k[1], started) for k, started in release]
            for batch in P.split_batches(rows, lambda r: len(r.id) + 16):
                if self.channel.send(M.Release.TYPE, M.Release(batch).to_body()):
                    self.stats["released"] += len(batch)

    def _heartbeat_loop(self) -> None:
        period = self.timings.heartbeat
        while not self._stopped.wait(period):
            try:
                self.channel.send(M.Heartbeat.TYPE, M.Heartbeat().to_body())
            except Exception:  # keep beating: a silent node would be declared dead
                log.exception("node %s: heartbeat failed", self.name)
