"""Exceptions raised by the cluster layer.

Every error a peer can provoke on the wire is a :class:`ProtocolError`; each
subclass carries a short machine-readable ``code`` that travels in the ERROR
frame sent to the offending peer before the connection is closed.  Errors seen
by users of :class:`~pyqueue.cluster.client.Client` subclass the stdlib
exceptions they would already catch (``TimeoutError``, ``RuntimeError``).
"""

from __future__ import annotations

__all__ = [
    "ClusterError",
    "ProtocolError",
    "PreambleError",
    "VersionError",
    "FrameTooLarge",
    "MalformedFrame",
    "AuthenticationError",
    "UnexpectedMessage",
    "PeerError",
    "KeyNotFound",
    "TaskDead",
    "TaskLost",
    "TaskCancelled",
    "RemoteTaskError",
]


class ClusterError(Exception):
    """Base class of every error the cluster package raises on purpose."""


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


class KeyNotFound(ClusterError, LookupError):
    """No shared key was given, and none is in PYQUEUE_KEY or a key file."""


class TaskDead(ClusterError, RuntimeError):
    """The task was dead-lettered (its node died under it too often)."""


class TaskLost(TaskDead):
    """The coordinator forgot an acknowledged task: it restarted without a durable store."""


class TaskCancelled(ClusterError, RuntimeError):
    """The task was cancelled before it completed."""


class RemoteTaskError(ClusterError, RuntimeError):
    """A task raised an exception that could not be sent back as itself.

    Its ``remote_type`` and ``remote_traceback`` describe the original.
    """

    def __init__(self, message: str, remote_type: str = "", remote_traceback: str = "") -> None:
        super().__init__(message)
        self.remote_type = remote_type
        self.remote_traceback = remote_traceback
