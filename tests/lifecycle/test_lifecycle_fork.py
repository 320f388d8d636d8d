"""``os.fork()`` after a queue started: the child gets a clear error from the
old queue, can build a new one, and never hangs; the parent keeps working.

Each test runs in a child interpreter (the "parent" below), which forks a
grandchild.  The parent waits for the grandchild with a deadline by polling
``waitpid`` and kills it if it hangs."""

from __future__ import annotations

# Shared by the scripts: wait for a forked pid with a deadline.
WAIT_HELPER = """
import os, signal, time, warnings
# Forking a process with threads is what these tests are about: 3.12+ warns
# about it (DeprecationWarning on stderr), which would fail every check of an
# empty stderr for a reason the test has chosen.
warnings.filterwarnings(
    "ignore", message=r"This process \\(pid=\\d+\\) is multi-threaded", category=DeprecationWarning
)
def wait_child(pid, deadline_s):
    end = time.monotonic() + deadline_s
    while True:
        got, status = os.waitpid(pid, os.WNOHANG)
        if got:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > end:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return "hang"
        time.sleep(0.01)
"""


def test_fork_child_old_queue_closed_new_queue_works(run_py, clean):
    proc = run_py(
        WAIT_HELPER
        + """
import sys
import numpy as np
import pyqueue
from pyqueue import kernels

q = pyqueue.TaskQueue(2, native_workers=2)
assert q.submit(pow, 2, 5).result() == 32
a = np.arange(1000.0)
o = np.zeros_like(a)
q.map_native(kernels.add_one_f64, a, o)          # the native pool is started too
assert list(q.map(abs, range(-5, 0))) == [5, 4, 3, 2, 1]

sys.stdout.flush()
pid = os.fork()
if pid == 0:
    code = 0
    def expect_closed(bit, fn):
        global code
        try:
            fn()
        except pyqueue.QueueClosed as exc:
            msg = str(exc)
            if "fork" not in msg:
                print("unclear message:", msg, flush=True)
                code |= bit
        except BaseException as exc:
            print("wrong exception", bit, type(exc).__name__, exc, flush=True)
            code |= bit
        else:
            print("no error", bit, flush=True)
            code |= bit
    expect_closed(1, lambda: q.submit(pow, 2, 3))
    expect_closed(2, lambda: q.submit_many(abs, [1, 2]))
    expect_closed(4, lambda: q.map(abs, [1, 2]))
    expect_closed(8, lambda: q.map_native(kernels.add_one_f64, a, o))
    expect_closed(16, lambda: q.submit_native(kernels.add_one_f64, a, o))
    if not q.closed:
        code |= 32
    # A new queue in the child works, Python and native lanes alike.
    q2 = pyqueue.TaskQueue(2, native_workers=2)
    if q2.submit(pow, 3, 2).result() != 9:
        code |= 64
    if list(q2.map(abs, range(-300, 0))) != list(range(300, 0, -1)):
        code |= 64
    o2 = np.zeros_like(a)
    q2.map_native(kernels.add_one_f64, a, o2)
    if not (o2 == a + 1).all():
        code |= 64
    q2.shutdown()
    q.shutdown()           # shutting the stale queue down is harmless
    os._exit(code)

status = wait_child(pid, 10)
print("child", status)
# The parent's queue keeps working after the fork.
print("parent", q.submit(pow, 2, 6).result(), sum(q.map(abs, range(-100, 0))))
o3 = np.zeros_like(a)
q.map_native(kernels.add_one_f64, a, o3)
print("parent native", bool((o3 == a + 1).all()))
q.shutdown()
""",
        timeout=20,
    )
    clean(proc)
    assert proc.stdout.splitlines() == ["child 0", "parent 64 5050", "parent native True"]


def test_fork_during_running_work_child_exits_normally(run_py, clean):
    # Fork while Python tasks and a native batch are running in the parent.
    # The grandchild builds a new queue, leaves it unclosed and exits through
    # the normal interpreter exit (exit hooks included): no hang.
    proc = run_py(
        WAIT_HELPER
        + """
import sys, threading, time
import numpy as np
import pyqueue
from pyqueue import kernels

q = pyqueue.TaskQueue(2, native_workers=2)
started = threading.Event()
def busy():
    started.set()
    time.sleep(0.5)
    return "busy"
tasks = [q.submit(busy) for _ in range(2)] + [q.submit(pow, 2, i) for i in range(50)]
args = np.full(2000, 5e4)
out = np.zeros_like(args)
handle = q.submit_native(kernels.spin_f64, args, out)
started.wait(5)
sys.stdout.flush()
pid = os.fork()
if pid == 0:
    q2 = pyqueue.TaskQueue(2, native_workers=1)
    for i in range(5):
        q2.submit(sys.stdout.write, f"grandchild task {i}\\n")   # one write per line
    small = np.arange(100.0)
    small_out = np.zeros_like(small)
    q2.map_native(kernels.add_one_f64, small, small_out)
    # One write, not print's two: the tasks above write from worker threads.
    sys.stdout.write(f"grandchild native {bool((small_out == small + 1).all())}\\n")
    sys.stdout.flush()
    sys.exit(7)          # normal exit, with q2 never shut down

status = wait_child(pid, 10)
print("child", status)
print("parent", [t.result() for t in tasks[:2]], tasks[-1].result())
handle.result()
print("parent native", bool((out > 0).all()))
""",
        timeout=20,
    )
    clean(proc)
    lines = proc.stdout.splitlines()
    assert lines[-3:] == [
        "child 7",
        "parent ['busy', 'busy'] 562949953421312",
        "parent native True",
    ]
    body = lines[:-3]
    assert "grandchild native True" in body
    assert sorted(x for x in body if x.startswith("grandchild task")) == [
        f"grandchild task {i}" for i in range(5)
    ]


def test_fork_repeatedly_no_hang(run_py, clean):
    # Many forks in a row while the parent's lane threads are busy: each child
    # creates and uses a queue, then exits; none hangs (e.g. on a lock that a
    # parent thread held at the moment of the fork).
    proc = run_py(
        WAIT_HELPER
        + """
import sys
import pyqueue

q = pyqueue.TaskQueue(2)
results = []
statuses = []
for round_ in range(15):
    feed = [q.submit(pow, 2, i) for i in range(500)]
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        q2 = pyqueue.TaskQueue(1)
        ok = q2.submit(sum, range(10)).result() == 45
        q2.shutdown()
        os._exit(0 if ok else 1)
    statuses.append(wait_child(pid, 5))
    results.append(sum(t.result() for t in feed) == 2**500 - 1)
print(statuses == [0] * 15, all(results))
q.shutdown()
""",
        timeout=20,
    )
    clean(proc)
    assert proc.stdout == "True True\n"


def test_fork_child_waiting_on_parent_task_gets_error_not_hang(run_py, clean):
    proc = run_py(
        WAIT_HELPER
        + """
import sys, threading, time
import pyqueue

q = pyqueue.TaskQueue(1)
started = threading.Event()
def blocker():
    started.set()
    time.sleep(1.0)
    return "parent result"
running = q.submit(blocker)
started.wait(5)
sys.stdout.flush()
pid = os.fork()
if pid == 0:
    import asyncio
    async def wait_async():
        return await running
    code = 4
    try:
        running.result(timeout=1.5)    # a bound instead of a real hang
    except pyqueue.QueueClosed:
        code = 0
    except TimeoutError:
        code = 2                       # would have hung without the timeout
    except BaseException:
        code = 3
    if code == 0:                      # `await` must say so too, not wait forever
        try:
            asyncio.run(asyncio.wait_for(wait_async(), 1.5))
            code = 5
        except pyqueue.QueueClosed:
            pass
        except BaseException:
            code = 6
    os._exit(code)
print("child", wait_child(pid, 10))
print("parent", running.result())
""",
        timeout=20,
    )
    clean(proc)
    assert proc.stdout.splitlines() == ["child 0", "parent parent result"]


def test_fork_child_never_runs_or_waits_on_parent_work(run_py, clean):
    # Found in review: after shutdown(wait=False) the queue left the fork
    # hook's list, so a child ran the parent's queued task itself (it ran
    # twice) and waited forever on the running one; results() ran parent
    # tasks inline; and a native batch running at fork hung the child when
    # its handle was dropped. Each must now raise QueueClosed, or be dropped.
    proc = run_py(
        WAIT_HELPER
        + """
import sys, threading, time
import numpy as np
import pyqueue
from pyqueue import kernels

q = pyqueue.TaskQueue(1, native_workers=1)
gate = threading.Event()
running = q.submit(gate.wait, 10)
time.sleep(0.05)
queued = q.submit(print, "queued task ran in", os.getpid(), flush=True)
batch = q.submit_native(kernels.spin_f64, np.full(4000, 50000.0), np.zeros(4000), chunksize=1)
q.shutdown(wait=False)
sys.stdout.flush()
pid = os.fork()
if pid == 0:
    code = 0
    for bit, call in ((1, lambda: queued.result()), (2, lambda: running.result(timeout=1)),
                      (4, lambda: list(q.results([queued]))), (8, lambda: batch.result())):
        try:
            call()
            code |= bit
        except pyqueue.QueueClosed:
            pass
    del batch              # dropping the handle must not wait for the parent's workers
    os._exit(code)
status = wait_child(pid, 10)
gate.set()
queued.result()
batch.cancel()
print("child", status, flush=True)
""",
        timeout=30,
    )
    clean(proc)
    lines = proc.stdout.splitlines()
    assert lines[-1] == "child 0"
    # The queued task ran exactly once, in the parent.
    assert len([ln for ln in lines if ln.startswith("queued task ran in")]) == 1
