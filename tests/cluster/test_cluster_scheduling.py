"""Scheduling end to end, on real processes: priorities, weighted queues, rate
limits, pause, delayed tasks and recurring schedules across a coordinator
kill -9, and the bad inputs refused before anything is sent."""

from __future__ import annotations

import collections
import datetime as dt
import subprocess
import time
from zoneinfo import ZoneInfo

import pyq_cluster_tasks as T
import pytest
from pyq_cluster_harness import wait_until

from pyqueue.cluster.schedules import fire_id

pytestmark = pytest.mark.slow


def test_high_priority_tasks_start_before_the_waiting_low_ones(harness, tmp_path):
    harness.coordinator()
    harness.node(1, 0, "prio")  # one slot, no prefetch: nothing low is held on the node
    c = harness.client()
    harness.wait_nodes(c, 1)
    gate = tmp_path / "gate"
    busy = c.submit_call(T.wait_for_file, (str(gate), 30.0), task_id="busy")
    wait_until(lambda: harness.executions()["busy"], 10, "the slot to be busy")
    lows = [c.submit_call(T.square_plus, (i, 0), task_id=f"low{i}") for i in range(100)]
    highs = [
        c.submit_call(T.square_plus, (i, 1), task_id=f"high{i}", priority=5) for i in range(10)
    ]
    assert all(h.acknowledged(10) for h in lows + highs)
    gate.touch()
    assert busy.result(timeout=30) is True
    assert [h.result(timeout=60) for h in highs] == [i * i + 1 for i in range(10)]
    assert [h.result(timeout=60) for h in lows] == [i * i for i in range(100)]
    order = harness.start_order()
    assert order[0] == "busy"
    assert order[1:11] == [f"high{i}" for i in range(10)]  # FIFO among equals
    assert order[11:] == [f"low{i}" for i in range(100)]


def test_weighted_queues_share_the_node_by_their_weights(harness):
    harness.coordinator()
    c = harness.client()
    per_queue = {"high": 2500, "default": 1500, "low": 1000}
    handles = [
        c.submit_call(T.square_plus, (i, 0), task_id=f"{q}-{i}", queue=q)
        for q, n in per_queue.items()
        for i in range(n)
    ]
    assert all(h.acknowledged(30) for h in handles)
    harness.node(1, None, "weights", True, "--queues", "high:6,default:3,low:1")
    for h in handles:
        h.result(timeout=120)
    first_half = harness.start_order()[:2500]
    share = collections.Counter(tid.split("-")[0] for tid in first_half)
    for q, weight in (("high", 0.6), ("default", 0.3), ("low", 0.1)):
        assert abs(share[q] / 2500 - weight) <= 0.05, share


def test_a_node_serving_only_high_never_gets_low(harness):
    harness.coordinator()
    harness.node(2, None, "only-high", True, "--queues", "high")
    c = harness.client()
    harness.wait_nodes(c, 1)
    lows = [c.submit_call(T.square_plus, (i, 0), queue="low") for i in range(20)]
    highs = [c.submit_call(T.square_plus, (i, 0), queue="high") for i in range(20)]
    assert [h.result(timeout=30) for h in highs] == [i * i for i in range(20)]
    (low,) = [q for q in c.status()["queues"] if q["name"] == "low"]
    assert low["tasks"]["pending"] == 20 and not any(h.done() for h in lows)
    harness.node(1, None, "low-too", True, "--queues", "low")
    assert [h.result(timeout=30) for h in lows] == [i * i for i in range(20)]


def test_a_rate_limit_holds_over_every_node(harness):
    harness.coordinator()
    c = harness.client()
    q = c.configure_queue("metered", rate_limit=50)
    assert (q["rate_limit"], q["paused"]) == (50.0, False)
    for i in range(4):
        harness.node(2, None, f"rate{i}", True, "--queues", "metered")
    harness.wait_nodes(c, 4)
    tasks = [c.submit_call(T.started_at, queue="metered") for _ in range(250)]
    starts = sorted(t.result(timeout=60) for t in tasks)
    worst = max(sum(1 for s in starts[i:] if s < start + 1.0) for i, start in enumerate(starts))
    assert worst <= 55, f"{worst} starts in one second at 50/s"
    assert starts[-1] - starts[0] >= (250 - 55) / 50  # and it did run at the rate


def test_a_paused_queue_starts_nothing_until_resumed(harness):
    harness.coordinator()
    harness.node(2, None, "pause", True, "--queues", "p")
    c = harness.client()
    harness.wait_nodes(c, 1)
    c.configure_queue("p", paused=True)
    held = [c.submit_call(T.square_plus, (i, 0), queue="p") for i in range(5)]
    assert all(h.acknowledged(10) for h in held)
    (q,) = [q for q in c.status()["queues"] if q["name"] == "p"]
    assert q["paused"] and q["tasks"]["pending"] == 5
    shown = harness.cli("status")
    assert "  queue p (paused): pending 5, oldest waiting" in shown.stdout, shown
    out = harness.cli("queue", "p", "--resume")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("queue p: running, no rate limit")
    assert [h.result(timeout=30) for h in held] == [i * i for i in range(5)]


def test_an_eta_survives_a_coordinator_kill_and_is_never_early(harness, tmp_path):
    store = str(tmp_path / "q.db")
    harness.coordinator(store)
    harness.node(1, None, "eta")
    c = harness.client()
    eta = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=2)
    t = c.submit_call(T.started_at, task_id="later", eta=eta)
    assert t.acknowledged(10)
    harness.kill(harness.coord)
    harness.coordinator(store)
    started = t.result(timeout=30)
    assert started >= eta.timestamp()
    assert harness.executions()["later"] == 1


@pytest.mark.parametrize("misfire", ["all", "coalesce", "skip"])
def test_a_schedule_through_a_coordinator_kill_fires_once_per_time(harness, tmp_path, misfire):
    store = str(tmp_path / "q.db")
    harness.coordinator(store)
    harness.node(2, None, "sched")
    c = harness.client()
    sch = c.schedule("tick", T.started_at, every=1.0, misfire=misfire)
    assert sch.next_fire is not None and not sch.paused
    wait_until(lambda: sum(harness.executions().values()) >= 2, 10, "two fires")
    down = time.time()
    harness.kill(harness.coord)
    wait_until(lambda: time.time() > down + 4.5, 6, "a gap of several periods")
    harness.coordinator(store)
    up = time.time()
    c2 = harness.client()
    wait_until(lambda: time.time() > up + 2.5, 5, "fires after the restart")
    c2.unschedule("tick")
    runs = harness.executions()
    # One task per fire time, so no time is fired twice. A fire that was
    # running when the coordinator died may run once more (at-least-once:
    # its completion may not have been committed); no other may.
    again = {tid for tid, n in runs.items() if n > 1}
    in_flight = {fire_id("tick", t) for t in _period_times(sch.anchor, down - 1.5, down + 0.05)}
    assert runs and again <= in_flight and max(runs.values()) <= 2, runs
    period_times = [sch.anchor + k for k in range(1, int(up + 3 - sch.anchor) + 1)]
    gap = [t for t in period_times if down + 0.05 < t < up - 1.0]  # missed, beyond the grace
    ran_in_gap = [t for t in gap if fire_id("tick", t) in runs]
    assert len(gap) >= 2
    if misfire == "all":
        assert ran_in_gap == gap
    elif misfire == "coalesce":  # one fire stands for the whole gap
        assert len(ran_in_gap) <= 1, ran_in_gap
        around = [
            t for t in period_times if down + 0.05 < t < up + 0.5 and fire_id("tick", t) in runs
        ]
        assert 1 <= len(around) <= 2, around
    else:
        assert ran_in_gap == []
    assert any(fire_id("tick", t) in runs for t in period_times if t > up + 0.5)  # it goes on


def _period_times(anchor: float, start: float, end: float) -> list[float]:
    """The fire times of an every-1-s schedule declared at ``anchor`` within (start, end)."""
    return [anchor + k for k in range(1, int(end - anchor) + 2) if start < anchor + k < end]


def test_schedules_are_listed_paused_resumed_and_deleted_from_the_cli(harness):
    harness.coordinator()
    c = harness.client()
    c.schedule("nightly", T.square_plus, (2, 0), cron="30 3 * * *", timezone="Europe/Riga")
    c.schedule("nightly", T.square_plus, (3, 0), cron="30 3 * * *", timezone="Europe/Riga")
    (s,) = c.schedules()  # declared twice: one schedule
    assert s.next_fire is not None
    nxt = dt.datetime.fromtimestamp(s.next_fire, ZoneInfo("Europe/Riga"))
    assert (nxt.hour, nxt.minute) in ((3, 30), (4, 0))  # 04:00 only on a spring-forward day

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return harness.cli("schedules", *args)

    out = cli("--pause", "nightly")
    assert out.returncode == 0 and "paused" in out.stdout, out
    assert c.schedules()[0].paused
    assert cli("--resume", "nightly").returncode == 0
    assert not c.schedules()[0].paused
    missing = cli("--delete", "nope")
    assert missing.returncode == 2 and "no schedule 'nope'" in missing.stderr
    assert cli("--delete", "nightly").returncode == 0
    assert c.schedules() == []


def test_bad_scheduling_input_is_refused_before_anything_is_sent(harness):
    harness.coordinator()
    c = harness.client()
    naive = dt.datetime.now() + dt.timedelta(seconds=5)
    for call, match in [
        (lambda: c.schedule("s", T.square_plus, cron="61 * * * *"), "bad cron expression"),
        (lambda: c.schedule("s", T.square_plus, cron="* * * * *", timezone="Mars/X"), "time zone"),
        (lambda: c.schedule("s", T.square_plus), "exactly one of cron= and every="),
        (lambda: c.submit_call(T.square_plus, (1, 0), eta=naive), "aware datetime"),
        (lambda: c.submit_call(T.square_plus, (1, 0), delay=-1), "must not be negative"),
        (lambda: c.submit_call(T.square_plus, (1, 0), queue="no spaces"), "queue name"),
        (lambda: c.configure_queue("bad name!"), "queue name"),
        (lambda: c.configure_queue("q", rate_limit=0), "rate_limit"),
    ]:
        with pytest.raises(ValueError, match=match):
            call()
    st = c.status()
    assert st["queues"] == [] and st["schedules"] == [] and sum(st["tasks"].values()) == 0
    bad_rate = harness.cli("queue", "q", "--rate", "fast")
    assert bad_rate.returncode == 2 and "is not a rate" in bad_rate.stderr
