"""The reliable outbox that clients and nodes share.

Rows that the coordinator must acknowledge (submits from a client, results
from a node) go through an :class:`Outbox`: it keeps each row until its
acknowledgement arrives, sends them in batches cut by size and count, and
sends every unacknowledged row again after each reconnect.  The coordinator
treats a repeated row idempotently (a submit of a known id, a completion
already recorded), so resending is always safe.

The sender thread never dies of an error: an exception while sending is
logged with its traceback and the connection is re-made, which resends what
was not acknowledged; a row that cannot be encoded at all is handed to
``on_rejected`` so that whoever waits for it gets an exception.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Hashable, Iterable
from typing import Any, Callable, Generic, TypeVar

from . import protocol as P
from .channel import Channel
from .messages import AppMessage

__all__ = ["Outbox"]

log = logging.getLogger("pyqueue.cluster.outbox")

K = TypeVar("K", bound=Hashable)
#: one row of a batch message (a SubmitSpec, a Completion)
Row = Any


class Outbox(Generic[K]):
    """Rows kept until the coordinator acknowledges them.

    Parameters
    ----------
    channel : Channel
        Where rows are sent; call :meth:`on_connect` from its ``on_connect``.
    message : callable
        ``message(rows)``: the message that carries a batch (a class of
        :mod:`~pyqueue.cluster.messages`, such as ``Submit``); its
        ``to_body()`` is what is sent.
    key : callable
        ``key(row)``: the row's identity (a task id, or an id and a token).
    size : callable
        ``size(row)``: about how many bytes the row encodes to.
    on_rejected : callable, optional
        ``on_rejected(key, row, exc)`` for a row that cannot be encoded; it
        is dropped from the outbox.
    before_send : callable, optional
        Runs on the sender thread each time it wakes, before the rows are
        sent (a node sends its credit and releases from here).
    name : str
        For the thread's name and the logs.

    Thread safety
    -------------
    Every method may be called from any thread.
    """

    def __init__(
        self,
        channel: Channel,
        message: Callable[[list[Row]], AppMessage],
        *,
        key: Callable[[Row], K],
        size: Callable[[Row], int],
        on_rejected: Callable[[K, Row, BaseException], None] | None = None,
        before_send: Callable[[], None] | None = None,
        name: str = "outbox",
    ) -> None:
        self.channel = channel
        self._message = message
        self._key = key
        self._size = size
        self._on_rejected = on_rejected
        self._before_send = before_send
        self.name = name
        self.lock = threading.Lock()
        self._unacked: dict[K, Row] = {}  # insertion order is send order
        self._queue: list[Row] = []  # not yet sent on the current connection
        self._inflight: dict[int, list[K]] = {}
        self._wake = threading.Event()
        self._closed = False
        self.errors = 0  # sender failures survived (each one logged)
        self._thread = threading.Thread(target=self._run, name=f"pyqueue-{name}", daemon=True)

    def start(self) -> None:
        """Start the sender thread."""
        self._thread.start()

    def close(self) -> None:
        """Stop the sender thread; unacknowledged rows are abandoned."""
        self._closed = True
        self._wake.set()

    def wake(self) -> None:
        """Have the sender thread look for work (rows, or ``before_send``'s)."""
        self._wake.set()

    def __len__(self) -> int:
        """Rows not yet acknowledged."""
        return len(self._unacked)

    def __contains__(self, key: object) -> bool:
        return key in self._unacked

    # -- producers --------------------------------------------------------------
    def put(self, row: Row) -> None:
        """Queue one row (replacing an unacknowledged one with the same key)."""
        with self.lock:
            self._unacked[self._key(row)] = row
            queue = self._queue
            queue.append(row)
            fresh = len(queue) == 1
        # The sender takes the whole queue when it wakes (or, disconnected,
        # leaves it to on_connect, which wakes it): only the first row of a
        # fresh queue needs to wake it.
        if fresh:
            self._wake.set()

    def discard(self, key: K) -> Row | None:
        """Forget a row whose outcome is known another way; return it."""
        with self.lock:
            return self._unacked.pop(key, None)

    def discard_all(self, keys: Iterable[K]) -> None:
        """:meth:`discard` each of ``keys``, under one acquisition of the lock."""
        with self.lock:
            pop = self._unacked.pop
            for key in keys:
                pop(key, None)

    # -- the channel's callbacks (reader thread) --------------------------------
    def on_connect(self) -> None:
        """A new connection: everything unacknowledged is sent again."""
        with self.lock:
            self._inflight.clear()
            self._queue = list(self._unacked.values())
        self._wake.set()

    def acked(self, corr: int) -> list[K] | None:
        """The reply to batch ``corr`` arrived: forget its rows and return
        their keys, in batch order; None if ``corr`` is not ours or belongs
        to a connection that is gone."""
        with self.lock:
            keys = self._inflight.pop(corr, None)
            if keys is None:
                return None
            pop = self._unacked.pop
            for k in keys:
                pop(k, None)
            return keys

    # -- sender thread ----------------------------------------------------------
    def _run(self) -> None:
        while not self._closed:
            self._wake.wait()
            self._wake.clear()
            if self._closed:
                return
            try:
                if self._before_send is not None:
                    self._before_send()
                self._send_queued()
            except Exception:
                # Ours, not the coordinator's: say so loudly, then re-make the
                # connection so that everything unacknowledged is resent.
                self.errors += 1
                log.exception(
                    "%s sender failed; reconnecting to %s:%s to resend %d unacknowledged row(s)",
                    self.name,
                    self.channel.host,
                    self.channel.port,
                    len(self._unacked),
                    extra={"event": "sender_failed", "outbox": self.name},
                )
                self.channel.reconnect()

    def _send_queued(self) -> None:
        channel = self.channel
        if not channel.connected:
            return  # on_connect refills the queue
        with self.lock:
            rows, self._queue = self._queue, []
            generation = channel.generation
        if not rows:
            return
        # no batch of valid rows may exceed what the coordinator accepts
        max_bytes = min(P.BATCH_BYTES, channel.max_payload)
        for batch in P.split_batches(rows, self._size, max_bytes):
            corr = channel.next_corr()
            try:
                data = self._encode(batch, corr)
            except Exception as exc:  # a row the coordinator could never take
                batch = self._reject_unencodable(batch, exc)
                if not batch:
                    continue
                data = self._encode(batch, corr)
            with self.lock:
                if generation != channel.generation:
                    return  # reconnected meanwhile: on_connect queued these again
                self._inflight[corr] = [self._key(r) for r in batch]
            if not channel.send_frames([data], generation):
                with self.lock:
                    self._inflight.pop(corr, None)
                return  # still unacknowledged: resent after the reconnect

    def _encode(self, rows: list[Row], corr: int = 0) -> bytes:
        msg = self._message(rows)
        return self.channel.encode(msg.TYPE, msg.to_body(), corr)

    def _reject_unencodable(self, batch: list[Row], exc: BaseException) -> list[Row]:
        """Drop (and hand to ``on_rejected``) the rows that do not encode on
        their own; return the others.  Re-raises ``exc`` if every row does."""
        kept: list[Row] = []
        for row in batch:
            try:
                self._encode([row])
            except Exception as row_exc:
                k = self._key(row)
                with self.lock:
                    self._unacked.pop(k, None)
                log.error(
                    "%s: dropping a row that cannot be sent (%s); its waiter gets the error",
                    self.name,
                    row_exc,
                    extra={"event": "row_rejected", "outbox": self.name, "key": repr(k)},
                )
                if self._on_rejected is not None:
                    self._on_rejected(k, row, row_exc)
            else:
                kept.append(row)
        if len(kept) == len(batch):
            raise exc
        return kept
