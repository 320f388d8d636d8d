"""Leaks: no threads left after shutdown, and no references kept to a task's
function or arguments once the task is done and dropped.

Each case runs in a child interpreter.  The reference checks repeat the
operation several times, so a leak of one reference per call shows up as a
growing count; the count is polled for a short while because a worker
thread drops its last references to a task just after completing it."""

from __future__ import annotations

import pytest

REFS_PRELUDE = """
import gc, sys, time, weakref, threading
import pyqueue

class Arg:
    pass

def target(x, *rest, **kw):
    return x

def failing(x, *rest):
    local = x                     # kept alive by the traceback's frame
    raise ValueError("boom")

class Callback:
    def __call__(self, task):
        pass

def settle(pred, deadline=1.5):
    end = time.monotonic() + deadline
    while True:
        gc.collect()
        if pred() or time.monotonic() > end:
            return pred()
        time.sleep(0.01)

def check(body, repeat=5):
    fn = target
    arg = Arg()
    probe = Arg()
    watch = weakref.ref(probe)
    gc.collect()
    base_fn, base_arg = sys.getrefcount(fn), sys.getrefcount(arg)
    for _ in range(repeat):
        body(fn, arg, probe)
    del probe
    ok = settle(lambda: sys.getrefcount(fn) == base_fn
                and sys.getrefcount(arg) == base_arg and watch() is None)
    print("fn", sys.getrefcount(fn) - base_fn, "arg", sys.getrefcount(arg) - base_arg,
          "probe alive", watch() is not None)
    sys.exit(0 if ok else 1)
"""

# name -> body of ``def body(fn, arg, probe)``, run several times by check().
REF_CASES = {
    "submit_result": """
        q = pyqueue.TaskQueue(2)
        assert q.submit(fn, arg, probe).result() is arg
        q.shutdown()
    """,
    "submit_kwargs_inline_and_worker": """
        q = pyqueue.TaskQueue(2)
        tasks = [q.submit(fn, arg, key=probe) for _ in range(50)]
        assert all(t.result() is arg for t in tasks)
        del tasks
        q.shutdown()
    """,
    "submit_nowait": """
        q = pyqueue.TaskQueue(2)
        assert q.submit_nowait(fn, arg, probe).result() is arg
        q.shutdown()
    """,
    "submit_many": """
        q = pyqueue.TaskQueue(2)
        ts = q.submit_many(fn, [arg, probe] * 20)
        ts2 = q.submit_many(fn, [(arg, probe)] * 20, star=True)
        assert all(t.result() in (arg, probe) for t in ts + ts2)
        del ts, ts2
        q.shutdown()
    """,
    "map_full": """
        q = pyqueue.TaskQueue(2)
        assert list(q.map(fn, [arg] * 300, [probe] * 300)) == [arg] * 300
        assert list(q.map(fn, [probe] * 50, chunksize=7)) == [probe] * 50
        q.shutdown()
    """,
    "map_partial_then_close": """
        q = pyqueue.TaskQueue(2)
        it = q.map(fn, [arg] * 1000, [probe] * 1000, chunksize=3)
        assert next(it) is arg
        it.close()
        del it
        q.shutdown()
    """,
    "map_partial_then_drop": """
        q = pyqueue.TaskQueue(2)
        it = q.map(fn, [arg] * 1000, [probe] * 1000, chunksize=3)
        assert next(it) is arg
        del it
        q.shutdown()
    """,
    "map_exception": """
        q = pyqueue.TaskQueue(2)
        it = q.map(failing, [arg, probe] * 10, chunksize=2)
        try:
            list(it)
        except ValueError:
            pass
        else:
            raise AssertionError("no error")
        del it
        q.shutdown()
    """,
    "results_fan_in": """
        q = pyqueue.TaskQueue(2)
        tasks = [q.submit(fn, arg, probe) for _ in range(30)]
        got = [t.result() for t in q.results(tasks)]
        assert got == [arg] * 30
        got = list(q.results(tasks, timeout=5))
        del tasks, got
        q.shutdown()
    """,
    "task_exception": """
        q = pyqueue.TaskQueue(2)
        t = q.submit(failing, arg, probe)
        try:
            t.result()
        except ValueError:
            pass
        assert isinstance(t.exception(), ValueError)
        del t
        q.shutdown()
    """,
    "cancel_pending": """
        q = pyqueue.TaskQueue(1)
        gate = threading.Event()
        q.submit(gate.wait, 5)
        ts = [q.submit(fn, arg, probe) for _ in range(10)]
        assert all(t.cancel() for t in ts)
        gate.set()
        for t in ts:
            try:
                t.result()
            except pyqueue.CancelledError:
                pass
        del ts, t
        q.shutdown()
    """,
    "shutdown_cancel_pending": """
        q = pyqueue.TaskQueue(1)
        gate = threading.Event()
        q.submit(gate.wait, 5)
        ts = [q.submit(fn, arg, probe) for _ in range(10)]
        gate.set()
        q.shutdown(wait=True, cancel_pending=True)
        del ts
    """,
    "done_callback": """
        q = pyqueue.TaskQueue(2)
        cb = Callback()
        before = sys.getrefcount(cb)
        t = q.submit(fn, arg, probe)
        t.add_done_callback(cb)
        t.result()
        t.add_done_callback(cb)      # already done: called at once
        del t
        q.shutdown()
        assert settle(lambda: sys.getrefcount(cb) == before), "callback leaked"
    """,
    "queue_full": """
        q = pyqueue.TaskQueue(1, maxsize=2, put_timeout=0.01)
        gate, started = threading.Event(), threading.Event()
        q.submit(lambda: (started.set(), gate.wait(5)))
        started.wait(5)
        fill = [q.submit(time.sleep, 0) for _ in range(q.capacity)]
        for _ in range(3):
            try:
                q.submit_nowait(fn, arg, probe)
            except pyqueue.QueueFull:
                pass
            try:
                q.submit(fn, arg, probe)
            except pyqueue.QueueFull:
                pass
        gate.set()
        q.shutdown()
    """,
    "closed_and_bad_submit": """
        q = pyqueue.TaskQueue(1)
        q.shutdown()
        for call in (lambda: q.submit(fn, arg, probe),
                     lambda: q.submit_many(fn, [arg, probe]),
                     lambda: q.map(fn, [arg, probe])):
            try:
                call()
            except pyqueue.QueueClosed:
                pass
        q2 = pyqueue.TaskQueue(1)
        try:
            q2.submit(arg, probe)          # not callable
        except TypeError:
            pass
        q2.shutdown()
    """,
    "executor_submit_and_map": """
        with pyqueue.Executor(2) as ex:
            fs = [ex.submit(fn, arg, probe) for _ in range(20)]
            assert all(f.result() is arg for f in fs)
            assert list(ex.map(fn, [arg] * 20, [probe] * 20)) == [arg] * 20
            f = ex.submit(failing, arg, probe)
            assert isinstance(f.exception(), ValueError)
            del fs, f
    """,
    "executor_cancel_futures": """
        ex = pyqueue.Executor(1)
        gate = threading.Event()
        ex.submit(gate.wait, 5)
        fs = [ex.submit(fn, arg, probe) for _ in range(10)]
        cancelled_one = fs[-1].cancel()
        gate.set()
        ex.shutdown(wait=True, cancel_futures=True)
        assert cancelled_one and all(f.done() for f in fs)
        del fs
    """,
    "native_arrays": """
        import numpy as np
        from pyqueue import kernels
        q = pyqueue.TaskQueue(1, native_workers=2)
        a = np.arange(5000.0)
        o = np.zeros_like(a)
        st = np.zeros(5000, dtype=np.int32)
        ra, ro, rs = sys.getrefcount(a), sys.getrefcount(o), sys.getrefcount(st)
        q.map_native(kernels.add_one_f64, a, o, status=st)
        h = q.submit_native(kernels.add_one_f64, a, o, status=st)
        h.result()
        del h
        bad = np.full(10, -1.0)
        try:
            q.map_native(kernels.sqrt_or_fail_f64, bad, np.zeros(10))
        except pyqueue.NativeTaskError:
            pass
        try:
            q.map_native(kernels.add_one_f64, a, np.zeros(3))
        except ValueError:
            pass
        q.shutdown()
        assert settle(lambda: (sys.getrefcount(a), sys.getrefcount(o), sys.getrefcount(st))
                      == (ra, ro, rs)), "native arrays leaked"
        q2 = pyqueue.TaskQueue(1)
        assert q2.submit(fn, arg, probe).result() is arg
        q2.shutdown()
    """,
}


def _ref_script(body: str) -> str:
    import textwrap

    return (
        REFS_PRELUDE
        + "\ndef body(fn, arg, probe):\n"
        + textwrap.indent(textwrap.dedent(body), "    ")
        + "\ncheck(body)\n"
    )


@pytest.mark.parametrize("case", sorted(REF_CASES))
def test_no_reference_leak(run_py, clean, case):
    proc = run_py(_ref_script(REF_CASES[case]), timeout=20)
    clean(proc)
    assert proc.stdout == "fn 0 arg 0 probe alive False\n"


def test_refcount_check_detects_a_leak(run_py):
    # The harness itself can fail: a body that keeps its arguments must be
    # reported as a leak (exit code 1).
    proc = run_py(
        _ref_script("""
        keep = globals().setdefault("KEEP", [])
        keep.append((fn, arg, probe))
    """),
        timeout=20,
    )
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == "fn 5 arg 5 probe alive True\n"


def test_no_reference_leak_on_submit_to_broken_queue(run_py, clean):
    proc = run_py(
        _ref_script("""
        def bad_init():
            raise RuntimeError("init failed")
        import logging   # the failure is logged as the stdlib does: keep it off stderr
        logging.getLogger("concurrent.futures").addHandler(logging.NullHandler())
        ex = BROKEN.get("ex")
        if ex is None:
            ex = BROKEN["ex"] = pyqueue.Executor(1, initializer=bad_init)
            ex.queue._threads[0].join(5)
        for _ in range(3):
            try:
                ex.submit(fn, arg, probe)
            except pyqueue.BrokenQueue:
                pass
            try:
                ex.queue.submit(fn, arg, probe)
            except pyqueue.BrokenQueue:
                pass
    """).replace("check(body)", "BROKEN = {}\ncheck(body)"),
        timeout=20,
    )
    clean(proc)
    assert proc.stdout == "fn 0 arg 0 probe alive False\n"


THREADS_PRELUDE = """
import os, sys, threading, time
import numpy as np
import pyqueue
from pyqueue import kernels

def os_threads():
    return len(os.listdir("/proc/self/task"))

def py_threads():
    return sorted(t.name for t in threading.enumerate())

def settle(pred, deadline=5.0):
    end = time.monotonic() + deadline
    while not pred() and time.monotonic() < end:
        time.sleep(0.01)
    return pred()

base_os, base_py = os_threads(), py_threads()
a = np.arange(20000.0)
o = np.zeros_like(a)
"""


def test_no_threads_left_after_shutdown(run_py, clean):
    proc = run_py(
        THREADS_PRELUDE
        + """
peak = 0
for round_ in range(10):
    q = pyqueue.TaskQueue(3, native_workers=3)
    assert sum(q.map(abs, range(-1000, 0))) == 500500
    q.map_native(kernels.add_one_f64, a, o)           # starts the native pool
    peak = max(peak, os_threads())
    q.shutdown()
    # shutdown(wait=True) returns once every thread, native ones included, is gone.
    # (/proc/self/task may list a joined thread for a moment: poll briefly.)
    if py_threads() != base_py or not settle(lambda: os_threads() == base_os, 2.0):
        print("round", round_, py_threads(), os_threads(), base_os)
        sys.exit(1)
print("peak", peak - base_os)
""",
        timeout=20,
    )
    clean(proc)
    assert proc.stdout == "peak 6\n"


def test_no_threads_left_after_context_manager_and_executor(run_py, clean):
    proc = run_py(
        THREADS_PRELUDE
        + """
with pyqueue.TaskQueue(2, native_workers=2) as q:
    q.map_native(kernels.add_one_f64, a, o)
    q.submit(time.sleep, 0.05)
assert py_threads() == base_py and settle(lambda: os_threads() == base_os, 2.0), (
    py_threads(), os_threads())
with pyqueue.Executor(4) as ex:
    list(ex.map(time.sleep, [0.01] * 8))
    ex.queue.map_native(kernels.add_one_f64, a, o)
assert py_threads() == base_py and settle(lambda: os_threads() == base_os, 2.0), (
    py_threads(), os_threads())
ex = pyqueue.Executor(2)
ex.submit(time.sleep, 0.05)
ex.shutdown(wait=True, cancel_futures=True)
assert py_threads() == base_py and settle(lambda: os_threads() == base_os, 2.0), (
    py_threads(), os_threads())
print("ok")
""",
        timeout=20,
    )
    clean(proc)
    assert proc.stdout == "ok\n"


def test_threads_exit_after_shutdown_wait_false(run_py, clean):
    proc = run_py(
        THREADS_PRELUDE
        + """
q = pyqueue.TaskQueue(3, native_workers=2)
q.map_native(kernels.add_one_f64, a, o)
tasks = [q.submit(time.sleep, 0.1) for _ in range(6)]
q.shutdown(wait=False)
gone = settle(lambda: py_threads() == base_py and os_threads() == base_os)
print(gone, all(t.done() for t in tasks))
""",
        timeout=20,
    )
    clean(proc)
    assert proc.stdout == "True True\n"


def test_no_threads_left_after_broken_queue(run_py, clean):
    proc = run_py(
        THREADS_PRELUDE
        + """
def bad_init():
    raise RuntimeError("init failed")
q = pyqueue.TaskQueue(3, initializer=bad_init)
gone = settle(lambda: py_threads() == base_py)
q.shutdown()
print(gone, py_threads() == base_py, settle(lambda: os_threads() == base_os, 2.0))
""",
        timeout=20,
    )
    clean(proc)
    assert proc.stdout == "True True True\n"


def test_dropped_queues_stop_their_threads(run_py, clean):
    # Five queues dropped without shutdown(), one with tasks still queued and
    # one with a started native pool: their threads drain the queued work and
    # exit, as ThreadPoolExecutor workers do for a dropped executor.
    proc = run_py(
        THREADS_PRELUDE
        + """
gate = threading.Event()
ran = []
tasks = []
for i in range(5):
    q = pyqueue.TaskQueue(4, native_workers=2)
    if i == 0:
        tasks.append(q.submit(gate.wait, 5))
        tasks += [q.submit(ran.append, k) for k in range(20)]
    if i == 1:
        q.map_native(kernels.add_one_f64, a, o)
    assert sum(q.map(abs, range(-100, 0))) == 5050
    del q
gate.set()
gone = settle(lambda: py_threads() == base_py and os_threads() == base_os)
print(gone, len(threading.enumerate()), sorted(ran) == list(range(20)),
      all(t.done() for t in tasks))
""",
        timeout=20,
    )
    clean(proc)
    assert proc.stdout == "True 1 True True\n"


def test_dropped_executor_and_queue_freed_by_its_own_task(run_py, clean):
    # An Executor dropped with futures pending; a queue whose last reference is
    # held by one of its own tasks (freed in a lane thread); a queue caught in
    # a reference cycle (freed by the cyclic GC).
    proc = run_py(
        THREADS_PRELUDE
        + """
import gc
ex = pyqueue.Executor(3)
futures = [ex.submit(pow, 2, k) for k in range(10)]
del ex
q = pyqueue.TaskQueue(2)
last = q.submit(lambda queue: queue.workers, q)
del q
q = pyqueue.TaskQueue(2)
q.me = q
del q
gc.collect()
gone = settle(lambda: py_threads() == base_py and os_threads() == base_os)
print(gone, [f.result() for f in futures][-1], last.result())
""",
        timeout=20,
    )
    clean(proc)
    assert proc.stdout == "True 512 2\n"
