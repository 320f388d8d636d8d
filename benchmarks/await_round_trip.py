"""``await`` round trip of a no-op task on a running loop, beside
``loop.run_in_executor(ThreadPoolExecutor)`` in the same run.

Usage::

    python -m benchmarks.await_round_trip [--n 3000] [--reps 3]

Prints the median round trip (microseconds) of each, per repetition and over
all, and the ratio.  A third row is the floor of any thread-based await: a
bare thread parked on a lock, woken by the coroutine, that wakes the loop
with one ``call_soon_threadsafe`` and runs nothing else.  Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures as cf
import statistics
import threading
import time

import pyqueue
from benchmarks.workloads import noop


async def _pyqueue(q: pyqueue.TaskQueue, n: int) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        await q.submit(noop, i)
        out.append(time.perf_counter() - t0)
    return out


async def _executor(ex: cf.Executor, n: int) -> list[float]:
    loop = asyncio.get_running_loop()
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        await loop.run_in_executor(ex, noop, i)
        out.append(time.perf_counter() - t0)
    return out


async def _floor(n: int) -> list[float]:
    loop = asyncio.get_running_loop()
    go = threading.Lock()
    go.acquire()
    box: list[asyncio.Future[None] | None] = []

    def thread() -> None:
        while True:
            go.acquire()
            fut = box.pop()
            if fut is None:
                return
            loop.call_soon_threadsafe(fut.set_result, None)

    th = threading.Thread(target=thread)
    th.start()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fut = loop.create_future()
        box.append(fut)
        go.release()
        await fut
        out.append(time.perf_counter() - t0)
    box.append(None)
    go.release()
    th.join()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.await_round_trip")
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args(argv)
    ours, theirs, floor = [], [], []
    with pyqueue.TaskQueue(workers=2) as q, cf.ThreadPoolExecutor(max_workers=2) as ex:
        for rep in range(a.reps):
            ours += asyncio.run(_pyqueue(q, a.n))
            theirs += asyncio.run(_executor(ex, a.n))
            floor += asyncio.run(_floor(a.n))
            print(
                f"rep {rep + 1}: pyqueue {statistics.median(ours[-a.n :]) * 1e6:.1f} us,"
                f" run_in_executor {statistics.median(theirs[-a.n :]) * 1e6:.1f} us,"
                f" bare-thread floor {statistics.median(floor[-a.n :]) * 1e6:.1f} us"
            )
    po, pt = statistics.median(ours) * 1e6, statistics.median(theirs) * 1e6
    pf = statistics.median(floor) * 1e6
    print(
        f"median: await pyqueue.Task {po:.1f} us; await run_in_executor(ThreadPoolExecutor)"
        f" {pt:.1f} us; {pt / po:.2f}x faster"
    )
    print(
        f"floor (bare thread + one call_soon_threadsafe) {pf:.1f} us: pyqueue is"
        f" {po / pf:.2f}x it, run_in_executor {pt / pf:.2f}x it"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
