"""`python -m pyqueue demo`: a real pipeline on the embedded defaults.

Stage 1 (native lane): a numpy array of samples goes through a C kernel on
every core with no GIL, against a plain C loop in one thread.
Stage 2 (Python lane, large tasks): the data is cut into blocks; each block
is compressed and hashed (GIL-releasing work) in a fan-out, and the digests
are collected in completion order (fan-in) with a progress bar.
Stage 3 (Python lane, small tasks): many short records are parsed one task
each, fanned out and fanned in, where per-task overhead is what counts.
Stages 2 and 3 run again on ThreadPoolExecutor on the same machine.
Stage 4 (cluster): pure-Python CPU-bound tasks, which hold the GIL and so
gain nothing from threads, run serially and then on a LocalCluster of two
node processes (each its own interpreter); the processes are stopped after.

Progress is drawn by ``rich``: a live bar on a terminal, and only the final
state of each bar (no control codes) when stdout is a file or a pipe.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import sys
import time
import zlib

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

import pyqueue
from pyqueue import kernels


def _digest(block: bytes) -> tuple[int, str]:
    packed = zlib.compress(block, 1)
    return len(packed), hashlib.sha256(packed).hexdigest()


def _parse(record: str) -> int:
    key, _, value = record.partition("=")
    return len(key) * int(value)


def _cpu_work(steps: int) -> int:
    """Pure-Python CPU-bound work: the GIL is held from start to end."""
    total = 0
    for i in range(steps):
        total += i * i % 7
    return total


def _progress(console: Console, unit: str) -> Progress:
    """A progress bar on ``console``; rich draws it live on a terminal and
    prints only its final state elsewhere (a CI log gets one plain line)."""
    return Progress(
        TextColumn("  "),
        BarColumn(bar_width=30),
        MofNCompleteColumn(),
        TextColumn(unit),
        TimeElapsedColumn(),
        console=console,
    )


def run(
    samples: int = 4_000_000,
    blocks: int = 2000,
    block_kib: int = 64,
    records: int = 200_000,
    cluster_tasks: int = 24,
    cluster_steps: int = 300_000,
) -> dict[str, float]:
    """Run the pipeline; print what it did and how fast; return the figures.

    ``cluster_tasks=0`` skips stage 4 (the LocalCluster)."""
    workers = pyqueue.cpu_count()
    # The console writes through sys.stdout as it is now, so its lines and
    # print()'s stay in order (and a test's capture sees both).
    console = Console(file=sys.stdout)
    print(f"pyqueue {pyqueue.__version__} demo on {workers} core(s)")
    rng = np.random.default_rng(2026)
    figures: dict[str, float] = {}
    with pyqueue.TaskQueue() as q:
        # -- stage 1: native map --------------------------------------------------
        x = rng.uniform(0.0, 1e6, samples)
        out = np.empty_like(x)
        t0 = time.perf_counter()
        kernels.run_serial(kernels.sqrt_or_fail_f64, x, out)
        serial = time.perf_counter() - t0
        expected = out.copy()
        t0 = time.perf_counter()
        q.map_native(kernels.sqrt_or_fail_f64, x, out)
        native = time.perf_counter() - t0
        if not np.allclose(out, expected):
            raise AssertionError("native map disagrees with the serial loop")
        figures["native_items_per_s"] = samples / native
        figures["native_speedup_vs_c_loop"] = serial / native
        print(
            f"stage 1  native sqrt over {samples:,} samples: "
            f"{samples / native / 1e6:,.1f} M items/s "
            f"({serial / native:.2f}x a plain C loop on one core)"
        )

        # -- stage 2: Python fan-out / fan-in -----------------------------------------
        data = rng.integers(0, 16, blocks * block_kib * 1024, dtype=np.uint8).tobytes()
        parts = [data[i * block_kib * 1024 : (i + 1) * block_kib * 1024] for i in range(blocks)]
        print(
            f"stage 2  compress + sha256 of {blocks} x {block_kib} KiB blocks, "
            "fan-out then fan-in in completion order"
        )
        t0 = time.perf_counter()
        tasks = q.submit_many(_digest, parts)
        digests = {}
        with _progress(console, "blocks") as progress:
            bar = progress.add_task("", total=blocks)
            for task in q.results(tasks):
                digests[id(task)] = task.result()
                progress.advance(bar)
        ours = time.perf_counter() - t0
        pq_sizes = sorted(v[0] for v in digests.values())

        # -- stage 3: many small tasks --------------------------------------------------
        lines = [f"field{i % 97}={i}" for i in range(records)]
        t0 = time.perf_counter()
        small = q.submit_many(_parse, lines)
        pq_total = sum(t.result() for t in q.results(small))
        ours_small = time.perf_counter() - t0
        del small

    with cf.ThreadPoolExecutor(workers) as tpe:
        t0 = time.perf_counter()
        futures = [tpe.submit(_digest, p) for p in parts]
        tpe_sizes = sorted(f.result()[0] for f in cf.as_completed(futures))
        theirs = time.perf_counter() - t0
        t0 = time.perf_counter()
        parsed = [tpe.submit(_parse, line) for line in lines]
        tpe_total = sum(f.result() for f in cf.as_completed(parsed))
        theirs_small = time.perf_counter() - t0
    if pq_sizes != tpe_sizes or pq_total != tpe_total:
        raise AssertionError("pyqueue and ThreadPoolExecutor disagree")
    figures["fanout_blocks_per_s"] = blocks / ours
    figures["fanout_vs_threadpool"] = theirs / ours
    print(
        f"         pyqueue {blocks / ours:,.0f} blocks/s, ThreadPoolExecutor "
        f"{blocks / theirs:,.0f} blocks/s: {theirs / ours:.2f}x"
    )
    figures["small_tasks_per_s"] = records / ours_small
    figures["small_tasks_vs_threadpool"] = theirs_small / ours_small
    print(
        f"stage 3  {records:,} small parse tasks, fan-out + fan-in: pyqueue "
        f"{records / ours_small:,.0f} tasks/s, ThreadPoolExecutor "
        f"{records / theirs_small:,.0f} tasks/s: {theirs_small / ours_small:.1f}x"
    )
    if cluster_tasks > 0:
        _cluster_stage(console, cluster_tasks, cluster_steps, figures)
    total_mb = blocks * block_kib / 1024
    cluster_done = f", {cluster_tasks} pure-Python tasks on 2 processes" if cluster_tasks else ""
    print(
        f"done: {samples:,} native items, {total_mb:,.0f} MiB hashed, {records:,} records "
        f"parsed{cluster_done}; every result checked against the serial or "
        "ThreadPoolExecutor run"
    )
    return figures


def _cluster_stage(console: Console, tasks: int, steps: int, figures: dict[str, float]) -> None:
    """Stage 4: pure-Python CPU work serially, then on a two-node LocalCluster."""
    from pyqueue.cluster import LocalCluster

    work = [steps + i for i in range(tasks)]  # distinct arguments, distinct results
    print(
        f"stage 4  pure-Python CPU work, {tasks} tasks x {steps:,} steps: serial in this "
        "process, then on a LocalCluster of 2 node processes"
    )
    t0 = time.perf_counter()
    cluster = LocalCluster(nodes=2, workers=1)
    with cluster:
        start = time.perf_counter() - t0
        t0 = time.perf_counter()
        expected = [_cpu_work(n) for n in work]
        serial = time.perf_counter() - t0
        client = cluster.client
        t0 = time.perf_counter()
        handles = [client.submit(_cpu_work, n) for n in work]
        with _progress(console, "tasks") as progress:
            bar = progress.add_task("", total=tasks)
            for _ in client.results(handles):
                progress.advance(bar)
        got = [h.result() for h in handles]
        remote = time.perf_counter() - t0
    stopped = [cluster.coordinator, *cluster.nodes]
    if got != expected:
        raise AssertionError("the cluster and the serial run disagree")
    if any(p is None or p.poll() is None for p in stopped):
        raise AssertionError("a cluster process is still running after close()")
    figures["cluster_tasks_per_s"] = tasks / remote
    figures["cluster_speedup_vs_serial"] = serial / remote
    figures["cluster_start_s"] = start
    print(
        f"         serial {serial:.2f} s, LocalCluster {remote:.2f} s: "
        f"{serial / remote:.2f}x (cluster start {start:.2f} s, not counted); "
        "coordinator and 2 nodes stopped"
    )
