"""pyqueue.Executor lifecycle: the with-block waits, cancel_futures cancels
queued futures, and an initializer failure breaks the executor the way the
stdlib's does (BrokenExecutor)."""

from __future__ import annotations


def test_with_executor_exit_waits_for_all_futures(run_py, clean):
    proc = run_py(
        """
        import threading, time
        import pyqueue
        done = []
        def work(i):
            time.sleep(0.05)
            done.append(i)
            return i * i
        with pyqueue.Executor(max_workers=2) as ex:
            fs = [ex.submit(work, i) for i in range(12)]      # ~0.3 s on 2 workers
            pending_inside = sum(not f.done() for f in fs)
        # __exit__ is shutdown(wait=True): everything ran, threads are gone.
        print(pending_inside > 0, sorted(done) == list(range(12)),
              [f.result(timeout=0) for f in fs] == [i * i for i in range(12)],
              [t.name for t in threading.enumerate()] == ["MainThread"])
        try:
            ex.submit(work, 0)
        except pyqueue.QueueClosed as exc:
            print("closed", isinstance(exc, RuntimeError))
        """
    )
    clean(proc)
    assert proc.stdout.splitlines() == ["True True True True", "closed True"]


def test_shutdown_cancel_futures_cancels_queued_futures(run_py, clean):
    proc = run_py(
        """
        import concurrent.futures as cf
        import threading, time
        import pyqueue
        ex = pyqueue.Executor(max_workers=1)
        started, gate = threading.Event(), threading.Event()
        def hold():
            started.set()
            gate.wait(5)
            return "held"
        running = ex.submit(hold)
        started.wait(5)
        ran = []
        queued = [ex.submit(ran.append, i) for i in range(20)]
        done_cb = []
        queued[0].add_done_callback(lambda f: done_cb.append(f.cancelled()))
        threading.Timer(0.2, gate.set).start()
        ex.shutdown(wait=True, cancel_futures=True)
        print("running", running.result(timeout=0), running.cancelled())
        print("queued", all(f.cancelled() for f in queued), ran, done_cb)
        try:
            queued[1].result(timeout=0)
        except cf.CancelledError:
            print("CancelledError")
        # (cf.wait() is not asserted: like ThreadPoolExecutor's, futures
        # cancelled by shutdown stay CANCELLED, not CANCELLED_AND_NOTIFIED.)
        """
    )
    clean(proc)
    assert proc.stdout.splitlines() == [
        "running held False",
        "queued True [] [True]",
        "CancelledError",
    ]


def test_shutdown_without_cancel_runs_queued_futures(run_py, clean):
    # The counterpart: cancel_futures=False (the default) runs what is queued,
    # and shutdown(wait=False) returns before it has run.
    proc = run_py(
        """
        import threading, time
        import pyqueue
        ex = pyqueue.Executor(max_workers=1)
        gate = threading.Event()
        ex.submit(gate.wait, 5)
        fs = [ex.submit(time.sleep, 0.01) for _ in range(10)]
        ex.shutdown(wait=False)
        early = sum(f.done() for f in fs)
        gate.set()
        import concurrent.futures as cf
        d, nd = cf.wait(fs, timeout=5)
        print(early, len(d), any(f.cancelled() for f in fs))
        """
    )
    clean(proc)
    assert proc.stdout == "0 10 False\n"


def test_initializer_failure_breaks_executor(run_py, clean):
    proc = run_py(
        """
        import concurrent.futures as cf
        import threading, time
        import pyqueue
        release = threading.Event()
        def bad_init(tag):
            release.wait(5)          # fail only after the futures are queued
            raise ValueError("init failed: " + tag)
        ex = pyqueue.Executor(max_workers=2, initializer=bad_init, initargs=("x",))
        ran = []
        fs = [ex.submit(ran.append, i) for i in range(10)]
        release.set()
        d, nd = cf.wait(fs, timeout=5)
        print("settled", len(d), len(nd), ran)
        excs = [f.exception(timeout=0) for f in fs]
        print("broken", all(isinstance(e, pyqueue.BrokenQueue) for e in excs),
              all(isinstance(e, cf.BrokenExecutor) for e in excs))
        cause = excs[0].__cause__
        print("cause", type(cause).__name__, cause)
        try:
            ex.submit(print, "must not run")
        except cf.BrokenExecutor as exc:
            print("submit raises", type(exc).__name__)
        try:
            list(ex.map(abs, [1, 2]))
        except cf.BrokenExecutor as exc:
            print("map raises", type(exc).__name__)
        ex.shutdown(wait=True)
        print("threads", [t.name for t in threading.enumerate()])
        """
    )
    # As ThreadPoolExecutor does: each worker whose initializer failed logs it
    # at CRITICAL on the concurrent.futures logger (stderr, with no handler).
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("Exception in initializer:") == 2, proc.stderr
    assert "ValueError: init failed: x" in proc.stderr
    assert proc.stdout.splitlines() == [
        "settled 10 0 []",
        "broken True True",
        "cause ValueError init failed: x",
        "submit raises BrokenQueue",
        "map raises BrokenQueue",
        "threads ['MainThread']",
    ]


def test_initializer_runs_once_per_worker_and_executor_works(run_py, clean):
    # The non-broken counterpart, so the test above is not passing for a
    # queue that never runs initializers at all.
    proc = run_py(
        """
        import threading
        import pyqueue
        seen = []
        lock = threading.Lock()
        local = threading.local()
        def init(tag):
            with lock:
                seen.append(threading.current_thread().name)
            local.tag = tag
        def get_tag(_):
            return local.tag
        with pyqueue.Executor(max_workers=3, thread_name_prefix="lc",
                              initializer=init, initargs=("T",)) as ex:
            tags = set(ex.map(get_tag, range(200)))
        print(tags, len(seen), all(n.startswith("lc") for n in seen))
        """
    )
    clean(proc)
    assert proc.stdout == "{'T'} 3 True\n"


def test_executor_unclosed_at_exit_runs_queued_futures(run_py, clean):
    proc = run_py(
        """
        import threading
        import pyqueue
        ex = pyqueue.Executor(max_workers=1)
        gate = threading.Event()
        ex.submit(gate.wait, 5)
        for i in range(5):
            ex.submit(print, "future", i, flush=True)
        print("main done", flush=True)
        gate.set()
        """
    )
    clean(proc)
    assert proc.stdout.splitlines() == ["main done"] + [f"future {i}" for i in range(5)]
