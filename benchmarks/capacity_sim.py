"""Capacity model of the cluster: measured per-unit CPU costs, and where they saturate.

Usage::

    python -m benchmarks.capacity_sim --quick              # < 2 minutes on 2 cores
    python -m benchmarks.capacity_sim                      # full sizes, about 15 minutes
    python -m benchmarks.capacity_sim --only core,idle --out DIR
    python -m benchmarks.capacity_sim --only load --stores redis --coordinators 3

A 2-core machine cannot run 1,000 real nodes, so the model is built from
per-unit costs measured here and then extrapolated.  Every cost is CPU time,
read from each process's CPU clock (``clock_getcpuclockid``: every thread,
user and system, in nanoseconds; ``/proc/PID/stat`` ticks where that is not
available) before and after a phase, divided by what the phase did.  CPU time
per unit is what stays meaningful on a loaded 2-core VM: wall-clock rates
here only say what this machine did.

Phases (``--only``):

``e2e``
    ``LocalCluster(nodes=2, workers=1)`` per store (memory, SQLite file,
    Redis on a private ``redis-server``): ``client.map(noop, range(n))``;
    CPU µs per task of the coordinator, Redis, the two node processes (with
    their supervisors) and this process (the client); tasks/s.
``core``
    The coordinator's sans-IO core (``CoordinatorCore``, memory store) driven
    without sockets, with N nodes connected: µs per HEARTBEAT (decode, renew,
    answer), per node per ``tick()`` (the sweep, every 0.5 s), per node in
    an idle flush (the dispatch looks at every node with capacity), per
    task (submit, dispatch, completion, result) with N nodes.
``idle``
    A coordinator process and N simulated idle nodes (one process holding N
    real connections: handshake with the cluster key, READY, HEARTBEAT at a
    random phase every H seconds), N and H from ``--idle-nodes`` and
    ``--heartbeats``: coordinator (and Redis) CPU per second over a window,
    less the same coordinator with no node, and the handshake's cost per node.
``load``
    A coordinator process, N simulated working nodes (capacity 4 each; every
    TASKS is answered at once by one DONE, heartbeats every 5 s, the default)
    and a client mapping no-op tasks: CPU µs per task of the coordinator,
    Redis and the simulator, by store and N (``--load-nodes``).  With
    ``--coordinators K`` (Redis only) K coordinators share one Redis prefix,
    the nodes and the tasks split evenly (one client per coordinator).

Then the model: from those costs, the tasks/s at which one coordinator core
saturates for each store and node count, the node count at which idle
nodes alone saturate it, what one Redis core carries, and three coordinators
over one Redis.  Everything past the measured node counts and past one core
is an extrapolation and is printed as such.  ``--out DIR`` writes
``capacity-<mode>.json`` (every sample, the machine, the command) and
``capacity-<mode>.md`` (the tables).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import datetime
import itertools
import json
import os
import pickle
import random
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from benchmarks.brokers import (
    RedisServer,
    descendants,
    free_port,
    machine_line,
    spawn,
    stop_tree,
    versions,
)
from benchmarks.compare import REPO, machine_info
from benchmarks.workloads import noop

STORES = ("memory", "sqlite", "redis")
PHASES = ("e2e", "core", "idle", "load", "paced")
#: what a simulated node answers for every task: the pickled result of a no-op returning None
_NONE = pickle.dumps(None)
#: each simulated working node's capacity (a node with 2 workers and its prefetch)
LOAD_CAPACITY = 4
#: the default heartbeat period, seconds (``Timings.heartbeat``)
DEFAULT_HEARTBEAT = 5.0
#: sizes: (quick, full)
SIZES: dict[str, dict[str, Any]] = {
    "quick": {
        "e2e_tasks": 4000,
        "reps": 1,
        "core_nodes": (10, 100, 1000),
        "idle_nodes": (100, 1000),
        "heartbeats": (5.0, 1.0),
        "idle_window": 4.0,
        "idle_stores": ("memory",),
        "load_nodes": (100, 1000),
        "load_tasks": 8000,
        "paced": (500.0, 3.0, 0.5),  # tasks/s, seconds, task duration s
        "paced_nodes": (1000,),
    },
    "full": {
        "e2e_tasks": 20000,
        "reps": 3,
        "core_nodes": (10, 100, 300, 1000, 3000),
        "idle_nodes": (100, 1000),
        "heartbeats": (5.0, 1.0),
        "idle_window": 10.0,
        "idle_reps": 2,
        "idle_stores": ("memory", "redis"),
        "load_nodes": (10, 100, 300, 1000),
        "load_tasks": 30000,
        "paced": (500.0, 10.0, 0.5),
        "paced_nodes": (100, 1000),
    },
}


# -- CPU clocks ------------------------------------------------------------------


_libc = ctypes.CDLL(None, use_errno=True)
_TICK = os.sysconf("SC_CLK_TCK")


class CpuClock:
    """The CPU time of one process (all its threads), in seconds, read from outside."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        cid = ctypes.c_int()
        ok = _libc.clock_getcpuclockid(pid, ctypes.byref(cid)) == 0
        self._clock: int | None = cid.value if ok else None

    def read(self) -> float:
        if self._clock is not None:
            try:
                return time.clock_gettime(self._clock)
            except OSError:
                self._clock = None
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0  # gone: counts nothing more
        return (int(fields[11]) + int(fields[12])) / _TICK


class Meter:
    """CPU clocks of named groups of processes, read together."""

    def __init__(self, groups: dict[str, Sequence[int]]) -> None:
        self.clocks = {name: [CpuClock(p) for p in pids] for name, pids in groups.items()}

    def read(self) -> dict[str, float]:
        out = {name: sum(c.read() for c in clocks) for name, clocks in self.clocks.items()}
        out["client"] = time.process_time()  # this process
        return out

    @contextlib.contextmanager
    def span(self, into: dict[str, float]) -> Iterator[None]:
        """CPU seconds each group used inside the block (and ``wall``), added to ``into``."""
        before, t0 = self.read(), time.perf_counter()
        yield
        after = self.read()
        into["wall"] = time.perf_counter() - t0
        for name, value in after.items():
            into[name] = value - before[name]


# -- processes -------------------------------------------------------------------


def _more_files() -> None:
    """Children that hold thousands of connections need more descriptors."""
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@contextlib.contextmanager
def redis_if(store: str, tmp: Path) -> Iterator[RedisServer | None]:
    """A private redis-server for the Redis store; None for the others."""
    if store != "redis":
        yield None
        return
    server = RedisServer(tmp, "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def store_arg(store: str, tmp: Path, redis: RedisServer | None) -> str | None:
    if store == "sqlite":
        return str(tmp / "capacity.db")
    if store == "redis":
        assert redis is not None
        return redis.url
    return None


def start_coordinator(
    key: str, store: str | None, tmp: Path, tag: str
) -> tuple[subprocess.Popen[bytes], str]:
    """``pyqueue coordinator`` with the default timings; its process and address."""
    from pyqueue.cluster.local import child_env, cli_command

    port_file = tmp / f"{tag}.port"
    port_file.unlink(missing_ok=True)  # a coordinator of an earlier phase left it
    cmd = cli_command("coordinator", "--bind", f"127.0.0.1:{free_port()}")
    cmd += ["--port-file", str(port_file), "--log-level", "WARNING"]
    if store:
        cmd += ["--store", store]
    proc = spawn_with(cmd, tmp / f"{tag}.log", child_env(key))
    deadline = time.monotonic() + 30
    while not port_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_tree(proc, grace=2)
            raise RuntimeError(f"coordinator {tag} did not start: see {tmp / tag}.log")
        time.sleep(0.01)
    return proc, port_file.read_text().strip()


def spawn_with(cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """:func:`benchmarks.brokers.spawn`, with as many file descriptors as allowed."""
    _more_files()  # inherited by the child
    return spawn(cmd, log, env)


class FakeNodes:
    """A child process holding ``n`` simulated node connections (see :func:`fake_main`)."""

    def __init__(
        self,
        addresses: Sequence[str],
        key: str,
        n: int,
        heartbeat: float,
        capacity: int,
        tmp: Path,
        task_s: float = 0.0,
        timeout: float = 120.0,
    ) -> None:
        from pyqueue.cluster.local import child_env

        _more_files()
        cmd = [sys.executable, "-m", "benchmarks.capacity_sim", "--fake-nodes"]
        cmd += [",".join(addresses), str(n), str(heartbeat), str(capacity), str(task_s)]
        env = child_env(key)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
        self.log = tmp / f"fake-{n}.log"
        self.proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(self.log, "wb"),  # noqa: SIM115 - the child holds it
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        self.t0 = time.perf_counter()
        line = self._line(timeout)
        if not line.startswith("ready"):
            self.stop()
            tail = self.log.read_text(errors="replace").strip().splitlines()[-3:]
            raise RuntimeError(f"simulated nodes did not connect ({line!r}): {' | '.join(tail)}")
        self.connect_s = time.perf_counter() - self.t0

    def _line(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        got: list[str] = []
        reader = threading.Thread(
            target=lambda: got.append(self.proc.stdout.readline().decode()),  # type: ignore[union-attr]
            daemon=True,
        )
        reader.start()
        reader.join(timeout)
        return got[0].strip() if got else "timed out"

    def stop(self) -> dict[str, Any]:
        """Close the connections (stdin EOF); what the child counted."""
        out: dict[str, Any] = {}
        if self.proc.poll() is None and self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
            line = self._line(10)
            with contextlib.suppress(ValueError):
                out = json.loads(line)
        stop_tree(self.proc, grace=5)  # type: ignore[arg-type]
        return out


# -- the simulated nodes (child process) -----------------------------------------


class _SimNode(asyncio.Protocol):
    """One node connection speaking the real protocol: handshake, READY,
    HEARTBEAT every ``heartbeat`` s, and a DONE for every TASKS at once."""

    def __init__(self, sim: _Sim, name: str) -> None:
        from pyqueue.cluster import protocol as P

        self.sim = sim
        self.name = name
        self.conn = P.Connection(sim.key, server=False, role="node", name=name)
        self.transport: asyncio.Transport | None = None
        self.corr = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.conn.data_to_send())

    def data_received(self, data: bytes) -> None:
        from pyqueue.cluster import protocol as P
        from pyqueue.cluster.protocol import MsgType

        for ev in self.conn.receive_data(data):
            if isinstance(ev, P.Authenticated):
                self.conn.send(MsgType.READY, {"capacity": self.sim.capacity, "name": self.name})
                self.sim.joined(self)
            elif ev.type == MsgType.TASKS:
                rows = ev.body["tasks"]
                if self.sim.task_s > 0:  # they "run" that long, then one DONE
                    asyncio.get_running_loop().call_later(self.sim.task_s, self.finish, rows)
                else:
                    self.finish(rows)
        self.flush()

    def finish(self, rows: list[list[Any]]) -> None:
        from pyqueue.cluster.protocol import MsgType

        self.corr += 1
        done = [[r[0], r[1], True, _NONE, None, False, self.sim.task_s] for r in rows]
        self.conn.send(MsgType.DONE, {"results": done}, self.corr)
        self.sim.tasks += len(rows)
        self.flush()

    def flush(self) -> None:
        out = self.conn.data_to_send()
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(out)

    def beat(self) -> None:
        from pyqueue.cluster.protocol import MsgType

        if self.transport is None or self.transport.is_closing():
            return
        self.conn.send(MsgType.HEARTBEAT, {})
        self.flush()
        self.sim.beats += 1
        asyncio.get_running_loop().call_later(self.sim.heartbeat, self.beat)

    def connection_lost(self, exc: Exception | None) -> None:
        self.sim.lost += 1


class _Sim:
    def __init__(self, key: bytes, n: int, heartbeat: float, capacity: int, task_s: float) -> None:
        self.key = key
        self.task_s = task_s
        self.n = n
        self.heartbeat = heartbeat
        self.capacity = capacity
        self.tasks = self.beats = self.lost = 0
        self.ready = 0
        self.all_ready = asyncio.Event()

    def joined(self, node: _SimNode) -> None:
        self.ready += 1
        # a random phase, as nodes started at different times have
        delay = random.uniform(0.0, self.heartbeat)
        asyncio.get_running_loop().call_later(delay, node.beat)
        if self.ready == self.n:
            self.all_ready.set()


async def _fake_run(
    addresses: list[str], n: int, heartbeat: float, capacity: int, task_s: float
) -> None:
    from pyqueue.cluster.config import load_key, parse_address

    sim = _Sim(load_key(), n, heartbeat, capacity, task_s)
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(64)  # connects in flight: within the listen backlog
    nodes: list[asyncio.Transport] = []

    async def connect(i: int) -> None:
        host, port = parse_address(addresses[i % len(addresses)])
        async with gate:
            transport, _ = await loop.create_connection(
                lambda: _SimNode(sim, f"sim-{i}"), host, port
            )
            nodes.append(transport)

    await asyncio.gather(*(connect(i) for i in range(n)))
    if n:
        await sim.all_ready.wait()
    print("ready", flush=True)
    await loop.run_in_executor(None, sys.stdin.read)  # until the parent closes stdin
    for transport in nodes:
        transport.close()
    print(json.dumps({"tasks": sim.tasks, "beats": sim.beats, "lost": sim.lost}), flush=True)


def fake_main(argv: Sequence[str]) -> int:
    addresses, n, heartbeat, capacity, task_s = argv
    asyncio.run(
        _fake_run(addresses.split(","), int(n), float(heartbeat), int(capacity), float(task_s))
    )
    return 0


# -- phase e2e: LocalCluster per store -------------------------------------------


def run_e2e(stores: Sequence[str], n: int, reps: int, tmp: Path) -> list[dict[str, Any]]:
    from pyqueue.cluster import LocalCluster

    samples = []
    for store in stores:
        with redis_if(store, tmp) as redis:
            cluster = LocalCluster(nodes=2, workers=1, store=store_arg(store, tmp, redis))
            with cluster:
                assert cluster.coordinator is not None
                node_pids = [p.pid for p in cluster.nodes]
                node_pids += [c for p in cluster.nodes for c in descendants(p.pid)]
                groups = {"coordinator": [cluster.coordinator.pid], "node": node_pids}
                if redis is not None and redis.proc is not None:
                    groups["redis"] = [redis.proc.pid]
                meter = Meter(groups)
                client = cluster.client
                for _ in client.map(noop, range(min(n, 2000))):  # warm every process
                    pass
                for rep in range(reps):
                    s: dict[str, Any] = {"phase": "e2e", "store": store, "rep": rep, "tasks": n}
                    with meter.span(s):
                        got = sum(1 for _ in client.map(noop, range(n)))
                    assert got == n, f"{got} results for {n} tasks"
                    samples.append(s)
                    print(f"  e2e {store:<6} rep {rep + 1}: {line(s)}", flush=True)
    return samples


def line(s: dict[str, Any]) -> str:
    n = s["tasks"]
    parts = [f"{n / s['wall']:8,.0f} tasks/s"]
    for name in ("coordinator", "redis", "node", "sim", "client"):
        if name in s:
            parts.append(f"{name} {s[name] / n * 1e6:6.1f} µs/task")
    return ", ".join(parts)


# -- phase core: the sans-IO coordinator -----------------------------------------


class _Link:
    """A Link that keeps what the core writes, for the peer to decode."""

    def __init__(self) -> None:
        self.out: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


class _CorePeer:
    """A node or client driven through a real client-side protocol Connection."""

    def __init__(self, core: Any, role: str, name: str) -> None:
        from pyqueue.cluster import protocol as P

        self.core = core
        self.link = _Link()
        self.conn = P.Connection(core.key, server=False, role=role, name=name)
        self.state = core.connect(self.link, name)
        while not self.conn.authenticated:
            core.receive(self.state, self.conn.data_to_send())
            self.read()
        self.corr = 0

    def frame(self, mtype: Any, body: dict[str, Any]) -> bytes:
        self.corr += 1
        self.conn.send(mtype, body, self.corr)
        return self.conn.data_to_send()

    def read(self) -> list[Any]:
        from pyqueue.cluster import protocol as P

        data = b"".join(self.link.out)
        self.link.out.clear()
        return [ev for ev in self.conn.receive_data(data) if isinstance(ev, P.Message)]


def _core_with(n: int) -> tuple[Any, list[_CorePeer], _CorePeer]:
    from pyqueue.cluster.backends import MemoryBackend
    from pyqueue.cluster.coordinator import CoordinatorCore
    from pyqueue.cluster.protocol import MsgType

    core = CoordinatorCore(b"capacity-core-key", MemoryBackend(seed=1))
    nodes = [_CorePeer(core, "node", f"n{i}") for i in range(n)]
    for node in nodes:
        core.receive(node.state, node.frame(MsgType.READY, {"capacity": LOAD_CAPACITY}))
    core.flush()
    return core, nodes, _CorePeer(core, "client", "c")


def _per_call(fn: Any, calls: int) -> float:
    """Seconds per call of ``fn()``: the best of 3 runs of ``calls`` calls."""
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - t0) / calls)
    return best


def run_core(sizes: Sequence[int], tasks: int) -> list[dict[str, Any]]:
    import gc

    from pyqueue.cluster.protocol import MsgType
    from pyqueue.cluster.serialize import encode_call

    samples = []
    payload = encode_call(noop, (1,), {})
    for n in sizes:
        core, nodes, client = _core_with(n)
        s: dict[str, Any] = {"phase": "core", "nodes": n}
        beats = [(node.state, node.frame(MsgType.HEARTBEAT, {})) for node in nodes]
        pairs = itertools.cycle(beats)

        def beat(pairs: Iterator[tuple[Any, bytes]] = pairs, receive: Any = core.receive) -> None:
            receive(*next(pairs))

        s["heartbeat_us"] = _per_call(beat, max(2000, 3 * n)) * 1e6
        for node in nodes:
            node.link.out.clear()
        s["tick_us_per_node"] = _per_call(core.tick, 20) * 1e6 / n
        s["idle_flush_us_per_node"] = _per_call(core.flush, 20) * 1e6 / n
        # tasks: a client submits batches; every node completes what it got
        spent = 0.0
        done = 0
        batch = 500
        gc.collect()
        while done < tasks:
            rows = [[f"t{done + i}", payload, 0, 0.0, 0.0] for i in range(batch)]
            data = client.frame(MsgType.SUBMIT, {"tasks": rows})
            t0 = time.perf_counter()
            core.receive(client.state, data)
            core.flush()
            spent += time.perf_counter() - t0
            while True:
                frames = []
                for node in nodes:
                    got = [
                        r for m in node.read() if m.type == MsgType.TASKS for r in m.body["tasks"]
                    ]
                    if got:
                        res = [[r[0], r[1], True, _NONE, None, False, 0.0] for r in got]
                        frames.append((node.state, node.frame(MsgType.DONE, {"results": res})))
                if not frames:
                    break
                t0 = time.perf_counter()
                for state, data in frames:
                    core.receive(state, data)
                core.flush()
                spent += time.perf_counter() - t0
            client.read()  # the RESULTS pushed to it
            done += batch
        s["task_us"] = spent / done * 1e6
        s["tasks"] = done
        samples.append(s)
        print(
            f"  core {n:>5} nodes: heartbeat {s['heartbeat_us']:.1f} µs,"
            f" tick {s['tick_us_per_node']:.2f} µs/node, idle flush"
            f" {s['idle_flush_us_per_node']:.2f} µs/node, task {s['task_us']:.1f} µs",
            flush=True,
        )
    return samples


# -- phases idle and load: a coordinator process and simulated nodes -------------


@contextlib.contextmanager
def coordinators(store: str, k: int, tmp: Path) -> Iterator[tuple[list[str], dict[str, list[int]]]]:
    """``k`` coordinators (and Redis for the Redis store): addresses, pids by group."""
    from pyqueue.cluster.config import generate_key

    key = generate_key()
    os.environ["PYQUEUE_KEY"] = key  # for the client and the simulator
    with redis_if(store, tmp) as redis:
        procs: list[subprocess.Popen[bytes]] = []
        try:
            addresses = []
            for i in range(k):
                proc, address = start_coordinator(
                    key, store_arg(store, tmp, redis), tmp, f"coord-{store}-{i}"
                )
                procs.append(proc)
                addresses.append(address)
            groups = {"coordinator": [p.pid for p in procs]}
            if redis is not None and redis.proc is not None:
                groups["redis"] = [redis.proc.pid]
            yield addresses, groups
        finally:
            for p in procs:
                stop_tree(p, grace=5)


def run_idle(
    stores: Sequence[str],
    sizes: Sequence[int],
    heartbeats: Sequence[float],
    window: float,
    reps: int,
    tmp: Path,
) -> list[dict[str, Any]]:
    samples = []
    for store in stores:
        with coordinators(store, 1, tmp) as (addresses, groups):
            key = os.environ["PYQUEUE_KEY"]
            time.sleep(1.0)  # start-up done
            for rep in range(reps):
                base: dict[str, Any] = {"phase": "idle", "store": store, "nodes": 0, "rep": rep}
                meter = Meter({**groups})
                with meter.span(base):
                    time.sleep(window)
                base["heartbeat_s"] = None
                samples.append(base)
                print(f"  idle {store:<6} 0 nodes: {idle_line(base)}", flush=True)
                for n in sizes:
                    for hb in heartbeats:
                        s: dict[str, Any] = {"phase": "idle", "store": store, "nodes": n}
                        s.update(rep=rep, heartbeat_s=hb)
                        conn: dict[str, float] = {}
                        meter = Meter(groups)
                        with meter.span(conn):
                            sim = FakeNodes(addresses, key, n, hb, LOAD_CAPACITY, tmp)
                        s["connect_coordinator_s"] = conn["coordinator"]
                        s["connect_wall_s"] = conn["wall"]
                        time.sleep(min(hb, 2.0))  # heartbeats under way
                        meter = Meter({**groups, "sim": [sim.proc.pid]})
                        with meter.span(s):
                            time.sleep(window)
                        s["sim_counts"] = sim.stop()
                        samples.append(s)
                        print(f"  idle {store:<6} {n} nodes, heartbeat {hb:g} s: {idle_line(s)}")
                        time.sleep(1.0)  # the coordinator forgets them
    return samples


def idle_line(s: dict[str, Any]) -> str:
    out = f"coordinator {s['coordinator'] / s['wall'] * 1e3:.2f} ms CPU/s"
    if "redis" in s:
        out += f", redis {s['redis'] / s['wall'] * 1e3:.2f} ms CPU/s"
    if s.get("nodes"):
        out += f", handshake {s['connect_coordinator_s'] / s['nodes'] * 1e6:.0f} µs/node"
    return out


def run_load(
    stores: Sequence[str],
    sizes: Sequence[int],
    n_tasks: int,
    reps: int,
    k: int,
    tmp: Path,
) -> list[dict[str, Any]]:
    from pyqueue.cluster.client import Client

    samples = []
    for store in stores:
        for n in sizes:
            with coordinators(store, k, tmp) as (addresses, groups):
                key = os.environ["PYQUEUE_KEY"].encode()
                sim = FakeNodes(addresses, key.decode(), n, DEFAULT_HEARTBEAT, LOAD_CAPACITY, tmp)
                clients = [
                    Client(a, key=key, name=f"sim-client-{i}") for i, a in enumerate(addresses)
                ]
                try:
                    meter = Meter({**groups, "sim": [sim.proc.pid]})
                    for c in clients:  # warm up
                        for _ in c.map(noop, range(500)):
                            pass
                    for rep in range(reps):
                        s: dict[str, Any] = {"phase": "load", "store": store, "nodes": n}
                        s.update(rep=rep, tasks=n_tasks, coordinators=k)
                        with meter.span(s):
                            got = _map_all(clients, n_tasks)
                        assert got == n_tasks, f"{got} results for {n_tasks} tasks"
                        samples.append(s)
                        print(f"  load {store:<6} {n:>4} nodes x{k} rep {rep + 1}: {line(s)}")
                finally:
                    for c in clients:
                        c.close()
                    sim.stop()
    return samples


def run_paced(
    stores: Sequence[str],
    sizes: Sequence[int],
    rate: float,
    seconds: float,
    task_s: float,
    tmp: Path,
) -> list[dict[str, Any]]:
    """Tasks that last ``task_s`` submitted at ``rate`` per second for ``seconds``:
    the coordinator's cost per task when it is far from saturation (each
    completion then gets a flush of its own, which looks at every node)."""
    from pyqueue.cluster.client import Client

    samples = []
    for store in stores:
        for n in sizes:
            with coordinators(store, 1, tmp) as (addresses, groups):
                key = os.environ["PYQUEUE_KEY"]
                sim = FakeNodes(addresses, key, n, DEFAULT_HEARTBEAT, LOAD_CAPACITY, tmp, task_s)
                client = Client(addresses[0], key=key.encode(), name="sim-client")
                try:
                    for _ in client.map(noop, range(200)):  # warm up
                        pass
                    total = int(rate * seconds)
                    s: dict[str, Any] = {"phase": "paced", "store": store, "nodes": n}
                    s.update(tasks=total, rate=rate, task_s=task_s)
                    meter = Meter({**groups, "sim": [sim.proc.pid]})
                    with meter.span(s):
                        t0 = time.perf_counter()
                        handles = []
                        for i in range(total):  # in steps of 10 ms
                            handles.append(client.submit(noop, i))
                            if i % max(1, int(rate / 100)) == 0:
                                time.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
                        for h in handles:
                            h.result(60)
                    samples.append(s)
                    print(f"  paced {store:<6} {n:>4} nodes, {rate:g}/s of {task_s:g} s: {line(s)}")
                finally:
                    client.close()
                    sim.stop()
    return samples


def _map_all(clients: list[Any], n: int) -> int:
    """``n`` no-op tasks mapped, split evenly over the clients (one thread each)."""
    counts = [0] * len(clients)

    def one(i: int) -> None:
        share = n // len(clients) + (i < n % len(clients))
        counts[i] = sum(1 for _ in clients[i].map(noop, range(share)))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(clients))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts)


# -- the model -------------------------------------------------------------------

CORE_US = 1e6  # one core: a million CPU µs per second


def _med(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _per_task(samples: list[dict[str, Any]], name: str) -> float | None:
    """Median CPU µs per task of process group ``name`` over ``samples``."""
    return _med([s[name] / s["tasks"] * 1e6 for s in samples if name in s])


def _fit(points: dict[int, float]) -> tuple[float, float]:
    """Least-squares ``a + b * n`` through ``{n: value}`` (flat through one point)."""
    if len(points) == 1:
        (v,) = points.values()
        return v, 0.0
    xs, ys = list(points), list(points.values())
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    b = max(b, 0.0)  # cost never falls with more nodes: noise would say so
    return my - b * mx, b


def idle_costs(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """A coordinator's CPU for connected idle nodes, per store: its CPU per
    second with none (``base_us_s``: the 0.5 s sweep) and, per heartbeat
    period H, the CPU per second above that per connected node, measured at
    the most nodes (``per_node_us_s[H]``: the event loop's wake-ups amortize
    better with more nodes, so this is the figure for scaling up).
    ``per_node_us_s[H] * H`` is then an upper bound of the cost of one
    heartbeat (it also carries the node's share of the sweep)."""
    out: dict[str, Any] = {}
    for store in sorted({s["store"] for s in samples}, key=STORES.index):
        mine = [s for s in samples if s["store"] == store]
        none = [s for s in mine if not s["nodes"]]
        base = _med([s["coordinator"] / s["wall"] * 1e6 for s in none]) or 0.0
        rbase = _med([s["redis"] / s["wall"] * 1e6 for s in none if "redis" in s])
        cells: dict[tuple[int, float], list[float]] = {}
        for s in mine:
            if s["nodes"]:
                rate = (s["coordinator"] / s["wall"] * 1e6 - base) / s["nodes"]
                cells.setdefault((s["nodes"], s["heartbeat_s"]), []).append(rate)
        per_node: dict[float, float] = {}
        at: dict[float, int] = {}
        for (n, h), rates in sorted(cells.items()):
            per_node[h], at[h] = max(0.0, statistics.median(rates)), n  # the largest n wins
        handshake = _med(
            [s["connect_coordinator_s"] / s["nodes"] * 1e6 for s in mine if s["nodes"]]
        )
        out[store] = {
            "base_us_s": base,
            "redis_base_us_s": rbase,
            "handshake_us": handshake,
            "per_node_us_s": per_node,
            "measured_at_nodes": at,
            "cells": {f"{n}@{h:g}": statistics.median(v) for (n, h), v in cells.items()},
        }
    return out


def _fits(samples: list[dict[str, Any]], name: str) -> tuple[dict[int, float], tuple[float, float]]:
    """Median µs per task of ``name`` by node count, and the line through them."""
    by_n: dict[int, float] = {}
    for n in sorted({s["nodes"] for s in samples}):
        v = _per_task([s for s in samples if s["nodes"] == n], name)
        if v is not None:
            by_n[n] = v
    return by_n, (_fit(by_n) if by_n else (0.0, 0.0))


def model(doc: dict[str, Any]) -> dict[str, Any]:
    """Saturation points from the measured costs.  Everything here is a model:
    one core is 10^6 CPU µs per second; a cost measured at some node counts is
    carried to others along a straight line in N."""
    by_phase: dict[str, list[dict[str, Any]]] = {p: [] for p in PHASES}
    for s in doc["samples"]:
        by_phase[s["phase"]].append(s)
    idle = idle_costs(by_phase["idle"])
    ref = idle.get("memory") or next(iter(idle.values()), {})
    out: dict[str, Any] = {"idle": idle, "stores": {}, "three_over_redis": {}}

    def idle_us(store: str, n: float, hb: float) -> float:
        e = idle.get(store) or ref
        per = (e.get("per_node_us_s") or ref.get("per_node_us_s") or {}).get(hb, 0.0)
        return float(e.get("base_us_s", 0.0)) + n * per

    for store in STORES:
        load = [s for s in by_phase["load"] if s["store"] == store and s["coordinators"] == 1]
        if not load:
            continue
        coord, (a, b) = _fits(load, "coordinator")
        entry: dict[str, Any] = {"coordinator_us_per_task": coord, "fit": [a, b]}
        redis, (ra, rb) = _fits(load, "redis")
        rbase = (idle.get(store) or {}).get("redis_base_us_s") or 0.0
        if redis:
            entry.update(redis_us_per_task=redis, redis_fit=[ra, rb], redis_base_us_s=rbase)
        paced = [s for s in by_phase["paced"] if s["store"] == store]
        entry["paced"] = {
            s["nodes"]: {
                "rate": s["rate"],
                "task_s": s["task_s"],
                "tasks_s": s["tasks"] / s["wall"],
                "coordinator_us_per_task": s["coordinator"] / s["tasks"] * 1e6,
                "coordinator_core_share": s["coordinator"] / s["wall"],
                "redis_us_per_task": s["redis"] / s["tasks"] * 1e6 if "redis" in s else None,
                "redis_core_share": s["redis"] / s["wall"] if "redis" in s else None,
            }
            for s in paced
        }
        rows = []
        for n in (100, 1000):
            for hb in (DEFAULT_HEARTBEAT, 1.0):
                spent = idle_us(store, n, hb)
                row: dict[str, Any] = {
                    "nodes": n,
                    "heartbeat_s": hb,
                    "idle_cpu_share": spent / CORE_US,
                    "coordinator_us_per_task": a + b * n,
                    "coordinator_max_tasks_s": max(0.0, CORE_US - spent) / (a + b * n),
                    "measured_nodes": n in coord,
                }
                if redis:
                    row["redis_us_per_task"] = ra + rb * n
                    row["redis_max_tasks_s"] = max(0.0, CORE_US - rbase) / (ra + rb * n)
                rows.append(row)
        entry["rows"] = rows
        e = idle.get(store) or ref
        entry["idle_nodes_fill_core"] = {
            hb: (CORE_US - e.get("base_us_s", 0.0)) / per if per else None
            for hb, per in (e.get("per_node_us_s") or {}).items()
        }
        out["stores"][store] = entry
    red = out["stores"].get("redis")
    if red and "redis_fit" in red:
        a, b = red["fit"]
        ra, rb = red["redis_fit"]
        k = 3
        for n in (100, 1000):
            per = n / k
            coord_cap = (
                k * max(0.0, CORE_US - idle_us("redis", per, DEFAULT_HEARTBEAT)) / (a + b * per)
            )
            redis_cap = max(0.0, CORE_US - k * red["redis_base_us_s"]) / (ra + rb * per)
            out["three_over_redis"][n] = {
                "coordinators": k,
                "nodes_each": per,
                "coordinators_max_tasks_s": coord_cap,
                "redis_max_tasks_s": redis_cap,
                "max_tasks_s": min(coord_cap, redis_cap),
                "bound_by": "Redis" if redis_cap < coord_cap else "the coordinators",
            }
    return out


# -- report ----------------------------------------------------------------------


def _f(x: float | None, nd: int = 1) -> str:
    if x is None:
        return "-"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{nd}f}"


def render(doc: dict[str, Any]) -> str:
    m = doc["meta"]
    lines = [
        f"# Capacity model ({m['mode']})",
        "",
        f"`{m['command']}`, {m['started']}  ",
        f"{machine_line(m)}; figures are medians of {m['reps']} repetition(s).",
        "CPU is each process's own CPU clock, all threads, user + system.",
        "",
    ]
    by_phase: dict[str, list[dict[str, Any]]] = {p: [] for p in PHASES}
    for s in doc["samples"]:
        by_phase[s["phase"]].append(s)
    if by_phase["e2e"]:
        lines += [
            "## Per task, end to end: LocalCluster(nodes=2, workers=1), no-op tasks, client.map",
            "",
            "| store | tasks/s (this VM) | coordinator µs/task | Redis µs/task"
            " | nodes µs/task (both) | client µs/task |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for store in STORES:
            mine = [s for s in by_phase["e2e"] if s["store"] == store]
            if mine:
                rate = _med([s["tasks"] / s["wall"] for s in mine])
                lines.append(
                    f"| {store} | {_f(rate, 0)} | {_f(_per_task(mine, 'coordinator'))}"
                    f" | {_f(_per_task(mine, 'redis'))} | {_f(_per_task(mine, 'node'))}"
                    f" | {_f(_per_task(mine, 'client'))} |"
                )
        lines.append("")
    if by_phase["core"]:
        lines += [
            "## The coordinator's sans-IO core (memory store, no sockets, no event loop)",
            "",
            "| nodes connected | µs per HEARTBEAT | tick() µs per node | idle flush µs per node"
            " | µs per task |",
            "| --- | --- | --- | --- | --- |",
        ]
        for s in by_phase["core"]:
            lines.append(
                f"| {s['nodes']} | {_f(s['heartbeat_us'])} | {_f(s['tick_us_per_node'], 2)}"
                f" | {_f(s['idle_flush_us_per_node'], 2)} | {_f(s['task_us'])} |"
            )
        lines += ["", "tick() runs every 0.5 s (`Timings.sweep`).", ""]
    if by_phase["idle"]:
        lines += [
            "## Idle nodes: coordinator process, simulated nodes over TCP",
            "",
            "| store | nodes | heartbeat s | coordinator ms CPU/s | above no nodes, µs/s per node"
            " | Redis ms CPU/s | handshake µs/node (coordinator) |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        keys = sorted(
            {(s["store"], s["nodes"], s["heartbeat_s"] or 0.0) for s in by_phase["idle"]},
            key=lambda k: (STORES.index(k[0]), k[1], -k[2]),
        )
        for store, n, hb in keys:
            mine = [
                s
                for s in by_phase["idle"]
                if (s["store"], s["nodes"], s["heartbeat_s"] or 0.0) == (store, n, hb)
            ]
            base = _med(
                [
                    s["coordinator"] / s["wall"] * 1e6
                    for s in by_phase["idle"]
                    if s["store"] == store and not s["nodes"]
                ]
            )
            cpu = _med([s["coordinator"] / s["wall"] * 1e6 for s in mine]) or 0.0
            per = (cpu - (base or 0.0)) / n if n else None
            rcpu = _med([s["redis"] / s["wall"] * 1e3 for s in mine if "redis" in s])
            hs = _med([s["connect_coordinator_s"] / n * 1e6 for s in mine]) if n else None
            lines.append(
                f"| {store} | {n} | {_f(hb) if n else '-'} | {cpu / 1e3:.2f} | {_f(per, 2)}"
                f" | {_f(rcpu, 2)} | {_f(hs, 0)} |"
            )
        lines.append("")
    if by_phase["load"]:
        lines += [
            "## Working nodes: coordinator process, simulated nodes (capacity"
            f" {LOAD_CAPACITY}, heartbeat {DEFAULT_HEARTBEAT:g} s), one client per coordinator",
            "",
            "| store | nodes | coordinators | tasks/s (this VM) | coordinator µs/task"
            " | Redis µs/task | simulator µs/task | client µs/task |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        keys2 = sorted(
            {(s["store"], s["nodes"], s["coordinators"]) for s in by_phase["load"]},
            key=lambda k: (STORES.index(k[0]), k[2], k[1]),
        )
        for store, n, k in keys2:
            mine = [
                s
                for s in by_phase["load"]
                if (s["store"], s["nodes"], s["coordinators"]) == (store, n, k)
            ]
            rate = _med([s["tasks"] / s["wall"] for s in mine])
            lines.append(
                f"| {store} | {n} | {k} | {_f(rate, 0)}"
                f" | {_f(_per_task(mine, 'coordinator'))} | {_f(_per_task(mine, 'redis'))}"
                f" | {_f(_per_task(mine, 'sim'))} | {_f(_per_task(mine, 'client'))} |"
            )
        lines.append("")
    if by_phase["paced"]:
        lines += [
            "## Paced: tasks that last, submitted at a fixed rate (simulated nodes, capacity"
            f" {LOAD_CAPACITY}, heartbeat {DEFAULT_HEARTBEAT:g} s)",
            "",
            "| store | nodes | asked tasks/s | task s | got tasks/s | coordinator µs/task"
            " | coordinator share of a core | Redis µs/task | Redis share of a core |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for s in by_phase["paced"]:
            r = s.get("redis")
            share = "-" if r is None else f"{r / s['wall'] * 100:.0f}%"
            lines.append(
                f"| {s['store']} | {s['nodes']} | {s['rate']:g} | {s['task_s']:g}"
                f" | {_f(s['tasks'] / s['wall'], 0)} | {_f(s['coordinator'] / s['tasks'] * 1e6)}"
                f" | {s['coordinator'] / s['wall'] * 100:.0f}%"
                f" | {_f(r / s['tasks'] * 1e6 if r is not None else None)}"
                f" | {share} |"
            )
        lines.append("")
    lines += render_model(doc["model"])
    return "\n".join(lines) + "\n"


def render_model(mod: dict[str, Any]) -> list[str]:
    lines = ["## Model (extrapolated from the costs above; one core = 10^6 CPU µs/s)", ""]
    for store, e in mod["idle"].items():
        per = ", ".join(
            f"{v:.1f} µs/s per node at heartbeat {h:g} s (<= {v * h:.0f} µs per heartbeat;"
            f" measured with {e['measured_at_nodes'][h]} nodes)"
            for h, v in sorted(e["per_node_us_s"].items(), reverse=True)
        )
        lines.append(
            f"- idle ({store}): {e['base_us_s'] / 1e3:.2f} ms CPU/s with no node; {per};"
            f" handshake {_f(e['handshake_us'], 0)} µs per node"
            + (
                f"; Redis {e['redis_base_us_s'] / 1e3:.2f} ms CPU/s for an idle coordinator"
                if e.get("redis_base_us_s") is not None
                else ""
            )
        )
    lines.append("")
    if mod["stores"]:
        lines += [
            "| store | nodes | heartbeat s | idle share of a core | coordinator µs/task"
            " | one coordinator core saturates at, tasks/s | Redis µs/task"
            " | one Redis core saturates at, tasks/s |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for store, e in mod["stores"].items():
            for r in e["rows"]:
                tag = "" if r["measured_nodes"] else " (extrapolated in N)"
                lines.append(
                    f"| {store} | {r['nodes']}{tag} | {r['heartbeat_s']:g}"
                    f" | {r['idle_cpu_share'] * 100:.2f}% | {_f(r['coordinator_us_per_task'])}"
                    f" | {_f(r['coordinator_max_tasks_s'], 0)}"
                    f" | {_f(r.get('redis_us_per_task'))} | {_f(r.get('redis_max_tasks_s'), 0)} |"
                )
        lines.append("")
        for store, e in mod["stores"].items():
            a, b = e["fit"]
            fill = e["idle_nodes_fill_core"]
            lines.append(
                f"- {store}: coordinator µs/task = {a:.1f} + {b:.4f} x nodes (fit over"
                f" {', '.join(map(str, e['coordinator_us_per_task']))} nodes); idle nodes alone"
                f" fill a core at {_f(fill.get(DEFAULT_HEARTBEAT), 0)} nodes (heartbeat"
                f" {DEFAULT_HEARTBEAT:g} s), {_f(fill.get(1.0), 0)} (1 s)"
            )
            if "redis_fit" in e:
                ra, rb = e["redis_fit"]
                lines.append(f"  - Redis µs/task = {ra:.1f} + {rb:.4f} x nodes")
            for n, p in e["paced"].items():
                red = (
                    f"; Redis {p['redis_us_per_task']:.0f} µs/task,"
                    f" {p['redis_core_share'] * 100:.0f}% of a core"
                    if p["redis_us_per_task"] is not None
                    else ""
                )
                lines.append(
                    f"  - far from saturation ({n} nodes, {p['tasks_s']:.0f} tasks/s of"
                    f" {p['task_s']:g} s): coordinator {p['coordinator_us_per_task']:.0f} µs/task,"
                    f" {p['coordinator_core_share'] * 100:.0f}% of a core{red}"
                )
        lines.append("")
    if mod["three_over_redis"]:
        lines += [
            "Three coordinators over one Redis (a MODEL from one coordinator's costs, nodes"
            " split evenly; `--only load --coordinators 3` measures it, and sharing adds"
            " round trips):",
            "",
            "| nodes | per coordinator | 3 coordinator cores carry, tasks/s"
            " | one Redis core carries, tasks/s | the cluster | bound by |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for n, r in mod["three_over_redis"].items():
            lines.append(
                f"| {n} | {r['nodes_each']:.0f} | {_f(r['coordinators_max_tasks_s'], 0)}"
                f" | {_f(r['redis_max_tasks_s'], 0)} | {_f(r['max_tasks_s'], 0)}"
                f" | {r['bound_by']} |"
            )
        lines.append("")
    return lines


# -- command line ----------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.capacity_sim",
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Phases: " + ", ".join(PHASES) + " (see the module's docstring).",
    )
    ap.add_argument("--quick", action="store_true", help="small sizes: under 2 minutes")
    ap.add_argument("--only", default=",".join(PHASES), help="comma-separated phases")
    ap.add_argument("--stores", default=",".join(STORES), help="stores for e2e and load")
    ap.add_argument("--reps", type=int, default=None, help="repetitions (full 3, quick 1)")
    ap.add_argument("--idle-nodes", default=None, help="simulated idle node counts, e.g. 100,1000")
    ap.add_argument("--heartbeats", default=None, help="heartbeat periods in s, e.g. 5,1")
    ap.add_argument("--load-nodes", default=None, help="simulated working node counts")
    ap.add_argument(
        "--coordinators",
        type=int,
        default=1,
        help="load phase on the Redis store only: K coordinators over one Redis prefix",
    )
    ap.add_argument(
        "--out", type=Path, default=None, help="write capacity-<mode>.json and .md here"
    )
    ap.add_argument(
        "--render", type=Path, default=None, help="print the tables and model of a saved JSON"
    )
    a = ap.parse_args(argv)
    bad = [p for p in a.only.split(",") if p not in PHASES]
    bad += [s for s in a.stores.split(",") if s not in STORES]
    if bad:
        ap.error(f"unknown phases or stores: {', '.join(bad)}")
    if a.coordinators < 1:
        ap.error("--coordinators must be at least 1")
    return a


def _ints(text: str | None, default: Sequence[int]) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",")) if text else tuple(default)


def _terminate(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--fake-nodes"]:
        return fake_main(argv[1:])
    a = parse_args(argv)
    if a.render is not None:  # the tables and the model again, from a saved run
        doc = json.loads(a.render.read_text())
        doc["model"] = model(doc)
        print(render(doc))
        return 0
    mode = "quick" if a.quick else "full"
    z = SIZES[mode]
    reps = a.reps or z["reps"]
    phases = a.only.split(",")
    stores = a.stores.split(",")
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _terminate)
    meta = machine_info()
    meta.update(
        mode=mode,
        reps=reps,
        command=" ".join(["python -m benchmarks.capacity_sim", *map(shlex.quote, argv)]),
        started=datetime.datetime.now().isoformat(timespec="seconds"),
        redis_server=versions().get("redis-server"),
    )
    doc: dict[str, Any] = {"meta": meta, "samples": []}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pyqueue-capacity-") as tmpdir:
        tmp = Path(tmpdir)
        if "e2e" in phases:
            print(f"e2e: {z['e2e_tasks']} no-op tasks x {reps}", flush=True)
            doc["samples"] += run_e2e(stores, z["e2e_tasks"], reps, tmp)
        if "core" in phases:
            print("core: sans-IO CoordinatorCore, memory store", flush=True)
            doc["samples"] += run_core(z["core_nodes"], 5000 if a.quick else 20000)
        if "idle" in phases:
            hbs = (
                tuple(float(x) for x in a.heartbeats.split(","))
                if a.heartbeats
                else z["heartbeats"]
            )
            idle_stores = [s for s in z["idle_stores"] if s in stores] or list(z["idle_stores"])[:1]
            print(f"idle: {z['idle_window']:g} s windows", flush=True)
            doc["samples"] += run_idle(
                idle_stores,
                _ints(a.idle_nodes, z["idle_nodes"]),
                hbs,
                z["idle_window"],
                min(reps, z.get("idle_reps", reps)),
                tmp,
            )
        if "load" in phases:
            k = a.coordinators
            load_stores = ["redis"] if k > 1 else stores
            doc["samples"] += run_load(
                load_stores, _ints(a.load_nodes, z["load_nodes"]), z["load_tasks"], reps, k, tmp
            )
        if "paced" in phases:
            rate, seconds, task_s = z["paced"]
            doc["samples"] += run_paced(
                [x for x in stores if x != "sqlite"], z["paced_nodes"], rate, seconds, task_s, tmp
            )
    meta["loadavg_end"] = os.getloadavg()
    meta["total_s"] = round(time.perf_counter() - t0, 1)
    doc["model"] = model(doc)
    text = render(doc)
    print()
    print(text)
    if a.out is not None:
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / f"capacity-{mode}.json").write_text(json.dumps(doc, indent=1, default=str))
        (a.out / f"capacity-{mode}.md").write_text(text)
        print(f"wrote {a.out}/capacity-{mode}.json and .md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
