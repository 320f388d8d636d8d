"""Task functions for the cluster tests, importable by reference on the nodes.

Every function records each execution (task id, attempt, pid) when
PYQ_EXEC_LOG names a directory, so tests can count duplicate executions.
"""

from __future__ import annotations

import os
import signal
import time

from pyqueue.cluster import current_task


def _record() -> None:
    d = os.environ.get("PYQ_EXEC_LOG")
    ctx = current_task()
    if not d or ctx is None:
        return
    line = f"{ctx.task_id} {ctx.attempt} {os.getpid()}\n".encode()
    fd = os.open(
        os.path.join(d, f"{os.getpid()}.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600
    )
    try:
        os.write(fd, line)  # one small O_APPEND write: lines never interleave
    finally:
        os.close(fd)


def square_plus(x: int, salt: int) -> int:
    _record()
    return x * x + salt


def slow(x: int, delay: float) -> int:
    _record()
    time.sleep(delay)
    return x


def poison() -> None:
    _record()
    os.kill(os.getpid(), signal.SIGKILL)


def boom(msg: str) -> None:
    _record()
    raise ValueError(msg)


def fail_until(attempt_ok: int) -> int:
    """Raise until the attempt number reaches ``attempt_ok``."""
    _record()
    ctx = current_task()
    assert ctx is not None
    if ctx.attempt < attempt_ok:
        raise RuntimeError(f"attempt {ctx.attempt} fails")
    return ctx.attempt


def context() -> tuple[str, int]:
    ctx = current_task()
    assert ctx is not None
    return ctx.task_id, ctx.attempt


def pid_after(delay: float) -> int:
    _record()
    time.sleep(delay)
    return os.getpid()


def spin(seconds: float) -> int:
    """Pure-Python CPU work that holds the GIL for ``seconds``."""
    _record()
    end = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < end:
        n += 1
    return n


def wait_file(path: str, timeout: float = 30.0) -> str:
    """Finish only once ``path`` exists (the test creates it): ordering by event."""
    _record()
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(path)
        time.sleep(0.005)
    return path


def echo(data: bytes) -> bytes:
    """Return the argument: large arguments and large results in one task."""
    _record()
    return data


def make_bytes(n: int) -> bytes:
    """A result of ``n`` bytes from a tiny argument."""
    _record()
    return bytes(n)


def spin_until_cancelled(started_path: str, saw_path: str, timeout: float = 30.0) -> str:
    """Mark that it started, then loop in Python code until TaskCancelled
    arrives (recorded in ``saw_path`` and re-raised) or ``timeout``."""
    from pyqueue.errors import TaskCancelled

    _record()
    with open(started_path, "w"):
        pass
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            time.sleep(0.005)
    except TaskCancelled:
        with open(saw_path, "w"):
            pass
        raise
    return "not cancelled"


def exit_now(code: int) -> None:
    """A poison task that ends its node process with ``os._exit(code)``."""
    _record()
    os._exit(code)


def loop_forever() -> None:
    """A task that never returns (and never raises)."""
    _record()
    while True:
        time.sleep(0.01)


def noop(x: int) -> int:
    """No work and no record: for long runs where only the queue's cost matters."""
    return x


def boom_big(n: int) -> None:
    """Raise an exception whose message is ``n`` characters long."""
    raise ValueError("x" * n)


def started_then_wait(started_path: str, gate_path: str, timeout: float = 30.0) -> bool:
    """Mark that it started, then return True once ``gate_path`` exists."""
    with open(started_path, "w"):
        pass
    deadline = time.monotonic() + timeout
    while not os.path.exists(gate_path):
        if time.monotonic() > deadline:
            raise TimeoutError(gate_path)
        time.sleep(0.005)
    return True


def started_at() -> float:
    """The wall-clock time the task started."""
    _record()
    return time.time()


def wait_for_file(path: str, timeout: float) -> bool:
    """Hold a slot until ``path`` exists (the test's gate), at most ``timeout``."""
    _record()
    end = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > end:
            return False
        time.sleep(0.005)
    return True


def _mark(path: str) -> None:
    with open(path, "a") as fh:
        fh.write("x")


def spin_with_finally(finally_path: str, budget: float = 60.0) -> str:
    """A pure-Python loop (until TaskTimeout, or ``budget`` s); marks ``finally_path``."""
    _record()
    end = time.monotonic() + budget
    try:
        n = 0
        while time.monotonic() < end:
            n += 1
        return "never interrupted"
    finally:
        _mark(finally_path)


def sleep_in_c_holding_the_gil(seconds: int) -> str:
    """libc sleep() called through PyDLL, which keeps the GIL: no thread of
    this process runs Python code until it returns."""
    import ctypes

    _record()
    ctypes.PyDLL(None).sleep(seconds)
    return "slept"


def sleep_releasing_the_gil(seconds: float) -> str:
    """One long time.sleep: TaskTimeout cannot reach it until it returns."""
    _record()
    time.sleep(seconds)
    return "slept"


def done_once(x: int, done_dir: str) -> int:
    """Record that task x completed (one file per task id; a second completion shows)."""
    ctx = current_task()
    assert ctx is not None
    with open(os.path.join(done_dir, ctx.task_id), "a") as fh:
        fh.write(f"{x}\n")
    return x * 10


def die_unless(path: str) -> str:
    """Kills its node (a loss) until ``path`` exists: a task to dead-letter,
    then requeue and see complete once the cause is gone."""
    _record()
    if not os.path.exists(path):
        os.kill(os.getpid(), signal.SIGKILL)
    return "recovered"
