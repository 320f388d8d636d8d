"""LocalCluster: a coordinator and N node processes on this machine.

It is the embedded default, and the way pure-Python CPU-bound work uses
several cores: each node is its own interpreter with its own GIL.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from typing import Any

import pyqueue

from .client import Client
from .config import DEFAULT_TIMINGS, FAST_TIMINGS, generate_key, is_redis_url
from .node import served_queues

# `python -m` (and `-c`'s "") would put the working directory first on the
# child's path, where a source checkout's unbuilt `pyqueue` folder could shadow
# the installed one.  The child instead finds the very package this process
# runs, then the rest; a node adds its working directory itself, after
# pyqueue is imported (see `pyqueue node --path`).
_BOOT = (
    "import sys; cwd = int(sys.path[:1] == ['']); sys.path[:cwd] = [sys.argv.pop(1)]; "
    "from pyqueue.cluster.cli import main; sys.exit(main(sys.argv[1:]))"
)


def cli_command(*args: str) -> list[str]:
    """The command line that runs ``pyqueue.cluster.cli`` with ``args`` in a
    child process, on the same pyqueue package as this process."""
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(pyqueue.__file__)))
    return [sys.executable, "-c", _BOOT, package_parent, *args]


__all__ = ["LocalCluster", "child_env"]

log = logging.getLogger("pyqueue.cluster.local")


def child_env(key: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for child processes: the key, and our sys.path so that
    callables importable here are importable (by reference) there too."""
    env = dict(os.environ)
    env["PYQUEUE_KEY"] = key
    env.pop("PYQUEUE_KEY_FILE", None)
    paths = [p for p in sys.path if p and os.path.isdir(p)]
    if "" in sys.path or not sys.path:
        paths.insert(0, os.getcwd())
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    if extra:
        env.update(extra)
    return env


class LocalCluster:
    """Start a coordinator and ``nodes`` node processes; hand out a :class:`Client`.

    Each node is ``pyqueue node``, so it is supervised: a node process that
    crashes (a task called ``os._exit``, say) is restarted with backoff, and
    :attr:`nodes` holds the supervisors' processes.

    Parameters
    ----------
    nodes : int
        Node processes to start.
    workers : int
        Task slots per node.
    store : str, optional
        SQLite file for a durable coordinator; memory only when None.
    prefetch : int, optional
        Per-node prefetch (see :class:`~pyqueue.cluster.node.Node`).
    fast : bool
        Use the fast test timings (a silent node is dead after 0.6 s).
    start_timeout : float
        Seconds to wait for the coordinator to listen and the nodes to join.
    max_payload : int, optional
        Largest argument or result in bytes (default 256 MiB); the nodes and
        the client adopt the coordinator's limit.
    synchronous : str, optional
        The store's SQLite ``synchronous`` mode, ``"NORMAL"`` (the default:
        survives a crash of the coordinator) or ``"FULL"`` (also a power loss).
    result_ttl, dead_ttl, max_dead : optional
        Retention (see :class:`~pyqueue.cluster.dispatch.Policy`): seconds a
        finished task is kept (1 hour), seconds a dead one is kept (7 days),
        and how many dead ones at most (100,000).
    queues, strict : optional
        The queues every node serves, with weights, and whether strictly by
        weight (see :class:`~pyqueue.cluster.node.Node`); default: "default".
    http, metrics : str, optional
        ``"HOST:PORT"`` where the coordinator serves its web dashboard and
        probes (``--http``) and Prometheus ``/metrics`` (``--metrics``); off
        when None.  The dashboard's token is ``dashboard_token(key)``.
    coordinators : int
        Coordinator processes over the one store (default 1).  More than one
        needs a shared store, a ``redis://`` URL: each node connects to its
        own first (node i to coordinator i mod N, the others as its failover
        list) and the client takes every address.  ``http``/``metrics`` are
        then for the first coordinator only.

    Examples
    --------
    >>> with LocalCluster(nodes=2, workers=1) as cluster:      # doctest: +SKIP
    ...     print(sum(cluster.client.map(pow, range(10), [2] * 10)))
    285
    """

    def __init__(
        self,
        nodes: int = 2,
        workers: int = 1,
        store: str | None = None,
        *,
        prefetch: int | None = None,
        fast: bool = False,
        start_timeout: float = 30.0,
        log_level: str = "WARNING",
        max_payload: int | None = None,
        synchronous: str | None = None,
        result_ttl: float | None = None,
        dead_ttl: float | None = None,
        max_dead: int | None = None,
        queues: Mapping[str, int] | Iterable[str] | None = None,
        strict: bool = False,
        http: str | None = None,
        metrics: str | None = None,
        coordinators: int = 1,
    ) -> None:
        if nodes < 1 or workers < 1 or coordinators < 1:
            raise ValueError("nodes, workers and coordinators must be at least 1")
        if coordinators > 1 and not is_redis_url(store):
            raise ValueError(
                "several coordinators need a shared store: a redis:// URL "
                "(a SQLite file is locked by one coordinator, memory is per process)"
            )
        self.n_coordinators = coordinators
        self.queues = served_queues(queues)  # ValueError here, not in a node process
        self.strict = strict
        self.n_nodes = nodes
        self.workers = workers
        self.store = store
        self.prefetch = prefetch
        self.fast = fast
        self.start_timeout = start_timeout
        self.log_level = log_level
        self.max_payload = max_payload
        self.synchronous = synchronous
        self.retention = {
            "--result-ttl": result_ttl,
            "--dead-ttl": dead_ttl,
            "--max-dead": max_dead,
        }
        self.servers = {"--http": http, "--metrics": metrics}
        self.key = generate_key()
        self.address = ""
        #: every coordinator's address (``address`` is the first)
        self.addresses: list[str] = []
        self.coordinator: subprocess.Popen[bytes] | None = None
        #: every coordinator process (``coordinator`` is the first)
        self.coordinators: list[subprocess.Popen[bytes]] = []
        self.nodes: list[subprocess.Popen[bytes]] = []
        self._client: Client | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    @property
    def client(self) -> Client:
        """The cluster's client (connected on start)."""
        if self._client is None:
            raise RuntimeError("LocalCluster is not started")
        return self._client

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _cmd(self, *args: str) -> list[str]:
        return cli_command(*args, "--log-level", self.log_level)

    def start(self) -> Client:
        """Start the processes, wait until every node has joined, connect a client."""
        self._tmp = tempfile.TemporaryDirectory(prefix="pyqueue-local-")
        env = child_env(self.key)
        try:
            deadline = time.monotonic() + self.start_timeout
            for i in range(self.n_coordinators):
                self.addresses.append(self._start_coordinator(i, env, deadline))
            self.address = self.addresses[0]
            for i in range(self.n_nodes):
                self.add_node(name=f"local-{i}")
            self._client = Client(
                self.addresses,
                key=self.key.encode(),
                name="local-client",
                timings=FAST_TIMINGS if self.fast else DEFAULT_TIMINGS,
                connect_timeout=max(1.0, deadline - time.monotonic()),
            )
            while len(self._client.status()["nodes"]) < self._joined_here():
                if time.monotonic() > deadline:
                    raise TimeoutError("nodes did not join in time")
                for p in self.nodes:
                    if p.poll() is not None:
                        raise RuntimeError(f"node exited with {p.returncode}")
                time.sleep(0.02)
        except BaseException:
            self.close()
            raise
        return self._client

    def _joined_here(self) -> int:
        # status() answers for the coordinator the client is connected to,
        # which sees the nodes connected to it: node i starts on coordinator i mod N
        here = self.addresses.index(self._client.address) if self._client else 0
        return len(range(here, self.n_nodes, self.n_coordinators))

    def _start_coordinator(self, i: int, env: dict[str, str], deadline: float) -> str:
        assert self._tmp is not None
        port_file = os.path.join(self._tmp.name, f"port-{i}")
        fast = ["--fast"] if self.fast else []
        cmd = self._cmd("coordinator", "--bind", "127.0.0.1:0", "--port-file", port_file, *fast)
        if self.store:
            cmd += ["--store", self.store]
        if self.max_payload is not None:
            cmd += ["--max-payload", str(self.max_payload)]
        if self.synchronous is not None:
            cmd += ["--synchronous", self.synchronous]
        servers = self.servers if i == 0 else {}
        for flag, value in {**self.retention, **servers}.items():
            if value is not None:
                cmd += [flag, str(value)]
        proc = subprocess.Popen(cmd, env=env)
        self.coordinators.append(proc)
        if self.coordinator is None:
            self.coordinator = proc
        while not os.path.exists(port_file):
            if proc.poll() is not None:
                raise RuntimeError(f"coordinator exited with {proc.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError("coordinator did not start listening in time")
            time.sleep(0.01)
        with open(port_file) as fh:
            return fh.read().strip()

    def add_node(
        self,
        name: str | None = None,
        workers: int | None = None,
        queues: Mapping[str, int] | Iterable[str] | None = None,
        strict: bool | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start one more node process (serving the cluster's queues unless told)."""
        served = self.queues if queues is None else served_queues(queues)
        # its own coordinator first, then the others (round robin over nodes)
        first = len(self.nodes) % len(self.addresses)
        connect = ",".join(self.addresses[first:] + self.addresses[:first])
        args = ["node", "--connect", connect, "--workers", str(workers or self.workers)]
        args += ["--queues", ",".join(f"{q}:{w}" for q, w in served.items())]
        if self.strict if strict is None else strict:
            args.append("--strict")
        if self.prefetch is not None:
            args += ["--prefetch", str(self.prefetch)]
        if self.fast:
            args.append("--fast")
        if name:
            args += ["--name", name]
        proc = subprocess.Popen(self._cmd(*args), env=child_env(self.key))
        self.nodes.append(proc)
        return proc

    def close(self, timeout: float = 10.0) -> None:
        """Stop the client, the nodes (gracefully, then by force) and the coordinator."""
        if self._client is not None:
            self._client.close()
            self._client = None
        procs: list[Any] = [p for p in self.nodes if p.poll() is None]
        for p in procs:
            p.terminate()
        _reap(procs, timeout)
        coordinators = [p for p in self.coordinators if p.poll() is None]
        for p in coordinators:
            p.terminate()
        _reap(coordinators, timeout)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def _reap(procs: list[subprocess.Popen[bytes]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
