# Included by _native.pyx: the ordered, adaptive map (_MapIterator).

# -- map ------------------------------------------------------------------------

# The map's constants (self.t) come from pyqueue/_tunables.py; see _tunables.pxi.


cdef extern from "Python.h":
    # Public since 3.9.  Called directly, it skips Cython's generic call
    # helper (two levels of __Pyx_PyObject_FastCallDict, about 74 instructions
    # per item for a trivial fn: see benchmarks/README.md, W2).
    object PyObject_Vectorcall(object fn, PyObject **args, size_t nargsf, PyObject *kwnames)


def _run_chunk(fn, items, bint star):
    """Run fn over one chunk; returns (results, exception or None, seconds).
    An exception stops the chunk: the results before it are kept so that map
    yields them and then raises at the right position."""
    cdef list out = []
    cdef int64_t t0 = pq_now_ns()
    cdef Py_ssize_t i = 0, n
    cdef PyObject *arg
    if not star and type(items) is list:
        # The common case (a chunk is a private slice of the caller's list):
        # a list of the final size, filled by index, one vectorcall per item.
        n = len(items)
        out = PyList_New(n)     # NULL slots until set; a list tolerates them
        try:
            while i < n:
                arg = PyList_GET_ITEM(items, i)
                value = PyObject_Vectorcall(fn, &arg, 1, NULL)
                Py_INCREF(value)    # PyList_SET_ITEM steals a reference
                PyList_SET_ITEM(out, i, value)
                i += 1
        except StopIteration as exc:
            err = RuntimeError("map function raised StopIteration")
            err.__cause__ = exc
            return out[:i], err, (pq_now_ns() - t0) / 1e9
        except Exception as exc:
            return out[:i], exc, (pq_now_ns() - t0) / 1e9
        return out, None, (pq_now_ns() - t0) / 1e9
    try:
        if star:
            for x in items:
                out.append(fn(*x))
        else:
            for x in items:
                out.append(fn(x))
    except StopIteration as exc:
        # Raised from __next__ it would end the caller's loop silently, with
        # the rest of the items and the error lost (as PEP 479 says).
        err = RuntimeError("map function raised StopIteration")
        err.__cause__ = exc
        return out, err, (pq_now_ns() - t0) / 1e9
    except Exception as exc:
        return out, exc, (pq_now_ns() - t0) / 1e9
    return out, None, (pq_now_ns() - t0) / 1e9


@cython.final
cdef class _MapIterator:
    """Ordered results of a map, computed a bounded number of chunks ahead.

    A list, tuple or range is cut by slicing (no copy through an iterator);
    anything else is pulled lazily, one chunk at a time."""
    cdef Engine engine
    cdef _MapTunables t        # a copy of engine.c_map
    cdef object fn, source, inflight, error
    cdef object unpushed       # a chunk taken from the source whose push failed
    cdef object seq            # the input when it is a list, tuple or range
    cdef Py_ssize_t seq_next   # first index of seq not yet submitted
    cdef Py_ssize_t total      # len(seq) at the start, or -1 for an iterator
    cdef Py_ssize_t before_current  # results yielded before the current chunk
    cdef bint star, exhausted, adaptive
    cdef Py_ssize_t chunksize, pos, n_current
    cdef int ahead, ahead_max    # ahead 0: chunks run inline, nothing is queued
    cdef int inline_chunks       # chunks to run inline before overlap is tried again
    cdef int probe_every         # the current spacing of those tries
    cdef bint adaptive_ahead
    cdef double window_busy      # seconds of chunk work consumed in this window
    cdef int window_chunks
    cdef int window_helped       # chunks of this window that a worker ran
    cdef int64_t window_start
    cdef list current
    cdef int64_t deadline

    def __cinit__(self, Engine engine, fn, source, bint star, chunksize, int ahead,
                  timeout, bint adaptive_ahead=False):
        self.engine = engine
        self.t = engine.c_map
        self.fn = fn
        self.total = -1
        if type(source) is list or type(source) is tuple or type(source) is range:
            self.seq = source
            self.total = len(source)
        else:
            self.source = iter(source)
        self.star = star
        self.adaptive = chunksize is None
        if chunksize is not None and chunksize < 1:
            raise ValueError("chunksize must be >= 1")
        self.chunksize = 1 if chunksize is None else chunksize
        self.ahead_max = ahead if ahead > 0 else 1
        self.adaptive_ahead = adaptive_ahead
        # Adaptive look-ahead starts with one chunk beside the caller's and
        # grows only while the chunks really run side by side (see _adapt_ahead).
        self.ahead = 1 if adaptive_ahead else self.ahead_max
        self.window_start = pq_now_ns()
        self.inflight = collections.deque()
        self.current = []
        cdef int64_t t = _timeout_ns(timeout)
        self.deadline = pq_now_ns() + t if t >= 0 else -1
        self._fill()

    cdef object _next_chunk(self):
        if self.seq is not None:
            chunk = self.seq[self.seq_next:self.seq_next + self.chunksize]
            self.seq_next += len(chunk)
            return chunk
        return list(itertools.islice(self.source, self.chunksize))

    cdef object _take_chunk(self):
        if self.unpushed is not None:
            chunk, self.unpushed = self.unpushed, None
            return chunk
        return self._next_chunk()

    cdef int _fill(self, int slack=0) except -1:
        """Queue chunks until ``ahead`` (plus ``slack``: the one about to be
        waited for) are in flight."""
        cdef Task t
        while not self.exhausted and len(self.inflight) < self.ahead + slack:
            chunk = self._take_chunk()
            if not chunk:
                self.exhausted = True
                self.source = self.seq = None
                break
            t = self.engine._new_task(_run_chunk, (self.fn, chunk, self.star), None)
            try:
                self.engine._push(t, self.engine.c_put_timeout_ns)
            except BaseException:
                self.unpushed = chunk   # taken from the source: keep it for next time
                raise
            self.inflight.append(t)
        return 0

    cdef _adapt(self, double seconds, Py_ssize_t size):
        if not self.adaptive or size < self.chunksize:
            return
        cdef double per_item = seconds / size if size > 0 else 0.0
        cdef Py_ssize_t want
        if per_item <= 0:
            want = self.chunksize * self.t.chunk_growth
        else:
            want = <Py_ssize_t>(self.t.target_s / per_item)
        if want > self.chunksize * self.t.chunk_growth:
            want = self.chunksize * self.t.chunk_growth
        if want < 1:
            want = 1
        if want > self.t.max_chunk:
            want = self.t.max_chunk
        self.chunksize = want

    cdef _adapt_ahead(self, double seconds):
        """Grow the look-ahead while chunks overlap, drop it to one when they
        do not.  Work that holds the GIL (pure Python) cannot overlap: chunks
        that other threads take only move the results across cores, which
        costs more than it gives.  Work that releases the GIL or waits (I/O,
        hashing, numpy) overlaps, and then more chunks in flight pay off."""
        cdef int64_t now = pq_now_ns()
        self.window_busy += seconds
        self.window_chunks += 1
        cdef double elapsed = (now - self.window_start) / 1e9
        if self.window_chunks < 2 or elapsed < self.t.window_min_s:
            return
        cdef double overlap = self.window_busy / elapsed
        if (overlap < self.t.no_overlap and self.window_helped == 0
                and elapsed < self.t.window_max_s):
            return   # no worker has taken a chunk yet (still waking): wait and see
        if overlap > self.t.grow_overlap * (self.ahead + 1):
            self.ahead = min(self.ahead * self.t.ahead_growth, self.ahead_max)
        elif overlap < self.t.no_overlap:
            if self.ahead == 1 and self.deadline < 0:
                self._go_inline()
            else:
                self.ahead = 1
        self._new_window(now)

    cdef _new_window(self, int64_t now):
        self.window_busy = 0
        self.window_chunks = 0
        self.window_helped = 0
        self.window_start = now

    cdef _go_inline(self):
        """Nothing overlaps: run the next chunks right here, with no task and
        no hand-off, then look for overlap again, less often each time it
        is still absent (probing costs a cross-core hand-off or two)."""
        self.ahead = 0
        self.probe_every = self.t.probe_every if self.probe_every == 0 else min(
            self.probe_every * 2, self.t.probe_max)
        self.inline_chunks = self.probe_every

    def __iter__(self):
        return self

    def __length_hint__(self):
        # Lets list(q.map(...)) size its result once for a sized input.
        if self.total < 0:
            return 0
        cdef Py_ssize_t left = self.total - self.before_current - self.pos
        return left if left > 0 else 0

    def __next__(self):
        # Fast path, once per item: the next value of the current chunk.
        if self.pos < self.n_current:
            value = <object>PyList_GET_ITEM(self.current, self.pos)
            self.pos += 1
            return value
        return self._advance()

    cdef object _advance(self):
        """Wait for the next chunk (running it here if no worker has started
        it), or compute it here when running inline; return its first value."""
        while True:
            if self.error is not None:
                err, self.error = self.error, None
                self._abandon()
                raise err
            if not self.inflight and self.ahead > 0:
                self._fill()
            if self.inflight:
                results, err, seconds = self._wait_next()
            else:
                chunk = None if self.exhausted else self._take_chunk()
                if not chunk:
                    self.exhausted = True
                    self.source = self.seq = None
                    raise StopIteration
                results, err, seconds = _run_chunk(self.fn, chunk, self.star)
                self.inline_chunks -= 1
                if self.inline_chunks <= 0:      # try overlap again
                    self.ahead = 1
                    self._new_window(pq_now_ns())
            if err is None:
                self._adapt(seconds, len(results))
            if self.adaptive_ahead and self.ahead > 0:
                self._adapt_ahead(seconds)
            self.before_current += self.n_current
            self.current = results
            self.n_current = len(results)
            self.pos = 0
            self.error = err
            if self.n_current > 0:
                self.pos = 1
                return self.current[0]

    cdef tuple _wait_next(self):
        """The oldest chunk's outcome; the look-ahead is refilled first so that
        workers have work while we wait (or run it here)."""
        cdef int64_t left
        # Refill before taking t, so that a failed push leaves the chunk being
        # waited for in place; slack 1 counts that chunk.
        self._fill(1)
        cdef Task t = self.inflight.popleft()
        if t.state != PENDING:
            self.window_helped += 1   # a worker took it: overlap is measurable
        try:
            if self.deadline < 0:
                return t.result()
            left = self.deadline - pq_now_ns()
            return t.result((left if left > 0 else 0) / 1e9)
        except TimeoutError:
            self.inflight.appendleft(t)   # the caller may try again
            raise
        except BaseException:
            # Ctrl-C or a failure of the machinery: the look-ahead must not
            # keep running for a consumer that is gone (as Executor.map).
            self._abandon()
            raise

    cdef _abandon(self):
        if self.inflight is None:   # construction failed before it was set
            return
        for t in self.inflight:
            t.cancel()
        self.inflight.clear()
        self.exhausted = True
        self.source = self.seq = None

    def __del__(self):
        self._abandon()

    def close(self):
        """Stop early: cancel the chunks that have not started."""
        self._abandon()
        self.current = []
        self.n_current = 0
        self.pos = 0
