"""Every exception pyqueue raises, in one place.

Each one subclasses the standard exception a user would already catch, so code
written for :mod:`concurrent.futures` or :mod:`queue` keeps working.
"""

from __future__ import annotations

import concurrent.futures
import queue

__all__ = [
    "BrokenQueue",
    "CancelledError",
    "NativeTaskError",
    "PyqueueError",
    "QueueClosed",
    "QueueFull",
]

CancelledError = concurrent.futures.CancelledError


class PyqueueError(Exception):
    """Base class for errors specific to pyqueue."""


class QueueClosed(PyqueueError, RuntimeError):
    """The queue was shut down (or created before a fork): it accepts no work."""


class QueueFull(PyqueueError, queue.Full):
    """The queue is at its bound and the caller asked not to wait (or to wait less)."""


class BrokenQueue(PyqueueError, concurrent.futures.BrokenExecutor):
    """A worker initializer failed: the queue accepts no more work and pending
    tasks fail with this error."""


class NativeTaskError(PyqueueError, RuntimeError):
    """One or more items of a native batch returned a non-zero status.

    Attributes
    ----------
    index : int
        The first item (lowest index) that failed.
    code : int
        Its status code: the kernel's return value, or ``NOT_RUN`` for an item
        that was cancelled before it ran.
    failed : int
        How many items failed.
    status : numpy.ndarray
        The int32 status of every item (0 = ok).
    """

    NOT_RUN = -(2**31)

    def __init__(self, index: int, code: int, failed: int, status: object) -> None:
        self.index = index
        self.code = code
        self.failed = failed
        self.status = status
        what = "was not run" if code == self.NOT_RUN else f"returned {code}"
        super().__init__(
            f"native task at index {index} {what} ({failed} item(s) failed in total)"
        )

    def __reduce__(self):  # keep pickling (e.g. across processes) working
        return (type(self), (self.index, self.code, self.failed, self.status))
