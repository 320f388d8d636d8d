"""Every number that steers map and chunking, in one place.

The engine (``pyqueue._native``) holds no policy of its own: a
:class:`TaskQueue` passes these to it when it starts.  The defaults were
chosen on 2-core VMs and a 16-core box (``benchmarks/``); change them for a
queue with ``TaskQueue(tunables=Tunables(...))``, mostly to experiment.
"""

from __future__ import annotations

import dataclasses

__all__ = ["DEFAULT", "Tunables"]


@dataclasses.dataclass(frozen=True)
class Tunables:
    """Constants of the adaptive map and of native chunking.

    Parameters
    ----------
    map_target_s : float
        Adaptive chunking aims each chunk at about this much work: long
        enough to amortise a hand-off between threads, short enough to keep
        every worker busy.
    map_max_chunk : int
        Largest adaptive chunk (items).
    map_chunk_growth : int
        A chunk grows at most this many times from one chunk to the next.
    map_window_min_s : float
        Overlap is judged over windows of at least this long.
    map_window_max_s : float
        A window in which no worker took a chunk says nothing about overlap;
        it is extended up to this long before the map concludes there is none.
    map_no_overlap : float
        Below this ratio of chunk work to wall time, chunks do not overlap
        (pure-Python work holding the GIL): the look-ahead drops to one, then
        chunks run inline.
    map_grow_overlap : float
        Above this fraction of the ideal overlap (``ahead + 1``), the
        look-ahead grows, by ``map_ahead_growth`` times.
    map_ahead_growth : int
        Growth factor of the look-ahead.
    map_probe_every : int
        Chunks an inline map runs before it tries overlap again; doubles each
        time none is found, up to ``map_probe_max``.
    map_probe_max : int
        Largest spacing of those tries.
    native_ring_capacity : int
        Cells of the native pool's ring (a power of two).
    native_chunk_min, native_chunk_max : int
        Bounds of the default chunk of a native batch (items per ring cell).
    native_chunks_per_worker : int
        The default chunk aims at this many chunks per native worker, so that
        an uneven kernel still balances.
    """

    map_target_s: float = 0.002
    map_max_chunk: int = 8192
    map_chunk_growth: int = 4
    map_window_min_s: float = 0.002
    map_window_max_s: float = 0.02
    map_no_overlap: float = 1.2
    map_grow_overlap: float = 0.6
    map_ahead_growth: int = 4
    map_probe_every: int = 64
    map_probe_max: int = 4096
    native_ring_capacity: int = 1024
    native_chunk_min: int = 256
    native_chunk_max: int = 4096
    native_chunks_per_worker: int = 8

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"{field.name} must be a positive number, got {value!r}")
        if self.map_chunk_growth < 2 or self.map_ahead_growth < 2:
            raise ValueError("growth factors must be >= 2")
        if self.native_chunk_min > self.native_chunk_max:
            raise ValueError("native_chunk_min must be <= native_chunk_max")
        if self.native_ring_capacity & (self.native_ring_capacity - 1):
            raise ValueError("native_ring_capacity must be a power of two")


DEFAULT = Tunables()
