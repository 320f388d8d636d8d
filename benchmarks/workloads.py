"""Task functions and sizes of the comparison workloads.

Every task function lives at module level so that process-based peers
(multiprocessing, loky, Dask, Ray) can pickle it by reference; their workers
import this module, which is why the heavy inputs are built lazily per process.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

#: Workloads in report order; ``N`` (native kernels) only runs on pyqueue and serial.
WORKLOADS = ("W1", "W2", "W3a", "W3b", "W4", "W5", "W6", "N")

TITLES = {
    "W1": "no-op tasks, submit each + collect",
    "W2": "map x+1 over items",
    "W3a": "sha256 of 256 KiB per task",
    "W3b": "numpy 256x256 dot per task (BLAS 1 thread)",
    "W4": "pure-Python CPU loop per task",
    "W5": "idle round trip submit -> result",
    "W6": "sleep(5 ms) tasks, 64 workers",
    "N": "native kernels over float64 arrays",
}

_BLOB_SIZE = 256 * 1024
_blob: bytes | None = None
_matrices: tuple | None = None


@dataclass(frozen=True)
class Sizes:
    """Problem sizes for one run mode.

    Attributes
    ----------
    noop_tasks : int
        W1 task count.
    map_items : int
        W2 item count.
    sha_tasks, dot_tasks, cpu_tasks : int
        W3a, W3b and W4 task counts.
    cpu_iterations : int
        Loop iterations of one W4 task (about 5 ms on this VM).
    round_trips : int
        W5 timed round trips.
    sleep_tasks, sleep_workers : int
        W6 task count and pool size.
    native_items, spin_items : int
        N: items for ``add_one_f64`` and for ``spin_f64``.
    slow_peer_tasks : int
        Cap on W1, W3 and W5 task counts for peers with millisecond overheads
        (Dask, Ray).  Rates stay comparable; counts are reported.
    slow_round_trips : int
        W5 round trips for peers whose round trip takes milliseconds (Dask,
        Ray, joblib).
    """

    noop_tasks: int
    map_items: int
    sha_tasks: int
    dot_tasks: int
    cpu_tasks: int
    cpu_iterations: int
    round_trips: int
    sleep_tasks: int
    sleep_workers: int
    native_items: int
    spin_items: int
    slow_peer_tasks: int
    slow_round_trips: int


FULL = Sizes(
    noop_tasks=200_000,
    map_items=1_000_000,
    sha_tasks=8000,
    dot_tasks=1000,
    cpu_tasks=200,
    cpu_iterations=100_000,
    round_trips=3000,
    sleep_tasks=2000,
    sleep_workers=64,
    native_items=10_000_000,
    spin_items=200_000,
    slow_peer_tasks=1000,
    slow_round_trips=500,
)
QUICK = Sizes(
    noop_tasks=20_000,
    map_items=100_000,
    sha_tasks=1000,
    dot_tasks=300,
    cpu_tasks=60,
    cpu_iterations=100_000,
    round_trips=500,
    sleep_tasks=2000,
    sleep_workers=64,
    native_items=2_000_000,
    spin_items=50_000,
    slow_peer_tasks=300,
    slow_round_trips=100,
)

#: Argument passed to ``pyqueue.kernels.spin_f64`` for about 1 microsecond per item.
SPIN_ARG = 1000.0


def noop(x):
    """Return ``x`` unchanged (W1, W5)."""
    return x


def inc(x):
    """Return ``x + 1`` (W2)."""
    return x + 1


def sha256_blob(_i):
    """Hash a 256 KiB buffer; hashlib releases the GIL for it (W3a)."""
    global _blob
    if _blob is None:
        _blob = bytes(range(256)) * (_BLOB_SIZE // 256)
    return hashlib.sha256(_blob).digest()[:4]


def dot_256(_i):
    """Multiply two fixed 256x256 float64 matrices; BLAS releases the GIL (W3b)."""
    global _matrices
    if _matrices is None:
        import numpy as np

        rng = np.random.default_rng(0)
        _matrices = (rng.random((256, 256)), rng.random((256, 256)))
    a, b = _matrices
    return float((a @ b)[0, 0])


def cpu_loop(n):
    """Spin a pure-Python loop of ``n`` iterations, holding the GIL (W4)."""
    acc = 0
    for i in range(n):
        acc += i * i % 7
    return acc


def sleep_5ms(_i):
    """Sleep 5 ms, releasing the GIL (W6)."""
    time.sleep(0.005)
    return _i


def apply_chunk(fn, chunk):
    """Apply ``fn`` to each item of ``chunk``; the unit of work of manual chunking."""
    return [fn(x) for x in chunk]


def chunks(items, n_chunks):
    """Split a sequence into ``n_chunks`` contiguous slices of near-equal size."""
    size = max(1, -(-len(items) // n_chunks))
    return [items[i : i + size] for i in range(0, len(items), size)]
