"""Admission to idle pools: windows, drain, order, fairness, capacity, backfill, fit."""

from __future__ import annotations

import zoneinfo
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tidetune.api import IdlePool, Reason
from tidetune_operator.admission import (
    ADMIT_NOW,
    Admission,
    Candidate,
    next_decision_time,
    plan,
    pool_status,
    queue_order,
)

SHANGHAI = zoneinfo.ZoneInfo("Asia/Shanghai")


def sh(month: int, day: int, hour: int, minute: int = 0) -> datetime:
    """An instant given as Shanghai wall time in 2026 (2026-11-23 is a Monday)."""
    return datetime(2026, month, day, hour, minute, tzinfo=SHANGHAI).astimezone(UTC)


def make_pool(
    gpus: int = 64,
    windows: list[dict[str, Any]] | None = None,
    drain: str = "10m",
    tz: str = "Asia/Shanghai",
) -> IdlePool:
    return IdlePool.model_validate(
        {
            "metadata": {"name": "night-a100"},
            "spec": {
                "gpus": gpus,
                "timezone": tz,
                "drainBefore": drain,
                "windows": windows
                or [
                    {"days": ["Mon", "Tue", "Wed", "Thu", "Fri"], "start": "22:00", "end": "08:00"},
                    {"days": ["Sat", "Sun"], "start": "00:00", "end": "24:00"},
                ],
            },
        }
    )


POOL = make_pool()
T0 = datetime(2026, 11, 1, tzinfo=UTC)
OPEN_NIGHT = sh(11, 23, 23)  # Mon 23:00: open until Tue 08:00, drains from 07:50


def cand(
    ns: str,
    name: str,
    gpus: int = 8,
    *,
    age: int = 0,
    priority: int = 0,
    running: bool = False,
    resuming: bool = False,
    interval: float | None = None,
    remaining: float | None = None,
) -> Candidate:
    """A candidate created ``age`` minutes after T0 (lower is older)."""
    return Candidate(
        namespace=ns,
        name=name,
        gpus=gpus,
        priority=priority,
        created=T0 + timedelta(minutes=age),
        running=running,
        resuming=resuming,
        checkpoint_interval_seconds=interval,
        remaining_seconds=remaining,
    )


def admitted(verdicts: dict[tuple[str, str], Admission]) -> set[str]:
    return {name for (_, name), v in verdicts.items() if v.admitted}


def names(cands: Sequence[Candidate]) -> list[str]:
    return [c.name for c in cands]


# --- closed and draining -------------------------------------------------------------------


def test_closed_pool_admits_nobody_and_says_when_it_opens() -> None:
    now = sh(11, 23, 12)  # Monday noon
    v = plan(POOL, [cand("a", "j1"), cand("a", "j2", resuming=True)], now)
    for verdict in v.values():
        assert verdict == Admission(
            False,
            Reason.WAITING_FOR_POOL_WINDOW,
            "night-a100 opens at 22:00 +08:00 (Mon 2026-11-23)",
        )


def test_closed_pool_evicts_running_jobs() -> None:
    v = plan(POOL, [cand("a", "r", running=True)], sh(11, 23, 12))
    assert v[("a", "r")].evict is Reason.WINDOW_CLOSING
    assert not v[("a", "r")].admitted
    assert "night-a100 is closed; night-a100 opens at 22:00 +08:00" in v[("a", "r")].message


def test_drain_before_close_evicts_running_and_holds_waiting() -> None:
    jobs = [cand("a", "r", running=True), cand("b", "w")]
    before = plan(POOL, jobs, sh(11, 24, 7, 49))
    assert before[("a", "r")].admitted and before[("a", "r")].evict is None
    assert "until it drains at 07:50 +08:00 (Tue 2026-11-24)" in before[("a", "r")].message
    for now in (sh(11, 24, 7, 50), sh(11, 24, 7, 59)):
        v = plan(POOL, jobs, now)
        run, wait = v[("a", "r")], v[("b", "w")]
        assert (run.admitted, run.reason, run.evict) == (
            False,
            Reason.WINDOW_CLOSING,
            Reason.WINDOW_CLOSING,
        )
        assert run.message == (
            "night-a100 closes at 08:00 +08:00 (Tue 2026-11-24) (drainBefore 10m); "
            "night-a100 opens again at 22:00 +08:00 (Tue 2026-11-24)"
        )
        assert (wait.admitted, wait.reason, wait.evict) == (
            False,
            Reason.WAITING_FOR_POOL_WINDOW,
            None,
        )
        assert "is draining" in wait.message and "opens again at 22:00" in wait.message


def test_drain_uses_the_merged_close_not_each_window() -> None:
    # Fri 22:00–08:00 merges with the weekend: no drain at Sat 07:50
    v = plan(POOL, [cand("a", "r", running=True)], sh(11, 28, 7, 55))
    assert v[("a", "r")].admitted
    assert "until it drains at 23:50 +08:00 (Sun 2026-11-29)" in v[("a", "r")].message


# --- order and fairness -------------------------------------------------------------------


def test_round_robin_across_namespaces_at_equal_priority() -> None:
    # created A1 < A2 < B1 < A3 < B2
    jobs = [
        cand("a", "A1", age=1),
        cand("a", "A2", age=2),
        cand("b", "B1", age=3),
        cand("a", "A3", age=4),
        cand("b", "B2", age=5),
    ]
    assert names(queue_order(jobs)) == ["A1", "B1", "A2", "B2", "A3"]
    v = plan(make_pool(gpus=24), jobs, OPEN_NIGHT)
    assert admitted(v) == {"A1", "B1", "A2"}
    assert v[("b", "B2")].reason is Reason.WAITING_FOR_CAPACITY
    assert "needs 8 GPUs, 0 of 24 free" in v[("b", "B2")].message
    assert "first in line" in v[("b", "B2")].message
    assert "number 2 in its queue, behind b/B2" in v[("a", "A3")].message


def test_running_jobs_count_towards_a_namespace_turn() -> None:
    jobs = [
        cand("a", "A0", age=0, running=True),
        cand("a", "A1", age=1),
        cand("a", "A2", age=2),
        cand("b", "B1", age=9),
    ]
    assert names(queue_order(jobs)) == ["B1", "A1", "A2"]
    v = plan(make_pool(gpus=16), jobs, OPEN_NIGHT)
    assert admitted(v) == {"A0", "B1"}


def test_resuming_first_then_priority_then_age() -> None:
    jobs = [
        cand("a", "old-low", age=0, priority=0),
        cand("a", "new-high", age=5, priority=10),
        cand("b", "mid-high", age=3, priority=10),
        cand("c", "resume-low", age=9, priority=-5, resuming=True),
        cand("c", "resume-high", age=10, priority=1, resuming=True),
    ]
    assert names(queue_order(jobs)) == [
        "resume-high",
        "resume-low",
        "mid-high",
        "new-high",
        "old-low",
    ]
    v = plan(make_pool(gpus=24), jobs, OPEN_NIGHT)
    assert admitted(v) == {"resume-high", "resume-low", "mid-high"}
    assert "resumes from its checkpoint" in v[("c", "resume-low")].message


def test_ties_are_deterministic() -> None:
    jobs = [cand("b", "x"), cand("a", "y"), cand("a", "x")]
    assert [c.key for c in queue_order(jobs)] == [("a", "x"), ("b", "x"), ("a", "y")]
    assert queue_order(jobs) == queue_order(list(reversed(jobs)))


# --- capacity and backfill ----------------------------------------------------------------


def test_running_jobs_keep_their_place_even_over_capacity() -> None:
    jobs = [
        cand("a", "r1", 48, running=True),
        cand("b", "r2", 32, running=True),
        cand("c", "w", 8, age=-100, priority=100),
    ]
    v = plan(POOL, jobs, OPEN_NIGHT)
    assert admitted(v) == {"r1", "r2"}
    assert v[("c", "w")].reason is Reason.WAITING_FOR_CAPACITY


def test_strict_order_without_estimates() -> None:
    jobs = [
        cand("a", "r", 48, running=True),
        cand("b", "big", 32, age=1),
        cand("c", "small", 8, age=2),
    ]
    v = plan(POOL, jobs, OPEN_NIGHT)
    assert admitted(v) == {"r"}
    assert v[("b", "big")].message == (
        "needs 32 GPUs, 16 of 64 free in pool night-a100; first in line"
    )
    assert v[("c", "small")].reason is Reason.WAITING_FOR_CAPACITY
    assert "behind b/big" in v[("c", "small")].message


def test_backfill_only_when_it_cannot_delay_the_head() -> None:
    hour = 3600.0
    running = [
        cand("r", "ends-soon", 24, running=True, remaining=1 * hour),
        cand("r", "ends-late", 24, running=True, remaining=10 * hour),
    ]
    # free 16; head needs 32: it can start in 1 h (shadow), with 8 GPUs spare then
    head = cand("h", "head", 32, age=1)
    long16 = cand("x", "long16", 16, age=2, remaining=5 * hour)
    short16 = cand("y", "short16", 16, age=3, remaining=0.5 * hour)
    long8 = cand("z", "long8", 8, age=4, remaining=5 * hour)
    v = plan(POOL, [*running, head, long16, short16, long8], OPEN_NIGHT)
    assert not v[("x", "long16")].admitted  # would hold 16 past the shadow; only 8 spare
    assert v[("y", "short16")].admitted  # ends before the head can start
    assert "it ends before h/head, first in line, can start" in v[("y", "short16")].message
    assert not v[("z", "long8")].admitted  # no GPUs left free after short16
    assert "reserved for it from about 00:00 +08:00 (Tue 2026-11-24)" in v[("h", "head")].message

    v = plan(POOL, [*running, head, long16, long8], OPEN_NIGHT)
    assert admitted(v) == {"ends-soon", "ends-late", "long8"}  # fits in the spare 8
    assert "uses GPUs h/head, first in line, does not need" in v[("z", "long8")].message

    # a backfill without an estimate may only use spare GPUs
    unknown16 = cand("u", "unknown16", 16, age=2)
    v = plan(POOL, [*running, head, unknown16], OPEN_NIGHT)
    assert not v[("u", "unknown16")].admitted


def test_backfill_when_the_head_cannot_start_before_the_drain() -> None:
    hour = 3600.0
    now = sh(11, 24, 4)  # drains at 07:50, 3 h 50 m from now
    running = [cand("r", "r", 48, running=True, remaining=6 * hour)]
    head = cand("h", "head", 32, age=1)  # cannot start before the drain
    fits_by_drain = cand("x", "short", 16, age=2, remaining=3 * hour)
    past_drain = cand("y", "long", 16, age=3, remaining=5 * hour)
    v = plan(POOL, [*running, head, past_drain, fits_by_drain], now)
    assert v[("x", "short")].admitted
    assert not v[("y", "long")].admitted  # it would come back as resuming, ahead of head
    assert "reserved" not in v[("h", "head")].message


# --- window left, too small, pools that never close ---------------------------------------


def test_not_enough_window_left_skips_without_blocking() -> None:
    now = sh(11, 24, 7)  # 50 m before the drain at 07:50
    jobs = [
        cand("a", "slow", 8, age=1, interval=3600),
        cand("b", "quick", 8, age=2, interval=1800),
        cand("c", "unknown", 8, age=3),
    ]
    v = plan(POOL, jobs, now)
    assert admitted(v) == {"quick", "unknown"}
    slow = v[("a", "slow")]
    assert slow.reason is Reason.NOT_ENOUGH_WINDOW_LEFT
    assert slow.message == (
        "night-a100 closes at 08:00 +08:00 (Tue 2026-11-24): 50m is left before it drains, "
        "less than one checkpoint interval of this job (~1h); it will be considered when "
        "the pool opens at 22:00 +08:00 (Tue 2026-11-24)"
    )


def test_checkpoint_interval_longer_than_any_window_says_what_to_change() -> None:
    v = plan(POOL, [cand("a", "huge", interval=20 * 3600)], sh(11, 24, 1))
    msg = v[("a", "huge")].message
    assert v[("a", "huge")].reason is Reason.NOT_ENOUGH_WINDOW_LEFT
    assert "that window has only 9h50m before its drain" in msg
    assert "spec.checkpointing.everySteps" in msg


def test_job_larger_than_the_pool_is_never_admitted() -> None:
    jobs = [
        cand("a", "huge", 128, age=0),
        cand("b", "ok", 8, age=1),
        cand("c", "r", 96, running=True),
    ]
    v = plan(POOL, jobs, OPEN_NIGHT)
    assert v[("a", "huge")] == Admission(
        False,
        Reason.POOL_TOO_SMALL,
        "needs 128 GPUs but pool night-a100 has 64; use fewer nodes or GPUs per node, "
        "or another pool",
    )
    assert v[("c", "r")].evict is Reason.POOL_TOO_SMALL
    assert v[("b", "ok")].admitted  # the giant does not block the queue
    closed = plan(POOL, jobs, sh(11, 23, 12))
    assert closed[("a", "huge")].reason is Reason.POOL_TOO_SMALL


def test_always_open_pool() -> None:
    every = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
    pool = make_pool(windows=[{"days": every, "start": "00:00", "end": "24:00"}], tz="UTC")
    jobs = [cand("a", "r", running=True), cand("b", "w", interval=10 * 86400)]
    v = plan(pool, jobs, OPEN_NIGHT)
    assert admitted(v) == {"r", "w"}
    assert "(open around the clock)" in v[("a", "r")].message
    status = pool_status(pool, jobs, OPEN_NIGHT)
    assert status["open"] is True and status["nextTransition"] is None
    assert next_decision_time(pool, OPEN_NIGHT) is None


def test_every_candidate_gets_a_verdict_and_plan_is_pure() -> None:
    jobs = [cand(ns, f"j{i}", 8 * (1 + i % 4), age=i) for i in range(20) for ns in "abc"]
    v1 = plan(POOL, jobs, OPEN_NIGHT)
    v2 = plan(POOL, list(reversed(jobs)), OPEN_NIGHT)
    assert v1 == v2 and set(v1) == {c.key for c in jobs}
    used = sum(c.gpus for c in jobs if v1[c.key].admitted)
    assert used <= 64
    assert ADMIT_NOW.admitted and ADMIT_NOW.evict is None


# --- status, decision times, errors -------------------------------------------------------


def test_pool_status() -> None:
    jobs = [
        cand("a", "r1", 16, running=True),
        cand("b", "r2", 24, running=True),
        cand("c", "w", 8),
        cand("c", "giant", 512),
    ]
    assert pool_status(POOL, jobs, OPEN_NIGHT) == {
        "open": True,
        "nextTransition": "2026-11-24T00:00:00Z",  # 08:00 +08:00
        "gpusInUse": 40,
        "runningJobs": 2,
        "queuedJobs": 1,
    }
    closed = pool_status(POOL, [], sh(11, 24, 12))
    assert closed == {
        "open": False,
        "nextTransition": "2026-11-24T14:00:00Z",
        "gpusInUse": 0,
        "runningJobs": 0,
        "queuedJobs": 0,
    }


def test_next_decision_time() -> None:
    assert next_decision_time(POOL, OPEN_NIGHT) == sh(11, 24, 7, 50)  # the drain starts
    assert next_decision_time(POOL, sh(11, 24, 7, 55)) == sh(11, 24, 8)  # the close
    assert next_decision_time(POOL, sh(11, 24, 12)) == sh(11, 24, 22)  # the opening


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="no time zone"):
        plan(POOL, [], datetime(2026, 11, 23, 12))
    with pytest.raises(ValueError, match="a/x is listed twice"):
        plan(POOL, [cand("a", "x"), cand("a", "x")], OPEN_NIGHT)
    with pytest.raises(ValueError, match="gpus must be at least 1"):
        plan(POOL, [cand("a", "x", 0)], OPEN_NIGHT)
