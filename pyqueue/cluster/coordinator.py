"""The coordinator's core: every decision, no sockets and no event loop.

:class:`CoordinatorCore` takes bytes from peers (:meth:`~CoordinatorCore.receive`),
applies what they ask to a :class:`~pyqueue.cluster.backend.Backend`, and
writes its answers to each peer's :class:`Link`, a three-method stand-in for a
transport.  Time comes from an injected clock, and the core asks for its
flushes through a ``wake(delay)`` callback, so that credits, lease expiry,
heartbeat misses, retries and retention are unit-tested with a fake clock and
fake links.  :mod:`pyqueue.cluster.server` is the asyncio server around it.

Batching: each received message is applied to the backend at once; then one
:meth:`~CoordinatorCore.flush` per loop iteration dispatches ready tasks to
nodes with free credits, commits the backend (one SQLite transaction for the
whole batch) and only then writes the acknowledgements, dispatches and result
pushes that depend on it.

Leases and liveness: every message from a node renews all of its leases.  A
node silent for ``min(lease, missed_heartbeats * heartbeat)`` seconds is
declared dead by :meth:`~CoordinatorCore.tick`: its link is aborted and its
leases requeue at their old positions (``lost`` + 1).  A closed connection
requeues at once.

Flow control: a node announces a capacity (free slots + prefetch); the
coordinator never has more tasks outstanding to it than that (a task stays
outstanding until its completion or release arrives, or the node is lost).

Unauthenticated peers only ever reach the handshake code, with a 4 KiB frame
limit and a deadline; they never reach the backend.

Cancel: a task that is not leased is cancelled at once.  For a leased one the
coordinator sends REVOKE to its node and answers the client only once the
outcome is certain: the node dropped it before it started (CANCELLED, True),
it is running (False), or, with ``terminate``, the task ended after
TaskCancelled was raised in it (True if it ended CANCELLED).  A node that
dies meanwhile has its tasks requeued, and those are then cancelled (True).

Errors of our own are never charged to a peer: a message whose handling
raised anything but a protocol error (a backend bug, a full disk) is logged
with its traceback and applied again after a backoff (every operation it
makes is idempotent); a failing flush is logged and retried, and after
several in a row every connection is re-made.  Batches are cut by encoded
size as well as count, so no batch exceeds the frame limit.
"""

from __future__ import annotations

import collections
import itertools
import logging
import sys
import time
from collections.abc import Sequence
from typing import Any, Callable, Protocol

from pyqueue.errors import MalformedFrame, ProtocolError, UnexpectedMessage

from . import messages as M
from . import protocol as P
from .backend import Backend
from .backends.memory import MemoryBackend
from .config import DEFAULT_TIMINGS, Timings
from .protocol import MsgType
from .schedules import Schedule
from .states import (
    ACCEPTED,
    DEFAULT_QUEUE,
    TERMINAL,
    Demand,
    QueueInfo,
    TaskState,
)

__all__ = ["CoordinatorCore", "PeerState", "Link", "Clock"]

log = logging.getLogger("pyqueue.cluster.coordinator")

#: consecutive failed flushes after which every connection is re-made
_FLUSH_FAILURES_BEFORE_RESET = 3
#: a flush that carried this many submits and completions means we are busy...
_BUSY_ROWS = 4
#: ...and then the next one waits until this long after it, so that each commit
#: and each write carries more (an idle round trip is never delayed)
_BUSY_FLUSH_GAP = 0.001
#: messages that change nothing a flush would write (unless results wait for a window)
_NO_FLUSH = frozenset({MsgType.HEARTBEAT, MsgType.RESULTS_TAKEN})
#: finished tasks purged per tick, or per operator PURGE message, at most
_PURGE_BATCH = 10_000
#: ...and per flush while the tick's batch came back full: tasks finishing
#: faster than _PURGE_BATCH per sweep must not pile up, nor stall dispatch
_PURGE_CATCH_UP = 1_000
#: result rows pushed to one client and not yet taken (RESULTS_TAKEN), at most...
RESULT_WINDOW = 16384
#: ...and their bytes: the rest wait in the store, not in the coordinator's buffers
RESULT_WINDOW_BYTES = 16 << 20


class Link(Protocol):
    """Where the core's bytes for one peer go (a transport, or a test's fake)."""

    def write(self, data: bytes) -> None:
        """Send bytes, in order."""

    def close(self) -> None:
        """Send what was written, then close."""

    def abort(self) -> None:
        """Close at once, dropping anything unsent."""


class Clock(Protocol):
    """The two clocks the core reads (the :mod:`time` module is one)."""

    def monotonic(self) -> float:
        """Seconds on a clock that never jumps: liveness."""

    def time(self) -> float:
        """Wall-clock seconds since the epoch: what stores record."""


def _task_size(row: list[Any]) -> int:
    return len(row[0]) + len(row[2]) + 16


def _result_size(row: list[Any]) -> int:
    return len(row[0]) + len(row[2] or b"") + len(row[3] or "") + 16


def _schedule_row(s: Schedule) -> dict[str, Any]:
    return dict(s._asdict())


#: what a node is doing, as status and the metrics say it
NODE_STATES = ("serving", "draining", "blocked")


def _node_state(peer: PeerState) -> str:
    """serving: it takes work; draining: it asks for none (capacity 0, as when
    it stops); blocked: its connection's buffer is full, so nothing is sent to it."""
    if peer.paused:
        return "blocked"
    return "serving" if peer.capacity > 0 else "draining"


def _last_line(text: str | None) -> str:
    text = (text or "").rstrip()
    return text.rsplit("\n", 1)[-1] if text else "no error text"


class _CancelRequest:
    """One CANCEL from a client, answered once every id's outcome is certain."""

    __slots__ = ("peer", "corr", "answers")

    def __init__(self, peer: PeerState, corr: int, n: int) -> None:
        self.peer = peer
        self.corr = corr
        self.answers: list[bool | None] = [None] * n


def _joined(peer: PeerState) -> int:
    return peer.joined


class PeerState:
    """What the core knows of one connection."""

    def __init__(self, core: CoordinatorCore, link: Link, addr: str) -> None:
        self.core = core
        self.link = link
        self.addr = addr
        self.conn = P.Connection(
            core.key,
            server=True,
            max_frame=core.max_frame,
            max_message=core.max_payload + P.ENVELOPE_BYTES,
        )
        self.role = ""
        self.name = ""
        self.node_id: str | None = None
        self.joined = 0  # join order of a node (READY): the order nodes are offered work
        self.capacity = 0
        self.queues: dict[str, int] = {DEFAULT_QUEUE: 1}  # served, with weights (READY)
        self.strict = False
        self.max_outstanding = 0
        self.last_heard = core.clock.monotonic()
        self.connected_at = self.last_heard
        self.outbox: list[bytes] = []  # written after the next commit
        self.results_due: collections.deque[str] = collections.deque()  # ids to push
        self.results_out = 0  # result rows pushed and not yet taken
        self.results_out_bytes = 0
        self._sent_sizes: collections.deque[tuple[int, int]] = collections.deque()  # (rows, bytes)
        self.subscribed: set[str] = set()
        self.closed = False
        self.paused = False  # the transport's buffer is full: dispatch nothing to it

    def describe(self) -> str:
        """Who this peer is, for log lines: node id or role and name, and address."""
        role = self.role or self.conn.peer_role  # from HELLO, before authentication too
        name = self.name or self.conn.peer_name
        who = self.node_id or " ".join(x for x in (role, name) if x) or "peer"
        return f"{who} ({self.addr})"

    def queue(self, mtype: MsgType, body: dict[str, Any], corr: int = 0) -> None:
        """Queue a message; written after the next commit."""
        self.outbox.append(self.core.encode(mtype, body, corr))
        self.core._outboxed.add(self)
        self.core.schedule_flush()

    def send(self, msg: M.AppMessage, corr: int = 0) -> None:
        """Queue a typed message; written after the next commit."""
        self.queue(msg.TYPE, msg.to_body(), corr)


class CoordinatorCore:
    """Serve a task queue to nodes and clients, sans I/O (see the module doc).

    Parameters
    ----------
    key : bytes
        Shared secret of the handshake.
    backend : Backend, optional
        Defaults to a :class:`~pyqueue.cluster.backends.memory.MemoryBackend`.
    timings : Timings
        Lease, heartbeat and handshake clocks.
    max_frame, max_payload : int
        Frame and message limits (announced to peers in WELCOME).
    clock : Clock
        Where time comes from (default: the :mod:`time` module).
    wake : callable, optional
        ``wake(delay)``: run :meth:`flush` after ``delay`` seconds.  Without it
        the owner calls :meth:`flush` itself (tests do).
    """

    def __init__(
        self,
        key: bytes,
        backend: Backend | None = None,
        *,
        timings: Timings = DEFAULT_TIMINGS,
        max_frame: int = P.DEFAULT_MAX_FRAME,
        max_payload: int = P.DEFAULT_MAX_PAYLOAD,
        clock: Clock = time,
        wake: Callable[[float], None] | None = None,
    ) -> None:
        self.key = key
        self.backend: Backend = backend if backend is not None else MemoryBackend()
        self.timings = timings
        self.max_frame = max_frame
        self.max_payload = max_payload
        self.clock = clock
        self._wake = wake
        self._batch_bytes = min(P.BATCH_BYTES, max_payload)
        self.peers: set[PeerState] = set()
        self.nodes: dict[str, PeerState] = {}
        self._subs: dict[str, list[PeerState]] = {}
        self._push_now: list[tuple[PeerState, str]] = []
        self._windowed: set[PeerState] = set()  # peers with results due
        self._outboxed: set[PeerState] = set()  # peers with a non-empty outbox
        # Nodes that may have a free slot: only these are offered work in a
        # flush.  A node leaves when a grant fills it (held >= capacity) or its
        # capacity is 0, and is put back (_maybe_free) by anything that can
        # free a slot or change its demand; a full node costs a flush nothing.
        self._free: set[str] = set()
        self.flush_scheduled = False
        self._node_ids = itertools.count(1)
        self._corr = itertools.count(1)
        self._cancel_waits: dict[str, list[tuple[_CancelRequest, int, bool]]] = {}
        self._revokes: dict[int, tuple[str, list[tuple[str, int]]]] = {}  # REVOKE corr -> rows
        self._retries: list[tuple[PeerState, P.Message, int]] = []  # messages to apply again
        self._flush_failures = 0
        self._store_was_down = False  # the store failed since the last flush: see _after_outage
        self._purge_behind = False  # the last retention batch was full: more each flush
        self._timed_flush: float | None = None  # wall time a flush is asked for by the clock
        self._heartbeat_ack = P.encode_frame(MsgType.HEARTBEAT_ACK, 0, {})
        self._rows = 0  # submits and completions since the last flush
        self._busy = False
        self._last_flush = 0.0
        self._last_tick = clock.monotonic()
        self.rejected = 0
        self.internal_errors = 0
        self._after_commit: list[Callable[[], None]] = []
        self.started_at = clock.time()
        self.healthy = True  # False while flushes fail (the readiness probe says so)

    def encode(self, mtype: MsgType, body: dict[str, Any], corr: int = 0) -> bytes:
        """The frames of one message (several if it is larger than a frame)."""
        return P.encode_message(
            mtype, corr, body, self.max_frame, self.max_payload + P.ENVELOPE_BYTES
        )

    # -- connections ------------------------------------------------------------
    def connect(self, link: Link, addr: str) -> PeerState:
        """A new connection; its handshake deadline is the owner's to enforce
        (:meth:`handshake_expired`)."""
        peer = PeerState(self, link, addr)
        self.peers.add(peer)
        return peer

    def handshake_expired(self, peer: PeerState) -> None:
        """The handshake deadline passed: drop the peer unless it authenticated."""
        if not peer.conn.authenticated and not peer.closed:
            self.reject(peer, UnexpectedMessage("no authentication within the handshake timeout"))

    def receive(self, peer: PeerState, data: bytes) -> None:
        """Bytes from a peer: handshake, then messages; a bad peer is rejected."""
        if peer.closed:
            return
        # Any bytes are a sign of life: a node busy sending a large result
        # cannot get a heartbeat frame in between.
        peer.last_heard = self.clock.monotonic()
        try:
            events = peer.conn.receive_data(data)
            out = peer.conn.data_to_send()
            if out:
                peer.link.write(out)  # handshake replies need no commit
            for ev in events:
                if isinstance(ev, P.Message):
                    try:
                        self.on_message(peer, ev)
                    except ProtocolError:
                        raise
                    except Exception:  # ours: never charged to the peer
                        self._apply_later(peer, ev, 1)
                else:
                    self._on_authenticated(peer, ev)
        except ProtocolError as exc:
            self.reject(peer, exc)

    def reject(self, peer: PeerState, exc: ProtocolError) -> None:
        """Drop a peer that broke the protocol, telling it why."""
        self.rejected += 1
        log.warning(
            "dropping %s: %s",
            peer.describe(),
            exc,
            extra={
                "event": "peer_rejected",
                "peer": peer.addr,
                "code": exc.code,
                "role": peer.role,
            },
        )
        if not peer.closed:
            try:
                peer.link.write(peer.conn.error_bytes(exc))
            except Exception:  # the error frame is a courtesy; closing is what matters
                pass
            peer.link.close()
        peer.closed = True
        self.gone(peer)

    def _on_authenticated(self, peer: PeerState, ev: P.Authenticated) -> None:
        peer.role, peer.name = ev.peer_role, ev.peer_name
        log.info(
            "%s authenticated",
            peer.describe(),
            extra={
                "event": "peer_auth",
                "peer": peer.addr,
                "role": peer.role,
                "peer_name": peer.name,
            },
        )

    def gone(self, peer: PeerState) -> None:
        """The connection closed (or was dropped): requeue a node's leases."""
        peer.closed = True
        if peer not in self.peers:
            return
        self.peers.discard(peer)
        if peer.node_id is not None:
            node = peer.node_id
            self.nodes.pop(node, None)
            self._free.discard(node)
            now = self.clock.time()
            lost = self.backend.node_lost(node, now)
            log.info(
                "node %s gone; %d lease(s) requeued",
                peer.describe(),
                len(lost),
                extra={
                    "event": "node_gone",
                    "node": node,
                    "peer": peer.addr,
                    "requeued": len(lost),
                },
            )
            for corr in [c for c, (n, _) in self._revokes.items() if n == node]:
                del self._revokes[corr]
            # Tasks a client is cancelling are not run again: cancel them now.
            waiting = [tid for tid in lost if tid in self._cancel_waits]
            if waiting:
                self.backend.cancel(waiting, now)
            peer.node_id = None
            self.schedule_flush()
        for tid in peer.subscribed:
            subs = self._subs.get(tid)
            if subs is not None:
                try:
                    subs.remove(peer)
                except ValueError:
                    pass
                if not subs:
                    del self._subs[tid]
        peer.subscribed.clear()

    def _subscribe(self, peer: PeerState, tid: str) -> None:
        if tid in peer.subscribed:
            return
        peer.subscribed.add(tid)
        self._subs.setdefault(tid, []).append(peer)

    # -- messages -------------------------------------------------------------
    def on_message(self, peer: PeerState, msg: P.Message) -> None:
        """Apply one application message.  Raises ProtocolError for a bad one
        (the peer's fault); our own errors are logged and retried."""
        handler = self._handlers.get(msg.type)
        if handler is None:
            raise UnexpectedMessage(f"{msg.type.name} is not a request the coordinator serves")
        # a bad body raises MalformedFrame in messages.py; anything else is ours
        handler(self, peer, msg)
        if msg.type not in _NO_FLUSH or peer.results_due:
            self.schedule_flush()

    def store_unavailable(self, what: str, failures: int) -> bool:
        """True (and logged in one line) when the exception being handled means
        the store is out of reach for now: an outage to wait out, not a bug."""
        exc = sys.exc_info()[1]
        if not isinstance(exc, self.backend.unavailable):
            return False
        self.healthy = False
        self._store_was_down = True
        log.warning(
            "store unavailable while %s (%d time(s)): %s; retrying",
            what,
            failures,
            exc,
            extra={"event": "store_unavailable", "failures": failures},
        )
        return True

    def _apply_later(self, peer: PeerState, msg: P.Message, failures: int) -> None:
        """Our error while applying ``msg``: log it and apply it again later."""
        if not self.store_unavailable(f"applying {msg.type.name}", failures):
            self.internal_errors += 1
            log.exception(
                "internal error while applying %s from %s (%d time(s)); retrying, nothing"
                " charged to the peer",
                msg.type.name,
                peer.describe(),
                failures,
                extra={"event": "internal_error", "msg_type": msg.type.name, "peer": peer.addr},
            )
        self._retries.append((peer, msg, failures))
        if self._wake is not None:
            self._wake(min(1.0, 0.05 * 2**failures))

    def _need_node(self, peer: PeerState, msg: P.Message) -> str:
        if peer.node_id is None:
            raise UnexpectedMessage(f"{msg.type.name} before READY")
        peer.last_heard = self.clock.monotonic()
        return peer.node_id

    def _h_submit(self, peer: PeerState, msg: P.Message) -> None:
        specs = M.Submit.from_body(msg.body).tasks
        self._rows += len(specs)
        states = self.backend.submit(specs, self.clock.time())
        for spec, st in zip(specs, states):
            self._subscribe(peer, spec.id)
            if st in TERMINAL:
                self._push_now.append((peer, spec.id))
        peer.send(M.SubmitAck(states), msg.corr)

    def _h_wait(self, peer: PeerState, msg: P.Message) -> None:
        ids = M.Wait.from_body(msg.body).ids
        unknown = []
        for tid, info in zip(ids, self.backend.info(ids)):
            if info is None:
                unknown.append(tid)
                continue
            self._subscribe(peer, tid)
            if info.state in TERMINAL:
                self._push_now.append((peer, tid))
        if msg.corr:
            peer.send(M.WaitAck(unknown), msg.corr)

    def _h_cancel(self, peer: PeerState, msg: P.Message) -> None:
        request = M.Cancel.from_body(msg.body)
        ids, terminate = request.ids, request.terminate
        req = _CancelRequest(peer, msg.corr, len(ids))
        revoke: dict[str, list[M.Revocation]] = {}
        backend = self.backend
        now = self.clock.time()
        for i, (tid, info) in enumerate(zip(ids, backend.info(ids))):
            if info is None or info.state in TERMINAL:
                # as concurrent.futures answers; it also makes a resent CANCEL safe
                req.answers[i] = info is not None and info.state is TaskState.CANCELLED
            elif info.state is TaskState.LEASED and info.node in self.nodes:
                self._cancel_waits.setdefault(tid, []).append((req, i, terminate))
                revoke.setdefault(info.node, []).append(M.Revocation(tid, info.token, terminate))
            else:
                if info.node is not None:
                    self._free.add(info.node)  # not ours (leased elsewhere): a no-op then
                req.answers[i] = backend.cancel([tid], now)[0]
        for node, rows in revoke.items():
            corr = next(self._corr) & 0xFFFFFFFF or 1
            self._revokes[corr] = (node, [(r.id, r.token) for r in rows])
            self.nodes[node].send(M.Revoke(rows), corr)
        self._answer_if_certain(req)

    def _h_revoke_ack(self, peer: PeerState, msg: P.Message) -> None:
        node = self._need_node(peer, msg)
        self._free.add(node)
        outcomes = M.RevokeAck.from_body(msg.body).outcomes
        entry = self._revokes.pop(msg.corr, None)
        if entry is None or entry[0] != node:
            return  # from before a reconnect: the node-loss path settled those
        backend = self.backend
        now = self.clock.time()
        for (tid, token), outcome in zip(entry[1], outcomes):
            if outcome is M.RevokeOutcome.REVOKED:
                backend.revoked(node, tid, token, now)  # ends CANCELLED: settled in _push_results
            elif outcome is M.RevokeOutcome.RUNNING:
                self._settle_cancel(tid, False, only_plain=True)
            # "terminating" and "unknown": the task's completion settles it
            self._cancel_if_off_lease(tid)

    def _cancel_if_off_lease(self, tid: str) -> None:
        """A task being cancelled that left its lease without ending (requeued,
        released, rescheduled for a retry) is cancelled now: it must not run."""
        if tid not in self._cancel_waits:
            return
        (info,) = self.backend.info([tid])
        if info is not None and info.state not in TERMINAL and info.state is not TaskState.LEASED:
            self.backend.cancel([tid], self.clock.time())

    def _settle_cancel(self, tid: str, cancelled: bool, only_plain: bool = False) -> None:
        waits = self._cancel_waits.get(tid)
        if not waits:
            return
        keep: list[tuple[_CancelRequest, int, bool]] = []
        for req, i, terminate in waits:
            if only_plain and terminate:
                keep.append((req, i, terminate))
                continue
            req.answers[i] = cancelled
            self._answer_if_certain(req)
        if keep:
            self._cancel_waits[tid] = keep
        else:
            del self._cancel_waits[tid]

    def _answer_if_certain(self, req: _CancelRequest) -> None:
        if None in req.answers or req.peer.closed:
            return
        req.peer.send(M.CancelAck([bool(a) for a in req.answers]), req.corr)

    def _h_status(self, peer: PeerState, msg: P.Message) -> None:
        M.Status.from_body(msg.body)
        peer.queue(MsgType.STATUS_REPLY, self.status(), msg.corr)

    def _h_dead(self, peer: PeerState, msg: P.Message) -> None:
        limit = M.DeadList.from_body(msg.body).limit
        tasks = [
            M.TaskSummary(i.id, i.state, i.attempts, i.failures, i.lost, i.error)
            for i in self.backend.dead(limit)
        ]
        peer.send(M.DeadReply(tasks), msg.corr)

    def _h_requeue(self, peer: PeerState, msg: P.Message) -> None:
        ids = M.Requeue.from_body(msg.body).ids
        peer.send(M.RequeueAck(self.requeue_dead(ids, peer.describe())), msg.corr)

    def _h_ready(self, peer: PeerState, msg: P.Message) -> None:
        ready = M.Ready.from_body(msg.body)
        if peer.role != "node":
            raise UnexpectedMessage("READY from a peer that did not say it is a node")
        if peer.node_id is None:
            seq = next(self._node_ids)
            node_id = f"{peer.name or 'node'}#{seq}"
            # first: should it raise, READY is applied again from the start
            self.backend.node_joined(node_id, peer.name or "", self.clock.time())
            peer.node_id = node_id
            peer.joined = seq
            self.nodes[node_id] = peer
        self._free.add(peer.node_id)
        peer.capacity = ready.capacity
        peer.queues = dict(ready.queues)
        peer.strict = ready.strict
        peer.last_heard = self.clock.monotonic()
        log.info(
            "node %s ready with capacity %d",
            peer.describe(),
            peer.capacity,
            extra={
                "event": "node_ready",
                "node": peer.node_id,
                "peer": peer.addr,
                "capacity": peer.capacity,
            },
        )

    def _h_credit(self, peer: PeerState, msg: P.Message) -> None:
        capacity = M.Credit.from_body(msg.body).capacity
        self._free.add(self._need_node(peer, msg))
        peer.capacity = capacity

    def _h_heartbeat(self, peer: PeerState, msg: P.Message) -> None:
        # Answered at once, not after a commit: it only says "I am here".
        M.Heartbeat.from_body(msg.body)
        if peer.node_id is not None:
            peer.last_heard = self.clock.monotonic()
        if not peer.closed:
            peer.link.write(self._heartbeat_ack)

    def _h_done(self, peer: PeerState, msg: P.Message) -> None:
        rows = M.Done.from_body(msg.body).results
        node = self._need_node(peer, msg)
        self._free.add(node)
        self._rows += len(rows)
        verdicts = self.backend.complete(node, rows, self.clock.time())
        cancel_waits = self._cancel_waits
        for row, verdict in zip(rows, verdicts):
            if verdict is not ACCEPTED:
                log.info(
                    "late completion of task %s (attempt %s) from node %s: %s",
                    row.id,
                    row.token,
                    peer.describe(),
                    verdict.value,
                    extra={"event": "completion_" + verdict.value, "task": row.id, "node": node},
                )
            elif not row.ok:
                log.info(
                    "task %s (attempt %s) %s on node %s: %s",
                    row.id,
                    row.token,
                    "was cancelled" if row.cancelled else "failed",
                    peer.describe(),
                    _last_line(row.error),
                    extra={"event": "task_failed", "task": row.id, "node": node},
                )
            if row.id in cancel_waits:
                self._cancel_if_off_lease(row.id)
        peer.send(M.DoneAck(verdicts), msg.corr)

    def _h_release(self, peer: PeerState, msg: P.Message) -> None:
        rows = M.Release.from_body(msg.body).tasks
        node = self._need_node(peer, msg)
        self._free.add(node)
        self.backend.release(node, rows, self.clock.time())
        for row in rows:
            if row.id in self._cancel_waits:
                self._cancel_if_off_lease(row.id)

    def _h_results_taken(self, peer: PeerState, msg: P.Message) -> None:
        n = M.ResultsTaken.from_body(msg.body).n
        sizes = peer._sent_sizes
        while n > 0 and sizes:  # the client takes whole RESULTS messages, in order
            rows, nbytes = sizes.popleft()
            n -= rows
            peer.results_out -= rows
            peer.results_out_bytes -= nbytes
        if peer.results_due:
            self._windowed.add(peer)

    def _h_purge(self, peer: PeerState, msg: P.Message) -> None:
        req = M.Purge.from_body(msg.body)
        n = self.backend.purge(
            self.clock.time(),
            finished_before=req.finished_before,
            dead=req.dead,
            limit=min(req.limit, _PURGE_BATCH),
        )
        log.info(
            "%s purged %d task(s) (finished before %s%s)",
            peer.describe(),
            n,
            req.finished_before,
            ", dead ones" if req.dead else "",
            extra={"event": "operator_purge", "count": n, "peer": peer.addr},
        )
        peer.send(M.PurgeAck(n), msg.corr)

    def _h_configure_queue(self, peer: PeerState, msg: P.Message) -> None:
        req = M.ConfigureQueue.from_body(msg.body)
        row = self.configure_queue(req.name, req.rate_limit, req.paused, peer.describe())
        peer.send(M.QueueInfoReply(row), msg.corr)

    def _h_schedule(self, peer: PeerState, msg: P.Message) -> None:
        spec = M.SetSchedule.from_body(msg.body).spec
        try:
            sch = self.backend.put_schedule(spec, self.clock.time())
        except ValueError as exc:  # the client checks first; an older one may not
            raise MalformedFrame(f"bad SCHEDULE body: {exc}") from None
        peer.send(M.ScheduleInfo(_schedule_row(sch)), msg.corr)

    def _h_schedule_ctl(self, peer: PeerState, msg: P.Message) -> None:
        req = M.ScheduleCtl.from_body(msg.body)
        row = None
        if req.action == "delete":
            self.backend.delete_schedule(req.id)
        else:
            row = self.pause_schedule(req.id, req.action == "pause")
        peer.send(M.ScheduleInfo(row), msg.corr)

    def _h_schedules(self, peer: PeerState, msg: P.Message) -> None:
        M.Schedules.from_body(msg.body)
        rows = [_schedule_row(s) for s in self.backend.schedules()]
        peer.send(M.ScheduleList(rows), msg.corr)

    # -- operator actions (messages above, and the dashboard) --------------------
    # Each changes the store and asks for a flush; the change is durable once
    # the next commit ran (the dashboard awaits it with on_commit).
    def requeue_dead(self, ids: Sequence[str], by: str) -> list[bool]:
        """Move dead-lettered tasks back to their queues; True for each one moved."""
        return self._on_dead(self.backend.requeue_dead, ids, by, "requeued")

    def delete_dead(self, ids: Sequence[str], by: str) -> list[bool]:
        """Purge dead-lettered tasks; True for each one purged."""
        return self._on_dead(self.backend.delete_dead, ids, by, "deleted")

    def _on_dead(
        self,
        op: Callable[[Sequence[str], float], list[bool]],
        ids: Sequence[str],
        by: str,
        verb: str,
    ) -> list[bool]:
        out = op(ids, self.clock.time())
        n = sum(out)
        if n:
            log.info(
                "%s %s %d dead task(s)",
                by,
                verb,
                n,
                extra={"event": f"operator_{verb}_dead", "count": n, "by": by},
            )
            self.schedule_flush()
        return out

    def configure_queue(
        self, name: str, rate_limit: Any = M.KEEP, paused: Any = M.KEEP, by: str = "operator"
    ) -> dict[str, Any]:
        """Set a queue's rate limit and pause (:data:`~pyqueue.cluster.messages.KEEP`
        leaves one as it is); returns the queue's row.  ValueError for a bad rate."""
        current = {q.name: q for q in self.backend.queues()}.get(name)
        if rate_limit is M.KEEP:
            rate_limit = current.rate_limit if current is not None else None
        if paused is M.KEEP:
            paused = current.paused if current is not None else False
        info = self.backend.configure_queue(
            name, rate_limit=rate_limit, paused=paused, now=self.clock.time()
        )
        log.info(
            "%s set queue %s: rate limit %s, %s",
            by,
            name,
            "none" if rate_limit is None else f"{rate_limit:g}/s",
            "paused" if paused else "running",
            extra={"event": "queue_configured", "queue": name, "by": by},
        )
        self.schedule_flush()
        return self._queue_row(info, self.clock.time())

    def pause_schedule(self, schedule_id: str, paused: bool) -> dict[str, Any] | None:
        """Pause or resume a schedule; its row, or None for an unknown id."""
        sch = self.backend.pause_schedule(schedule_id, paused, self.clock.time())
        self.schedule_flush()
        return None if sch is None else _schedule_row(sch)

    def on_commit(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the next flush has committed (then the change
        that preceded it is durable)."""
        self._after_commit.append(callback)
        self.schedule_flush()

    @staticmethod
    def _queue_row(q: QueueInfo, wall: float) -> dict[str, Any]:
        return {
            "name": q.name,
            "rate_limit": q.rate_limit,
            "paused": q.paused,
            "tasks": {s.name.lower(): n for s, n in q.counts.items()},
            "oldest_pending_s": None if q.oldest_ready is None else round(wall - q.oldest_ready, 3),
        }

    _handlers: dict[MsgType, Callable[[CoordinatorCore, PeerState, P.Message], None]] = {
        MsgType.SUBMIT: _h_submit,
        MsgType.WAIT: _h_wait,
        MsgType.CANCEL: _h_cancel,
        MsgType.STATUS: _h_status,
        MsgType.DEAD_LIST: _h_dead,
        MsgType.REQUEUE: _h_requeue,
        MsgType.READY: _h_ready,
        MsgType.CREDIT: _h_credit,
        MsgType.HEARTBEAT: _h_heartbeat,
        MsgType.DONE: _h_done,
        MsgType.RELEASE: _h_release,
        MsgType.REVOKE_ACK: _h_revoke_ack,
        MsgType.RESULTS_TAKEN: _h_results_taken,
        MsgType.PURGE: _h_purge,
        MsgType.CONFIGURE_QUEUE: _h_configure_queue,
        MsgType.SCHEDULE: _h_schedule,
        MsgType.SCHEDULE_CTL: _h_schedule_ctl,
        MsgType.SCHEDULES: _h_schedules,
    }

    # -- batching --------------------------------------------------------------
    def schedule_flush(self) -> None:
        """Ask the owner for a flush: at once, or a little later when busy."""
        if self.flush_scheduled or self._wake is None:
            return
        self.flush_scheduled = True
        delay = 0.0
        if self._busy:
            delay = max(0.0, self._last_flush + _BUSY_FLUSH_GAP - self.clock.monotonic())
        self._wake(delay)

    def flush(self) -> None:
        """Dispatch, commit once, then write everything that waited for the commit."""
        self.flush_scheduled = False
        self._busy = self._rows >= _BUSY_ROWS
        self._rows = 0
        self._last_flush = self.clock.monotonic()
        self._apply_retries()
        try:
            self._dispatch()
            if self._purge_behind:
                purged = self.backend.expire(self.clock.time(), _PURGE_CATCH_UP)
                self._purge_behind = purged >= _PURGE_CATCH_UP
            t0 = time.perf_counter()
            self.backend.commit()
            self.backend.telemetry.commit.observe(time.perf_counter() - t0)
            self._push_results()
        except Exception:
            self._flush_failed()
            return
        self._flush_failures = 0
        self.healthy = True
        if self._after_commit:
            done, self._after_commit = self._after_commit, []
            for callback in done:
                try:
                    callback()
                except Exception:  # a waiter's bug must not stop the flush
                    log.exception("an after-commit callback failed")
        outboxed, self._outboxed = self._outboxed, set()
        for peer in outboxed:
            if peer.outbox:
                data = b"".join(peer.outbox)
                peer.outbox.clear()
                if not peer.closed:
                    peer.link.write(data)
        if self._store_was_down:
            self._after_outage()
        elif self._purge_behind:
            self.schedule_flush()

    def _after_outage(self) -> None:
        # A reply lost in the outage (a lease granted, finished ids drained)
        # cannot be asked for again; the reconnect protocol recovers both:
        # nodes' leases are requeued, clients WAIT again for what they miss.
        self._store_was_down = False
        self._free.update(self.nodes)
        log.warning(
            "store reachable again: re-making every connection so that peers resend"
            " what the outage may have lost",
            extra={"event": "store_recovered", "peers": len(self.peers)},
        )
        for peer in list(self.peers):
            peer.link.abort()

    def _apply_retries(self) -> None:
        retries, self._retries = self._retries, []
        for peer, msg, failures in retries:
            if peer.closed:
                continue  # its peer resends after reconnecting
            try:
                self.on_message(peer, msg)
            except ProtocolError as exc:
                self.reject(peer, exc)
            except Exception:
                self._apply_later(peer, msg, failures + 1)

    def _flush_failed(self) -> None:
        # Ours, not a peer's: nothing that waited for this commit is written.
        # Retry with backoff; if it keeps failing, re-make every connection so
        # that clients and nodes resend what is unacknowledged.
        self._flush_failures += 1
        self.healthy = False
        self._free.update(self.nodes)  # a lease may not have been committed
        n = self._flush_failures
        if not self.store_unavailable("flushing", n):
            self.internal_errors += 1
            log.exception(
                "internal error in the coordinator's flush (%d in a row); retrying",
                n,
                extra={"event": "flush_failed", "failures": n},
            )
        if n >= _FLUSH_FAILURES_BEFORE_RESET:
            log.error(
                "flush failed %d times in a row: dropping every connection",
                n,
                extra={"event": "flush_reset"},
            )
            self._flush_failures = 0
            for peer in list(self.peers):
                peer.outbox.clear()
                peer.link.abort()
            self._outboxed.clear()
        if self._wake is not None:
            self.flush_scheduled = True
            self._wake(min(1.0, 0.05 * 2**n))

    def _dispatch(self) -> None:
        backend = self.backend
        wall = self.clock.time()
        fired = backend.fire_schedules(wall)
        if fired:
            log.info(
                "%d schedule fire(s) submitted",
                len(fired),
                extra={"event": "schedule_fired", "tasks": fired[:10]},
            )
        backend.promote_due(wall)
        nodes = self.nodes
        free = self._free
        if len(free) < len(nodes):
            # offered in join order, as self.nodes is
            offer = sorted((nodes[n] for n in free if n in nodes), key=_joined)
            free.difference_update([n for n in free if n not in nodes])
        else:
            offer = list(nodes.values())
        demands: dict[str, Demand] = {}
        for peer in offer:
            if peer.closed or peer.paused:
                continue  # stays marked: it is offered work once it drains
            node_id = peer.node_id
            assert node_id is not None
            if peer.capacity > 0:
                demands[node_id] = Demand(peer.capacity, peer.queues, peer.strict)
            else:
                free.discard(node_id)  # CREDIT or READY marks it again
        grants = backend.lease(demands, wall) if demands else {}
        for node_id, grant in grants.items():
            if grant.held >= demands[node_id].capacity:
                free.discard(node_id)  # full: DONE, RELEASE, ... mark it again
        # a task due later or a rate-limited queue's next token: flush just then
        at = backend.next_ready(wall)
        if (
            at is not None
            and self._wake is not None
            and (self._timed_flush is None or at < self._timed_flush or self._timed_flush <= wall)
        ):
            self._timed_flush = at
            self._wake(max(0.0, at - wall))
        for node_id, grant in grants.items():
            peer = self.nodes[node_id]
            rows = [list(le) for le in grant.leases]
            for batch in P.split_batches(rows, _task_size, self._batch_bytes):
                peer.outbox.append(self.encode(MsgType.TASKS, {"tasks": batch}))
            self._outboxed.add(peer)
            if grant.held > peer.max_outstanding:
                peer.max_outstanding = grant.held

    def _push_results(self) -> None:
        backend = self.backend
        per_peer: dict[PeerState, list[str]] = {}
        cancel_waits = self._cancel_waits
        for tid in backend.drain_finished():
            if tid in cancel_waits:
                (info,) = backend.info([tid])
                self._settle_cancel(tid, info is not None and info.state is TaskState.CANCELLED)
            subs = self._subs.pop(tid, None)
            if not subs:
                continue
            for peer in subs:
                peer.subscribed.discard(tid)
                per_peer.setdefault(peer, []).append(tid)
        for peer, pushed in self._push_now:
            per_peer.setdefault(peer, []).append(pushed)
        self._push_now.clear()
        for peer, tids in per_peer.items():
            if not peer.closed:
                peer.results_due.extend(tids)
                self._windowed.add(peer)
        for peer in list(self._windowed):
            self._send_results(peer)

    def _send_results(self, peer: PeerState) -> None:
        """Push what is due to ``peer`` within its window; the rest waits (ids only)."""
        due = peer.results_due
        if peer.closed or not due:
            self._windowed.discard(peer)
            return
        rows_free = RESULT_WINDOW - peer.results_out
        bytes_free = RESULT_WINDOW_BYTES - peer.results_out_bytes
        if rows_free <= 0 or bytes_free <= 0:
            return  # RESULTS_TAKEN reopens it
        take = [due.popleft() for _ in range(min(rows_free, len(due)))]
        rows: list[list[Any]] = []
        size = 0
        outcomes = self.backend.outcomes(take)
        for i, out in enumerate(outcomes):
            if out is None:
                continue  # purged while waiting: the client's WAIT answers "unknown"
            row = [out.id, int(out.state), out.value, out.error]
            n = _result_size(row)
            if rows and size + n > bytes_free:
                due.extendleft(reversed(take[i:]))  # over the byte window: later
                break
            rows.append(row)
            size += n
        if not due:
            self._windowed.discard(peer)
        if not rows:
            return
        if size <= self._batch_bytes and len(rows) <= P.BATCH_COUNT:
            batches = [rows]  # the common case: sizes are known already
        else:
            batches = P.split_batches(rows, _result_size, self._batch_bytes)
        self._outboxed.add(peer)
        for batch in batches:
            peer.outbox.append(self.encode(MsgType.RESULTS, {"results": batch}))
            nbytes = size if len(batches) == 1 else sum(map(_result_size, batch))
            peer._sent_sizes.append((len(batch), nbytes))
            peer.results_out += len(batch)
            peer.results_out_bytes += nbytes

    # -- timers -----------------------------------------------------------------
    def started(self) -> None:
        """Serving starts now: the first tick measures its lag from here."""
        self._last_tick = self.clock.monotonic()

    def tick(self) -> None:
        """Find dead nodes, promote due tasks, apply retention.  The owner calls
        it every ``timings.sweep`` seconds."""
        now = self.clock.monotonic()
        # While the loop was blocked (a long commit, a huge message) nobody
        # could be heard: do not hold that time against the nodes.
        lag = now - self._last_tick - self.timings.sweep
        self._last_tick = now
        # only a long block counts, so a loop that is merely slow still
        # finds dead nodes in time
        if lag > self.timings.dead_after / 4:
            for peer in self.nodes.values():
                peer.last_heard += lag
        limit = min(self.timings.lease, self.timings.dead_after)
        for node_id, peer in list(self.nodes.items()):
            if now - peer.last_heard > limit:
                log.warning(
                    "node %s missed its heartbeats for %.1f s; requeueing its leases",
                    peer.describe(),
                    now - peer.last_heard,
                    extra={
                        "event": "node_dead",
                        "node": node_id,
                        "silent_s": round(now - peer.last_heard, 3),
                    },
                )
                peer.link.abort()
                self.gone(peer)
        wall = self.clock.time()
        if self.backend.keepalive(wall):
            self._free.update(self.nodes)  # a shared store: leases may have moved
            self.schedule_flush()
        if self.backend.promote_due(wall):
            self.schedule_flush()
        # bounded batches: a large backlog of expired tasks never stalls dispatch
        purged = self.backend.expire(wall, _PURGE_BATCH)
        if purged:
            self._purge_behind = purged >= _PURGE_BATCH
            self.schedule_flush()

    # -- introspection ---------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """Nodes, queue depth, tasks in flight, dead letters and counters."""
        st = self.backend.stats()
        tasks = st.as_dict()["tasks"]
        assert isinstance(tasks, dict)
        now = self.clock.monotonic()
        wall = self.clock.time()
        return {
            "time": wall,
            "started_at": self.started_at,
            "nodes": [
                {
                    "id": nid,
                    "address": p.addr,
                    "state": _node_state(p),
                    "capacity": p.capacity,
                    "outstanding": st.held.get(nid, 0),
                    "max_outstanding": p.max_outstanding,
                    "queues": p.queues,
                    "silent_s": round(now - p.last_heard, 3),
                    "connected_s": round(now - p.connected_at, 3),
                }
                for nid, p in self.nodes.items()
            ],
            "queue_depth": tasks["pending"] + tasks["scheduled"],
            "in_flight": tasks["leased"],
            "dead": tasks["dead"],
            "tasks": tasks,
            "completions": {v.value: n for v, n in st.completions.items()},
            "purged": st.purged,
            "peers": len(self.peers),
            "rejected_peers": self.rejected,
            "queues": [self._queue_row(q, wall) for q in self.backend.queues()],
            "schedules": [_schedule_row(s) for s in self.backend.schedules()],
            # counted since this coordinator started: rates are their differences
            "totals": dict(self.backend.telemetry.totals()),
            "internal_errors": self.internal_errors,
        }
