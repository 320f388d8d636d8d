"""The coordinator's asyncio server: sockets and timers around the sans-IO core.

Everything the coordinator decides is in :mod:`pyqueue.cluster.coordinator`
(:class:`~pyqueue.cluster.coordinator.CoordinatorCore`); this module only
accepts connections, feeds their bytes to the core, writes what it answers,
and runs its flushes and ticks on one event loop thread.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from typing import TYPE_CHECKING, Any

from pyqueue.errors import ProtocolError

from . import protocol as P
from .backend import Backend
from .config import DEFAULT_TIMINGS, Timings, dashboard_token
from .coordinator import CoordinatorCore, PeerState

if TYPE_CHECKING:
    from .web import WebServer

__all__ = ["Coordinator"]

log = logging.getLogger("pyqueue.cluster.coordinator")


class _Connection(asyncio.Protocol):
    """One TCP connection: the core's :class:`~pyqueue.cluster.coordinator.Link`."""

    def __init__(self, server: Coordinator) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.peer: PeerState | None = None
        self._timer: asyncio.TimerHandle | None = None

    # Link -------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # asyncio callbacks ----------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        name = transport.get_extra_info("peername")
        addr = f"{name[0]}:{name[1]}" if isinstance(name, tuple) else str(name)
        core = self.server.core
        self.peer = core.connect(self, addr)
        peer = self.peer
        self._timer = asyncio.get_running_loop().call_later(
            core.timings.handshake_timeout, core.handshake_expired, peer
        )

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        assert peer is not None
        core = self.server.core
        try:
            core.receive(peer, data)
        except Exception:  # a bug must cost one connection, never the server
            log.exception("internal error while serving %s", peer.describe())
            core.internal_errors += 1
            core.reject(peer, ProtocolError("internal error in the coordinator"))
        if self._timer is not None and peer.conn.authenticated:
            self._timer.cancel()
            self._timer = None

    def pause_writing(self) -> None:
        # The peer is not reading: stop dispatching to it until it drains.
        if self.peer is not None:
            self.peer.paused = True

    def resume_writing(self) -> None:
        if self.peer is not None:
            self.peer.paused = False
            self.server.core.schedule_flush()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self.peer is not None:
            self.server.core.gone(self.peer)


class Coordinator:
    """Serve a task queue to nodes and clients.

    Parameters
    ----------
    key : bytes
        Shared secret (see :func:`pyqueue.cluster.config.load_key`).
    backend : Backend, optional
        Defaults to a :class:`~pyqueue.cluster.backends.MemoryBackend` (no
        durability); pass ``SQLiteBackend(path)`` for a durable store.
    host, port : str, int
        Where to listen.  127.0.0.1 unless told otherwise; port 0 picks one.
    timings : Timings
        Lease, heartbeat and handshake clocks (``FAST_TIMINGS`` for tests).
    max_frame, max_payload : int
        Largest frame, and largest message (a task's payload or result).
    ssl_context : ssl.SSLContext, optional
        Server-side TLS context; the HMAC handshake runs inside it.
    http : (host, port), optional
        Serve the web dashboard, its JSON API and the ``/healthz`` and
        ``/readyz`` probes there (needs ``pyqueue[dashboard]``).
    http_token : str, optional
        The dashboard's token (default: derived from ``key``, see
        :func:`~pyqueue.cluster.config.dashboard_token`).
    metrics : (host, port), optional
        Serve Prometheus ``/metrics`` there (needs ``pyqueue[metrics]``).

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
        http: tuple[str, int] | None = None,
        http_token: str | None = None,
        metrics: tuple[str, int] | None = None,
    ) -> None:
        self.core = CoordinatorCore(
            key,
            backend,
            timings=timings,
            max_frame=max_frame,
            max_payload=max_payload,
            wake=self._wake,
        )
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._ticker: asyncio.TimerHandle | None = None
        self._stopped: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self.address: tuple[str, int] | None = None
        self._web: WebServer | None = None
        if http is not None or metrics is not None:
            from .web import WebServer  # the optional extras: only when asked for

            token = http_token if http_token is not None else dashboard_token(key)
            self._web = WebServer(self.core, token, http=http, metrics=metrics)

    @property
    def web_addresses(self) -> dict[str, tuple[str, int]]:
        """Where the dashboard (``"http"``) and ``"metrics"`` listen, once started."""
        return {} if self._web is None else dict(self._web.addresses)

    @property
    def backend(self) -> Backend:
        """The store the core drives."""
        return self.core.backend

    @property
    def timings(self) -> Timings:
        return self.core.timings

    @property
    def rejected(self) -> int:
        """Peers dropped for breaking the protocol."""
        return self.core.rejected

    @property
    def internal_errors(self) -> int:
        """Errors of our own (logged with their tracebacks, retried)."""
        return self.core.internal_errors

    def status(self) -> dict[str, Any]:
        """Nodes, queue depth, tasks in flight, dead letters and counters."""
        return self.core.status()

    # -- the core's timers --------------------------------------------------
    def _wake(self, delay: float) -> None:
        loop = self._loop
        if loop is None:
            return
        if delay > 0:
            loop.call_later(delay, self.core.flush)
        else:
            loop.call_soon(self.core.flush)

    def _tick(self) -> None:
        assert self._loop is not None
        try:
            self.core.tick()
        except Exception:  # never let the ticker die silently
            if not self.core.store_unavailable("ticking", 1):
                log.exception("coordinator tick failed")
                self.core.internal_errors += 1
        self._ticker = self._loop.call_later(self.core.timings.sweep, self._tick)

    # -- lifecycle ----------------------------------------------------------
    async def start(self) -> tuple[str, int]:
        """Bind and start serving; return the bound ``(host, port)``."""
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        self._server = await self._loop.create_server(
            lambda: _Connection(self),
            self.host,
            self.port,
            ssl=self.ssl_context,
            reuse_address=True,
        )
        sock = self._server.sockets[0]
        addr = sock.getsockname()
        self.address = (addr[0], addr[1])
        self.backend.describe_owner(f"{addr[0]}:{addr[1]}")
        if self._web is not None:
            try:
                await self._web.start()
            except BaseException:
                self._server.close()
                raise
        self.core.started()
        self.core.schedule_flush()  # schedules due and tasks falling due start the clock
        self._ticker = self._loop.call_later(self.core.timings.sweep, self._tick)
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
        if self._ticker is not None:
            self._ticker.cancel()
        if self._server is not None:
            self._server.close()
        if self._web is not None:
            await self._web.stop()
        for peer in list(self.core.peers):
            peer.link.abort()
        self.core.flush()
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
