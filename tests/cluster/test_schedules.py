"""When schedules fire: cron in a time zone across daylight-saving changes,
periods, missed fires, and fire ids."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from pyqueue.cluster import schedules as S
from pyqueue.cluster.schedules import Schedule, ScheduleSpec

RIGA = ZoneInfo("Europe/Riga")


def at(*args: int, tz: dt.tzinfo = dt.timezone.utc) -> float:
    return dt.datetime(*args, tzinfo=tz).timestamp()


def sched(spec: ScheduleSpec, anchor: float, next_fire: float) -> Schedule:
    return Schedule(
        spec.id, spec.cron, spec.every, spec.queue, spec.priority, spec.misfire,
        spec.timezone, False, anchor, next_fire, None,
    )  # fmt: skip


def test_cron_fires_at_the_next_matching_minute_strictly_after() -> None:
    spec = ScheduleSpec("c", b"", cron="*/15 * * * *")
    assert S.next_fire(spec, 0, at(2026, 1, 1, 10, 7)) == at(2026, 1, 1, 10, 15)
    assert S.next_fire(spec, 0, at(2026, 1, 1, 10, 15)) == at(2026, 1, 1, 10, 30)


def test_cron_in_a_time_zone_follows_daylight_saving() -> None:
    spec = ScheduleSpec("c", b"", cron="30 3 * * *", timezone="Europe/Riga")
    # spring forward (2026-03-29, 03:00 -> 04:00): 03:30 does not exist; it fires at 04:00
    t = S.next_fire(spec, 0, at(2026, 3, 28, 12, 0, tz=RIGA))
    assert t == at(2026, 3, 29, 4, 0, tz=RIGA)
    assert S.next_fire(spec, 0, t) == at(2026, 3, 30, 3, 30, tz=RIGA)
    # fall back (2026-10-25, 04:00 -> 03:00): 03:30 happens twice; it fires once
    first = S.next_fire(spec, 0, at(2026, 10, 24, 12, 0, tz=RIGA))
    assert dt.datetime.fromtimestamp(first, RIGA).hour == 3
    assert S.next_fire(spec, 0, first) - first > 23 * 3600
    # the UTC hour moves with the clocks: 00:30 UTC in summer, 01:30 in winter
    assert dt.datetime.fromtimestamp(first, dt.timezone.utc).hour == 0
    assert dt.datetime.fromtimestamp(S.next_fire(spec, 0, first), dt.timezone.utc).hour == 1


def test_every_counts_from_its_anchor() -> None:
    spec = ScheduleSpec("e", b"", every=10)
    assert S.next_fire(spec, 100, 100) == 110
    assert S.next_fire(spec, 100, 135) == 140
    assert S.next_fire(spec, 100, 50) == 110  # never before the first period


def test_catch_up_is_bounded_and_fast_for_a_long_outage() -> None:
    spec = ScheduleSpec("e", b"", every=1, misfire="all")
    times, nxt = S.due_fires(sched(spec, 0, 1), 7 * 86400.0)  # a week down at 1 s
    assert len(times) == S.MAX_CATCH_UP and times[-1] == 7 * 86400.0
    assert nxt == 7 * 86400.0 + 1


@pytest.mark.parametrize(
    "spec",
    [
        ScheduleSpec("x", b""),
        ScheduleSpec("x", b"", cron="* * *"),
        ScheduleSpec("x", b"", cron="* * * * *", timezone="Nowhere/Town"),
        ScheduleSpec("x", b"", every=float("inf")),
        ScheduleSpec("x", b"", every=True),  # type: ignore[arg-type]
    ],
)
def test_check_refuses_with_a_value_error(spec: ScheduleSpec) -> None:
    with pytest.raises(ValueError):
        S.check(spec)


def test_a_fire_id_is_the_schedule_and_the_time() -> None:
    t = at(2026, 12, 2, 4, 0)
    assert S.fire_id("nightly", t) == "nightly@2026-12-02T04:00:00.000+00:00"
    assert S.fire_id("nightly", t) == S.fire_id("nightly", t + 1e-5)
    assert S.fire_id("nightly", t) != S.fire_id("nightly", t + 1)
