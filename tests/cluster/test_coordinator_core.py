"""The coordinator's sans-IO core on a fake clock and fake links: no sockets, no loop.

Each peer is a real client-side protocol Connection whose bytes are handed to
``CoordinatorCore.receive``; what the core writes is decoded back through the
same Connection.  Flushes and ticks are called by the test, so every timing
rule (credits, heartbeat misses, the loop-lag allowance, scheduled tasks,
retention) is checked without waiting.
"""

from __future__ import annotations

from typing import Any

import pytest

from pyqueue.cluster import coordinator as core_mod
from pyqueue.cluster import protocol as P
from pyqueue.cluster.backends import MemoryBackend
from pyqueue.cluster.config import FAST_TIMINGS
from pyqueue.cluster.coordinator import CoordinatorCore, PeerState
from pyqueue.cluster.dispatch import Policy
from pyqueue.cluster.protocol import MsgType
from pyqueue.cluster.states import TaskState
from pyqueue.errors import PeerError

KEY = b"core-test-key"
T = FAST_TIMINGS


class FakeClock:
    def __init__(self) -> None:
        self.mono = 1000.0
        self.wall = 1_700_000_000.0

    def monotonic(self) -> float:
        return self.mono

    def time(self) -> float:
        return self.wall

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += seconds


class FakeLink:
    def __init__(self) -> None:
        self.data = bytearray()
        self.closed = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        assert not self.closed and not self.aborted, "write after close"
        self.data += data

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True


class Peer:
    """A node or client speaking to the core through a real protocol Connection."""

    def __init__(self, core: CoordinatorCore, role: str, name: str) -> None:
        self.core = core
        self.link = FakeLink()
        self.conn = P.Connection(KEY, server=False, role=role, name=name)
        self.state: PeerState = core.connect(self.link, f"{name}:1")
        self.corr = 0
        for _ in range(3):  # HELLO -> CHALLENGE -> AUTH -> WELCOME
            core.receive(self.state, self.conn.data_to_send())
            self.messages()
        assert self.conn.authenticated and self.state.conn.authenticated

    def send(self, mtype: MsgType, body: dict[str, Any]) -> int:
        self.corr += 1
        self.conn.send(mtype, body, self.corr)
        self.core.receive(self.state, self.conn.data_to_send())
        return self.corr

    def messages(self) -> list[P.Message]:
        data = bytes(self.link.data)
        self.link.data.clear()
        return [ev for ev in self.conn.receive_data(data) if isinstance(ev, P.Message)]

    def of(self, mtype: MsgType) -> list[P.Message]:
        return [m for m in self.messages() if m.type == mtype]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make_core(clock: FakeClock, **policy: Any) -> CoordinatorCore:
    return CoordinatorCore(KEY, MemoryBackend(Policy(**policy), seed=1), timings=T, clock=clock)


def submit(client: Peer, *ids: str, not_before: float = 0.0) -> int:
    return client.send(
        MsgType.SUBMIT, {"tasks": [[i, b"payload", 0, 0.0, not_before] for i in ids]}
    )


def tasks_of(node: Peer) -> list[list[Any]]:
    return [row for m in node.of(MsgType.TASKS) for row in m.body["tasks"]]


def done(node: Peer, *rows: tuple[str, int]) -> int:
    body = {"results": [[tid, tok, True, b"r-" + tid.encode(), None] for tid, tok in rows]}
    return node.send(MsgType.DONE, body)


def run_through(core: CoordinatorCore, node: Peer, client: Peer, *ids: str) -> None:
    """Submit, dispatch and complete ``ids`` (the node must have credit for them)."""
    submit(client, *ids)
    core.flush()
    done(node, *[(r[0], r[1]) for r in tasks_of(node)])
    core.flush()


def states(core: CoordinatorCore, *ids: str) -> list[TaskState | None]:
    return [None if i is None else i.state for i in core.backend.info(list(ids))]


def test_a_node_never_holds_more_than_its_capacity(clock):
    core = make_core(clock)
    node, client = Peer(core, "node", "n"), Peer(core, "client", "c")
    node.send(MsgType.READY, {"capacity": 2})
    submit(client, "a", "b", "c", "d", "e")
    core.flush()
    first = tasks_of(node)
    assert [r[0] for r in first] == ["a", "b"] and [r[1] for r in first] == [1, 1]
    done(node, ("a", 1))
    core.flush()
    assert [r[0] for r in tasks_of(node)] == ["c"]  # one slot freed, one task sent
    node.send(MsgType.CREDIT, {"capacity": 4})
    core.flush()
    assert [r[0] for r in tasks_of(node)] == ["d", "e"]
    (row,) = core.status()["nodes"]
    assert row["outstanding"] == row["max_outstanding"] == 4  # b, c, d, e


def test_acknowledgements_wait_for_the_commit(clock):
    core = make_core(clock)
    client = Peer(core, "client", "c")
    real, calls = core.backend.commit, []

    def failing_commit() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise OSError("disk full")
        real()

    core.backend.commit = failing_commit  # type: ignore[method-assign]
    corr = submit(client, "a")
    core.flush()  # the commit fails: nothing that depends on it is written
    assert client.of(MsgType.SUBMIT_ACK) == [] and core.internal_errors == 1
    assert not client.link.closed and not client.link.aborted
    core.flush()
    (ack,) = client.of(MsgType.SUBMIT_ACK)
    assert ack.corr == corr and ack.body["states"] == [int(TaskState.PENDING)]


def test_a_silent_node_is_declared_dead_and_its_lease_moves(clock):
    core = make_core(clock)
    n1, n2, client = Peer(core, "node", "n1"), Peer(core, "node", "n2"), Peer(core, "client", "c")
    n1.send(MsgType.READY, {"capacity": 1})
    submit(client, "a")
    core.flush()
    assert [r[0] for r in tasks_of(n1)] == ["a"]
    n2.send(MsgType.READY, {"capacity": 1})
    limit = min(T.lease, T.dead_after)
    steps = int(limit / T.sweep) + 2
    for _ in range(steps):  # time passes in sweeps; only n2 heartbeats
        clock.advance(T.sweep)
        n2.send(MsgType.HEARTBEAT, {})
        core.tick()
    assert n1.link.aborted and not n2.link.aborted
    (info,) = core.backend.info(["a"])
    assert info is not None and info.lost == 1
    core.flush()
    assert [(r[0], r[1]) for r in tasks_of(n2)] == [("a", 2)]  # a new token fences n1


def test_heartbeats_keep_a_node_alive_and_are_answered_at_once(clock):
    core = make_core(clock)
    node = Peer(core, "node", "n")
    node.send(MsgType.READY, {"capacity": 1})
    for _ in range(int(3 * T.dead_after / T.sweep)):
        clock.advance(T.sweep)
        node.send(MsgType.HEARTBEAT, {})
        assert node.of(MsgType.HEARTBEAT_ACK), "answered without waiting for a flush"
        core.tick()
    assert not node.link.aborted and core.status()["nodes"]


def test_a_blocked_loop_is_not_held_against_the_nodes(clock):
    core = make_core(clock)
    node = Peer(core, "node", "n")
    node.send(MsgType.READY, {"capacity": 1})
    core.tick()
    clock.advance(T.dead_after * 5)  # the loop was stuck in one long step
    core.tick()
    assert not node.link.aborted
    for _ in range(int(T.dead_after / T.sweep) + 2):  # but real silence still counts
        clock.advance(T.sweep)
        core.tick()
    assert node.link.aborted


def test_a_scheduled_task_is_dispatched_when_due_and_not_before(clock):
    core = make_core(clock)
    node, client = Peer(core, "node", "n"), Peer(core, "client", "c")
    node.send(MsgType.READY, {"capacity": 1})
    submit(client, "later", not_before=clock.wall + 10)
    core.flush()
    assert tasks_of(node) == [] and states(core, "later") == [TaskState.SCHEDULED]
    clock.advance(9.9)
    core.tick()
    core.flush()
    assert tasks_of(node) == []
    clock.advance(0.2)
    core.tick()
    core.flush()
    assert [r[0] for r in tasks_of(node)] == ["later"]


def test_results_are_pushed_then_purged_after_their_ttl(clock):
    core = make_core(clock, result_ttl=60.0)
    node, client = Peer(core, "node", "n"), Peer(core, "client", "c")
    node.send(MsgType.READY, {"capacity": 1})
    run_through(core, node, client, "a")
    (res,) = client.of(MsgType.RESULTS)
    assert res.body["results"] == [["a", int(TaskState.SUCCEEDED), b"r-a", None]]
    clock.advance(59)
    core.tick()
    assert states(core, "a") == [TaskState.SUCCEEDED]
    clock.advance(2)
    core.tick()
    assert states(core, "a") == [None] and core.status()["purged"] == 1
    client.send(MsgType.WAIT, {"ids": ["a"]})
    core.flush()
    (ack,) = client.of(MsgType.SUBMIT_ACK)
    assert ack.body["unknown"] == ["a"]


def test_retention_that_falls_behind_catches_up_between_flushes(clock, monkeypatch):
    # more tasks expire per sweep than one tick's batch: the rest go a little
    # at a time in the following flushes, not one batch per sweep (which let
    # a coordinator finishing > 20k tasks/s grow without bound)
    monkeypatch.setattr(core_mod, "_PURGE_BATCH", 5)
    monkeypatch.setattr(core_mod, "_PURGE_CATCH_UP", 2)
    core = make_core(clock, result_ttl=1.0)
    node, client = Peer(core, "node", "n"), Peer(core, "client", "c")
    node.send(MsgType.READY, {"capacity": 20})
    run_through(core, node, client, *[f"t{i}" for i in range(20)])
    clock.advance(2)
    core.tick()
    assert core.status()["purged"] == 5
    seen = []
    for _ in range(10):
        core.flush()
        seen.append(core.status()["purged"])
    assert seen[:8] == [7, 9, 11, 13, 15, 17, 19, 20] and seen[8:] == [20, 20]
    assert states(core, "t0", "t19") == [None, None]


def test_a_backend_error_in_complete_is_ours_charges_nothing_and_is_retried(clock, caplog):
    core = make_core(clock)
    node, client = Peer(core, "node", "n"), Peer(core, "client", "c")
    node.send(MsgType.READY, {"capacity": 1})
    submit(client, "a")
    core.flush()
    tasks_of(node)
    real, calls = core.backend.complete, []

    def failing_complete(*args: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a bug in the store")
        return real(*args)

    core.backend.complete = failing_complete  # type: ignore[method-assign]
    corr = done(node, ("a", 1))
    assert core.internal_errors == 1 and core.rejected == 0
    assert not node.link.closed and not node.link.aborted  # the node is not dropped
    assert "internal error while applying DONE" in caplog.text
    assert states(core, "a") == [TaskState.LEASED]
    core.flush()  # applied again, then acknowledged
    (ack,) = node.of(MsgType.DONE_ACK)
    assert ack.corr == corr and ack.body["status"] == ["accepted"]
    (info,) = core.backend.info(["a"])
    assert info is not None and info.state is TaskState.SUCCEEDED and info.lost == 0


class StoreDown(ConnectionError):
    """What a networked store raises while out of reach (it lists it in unavailable)."""


def test_a_store_outage_is_one_line_not_ready_then_every_connection_is_re_made(clock, caplog):
    core = make_core(clock)
    core.backend.unavailable = (StoreDown,)
    node, client = Peer(core, "node", "n"), Peer(core, "client", "c")
    node.send(MsgType.READY, {"capacity": 1})
    real, down = core.backend.lease, [True]

    def lease(*args: Any) -> Any:
        if down[0]:
            raise StoreDown("store at 127.0.0.1:1 refused the connection")
        return real(*args)

    core.backend.lease = lease  # type: ignore[method-assign]
    submit(client, "a")
    core.flush()
    assert not core.healthy and core.internal_errors == 0
    assert "store unavailable while flushing (1 time(s))" in caplog.text
    assert "Traceback" not in caplog.text
    assert not node.link.aborted and not client.link.aborted  # not while it is down
    down[0] = False
    core.flush()
    assert core.healthy and core.internal_errors == 0
    # a reply the outage may have eaten is recovered by reconnecting
    assert node.link.aborted and client.link.aborted
    assert "store reachable again" in caplog.text


def test_a_malformed_body_rejects_the_peer_with_an_error_frame(clock):
    core = make_core(clock)
    client = Peer(core, "client", "c")
    client.send(MsgType.SUBMIT, {"tasks": [[42, b"p", 0, 0.0, 0.0]]})
    assert client.link.closed and core.rejected == 1
    with pytest.raises(PeerError) as err:
        client.messages()
    assert err.value.remote_code == "malformed"


def test_a_node_that_leaves_requeues_at_once_and_cancel_waits_settle(clock):
    core = make_core(clock)
    node, client = Peer(core, "node", "n"), Peer(core, "client", "c")
    node.send(MsgType.READY, {"capacity": 1})
    submit(client, "a")
    core.flush()
    tasks_of(node)
    corr = client.send(MsgType.CANCEL, {"ids": ["a"], "terminate": False})
    core.flush()
    assert [m.body["tasks"] for m in node.of(MsgType.REVOKE)] == [[["a", 1, False]]]
    assert client.of(MsgType.CANCEL_ACK) == []  # not certain yet: it may be running
    core.gone(node.state)  # the node vanished before answering
    core.flush()
    (ack,) = client.of(MsgType.CANCEL_ACK)
    assert ack.corr == corr and ack.body["cancelled"] == [True]
    assert states(core, "a") == [TaskState.CANCELLED]


def test_a_slow_client_gets_at_most_a_window_of_results(clock, monkeypatch):
    monkeypatch.setattr(core_mod, "RESULT_WINDOW", 3)
    core = make_core(clock)
    node, slow, other = (
        Peer(core, "node", "n"),
        Peer(core, "client", "slow"),
        Peer(core, "client", "o"),
    )
    node.send(MsgType.READY, {"capacity": 100})
    ids = [f"t{i}" for i in range(7)]
    submit(slow, *ids)
    submit(other, "x")
    core.flush()
    done(node, *[(r[0], r[1]) for r in tasks_of(node)])
    core.flush()
    pushed = [r[0] for m in slow.of(MsgType.RESULTS) for r in m.body["results"]]
    assert pushed == ids[:3]  # the window; the rest wait in the store
    assert [r[0] for m in other.of(MsgType.RESULTS) for r in m.body["results"]] == ["x"]
    core.flush()
    assert slow.of(MsgType.RESULTS) == []  # nothing more until the client takes them
    slow.send(MsgType.RESULTS_TAKEN, {"n": 3})
    core.flush()
    pushed = [r[0] for m in slow.of(MsgType.RESULTS) for r in m.body["results"]]
    assert pushed == ids[3:6]
    slow.send(MsgType.RESULTS_TAKEN, {"n": 3})
    core.flush()
    assert [r[0] for m in slow.of(MsgType.RESULTS) for r in m.body["results"]] == ids[6:]


def test_an_operator_purge_removes_finished_and_dead_tasks(clock):
    core = make_core(clock, max_lost=1)
    node, client = Peer(core, "node", "n"), Peer(core, "client", "c")
    node.send(MsgType.READY, {"capacity": 1})
    run_through(core, node, client, "old")
    clock.advance(100)
    submit(client, "poison", "fresh")
    core.flush()
    tasks_of(node)
    core.gone(node.state)  # poison dies with its node: dead at once with max_lost=1
    assert states(core, "old", "poison", "fresh") == [
        TaskState.SUCCEEDED,
        TaskState.DEAD,
        TaskState.PENDING,
    ]
    corr = client.send(
        MsgType.PURGE, {"finished_before": clock.wall - 50, "dead": False, "limit": 100}
    )
    core.flush()
    (ack,) = client.of(MsgType.PURGE_ACK)
    assert (ack.corr, ack.body) == (corr, {"purged": 1})
    assert states(core, "old", "poison", "fresh") == [None, TaskState.DEAD, TaskState.PENDING]
    client.send(MsgType.PURGE, {"finished_before": None, "dead": True, "limit": 100})
    core.flush()
    assert [m.body for m in client.of(MsgType.PURGE_ACK)] == [{"purged": 1}]
    assert states(core, "poison", "fresh") == [None, TaskState.PENDING]


# -- a flush offers work only to nodes that may have a free slot ---------------
class RecordingBackend(MemoryBackend):
    """A memory store that records which nodes each lease was asked for."""

    def __init__(self) -> None:
        super().__init__(Policy(), seed=1)
        self.asked: list[list[str]] = []

    def lease(self, demands: Any, now: float) -> Any:
        self.asked.append(list(demands))
        return super().lease(demands, now)

    def last(self) -> list[str]:
        return self.asked[-1] if self.asked else []


def recording_core(clock: FakeClock) -> tuple[CoordinatorCore, RecordingBackend]:
    backend = RecordingBackend()
    return CoordinatorCore(KEY, backend, timings=T, clock=clock), backend


def flush_asked(core: CoordinatorCore, backend: RecordingBackend) -> list[str]:
    n = len(backend.asked)
    core.flush()
    return backend.last() if len(backend.asked) > n else []


def test_a_full_node_is_not_asked_again_until_a_done_frees_a_slot(clock):
    core, backend = recording_core(clock)
    node, client = Peer(core, "node", "n"), Peer(core, "client", "c")
    node.send(MsgType.READY, {"capacity": 2})
    nid = node.state.node_id
    submit(client, "a", "b", "c")
    assert flush_asked(core, backend) == [nid]
    rows = tasks_of(node)
    assert [r[0] for r in rows] == ["a", "b"]
    submit(client, "d")
    assert flush_asked(core, backend) == []  # full: not in the demands
    assert tasks_of(node) == []
    done(node, ("a", 1))
    assert flush_asked(core, backend) == [nid]
    assert [r[0] for r in tasks_of(node)] == ["c"]
    assert flush_asked(core, backend) == []
    done(node, ("zzz", 1))  # a late or unknown completion: asked again, no harm
    assert flush_asked(core, backend) == [nid]
    assert tasks_of(node) == []


def test_every_path_that_frees_a_slot_makes_a_full_node_take_work_again(clock):
    core, backend = recording_core(clock)
    node, client = Peer(core, "node", "n"), Peer(core, "client", "c")
    node.send(MsgType.READY, {"capacity": 1})
    nid = node.state.node_id
    submit(client, *[f"t{i}" for i in range(8)])
    core.flush()
    (row,) = tasks_of(node)
    assert flush_asked(core, backend) == []

    # RELEASE: the task goes back and the slot is free
    node.send(MsgType.RELEASE, {"tasks": [[row[0], row[1], False]]})
    assert flush_asked(core, backend) == [nid]
    (row,) = tasks_of(node)
    assert flush_asked(core, backend) == []

    # CANCEL -> REVOKE -> REVOKE_ACK "revoked"
    client.send(MsgType.CANCEL, {"ids": [row[0]]})
    core.flush()
    (revoke,) = node.of(MsgType.REVOKE)
    assert flush_asked(core, backend) == []
    node.conn.send(MsgType.REVOKE_ACK, {"outcomes": ["revoked"]}, revoke.corr)
    core.receive(node.state, node.conn.data_to_send())
    assert flush_asked(core, backend) == [nid]
    (row,) = tasks_of(node)
    assert flush_asked(core, backend) == []

    # CREDIT: more capacity
    node.send(MsgType.CREDIT, {"capacity": 2})
    assert flush_asked(core, backend) == [nid]
    assert len(tasks_of(node)) == 1
    assert flush_asked(core, backend) == []

    # READY again (new queues): asked again
    node.send(MsgType.READY, {"capacity": 3, "queues": {"default": 1}})
    assert flush_asked(core, backend) == [nid]
    assert len(tasks_of(node)) == 1
    assert flush_asked(core, backend) == []

    # a failed flush: every node is offered work again once it succeeds
    orig = backend.commit
    backend.commit = lambda: (_ for _ in ()).throw(RuntimeError("boom"))  # type: ignore[method-assign]
    core.flush()
    backend.commit = orig  # type: ignore[method-assign]
    assert flush_asked(core, backend) == [nid]

    # the node leaves: its leases requeue, a new node takes them at once
    node.link.closed = True
    core.gone(node.state)
    other = Peer(core, "node", "m")
    other.send(MsgType.READY, {"capacity": 3})
    assert flush_asked(core, backend) == [other.state.node_id]
    assert len(tasks_of(other)) == 3
    assert flush_asked(core, backend) == []


def test_a_node_with_no_capacity_is_left_out_until_credit(clock):
    core, backend = recording_core(clock)
    node, client = Peer(core, "node", "n"), Peer(core, "client", "c")
    node.send(MsgType.READY, {"capacity": 0})
    submit(client, "a")
    assert flush_asked(core, backend) == []
    node.send(MsgType.CREDIT, {"capacity": 1})
    assert flush_asked(core, backend) == [node.state.node_id]
    assert [r[0] for r in tasks_of(node)] == ["a"]


def test_a_paused_node_is_offered_work_once_it_drains(clock):
    core, backend = recording_core(clock)
    node, client = Peer(core, "node", "n"), Peer(core, "client", "c")
    node.send(MsgType.READY, {"capacity": 1})
    node.state.paused = True
    submit(client, "a")
    assert flush_asked(core, backend) == []
    node.state.paused = False  # resume_writing: a flush follows
    assert flush_asked(core, backend) == [node.state.node_id]
    assert [r[0] for r in tasks_of(node)] == ["a"]


def test_with_many_full_nodes_a_flush_asks_only_those_a_done_freed(clock):
    core, backend = recording_core(clock)
    client = Peer(core, "client", "c")
    nodes = [Peer(core, "node", f"n{i}") for i in range(50)]
    for n in nodes:
        n.send(MsgType.READY, {"capacity": 1})
    submit(client, *[f"t{i}" for i in range(60)])
    assert flush_asked(core, backend) == [n.state.node_id for n in nodes]  # join order
    held = {n.state.node_id: tasks_of(n)[0] for n in nodes}
    assert flush_asked(core, backend) == []
    freed = [nodes[30], nodes[7]]
    for n in freed:
        row = held[n.state.node_id]
        done(n, (row[0], row[1]))
    # offered in join order, whatever order the DONEs came in
    assert flush_asked(core, backend) == [nodes[7].state.node_id, nodes[30].state.node_id]
    assert len(tasks_of(nodes[7])) == len(tasks_of(nodes[30])) == 1
    assert all(not n.link.data for n in nodes)
    assert flush_asked(core, backend) == []
