"""Every exception pyqueue raises, in one place.

Each one subclasses the standard exception a user would already catch, so code
written for :mod:`concurrent.futures` or :mod:`queue` keeps working.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue

__all__ = [
    "AsyncCancelledError",
    "AuthenticationError",
    "BrokenQueue",
    "CancelledError",
    "ClusterError",
    "FrameTooLarge",
    "KeyNotFound",
    "MalformedFrame",
    "NativeTaskError",
    "PayloadTooLarge",
    "PeerError",
    "PreambleError",
    "ProtocolError",
    "PyqueueError",
    "QueueClosed",
    "QueueFull",
    "RemoteTaskError",
    "StoreLocked",
    "TaskCancelled",
    "TaskDead",
    "TaskLost",
    "TaskTimeout",
    "UnexpectedMessage",
    "VersionError",
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


class AsyncCancelledError(concurrent.futures.CancelledError, asyncio.CancelledError):
    """Raised by ``await handle`` when the task itself was cancelled.

    It is an :class:`asyncio.CancelledError`, so an awaiting asyncio task ends
    as cancelled just as when it awaits a cancelled asyncio future, and also a
    :class:`concurrent.futures.CancelledError` (``pyqueue.CancelledError``),
    which is what ``handle.result()`` raises.  Cancelling the awaiting
    coroutine does not cancel the task (see :mod:`pyqueue._aio`).
    """


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
        super().__init__(f"native task at index {index} {what} ({failed} item(s) failed in total)")

    def __reduce__(self) -> tuple[type[NativeTaskError], tuple[int, int, int, object]]:
        # keep pickling (e.g. across processes) working
        return (type(self), (self.index, self.code, self.failed, self.status))


# -- pyqueue.cluster -------------------------------------------------------------


class ClusterError(PyqueueError):
    """Base class of every error pyqueue.cluster raises on purpose."""


class ProtocolError(ClusterError, ConnectionError):
    """A peer broke the wire protocol; the connection cannot continue.

    Attributes
    ----------
    code : str
        Short identifier sent to the peer in the ERROR frame.
    """

    code = "protocol"


class PreambleError(ProtocolError):
    """The stream did not start with the pyqueue magic bytes (garbage bytes)."""

    code = "preamble"


class VersionError(ProtocolError):
    """The magic bytes matched but the protocol version is not one we speak."""

    code = "version"


class FrameTooLarge(ProtocolError):
    """A frame header announced a body larger than the negotiated maximum."""

    code = "frame_too_large"


class MalformedFrame(ProtocolError):
    """A frame had an unknown type, an undecodable body or missing fields."""

    code = "malformed"


class AuthenticationError(ProtocolError):
    """The HMAC challenge failed: the peer does not hold the shared key."""

    code = "auth"


class UnexpectedMessage(ProtocolError):
    """A well-formed frame arrived in a state where it is not allowed."""

    code = "unexpected"


class PeerError(ProtocolError):
    """The remote peer sent us an ERROR frame and is closing the connection."""

    code = "peer"

    def __init__(self, remote_code: str, message: str) -> None:
        super().__init__(f"peer reported {remote_code}: {message}")
        self.remote_code = remote_code
        self.remote_message = message


class PayloadTooLarge(ClusterError, ValueError):
    """An argument or result is larger than the cluster's ``max_payload``.

    Raised by ``Client.submit`` at once for an argument; for a result, the
    task fails with it (a failure, not a loss) and the node carries on.
    """


class StoreLocked(ClusterError, RuntimeError):
    """Another coordinator holds the store; two on one store would run every task twice."""


class KeyNotFound(ClusterError, LookupError):
    """No shared key was given, and none is in PYQUEUE_KEY or a key file."""


class TaskDead(ClusterError, RuntimeError):
    """The task was dead-lettered (its node died under it too often)."""


class TaskLost(TaskDead):
    """The coordinator forgot an acknowledged task: it restarted without a durable store."""


class TaskCancelled(ClusterError, CancelledError):
    """The task was cancelled before it completed."""


class TaskTimeout(ClusterError, TimeoutError):
    """The task ran past its ``time_limit`` (see ``Client.submit_call``).

    Raised inside the task when its limit passes (the soft limit), and by
    ``result()`` for a task that ended with it: a failure like any other, so
    ``retries=`` applies, never a loss.
    """


class RemoteTaskError(ClusterError, RuntimeError):
    """A task raised an exception that could not be sent back as itself.

    Its ``remote_type`` and ``remote_traceback`` describe the original.
    """

    def __init__(self, message: str, remote_type: str = "", remote_traceback: str = "") -> None:
        super().__init__(message)
        self.remote_type = remote_type
        self.remote_traceback = remote_traceback
