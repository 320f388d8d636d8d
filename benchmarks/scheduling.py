"""Scheduling figures: priority inversion, lateness of delayed and recurring
tasks, and dispatch throughput with weighted queues and priorities.

Usage::

    python -m benchmarks.scheduling [--delayed 10000] [--schedule-seconds 60]
                                    [--tasks 20000] [--reps 3]

All on ``LocalCluster(nodes=2, workers=1)`` with the memory store:

- ``priority``: the low queue saturated with 20 ms tasks, a high-priority
  task submitted every 100 ms; its wait (start minus submit) against the run
  time of one low task.
- ``delayed``: tasks submitted with ``eta`` spread over the next seconds;
  lateness = start minus eta (p50/p99), idle and with the cluster saturated.
- ``recurring``: an ``every=1`` schedule; lateness of each fire's start.
- ``throughput``: no-op tasks through one queue, and through three weighted
  queues (6:3:1) with priorities 0-9; tasks/s, medians of ``--reps``.

Figures are medians or percentiles of what was measured; nothing is asserted.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from typing import Any

from benchmarks.workloads import noop


def started_at() -> float:
    return time.time()


def busy(seconds: float) -> float:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
    return seconds


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def ms(x: float) -> str:
    return f"{x * 1000:.1f} ms"


def priority_inversion(c: Any, samples: int = 30, low_run: float = 0.02) -> None:
    lows = [
        c.submit_call(busy, (low_run,), queue="default")
        for _ in range(int(samples * 0.1 / low_run) + 200)
    ]
    waits = []
    for _ in range(samples):
        t0 = time.time()
        h = c.submit_call(started_at, priority=9)
        waits.append(h.result(timeout=60) - t0)
        time.sleep(0.1)
    for h in lows:
        h.cancel()
    print(
        f"priority: high task wait p50 {ms(pct(waits, 0.5))}, p99 {ms(pct(waits, 0.99))}"
        f" behind a saturated low queue; one low task runs {ms(low_run)}"
    )


def lateness_delayed(c: Any, n: int, saturate: bool) -> None:
    load = [c.submit_call(busy, (0.005,)) for _ in range(2000)] if saturate else []
    now = time.time()
    etas = [now + 1.0 + 4.0 * i / n for i in range(n)]
    hs = [c.submit_call(started_at, eta=eta, priority=5) for eta in etas]
    late = [h.result(timeout=120) - eta for h, eta in zip(hs, etas)]
    for h in load:
        h.result(timeout=120)
    early = sum(x < 0 for x in late)
    print(
        f"delayed ({'saturated' if saturate else 'idle'}): {n} tasks, lateness p50"
        f" {ms(pct(late, 0.5))}, p99 {ms(pct(late, 0.99))}, early {early}"
    )


def lateness_recurring(c: Any, seconds: float) -> None:
    sch = c.schedule("bench-tick", started_at, every=1.0, priority=5)
    time.sleep(seconds + 0.5)
    c.unschedule("bench-tick")
    from pyqueue.cluster.schedules import fire_id

    late = []
    for k in range(1, int(seconds) + 1):
        t = sch.anchor + k
        h = c.wait_for(fire_id("bench-tick", t))
        late.append(h.result(timeout=30) - t)
    print(
        f"recurring every 1 s over {seconds:g} s: {len(late)} fires, lateness p50"
        f" {ms(pct(late, 0.5))}, p99 {ms(pct(late, 0.99))}"
    )


def throughput(c: Any, n: int, reps: int) -> None:
    rng = random.Random(1)
    plans = {
        "one queue": [("default", 0)] * n,
        "3 weighted queues + priorities": [
            (rng.choices(("high", "default", "low"), (6, 3, 1))[0], rng.randrange(10))
            for _ in range(n)
        ],
    }
    rates: dict[str, list[float]] = {k: [] for k in plans}
    for _ in range(reps):
        for name, plan in plans.items():
            t0 = time.perf_counter()
            hs = [c.submit_call(noop, (i,), queue=q, priority=p) for i, (q, p) in enumerate(plan)]
            for h in hs:
                h.result(timeout=300)
            rates[name].append(n / (time.perf_counter() - t0))
    base = statistics.median(rates["one queue"])
    for name, xs in rates.items():
        med = statistics.median(xs)
        print(f"throughput {name}: {med:,.0f} tasks/s ({med / base:.2f}x one queue)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--delayed", type=int, default=10_000)
    p.add_argument("--schedule-seconds", type=float, default=60.0)
    p.add_argument("--tasks", type=int, default=20_000)
    p.add_argument("--reps", type=int, default=3)
    a = p.parse_args(argv)
    from pyqueue.cluster import LocalCluster

    queues = {"high": 6, "default": 3, "low": 1}
    with LocalCluster(nodes=2, workers=1, queues=queues) as cluster:
        c = cluster.client
        throughput(c, a.tasks, a.reps)
        lateness_delayed(c, a.delayed, saturate=False)
        lateness_delayed(c, a.delayed // 5, saturate=True)
        lateness_recurring(c, a.schedule_seconds)
        priority_inversion(c)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
