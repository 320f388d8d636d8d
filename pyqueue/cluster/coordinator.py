"""The coordinator: an asyncio socket server in front of a :class:`Backend`.

One event loop thread does everything.  Each received batch of frames is
applied to the backend; then, once per loop iteration, :meth:`_flush`
dispatches ready tasks to nodes with free credits, commits the backend (one
SQLite transaction for the whole batch) and only then writes the
acknowledgements, dispatches and result pushes that depend on it.

Leases and liveness: every message from a node renews all of its leases.  A
node silent for ``min(lease, missed_heartbeats * heartbeat)`` seconds is
declared dead: its connection is dropped and its leases requeue at their old
positions (``lost`` + 1).  A closed connection requeues at once.

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

Errors of our own (a failing flush or commit) are logged with their traceback
and retried; they are never charged to a peer.  Batches are cut by encoded
size as well as count, so no batch exceeds the frame limit.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import ssl
import threading
import time
from typing import Any

from pyqueue.errors import MalformedFrame, ProtocolError, UnexpectedMessage

from . import protocol as P
from .config import DEFAULT_TIMINGS, Timings
from .protocol import MsgType
from .states import TERMINAL, TaskState
from .store import Backend, SQLiteBackend, SubmitSpec

__all__ = ["Coordinator"]

log = logging.getLogger("pyqueue.cluster.coordinator")

_MAX_ID = 512
#: consecutive failed flushes after which every connection is re-made
_FLUSH_FAILURES_BEFORE_RESET = 3
#: a flush that carried this many submits and completions means we are busy...
_BUSY_ROWS = 4
#: ...and then the next one waits until this long after it, so that each commit
#: and each write carries more (an idle round trip is never delayed)
_BUSY_FLUSH_GAP = 0.001
#: finished tasks purged per sweep at most
_PURGE_BATCH = 10_000


def _task_size(row: list[Any]) -> int:
    return len(row[0]) + len(row[2]) + 16


def _result_size(row: list[Any]) -> int:
    return len(row[0]) + len(row[2] or b"") + len(row[3] or "") + 16


def _last_line(text: str | None) -> str:
    text = (text or "").rstrip()
    return text.rsplit("\n", 1)[-1] if text else "no error text"


class _CancelRequest:
    """One CANCEL from a client, answered once every id's outcome is certain."""

    __slots__ = ("peer", "corr", "answers")

    def __init__(self, peer: _Peer, corr: int, n: int) -> None:
        self.peer = peer
        self.corr = corr
        self.answers: list[bool | None] = [None] * n


class _Peer(asyncio.Protocol):
    """One TCP connection; thin glue between the transport and the coordinator."""

    def __init__(self, coord: Coordinator) -> None:
        self.coord = coord
        self.conn = P.Connection(
            coord.key,
            server=True,
            max_frame=coord.max_frame,
            max_message=coord.max_payload + P.ENVELOPE_BYTES,
        )
        self.transport: asyncio.Transport | None = None
        self.addr = "?"
        self.role = ""
        self.name = ""
        self.node_id: str | None = None
        self.capacity = 0
        self.max_outstanding = 0
        self.last_heard = time.monotonic()
        self.outbox: list[bytes] = []
        self.subscribed: set[str] = set()
        self.closed = False
        self.paused = False
        self._timer: asyncio.TimerHandle | None = None

    # asyncio callbacks ----------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.addr = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self._timer = asyncio.get_running_loop().call_later(
            self.coord.timings.handshake_timeout, self._handshake_deadline
        )
        self.coord._peers.add(self)

    def _handshake_deadline(self) -> None:
        if not self.conn.authenticated and not self.closed:
            self.coord._reject(
                self, UnexpectedMessage("no authentication within the handshake timeout")
            )

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        # Any bytes are a sign of life: a node busy sending a large result
        # cannot get a heartbeat frame in between.
        self.last_heard = time.monotonic()
        try:
            events = self.conn.receive_data(data)
            out = self.conn.data_to_send()
            if out and self.transport is not None:
                self.transport.write(out)  # handshake replies need no commit
            for ev in events:
                if isinstance(ev, P.Message):
                    self.coord._on_message(self, ev)
                else:
                    self.coord._on_authenticated(self, ev)
        except ProtocolError as exc:
            self.coord._reject(self, exc)
        except Exception:  # a bug must cost one connection, never the server
            log.exception("internal error while serving %s", self.describe())
            self.coord._reject(self, ProtocolError("internal error in the coordinator"))

    def pause_writing(self) -> None:
        # The peer is not reading: stop dispatching to it until it drains.
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self.coord._schedule_flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
        self.coord._on_gone(self)

    # helpers --------------------------------------------------------------
    def describe(self) -> str:
        """Who this peer is, for log lines: node id or role and name, and address."""
        role = self.role or self.conn.peer_role  # from HELLO, before authentication too
        name = self.name or self.conn.peer_name
        who = self.node_id or " ".join(x for x in (role, name) if x) or "peer"
        return f"{who} ({self.addr})"

    def queue(self, mtype: MsgType, body: dict[str, Any], corr: int = 0) -> None:
        """Queue a message; written after the next commit."""
        self.outbox.append(self.coord.encode(mtype, body, corr))
        self.coord._schedule_flush()


class Coordinator:
    """Serve a task queue to nodes and clients.

    Parameters
    ----------
    key : bytes
        Shared secret (see :func:`pyqueue.cluster.config.load_key`).
    backend : Backend, optional
        Defaults to an in-memory :class:`SQLiteBackend` (no durability); pass
        ``SQLiteBackend(path)`` for a durable store.
    host, port : str, int
        Where to listen.  127.0.0.1 unless told otherwise; port 0 picks one.
    timings : Timings
        Lease, heartbeat and handshake clocks (``FAST_TIMINGS`` for tests).
    ssl_context : ssl.SSLContext, optional
        Server-side TLS context; the HMAC handshake runs inside it.

    Thread safety
    -------------
    Runs in one event loop.  :meth:`start_in_thread` and :meth:`stop` may be
    called from any thread.
    """

    def __init__(
        self,
        key: bytes,
        backend: Backend | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        timings: Timings = DEFAULT_TIMINGS,
        max_frame: int = P.DEFAULT_MAX_FRAME,
        max_payload: int = P.DEFAULT_MAX_PAYLOAD,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.key = key
        self.backend = backend if backend is not None else SQLiteBackend(None)
        self.host = host
        self.port = port
        self.timings = timings
        self.max_frame = max_frame
        self.max_payload = max_payload
        self._batch_bytes = min(P.BATCH_BYTES, max_payload)
        self.ssl_context = ssl_context
        self._peers: set[_Peer] = set()
        self._nodes: dict[str, _Peer] = {}
        self._subs: dict[str, list[_Peer]] = {}
        self._push_now: list[tuple[_Peer, str]] = []
        self._flush_scheduled = False
        self._node_ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._stopped: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._corr = itertools.count(1)
        self._cancel_waits: dict[str, list[tuple[_CancelRequest, int, bool]]] = {}
        self._revokes: dict[int, tuple[str, list[tuple[str, int]]]] = {}  # REVOKE corr -> rows
        self._flush_failures = 0
        self._heartbeat_ack = P.encode_frame(MsgType.HEARTBEAT_ACK, 0, {})
        self._rows = 0  # submits and completions since the last flush
        self._busy = False
        self._last_flush = 0.0
        self._last_sweep = time.monotonic()
        self.rejected = 0
        self.internal_errors = 0
        self.address: tuple[str, int] | None = None

    def encode(self, mtype: MsgType, body: dict[str, Any], corr: int = 0) -> bytes:
        """The frames of one message (several if it is larger than a frame)."""
        return P.encode_message(
            mtype, corr, body, self.max_frame, self.max_payload + P.ENVELOPE_BYTES
        )

    # -- lifecycle ----------------------------------------------------------
    async def start(self) -> tuple[str, int]:
        """Bind and start serving; return the bound ``(host, port)``."""
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        self._server = await self._loop.create_server(
            lambda: _Peer(self), self.host, self.port, ssl=self.ssl_context, reuse_address=True
        )
        sock = self._server.sockets[0]
        addr = sock.getsockname()
        self.address = (addr[0], addr[1])
        self.backend.describe_owner(f"{addr[0]}:{addr[1]}")
        self._last_sweep = time.monotonic()
        self._sweeper = self._loop.call_later(self.timings.sweep, self._sweep)
        log.info(
            "coordinator listening on %s:%s",
            addr[0],
            addr[1],
            extra={"event": "listening", "address": f"{addr[0]}:{addr[1]}"},
        )
        return self.address

    async def serve_forever(self) -> None:
        """Serve until :meth:`stop`."""
        if self._server is None:
            await self.start()
        assert self._stopped is not None
        await self._stopped.wait()
        await self._shutdown()

    async def _shutdown(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._server is not None:
            self._server.close()
        for peer in list(self._peers):
            if peer.transport is not None:
                peer.transport.abort()
        self._flush()
        self.backend.close()
        log.info("coordinator stopped", extra={"event": "stopped"})

    def stop(self) -> None:
        """Ask the loop to stop (thread-safe)."""
        if self._loop is not None and self._stopped is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
        if self._thread is not None and threading.current_thread() is not self._thread:
            self._thread.join(10)

    def start_in_thread(self) -> tuple[str, int]:
        """Run the coordinator on a daemon thread; return its address."""
        ready = threading.Event()
        errors: list[BaseException] = []

        def main() -> None:
            async def go() -> None:
                try:
                    await self.start()
                except BaseException as exc:  # surface bind errors to the caller
                    errors.append(exc)
                    ready.set()
                    return
                ready.set()
                await self.serve_forever()

            asyncio.run(go())

        self._thread = threading.Thread(target=main, name="pyqueue-coordinator", daemon=True)
        self._thread.start()
        ready.wait(30)
        if errors:
            raise errors[0]
        assert self.address is not None
        return self.address

    # -- connection events --------------------------------------------------
    def _reject(self, peer: _Peer, exc: ProtocolError) -> None:
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
        if peer.transport is not None and not peer.closed:
            try:
                peer.transport.write(peer.conn.error_bytes(exc))
            except Exception:  # the error frame is a courtesy; closing is what matters
                pass
            peer.transport.close()
        peer.closed = True
        self._on_gone(peer)

    def _on_authenticated(self, peer: _Peer, ev: P.Authenticated) -> None:
        if peer._timer is not None:
            peer._timer.cancel()
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

    def _on_gone(self, peer: _Peer) -> None:
        if peer not in self._peers:
            return
        self._peers.discard(peer)
        if peer.node_id is not None:
            node = peer.node_id
            self._nodes.pop(node, None)
            lost = self.backend.node_lost(node)
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
                self.backend.cancel(waiting)
            peer.node_id = None
            self._schedule_flush()
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

    def _subscribe(self, peer: _Peer, tid: str) -> None:
        if tid in peer.subscribed:
            return
        peer.subscribed.add(tid)
        self._subs.setdefault(tid, []).append(peer)

    # -- messages -------------------------------------------------------------
    def _on_message(self, peer: _Peer, msg: P.Message) -> None:
        handler = self._handlers.get(msg.type)
        if handler is None:
            raise UnexpectedMessage(f"{msg.type.name} is not a request the coordinator serves")
        try:
            handler(self, peer, msg)
        except ProtocolError:
            raise
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            raise MalformedFrame(
                f"bad {msg.type.name} body: {exc.__class__.__name__}: {exc}"
            ) from None
        self._schedule_flush()

    def _need_node(self, peer: _Peer, msg: P.Message) -> str:
        if peer.node_id is None:
            raise UnexpectedMessage(f"{msg.type.name} before READY")
        peer.last_heard = time.monotonic()
        return peer.node_id

    def _h_submit(self, peer: _Peer, msg: P.Message) -> None:
        specs = []
        for row in msg.body["tasks"]:
            tid, payload, retries, backoff, not_before = row[:5]
            ttl = row[5] if len(row) > 5 else None
            if (
                not isinstance(tid, str)
                or not tid
                or len(tid) > _MAX_ID
                or not isinstance(payload, bytes)
            ):
                raise MalformedFrame("task rows need a non-empty string id and bytes payload")
            specs.append(
                SubmitSpec(
                    tid,
                    payload,
                    int(retries),
                    float(backoff),
                    float(not_before),
                    None if ttl is None else float(ttl),
                )
            )
        self._rows += len(specs)
        states = self.backend.submit(specs)
        for spec, st in zip(specs, states):
            self._subscribe(peer, spec.id)
            if st in TERMINAL:
                self._push_now.append((peer, spec.id))
        peer.queue(MsgType.SUBMIT_ACK, {"states": [int(s) for s in states]}, msg.corr)

    def _h_wait(self, peer: _Peer, msg: P.Message) -> None:
        unknown = []
        for tid in msg.body["ids"]:
            if not isinstance(tid, str):
                raise MalformedFrame("ids must be strings")
            rec = self.backend.get(tid)
            if rec is None:
                unknown.append(tid)
                continue
            self._subscribe(peer, tid)
            if rec.state in TERMINAL:
                self._push_now.append((peer, tid))
        if msg.corr:
            peer.queue(MsgType.SUBMIT_ACK, {"unknown": unknown}, msg.corr)

    def _h_cancel(self, peer: _Peer, msg: P.Message) -> None:
        ids = [str(t) for t in msg.body["ids"]]
        terminate = bool(msg.body.get("terminate", False))
        req = _CancelRequest(peer, msg.corr, len(ids))
        revoke: dict[str, list[list[Any]]] = {}
        backend = self.backend
        for i, tid in enumerate(ids):
            rec = backend.get(tid)
            if rec is None or rec.state in TERMINAL:
                # as concurrent.futures answers; it also makes a resent CANCEL safe
                req.answers[i] = rec is not None and rec.state is TaskState.CANCELLED
            elif rec.state is TaskState.LEASED and rec.node in self._nodes:
                self._cancel_waits.setdefault(tid, []).append((req, i, terminate))
                revoke.setdefault(rec.node, []).append([tid, rec.attempts, terminate])
            else:
                req.answers[i] = backend.cancel([tid])[0]
        for node, rows in revoke.items():
            corr = next(self._corr) & 0xFFFFFFFF or 1
            self._revokes[corr] = (node, [(r[0], r[1]) for r in rows])
            self._nodes[node].queue(MsgType.REVOKE, {"tasks": rows}, corr)
        self._answer_if_certain(req)

    def _h_revoke_ack(self, peer: _Peer, msg: P.Message) -> None:
        node = self._need_node(peer, msg)
        entry = self._revokes.pop(msg.corr, None)
        if entry is None or entry[0] != node:
            return  # from before a reconnect: the node-loss path settled those
        backend = self.backend
        for (tid, token), outcome in zip(entry[1], msg.body["outcomes"]):
            if outcome == "revoked":
                backend.revoked(node, tid, token)  # ends CANCELLED: settled in _push_results
            elif outcome == "running":
                self._settle_cancel(tid, False, only_plain=True)
            # "terminating" and "unknown": the task's completion settles it
            self._cancel_if_off_lease(tid)

    def _cancel_if_off_lease(self, tid: str) -> None:
        """A task being cancelled that left its lease without ending (requeued,
        released, rescheduled for a retry) is cancelled now: it must not run."""
        if tid not in self._cancel_waits:
            return
        rec = self.backend.get(tid)
        if rec is not None and rec.state not in TERMINAL and rec.state is not TaskState.LEASED:
            self.backend.cancel([tid])

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
        req.peer.queue(MsgType.CANCEL_ACK, {"cancelled": req.answers}, req.corr)

    def _h_status(self, peer: _Peer, msg: P.Message) -> None:
        peer.queue(MsgType.STATUS_REPLY, self.status(), msg.corr)

    def _h_dead(self, peer: _Peer, msg: P.Message) -> None:
        limit = int(msg.body.get("limit", 100))
        peer.queue(MsgType.DEAD_REPLY, {"tasks": self.backend.dead(limit)}, msg.corr)

    def _h_requeue(self, peer: _Peer, msg: P.Message) -> None:
        ids = [str(t) for t in msg.body["ids"]]
        peer.queue(MsgType.REQUEUE_ACK, {"requeued": self.backend.requeue_dead(ids)}, msg.corr)

    def _h_ready(self, peer: _Peer, msg: P.Message) -> None:
        if peer.role != "node":
            raise UnexpectedMessage("READY from a peer that did not say it is a node")
        if peer.node_id is None:
            peer.node_id = f"{peer.name or 'node'}#{next(self._node_ids)}"
            self._nodes[peer.node_id] = peer
        peer.capacity = max(0, int(msg.body["capacity"]))
        peer.last_heard = time.monotonic()
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

    def _h_credit(self, peer: _Peer, msg: P.Message) -> None:
        self._need_node(peer, msg)
        peer.capacity = max(0, int(msg.body["capacity"]))

    def _h_heartbeat(self, peer: _Peer, msg: P.Message) -> None:
        # Answered at once, not after a commit: it only says "I am here".
        if peer.node_id is not None:
            peer.last_heard = time.monotonic()
        if peer.transport is not None and not peer.closed:
            peer.transport.write(self._heartbeat_ack)

    def _h_done(self, peer: _Peer, msg: P.Message) -> None:
        node = self._need_node(peer, msg)
        complete = self.backend.complete
        status = []
        self._rows += len(msg.body["results"])
        for row in msg.body["results"]:
            tid, token, ok, value, error = row[:5]
            cancelled = bool(row[5]) if len(row) > 5 else False
            if value is not None and not isinstance(value, bytes):
                raise MalformedFrame("result values must be bytes")
            error = None if error is None else str(error)
            verdict = complete(node, str(tid), int(token), bool(ok), value, error, cancelled)
            if verdict != "accepted":
                log.info(
                    "late completion of task %s (attempt %s) from node %s: %s",
                    tid,
                    token,
                    peer.describe(),
                    verdict,
                    extra={"event": "completion_" + verdict, "task": tid, "node": node},
                )
            elif not ok:
                log.info(
                    "task %s (attempt %s) %s on node %s: %s",
                    tid,
                    token,
                    "was cancelled" if cancelled else "failed",
                    peer.describe(),
                    _last_line(error),
                    extra={"event": "task_failed", "task": tid, "node": node},
                )
            status.append(verdict)
            if tid in self._cancel_waits:
                self._cancel_if_off_lease(str(tid))
        peer.queue(MsgType.DONE_ACK, {"status": status}, msg.corr)

    def _h_release(self, peer: _Peer, msg: P.Message) -> None:
        node = self._need_node(peer, msg)
        for row in msg.body["tasks"]:
            started = bool(row[2]) if len(row) > 2 else False
            self.backend.release(node, str(row[0]), int(row[1]), started)
            if row[0] in self._cancel_waits:
                self._cancel_if_off_lease(str(row[0]))

    _handlers = {
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
    }

    # -- batching --------------------------------------------------------------
    def _schedule_flush(self) -> None:
        if not self._flush_scheduled and self._loop is not None:
            self._flush_scheduled = True
            if self._busy:
                delay = self._last_flush + _BUSY_FLUSH_GAP - time.monotonic()
                if delay > 0:
                    self._loop.call_later(delay, self._flush)
                    return
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Dispatch, commit once, then write everything that waited for the commit."""
        self._flush_scheduled = False
        self._busy = self._rows >= _BUSY_ROWS
        self._rows = 0
        self._last_flush = time.monotonic()
        try:
            self._dispatch()
            self.backend.commit()
            self._push_results()
        except Exception:
            self._flush_failed()
            return
        self._flush_failures = 0
        for peer in list(self._peers):
            if peer.outbox:
                data = b"".join(peer.outbox)
                peer.outbox.clear()
                if peer.transport is not None and not peer.closed:
                    peer.transport.write(data)

    def _flush_failed(self) -> None:
        # Ours, not a peer's: nothing that waited for this commit is written.
        # Retry with backoff; if it keeps failing, re-make every connection so
        # that clients and nodes resend what is unacknowledged.
        self.internal_errors += 1
        self._flush_failures += 1
        n = self._flush_failures
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
            for peer in list(self._peers):
                peer.outbox.clear()
                if peer.transport is not None:
                    peer.transport.abort()
        if self._loop is not None:
            self._loop.call_later(min(1.0, 0.05 * 2**n), self._schedule_flush)

    def _dispatch(self) -> None:
        backend = self.backend
        for node_id, peer in list(self._nodes.items()):
            held = backend.leased_count(node_id)
            free = peer.capacity - held
            if free <= 0 or peer.closed or peer.paused:
                continue
            leases = backend.lease(node_id, min(free, P.BATCH_COUNT))
            if not leases:
                continue
            rows = [list(le) for le in leases]
            for batch in P.split_batches(rows, _task_size, self._batch_bytes):
                peer.outbox.append(self.encode(MsgType.TASKS, {"tasks": batch}))
            if held + len(leases) > peer.max_outstanding:
                peer.max_outstanding = held + len(leases)

    def _push_results(self) -> None:
        backend = self.backend
        per_peer: dict[_Peer, list[str]] = {}
        cancel_waits = self._cancel_waits
        for tid in backend.drain_finished():
            if tid in cancel_waits:
                rec = backend.get(tid)
                self._settle_cancel(tid, rec is not None and rec.state is TaskState.CANCELLED)
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
            if peer.closed:
                continue
            rows: list[list[Any]] = []
            for one in tids:
                out = backend.outcome(one)
                if out is None:
                    continue
                st, value, error = out
                rows.append([one, int(st), value, error])
                backend.forget_result(one)
            for batch in P.split_batches(rows, _result_size, self._batch_bytes):
                peer.outbox.append(self.encode(MsgType.RESULTS, {"results": batch}))

    # -- timers -----------------------------------------------------------------
    def _sweep(self) -> None:
        assert self._loop is not None
        try:
            now = time.monotonic()
            # While this loop was blocked (a long commit, a huge message) nobody
            # could be heard: do not hold that time against the nodes.
            lag = now - self._last_sweep - self.timings.sweep
            self._last_sweep = now
            # only a long block counts, so a loop that is merely slow still
            # finds dead nodes in time
            if lag > self.timings.dead_after / 4:
                for peer in self._nodes.values():
                    peer.last_heard += lag
            limit = min(self.timings.lease, self.timings.dead_after)
            for node_id, peer in list(self._nodes.items()):
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
                    if peer.transport is not None:
                        peer.transport.abort()
                    peer.closed = True
                    self._on_gone(peer)
            wall = time.time()
            if self.backend.promote_due(wall):
                self._schedule_flush()
            # bounded batches: a large backlog of expired tasks never stalls dispatch
            if self.backend.purge(wall, _PURGE_BATCH):
                self._schedule_flush()
        except Exception:  # never let the sweeper die silently
            log.exception("sweep failed")
        self._sweeper = self._loop.call_later(self.timings.sweep, self._sweep)

    # -- introspection ---------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """Nodes, queue depth, tasks in flight, dead letters and counters."""
        st = self.backend.stats()
        tasks = st["tasks"]
        now = time.monotonic()
        return {
            "nodes": [
                {
                    "id": nid,
                    "address": p.addr,
                    "capacity": p.capacity,
                    "outstanding": self.backend.leased_count(nid),
                    "max_outstanding": p.max_outstanding,
                    "silent_s": round(now - p.last_heard, 3),
                }
                for nid, p in self._nodes.items()
            ],
            "queue_depth": tasks["pending"] + tasks["scheduled"],
            "in_flight": tasks["leased"],
            "dead": tasks["dead"],
            "tasks": tasks,
            "completions": st["completions"],
            "purged": st.get("purged", 0),
            "peers": len(self._peers),
            "rejected_peers": self.rejected,
        }


__all__ += ["TaskState"]
