"""The work queue: keys to reconcile, handled by a few workers.

As client-go's workqueue does: a key waits in the queue at most once; a key is never
handled by two workers at once (one that changes while handled is handled again right
after); a handler's answer re-queues the key after that many seconds (level-based
resync); a failing handler is retried with exponential backoff (:func:`retry_delay`).
A key asked for again later while already timed keeps the earlier time (client-go's
``AddAfter``): a pool's wake-up at a window's drain must not be pushed back by the job's
own, later, resync. A periodic resync (:meth:`WorkQueue.resync`) leaves a key that is
backing off after a failure to its retry timer: a launch the API refuses is retried at
1, 2, 4 … 60 s, not at every resync.
Keys may be queued before :meth:`WorkQueue.start` (events that arrive before login).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable

from tidetune.storage import StorageError
from tidetune_operator import metrics
from tidetune_operator.kube import ApiError

log = logging.getLogger("tidetune.operator")

#: ("job", namespace, name) or ("pool", "", name)
QueueKey = tuple[str, str, str]
#: handles one key; returns seconds until it should be looked at again, or None
Handler = Callable[[QueueKey], Awaitable[float | None]]


def retry_delay(failures: int, base: float = 1.0, cap: float = 60.0) -> float:
    """Seconds before retrying a reconcile that failed ``failures`` times in a row:
    1, 2, 4, … up to a minute (the API or storage may be briefly down); with another
    ``base`` and ``cap``, any doubling backoff."""
    return min(cap, base * 2.0 ** max(0, failures - 1))


class WorkQueue:
    def __init__(self, handle: Handler, workers: int) -> None:
        self._handle = handle
        self._worker_count = workers
        self._queue: asyncio.Queue[QueueKey] | None = None
        self._queued: set[QueueKey] = set()
        self._active: set[QueueKey] = set()
        self._dirty: set[QueueKey] = set()
        self._timers: dict[QueueKey, asyncio.TimerHandle] = {}
        self._workers: list[asyncio.Task[None]] = []
        #: consecutive failed reconciles per key, for exponential backoff
        self._failures: dict[QueueKey, int] = {}
        #: reconciles done, by kind ("job", "pool")
        self.reconciles: Counter[str] = Counter()

    def start(self) -> None:
        self._queue = asyncio.Queue()
        for key in list(self._queued):  # queued before start
            self._queue.put_nowait(key)
        self._workers = [asyncio.create_task(self._worker()) for _ in range(self._worker_count)]

    async def stop(self) -> None:
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        for handle in self._timers.values():
            handle.cancel()

    def pending(self) -> set[QueueKey]:
        """Keys waiting to be handled."""
        return set(self._queued)

    def enqueue(self, key: QueueKey, delay: float = 0.0) -> None:
        if delay > 0:
            loop = asyncio.get_event_loop()
            when = loop.time() + delay
            handle = self._timers.get(key)
            if handle is not None:
                if not handle.cancelled() and handle.when() <= when:
                    return  # an earlier look is planned already
                handle.cancel()
            self._timers[key] = loop.call_at(when, self.enqueue, key)
            return
        self._timers.pop(key, None)
        if key in self._active:
            self._dirty.add(key)
            return
        if key in self._queued:
            return
        self._queued.add(key)
        if self._queue is not None:
            self._queue.put_nowait(key)

    def resync(self, key: QueueKey) -> None:
        """A periodic look: queued now unless ``key`` waits for its retry after a failure."""
        handle = self._timers.get(key)
        if key in self._failures and handle is not None and not handle.cancelled():
            return
        self.enqueue(key)

    def backing_off(self, key: QueueKey) -> bool:
        """Whether ``key`` failed last time and waits for its retry."""
        return key in self._failures

    async def _worker(self) -> None:
        assert self._queue is not None
        while True:
            key = await self._queue.get()
            self._queued.discard(key)
            self._active.add(key)
            started = time.perf_counter()
            try:
                delay = await self._handle(key)
                self._failures.pop(key, None)
                if delay is not None:
                    self.enqueue(key, delay)
            except asyncio.CancelledError:
                raise
            except Exception as err:
                metrics.RECONCILE_ERRORS.labels(key[0]).inc()
                transient = isinstance(err, ApiError | StorageError)
                failures = self._failures[key] = self._failures.get(key, 0) + 1
                delay = retry_delay(failures)
                log.log(
                    logging.WARNING if transient else logging.ERROR,
                    "reconcile %s/%s failed (%s): %s; retry %d in %.0fs",
                    key[1],
                    key[2],
                    type(err).__name__,
                    err,
                    failures,
                    delay,
                    exc_info=not transient,
                )
                self.enqueue(key, delay)
            finally:
                metrics.RECONCILE_DURATION.labels(key[0]).observe(time.perf_counter() - started)
                self.reconciles[key[0]] += 1
                self._active.discard(key)
                if key in self._dirty:
                    self._dirty.discard(key)
                    self.enqueue(key)
