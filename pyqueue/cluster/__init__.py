"""pyqueue.cluster: a socket coordinator, worker nodes and clients that lose no task.

Guarantees
----------
* Every task whose submit was acknowledged runs at least once.
* Each task has exactly one accepted result: the first completion wins; later
  ones are answered "duplicate" (or "stale" when a newer lease superseded them).
* Duplicate executions happen only after a fault (a node died, stalled past its
  lease, or a connection broke), bounded by the work in flight there.
* Tasks that must not repeat side effects key them on ``current_task()``'s
  ``task_id`` and ``attempt``.
"""

from pyqueue.errors import (
    AuthenticationError,
    ClusterError,
    FrameTooLarge,
    KeyNotFound,
    MalformedFrame,
    PeerError,
    PreambleError,
    ProtocolError,
    RemoteTaskError,
    TaskCancelled,
    TaskDead,
    TaskLost,
    TaskTimeout,
    UnexpectedMessage,
    VersionError,
)

from .backend import Backend
from .backends import MemoryBackend, SQLiteBackend
from .client import Client, ClusterTask
from .config import DEFAULT_TIMINGS, FAST_TIMINGS, Timings, generate_key, load_key
from .dispatch import Policy
from .local import LocalCluster
from .node import Node
from .serialize import TaskContext, current_task
from .server import Coordinator
from .states import TaskState

__all__ = [
    "Client",
    "ClusterTask",
    "Coordinator",
    "Node",
    "LocalCluster",
    "Backend",
    "MemoryBackend",
    "SQLiteBackend",
    "Policy",
    "TaskState",
    "Timings",
    "DEFAULT_TIMINGS",
    "FAST_TIMINGS",
    "TaskContext",
    "current_task",
    "load_key",
    "generate_key",
    "ClusterError",
    "ProtocolError",
    "PreambleError",
    "VersionError",
    "FrameTooLarge",
    "MalformedFrame",
    "AuthenticationError",
    "UnexpectedMessage",
    "PeerError",
    "KeyNotFound",
    "TaskDead",
    "TaskLost",
    "TaskTimeout",
    "TaskCancelled",
    "RemoteTaskError",
]
