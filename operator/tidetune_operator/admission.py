"""Admission to idle pools: who may run in a pool now, who waits, who must drain.

INTERFACE (the controller depends on it; keep it stable):

- :class:`Admission` — the verdict for one job (see fields).
- :class:`Candidate` — what admission needs to know about one job that names a pool.
- :func:`plan` — verdicts for every candidate of one pool at one instant. Pure.
- :func:`pool_status` — the pool's status fields at one instant. Pure.
- :func:`next_decision_time` — when verdicts next change by the clock alone. Pure.
- :func:`queue_order` — the order waiting jobs are considered in. Pure.

The rules :func:`plan` applies, in this order:

1. **Too small.** A job needing more GPUs than the pool has at all is never admitted
   (``PoolTooSmall``; the controller fails it at validation; a running one is evicted).
2. **Closed or draining.** The pool *drains* from ``closes_at - drainBefore`` until it
   closes; closed and draining pools admit nobody new (``WaitingForPoolWindow``, the
   message says when the pool opens, in its own time zone), and running jobs get
   ``evict=WindowClosing`` so the controller checkpoints and suspends them before the
   window closes.
3. **Open.** Running jobs keep their place (``admitted=True``), even when the pool was
   shrunk below what they hold; nothing is preempted for another job. Waiting jobs are
   then taken in :func:`queue_order`:

   a. jobs resuming from a checkpoint (suspended by a closing window or a reclaimed node)
      before all others; then b. higher ``priority`` first; then
   c. **round-robin across namespaces** within one (resuming, priority) class: each job's
      *turn* is the number of its namespace's jobs already running in the pool plus its
      place (0, 1, 2, …) among its namespace's waiting jobs in the class, oldest first;
      the class is ordered by (turn, creation time, namespace, name). So A1 A2 A3 B1 B2,
      created in the order A1 < A2 < B1 < A3 < B2, are taken as A1 B1 A2 B2 A3 — and a
      namespace that already runs two jobs waits for the others to have had two turns.

   A job is skipped, not blocking anyone, when less of the window is left before the
   drain than one of its checkpoint intervals (``NotEnoughWindowLeft``: it would be
   suspended before saving any progress); it is considered again when the pool next
   opens.

   **Capacity and backfill (EASY backfilling).** Jobs are admitted in order while their
   GPUs fit in what is free. The first job that does not fit is the *head*: it waits
   (``WaitingForCapacity``) and holds a reservation at the *shadow time*, the earliest
   instant by which, going by running jobs' ``remaining_seconds``, enough GPUs free up
   for it. A later job, of any priority, may start past the head only if it fits in the
   free GPUs now **and** cannot delay the head: either it is estimated to end by the
   shadow time (and by the pool's drain, so that it does not come back as a resuming job
   ahead of the head in the next window), or it only uses *spare* GPUs, ones the head
   will not need at the shadow time. A running job with no estimate is read cautiously
   both ways: it may end at once (so the shadow time may be now) and it may never end
   (so its GPUs are never spare). A job with no ``remaining_seconds`` can only backfill
   into spare GPUs; with no estimates at all the order is strict. When the head cannot
   start before the drain anyway, nothing is spare: only jobs ending by the drain pass.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from tidetune.api import IdlePool, Reason
from tidetune.api.types import format_duration, parse_duration
from tidetune.windows import LOOKAHEAD_WEEKS, WindowState, format_local, state_at


@dataclass(frozen=True)
class Admission:
    """What admission says about one job now."""

    admitted: bool
    reason: Reason = Reason.ADMITTED
    message: str = ""
    #: set while the job must not run (its pool's window is closing or closed):
    #: the controller suspends it (the trainer checkpoints) with this reason
    evict: Reason | None = None


ADMIT_NOW = Admission(
    admitted=True, reason=Reason.ADMITTED, message="no pool: runs on any capacity"
)


@dataclass(frozen=True)
class Candidate:
    """One job that names a pool."""

    namespace: str
    name: str
    gpus: int  # nodes × gpusPerNode
    priority: int
    created: datetime
    #: holding capacity now: launched and not suspended (Running, Exporting, starting)
    running: bool
    #: was suspended by a closing window (or preempted) and has a checkpoint: it resumes
    #: ahead of newer jobs when the pool opens again
    resuming: bool = False
    #: estimated wall-clock seconds of one checkpoint interval, if known (a job is not
    #: admitted when less than this remains in the window)
    checkpoint_interval_seconds: float | None = None
    #: estimated wall-clock seconds until the job finishes (from now, if it ran
    #: uninterrupted), if known; used for backfilling (see the module doc)
    remaining_seconds: float | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name


Verdicts = dict[tuple[str, str], Admission]


def _utc(instant: datetime, what: str) -> datetime:
    if instant.tzinfo is None or instant.utcoffset() is None:
        raise ValueError(f"{what} {instant.isoformat()} has no time zone; pass an aware datetime")
    return instant.astimezone(UTC)


def _created(c: Candidate) -> datetime:
    # creation times from the API are aware; a naive one is read as UTC
    return c.created if c.created.tzinfo is not None else c.created.replace(tzinfo=UTC)


def _check_candidates(candidates: Sequence[Candidate]) -> None:
    seen: set[tuple[str, str]] = set()
    for c in candidates:
        if c.key in seen:
            raise ValueError(f"candidate {c.ref} is listed twice; list each job once")
        seen.add(c.key)
        if c.gpus < 1:
            raise ValueError(f"candidate {c.ref}: gpus must be at least 1, got {c.gpus}")


def queue_order(candidates: Sequence[Candidate]) -> list[Candidate]:
    """Waiting (not running) candidates in the order admission considers them.

    Resuming first, then higher priority, then round-robin across namespaces by turn
    (running jobs of the namespace + place among its waiting jobs in the class), then
    creation time, namespace and name (see the module doc).
    """
    running_per_ns: dict[str, int] = defaultdict(int)
    for c in candidates:
        if c.running:
            running_per_ns[c.namespace] += 1
    classes: dict[tuple[bool, int], list[Candidate]] = defaultdict(list)
    for c in candidates:
        if not c.running:
            classes[(not c.resuming, -c.priority)].append(c)
    ordered: list[Candidate] = []
    for cls in sorted(classes):
        per_ns: dict[str, list[Candidate]] = defaultdict(list)
        for c in sorted(classes[cls], key=lambda c: (_created(c), c.name)):
            per_ns[c.namespace].append(c)
        keyed = [
            (running_per_ns[ns] + place, _created(c), ns, c.name, c)
            for ns, jobs in per_ns.items()
            for place, c in enumerate(jobs)
        ]
        keyed.sort(key=lambda k: k[:4])
        ordered.extend(k[4] for k in keyed)
    return ordered


@dataclass(frozen=True)
class _Window:
    """The pool's window as admission sees it at one instant."""

    name: str
    timezone: str
    state: WindowState
    drain: timedelta
    #: when the drain starts (None: the pool never closes)
    drain_at: datetime | None
    draining: bool

    def when(self, instant: datetime) -> str:
        return format_local(instant, self.timezone)

    def opens_text(self, subject: str | None = None, verb: str = "opens at") -> str:
        """``night-a100 opens at 22:00 +08:00 (Mon 2026-11-23)``, or why there is no time."""
        who = subject or self.name
        if self.state.opens_at is None:
            return f"{who}: no window opens in the next {7 * LOOKAHEAD_WEEKS} days"
        return f"{who} {verb} {self.when(self.state.opens_at)}"


def _window(pool: IdlePool, now: datetime) -> _Window:
    state = state_at(pool.spec, now)
    drain = timedelta(seconds=parse_duration(pool.spec.drain_before))
    drain_at = state.closes_at - drain if state.closes_at is not None else None
    draining = not state.open or (drain_at is not None and now >= drain_at)
    return _Window(pool.metadata.name, pool.spec.timezone, state, drain, drain_at, draining)


def _closing_message(w: _Window) -> str:
    """Why running jobs are evicted now (the pool is closed or draining)."""
    if not w.state.open:
        return f"{w.name} is closed; {w.opens_text()}"
    assert w.state.closes_at is not None  # draining implies a close
    return (
        f"{w.name} closes at {w.when(w.state.closes_at)} (drainBefore "
        f"{format_duration(w.drain.total_seconds())}); {w.opens_text(verb='opens again at')}"
    )


def _waiting_message(w: _Window) -> str:
    """Why waiting jobs are not admitted now (the pool is closed or draining)."""
    if not w.state.open:
        return w.opens_text()
    assert w.state.closes_at is not None
    return (
        f"{w.name} is draining: it closes at {w.when(w.state.closes_at)} and admits no new "
        f"jobs in its last {format_duration(w.drain.total_seconds())}; "
        f"{w.opens_text(verb='opens again at')}"
    )


def _too_little_window(
    pool: IdlePool, w: _Window, c: Candidate, left: float, interval: float
) -> Admission:
    assert w.state.closes_at is not None
    msg = (
        f"{w.name} closes at {w.when(w.state.closes_at)}: {format_duration(max(left, 0))} "
        f"is left before it drains, less than one checkpoint interval of this job "
        f"(~{format_duration(interval)}); it will be considered when "
        f"{w.opens_text(subject='the pool')}"
    )
    opens = w.state.opens_at
    if opens is not None:
        following = state_at(pool.spec, opens)
        if following.closes_at is not None:
            usable = (following.closes_at - w.drain - opens).total_seconds()
            if usable < interval:
                msg += (
                    f" — but that window has only {format_duration(max(usable, 0))} before "
                    "its drain, shorter than one checkpoint interval: checkpoint more often "
                    "(spec.checkpointing.everySteps)"
                )
    return Admission(False, Reason.NOT_ENOUGH_WINDOW_LEFT, msg)


def _reservation(
    need: int, free: int, running: Sequence[tuple[float | None, int]], now: datetime
) -> tuple[datetime, int]:
    """(shadow time, spare GPUs then) for a job needing ``need`` GPUs.

    ``running`` holds (estimated seconds left or None, GPUs) of each job holding GPUs.
    Unknown estimates are read the cautious way twice over: such a job may end at once
    (so the shadow time may be now, and nothing ends "before" it), and it may also run
    for ever (so its GPUs never count as spare).
    """
    if free >= need:
        return now, free - need
    avail = free
    known = free
    ordered = sorted(running, key=lambda r: 0.0 if r[0] is None else max(r[0], 0.0))
    for left, gpus in ordered:
        avail += gpus
        if left is not None:
            known += gpus
        if avail >= need:
            shadow = now + timedelta(seconds=0.0 if left is None else max(left, 0.0))
            return shadow, max(0, known - need)
    # the pool was shrunk below what runs: the head starts once everything has ended
    last = max((0.0 if left is None else max(left, 0.0) for left, _ in running), default=0.0)
    return now + timedelta(seconds=last), 0


def plan(pool: IdlePool, candidates: Sequence[Candidate], now: datetime) -> Verdicts:
    """Verdicts for every candidate of ``pool`` at ``now`` (see the module doc for the rules).

    Every candidate gets a verdict, keyed by ``(namespace, name)``. Messages are for
    humans: they name the pool and give times in the pool's time zone.

    Raises:
        ValueError: ``now`` is naive, a candidate is listed twice or needs < 1 GPU.
    """
    now = _utc(now, "now")
    _check_candidates(candidates)
    capacity = pool.spec.gpus
    w = _window(pool, now)
    verdicts: Verdicts = {}

    fitting: list[Candidate] = []
    for c in candidates:
        if c.gpus > capacity:
            verdicts[c.key] = Admission(
                False,
                Reason.POOL_TOO_SMALL,
                f"needs {c.gpus} GPUs but pool {w.name} has {capacity}; use fewer nodes or "
                "GPUs per node, or another pool",
                evict=Reason.POOL_TOO_SMALL if c.running else None,
            )
        else:
            fitting.append(c)

    if w.draining:
        closing = _closing_message(w)
        waiting = _waiting_message(w)
        for c in fitting:
            if c.running:
                verdicts[c.key] = Admission(
                    False, Reason.WINDOW_CLOSING, closing, evict=Reason.WINDOW_CLOSING
                )
            else:
                verdicts[c.key] = Admission(False, Reason.WAITING_FOR_POOL_WINDOW, waiting)
        return verdicts

    until = (
        f"until it drains at {w.when(w.drain_at)}"
        if w.drain_at is not None
        else "(open around the clock)"
    )
    used = 0
    holding: list[tuple[float | None, int]] = []
    for c in fitting:
        if c.running:
            used += c.gpus
            holding.append((c.remaining_seconds, c.gpus))
            verdicts[c.key] = Admission(True, Reason.ADMITTED, f"runs in pool {w.name} {until}")
    free = max(0, capacity - used)
    left = (w.drain_at - now).total_seconds() if w.drain_at is not None else float("inf")

    head: Candidate | None = None
    shadow = now
    spare = 0
    position = 0  # place among the jobs that wait for capacity (the head is 1)
    for c in queue_order(fitting):
        interval = c.checkpoint_interval_seconds
        if interval is not None and left < interval:
            verdicts[c.key] = _too_little_window(pool, w, c, left, interval)
            continue
        start_text = "resumes from its checkpoint" if c.resuming else "starts"
        if head is None:
            if c.gpus <= free:
                free -= c.gpus
                holding.append((c.remaining_seconds, c.gpus))
                verdicts[c.key] = Admission(
                    True,
                    Reason.ADMITTED,
                    f"admitted to pool {w.name} ({c.gpus} GPUs, {free} of {capacity} left "
                    f"free); {start_text} and runs {until}",
                )
                continue
            head = c
            position = 1
            shadow, spare = _reservation(c.gpus, free, holding, now)
            if w.drain_at is not None and shadow >= w.drain_at:
                spare = 0  # it cannot start in this window: only jobs ending by the drain
            eta = (
                f"; GPUs are reserved for it from about {w.when(shadow)}"
                if shadow > now and (w.drain_at is None or shadow < w.drain_at)
                else ""
            )
            verdicts[c.key] = Admission(
                False,
                Reason.WAITING_FOR_CAPACITY,
                f"needs {c.gpus} GPUs, {free} of {capacity} free in pool {w.name}; "
                f"first in line{eta}",
            )
            continue
        ends_by = None
        if c.remaining_seconds is not None:
            ends_by = now + timedelta(seconds=max(c.remaining_seconds, 0.0))
        deadline = shadow if w.drain_at is None else min(shadow, w.drain_at)
        ends_in_time = ends_by is not None and ends_by <= deadline
        if c.gpus <= free and (ends_in_time or c.gpus <= spare):
            free -= c.gpus
            if not ends_in_time:
                spare -= c.gpus
            holding.append((c.remaining_seconds, c.gpus))
            why = (
                f"it ends before {head.ref}, first in line, can start"
                if ends_in_time
                else f"it uses GPUs {head.ref}, first in line, does not need"
            )
            verdicts[c.key] = Admission(
                True,
                Reason.ADMITTED,
                f"admitted to pool {w.name} past the queue ({c.gpus} GPUs, {free} of "
                f"{capacity} left free): {why}; {start_text} and runs {until}",
            )
            continue
        position += 1
        verdicts[c.key] = Admission(
            False,
            Reason.WAITING_FOR_CAPACITY,
            f"needs {c.gpus} GPUs, {free} of {capacity} free in pool {w.name}; "
            f"number {position} in its queue, behind {head.ref}",
        )
    return verdicts


def pool_status(pool: IdlePool, candidates: Sequence[Candidate], now: datetime) -> dict[str, Any]:
    """The IdlePool status fields at ``now`` (camelCase, as stored).

    ``open``, ``nextTransition`` (RFC 3339 UTC, ``None`` for a pool that never closes:
    a merge patch then removes it), ``gpusInUse`` and ``runningJobs`` (candidates that
    hold GPUs), ``queuedJobs`` (candidates waiting that could ever fit).

    Raises:
        ValueError: ``now`` is naive.
    """
    now = _utc(now, "now")
    state = state_at(pool.spec, now)
    running = [c for c in candidates if c.running]
    queued = [c for c in candidates if not c.running and c.gpus <= pool.spec.gpus]
    nxt = state.next_transition
    return {
        "open": state.open,
        "nextTransition": nxt.strftime("%Y-%m-%dT%H:%M:%SZ") if nxt is not None else None,
        "gpusInUse": sum(c.gpus for c in running),
        "runningJobs": len(running),
        "queuedJobs": len(queued),
    }


def next_decision_time(pool: IdlePool, now: datetime) -> datetime | None:
    """The next instant after ``now`` at which :func:`plan` may change its verdicts by the
    clock alone: the drain start, the close, or the next opening (None: never).

    A controller sleeping until then (or until a job changes) misses no transition.

    Raises:
        ValueError: ``now`` is naive.
    """
    now = _utc(now, "now")
    w = _window(pool, now)
    if w.state.open and not w.draining and w.drain_at is not None:
        return w.drain_at
    return w.state.next_transition
