"""What a coordinator counts as it goes, for its metrics, status and dashboard.

A store feeds a :class:`Telemetry` from inside its transitions (it is the one
that knows each task's queue and times), the coordinator adds its commit
latency.  Everything here counts since the process started, as Prometheus
counters do: a restart begins again at zero, while the gauges (tasks per state,
oldest pending) come from the store itself and survive it.

Cheap by design: a counter is a dict increment and a histogram a bisect into a
fixed tuple, so the hot path pays well under a microsecond per task.  No
prometheus_client here: it is an optional extra, and the status view and
dashboard read these plain numbers too.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping

from .states import TaskState

__all__ = ["BUCKETS", "Histogram", "Telemetry"]

#: upper bounds (seconds) of the histogram buckets: 1 ms to an hour, then +Inf
BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, math.inf,
)  # fmt: skip


class Histogram:
    """Counts of observations per bucket of :data:`BUCKETS` (not cumulative), and their sum."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * len(BUCKETS)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        # bisect_left: a value equal to a bound falls in that bucket ("le")
        self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.sum += seconds

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations <= it) per bucket, as Prometheus exposes them."""
        out, total = [], 0
        for bound, n in zip(BUCKETS, self.counts):
            total += n
            out.append((bound, total))
        return out

    def quantile(self, q: float) -> float | None:
        """The upper bound of the bucket holding quantile ``q`` (None when empty)."""
        n = self.count
        if n == 0:
            return None
        rank = q * n
        for bound, total in self.cumulative():
            if total >= rank:
                return bound
        return BUCKETS[-1]


class Telemetry:
    """Counters and histograms since the process started (see the module doc).

    ``submitted[queue]`` counts new tasks (an idempotent resubmit is not new);
    ``finished[(queue, state)]`` counts tasks that reached a terminal state;
    ``dead_lettered[queue]`` the DEAD ones among them; ``leases_expired`` the
    leases that ended because their node was lost; ``wait[queue]`` observes
    leased minus ready per lease; ``run[queue]`` the run time a node reported
    with each accepted completion; ``commit`` each store commit.
    """

    __slots__ = (
        "submitted",
        "finished",
        "dead_lettered",
        "leases_expired",
        "wait",
        "run",
        "commit",
    )

    def __init__(self) -> None:
        self.submitted: dict[str, int] = {}
        self.finished: dict[tuple[str, TaskState], int] = {}
        self.dead_lettered: dict[str, int] = {}
        self.leases_expired = 0
        self.wait: dict[str, Histogram] = {}
        self.run: dict[str, Histogram] = {}
        self.commit = Histogram()

    def on_finished(self, queue: str, state: TaskState, n: int = 1) -> None:
        key = (queue, state)
        self.finished[key] = self.finished.get(key, 0) + n
        if state is TaskState.DEAD:
            self.dead_lettered[queue] = self.dead_lettered.get(queue, 0) + n

    def histogram(self, per_queue: dict[str, Histogram], queue: str) -> Histogram:
        """``per_queue[queue]``, made on first use."""
        h = per_queue.get(queue)
        if h is None:
            h = per_queue[queue] = Histogram()
        return h

    def totals(self) -> Mapping[str, int]:
        """Sums over queues, for rates: submitted, finished, failed, dead."""
        finished = self.finished
        return {
            "submitted": sum(self.submitted.values()),
            "finished": sum(finished.values()),
            "failed": sum(n for (_, st), n in finished.items() if st is TaskState.FAILED),
            "dead": sum(self.dead_lettered.values()),
        }
