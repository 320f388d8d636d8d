"""Blocking-socket transport shared by nodes and clients.

A :class:`Channel` owns one TCP connection to the coordinator at a time, a
reader thread that (re)connects with exponential backoff and jitter, runs the
handshake and hands every received message to ``on_message``.  Any thread may
:meth:`Channel.send`; sends are serialized by a lock.

A channel may be given several coordinator addresses (standbys): it connects
to the first that answers, trying them in order, and after a lost connection,
a failed handshake or a refused connection it moves on to the next one, round
robin; the backoff delay comes between full passes over the list.  Each
connection runs ``on_connect`` as usual, which resends whatever the
coordinator has not acknowledged: when the coordinators share a durable store,
moving to another one loses nothing.

Liveness works both ways: the coordinator answers every HEARTBEAT, and a
channel that hears nothing from it for ``timings.dead_after`` seconds (a
stopped or wedged coordinator) drops the connection and makes a new one.
Clients send a HEARTBEAT after each silent ``timings.heartbeat``; nodes have
a heartbeat thread of their own.

The reader thread never dies of an error: a failed handshake, a protocol
error or an exception in a handler is logged (with its traceback when it is
ours) and the connection is re-made, which makes every :class:`Outbox`
resend what the coordinator has not acknowledged.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import random
import select
import socket
import ssl
import threading
import time
from collections.abc import Iterable
from typing import Any, Callable

from pyqueue.errors import AuthenticationError, PeerError, ProtocolError

from . import protocol as P
from .config import DEFAULT_TIMINGS, Timings, parse_address, parse_addresses
from .protocol import MsgType

__all__ = ["Channel"]

log = logging.getLogger("pyqueue.cluster.channel")

_RECV = 256 * 1024
#: a large send goes out in pieces of this size, each one a sign of progress
_SEND_PIECE = 1024 * 1024


class CoordinatorSilent(ConnectionError):
    """Nothing came from the coordinator for the dead interval: it is stopped or wedged."""


class Channel:
    """A self-healing authenticated connection to the coordinator.

    Parameters
    ----------
    address : str or sequence of str
        ``"HOST:PORT"`` of the coordinator, or several (a sequence, or one
        string joined by commas) tried in order then round robin; see
        :func:`~pyqueue.cluster.config.parse_addresses`.
    key : bytes
        Shared secret.
    role, name : str
        Announced in HELLO.
    on_message : callable
        ``on_message(msg)`` runs on the reader thread for each message.
    on_connect : callable
        Runs on the reader thread after each successful handshake, before any
        message is read; resend unacknowledged state from here.
    on_disconnect : callable, optional
        Runs on the reader thread when a connection is lost.
    after_read : callable, optional
        Runs on the reader thread after the messages of each read were
        handled: a place to answer them in one message instead of one each.
    ssl_context : ssl.SSLContext, optional
        Client-side TLS.
    backoff : (float, float)
        First and largest delay between reconnection attempts, seconds.
    timings : Timings
        ``heartbeat`` and ``dead_after`` for the liveness check.
    keepalive : bool
        Send a HEARTBEAT when the connection has been quiet for a heartbeat
        period (False for nodes, whose heartbeat thread does it).

    Thread safety
    -------------
    :meth:`send`, :meth:`close` and :meth:`wait_connected` are thread-safe.

    Attributes
    ----------
    addresses : tuple of str
        Every coordinator address, in the order given.
    address : str
        The one connected to now, or last connected to (the first of
        :attr:`addresses` until a connection was made); :attr:`host` and
        :attr:`port` are its parts.
    """

    def __init__(
        self,
        address: str | Iterable[str],
        key: bytes,
        *,
        role: str,
        name: str,
        on_message: Callable[[P.Message], None],
        on_connect: Callable[[], None],
        on_disconnect: Callable[[], None] | None = None,
        after_read: Callable[[], None] | None = None,
        max_frame: int = P.DEFAULT_MAX_FRAME,
        max_payload: int = P.DEFAULT_MAX_PAYLOAD,
        ssl_context: ssl.SSLContext | None = None,
        backoff: tuple[float, float] = (0.05, 2.0),
        handshake_timeout: float = 10.0,
        timings: Timings = DEFAULT_TIMINGS,
        keepalive: bool = True,
    ) -> None:
        self.addresses = tuple(parse_addresses(address))
        self._targets = [parse_address(a) for a in self.addresses]
        self._current = 0  # index of the address connected to now, or last
        self.key = key
        self.role = role
        self.name = name
        self.on_message = on_message
        self.on_connect = on_connect
        self.on_disconnect = on_disconnect
        self.after_read = after_read
        self.max_frame = max_frame
        self.max_message = max_payload + P.ENVELOPE_BYTES
        # what we send: within our limits and the coordinator's (set on connect)
        self._out_frame = min(max_frame, self.max_message)
        self._out_message = self.max_message
        #: the smaller of ours and the coordinator's (announced in WELCOME)
        self.max_payload = max_payload
        self._own_max_payload = max_payload
        self.ssl_context = ssl_context
        self.backoff = backoff
        self.handshake_timeout = handshake_timeout
        self.timings = timings
        self.keepalive = keepalive
        self._heartbeat = P.encode_frame(MsgType.HEARTBEAT, 0, {})
        self._heard = 0.0  # monotonic time of the last bytes from the coordinator
        self._sent = 0.0  # ... and of the last piece of a large send the kernel took
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._conn: P.Connection | None = None
        self._connected = threading.Event()
        self._closing = threading.Event()
        self._corr = itertools.count(1)
        self._thread = threading.Thread(
            target=self._run, name=f"pyqueue-{role}-reader", daemon=True
        )
        self.fatal: BaseException | None = None
        self.connections = 0
        #: grows with every connection; a send for an older one is refused
        self.generation = 0

    @property
    def address(self) -> str:
        """The coordinator connected to now, or last connected to, as given."""
        return self.addresses[self._current]

    @property
    def host(self) -> str:
        """The host part of :attr:`address`."""
        return self._targets[self._current][0]

    @property
    def port(self) -> int:
        """The port of :attr:`address`."""
        return self._targets[self._current][1]

    def start(self) -> None:
        """Start the reader thread (it connects in the background)."""
        self._thread.start()

    def next_corr(self) -> int:
        """A fresh correlation id."""
        return next(self._corr) & 0xFFFFFFFF or 1

    @property
    def connected(self) -> bool:
        """True while an authenticated connection is up."""
        return self._connected.is_set()

    def wait_connected(self, timeout: float | None) -> bool:
        """Block until connected; False on timeout."""
        return self._connected.wait(timeout)

    def encode(self, mtype: MsgType, body: dict[str, Any], corr: int = 0) -> bytes:
        """The frames of one message, as :meth:`send_frames` takes them.

        Raises
        ------
        FrameTooLarge
            If the message is larger than this channel's limit.
        """
        return P.encode_message(mtype, corr, body, self._out_frame, self._out_message)

    def send(self, mtype: MsgType, body: dict[str, Any], corr: int = 0) -> bool:
        """Send one message; False (and nothing sent) when not connected."""
        return self.send_frames([self.encode(mtype, body, corr)])

    def send_frames(self, frames: list[bytes], generation: int | None = None) -> bool:
        """Send pre-encoded frames in one write; False when not connected, or
        when ``generation`` is given and the connection it names is gone."""
        with self._lock:
            sock = self._sock
            if sock is None or not self._connected.is_set():
                return False
            if generation is not None and generation != self.generation:
                return False
            data = b"".join(frames) if len(frames) > 1 else frames[0]
            try:
                if len(data) <= _SEND_PIECE:
                    sock.sendall(data)
                else:  # record progress, so that a long upload is not taken for silence
                    view = memoryview(data)
                    for i in range(0, len(view), _SEND_PIECE):
                        sock.sendall(view[i : i + _SEND_PIECE])
                        self._sent = time.monotonic()
                return True
            except OSError:
                self._drop_locked()
                return False

    def _ping(self) -> None:
        """A HEARTBEAT, unless a send is under way (that one proves more)."""
        if not self._lock.acquire(blocking=False):
            return
        try:
            sock = self._sock
            if sock is not None and self._connected.is_set():
                sock.sendall(self._heartbeat)
        except OSError:
            self._drop_locked()
        finally:
            self._lock.release()

    def reconnect(self) -> None:
        """Drop the current connection (if any); the reader thread makes a new one."""
        with self._lock:
            self._drop_locked()

    def close(self) -> None:
        """Close for good; the reader thread exits."""
        self._closing.set()
        with self._lock:
            self._drop_locked()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(5)

    def _drop_locked(self) -> None:
        self._connected.clear()
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    # -- reader thread ----------------------------------------------------------
    def _run(self) -> None:
        try:
            self._serve()
        except BaseException:  # a bug here would leave the peer unreachable: say so
            log.critical(
                "%s reader thread died; no more messages from %s",
                self.role,
                ",".join(self.addresses),
                exc_info=True,
            )
            self._connected.clear()
            raise

    def _serve(self) -> None:
        delay = self.backoff[0]
        n = len(self._targets)
        i = 0  # the address to try next
        failed = 0  # failed attempts in this pass over the addresses
        slow = False  # one of them will not get better by retrying soon
        while not self._closing.is_set():
            where = self.addresses[i]
            try:
                sock, conn = self._connect(*self._targets[i])
            except AuthenticationError as exc:
                # A wrong key will not fix itself, but the coordinator might be
                # restarted with the right one: keep trying, slowly and loudly
                # (and the other addresses first).
                log.error(
                    "authentication with the coordinator at %s failed: %s",
                    where,
                    exc,
                    extra={"event": "auth_failed", "coordinator": where},
                )
                self.fatal = exc
                slow = True
            except (OSError, ProtocolError) as exc:
                log.debug("connect to %s failed: %s", where, exc)
            except Exception:
                log.exception("connecting to %s failed unexpectedly; retrying", where)
                slow = True
            else:
                lived = self._session(i, sock, conn)
                if lived is None:
                    return
                # A connection that dies at once (a rejecting or crashing peer)
                # must not turn into a reconnect storm; one that lived a while
                # resets the backoff.
                if lived > 5.0:
                    delay = self.backoff[0]
                self._closing.wait(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, self.backoff[1])
                i, failed, slow = (i + 1) % n, 0, False  # the next coordinator first
                continue
            i = (i + 1) % n
            failed += 1
            if failed < n:
                continue  # the next address at once: the delay is between passes
            if slow:
                self._closing.wait(self.backoff[1])
            else:
                self._closing.wait(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, self.backoff[1])
            failed, slow = 0, False

    def _session(self, index: int, sock: socket.socket, conn: P.Connection) -> float | None:
        """Serve one authenticated connection to ``self.addresses[index]`` until
        it is lost; how long it lived, in seconds, or None when the channel
        was closed before it could start."""
        where = self.addresses[index]
        self.fatal = None
        started = time.monotonic()
        with self._lock:
            if self._closing.is_set():
                sock.close()
                return None
            previous = self.addresses[self._current] if self.connections else None
            self._current = index
            self._sock, self._conn = sock, conn
            self.generation += 1
            self.max_payload = min(self._own_max_payload, conn.peer_max_payload)
            self._out_message = self.max_payload + P.ENVELOPE_BYTES
            self._out_frame = min(self.max_frame, conn.peer_max_frame, self._out_message)
            self._connected.set()
        self.connections += 1
        if previous is not None and previous != where:
            log.warning(
                "%s %s switched from the coordinator at %s to the one at %s",
                self.role,
                self.name,
                previous,
                where,
                extra={
                    "event": "coordinator_switch",
                    "role": self.role,
                    "previous": previous,
                    "coordinator": where,
                },
            )
        log.info(
            "%s %s connected to the coordinator at %s",
            self.role,
            self.name,
            where,
            extra={"event": "connected", "role": self.role, "coordinator": where},
        )
        try:
            self.on_connect()
            self._read(sock, conn)
        except (OSError, ProtocolError) as exc:
            if not self._closing.is_set():
                log.warning(
                    "%s %s lost its connection to %s: %s",
                    self.role,
                    self.name,
                    where,
                    exc,
                    extra={"event": "disconnected", "role": self.role, "coordinator": where},
                )
        except Exception:
            log.exception(
                "%s %s: handling a message from %s failed; reconnecting",
                self.role,
                self.name,
                where,
            )
        with self._lock:
            if self._sock is sock:
                self._drop_locked()
        if self.on_disconnect is not None and not self._closing.is_set():
            try:
                self.on_disconnect()
            except Exception:
                log.exception("%s %s: disconnect handler failed", self.role, self.name)
        return time.monotonic() - started

    def _connect(self, host: str, port: int) -> tuple[socket.socket, P.Connection]:
        sock = socket.create_connection((host, port), timeout=self.handshake_timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.ssl_context is not None:
                sock = self.ssl_context.wrap_socket(sock, server_hostname=host)
            conn = P.Connection(
                self.key,
                server=False,
                role=self.role,
                name=self.name,
                max_frame=self.max_frame,
                max_message=self.max_message,
            )
            sock.sendall(conn.data_to_send())
            deadline = time.monotonic() + self.handshake_timeout
            while not conn.authenticated:
                if time.monotonic() > deadline:
                    raise TimeoutError("handshake timed out")
                data = sock.recv(P.HANDSHAKE_MAX_FRAME)
                if not data:
                    raise ConnectionResetError(
                        "coordinator closed the connection during the handshake"
                    )
                try:
                    conn.receive_data(data)  # no Message can precede WELCOME
                except PeerError:
                    raise
                except ProtocolError as exc:
                    # Tell the coordinator why we leave (a wrong key shows
                    # there, with our address, as well as here).
                    with contextlib.suppress(OSError):
                        sock.sendall(conn.error_bytes(exc))
                    raise
                out = conn.data_to_send()
                if out:
                    sock.sendall(out)
            sock.settimeout(None)
            return sock, conn
        except PeerError as exc:
            sock.close()
            if exc.remote_code == "auth":
                raise AuthenticationError(str(exc)) from None
            raise
        except BaseException:
            sock.close()
            raise

    def _read(self, sock: socket.socket, conn: P.Connection) -> None:
        on_message = self.on_message
        after_read = self.after_read
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        period_ms = max(1, int(self.timings.heartbeat * 1000))
        dead_after = self.timings.dead_after
        self._heard = self._sent = time.monotonic()
        tls = isinstance(sock, ssl.SSLSocket)
        while True:
            if not (tls and sock.pending()) and not poller.poll(period_ms):  # type: ignore[attr-defined]
                silent = time.monotonic() - max(self._heard, self._sent)
                if silent > dead_after:
                    # shutdown() also wakes a send stuck on a full socket buffer
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
                    raise CoordinatorSilent(
                        f"the coordinator has not answered for {silent:.1f} s"
                        f" (dead after {dead_after:g} s)"
                    )
                if self.keepalive:
                    self._ping()
                continue
            data = sock.recv(_RECV)
            if not data:
                raise ConnectionResetError("coordinator closed the connection")
            self._heard = time.monotonic()
            for ev in conn.receive_data(data):
                if isinstance(ev, P.Message) and ev.type != MsgType.HEARTBEAT_ACK:
                    on_message(ev)
            if after_read is not None:
                after_read()
