"""Compare pyqueue with its peers on workloads W1-W6 and N.

Usage::

    python -m benchmarks.compare [--quick] [--only W1,W5] [--peers threads,pyqueue]
                                 [--reps 3] [--out benchmarks/results] [--publish]

Every (peer, repetition) runs in its own child process and process group, so one
peer's threads and worker processes cannot disturb another's measurement.  The
order of peers rotates and reverses from one repetition to the next, so slow
drift of the machine (thermal, other jobs) does not favour one peer.  Results go
to ``<out>/<mode>.json`` (machine, versions, raw samples), ``<out>/<mode>.md``
and ``<out>/<mode>_*.png``; ``--publish`` also writes ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import report
from benchmarks.peers import PEERS
from benchmarks.workloads import WORKLOADS

REPO = Path(__file__).resolve().parent.parent

#: Distributions whose versions go into the JSON.
DISTRIBUTIONS = (
    "pyqueue",
    "numpy",
    "joblib",
    "loky",
    "dask",
    "distributed",
    "ray",
    "matplotlib",
    "psutil",
    "cloudpickle",
)

#: Environment for children: single-threaded BLAS (W3b is "BLAS on 1 thread"),
#: and the repository on the path of every worker process a peer starts.
CHILD_ENV = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "PYTHONPATH": str(REPO),
    "RAY_DEDUP_LOGS": "0",
    "PYTHONWARNINGS": "ignore",
}


def machine_info():
    """Describe this machine and the software under test."""
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(
                line.split(":", 1)[1].strip() for line in f if line.startswith("model name")
            )
    except (OSError, StopIteration):
        pass
    versions = {}
    for dist in DISTRIBUTIONS:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    if versions["pyqueue"] is None:
        versions["pyqueue"] = _source_tree_version()
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "versions": versions,
        "commit": commit or None,
        "loadavg_start": os.getloadavg(),
    }


def _source_tree_version():
    """Version of a pyqueue built in place (not pip-installed), probed in a child."""
    probe = "import pyqueue; print(pyqueue.__version__)"
    try:
        proc = subprocess.run(
            [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{proc.stdout.strip()} (source tree)" if proc.returncode == 0 else None


def peer_order(peers, rep):
    """Rotate the peer list by ``rep`` and reverse it on odd repetitions."""
    k = rep % len(peers)
    order = peers[k:] + peers[:k]
    return order[::-1] if rep % 2 else order


def _kill_tree(proc):
    """Kill a child and everything in its process group (and its descendants)."""
    try:
        import psutil

        for child in psutil.Process(proc.pid).children(recursive=True):
            child.kill()
    except Exception:  # noqa: BLE001 - psutil missing or the process is gone
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_child(peer, workloads, mode, rep, workdir, timeout):
    """Run one peer's workloads in a fresh process group; return its result document."""
    out = workdir / f"{peer}-r{rep}.json"
    log = workdir / "logs" / f"{peer}-r{rep}.log"
    out.unlink(missing_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "benchmarks._child",
        "--peer",
        peer,
        "--workloads",
        ",".join(workloads),
        "--mode",
        mode,
        "--out",
        str(out),
    ]
    env = {**os.environ, **CHILD_ENV}
    t0 = time.perf_counter()
    with open(log, "w") as log_file:
        proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            proc.wait(timeout=timeout)
            ended = None if proc.returncode == 0 else ("error", f"crashed (exit {proc.returncode})")
        except subprocess.TimeoutExpired:
            ended = ("timeout", f"killed after {timeout:g} s")
        _kill_tree(proc)
        proc.wait()
    doc = json.loads(out.read_text()) if out.exists() else {"workloads": {}}
    doc["wall_s"] = time.perf_counter() - t0
    if ended:
        for name in workloads:
            doc["workloads"].setdefault(name, {"status": ended[0], "reason": ended[1]})
    doc["log"] = str(log.relative_to(REPO) if log.is_relative_to(REPO) else log)
    return doc


def _split(value, allowed, what):
    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n not in allowed]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)}; choose from {', '.join(allowed)}")
    return names


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.compare",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small sizes, for CI and smoke runs (< 3 min on 2 cores)",
    )
    parser.add_argument(
        "--only", default=",".join(WORKLOADS), help="comma-separated workloads (default: all)"
    )
    parser.add_argument(
        "--peers",
        default=",".join(PEERS),
        help="comma-separated peers (default: all): " + ", ".join(PEERS),
    )
    parser.add_argument("--reps", type=int, default=3, help="repetitions (default 3)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds per child (default 150 quick, 600 full)",
    )
    parser.add_argument("--publish", action="store_true", help="also write benchmarks/RESULTS.md")
    parser.add_argument("--no-plots", action="store_true")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    workloads = _split(args.only, WORKLOADS, "workloads")
    peers = _split(args.peers, list(PEERS), "peers")
    mode = "quick" if args.quick else "full"
    timeout = args.timeout or (150 if args.quick else 600)
    workdir = args.out / f"{mode}-children"
    (workdir / "logs").mkdir(parents=True, exist_ok=True)

    meta = machine_info()
    meta.update(
        mode=mode,
        reps=args.reps,
        workloads=workloads,
        peers=peers,
        command=" ".join(
            ["python -m benchmarks.compare", *map(shlex.quote, (argv or sys.argv[1:]))]
        ),
        started=datetime.datetime.now().isoformat(timespec="seconds"),
    )
    t_start = time.perf_counter()
    samples, unavailable, runs = [], {}, []
    for rep in range(args.reps):
        for peer in peer_order(peers, rep):
            if peer in unavailable:
                continue
            doc = run_child(peer, workloads, mode, rep, workdir, timeout)
            runs.append(
                {
                    "peer": peer,
                    "rep": rep,
                    "wall_s": doc["wall_s"],
                    "startup_s": doc.get("startup_s"),
                    "log": doc["log"],
                }
            )
            if "unavailable" in doc:
                unavailable[peer] = doc["unavailable"]
                print(
                    f"[rep {rep + 1}/{args.reps}] {peer:<20} {doc['unavailable']}", file=sys.stderr
                )
                continue
            for name, entry in doc["workloads"].items():
                samples.append({"peer": peer, "rep": rep, "workload": name, **entry})
            bad = [n for n, e in doc["workloads"].items() if e["status"] in ("error", "timeout")]
            note = f"  errors: {', '.join(bad)} (see {doc['log']})" if bad else ""
            print(
                f"[rep {rep + 1}/{args.reps}] {peer:<20} {doc['wall_s']:6.1f} s{note}",
                file=sys.stderr,
            )
    meta["loadavg_end"] = os.getloadavg()
    meta["total_s"] = round(time.perf_counter() - t_start, 1)

    result = {"meta": meta, "unavailable": unavailable, "runs": runs, "samples": samples}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{mode}.json").write_text(json.dumps(result, indent=1))
    table = report.markdown(result)
    (args.out / f"{mode}.md").write_text(table)
    if args.publish:
        (REPO / "benchmarks" / "RESULTS.md").write_text(table)
    if not args.no_plots:
        report.plots(result, args.out, prefix=mode)
    print(table)
    print(
        f"wrote {args.out}/{mode}.json, {mode}.md and plots in {meta['total_s']} s", file=sys.stderr
    )


if __name__ == "__main__":
    main()
