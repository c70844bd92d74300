"""The operator's Prometheus metrics (``tidetune_*``, units in the names).

Per-job series carry ``namespace`` and ``finetunejob`` labels (not ``job``: Prometheus gives
every scraped series the scrape job's ``job`` label and would rename ours to
``exported_job``) and are removed when the job is deleted, so cardinality stays bounded by
the number of live jobs. Pool series carry ``pool`` and are removed with the pool.

The Grafana dashboard (``helm/tidetune/files/dashboard.json``) and the alerts
(``helm/tidetune/files/alerts.yaml``) query these names; ``tests/observability`` checks
that every dashboard query returns data from a real Prometheus scraping the lab.
"""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from tidetune.api.constants import Phase

REGISTRY = CollectorRegistry(auto_describe=True)

JOBS = Gauge("tidetune_jobs", "FineTuneJobs by phase.", ["namespace", "phase"], registry=REGISTRY)
PHASE_TRANSITIONS = Counter(
    "tidetune_phase_transitions_total",
    "Phase changes, by the job's namespace and the phase entered.",
    ["namespace", "phase"],
    registry=REGISTRY,
)
QUEUE_WAIT = Histogram(
    "tidetune_queue_wait_seconds",
    "Time from queued (or created, when admitted at once) to the first launch.",
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
    "GPU-hours used by running jobs (accrued while they run).",
    ["namespace", "pool"],
    registry=REGISTRY,
)
JOB_PROGRESS = Gauge(
    "tidetune_job_progress_ratio",
    "Steps done / total steps.",
    ["namespace", "finetunejob"],
    registry=REGISTRY,
)
JOB_TRAIN_LOSS = Gauge(
    "tidetune_job_train_loss",
    "Latest training loss.",
    ["namespace", "finetunejob"],
    registry=REGISTRY,
)
JOB_EVAL_LOSS = Gauge(
    "tidetune_job_eval_loss",
    "Latest evaluation loss.",
    ["namespace", "finetunejob"],
    registry=REGISTRY,
)
JOB_TOKENS_PER_SECOND = Gauge(
    "tidetune_job_tokens_per_second",
    "Recent training throughput.",
    ["namespace", "finetunejob"],
    registry=REGISTRY,
)
JOB_REWARD = Gauge(
    "tidetune_job_reward",
    "GRPO/PPO: latest mean reward (Σ weight × rule) of the sampled completions.",
    ["namespace", "finetunejob"],
    registry=REGISTRY,
)
JOB_KL = Gauge(
    "tidetune_job_kl",
    "GRPO/PPO: latest mean KL divergence to the reference model.",
    ["namespace", "finetunejob"],
    registry=REGISTRY,
)
JOB_QUEUED_SINCE = Gauge(
    "tidetune_job_queued_timestamp_seconds",
    "Unix time the job started waiting for admission; present only while it is Queued.",
    ["namespace", "finetunejob"],
    registry=REGISTRY,
)
JOB_INFO = Gauge(
    "tidetune_job_info",
    "1 per live job, with its phase and pool.",
    ["namespace", "finetunejob", "phase", "pool", "method"],
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

_PER_JOB = (
    JOB_PROGRESS,
    JOB_TRAIN_LOSS,
    JOB_EVAL_LOSS,
    JOB_TOKENS_PER_SECOND,
    JOB_REWARD,
    JOB_KL,
    JOB_QUEUED_SINCE,
)
_PER_POOL = (POOL_OPEN, POOL_GPUS, POOL_GPUS_IN_USE, POOL_QUEUED, QUEUE_WAIT)

# Series that exist before anything happens, so that rate()/increase() see their first
# event and dashboards show 0 rather than "no data" (Prometheus' advice: initialize).
for _kind in ("job", "pool"):
    RECONCILE_ERRORS.labels(_kind)
QUEUE_WAIT.labels("")  # jobs that name no pool
_INITIALIZED: set[tuple[str, str]] = set()


def _initialize(namespace: str, pool: str) -> None:
    """Create the zero series of a (namespace, pool) the first time a job there is seen."""
    if (namespace, pool) in _INITIALIZED:
        return
    _INITIALIZED.add((namespace, pool))
    for phase in Phase:
        PHASE_TRANSITIONS.labels(namespace, str(phase))
    PREEMPTIONS.labels(namespace, pool)
    GPU_HOURS.labels(namespace, pool)


def observe_job(
    namespace: str,
    name: str,
    status: dict[str, object],
    pool: str,
    method: str,
    queued_since: float | None = None,
) -> None:
    """Set the per-job series from a job's status.

    ``queued_since`` (Unix seconds) sets ``tidetune_job_queued_timestamp_seconds`` while
    the status phase is ``Queued``; in any other phase that series is removed.
    """
    _initialize(namespace, pool)
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
        (JOB_REWARD, "reward"),
        (JOB_KL, "kl"),
    ):
        value = metrics.get(key)
        if isinstance(value, int | float):
            gauge.labels(namespace, name).set(float(value))
    phase = str(status.get("phase", "Pending"))
    if phase == "Queued" and queued_since is not None:
        JOB_QUEUED_SINCE.labels(namespace, name).set(queued_since)
    else:
        with contextlib.suppress(KeyError):
            JOB_QUEUED_SINCE.remove(namespace, name)
    info = (namespace, name, phase, pool, method)
    if info not in JOB_INFO._metrics:  # a new phase: replace the old info series
        forget_info(namespace, name)
        JOB_INFO.labels(*info).set(1)


def forget_info(namespace: str, name: str) -> None:
    """Drop the ``tidetune_job_info`` series of one job (whatever its phase and pool)."""
    for labels in list(JOB_INFO._metrics):
        if labels[0] == namespace and labels[1] == name:
            JOB_INFO.remove(*labels)


def forget_job(namespace: str, name: str) -> None:
    """Drop every per-job series of a deleted job."""
    for gauge in _PER_JOB:
        with contextlib.suppress(KeyError):
            gauge.remove(namespace, name)
    forget_info(namespace, name)


def observe_pool(name: str, status: dict[str, object], gpus: int) -> None:
    """Set a pool's series from its status (``open``, ``gpusInUse``, ``queuedJobs``)."""
    QUEUE_WAIT.labels(name)  # the pool's histogram exists before its first admission
    POOL_OPEN.labels(name).set(1 if status.get("open") else 0)
    POOL_GPUS.labels(name).set(gpus)
    for gauge, key in ((POOL_GPUS_IN_USE, "gpusInUse"), (POOL_QUEUED, "queuedJobs")):
        value = status.get(key, 0)
        gauge.labels(name).set(float(value) if isinstance(value, int | float) else 0.0)


def forget_pool(name: str) -> None:
    """Drop every series of a deleted pool."""
    for gauge in _PER_POOL:
        with contextlib.suppress(KeyError):
            gauge.remove(name)


def set_phase_counts(counts: dict[tuple[str, str], int]) -> None:
    """Make the ``tidetune_jobs`` series these (namespace, phase) counts.

    Series are set before stale ones are removed, so a scrape in between never sees a
    namespace without its jobs.
    """
    for (namespace, phase), count in counts.items():
        JOBS.labels(namespace, phase).set(count)
    for labels in list(JOBS._metrics):
        if labels not in counts:
            with contextlib.suppress(KeyError):
                JOBS.remove(*labels)
