"""Recurring schedules: when each fires, and what a missed fire becomes.

Pure functions of a schedule and the clock passed in, shared by every store.
Cron expressions are evaluated by `cronsim`_ in the schedule's time zone
(``zoneinfo``), so they follow daylight-saving changes as cron does: a time
that does not exist that day (spring forward) fires at the first minute after
the gap, and a time that occurs twice (fall back) fires once.  We chose
cronsim over croniter: it has no dependencies, it is maintained, and its
daylight-saving rules are documented and tested against Debian's cron.

.. _cronsim: https://pypi.org/project/cronsim/

Each fire is a task whose id derives from the schedule and the fire time
(:func:`fire_id`), submitted like any other (idempotent on its id), so no time
is fired twice: not after a coordinator is killed at the fire time, nor when
two coordinators share a store.  Running it is at-least-once, as for any task.
"""

from __future__ import annotations

import datetime as _dt
import math
from typing import NamedTuple

from .states import DEFAULT_QUEUE

__all__ = [
    "MISFIRE_POLICIES",
    "MISFIRE_GRACE",
    "MAX_CATCH_UP",
    "ScheduleSpec",
    "Schedule",
    "check",
    "next_fire",
    "due_fires",
    "fire_id",
    "declared",
    "paused_as",
]

#: what happens to fires missed while no coordinator ran (or the schedule was late):
#: ``coalesce`` runs one for all of them, ``skip`` none, ``all`` each one
MISFIRE_POLICIES = ("coalesce", "skip", "all")
#: a fire later than this is a misfire (below it, it is just on time)
MISFIRE_GRACE = 1.0
#: at most this many missed fires run under ``misfire="all"``; older ones are dropped
MAX_CATCH_UP = 1000


class ScheduleSpec(NamedTuple):
    """A recurring task as a client declares it (payload: the pickled call)."""

    id: str
    payload: bytes
    cron: str | None = None  # a 5-field cron expression, in ``timezone``
    every: float | None = None  # or a period in seconds, from ``anchor``
    queue: str = DEFAULT_QUEUE
    priority: int = 0
    misfire: str = "coalesce"
    timezone: str = "UTC"


class Schedule(NamedTuple):
    """A schedule as the store holds it."""

    id: str
    cron: str | None
    every: float | None
    queue: str
    priority: int
    misfire: str
    timezone: str
    paused: bool
    anchor: float  # when it was declared (an ``every`` schedule fires at anchor + k * every)
    next_fire: float | None  # None while paused
    last_fire: float | None  # the fire time of the last fire (None: never fired)


def _zone(name: str) -> _dt.tzinfo:
    if name == "UTC":
        return _dt.timezone.utc
    try:
        import zoneinfo
    except ImportError:  # pragma: no cover - Python 3.9 has it; kept for clarity
        raise ValueError("time zones other than UTC need the zoneinfo module") from None
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {name!r} (an IANA name such as 'Europe/Riga')"
        ) from None


def check(spec: ScheduleSpec) -> None:
    """Raise ValueError, saying what is wrong, for a schedule that cannot run."""
    if not isinstance(spec.id, str) or not spec.id or len(spec.id) > 200 or "@" in spec.id:
        raise ValueError("a schedule id is 1 to 200 characters, without '@'")
    if (spec.cron is None) == (spec.every is None):
        raise ValueError("give exactly one of cron= and every=")
    if spec.every is not None:
        if isinstance(spec.every, bool) or not isinstance(spec.every, (int, float)):
            raise ValueError(f"every= is a number of seconds, not {spec.every!r}")
        if not math.isfinite(spec.every) or spec.every <= 0:
            raise ValueError(f"every= must be a finite number of seconds > 0, not {spec.every!r}")
    if spec.misfire not in MISFIRE_POLICIES:
        raise ValueError(f"misfire= is one of {MISFIRE_POLICIES}, not {spec.misfire!r}")
    zone = _zone(spec.timezone)
    if spec.cron is not None:
        _cron_after(spec.cron, zone, 0.0)  # parses it


def _cron_after(expr: str, zone: _dt.tzinfo, t: float) -> float:
    from cronsim import CronSim, CronSimError

    # cron has minute resolution: start from the minute that holds t, and take
    # the first fire strictly after t
    start = _dt.datetime.fromtimestamp(math.floor(t / 60) * 60, zone)
    try:
        it = CronSim(expr, start)
    except CronSimError as exc:
        raise ValueError(f"bad cron expression {expr!r}: {exc}") from None
    for when in it:
        ts = when.timestamp()
        if ts > t:
            return ts
    raise ValueError(f"cron expression {expr!r} never fires")  # pragma: no cover


def next_fire(s: Schedule | ScheduleSpec, anchor: float, after: float) -> float:
    """The first fire time strictly after ``after``."""
    if s.every is not None:
        k = math.floor((after - anchor) / s.every) + 1
        return anchor + max(k, 1) * s.every
    assert s.cron is not None
    return _cron_after(s.cron, _zone(s.timezone), after)


def due_fires(s: Schedule, now: float) -> tuple[list[float], float]:
    """The fires to run now and the next fire time after them.

    Every fire time in ``(last, now]`` is due; by the misfire policy they run
    as they are (``all``, the newest :data:`MAX_CATCH_UP` at most), as one
    (``coalesce``: the newest), or not at all (``skip``), except that a fire
    late by no more than :data:`MISFIRE_GRACE` always runs.
    """
    assert s.next_fire is not None
    times: list[float] = []
    t = s.next_fire
    if s.every is not None and (now - t) / s.every > MAX_CATCH_UP:
        t += (math.floor((now - t) / s.every) - MAX_CATCH_UP) * s.every  # older ones drop anyway
    while t <= now:
        times.append(t)
        if len(times) > MAX_CATCH_UP:
            del times[0]
        t = next_fire(s, s.anchor, t)
    if len(times) > 1 or (times and now - times[-1] > MISFIRE_GRACE):
        if s.misfire == "coalesce":
            times = times[-1:]
        elif s.misfire == "skip":
            times = [f for f in times if now - f <= MISFIRE_GRACE]
    return times, t


def fire_id(schedule_id: str, when: float) -> str:
    """The task id of one fire: the same for the same schedule and time, always."""
    stamp = _dt.datetime.fromtimestamp(round(when, 3), _dt.timezone.utc)
    return f"{schedule_id}@{stamp.isoformat(timespec='milliseconds')}"


def declared(old: Schedule | None, spec: ScheduleSpec, now: float) -> Schedule:
    """The schedule ``spec`` declares over ``old`` (the one with its id, if any).

    It keeps its pause and last fire, and its next fire when the timing (cron
    or every, and time zone) is unchanged; a new timing counts from ``now``.
    """
    keep = old is not None and (old.cron, old.every, old.timezone) == (
        spec.cron,
        spec.every,
        spec.timezone,
    )
    paused = old.paused if old is not None else False
    if keep and old is not None:
        anchor, nxt = old.anchor, old.next_fire
    else:
        anchor = now
        nxt = None if paused else next_fire(spec, anchor, now)
    return Schedule(
        spec.id,
        spec.cron,
        spec.every,
        spec.queue,
        int(spec.priority),
        spec.misfire,
        spec.timezone,
        paused,
        anchor,
        nxt,
        old.last_fire if old is not None else None,
    )


def paused_as(s: Schedule, paused: bool, now: float) -> Schedule:
    """``s`` paused (no next fire) or resumed: fires missed while paused are not run."""
    if paused:
        return s._replace(paused=True, next_fire=None)
    if s.paused:
        return s._replace(paused=False, next_fire=next_fire(s, s.anchor, now))
    return s
