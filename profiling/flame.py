"""Record py-spy flame graphs, with native (C and Cython) frames, of a load target.

Usage::

    python profiling/flame.py {submit,map,map_native,cluster,all} [--seconds 5]
                              [--rate N] [--idle] [--gil] [--out profiling/out]

For each target this writes ``<out>/<target>.svg`` (open in a browser: click to
zoom, Ctrl-F to search) and ``<out>/<target>.speedscope.json`` (drop it on
https://www.speedscope.app or open with ``speedscope`` offline), recording the
target twice, once per format.  ``--idle`` keeps threads that are blocked,
which is how a wait for the GIL (``take_gil``) or a parked worker shows up.
``cluster`` records the coordinator and node processes too (``--subprocesses``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TARGETS = ("submit", "map", "map_native", "cluster")
FORMATS = {"flamegraph": "svg", "speedscope": "speedscope.json"}
#: Samples per second; the cluster target samples 3 processes on 2 cores, so less.
RATE, CLUSTER_RATE = 997, 199


def record(target, fmt, args):
    """Run one target under ``py-spy record`` in one format; return py-spy's exit code."""
    out = args.out / f"{target}.{FORMATS[fmt]}"
    rate = args.rate or (CLUSTER_RATE if target == "cluster" else RATE)
    cmd = [
        "py-spy",
        "record",
        "--native",
        "--rate",
        str(rate),
        "--format",
        fmt,
        "--output",
        str(out),
    ]
    if args.idle:
        cmd.append("--idle")
    if args.gil:
        cmd.append("--gil")
    if target == "cluster":
        cmd.append("--subprocesses")
    cmd += [
        "--",
        sys.executable,
        str(HERE / "targets.py"),
        target,
        "--seconds",
        str(args.seconds),
        "--workers",
        str(args.workers),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    print("$", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    sys.stdout.write(proc.stdout)
    sys.stderr.write(proc.stderr)
    if proc.returncode and ("ptrace" in proc.stderr or "Permission denied" in proc.stderr):
        print(
            "py-spy could not attach: it needs ptrace.  Run as root, or set "
            "/proc/sys/kernel/yama/ptrace_scope to 0, or in a container add "
            "--cap-add SYS_PTRACE.",
            file=sys.stderr,
        )
    return proc.returncode


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("target", choices=(*TARGETS, "all"))
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each recording")
    parser.add_argument(
        "--rate",
        type=int,
        default=None,
        help=f"samples per second (default {RATE}; cluster {CLUSTER_RATE})",
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--idle", action="store_true", help="include blocked threads")
    parser.add_argument("--gil", action="store_true", help="only samples holding the GIL")
    parser.add_argument("--out", type=Path, default=HERE / "out")
    args = parser.parse_args(argv)
    if shutil.which("py-spy") is None:
        raise SystemExit("py-spy is not installed: pip install py-spy")
    args.out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for target in TARGETS if args.target == "all" else (args.target,):
        for fmt in FORMATS:
            failed += record(target, fmt, args) != 0
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
