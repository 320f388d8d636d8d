# Included by _native.pyx: native batches: Kernel and function pointers, NativeTask,
# chunk sizing, completion hooks, run_serial, cpu_count.

# -- native tasks -----------------------------------------------------------------

cdef class Kernel:
    """A C function pointer with its ABI and, optionally, the dtypes it expects.

    Build one with :func:`pyqueue.kernel`.  ``map_native`` checks ``args`` and
    ``out`` against ``arg_dtype`` and ``out_dtype`` when they are set.
    """
    cdef readonly uintptr_t address
    cdef readonly str abi
    cdef readonly object arg_dtype, out_dtype, name
    cdef object keepalive   # the source object, so the code cannot be unloaded

    def __repr__(self):
        return f"<pyqueue.Kernel {self.name or hex(self.address)} abi={self.abi}>"


cdef uintptr_t _address_of(object fn) except 0:
    if isinstance(fn, bool):
        raise TypeError("a bool is not a function pointer")
    if isinstance(fn, int):
        if fn <= 0 or fn >= (1 << 64):
            raise ValueError(f"invalid function address {fn!r}")
        return <uintptr_t>fn
    if PyCapsule_CheckExact(fn):
        return <uintptr_t>PyCapsule_GetPointer(fn, PyCapsule_GetName(fn))
    if isinstance(fn, ctypes._CFuncPtr):
        addr = ctypes.cast(fn, ctypes.c_void_p).value
        if not addr:
            raise ValueError("NULL ctypes function pointer")
        return <uintptr_t>addr
    if type(fn).__module__ == "_cffi_backend":
        import cffi
        ffi = cffi.FFI()
        kind = ffi.typeof(fn).kind
        if kind == "pointer" and ffi.typeof(fn).item.kind == "function":
            kind = "function"
        if kind != "function":
            raise TypeError(f"cffi object of kind {kind!r} is not a function")
        addr = int(ffi.cast("uintptr_t", fn))
        if not addr:
            raise ValueError("NULL cffi function pointer")
        return <uintptr_t>addr
    address = getattr(fn, "address", None)   # numba cfunc
    if isinstance(address, int) and not isinstance(address, bool):
        return _address_of(address)
    raise TypeError(
        f"cannot use {type(fn).__name__!r} as a native function: expected a cffi "
        "function, a ctypes function pointer, a PyCapsule, a numba cfunc or an int address")


def kernel(fn, abi="item", arg_dtype=None, out_dtype=None, name=None):
    """Describe a native kernel for ``map_native``.

    Parameters
    ----------
    fn : cffi function, ctypes function pointer, PyCapsule, numba cfunc or int
        The C function.  Item ABI: ``int fn(const void *arg, void *out)``;
        range ABI: ``int fn(const void *args, int64_t begin, int64_t end, void *out)``.
        Both return 0 for success.  A cffi ``def_extern`` callback takes the
        GIL on every call: submit it as a Python task instead.
    abi : {"item", "range"}
    arg_dtype, out_dtype : numpy dtype, optional
        When given, ``map_native`` rejects arrays of any other dtype.
    """
    if isinstance(fn, Kernel):
        return fn
    if abi not in ("item", "range"):
        raise ValueError(f"abi must be 'item' or 'range', not {abi!r}")
    cdef Kernel k = Kernel.__new__(Kernel)
    k.address = _address_of(fn)
    k.abi = abi
    if arg_dtype is not None or out_dtype is not None:
        import numpy
        k.arg_dtype = None if arg_dtype is None else numpy.dtype(arg_dtype)
        k.out_dtype = None if out_dtype is None else numpy.dtype(out_dtype)
    k.name = name
    k.keepalive = fn
    return k


cdef Kernel as_kernel(object fn, object abi):
    if isinstance(fn, Kernel):
        if abi is not None and abi != (<Kernel>fn).abi:
            raise ValueError(f"kernel has abi {(<Kernel>fn).abi!r}, not {abi!r}")
        return <Kernel>fn
    return kernel(fn, "item" if abi is None else abi)


cdef uintptr_t _data_ptr(object arr):
    return <uintptr_t>arr.__array_interface__["data"][0]


@cython.final
cdef class NativeTask:
    """The handle of a native batch started by ``submit_native``.

    The arrays stay referenced until the batch completes; dropping the handle
    early waits for the batch (the workers are writing into ``out``).
    """
    cdef pq_batch c_batch
    cdef pq_batch_hook c_hook    # registered by the first add_done_callback
    cdef readonly int64_t n
    cdef bint submitted
    cdef bint hooked
    cdef int generation        # _fork_generation when the batch was made
    cdef object args, out, status_array, kernel_obj
    cdef list callbacks        # while hooked and not yet fired

    def __dealloc__(self):
        # Nobody can read the results any more: skip the chunks not started,
        # then wait for the running ones, which still write into our arrays.
        # In a forked child the workers stayed in the parent: leak instead.
        if self.submitted:
            PQ_DBG(DBG_LIVE_BATCHES, -1)
        if self.submitted and self.generation == _fork_generation:
            with nogil:
                pq_batch_cancel(&self.c_batch)
                pq_batch_wait(&self.c_batch, -1)

    @staticmethod
    cdef NativeTask _prepare(Kernel k, object args, object out, object status):
        import numpy
        if not isinstance(args, numpy.ndarray):
            raise TypeError(f"args must be a numpy.ndarray, not {type(args).__name__}")
        if not isinstance(out, numpy.ndarray):
            raise TypeError(f"out must be a numpy.ndarray, not {type(out).__name__}")
        if args.ndim < 1 or out.ndim < 1:
            raise ValueError("args and out must have at least one dimension")
        cdef int64_t n = args.shape[0]
        if out.shape[0] != n:
            raise ValueError(f"out has {out.shape[0]} rows but args has {n}")
        if not out.flags.writeable:
            raise ValueError("out must be writeable")
        if k.arg_dtype is not None and args.dtype != k.arg_dtype:
            raise TypeError(f"kernel expects args of dtype {k.arg_dtype}, got {args.dtype}")
        if k.out_dtype is not None and out.dtype != k.out_dtype:
            raise TypeError(f"kernel expects out of dtype {k.out_dtype}, got {out.dtype}")
        if k.abi == "range":
            if not (args.flags.c_contiguous and out.flags.c_contiguous):
                raise ValueError("the range ABI needs C-contiguous args and out")
        elif n > 0:
            if args.ndim > 1 and not args[0].flags.c_contiguous:
                raise ValueError("each row of args must be C-contiguous")
            if out.ndim > 1 and not out[0].flags.c_contiguous:
                raise ValueError("each row of out must be C-contiguous")
        if status is None:
            status = numpy.empty(n, dtype=numpy.int32)
        elif (not isinstance(status, numpy.ndarray) or status.dtype != numpy.int32
              or status.shape != (n,) or not status.flags.c_contiguous
              or not status.flags.writeable):
            raise ValueError(f"status must be a writeable C-contiguous int32 array of shape ({n},)")
        cdef NativeTask task = NativeTask.__new__(NativeTask)
        task.generation = _fork_generation
        task.n = n
        task.args = args
        task.out = out
        task.status_array = status
        task.kernel_obj = k
        pq_batch_init(&task.c_batch, <void *>k.address,
                      PQ_ABI_RANGE if k.abi == "range" else PQ_ABI_ITEM,
                      <const void *>_data_ptr(args), args.strides[0] if n > 0 else 0,
                      <void *>_data_ptr(out), out.strides[0] if n > 0 else 0,
                      <int32_t *>_data_ptr(status))
        return task

    def done(self):
        """True once every chunk ran or was cancelled."""
        return pq_batch_is_done(&self.c_batch) != 0

    def cancel(self):
        """Skip the chunks that have not started (their status becomes
        ``NativeTaskError.NOT_RUN``); running chunks finish.  ``result()``
        still waits for those."""
        pq_batch_cancel(&self.c_batch)

    def add_done_callback(self, fn):
        """Call ``fn(handle)`` once the batch is done (at once if it already is).

        Callbacks run in the native worker that completes the batch, which
        takes the GIL for them; an exception they raise is logged to the
        ``pyqueue`` logger.  Registering costs nothing on the batch's path:
        the C core calls one hook when its last chunk completes.
        """
        cdef int rc
        if self.generation != _fork_generation and not pq_batch_is_done(&self.c_batch):
            raise QueueClosed("this native batch was started before os.fork(); "
                              "it cannot complete in the child process")
        if self.callbacks is not None:   # hooked, not fired yet (we hold the GIL)
            self.callbacks.append(fn)
            return
        if self.hooked or not self.submitted or pq_batch_is_done(&self.c_batch):
            _call_callback(fn, self)
            return
        self.callbacks = [fn]
        self.hooked = True
        self.c_hook.fn = _native_done_hook
        self.c_hook.ctx = <void *>self
        Py_INCREF(self)   # the hook's reference, dropped once it has run
        rc = pq_batch_set_hook(&self.c_batch, &self.c_hook)
        if rc != PQ_OK:   # completed meanwhile: the hook will never run
            Py_DECREF(self)
            _fire_native_callbacks(self)

    def __await__(self):
        """``await handle``: the status array, or :class:`NativeTaskError`
        raised; completion wakes the loop once, and cancelling the awaiting
        coroutine does not cancel the batch (see ``Task.__await__``)."""
        if self.generation != _fork_generation and not pq_batch_is_done(&self.c_batch):
            raise QueueClosed("this native batch was started before os.fork(); "
                              "it cannot complete in the child process")
        return _await_handle(self)

    def result(self, timeout=None, *, bint raise_on_error=True):
        """Wait for the batch; return the int32 status array (0 = ok).

        Raises
        ------
        pyqueue.NativeTaskError
            If an item returned non-zero (unless ``raise_on_error=False``).
        TimeoutError
            If ``timeout`` seconds pass first.
        """
        if self.generation != _fork_generation and not pq_batch_is_done(&self.c_batch):
            raise QueueClosed("this native batch was started before os.fork(); "
                              "it cannot complete in the child process")
        if not _wait_event(&self.c_batch.done, _timeout_ns(timeout)):
            raise TimeoutError(f"native batch not done after {timeout} s")
        cdef int64_t failed = pq_batch_failed(&self.c_batch)
        if failed and raise_on_error:
            import numpy
            status = self.status_array
            index = int(numpy.flatnonzero(status)[0])
            raise NativeTaskError(index, int(status[index]), int(failed), status)
        return self.status_array


cdef void _native_done_hook(void *ctx) noexcept nogil:
    # Called once by the C core, in the thread that completed the batch
    # (a native worker, or the submitter), after done is set.
    with gil:
        _fire_native_callbacks(<NativeTask>ctx)
        Py_DECREF(<NativeTask>ctx)   # the reference taken when the hook was set


cdef void _fire_native_callbacks(NativeTask t) noexcept:
    cdef list callbacks = t.callbacks
    t.callbacks = None
    if callbacks is not None:
        for fn in callbacks:
            _call_callback(fn, t)


def run_serial(fn, args, out, *, abi=None, status=None):
    """Run a kernel over every row in the calling thread (a plain C loop with
    the GIL released, no pool): the baseline native maps are measured against.
    Returns the status array; raises NativeTaskError like ``map_native``."""
    cdef Kernel k = as_kernel(fn, abi)
    cdef NativeTask task = NativeTask._prepare(k, args, out, status)
    cdef int64_t failed
    with nogil:
        failed = pq_batch_run_range(&task.c_batch, 0, task.n)
    if failed:
        import numpy
        st = task.status_array
        index = int(numpy.flatnonzero(st)[0])
        raise NativeTaskError(index, int(st[index]), int(failed), st)
    return task.status_array


cdef int64_t _chunk_for(int64_t n, int workers, object chunksize,
                        const _NativeTunables *t) except -1:
    if chunksize is not None:
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1")
        return chunksize
    # A few hundred to a few thousand items per ring cell; enough chunks that
    # every worker gets several, so an uneven kernel still balances.
    cdef int64_t c = n // (workers * t.chunks_per_worker if workers > 0 else t.chunks_per_worker)
    if c < t.chunk_min:
        c = t.chunk_min
    if c > t.chunk_max:
        c = t.chunk_max
    return c


def cpu_count():
    """Cores this process may run on (its affinity mask), at least 1."""
    return pq_cpu_count()
