"""The Redis store: every transition is one Lua script run on the server.

Supported servers: Redis 7.0 and later (tested with Debian 12's 7.0.15 and
redis-py 8.x; the scripts use XTRIM MINID and exclusive XRANGE bounds, so
6.2 is the floor in principle).

Layout (every key starts with ``P``, the prefix as a hash tag: ``{prefix}``;
foreign keys in the db are never read)
-----------------------------------------------------------------------------
* ``P:t:ID`` a hash per task (state, counters, payload, result, queue...);
  a field at its default (a counter or time at 0, no node, no retries) is
  left out until it changes, since every field costs the server time in each
  HSET.
* ``P:q:Q:ready`` a sorted set per queue of its PENDING tasks, scored
  ``-priority * 2**32 + seq``: the lowest score is the next lease (highest
  priority, then submit order).  Streams keep arrival order only, and a task
  coming back (released, lost, promoted) must retake its old place, which a
  sorted score gives in O(log n).  ``P:q:Q:since`` holds the same tasks by
  the time they became ready (the oldest wait, in O(1)).  ``P:q:Q:set``
  (pause, rate, token bucket) and ``P:q:Q:cnt`` (counts per state).
* ``P:sched`` (SCHEDULED by not_before), ``P:exp`` (drained finished tasks by
  expiry: a task in no coordinator's drain yet is not there), ``P:dead`` (dead
  tasks in death order), ``P:cnt``, ``P:verd``, ``P:sch``.
* ``P:fins`` a stream of the ids of ended tasks (one entry per script, field
  ``i`` per id), read by every coordinator from its own cursor ``P:cur``
  (owner -> stream id) and trimmed below the lowest cursor.
* Coordinators (owners): ``P:coords`` (the set of registered owner ids),
  ``P:co:OWNER`` (its liveness key, with a TTL), ``P:ack:OWNER`` (the owners
  that acknowledged it), ``P:ad:OWNER`` (the leases it adopted, by time).
* Nodes, by qualified id ``OWNER/NODE`` (the coordinator's node id behind the
  owner that gave it out): ``P:n:QNODE`` (leases granted to it, id -> suspect
  flag), ``P:a:QNODE`` (leases it adopted), ``P:nodes``, ``P:sus`` (suspect
  leases held), ``P:nn`` (the name each node authenticated with).

Redis Cluster: the hash tag puts every key of a store in one slot, so the
scripts (which declare ``P:co:OWNER`` as KEYS[1], for routing, and compute
the other keys of the same slot) run on Redis Cluster as on one Redis.
``redis+cluster://host:port/0`` or ``?cluster=1`` opens a
``redis.cluster.RedisCluster``; SCRIPT LOAD then goes to every primary.  One
store is on one shard by design: a lease spans every queue a node serves and
the global indexes atomically, which Redis Cluster allows within one slot
only; other prefixes hash elsewhere.  The layout changed with the tag (before
any release of this store): keys under the old names are not read.

Durability
----------
Redis applies a script at once and entirely; :meth:`RedisBackend.commit` has
nothing to do.  A submit is acknowledged once Redis applied it.  With
``appendonly yes`` and ``appendfsync always`` it is on disk then, and a crash
or power loss loses nothing acknowledged; with ``everysec`` up to about one
second of changes (submits, completions, leases) can be lost, so an
acknowledged task may be forgotten.  Leases are stored, so a lease token is
never issued twice across a coordinator restart.  A store closed (or a
coordinator dead) leaves its leases to the next owner that looks: with no
other coordinator, opening the store is a restart as the contract has it
(every lease goes back to its queue without a loss, the completion counters
restart, and what expired while no coordinator ran is purged).

Several coordinators
--------------------
Any number of coordinators may serve one prefix at once.  Each open of a
RedisBackend is an owner: a random id registered in ``P:coords`` with a
liveness key ``P:co:OWNER`` that lives ``liveness`` seconds (5) unless
:meth:`RedisBackend.keepalive` (the coordinator's tick) refreshes it.

* Leases are the owner's: the node ids the coordinator gives are qualified by
  owner in the store, so ``node_lost`` from one coordinator never touches the
  leases the same node holds through another, however late it comes.  A
  completion is accepted from any coordinator with the lease's token.
* A dead owner (its key expired, or it closed) is found by the others'
  keepalive and by every open (RECOVER_DEAD): its leases go back to their
  queues at their old positions without a loss (the coordinator died, not the
  task), and it is unregistered, one log line each with the count.
* A node that joins (:meth:`RedisBackend.node_joined`, at its READY) takes over
  the leases a node of the same name holds through other owners (ADOPT): the
  node keeps running its previous connection's tasks and resends their
  results (see :mod:`pyqueue.cluster.node`), so nothing runs twice.  They go
  to ``P:a:QNODE``, not counted against the capacity it announces (which
  leaves them out already).  One still open ``adopt_for`` seconds (30) later
  is requeued without a loss: its coordinator may have died between granting
  it and sending it, so that nobody holds it; or a node process restarted
  under the same name never had it.  Node names should differ per process
  (the default ``host:pid`` does), since adoption goes by name.
* Fencing: every script first checks that its owner's liveness key exists; if
  it expired (a coordinator paused past its liveness, whose leases the others
  may have recovered), the script changes nothing and the store joins again
  under a new owner id, raising :class:`CoordinatorFenced` (an ``unavailable``
  error: the coordinator retries and re-makes its connections).
* Finished ids reach every coordinator through the stream ``P:fins``.

Each Redis call is a round trip (~0.15 ms on a local server), so while it is
alone the store keeps what only its own writes change and answers from it:
the earliest SCHEDULED time, the schedules and which queues have a rate
limit (``next_ready``, ``promote_due`` and ``fire_schedules`` read nothing
while nothing is due), the queues a LEASE found empty (``lease`` from only
those needs no call), what ``P:fins`` holds past its cursor (every script
replies with the ids it added, so ``drain_finished`` needs no call; the next
script, whichever, marks the ids handed out drained first, before anything
can read ``P:exp``), and the outcomes ``complete`` produced (``outcomes`` of
the ids just drained).  A steady flush is one LEASE; one after a DONE, often
none.  Alone is proven, not guessed: an owner that joins waits until every
other live owner has acknowledged it (KEEPALIVE writes ``P:ack``), and an
owner acknowledges only from the keepalive that also makes it drop its
caches; so no owner writes while another still trusts its caches (fencing
covers an owner taken for dead).  Beside others, the store reads instead
(about five round trips a flush) and ``next_ready`` asks for a flush every
``poll`` seconds (0.05), since nothing announces the others' writes.  Alone
again (the others gone), it caches again from fresh reads.

``liveness``, ``poll`` and ``adopt_for`` are keywords, or query parameters of
the URL (``redis://host/0?liveness=5``), which is how ``--store`` sets them.

Jitter for retry backoff is drawn in Python from the seeded generator (one
draw per failing completion, so the sequence differs from the memory store's
while the distribution is the same) and passed in; weighted queue choice uses
a Park-Miller generator inside the lease script, seeded per node per call.
Priorities must stay within +-2**20 for the sorted score to be exact.

Contract tests skipped for Redis: none (the restart tests run: a reopen is a
new RedisBackend on the same server and prefix, after the old one's close).

Telemetry: each script replies with its events beside its result (counts of
tasks submitted and ended by queue and state, each lease's wait and each
completion's run time), and :meth:`RedisBackend._run` counts them into
``telemetry``, so every transition feeds it whichever operation caused it, as
in the memory store.

Cost: the per-task rows of SUBMIT and COMPLETE travel as one msgpack blob
each (packing 8 or 9 arguments a task in redis-py cost the coordinator more
than Redis spent on the script), and a task costs six commands inside the
scripts: HSET at submit (one EXISTS for the batch finds its ids new), HMGET
and HSET at lease, HMGET and HSET at completion, HGET when its end is
drained.
"""

from __future__ import annotations

import collections
import json
import logging
import random
import secrets
import time
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import msgpack

from pyqueue.errors import ClusterError

from .. import dispatch, schedules
from ..backend import Backend
from ..dispatch import Policy
from ..schedules import Schedule, ScheduleSpec
from ..states import (
    CANCELLED,
    FAILED,
    SCHEDULED,
    SUCCEEDED,
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

__all__ = ["CoordinatorFenced", "RedisBackend", "RedisUnavailable"]

log = logging.getLogger("pyqueue.cluster.store")


class RedisUnavailable(ClusterError, ConnectionError):
    """The Redis server named by the URL cannot be reached or refused us."""


class CoordinatorFenced(ClusterError, ConnectionError):
    """This coordinator's liveness key had expired, so the others may have
    recovered its leases: it joined again under a new owner id, and the
    operation that found out was not applied (the coordinator retries it and
    re-makes its connections, as after a store outage)."""


#: how many P:fins entries one DRAIN reads at most
_DRAIN_ENTRIES = 1000


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


_new = tuple.__new__

#: a cached time not read yet (see RedisBackend.__init__)
_UNKNOWN = -1.0

_STATES = tuple(TaskState)  # by value: the scripts send states as their numbers
#: by the bytes a script replies (an enum's lookup by value costs ~0.5 us a call)
_VERDICTS = {v.value.encode(): v for v in Verdict}


def _settings(raw: Sequence[Any]) -> tuple[float | None, bool, float, float]:
    """A queue's (rate, paused, tokens, stamp) from HMGET of its settings hash."""
    rate, paused, tokens, stamp = raw
    return (
        None if rate is None else float(rate),
        paused == b"1",
        float(tokens or 0.0),
        float(stamp or 0.0),
    )


#: the query parameters of a store URL that are this store's, not redis-py's
_OPTIONS = ("liveness", "poll", "adopt_for", "cluster")

#: URL schemes that name a Redis Cluster (any of its nodes), and the ones redis-py knows
_CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


def _cluster_url(url: str, opts: Mapping[str, str]) -> tuple[str, bool]:
    """``url`` as redis-py takes it, and whether it names a Redis Cluster
    (``redis+cluster://host:port/0``, or ``?cluster=1`` on a ``redis://`` URL)."""
    parts = urllib.parse.urlsplit(url)
    flag = opts.get("cluster", "0").strip().lower()
    if flag not in ("0", "1", "true", "false", "yes", "no", ""):
        raise ValueError(f"cluster must be 1 or 0, not {opts['cluster']!r}")
    cluster = flag in ("1", "true", "yes")
    scheme = _CLUSTER_SCHEMES.get(parts.scheme.lower())
    if scheme is None:
        return url, cluster
    return urllib.parse.urlunsplit(parts._replace(scheme=scheme)), True


def _tag(prefix: str) -> str:
    """The base of every key of the store: ``prefix`` as a Redis Cluster hash tag."""
    if not prefix or "{" in prefix or "}" in prefix:
        raise ValueError(f"prefix must be non-empty, without braces, not {prefix!r}")
    return "{" + prefix + "}"


def _own_options(url: str) -> tuple[str, dict[str, str]]:
    """``url`` without the store's own query parameters, and those."""
    parts = urllib.parse.urlsplit(url)
    if not parts.query:
        return url, {}
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    mine = {k: v for k, v in query if k in _OPTIONS}
    rest = urllib.parse.urlencode([(k, v) for k, v in query if k not in _OPTIONS])
    return urllib.parse.urlunsplit(parts._replace(query=rest)), mine


def _positive(name: str, given: float | None, opts: Mapping[str, str], default: float) -> float:
    """A keyword's value, else the URL's (``?liveness=5``), else ``default``; > 0 s."""
    raw: object = given if given is not None else opts.get(name, default)
    try:
        value = float(raw)  # type: ignore[arg-type]
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise ValueError(f"{name} must be a number of seconds > 0, not {raw!r}")
    return value


def _f(x: float) -> str:
    return repr(float(x))


def _pack(rows: Any) -> bytes:
    # Redis's Lua msgpack reads no bin type: bytes travel as raw strings
    packed: bytes = msgpack.packb(rows, use_bin_type=False)
    return packed


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
        liveness: float | None = None,
        poll: float | None = None,
        adopt_for: float | None = None,
    ) -> None:
        import redis
        import redis.cluster

        url, opts = _own_options(url)
        url, self.cluster = _cluster_url(url, opts)
        self.policy = policy or Policy()
        self.url = redacted(url)  # what messages and logs show
        self.prefix = prefix
        self._base = _tag(prefix)  # every key starts with it (see Layout in the module doc)
        #: seconds this coordinator's liveness key lives without a keepalive
        self.liveness = _positive("liveness", liveness, opts, 5.0)
        #: seconds between flushes while other coordinators share the store
        self.poll = _positive("poll", poll, opts, 0.05)
        #: seconds an adopted lease is held for its node before it is requeued
        self.adopt_for = _positive("adopt_for", adopt_for, opts, 30.0)
        self._adoptions: collections.deque[float] = collections.deque()  # their times
        self._rng = random.Random(seed)
        if client is None:
            cls = redis.cluster.RedisCluster if self.cluster else redis.Redis
            try:
                client = cls.from_url(url)  # a cluster client asks for its slots here
            except (redis.RedisError, redis.exceptions.RedisClusterException) as e:
                raise RedisUnavailable(f"cannot reach Redis at {self.url}: {e}") from None
        #: a RedisCluster client (given, or from the URL): scripts load on every primary
        self.cluster = isinstance(client, redis.cluster.RedisCluster)
        self._r = client
        self.unavailable = (redis.ConnectionError, redis.TimeoutError, CoordinatorFenced)
        if self.cluster:  # every shard down, or the store's slot without a primary
            self.unavailable += (
                redis.exceptions.ClusterDownError,
                redis.exceptions.RedisClusterException,
            )
        self._closed = False
        #: this open's owner id (see "Several coordinators" in the module doc)
        self.owner = ""
        self._qp = ""  # owner + "/": the prefix of the node ids this owner leases to
        #: no other live coordinator: the caches below are right (module doc)
        self._alone = True
        # P:fins, as this owner reads it: ids handed out up to _cursor, marked
        # drained up to _marked; _handed_to: handed, to be marked by the next
        # script; _tail: the stream's last id while _ahead is known
        self._cursor = self._marked = self._tail = "0-0"
        self._handed_to: str | None = None
        # What this object knows without asking (each read costs a round trip,
        # ~0.15 ms here), kept right by its own writes while it is alone (see
        # "Several coordinators" in the module doc).
        #: not_before of the earliest SCHEDULED task (None: none), or _UNKNOWN;
        #: never later than the truth (a cancel may leave it early: harmless)
        self._sched_at: float | None = _UNKNOWN
        #: the schedules by id (Schedule, payload, stored JSON), None: not read
        self._sch: dict[str, tuple[Schedule, bytes, str]] | None = None
        self._fire_at: float | None = _UNKNOWN  # their earliest next fire
        self._limited: set[str] | None = None  # the queues with a rate limit
        #: queues whose ready set LEASE found empty, while no script that can
        #: add to one ran since: a lease from only those needs no round trip
        self._empty: set[str] = set()
        #: P:fins past _cursor, as this object's scripts left it (each replies
        #: with what it added there), or None after a failed call or while not
        #: alone: drain_finished reads nothing while it is known; the next
        #: script marks what it handed out drained (one round trip less)
        self._ahead: list[str] | None = None
        #: outcomes complete() produced, until the next drain; then those of
        #: the ids it drained (what outcomes() is asked for next)
        self._told: dict[str, Outcome] = {}
        self._outcomes: dict[str, Outcome] = {}
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
            self._base,
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
                "DELETE_DEAD",
                "KEEPALIVE",
                "RECOVER_DEAD",
                "ADOPT",
                "EXPIRE_ADOPTED",
                "OPEN",
            )
        }
        # loaded at once (one round trip), not at each one's first EVALSHA (three);
        # on a Redis Cluster SCRIPT LOAD goes to every primary, and a primary that
        # lacks one later (a failover) gets it from the NOSCRIPT fallback of Script
        if self.cluster:
            for sc in self._scripts.values():
                self._r.script_load(sc.script)
        else:
            pipe = self._r.pipeline(transaction=False)
            for sc in self._scripts.values():
                pipe.script_load(sc.script)
            pipe.execute()
        self._join(time.time() if now is None else now)

    # -- owners ----------------------------------------------------------------
    def _join(self, now: float) -> None:
        """Register a new owner id, wait until every other live coordinator has
        acknowledged it, recover the dead ones, and open (module doc)."""
        self.owner = secrets.token_hex(6)
        self._qp = self.owner + "/"
        pipe = self._r.pipeline(transaction=True)
        pipe.set(self._k("co", self.owner), 1, px=self._ttl_ms())
        pipe.sadd(self._k("coords"), self.owner)
        pipe.execute()
        self._cursor = self._marked = self._tail = "0-0"
        self._handed_to = None
        self._adoptions.clear()  # P:ad of the old owner id: the others recover them
        self._reset_caches()
        deadline = time.monotonic() + 3 * self.liveness + 1.0
        while True:
            _, _, waiting = self._run("KEEPALIVE", now, [self._ttl_ms()], rejoin=False)
            if not waiting:
                break
            if time.monotonic() > deadline:
                names = ", ".join(sorted(_s(x) for x in waiting))
                raise ClusterError(
                    f"coordinator(s) {names} on the Redis store at {self.url} (prefix"
                    f" {self.prefix!r}) did not acknowledge this one within"
                    f" {3 * self.liveness + 1:g} s"
                )
            time.sleep(min(0.05, self.liveness / 10))
        self._recover_dead(now)
        cur, alone = self._run("OPEN", now, [], rejoin=False)
        self._cursor = self._marked = self._tail = _s(cur)
        self._alone = bool(alone)
        self._reset_caches()
        if self._alone:
            self._ahead = []  # the stream's end is this owner's cursor
        log.info(
            "coordinator %s joined the Redis store at %s (prefix %r)%s",
            self.owner,
            self.url,
            self.prefix,
            "" if self._alone else " beside other live coordinators",
            extra={"event": "store_joined", "owner": self.owner, "alone": self._alone},
        )

    def _ttl_ms(self) -> int:
        return max(1, int(self.liveness * 1000))

    def _reset_caches(self) -> None:
        """Forget what was known without asking: read it again when needed."""
        self._sched_at = _UNKNOWN
        self._forget_schedules()
        self._limited = None
        self._empty = set()
        self._ahead = None
        self._told = {}
        self._outcomes = {}

    def _stale(self) -> None:
        """Other coordinators write too: no cache holds."""
        if not self._alone:
            self._reset_caches()

    def _recover_dead(self, now: float) -> int:
        got = self._run("RECOVER_DEAD", now, [], rejoin=False)
        total = 0
        for owner, n in zip(got[::2], got[1::2]):
            owner, n = _s(owner), int(n)
            total += n
            log.warning(
                "coordinator %s of the Redis store at %s is gone (closed, or its liveness"
                " key expired): %d lease(s) it granted requeued without a loss",
                owner or "(none registered)",
                self.url,
                n,
                extra={"event": "coordinator_recovered", "owner": owner, "requeued": n},
            )
        if total:
            self._empty.clear()
        return total

    def keepalive(self, now: float) -> bool:
        """Refresh this owner's liveness, notice other coordinators coming and
        going, and recover the leases of dead ones (module doc).  True: flush."""
        if self._closed:
            return False
        try:
            others, dead, _ = self._run("KEEPALIVE", now, [self._ttl_ms()])
        except BaseException:
            # it may have acknowledged a newcomer, which then writes: trust
            # nothing cached until a keepalive answers
            self._alone = False
            self._reset_caches()
            raise
        alone = not others
        if alone != self._alone:
            log.info(
                "coordinator %s %s",
                self.owner,
                "is alone on the store again: caching what it writes"
                if alone
                else f"shares the store with {len(others)} other coordinator(s): reading"
                " what they write",
                extra={"event": "store_peers", "owner": self.owner, "others": len(others)},
            )
            self._alone = alone
            self._reset_caches()
        requeued = self._recover_dead(now) if dead else 0
        adoptions = self._adoptions
        if adoptions and adoptions[0] <= now - self.adopt_for:
            cutoff = now - self.adopt_for
            n = int(self._run("EXPIRE_ADOPTED", now, [_f(cutoff)]))
            while adoptions and adoptions[0] <= cutoff:
                adoptions.popleft()
            if n:
                log.warning(
                    "%d adopted lease(s) still open after %g s requeued without a loss: never"
                    " sent by the coordinator that died, or running that long (then twice)",
                    n,
                    self.adopt_for,
                    extra={"event": "adopted_requeued", "requeued": n},
                )
                self._empty.clear()
                requeued += n
        return bool(requeued) or not alone

    def node_joined(self, node: str, name: str, now: float) -> int:
        """Adopt what a node of this name holds through other coordinators."""
        if not name:
            return 0  # nothing tells two unnamed nodes apart
        n = int(self._run("ADOPT", now, [self._qp + node, name]))
        if n:
            self._adoptions.append(now)
            log.info(
                "node %s holds %d lease(s) granted through another coordinator: taken over",
                node,
                n,
                extra={"event": "leases_adopted", "node": node, "adopted": n},
            )
        return n

    def _warn_if_volatile(self) -> None:
        """Say so when the server keeps nothing on disk: a restart would empty the queue."""
        import redis

        # on a Redis Cluster, the primary that holds the store's slot
        kw = {"target_nodes": self._r.get_node_from_key(self._base)} if self.cluster else {}
        try:
            aof = int(self._r.info("persistence", **kw).get("aof_enabled", 0))
            save = self._r.config_get("save", **kw).get("save", "")
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

    def _run(self, name: str, now: float, args: Sequence[Any], *, rejoin: bool = True) -> Any:
        import redis

        if self._closed:
            raise ClusterError(f"the Redis store at {self.url} was closed")
        # The handed-out range is marked drained by this script; should the
        # call fail, by the next one (marking twice changes nothing).
        to = self._handed_to
        ahead, self._ahead = self._ahead, None  # unknown should the call fail
        try:
            reply, events, pushed, xid = self._scripts[name](
                keys=[self._k("co", self.owner)],
                args=[*self._head, _f(now), self.owner, self._marked, to or "", *args],
            )
        except redis.ResponseError as e:
            if not str(e).startswith("PQFENCED"):
                raise
            if not rejoin:
                raise CoordinatorFenced(str(e)) from None
            old = self.owner
            log.error(
                "coordinator %s was taken for dead by the others (its liveness key expired):"
                " joining the Redis store at %s again",
                old,
                self.url,
                extra={"event": "store_fenced", "owner": old},
            )
            self._join(now)
            raise CoordinatorFenced(f"coordinator {old} was fenced; now {self.owner}") from None
        if to is not None:
            self._marked = to
            if self._handed_to == to:
                self._handed_to = None
        if events:
            self._observe(events)
        if ahead is not None and self._alone:
            ahead += [_s(x) for x in pushed]
            self._ahead = ahead
            if xid:
                self._tail = _s(xid)
        return reply

    def _observe(self, events: Sequence[Any]) -> None:
        """Count a script's (kind, queue, value) events into ``telemetry``."""
        tel = self.telemetry
        it = iter(events)
        for kind, raw, value in zip(it, it, it):
            queue = raw.decode()
            if kind == b"w":
                tel.histogram(tel.wait, queue).observe(value / 1e6)  # whole µs
            elif kind == b"r":
                tel.histogram(tel.run, queue).observe(float(value))
            elif kind == b"n":
                tel.submitted[queue] = tel.submitted.get(queue, 0) + value
            elif kind[:1] == b"f":
                tel.on_finished(queue, _STATES[int(kind[1:])], value)
            else:
                raise ClusterError(f"Redis script sent an unknown telemetry event {kind!r}")

    def _k(self, *parts: str) -> str:
        return ":".join((self._base, *parts))

    def _qk(self, queue: str, what: str) -> str:
        return f"{self._base}:q:{queue}:{what}"

    # -- Backend ---------------------------------------------------------------
    def submit(self, specs: Iterable[SubmitSpec], now: float) -> list[TaskState]:
        specs = list(specs)
        self._scheduling(min((s.not_before for s in specs if s.not_before > now), default=None))
        self._empty.difference_update(s.queue for s in specs)
        got = self._run("SUBMIT", now, ["", "", "", self._spec_rows(specs)])
        return [_STATES[x] for x in got]

    @staticmethod
    def _spec_rows(specs: Iterable[SubmitSpec]) -> bytes:
        """SUBMIT's task rows, one msgpack blob (see the script)."""
        return _pack(
            [
                (
                    s.id,
                    s.payload,
                    max(0, int(s.retries)),
                    _f(max(0.0, float(s.backoff))) if s.retries > 0 else None,
                    float(s.not_before),
                    "" if s.result_ttl is None else _f(max(0.0, s.result_ttl)),
                    s.queue,
                    int(s.priority),
                )
                for s in specs
            ]
        )

    def lease(self, demands: Mapping[str, Demand], now: float) -> dict[str, Grant]:
        self._stale()
        empty = self._empty
        if all(name in empty for d in demands.values() for name in d.queues):
            return {}  # nothing to grant, and nodes with no grant may be left out
        qp = self._qp
        draw = self._rng.randrange
        rows = [
            (
                qp + node,
                d.capacity,
                int(d.strict),
                # the seed of the weighted choice, which only several queues need
                draw(1, 2147483646) if len(d.queues) > 1 else 1,
                [x for item in d.queues.items() for x in item],
            )
            for node, d in demands.items()
        ]
        if not rows:
            return {}
        got, empty_now = self._run("LEASE", now, [_pack(rows)])
        self._empty.update(_s(x) for x in empty_now)
        out: dict[str, Grant] = {}
        i = 0
        while i < len(got):
            node, held, k = _s(got[i])[len(qp) :], int(got[i + 1]), int(got[i + 2])
            i += 3
            # tuple.__new__: the namedtuple's own __new__ is a Python call per task
            leases = [
                _new(Lease, (got[j].decode(), got[j + 1], got[j + 2]))
                for j in range(i, i + 3 * k, 3)
            ]
            i += 3 * k
            out[node] = Grant(leases, held)
        return out

    def complete(self, node: str, rows: Sequence[Completion], now: float) -> list[Verdict]:
        if not rows:
            return []
        uniform = self._rng.uniform
        args = [
            (
                r.id,
                r.token,
                "cancel" if r.cancelled else "ok" if r.ok else "fail",
                r.value,
                r.error,
                1.0 if r.ok or r.cancelled else uniform(0.5, 1.5),
                "" if r.run_s is None else _f(r.run_s),
            )
            for r in rows
        ]
        sched_at = self._sched_at
        if any(not r.ok for r in rows):
            self._sched_at = _UNKNOWN  # a failure may be retried later
        verdicts, states = self._run("COMPLETE", now, [_pack(args)])
        if SCHEDULED not in states:
            self._sched_at = sched_at  # none was
        told = self._told
        for r, st in zip(rows, states):
            # what outcomes() would read back (see ended() in the scripts)
            if st == SUCCEEDED:
                told[r.id] = _new(Outcome, (r.id, SUCCEEDED, r.value, None))
            elif st == FAILED:
                told[r.id] = _new(Outcome, (r.id, FAILED, r.value, r.error))
            elif st == CANCELLED:
                told[r.id] = _new(Outcome, (r.id, CANCELLED, None, "cancelled while running"))
        return [_VERDICTS[v] for v in verdicts]

    def release(self, node: str, rows: Sequence[Release], now: float) -> list[bool]:
        args: list[Any] = [self._qp + node]
        for r in rows:
            args += [r.id, r.token, int(r.started)]
        if not rows:
            return []
        self._empty.clear()
        return [bool(x) for x in self._run("RELEASE", now, args)]

    def revoked(self, node: str, task_id: str, token: int, now: float) -> bool:
        return bool(self._run("REVOKED", now, [self._qp + node, task_id, token]))

    def node_lost(self, node: str, now: float) -> list[str]:
        if self._closed:
            # connections lost as the coordinator stops: its leases are the
            # next owner's to recover (without a loss), or the node's to bring
            return []
        self._empty.clear()
        out = [_s(x) for x in self._run("NODE_LOST", now, [self._qp + node])]
        self.telemetry.leases_expired += len(out)
        return out

    def cancel(self, ids: Iterable[str], now: float) -> list[bool]:
        args = list(ids)
        return [bool(x) for x in self._run("CANCEL", now, args)] if args else []

    def requeue_dead(self, ids: Iterable[str], now: float) -> list[bool]:
        args = list(ids)
        self._empty.clear()
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
                    self._unqualified(_s(node)) or None if node else None,
                    None if err is None else _s(err),
                    float(exp or 0.0),
                    _s(q),
                    int(pri),
                    *times,
                )
            )
        return out

    def _unqualified(self, node: str) -> str:
        """A node id as the coordinator knows it (another owner's stays qualified)."""
        return node[len(self._qp) :] if node.startswith(self._qp) else node

    def outcomes(self, ids: Sequence[str]) -> list[Outcome | None]:
        self._stale()
        # The last drain's ids, as complete() saw them end, need no read: a
        # finished task's outcome changes only when it is purged (purge and
        # expire drop these copies).
        known = self._outcomes
        out: list[Outcome | None] = [known.get(tid) for tid in ids] if known else [None] * len(ids)
        missing = [i for i, o in enumerate(out) if o is None]
        if not missing:
            return out
        pipe = self._r.pipeline(transaction=False)
        for i in missing:
            pipe.hmget(self._k("t", ids[i]), "st", "res", "err")
        for i, (st, res, err) in zip(missing, pipe.execute()):
            if st is None:
                continue
            state = TaskState(int(st))
            value = res if state in (TaskState.SUCCEEDED, TaskState.FAILED) else None
            out[i] = Outcome(ids[i], state, value, None if err is None else _s(err))
        return out

    def drain_finished(self) -> list[str]:
        self._stale()
        if self._ahead is not None:  # what P:fins holds past _cursor, known without a read
            ids, self._ahead = self._ahead, []
            if ids:
                self._cursor = self._handed_to = self._tail
        else:
            ids = []
            while True:
                got, cur = self._run("DRAIN", 0.0, [self._cursor, _DRAIN_ENTRIES])
                cur = _s(cur)
                ids += [_s(x) for x in got]
                done = cur == self._cursor
                self._cursor = self._marked = self._tail = cur
                if done or len(got) < _DRAIN_ENTRIES:  # an entry holds one id or more
                    break
            if self._alone:
                self._ahead = []
        told = self._told
        self._outcomes = {tid: told[tid] for tid in ids if tid in told} if told else {}
        self._told = {}  # each of them ended on P:fin: this drain had it
        return ids

    def _scheduling(self, not_before: float | None) -> None:
        """A task may become SCHEDULED until ``not_before`` (None: none)."""
        at = self._sched_at
        if not_before is not None and at != _UNKNOWN:
            self._sched_at = not_before if at is None else min(at, not_before)

    def _known_sched_at(self) -> float | None:
        if self._sched_at == _UNKNOWN:
            self._sched_at = self.next_due()
        return self._sched_at

    def promote_due(self, now: float) -> int:
        self._stale()
        at = self._sched_at
        if at != _UNKNOWN and (at is None or now < at):
            return 0
        self._sched_at = _UNKNOWN
        self._empty.clear()
        n, head = self._run("PROMOTE", now, [])
        self._sched_at = None if head is None else float(head)
        return int(n)

    def next_due(self) -> float | None:
        got = self._r.zrange(self._k("sched"), 0, 0, withscores=True)
        return float(got[0][1]) if got else None

    def expire(self, now: float, limit: int) -> int:
        n = int(self._run("EXPIRE", now, [limit])) if limit > 0 else 0
        if n:
            self._outcomes = {}
        return n

    def purge(self, now: float, *, finished_before: float | None, dead: bool, limit: int) -> int:
        fb = "" if finished_before is None else _f(finished_before)
        n = int(self._run("PURGE", now, [fb, int(dead), limit])) if limit > 0 else 0
        if n:
            self._outcomes = {}
        return n

    def next_ready(self, now: float) -> float | None:
        # no round trip while the caches hold what it needs (see __init__),
        # one per flush while some queue has a rate limit; beside other
        # coordinators, whose writes nothing announces, a flush every poll
        if not self._alone:
            return now + self.poll
        due = self._known_sched_at()
        fire = self._known_fire_at()
        if fire is not None:
            due = fire if due is None else min(due, fire)
        names = sorted(self._known_limited())
        if not names:
            return due
        pipe = self._r.pipeline(transaction=False)
        for name in names:
            pipe.hmget(self._qk(name, "set"), "rate", "paused", "tokens", "stamp")
            pipe.zcard(self._qk(name, "ready"))
        got = pipe.execute()
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

    def _known_limited(self) -> set[str]:
        if self._limited is None:
            names = self._queue_names()
            pipe = self._r.pipeline(transaction=False)
            for name in names:
                pipe.hget(self._qk(name, "set"), "rate")
            rates = pipe.execute() if names else []
            self._limited = {n for n, rate in zip(names, rates) if rate is not None}
        return self._limited

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
        limited, self._limited = self._limited, None  # unknown should the call fail
        self._run("CONFIGURE", now, [name, rate, _f(tokens), int(bool(paused))])
        if limited is not None:
            if rate_limit is None:
                limited.discard(name)
            else:
                limited.add(name)
            self._limited = limited
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
        return None if raw is None else self._parse(raw)

    @staticmethod
    def _parse(raw: bytes | str) -> tuple[Schedule, bytes, str]:
        d = json.loads(raw)
        return Schedule(*d["s"]), bytes.fromhex(d["p"]), _s(raw)

    @staticmethod
    def _dump(sch: Schedule, payload: bytes) -> str:
        return json.dumps({"s": list(sch), "p": payload.hex()})

    def _read_schedules(self) -> dict[str, tuple[Schedule, bytes, str]]:
        raw = self._r.hgetall(self._k("sch"))
        self._sch = {_s(k): self._parse(v) for k, v in sorted(raw.items())}
        self._fire_at = _UNKNOWN
        return self._sch

    def _known_fire_at(self) -> float | None:
        if self._fire_at == _UNKNOWN:
            sch = self._read_schedules() if self._sch is None else self._sch
            fires = [s.next_fire for s, _, _ in sch.values() if s.next_fire is not None]
            self._fire_at = min(fires, default=None)
        return self._fire_at

    def _forget_schedules(self) -> None:
        """Read the schedules again when next needed (a write may have failed)."""
        self._sch = None
        self._fire_at = _UNKNOWN

    def _write_schedule(self, schedule_id: str, sch: Schedule, payload: bytes) -> None:
        self._forget_schedules()
        self._r.hset(self._k("sch"), schedule_id, self._dump(sch, payload))

    def put_schedule(self, spec: ScheduleSpec, now: float) -> Schedule:
        schedules.check(spec)
        old = self._load(spec.id)
        sch = schedules.declared(None if old is None else old[0], spec, now)
        self._write_schedule(spec.id, sch, spec.payload)
        return sch

    def schedules(self) -> list[Schedule]:
        return [s for s, _, _ in self._read_schedules().values()]

    def pause_schedule(self, schedule_id: str, paused: bool, now: float) -> Schedule | None:
        got = self._load(schedule_id)
        if got is None:
            return None
        sch, payload, _ = got
        sch = schedules.paused_as(sch, paused, now)
        self._write_schedule(schedule_id, sch, payload)
        return sch

    def delete_schedule(self, schedule_id: str) -> bool:
        self._forget_schedules()
        return bool(self._r.hdel(self._k("sch"), schedule_id))

    def fire_schedules(self, now: float) -> list[str]:
        self._stale()
        at = self._known_fire_at()
        if at is None or now < at:
            return []
        fired: list[str] = []
        known = self._sch or {}  # read by _known_fire_at
        stale = False
        for sid, (sch, payload, raw) in list(known.items()):
            if sch.next_fire is None or sch.next_fire > now:
                continue
            times, nxt = schedules.due_fires(sch, now)
            ids = [schedules.fire_id(sid, t) for t in times]
            last = times[-1] if times else sch.last_fire
            new_sch = sch._replace(next_fire=nxt, last_fire=last)
            new = self._dump(new_sch, payload)
            specs = [SubmitSpec(i, payload, queue=sch.queue, priority=sch.priority) for i in ids]
            self._forget_schedules()  # should the call fail
            self._empty.discard(sch.queue)
            res = self._run("SUBMIT", now, [sid, raw, new, self._spec_rows(specs)])
            if res is None:  # changed or deleted meanwhile (another coordinator): read again
                stale = True
                continue
            known[sid] = (new_sch, payload, new)
            fired += ids
        if not stale:
            self._sch = known
        return fired

    def stats(self) -> Stats:
        cnt = self._r.hgetall(self._k("cnt"))
        verd = self._r.hgetall(self._k("verd"))
        nodes = sorted(_s(x) for x in self._r.smembers(self._k("nodes")))
        pipe = self._r.pipeline(transaction=False)
        for n in nodes:
            pipe.hlen(self._k("n", n))
            pipe.hlen(self._k("a", n))
        got = [int(x) for x in pipe.execute()]
        held = {self._unqualified(n): got[2 * i] + got[2 * i + 1] for i, n in enumerate(nodes)}
        return Stats(
            tasks={st: int(cnt.get(str(int(st)).encode(), 0)) for st in TaskState},
            completions={v: int(verd.get(v.value.encode(), 0)) for v in Verdict},
            purged=int(self._r.get(self._k("purged")) or 0),
            held=held,
        )

    def commit(self) -> None:
        """Nothing to do: Redis applied each script whole (see the module doc)."""

    def close(self) -> None:
        """Leave the store: the liveness key goes at once, so the leases granted
        here are recovered (without a loss) by the next coordinator that looks:
        another live one within a keepalive, or this store's next open."""
        if self._closed:
            return
        self._closed = True
        import redis

        try:
            self._r.delete(self._k("co", self.owner))
        except redis.RedisError:  # unreachable: the key expires on its own
            pass
        self._r.close()
