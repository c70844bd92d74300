"""The operator's Prometheus metrics (``tidetune_*``, units in the names).

Per-job series carry ``namespace`` and ``job`` labels and are removed when the job is
deleted, so cardinality stays bounded by the number of live jobs.
"""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

JOBS = Gauge("tidetune_jobs", "FineTuneJobs by phase.", ["namespace", "phase"], registry=REGISTRY)
PHASE_TRANSITIONS = Counter(
    "tidetune_phase_transitions_total",
    "Phase changes, by the phase entered.",
    ["phase"],
    registry=REGISTRY,
)
QUEUE_WAIT = Histogram(
    "tidetune_queue_wait_seconds",
    "Time from queued to launched.",
    ["pool"],
    buckets=(1, 10, 60, 300, 900, 1800, 3600, 7200, 14400, 28800, 57600, 86400, 172800),
    registry=REGISTRY,
)
RECONCILE_DURATION = Histogram(
    "tidetune_reconcile_duration_seconds",
    "Time to reconcile one object.",
    ["kind"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
RECONCILE_ERRORS = Counter(
    "tidetune_reconcile_errors_total",
    "Reconciles that failed and were retried.",
    ["kind"],
    registry=REGISTRY,
)
PREEMPTIONS = Counter(
    "tidetune_preemptions_total",
    "Jobs preempted (node reclaimed, window closed).",
    ["namespace", "pool"],
    registry=REGISTRY,
)
GPU_HOURS = Counter(
    "tidetune_gpu_hours_total",
    "GPU-hours used by running jobs.",
    ["namespace", "pool"],
    registry=REGISTRY,
)
JOB_PROGRESS = Gauge(
    "tidetune_job_progress_ratio",
    "Steps done / total steps.",
    ["namespace", "job"],
    registry=REGISTRY,
)
JOB_TRAIN_LOSS = Gauge(
    "tidetune_job_train_loss", "Latest training loss.", ["namespace", "job"], registry=REGISTRY
)
JOB_EVAL_LOSS = Gauge(
    "tidetune_job_eval_loss", "Latest evaluation loss.", ["namespace", "job"], registry=REGISTRY
)
JOB_TOKENS_PER_SECOND = Gauge(
    "tidetune_job_tokens_per_second",
    "Recent training throughput.",
    ["namespace", "job"],
    registry=REGISTRY,
)
JOB_INFO = Gauge(
    "tidetune_job_info",
    "1 per live job, with its phase and pool.",
    ["namespace", "job", "phase", "pool", "method"],
    registry=REGISTRY,
)
POOL_OPEN = Gauge(
    "tidetune_pool_open", "1 while the pool's window is open.", ["pool"], registry=REGISTRY
)
POOL_GPUS = Gauge(
    "tidetune_pool_gpus", "GPUs TideTune may use in the pool.", ["pool"], registry=REGISTRY
)
POOL_GPUS_IN_USE = Gauge(
    "tidetune_pool_gpus_in_use", "GPUs held by admitted jobs.", ["pool"], registry=REGISTRY
)
POOL_QUEUED = Gauge(
    "tidetune_pool_queued_jobs", "Jobs waiting for the pool.", ["pool"], registry=REGISTRY
)

_PER_JOB = (JOB_PROGRESS, JOB_TRAIN_LOSS, JOB_EVAL_LOSS, JOB_TOKENS_PER_SECOND)


def observe_job(
    namespace: str, name: str, status: dict[str, object], pool: str, method: str
) -> None:
    """Set the per-job series from a job's status."""
    progress = status.get("progress") or {}
    metrics = status.get("metrics") or {}
    assert isinstance(progress, dict) and isinstance(metrics, dict)
    percent = progress.get("percent")
    if isinstance(percent, int | float):
        JOB_PROGRESS.labels(namespace, name).set(float(percent) / 100.0)
    for gauge, key in (
        (JOB_TRAIN_LOSS, "trainLoss"),
        (JOB_EVAL_LOSS, "evalLoss"),
        (JOB_TOKENS_PER_SECOND, "tokensPerSecond"),
    ):
        value = metrics.get(key)
        if isinstance(value, int | float):
            gauge.labels(namespace, name).set(float(value))
    forget_info(namespace, name)
    JOB_INFO.labels(namespace, name, str(status.get("phase", "Pending")), pool, method).set(1)


def forget_info(namespace: str, name: str) -> None:
    for labels in list(JOB_INFO._metrics):
        if labels[0] == namespace and labels[1] == name:
            JOB_INFO.remove(*labels)


def forget_job(namespace: str, name: str) -> None:
    """Drop every per-job series of a deleted job."""
    for gauge in _PER_JOB:
        with contextlib.suppress(KeyError):
            gauge.remove(namespace, name)
    forget_info(namespace, name)


def set_phase_counts(counts: dict[tuple[str, str], int]) -> None:
    """Replace the ``tidetune_jobs`` series with these (namespace, phase) counts."""
    JOBS.clear()
    for (namespace, phase), count in counts.items():
        JOBS.labels(namespace, phase).set(count)
