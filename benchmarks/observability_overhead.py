"""What metrics and the dashboard cost the cluster: no-op throughput, on against off.

Usage::

    python -m benchmarks.observability_overhead [--tasks 30000] [--reps 5]
                                                [--store durable|memory] [--out DIR]

Each repetition starts two ``LocalCluster(nodes=2, workers=1)`` one after the
other, in a rotated order: ``off`` (no ``--http``, no ``--metrics``) and ``on``
(both, with a scraper thread in this process that GETs ``/metrics`` and the
dashboard's ``/api/overview`` once a second, as Prometheus and an open
browser tab would).  In each cluster, ``map`` and ``submit + results()`` run
``--tasks`` no-op tasks.  Figures are medians over the repetitions; the ratio
is on / off.  A scrape that fails is counted and reported, not hidden.
Nothing is asserted: the issue's goal is a ratio of at least 0.95.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks.brokers import free_port
from benchmarks.workloads import noop

PATTERNS = ("map", "submit + results()")
MODES = ("off", "on")


class Scraper(threading.Thread):
    """GETs each URL once a second until stopped; counts what answered 200."""

    def __init__(self, urls: list[str], token: str) -> None:
        super().__init__(name="scraper", daemon=True)
        self.urls = urls
        self.token = token
        self.stopped = threading.Event()
        self.ok = 0
        self.failed: list[str] = []

    def run(self) -> None:
        while not self.stopped.wait(1.0):
            for url in self.urls:
                req = urllib.request.Request(url, headers={"Authorization": f"Bearer {self.token}"})
                try:
                    with urllib.request.urlopen(req, timeout=5) as resp:
                        resp.read()
                        self.ok += resp.status == 200
                except OSError as e:  # URLError and HTTPError are OSErrors
                    self.failed.append(f"{url}: {e}")


def one_cluster(mode: str, n: int, store: str | None) -> tuple[dict[str, float], Scraper | None]:
    from pyqueue.cluster import LocalCluster
    from pyqueue.cluster.config import dashboard_token

    http = metrics = None
    if mode == "on":
        http, metrics = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    rates: dict[str, float] = {}
    scraper = None
    with LocalCluster(nodes=2, workers=1, store=store, http=http, metrics=metrics) as cluster:
        client = cluster.client
        for _ in client.map(noop, range(2000)):  # warm up every process
            pass
        if mode == "on":
            urls = [f"http://{metrics}/metrics", f"http://{http}/api/overview"]
            scraper = Scraper(urls, dashboard_token(cluster.key.encode()))
            scraper.start()
        try:
            t0 = time.perf_counter()
            for _ in client.map(noop, range(n)):
                pass
            rates["map"] = n / (time.perf_counter() - t0)
            t0 = time.perf_counter()
            for _ in client.results([client.submit(noop, i) for i in range(n)]):
                pass
            rates["submit + results()"] = n / (time.perf_counter() - t0)
        finally:
            if scraper is not None:
                scraper.stopped.set()
                scraper.join()
    return rates, scraper


def measure(n: int, reps: int, durable: bool) -> dict[str, Any]:
    samples: dict[str, dict[str, list[float]]] = {m: {p: [] for p in PATTERNS} for m in MODES}
    scrapes_ok = 0
    scrape_failures: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(reps):
            for mode in MODES[rep % 2 :] + MODES[: rep % 2]:
                store = f"{tmp}/{mode}-{rep}.db" if durable else None
                rates, scraper = one_cluster(mode, n, store)
                for p, r in rates.items():
                    samples[mode][p].append(r)
                if scraper is not None:
                    scrapes_ok += scraper.ok
                    scrape_failures += scraper.failed
                shown = ", ".join(f"{p} {r:,.0f}/s" for p, r in rates.items())
                print(f"  rep {rep + 1} {mode}: {shown}", flush=True)
    return {"samples": samples, "scrapes_ok": scrapes_ok, "scrape_failures": scrape_failures}


def table(samples: dict[str, dict[str, list[float]]]) -> str:
    lines = [
        "| pattern | off: tasks/s (median) | on: tasks/s (median) | on / off |",
        "| --- | --- | --- | --- |",
    ]
    for p in PATTERNS:
        off, on = (statistics.median(samples[m][p]) for m in MODES)
        lines.append(f"| {p} | {off:,.0f} | {on:,.0f} | {on / off:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.observability_overhead")
    ap.add_argument("--tasks", type=int, default=30_000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--store", choices=("durable", "memory"), default="durable")
    ap.add_argument("--out", type=Path, default=None, help="write observability_overhead.json")
    a = ap.parse_args(argv)
    print(
        f"{a.tasks} no-op tasks per pattern, {a.reps} repetitions, {a.store}"
        " LocalCluster(nodes=2, workers=1); on = --http and --metrics, each scraped once a second"
    )
    result = measure(a.tasks, a.reps, a.store == "durable")
    print()
    print(table(result["samples"]))
    failures = result["scrape_failures"]
    print(f"\nscrapes answered 200: {result['scrapes_ok']}; failed: {len(failures)}")
    for failure in failures[:5]:
        print("  ", failure)
    if a.out is not None:
        a.out.mkdir(parents=True, exist_ok=True)
        doc = {
            "command": "python -m benchmarks.observability_overhead "
            + " ".join(argv or sys.argv[1:]),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "tasks": a.tasks,
            "store": a.store,
            **result,
        }
        (a.out / "observability_overhead.json").write_text(json.dumps(doc, indent=2))
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
