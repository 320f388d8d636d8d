"""Memory a store keeps per task: waiting, leased, and finished but retained.

Measured with tracemalloc (Python allocations, which is what a store's
records are), through the public Backend contract only::

    python -m benchmarks.store_memory --tasks 200000

The payload (a small pickled call) and the result are the same for both
stores; a durable store holds neither once they are committed and read.
"""

from __future__ import annotations

import argparse
import gc
import os
import tempfile
import time
import tracemalloc

from pyqueue.cluster.backend import Backend
from pyqueue.cluster.backends import MemoryBackend, SQLiteBackend
from pyqueue.cluster.states import Completion, Demand, SubmitSpec

PAYLOAD = b"\x80\x05" + bytes(60)  # about what a no-op call pickles to
RESULT = b"\x80\x05N."


def _traced() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


def measure(backend: Backend, n: int) -> dict[str, float]:
    """Bytes per task at each stage of its life."""
    now = time.time()
    base = _traced()
    ids = [f"task-{i:09d}" for i in range(n)]  # the ids are the caller's: not counted
    base = _traced()
    backend.submit([SubmitSpec(tid, PAYLOAD) for tid in ids], now)
    backend.commit()
    pending = _traced()
    grants = backend.lease({"node": Demand(n)}, now)
    leases = grants["node"].leases
    leased = _traced()
    for i in range(0, n, 1000):
        rows = [Completion(le.id, le.token, True, RESULT, None) for le in leases[i : i + 1000]]
        backend.complete("node", rows, now)
    del leases, grants
    backend.commit()
    for i in range(0, n, 1000):
        backend.outcomes(ids[i : i + 1000])  # delivered: a durable store drops its copy
    backend.drain_finished()
    finished = _traced()
    return {
        "pending": (pending - base) / n,
        "leased": (leased - base) / n,
        "finished": (finished - base) / n,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=200_000)
    a = p.parse_args(argv)
    tracemalloc.start()
    print(f"{a.tasks} tasks, {len(PAYLOAD)}-byte payloads; bytes per task (tracemalloc)")
    print(f"{'store':<8} {'pending':>9} {'leased':>9} {'finished':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, backend in (
            ("memory", MemoryBackend()),
            ("sqlite", SQLiteBackend(os.path.join(tmp, "m.db"))),
        ):
            row = measure(backend, a.tasks)
            backend.close()
            del backend
            print(f"{name:<8} {row['pending']:>9.0f} {row['leased']:>9.0f} {row['finished']:>9.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
