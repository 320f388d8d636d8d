"""The Redis store: every transition is one Lua script run on the server.

Supported servers: Redis 7.0 and later (tested with Debian 12's 7.0.15 and
redis-py 8.x; the scripts use LPOS, so 6.0.6 is the floor in principle).

Layout (all keys start with ``prefix``; foreign keys in the db are never read)
-----------------------------------------------------------------------------
* ``P:t:ID`` a hash per task (state, counters, payload, result, queue...).
* ``{P:Q}:ready`` a sorted set per queue of its PENDING tasks, scored
  ``-priority * 2**32 + seq``: the lowest score is the next lease (highest
  priority, then submit order).  Streams keep arrival order only, and a task
  coming back (released, lost, promoted) must retake its old place, which a
  sorted score gives in O(log n).  ``{P:Q}:since`` holds the same tasks by
the time they became ready (the oldest wait, in O(1)).  ``{P:Q}:set`` (pause, rate, token bucket)
  and ``{P:Q}:cnt`` (counts per state) share the queue's hash tag.
* ``P:sched`` (SCHEDULED by not_before), ``P:exp`` (drained finished tasks by
  expiry), ``P:dead`` (dead tasks in death order), ``P:fin`` (a list: ended,
  not drained), ``P:n:NODE`` (leases held), ``P:cnt``, ``P:verd``, ``P:sch``.

Cluster: keys of one queue share a hash tag, but the scripts touch task hashes
and the global sets too, so today they need one Redis (or one slot); the
cross-queue operations are lease (several served queues), node loss, stats and
the global indexes.

Durability
----------
Redis applies a script at once and entirely; :meth:`RedisBackend.commit` has
nothing to do.  A submit is acknowledged once Redis applied it.  With
``appendonly yes`` and ``appendfsync always`` it is on disk then, and a crash
or power loss loses nothing acknowledged; with ``everysec`` up to about one
second of changes (submits, completions, leases) can be lost, so an
acknowledged task may be forgotten.  Leases are stored, so a lease token is
never issued twice across a coordinator restart; restarting the coordinator
is what opening a store means in the contract: every lease goes back to its
queue without a loss, the completion counters restart, and what expired while
no coordinator ran is purged.  (Several coordinators over one Redis, issue 13
part 2, will need leases owned per coordinator instead.)

Jitter for retry backoff is drawn in Python from the seeded generator (one
draw per failing completion, so the sequence differs from the memory store's
while the distribution is the same) and passed in; weighted queue choice uses
a Park-Miller generator inside the lease script, seeded per node per call.
Priorities must stay within +-2**20 for the sorted score to be exact.

Contract tests skipped for Redis: none (the restart tests run: a reopen is a
new RedisBackend on the same server and prefix).

Telemetry: each script replies with its events beside its result (a task
submitted or ended, a lease's wait, a completion's run time, by queue), and
:meth:`RedisBackend._run` counts them into ``telemetry``, so every transition
feeds it whichever operation caused it, as in the memory store.
"""

from __future__ import annotations

import json
import logging
import random
import time
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pyqueue.errors import ClusterError

from .. import dispatch, schedules
from ..backend import Backend
from ..dispatch import Policy
from ..schedules import Schedule, ScheduleSpec
from ..states import (
    Completion,
    Demand,
    Grant,
    Lease,
    Outcome,
    QueueInfo,
    Release,
    Stats,
    SubmitSpec,
    TaskInfo,
    TaskState,
    Verdict,
)
from ..telemetry import Telemetry
from . import redis_lua

__all__ = ["RedisBackend", "RedisUnavailable"]

log = logging.getLogger("pyqueue.cluster.store")


class RedisUnavailable(ClusterError, ConnectionError):
    """The Redis server named by the URL cannot be reached or refused us."""


def redacted(url: str) -> str:
    """``url`` with its password, if any, replaced by ``***``: for messages and logs."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port is not None else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


#: the due-work hint before anything was read (see RedisBackend._due)
_UNKNOWN = -1.0

_STATES = tuple(TaskState)  # by value: the scripts send states as their numbers


def _settings(raw: Sequence[Any]) -> tuple[float | None, bool, float, float]:
    """A queue's (rate, paused, tokens, stamp) from HMGET of its settings hash."""
    rate, paused, tokens, stamp = raw
    return (
        None if rate is None else float(rate),
        paused == b"1",
        float(tokens or 0.0),
        float(stamp or 0.0),
    )


def _f(x: float) -> str:
    return repr(float(x))


def _s(b: Any) -> str:
    return b.decode() if isinstance(b, bytes) else str(b)


class RedisBackend(Backend):
    """Dispatch state in Redis (see the module doc and the Backend contract)."""

    def __init__(
        self,
        url: str,
        policy: Policy | None = None,
        *,
        prefix: str = "pyqueue",
        seed: int | None = None,
        now: float | None = None,
        client: Any = None,
    ) -> None:
        import redis

        self.policy = policy or Policy()
        self.url = redacted(url)  # what messages and logs show
        self.prefix = prefix
        self._rng = random.Random(seed)
        self._r = client if client is not None else redis.Redis.from_url(url)
        self.unavailable = (redis.ConnectionError, redis.TimeoutError)
        # When the earliest scheduled task or schedule fire falls (None: there
        # is none), as next_ready last read it, or _UNKNOWN.  Every change that
        # can make work due sooner through this store resets it, so that
        # promote_due and fire_schedules skip their round trips (~0.15 ms each
        # here) while nothing is due: a single coordinator's view.
        self._due: float | None = _UNKNOWN
        try:
            self._r.ping()
        except redis.AuthenticationError as e:
            raise RedisUnavailable(f"Redis at {self.url} refused authentication: {e}") from None
        except redis.ResponseError as e:
            if "NOAUTH" in str(e) or "WRONGPASS" in str(e):
                raise RedisUnavailable(f"Redis at {self.url} refused authentication: {e}") from None
            raise RedisUnavailable(f"Redis at {self.url} refused us: {e}") from None
        except redis.RedisError as e:
            raise RedisUnavailable(f"cannot reach Redis at {self.url}: {e}") from None
        self._warn_if_volatile()
        self.telemetry = Telemetry()
        p = self.policy
        self._head: list[Any] = [
            prefix,
            p.max_lost,
            p.max_attempts,
            _f(p.result_ttl),
            _f(p.dead_ttl),
            _f(p.backoff_cap),
            p.max_dead,
        ]
        self._scripts = {
            name: self._r.register_script(redis_lua.script(getattr(redis_lua, name)))
            for name in (
                "SUBMIT",
                "LEASE",
                "COMPLETE",
                "RELEASE",
                "REVOKED",
                "NODE_LOST",
                "CANCEL",
                "REQUEUE_DEAD",
                "DRAIN",
                "PROMOTE",
                "EXPIRE",
                "PURGE",
                "CONFIGURE",
                "OLDEST",
                "RECOVER",
                "DELETE_DEAD",
            )
        }
        self._run("RECOVER", time.time() if now is None else now, [])

    def _warn_if_volatile(self) -> None:
        """Say so when the server keeps nothing on disk: a restart would empty the queue."""
        import redis

        try:
            aof = int(self._r.info("persistence").get("aof_enabled", 0))
            save = self._r.config_get("save").get("save", "")
        except redis.RedisError:  # managed servers may refuse CONFIG: nothing to tell
            return
        if not aof:
            log.warning(
                "Redis at %s runs without appendonly: %s",
                self.url,
                "a crash loses what its last snapshot lacks"
                if save
                else "a restart loses every task (no snapshots either)",
                extra={"event": "redis_volatile", "url": self.url},
            )

    def _run(self, name: str, now: float, args: Sequence[Any]) -> Any:
        reply, events = self._scripts[name](args=[*self._head, _f(now), *args])
        if events:
            self._observe(events)
        return reply

    def _observe(self, events: Sequence[bytes]) -> None:
        """Count a script's (kind, queue, value) events into ``telemetry``."""
        tel = self.telemetry
        it = iter(events)
        for kind, raw, value in zip(it, it, it):
            queue = raw.decode()
            if kind == b"w":
                tel.histogram(tel.wait, queue).observe(float(value))
            elif kind == b"f":
                tel.on_finished(queue, _STATES[int(value)])
            elif kind == b"n":
                tel.submitted[queue] = tel.submitted.get(queue, 0) + 1
            elif kind == b"r":
                tel.histogram(tel.run, queue).observe(float(value))
            else:
                raise ClusterError(f"Redis script sent an unknown telemetry event {kind!r}")

    def _k(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def _qk(self, queue: str, what: str) -> str:
        return f"{{{self.prefix}:{queue}}}:{what}"

    # -- Backend ---------------------------------------------------------------
    def submit(self, specs: Iterable[SubmitSpec], now: float) -> list[TaskState]:
        specs = list(specs)
        if any(spec.not_before > now for spec in specs):
            self._due = _UNKNOWN
        got = self._run("SUBMIT", now, ["", "", "", *self._spec_args(specs)])
        return [TaskState(int(x)) for x in got]

    @staticmethod
    def _spec_args(specs: Iterable[SubmitSpec]) -> list[Any]:
        """SUBMIT's 8 arguments per task."""
        args: list[Any] = []
        for s in specs:
            ttl = "" if s.result_ttl is None else _f(max(0.0, s.result_ttl))
            args += [
                s.id,
                s.payload,
                max(0, int(s.retries)),
                _f(max(0.0, float(s.backoff))),
                _f(s.not_before),
                ttl,
                s.queue,
                int(s.priority),
            ]
        return args

    def lease(self, demands: Mapping[str, Demand], now: float) -> dict[str, Grant]:
        args: list[Any] = []
        for node, d in demands.items():
            args += [node, d.capacity, int(d.strict), self._rng.randrange(1, 2147483646)]
            args.append(len(d.queues))
            for name, w in d.queues.items():
                args += [name, w]
        if not args:
            return {}
        got = self._run("LEASE", now, args)
        out: dict[str, Grant] = {}
        i = 0
        while i < len(got):
            node, held, k = _s(got[i]), int(got[i + 1]), int(got[i + 2])
            i += 3
            leases = []
            for _ in range(k):
                leases.append(Lease(_s(got[i]), int(got[i + 1]), bytes(got[i + 2])))
                i += 3
            out[node] = Grant(leases, held)
        return out

    def complete(self, node: str, rows: Sequence[Completion], now: float) -> list[Verdict]:
        args: list[Any] = []
        for r in rows:
            kind = "cancel" if r.cancelled else "ok" if r.ok else "fail"
            jitter = 1.0 if kind != "fail" else self._rng.uniform(0.5, 1.5)
            args += [
                r.id,
                r.token,
                kind,
                int(r.value is not None),
                r.value if r.value is not None else b"",
                int(r.error is not None),
                r.error if r.error is not None else "",
                _f(jitter),
                "" if r.run_s is None else _f(r.run_s),
            ]
        if not args:
            return []
        if any(not r.ok for r in rows):
            self._due = _UNKNOWN  # a failure may be retried later
        verdicts, _states = self._run("COMPLETE", now, args)
        return [Verdict(_s(v)) for v in verdicts]

    def release(self, node: str, rows: Sequence[Release], now: float) -> list[bool]:
        args: list[Any] = [node]
        for r in rows:
            args += [r.id, r.token, int(r.started)]
        if not rows:
            return []
        return [bool(x) for x in self._run("RELEASE", now, args)]

    def revoked(self, node: str, task_id: str, token: int, now: float) -> bool:
        return bool(self._run("REVOKED", now, [node, task_id, token]))

    def node_lost(self, node: str, now: float) -> list[str]:
        out = [_s(x) for x in self._run("NODE_LOST", now, [node])]
        self.telemetry.leases_expired += len(out)
        return out

    def cancel(self, ids: Iterable[str], now: float) -> list[bool]:
        args = list(ids)
        return [bool(x) for x in self._run("CANCEL", now, args)] if args else []

    def requeue_dead(self, ids: Iterable[str], now: float) -> list[bool]:
        args = list(ids)
        return [bool(x) for x in self._run("REQUEUE_DEAD", now, args)] if args else []

    def delete_dead(self, ids: Iterable[str], now: float) -> list[bool]:
        args = list(ids)
        return [bool(x) for x in self._run("DELETE_DEAD", now, args)] if args else []

    def dead(self, limit: int = 100) -> list[TaskInfo]:
        if limit <= 0:
            return []
        ids = [_s(x) for x in self._r.zrange(self._k("dead"), 0, limit - 1)]
        return [i for i in self.info(ids) if i is not None]

    _FIELDS = ("st", "att", "fail", "lost", "node", "err", "exp", "q", "pri")
    _TIMES = ("cre", "rdy", "sta", "end")

    def info(self, ids: Sequence[str]) -> list[TaskInfo | None]:
        pipe = self._r.pipeline(transaction=False)
        for tid in ids:
            pipe.hmget(self._k("t", tid), *self._FIELDS, *self._TIMES)
        out: list[TaskInfo | None] = []
        for tid, row in zip(ids, pipe.execute()):
            if row[0] is None:
                out.append(None)
                continue
            st, att, fail, lost, node, err, exp, q, pri = row[: len(self._FIELDS)]
            times = (float(x or 0.0) for x in row[len(self._FIELDS) :])
            out.append(
                TaskInfo(
                    tid,
                    TaskState(int(st)),
                    int(att or 0),  # counters and times left out of a hash are 0
                    int(fail or 0),
                    int(lost or 0),
                    _s(node) or None if node else None,
                    None if err is None else _s(err),
                    float(exp or 0.0),
                    _s(q),
                    int(pri),
                    *times,
                )
            )
        return out

    def outcomes(self, ids: Sequence[str]) -> list[Outcome | None]:
        pipe = self._r.pipeline(transaction=False)
        for tid in ids:
            pipe.hmget(self._k("t", tid), "st", "res", "err")
        out: list[Outcome | None] = []
        for tid, (st, res, err) in zip(ids, pipe.execute()):
            if st is None:
                out.append(None)
                continue
            state = TaskState(int(st))
            value = res if state in (TaskState.SUCCEEDED, TaskState.FAILED) else None
            out.append(Outcome(tid, state, value, None if err is None else _s(err)))
        return out

    def drain_finished(self) -> list[str]:
        return [_s(x) for x in self._run("DRAIN", 0.0, [])]

    def _nothing_due(self, now: float) -> bool:
        due = self._due
        return due != _UNKNOWN and (due is None or now < due)

    def promote_due(self, now: float) -> int:
        if self._nothing_due(now):
            return 0
        return int(self._run("PROMOTE", now, []))

    def next_due(self) -> float | None:
        got = self._r.zrange(self._k("sched"), 0, 0, withscores=True)
        return float(got[0][1]) if got else None

    def expire(self, now: float, limit: int) -> int:
        return int(self._run("EXPIRE", now, [limit])) if limit > 0 else 0

    def purge(self, now: float, *, finished_before: float | None, dead: bool, limit: int) -> int:
        fb = "" if finished_before is None else _f(finished_before)
        return int(self._run("PURGE", now, [fb, int(dead), limit])) if limit > 0 else 0

    def next_ready(self, now: float) -> float | None:
        # two round trips whatever the number of queues and schedules
        pipe = self._r.pipeline(transaction=False)
        pipe.zrange(self._k("sched"), 0, 0, withscores=True)
        pipe.hgetall(self._k("sch"))
        pipe.smembers(self._k("queues"))
        first, raw_schedules, raw_names = pipe.execute()
        due = float(first[0][1]) if first else None
        for raw in raw_schedules.values():
            fire = Schedule(*json.loads(raw)["s"]).next_fire
            if fire is not None:
                due = fire if due is None else min(due, fire)
        self._due = due
        names = sorted(_s(x) for x in raw_names)
        pipe = self._r.pipeline(transaction=False)
        for name in names:
            pipe.hmget(self._qk(name, "set"), "rate", "paused", "tokens", "stamp")
            pipe.zcard(self._qk(name, "ready"))
        got = pipe.execute() if names else []
        for i in range(len(names)):
            rate, paused, tokens, stamp = _settings(got[2 * i])
            if rate is None or paused or not got[2 * i + 1]:
                continue
            tokens = dispatch.refill(tokens, stamp, rate, now)
            if tokens >= 1.0:
                continue
            at = dispatch.token_at(tokens, now, rate)
            due = at if due is None else min(due, at)
        return due

    def _queue_names(self) -> list[str]:
        return sorted(_s(x) for x in self._r.smembers(self._k("queues")))

    def _settings(self, name: str) -> tuple[float | None, bool, float, float]:
        return _settings(self._r.hmget(self._qk(name, "set"), "rate", "paused", "tokens", "stamp"))

    def configure_queue(
        self, name: str, *, rate_limit: float | None, paused: bool, now: float
    ) -> QueueInfo:
        if rate_limit is not None and not rate_limit > 0:
            raise ValueError(f"rate_limit must be > 0 per second or None, not {rate_limit!r}")
        rate = "" if rate_limit is None else _f(rate_limit)
        tokens = 0.0 if rate_limit is None else dispatch.bucket_capacity(rate_limit)
        self._run("CONFIGURE", now, [name, rate, _f(tokens), int(bool(paused))])
        return self._queue_info(name)

    def _queue_info(self, name: str) -> QueueInfo:
        rate, paused, _, _ = self._settings(name)
        raw = self._r.hgetall(self._qk(name, "cnt"))
        counts = {st: int(raw.get(str(int(st)).encode(), 0)) for st in TaskState}
        oldest = self._run("OLDEST", 0.0, [name])
        return QueueInfo(name, rate, paused, counts, None if oldest is None else float(oldest))

    def queues(self) -> list[QueueInfo]:
        return [self._queue_info(n) for n in self._queue_names()]

    # -- schedules (stored as JSON; fires are one script with the submit) ----
    def _load(self, schedule_id: str) -> tuple[Schedule, bytes, str] | None:
        raw = self._r.hget(self._k("sch"), schedule_id)
        if raw is None:
            return None
        d = json.loads(raw)
        return Schedule(*d["s"]), bytes.fromhex(d["p"]), _s(raw)

    @staticmethod
    def _dump(sch: Schedule, payload: bytes) -> str:
        return json.dumps({"s": list(sch), "p": payload.hex()})

    def put_schedule(self, spec: ScheduleSpec, now: float) -> Schedule:
        schedules.check(spec)
        old = self._load(spec.id)
        sch = schedules.declared(None if old is None else old[0], spec, now)
        self._due = _UNKNOWN
        self._r.hset(self._k("sch"), spec.id, self._dump(sch, spec.payload))
        return sch

    def schedules(self) -> list[Schedule]:
        raw = self._r.hgetall(self._k("sch"))
        return [Schedule(*json.loads(v)["s"]) for _, v in sorted(raw.items())]

    def pause_schedule(self, schedule_id: str, paused: bool, now: float) -> Schedule | None:
        got = self._load(schedule_id)
        if got is None:
            return None
        sch, payload, _ = got
        sch = schedules.paused_as(sch, paused, now)
        self._due = _UNKNOWN
        self._r.hset(self._k("sch"), schedule_id, self._dump(sch, payload))
        return sch

    def delete_schedule(self, schedule_id: str) -> bool:
        return bool(self._r.hdel(self._k("sch"), schedule_id))

    def fire_schedules(self, now: float) -> list[str]:
        if self._nothing_due(now):
            return []
        self._due = _UNKNOWN  # the fires move each schedule's next time
        fired: list[str] = []
        for sch in self.schedules():
            if sch.next_fire is None or sch.next_fire > now:
                continue
            got = self._load(sch.id)
            if got is None:
                continue
            sch, payload, raw = got
            times, nxt = schedules.due_fires(sch, now)
            ids = [schedules.fire_id(sch.id, t) for t in times]
            last = times[-1] if times else sch.last_fire
            new = self._dump(sch._replace(next_fire=nxt, last_fire=last), payload)
            specs = [SubmitSpec(i, payload, queue=sch.queue, priority=sch.priority) for i in ids]
            res = self._run("SUBMIT", now, [sch.id, raw, new, *self._spec_args(specs)])
            if res is not None:  # None: changed or deleted meanwhile (another coordinator)
                fired += ids
        return fired

    def stats(self) -> Stats:
        cnt = self._r.hgetall(self._k("cnt"))
        verd = self._r.hgetall(self._k("verd"))
        nodes = sorted(_s(x) for x in self._r.smembers(self._k("nodes")))
        pipe = self._r.pipeline(transaction=False)
        for n in nodes:
            pipe.hlen(self._k("n", n))
        held = dict(zip(nodes, (int(x) for x in pipe.execute())))
        return Stats(
            tasks={st: int(cnt.get(str(int(st)).encode(), 0)) for st in TaskState},
            completions={v: int(verd.get(v.value.encode(), 0)) for v in Verdict},
            purged=int(self._r.get(self._k("purged")) or 0),
            held=held,
        )

    def commit(self) -> None:
        """Nothing to do: Redis applied each script whole (see the module doc)."""

    def close(self) -> None:
        self._r.close()
