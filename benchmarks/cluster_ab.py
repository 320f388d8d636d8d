"""A/B of the cluster's throughput and CPU per task across source trees.

Usage::

    python -m benchmarks.cluster_ab TREE [TREE ...] [--store durable|memory]
                                    [--tasks 30000] [--rounds 6] [--runs 2]

Each tree is a built checkout (``make build``; e.g. a ``git worktree`` of an
older commit).  Every round runs one child process per tree, in an order that
reverses each round; the child imports pyqueue from its tree, starts a fresh
``LocalCluster(nodes=2, workers=1)`` (durable: a SQLite file), warms it up
with 2,000 tasks, then times ``--runs`` maps of ``--tasks`` no-ops (the tree's
own ``benchmarks.workloads.noop``).  CPU per task is read from
``/proc/<pid>/stat`` (utime + stime) of the coordinator, of each node's
supervisor and worker, and of the client.

Printed: per tree the medians over all runs, then, against the first tree,
the median of the per-round ratios, which cancels most of a noisy machine's
drift.  Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

METRICS = ("rate", "coordinator", "nodes", "client")

#: the child: one cluster on the tree it runs in, JSON of each timed map on stdout.
#: Self-contained (its own /proc reader) because it runs against older trees,
#: whose benchmarks/ may lack this tree's helpers.
_CHILD = r"""
import json, os, sys, tempfile, time
from benchmarks.workloads import noop
from pyqueue.cluster import LocalCluster

TICK = os.sysconf("SC_CLK_TCK")

def cpu(pid):
    # this process and its descendants (a node is a supervisor and its worker)
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    total = (int(fields[11]) + int(fields[12])) / TICK
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as fh:
            total += sum(cpu(int(c)) for c in fh.read().split())
    return total

store_kind, n, runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with tempfile.TemporaryDirectory() as tmp:
    store = os.path.join(tmp, "ab.db") if store_kind == "durable" else None
    with LocalCluster(nodes=2, workers=1, store=store) as cluster:
        client = cluster.client
        for _ in client.map(noop, range(2000)):
            pass
        out = []
        for _ in range(runs):
            nodes = [p.pid for p in cluster.nodes]
            before = (cpu(cluster.coordinator.pid), sum(map(cpu, nodes)), time.process_time())
            t0 = time.perf_counter()
            for _ in client.map(noop, range(n)):
                pass
            wall = time.perf_counter() - t0
            after = (cpu(cluster.coordinator.pid), sum(map(cpu, nodes)), time.process_time())
            us = [(a - b) / n * 1e6 for a, b in zip(after, before)]
            out.append({"rate": n / wall, "coordinator": us[0], "nodes": us[1], "client": us[2]})
print("JSON" + json.dumps(out))
"""


def run_tree(tree: Path, store: str, tasks: int, runs: int) -> list[dict[str, float]]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, store, str(tasks), str(runs)],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("JSON")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{tree}: exit {done.returncode}: {done.stderr[-2000:]}")
    result: list[dict[str, float]] = json.loads(lines[-1][4:])
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.cluster_ab", description=__doc__)
    ap.add_argument(
        "trees", nargs="+", type=Path, help="built source trees; the first is the reference"
    )
    ap.add_argument("--store", choices=("durable", "memory"), default="durable")
    ap.add_argument("--tasks", type=int, default=30_000, help="no-op tasks per timed map")
    ap.add_argument("--rounds", type=int, default=6, help="rounds (each runs every tree once)")
    ap.add_argument("--runs", type=int, default=2, help="timed maps per tree per round")
    a = ap.parse_args(argv)
    trees = [t.resolve() for t in a.trees]
    rounds: list[dict[Path, list[dict[str, float]]]] = []
    for r in range(a.rounds):
        rounds.append({})
        for tree in trees if r % 2 == 0 else trees[::-1]:
            rounds[-1][tree] = runs = run_tree(tree, a.store, a.tasks, a.runs)
            print(
                f"round {r + 1}: {tree}: " + " ".join(f"{x['rate']:.0f}" for x in runs), flush=True
            )

    print(f"\n`python -m benchmarks.cluster_ab {' '.join(map(str, a.trees))} --store {a.store}"
          f" --tasks {a.tasks} --rounds {a.rounds} --runs {a.runs}`\n")  # fmt: skip
    print("| tree | tasks/s | coordinator µs/task | nodes µs/task | client µs/task |")
    print("| --- | --- | --- | --- | --- |")
    ref = trees[0]
    for tree in trees:
        every = [x for rnd in rounds for x in rnd[tree]]
        cells = []
        for k in METRICS:
            value = statistics.median(x[k] for x in every)
            cell = f"{value:,.0f}" if k == "rate" else f"{value:.1f}"
            if tree != ref:
                ratio = statistics.median(
                    statistics.median(x[k] for x in rnd[tree])
                    / statistics.median(x[k] for x in rnd[ref])
                    for rnd in rounds
                )
                cell += f" (x{ratio:.3f})"
            cells.append(cell)
        print(f"| {tree} | " + " | ".join(cells) + " |")
    print("\n(x: median over rounds of that round's median against the first tree's)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
