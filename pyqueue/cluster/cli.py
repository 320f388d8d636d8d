"""Command lines: ``coordinator``, ``node`` and ``status``.

Wired into ``python -m pyqueue coordinator|node|status``; also runnable as
``python -m pyqueue.cluster.cli coordinator ...``.

A startup error (no key, a bad address, a port in use, an unreadable key
file, a missing store folder, a store held by another coordinator) is one
line on stderr, ``pyqueue <command>: <message>``, and exit code 2.

``pyqueue node`` is a :class:`~pyqueue.cluster.supervisor.Supervisor` whose
child (the same command line plus ``--no-supervise``) is the node: it is
restarted after a crash, and on SIGTERM it stops leasing, gives its running
tasks ``--grace`` seconds and hands back the rest before it exits.  A task
still running ``--time-limit-grace`` seconds past its ``time_limit`` gets its
worker replaced (see :mod:`pyqueue.cluster.node`); the supervisor reports it
FAILED itself when the worker is wedged.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import functools
import gc
import json
import logging
import math
import os
import signal
import socket
import sqlite3
import ssl
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Callable

from pyqueue.errors import KeyNotFound, StoreLocked

from . import protocol as P
from .config import (
    DEFAULT_TIMINGS,
    FAST_TIMINGS,
    Timings,
    dashboard_token,
    is_redis_url,
    load_key,
    parse_address,
    parse_addresses,
)

if TYPE_CHECKING:
    from .client import Client

__all__ = ["main_coordinator", "main_node", "main_status", "main", "JsonFormatter"]

DEFAULT_PORT = 7878
_STD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and every ``extra`` field."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for k, v in vars(record).items():
            if k not in _STD_ATTRS and not k.startswith("_"):
                out[k] = v if isinstance(v, (str, int, float, bool, type(None))) else repr(v)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def _setup_logging(level: str, as_json: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter()
        if as_json
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
    )
    root = logging.getLogger("pyqueue")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


class _StartupError(Exception):
    """A startup problem the user must fix; printed as one line, exit code 2."""


_NO_KEY = (
    "no cluster key: make one with"
    ' `python -c "import secrets; print(secrets.token_hex(32))" > key; chmod 600 key`'
    " and pass --key-file key, or set PYQUEUE_KEY_FILE=key (or PYQUEUE_KEY to the key itself)"
)


#: --store values that name a Redis server rather than a SQLite file


@contextlib.contextmanager
def _startup(context: str = "") -> Iterator[None]:
    """Turn the known startup exceptions into :class:`_StartupError` (one line,
    prefixed with ``context``); anything else stays a traceback: it is a bug."""
    try:
        yield
    except _StartupError:
        raise
    except StoreLocked as exc:
        raise _StartupError(" ".join(str(exc).split())) from exc  # it names the store itself
    except (KeyNotFound, ValueError, OSError, sqlite3.Error) as exc:
        if isinstance(exc, OSError) and exc.errno and exc.errno > 0:
            reason = os.strerror(exc.errno)  # asyncio's bind error repeats the address
        else:
            reason = str(exc) or type(exc).__name__
        msg = f"{context}: {reason}" if context else reason
        raise _StartupError(" ".join(msg.split())) from exc


def _cli(command: str) -> Callable[[Callable[[list[str] | None], int]], Callable[..., int]]:
    """Decorate a ``main_*``: a :class:`_StartupError` becomes
    ``pyqueue <command>: <message>`` on stderr and exit code 2."""

    def decorate(fn: Callable[[list[str] | None], int]) -> Callable[..., int]:
        @functools.wraps(fn)
        def wrapper(argv: list[str] | None = None) -> int:
            try:
                return fn(argv)
            except _StartupError as exc:
                print(f"pyqueue {command}: {exc}", file=sys.stderr, flush=True)
                return 2

        return wrapper

    return decorate


def _load_key(a: argparse.Namespace) -> bytes:
    configured = a.key_file or os.environ.get("PYQUEUE_KEY") or os.environ.get("PYQUEUE_KEY_FILE")
    if not configured:
        raise _StartupError(_NO_KEY)
    with _startup():
        return load_key(key_file=a.key_file)


def _address(option: str, value: str) -> tuple[str, int]:
    with _startup(option):
        return parse_address(value)


def _addresses(option: str, value: str) -> list[str]:
    """Coordinator addresses joined by commas, each one checked."""
    with _startup(option):
        return parse_addresses(value)


#: the help of every --connect
_CONNECT_HELP = (
    "coordinator HOST:PORT, or several joined by commas: standbys, tried in order and"
    " moved on from when a connection is lost (default %(default)s)"
)


def _common(p: argparse.ArgumentParser, log_level: str = "INFO") -> None:
    p.add_argument(
        "--key-file",
        help="file holding the shared key (default: $PYQUEUE_KEY, else $PYQUEUE_KEY_FILE)",
    )
    p.add_argument(
        "--log-level", default=log_level, help="DEBUG, INFO, WARNING or ERROR (default %(default)s)"
    )
    p.add_argument("--log-json", action="store_true", help="structured JSON log lines on stderr")


_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}


def _size(text: str) -> int:
    """``"256M"``, ``"1G"``, ``"65536"``: a byte count (K, M, G are powers of 1024)."""
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = t[-1:] if t[-1:] in _SIZE_UNITS else ""
    try:
        n = int(float(t[: len(t) - len(unit)]) * _SIZE_UNITS[unit])
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 256M or 1G") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: a size must be positive")
    return n


def _max_payload_arg(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--max-payload",
        type=_size,
        default=P.DEFAULT_MAX_PAYLOAD,
        help=f"largest {what} in bytes, K/M/G suffixes allowed (default 256M)",
    )


def _timings(a: argparse.Namespace) -> Timings:
    t = FAST_TIMINGS if a.fast else DEFAULT_TIMINGS
    changes = {
        k: getattr(a, k) for k in ("lease", "heartbeat", "missed_heartbeats") if getattr(a, k, None)
    }
    return t.with_(**changes) if changes else t


def _timing_args(p: argparse.ArgumentParser) -> None:
    d, f = DEFAULT_TIMINGS, FAST_TIMINGS
    p.add_argument(
        "--fast",
        action="store_true",
        help=f"fast timings for tests (a silent node is dead after {f.dead_after:g} s)",
    )
    p.add_argument(
        "--lease", type=float, help=f"lease seconds (default {d.lease:g}; {f.lease:g} with --fast)"
    )
    p.add_argument(
        "--heartbeat",
        type=float,
        help=f"heartbeat seconds (default {d.heartbeat:g}; {f.heartbeat:g} with --fast)",
    )
    p.add_argument(
        "--missed-heartbeats",
        type=int,
        help=f"a node is dead after this many missed heartbeats (default {d.missed_heartbeats})",
    )


#: Garbage-collector thresholds of a coordinator or node process.  Each task
#: allocates a handful of containers there and reference counting frees them;
#: the default first threshold (700) still ran a young collection every ~100
#: tasks, about a tenth of the processes' CPU (13% more tasks/s with these, in
#: the commit that set them).  Only cyclic garbage waits longer for them.
_SERVER_GC_THRESHOLDS = (10_000, 50, 50)


def _tune_gc_for_serving() -> None:
    """Collect less often in a coordinator or node process, once started."""
    gc.freeze()  # what startup built lives as long as the process: full collections skip it
    gc.set_threshold(*_SERVER_GC_THRESHOLDS)


@_cli("coordinator")
def main_coordinator(argv: list[str] | None = None) -> int:
    """``pyqueue coordinator --bind HOST:PORT --store PATH``."""
    from .backend import Backend
    from .backends import MemoryBackend, SQLiteBackend
    from .dispatch import Policy
    from .server import Coordinator

    p = argparse.ArgumentParser(
        prog="pyqueue coordinator", description="Run the cluster coordinator."
    )
    p.add_argument(
        "--bind",
        default=f"127.0.0.1:{DEFAULT_PORT}",
        help="HOST:PORT to listen on (default %(default)s)",
    )
    p.add_argument(
        "--store",
        help="where durable state lives: a SQLite file, or redis://[:PASSWORD@]HOST:PORT/DB"
        " (rediss:// for TLS, redis+cluster:// for Redis Cluster; needs pyqueue[redis])"
        " (default: memory only)",
    )
    p.add_argument(
        "--store-prefix",
        default="pyqueue",
        help="with a redis:// store: the prefix of every key, so that other data and"
        " other clusters in the same database are left alone (default %(default)s)",
    )
    p.add_argument(
        "--synchronous",
        default="NORMAL",
        help="SQLite synchronous pragma: NORMAL or FULL (default %(default)s); with Redis,"
        " durability is its appendfsync setting",
    )
    p.add_argument(
        "--max-lost",
        type=int,
        default=4,
        help="dead-letter a task once its node died under it N times (default %(default)s)",
    )
    p.add_argument(
        "--max-attempts",
        type=int,
        default=20,
        help="dead-letter a task after N leases in all (default %(default)s)",
    )
    p.add_argument(
        "--result-ttl",
        type=float,
        default=3600.0,
        help="seconds a finished task and its result are kept (default %(default)g)",
    )
    p.add_argument(
        "--dead-ttl",
        type=float,
        default=7 * 86400.0,
        help="seconds a dead-lettered task is kept (default %(default)g, 7 days)",
    )
    p.add_argument(
        "--max-dead",
        type=int,
        default=100_000,
        help="most dead-lettered tasks kept; the oldest go first (default %(default)s)",
    )
    p.add_argument("--port-file", help="write the bound HOST:PORT to this file once listening")
    p.add_argument("--tls-cert", help="PEM certificate chain for TLS (default: no TLS)")
    p.add_argument("--tls-key", help="PEM private key for TLS (default: in --tls-cert)")
    p.add_argument("--seed", type=int, help="seed of the retry jitter (default: random)")
    p.add_argument(
        "--http",
        metavar="HOST:PORT",
        help="serve the web dashboard, its JSON API and the /healthz and /readyz probes"
        " here (off by default; needs pyqueue[dashboard])",
    )
    p.add_argument(
        "--http-token-file",
        help="file holding the dashboard's token (default: derived from the key;"
        " `pyqueue http-token` prints it)",
    )
    p.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help="serve Prometheus /metrics here (off by default; needs pyqueue[metrics])",
    )
    _max_payload_arg(p, "argument or result the cluster carries (nodes and clients adopt it)")
    _timing_args(p)
    _common(p)
    a = p.parse_args(argv)
    _setup_logging(a.log_level, a.log_json)
    host, port = _address("--bind", a.bind)
    http = _address("--http", a.http) if a.http else None
    metrics = _address("--metrics", a.metrics) if a.metrics else None
    key = _load_key(a)
    http_token = None
    if a.http_token_file:
        with _startup("--http-token-file"):
            with open(a.http_token_file, encoding="utf-8") as fh:
                http_token = fh.read().strip()
        if not http_token:
            raise _StartupError(f"--http-token-file {a.http_token_file}: the file is empty")
    ctx = None
    if a.tls_cert:
        with _startup("--tls-cert"):
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(a.tls_cert, a.tls_key)
    on_redis = is_redis_url(a.store)
    if a.store and not on_redis:
        folder = os.path.dirname(os.path.abspath(a.store))
        if not os.path.isdir(folder):
            raise _StartupError(f"--store {a.store}: directory {folder} does not exist")
    with _startup("bad retention or retry setting"):
        policy = Policy(
            max_lost=a.max_lost,
            max_attempts=a.max_attempts,
            result_ttl=a.result_ttl,
            dead_ttl=a.dead_ttl,
            max_dead=a.max_dead,
        )
    backend: Backend = MemoryBackend(policy, seed=a.seed)
    if on_redis:
        try:
            from .backends.redis import RedisBackend, redacted
        except ImportError as exc:
            raise _StartupError(
                f"--store redis://...: the Redis store needs pyqueue[redis] ({exc})"
            ) from exc
        with _startup(f"cannot open store {redacted(a.store)}"):
            backend = RedisBackend(a.store, policy, prefix=a.store_prefix, seed=a.seed)
    elif a.store:
        with _startup(f"cannot open store {a.store}"):
            backend = SQLiteBackend(a.store, policy, synchronous=a.synchronous, seed=a.seed)
    coord = Coordinator(
        key,
        backend,
        host=host,
        port=port,
        timings=_timings(a),
        ssl_context=ctx,
        max_payload=a.max_payload,
        http=http,
        http_token=http_token,
        metrics=metrics,
    )

    async def run() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, coord.stop)
        try:
            with _startup(f"cannot listen on {host}:{port}"):
                h, prt = await coord.start()
        except _StartupError:
            backend.close()
            raise
        if a.port_file:
            tmp = a.port_file + ".tmp"
            with open(tmp, "w") as fh:
                fh.write(f"{h}:{prt}\n")
            os.replace(tmp, a.port_file)  # atomic: readers never see half a line
        await coord.serve_forever()

    _tune_gc_for_serving()
    asyncio.run(run())
    return 0


def _client_ssl(a: argparse.Namespace) -> ssl.SSLContext | None:
    if not getattr(a, "tls_ca", None):
        return None
    with _startup("--tls-ca"):
        return ssl.create_default_context(cafile=a.tls_ca)


def _import_paths(a: argparse.Namespace) -> list[str]:
    """The working directory, then every ``--path``, as absolute paths."""
    paths = [os.getcwd()]
    for d in a.path:
        if not os.path.isdir(d):
            raise _StartupError(f"--path {d}: not a directory")
        paths.append(os.path.abspath(d))
    return list(dict.fromkeys(paths))


def _node_preflight(a: argparse.Namespace) -> tuple[bytes, ssl.SSLContext | None, list[str]]:
    """Every check a node makes before it starts, so that a supervisor fails
    once, in one line, instead of restarting a child that cannot start."""
    _addresses("--connect", a.connect)
    if a.workers < 1:
        raise _StartupError(f"--workers {a.workers}: must be at least 1")
    if a.prefetch is not None and a.prefetch < 0:
        raise _StartupError(f"--prefetch {a.prefetch}: must be >= 0")
    if a.grace < 0:
        raise _StartupError(f"--grace {a.grace:g}: must be >= 0")
    if not a.time_limit_grace >= 0 or a.time_limit_grace == float("inf"):
        raise _StartupError(f"--time-limit-grace {a.time_limit_grace:g}: must be a finite >= 0")
    if a.max_restarts < 0 or a.restart_window <= 0:
        raise _StartupError("--max-restarts must be >= 0 and --restart-window > 0")
    from .node import parse_queues

    try:
        parse_queues(a.queues)
    except ValueError as exc:
        raise _StartupError(f"--queues {a.queues}: {exc}") from None
    return _load_key(a), _client_ssl(a), _import_paths(a)


@_cli("node")
def main_node(argv: list[str] | None = None) -> int:
    """``pyqueue node --connect HOST:PORT[,HOST:PORT...] --workers N``.

    Runs a :class:`~pyqueue.cluster.supervisor.Supervisor` that runs the node
    itself in a child process (``--no-supervise``) and restarts it after a crash.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="pyqueue node", description="Run a worker node.")
    p.add_argument("--connect", default=f"127.0.0.1:{DEFAULT_PORT}", help=_CONNECT_HELP)
    p.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="task slots (default: the number of CPUs, %(default)s here)",
    )
    p.add_argument(
        "--prefetch", type=int, default=None, help="tasks held beyond free slots (default 8)"
    )
    p.add_argument(
        "--executor",
        choices=("pyqueue", "threads"),
        default=os.environ.get("PYQUEUE_NODE_EXECUTOR", "pyqueue"),
        help="what runs tasks: pyqueue.Executor or a stdlib thread pool"
        " (default: $PYQUEUE_NODE_EXECUTOR, else pyqueue; %(default)s here)",
    )
    p.add_argument("--name", default=None, help="node name (default HOST:PID)")
    p.add_argument(
        "--queues",
        default="default",
        metavar="NAME[:WEIGHT],...",
        help="queues to serve, with weights (e.g. high:6,default:3,low:1; default %(default)s)",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="drain higher-weight queues first instead of weighted random choice",
    )
    p.add_argument(
        "--path",
        action="append",
        default=[],
        metavar="DIR",
        help="also import task modules from DIR (repeatable; the working directory always is)",
    )
    p.add_argument("--tls-ca", help="CA file to verify the coordinator's TLS certificate")
    p.add_argument(
        "--grace",
        type=float,
        default=30.0,
        help="on SIGTERM, seconds running tasks get to finish before they are"
        " handed back (default %(default)g)",
    )
    p.add_argument(
        "--time-limit-grace",
        type=float,
        default=5.0,
        metavar="S",
        help="seconds a task past its time_limit may still run (after TaskTimeout was"
        " raised in it) before its worker is replaced (default %(default)g)",
    )
    p.add_argument(
        "--max-restarts",
        type=int,
        default=5,
        help="restarts after crashes allowed within --restart-window (default %(default)s)",
    )
    p.add_argument(
        "--restart-window",
        type=float,
        default=60.0,
        help="seconds over which crashes are counted (default %(default)g)",
    )
    # internal: the supervisor's child, the node itself
    _max_payload_arg(p, "result sent back (the coordinator's limit, if smaller, wins)")
    p.add_argument("--no-supervise", action="store_true", help=argparse.SUPPRESS)
    _timing_args(p)
    _common(p)
    a = p.parse_args(argv)
    supervisor = None
    if a.no_supervise:
        from .supervisor import die_with_supervisor

        supervisor = die_with_supervisor()  # first: no orphan even if startup hangs
    _setup_logging(a.log_level, a.log_json)
    key, ctx, paths = _node_preflight(a)
    if not a.no_supervise:
        return _supervise(a, argv, key, ctx)
    return _run_node(a, key, ctx, paths, supervisor)


def _supervise(
    a: argparse.Namespace, argv: list[str], key: bytes, ctx: ssl.SSLContext | None
) -> int:
    from .local import cli_command
    from .node import report_stuck, stuck_completion
    from .supervisor import Overdue, Supervisor

    # A stable name: the node keeps its name across restarts of its child.
    name = a.name or f"{socket.gethostname()}:{os.getpid()}"
    child_args = [*argv, "--name", name, "--no-supervise"]
    log = logging.getLogger("pyqueue.cluster.supervisor")

    def on_wedged(overdue: list[Overdue], pid: int) -> None:
        # while the wedged worker lives, its connection holds these leases
        what = f"its worker process (pid {pid}) was wedged and has been replaced"
        rows = [stuck_completion(r.task_id, r.token, r.limit, r.grace, what) for r in overdue]
        verdicts = report_stuck(
            a.connect, rows, key=key, name=f"{name}/supervisor", ssl_context=ctx,
            timings=_timings(a), timeout=10.0,
        )  # fmt: skip
        if verdicts is None:
            log.error(
                "node %s: the coordinator did not answer the report of the stuck task(s)", name
            )
            return
        for r, v in zip(overdue, verdicts):
            log.warning(
                "node %s: reported task %s (attempt %d) FAILED with TaskTimeout: %s",
                name, r.task_id, r.token, v.value,
                extra={"event": "stuck_reported", "task": r.task_id, "verdict": v.value},
            )  # fmt: skip

    supervisor = Supervisor(
        cli_command("node", *child_args),
        name=name,
        max_restarts=a.max_restarts,
        restart_window=a.restart_window,
        grace=a.grace,
        deadline_slots=a.workers,
        on_wedged=on_wedged,
    )
    return supervisor.run()


def _run_node(
    a: argparse.Namespace,
    key: bytes,
    ctx: ssl.SSLContext | None,
    paths: list[str],
    supervisor: int | None,
) -> int:
    from .node import Node, parse_queues
    from .supervisor import (
        EXIT_TIME_LIMIT,
        DeadlineBoard,
        _exit,
        block_child_signals,
        serve_until_signalled,
    )

    block_child_signals()  # before any thread starts: they all inherit the mask
    # Like `python -m`, and like LocalCluster's nodes: the user's modules next to them.
    sys.path[:0] = [d for d in paths if d not in sys.path]
    with _startup():
        node = Node(
            a.connect,
            key=key,
            workers=a.workers,
            prefetch=a.prefetch,
            name=a.name,
            max_payload=a.max_payload,
            timings=_timings(a),
            ssl_context=ctx,
            executor=a.executor,
            queues=parse_queues(a.queues),
            strict=a.strict,
            time_limit_grace=a.time_limit_grace,
            deadlines=DeadlineBoard.from_env() if supervisor is not None else None,
            on_stuck=functools.partial(_exit, EXIT_TIME_LIMIT),
        )
    _tune_gc_for_serving()
    node.start()
    return serve_until_signalled(node.stop, a.grace, supervisor, node.name)


def _parse_admin(p: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """The options every command that talks to a coordinator shares, parsed."""
    p.add_argument("--connect", default=f"127.0.0.1:{DEFAULT_PORT}", help=_CONNECT_HELP)
    p.add_argument(
        "--timeout", type=float, default=5.0, help="seconds to wait (default %(default)g)"
    )
    p.add_argument("--tls-ca", help="CA file to verify the coordinator's TLS certificate")
    _common(p, log_level="WARNING")
    a = p.parse_args(argv)
    _setup_logging(a.log_level, a.log_json)
    _addresses("--connect", a.connect)
    return a


def _admin_client(a: argparse.Namespace, name: str) -> Client:
    from .client import Client

    key = _load_key(a)
    try:
        return Client(
            a.connect,
            key=key,
            name=name,
            connect_timeout=a.timeout,
            ssl_context=_client_ssl(a),
        )
    except ConnectionError as exc:
        raise _StartupError(str(exc)) from exc


def _wall_time(text: str) -> float:
    """An ISO 8601 time (UTC unless it says) or epoch seconds, as epoch seconds."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither epoch seconds nor an ISO 8601 time (2026-12-01T00:00:00)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return when.timestamp()


@_cli("purge")
def main_purge(argv: list[str] | None = None) -> int:
    """``pyqueue purge --finished-before T | --older-than S | --dead``."""
    p = argparse.ArgumentParser(
        prog="pyqueue purge",
        description="Forget finished (and, with --dead, dead-lettered) tasks now, ahead of"
        " their retention.",
    )
    when = p.add_mutually_exclusive_group()
    when.add_argument(
        "--finished-before",
        type=_wall_time,
        metavar="TIME",
        help="tasks that finished before TIME (ISO 8601, UTC unless it says; or epoch seconds)",
    )
    when.add_argument(
        "--older-than",
        type=float,
        metavar="SECONDS",
        help="tasks that finished more than SECONDS ago",
    )
    p.add_argument("--dead", action="store_true", help="every dead-lettered task too")
    a = _parse_admin(p, argv)
    before = a.finished_before
    if a.older_than is not None:
        before = time.time() - a.older_than
    if before is None and not a.dead:
        p.error("say what to purge: --finished-before, --older-than, --dead")
    with _admin_client(a, "purge") as client:
        n = client.purge(before, dead=a.dead, timeout=max(a.timeout, 60.0))
    print(f"purged {n} task(s)")
    return 0


def _rate(text: str) -> float:
    """``100/s``, ``6000/m``, ``10/h`` or a plain number (per second), as per second."""
    number, _, unit = text.strip().partition("/")
    per = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}.get(unit.strip().lower())
    try:
        value = float(number)
    except ValueError:
        value = math.nan
    if per is None or not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a rate: a number > 0 per second, minute or hour (100/s, 6000/m)"
        )
    return value / per


@_cli("queue")
def main_queue(argv: list[str] | None = None) -> int:
    """``pyqueue queue NAME [--rate 100/s | --no-rate] [--pause | --resume]``."""
    from . import messages as M

    p = argparse.ArgumentParser(
        prog="pyqueue queue", description="Show or change a queue's rate limit and pause."
    )
    p.add_argument("name", help="the queue")
    rate = p.add_mutually_exclusive_group()
    rate.add_argument("--rate", type=_rate, help="at most this many task starts: 100/s, 6000/m")
    rate.add_argument("--no-rate", action="store_true", help="lift the rate limit")
    pause = p.add_mutually_exclusive_group()
    pause.add_argument("--pause", action="store_true", help="start nothing from it")
    pause.add_argument("--resume", action="store_true", help="start its tasks again")
    a = _parse_admin(p, argv)
    why = M.queue_problem(a.name)
    if why is not None:
        p.error(why)
    request = M.ConfigureQueue(a.name)
    if a.rate is not None or a.no_rate:
        request.rate_limit = a.rate
    if a.pause or a.resume:
        request.paused = a.pause
    with _admin_client(a, "queue") as client:
        q = client._configure_queue(request, a.timeout)
    rate_text = "no rate limit" if q["rate_limit"] is None else f"{q['rate_limit']:g}/s"
    counts = ", ".join(f"{k} {v}" for k, v in q["tasks"].items() if v)
    print(f"queue {q['name']}: {'paused' if q['paused'] else 'running'}, {rate_text}; {counts}")
    return 0


@_cli("schedules")
def main_schedules(argv: list[str] | None = None) -> int:
    """``pyqueue schedules [--pause ID | --resume ID | --delete ID]``."""
    p = argparse.ArgumentParser(
        prog="pyqueue schedules", description="List, pause, resume or delete schedules."
    )
    act = p.add_mutually_exclusive_group()
    act.add_argument("--pause", metavar="ID", help="stop this schedule firing")
    act.add_argument("--resume", metavar="ID", help="let it fire again")
    act.add_argument("--delete", metavar="ID", help="forget it (fired tasks stay)")
    p.add_argument("--json", action="store_true", help="print them as JSON")
    a = _parse_admin(p, argv)
    with _admin_client(a, "schedules") as client:
        try:
            if a.pause:
                client.pause_schedule(a.pause, a.timeout)
            elif a.resume:
                client.resume_schedule(a.resume, a.timeout)
            elif a.delete and not client.unschedule(a.delete, a.timeout):
                raise KeyError(f"no schedule {a.delete!r}")
        except KeyError as exc:
            raise _StartupError(str(exc.args[0])) from None
        rows = client.schedules(a.timeout)
    if a.json:
        print(json.dumps([s._asdict() for s in rows], indent=2))
        return 0
    for s in rows:
        when = s.cron if s.cron is not None else f"every {s.every:g} s"
        nxt = "paused" if s.paused or s.next_fire is None else _utc(s.next_fire)
        last = "never" if s.last_fire is None else _utc(s.last_fire)
        print(f"{s.id:<24} {when:<20} {s.timezone:<16} next {nxt:<25} last {last}")
    if not rows:
        print("no schedules")
    return 0


def _utc(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).isoformat(timespec="seconds")


@_cli("status")
def main_status(argv: list[str] | None = None) -> int:
    """``pyqueue status``: nodes, queue depth, in flight, dead."""
    p = argparse.ArgumentParser(prog="pyqueue status", description="Show the state of a cluster.")
    shape = p.add_mutually_exclusive_group()
    shape.add_argument(
        "--json",
        action="store_true",
        help="print the status as JSON (the dashboard's /api/overview; schema:"
        " pyqueue/cluster/webui/status.schema.json)",
    )
    shape.add_argument(
        "--watch", action="store_true", help="a live view, refreshed every second (Ctrl-C ends)"
    )
    p.add_argument("--dead", action="store_true", help="also list dead-lettered tasks")
    p.add_argument(
        "--count", type=int, help="with --watch: stop after N refreshes (for scripts and tests)"
    )
    a = _parse_admin(p, argv)
    if a.count is not None and (not a.watch or a.count < 1):
        raise _StartupError("--count N needs --watch and N >= 1")
    if a.watch:
        from .watch import watch

        with _admin_client(a, "status") as client:
            return watch(lambda: client.status(timeout=a.timeout), count=a.count)
    with _admin_client(a, "status") as client:
        st = client.status(timeout=a.timeout)
        if a.dead:
            st["dead_tasks"] = client.dead_tasks(timeout=a.timeout)
    if a.json:
        print(json.dumps(st, indent=2, default=repr))
        return 0
    print(
        f"nodes: {len(st['nodes'])}   queue depth: {st['queue_depth']}"
        f"   in flight: {st['in_flight']}   dead: {st['dead']}"
    )
    for n in st["nodes"]:
        print(
            f"  {n['id']:<32} {n['address']:<22} capacity {n['capacity']:<4}"
            f" outstanding {n['outstanding']}"
        )
    print("tasks: " + ", ".join(f"{k} {v}" for k, v in st["tasks"].items()))
    print("completions: " + ", ".join(f"{k} {v}" for k, v in st["completions"].items()))
    for q in st.get("queues", []):
        counts = ", ".join(f"{k} {v}" for k, v in q["tasks"].items() if v) or "empty"
        rate = "" if q["rate_limit"] is None else f", at most {q['rate_limit']:g}/s"
        age = q["oldest_pending_s"]
        oldest = "" if age is None else f", oldest waiting {age:.1f} s"
        paused = " (paused)" if q["paused"] else ""
        print(f"  queue {q['name']}{paused}: {counts}{rate}{oldest}")
    for s in st.get("schedules", []):
        when = s["cron"] if s["cron"] is not None else f"every {s['every']:g} s"
        nxt = "paused" if s["paused"] or s["next_fire"] is None else _utc(s["next_fire"])
        print(f"  schedule {s['id']}: {when} ({s['timezone']}), next {nxt}")
    for d in st.get("dead_tasks", []):
        print(
            f"  dead {d['id']}: attempts {d['attempts']} lost {d['lost']}"
            f" failures {d['failures']}: {d['error']}"
        )
    return 0


@_cli("http-token")
def main_http_token(argv: list[str] | None = None) -> int:
    """``pyqueue http-token``: the dashboard token derived from the cluster key."""
    p = argparse.ArgumentParser(
        prog="pyqueue http-token",
        description="Print the web dashboard's token (derived from the cluster key; a"
        " coordinator started with --http-token-file uses that file's instead).",
    )
    _common(p, log_level="WARNING")
    a = p.parse_args(argv)
    print(dashboard_token(_load_key(a)))
    return 0


_COMMANDS = {
    "coordinator": main_coordinator,
    "node": main_node,
    "status": main_status,
    "purge": main_purge,
    "queue": main_queue,
    "schedules": main_schedules,
    "http-token": main_http_token,
}


def main(argv: list[str] | None = None) -> int:
    """``python -m pyqueue.cluster.cli coordinator|node|status ...``."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in _COMMANDS:
        print(
            f"usage: python -m pyqueue.cluster.cli {{{','.join(_COMMANDS)}}} [options]",
            file=sys.stderr,
        )
        return 2
    return _COMMANDS[args[0]](args[1:])


if __name__ == "__main__":
    raise SystemExit(main())
