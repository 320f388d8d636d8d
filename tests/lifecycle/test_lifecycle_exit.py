"""Interpreter exit with work in flight: pending tasks, unclosed queues, and
``shutdown(wait=False)``.  Each case runs in a child interpreter and asserts
its exit code and an empty stderr."""

from __future__ import annotations


def test_exit_with_pending_python_and_native_tasks(run_py, clean):
    # The queue is never shut down.  At exit the Python tasks still queued
    # must run (the exit hook drains), the native batch must complete, and
    # the interpreter must exit by itself.
    proc = run_py(
        """
        import atexit, time
        import numpy as np
        import pyqueue
        from pyqueue import kernels

        q = pyqueue.TaskQueue(2, native_workers=2)
        ran = []
        for i in range(200):
            q.submit(ran.append, i)
        slow = [q.submit(time.sleep, 0.01) for _ in range(20)]
        args = np.full(4000, 2e4)          # about 4000 * 40 us: 0.1-0.2 s of spin
        out = np.zeros_like(args)
        nt = q.submit_native(kernels.spin_f64, args, out)
        small = np.arange(1000.0)
        small_out = np.zeros_like(small)
        nt2 = q.submit_native(kernels.add_one_f64, small, small_out)
        tail = [q.submit(ran.append, 1000 + i) for i in range(50)]

        def report():
            # atexit runs after threading's exit hooks, so the queue has drained.
            print("python", sorted(ran) == list(range(200)) + list(range(1000, 1050)),
                  all(t.done() for t in slow + tail))
            print("native", nt.done(), nt2.done(), bool((out > 0).all()),
                  bool((small_out == small + 1).all()))
        atexit.register(report)
        print("leaving", flush=True)
        """,
        timeout=20,
    )
    clean(proc)
    assert proc.stdout.splitlines() == ["leaving", "python True True", "native True True True True"]


def test_exit_with_native_batch_still_waited_on_by_a_handle(run_py, clean):
    # A NativeTask handle alive at exit (module global) while its batch runs:
    # teardown must not hang or crash.
    proc = run_py(
        """
        import numpy as np
        import pyqueue
        from pyqueue import kernels
        q = pyqueue.TaskQueue(1, native_workers=2)
        args = np.full(2000, 5e4)
        out = np.zeros_like(args)
        handle = q.submit_native(kernels.spin_f64, args, out)
        print("started", handle.done() in (True, False))
        """,
        timeout=20,
    )
    clean(proc)
    assert proc.stdout == "started True\n"


def test_unclosed_queue_runs_queued_tasks_before_exit(run_py, clean):
    # No shutdown, no context manager: one worker is held by a slow task so the
    # rest are still queued when the main thread reaches the end of the script.
    proc = run_py(
        """
        import threading, time
        import pyqueue

        q = pyqueue.TaskQueue(1)
        gate = threading.Event()
        def hold():
            gate.wait(5)
            time.sleep(0.2)
            print("held", flush=True)
        q.submit(hold)
        for i in range(40):
            q.submit(print, "task", i, flush=True)
        print("queued", q.qsize() > 0, flush=True)
        gate.set()
        """,
        timeout=15,
    )
    clean(proc)
    lines = proc.stdout.splitlines()
    assert lines[0] == "queued True"
    assert lines[1] == "held"
    assert lines[2:] == [f"task {i}" for i in range(40)]


def test_unreferenced_queue_still_runs_its_tasks_before_exit(run_py, clean):
    # The queue object itself is dropped right away: its queued tasks must not
    # be lost, and exit must not hang on its threads.
    proc = run_py(
        """
        import sys, threading
        import pyqueue

        gate = threading.Event()
        def make():
            q = pyqueue.TaskQueue(2)
            q.submit(gate.wait, 10)
            q.submit(gate.wait, 10)
            for i in range(10):
                q.submit(sys.stdout.write, f"late {i}\\n")   # one write per line
        make()
        import gc; gc.collect()
        print("main done", flush=True)
        gate.set()
        """,
        timeout=15,
    )
    clean(proc)
    lines = proc.stdout.splitlines()
    assert lines[0] == "main done"
    assert sorted(lines[1:]) == sorted(f"late {i}" for i in range(10))


def test_shutdown_wait_false_returns_at_once_then_exit(run_py, clean):
    # shutdown(wait=False) does not wait for queued Python tasks, the queued
    # tasks still run (cancel_pending=False), and the interpreter exits.
    proc = run_py(
        """
        import sys, threading, time
        import pyqueue

        q = pyqueue.TaskQueue(2)
        gate = threading.Event()
        done = []
        def slow(i):
            gate.wait(5)
            time.sleep(0.05)
            done.append(i)
            sys.stdout.write(f"ran {i}\\n")      # one write per line: 2 threads print
        tasks = [q.submit(slow, i) for i in range(6)]   # 3 rounds on 2 workers
        q.shutdown(wait=False)
        # Returned while every task is still blocked: it did not wait.
        print("returned first", done == [] and not any(t.done() for t in tasks), flush=True)
        try:
            q.submit(print, "must not run")
        except pyqueue.QueueClosed:
            print("closed", flush=True)
        print("closed flag", q.closed, flush=True)
        gate.set()
        """,
        timeout=15,
    )
    clean(proc)
    lines = proc.stdout.splitlines()
    assert lines[:3] == ["returned first True", "closed", "closed flag True"]
    assert sorted(lines[3:]) == sorted(f"ran {i}" for i in range(6))


def test_shutdown_wait_false_in_context_manager_then_exit(run_py, clean):
    # shutdown(wait=False) followed by __exit__ (a second, waiting shutdown):
    # idempotent, and every task has run when the with-block ends.
    proc = run_py(
        """
        import time
        import pyqueue
        with pyqueue.TaskQueue(2) as q:
            tasks = [q.submit(time.sleep, 0.05) for _ in range(8)]
            q.shutdown(wait=False)
        print(all(t.done() for t in tasks), q.closed)
        """,
        timeout=15,
    )
    clean(proc)
    assert proc.stdout == "True True\n"


def test_shutdown_wait_false_does_not_wait_for_native_batch(run_py, clean):
    proc = run_py(
        """
        import time
        import numpy as np
        import pyqueue
        from pyqueue import kernels

        q = pyqueue.TaskQueue(1, native_workers=2)
        args = np.full(4000, 1e5)     # >= 0.2 s of spin on 2 workers (0.4-2 s here)
        out = np.zeros_like(args)
        handle = q.submit_native(kernels.spin_f64, args, out)
        time.sleep(0.05)
        t0 = time.monotonic()
        q.shutdown(wait=False)
        took = time.monotonic() - t0
        done = handle.done()
        print("took", round(took, 2), "batch done", done, flush=True)
        # Returned before the batch could finish; os._exit: do not wait for it.
        import os; os._exit(0 if (not done and took < 0.5) else 3)
        """,
        timeout=20,
    )
    clean(proc)
