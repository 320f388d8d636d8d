"""Sans-IO wire protocol of the pyqueue cluster: bytes in, events out.

Nothing in this module touches a socket, a clock or a thread.  A transport
feeds received bytes to :meth:`Connection.receive_data`, gets back a list of
events, and writes whatever :meth:`Connection.data_to_send` returns.  That is
what lets the decoder be unit-tested and fuzzed without any network.

Wire format
-----------
Each direction starts with a 4-byte preamble, ``b"PYQ"`` followed by the
protocol version byte.  Then come frames::

    +----------------+--------+----------------+------------------+
    | body length u32| type u8| correlation u32| msgpack body ... |
    +----------------+--------+----------------+------------------+

all big-endian.  The body is a msgpack map.  A frame whose announced body
length exceeds the maximum is rejected from its 9-byte header alone, before
any of the body is buffered, so a peer cannot make us allocate more than
``max_frame`` (plus one read chunk).  Before authentication the maximum is
``handshake_max_frame`` (4 KiB), so unauthenticated peers can make us hold
almost nothing.

Messages larger than a frame
----------------------------
A message whose packed body is larger than ``max_frame`` (one big argument
or result: numpy arrays are normal in pipelines) travels as a run of
``CONTINUED`` frames, each carrying the next slice of the packed body as raw
bytes, closed by one frame of the message's own type carrying the last slice.
The decoder joins the slices and checks the running total against
``max_message`` from each header, before buffering that frame, so a peer
cannot make us hold more than ``max_message`` either.  A sender writes the
frames of one message back to back; nothing is interleaved with them.

Batches (tasks, results, acknowledgements) are cut by encoded size as well
as by count (:func:`split_batches`), so a batch of many valid items never
needs more than one frame; only a single item larger than a frame does.

Handshake (mutual HMAC-SHA256 challenge on a shared key)
--------------------------------------------------------
::

    client -> server   preamble, HELLO {role, name, nonce_c}
    server -> client   preamble, CHALLENGE {nonce_s, proof_s}
                       proof_s = HMAC(key, "pyq1-server" | nonce_c | nonce_s)
    client -> server   AUTH {proof_c}
                       proof_c = HMAC(key, "pyq1-client" | nonce_s | nonce_c)
    server -> client   WELCOME {max_payload, max_frame}

The client checks the server's proof before it reveals its own, and distinct
labels per direction stop a reflected proof from being accepted.  No
:class:`Message` event (and so no pickled payload) is ever produced before
both sides have proven the key.

Errors
------
Any violation raises a :class:`~pyqueue.errors.ProtocolError`
subclass; after that the connection is closed for good and
:meth:`Connection.error_bytes` gives the ERROR frame to send to the peer
before closing the socket.

Thread safety
-------------
A :class:`Connection` is not thread-safe; callers serialize access.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import os
import struct
import sys
from dataclasses import dataclass
from typing import Any, Callable, Union

import msgpack

from pyqueue.errors import (
    AuthenticationError,
    FrameTooLarge,
    MalformedFrame,
    PeerError,
    PreambleError,
    ProtocolError,
    UnexpectedMessage,
    VersionError,
)

# dataclass(slots=True) needs Python 3.10; the package supports 3.9
_SLOTS: dict[str, bool] = {"slots": True} if sys.version_info >= (3, 10) else {}

__all__ = [
    "MAGIC",
    "VERSION",
    "PREAMBLE",
    "HEADER",
    "DEFAULT_MAX_FRAME",
    "HANDSHAKE_MAX_FRAME",
    "NONCE_BYTES",
    "MsgType",
    "Message",
    "Authenticated",
    "Event",
    "Connection",
    "encode_frame",
    "encode_message",
    "split_batches",
    "FrameDecoder",
]

MAGIC = b"PYQ"
VERSION = 2  # 2: CONTINUED frames, REVOKE, cancel and release flags, HEARTBEAT_ACK
PREAMBLE = MAGIC + bytes([VERSION])
#: body length, message type, correlation id
HEADER = struct.Struct(">IBI")
DEFAULT_MAX_FRAME = 16 * 1024 * 1024
#: largest argument or result a cluster carries by default
DEFAULT_MAX_PAYLOAD = 256 * 1024 * 1024
#: room around one payload for its row and the message envelope
ENVELOPE_BYTES = 64 * 1024
#: a batch is cut once its items add up to this many bytes (or BATCH_COUNT items)
BATCH_BYTES = 1024 * 1024
BATCH_COUNT = 2048
HANDSHAKE_MAX_FRAME = 4096
NONCE_BYTES = 32
_SERVER_LABEL = b"pyq1-server"
_CLIENT_LABEL = b"pyq1-client"


class MsgType(enum.IntEnum):
    """Frame types.  Values are part of the wire format: never renumber."""

    # handshake
    HELLO = 1
    CHALLENGE = 2
    AUTH = 3
    WELCOME = 4
    ERROR = 5
    CONTINUED = 6  # raw bytes: the next slice of a message larger than one frame
    # client <-> coordinator
    SUBMIT = 10  # {"tasks": [[id, payload, retries, backoff, not_before, result_ttl|None], ...]}
    SUBMIT_ACK = 11  # {"states": [state, ...]} in submit order
    WAIT = (
        12  # {"ids": [...]}: push RESULTS when they end; corr != 0 -> SUBMIT_ACK {"unknown": ids}
    )
    RESULTS = 13  # {"results": [[id, state, value_bytes|None, error|None], ...]}
    CANCEL = 14  # {"ids": [...], "terminate": bool}
    CANCEL_ACK = 15  # {"cancelled": [bool, ...]}: sent once each is certain
    STATUS = 16  # {}
    STATUS_REPLY = 17  # {...}
    DEAD_LIST = 18  # {"limit": n}
    DEAD_REPLY = 19  # {"tasks": [{...}, ...]}
    REQUEUE = 20  # {"ids": [...]}
    REQUEUE_ACK = 21  # {"requeued": [bool, ...]}
    RESULTS_TAKEN = 22  # {"n": rows}: the client took n result rows (opens its window)
    PURGE = 23  # {"finished_before": float|None, "dead": bool, "limit": n}
    PURGE_ACK = 24  # {"purged": n}
    CONFIGURE_QUEUE = 25  # {"name": str, "rate_limit"?: float|None, "paused"?: bool}
    QUEUE_INFO = 26  # {"queue": {name, rate_limit, paused, tasks, oldest_ready}}
    SCHEDULE = 27  # {"id", "payload", "cron"|"every", "queue", "priority", "misfire", "timezone"}
    SCHEDULE_CTL = 28  # {"id": str, "action": "pause"|"resume"|"delete"}
    SCHEDULE_INFO = 29  # {"schedule": {...}|None}
    SCHEDULES = 50  # {}
    SCHEDULE_LIST = 51  # {"schedules": [{...}, ...]}
    # node <-> coordinator
    READY = 30  # {"capacity": n, "name": str}
    TASKS = 31  # {"tasks": [[id, token, payload], ...]}
    DONE = 32  # {"results": [[id, token, ok, value_bytes|None, error|None, cancelled], ...]}
    DONE_ACK = 33  # {"status": ["accepted"|"duplicate"|"stale", ...]}
    RELEASE = 34  # {"tasks": [[id, token, started], ...]}: started = lost by shutdown
    HEARTBEAT = 35  # {}: from nodes (renews their leases) and quiet clients
    CREDIT = 36  # {"capacity": n}
    REVOKE = 37  # {"tasks": [[id, token, terminate], ...]}
    REVOKE_ACK = 38  # {"outcomes": ["revoked"|"running"|"terminating"|"unknown", ...]}
    HEARTBEAT_ACK = 39  # {}: the coordinator's answer to any peer's HEARTBEAT


_KNOWN_TYPES = frozenset(int(t) for t in MsgType)
_HANDSHAKE_TYPES = frozenset({MsgType.HELLO, MsgType.CHALLENGE, MsgType.AUTH, MsgType.WELCOME})
_CONTINUED = int(MsgType.CONTINUED)


@dataclass(frozen=True, **_SLOTS)
class Message:
    """An application frame received after authentication."""

    type: MsgType
    corr: int
    body: dict[str, Any]


@dataclass(frozen=True, **_SLOTS)
class Authenticated:
    """Both sides proved the key; ``peer_role``/``peer_name`` come from HELLO."""

    peer_role: str
    peer_name: str


Event = Union[Message, Authenticated]


def encode_frame(
    mtype: int, corr: int, body: dict[str, Any], max_frame: int = DEFAULT_MAX_FRAME
) -> bytes:
    """Encode one message as exactly one frame.

    Raises
    ------
    FrameTooLarge
        If the encoded body is larger than ``max_frame``.
    """
    return encode_message(mtype, corr, body, max_frame, max_frame)


def encode_message(
    mtype: int,
    corr: int,
    body: dict[str, Any],
    max_frame: int = DEFAULT_MAX_FRAME,
    max_message: int | None = None,
) -> bytes:
    """Encode one message: one frame, or CONTINUED frames and a last one.

    Parameters
    ----------
    max_message : int, optional
        Largest packed body; defaults to
        ``DEFAULT_MAX_PAYLOAD + ENVELOPE_BYTES``.

    Raises
    ------
    FrameTooLarge
        If the packed body is larger than ``max_message``.
    """
    packed = msgpack.packb(body, use_bin_type=True)
    size = len(packed)
    limit = DEFAULT_MAX_PAYLOAD + ENVELOPE_BYTES if max_message is None else max_message
    if size > limit:
        raise FrameTooLarge(f"message body of {size} bytes exceeds the maximum of {limit}")
    corr &= 0xFFFFFFFF
    if size <= max_frame:
        return HEADER.pack(size, mtype, corr) + packed
    view = memoryview(packed)
    parts: list[bytes | memoryview] = []
    last = (size - 1) // max_frame * max_frame
    for start in range(0, last, max_frame):
        parts.append(HEADER.pack(max_frame, _CONTINUED, corr))
        parts.append(view[start : start + max_frame])
    parts.append(HEADER.pack(size - last, mtype, corr))
    parts.append(view[last:])
    return b"".join(parts)


def split_batches(
    rows: list[Any],
    size_of: Callable[[Any], int],
    max_bytes: int = BATCH_BYTES,
    max_count: int = BATCH_COUNT,
) -> list[list[Any]]:
    """Cut ``rows`` into batches of at most ``max_count`` rows and about
    ``max_bytes`` bytes (``size_of`` estimates one row); a row larger than
    ``max_bytes`` goes alone.  Order is kept; no batch is empty."""
    if len(rows) <= max_count and len(rows) * 64 <= max_bytes:
        # the common case of small rows, all in one batch: summed in C
        if sum(map(size_of, rows)) <= max_bytes:
            return [rows] if rows else []
    out: list[list[Any]] = []
    batch: list[Any] = []
    total = 0
    for row in rows:
        n = size_of(row)
        if batch and (total + n > max_bytes or len(batch) >= max_count):
            out.append(batch)
            batch, total = [], 0
        batch.append(row)
        total += n
    if batch:
        out.append(batch)
    return out


class FrameDecoder:
    """Splits a byte stream into ``(type, corr, body)`` frames.

    Checks the preamble first, then each frame's header before buffering its
    body.  After it has raised once it stays failed.

    Parameters
    ----------
    max_frame : int
        Largest frame body accepted; can be changed later through
        :attr:`max_frame` (the handshake uses a small limit and raises it once
        authenticated).
    max_message : int, optional
        Largest message reassembled from CONTINUED frames; 0 (the default
        before authentication) accepts none.
    """

    __slots__ = (
        "_buf",
        "_preamble_done",
        "max_frame",
        "max_message",
        "_parts",
        "_parts_len",
        "_failed",
    )

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME, max_message: int = 0) -> None:
        self._buf = bytearray()
        self._preamble_done = False
        self.max_frame = max_frame
        self.max_message = max_message
        self._parts: list[bytes] = []  # slices of a message larger than a frame
        self._parts_len = 0
        self._failed: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet consumed as a whole frame."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[tuple[int, int, dict[str, Any]]]:
        """Consume ``data`` and return the complete frames it finished.

        Raises
        ------
        ProtocolError
            On a wrong preamble or version, an oversized or malformed frame.
        """
        if self._failed is not None:
            raise self._failed
        try:
            return self._feed(data)
        except ProtocolError as exc:
            self._failed = exc
            self._buf = bytearray()
            self._parts.clear()
            raise

    def _feed(self, data: bytes) -> list[tuple[int, int, dict[str, Any]]]:
        buf = self._buf
        buf += data
        if not self._preamble_done:
            n = min(len(buf), len(PREAMBLE))
            if buf[: min(n, len(MAGIC))] != MAGIC[: min(n, len(MAGIC))]:
                raise PreambleError(
                    f"stream does not start with {MAGIC!r}: got {bytes(buf[:8])!r};"
                    " is this a pyqueue peer?"
                )
            if n < len(PREAMBLE):
                return []
            if buf[3] != VERSION:
                raise VersionError(
                    f"peer speaks protocol version {buf[3]}, this side speaks version {VERSION}"
                )
            del buf[: len(PREAMBLE)]
            self._preamble_done = True
        out: list[tuple[int, int, dict[str, Any]]] = []
        pos = 0
        end = len(buf)
        hsize = HEADER.size
        while end - pos >= hsize:
            length, mtype, corr = HEADER.unpack_from(buf, pos)
            if length > self.max_frame:
                raise FrameTooLarge(
                    f"frame announces {length} bytes, the maximum is {self.max_frame}"
                )
            if mtype not in _KNOWN_TYPES:
                raise MalformedFrame(f"unknown frame type {mtype}")
            if mtype == _CONTINUED and (length == 0 or not self.max_message):
                # an empty piece makes no progress; before authentication none is allowed
                raise MalformedFrame("empty or unexpected CONTINUED frame")
            if self._parts_len or mtype == _CONTINUED:
                if self._parts_len + length > self.max_message:
                    raise FrameTooLarge(
                        f"message of at least {self._parts_len + length} bytes exceeds the"
                        f" maximum of {self.max_message}"
                    )
            if end - pos - hsize < length:
                break
            start = pos + hsize
            raw = bytes(buf[start : start + length])
            pos = start + length
            if mtype == _CONTINUED:
                self._parts.append(raw)
                self._parts_len += length
                continue
            if self._parts:
                self._parts.append(raw)
                raw = b"".join(self._parts)
                self._parts.clear()
                self._parts_len = 0
            try:
                body = msgpack.unpackb(raw, raw=False, use_list=True)
            except Exception as exc:  # msgpack raises many types on bad input
                raise MalformedFrame(
                    f"undecodable body in frame type {mtype}: {exc.__class__.__name__}"
                ) from None
            if not isinstance(body, dict):
                raise MalformedFrame(
                    f"frame type {mtype} body must be a map, got {type(body).__name__}"
                )
            out.append((mtype, corr, body))
        if pos:
            del buf[:pos]
        return out


class _State(enum.Enum):
    AWAIT_HELLO = "await_hello"  # server
    AWAIT_AUTH = "await_auth"  # server
    AWAIT_CHALLENGE = "await_challenge"  # client
    AWAIT_WELCOME = "await_welcome"  # client
    OPEN = "open"
    FAILED = "failed"


class Connection:
    """One end of a pyqueue connection, as a state machine.

    Parameters
    ----------
    key : bytes
        The shared secret.
    server : bool
        True on the coordinator side (answers HELLO), False on nodes/clients.
    role, name : str
        Sent in HELLO by the connecting side ("node", "client", "admin").
    max_frame : int
        Largest frame body accepted once authenticated.
    max_message : int
        Largest message, reassembled from several frames, accepted once
        authenticated (and sent: :meth:`send` refuses larger ones).
    nonce : callable
        Source of random nonces (injectable for tests).
    """

    def __init__(
        self,
        key: bytes,
        *,
        server: bool,
        role: str = "client",
        name: str = "",
        max_frame: int = DEFAULT_MAX_FRAME,
        max_message: int = DEFAULT_MAX_PAYLOAD + ENVELOPE_BYTES,
        nonce: Callable[[int], bytes] = os.urandom,
    ) -> None:
        if not key:
            raise ValueError("the shared key must not be empty")
        self._key = bytes(key)
        self.server = server
        self.role = role
        self.name = name
        self.max_message = max_message
        self.max_frame = min(max_frame, max_message)  # no frame may carry more than a message
        self._nonce = nonce
        self._decoder = FrameDecoder(HANDSHAKE_MAX_FRAME)
        self._out: list[bytes] = []
        self._sent_preamble = False
        self._my_nonce = b""
        self._peer_nonce = b""
        self.peer_role = ""
        self.peer_name = ""
        #: the largest payload and frame the peer accepts (the coordinator
        #: says in WELCOME; a client then sends within them, and accepts
        #: what the coordinator may send, which it checked already)
        self.peer_max_payload = self.max_message - ENVELOPE_BYTES
        self.peer_max_frame = self.max_frame
        self._state = _State.AWAIT_HELLO if server else _State.AWAIT_CHALLENGE
        if not server:
            self._my_nonce = nonce(NONCE_BYTES)
            self._queue_preamble()
            self._queue(MsgType.HELLO, 0, {"role": role, "name": name, "nonce": self._my_nonce})

    # -- output -----------------------------------------------------------
    @property
    def authenticated(self) -> bool:
        """True once both sides proved the shared key."""
        return self._state is _State.OPEN

    @property
    def failed(self) -> bool:
        """True once a protocol error ended this connection."""
        return self._state is _State.FAILED

    def _queue_preamble(self) -> None:
        if not self._sent_preamble:
            self._out.append(PREAMBLE)
            self._sent_preamble = True

    def _queue(self, mtype: int, corr: int, body: dict[str, Any]) -> None:
        self._out.append(encode_frame(mtype, corr, body, self.max_frame))

    def send(self, mtype: MsgType, body: dict[str, Any], corr: int = 0) -> None:
        """Queue an application frame.

        Raises
        ------
        UnexpectedMessage
            If the handshake has not completed.
        FrameTooLarge
            If the body encodes to more than ``max_message`` bytes.
        """
        if self._state is not _State.OPEN:
            raise UnexpectedMessage(f"cannot send {MsgType(mtype).name} before authentication")
        self._out.append(encode_message(mtype, corr, body, self.max_frame, self.max_message))

    def send_raw(self, frame: bytes) -> None:
        """Queue frames already built with :func:`encode_message` (authenticated only)."""
        if self._state is not _State.OPEN:
            raise UnexpectedMessage("cannot send before authentication")
        self._out.append(frame)

    def data_to_send(self) -> bytes:
        """Return, and forget, every byte queued for the peer."""
        if not self._out:
            return b""
        data = b"".join(self._out)
        self._out.clear()
        return data

    def error_bytes(self, exc: ProtocolError) -> bytes:
        """Bytes that tell the peer why we are closing (preamble if needed + ERROR)."""
        parts = []
        if not self._sent_preamble:
            parts.append(PREAMBLE)
            self._sent_preamble = True
        code = getattr(exc, "code", "protocol")
        parts.append(encode_frame(MsgType.ERROR, 0, {"code": code, "message": str(exc)[:1000]}))
        return b"".join(parts)

    # -- input ------------------------------------------------------------
    def receive_data(self, data: bytes) -> list[Event]:
        """Feed received bytes; return the events they complete.

        Raises
        ------
        ProtocolError
            The connection is unusable; send :meth:`error_bytes` and close.
        """
        if self._state is _State.FAILED:
            raise UnexpectedMessage("connection already failed")
        try:
            frames = self._decoder.feed(data)
            events: list[Event] = []
            for mtype, corr, body in frames:
                if self._state is _State.OPEN:
                    if mtype in _HANDSHAKE_TYPES:
                        raise UnexpectedMessage(f"{MsgType(mtype).name} after the handshake")
                    if mtype == MsgType.ERROR:
                        raise _peer_error(body)
                    events.append(Message(MsgType(mtype), corr, body))
                else:
                    ev = self._handshake(mtype, body)
                    if ev is not None:
                        events.append(ev)
            return events
        except ProtocolError:
            self._state = _State.FAILED
            raise

    def _handshake(self, mtype: int, body: dict[str, Any]) -> Event | None:
        if mtype == MsgType.ERROR:
            raise _peer_error(body)
        st = self._state
        if st is _State.AWAIT_HELLO and mtype == MsgType.HELLO:
            nonce = body.get("nonce")
            role = body.get("role")
            name = body.get("name", "")
            if not isinstance(nonce, bytes) or len(nonce) != NONCE_BYTES:
                raise MalformedFrame("HELLO needs a 32-byte nonce")
            if (
                not isinstance(role, str)
                or not isinstance(name, str)
                or len(role) > 64
                or len(name) > 256
            ):
                raise MalformedFrame("HELLO needs string role and name")
            self._peer_nonce = nonce
            self.peer_role, self.peer_name = role, name
            self._my_nonce = self._nonce(NONCE_BYTES)
            proof = _mac(self._key, _SERVER_LABEL, self._peer_nonce, self._my_nonce)
            self._queue_preamble()
            self._queue(MsgType.CHALLENGE, 0, {"nonce": self._my_nonce, "proof": proof})
            self._state = _State.AWAIT_AUTH
            return None
        if st is _State.AWAIT_AUTH and mtype == MsgType.AUTH:
            got = body.get("proof")
            if not isinstance(got, bytes):
                raise MalformedFrame("AUTH needs a proof")
            expected = _mac(self._key, _CLIENT_LABEL, self._my_nonce, self._peer_nonce)
            if not hmac.compare_digest(got, expected):
                raise AuthenticationError("peer failed the HMAC challenge: wrong shared key")
            self._queue(
                MsgType.WELCOME,
                0,
                {"max_payload": self.max_message - ENVELOPE_BYTES, "max_frame": self.max_frame},
            )
            return self._open()
        if st is _State.AWAIT_CHALLENGE and mtype == MsgType.CHALLENGE:
            nonce = body.get("nonce")
            got = body.get("proof")
            if (
                not isinstance(nonce, bytes)
                or len(nonce) != NONCE_BYTES
                or not isinstance(got, bytes)
            ):
                raise MalformedFrame("CHALLENGE needs a 32-byte nonce and a proof")
            expected = _mac(self._key, _SERVER_LABEL, self._my_nonce, nonce)
            if not hmac.compare_digest(got, expected):
                raise AuthenticationError("coordinator failed the HMAC challenge: wrong shared key")
            self._peer_nonce = nonce
            mine = _mac(self._key, _CLIENT_LABEL, self._peer_nonce, self._my_nonce)
            self._queue(MsgType.AUTH, 0, {"proof": mine})
            self._state = _State.AWAIT_WELCOME
            return None
        if st is _State.AWAIT_WELCOME and mtype == MsgType.WELCOME:
            for key, attr in (("max_payload", "peer_max_payload"), ("max_frame", "peer_max_frame")):
                limit = body.get(key)
                if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
                    setattr(self, attr, limit)
            opened = self._open()
            # accept whatever the coordinator may send (it is the authority on sizes)
            self._decoder.max_frame = max(self.max_frame, self.peer_max_frame)
            self._decoder.max_message = max(
                self.max_message, self.peer_max_payload + ENVELOPE_BYTES
            )
            return opened
        raise UnexpectedMessage(
            f"{_type_name(mtype)} not allowed during the handshake ({st.value})"
        )

    def _open(self) -> Authenticated:
        self._state = _State.OPEN
        self._decoder.max_frame = self.max_frame
        self._decoder.max_message = self.max_message
        return Authenticated(self.peer_role, self.peer_name)


def _type_name(mtype: int) -> str:
    try:
        return MsgType(mtype).name
    except ValueError:
        return f"type {mtype}"


def _mac(key: bytes, label: bytes, a: bytes, b: bytes) -> bytes:
    return hmac.new(key, label + a + b, hashlib.sha256).digest()


def _peer_error(body: dict[str, Any]) -> PeerError:
    code = body.get("code")
    msg = body.get("message")
    return PeerError(str(code)[:64], str(msg)[:1000])
