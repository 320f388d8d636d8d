"""EngineStats: what ``TaskQueue.stats()`` returns."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import ClassVar

__all__ = ["EngineStats"]


# dataclass(slots=True) needs Python 3.10; the package supports 3.9
_SLOTS: dict[str, bool] = {"slots": True} if sys.version_info >= (3, 10) else {}


@dataclass(frozen=True, **_SLOTS)
class EngineStats:
    """A snapshot of one TaskQueue's counters.

    Python tasks are what ``submit``, ``submit_nowait``, ``submit_many`` and
    the Executor queue, plus one task per chunk that ``map()`` hands to the
    workers; chunks that ``map()`` runs inline in the consumer's thread (when
    nothing overlaps) are not tasks and are not counted.  A task refused at
    submit (``QueueFull``, ``QueueClosed``) is not counted.  ``map_native()``
    work is counted apart, in batches and chunks of the native lane.

    Consistency: the Python-task fields are exact relative to one another
    (they change and are read with the GIL held), so at every snapshot
    ``submitted == completed + failed + cancelled + in_flight +
    queued_by_lane[0]``.  The native-lane fields are read separately from
    lock-free counters, without stopping the workers, and may lag by a
    chunk or so.  Monotone (never decrease): ``submitted``, ``completed``,
    ``failed``, ``cancelled``, ``native_batches``, ``native_chunks_run``.
    Gauges: ``in_flight``, ``queued``, ``queued_by_lane``.
    """

    #: The names of the entries of ``queued_by_lane``.
    LANES: ClassVar[tuple[str, ...]] = ("python", "native")

    submitted: int
    """Python tasks accepted into the queue."""
    completed: int
    """Python tasks that returned."""
    failed: int
    """Python tasks that raised, or that the engine failed unrun because the
    queue broke (a worker initializer raised)."""
    cancelled: int
    """Python tasks cancelled before they started (``Task.cancel()``,
    ``shutdown(cancel_pending=True)``, a ``map()`` closed early)."""
    in_flight: int
    """Python tasks running now, in a worker or in a caller that runs a task
    it waits for (caller-runs)."""
    queued: int
    """Work waiting for a worker: ``sum(queued_by_lane)``."""
    queued_by_lane: tuple[int, ...]
    """Waiting work per lane, in the order of ``LANES``: Python tasks not yet
    started, and native chunks (ring cells of ``map_native`` work) not yet
    taken by a native worker."""
    native_batches: int
    """Native batches started (``map_native``, ``submit_native``)."""
    native_chunks_run: int
    """Native chunks taken off the native lane by its workers (run, or
    marked not run when their batch was cancelled)."""
