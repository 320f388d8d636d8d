"""Task states: plain values shared by the client, the coordinator and the stores.

No I/O here, so that importing the client does not import a store (or sqlite3).

Task life cycle::

    SCHEDULED -> PENDING -> LEASED -> SUCCEEDED | FAILED | DEAD | CANCELLED
        ^           ^          |
        |           +----------+  node lost / released (old queue position)
        +----------------------+  task raised and retries are left (backoff)
"""

from __future__ import annotations

import enum

__all__ = ["TaskState", "TERMINAL"]


class TaskState(enum.IntEnum):
    """Where a task is in its life.  Values are stored on disk: never renumber."""

    SCHEDULED = 0
    PENDING = 1
    LEASED = 2
    SUCCEEDED = 3
    FAILED = 4
    DEAD = 5
    CANCELLED = 6


TERMINAL = frozenset({TaskState.SUCCEEDED, TaskState.FAILED, TaskState.DEAD, TaskState.CANCELLED})
