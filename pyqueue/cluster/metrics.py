"""The coordinator's Prometheus metrics, read from its state at scrape time.

Needs the optional extra ``pip install 'pyqueue[metrics]'`` (prometheus-client
and aiohttp); the coordinator runs without it.  Nothing is recorded for
Prometheus as tasks go: :class:`ClusterCollector` turns the store's own counts
and :class:`~pyqueue.cluster.telemetry.Telemetry` into metric families when
scraped, so the hot path pays only for the plain counters, and every number
comes from the one place status and the dashboard read too.

Names follow Prometheus conventions (seconds, ``_total`` counters); labels
are queues, states, node ids and verdicts, never task ids.
"""

from __future__ import annotations

from collections.abc import Iterator

try:
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
    from prometheus_client.registry import Collector, CollectorRegistry
except ImportError as exc:  # pragma: no cover - the extra is in the test set
    raise ImportError(
        "pyqueue's metrics need prometheus-client: pip install 'pyqueue[metrics]'"
    ) from exc

from .coordinator import NODE_STATES, CoordinatorCore, _node_state
from .states import TaskState
from .telemetry import Histogram

__all__ = ["ClusterCollector", "registry_for"]


def _histogram(name: str, doc: str, per_queue: dict[str, Histogram]) -> HistogramMetricFamily:
    fam = HistogramMetricFamily(name, doc, labels=["queue"])
    for queue, h in sorted(per_queue.items()):
        buckets = [("+Inf" if b == float("inf") else repr(b), n) for b, n in h.cumulative()]
        fam.add_metric([queue], buckets, h.sum)
    return fam


class ClusterCollector(Collector):
    """Yields the cluster's metric families from ``core`` (call on its loop thread)."""

    def __init__(self, core: CoordinatorCore) -> None:
        self.core = core

    def collect(self) -> Iterator[Metric]:
        core = self.core
        backend = core.backend
        tel = backend.telemetry
        wall = core.clock.time()

        fam = CounterMetricFamily(
            "pyqueue_tasks_submitted", "Tasks submitted (new ids) per queue.", labels=["queue"]
        )
        for queue, n in sorted(tel.submitted.items()):
            fam.add_metric([queue], n)
        yield fam

        fam = CounterMetricFamily(
            "pyqueue_tasks_finished",
            "Tasks that reached a terminal state, per queue and state.",
            labels=["queue", "state"],
        )
        for (queue, st), n in sorted(tel.finished.items()):
            fam.add_metric([queue, st.name.lower()], n)
        yield fam

        fam = CounterMetricFamily(
            "pyqueue_tasks_dead_lettered", "Tasks dead-lettered per queue.", labels=["queue"]
        )
        for queue, n in sorted(tel.dead_lettered.items()):
            fam.add_metric([queue], n)
        yield fam

        yield CounterMetricFamily(
            "pyqueue_leases_expired",
            "Leases that ended because their node was lost.",
            value=tel.leases_expired,
        )

        depth = GaugeMetricFamily(
            "pyqueue_queue_depth", "Tasks per queue and state, now.", labels=["queue", "state"]
        )
        oldest = GaugeMetricFamily(
            "pyqueue_queue_oldest_pending_seconds",
            "Age of the longest-waiting ready task per queue (0 when none waits).",
            labels=["queue"],
        )
        for q in backend.queues():
            for st in TaskState:
                depth.add_metric([q.name, st.name.lower()], q.counts.get(st, 0))
            age = 0.0 if q.oldest_ready is None else max(0.0, wall - q.oldest_ready)
            oldest.add_metric([q.name], age)
        yield depth
        yield oldest

        yield _histogram(
            "pyqueue_task_wait_seconds",
            "Time from ready to leased, per queue.",
            tel.wait,
        )
        yield _histogram(
            "pyqueue_task_run_seconds",
            "Run time the nodes reported, per queue.",
            tel.run,
        )

        commit = HistogramMetricFamily(
            "pyqueue_store_commit_seconds", "Latency of the store's group commits."
        )
        buckets = [
            ("+Inf" if b == float("inf") else repr(b), n) for b, n in tel.commit.cumulative()
        ]
        commit.add_metric([], buckets, tel.commit.sum)
        yield commit

        stats = backend.stats()
        held = stats.held
        nodes = GaugeMetricFamily("pyqueue_nodes", "Connected nodes per state.", labels=["state"])
        slots = GaugeMetricFamily(
            "pyqueue_node_slots", "Tasks a node may hold (slots + prefetch).", labels=["node"]
        )
        inflight = GaugeMetricFamily(
            "pyqueue_node_inflight", "Tasks leased to a node now.", labels=["node"]
        )
        per_state = dict.fromkeys(NODE_STATES, 0)
        for node_id, peer in sorted(core.nodes.items()):
            per_state[_node_state(peer)] += 1
            slots.add_metric([node_id], peer.capacity)
            inflight.add_metric([node_id], held.get(node_id, 0))
        for node_state, n in per_state.items():
            nodes.add_metric([node_state], n)
        yield nodes
        yield slots
        yield inflight

        fam = CounterMetricFamily(
            "pyqueue_completions",
            "Completions reported by nodes, per verdict of the store.",
            labels=["verdict"],
        )
        for verdict, n in stats.completions.items():
            fam.add_metric([verdict.value], n)
        yield fam
        yield GaugeMetricFamily("pyqueue_peers", "Open connections.", value=len(core.peers))
        yield CounterMetricFamily(
            "pyqueue_internal_errors",
            "Errors of the coordinator's own (logged, retried).",
            value=core.internal_errors,
        )


def registry_for(core: CoordinatorCore) -> CollectorRegistry:
    """A private registry holding only the cluster's collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ClusterCollector(core))
    return registry
