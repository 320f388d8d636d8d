"""Child process of ``benchmarks.compare``: one peer, one repetition, many workloads.

Usage (internal)::

    python -m benchmarks._child --peer threads --workloads W1,W5 --mode quick --out f.json

The result file is rewritten after every workload, so a child killed on its
timeout still leaves what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import traceback

from benchmarks import workloads as wl
from benchmarks.peers import PEERS


def cpu_workers():
    """Number of CPUs this process may run on: the pool size of W1-W5."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t0, out


def _best_of(repeats, fn, *args):
    """Fastest of ``repeats`` timed calls and the last result (for short native runs)."""
    best = out = None
    for _ in range(repeats):
        secs, out = _timed(fn, *args)
        best = secs if best is None else min(best, secs)
    return best, out


#: Timed calls per repetition in N, whose runs last milliseconds; the minimum is kept.
NATIVE_REPEATS = 3


def _check(ok, what):
    if not ok:
        raise AssertionError(f"wrong results: {what}")


def measure(workload, peer, session, sizes, workers):
    """Run one workload on an open session and return its metrics.

    Parameters
    ----------
    workload : str
        One of ``W1``..``W6`` (``N`` goes through :func:`measure_native`).
    peer : benchmarks.peers.Peer
    session : object
        What ``peer.session(workers)`` yielded.
    sizes : benchmarks.workloads.Sizes
    workers : int

    Returns
    -------
    dict
        Always ``seconds``, ``tasks`` and ``tasks_per_s``; W5 adds latency
        percentiles and the raw ``latencies_us``; W6 adds ``ideal_s``.
    """
    warm = max(4, 2 * workers)
    if workload == "W1":
        n = sizes.slow_peer_tasks if peer.slow else sizes.noop_tasks
        session.run_each(wl.noop, range(warm))
        secs, out = _timed(session.run_each, wl.noop, range(n))
        _check(len(out) == n and out[-1] == n - 1, "noop")
    elif workload == "W2":
        n = sizes.map_items
        items = list(range(n))
        # Every row calls the same function per item, the serial row in a
        # plain list comprehension `[inc(x) for x in items]`: same work.
        session.map(wl.inc, items[: warm * 100])
        secs, out = _timed(session.map, wl.inc, items)
        _check(len(out) == n and out[0] == 1 and out[-1] == n, "map x+1")
    elif workload in ("W3a", "W3b", "W4"):
        fn, n, arg = {
            "W3a": (wl.sha256_blob, sizes.sha_tasks, 0),
            "W3b": (wl.dot_256, sizes.dot_tasks, 0),
            "W4": (wl.cpu_loop, sizes.cpu_tasks, sizes.cpu_iterations),
        }[workload]
        if peer.slow and workload != "W4":
            n = min(n, sizes.slow_peer_tasks)
        session.run_each(fn, [arg] * warm)
        secs, out = _timed(session.run_each, fn, [arg] * n)
        _check(len(out) == n and len(set(map(repr, out))) == 1, workload)
    elif workload == "W5":
        slow = peer.slow or peer.slow_round_trips
        n = sizes.slow_round_trips if slow else sizes.round_trips
        for i in range(warm * 5):
            session.round_trip(wl.noop, i)
        lat = []
        clock = time.perf_counter_ns
        t_start = time.perf_counter()
        for i in range(n):
            t0 = clock()
            session.round_trip(wl.noop, i)
            lat.append((clock() - t0) / 1000.0)
        secs = time.perf_counter() - t_start
        ordered = sorted(lat)
        return {
            "seconds": secs,
            "tasks": n,
            "tasks_per_s": n / secs,
            "p50_us": ordered[n // 2],
            "p99_us": ordered[min(n - 1, (99 * n) // 100)],
            "latencies_us": [round(x, 2) for x in lat],
        }
    elif workload == "W6":
        n = sizes.sleep_tasks
        session.run_each(wl.sleep_5ms, range(workers))
        secs, out = _timed(session.run_each, wl.sleep_5ms, range(n))
        _check(list(out) == list(range(n)), "sleep")
        ideal = n * 0.005 / workers
        return {
            "seconds": secs,
            "tasks": n,
            "tasks_per_s": n / secs,
            "ideal_s": ideal,
            "x_ideal": secs / ideal,
        }
    else:
        raise ValueError(f"unknown workload {workload!r}")
    return {"seconds": secs, "tasks": n, "tasks_per_s": n / secs}


def measure_native(peer, sizes):
    """Workload N: native kernels over float64 arrays.

    ``serial`` measures numpy's vectorised ``a + 1``; ``pyqueue`` measures the
    plain C loop (``kernels.run_serial``) and ``map_native`` on 1 and 2 workers,
    for ``add_one_f64`` (overhead per item) and ``spin_f64`` (about 1 us per item).
    Each figure is the best of ``NATIVE_REPEATS`` calls on warm, pre-touched arrays.

    Returns
    -------
    dict
        ``<variant>_s`` wall seconds per variant, plus item counts.
    """
    import numpy as np

    n = sizes.native_items
    a = np.arange(n, dtype=np.float64)
    out = np.empty_like(a)
    metrics = {"items": n, "spin_items": sizes.spin_items}
    out.fill(0.0)  # first-touch page faults must not land in the timed call
    if peer.key == "serial":
        np.add(a, 1.0, out=out)
        metrics["numpy_add_s"], _ = _best_of(NATIVE_REPEATS, np.add, a, 1.0, out)
        _check(out[-1] == n, "numpy a + 1")
        return metrics
    if peer.key != "pyqueue":
        raise ValueError("N runs on serial and pyqueue only")

    import pyqueue

    k = pyqueue.kernels
    spin_args = np.full(sizes.spin_items, wl.SPIN_ARG)
    spin_out = np.zeros_like(spin_args)
    for label, kernel, args, dst in (
        ("add", k.add_one_f64, a, out),
        ("spin", k.spin_f64, spin_args, spin_out),
    ):
        k.run_serial(kernel, args[:1000], dst[:1000])
        dst.fill(0.0)
        metrics[f"c_loop_{label}_s"], _ = _best_of(NATIVE_REPEATS, k.run_serial, kernel, args, dst)
        for workers in (1, 2):
            dst.fill(0.0)
            with pyqueue.TaskQueue(workers=1, native_workers=workers) as q:
                q.map_native(kernel, args[:1000], dst[:1000])
                secs, status = _best_of(NATIVE_REPEATS, q.map_native, kernel, args, dst)
            metrics[f"native_{label}_{workers}w_s"] = secs
            _check(not np.asarray(status).any(), f"map_native {label} status")
        if label == "add":
            _check(bool(np.array_equal(out, a + 1.0)), "map_native add_one")
    return metrics


def run(peer_key, workload_names, mode, out_path):
    """Measure ``workload_names`` on one peer, writing results to ``out_path``."""
    peer = PEERS[peer_key]
    sizes = wl.QUICK if mode == "quick" else wl.FULL
    doc = {"peer": peer_key, "pid": os.getpid(), "workloads": {}}

    def save():
        tmp = out_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(doc, f)
        os.replace(tmp, out_path)

    reason = peer.unavailable()
    if reason:
        doc["unavailable"] = reason
        save()
        return

    session_cm = session = None
    session_workers = None
    try:
        for name in workload_names:
            skip = peer.skip.get(name) or (mode == "quick" and peer.quick_skip.get(name))
            if name == "N" and peer.key not in ("serial", "pyqueue"):
                skip = "not applicable"
            if skip:
                doc["workloads"][name] = {"status": "skipped", "reason": skip}
                save()
                continue
            try:
                if name == "N":
                    metrics = measure_native(peer, sizes)
                else:
                    workers = sizes.sleep_workers if name == "W6" else cpu_workers()
                    if session_workers != workers:
                        if session_cm is not None:
                            session_cm.__exit__(None, None, None)
                            session_cm = None
                        session_cm = peer.session(workers)
                        t0 = time.perf_counter()
                        session = session_cm.__enter__()
                        session_workers = workers
                        doc.setdefault("startup_s", {})[str(workers)] = time.perf_counter() - t0
                    metrics = measure(name, peer, session, sizes, workers)
                doc["workloads"][name] = {"status": "ok", "metrics": metrics}
            except Exception as exc:  # noqa: BLE001 - record and go on to the next workload
                doc["workloads"][name] = {
                    "status": "error",
                    "reason": f"{type(exc).__name__}: {exc}"[:300],
                    "traceback": traceback.format_exc()[-2000:],
                }
                if session_cm is not None:
                    try:
                        session_cm.__exit__(None, None, None)
                    except Exception:  # noqa: BLE001 - the session is broken anyway
                        pass
                    session_cm = session_workers = None
            save()
    finally:
        if session_cm is not None:
            session_cm.__exit__(None, None, None)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--peer", required=True, choices=sorted(PEERS))
    parser.add_argument("--workloads", required=True)
    parser.add_argument("--mode", choices=("quick", "full"), default="quick")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    run(args.peer, args.workloads.split(","), args.mode, args.out)


if __name__ == "__main__":
    main()
