"""Load generators to run under a profiler: each keeps one hot path busy.

Usage::

    python profiling/targets.py {submit,map,map_native,cluster} [--seconds 5] [--workers 2]

``submit``      a tight ``submit(noop)`` loop, collecting results in batches
``map``         ``list(q.map(inc, range(100_000)))`` over and over
``map_native``  ``q.map_native(add_one_f64, a, out)`` over 2M float64, over and over
``cluster``     ``LocalCluster(nodes=2)`` with a client keeping it fed with small tasks

Each prints one line, ``<target>: <operations>/s``, when it stops, so a profile
can be matched with the throughput it was taken at (profilers slow programs).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def noop(x=None):
    return x


def inc(x):
    return x + 1


def _until(seconds):
    deadline = time.perf_counter() + seconds
    return lambda: time.perf_counter() < deadline


def run_submit(q, running):
    done = 0
    while running():
        tasks = [q.submit(noop, i) for i in range(10_000)]
        for t in tasks:
            t.result()
        done += len(tasks)
    return done


def run_map(q, running):
    done = 0
    while running():
        done += len(list(q.map(inc, range(100_000))))
    return done


def run_map_native(q, running):
    import numpy as np

    import pyqueue

    a = np.arange(2_000_000, dtype=np.float64)
    out = np.zeros_like(a)
    done = 0
    while running():
        q.map_native(pyqueue.kernels.add_one_f64, a, out)
        done += len(a)
    return done


def run_cluster(workers, running):
    from pyqueue.cluster import LocalCluster

    done = 0
    with LocalCluster(nodes=2, workers=workers) as cluster:
        client = cluster.client
        while running():
            tasks = [client.submit(inc, i) for i in range(500)]
            for t in tasks:
                t.result()
            done += len(tasks)
    return done


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("target", choices=("submit", "map", "map_native", "cluster"))
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)

    import pyqueue

    running = _until(args.seconds)
    t0 = time.perf_counter()
    if args.target == "cluster":
        done = run_cluster(args.workers, running)
    else:
        run = {"submit": run_submit, "map": run_map, "map_native": run_map_native}[args.target]
        with pyqueue.TaskQueue(workers=args.workers) as q:
            done = run(q, running)
    print(f"{args.target}: {done / (time.perf_counter() - t0):,.0f}/s")


if __name__ == "__main__":
    main()
