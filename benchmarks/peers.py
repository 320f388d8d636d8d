"""Adapters that run the comparison workloads on pyqueue and on each peer.

Each peer opens a *session* for a given number of workers.  A session offers
three operations, which every workload is written in terms of:

``run_each(fn, args)``
    submit one task per argument with the peer's per-task API, collect the
    results in order (W1, W3, W4, W6);
``map(fn, items)``
    the peer's best way to map a function over many items: its own chunked map
    where it has one, manual chunks otherwise (W2);
``round_trip(fn, x)``
    submit one task and wait for its result (W5).

Peers are imported only inside the child process that runs them, so an
uninstalled peer costs nothing and a broken one cannot disturb another.
"""

from __future__ import annotations

import importlib
import logging
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial

from benchmarks.workloads import apply_chunk, chunks

#: Chunks per worker used wherever a peer is given manual chunks.
CHUNKS_PER_WORKER = 4


def _flatten(lists):
    return [x for part in lists for x in part]


class FuturesSession:
    """Session over a ``concurrent.futures``-style executor.

    Parameters
    ----------
    executor : concurrent.futures.Executor
        Any object with ``submit`` returning futures and ``map(fn, it, chunksize=)``.
    workers : int
        Pool size, used to size chunks.
    native_chunks : bool
        Use ``executor.map(chunksize=...)`` for ``map``; otherwise submit manual
        chunks (``ThreadPoolExecutor`` ignores ``chunksize``).
    """

    def __init__(self, executor, workers, native_chunks):
        self.executor = executor
        self.workers = workers
        self.native_chunks = native_chunks

    def run_each(self, fn, args):
        futures = [self.executor.submit(fn, a) for a in args]
        return [f.result() for f in futures]

    def map(self, fn, items):
        n_chunks = self.workers * CHUNKS_PER_WORKER
        if self.native_chunks:
            size = max(1, len(items) // n_chunks)
            return list(self.executor.map(fn, items, chunksize=size))
        parts = chunks(items, n_chunks)
        return _flatten(self.run_each(partial(apply_chunk, fn), parts))

    def round_trip(self, fn, x):
        return self.executor.submit(fn, x).result()


class Peer:
    """One row of the comparison table.

    Attributes
    ----------
    key : str
        Command-line name (``--peers``).
    name : str
        Row label.
    modules : tuple of str
        Modules that must be importable; otherwise the row reads "not installed".
    slow : bool
        Per-task overhead in milliseconds: W1 and W3 use ``Sizes.slow_peer_tasks``, W5
        ``Sizes.slow_round_trips``.
    slow_round_trips : bool
        Round trips take milliseconds: W5 uses ``Sizes.slow_round_trips``.
    skip, quick_skip : dict
        Workload -> reason, skipped always / only with ``--quick``.
    how : str
        One line on the API used, printed under the table.
    """

    key = ""
    name = ""
    modules: tuple = ()
    slow = False
    slow_round_trips = False
    skip: dict = {}
    quick_skip: dict = {}
    how = ""

    def unavailable(self):
        """Return why this peer cannot run here, or None when it can."""
        for mod in self.modules:
            try:
                importlib.import_module(mod)
            except Exception as exc:  # noqa: BLE001 - any import failure disqualifies
                return f"not installed ({mod}: {type(exc).__name__})"
        return None

    def session(self, workers):
        """Return a context manager yielding a session with ``workers`` workers."""
        raise NotImplementedError


class Serial(Peer):
    key = "serial"
    name = "serial"
    how = "plain loop in the calling thread; W2 is `[inc(x) for x in items]`, inc(x) = x + 1"
    skip = {"W6": "would take 10 s; the ideal wall time is computed instead"}

    class _Session:
        def run_each(self, fn, args):
            return [fn(a) for a in args]

        def map(self, fn, items):
            return [fn(x) for x in items]

        def round_trip(self, fn, x):
            return fn(x)

    @contextmanager
    def session(self, workers):
        yield self._Session()


class Threads(Peer):
    key = "threads"
    name = "ThreadPoolExecutor"
    how = "submit each; W2 as manual chunks (`map` ignores chunksize for threads)"

    @contextmanager
    def session(self, workers):
        with ThreadPoolExecutor(workers) as ex:
            yield FuturesSession(ex, workers, native_chunks=False)


class Processes(Peer):
    key = "processes"
    name = "ProcessPoolExecutor"
    how = "submit each; W2 with `map(chunksize=n/(4*workers))`"
    quick_skip = {"W6": "64 worker processes skipped in --quick"}

    @contextmanager
    def session(self, workers):
        with ProcessPoolExecutor(workers) as ex:
            yield FuturesSession(ex, workers, native_chunks=True)


class MpPool(Peer):
    key = "mp-pool"
    name = "multiprocessing.Pool"
    how = "`apply_async` each; W2 with `Pool.map` (default chunksize)"
    quick_skip = {"W6": "64 worker processes skipped in --quick"}

    class _Session:
        def __init__(self, pool):
            self.pool = pool

        def run_each(self, fn, args):
            pending = [self.pool.apply_async(fn, (a,)) for a in args]
            return [p.get() for p in pending]

        def map(self, fn, items):
            return self.pool.map(fn, items)

        def round_trip(self, fn, x):
            return self.pool.apply_async(fn, (x,)).get()

    @contextmanager
    def session(self, workers):
        import multiprocessing

        pool = multiprocessing.Pool(workers)
        try:
            yield self._Session(pool)
        finally:
            pool.close()
            pool.join()


class _Joblib(Peer):
    modules = ("joblib",)
    backend = ""
    slow_round_trips = True
    how = (
        "`Parallel(...)(delayed(fn)(a) ...)` in one `with Parallel` block (joblib "
        "batches automatically); W2 as manual chunks (auto batching manages ~30k items/s)"
    )

    class _Session:
        def __init__(self, parallel):
            self.parallel = parallel

        def run_each(self, fn, args):
            from joblib import delayed

            return self.parallel(delayed(fn)(a) for a in args)

        def map(self, fn, items):
            parts = chunks(items, self.parallel.n_jobs * CHUNKS_PER_WORKER)
            return _flatten(self.run_each(partial(apply_chunk, fn), parts))

        def round_trip(self, fn, x):
            from joblib import delayed

            return self.parallel([delayed(fn)(x)])[0]

    @contextmanager
    def session(self, workers):
        from joblib import Parallel

        with Parallel(n_jobs=workers, backend=self.backend) as parallel:
            yield self._Session(parallel)


class JoblibThreads(_Joblib):
    key = "joblib-threads"
    name = "joblib threading"
    backend = "threading"


class JoblibLoky(_Joblib):
    key = "joblib-loky"
    name = "joblib loky"
    backend = "loky"
    quick_skip = {"W6": "64 worker processes skipped in --quick"}


class Loky(Peer):
    key = "loky"
    name = "loky"
    modules = ("loky",)
    how = "`get_reusable_executor`, submit each; W2 with `map(chunksize=...)`"
    quick_skip = {"W6": "64 worker processes skipped in --quick"}

    @contextmanager
    def session(self, workers):
        from loky import get_reusable_executor

        ex = get_reusable_executor(max_workers=workers)
        try:
            yield FuturesSession(ex, workers, native_chunks=True)
        finally:
            ex.shutdown(wait=True)


class DaskLocal(Peer):
    key = "dask-local"
    name = "Dask LocalCluster"
    modules = ("dask", "distributed")
    slow = True
    how = (
        "`Client.submit` each (pure=False) on a process LocalCluster; W2 as manual "
        "chunks; W6 as 2 processes x 32 threads"
    )

    class _Session:
        def __init__(self, client, workers):
            self.client = client
            self.workers = workers

        def run_each(self, fn, args):
            futures = [self.client.submit(fn, a, pure=False) for a in args]
            return self.client.gather(futures)

        def map(self, fn, items):
            parts = chunks(items, self.workers * CHUNKS_PER_WORKER)
            return _flatten(self.run_each(partial(apply_chunk, fn), parts))

        def round_trip(self, fn, x):
            return self.client.submit(fn, x, pure=False).result()

    @contextmanager
    def session(self, workers):
        import os

        from distributed import Client, LocalCluster

        processes = min(workers, os.cpu_count() or 1)
        threads = -(-workers // processes)
        with (
            LocalCluster(
                n_workers=processes,
                threads_per_worker=threads,
                processes=True,
                dashboard_address=None,
                silence_logs=logging.ERROR,
            ) as cluster,
            Client(cluster) as client,
        ):
            yield self._Session(client, workers)


class DaskThreads(Peer):
    key = "dask-threads"
    name = "Dask threads"
    modules = ("dask",)
    slow = True
    how = "`dask.delayed` per task, `dask.compute(scheduler='threads')` on a reused pool"

    class _Session:
        def __init__(self, pool, workers):
            self.pool = pool
            self.workers = workers

        def _compute(self, tasks):
            import dask

            return list(dask.compute(*tasks, scheduler="threads", pool=self.pool))

        def run_each(self, fn, args):
            import dask

            return self._compute([dask.delayed(fn, pure=False)(a) for a in args])

        def map(self, fn, items):
            parts = chunks(items, self.workers * CHUNKS_PER_WORKER)
            return _flatten(self.run_each(partial(apply_chunk, fn), parts))

        def round_trip(self, fn, x):
            return self.run_each(fn, [x])[0]

    @contextmanager
    def session(self, workers):
        with ThreadPoolExecutor(workers) as pool:
            yield self._Session(pool, workers)


class Ray(Peer):
    key = "ray"
    name = "Ray"
    modules = ("ray",)
    slow = True
    how = "`@ray.remote` task each, `ray.get` of the list; W2 as manual chunks"
    quick_skip = {"W6": "64 Ray worker processes skipped in --quick"}

    class _Session:
        def __init__(self, workers):
            self.workers = workers
            self.remotes = {}

        def _remote(self, fn):
            import ray

            if fn not in self.remotes:
                self.remotes[fn] = ray.remote(fn)
            return self.remotes[fn]

        def run_each(self, fn, args):
            import ray

            remote = self._remote(fn)
            return ray.get([remote.remote(a) for a in args])

        def map(self, fn, items):
            import ray

            remote = self._remote(apply_chunk)
            parts = chunks(items, self.workers * CHUNKS_PER_WORKER)
            return _flatten(ray.get([remote.remote(fn, p) for p in parts]))

        def round_trip(self, fn, x):
            import ray

            return ray.get(self._remote(fn).remote(x))

    @contextmanager
    def session(self, workers):
        import ray

        ray.init(
            num_cpus=workers,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.ERROR,
            configure_logging=False,
        )
        try:
            yield self._Session(workers)
        finally:
            ray.shutdown()


def _pyqueue_unavailable():
    try:
        import pyqueue
    except Exception as exc:  # noqa: BLE001 - a half-built tree fails in many ways
        return f"not built ({type(exc).__name__}: {exc})"
    if not hasattr(pyqueue, "TaskQueue"):
        return "not built (pyqueue.TaskQueue missing)"
    return None


class PyQueue(Peer):
    key = "pyqueue"
    name = "pyqueue"
    how = "`TaskQueue.submit` each + `result()`; W2 with `TaskQueue.map` per item"

    def unavailable(self):
        return _pyqueue_unavailable()

    class _Session:
        def __init__(self, queue):
            self.queue = queue

        def run_each(self, fn, args):
            tasks = [self.queue.submit(fn, a) for a in args]
            return [t.result() for t in tasks]

        def map(self, fn, items):
            return list(self.queue.map(fn, items))

        def round_trip(self, fn, x):
            return self.queue.submit(fn, x).result()

    @contextmanager
    def session(self, workers):
        import pyqueue

        with pyqueue.TaskQueue(workers=workers) as queue:
            yield self._Session(queue)


class PyQueueExecutor(Peer):
    key = "pyqueue-executor"
    name = "pyqueue Executor"
    how = "`pyqueue.Executor.submit` each; W2 with `Executor.map(chunksize=...)`"

    def unavailable(self):
        return _pyqueue_unavailable()

    @contextmanager
    def session(self, workers):
        import pyqueue

        with pyqueue.Executor(max_workers=workers) as ex:
            yield FuturesSession(ex, workers, native_chunks=True)


class PyQueueCluster(Peer):
    """``pyqueue.cluster.LocalCluster(nodes=2)``: a coordinator and 2 node processes.

    Each node gets ``ceil(workers / 2)`` task slots, so W1-W5 run on 2 slots in
    all and W6 on 64.  Tasks go through ``cluster.client.submit(fn, *args)``.
    """

    key = "pyqueue-cluster"
    name = "pyqueue cluster"
    how = (
        "`LocalCluster(nodes=2, workers=ceil(w/2), store=<SQLite file>)`, `client.submit` each; "
        "W2 as manual chunks"
    )

    def unavailable(self):
        if _pyqueue_unavailable():
            return "not available (pyqueue is not built)"
        try:
            from pyqueue.cluster import LocalCluster  # noqa: F401
        except Exception as exc:  # noqa: BLE001
            return f"not available ({type(exc).__name__}: {exc})"
        return None

    class _Session:
        def __init__(self, client, workers):
            self.client = client
            self.workers = workers

        def run_each(self, fn, args):
            tasks = [self.client.submit(fn, a) for a in args]
            return [t.result() for t in tasks]

        def map(self, fn, items):
            parts = chunks(items, self.workers * CHUNKS_PER_WORKER)
            return _flatten(self.run_each(partial(apply_chunk, fn), parts))

        def round_trip(self, fn, x):
            return self.client.submit(fn, x).result()

    @contextmanager
    def session(self, workers):
        import tempfile

        from pyqueue.cluster import LocalCluster

        # Durable: every state change is committed to SQLite before it is
        # acknowledged, as a production coordinator would run.
        with (
            tempfile.TemporaryDirectory() as tmp,
            LocalCluster(nodes=2, workers=-(-workers // 2), store=f"{tmp}/bench.db") as cluster,
        ):
            yield self._Session(cluster.client, workers)


#: Every row, in the table's order.
PEERS = {
    p.key: p
    for p in (
        Serial(),
        Threads(),
        Processes(),
        MpPool(),
        JoblibThreads(),
        JoblibLoky(),
        Loky(),
        DaskLocal(),
        DaskThreads(),
        Ray(),
        PyQueue(),
        PyQueueExecutor(),
        PyQueueCluster(),
    )
}

#: Rows that are pyqueue itself, excluded when picking "the best peer".
OURS = ("pyqueue", "pyqueue-executor", "pyqueue-cluster")
