"""Dispatch policy: the rules every store applies the same way.

Pure functions of a task's counters, the :class:`Policy` and the clock passed
in; no I/O and no state of their own.  The in-memory and SQLite stores call
them; a store that runs its transitions elsewhere (a server-side script)
implements them and is held to them by the backend contract suite.

Poison isolation
    A node never holds more than one *suspect* task (one with ``lost > 0``)
    at a time.  Without it, the tasks prefetched next to a task that kills
    its node would die with it again and again and be dead-lettered too.
Fencing
    A lease's token is the task's ``attempts`` when it was leased; only a
    completion carrying the current token is the result (first one wins).
Backoff
    Application-error retries wait ``backoff * 2**(failures-1)``, capped, and
    spread by a jitter factor in [0.5, 1.5) drawn from a seeded generator.
Dead letters
    ``max_lost`` losses, or ``max_attempts`` leases since the last requeue.
Queues and priorities
    A node serves named queues with weights; at each lease grant one queue
    is chosen among those that can grant (not empty, not paused, a token
    left under its rate limit): weighted random, or strictly by weight.
    Within a queue, higher priority first, then submit order.
Rate limits
    A token bucket per queue, over all nodes, refilled by the clock passed in.
Retention
    A finished task is kept ``result_ttl`` after it ended (its own or the
    policy's), a dead one ``dead_ttl``, then purged.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .states import ACCEPTED, DEAD, DUPLICATE, SCHEDULED, STALE, TERMINAL, TaskState, Verdict

__all__ = [
    "Policy",
    "fence",
    "may_lease",
    "over_cap",
    "dead_after_loss",
    "retry_delay",
    "expires_at",
    "bucket_capacity",
    "refill",
    "token_at",
    "choose_queue",
]


@dataclass(frozen=True)
class Policy:
    """Retry, dead-letter and retention limits.

    Attributes
    ----------
    max_lost : int
        A task whose node died under it this many times is dead-lettered.
    max_attempts : int
        Hard cap on leases of one task (counted since its last requeue).
    backoff_cap : float
        Longest delay between application-error retries, seconds.
    result_ttl : float
        A finished task (succeeded, failed, cancelled) is kept, with its
        result, this long after it ended; then its record is purged.
    dead_ttl : float
        A dead-lettered task is kept this long (it can be requeued meanwhile).
    max_dead : int
        At most this many dead tasks are kept; the oldest are purged first.
    """

    max_lost: int = 4
    max_attempts: int = 20
    backoff_cap: float = 300.0
    result_ttl: float = 3600.0
    dead_ttl: float = 7 * 86400.0
    max_dead: int = 100_000

    def __post_init__(self) -> None:
        for name in ("max_lost", "max_attempts"):
            if getattr(self, name) < 1:
                raise ValueError(f"Policy.{name} must be at least 1")
        for name in ("backoff_cap", "result_ttl", "dead_ttl"):
            if not getattr(self, name) >= 0:  # also refuses NaN
                raise ValueError(f"Policy.{name} must be a number >= 0")
        if self.max_dead < 0:
            raise ValueError("Policy.max_dead must be >= 0")


def fence(state: TaskState, attempts: int, token: int) -> Verdict:
    """The verdict on a completion carrying ``token`` for a task in ``state``.

    ACCEPTED also covers PENDING with the current token: its node was declared
    lost but nobody leased it again, so the work it did still counts.
    """
    if state in TERMINAL:
        return DUPLICATE
    if state is SCHEDULED:
        # rescheduled for a retry by this very completion's twin: it ended once
        return DUPLICATE if attempts == token else STALE
    if attempts != token:
        return STALE
    return ACCEPTED


def may_lease(suspect: bool, suspects_held: int) -> bool:
    """Poison isolation: a suspect task only goes to a node holding no suspect."""
    return not suspect or suspects_held == 0


def over_cap(policy: Policy, attempts: int, base: int) -> bool:
    """The hard cap: this task may not be leased again."""
    return attempts - base >= policy.max_attempts


def dead_after_loss(policy: Policy, lost: int) -> bool:
    """A task lost this many times is dead-lettered."""
    return lost >= policy.max_lost


def retry_delay(
    policy: Policy, retries: int, backoff: float, failures: int, rng: random.Random
) -> float | None:
    """Seconds until the next try after the ``failures``-th failure, or None
    when no retry is left (the task ends FAILED)."""
    if failures > retries:
        return None
    delay = min(policy.backoff_cap, backoff * 2.0 ** (failures - 1))
    return delay * rng.uniform(0.5, 1.5)  # jitter spreads retry storms


def bucket_capacity(rate: float) -> float:
    """Tokens a rate-limited queue may save up: a twentieth of a second's worth,
    at least one, so that no one-second window holds more than ``1.05 * rate``
    (plus one) lease grants."""
    return max(1.0, rate / 20.0)


def refill(tokens: float, stamp: float, rate: float, now: float) -> float:
    """A token bucket's tokens at ``now``, last counted at ``stamp``."""
    return min(bucket_capacity(rate), tokens + max(0.0, now - stamp) * rate)


def token_at(tokens: float, stamp: float, rate: float) -> float:
    """When a bucket holding ``tokens`` at ``stamp`` holds one whole token."""
    return stamp + max(0.0, 1.0 - tokens) / rate


def choose_queue(eligible: list[tuple[str, int]], strict: bool, rng: random.Random) -> str | None:
    """Which of the queues that can grant a lease now gives the next one.

    ``eligible``: (name, weight) in the order the node listed them.  Weighted
    random over them (asynq's and Sidekiq's semantics), or with ``strict`` the
    highest weight first (the first listed among equals).
    """
    if not eligible:
        return None
    if len(eligible) == 1:
        return eligible[0][0]
    if strict:
        best = eligible[0]
        for item in eligible[1:]:
            if item[1] > best[1]:
                best = item
        return best[0]
    total = sum(w for _, w in eligible)
    pick = rng.random() * total
    for name, weight in eligible:
        pick -= weight
        if pick < 0:
            return name
    return eligible[-1][0]


def expires_at(policy: Policy, state: TaskState, result_ttl: float | None, now: float) -> float:
    """When the record of a task that just ended in ``state`` may be purged."""
    if state is DEAD:
        return now + policy.dead_ttl
    return now + (policy.result_ttl if result_ttl is None else result_ttl)
