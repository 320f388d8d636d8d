"""The cost of TaskQueue.stats(): ns per call, and submit throughput with a
thread scraping stats() 100 times a second vs none (same run, medians of 3,
the two cases interleaved so that drift on a shared machine hits both).

    python -m benchmarks.engine_stats [--tasks N]
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

from pyqueue import TaskQueue


def ns_per_call(q: TaskQueue, calls: int = 200_000) -> float:
    stats = q.stats
    t0 = time.perf_counter_ns()
    for _ in range(calls):
        stats()
    return (time.perf_counter_ns() - t0) / calls


def submit_rate(q: TaskQueue, tasks: int, scrape_hz: float) -> float:
    """Tasks per second submitted and drained, with a scraper thread if asked."""
    stop = threading.Event()
    scraper = None
    if scrape_hz > 0:

        def scrape() -> None:
            while not stop.wait(1 / scrape_hz):
                q.stats()

        scraper = threading.Thread(target=scrape)
        scraper.start()
    try:
        t0 = time.perf_counter()
        for t in q.submit_many(abs, range(tasks)):
            t.result()
        return tasks / (time.perf_counter() - t0)
    finally:
        stop.set()
        if scraper is not None:
            scraper.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=200_000)
    args = parser.parse_args()
    with TaskQueue(2) as q:
        calls = [ns_per_call(q) for _ in range(3)]
        print(f"stats(): {statistics.median(calls):.0f} ns per call (median of 3)")
        plain, scraped = [], []
        for _ in range(3):
            plain.append(submit_rate(q, args.tasks, 0))
            scraped.append(submit_rate(q, args.tasks, 100))
        a, b = statistics.median(plain), statistics.median(scraped)
        print(f"submit+drain, no scraper:       {a:,.0f} tasks/s (median of 3)")
        print(f"submit+drain, stats() at 100 Hz: {b:,.0f} tasks/s ({(b - a) / a:+.1%})")


if __name__ == "__main__":
    main()
