"""pyqueue: a task queue for Python whose hot path is native.

Quick use::

    import pyqueue
    with pyqueue.TaskQueue() as q:
        t = q.submit(pow, 2, 10)
        print(t.result())
"""

try:
    from pyqueue._native import Kernel, NativeTask, Task, cpu_count, kernel
except ImportError as exc:  # an unbuilt source tree
    raise ImportError(
        "pyqueue's native extension (pyqueue._native) is not built. Install the "
        "package with `pip install .`, or build it in place with `make build` "
        "(python setup.py build_ext --inplace)."
    ) from exc

from pyqueue import kernels
from pyqueue._aio import Handle
from pyqueue._executor import Executor, ThreadPoolExecutor
from pyqueue._queue import TaskQueue
from pyqueue._stats import EngineStats
from pyqueue._tunables import Tunables
from pyqueue.errors import (
    AsyncCancelledError,
    BrokenQueue,
    CancelledError,
    NativeTaskError,
    PyqueueError,
    QueueClosed,
    QueueFull,
)

__version__ = "0.1.0"

__all__ = [
    "AsyncCancelledError",
    "BrokenQueue",
    "CancelledError",
    "EngineStats",
    "Executor",
    "Handle",
    "Kernel",
    "NativeTask",
    "NativeTaskError",
    "PyqueueError",
    "QueueClosed",
    "QueueFull",
    "Task",
    "TaskQueue",
    "ThreadPoolExecutor",
    "Tunables",
    "__version__",
    "cpu_count",
    "kernel",
    "kernels",
]
