"""Benchmarks for pyqueue: peer comparisons and pytest-benchmark microbenchmarks.

Run ``python -m benchmarks.compare --quick`` for the peer comparison and
``pytest benchmarks/ --benchmark-only`` for the microbenchmarks.  See
``benchmarks/README.md``.
"""

import sys
from pathlib import Path

# `python -m benchmarks.compare` from a source checkout puts the checkout first
# on sys.path, where its `pyqueue` folder would shadow the installed package.
# Unless the extension was built in place there, measure the installed one:
# the checkout moves to the end of sys.path, not off it, since process-pool
# peers' workers inherit sys.path and must still import `benchmarks` to
# unpickle the workloads.
_ROOT = Path(__file__).resolve().parent.parent
if not any((_ROOT / "pyqueue").glob("_native*.so")):
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _ROOT] + [str(_ROOT)]
