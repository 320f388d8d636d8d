"""The coordinator's HTTP side: the dashboard, its JSON API, probes and metrics.

Needs the optional extra ``pip install 'pyqueue[dashboard]'`` (aiohttp; add
``[metrics]`` for ``/metrics``).  It runs on the coordinator's own event loop
and every handler is a few in-memory reads of the core (the stores keep their
records in memory), so serving a page never blocks dispatch; an action
(requeue, delete, pause) answers once the commit that made it durable ran.

Security
--------
* Reading needs the token: ``Authorization: Bearer TOKEN``, or the session
  cookie that ``POST /api/login`` sets (HttpOnly, SameSite=Strict).  The
  token is :func:`~pyqueue.cluster.config.dashboard_token` of the cluster key
  unless one is given (``--http-token-file``).
* Every POST except the login carries ``X-CSRF-Token`` (``GET /api/session``
  tells it): another site can neither read it nor send that header.
* No pickled payload or result is ever shown or accepted: task arguments are
  not shown at all, results are not shown, errors are the traceback text the
  node sent.  Bodies are JSON, at most :data:`MAX_BODY` bytes.
* ``/healthz`` and ``/readyz`` (for probes) and ``/metrics`` tell no task's
  data and need no token.  Bind loopback unless the network is trusted.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import hmac
import importlib.resources
import json
import logging
import math
import re
from collections.abc import Awaitable
from typing import Any, Callable

try:
    from aiohttp import web
except ImportError as exc:  # pragma: no cover - the extra is in the test set
    raise ImportError(
        "the coordinator's dashboard needs aiohttp: pip install 'pyqueue[dashboard]'"
    ) from exc

from . import messages as M
from .coordinator import CoordinatorCore
from .states import TaskInfo, TaskState

__all__ = ["WebServer", "MAX_BODY", "error_type"]

log = logging.getLogger("pyqueue.cluster.web")

#: largest request body accepted (a list of 1000 ids fits)
MAX_BODY = 64 * 1024
#: most ids in one action
MAX_IDS = 1000
#: most dead-lettered tasks one listing looks through (the filter runs over these)
DEAD_SCAN = 10_000
#: the rate history: one sample a second for this many seconds
HISTORY_S = 600
#: an action waits this long for its commit before it answers 503
COMMIT_WAIT_S = 30.0

_SESSION_COOKIE = "pyqueue_session"
_CSRF_HEADER = "X-CSRF-Token"
_STATIC = {
    "index.html": "text/html",
    "app.js": "application/javascript",
    "style.css": "text/css",
    "openapi.json": "application/json",
    "status.schema.json": "application/json",
}
_PUBLIC = frozenset({"/healthz", "/readyz", "/api/login", "/api/openapi.json"})
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_ERROR_NAME = re.compile(r"^([A-Za-z_][\w.]*)(?::|$)")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_type(error: str | None) -> str:
    """The kind of a task's last error: the exception's name from the last
    line of its traceback, "lost" when its node kept dying under it, "other"."""
    if not error:
        return "none"
    last = error.strip().rsplit("\n", 1)[-1].strip()
    if last.startswith("its node"):
        return "lost"
    if last.startswith("hard cap"):
        return "attempt-cap"
    m = _ERROR_NAME.match(last)
    return m.group(1).rsplit(".", 1)[-1] if m else "other"


def _task_row(info: TaskInfo) -> dict[str, Any]:
    return {
        "id": info.id,
        "state": info.state.name.lower(),
        "queue": info.queue,
        "priority": info.priority,
        "attempts": info.attempts,
        "failures": info.failures,
        "lost": info.lost,
        "node": info.node,
        "token": info.token if info.state is TaskState.LEASED else None,
        "error": info.error,
        "error_type": error_type(info.error),
        "created": info.created or None,
        "ready": info.ready or None,
        "started": info.started or None,
        "ended": info.ended or None,
        "expires": info.expires or None,
    }


def _problem(status: int, message: str) -> web.Response:
    return web.json_response({"error": message, "status": status}, status=status)


class _Bad(Exception):
    """A request we refuse with 400 (its message is the reason)."""


class RateHistory:
    """One sample a second of the core's totals, for the dashboard's chart."""

    def __init__(self, core: CoordinatorCore, seconds: int = HISTORY_S) -> None:
        self.core = core
        self.samples: collections.deque[list[float]] = collections.deque(maxlen=seconds)

    def sample(self) -> None:
        t = self.core.backend.telemetry.totals()
        self.samples.append(
            [round(self.core.clock.time(), 3), t["submitted"], t["finished"], t["failed"]]
        )


class WebServer:
    """The dashboard and API on ``http`` and/or Prometheus ``/metrics`` on ``metrics``.

    Parameters
    ----------
    core : CoordinatorCore
        Whose state is shown (its loop is the one :meth:`start` runs on).
    token : str
        What a reader must present.
    http, metrics : (host, port), optional
        Where to serve each (port 0 picks one; see :attr:`addresses`).
    """

    def __init__(
        self,
        core: CoordinatorCore,
        token: str,
        *,
        http: tuple[str, int] | None = None,
        metrics: tuple[str, int] | None = None,
    ) -> None:
        if not token:
            raise ValueError("the dashboard token must not be empty")
        self.core = core
        self._token = token.encode()
        self._session = hmac.new(self._token, b"session", hashlib.sha256).hexdigest()
        self._csrf = hmac.new(self._token, b"csrf", hashlib.sha256).hexdigest()
        self._want_http = http
        self._want_metrics = metrics
        self.history = RateHistory(core)
        self.addresses: dict[str, tuple[str, int]] = {}
        self._runners: list[web.AppRunner] = []
        self._sampler: asyncio.TimerHandle | None = None
        self._static = {
            name: importlib.resources.files("pyqueue.cluster").joinpath("webui", name).read_bytes()
            for name in _STATIC
        }
        self._metrics_registry: Any = None
        if metrics is not None:
            from .metrics import registry_for  # needs the [metrics] extra

            self._metrics_registry = registry_for(core)

    # -- lifecycle ----------------------------------------------------------------
    async def start(self) -> None:
        """Bind and serve (on the running loop); raises OSError if a port is taken."""
        try:
            if self._want_http is not None:
                self.addresses["http"] = await self._serve(self._dashboard_app(), self._want_http)
                self._tick()
            if self._want_metrics is not None:
                self.addresses["metrics"] = await self._serve(
                    self._metrics_app(), self._want_metrics
                )
        except BaseException:
            await self.stop()
            raise
        for what, (host, port) in self.addresses.items():
            log.info(
                "%s on http://%s:%d/",
                "dashboard" if what == "http" else "metrics",
                host,
                port,
                extra={"event": f"{what}_listening", "address": f"{host}:{port}"},
            )

    async def _serve(self, app: web.Application, where: tuple[str, int]) -> tuple[str, int]:
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        self._runners.append(runner)
        site = web.TCPSite(runner, where[0], where[1], reuse_address=True)
        await site.start()
        server = site._server
        assert server is not None
        sock = server.sockets[0]  # type: ignore[attr-defined]
        host, port = sock.getsockname()[:2]
        return host, port

    async def stop(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            self._sampler = None
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()

    def _tick(self) -> None:
        try:
            self.history.sample()
        except Exception:  # never let the sampler die silently
            log.exception("the dashboard's rate sampler failed")
        self._sampler = asyncio.get_running_loop().call_later(1.0, self._tick)

    # -- apps ---------------------------------------------------------------------
    def _metrics_app(self) -> web.Application:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        registry = self._metrics_registry

        async def metrics(request: web.Request) -> web.Response:
            body = generate_latest(registry)
            return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_get("/metrics", metrics)
        return app

    def _dashboard_app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY, middlewares=[self._guard])
        r = app.router
        r.add_get("/healthz", self._healthz)
        r.add_get("/readyz", self._readyz)
        r.add_get("/", self._index)
        r.add_get("/static/{name}", self._static_file)
        r.add_get("/api/openapi.json", self._openapi)
        r.add_post("/api/login", self._login)
        r.add_get("/api/session", self._session_info)
        r.add_get("/api/overview", self._overview)
        r.add_get("/api/rates", self._rates)
        r.add_get("/api/tasks/{id}", self._task)
        r.add_get("/api/dead", self._dead)
        r.add_post("/api/dead/requeue", self._requeue)
        r.add_post("/api/dead/delete", self._delete)
        r.add_get("/api/queues", self._queues)
        r.add_post("/api/queues/{name}", self._configure_queue)
        r.add_get("/api/schedules", self._schedules)
        r.add_post("/api/schedules/{id}/{action}", self._schedule_action)
        return app

    # -- the guard: auth, CSRF, errors as JSON --------------------------------------
    def _authorized(self, request: web.Request) -> bool:
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            return hmac.compare_digest(auth[7:].strip().encode(), self._token)
        cookie = request.cookies.get(_SESSION_COOKIE, "")
        return bool(cookie) and hmac.compare_digest(cookie.encode(), self._session.encode())

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        try:
            if path.startswith("/api/") and path not in _PUBLIC:
                if not self._authorized(request):
                    return _problem(401, "a token is needed (Authorization: Bearer, or log in)")
                if request.method == "POST" and not hmac.compare_digest(
                    request.headers.get(_CSRF_HEADER, "").encode(), self._csrf.encode()
                ):
                    return _problem(403, f"missing or wrong {_CSRF_HEADER} header")
            resp = await handler(request)
        except _Bad as exc:
            resp = _problem(400, str(exc))
        except web.HTTPException as exc:  # 404, 405, 413 from aiohttp itself
            resp = _problem(exc.status, exc.reason)
        except Exception:  # ours: logged, and the server keeps serving
            log.exception("dashboard request %s %s failed", request.method, path)
            resp = _problem(500, "internal error (logged by the coordinator)")
        for name, value in _HEADERS.items():
            resp.headers.setdefault(name, value)
        return resp

    async def _json_body(self, request: web.Request) -> dict[str, Any]:
        if request.content_type != "application/json":
            raise _Bad("the body must be JSON (Content-Type: application/json)")
        raw = await request.read()  # 413 past client_max_size
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise _Bad(f"the body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise _Bad("the body must be a JSON object")
        return body

    async def _ids(self, request: web.Request) -> list[str]:
        ids = (await self._json_body(request)).get("ids")
        if (
            not isinstance(ids, list)
            or not 0 < len(ids) <= MAX_IDS
            or not all(isinstance(i, str) and 0 < len(i) <= M.MAX_ID for i in ids)
        ):
            raise _Bad(f'"ids" must be a list of 1 to {MAX_IDS} task ids (strings)')
        return ids

    async def _committed(self) -> None:
        """Wait for the commit that makes the change just made durable."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def committed() -> None:
            if not fut.done():  # the request may have been dropped meanwhile
                fut.set_result(None)

        self.core.on_commit(committed)
        try:
            await asyncio.wait_for(fut, COMMIT_WAIT_S)
        except asyncio.TimeoutError:
            raise web.HTTPServiceUnavailable(
                reason="the store did not commit in time; the change applies once it does"
            ) from None

    # -- probes, pages -------------------------------------------------------------
    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def _readyz(self, request: web.Request) -> web.Response:
        if not self.core.healthy:
            return _problem(503, "the store's commits are failing")
        return web.json_response({"ok": True})

    async def _index(self, request: web.Request) -> web.Response:
        return web.Response(body=self._static["index.html"], content_type="text/html")

    async def _static_file(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in _STATIC:  # a fixed list: no path ever reaches the file system
            raise web.HTTPNotFound(reason=f"no static file {name!r}")
        return web.Response(body=self._static[name], content_type=_STATIC[name])

    async def _openapi(self, request: web.Request) -> web.Response:
        return web.Response(body=self._static["openapi.json"], content_type="application/json")

    # -- session -------------------------------------------------------------------
    async def _login(self, request: web.Request) -> web.Response:
        token = (await self._json_body(request)).get("token")
        if not isinstance(token, str) or not hmac.compare_digest(token.encode(), self._token):
            return _problem(401, "wrong token")
        resp = web.json_response({"csrf": self._csrf})
        resp.set_cookie(_SESSION_COOKIE, self._session, httponly=True, samesite="Strict", path="/")
        return resp

    async def _session_info(self, request: web.Request) -> web.Response:
        return web.json_response({"csrf": self._csrf})

    # -- reads ---------------------------------------------------------------------
    async def _overview(self, request: web.Request) -> web.Response:
        return web.json_response(self.core.status())

    async def _rates(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "fields": ["time", "submitted", "finished", "failed"],
                "samples": list(self.history.samples),
            }
        )

    async def _task(self, request: web.Request) -> web.Response:
        tid = request.match_info["id"]
        (info,) = self.core.backend.info([tid]) if 0 < len(tid) <= M.MAX_ID else (None,)
        if info is None:
            raise web.HTTPNotFound(reason=f"no task {tid!r} (never submitted, or purged)")
        return web.json_response(_task_row(info))

    async def _dead(self, request: web.Request) -> web.Response:
        q = request.query
        queue, kind = q.get("queue") or None, q.get("error_type") or None
        try:
            limit = int(q.get("limit", "100"))
        except ValueError:
            raise _Bad("limit must be an integer") from None
        if not 0 < limit <= MAX_IDS:
            raise _Bad(f"limit must be in 1..{MAX_IDS}")
        rows: list[dict[str, Any]] = []
        kinds = collections.Counter[str]()
        for info in self.core.backend.dead(DEAD_SCAN):
            row = _task_row(info)
            kinds[row["error_type"]] += 1
            if (queue is None or info.queue == queue) and (
                kind is None or row["error_type"] == kind
            ):
                if len(rows) < limit:
                    rows.append(row)
        return web.json_response({"tasks": rows, "error_types": dict(kinds)})

    async def _queues(self, request: web.Request) -> web.Response:
        return web.json_response({"queues": self.core.status()["queues"]})

    async def _schedules(self, request: web.Request) -> web.Response:
        return web.json_response({"schedules": self.core.status()["schedules"]})

    # -- actions -------------------------------------------------------------------
    def _who(self, request: web.Request) -> str:
        return f"dashboard ({request.remote})"

    async def _requeue(self, request: web.Request) -> web.Response:
        moved = self.core.requeue_dead(await self._ids(request), self._who(request))
        await self._committed()
        return web.json_response({"requeued": moved})

    async def _delete(self, request: web.Request) -> web.Response:
        gone = self.core.delete_dead(await self._ids(request), self._who(request))
        await self._committed()
        return web.json_response({"deleted": gone})

    async def _configure_queue(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        why = M.queue_problem(name)
        if why is not None:
            raise _Bad(why)
        body = await self._json_body(request)
        rate: Any = body.get("rate_limit", M.KEEP)
        if rate is not M.KEEP and rate is not None:
            if (
                isinstance(rate, bool)
                or not isinstance(rate, (int, float))
                or not (math.isfinite(rate) and rate > 0)
            ):
                raise _Bad('"rate_limit" must be a number > 0 (per second) or null')
            rate = float(rate)
        paused: Any = body.get("paused", M.KEEP)
        if paused is not M.KEEP and not isinstance(paused, bool):
            raise _Bad('"paused" must be true or false')
        row = self.core.configure_queue(name, rate, paused, self._who(request))
        await self._committed()
        return web.json_response(row)

    async def _schedule_action(self, request: web.Request) -> web.Response:
        action = request.match_info["action"]
        if action not in ("pause", "resume"):
            raise web.HTTPNotFound(reason=f"no schedule action {action!r} (pause or resume)")
        row = self.core.pause_schedule(request.match_info["id"], action == "pause")
        if row is None:
            raise web.HTTPNotFound(reason=f"no schedule {request.match_info['id']!r}")
        await self._committed()
        return web.json_response(row)
