"""Ctrl-C (SIGINT) while blocked in ``result()``, ``map()`` and ``map_native()``
raises KeyboardInterrupt promptly.

The child prints "ready" just before it blocks, the test sends SIGINT, and the
child catches KeyboardInterrupt, prints "interrupted" and exits 0 with an
empty stderr.  The test measures SIGINT -> "interrupted" (prompt) and
SIGINT -> exit."""

from __future__ import annotations

import subprocess
import time

import pytest

PROMPT_S = 2.0  # SIGINT -> KeyboardInterrupt seen by the child
SETTLE_S = 0.3  # let the child really block after printing "ready"


def interrupt(child, *, exit_within: float):
    child.expect_line("ready", timeout=10)
    time.sleep(SETTLE_S)
    t0 = time.monotonic()
    child.sigint()
    child.expect_line("interrupted", timeout=PROMPT_S + 3)
    prompt = time.monotonic() - t0
    out, err = child.finish(timeout=exit_within + 10)
    total = time.monotonic() - t0
    assert child.proc.returncode == 0 and err == "", (
        f"rc={child.proc.returncode}\nstdout:\n{out}\nstderr:\n{err}"
    )
    assert prompt < PROMPT_S, f"KeyboardInterrupt took {prompt:.2f} s"
    assert total < exit_within, f"the child exited {total:.2f} s after SIGINT"
    return out


def test_ctrl_c_in_result_of_task_running_on_a_worker(spawn_child):
    # The task "sleeps 30 s" (an Event wait, so the child can end it after the
    # interrupt and exit cleanly); result() waits on a worker's task.
    child = spawn_child(
        """
        import threading
        import pyqueue
        q = pyqueue.TaskQueue(2)
        started, stop = threading.Event(), threading.Event()
        def sleeper():
            started.set()
            stop.wait(30)
            return "woke"
        t = q.submit(sleeper)
        started.wait(5)
        print("ready", flush=True)
        try:
            t.result()
            print("returned", flush=True)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
        stop.set()
        print("task", t.result(timeout=5), flush=True)
        q.shutdown()
        """
    )
    out = interrupt(child, exit_within=5)
    assert out.splitlines() == ["ready", "interrupted", "task woke"]


def test_ctrl_c_in_result_with_timeout(spawn_child):
    child = spawn_child(
        """
        import threading
        import pyqueue
        q = pyqueue.TaskQueue(1)
        started, stop = threading.Event(), threading.Event()
        def sleeper():
            started.set()
            stop.wait(30)
        t = q.submit(sleeper)
        started.wait(5)
        print("ready", flush=True)
        try:
            t.result(timeout=30)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
        stop.set()
        q.shutdown()
        """
    )
    interrupt(child, exit_within=5)


def test_ctrl_c_in_result_of_task_run_inline(spawn_child):
    # The only worker is busy, so result() runs the pending task in the main
    # thread (caller-runs): the 30 s sleep itself is interrupted.
    child = spawn_child(
        """
        import threading, time
        import pyqueue
        q = pyqueue.TaskQueue(1)
        started, stop = threading.Event(), threading.Event()
        def hold():
            started.set()
            stop.wait(30)
        q.submit(hold)
        started.wait(5)
        t = q.submit(time.sleep, 30)
        print("ready", flush=True)
        try:
            t.result()
        except KeyboardInterrupt:
            print("interrupted", flush=True)
        print("task", t.done(), type(t.exception(timeout=1)).__name__, flush=True)
        stop.set()
        q.shutdown()
        """
    )
    out = interrupt(child, exit_within=5)
    assert out.splitlines()[-1] == "task True KeyboardInterrupt"


def test_ctrl_c_in_map_over_slow_tasks(spawn_child):
    child = spawn_child(
        """
        import threading
        import pyqueue
        q = pyqueue.TaskQueue(2)
        stop = threading.Event()
        def slow(x):
            stop.wait(30)
            return x
        print("ready", flush=True)
        try:
            list(q.map(slow, range(100)))
        except KeyboardInterrupt:
            print("interrupted", flush=True)
        stop.set()
        q.shutdown()
        """
    )
    interrupt(child, exit_within=5)


def test_ctrl_c_in_results_fan_in(spawn_child):
    child = spawn_child(
        """
        import threading
        import pyqueue
        q = pyqueue.TaskQueue(2)
        started, stop = threading.Event(), threading.Event()
        def slow():
            started.set()
            stop.wait(30)
        tasks = [q.submit(slow) for _ in range(2)]
        started.wait(5)
        print("ready", flush=True)
        try:
            for t in q.results(tasks):
                pass
        except KeyboardInterrupt:
            print("interrupted", flush=True)
        stop.set()
        q.shutdown()
        """
    )
    interrupt(child, exit_within=5)


def test_ctrl_c_in_executor_future_result(spawn_child):
    child = spawn_child(
        """
        import threading
        import pyqueue
        started, stop = threading.Event(), threading.Event()
        def slow():
            started.set()
            stop.wait(30)
        with pyqueue.Executor(2) as ex:
            f = ex.submit(slow)
            started.wait(5)
            print("ready", flush=True)
            try:
                f.result()
            except KeyboardInterrupt:
                print("interrupted", flush=True)
            stop.set()
        """
    )
    interrupt(child, exit_within=5)


def test_ctrl_c_in_map_does_not_run_the_look_ahead_at_exit(spawn_child):
    # Real sleeps of 2 s on 2 workers: the chunks already running finish within
    # 2 s; running the 4 queued look-ahead chunks as well takes ~4 s more.
    child = spawn_child(
        """
        import time
        import pyqueue
        q = pyqueue.TaskQueue(2)
        def slow(x):
            time.sleep(2)
            print("ran", x, flush=True)
            return x
        print("ready", flush=True)
        try:
            list(q.map(slow, range(100)))
        except KeyboardInterrupt:
            print("interrupted", flush=True)
        """
    )
    interrupt(child, exit_within=3.5)


def test_ctrl_c_in_map_native_is_prompt(spawn_child):
    # A long native batch (tens of seconds); after the interrupt the child
    # cancels the rest with shutdown(cancel_pending=True) and exits.
    child = spawn_child(
        """
        import numpy as np
        import pyqueue
        from pyqueue import kernels
        q = pyqueue.TaskQueue(1, native_workers=2)
        args = np.full(200000, 1e5)
        out = np.zeros_like(args)
        print("ready", flush=True)
        try:
            q.map_native(kernels.spin_f64, args, out, chunksize=256)
            print("finished?!", flush=True)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            q.shutdown(cancel_pending=True)
        print("done", flush=True)
        """
    )
    out = interrupt(child, exit_within=5)
    assert out.splitlines() == ["ready", "interrupted", "done"]


def test_ctrl_c_in_native_result_is_prompt(spawn_child):
    child = spawn_child(
        """
        import numpy as np
        import pyqueue
        from pyqueue import kernels
        q = pyqueue.TaskQueue(1, native_workers=2)
        args = np.full(200000, 1e5)
        out = np.zeros_like(args)
        handle = q.submit_native(kernels.spin_f64, args, out, chunksize=256)
        print("ready", flush=True)
        try:
            handle.result()
        except KeyboardInterrupt:
            print("interrupted", flush=True)
        q.shutdown(cancel_pending=True)
        try:
            handle.result(timeout=5)
        except pyqueue.NativeTaskError as exc:
            print("not run", exc.code == exc.NOT_RUN, exc.failed > 0, flush=True)
        """
    )
    out = interrupt(child, exit_within=5)
    assert out.splitlines()[-1] == "not run True True"


def test_ctrl_c_in_map_native_lets_the_program_exit(spawn_child):
    child = spawn_child(
        """
        import numpy as np
        import pyqueue
        from pyqueue import kernels
        q = pyqueue.TaskQueue(1, native_workers=2)
        args = np.full(200000, 1e5)        # tens of seconds of spin
        out = np.zeros_like(args)
        print("ready", flush=True)
        try:
            q.map_native(kernels.spin_f64, args, out, chunksize=256)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
        print("after", flush=True)
        """
    )
    # The bound for this case is short on purpose: the child is killed after it.
    child.expect_line("ready", timeout=10)
    time.sleep(SETTLE_S)
    t0 = time.monotonic()
    child.sigint()
    child.expect_line("interrupted", timeout=PROMPT_S + 3)
    try:
        child.proc.wait(timeout=3)
    except subprocess.TimeoutExpired:
        child.kill()
        child._join()
        pytest.fail(
            f"still running {time.monotonic() - t0:.1f} s after Ctrl-C "
            f"(stdout: {''.join(child.out)!r})"
        )
    child._join()
    assert child.proc.returncode == 0 and "".join(child.err) == ""
