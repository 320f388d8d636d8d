"""Command lines: ``coordinator``, ``node`` and ``status``.

Wired into ``python -m pyqueue coordinator|node|status``; also runnable as
``python -m pyqueue.cluster.cli coordinator ...``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import ssl
import sys
import threading
from typing import Any

from .config import DEFAULT_TIMINGS, FAST_TIMINGS, Timings, load_key, parse_address

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


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--key-file", help="file holding the shared key (default: $PYQUEUE_KEY, $PYQUEUE_KEY_FILE)"
    )
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--log-json", action="store_true", help="structured JSON log lines on stderr")


def _timings(a: argparse.Namespace) -> Timings:
    t = FAST_TIMINGS if a.fast else DEFAULT_TIMINGS
    changes = {
        k: getattr(a, k) for k in ("lease", "heartbeat", "missed_heartbeats") if getattr(a, k, None)
    }
    return t.with_(**changes) if changes else t


def _timing_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--fast", action="store_true", help="fast timings for tests (node dead after 0.6 s)"
    )
    p.add_argument("--lease", type=float, help="lease seconds (default 30)")
    p.add_argument("--heartbeat", type=float, help="heartbeat seconds (default 5)")
    p.add_argument(
        "--missed-heartbeats", type=int, help="node dead after this many missed heartbeats (3)"
    )


def main_coordinator(argv: list[str] | None = None) -> int:
    """``pyqueue coordinator --bind HOST:PORT --store PATH``."""
    from .coordinator import Coordinator
    from .store import Policy, SQLiteBackend

    p = argparse.ArgumentParser(
        prog="pyqueue coordinator", description="Run the cluster coordinator."
    )
    p.add_argument(
        "--bind",
        default=f"127.0.0.1:{DEFAULT_PORT}",
        help="HOST:PORT (default 127.0.0.1:%(default)s)",
    )
    p.add_argument("--store", help="SQLite file for durable state (default: memory only)")
    p.add_argument(
        "--synchronous", default="NORMAL", help="SQLite synchronous pragma: NORMAL or FULL"
    )
    p.add_argument(
        "--max-lost", type=int, default=4, help="dead-letter after the node died under it N times"
    )
    p.add_argument("--max-attempts", type=int, default=20)
    p.add_argument("--port-file", help="write the bound HOST:PORT to this file once listening")
    p.add_argument("--tls-cert", help="PEM certificate chain for TLS")
    p.add_argument("--tls-key", help="PEM private key for TLS")
    p.add_argument("--seed", type=int, help="seed of the retry jitter")
    _timing_args(p)
    _common(p)
    a = p.parse_args(argv)
    _setup_logging(a.log_level, a.log_json)
    host, port = parse_address(a.bind)
    key = load_key(key_file=a.key_file)
    ctx = None
    if a.tls_cert:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(a.tls_cert, a.tls_key)
    backend = SQLiteBackend(
        a.store,
        Policy(max_lost=a.max_lost, max_attempts=a.max_attempts),
        synchronous=a.synchronous,
        seed=a.seed,
    )
    coord = Coordinator(key, backend, host=host, port=port, timings=_timings(a), ssl_context=ctx)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, coord.stop)
        h, prt = await coord.start()
        if a.port_file:
            tmp = a.port_file + ".tmp"
            with open(tmp, "w") as fh:
                fh.write(f"{h}:{prt}\n")
            os.replace(tmp, a.port_file)  # atomic: readers never see half a line
        await coord.serve_forever()

    asyncio.run(run())
    return 0


def _client_ssl(a: argparse.Namespace) -> ssl.SSLContext | None:
    if not getattr(a, "tls_ca", None):
        return None
    return ssl.create_default_context(cafile=a.tls_ca)


def main_node(argv: list[str] | None = None) -> int:
    """``pyqueue node --connect HOST:PORT --workers N``."""
    from .node import Node

    p = argparse.ArgumentParser(prog="pyqueue node", description="Run a worker node.")
    p.add_argument("--connect", default=f"127.0.0.1:{DEFAULT_PORT}", help="coordinator HOST:PORT")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument(
        "--prefetch", type=int, default=None, help="tasks held beyond free slots (default 8)"
    )
    p.add_argument(
        "--executor",
        choices=("pyqueue", "threads"),
        default=os.environ.get("PYQUEUE_NODE_EXECUTOR", "pyqueue"),
        help="what runs tasks: pyqueue.Executor (default) or a stdlib thread pool",
    )
    p.add_argument("--name", default=None)
    p.add_argument("--tls-ca", help="CA file to verify the coordinator's TLS certificate")
    _timing_args(p)
    _common(p)
    a = p.parse_args(argv)
    _setup_logging(a.log_level, a.log_json)
    node = Node(
        a.connect,
        key=load_key(key_file=a.key_file),
        workers=a.workers,
        prefetch=a.prefetch,
        name=a.name,
        timings=_timings(a),
        ssl_context=_client_ssl(a),
        executor=a.executor,
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    node.start()
    stop.wait()
    node.stop()
    return 0


def main_status(argv: list[str] | None = None) -> int:
    """``pyqueue status``: nodes, queue depth, in flight, dead."""
    from .client import Client

    p = argparse.ArgumentParser(prog="pyqueue status", description="Show the state of a cluster.")
    p.add_argument("--connect", default=f"127.0.0.1:{DEFAULT_PORT}", help="coordinator HOST:PORT")
    p.add_argument("--json", action="store_true", help="print the raw status as JSON")
    p.add_argument("--dead", action="store_true", help="also list dead-lettered tasks")
    p.add_argument("--timeout", type=float, default=5.0)
    p.add_argument("--tls-ca")
    _common(p)
    a = p.parse_args(argv)
    _setup_logging("WARNING" if a.log_level == "INFO" else a.log_level, a.log_json)
    try:
        client = Client(
            a.connect,
            key=load_key(key_file=a.key_file),
            name="status",
            connect_timeout=a.timeout,
            ssl_context=_client_ssl(a),
        )
    except ConnectionError as exc:
        print(f"pyqueue status: {exc}", file=sys.stderr)
        return 2
    with client:
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
    for d in st.get("dead_tasks", []):
        print(
            f"  dead {d['id']}: attempts {d['attempts']} lost {d['lost']}"
            f" failures {d['failures']}: {d['error']}"
        )
    return 0


_COMMANDS = {"coordinator": main_coordinator, "node": main_node, "status": main_status}


def main(argv: list[str] | None = None) -> int:
    """``python -m pyqueue.cluster.cli coordinator|node|status ...``."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in _COMMANDS:
        print(
            "usage: python -m pyqueue.cluster.cli {coordinator,node,status} [options]",
            file=sys.stderr,
        )
        return 2
    return _COMMANDS[args[0]](args[1:])


if __name__ == "__main__":
    raise SystemExit(main())
