"""Typed application messages: round trips, refused bodies, a fuzz, and the
exact bodies on the wire (pinned to what the peers sent before the module)."""

from __future__ import annotations

import math
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyqueue.cluster import messages as M
from pyqueue.cluster.protocol import Message, MsgType
from pyqueue.cluster.schedules import ScheduleSpec
from pyqueue.cluster.server import Coordinator
from pyqueue.cluster.states import (
    Completion,
    Lease,
    Outcome,
    Release,
    SubmitSpec,
    TaskInfo,
    TaskState,
    Verdict,
)
from pyqueue.errors import MalformedFrame, UnexpectedMessage


def wire(body: dict[str, Any]) -> Any:
    """What the peer's decoder makes of ``body`` (the protocol's msgpack options)."""
    return msgpack.unpackb(msgpack.packb(body, use_bin_type=True), raw=False, use_list=True)


QUEUE = {
    "name": "high",
    "rate_limit": None,
    "paused": False,
    "tasks": {"pending": 3},
    "oldest_pending_s": 1.5,
}
SCHEDULE = {
    "id": "a",
    "cron": "0 3 * * *",
    "every": None,
    "queue": "default",
    "priority": 0,
    "misfire": "coalesce",
    "timezone": "UTC",
    "paused": False,
    "anchor": 1.6e9,
    "next_fire": 1.7e9,
    "last_fire": None,
}
NODE = M.NodeStatus("n#1", "127.0.0.1:5", 4, 2, 3, 0.25)
SAMPLES: list[M.AppMessage] = [
    M.Submit(
        [
            SubmitSpec("a", b"p", 0, 1.0, 0.0),
            SubmitSpec("b" * M.MAX_ID, b"", 3, 0.5, 1.7e9, 60.0),
            SubmitSpec("c", b"q", 1, 0.0, 0.0, 0.0),
        ]
    ),
    M.Submit([]),
    M.SubmitAck(list(TaskState)),
    M.WaitAck(["gone", "x"]),
    M.Wait(["a", "b"]),
    M.Results(
        [
            Outcome("a", TaskState.SUCCEEDED, b"v", None),
            Outcome("b", TaskState.FAILED, b"e", "Traceback ..."),
            Outcome("c", TaskState.DEAD, None, "lost"),
        ]
    ),
    M.Cancel(["a"], True),
    M.Cancel(["a", "b"]),
    M.CancelAck([True, False]),
    M.Status(),
    M.StatusReply(
        [NODE, NODE._replace(id="n#2", silent_s=-0.5, extra={"zone": "eu"})],
        queue_depth=5,
        in_flight=2,
        dead=1,
        tasks={"pending": 5, "leased": 2},
        completions={"accepted": 10, "stale": 1},
        purged=7,
        peers=3,
        rejected_peers=0,
        extra={"version": "9", "new": [1, 2]},
    ),
    M.DeadList(),
    M.DeadList(7),
    M.DeadReply(
        [
            M.TaskSummary("a", TaskState.DEAD, 4, 0, 4, "node lost"),
            M.TaskSummary("b", TaskState.DEAD, 1, 1, 0, None, {"node": "n#1"}),
        ]
    ),
    M.Requeue(["a"]),
    M.RequeueAck([False, True]),
    M.Ready(3, "host:12"),
    M.Ready(0),
    M.Tasks([Lease("a", 1, b"p"), Lease("b", 2**62, b"")]),
    M.Done(
        [
            Completion("a", 1, True, b"v", None),
            Completion("b", 2, False, b"e", "tb", True),
            Completion("c", 3, False, None, None),
            Completion("d", 4, True, b"v", None, False, 0.25),
        ]
    ),
    M.DoneAck(list(Verdict)),
    M.Release([Release("a", 1), Release("b", 2, True)]),
    M.Heartbeat(),
    M.Credit(9),
    M.Revoke([M.Revocation("a", 1, False), M.Revocation("b", 2, True)]),
    M.RevokeAck(list(M.RevokeOutcome)),
    M.HeartbeatAck(),
    M.Submit([SubmitSpec("q", b"p", 0, 1.0, 0.0, None, "high", -3)]),
    M.Ready(2, "n", {"high": 6, "low": 1}, True),
    M.ResultsTaken(12),
    M.Purge(1.7e9, True, 10_000),
    M.Purge(None, True, 5),
    M.PurgeAck(3),
    M.ConfigureQueue("high", 20.0, False),
    M.ConfigureQueue("high", None),
    M.ConfigureQueue("high"),
    M.QueueInfoReply(QUEUE),
    M.SetSchedule(ScheduleSpec("nightly", b"p", cron="0 3 * * *", timezone="Europe/Riga")),
    M.SetSchedule(ScheduleSpec("tick", b"p", every=1.5, queue="q", priority=2, misfire="all")),
    M.ScheduleCtl("nightly", "pause"),
    M.ScheduleInfo(SCHEDULE),
    M.ScheduleInfo(None),
    M.Schedules(),
    M.ScheduleList([SCHEDULE, {**SCHEDULE, "id": "b", "cron": None, "every": 2.5}]),
]


def test_every_application_type_has_a_class_with_its_type():
    app_types = {t for t in MsgType if t >= MsgType.SUBMIT}
    assert set(M.CLASSES) == app_types
    for mtype, cls in M.CLASSES.items():
        assert cls.TYPE is mtype
    assert M.WaitAck.TYPE is MsgType.SUBMIT_ACK
    assert {type(m) for m in SAMPLES} == set(M.CLASSES.values()) | {M.WaitAck}


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip_through_msgpack_gives_an_equal_message(msg):
    body = msg.to_body()
    assert type(msg).from_body(wire(body)) == msg
    # in process too (a sans-IO test feeds bodies without packing them)
    assert type(msg).from_body(body) == msg
    assert M.decode(Message(msg.TYPE, 1, wire(body))) == msg


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_to_body_holds_only_plain_wire_values(msg):
    """No enum members, tuples or mappings in a body: it packs and compares
    exactly as the hand-built bodies did."""

    def plain(x: Any) -> bool:
        if type(x) is list:
            return all(plain(y) for y in x)
        if type(x) is dict:
            return all(type(k) is str and plain(v) for k, v in x.items())
        return x is None or type(x) in (str, bytes, int, float, bool)

    body = msg.to_body()
    assert plain(body)
    assert wire(body) == body


def test_decoded_rows_are_the_states_types():
    sub = M.Submit.from_body({"tasks": [["a", b"p", 0, 1.0, 0.0]]})
    assert type(sub.tasks[0]) is SubmitSpec and sub.tasks[0].result_ttl is None
    res = M.Results.from_body({"results": [["a", 3, b"v", None]]})
    assert type(res.results[0]) is Outcome and res.results[0].state is TaskState.SUCCEEDED
    ack = M.DoneAck.from_body({"status": ["stale"]})
    assert ack.status[0] is Verdict.STALE
    assert type(M.Tasks.from_body({"tasks": [["a", 1, b"p"]]}).tasks[0]) is Lease
    assert type(M.Done.from_body({"results": [["a", 1, True, b"", None]]}).results[0]) is Completion
    assert type(M.Release.from_body({"tasks": [["a", 1]]}).tasks[0]) is Release


def test_optional_fields_and_keys_take_their_defaults():
    assert M.Submit.from_body({"tasks": [["a", b"p", 0, 1, 2]]}).tasks == [
        SubmitSpec("a", b"p", 0, 1.0, 2.0)
    ]  # ints where floats are wanted become floats
    assert (
        M.Submit.from_body({"tasks": [["a", b"p", 0, 1.0, 0.0, None]]}).tasks[0].result_ttl is None
    )
    assert M.Done.from_body({"results": [["a", 1, True, b"", None]]}).results[0].cancelled is False
    assert M.Release.from_body({"tasks": [["a", 1]]}).tasks == [Release("a", 1, False)]
    assert M.Cancel.from_body({"ids": []}) == M.Cancel([], False)
    assert M.DeadList.from_body({}) == M.DeadList(100)
    assert M.Ready.from_body({"capacity": 2}) == M.Ready(2, "")
    # keys a newer peer may add are ignored (kept, where the body is open)
    assert M.Heartbeat.from_body({"since": 1}) == M.Heartbeat()
    assert M.Credit.from_body({"capacity": 1, "why": "tuned"}) == M.Credit(1)


def test_decode_tells_a_wait_ack_from_a_submit_ack_and_refuses_handshake_types():
    assert M.decode(Message(MsgType.SUBMIT_ACK, 3, {"unknown": []})) == M.WaitAck([])
    assert M.decode(Message(MsgType.SUBMIT_ACK, 3, {"states": [1]})) == M.SubmitAck(
        [TaskState.PENDING]
    )
    with pytest.raises(MalformedFrame, match="SUBMIT_ACK"):
        M.decode(Message(MsgType.SUBMIT_ACK, 3, {}))
    for mtype in (MsgType.HELLO, MsgType.WELCOME, MsgType.ERROR, MsgType.CONTINUED):
        with pytest.raises(UnexpectedMessage, match="not an application message"):
            M.decode(Message(mtype, 0, {}))


# -- refused bodies -----------------------------------------------------------------

OK_SUBMIT = ["a", b"p", 0, 1.0, 0.0]
OK_DONE = ["a", 1, True, b"v", None, False]
OK_NODE = dict(zip(M.NodeStatus._fields[:6], NODE[:6]))
OK_STATUS = M.StatusReply([NODE], 0, 0, 0, {}, {}, 0, 0, 0).to_body()
OK_SUMMARY = TaskInfo("a", TaskState.DEAD, 4, 0, 4, None, "lost", 0.0).summary()


def _with(row: list[Any], i: int, value: Any) -> list[Any]:
    out = list(row)
    out[i] = value
    return out


def _status(**change: Any) -> dict[str, Any]:
    body = dict(OK_STATUS)
    for k, v in change.items():
        if v is _DROP:
            del body[k]
        else:
            body[k] = v
    return body


_DROP = object()

BAD: list[tuple[type[M.AppMessage], Any, str]] = [
    # any message: not a map
    (M.Submit, [["a", b"p", 0, 1.0, 0.0]], "must be a map"),
    (M.Heartbeat, None, "must be a map"),
    (M.Status, "x", "must be a map"),
    (M.HeartbeatAck, 1, "must be a map"),
    # SUBMIT
    (M.Submit, {}, "missing 'tasks'"),
    (M.Submit, {"tasks": {"a": 1}}, "tasks: must be a list"),
    (M.Submit, {"tasks": [("a", b"p", 0, 1.0, 0.0)]}, r"tasks\[0\]: row must be a list"),
    (M.Submit, {"tasks": [OK_SUBMIT, "row"]}, r"tasks\[1\]: row must be a list"),
    (M.Submit, {"tasks": [OK_SUBMIT[:4]]}, "must have 5, 6 or 8 fields, got 4"),
    (M.Submit, {"tasks": [[*OK_SUBMIT, None, 1]]}, "must have 5, 6 or 8 fields, got 7"),
    (M.Submit, {"tasks": [_with(OK_SUBMIT, 0, "")]}, "task id must not be empty"),
    (M.Submit, {"tasks": [_with(OK_SUBMIT, 0, "x" * 513)]}, "longer than 512"),
    (M.Submit, {"tasks": [_with(OK_SUBMIT, 0, 7)]}, "task id must be a str, got int"),
    (M.Submit, {"tasks": [_with(OK_SUBMIT, 1, "p")]}, "payload must be bytes, got str"),
    (M.Submit, {"tasks": [_with(OK_SUBMIT, 1, None)]}, "payload must be bytes"),
    (M.Submit, {"tasks": [_with(OK_SUBMIT, 2, True)]}, "retries must be an int, got bool"),
    (M.Submit, {"tasks": [_with(OK_SUBMIT, 2, -1)]}, "retries must be in"),
    (M.Submit, {"tasks": [_with(OK_SUBMIT, 2, 2**63)]}, "retries must be in"),
    (M.Submit, {"tasks": [_with(OK_SUBMIT, 2, 1.0)]}, "retries must be an int, got float"),
    (M.Submit, {"tasks": [_with(OK_SUBMIT, 3, math.nan)]}, "backoff must be finite"),
    (M.Submit, {"tasks": [_with(OK_SUBMIT, 3, -1.0)]}, "backoff must not be negative"),
    (M.Submit, {"tasks": [_with(OK_SUBMIT, 3, "1")]}, "backoff must be a number, got str"),
    (M.Submit, {"tasks": [_with(OK_SUBMIT, 3, False)]}, "backoff must be a number, got bool"),
    (M.Submit, {"tasks": [_with(OK_SUBMIT, 4, math.inf)]}, "not_before must be finite"),
    (M.Submit, {"tasks": [_with(OK_SUBMIT, 4, -5)]}, "not_before must not be negative"),
    (M.Submit, {"tasks": [[*OK_SUBMIT, -1.0]]}, "result_ttl must not be negative"),
    (M.Submit, {"tasks": [[*OK_SUBMIT, math.nan]]}, "result_ttl must be finite"),
    (M.Submit, {"tasks": [[*OK_SUBMIT, "1h"]]}, "result_ttl must be a number"),
    # SUBMIT_ACK and WAIT's answer
    (M.SubmitAck, {}, "missing 'states'"),
    (M.SubmitAck, {"states": [7]}, r"states\[0\]: state must be a TaskState value"),
    (M.SubmitAck, {"states": [1, -1]}, r"states\[1\]"),
    (M.SubmitAck, {"states": [True]}, "TaskState value"),
    (M.SubmitAck, {"states": ["PENDING"]}, "TaskState value"),
    (M.WaitAck, {"unknown": [1]}, r"unknown\[0\]: task id must be a str"),
    (M.WaitAck, {"unknown": "abc"}, "unknown: must be a list"),
    # WAIT, CANCEL, REQUEUE: lists of ids
    (M.Wait, {"ids": [""]}, "must not be empty"),
    (M.Wait, {"ids": ["a", b"b"]}, r"ids\[1\]: task id must be a str, got bytes"),
    (M.Cancel, {"ids": ["a"], "terminate": 1}, "terminate: must be a bool, got int"),
    (M.Cancel, {"terminate": True}, "missing 'ids'"),
    (M.Cancel, {"ids": [["a"]]}, "task id must be a str, got list"),
    (M.Requeue, {"ids": ["y" * 600]}, "longer than 512"),
    (M.Requeue, {"ids": None}, "ids: must be a list"),
    # answers of flags
    (M.CancelAck, {"cancelled": [1]}, r"cancelled\[0\]: flag must be a bool, got int"),
    (M.CancelAck, {}, "missing 'cancelled'"),
    (M.RequeueAck, {"requeued": [None]}, "must be a bool"),
    # RESULTS
    (M.Results, {"results": [["a", 3, b"v"]]}, "must have 4 fields, got 3"),
    (M.Results, {"results": [["a", 9, b"v", None]]}, "TaskState value"),
    (M.Results, {"results": [["a", 3, "v", None]]}, "value must be bytes or nil, got str"),
    (M.Results, {"results": [["a", 3, None, b"tb"]]}, "error must be a str or nil, got bytes"),
    (M.Results, {"results": [["", 3, None, None]]}, "must not be empty"),
    # STATUS_REPLY
    (M.StatusReply, _status(queue_depth=_DROP), "missing 'queue_depth'"),
    (M.StatusReply, _status(nodes=_DROP), "missing 'nodes'"),
    (M.StatusReply, _status(in_flight=-1), "in_flight must be in"),
    (M.StatusReply, _status(dead=1.0), "dead must be an int, got float"),
    (M.StatusReply, _status(tasks=[1]), "tasks must be a map"),
    (M.StatusReply, _status(tasks={"pending": -2}), "must be in"),
    (M.StatusReply, _status(completions={1: 2}), "completions key must be a str"),
    (M.StatusReply, _status(nodes=[[1]]), r"nodes\[0\]: must be a map, got list"),
    (M.StatusReply, _status(nodes=[{**OK_NODE, "silent_s": math.nan}]), "silent_s must be finite"),
    (M.StatusReply, _status(nodes=[{**OK_NODE, "capacity": True}]), "capacity must be an int"),
    (M.StatusReply, _status(nodes=[{"id": "n"}]), "missing 'address'"),
    (M.StatusReply, {**OK_STATUS, 5: "x"}, "body keys must be str"),
    # DEAD_LIST, DEAD_REPLY
    (M.DeadList, {"limit": -1}, "limit must be in"),
    (M.DeadList, {"limit": "10"}, "limit must be an int, got str"),
    (M.DeadReply, {"tasks": [{**OK_SUMMARY, "state": "GONE"}]}, "TaskState name"),
    (M.DeadReply, {"tasks": [{**OK_SUMMARY, "state": 5}]}, "TaskState name"),
    (M.DeadReply, {"tasks": [{**OK_SUMMARY, "lost": None}]}, r"tasks\[0\]: lost must be an int"),
    (M.DeadReply, {"tasks": [{**OK_SUMMARY, "error": 1}]}, "error must be a str or nil"),
    (M.DeadReply, {"tasks": [{"id": "a"}]}, "missing 'state'"),
    (M.DeadReply, {"tasks": ["a"]}, "must be a map"),
    # READY, CREDIT
    (M.Ready, {"name": "n"}, "missing 'capacity'"),
    (M.Ready, {"capacity": -1}, "capacity must be in"),
    (M.Ready, {"capacity": 1, "name": 5}, "name must be a str"),
    (M.Ready, {"capacity": 1, "name": "n" * 257}, "longer than 256"),
    (M.Credit, {"capacity": 1.5}, "capacity must be an int, got float"),
    (M.Credit, {"capacity": False}, "capacity must be an int, got bool"),
    # TASKS
    (M.Tasks, {"tasks": [["a", 1]]}, "must have 3 fields, got 2"),
    (M.Tasks, {"tasks": [["a", -1, b"p"]]}, "token must be in"),
    (M.Tasks, {"tasks": [["a", "1", b"p"]]}, "token must be an int, got str"),
    (M.Tasks, {"tasks": [["a", 1, bytearray(b"p")]]}, "payload must be bytes, got bytearray"),
    # DONE
    (M.Done, {"results": [OK_DONE[:4]]}, "must have 5, 6 or 7 fields, got 4"),
    (M.Done, {"results": [_with(OK_DONE, 1, None)]}, "token must be an int"),
    (M.Done, {"results": [_with(OK_DONE, 2, 1)]}, "ok must be a bool, got int"),
    (M.Done, {"results": [_with(OK_DONE, 3, "v")]}, "value must be bytes or nil, got str"),
    (M.Done, {"results": [_with(OK_DONE, 4, 3)]}, "error must be a str or nil, got int"),
    (M.Done, {"results": [_with(OK_DONE, 5, None)]}, "cancelled must be a bool"),
    (M.Done, {"results": [[*OK_DONE, -1.0]]}, "run_s must not be negative"),
    (M.Done, {"results": [[*OK_DONE, float("nan")]]}, "run_s must be finite"),
    (M.Done, {"results": [[*OK_DONE, "1"]]}, "run_s must be a number, got str"),
    (M.Done, {"results": [OK_DONE, _with(OK_DONE, 0, "x" * 513)]}, r"results\[1\]"),
    # DONE_ACK
    (M.DoneAck, {"status": ["accepted", "bogus"]}, r"status\[1\]: verdict must be one of"),
    (M.DoneAck, {"status": [0]}, "verdict must be one of"),
    (M.DoneAck, {"status": [["accepted"]]}, "verdict must be one of"),
    (M.DoneAck, {"status": "accepted"}, "status: must be a list"),
    # RELEASE
    (M.Release, {"tasks": [["a"]]}, "must have 2 or 3 fields, got 1"),
    (M.Release, {"tasks": [["a", 1, "yes"]]}, "started must be a bool, got str"),
    (M.Release, {"tasks": [[None, 1]]}, "task id must be a str"),
    # REVOKE, REVOKE_ACK
    (M.Revoke, {"tasks": [["a", 1]]}, "must have 3 fields, got 2"),
    (M.Revoke, {"tasks": [["a", 1, 0]]}, "terminate must be a bool, got int"),
    (M.RevokeAck, {"outcomes": ["dropped"]}, r"outcomes\[0\]: outcome must be one of"),
    (M.RevokeAck, {}, "missing 'outcomes'"),
    # queues and priorities in SUBMIT and READY
    (M.Submit, {"tasks": [["a", b"p", 0, 1.0, 0.0, None, "bad name!", 0]]}, "queue name"),
    (M.Submit, {"tasks": [["a", b"p", 0, 1.0, 0.0, None, "q", 2**40]]}, "priority must be"),
    (M.Submit, {"tasks": [["a", b"p", 0, 1.0, 0.0, None, "q"]]}, "5, 6 or 8 fields, got 7"),
    (M.Ready, {"capacity": 1, "queues": {}}, "queues must be a non-empty map"),
    (M.Ready, {"capacity": 1, "queues": {"q": 0}}, "weight must be an int > 0"),
    (M.Ready, {"capacity": 1, "queues": {"q": 1}, "strict": 1}, "strict must be a bool"),
    # result window, purge
    (M.ResultsTaken, {"n": -1}, "n must be in"),
    (M.ResultsTaken, {}, "missing 'n'"),
    (M.Purge, {"finished_before": "yesterday", "dead": False, "limit": 1}, "must be a number"),
    (M.Purge, {"finished_before": None, "dead": False}, "missing 'limit'"),
    (M.PurgeAck, {"purged": True}, "purged must be an int"),
    # queue settings
    (M.ConfigureQueue, {"name": ""}, "queue name"),
    (M.ConfigureQueue, {"name": "q", "rate_limit": 0}, "rate_limit must be > 0"),
    (M.ConfigureQueue, {"name": "q", "paused": "yes"}, "paused must be a bool"),
    (M.QueueInfoReply, {"queue": [1]}, "queue must be a map"),
    (M.QueueInfoReply, {"queue": {**QUEUE, "rate_limit": float("nan")}}, "must be finite"),
    # schedules
    (M.SetSchedule, {"id": "s"}, "missing"),
    (
        M.SetSchedule,
        {**ScheduleSpec("s", b"p", every=1)._asdict(), "misfire": "often"},
        "misfire must be one of",
    ),
    (M.SetSchedule, {**ScheduleSpec("s", b"p", every=1)._asdict(), "payload": "x"}, "payload"),
    (M.ScheduleCtl, {"id": "s", "action": "explode"}, "action must be"),
    (M.ScheduleInfo, {"schedule": 3}, "schedule must be a map"),
    (M.Schedules, [], "must be a map"),
    (M.ScheduleList, {"schedules": [1]}, r"schedules\[0\]"),
]


@pytest.mark.parametrize(
    ("cls", "body", "match"), BAD, ids=[f"{c.__name__}-{i}" for i, (c, _, _) in enumerate(BAD)]
)
def test_a_bad_body_raises_malformed_frame_naming_the_message_and_the_place(cls, body, match):
    with pytest.raises(MalformedFrame, match=match) as info:
        cls.from_body(body)
    assert str(info.value).startswith(f"bad {cls.TYPE.name} body: ")


def test_every_class_has_bad_bodies_in_the_table():
    assert {cls for cls, _, _ in BAD} == set(M.CLASSES.values()) | {M.WaitAck}


def test_the_error_text_of_a_huge_or_deep_value_stays_short():
    deep: Any = "x"
    for _ in range(5000):  # its repr would recurse too deep
        deep = [deep]
    for bad in (deep, 10**5000, "s" * 10**6, b"b" * 10**6):
        with pytest.raises(MalformedFrame) as info:
            M.DoneAck.from_body({"status": [bad]})
        assert len(str(info.value)) < 200


# -- fuzz ---------------------------------------------------------------------------

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8)
    | st.text(min_size=510, max_size=515)
    | st.binary(max_size=8)
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=6)
        | st.dictionaries(st.text(max_size=12) | st.integers(0, 9), inner, max_size=6)
    ),
    max_leaves=20,
)
# names the classes read, so that near-misses get past the first check
KEYS = sorted(
    {
        "tasks",
        "states",
        "unknown",
        "ids",
        "results",
        "terminate",
        "cancelled",
        "nodes",
        "queue_depth",
        "in_flight",
        "dead",
        "completions",
        "purged",
        "peers",
        "rejected_peers",
        "limit",
        "requeued",
        "capacity",
        "name",
        "status",
        "outcomes",
        "id",
        "address",
        "outstanding",
        "max_outstanding",
        "silent_s",
        "state",
        "attempts",
        "failures",
        "lost",
        "error",
    }
)
ROWS = st.lists(st.lists(SCALARS, min_size=1, max_size=7), max_size=4)
BODIES = VALUES | st.dictionaries(st.sampled_from(KEYS), VALUES | ROWS | SCALARS, max_size=10)
CLASSES = [*M.CLASSES.values(), M.WaitAck]


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(CLASSES), BODIES)
def test_from_body_raises_nothing_but_malformed_frame(cls, value):
    try:
        body = wire(value) if isinstance(value, dict) else value
    except Exception:  # not packable (e.g. duplicate keys after conversion): skip
        return
    try:
        msg = cls.from_body(body)
    except MalformedFrame:
        return
    # what it accepted, it sends back as it came (open keys included)
    assert type(msg).from_body(wire(msg.to_body())) == msg


# the values at the edges of what the checks take
EDGES: list[Any] = [None, True, False, 0, 1, -1, 7, 2**63 - 1, 2**63, 0.0, -0.0, -1.0, 1.5]
EDGES += [math.nan, math.inf, -math.inf, "", "a", "x" * 512, "x" * 513, b"", b"b", [], {}]


def _places(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a body: the paths to each map entry and list item."""
    out = [path]
    if type(value) is dict:
        for k, v in value.items():
            out += _places(v, (*path, k))
    elif type(value) is list:
        for i, v in enumerate(value):
            out += _places(v, (*path, i))
    return out


def _replaced(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if type(value) is dict:
        out = dict(value)
        if rest or new is not _DROP:
            out[head] = _replaced(value[head], rest, new)
        else:
            del out[head]
        return out
    return [*value[:head], _replaced(value[head], rest, new), *value[head + 1 :]]


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_from_body_of_a_mutated_good_body_raises_nothing_but_malformed_frame(msg, data):
    """A good body with one to three places (a key, a row, a field) replaced
    by something else or dropped: what the table of bad bodies does by hand."""
    body = msg.to_body()
    anything = st.sampled_from([*EDGES, _DROP]) | SCALARS | st.lists(SCALARS, max_size=3)
    for _ in range(data.draw(st.integers(1, 3))):
        body = _replaced(body, data.draw(st.sampled_from(_places(body))), data.draw(anything))
    try:
        got = type(msg).from_body(body)
    except MalformedFrame:
        return
    assert type(got).from_body(wire(got.to_body())) == got


HOT_ROWS = [
    (M.Submit, "tasks", M._spec_row, ["a", b"p", 0, 1.0, 0.0]),
    (M.Submit, "tasks", M._spec_row, ["a", b"p", 0, 1.0, 0.0, 5.0]),
    (M.Tasks, "tasks", M._lease_row, ["a", 1, b"p"]),
    (M.Done, "results", M._completion_row, ["a", 1, True, b"v", None, False]),
    (M.Done, "results", M._completion_row, ["a", 1, True, b"v", None]),
    (M.Done, "results", M._completion_row, ["a", 1, True, b"v", None, False, 0.5]),
    (M.Done, "results", M._completion_row, ["a", 1, True, b"v", None, False, None]),
    (M.Results, "results", M._outcome_row, ["a", 3, b"v", None]),
]


def check_agreement(cls: type[M.AppMessage], key: str, careful: Any, row: list[Any]) -> None:
    """The hot loop accepts ``row`` exactly when the careful checker does,
    and makes the same row of it."""
    try:
        want = careful(row)
    except M._Bad:
        with pytest.raises(MalformedFrame):
            cls.from_body({key: [row]})
        return
    got = getattr(cls.from_body({key: [row]}), key)
    assert got == [want]
    assert [type(x) for x in got[0]] == [type(x) for x in want]


@pytest.mark.parametrize("hot", HOT_ROWS, ids=[f"{c.__name__}-{len(t)}" for c, _, _, t in HOT_ROWS])
def test_the_inline_checks_agree_with_the_careful_ones_at_every_edge(hot):
    cls, key, careful, template = hot
    check_agreement(cls, key, careful, template)
    for i in range(len(template)):
        for value in EDGES:
            check_agreement(cls, key, careful, [*template[:i], value, *template[i + 1 :]])
    for n in range(len(template) + 2):
        check_agreement(cls, key, careful, (template * 2)[:n])


@st.composite
def near_miss(draw: st.DrawFn, template: list[Any]) -> list[Any]:
    """A valid row with a few fields swapped for anything, maybe cut or grown."""
    row = list(template)
    for i in draw(st.lists(st.integers(0, len(row) - 1), max_size=3)):
        row[i] = draw(st.sampled_from(EDGES) | SCALARS)
    cut = draw(st.sampled_from([0, 0, 0, 1, 2]))
    return row[: len(row) - cut] + draw(st.lists(SCALARS, max_size=1))


@pytest.mark.parametrize("hot", HOT_ROWS, ids=[f"{c.__name__}-{len(t)}" for c, _, _, t in HOT_ROWS])
@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_the_inline_checks_agree_with_the_careful_ones(hot, data):
    cls, key, careful, template = hot
    check_agreement(cls, key, careful, data.draw(near_miss(template)))


# -- the wire, pinned ---------------------------------------------------------------


def same_on_the_wire(body: dict[str, Any], before: dict[str, Any]) -> None:
    assert body == before
    assert msgpack.packb(body, use_bin_type=True) == msgpack.packb(before, use_bin_type=True)


def test_client_bodies_are_the_ones_it_sent_before():
    # the client built [tid, payload, int(retries), float(backoff), not_before(, ttl)]
    before = {"tasks": [["a", b"p", 0, 1.0, 0.0], ["b", b"q", 2, 0.5, 1.7e9, 30.0]]}
    specs = [SubmitSpec("a", b"p", 0, 1.0, 0.0), SubmitSpec("b", b"q", 2, 0.5, 1.7e9, 30.0)]
    same_on_the_wire(M.Submit(specs).to_body(), before)
    same_on_the_wire(M.Cancel(["a"], False).to_body(), {"ids": ["a"], "terminate": False})
    same_on_the_wire(M.Wait(["a"]).to_body(), {"ids": ["a"]})
    same_on_the_wire(M.Requeue(["a"]).to_body(), {"ids": ["a"]})
    same_on_the_wire(M.DeadList(100).to_body(), {"limit": 100})
    same_on_the_wire(M.Status().to_body(), {})


def test_node_bodies_are_the_ones_it_sent_before():
    same_on_the_wire(M.Ready(10, "h:1").to_body(), {"capacity": 10, "name": "h:1"})
    same_on_the_wire(M.Credit(3).to_body(), {"capacity": 3})
    # DONE rows always carried all six fields; RELEASE rows three
    same_on_the_wire(
        M.Done([Completion("a", 2, False, b"e", "tb", True)]).to_body(),
        {"results": [["a", 2, False, b"e", "tb", True]]},
    )
    # ... and a seventh, the run time, when the node measured it
    same_on_the_wire(
        M.Done([Completion("a", 2, True, b"v", None, False, 1.5)]).to_body(),
        {"results": [["a", 2, True, b"v", None, False, 1.5]]},
    )
    same_on_the_wire(
        M.Release([Release("a", 2, True), Release("b", 3)]).to_body(),
        {"tasks": [["a", 2, True], ["b", 3, False]]},
    )
    same_on_the_wire(
        M.RevokeAck([M.RevokeOutcome.REVOKED, M.RevokeOutcome.TERMINATING]).to_body(),
        {"outcomes": ["revoked", "terminating"]},
    )
    same_on_the_wire(M.Heartbeat().to_body(), {})


def test_coordinator_bodies_are_the_ones_it_sends_today():
    states = [TaskState.PENDING, TaskState.SUCCEEDED]
    # [int(s) for s in states]; a WAIT's answer; leases as list(lease)
    same_on_the_wire(M.SubmitAck(states).to_body(), {"states": [1, 3]})
    same_on_the_wire(M.WaitAck(["x"]).to_body(), {"unknown": ["x"]})
    lease = Lease("a", 4, b"p")
    same_on_the_wire(M.Tasks([lease]).to_body(), {"tasks": [list(lease)]})
    # RESULTS rows: [id, int(state), value, error]
    same_on_the_wire(
        M.Results([Outcome("a", TaskState.FAILED, b"e", "tb")]).to_body(),
        {"results": [["a", 4, b"e", "tb"]]},
    )
    same_on_the_wire(
        M.DoneAck([Verdict.ACCEPTED, Verdict.STALE]).to_body(),
        {"status": ["accepted", "stale"]},
    )
    same_on_the_wire(M.CancelAck([True]).to_body(), {"cancelled": [True]})
    same_on_the_wire(M.RequeueAck([False]).to_body(), {"requeued": [False]})
    same_on_the_wire(M.Revoke([M.Revocation("a", 4, True)]).to_body(), {"tasks": [["a", 4, True]]})
    # what backend.dead() returns: TaskInfo.summary() of each
    same_on_the_wire(
        M.DeadReply.from_body({"tasks": [OK_SUMMARY]}).to_body(), {"tasks": [OK_SUMMARY]}
    )


def test_the_coordinators_status_parses_and_goes_back_unchanged():
    coord = Coordinator(b"k" * 32)
    try:
        body = coord.status()
    finally:
        coord.backend.close()
    reply = M.StatusReply.from_body(wire(body))
    assert reply.extra == {}  # every key it sends today has a typed field
    same_on_the_wire(reply.to_body(), body)
    node = {**OK_NODE, "silent_s": 0.125}
    with_node = {**body, "nodes": [node]}
    same_on_the_wire(M.StatusReply.from_body(wire(with_node)).to_body(), with_node)


def test_open_bodies_keep_unknown_keys():
    body = {**OK_STATUS, "nodes": [{**OK_NODE, "zone": "eu"}], "version": 3}
    reply = M.StatusReply.from_body(body)
    assert reply.extra == {"version": 3} and reply.nodes[0].extra == {"zone": "eu"}
    assert reply.to_body() == body
    summary = {**OK_SUMMARY, "node": "n#1"}
    assert M.DeadReply.from_body({"tasks": [summary]}).to_body() == {"tasks": [summary]}


# -- the sender's checks ------------------------------------------------------------


def test_spec_problem_says_what_from_body_would_refuse():
    assert M.spec_problem(SubmitSpec("a", b"p", 0, 1.0, 0.0)) is None
    assert M.spec_problem(SubmitSpec("a", b"p", 0, 1.0, 0.0, 0.0)) is None
    bad = {
        SubmitSpec("a", b"p", -1, 1.0, 0.0): "retries",
        SubmitSpec("a", b"p", 0, math.nan, 0.0): "backoff",
        SubmitSpec("a", b"p", 0, 1.0, math.inf): "not_before",
        SubmitSpec("a", b"p", 0, 1.0, 0.0, -3.0): "result_ttl",
    }
    for spec, word in bad.items():
        problem = M.spec_problem(spec)
        assert problem is not None and word in problem
        with pytest.raises(MalformedFrame, match=word):
            M.Submit.from_body(M.Submit([spec]).to_body())


def test_id_problem():
    assert M.id_problem("a") is None
    assert M.id_problem("a" * 512) is None
    assert M.id_problem("") == "task id must not be empty"
    assert "longer than 512" in (M.id_problem("a" * 513) or "")
    assert "got int" in (M.id_problem(5) or "")
