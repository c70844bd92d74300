"""The operator's Prometheus metrics: names, labels, and per-job/per-pool series lifetimes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.tidetune_operator.conftest import make_job
from tidetune.clock import FakeClock
from tidetune_operator import metrics
from tidetune_operator.config import OperatorConfig
from tidetune_operator.controller import Controller
from tidetune_operator.launchers import get_launcher

T0 = datetime(2026, 3, 2, 22, 0, tzinfo=UTC)


def samples(name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
    """Every sample named ``name`` (e.g. ``x_total``) whose labels include ``labels``."""
    out = []
    for family in metrics.REGISTRY.collect():
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                out.append((dict(s.labels), s.value))
    return out


def value(name: str, **labels: str) -> float | None:
    found = samples(name, **labels)
    assert len(found) <= 1, found
    return found[0][1] if found else None


@pytest.fixture(autouse=True)
def _clean_registry() -> None:
    """Per-test isolation: drop every labelled child (the registry is process-global)."""
    for family in metrics.REGISTRY._collector_to_names:
        clear = getattr(family, "clear", None)
        if clear is not None:
            clear()
    metrics._INITIALIZED.clear()


def test_every_name_is_tidetune_prefixed_with_units_in_the_names() -> None:
    families = {f.name: f.type for f in metrics.REGISTRY.collect()}
    assert families and all(n.startswith("tidetune_") for n in families), families
    for name, kind in families.items():
        if kind == "histogram" or name.endswith("_timestamp"):
            assert name.endswith("_seconds"), name
    assert {
        "tidetune_jobs",
        "tidetune_phase_transitions",
        "tidetune_queue_wait_seconds",
        "tidetune_reconcile_duration_seconds",
        "tidetune_reconcile_errors",
        "tidetune_preemptions",
        "tidetune_gpu_hours",
        "tidetune_job_progress_ratio",
        "tidetune_job_train_loss",
        "tidetune_job_eval_loss",
        "tidetune_job_tokens_per_second",
        "tidetune_job_queued_timestamp_seconds",
        "tidetune_job_info",
        "tidetune_pool_open",
        "tidetune_pool_gpus",
        "tidetune_pool_gpus_in_use",
        "tidetune_pool_queued_jobs",
    } <= set(families)


def test_no_label_collides_with_prometheus_target_labels() -> None:
    """``job`` and ``instance`` are set by every scrape: ours would become ``exported_job``."""
    for family in metrics.REGISTRY.collect():
        collector = next(
            c for c, names in metrics.REGISTRY._collector_to_names.items() if family.name in names
        )
        labelnames = set(getattr(collector, "_labelnames", ()))
        assert not labelnames & {"job", "instance"}, (family.name, labelnames)


STATUS: dict[str, Any] = {
    "phase": "Running",
    "progress": {"percent": 25.0},
    "metrics": {"trainLoss": 1.5, "evalLoss": 1.7, "tokensPerSecond": 900.0},
}


def test_observe_job_sets_the_per_job_series_and_forget_job_removes_them() -> None:
    metrics.observe_job("team-a", "poetry", STATUS, "night-a100", "sft")
    metrics.observe_job("team-b", "other", STATUS, "", "dpo")
    job = {"namespace": "team-a", "finetunejob": "poetry"}
    assert value("tidetune_job_progress_ratio", **job) == 0.25
    assert value("tidetune_job_train_loss", **job) == 1.5
    assert value("tidetune_job_eval_loss", **job) == 1.7
    assert value("tidetune_job_tokens_per_second", **job) == 900.0
    info = samples("tidetune_job_info", **job)
    assert [labels for labels, _ in info] == [
        {**job, "phase": "Running", "pool": "night-a100", "method": "sft"}
    ]
    # a phase change replaces the info series, never adds a second one
    metrics.observe_job("team-a", "poetry", {**STATUS, "phase": "Succeeded"}, "night-a100", "sft")
    assert [labels["phase"] for labels, _ in samples("tidetune_job_info", **job)] == ["Succeeded"]

    metrics.forget_job("team-a", "poetry")
    for name in (
        "tidetune_job_progress_ratio",
        "tidetune_job_train_loss",
        "tidetune_job_eval_loss",
        "tidetune_job_tokens_per_second",
        "tidetune_job_info",
        "tidetune_job_queued_timestamp_seconds",
    ):
        assert samples(name, **job) == [], name
    # the other job is untouched
    assert value("tidetune_job_train_loss", namespace="team-b", finetunejob="other") == 1.5
    metrics.forget_job("team-a", "poetry")  # twice is fine


def test_queued_timestamp_exists_only_while_queued() -> None:
    job = {"namespace": "ns", "finetunejob": "waits"}
    metrics.observe_job("ns", "waits", {"phase": "Queued"}, "pool", "sft", queued_since=1000.0)
    assert value("tidetune_job_queued_timestamp_seconds", **job) == 1000.0
    metrics.observe_job("ns", "waits", {"phase": "Running"}, "pool", "sft", queued_since=1000.0)
    assert value("tidetune_job_queued_timestamp_seconds", **job) is None


def test_phase_counts_replace_stale_series() -> None:
    metrics.set_phase_counts({("a", "Running"): 2, ("a", "Queued"): 1})
    metrics.set_phase_counts({("a", "Running"): 1, ("a", "Succeeded"): 2})
    got = {(lb["namespace"], lb["phase"]): v for lb, v in samples("tidetune_jobs")}
    assert got == {("a", "Running"): 1, ("a", "Succeeded"): 2}


def test_forget_pool_removes_every_pool_series() -> None:
    for gauge in (metrics.POOL_OPEN, metrics.POOL_GPUS, metrics.POOL_GPUS_IN_USE):
        gauge.labels("p1").set(1)
        gauge.labels("p2").set(1)
    metrics.POOL_QUEUED.labels("p1").set(3)
    metrics.forget_pool("p1")
    for name in (
        "tidetune_pool_open",
        "tidetune_pool_gpus",
        "tidetune_pool_gpus_in_use",
        "tidetune_pool_queued_jobs",
    ):
        assert samples(name, pool="p1") == [], name
    assert value("tidetune_pool_open", pool="p2") == 1


# -- what the controller records ---------------------------------------------------------------


def _controller(clock: FakeClock) -> Controller:
    config = OperatorConfig.model_validate(
        {"trainerImage": "registry.example.com/tidetune/trainer:1.0", "defaultOutputUri": "s3://r/"}
    )
    return Controller(config, get_launcher(config.launcher), clock=clock)


def test_a_preemption_that_keeps_the_phase_is_counted() -> None:
    ctl = _controller(FakeClock(T0))
    job = make_job()
    ns, pool = job.metadata.namespace or "", job.spec.scheduling.pool or ""
    ctl.recorder.record_transition(
        job, {"phase": "Running", "preemptions": 0}, {"phase": "Running", "preemptions": 1}
    )
    assert value("tidetune_preemptions_total", namespace=ns, pool=pool) == 1
    assert not any(v for _, v in samples("tidetune_phase_transitions_total"))  # same phase


def test_first_launch_observes_queue_wait_and_counts_the_transition() -> None:
    clock = FakeClock(T0)
    ctl = _controller(clock)
    job = make_job()
    ns, pool = job.metadata.namespace or "", job.spec.scheduling.pool or ""
    queued = {"phase": "Queued", "queuedTime": (T0 - timedelta(minutes=30)).isoformat()}
    ctl.recorder.record_transition(job, queued, {**queued, "phase": "Running", "attempt": 1})
    assert value("tidetune_phase_transitions_total", namespace=ns, phase="Running") == 1
    assert value("tidetune_queue_wait_seconds_count", pool=pool) == 1
    assert value("tidetune_queue_wait_seconds_sum", pool=pool) == 1800.0
    # resuming later (Queued → Running on attempt 2) is not a second queue wait
    ctl.recorder.record_transition(
        job, {**queued, "attempt": 2}, {**queued, "phase": "Running", "attempt": 2}
    )
    assert value("tidetune_queue_wait_seconds_count", pool=pool) == 1


def test_gpu_hours_accrue_while_running_not_only_when_a_stint_ends() -> None:
    clock = FakeClock(T0)
    ctl = _controller(clock)
    job = make_job()  # 1 node × 8 GPUs in pool night-a100
    key = (job.metadata.namespace or "", job.metadata.name)
    labels = {"namespace": key[0], "pool": "night-a100"}
    running = {"phase": "Running", "runningSince": T0.isoformat()}
    ctl.recorder.record_metrics(job, running)  # first look: the baseline
    clock.advance(timedelta(minutes=30))
    ctl.recorder.record_metrics(job, running)
    assert value("tidetune_gpu_hours_total", **labels) == pytest.approx(4.0)  # 8 GPUs × 0.5 h
    clock.advance(timedelta(minutes=15))  # the stint ends: runSeconds takes the 45 minutes
    ctl.recorder.record_metrics(job, {"phase": "Suspended", "runSeconds": 2700.0})
    assert value("tidetune_gpu_hours_total", **labels) == pytest.approx(6.0)
    clock.advance(timedelta(hours=5))  # suspended: nothing accrues
    ctl.recorder.record_metrics(job, {"phase": "Suspended", "runSeconds": 2700.0})
    assert value("tidetune_gpu_hours_total", **labels) == pytest.approx(6.0)


def test_a_restarted_operator_does_not_count_earlier_hours_again() -> None:
    clock = FakeClock(T0)
    job = make_job()
    labels = {"namespace": job.metadata.namespace or "", "pool": "night-a100"}
    status = {"phase": "Running", "runSeconds": 36000.0, "runningSince": T0.isoformat()}
    ctl = _controller(clock)
    ctl.recorder.record_metrics(job, status)
    assert (value("tidetune_gpu_hours_total", **labels) or 0.0) == 0.0


def test_deleting_a_job_removes_its_series_through_the_controller() -> None:
    ctl = _controller(FakeClock(T0))
    job = make_job()
    ctl.recorder.record_metrics(job, STATUS)
    labels = {"namespace": job.metadata.namespace or "", "finetunejob": job.metadata.name}
    assert value("tidetune_job_train_loss", **labels) == 1.5
    body = {"metadata": {"namespace": labels["namespace"], "name": labels["finetunejob"]}}
    ctl.observe_job("DELETED", body)
    for name in (
        "tidetune_job_progress_ratio",
        "tidetune_job_train_loss",
        "tidetune_job_info",
        "tidetune_job_eval_loss",
        "tidetune_job_tokens_per_second",
    ):
        assert samples(name, **labels) == [], name


def test_counters_start_at_zero_so_the_first_event_is_seen_by_increase() -> None:
    metrics.observe_job("fresh", "j", {"phase": "Pending"}, "night", "sft")
    for phase in ("Pending", "Queued", "Running", "Succeeded", "Failed", "Cancelled"):
        assert value("tidetune_phase_transitions_total", namespace="fresh", phase=phase) == 0
    assert value("tidetune_preemptions_total", namespace="fresh", pool="night") == 0
    assert value("tidetune_gpu_hours_total", namespace="fresh", pool="night") == 0
    metrics.observe_pool("night", {"open": True, "gpusInUse": 4, "queuedJobs": 2}, 8)
    assert value("tidetune_queue_wait_seconds_count", pool="night") == 0
    assert value("tidetune_pool_open", pool="night") == 1
    assert value("tidetune_pool_gpus", pool="night") == 8
    assert value("tidetune_pool_gpus_in_use", pool="night") == 4
    assert value("tidetune_pool_queued_jobs", pool="night") == 2
    metrics.forget_pool("night")
    assert samples("tidetune_queue_wait_seconds_count", pool="night") == []
