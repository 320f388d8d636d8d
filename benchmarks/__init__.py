"""Benchmarks for pyqueue: peer comparisons and pytest-benchmark microbenchmarks.

Run ``python -m benchmarks.compare --quick`` for the peer comparison and
``pytest benchmarks/ --benchmark-only`` for the microbenchmarks.  See
``benchmarks/README.md``.
"""
