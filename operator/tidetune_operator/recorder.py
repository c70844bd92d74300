"""The metrics recorder: what the controller's reconciles mean for Prometheus.

Phase transitions and queue waits, preemptions (also those that keep the phase), GPU-hours
accrued while a job runs (not only when a stint ends, and never counted twice after an
operator restart), the per-job series, and the count of jobs by phase (refreshed at most
twice a second however many jobs change). The series themselves are defined in
:mod:`tidetune_operator.metrics`.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from tidetune.api import FineTuneJob, Phase
from tidetune.clock import Clock
from tidetune_operator import metrics
from tidetune_operator.status import parse_time

JobKey = tuple[str, str]


class MetricsRecorder:
    def __init__(
        self, clock: Clock, jobs: Callable[[], Iterable[tuple[JobKey, dict[str, Any]]]]
    ) -> None:
        """``jobs``: the cached FineTuneJobs, for the count by phase."""
        self.clock = clock
        self._jobs = jobs
        #: running seconds already counted in tidetune_gpu_hours_total, per job
        self._accrued_seconds: dict[JobKey, float] = {}
        self._phase_counts_due = False

    def forget_job(self, key: JobKey) -> None:
        """A deleted job: its series go."""
        self._accrued_seconds.pop(key, None)
        metrics.forget_job(*key)

    def publish_phase_counts_soon(self) -> None:
        """Refresh ``tidetune_jobs`` within half a second (coalesces bursts of changes)."""
        if self._phase_counts_due:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a unit test): at once
            self.publish_phase_counts()
            return
        self._phase_counts_due = True
        loop.call_later(0.5, self.publish_phase_counts)

    def publish_phase_counts(self) -> None:
        self._phase_counts_due = False
        counts: Counter[tuple[str, str]] = Counter()
        for (ns, _), body in self._jobs():
            counts[(ns, str((body.get("status") or {}).get("phase", Phase.PENDING)))] += 1
        metrics.set_phase_counts(dict(counts))

    def record_transition(self, job: FineTuneJob, old: dict[str, Any], new: dict[str, Any]) -> None:
        before, after = old.get("phase"), new.get("phase")
        ns = job.metadata.namespace or ""
        pool = job.spec.scheduling.pool or ""
        if after and after != before:
            metrics.PHASE_TRANSITIONS.labels(ns, after).inc()
            if (
                after == Phase.RUNNING
                and before in (None, Phase.PENDING, Phase.QUEUED)
                and int(new.get("attempt", 0)) <= 1
            ):
                queued = parse_time(new.get("queuedTime")) or job.metadata.creation_timestamp
                if queued is not None:
                    metrics.QUEUE_WAIT.labels(pool).observe(
                        max(0.0, (self.clock.now() - queued).total_seconds())
                    )
        # a preemption may keep the phase (Running → Running on a new attempt)
        preempted = int(new.get("preemptions", 0)) - int(old.get("preemptions", 0))
        if preempted > 0:
            metrics.PREEMPTIONS.labels(ns, pool).inc(preempted)

    def record_metrics(self, job: FineTuneJob, status: dict[str, Any]) -> None:
        queued = parse_time(status.get("queuedTime")) or job.metadata.creation_timestamp
        metrics.observe_job(
            job.metadata.namespace or "",
            job.metadata.name,
            status,
            job.spec.scheduling.pool or "",
            str(job.spec.method),
            queued_since=queued.timestamp() if queued is not None else None,
        )
        self._accrue_gpu_hours((job.metadata.namespace or "", job.metadata.name), job, status)

    def _accrue_gpu_hours(self, key: JobKey, job: FineTuneJob, status: dict[str, Any]) -> None:
        """Add the running time since the last look to ``tidetune_gpu_hours_total``.

        Running time is ``runSeconds`` plus the current stint (``runningSince``), so the
        counter grows while a job runs rather than when a stint ends. The first look at a
        job after the operator starts only sets the baseline (a restarted operator must not
        count a job's earlier hours again).
        """
        elapsed = float(status.get("runSeconds", 0.0))
        since = parse_time(status.get("runningSince"))
        if since is not None:
            elapsed += max(0.0, (self.clock.now() - since).total_seconds())
        counted = self._accrued_seconds.get(key)
        self._accrued_seconds[key] = max(elapsed, counted or 0.0)
        if counted is None or elapsed <= counted:
            return
        gpus = max(job.spec.resources.total_gpus, 0)
        metrics.GPU_HOURS.labels(job.metadata.namespace or "", job.spec.scheduling.pool or "").inc(
            (elapsed - counted) * gpus / 3600.0
        )
