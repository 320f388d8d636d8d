"""Stores behind the coordinator, each held to the :mod:`pyqueue.cluster.backend` contract.

``MemoryBackend``: nothing survives the process (the default).
``SQLiteBackend``: one SQLite file, durable across restarts.
"""

from .memory import MemoryBackend
from .sqlite import SQLiteBackend

__all__ = ["MemoryBackend", "SQLiteBackend"]
