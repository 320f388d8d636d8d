"""A private redis-server for the tests: a free port, a tmp folder, AOF on."""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import pytest

B = TypeVar("B")

INSTALL = "redis-server is not installed: apt-get install redis-server"


def need_redis_server() -> str:
    """The redis-server binary; skip without it (fail under CI: CI never skips silently)."""
    exe = shutil.which("redis-server")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail(INSTALL + " (CI is set: Redis tests must run)")
        pytest.skip(INSTALL)
    try:
        import redis  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            raise
        pytest.skip("redis-py is not installed: pip install -e '.[redis]'")
    return exe


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One redis-server process; ``url`` reaches it."""

    def __init__(self, *extra: str, password: str | None = None) -> None:
        exe = need_redis_server()
        self.dir = tempfile.mkdtemp(prefix="pyq-redis-")
        self.port = free_port()
        args = [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir]
        args += ["--appendonly", "yes", "--save", "", "--daemonize", "no", *extra]
        if password is not None:
            args += ["--requirepass", password]
        self.args = args
        auth = f":{password}@" if password is not None else ""
        self.url = f"redis://{auth}127.0.0.1:{self.port}/0"
        self._start()

    def _start(self) -> None:
        self.proc = subprocess.Popen(
            self.args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.02)

    def restart(self, sig: int = signal.SIGTERM) -> None:
        """Stop the process with ``sig`` and start it again on the same folder and port."""
        self.proc.send_signal(sig)
        self.proc.wait(10)
        self._start()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class RedisClusterServers:
    """A Redis Cluster of ``n`` primaries (no replicas), each a RedisServer with
    cluster mode on; ``url`` (``redis://...?cluster=1``) reaches it through the first."""

    def __init__(self, n: int = 3) -> None:
        need_redis_server()
        cli = shutil.which("redis-cli")
        if cli is None:  # it comes with redis-server
            if os.environ.get("CI"):
                pytest.fail(INSTALL + " (redis-cli is missing; CI is set: Redis tests must run)")
            pytest.skip(INSTALL)
        self.nodes: list[RedisServer] = []
        try:
            for _ in range(n):
                self.nodes.append(
                    RedisServer(
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        # its own bus port: the default, port + 10000, may be past 65535
                        "--cluster-port",
                        str(free_port()),
                    )
                )
            addrs = [f"127.0.0.1:{s.port}" for s in self.nodes]
            subprocess.run(
                [cli, "--cluster", "create", *addrs, "--cluster-replicas", "0", "--cluster-yes"],
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=60,
            )
            self._wait_ok(cli)
        except BaseException:
            self.stop()
            raise
        # the query form, which --store and LocalCluster take as a redis:// URL
        self.url = f"redis://127.0.0.1:{self.nodes[0].port}/0?cluster=1"

    def _wait_ok(self, cli: str) -> None:
        deadline = time.monotonic() + 30
        for s in self.nodes:
            while True:
                out = subprocess.run(
                    [cli, "-p", str(s.port), "cluster", "info"],
                    capture_output=True,
                    text=True,
                    timeout=10,
                ).stdout
                if "cluster_state:ok" in out:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the Redis Cluster did not become ok: {out}")
                time.sleep(0.05)

    def stop(self) -> None:
        for s in self.nodes:
            s.stop()


#: one of each kind per test process (a RedisServer, a RedisClusterServers), by kind
_shared: dict[type, Any] = {}


def _shared_one(kind: type) -> str:
    if kind not in _shared:
        _shared[kind] = kind()
        atexit.register(_shared[kind].stop)
    return str(_shared[kind].url)


def shared_url() -> str:
    """The URL of one server per test process, started on first use."""
    return _shared_one(RedisServer)


def shared_cluster_url() -> str:
    """The URL of one Redis Cluster per test process, started on first use."""
    return _shared_one(RedisClusterServers)


def beside(running: Iterable[Any], call: Callable[[], B], now: float, wait: float = 30.0) -> B:
    """``call()``, made while the ``running`` RedisBackends keep alive, as their
    coordinators' ticks do: what opens (or joins again) a coordinator's store on
    a prefix they serve waits until each live one acknowledged it."""
    running = list(running)
    box: dict[str, Any] = {}

    def caller() -> None:
        try:
            box["value"] = call()
        except BaseException as e:  # re-raised below, in the test's thread
            box["error"] = e

    th = threading.Thread(target=caller, name="beside", daemon=True)
    th.start()
    deadline = time.monotonic() + wait
    while th.is_alive():
        for r in running:
            r.keepalive(now)
        th.join(0.02)
        if time.monotonic() > deadline:
            raise AssertionError(f"no answer within {wait} s")
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]
