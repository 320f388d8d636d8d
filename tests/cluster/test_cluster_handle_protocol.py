"""The handle protocol's rules (tests/unit/test_handle_protocol.py), run
against ClusterTask: the same test functions, with a cluster-backed kind."""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyq_cluster_tasks as T
import pytest

from pyqueue.cluster import LocalCluster

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "unit"))
import test_handle_protocol as rules  # noqa: E402

pytestmark = pytest.mark.slow


class FileGate:
    """What ``running()`` hands back: ``set()`` lets the cluster task finish."""

    def __init__(self, path: str) -> None:
        self.path = path

    def set(self) -> None:
        Path(self.path).touch()


class ClusterTaskKind:
    """Handles from a one-node, one-slot LocalCluster (``ClusterTask``)."""

    name = "ClusterTask"

    def start(self) -> None:
        self.tmp = tempfile.TemporaryDirectory(prefix="pyq-handle-")
        self.cluster = LocalCluster(nodes=1, workers=1, fast=True)
        self.client = self.cluster.start()
        self.n = 0

    def stop(self) -> None:
        self.cluster.close()
        self.tmp.cleanup()

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.client.submit(fn, *args)

    def running(self) -> tuple[Any, FileGate]:
        self.n += 1
        started = os.path.join(self.tmp.name, f"started-{self.n}")
        gate = FileGate(os.path.join(self.tmp.name, f"gate-{self.n}"))
        handle = self.client.submit(T.started_then_wait, started, gate.path)
        deadline = time.monotonic() + 20
        while not os.path.exists(started):  # bounded poll of a file another process makes
            assert time.monotonic() < deadline, "the cluster task did not start"
            time.sleep(0.005)
        return handle, gate


@pytest.fixture(scope="module")
def cluster_kind() -> Iterator[ClusterTaskKind]:
    k = ClusterTaskKind()
    k.start()
    yield k
    k.stop()


@pytest.fixture
def kind(cluster_kind: ClusterTaskKind) -> Iterator[ClusterTaskKind]:
    gates: list[FileGate] = []
    original = ClusterTaskKind.running

    def running() -> tuple[Any, FileGate]:
        handle, gate = original(cluster_kind)
        gates.append(gate)
        return handle, gate

    cluster_kind.running = running  # type: ignore[method-assign]
    yield cluster_kind
    for gate in gates:
        gate.set()
    del cluster_kind.running


# The rules, collected here so that they use this module's `kind`.
for _name in dir(rules):
    if _name.startswith("test_"):
        globals()[_name] = getattr(rules, _name)
del _name
