"""The Celery app of ``benchmarks.brokers``: its workers run this module.

Worker command (what the benchmark starts, with ``PYQUEUE_BENCH_REDIS_URL`` set)::

    celery -A benchmarks.brokers_celery worker --concurrency 2 --pool prefork

The tasks are the comparison's own functions from :mod:`benchmarks.workloads`,
registered under fixed names; the benchmark's client builds its own app on the
same URL with :func:`make_app` and sends them by name.
"""

from __future__ import annotations

import os

from celery import Celery

from benchmarks import workloads

#: Environment variable holding the private Redis URL (broker and results).
URL_ENV = "PYQUEUE_BENCH_REDIS_URL"

#: Task names, by workload function name.
TASKS = {"noop": "bench.noop", "cpu_loop": "bench.cpu_loop"}


def make_app(url: str) -> Celery:
    """A Celery app with ``url`` as broker and result backend, the tasks registered.

    Everything else is Celery's default (prefetch multiplier 4, late ack off,
    JSON serializer), as a user who picks Celery would run it.
    """
    app = Celery("pyqueue_bench", broker=url, backend=url, set_as_current=False)
    app.conf.update(broker_connection_retry_on_startup=True, worker_hijack_root_logger=False)
    app.task(name=TASKS["noop"], shared=False)(workloads.noop)
    app.task(name=TASKS["cpu_loop"], shared=False)(workloads.cpu_loop)
    return app


app = make_app(os.environ.get(URL_ENV, "redis://127.0.0.1:6379/0"))
