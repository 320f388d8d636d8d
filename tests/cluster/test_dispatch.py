"""The dispatch policy's pure functions: fencing, isolation, caps, backoff, retention."""

from __future__ import annotations

import dataclasses
import math
import random

import pytest

from pyqueue.cluster import dispatch
from pyqueue.cluster.dispatch import Policy
from pyqueue.cluster.states import TERMINAL, TaskState, Verdict

ENDED = sorted(TERMINAL)


class Extreme(random.Random):
    """A generator whose draws are always one end of the range asked for."""

    def __init__(self, high: bool) -> None:
        super().__init__(0)
        self.high = high
        self.calls: list[tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.calls.append((a, b))
        return b if self.high else a


# -- fence -------------------------------------------------------------------------------


@pytest.mark.parametrize("st", ENDED, ids=lambda s: s.name)
@pytest.mark.parametrize("token", [2, 3, 4])
def test_fence_calls_any_completion_of_an_ended_task_a_duplicate(st: TaskState, token: int) -> None:
    assert dispatch.fence(st, 3, token) is Verdict.DUPLICATE


@pytest.mark.parametrize(
    ("st", "attempts", "token", "verdict"),
    [
        (TaskState.LEASED, 3, 3, Verdict.ACCEPTED),
        (TaskState.LEASED, 3, 2, Verdict.STALE),  # a newer lease superseded it
        (TaskState.LEASED, 3, 4, Verdict.STALE),  # never issued
        (TaskState.PENDING, 3, 3, Verdict.ACCEPTED),  # node lost, nobody leased it again
        (TaskState.PENDING, 3, 2, Verdict.STALE),
        (TaskState.PENDING, 0, 0, Verdict.ACCEPTED),
        (TaskState.SCHEDULED, 3, 3, Verdict.DUPLICATE),  # its twin rescheduled it already
        (TaskState.SCHEDULED, 3, 2, Verdict.STALE),
        (TaskState.SCHEDULED, 3, 4, Verdict.STALE),
    ],
)
def test_fence_table(st: TaskState, attempts: int, token: int, verdict: Verdict) -> None:
    assert dispatch.fence(st, attempts, token) is verdict


def test_fence_covers_every_state() -> None:
    for st in TaskState:
        assert isinstance(dispatch.fence(st, 1, 1), Verdict)


# -- poison isolation, caps, dead letters ------------------------------------------------------


@pytest.mark.parametrize(
    ("suspect", "held", "allowed"),
    [(False, 0, True), (False, 1, True), (False, 5, True), (True, 0, True), (True, 1, False)],
)
def test_may_lease(suspect: bool, held: int, allowed: bool) -> None:
    assert dispatch.may_lease(suspect, held) is allowed


def test_over_cap_counts_attempts_since_the_last_requeue() -> None:
    policy = Policy(max_attempts=3)
    assert not dispatch.over_cap(policy, 0, 0)
    assert not dispatch.over_cap(policy, 2, 0)
    assert dispatch.over_cap(policy, 3, 0)
    assert dispatch.over_cap(policy, 4, 0)
    assert not dispatch.over_cap(policy, 5, 3)  # requeued at 3: two leases since
    assert dispatch.over_cap(policy, 6, 3)
    assert not dispatch.over_cap(Policy(), 19, 0) and dispatch.over_cap(Policy(), 20, 0)


def test_dead_after_loss() -> None:
    assert [dispatch.dead_after_loss(Policy(max_lost=2), n) for n in range(4)] == [
        False,
        False,
        True,
        True,
    ]
    assert not dispatch.dead_after_loss(Policy(), 3) and dispatch.dead_after_loss(Policy(), 4)


# -- backoff -----------------------------------------------------------------------------------


@pytest.mark.parametrize("failures", [1, 2, 3, 4])
def test_retry_delay_is_exponential_with_jitter_between_half_and_one_and_a_half(
    failures: int,
) -> None:
    policy = Policy(backoff_cap=1000.0)
    base = 2.0 * 2 ** (failures - 1)
    low = dispatch.retry_delay(policy, 4, 2.0, failures, Extreme(high=False))
    high = dispatch.retry_delay(policy, 4, 2.0, failures, Extreme(high=True))
    assert (low, high) == (0.5 * base, 1.5 * base)


def test_retry_delay_draws_the_factor_from_half_to_one_and_a_half() -> None:
    rng = Extreme(high=False)
    dispatch.retry_delay(Policy(), 1, 1.0, 1, rng)
    assert rng.calls == [(0.5, 1.5)]


def test_retry_delay_is_capped_before_the_jitter() -> None:
    policy = Policy(backoff_cap=15.0)
    assert dispatch.retry_delay(policy, 9, 10.0, 3, Extreme(high=False)) == 7.5
    assert dispatch.retry_delay(policy, 9, 10.0, 3, Extreme(high=True)) == 22.5
    assert dispatch.retry_delay(policy, 9, 10.0, 1, Extreme(high=True)) == 15.0  # 10 * 1.5
    assert dispatch.retry_delay(Policy(backoff_cap=0.0), 9, 10.0, 1, Extreme(high=True)) == 0


def test_retry_delay_with_a_seeded_generator_stays_in_bounds_and_repeats() -> None:
    policy = Policy()
    draws = [dispatch.retry_delay(policy, 5, 4.0, 2, random.Random(11)) for _ in range(2)]
    assert draws[0] == draws[1]
    rng = random.Random(3)
    many = [dispatch.retry_delay(policy, 5, 4.0, 2, rng) or -1.0 for _ in range(2000)]
    assert all(4.0 <= d < 12.0 for d in many)
    assert min(many) < 4.5 and max(many) > 11.5  # spread, not fixed


@pytest.mark.parametrize(("retries", "failures"), [(0, 1), (2, 3), (2, 10)])
def test_retry_delay_is_none_when_retries_are_used_up(retries: int, failures: int) -> None:
    assert dispatch.retry_delay(Policy(), retries, 1.0, failures, random.Random(0)) is None


def test_the_last_retry_still_has_a_delay() -> None:
    assert dispatch.retry_delay(Policy(), 2, 1.0, 2, random.Random(0)) is not None


# -- retention -----------------------------------------------------------------------------------


POLICY = Policy(result_ttl=10.0, dead_ttl=100.0)


@pytest.mark.parametrize("st", [TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED])
def test_expires_at_keeps_finished_tasks_for_their_own_ttl_or_the_policys(st: TaskState) -> None:
    assert dispatch.expires_at(POLICY, st, None, 50.0) == 60.0
    assert dispatch.expires_at(POLICY, st, 3.0, 50.0) == 53.0
    assert dispatch.expires_at(POLICY, st, 0.0, 50.0) == 50.0  # 0 is a TTL, not "unset"


def test_expires_at_keeps_dead_tasks_for_dead_ttl_whatever_their_own_ttl() -> None:
    assert dispatch.expires_at(POLICY, TaskState.DEAD, None, 50.0) == 150.0
    assert dispatch.expires_at(POLICY, TaskState.DEAD, 3.0, 50.0) == 150.0


# -- Policy ---------------------------------------------------------------------------------------


def test_policy_defaults() -> None:
    p = Policy()
    assert (p.max_lost, p.max_attempts, p.backoff_cap) == (4, 20, 300.0)
    assert (p.result_ttl, p.dead_ttl, p.max_dead) == (3600.0, 7 * 86400.0, 100_000)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_lost", 0),
        ("max_lost", -1),
        ("max_attempts", 0),
        ("backoff_cap", -0.1),
        ("backoff_cap", math.nan),
        ("result_ttl", -1.0),
        ("result_ttl", math.nan),
        ("dead_ttl", -1.0),
        ("dead_ttl", math.nan),
        ("max_dead", -1),
    ],
)
def test_policy_refuses_bad_limits(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"Policy.{field}"):
        Policy(**{field: value})  # type: ignore[arg-type]


def test_policy_accepts_the_smallest_limits() -> None:
    p = Policy(
        max_lost=1, max_attempts=1, backoff_cap=0.0, result_ttl=0.0, dead_ttl=0.0, max_dead=0
    )
    assert (p.max_lost, p.max_dead) == (1, 0)
    assert Policy(result_ttl=math.inf).result_ttl == math.inf


def test_policy_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Policy().max_lost = 9  # type: ignore[misc]


# -- queues and rate limits ----------------------------------------------------------


def test_choose_queue_strict_takes_the_heaviest_first_listed_among_equals() -> None:
    rng = random.Random(1)
    assert dispatch.choose_queue([], False, rng) is None
    assert dispatch.choose_queue([("only", 1)], True, rng) == "only"
    assert dispatch.choose_queue([("a", 1), ("b", 6), ("c", 6)], True, rng) == "b"


def test_choose_queue_weighted_random_follows_the_weights() -> None:
    rng = random.Random(3)
    picks = [dispatch.choose_queue([("a", 1), ("b", 3)], False, rng) for _ in range(4000)]
    assert abs(picks.count("b") / len(picks) - 0.75) < 0.03


def test_a_bucket_saves_a_twentieth_of_a_second_and_refills_at_its_rate() -> None:
    assert dispatch.bucket_capacity(0.5) == 1.0 and dispatch.bucket_capacity(50.0) == 2.5
    assert dispatch.refill(0.0, 10.0, 40.0, 10.025) == pytest.approx(1.0)
    assert dispatch.refill(0.0, 10.0, 40.0, 99.0) == 2.0  # capped
    assert dispatch.refill(1.5, 10.0, 40.0, 9.0) == 1.5  # a clock going back adds nothing
    assert dispatch.token_at(0.5, 10.0, 20.0) == pytest.approx(10.025)
    assert dispatch.token_at(1.0, 10.0, 20.0) == 10.0
