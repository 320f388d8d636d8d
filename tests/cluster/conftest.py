"""Fixtures for the cluster tests; helpers live in pyq_cluster_harness."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:  # task and harness modules import by name, here and on the nodes
    sys.path.insert(0, HERE)

from pyq_cluster_harness import Harness  # noqa: E402
from redis_server import RedisClusterServers, RedisServer  # noqa: E402

from pyqueue.cluster.config import generate_key  # noqa: E402


@pytest.fixture
def harness(tmp_path: Path):
    h = Harness(tmp_path)
    try:
        yield h
    finally:
        h.close()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A private redis-server (free port, tmp folder, AOF on), stopped after the test;
    skipped without redis-server unless CI is set."""
    server = RedisServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_cluster() -> Iterator[RedisClusterServers]:
    """A private Redis Cluster of 3 primaries (free ports, tmp folders, AOF on),
    stopped after the test; skipped without redis-server unless CI is set."""
    cluster = RedisClusterServers()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def key_env(monkeypatch: pytest.MonkeyPatch) -> bytes:
    key = generate_key()
    monkeypatch.setenv("PYQUEUE_KEY", key)
    return key.encode()


def pytest_configure(config: pytest.Config) -> None:
    # the backend contract suite keeps the name the issue gives it
    config.addinivalue_line("python_files", "backend_contract.py")
