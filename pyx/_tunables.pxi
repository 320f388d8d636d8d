# Included by _native.pyx: the C copies of pyqueue._tunables.Tunables.  The
# numbers that steer map and chunking are policy, kept in the Python layer;
# a queue passes its Tunables to _engine_start, which copies them here so the
# hot loops read plain C fields.

cdef struct _MapTunables:
    double target_s
    Py_ssize_t max_chunk
    Py_ssize_t chunk_growth
    double window_min_s
    double window_max_s
    double no_overlap
    double grow_overlap
    int ahead_growth
    int probe_every
    int probe_max


cdef struct _NativeTunables:
    size_t ring_capacity
    int64_t chunk_min
    int64_t chunk_max
    int64_t chunks_per_worker


cdef int _read_tunables(object t, _MapTunables *m, _NativeTunables *n) except -1:
    m.target_s = t.map_target_s
    m.max_chunk = t.map_max_chunk
    m.chunk_growth = t.map_chunk_growth
    m.window_min_s = t.map_window_min_s
    m.window_max_s = t.map_window_max_s
    m.no_overlap = t.map_no_overlap
    m.grow_overlap = t.map_grow_overlap
    m.ahead_growth = t.map_ahead_growth
    m.probe_every = t.map_probe_every
    m.probe_max = t.map_probe_max
    n.ring_capacity = t.native_ring_capacity
    n.chunk_min = t.native_chunk_min
    n.chunk_max = t.native_chunk_max
    n.chunks_per_worker = t.native_chunks_per_worker
    return 0
