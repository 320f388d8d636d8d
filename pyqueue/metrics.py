"""Prometheus export of pyqueue's counters (the optional extra ``[metrics]``).

For a process that embeds a TaskQueue::

    from pyqueue.metrics import register_task_queue
    register_task_queue(q)   # then serve prometheus_client's default registry

The collector reads ``TaskQueue.stats()`` at scrape time: nothing is recorded
between scrapes, and a queue that is freed drops out of the output.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING

try:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    from prometheus_client.registry import REGISTRY, Collector, CollectorRegistry
except ImportError as exc:  # the extra is not installed
    raise ImportError(
        "pyqueue.metrics needs prometheus_client: pip install 'pyqueue[metrics]'"
    ) from exc

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from pyqueue._queue import TaskQueue

__all__ = ["TaskQueueCollector", "register_task_queue"]


# -- the local engine ----------------------------------------------------------


class TaskQueueCollector(Collector):
    """Yields one TaskQueue's ``stats()`` as Prometheus metric families.

    ``name`` becomes the ``queue`` label, to tell several queues of one
    process apart.  The queue is held weakly: a collector never keeps a
    queue alive, and yields nothing once it is gone.
    """

    def __init__(self, queue: TaskQueue, name: str = "default") -> None:
        self._queue = weakref.ref(queue)
        self._name = name

    def collect(self) -> Iterator[Metric]:
        queue = self._queue()
        if queue is None:
            return
        s = queue.stats()
        labels = ["queue"]
        values = [self._name]
        for metric, help_text, value in (
            ("pyqueue_engine_tasks_submitted", "Python tasks accepted by the queue.", s.submitted),
            ("pyqueue_engine_tasks_completed", "Python tasks that returned.", s.completed),
            ("pyqueue_engine_tasks_failed", "Python tasks that raised.", s.failed),
            ("pyqueue_engine_tasks_cancelled", "Python tasks cancelled unrun.", s.cancelled),
        ):
            # CounterMetricFamily appends the _total suffix itself.
            family = CounterMetricFamily(metric, help_text, labels=labels)
            family.add_metric(values, value)
            yield family
        in_flight = GaugeMetricFamily(
            "pyqueue_engine_tasks_in_flight", "Python tasks running now.", labels=labels
        )
        in_flight.add_metric(values, s.in_flight)
        yield in_flight
        queued = GaugeMetricFamily(
            "pyqueue_engine_tasks_queued",
            "Work waiting for a worker, per lane (python: tasks, native: chunks).",
            labels=[*labels, "lane"],
        )
        for lane, depth in zip(s.LANES, s.queued_by_lane):
            queued.add_metric([*values, lane], depth)
        yield queued


def register_task_queue(
    queue: TaskQueue, registry: CollectorRegistry | None = None, *, name: str = "default"
) -> TaskQueueCollector:
    """Register a :class:`TaskQueueCollector` for ``queue`` (in prometheus_client's
    default registry unless ``registry`` is given) and return it, so that the
    caller can ``registry.unregister`` it."""
    collector = TaskQueueCollector(queue, name=name)
    (REGISTRY if registry is None else registry).register(collector)
    return collector


# -- the cluster -----------------------------------------------------------------
# The coordinator's collector lives in pyqueue/cluster/metrics.py; what both
# share (naming helpers, registration) goes here.
