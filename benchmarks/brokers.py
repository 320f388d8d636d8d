"""pyqueue's cluster beside the broker-based task queues, all on one private Redis.

Usage::

    python -m benchmarks.brokers [--tasks 20000] [--reps 3] [--quick] [--out DIR]
                                 [--systems celery,rq,pyqueue-memory,...]

Rows (each with 2 worker processes):

- ``celery``: Celery, Redis broker and Redis result backend,
  ``celery worker --concurrency 2 --pool prefork``;
- ``rq``: two ``rq worker`` processes (RQ's default worker: a fork per job);
- ``rq-simple``: two ``rq worker -w rq.worker.SimpleWorker`` (no fork per job);
- ``dramatiq``: Dramatiq, Redis broker and its Redis results middleware,
  ``dramatiq --processes 2 --threads 1``;
- ``pyqueue-memory``, ``pyqueue-sqlite``: ``LocalCluster(nodes=2, workers=1)``
  with the default memory store and with a durable SQLite store (``store=path``);
- ``pyqueue-redis``: the same over pyqueue's Redis store
  (``store="redis://..."``), when ``pyqueue.cluster.backends.redis`` is on the
  tree; otherwise the row says so;
- ``pyqueue-redis-2co``: two coordinators over that Redis
  (``LocalCluster(coordinators=2)``), a node on each, the client on the first.

Measured in each (row, repetition), in this order, after a warm-up:

1. idle round trip: one no-op task submitted and its result awaited, one at a
   time (``--round-trips``, default 200): p50 and p99 in ms;
2. no-op throughput: submit N no-op tasks, then collect every result in
   order (tasks/s).  N is ``--tasks`` at most; each row's N comes from a
   calibration of 100 tasks in its first repetition, sized to last about
   ``CALIBRATION_SECONDS`` (at least ``MIN_TASKS``), so a peer doing 300
   tasks/s is not given 20,000 tasks.  Each row's N is printed;
3. W4: ``workloads.cpu_loop`` (the pure-Python loop of the comparison's W4),
   one task per call, on the 2 worker processes (tasks/s; beside a serial
   loop in this process, measured in the same repetition).

Every (row, repetition) gets a fresh private ``redis-server`` on a free port in
a temporary folder (``--save '' --appendonly yes``), flushed before the row's
workers start and stopped after them, so no peer sees another's keys.  Rows
rotate by one and reverse on every other repetition.  Figures are medians over
repetitions; ratios compare medians measured in this run, against the best
broker peer.  Every result is checked.  A row that cannot be installed or
started reads as such, with the error's last line; worker processes (and every
process they started) are stopped at the end of their row, on error too.
Nothing is asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import importlib.metadata
import importlib.util
import json
import math
import os
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from benchmarks import workloads as wl
from benchmarks.compare import CHILD_ENV, REPO, machine_info, peer_order
from benchmarks.report import fmt, fmt_ratio

REDIS_SERVER = "/usr/bin/redis-server"
#: Environment variable that hands the private Redis URL to the peers' workers.
URL_ENV = "PYQUEUE_BENCH_REDIS_URL"

#: Distributions whose versions go into the JSON.
DISTRIBUTIONS = ("celery", "kombu", "billiard", "redis", "rq", "dramatiq", "pyqueue")

#: Calibration: tasks timed in a row's first repetition, the seconds its no-op
#: run is sized to, and the fewest tasks a row runs.
CALIBRATION_TASKS = 100
CALIBRATION_SECONDS = {"full": 4.0, "quick": 1.5}
MIN_TASKS = 200

ROUND_TRIPS = {"full": 200, "quick": 50}
CPU_TASKS = {"full": wl.FULL.cpu_tasks, "quick": wl.QUICK.cpu_tasks}
#: Calls of ``cpu_loop`` in the serial reference (per repetition).
SERIAL_CPU_TASKS = {"full": 50, "quick": 20}

#: Seconds to wait for any one result before calling the row broken.
RESULT_TIMEOUT = 120.0
#: Seconds for a row's workers to answer their first task.
START_TIMEOUT = 60.0
#: Seconds between SIGTERM and SIGKILL when stopping workers.
STOP_GRACE = 10.0


class StartFailed(Exception):
    """A row's processes could not be started or never answered."""


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def error_line(exc: BaseException) -> str:
    return last_line("".join(traceback.format_exception_only(type(exc), exc)))


def log_tail(path: Path) -> str:
    try:
        return last_line(path.read_text(errors="replace"))
    except OSError:
        return ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# -- processes -------------------------------------------------------------------


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (from /proc), whatever its process group."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


#: Every process this run started that may still be alive (stopped on exit).
_LIVE: set[subprocess.Popen[bytes]] = set()


def stop_tree(proc: subprocess.Popen[bytes], grace: float = STOP_GRACE) -> None:
    """SIGTERM ``proc``'s group, then SIGKILL whatever of its tree is left after ``grace``.

    RQ's work horses call ``setpgrp``, so descendants are found by parent,
    not by group.
    """
    tree = set(descendants(proc.pid))
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    tree |= set(descendants(proc.pid)) if proc.poll() is None else set()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    for pid in tree:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)
    _LIVE.discard(proc)


def spawn(cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    _LIVE.add(proc)
    return proc


@contextlib.contextmanager
def output_to(path: Path) -> Iterator[None]:
    """Point file descriptors 1 and 2 at ``path`` (processes started meanwhile keep it)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(path, "wb") as f:
            os.dup2(f.fileno(), 1)
            os.dup2(f.fileno(), 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, copy in zip((1, 2), saved):
            os.dup2(copy, fd)
            os.close(copy)


class RedisServer:
    """A private ``redis-server`` on a free port, its data in a temporary folder."""

    def __init__(self, logdir: Path, tag: str) -> None:
        self.tmp = tempfile.TemporaryDirectory(prefix="pyqueue-brokers-redis-")
        self.log = logdir / f"{tag}-redis.log"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self, *args: str) -> bytes:
        """Send one inline command; return the reply's first line."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(" ".join(args).encode() + b"\r\n")
            return s.makefile("rb").readline().strip()

    def start(self) -> None:
        if not os.access(REDIS_SERVER, os.X_OK):
            raise StartFailed(f"{REDIS_SERVER} not found (apt-get install redis-server)")
        for _ in range(3):  # a free port can be taken between probe and bind
            self.port = free_port()
            cmd = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1"]
            cmd += ["--dir", self.tmp.name, "--save", "", "--appendonly", "yes"]
            self.proc = spawn(cmd, self.log, dict(os.environ))
            deadline = time.monotonic() + 10
            while self.proc.poll() is None and time.monotonic() < deadline:
                try:
                    if self.command("PING") == b"+PONG":
                        break
                except OSError:
                    time.sleep(0.02)
            else:
                stop_tree(self.proc, grace=1)
                continue
            if self.command("FLUSHALL") != b"+OK" or self.command("DBSIZE") != b":0":
                raise StartFailed("redis-server would not flush")
            return
        raise StartFailed(f"redis-server did not start: {log_tail(self.log)}")

    def stop(self) -> None:
        if self.proc is not None:
            stop_tree(self.proc, grace=5)
        self.tmp.cleanup()


class Workers:
    """Worker processes of one row, each logging to its own file."""

    def __init__(self, cmds: list[list[str]], logdir: Path, tag: str, url: str) -> None:
        env = {**os.environ, **CHILD_ENV, URL_ENV: url}
        self.cmds = cmds
        self.logs = [logdir / f"{tag}-worker{i}.log" for i in range(len(cmds))]
        self.procs: list[subprocess.Popen[bytes]] = []
        try:
            for cmd, log in zip(cmds, self.logs):
                self.procs.append(spawn(cmd, log, env))
        except BaseException:
            self.stop()
            raise

    def check(self) -> None:
        """Raise StartFailed when a worker has exited, with its log's last line."""
        for proc, log in zip(self.procs, self.logs):
            if proc.poll() is not None:
                raise StartFailed(f"worker exited ({proc.returncode}): {log_tail(log)}")

    def stop(self) -> None:
        for proc in self.procs:
            stop_tree(proc)


# -- rows ------------------------------------------------------------------------


class Session:
    """An open row: ``submit`` one task by workload name, ``collect`` its result."""

    workers: Workers | None = None

    def submit(self, name: str, x: Any) -> Any:
        raise NotImplementedError

    def collect(self, handle: Any, timeout: float) -> Any:
        """The task's result; builtin ``TimeoutError`` after ``timeout`` seconds."""
        raise NotImplementedError

    def check(self) -> None:
        if self.workers is not None:
            self.workers.check()

    def run_each(self, name: str, args: Sequence[Any]) -> list[Any]:
        handles = [self.submit(name, a) for a in args]
        return [self.collect(h, RESULT_TIMEOUT) for h in handles]

    def round_trip(self, name: str, x: Any, timeout: float = RESULT_TIMEOUT) -> Any:
        return self.collect(self.submit(name, x), timeout)

    def wait_ready(self) -> None:
        """Round trips of 1 s until one answers: the workers are up and consuming."""
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            self.check()
            try:
                self.round_trip("noop", -1, timeout=1.0)
                return
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise StartFailed(
                        f"no result within {START_TIMEOUT:g} s of starting the workers"
                    ) from None


class System:
    """One row of the table."""

    key = ""
    name = ""
    modules: tuple[str, ...] = ()
    needs_redis = True
    broker_peer = True
    how = ""

    def unavailable(self) -> str | None:
        for mod in self.modules:
            try:
                importlib.import_module(mod)
            except Exception as exc:  # noqa: BLE001 - any import failure disqualifies
                return f"not installed ({mod}: {error_line(exc)})"
        return None

    def session(
        self, url: str, logdir: Path, tag: str
    ) -> contextlib.AbstractContextManager[Session]:
        raise NotImplementedError


PY = sys.executable


class CeleryRow(System):
    key = "celery"
    name = "Celery"
    modules = ("celery", "redis")
    how = (
        "`celery -A benchmarks.brokers_celery worker --concurrency 2 --pool prefork`, "
        "Redis broker and result backend; `send_task` each, then `AsyncResult.get()` each"
    )

    class _Session(Session):
        def __init__(self, app: Any, workers: Workers) -> None:
            from celery.exceptions import TimeoutError as CeleryTimeout

            from benchmarks.brokers_celery import TASKS

            self.app, self.workers, self.tasks, self.timeout = app, workers, TASKS, CeleryTimeout

        def submit(self, name: str, x: Any) -> Any:
            return self.app.send_task(self.tasks[name], args=(x,))

        def collect(self, handle: Any, timeout: float) -> Any:
            try:
                return handle.get(timeout=timeout)
            except self.timeout:
                raise TimeoutError(f"no result in {timeout:g} s") from None

    @contextlib.contextmanager
    def session(self, url: str, logdir: Path, tag: str) -> Iterator[Session]:
        from benchmarks.brokers_celery import make_app

        cmd = [PY, "-m", "celery", "-A", "benchmarks.brokers_celery", "worker"]
        cmd += ["--concurrency", "2", "--pool", "prefork", "--loglevel", "WARNING"]
        cmd += ["--hostname", f"{tag}@%h"]
        workers = Workers([cmd], logdir, tag, url)
        app = make_app(url)
        try:
            yield self._Session(app, workers)
        finally:
            workers.stop()
            app.close()


_RQ_CLI = "import sys; from rq.cli import main; sys.argv[0] = 'rq'; sys.exit(main())"


class RQRow(System):
    key = "rq"
    name = "RQ"
    modules = ("rq", "redis")
    worker_class: str | None = None
    how = (
        "2 x `rq worker` (RQ's default Worker: a fork per job); "
        "`Queue.enqueue` each, then `Job.latest_result(timeout=)` each (blocking XREAD)"
    )

    class _Session(Session):
        def __init__(self, conn: Any, workers: Workers) -> None:
            from rq import Queue
            from rq.results import Result

            self.conn, self.workers = conn, workers
            self.queue = Queue("default", connection=conn)
            self.ok = Result.Type.SUCCESSFUL
            self.fns = {"noop": wl.noop, "cpu_loop": wl.cpu_loop}

        def submit(self, name: str, x: Any) -> Any:
            return self.queue.enqueue(self.fns[name], x)

        def collect(self, handle: Any, timeout: float) -> Any:
            res = handle.latest_result(timeout=max(1, math.ceil(timeout)))
            if res is None:
                raise TimeoutError(f"no result in {timeout:g} s")
            if res.type != self.ok:
                raise RuntimeError(f"job failed: {last_line(res.exc_string or '')}")
            return res.return_value

    @contextlib.contextmanager
    def session(self, url: str, logdir: Path, tag: str) -> Iterator[Session]:
        from redis import Redis

        cmds = []
        for i in range(2):
            cmd = [PY, "-c", _RQ_CLI, "worker", "--url", url, "--path", str(REPO)]
            cmd += ["--logging_level", "WARNING", "--name", f"{tag}-{i}"]
            if self.worker_class:
                cmd += ["--worker-class", self.worker_class]
            cmds.append(cmd + ["default"])
        workers = Workers(cmds, logdir, tag, url)
        conn = Redis.from_url(url)
        try:
            yield self._Session(conn, workers)
        finally:
            workers.stop()
            conn.close()


class RQSimpleRow(RQRow):
    key = "rq-simple"
    name = "RQ SimpleWorker"
    worker_class = "rq.worker.SimpleWorker"
    how = "2 x `rq worker -w rq.worker.SimpleWorker` (no fork per job); client as RQ"


class DramatiqRow(System):
    key = "dramatiq"
    name = "Dramatiq"
    modules = ("dramatiq", "redis")
    how = (
        "`dramatiq benchmarks.brokers_dramatiq --processes 2 --threads 1`, Redis broker, "
        "Results middleware on Redis; `actor.send` each, then `get_result(block=True)` each"
    )

    class _Session(Session):
        def __init__(self, made: Any, workers: Workers) -> None:
            from dramatiq.results import ResultTimeout

            self.broker, self.backend, self.actors = made
            self.workers, self.timeout = workers, ResultTimeout

        def submit(self, name: str, x: Any) -> Any:
            return self.actors[name].send(x)

        def collect(self, handle: Any, timeout: float) -> Any:
            try:
                return handle.get_result(
                    backend=self.backend, block=True, timeout=int(timeout * 1000)
                )
            except self.timeout:
                raise TimeoutError(f"no result in {timeout:g} s") from None

    @contextlib.contextmanager
    def session(self, url: str, logdir: Path, tag: str) -> Iterator[Session]:
        from benchmarks.brokers_dramatiq import make

        cmd = [PY, "-m", "dramatiq", "benchmarks.brokers_dramatiq", "--path", str(REPO)]
        cmd += ["--processes", "2", "--threads", "1", "--worker-shutdown-timeout", "5000"]
        workers = Workers([cmd], logdir, tag, url)
        made = make(url)
        try:
            yield self._Session(made, workers)
        finally:
            workers.stop()
            made[0].close()


class PyQueueRow(System):
    key = "pyqueue-memory"
    name = "pyqueue, memory store"
    needs_redis = False
    broker_peer = False
    store = "memory"
    coordinators = 1
    how = "`LocalCluster(nodes=2, workers=1)`; `client.submit` each, then `result()` each"

    def unavailable(self) -> str | None:
        try:
            from pyqueue.cluster import LocalCluster  # noqa: F401
        except Exception as exc:  # noqa: BLE001 - a half-built tree fails in many ways
            return f"not built ({error_line(exc)}; run `make build`)"
        return None

    class _Session(Session):
        def __init__(self, cluster: Any) -> None:
            self.cluster, self.client = cluster, cluster.client
            self.fns = {"noop": wl.noop, "cpu_loop": wl.cpu_loop}

        def submit(self, name: str, x: Any) -> Any:
            return self.client.submit(self.fns[name], x)

        def collect(self, handle: Any, timeout: float) -> Any:
            return handle.result(timeout=timeout)

        def check(self) -> None:
            for p in [*self.cluster.coordinators, *self.cluster.nodes]:
                if p is not None and p.poll() is not None:
                    raise StartFailed(f"a pyqueue process exited ({p.returncode})")

    def store_arg(self, url: str, tmp: str) -> str | None:
        return None

    @contextlib.contextmanager
    def session(self, url: str, logdir: Path, tag: str) -> Iterator[Session]:
        from pyqueue.cluster import LocalCluster

        log = logdir / f"{tag}-cluster.log"
        with tempfile.TemporaryDirectory(prefix="pyqueue-brokers-") as tmp:
            cluster = LocalCluster(
                nodes=2,
                workers=1,
                store=self.store_arg(url, tmp),
                coordinators=self.coordinators,
            )
            try:
                with output_to(log):  # the coordinator and nodes inherit it
                    cluster.start()
            except Exception as exc:
                raise StartFailed(f"{error_line(exc)}: {log_tail(log)}") from exc
            try:
                yield self._Session(cluster)
            finally:
                cluster.close()


class PyQueueSQLiteRow(PyQueueRow):
    key = "pyqueue-sqlite"
    name = "pyqueue, SQLite store"
    store = "sqlite"
    how = "`LocalCluster(nodes=2, workers=1, store=<file in a temp folder>)` (synchronous=NORMAL)"

    def store_arg(self, url: str, tmp: str) -> str | None:
        return f"{tmp}/bench.db"


class PyQueueRedisRow(PyQueueRow):
    key = "pyqueue-redis"
    name = "pyqueue, Redis store"
    needs_redis = True
    store = "redis"
    how = "`LocalCluster(nodes=2, workers=1, store='redis://127.0.0.1:<port>/0')`"

    def unavailable(self) -> str | None:
        why = super().unavailable()
        if why:
            return why
        if importlib.util.find_spec("pyqueue.cluster.backends.redis") is None:
            return "pyqueue on Redis: not on this tree (no pyqueue.cluster.backends.redis)"
        return None

    def store_arg(self, url: str, tmp: str) -> str | None:
        return url


class PyQueueRedisTwoRow(PyQueueRedisRow):
    key = "pyqueue-redis-2co"
    name = "pyqueue, Redis store, 2 coordinators"
    coordinators = 2
    how = (
        "`LocalCluster(nodes=2, workers=1, coordinators=2, store='redis://...')`: a node on "
        "each coordinator, the client on the first (half its results come through the other)"
    )


#: Every row, in the table's order.
SYSTEMS: dict[str, System] = {
    s.key: s
    for s in (
        CeleryRow(),
        RQRow(),
        RQSimpleRow(),
        DramatiqRow(),
        PyQueueRow(),
        PyQueueSQLiteRow(),
        PyQueueRedisRow(),
        PyQueueRedisTwoRow(),
    )
}


# -- measuring -------------------------------------------------------------------


def percentile(ordered: list[float], q: int) -> float:
    return ordered[min(len(ordered) - 1, (q * len(ordered)) // 100)]


def round_sig(n: float) -> int:
    """``n`` rounded down to 2 significant digits (a readable task count)."""
    scale = 10 ** max(0, int(math.log10(max(n, 1))) - 1)
    return int(n // scale * scale)


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise AssertionError(f"wrong results: {what}")


def measure(sess: Session, n: int | None, mode: str, cap: int, round_trips: int) -> dict[str, Any]:
    """Warm up, calibrate when ``n`` is None, then the three measurements."""
    sess.run_each("noop", range(20))
    sess.run_each("cpu_loop", [1000] * 4)
    out: dict[str, Any] = {}
    if n is None:
        t0 = time.perf_counter()
        res = sess.run_each("noop", range(CALIBRATION_TASKS))
        rate = CALIBRATION_TASKS / (time.perf_counter() - t0)
        _check(res == list(range(CALIBRATION_TASKS)), "calibration")
        n = min(cap, max(MIN_TASKS, round_sig(rate * CALIBRATION_SECONDS[mode])))
        out["calibration_tasks_per_s"] = rate
    sess.check()

    latencies = []
    for i in range(round_trips):
        t0 = time.perf_counter()
        r = sess.round_trip("noop", i)
        latencies.append((time.perf_counter() - t0) * 1e3)
        _check(r == i, "round trip")
    ordered = sorted(latencies)
    out["rt_p50_ms"] = percentile(ordered, 50)
    out["rt_p99_ms"] = percentile(ordered, 99)
    out["latencies_ms"] = latencies

    sess.check()
    t0 = time.perf_counter()
    res = sess.run_each("noop", range(n))
    out["noop_s"] = time.perf_counter() - t0
    _check(res == list(range(n)), "no-op")
    out["noop_tasks"] = n
    out["noop_per_s"] = n / out["noop_s"]

    sess.check()
    cpu_n = CPU_TASKS[mode]
    expect = wl.cpu_loop(wl.FULL.cpu_iterations)
    t0 = time.perf_counter()
    res = sess.run_each("cpu_loop", [wl.FULL.cpu_iterations] * cpu_n)
    out["w4_s"] = time.perf_counter() - t0
    _check(res == [expect] * cpu_n, "W4")
    out["w4_tasks"] = cpu_n
    out["w4_per_s"] = cpu_n / out["w4_s"]
    return out


def serial_w4(mode: str) -> float:
    n = SERIAL_CPU_TASKS[mode]
    t0 = time.perf_counter()
    for _ in range(n):
        wl.cpu_loop(wl.FULL.cpu_iterations)
    return n / (time.perf_counter() - t0)


def run_one(
    system: System, rep: int, n: int | None, mode: str, cap: int, round_trips: int, logdir: Path
) -> dict[str, Any]:
    """One row, one repetition: start its Redis and workers, measure, stop everything."""
    tag = f"{system.key}-r{rep}"
    sample: dict[str, Any] = {"system": system.key, "rep": rep}
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        try:
            url = ""
            if system.needs_redis:
                server = RedisServer(logdir, tag)
                stack.callback(server.stop)
                server.start()
                url = server.url
            sess = stack.enter_context(system.session(url, logdir, tag))
            sess.wait_ready()
        except Exception as exc:  # noqa: BLE001 - reported in the table
            reason = str(exc) if isinstance(exc, StartFailed) else error_line(exc)
            return {**sample, "status": "could not start", "reason": reason}
        sample["startup_s"] = time.perf_counter() - t0
        try:
            sample["metrics"] = measure(sess, n, mode, cap, round_trips)
            sample["status"] = "ok"
        except Exception as exc:  # noqa: BLE001 - reported in the table
            sample["status"], sample["reason"] = "error", error_line(exc)
            traceback.print_exc()
    sample["wall_s"] = time.perf_counter() - t0
    return sample


# -- report ----------------------------------------------------------------------


def medians(samples: list[dict[str, Any]], key: str) -> dict[str, float]:
    by: dict[str, list[float]] = {}
    for s in samples:
        if s["status"] == "ok":
            by.setdefault(s["system"], []).append(s["metrics"][key])
    return {k: statistics.median(v) for k, v in by.items()}


def summarize(doc: dict[str, Any]) -> dict[str, Any]:
    samples = doc["samples"]
    med = {k: medians(samples, k) for k in ("noop_per_s", "rt_p50_ms", "rt_p99_ms", "w4_per_s")}
    brokers = [k for k in doc["systems"] if SYSTEMS[k].broker_peer]
    best_tp = max(
        ((med["noop_per_s"][k], k) for k in brokers if k in med["noop_per_s"]), default=None
    )
    best_p50 = min(
        ((med["rt_p50_ms"][k], k) for k in brokers if k in med["rt_p50_ms"]), default=None
    )
    best_w4 = max(((med["w4_per_s"][k], k) for k in brokers if k in med["w4_per_s"]), default=None)
    return {
        "medians": med,
        "serial_w4_per_s": statistics.median(doc["serial_w4_per_s"])
        if doc["serial_w4_per_s"]
        else None,
        "best_broker_noop": best_tp,
        "best_broker_p50": best_p50,
        "best_broker_w4": best_w4,
    }


def row_status(doc: dict[str, Any], key: str) -> str | None:
    """Why a row has no figures (unavailable, could not start, error), or None."""
    if key in doc["unavailable"]:
        return str(doc["unavailable"][key])
    mine = [s for s in doc["samples"] if s["system"] == key]
    if any(s["status"] == "ok" for s in mine):
        return None
    if not mine:
        return "not run"
    return f"{mine[-1]['status']}: {mine[-1].get('reason', '')}"


def table(doc: dict[str, Any]) -> str:
    summ = summarize(doc)
    med = summ["medians"]
    best_tp, best_p50, best_w4 = (
        summ["best_broker_noop"],
        summ["best_broker_p50"],
        summ["best_broker_w4"],
    )
    serial = summ["serial_w4_per_s"]
    header = [
        "system",
        "no-op tasks/s",
        "x best broker",
        "N",
        "round trip p50 ms",
        "p99 ms",
        "x best broker (p50)",
        "W4 tasks/s",
        "x best broker (W4)",
        "x serial",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key in doc["systems"]:
        sysm = SYSTEMS[key]
        why = row_status(doc, key)
        if why:
            lines.append(f"| {sysm.name} | {why} |" + " |" * (len(header) - 2))
            continue
        ns = sorted(
            {
                s["metrics"]["noop_tasks"]
                for s in doc["samples"]
                if s["system"] == key and s["status"] == "ok"
            }
        )
        tp, p50, p99, w4 = (
            med[m][key] for m in ("noop_per_s", "rt_p50_ms", "rt_p99_ms", "w4_per_s")
        )
        lines.append(
            "| "
            + " | ".join(
                [
                    sysm.name,
                    fmt(tp, "tasks/s"),
                    fmt_ratio(tp / best_tp[0]) if best_tp else "-",
                    "/".join(f"{n:,}" for n in ns),
                    f"{p50:.3g}",
                    f"{p99:.3g}",
                    fmt_ratio(best_p50[0] / p50) if best_p50 else "-",
                    fmt(w4, "tasks/s"),
                    fmt_ratio(w4 / best_w4[0]) if best_w4 else "-",
                    fmt_ratio(w4 / serial) if serial else "-",
                ]
            )
            + " |"
        )
    if serial:
        lines.append(
            f"| serial loop (W4 reference) | | | | | | | {fmt(serial, 'tasks/s')} | | 1.00x |"
        )
    return "\n".join(lines)


def targets(doc: dict[str, Any]) -> str:
    """pyqueue rows against the best broker peer, and the issue's targets."""
    summ = summarize(doc)
    med = summ["medians"]
    best_tp, best_p50 = summ["best_broker_noop"], summ["best_broker_p50"]
    if not best_tp or not best_p50:
        return "no broker peer measured: no ratios"
    best_w4 = summ["best_broker_w4"]
    name = {k: SYSTEMS[k].name for k in SYSTEMS}
    lines = [
        f"best broker peer: no-op {fmt(best_tp[0], 'tasks/s')} tasks/s ({name[best_tp[1]]}),"
        f" round trip p50 {best_p50[0]:.3g} ms ({name[best_p50[1]]})"
        + (f", W4 {fmt(best_w4[0], 'tasks/s')} tasks/s ({name[best_w4[1]]})" if best_w4 else ""),
        "",
        "targets (issue): pyqueue on Redis >= 20x the best broker peer's no-op throughput"
        " and a round-trip p50 <= 1/5 of theirs",
        "",
        "| pyqueue row | no-op / best broker | >= 20x | p50 / best broker's p50 | <= 0.20"
        " | W4 / best broker |",
        "|---|---|---|---|---|---|",
    ]
    for key in doc["systems"]:
        if SYSTEMS[key].broker_peer:
            continue
        why = row_status(doc, key)
        if why:
            lines.append(f"| {name[key]} | {why} | | | | |")
            continue
        tp = med["noop_per_s"][key] / best_tp[0]
        p50 = med["rt_p50_ms"][key] / best_p50[0]
        w4 = f"{med['w4_per_s'][key] / best_w4[0]:.2f}x" if best_w4 else "-"
        lines.append(
            f"| {name[key]} | {tp:.1f}x | {'met' if tp >= 20 else 'not met'}"
            f" | {p50:.3f} | {'met' if p50 <= 0.2 else 'not met'} | {w4} |"
        )
    return "\n".join(lines)


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for dist in DISTRIBUTIONS:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    try:
        out["redis-server"] = subprocess.run(
            [REDIS_SERVER, "--version"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        out["redis-server"] = None
    return out


def machine_line(m: dict[str, Any]) -> str:
    """The report header's line on the machine and the run (from ``meta``)."""
    return (
        f"{m['cpus_usable']} CPUs ({m['cpu_model']}), Python {m['python']}, commit {m['commit']},"
        f" load {m['loadavg_start'][0]:.2f} -> {m['loadavg_end'][0]:.2f}, {m['total_s']} s"
    )


def render(doc: dict[str, Any]) -> str:
    m = doc["meta"]
    lines = [
        f"# pyqueue cluster vs broker-based task queues ({m['mode']})",
        "",
        f"`{m['command']}`  ",
        f"{machine_line(m)}, {m['reps']} repetitions (medians)",
        "",
        table(doc),
        "",
        f"N: no-op tasks per row (at most --tasks {m['tasks']}; rows calibrated to about"
        f" {CALIBRATION_SECONDS[m['mode']]:g} s, at least {MIN_TASKS});"
        f" {m['round_trips']} sequential round trips; W4: {CPU_TASKS[m['mode']]} x"
        f" `cpu_loop({wl.FULL.cpu_iterations})` on 2 worker processes.",
        "Ratios: above 1 is better than the best broker peer (for p50: its p50 / this p50).",
        "",
        targets(doc),
        "",
        "How each row runs:",
        "",
    ]
    lines += [f"- {SYSTEMS[k].name}: {SYSTEMS[k].how}" for k in doc["systems"]]
    v = doc["meta"]["versions"]
    lines += ["", "Versions: " + ", ".join(f"{k} {v[k]}" for k in v if v[k])]
    return "\n".join(lines) + "\n"


# -- command line ----------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.brokers",
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--tasks", type=int, default=20_000, help="no-op tasks per row, at most")
    ap.add_argument("--reps", type=int, default=None, help="repetitions (default 3, quick 1)")
    ap.add_argument("--quick", action="store_true", help="small sizes, about 2 minutes")
    ap.add_argument("--round-trips", type=int, default=None, help="default 200, quick 50")
    ap.add_argument(
        "--systems", default=",".join(SYSTEMS), help="comma-separated rows: " + ", ".join(SYSTEMS)
    )
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    a = ap.parse_args(argv)
    unknown = [s for s in a.systems.split(",") if s not in SYSTEMS]
    if unknown:
        ap.error(f"unknown systems: {', '.join(unknown)}")
    return a


def _terminate(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    mode = "quick" if a.quick else "full"
    reps = a.reps or (1 if a.quick else 3)
    round_trips = a.round_trips or ROUND_TRIPS[mode]
    systems = a.systems.split(",")
    logdir = a.out / f"brokers-{mode}-logs"
    logdir.mkdir(parents=True, exist_ok=True)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _terminate)  # so that finally blocks stop the workers

    meta = machine_info()
    meta["versions"] = versions()
    command = ["python -m benchmarks.brokers", *map(shlex.quote, argv or sys.argv[1:])]
    meta.update(
        mode=mode,
        reps=reps,
        tasks=a.tasks,
        round_trips=round_trips,
        command=" ".join(command),
        started=datetime.datetime.now().isoformat(timespec="seconds"),
    )
    doc: dict[str, Any] = {
        "meta": meta,
        "systems": systems,
        "unavailable": {},
        "calibrated_tasks": {},
        "serial_w4_per_s": [],
        "samples": [],
    }
    t_start = time.perf_counter()
    for key in systems:
        why = SYSTEMS[key].unavailable()
        if why:
            doc["unavailable"][key] = why
            print(f"{SYSTEMS[key].name}: {why}", file=sys.stderr)
    runnable = [k for k in systems if k not in doc["unavailable"]]
    try:
        for rep in range(reps):
            doc["serial_w4_per_s"].append(serial_w4(mode))
            for key in peer_order(runnable, rep):
                if any(
                    s["system"] == key and s["status"] == "could not start" for s in doc["samples"]
                ):
                    continue
                n = doc["calibrated_tasks"].get(key)
                s = run_one(SYSTEMS[key], rep, n, mode, a.tasks, round_trips, logdir)
                doc["samples"].append(s)
                if s["status"] == "ok":
                    doc["calibrated_tasks"].setdefault(key, s["metrics"]["noop_tasks"])
                    m = s["metrics"]
                    note = (
                        f"{m['noop_per_s']:8,.0f} no-op/s (N={m['noop_tasks']}),"
                        f" p50 {m['rt_p50_ms']:.3g} ms, p99 {m['rt_p99_ms']:.3g} ms,"
                        f" W4 {m['w4_per_s']:.0f}/s"
                    )
                else:
                    note = f"{s['status']}: {s.get('reason', '')}"
                print(f"[rep {rep + 1}/{reps}] {key:<15} {note}", file=sys.stderr, flush=True)
    finally:
        for proc in list(_LIVE):  # only after an interrupt: rows stop their own
            stop_tree(proc, grace=2)
    meta["loadavg_end"] = os.getloadavg()
    meta["total_s"] = round(time.perf_counter() - t_start, 1)
    doc["summary"] = summarize(doc)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / f"brokers-{mode}.json").write_text(json.dumps(doc, indent=1))
    text = render(doc)
    (a.out / f"brokers-{mode}.md").write_text(text)
    print(text)
    print(f"wrote {a.out}/brokers-{mode}.json and .md in {meta['total_s']} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
