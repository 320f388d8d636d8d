"""The Dramatiq broker and actors of ``benchmarks.brokers``: its workers run this module.

Worker command (what the benchmark starts, with ``PYQUEUE_BENCH_REDIS_URL`` set)::

    dramatiq benchmarks.brokers_dramatiq --processes 2 --threads 1

The actors are the comparison's own functions from :mod:`benchmarks.workloads`;
results go through Dramatiq's ``Results`` middleware with its Redis backend,
so the client can wait for each message's result.
"""

from __future__ import annotations

import os
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend

from benchmarks import workloads

#: Environment variable holding the private Redis URL (broker and results).
URL_ENV = "PYQUEUE_BENCH_REDIS_URL"


def make(url: str) -> tuple[RedisBroker, RedisBackend, dict[str, Any]]:
    """A Redis broker on ``url`` with the Results middleware, and its actors by name.

    ``max_retries=0``: a failing task is an error of the benchmark, not
    something to retry for minutes.  Everything else is Dramatiq's default.
    """
    backend = RedisBackend(url=url)
    broker = RedisBroker(url=url)
    broker.add_middleware(Results(backend=backend))
    actors = {
        fn.__name__: dramatiq.actor(
            fn, broker=broker, actor_name=fn.__name__, store_results=True, max_retries=0
        )
        for fn in (workloads.noop, workloads.cpu_loop)
    }
    return broker, backend, actors


broker, results_backend, actors = make(os.environ.get(URL_ENV, "redis://127.0.0.1:6379/0"))
dramatiq.set_broker(broker)
