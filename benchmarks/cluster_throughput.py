"""Cluster throughput by call pattern, beside ThreadPoolExecutor in the same run.

Usage::

    python -m benchmarks.cluster_throughput [--tasks 50000] [--reps 3]
                                            [--store durable|memory]
                                            [--synchronous NORMAL|FULL] [--out DIR]

One ``LocalCluster(nodes=2, workers=1)`` (durable: a SQLite store with the
default ``synchronous=NORMAL``) runs no-op tasks four ways, each repetition
in a rotated order:

- ``map``: ``list(client.map(noop, range(n)))``;
- ``submit loop``: ``[client.submit(noop, i) for i in range(n)]``, then
  ``result()`` of each in order;
- ``submit + results()``: the same submits, collected in completion order;
- ``fire and forget``: the submits, then waiting (by status) until all ended.

The reference is ``ThreadPoolExecutor(max_workers=2)`` running the same
no-op, submit each then ``result()`` each, measured in the same run.  Figures
are medians of ``--reps``; ratios compare medians.  Nothing is asserted.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from benchmarks.workloads import noop

PATTERNS = ("map", "submit loop", "submit + results()", "fire and forget")


def tpe_rate(n: int) -> float:
    with cf.ThreadPoolExecutor(max_workers=2) as ex:
        ex.submit(noop, 0).result()
        t0 = time.perf_counter()
        fs = [ex.submit(noop, i) for i in range(n)]
        for f in fs:
            f.result()
        return n / (time.perf_counter() - t0)


def cluster_runs(client: Any, n: int) -> dict[str, Callable[[], None]]:
    def run_map() -> None:
        for _ in client.map(noop, range(n)):
            pass

    def run_loop() -> None:
        hs = [client.submit(noop, i) for i in range(n)]
        for h in hs:
            h.result()

    def run_fan_in() -> None:
        hs = [client.submit(noop, i) for i in range(n)]
        for _ in client.results(hs):
            pass

    def run_forget() -> None:
        base = client.status()["tasks"]["succeeded"]
        for i in range(n):
            client.submit(noop, i)
        while client.status()["tasks"]["succeeded"] < base + n:
            time.sleep(0.01)

    return dict(zip(PATTERNS, (run_map, run_loop, run_fan_in, run_forget)))


def measure(n: int, reps: int, durable: bool, synchronous: str) -> dict[str, list[float]]:
    from pyqueue.cluster import LocalCluster

    samples: dict[str, list[float]] = {p: [] for p in ("threadpool", *PATTERNS)}
    with tempfile.TemporaryDirectory() as tmp:
        store = f"{tmp}/bench.db" if durable else None
        with LocalCluster(nodes=2, workers=1, store=store, synchronous=synchronous) as cluster:
            runs = cluster_runs(cluster.client, n)
            for _ in cluster.client.map(noop, range(2000)):  # warm up every process
                pass
            order = list(runs)
            for rep in range(reps):
                samples["threadpool"].append(tpe_rate(n))
                k = rep % len(order)
                for name in order[k:] + order[:k]:
                    t0 = time.perf_counter()
                    runs[name]()
                    samples[name].append(n / (time.perf_counter() - t0))
                    print(f"  rep {rep + 1} {name}: {samples[name][-1]:,.0f} tasks/s", flush=True)
    return samples


def table(samples: dict[str, list[float]]) -> str:
    med = {k: statistics.median(v) for k, v in samples.items()}
    lines = [
        "| pattern | tasks/s (median) | x ThreadPoolExecutor | x map |",
        "| --- | --- | --- | --- |",
        f"| ThreadPoolExecutor(2), submit each | {med['threadpool']:,.0f} | 1.00x | - |",
    ]
    for p in PATTERNS:
        lines.append(
            f"| cluster {p} | {med[p]:,.0f} | {med[p] / med['threadpool']:.2f}x"
            f" | {med[p] / med['map']:.2f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.cluster_throughput")
    ap.add_argument("--tasks", type=int, default=50_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--store", choices=("durable", "memory"), default="durable")
    ap.add_argument("--synchronous", choices=("NORMAL", "FULL"), default="NORMAL")
    ap.add_argument("--out", type=Path, default=None, help="write cluster_throughput.json here")
    a = ap.parse_args(argv)
    print(
        f"{a.tasks} no-op tasks, {a.reps} repetitions, {a.store} LocalCluster(nodes=2,"
        f" workers=1), synchronous={a.synchronous}"
    )
    samples = measure(a.tasks, a.reps, a.store == "durable", a.synchronous)
    print()
    print(table(samples))
    if a.out is not None:
        a.out.mkdir(parents=True, exist_ok=True)
        doc = {
            "command": "python -m benchmarks.cluster_throughput " + " ".join(argv or sys.argv[1:]),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "tasks": a.tasks,
            "store": a.store,
            "synchronous": a.synchronous,
            "samples": samples,
        }
        (a.out / "cluster_throughput.json").write_text(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
