"""Typed application messages: every body is checked here, and only here.

The wire format is the one :mod:`pyqueue.cluster.protocol` documents next to
:class:`~pyqueue.cluster.protocol.MsgType`: a msgpack map whose batches are
lists of positional rows.  This module gives each application message (every
``MsgType`` from ``SUBMIT`` on) one class that knows its body:

* ``Cls.TYPE``: its :class:`MsgType`;
* ``Cls.from_body(body)``: the checked, typed message.  A body that is not
  exactly what a peer of this version sends raises
  :class:`~pyqueue.errors.MalformedFrame` (with the message type and the
  place, e.g. ``bad SUBMIT body: tasks[3]: payload must be bytes``), and
  ``from_body`` never raises anything else, whatever it is given;
* ``msg.to_body()``: the body to send, the same keys and the same positional
  rows (lists) as before this module existed, trailing optional row fields
  included (a SUBMIT row has 5 fields, 6 with a ``result_ttl``);
* :func:`decode` picks the class by ``msg.type`` for a received
  :class:`~pyqueue.cluster.protocol.Message`.

Rows are the plain types of :mod:`pyqueue.cluster.states` (``SubmitSpec``,
``Lease``, ``Completion``, ``Release``, ``Outcome``, ``Verdict``,
``TaskState``); the few shapes that have no type there are defined here
(:class:`Revocation`, :class:`RevokeOutcome`, :class:`NodeStatus`,
:class:`TaskSummary`).

Using it (the coordinator's side)::

    from pyqueue.cluster import messages as M

    def _h_submit(self, peer, msg):            # msg: protocol.Message
        req = M.Submit.from_body(msg.body)     # MalformedFrame on a bad body
        states = self.backend.submit(req.tasks)    # list[SubmitSpec]
        peer.queue(M.SubmitAck.TYPE, M.SubmitAck(states).to_body(), msg.corr)

    def _h_done(self, peer, msg):
        for c in M.Done.from_body(msg.body).results:    # Completion rows
            verdict = backend.complete(node, c.id, c.token, c.ok, c.value, c.error, c.cancelled)
        ...
        peer.queue(M.DoneAck.TYPE, M.DoneAck(verdicts).to_body(), msg.corr)

    # a WAIT is answered with a SUBMIT_ACK of another shape:
    peer.queue(M.WaitAck.TYPE, M.WaitAck(unknown_ids).to_body(), msg.corr)

    # or, for any message: m = M.decode(msg); then isinstance(m, M.Submit) ...

Because every check happens in ``from_body``, a handler can then treat
``KeyError``/``TypeError``/``ValueError`` as what they are, bugs of ours,
instead of charging them to the peer.

Rules (the same for every message)
----------------------------------
* The body is a map; required keys must be there; keys not named here are
  ignored (a newer peer may add some), except in STATUS_REPLY and in the
  entries of DEAD_REPLY, whose other keys are kept in ``extra`` and sent on.
* Batches are lists of rows, and each row is a list of the given length.
* A task id is a ``str`` of 1 to 512 characters (:data:`MAX_ID`).
* An ``int`` field takes an ``int`` only: a ``bool`` is refused (msgpack
  keeps the two apart, and no peer of this version sends one for a count).
  Counts, tokens and capacities are ``0 <= n < 2**63`` (what a store's
  integer column holds).
* A ``bool`` field takes a ``bool`` only (no 0/1).
* A ``float`` field takes a float or an int (an int is turned into a
  float); NaN and infinities are refused everywhere, and so are negative
  delays, times and time-to-lives.  ``silent_s`` in STATUS_REPLY may be
  negative (the coordinator credits a stalled loop's lag to its nodes).
* Payloads and result values are ``bytes``; error texts are ``str`` or None.
* States travel as the :class:`TaskState` value (int) in SUBMIT_ACK and
  RESULTS, and by name (``"DEAD"``) in DEAD_REPLY; verdicts and revoke
  outcomes as their string values.

The hot messages (SUBMIT, SUBMIT_ACK, TASKS, DONE, DONE_ACK, RESULTS) check a
well-formed row with one unpack and a few type tests, inline; only a row that
fails them goes through the slower checkers below, which either accept it
(an int where a float is wanted) or say precisely what is wrong.

:func:`spec_problem` and :func:`id_problem` give the same rules to a sender,
so that a client refuses a bad option at ``submit`` with a ``ValueError``
instead of sending a row the coordinator must refuse.
"""

from __future__ import annotations

import enum
import math
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, ClassVar, NamedTuple, TypeVar, Union, get_args

from pyqueue.errors import MalformedFrame, UnexpectedMessage

from . import states as S
from .protocol import Message, MsgType
from .schedules import ScheduleSpec
from .states import (
    DEFAULT_QUEUE,
    DEFAULT_SERVED,
    SLOTS,
    Completion,
    Lease,
    Outcome,
    SubmitSpec,
    TaskState,
    Verdict,
)

_DQ = DEFAULT_QUEUE

__all__ = [
    "MAX_ID",
    "MAX_NAME",
    "AppMessage",
    "AnyMessage",
    "Revocation",
    "RevokeOutcome",
    "NodeStatus",
    "TaskSummary",
    "Submit",
    "SubmitAck",
    "WaitAck",
    "Wait",
    "Results",
    "Cancel",
    "CancelAck",
    "Status",
    "StatusReply",
    "DeadList",
    "DeadReply",
    "Requeue",
    "RequeueAck",
    "Ready",
    "Tasks",
    "Done",
    "DoneAck",
    "Release",
    "Heartbeat",
    "Credit",
    "Revoke",
    "RevokeAck",
    "HeartbeatAck",
    "ResultsTaken",
    "Purge",
    "PurgeAck",
    "KEEP",
    "ConfigureQueue",
    "QueueInfoReply",
    "SetSchedule",
    "ScheduleCtl",
    "ScheduleInfo",
    "Schedules",
    "ScheduleList",
    "queue_problem",
    "MAX_QUEUE",
    "CLASSES",
    "decode",
    "spec_problem",
    "id_problem",
]

#: longest task id, in characters
MAX_ID = 512
#: longest node name in READY (as in HELLO)
MAX_NAME = 256
#: longest queue name, and the characters one may have
MAX_QUEUE = 128
_QUEUE_CHARS = frozenset(string.ascii_letters + string.digits + "_.:-")
#: priorities run from -_PRIORITY to _PRIORITY
_PRIORITY = 2**31 - 1
_I64 = 2**63
_INF = math.inf
_STATES = tuple(TaskState)  # by value
_STATE_NAMES = {st.name: st for st in TaskState}
_VERDICTS = {v.value: v for v in Verdict}
# member -> plain value (a plain value finds its own entry too: same hash, equal)
_VERDICT_VALUES: dict[str, str] = {v: v.value for v in Verdict}
_STATE_VALUES: dict[int, int] = {st: int(st) for st in TaskState}
_NO_EXTRA: Mapping[str, Any] = MappingProxyType({})
#: builds a row type from fields already checked, without its __new__'s argument handling
_new = tuple.__new__


class Revocation(NamedTuple):
    """One row of REVOKE: stop this lease of a task (``terminate``: even if running)."""

    id: str
    token: int
    terminate: bool = False


class RevokeOutcome(str, enum.Enum):
    """What a node did with one revoked task.  Values travel in REVOKE_ACK."""

    REVOKED = "revoked"  # it had not started: dropped, never to run
    RUNNING = "running"  # it is running and was left to finish
    TERMINATING = "terminating"  # TaskCancelled was raised in it; its completion follows
    UNKNOWN = "unknown"  # the node does not hold it (its result is on the way)


_OUTCOMES = {o.value: o for o in RevokeOutcome}


class NodeStatus(NamedTuple):
    """One entry of STATUS_REPLY's ``nodes``."""

    id: str
    address: str
    capacity: int
    outstanding: int
    max_outstanding: int
    silent_s: float
    extra: Mapping[str, Any] = _NO_EXTRA  # any other keys, sent on as they came


class TaskSummary(NamedTuple):
    """One entry of DEAD_REPLY's ``tasks`` (what ``TaskInfo.summary()`` gives)."""

    id: str
    state: TaskState
    attempts: int
    failures: int
    lost: int
    error: str | None
    extra: Mapping[str, Any] = _NO_EXTRA  # any other keys, sent on as they came


# -- checking ---------------------------------------------------------------------


class _Bad(Exception):
    """Raised by the checkers; ``from_body`` turns it into MalformedFrame."""


def _type_name(x: object) -> str:
    return type(x).__name__


def _shown(x: object) -> str:
    """A short, safe description of a received value for an error message
    (a scalar's repr, cut; a container's type only: its repr could be huge
    or recurse too deep)."""
    if type(x) is int and not -_I64 <= x < 2 * _I64:
        return "an int out of range"  # str() of a huge int may even raise
    if x is None or type(x) in (str, bytes, int, float, bool):
        text = repr(x[:60] if type(x) in (str, bytes) else x)  # type: ignore[index]
        return text if len(text) <= 60 else text[:57] + "..."
    return _type_name(x)


def _malformed(mtype: MsgType, where: str, why: str) -> MalformedFrame:
    place = f"{where}: " if where else ""
    return MalformedFrame(f"bad {mtype.name} body: {place}{why}")


def _map(body: object, mtype: MsgType) -> dict[Any, Any]:
    if type(body) is not dict:
        raise _malformed(mtype, "", f"must be a map, got {_type_name(body)}")
    return body


def _get(body: dict[Any, Any], key: str, mtype: MsgType) -> Any:
    try:
        return body[key]
    except KeyError:
        raise _malformed(mtype, "", f"missing {key!r}") from None


def _list(body: dict[Any, Any], key: str, mtype: MsgType) -> list[Any]:
    value = _get(body, key, mtype)
    if type(value) is not list:
        raise _malformed(mtype, key, f"must be a list, got {_type_name(value)}")
    return value


def id_problem(tid: object) -> str | None:
    """Why ``tid`` is not a task id (a str of 1 to :data:`MAX_ID` characters), or None."""
    if type(tid) is not str:
        return f"task id must be a str, got {_type_name(tid)}"
    if not tid:
        return "task id must not be empty"
    if len(tid) > MAX_ID:
        return f"task id of {len(tid)} characters is longer than {MAX_ID}"
    return None


def _id(tid: object) -> str:
    why = id_problem(tid)
    if why is not None:
        raise _Bad(why)
    assert type(tid) is str
    return tid


def _str(x: object, what: str, limit: int | None = None) -> str:
    if type(x) is not str:
        raise _Bad(f"{what} must be a str, got {_type_name(x)}")
    if limit is not None and len(x) > limit:
        raise _Bad(f"{what} of {len(x)} characters is longer than {limit}")
    return x


def _count(x: object, what: str) -> int:
    if type(x) is not int:
        raise _Bad(f"{what} must be an int, got {_type_name(x)}")
    if not 0 <= x < _I64:
        raise _Bad(f"{what} must be in [0, 2**63), got {_shown(x)}")
    return x


def _flag(x: object, what: str) -> bool:
    if type(x) is not bool:
        raise _Bad(f"{what} must be a bool, got {_type_name(x)}")
    return x


def _real(x: object, what: str, negative: bool = False) -> float:
    if type(x) is int:
        # bounded first: float() of a huge int would raise OverflowError
        if not -_I64 <= x < 2 * _I64:
            raise _Bad(f"{what} is out of range: {_shown(x)}")
        value = float(x)
    elif type(x) is float:
        value = x
    else:
        raise _Bad(f"{what} must be a number, got {_type_name(x)}")
    if not math.isfinite(value):
        raise _Bad(f"{what} must be finite, got {value}")
    if value < 0.0 and not negative:
        raise _Bad(f"{what} must not be negative, got {value}")
    return value


def _bytes_or_none(x: object, what: str) -> bytes | None:
    if x is not None and type(x) is not bytes:
        raise _Bad(f"{what} must be bytes or nil, got {_type_name(x)}")
    return x


def _str_or_none(x: object, what: str) -> str | None:
    if x is not None and type(x) is not str:
        raise _Bad(f"{what} must be a str or nil, got {_type_name(x)}")
    return x


def _row(row: object, lengths: tuple[int, ...]) -> list[Any]:
    if type(row) is not list:
        raise _Bad(f"row must be a list, got {_type_name(row)}")
    if len(row) not in lengths:
        names = [str(n) for n in lengths]
        want = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
        raise _Bad(f"row must have {want} fields, got {len(row)}")
    return row


def _state(x: object) -> TaskState:
    if type(x) is not int or not 0 <= x < len(_STATES):
        raise _Bad(f"state must be a TaskState value (0-{len(_STATES) - 1}), got {_shown(x)}")
    return _STATES[x]


def _enum_value(x: object, table: dict[str, Any], what: str) -> Any:
    if type(x) is str:
        found = table.get(x)
        if found is not None:
            return found
    elif isinstance(x, enum.Enum) and isinstance(x, str) and table.get(x) is x:
        return x  # a member, as built in process (from_body(to_body()) without msgpack)
    raise _Bad(f"{what} must be one of {sorted(table)}, got {_shown(x)}")


_T = TypeVar("_T")


def _each(mtype: MsgType, key: str, items: list[Any], check: Callable[[Any], _T]) -> list[_T]:
    """``check`` every item of a batch; a failure names the item's place."""
    out = []
    for i, item in enumerate(items):
        try:
            out.append(check(item))
        except _Bad as exc:
            raise _malformed(mtype, f"{key}[{i}]", str(exc)) from None
    return out


def _slow(
    mtype: MsgType, key: str, items: list[Any], check: Callable[[Any], _T], item: object
) -> _T:
    """The careful path for an item the inline checks did not pass."""
    try:
        return check(item)
    except _Bad as exc:
        # found by identity: the hot loops do not count (the first occurrence
        # of a repeated object fails the same way)
        i = next(n for n, x in enumerate(items) if x is item)
        raise _malformed(mtype, f"{key}[{i}]", str(exc)) from None


def _extra(body: dict[Any, Any], known: tuple[str, ...], what: str) -> dict[str, Any]:
    out = {}
    for k, v in body.items():
        if type(k) is not str:
            raise _Bad(f"{what} keys must be str, got {_type_name(k)}")
        if k not in known:
            out[k] = v
    return out


def _counts(x: object, what: str) -> dict[str, int]:
    if type(x) is not dict:
        raise _Bad(f"{what} must be a map, got {_type_name(x)}")
    out = {}
    for k, v in x.items():
        out[_str(k, f"{what} key")] = _count(v, f"{what}[{_shown(k)}]")
    return out


# -- rows (the careful checkers) ---------------------------------------------------


def _spec_row(row: object) -> SubmitSpec:
    r = _row(row, (5, 6, 8))
    ttl = r[5] if len(r) >= 6 else None
    return SubmitSpec(
        _id(r[0]),
        _payload(r[1]),
        _count(r[2], "retries"),
        _real(r[3], "backoff"),
        _real(r[4], "not_before"),
        None if ttl is None else _real(ttl, "result_ttl"),
        _queue_name(r[6]) if len(r) == 8 else DEFAULT_QUEUE,
        _priority(r[7]) if len(r) == 8 else 0,
    )


def queue_problem(name: object) -> str | None:
    """Why ``name`` is not a queue name (1 to :data:`MAX_QUEUE` characters of
    letters, digits and ``_.:-``), or None."""
    if type(name) is not str:
        return f"queue name must be a str, got {_type_name(name)}"
    if not 0 < len(name) <= MAX_QUEUE or not _QUEUE_CHARS.issuperset(name):
        return (
            f"queue name {_shown(name)} must be 1 to {MAX_QUEUE} letters, digits"
            " or '_', '.', ':', '-'"
        )
    return None


def _queue_name(x: object) -> str:
    why = queue_problem(x)
    if why is not None:
        raise _Bad(why)
    assert type(x) is str
    return x


def _priority(x: object) -> int:
    if type(x) is not int or not -_PRIORITY <= x <= _PRIORITY:
        raise _Bad(f"priority must be an int in [-{_PRIORITY}, {_PRIORITY}], got {_shown(x)}")
    return x


def _payload(x: object) -> bytes:
    if type(x) is not bytes:
        raise _Bad(f"payload must be bytes, got {_type_name(x)}")
    return x


def _lease_row(row: object) -> Lease:
    r = _row(row, (3,))
    return Lease(_id(r[0]), _count(r[1], "token"), _payload(r[2]))


def _completion_row(row: object) -> Completion:
    r = _row(row, (5, 6, 7))
    return Completion(
        _id(r[0]),
        _count(r[1], "token"),
        _flag(r[2], "ok"),
        _bytes_or_none(r[3], "value"),
        _str_or_none(r[4], "error"),
        _flag(r[5], "cancelled") if len(r) >= 6 else False,
        None if len(r) < 7 or r[6] is None else _real(r[6], "run_s"),
    )


def _outcome_row(row: object) -> Outcome:
    r = _row(row, (4,))
    return Outcome(
        _id(r[0]), _state(r[1]), _bytes_or_none(r[2], "value"), _str_or_none(r[3], "error")
    )


def _release_row(row: object) -> S.Release:
    r = _row(row, (2, 3))
    started = _flag(r[2], "started") if len(r) == 3 else False
    return S.Release(_id(r[0]), _count(r[1], "token"), started)


def _revocation_row(row: object) -> Revocation:
    r = _row(row, (3,))
    return Revocation(_id(r[0]), _count(r[1], "token"), _flag(r[2], "terminate"))


def _verdict(x: object) -> Verdict:
    v: Verdict = _enum_value(x, _VERDICTS, "verdict")
    return v


def _revoke_outcome(x: object) -> RevokeOutcome:
    o: RevokeOutcome = _enum_value(x, _OUTCOMES, "outcome")
    return o


_NODE_KEYS = ("id", "address", "capacity", "outstanding", "max_outstanding", "silent_s")


def _need(d: dict[Any, Any], key: str) -> Any:
    if key not in d:
        raise _Bad(f"missing {key!r}")
    return d[key]


def _node_status(x: object) -> NodeStatus:
    if type(x) is not dict:
        raise _Bad(f"must be a map, got {_type_name(x)}")
    return NodeStatus(
        _str(_need(x, "id"), "id"),
        _str(_need(x, "address"), "address"),
        _count(_need(x, "capacity"), "capacity"),
        _count(_need(x, "outstanding"), "outstanding"),
        _count(_need(x, "max_outstanding"), "max_outstanding"),
        _real(_need(x, "silent_s"), "silent_s", negative=True),
        _extra(x, _NODE_KEYS, "node"),
    )


_SUMMARY_KEYS = ("id", "state", "attempts", "failures", "lost", "error")


def _task_summary(x: object) -> TaskSummary:
    if type(x) is not dict:
        raise _Bad(f"must be a map, got {_type_name(x)}")
    name = _need(x, "state")
    if type(name) is not str or name not in _STATE_NAMES:
        raise _Bad(f"state must be a TaskState name, got {_shown(name)}")
    return TaskSummary(
        _id(_need(x, "id")),
        _STATE_NAMES[name],
        _count(_need(x, "attempts"), "attempts"),
        _count(_need(x, "failures"), "failures"),
        _count(_need(x, "lost"), "lost"),
        _str_or_none(_need(x, "error"), "error"),
        _extra(x, _SUMMARY_KEYS, "task"),
    )


def spec_problem(spec: SubmitSpec) -> str | None:
    """Why the coordinator would refuse ``spec`` as a SUBMIT row, or None.

    For senders: check a row before it goes into an outbox, where a row the
    coordinator refuses would be resent after every reconnect.
    """
    tid, payload, retries, backoff, not_before, ttl, queue, priority = spec
    if (  # the common row, checked as Submit.from_body's inline path does
        type(tid) is str
        and 0 < len(tid) <= MAX_ID
        and type(payload) is bytes
        and type(retries) is int
        and 0 <= retries < _I64
        and type(backoff) is float
        and 0.0 <= backoff < _INF
        and type(not_before) is float
        and 0.0 <= not_before < _INF
        and ttl is None
        and queue == _DQ
        and priority == 0
    ):
        return None
    try:
        _spec_row(list(spec))
    except _Bad as exc:
        return str(exc)
    return None


# -- the messages -----------------------------------------------------------------


class AppMessage:
    """What every message class offers (``TYPE``, ``from_body``, ``to_body``)."""

    __slots__ = ()
    TYPE: ClassVar[MsgType]

    @classmethod
    def from_body(cls, body: object) -> AppMessage:  # pragma: no cover - overridden
        raise NotImplementedError

    def to_body(self) -> dict[str, Any]:  # pragma: no cover - overridden
        raise NotImplementedError


_E = TypeVar("_E", bound="_EmptyBody")


class _EmptyBody(AppMessage):
    """A message whose body is ``{}`` (other keys are ignored)."""

    __slots__ = ()

    @classmethod
    def from_body(cls: type[_E], body: object) -> _E:
        _map(body, cls.TYPE)
        return cls()

    def to_body(self) -> dict[str, Any]:
        return {}


def _ids_from(mtype: MsgType, body: object, key: str) -> list[str]:
    return _each(mtype, key, _list(_map(body, mtype), key, mtype), _id)


@dataclass(**SLOTS)
class Submit(AppMessage):
    """SUBMIT, client -> coordinator: ``{"tasks": [[id, payload, retries,
    backoff, not_before(, result_ttl)], ...]}`` (the 6th field only when set)."""

    TYPE: ClassVar[MsgType] = MsgType.SUBMIT
    tasks: list[SubmitSpec]

    @classmethod
    def from_body(cls, body: object) -> Submit:
        t = MsgType.SUBMIT
        rows = _list(_map(body, t), "tasks", t)
        out: list[SubmitSpec] = []
        append = out.append
        new = _new
        for row in rows:
            if type(row) is list and len(row) == 5:
                tid, payload, retries, backoff, not_before = row
                if (
                    type(tid) is str
                    and 0 < len(tid) <= MAX_ID
                    and type(payload) is bytes
                    and type(retries) is int
                    and 0 <= retries < _I64
                    and type(backoff) is float
                    and 0.0 <= backoff < _INF
                    and type(not_before) is float
                    and 0.0 <= not_before < _INF
                ):
                    append(
                        new(SubmitSpec, (tid, payload, retries, backoff, not_before, None, _DQ, 0))
                    )
                    continue
            append(_slow(t, "tasks", rows, _spec_row, row))
        return cls(out)

    def to_body(self) -> dict[str, Any]:
        # as short as the row allows: queue and priority only when not the defaults
        return {
            "tasks": [
                list(s)
                if s[6] != _DQ or s[7]
                else [s[0], s[1], s[2], s[3], s[4]]
                if s[5] is None
                else [s[0], s[1], s[2], s[3], s[4], s[5]]
                for s in self.tasks
            ]
        }


@dataclass(**SLOTS)
class SubmitAck(AppMessage):
    """SUBMIT_ACK, coordinator -> client, answering a SUBMIT: ``{"states":
    [state, ...]}``, each task's state after the submit, in submit order."""

    TYPE: ClassVar[MsgType] = MsgType.SUBMIT_ACK
    states: list[TaskState]

    @classmethod
    def from_body(cls, body: object) -> SubmitAck:
        t = MsgType.SUBMIT_ACK
        values = _list(_map(body, t), "states", t)
        states = _STATES
        n = len(states)
        out: list[TaskState] = []
        append = out.append
        for v in values:
            if type(v) is int and 0 <= v < n:
                append(states[v])
            else:
                append(_slow(t, "states", values, _state, v))
        return cls(out)

    def to_body(self) -> dict[str, Any]:
        plain = _STATE_VALUES
        return {"states": [plain[s] for s in self.states]}


@dataclass(**SLOTS)
class WaitAck(AppMessage):
    """SUBMIT_ACK, coordinator -> client, answering a WAIT sent with a
    correlation id: ``{"unknown": [id, ...]}``, the ids it does not know.

    Same type as :class:`SubmitAck`; the receiver knows which it asked for
    (:func:`decode` goes by the key)."""

    TYPE: ClassVar[MsgType] = MsgType.SUBMIT_ACK
    unknown: list[str]

    @classmethod
    def from_body(cls, body: object) -> WaitAck:
        return cls(_ids_from(MsgType.SUBMIT_ACK, body, "unknown"))

    def to_body(self) -> dict[str, Any]:
        return {"unknown": list(self.unknown)}


@dataclass(**SLOTS)
class Wait(AppMessage):
    """WAIT, client -> coordinator: ``{"ids": [id, ...]}``: push RESULTS for
    these when they end (a nonzero correlation id asks for a :class:`WaitAck`)."""

    TYPE: ClassVar[MsgType] = MsgType.WAIT
    ids: list[str]

    @classmethod
    def from_body(cls, body: object) -> Wait:
        return cls(_ids_from(MsgType.WAIT, body, "ids"))

    def to_body(self) -> dict[str, Any]:
        return {"ids": list(self.ids)}


@dataclass(**SLOTS)
class Results(AppMessage):
    """RESULTS, coordinator -> client: ``{"results": [[id, state, value|nil,
    error|nil], ...]}``, tasks that ended."""

    TYPE: ClassVar[MsgType] = MsgType.RESULTS
    results: list[Outcome]

    @classmethod
    def from_body(cls, body: object) -> Results:
        t = MsgType.RESULTS
        rows = _list(_map(body, t), "results", t)
        states = _STATES
        n = len(states)
        out: list[Outcome] = []
        append = out.append
        new = _new
        for row in rows:
            if type(row) is list and len(row) == 4:
                tid, st, value, error = row
                if (
                    type(tid) is str
                    and 0 < len(tid) <= MAX_ID
                    and type(st) is int
                    and 0 <= st < n
                    and (value is None or type(value) is bytes)
                    and (error is None or type(error) is str)
                ):
                    append(new(Outcome, (tid, states[st], value, error)))
                    continue
            append(_slow(t, "results", rows, _outcome_row, row))
        return cls(out)

    def to_body(self) -> dict[str, Any]:
        plain = _STATE_VALUES
        return {"results": [[o[0], plain[o[1]], o[2], o[3]] for o in self.results]}


@dataclass(**SLOTS)
class Cancel(AppMessage):
    """CANCEL, client -> coordinator: ``{"ids": [id, ...], "terminate": bool}``
    (``terminate`` may be left out: False)."""

    TYPE: ClassVar[MsgType] = MsgType.CANCEL
    ids: list[str]
    terminate: bool = False

    @classmethod
    def from_body(cls, body: object) -> Cancel:
        t = MsgType.CANCEL
        b = _map(body, t)
        ids = _each(t, "ids", _list(b, "ids", t), _id)
        terminate = b.get("terminate", False)
        if type(terminate) is not bool:
            raise _malformed(t, "terminate", f"must be a bool, got {_type_name(terminate)}")
        return cls(ids, terminate)

    def to_body(self) -> dict[str, Any]:
        return {"ids": list(self.ids), "terminate": self.terminate}


def _flags_from(mtype: MsgType, body: object, key: str) -> list[bool]:
    return _each(mtype, key, _list(_map(body, mtype), key, mtype), lambda x: _flag(x, "flag"))


@dataclass(**SLOTS)
class CancelAck(AppMessage):
    """CANCEL_ACK, coordinator -> client: ``{"cancelled": [bool, ...]}`` in
    CANCEL order, sent once each outcome is certain."""

    TYPE: ClassVar[MsgType] = MsgType.CANCEL_ACK
    cancelled: list[bool]

    @classmethod
    def from_body(cls, body: object) -> CancelAck:
        return cls(_flags_from(MsgType.CANCEL_ACK, body, "cancelled"))

    def to_body(self) -> dict[str, Any]:
        return {"cancelled": list(self.cancelled)}


@dataclass(**SLOTS)
class Status(_EmptyBody):
    """STATUS, client -> coordinator: ``{}``."""

    TYPE: ClassVar[MsgType] = MsgType.STATUS


_STATUS_KEYS = (
    "time",
    "started_at",
    "totals",
    "internal_errors",
    "nodes",
    "queue_depth",
    "in_flight",
    "dead",
    "tasks",
    "completions",
    "purged",
    "peers",
    "rejected_peers",
    "queues",
    "schedules",
)


@dataclass(**SLOTS)
class StatusReply(AppMessage):
    """STATUS_REPLY, coordinator -> client: what ``Coordinator.status()`` gives.

    ``tasks`` counts tasks per state (lower-case state names), ``completions``
    per verdict; any other key of the body is kept in ``extra`` and sent on.
    """

    TYPE: ClassVar[MsgType] = MsgType.STATUS_REPLY
    nodes: list[NodeStatus]
    queue_depth: int
    in_flight: int
    dead: int
    tasks: dict[str, int]
    completions: dict[str, int]
    purged: int
    peers: int
    rejected_peers: int
    queues: list[dict[str, Any]] = field(default_factory=list)
    schedules: list[dict[str, Any]] = field(default_factory=list)
    # since round 2; None where an older coordinator left them out
    time: float | None = None  # its wall clock when it answered
    started_at: float | None = None
    totals: dict[str, int] | None = None  # counted since it started
    internal_errors: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_body(cls, body: object) -> StatusReply:
        t = MsgType.STATUS_REPLY
        b = _map(body, t)
        nodes = _each(t, "nodes", _list(b, "nodes", t), _node_status)
        try:
            return cls(
                nodes,
                _count(_get(b, "queue_depth", t), "queue_depth"),
                _count(_get(b, "in_flight", t), "in_flight"),
                _count(_get(b, "dead", t), "dead"),
                _counts(_get(b, "tasks", t), "tasks"),
                _counts(_get(b, "completions", t), "completions"),
                _count(_get(b, "purged", t), "purged"),
                _count(_get(b, "peers", t), "peers"),
                _count(_get(b, "rejected_peers", t), "rejected_peers"),
                _each(t, "queues", _list(b, "queues", t), _queue_map) if "queues" in b else [],
                _each(t, "schedules", _list(b, "schedules", t), _schedule_map)
                if "schedules" in b
                else [],
                _real(b["time"], "time") if "time" in b else None,
                _real(b["started_at"], "started_at") if "started_at" in b else None,
                _counts(b["totals"], "totals") if "totals" in b else None,
                _count(b["internal_errors"], "internal_errors") if "internal_errors" in b else None,
                _extra(b, _STATUS_KEYS, "body"),
            )
        except _Bad as exc:
            raise _malformed(t, "", str(exc)) from None

    def to_body(self) -> dict[str, Any]:
        head = {} if self.time is None else {"time": self.time}
        if self.started_at is not None:
            head["started_at"] = self.started_at
        tail: dict[str, Any] = {} if self.totals is None else {"totals": dict(self.totals)}
        if self.internal_errors is not None:
            tail["internal_errors"] = self.internal_errors
        return {
            **head,
            "nodes": [
                {
                    "id": n.id,
                    "address": n.address,
                    "capacity": n.capacity,
                    "outstanding": n.outstanding,
                    "max_outstanding": n.max_outstanding,
                    "silent_s": n.silent_s,
                    **{k: v for k, v in n.extra.items() if k not in _NODE_KEYS},
                }
                for n in self.nodes
            ],
            "queue_depth": self.queue_depth,
            "in_flight": self.in_flight,
            "dead": self.dead,
            "tasks": dict(self.tasks),
            "completions": dict(self.completions),
            "purged": self.purged,
            "peers": self.peers,
            "rejected_peers": self.rejected_peers,
            "queues": list(self.queues),
            "schedules": list(self.schedules),
            **tail,
            **{k: v for k, v in self.extra.items() if k not in _STATUS_KEYS},
        }


@dataclass(**SLOTS)
class DeadList(AppMessage):
    """DEAD_LIST, client -> coordinator: ``{"limit": n}`` (left out: 100)."""

    TYPE: ClassVar[MsgType] = MsgType.DEAD_LIST
    limit: int = 100

    @classmethod
    def from_body(cls, body: object) -> DeadList:
        t = MsgType.DEAD_LIST
        try:
            return cls(_count(_map(body, t).get("limit", 100), "limit"))
        except _Bad as exc:
            raise _malformed(t, "", str(exc)) from None

    def to_body(self) -> dict[str, Any]:
        return {"limit": self.limit}


@dataclass(**SLOTS)
class DeadReply(AppMessage):
    """DEAD_REPLY, coordinator -> client: ``{"tasks": [{id, state, attempts,
    failures, lost, error}, ...]}`` (``TaskInfo.summary()`` of each dead task;
    other keys of an entry are kept in its ``extra``)."""

    TYPE: ClassVar[MsgType] = MsgType.DEAD_REPLY
    tasks: list[TaskSummary]

    @classmethod
    def from_body(cls, body: object) -> DeadReply:
        t = MsgType.DEAD_REPLY
        return cls(_each(t, "tasks", _list(_map(body, t), "tasks", t), _task_summary))

    def to_body(self) -> dict[str, Any]:
        return {
            "tasks": [
                {
                    "id": s.id,
                    "state": s.state.name,
                    "attempts": s.attempts,
                    "failures": s.failures,
                    "lost": s.lost,
                    "error": s.error,
                    **{k: v for k, v in s.extra.items() if k not in _SUMMARY_KEYS},
                }
                for s in self.tasks
            ]
        }


@dataclass(**SLOTS)
class Requeue(AppMessage):
    """REQUEUE, client -> coordinator: ``{"ids": [id, ...]}`` of dead tasks."""

    TYPE: ClassVar[MsgType] = MsgType.REQUEUE
    ids: list[str]

    @classmethod
    def from_body(cls, body: object) -> Requeue:
        return cls(_ids_from(MsgType.REQUEUE, body, "ids"))

    def to_body(self) -> dict[str, Any]:
        return {"ids": list(self.ids)}


@dataclass(**SLOTS)
class RequeueAck(AppMessage):
    """REQUEUE_ACK, coordinator -> client: ``{"requeued": [bool, ...]}``."""

    TYPE: ClassVar[MsgType] = MsgType.REQUEUE_ACK
    requeued: list[bool]

    @classmethod
    def from_body(cls, body: object) -> RequeueAck:
        return cls(_flags_from(MsgType.REQUEUE_ACK, body, "requeued"))

    def to_body(self) -> dict[str, Any]:
        return {"requeued": list(self.requeued)}


def _capacity(mtype: MsgType, b: dict[Any, Any]) -> int:
    try:
        return _count(_get(b, "capacity", mtype), "capacity")
    except _Bad as exc:
        raise _malformed(mtype, "", str(exc)) from None


def _weights(x: object) -> dict[str, int]:
    if type(x) is not dict or not x:
        raise _Bad(f"queues must be a non-empty map of name to weight, got {_shown(x)}")
    out = {}
    for name, weight in x.items():
        if type(weight) is not int or not 0 < weight < _I64:
            raise _Bad(f"queue {_shown(name)}: weight must be an int > 0, got {_shown(weight)}")
        out[_queue_name(name)] = weight
    return out


@dataclass(**SLOTS)
class Ready(AppMessage):
    """READY, node -> coordinator: ``{"capacity": n, "name": str, "queues":
    {name: weight}, "strict": bool}`` (``name`` may be left out: "";
    ``queues``: the default queue; ``strict``: False)."""

    TYPE: ClassVar[MsgType] = MsgType.READY
    capacity: int
    name: str = ""
    queues: Mapping[str, int] = field(default_factory=lambda: DEFAULT_SERVED)
    strict: bool = False

    @classmethod
    def from_body(cls, body: object) -> Ready:
        t = MsgType.READY
        b = _map(body, t)
        capacity = _capacity(t, b)
        try:
            name = _str(b.get("name", ""), "name", MAX_NAME)
            queues = _weights(b["queues"]) if "queues" in b else DEFAULT_SERVED
            strict = _flag(b.get("strict", False), "strict")
        except _Bad as exc:
            raise _malformed(t, "", str(exc)) from None
        return cls(capacity, name, queues, strict)

    def to_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"capacity": self.capacity, "name": self.name}
        if dict(self.queues) != dict(DEFAULT_SERVED) or self.strict:
            body["queues"] = dict(self.queues)
            body["strict"] = self.strict
        return body


@dataclass(**SLOTS)
class Tasks(AppMessage):
    """TASKS, coordinator -> node: ``{"tasks": [[id, token, payload], ...]}``."""

    TYPE: ClassVar[MsgType] = MsgType.TASKS
    tasks: list[Lease]

    @classmethod
    def from_body(cls, body: object) -> Tasks:
        t = MsgType.TASKS
        rows = _list(_map(body, t), "tasks", t)
        out: list[Lease] = []
        append = out.append
        new = _new
        for row in rows:
            if type(row) is list and len(row) == 3:
                tid, token, payload = row
                if (
                    type(tid) is str
                    and 0 < len(tid) <= MAX_ID
                    and type(token) is int
                    and 0 <= token < _I64
                    and type(payload) is bytes
                ):
                    append(new(Lease, row))
                    continue
            append(_slow(t, "tasks", rows, _lease_row, row))
        return cls(out)

    def to_body(self) -> dict[str, Any]:
        return {"tasks": [[le[0], le[1], le[2]] for le in self.tasks]}


@dataclass(**SLOTS)
class Done(AppMessage):
    """DONE, node -> coordinator: ``{"results": [[id, token, ok, value|nil,
    error|nil, cancelled, run_s|nil], ...]}`` (``cancelled`` and ``run_s``, the
    seconds the task ran, may be left out: False and nil)."""

    TYPE: ClassVar[MsgType] = MsgType.DONE
    results: list[Completion]

    @classmethod
    def from_body(cls, body: object) -> Done:
        t = MsgType.DONE
        rows = _list(_map(body, t), "results", t)
        out: list[Completion] = []
        append = out.append
        new = _new
        for row in rows:
            if type(row) is list and len(row) == 7:
                tid, token, ok, value, error, cancelled, run_s = row
                if (
                    type(tid) is str
                    and 0 < len(tid) <= MAX_ID
                    and type(token) is int
                    and 0 <= token < _I64
                    and type(ok) is bool
                    and (value is None or type(value) is bytes)
                    and (error is None or type(error) is str)
                    and type(cancelled) is bool
                    and (run_s is None or (type(run_s) is float and 0.0 <= run_s < _INF))
                ):
                    append(new(Completion, row))
                    continue
            append(_slow(t, "results", rows, _completion_row, row))
        return cls(out)

    def to_body(self) -> dict[str, Any]:
        # six fields when the run time is not known: the row shape of round 1
        return {
            "results": [
                [c[0], c[1], c[2], c[3], c[4], c[5]] if c[6] is None else list(c)
                for c in self.results
            ]
        }


@dataclass(**SLOTS)
class DoneAck(AppMessage):
    """DONE_ACK, coordinator -> node: ``{"status": [verdict, ...]}`` in DONE order."""

    TYPE: ClassVar[MsgType] = MsgType.DONE_ACK
    status: list[Verdict]

    @classmethod
    def from_body(cls, body: object) -> DoneAck:
        t = MsgType.DONE_ACK
        values = _list(_map(body, t), "status", t)
        verdicts = _VERDICTS
        out: list[Verdict] = []
        append = out.append
        for v in values:
            found = verdicts.get(v) if type(v) is str else None
            append(found if found is not None else _slow(t, "status", values, _verdict, v))
        return cls(out)

    def to_body(self) -> dict[str, Any]:
        plain = _VERDICT_VALUES
        return {"status": [plain[v] for v in self.status]}


@dataclass(**SLOTS)
class Release(AppMessage):
    """RELEASE, node -> coordinator: ``{"tasks": [[id, token, started], ...]}``
    (rows are :class:`pyqueue.cluster.states.Release`; ``started`` may be
    left out: False).  Not to be confused with that row type."""

    TYPE: ClassVar[MsgType] = MsgType.RELEASE
    tasks: list[S.Release]

    @classmethod
    def from_body(cls, body: object) -> Release:
        t = MsgType.RELEASE
        return cls(_each(t, "tasks", _list(_map(body, t), "tasks", t), _release_row))

    def to_body(self) -> dict[str, Any]:
        return {"tasks": [[r[0], r[1], r[2]] for r in self.tasks]}


@dataclass(**SLOTS)
class Heartbeat(_EmptyBody):
    """HEARTBEAT, node or client -> coordinator: ``{}``."""

    TYPE: ClassVar[MsgType] = MsgType.HEARTBEAT


@dataclass(**SLOTS)
class Credit(AppMessage):
    """CREDIT, node -> coordinator: ``{"capacity": n}``, its new capacity."""

    TYPE: ClassVar[MsgType] = MsgType.CREDIT
    capacity: int

    @classmethod
    def from_body(cls, body: object) -> Credit:
        t = MsgType.CREDIT
        return cls(_capacity(t, _map(body, t)))

    def to_body(self) -> dict[str, Any]:
        return {"capacity": self.capacity}


@dataclass(**SLOTS)
class Revoke(AppMessage):
    """REVOKE, coordinator -> node: ``{"tasks": [[id, token, terminate], ...]}``."""

    TYPE: ClassVar[MsgType] = MsgType.REVOKE
    tasks: list[Revocation]

    @classmethod
    def from_body(cls, body: object) -> Revoke:
        t = MsgType.REVOKE
        return cls(_each(t, "tasks", _list(_map(body, t), "tasks", t), _revocation_row))

    def to_body(self) -> dict[str, Any]:
        return {"tasks": [[r[0], r[1], r[2]] for r in self.tasks]}


@dataclass(**SLOTS)
class RevokeAck(AppMessage):
    """REVOKE_ACK, node -> coordinator: ``{"outcomes": [outcome, ...]}`` in REVOKE order."""

    TYPE: ClassVar[MsgType] = MsgType.REVOKE_ACK
    outcomes: list[RevokeOutcome]

    @classmethod
    def from_body(cls, body: object) -> RevokeAck:
        t = MsgType.REVOKE_ACK
        return cls(_each(t, "outcomes", _list(_map(body, t), "outcomes", t), _revoke_outcome))

    def to_body(self) -> dict[str, Any]:
        return {"outcomes": [o.value for o in self.outcomes]}


@dataclass(**SLOTS)
class HeartbeatAck(_EmptyBody):
    """HEARTBEAT_ACK, coordinator -> node or client: ``{}``."""

    TYPE: ClassVar[MsgType] = MsgType.HEARTBEAT_ACK


def _one(mtype: MsgType, body: object, key: str, check: Callable[[Any], _T]) -> _T:
    try:
        return check(_get(_map(body, mtype), key, mtype))
    except _Bad as exc:
        raise _malformed(mtype, key, str(exc)) from None


@dataclass(**SLOTS)
class ResultsTaken(AppMessage):
    """RESULTS_TAKEN, client -> coordinator: ``{"n": rows}``: the client took
    that many result rows, which reopens its result window."""

    TYPE: ClassVar[MsgType] = MsgType.RESULTS_TAKEN
    n: int

    @classmethod
    def from_body(cls, body: object) -> ResultsTaken:
        return cls(_one(MsgType.RESULTS_TAKEN, body, "n", lambda x: _count(x, "n")))

    def to_body(self) -> dict[str, Any]:
        return {"n": self.n}


@dataclass(**SLOTS)
class Purge(AppMessage):
    """PURGE, client -> coordinator: ``{"finished_before": time|nil, "dead":
    bool, "limit": n}``: forget finished (and dead) tasks now."""

    TYPE: ClassVar[MsgType] = MsgType.PURGE
    finished_before: float | None
    dead: bool
    limit: int

    @classmethod
    def from_body(cls, body: object) -> Purge:
        t = MsgType.PURGE
        b = _map(body, t)
        try:
            before = b.get("finished_before")
            return cls(
                None if before is None else _real(before, "finished_before"),
                _flag(b.get("dead", False), "dead"),
                _count(_get(b, "limit", t), "limit"),
            )
        except _Bad as exc:
            raise _malformed(t, "", str(exc)) from None

    def to_body(self) -> dict[str, Any]:
        return {"finished_before": self.finished_before, "dead": self.dead, "limit": self.limit}


@dataclass(**SLOTS)
class PurgeAck(AppMessage):
    """PURGE_ACK, coordinator -> client: ``{"purged": n}``."""

    TYPE: ClassVar[MsgType] = MsgType.PURGE_ACK
    purged: int

    @classmethod
    def from_body(cls, body: object) -> PurgeAck:
        return cls(_one(MsgType.PURGE_ACK, body, "purged", lambda x: _count(x, "purged")))

    def to_body(self) -> dict[str, Any]:
        return {"purged": self.purged}


#: "leave it as it is", for a setting CONFIGURE_QUEUE does not change
KEEP: Any = enum.Enum("Keep", "KEEP").KEEP  # type: ignore[attr-defined]


@dataclass(**SLOTS)
class ConfigureQueue(AppMessage):
    """CONFIGURE_QUEUE, client -> coordinator: ``{"name": str, "rate_limit":
    per-second|nil, "paused": bool}``; a key left out keeps that setting."""

    TYPE: ClassVar[MsgType] = MsgType.CONFIGURE_QUEUE
    name: str
    rate_limit: Any = KEEP  # float | None | KEEP
    paused: Any = KEEP  # bool | KEEP

    @classmethod
    def from_body(cls, body: object) -> ConfigureQueue:
        t = MsgType.CONFIGURE_QUEUE
        b = _map(body, t)
        try:
            name = _queue_name(_get(b, "name", t))
            rate = b.get("rate_limit", KEEP)
            if rate is not KEEP and rate is not None:
                rate = _real(rate, "rate_limit")
                if rate <= 0:
                    raise _Bad(f"rate_limit must be > 0 per second or nil, got {rate}")
            paused = b.get("paused", KEEP)
            if paused is not KEEP:
                paused = _flag(paused, "paused")
        except _Bad as exc:
            raise _malformed(t, "", str(exc)) from None
        return cls(name, rate, paused)

    def to_body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"name": self.name}
        if self.rate_limit is not KEEP:
            body["rate_limit"] = self.rate_limit
        if self.paused is not KEEP:
            body["paused"] = self.paused
        return body


def _info_map(x: object, what: str) -> dict[str, Any]:
    if type(x) is not dict or not all(type(k) is str for k in x):
        raise _Bad(f"{what} must be a map with str keys, got {_type_name(x)}")
    return x


def _opt(x: object, check: Callable[[object, str], _T], what: str) -> _T | None:
    return None if x is None else check(x, what)


def _queue_map(x: object) -> dict[str, Any]:
    """A queue as status shows it: name, rate_limit, paused, tasks, oldest_pending_s."""
    d = _info_map(x, "queue")
    return {
        "name": _queue_name(_need(d, "name")),
        "rate_limit": _opt(_need(d, "rate_limit"), _real, "rate_limit"),
        "paused": _flag(_need(d, "paused"), "paused"),
        "tasks": _counts(_need(d, "tasks"), "tasks"),
        "oldest_pending_s": _opt(_need(d, "oldest_pending_s"), _real, "oldest_pending_s"),
    }


def _schedule_map(x: object) -> dict[str, Any]:
    """A schedule as status shows it (:class:`~pyqueue.cluster.schedules.Schedule`'s fields)."""
    d = _info_map(x, "schedule")
    return {
        "id": _str(_need(d, "id"), "id", 200),
        "cron": _opt(_need(d, "cron"), _str, "cron"),
        "every": _opt(_need(d, "every"), _real, "every"),
        "queue": _queue_name(_need(d, "queue")),
        "priority": _priority(_need(d, "priority")),
        "misfire": _str(_need(d, "misfire"), "misfire"),
        "timezone": _str(_need(d, "timezone"), "timezone"),
        "paused": _flag(_need(d, "paused"), "paused"),
        "anchor": _real(_need(d, "anchor"), "anchor"),
        "next_fire": _opt(_need(d, "next_fire"), _real, "next_fire"),
        "last_fire": _opt(_need(d, "last_fire"), _real, "last_fire"),
    }


@dataclass(**SLOTS)
class QueueInfoReply(AppMessage):
    """QUEUE_INFO, coordinator -> client: ``{"queue": {...}}``, a queue's
    settings and counts as ``status`` shows them."""

    TYPE: ClassVar[MsgType] = MsgType.QUEUE_INFO
    queue: dict[str, Any]

    @classmethod
    def from_body(cls, body: object) -> QueueInfoReply:
        return cls(_one(MsgType.QUEUE_INFO, body, "queue", _queue_map))

    def to_body(self) -> dict[str, Any]:
        return {"queue": self.queue}


_MISFIRES = ("coalesce", "skip", "all")


@dataclass(**SLOTS)
class SetSchedule(AppMessage):
    """SCHEDULE, client -> coordinator: declare or update a recurring task:
    ``{"id", "payload", "cron": str|nil, "every": seconds|nil, "queue",
    "priority", "misfire", "timezone"}``."""

    TYPE: ClassVar[MsgType] = MsgType.SCHEDULE
    spec: ScheduleSpec

    @classmethod
    def from_body(cls, body: object) -> SetSchedule:
        t = MsgType.SCHEDULE
        b = _map(body, t)
        try:
            cron = b.get("cron")
            every = b.get("every")
            misfire = _str(_get(b, "misfire", t), "misfire")
            if misfire not in _MISFIRES:
                raise _Bad(f"misfire must be one of {_MISFIRES}, got {_shown(misfire)}")
            spec = ScheduleSpec(
                _str(_get(b, "id", t), "id", 200),
                _payload(_get(b, "payload", t)),
                None if cron is None else _str(cron, "cron", 200),
                None if every is None else _real(every, "every"),
                _queue_name(_get(b, "queue", t)),
                _priority(_get(b, "priority", t)),
                misfire,
                _str(_get(b, "timezone", t), "timezone", 64),
            )
        except _Bad as exc:
            raise _malformed(t, "", str(exc)) from None
        return cls(spec)

    def to_body(self) -> dict[str, Any]:
        return dict(self.spec._asdict())


@dataclass(**SLOTS)
class ScheduleCtl(AppMessage):
    """SCHEDULE_CTL, client -> coordinator: ``{"id": str, "action": "pause" |
    "resume" | "delete"}``."""

    TYPE: ClassVar[MsgType] = MsgType.SCHEDULE_CTL
    id: str
    action: str

    @classmethod
    def from_body(cls, body: object) -> ScheduleCtl:
        t = MsgType.SCHEDULE_CTL
        b = _map(body, t)
        try:
            sid = _str(_get(b, "id", t), "id", 200)
            action = _str(_get(b, "action", t), "action")
            if action not in ("pause", "resume", "delete"):
                raise _Bad(f"action must be pause, resume or delete, got {_shown(action)}")
        except _Bad as exc:
            raise _malformed(t, "", str(exc)) from None
        return cls(sid, action)

    def to_body(self) -> dict[str, Any]:
        return {"id": self.id, "action": self.action}


@dataclass(**SLOTS)
class ScheduleInfo(AppMessage):
    """SCHEDULE_INFO, coordinator -> client: ``{"schedule": {...}|nil}`` (nil:
    no such schedule, or it was just deleted)."""

    TYPE: ClassVar[MsgType] = MsgType.SCHEDULE_INFO
    schedule: dict[str, Any] | None

    @classmethod
    def from_body(cls, body: object) -> ScheduleInfo:
        def check(x: object) -> dict[str, Any] | None:
            return None if x is None else _schedule_map(x)

        return cls(_one(MsgType.SCHEDULE_INFO, body, "schedule", check))

    def to_body(self) -> dict[str, Any]:
        return {"schedule": self.schedule}


@dataclass(**SLOTS)
class Schedules(_EmptyBody):
    """SCHEDULES, client -> coordinator: ``{}``: list every schedule."""

    TYPE: ClassVar[MsgType] = MsgType.SCHEDULES


@dataclass(**SLOTS)
class ScheduleList(AppMessage):
    """SCHEDULE_LIST, coordinator -> client: ``{"schedules": [{...}, ...]}``."""

    TYPE: ClassVar[MsgType] = MsgType.SCHEDULE_LIST
    schedules: list[dict[str, Any]]

    @classmethod
    def from_body(cls, body: object) -> ScheduleList:
        t = MsgType.SCHEDULE_LIST
        items = _list(_map(body, t), "schedules", t)
        return cls(_each(t, "schedules", items, _schedule_map))

    def to_body(self) -> dict[str, Any]:
        return {"schedules": list(self.schedules)}


#: any of the message classes (what :func:`decode` may return)
AnyMessage = Union[
    Submit,
    SubmitAck,
    WaitAck,
    Wait,
    Results,
    Cancel,
    CancelAck,
    Status,
    StatusReply,
    DeadList,
    DeadReply,
    Requeue,
    RequeueAck,
    Ready,
    Tasks,
    Done,
    DoneAck,
    Release,
    Heartbeat,
    Credit,
    Revoke,
    RevokeAck,
    HeartbeatAck,
    ResultsTaken,
    Purge,
    PurgeAck,
    ConfigureQueue,
    QueueInfoReply,
    SetSchedule,
    ScheduleCtl,
    ScheduleInfo,
    Schedules,
    ScheduleList,
]

#: the class of each application message type (SUBMIT_ACK: :class:`SubmitAck`;
#: :func:`decode` picks :class:`WaitAck` by its key)
CLASSES: dict[MsgType, type[AppMessage]] = {
    cls.TYPE: cls for cls in get_args(AnyMessage) if cls is not WaitAck
}


def decode(msg: Message) -> AppMessage:
    """The typed message ``msg`` carries.

    A SUBMIT_ACK whose body has ``"unknown"`` and no ``"states"`` is a
    :class:`WaitAck`; every other type has one class (:data:`CLASSES`).

    Raises
    ------
    MalformedFrame
        If the body is not what that message's class accepts.
    UnexpectedMessage
        If ``msg.type`` is not an application message (a handshake type).
    """
    cls = CLASSES.get(msg.type)
    if cls is None:
        raise UnexpectedMessage(f"{_type_label(msg.type)} is not an application message")
    body = msg.body
    if cls is SubmitAck and type(body) is dict and "unknown" in body and "states" not in body:
        return WaitAck.from_body(body)
    return cls.from_body(body)


def _type_label(mtype: object) -> str:
    return mtype.name if isinstance(mtype, MsgType) else f"type {mtype!r}"
