"""Soak: throughput and coordinator memory, per million tasks, through a long run.

Usage::

    python -m benchmarks.soak [--tasks 5000000] [--per 1000000] [--result-ttl 60]

A durable ``LocalCluster(nodes=2, workers=1)`` maps a no-op over ``--tasks``
items, ``--per`` at a time, and prints for each slice its tasks/s, the
coordinator's RSS and the store's size.  Flat means the last slice is no
slower than the first and RSS stays within 10% of its value after the first.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from benchmarks.workloads import noop


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def store_bytes(path: str) -> int:
    return sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))


def main(argv: list[str] | None = None) -> int:
    from pyqueue.cluster import LocalCluster

    ap = argparse.ArgumentParser(prog="python -m benchmarks.soak")
    ap.add_argument("--tasks", type=int, default=5_000_000)
    ap.add_argument("--per", type=int, default=1_000_000, help="tasks per reported slice")
    ap.add_argument("--result-ttl", type=float, default=60.0)
    a = ap.parse_args(argv)
    print(f"{a.tasks:,} no-op tasks through a durable LocalCluster(nodes=2, workers=1),")
    print(f"result_ttl={a.result_ttl:g} s, one line per {a.per:,} tasks")
    print("| tasks so far | tasks/s | coordinator RSS MiB | store MiB |")
    print("| --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        store = f"{tmp}/soak.db"
        with LocalCluster(nodes=2, workers=1, store=store, result_ttl=a.result_ttl) as cluster:
            done = 0
            while done < a.tasks:
                n = min(a.per, a.tasks - done)
                t0 = time.perf_counter()
                for _ in cluster.client.map(noop, range(n)):
                    pass
                done += n
                rate = n / (time.perf_counter() - t0)
                rss = rss_bytes(cluster.coordinator.pid) / 2**20
                print(f"| {done:,} | {rate:,.0f} | {rss:.1f} | {store_bytes(store) / 2**20:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
