"""The controller's work queue: one handler per key at a time, coalesced re-queues,
delays, and backoff after failures."""

from __future__ import annotations

import asyncio

import pytest

from tidetune_operator.kube import ApiError
from tidetune_operator.workqueue import QueueKey, WorkQueue, retry_delay

A: QueueKey = ("job", "team-a", "a")
B: QueueKey = ("job", "team-a", "b")


@pytest.mark.asyncio
async def test_a_key_is_never_handled_twice_at_once_and_changes_are_not_lost() -> None:
    running: set[QueueKey] = set()
    calls: list[QueueKey] = []
    overlap = False
    release = asyncio.Event()

    async def handle(key: QueueKey) -> float | None:
        nonlocal overlap
        overlap |= key in running
        running.add(key)
        calls.append(key)
        if len(calls) == 1:
            await release.wait()
        running.discard(key)
        return None

    queue = WorkQueue(handle, workers=4)
    queue.enqueue(A)  # before start: kept
    queue.start()
    try:
        await asyncio.sleep(0.05)
        for _ in range(5):  # A changes three times while handled: one more pass, not five
            queue.enqueue(A)
        queue.enqueue(B)
        await asyncio.sleep(0.05)
        assert calls == [A, B]
        release.set()
        await asyncio.sleep(0.05)
        assert calls == [A, B, A] and not overlap
        assert queue.reconciles["job"] == 3
    finally:
        await queue.stop()


@pytest.mark.asyncio
async def test_a_failing_key_is_retried_with_backoff_and_a_delay_requeues() -> None:
    calls: list[float] = []
    loop = asyncio.get_running_loop()

    async def handle(key: QueueKey) -> float | None:
        calls.append(loop.time())
        if len(calls) == 1:
            raise ApiError(503, "etcdserver: leader changed")
        return 0.2 if len(calls) == 2 else None

    queue = WorkQueue(handle, workers=1)
    queue.start()
    try:
        queue.enqueue(A)
        await asyncio.sleep(1.6)
        assert len(calls) == 3
        assert calls[1] - calls[0] == pytest.approx(retry_delay(1), abs=0.15)  # 1 s backoff
        assert calls[2] - calls[1] == pytest.approx(0.2, abs=0.1)  # the handler's own delay
    finally:
        await queue.stop()


@pytest.mark.asyncio
async def test_a_resync_does_not_cut_short_the_backoff_of_a_failing_key() -> None:
    """A launch the API keeps refusing (a webhook down) is retried at 1, 2, 4 … s, not at
    every resync; a real change (enqueue) is still looked at at once."""
    calls: list[float] = []
    loop = asyncio.get_running_loop()

    async def handle(key: QueueKey) -> float | None:
        calls.append(loop.time())
        raise ApiError(500, "failed calling webhook")

    queue = WorkQueue(handle, workers=1)
    queue.start()
    try:
        queue.enqueue(A)
        await asyncio.sleep(0.05)
        assert len(calls) == 1 and queue.backing_off(A)
        for _ in range(5):  # resyncs while the 1 s retry timer runs
            queue.resync(A)
            await asyncio.sleep(0.1)
        assert len(calls) == 1
        await asyncio.sleep(0.6)
        assert len(calls) == 2  # the retry, at 1 s
        queue.enqueue(A)  # a watch event: now
        await asyncio.sleep(0.05)
        assert len(calls) == 3
        queue.resync(B)  # a key that never failed is queued by a resync
        await asyncio.sleep(0.05)
        assert len(calls) == 4
    finally:
        await queue.stop()


def test_failed_reconciles_back_off_exponentially_to_a_minute() -> None:
    assert [retry_delay(n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]


def test_waiting_jobs_back_off_from_two_seconds_to_the_resync_interval() -> None:
    """The controller's looks at a job waiting for a reference (base 2 s, cap = resync)."""
    assert [retry_delay(n, 2.0, 60.0) for n in range(1, 8)] == [2, 4, 8, 16, 32, 60, 60]


@pytest.mark.asyncio
async def test_a_later_delay_does_not_push_back_an_earlier_one() -> None:
    """As client-go's AddAfter: a key timed twice is handled at the earlier time (a pool's
    wake-up at a drain is not overridden by the job's own later resync), and once."""
    calls: list[float] = []
    loop = asyncio.get_running_loop()

    async def handle(key: QueueKey) -> float | None:
        calls.append(loop.time())
        return None

    queue = WorkQueue(handle, workers=1)
    queue.start()
    try:
        t0 = loop.time()
        queue.enqueue(A, 0.1)
        queue.enqueue(A, 5.0)  # later: ignored
        queue.enqueue(B, 5.0)
        queue.enqueue(B, 0.2)  # earlier: replaces
        await asyncio.sleep(0.5)
        assert len(calls) == 2
        assert calls[0] - t0 == pytest.approx(0.1, abs=0.08)
        assert calls[1] - t0 == pytest.approx(0.2, abs=0.08)
        assert set(queue._timers) == set()
    finally:
        await queue.stop()
