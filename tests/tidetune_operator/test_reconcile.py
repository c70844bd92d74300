"""The FineTuneJob state machine, path by path, with no cluster."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.tidetune_operator.conftest import make_job, make_pool
from tidetune import exitcodes
from tidetune.api import FineTuneJob, Phase, Reason
from tidetune.api.constants import TIMELINE_KEEP_FIRST, TIMELINE_KEEP_LAST
from tidetune.contract import RunState
from tidetune_operator.admission import Admission
from tidetune_operator.config import OperatorConfig
from tidetune_operator.launchers import PyTorchJobLauncher, TrainJobLauncher
from tidetune_operator.reconcile import (
    WAIT_FOR_REFERENCE,
    ActionKind,
    ArtifactCheck,
    Decision,
    LaunchRefusal,
    PodExit,
    World,
    decide,
    model_params_hint,
    pre_run_estimate,
)
from tidetune_operator.status import add_timeline

T0 = datetime(2026, 11, 22, 22, 0, tzinfo=UTC)
LAUNCHER = PyTorchJobLauncher()


def step(
    job: FineTuneJob, config: OperatorConfig, launcher_kind: Any = LAUNCHER, **world: Any
) -> tuple[FineTuneJob, Decision]:
    """Decide once (as ``launcher_kind``'s operator), and return the job with the decided
    status."""
    world.setdefault("now", T0)
    decision = decide(World(job=job, **world), config, launcher_kind)
    doc = job.model_dump(mode="json", by_alias=True, exclude_none=True)
    doc["status"] = decision.status
    return FineTuneJob.model_validate(doc), decision


def launched(decision: Decision, *conditions: str, suspend: bool | None = None) -> dict[str, Any]:
    body = next(a.body for a in decision.actions if a.kind is ActionKind.CREATE_LAUNCHER)
    assert body is not None
    obj = {**body, "status": {"conditions": [{"type": c, "status": "True"} for c in conditions]}}
    if suspend is not None:
        obj["spec"] = {**obj["spec"], "runPolicy": {**obj["spec"]["runPolicy"], "suspend": suspend}}
    return obj


def kinds(decision: Decision) -> list[ActionKind]:
    return [a.kind for a in decision.actions]


def types(decision: Decision) -> list[str]:
    return [e["type"] for e in decision.events]


def running_job(config: OperatorConfig, **edits: Any) -> tuple[FineTuneJob, dict[str, Any]]:
    job, d = step(make_job(edits=edits or None), config)
    return job, launched(d, "Created", "Running")


def test_new_job_is_validated_estimated_and_launched(config: OperatorConfig) -> None:
    job, d = step(
        make_job(edits={"spec.scheduling.pool": None, "spec.hyperparameters.maxSteps": 500}), config
    )
    assert kinds(d) == [ActionKind.CREATE_CONFIG_MAP, ActionKind.CREATE_LAUNCHER]
    st = job.status
    assert st is not None and st.phase is Phase.RUNNING
    assert st.attempt == 1 and st.launcher is not None and st.launcher.kind == "PyTorchJob"
    # training has not started: its pods are not running yet
    assert st.start_time is None and st.running_since is None and st.observed_generation == 1
    assert types(d) == ["Validated", "Estimated", "Launched"]
    assert st.estimate is not None and st.estimate.gpu_hours > 0 and st.estimate.cost > 0
    conds = {c.type: c.status for c in st.conditions}
    assert conds == {
        "Validated": "True",
        "Admitted": "True",
        "Suspended": "False",
        "Running": "False",
    }


def test_pods_that_do_not_start_are_not_billed_and_say_why(config: OperatorConfig) -> None:
    job, d = step(make_job(edits={"spec.scheduling.pool": None}), config)
    pending = launched(d, "Created")
    why = ("Unschedulable", "x-1-master-0: 0/3 nodes are available: 3 Insufficient nvidia.com/gpu")
    for minutes in (10, 24):  # pending for less than the start timeout (15m)
        job, d = step(
            job, config, launcher=pending, pods_waiting=why, now=T0 + timedelta(minutes=minutes)
        )
        st = job.status
        assert st is not None and st.phase is Phase.RUNNING
        pods = next(c for c in st.conditions if c.type == "PodsReady")
        assert (pods.status, pods.reason) == ("False", "Unschedulable")
        assert "Insufficient nvidia.com/gpu" in pods.message and "Unschedulable" in st.message
        assert st.run_seconds == 0 and st.running_since is None and st.start_time is None
    running = {**pending, "status": {
        "conditions": [{"type": "Created", "status": "True"}, {"type": "Running", "status": "True"}]
    }}  # fmt: skip
    job, d = step(job, config, launcher=running, now=T0 + timedelta(minutes=41))
    st = job.status
    assert st is not None and st.start_time == T0 + timedelta(minutes=41)
    pods = next(c for c in st.conditions if c.type == "PodsReady")
    assert (pods.status, pods.reason) == ("True", "PodsRunning")
    job, d = step(job, config, launcher=running, now=T0 + timedelta(minutes=51))
    assert job.status is not None and job.status.running_since == T0 + timedelta(minutes=41)


UNSCHEDULABLE = (
    "Unschedulable",
    "x-1-master-0: 0/3 nodes are available: 3 Insufficient nvidia.com/gpu",
)


def _pending_job(config: OperatorConfig, **edits: Any) -> tuple[FineTuneJob, dict[str, Any]]:
    job, d = step(make_job(edits={"spec.scheduling.pool": None, **edits}), config)
    return job, launched(d, "Created")


def test_pods_that_do_not_start_in_time_give_the_capacity_back(config: OperatorConfig) -> None:
    """Past startTimeoutSeconds (15m) of Pending pods the attempt is ended: the launched job
    is deleted, the next one created suspended, and the job waits in Queued with the
    scheduler's reason until the backoff has passed; then the next attempt starts and gets
    a start timeout of its own."""
    job, pending = _pending_job(config)
    first = pending["metadata"]["name"]
    job, d = step(job, config, launcher=pending, pods_waiting=UNSCHEDULABLE)
    assert job.status is not None and job.status.pods_pending_since == T0
    # the clock is in status: whoever decides next (a restarted operator) goes on counting
    job, d = step(
        job, config, launcher=pending, pods_waiting=UNSCHEDULABLE, now=T0 + timedelta(minutes=14)
    )
    st = job.status
    assert st is not None and st.phase is Phase.RUNNING and d.actions == []
    assert st.pods_pending_since == T0 and st.start_timeouts == 0
    timeout_at = T0 + timedelta(minutes=15)
    job, d = step(job, config, launcher=pending, pods_waiting=UNSCHEDULABLE, now=timeout_at)
    st = job.status
    assert st is not None and st.phase is Phase.QUEUED
    assert kinds(d) == [
        ActionKind.DELETE_LAUNCHER,
        ActionKind.CREATE_CONFIG_MAP,
        ActionKind.CREATE_LAUNCHER,
    ]
    assert d.actions[0].name == first
    second = launched(d, "Created", "Suspended", suspend=True)
    assert second["spec"]["runPolicy"]["suspend"] is True and st.attempt == 2
    assert st.start_timeouts == 1 and st.pods_pending_since is None
    assert st.start_retry_after == timeout_at + timedelta(seconds=60)
    assert st.preemptions == 0 and st.failures == 0
    pods = next(c for c in st.conditions if c.type == "PodsReady")
    assert (pods.status, pods.reason) == ("False", "StartTimeout")
    assert pods.message.startswith(f"the pods of {first} did not start within 15m: Unschedulable")
    assert "0/3 nodes are available: 3 Insufficient nvidia.com/gpu" in pods.message
    admitted = next(c for c in st.conditions if c.type == "Admitted")
    assert (admitted.status, admitted.reason) == ("False", "StartTimeout")
    assert st.message is not None and "did not start within 15m" in st.message
    assert st.run_seconds == 0 and st.start_time is None
    (entry,) = [e for e in d.events if e["type"] == "StartTimeout"]
    assert entry["warning"] is True and "nvidia.com/gpu" in entry["message"]
    # the backoff: attempt 2 stays suspended (the old one's pods are gone)
    job, d = step(job, config, launcher=second, now=timeout_at + timedelta(seconds=59))
    assert d.actions == [] and job.status is not None and job.status.phase is Phase.QUEUED
    retry_at = timeout_at + timedelta(seconds=60)
    job, d = step(job, config, launcher=second, now=retry_at)
    assert [(a.kind, a.name) for a in d.actions] == [
        (ActionKind.RESUME_LAUNCHER, second["metadata"]["name"])
    ]
    assert job.status is not None and job.status.start_retry_after is None
    # unsuspended, its status still says Suspended (the training operator has not acted):
    # no pods run, nothing is billed, and attempt 2's own start clock begins
    later = retry_at + timedelta(seconds=1)
    unsuspended = {**second, "spec": {**second["spec"], "runPolicy": {"suspend": False}}}
    job, d = step(job, config, launcher=unsuspended, now=later)
    st = job.status
    assert st is not None and st.phase is Phase.RUNNING and st.pods_pending_since == later
    assert st.running_since is None and st.start_time is None and st.run_seconds == 0
    assert next(c for c in st.conditions if c.type == "PodsReady").status == "False"
    assert next(c for c in st.conditions if c.type == "Admitted").status == "True"
    # attempt 2's pods are pending too
    resumed = {**unsuspended, "status": {"conditions": [{"type": "Created", "status": "True"}]}}
    job, d = step(
        job, config, launcher=resumed, pods_waiting=UNSCHEDULABLE, now=later + timedelta(seconds=4)
    )
    st = job.status
    assert st is not None and st.phase is Phase.RUNNING and st.pods_pending_since == later
    assert st.running_since is None and st.run_seconds == 0
    job, d = step(
        job,
        config,
        launcher=resumed,
        pods_waiting=UNSCHEDULABLE,
        now=later + timedelta(minutes=15),
    )
    st = job.status
    assert st is not None and st.phase is Phase.QUEUED and st.start_timeouts == 2
    # the backoff doubles
    assert st.start_retry_after == later + timedelta(minutes=15, seconds=120)


def test_a_worker_that_does_not_start_holds_the_job_at_the_start(config: OperatorConfig) -> None:
    """Two nodes, the master's pod runs, the worker's is Unschedulable: the training operator
    says Running, but the job is not billed, says why, and the start timeout ends it."""
    job, d = step(make_job("sft-full.yaml", edits={"spec.scheduling.pool": None}), config)
    body = launched(d, "Created", "Running")
    replicas = {"Master": {"active": 1}, "Worker": {}}
    half = {**body, "status": {**body["status"], "replicaStatuses": replicas}}
    why = ("Unschedulable", "x-1-worker-0: 0/3 nodes are available: 3 Insufficient nvidia.com/gpu")
    job, d = step(job, config, launcher=half, pods_waiting=why)
    st = job.status
    assert st is not None and st.phase is Phase.RUNNING and st.start_time is None
    assert st.running_since is None and st.pods_pending_since == T0
    pods = next(c for c in st.conditions if c.type == "PodsReady")
    assert (pods.status, pods.reason) == ("False", "Unschedulable") and "worker-0" in pods.message
    job, d = step(job, config, launcher=half, pods_waiting=why, now=T0 + timedelta(minutes=15))
    assert job.status is not None and job.status.phase is Phase.QUEUED
    assert ActionKind.DELETE_LAUNCHER in kinds(d)


def test_repeated_start_timeouts_fail_the_job(config: OperatorConfig) -> None:
    config = config.model_copy(update={"max_start_timeouts": 1, "start_timeout_seconds": 60})
    job, pending = _pending_job(config)
    job, d = step(job, config, launcher=pending, pods_waiting=UNSCHEDULABLE)
    job, d = step(
        job, config, launcher=pending, pods_waiting=UNSCHEDULABLE, now=T0 + timedelta(minutes=1)
    )
    assert job.status is not None and job.status.phase is Phase.QUEUED
    second = launched(d, "Created", "Suspended", suspend=True)
    job, d = step(job, config, launcher=second, now=T0 + timedelta(minutes=2))
    assert kinds(d) == [ActionKind.RESUME_LAUNCHER]
    resumed = {**second, "spec": {**second["spec"], "runPolicy": {"suspend": False}}}
    resumed["status"] = {"conditions": [{"type": "Created", "status": "True"}]}
    why = ("ErrImagePull", "x-2-master-0: container trainer: pull access denied")
    job, d = step(job, config, launcher=resumed, pods_waiting=why, now=T0 + timedelta(minutes=2))
    job, d = step(job, config, launcher=resumed, pods_waiting=why, now=T0 + timedelta(minutes=3))
    st = job.status
    assert st is not None and st.phase is Phase.FAILED and st.start_timeouts == 2
    assert [(a.kind, a.name) for a in d.actions] == [
        (ActionKind.DELETE_LAUNCHER, resumed["metadata"]["name"])
    ]
    failed = next(c for c in st.conditions if c.type == "Failed")
    assert failed.reason == "StartTimeout"
    assert "did not start within 1m: ErrImagePull" in failed.message
    assert "pull access denied" in failed.message and "maxStartTimeouts 1" in failed.message


def test_the_start_clock_restarts_when_the_pods_run_or_the_job_is_suspended(
    config: OperatorConfig,
) -> None:
    job, pending = _pending_job(config)
    job, _ = step(job, config, launcher=pending, pods_waiting=UNSCHEDULABLE)
    running = {**pending, "status": {"conditions": [{"type": "Running", "status": "True"}]}}
    job, d = step(job, config, launcher=running, now=T0 + timedelta(minutes=14))
    assert job.status is not None and job.status.pods_pending_since is None
    # pending again (a pod replaced in place, a restart): a new clock
    job, d = step(
        job, config, launcher=pending, pods_waiting=UNSCHEDULABLE, now=T0 + timedelta(minutes=20)
    )
    assert job.status is not None
    assert job.status.pods_pending_since == T0 + timedelta(minutes=20)
    # suspended by its owner while pending: no clock while suspended
    job = job.model_copy(update={"spec": job.spec.model_copy(update={"suspend": True})})
    job, d = step(
        job, config, launcher=pending, pods_waiting=UNSCHEDULABLE, now=T0 + timedelta(minutes=30)
    )
    assert kinds(d) == [ActionKind.SUSPEND_LAUNCHER]
    assert job.status is not None and job.status.pods_pending_since is None


def test_no_start_timeout_when_it_is_zero(config: OperatorConfig) -> None:
    config = config.model_copy(update={"start_timeout_seconds": 0})
    job, pending = _pending_job(config)
    job, _ = step(job, config, launcher=pending, pods_waiting=UNSCHEDULABLE)
    job, d = step(
        job, config, launcher=pending, pods_waiting=UNSCHEDULABLE, now=T0 + timedelta(days=2)
    )
    assert d.actions == [] and job.status is not None and job.status.phase is Phase.RUNNING


def test_a_kueue_job_that_does_not_start_goes_back_to_kueue(config: OperatorConfig) -> None:
    job, pending = _pending_job(config, **{"spec.scheduling.queueName": "team-a"})
    admitted = {**pending, "spec": {**pending["spec"], "runPolicy": {"suspend": False}}}
    job, _ = step(job, config, launcher=admitted, pods_waiting=UNSCHEDULABLE)
    job, d = step(
        job, config, launcher=admitted, pods_waiting=UNSCHEDULABLE, now=T0 + timedelta(hours=1)
    )
    st = job.status
    assert st is not None and st.phase is Phase.QUEUED and st.start_timeouts == 1
    nxt = launched(d, "Created", "Suspended", suspend=True)
    assert nxt["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert "goes to Kueue queue team-a" in (st.message or "")
    # Kueue admits it when it will; the operator does not resume it itself
    for minutes in (61, 70):
        job, d = step(job, config, launcher=nxt, now=T0 + timedelta(minutes=minutes))
        assert d.actions == [] and job.status is not None and job.status.phase is Phase.QUEUED


def test_bad_reference_fails_without_launching(config: OperatorConfig) -> None:
    problem = (
        Reason.POOL_TOO_SMALL,
        "spec.resources: the job needs 8 GPUs (1 × 8) but pool night-a100 has 4",
    )
    job, d = step(make_job(), config, ref_problems=[problem])
    assert d.actions == [] and not d.waiting
    st = job.status
    assert st is not None and st.phase is Phase.FAILED
    failed = next(c for c in st.conditions if c.type == "Failed")
    assert failed.reason == "PoolTooSmall" and "night-a100 has 4" in failed.message
    validated = next(c for c in st.conditions if c.type == "Validated")
    assert (validated.status, validated.reason) == ("False", "PoolTooSmall")
    assert d.events[-1]["warning"] is True
    # terminal: nothing more happens
    again, d2 = step(job, config)
    assert d2.actions == [] and d2.events == [] and again.status == job.status


def test_a_wrong_reference_fails_even_while_another_is_still_missing(
    config: OperatorConfig,
) -> None:
    """Waiting only helps when time can fix everything: a pool too small fails the job at
    once even though its Secret is also not there yet."""
    missing = (Reason.SECRET_NOT_FOUND, "spec.storageSecretRef: Secret s3-creds not found")
    wrong = (Reason.POOL_INVALID, "spec.scheduling.pool: IdlePool night-a100 is invalid: x")
    job, d = step(make_job(), config, ref_problems=[missing, wrong])
    assert job.status is not None and job.status.phase is Phase.FAILED
    assert not d.waiting
    failed = next(c for c in job.status.conditions if c.type == "Failed")
    assert failed.reason == "PoolInvalid"


def test_wait_for_reference_is_exactly_the_not_there_yet_reasons() -> None:
    assert {
        Reason.SECRET_NOT_FOUND,
        Reason.SECRET_KEY_MISSING,
        Reason.CONFIG_MAP_NOT_FOUND,
        Reason.POOL_NOT_FOUND,
        Reason.WORKLOAD_PRIORITY_CLASS_NOT_FOUND,
    } == WAIT_FOR_REFERENCE


@pytest.mark.parametrize(
    ("reason", "message"),
    [
        (
            Reason.SECRET_NOT_FOUND,
            "spec.storageSecretRef: Secret s3-creds not found in namespace team-a",
        ),
        (Reason.SECRET_KEY_MISSING, "spec.storageSecretRef: Secret s3-creds has no secretKey"),
        (
            Reason.CONFIG_MAP_NOT_FOUND,
            "spec.rl.rewards[1].function.configMapRef: ConfigMap math-rewards not found",
        ),
        (Reason.POOL_NOT_FOUND, "spec.scheduling.pool: IdlePool night-a100 does not exist"),
    ],
)
def test_a_missing_reference_waits_in_pending_then_the_job_proceeds(
    config: OperatorConfig, reason: Reason, message: str
) -> None:
    """GitOps applies the job with what it names; until that is there the job waits,
    with one timeline entry (and Event) per thing waited for, not one per look."""
    job, d = step(make_job(), config, ref_problems=[(reason, message)])
    assert d.actions == [] and d.waiting
    st = job.status
    assert st is not None and st.phase is Phase.PENDING
    assert st.message == f"waiting: {message}"
    validated = next(c for c in st.conditions if c.type == "Validated")
    assert (validated.status, validated.reason) == ("False", str(reason))
    assert validated.message == f"waiting: {message}"
    assert not any(c.type == "Failed" for c in st.conditions)
    assert [(e["type"], e["reason"]) for e in d.events] == [("Waiting", str(reason))]
    assert [t.type for t in st.timeline] == ["Waiting"]
    # looking again and still not finding it: the same status, no new entry or Event
    for minutes in (1, 2, 3):
        again, d2 = step(
            job, config, ref_problems=[(reason, message)], now=T0 + timedelta(minutes=minutes)
        )
        assert d2.waiting and d2.events == [] and d2.actions == []
        assert again.status == job.status
    # something else missing now: one more entry
    other = (Reason.SECRET_NOT_FOUND, "spec.storageSecretRef: Secret other not found")
    if reason is not Reason.SECRET_NOT_FOUND:
        job, d3 = step(job, config, ref_problems=[other], now=T0 + timedelta(minutes=4))
        assert types(d3) == ["Waiting"] and d3.events[0]["reason"] == "SecretNotFound"
        assert job.status is not None and len(job.status.timeline) == 2
    # it appears: validated, and on its way like any job
    job, d4 = step(job, config, now=T0 + timedelta(minutes=5))
    assert not d4.waiting
    st = job.status
    assert st is not None and st.phase is Phase.RUNNING
    assert kinds(d4) == [ActionKind.CREATE_CONFIG_MAP, ActionKind.CREATE_LAUNCHER]
    validated = next(c for c in st.conditions if c.type == "Validated")
    assert (validated.status, validated.reason) == ("True", "SpecValid")
    assert types(d4)[0] == "Validated"
    assert not st.message or not st.message.startswith("waiting")


def test_a_waiting_job_can_be_cancelled(config: OperatorConfig) -> None:
    problem = (Reason.SECRET_NOT_FOUND, "spec.storageSecretRef: Secret s3-creds not found")
    job, _ = step(make_job(), config, ref_problems=[problem])
    cancelled = make_job(
        edits={"spec.cancelled": True},
        status=job.status.model_dump(mode="json", by_alias=True, exclude_none=True)
        if job.status
        else None,
    )
    job, d = step(cancelled, config, ref_problems=[problem])
    assert job.status is not None and job.status.phase is Phase.CANCELLED and not d.waiting


def test_running_job_reports_progress_metrics_and_checkpoints(config: OperatorConfig) -> None:
    job, pj = running_job(config)
    run = RunState(
        state="running",
        step=120,
        total_steps=900,
        epoch=0.4,
        percent=13.3,
        trained_tokens=1.2e7,
        eta="2026-11-23T04:00:00Z",
        metrics={"loss": 1.84, "evalLoss": 1.91, "learningRate": 9.7e-5, "tokensPerSecond": 5100.0},
        checkpoints=[
            {
                "step": 100,
                "uri": "s3://x/run/checkpoints/step-00000100",
                "time": "2026-11-22T23:00:00Z",
            }
        ],
    )
    job, d = step(job, config, launcher=pj, run=run, now=T0 + timedelta(hours=1))
    st = job.status
    assert st is not None and st.phase is Phase.RUNNING
    assert st.progress is not None and (st.progress.step, st.progress.total_steps) == (120, 900)
    assert st.metrics is not None and st.metrics.train_loss == 1.84 and st.metrics.eval_loss == 1.91
    assert [c.step for c in st.checkpoints] == [100]
    assert types(d) == ["Started", "Checkpoint"]
    # the same observation again adds nothing to the timeline
    _, d2 = step(job, config, launcher=pj, run=run, now=T0 + timedelta(hours=1, minutes=1))
    assert d2.events == [] and d2.actions == []


def test_suspend_and_resume_by_user(config: OperatorConfig) -> None:
    job, pj = running_job(config)
    job, _ = step(job, config, launcher=pj)
    suspended_spec = FineTuneJob.model_validate(
        {
            **job.model_dump(mode="json", by_alias=True, exclude_none=True),
            "spec": {**job.spec.to_dict(), "suspend": True},
        }
    )
    job, d = step(suspended_spec, config, launcher=pj, now=T0 + timedelta(minutes=30))
    assert kinds(d) == [ActionKind.SUSPEND_LAUNCHER]
    assert job.status is not None and job.status.phase is Phase.SUSPENDED
    assert job.status.run_seconds == 1800 and job.status.running_since is None
    pj_suspended = {
        **pj,
        "spec": {**pj["spec"], "runPolicy": {**pj["spec"]["runPolicy"], "suspend": True}},
        "status": {"conditions": [{"type": "Suspended", "status": "True"}]},
    }
    job, d = step(job, config, launcher=pj_suspended, now=T0 + timedelta(hours=2))
    assert d.actions == []  # stays suspended; no duplicate suspend
    resumed_spec = FineTuneJob.model_validate(
        {
            **job.model_dump(mode="json", by_alias=True, exclude_none=True),
            "spec": {**job.spec.to_dict(), "suspend": False},
        }
    )
    job, d = step(resumed_spec, config, launcher=pj_suspended, now=T0 + timedelta(hours=2))
    assert kinds(d) == [ActionKind.RESUME_LAUNCHER]
    assert job.status is not None and job.status.phase is Phase.RUNNING
    assert d.events[-1]["reason"] == "ResumedByUser"


@pytest.mark.parametrize("exit_code", [exitcodes.PREEMPTED, None])
def test_a_launcher_failed_by_the_suspension_is_replaced_by_a_suspended_next_attempt(
    config: OperatorConfig, exit_code: int | None
) -> None:
    """The real training operator (restartPolicy Never, backoffLimit 0) marks a PyTorchJob
    Failed when its SIGTERMed trainer exits non-zero before the pods are deleted, and never
    runs a Failed job again: the next attempt is created suspended, resumed on unsuspend, and
    no preemption is counted."""
    job, pj = running_job(config)
    job, _ = step(job, config, launcher=pj, run=RunState(state="running", step=5))
    suspend = FineTuneJob.model_validate(
        {
            **job.model_dump(mode="json", by_alias=True, exclude_none=True),
            "spec": {**job.spec.to_dict(), "suspend": True},
        }
    )
    job, d = step(suspend, config, launcher=pj)
    assert kinds(d) == [ActionKind.SUSPEND_LAUNCHER]
    failed = {
        **pj,
        "spec": {**pj["spec"], "runPolicy": {**pj["spec"]["runPolicy"], "suspend": True}},
        "status": {"conditions": [{"type": "Failed", "status": "True"}]},
    }
    run = RunState(
        state="preempted" if exit_code else "running",
        step=6,
        checkpoints=[{"step": 6, "uri": "u"}],
        exit_code=exit_code,
    )
    job, d = step(job, config, launcher=failed, run=run)
    assert kinds(d) == [
        ActionKind.DELETE_LAUNCHER,
        ActionKind.CREATE_CONFIG_MAP,
        ActionKind.CREATE_LAUNCHER,
    ]
    new = d.actions[2].body
    assert new is not None and new["metadata"]["name"].endswith("-2")
    assert new["spec"]["runPolicy"]["suspend"] is True
    st = job.status
    assert st is not None and st.phase is Phase.SUSPENDED
    assert (st.preemptions, st.failures, st.attempt) == (0, 0, 2)
    resume = FineTuneJob.model_validate(
        {
            **job.model_dump(mode="json", by_alias=True, exclude_none=True),
            "spec": {**job.spec.to_dict(), "suspend": False},
        }
    )
    fresh = {**new, "status": {"conditions": [{"type": "Suspended", "status": "True"}]}}
    job, d = step(resume, config, launcher=fresh, run=run)
    assert kinds(d) == [ActionKind.RESUME_LAUNCHER]
    assert job.status is not None and job.status.phase is Phase.RUNNING
    assert job.status.preemptions == 0


def test_a_launcher_that_ran_is_not_unsuspended_the_next_attempt_resumes(
    config: OperatorConfig,
) -> None:
    """Unsuspending a PyTorchJob whose pods ran lets the training operator count the
    SIGTERMed pod (still terminating) as a failed replica and fail the job for good: the
    resume creates the next attempt instead, and counts no preemption."""
    job, pj = running_job(config)
    job, _ = step(job, config, launcher=pj, run=RunState(state="running", step=5))
    suspend = FineTuneJob.model_validate(
        {
            **job.model_dump(mode="json", by_alias=True, exclude_none=True),
            "spec": {**job.spec.to_dict(), "suspend": True},
        }
    )
    job, _ = step(suspend, config, launcher=pj)
    ran = {
        **pj,
        "spec": {**pj["spec"], "runPolicy": {**pj["spec"]["runPolicy"], "suspend": True}},
        "status": {
            "conditions": [
                {"type": "Created", "status": "True"},
                {"type": "Running", "status": "False"},
                {"type": "Suspended", "status": "True"},
            ]
        },
    }
    job, d = step(job, config, launcher=ran)
    assert d.actions == [] and job.status is not None and job.status.phase is Phase.SUSPENDED
    resume = FineTuneJob.model_validate(
        {
            **job.model_dump(mode="json", by_alias=True, exclude_none=True),
            "spec": {**job.spec.to_dict(), "suspend": False},
        }
    )
    job, d = step(resume, config, launcher=ran)
    assert kinds(d) == [
        ActionKind.DELETE_LAUNCHER,
        ActionKind.CREATE_CONFIG_MAP,
        ActionKind.CREATE_LAUNCHER,
    ]
    new = d.actions[2].body
    # created suspended: it starts once attempt 1's pods are gone, never beside them
    assert new is not None and new["spec"]["runPolicy"]["suspend"] is True
    st = job.status
    assert st is not None and st.phase is Phase.RUNNING
    assert (st.attempt, st.preemptions) == (2, 0)
    assert d.events[-1]["reason"] == "ResumedByUser"
    assert "attempt 2 resumes from" in d.events[-1]["message"]
    waiting = {**new, "status": {"conditions": [{"type": "Suspended", "status": "True"}]}}
    old_name = pj["metadata"]["name"]
    job, d = step(job, config, launcher=waiting, previous_attempts=(old_name,))
    assert d.actions == [] and d.events == []
    assert job.status is not None and old_name in (job.status.message or "")
    job, d = step(job, config, launcher=waiting)
    assert kinds(d) == [ActionKind.RESUME_LAUNCHER] and d.events == []


def test_a_trainjob_whose_trainer_ran_is_replaced_on_resume_not_unsuspended(
    config: OperatorConfig,
) -> None:
    """Trainer keeps no Running condition on a TrainJob, and unsuspending it makes its Job
    start a new pod while the SIGTERMed one may still write its checkpoint (and the new
    trainer session read as a lost node). A TrainJob whose trainer wrote a session is
    replaced on resume, like a PyTorchJob that ran: no preemption."""
    tj = TrainJobLauncher()
    job, d = step(make_job(), config, launcher_kind=tj)
    body = next(a.body for a in d.actions if a.kind is ActionKind.CREATE_LAUNCHER)
    assert body is not None
    name = body["metadata"]["name"]
    running = {**body, "status": {"jobsStatus": [{"name": "node", "active": 1, "ready": 1}]}}
    run = RunState(state="running", step=5, session="s1", pod=f"{name}-node-0-0-abcde")
    job, _ = step(job, config, launcher=running, run=run, launcher_kind=tj)
    assert job.status is not None and job.status.trainer_session == f"{name}/s1"
    suspend = FineTuneJob.model_validate(
        {
            **job.model_dump(mode="json", by_alias=True, exclude_none=True),
            "spec": {**job.spec.to_dict(), "suspend": True},
        }
    )
    job, d = step(suspend, config, launcher=running, launcher_kind=tj)
    assert kinds(d) == [ActionKind.SUSPEND_LAUNCHER]
    suspended = {
        **body,
        "spec": {**body["spec"], "suspend": True},
        "status": {"conditions": [{"type": "Suspended", "status": "True"}]},
    }
    resume = FineTuneJob.model_validate(
        {
            **job.model_dump(mode="json", by_alias=True, exclude_none=True),
            "spec": {**job.spec.to_dict(), "suspend": False},
        }
    )
    job, d = step(resume, config, launcher=suspended, launcher_kind=tj)
    assert kinds(d) == [
        ActionKind.DELETE_LAUNCHER,
        ActionKind.CREATE_CONFIG_MAP,
        ActionKind.CREATE_LAUNCHER,
    ]
    new = d.actions[2].body
    assert new is not None and new["spec"]["suspend"] is True
    assert job.status is not None and (job.status.attempt, job.status.preemptions) == (2, 0)


def test_preempted_attempt_resumes_as_a_new_attempt(config: OperatorConfig) -> None:
    job, pj = running_job(config)
    job, _ = step(
        job,
        config,
        launcher=pj,
        run=RunState(state="running", step=50, checkpoints=[{"step": 40, "uri": "u"}]),
    )
    failed = {
        **pj,
        "status": {
            "conditions": [{"type": "Failed", "status": "True", "message": "Master failed"}]
        },
    }
    run = RunState(
        state="preempted",
        step=57,
        checkpoints=[{"step": 40, "uri": "u"}, {"step": 57, "uri": "v"}],
        exit_code=exitcodes.PREEMPTED,
    )
    job, d = step(job, config, launcher=failed, run=run)
    assert kinds(d) == [
        ActionKind.DELETE_LAUNCHER,
        ActionKind.CREATE_CONFIG_MAP,
        ActionKind.CREATE_LAUNCHER,
    ]
    assert d.actions[0].name == pj["metadata"]["name"]
    new = d.actions[2].body
    assert new is not None and new["metadata"]["name"].endswith("-2")
    st = job.status
    assert st is not None and st.preemptions == 1 and st.attempt == 2 and st.phase is Phase.RUNNING
    assert "resumes from step 57" in d.events[-1]["message"]


def test_a_preemption_the_trainer_stated_but_did_not_code_is_not_called_a_crash(
    config: OperatorConfig,
) -> None:
    """Found through a TrainJob on a reclaimed node: the trainer wrote state "preempted"
    and its checkpoint, the launcher failed before its exit code was read; the timeline
    said "trainer crashed (exit code None)"."""
    job, pj = running_job(config)
    job, _ = step(job, config, launcher=pj, run=RunState(state="running", step=9))
    failed = {**pj, "status": {"conditions": [{"type": "Failed", "status": "True"}]}}
    run = RunState(state="preempted", step=12, checkpoints=[{"step": 12, "uri": "u"}])
    job, d = step(job, config, launcher=failed, run=run)
    (preempted,) = [e for e in d.events if e["type"] == "Preempted"]
    assert "preempted: checkpointed and stopped" in preempted["message"], preempted
    assert "crashed" not in preempted["message"]
    assert job.status is not None and job.status.preemptions == 1


def test_a_pod_replaced_in_place_counts_one_preemption(config: OperatorConfig) -> None:
    """A node lost: the Kubeflow controller recreates the pod under the same PyTorchJob (no
    Failed condition); the new trainer session of that job's pod is one preemption."""
    job, pj = running_job(config)
    name = pj["metadata"]["name"]

    def run(session: str, pod: str, step: int, resumed: int | None = None) -> RunState:
        return RunState(state="running", step=step, session=session, pod=pod, resumed_from=resumed)

    # the previous attempt's progress.json (another pod) is not this attempt's session
    job, d = step(job, config, launcher=pj, run=run("old", "other-1-master-0", 3))
    assert job.status is not None and job.status.trainer_session is None
    job, d = step(job, config, launcher=pj, run=run("s1", f"{name}-master-0", 5))
    assert job.status is not None and job.status.trainer_session == f"{name}/s1"
    assert job.status.preemptions == 0 and "Preempted" not in types(d)
    job, d = step(job, config, launcher=pj, run=run("s1", f"{name}-master-0", 9))
    assert job.status is not None and job.status.preemptions == 0
    job, d = step(job, config, launcher=pj, run=run("s2", f"{name}-master-0", 10, resumed=10))
    assert job.status is not None and job.status.preemptions == 1 and job.status.attempt == 1
    preempted = [e for e in d.events if e["type"] == "Preempted"]
    assert len(preempted) == 1 and preempted[0]["reason"] == "NodeReclaimed"
    assert "pod was replaced" in preempted[0]["message"]
    assert types(d)[-2:] == ["Preempted", "Resumed"]
    assert "resumes from step 10" in d.events[-1]["message"]
    job, d = step(job, config, launcher=pj, run=run("s2", f"{name}-master-0", 12, resumed=10))
    assert job.status is not None and job.status.preemptions == 1


def test_a_trainer_killed_again_and_again_without_progress_is_a_failure_not_a_preemption(
    config: OperatorConfig,
) -> None:
    """OOM-killed (no exit code, no word) before a single step since it resumed: counted
    towards maxFailures, so that it is not retried until maxRuntime burns the GPUs."""
    config = config.model_copy(update={"max_failures": 1})
    job, pj = running_job(config)
    name = pj["metadata"]["name"]
    failed = {**pj, "status": {"conditions": [{"type": "Failed", "status": "True"}]}}
    stuck = RunState(
        state="running", step=10, session="s1", pod=f"{name}-master-0", resumed_from=10
    )
    job, d = step(job, config, launcher=failed, run=stuck)
    st = job.status
    assert st is not None and (st.failures, st.preemptions, st.attempt) == (1, 0, 2)
    assert "made no progress since step 10" in d.events[-2]["message"] + d.events[-1]["message"]
    new = next(a.body for a in d.actions if a.kind is ActionKind.CREATE_LAUNCHER)
    assert new is not None
    failed2 = {**new, "status": {"conditions": [{"type": "Failed", "status": "True"}]}}
    stuck2 = RunState(
        state="running", step=10, session="s2", pod=f"{new['metadata']['name']}-master-0",
        resumed_from=10,
    )  # fmt: skip
    job, d = step(job, config, launcher=failed2, run=stuck2)
    assert job.status is not None and job.status.phase is Phase.FAILED
    assert next(c for c in job.status.conditions if c.type == "Failed").reason == (
        "TooManyFailures"
    )


def _exit(pod: str, code: int, reason: str = "Error", **kw: Any) -> PodExit:
    return PodExit(pod=pod, container="pytorch", exit_code=code, reason=reason, **kw)


def test_a_worker_oom_killed_is_a_failure_even_when_its_survivors_say_preempted(
    config: OperatorConfig,
) -> None:
    """Worker 1 is OOM-killed; the training operator then stops the master, whose trainer
    checkpoints on SIGTERM and writes exit 85 ("preempted") to progress.json. The cluster's
    record of the worker is the cause: a failure counted towards maxFailures, said in the
    status message, the timeline and its Event, never a preemption (which has no cap)."""
    config = config.model_copy(update={"max_failures": 1})
    job, pj = running_job(config, **{"spec.resources.nodes": 3})
    name = pj["metadata"]["name"]
    log_uri = f"s3://b/run/logs/attempt-1/{name}-worker-1.log"
    exits = (
        _exit(f"{name}-worker-1", 137, "OOMKilled", finished_at="2026-11-22T22:05:00Z",
              log_uri=log_uri),
        _exit(f"{name}-worker-0", 1, message="RuntimeError: NCCL peer lost",
              finished_at="2026-11-22T22:05:03Z"),
        # the master, stopped by the training operator after the worker failed
        _exit(f"{name}-master-0", exitcodes.PREEMPTED, stopped_by="Deleted"),
    )  # fmt: skip
    failed = {**pj, "status": {"conditions": [{"type": "Failed", "status": "True"}]}}
    run = RunState(
        state="preempted", step=30, exit_code=exitcodes.PREEMPTED,
        checkpoints=[{"step": 30, "uri": "u"}],
    )  # fmt: skip
    job, d = step(job, config, launcher=failed, run=run, pod_exits=exits)
    st = job.status
    assert st is not None and (st.failures, st.preemptions, st.attempt) == (1, 0, 2)
    crashed = next(e for e in d.events if e["type"] == "Crashed")
    assert crashed["warning"] is True
    assert "worker-1 OOMKilled (exit 137); also failed: worker-0 (exit 1)" in crashed["message"]
    assert log_uri in crashed["message"]
    assert st.message is not None and "worker-1 OOMKilled (exit 137)" in st.message
    assert "Preempted" not in types(d)
    # the same again: over maxFailures, Failed with the cause
    new = next(a.body for a in d.actions if a.kind is ActionKind.CREATE_LAUNCHER)
    assert new is not None
    name2 = new["metadata"]["name"]
    failed2 = {**new, "status": {"conditions": [{"type": "Failed", "status": "True"}]}}
    job, d = step(job, config, launcher=failed2, run=run,
                  pod_exits=(_exit(f"{name2}-worker-1", 137, "OOMKilled"),))  # fmt: skip
    st = job.status
    assert st is not None and st.phase is Phase.FAILED
    cond = next(c for c in st.conditions if c.type == "Failed")
    assert cond.reason == "TooManyFailures" and "worker-1 OOMKilled (exit 137)" in cond.message
    assert d.events[-1]["type"] == "Failed" and "worker-1 OOMKilled" in d.events[-1]["message"]


def test_a_crash_says_the_last_line_of_the_termination_message(config: OperatorConfig) -> None:
    job, pj = running_job(config)
    name = pj["metadata"]["name"]
    failed = {**pj, "status": {"conditions": [{"type": "Failed", "status": "True"}]}}
    message = (
        "Traceback (most recent call last):\n  ...\nValueError: Target modules {'x'} not found\n"
    )
    job, _ = step(job, config, launcher=failed,
                  pod_exits=(_exit(f"{name}-master-0", 1, message=message),))  # fmt: skip
    st = job.status
    assert st is not None and st.failures == 1 and st.preemptions == 0
    assert st.message is not None
    assert "master-0 exited 1: ValueError: Target modules {'x'} not found" in st.message
    assert "Traceback" not in st.message
    # no message at all: the kubelet's reason
    job2, pj2 = running_job(config)
    failed2 = {**pj2, "status": {"conditions": [{"type": "Failed", "status": "True"}]}}
    name2 = pj2["metadata"]["name"]
    job2, _ = step(job2, config, launcher=failed2,
                   pod_exits=(_exit(f"{name2}-master-0", 139, "Error"),))  # fmt: skip
    assert job2.status is not None and job2.status.failures == 1
    assert "master-0 killed by signal 11 (exit 139, Error)" in (job2.status.message or "")
    # the kubelet's log tail (FallbackToLogsOnError) after torchrun's report: its last words
    job3, pj3 = running_job(config)
    failed3 = {**pj3, "status": {"conditions": [{"type": "Failed", "status": "True"}]}}
    tail = "  traceback : Signal 9 (SIGKILL) received by PID 2207\n=====================\n\n"
    worker = _exit(f"{pj3['metadata']['name']}-worker-0", 1, message=tail)
    job3, _ = step(job3, config, launcher=failed3, pod_exits=(worker,))
    assert job3.status is not None and job3.status.message is not None
    assert "worker-0 exited 1: traceback : Signal 9 (SIGKILL) received by PID 2207" in (
        job3.status.message
    )


def test_a_long_termination_message_is_bounded(config: OperatorConfig) -> None:
    job, pj = running_job(config)
    name = pj["metadata"]["name"]
    failed = {**pj, "status": {"conditions": [{"type": "Failed", "status": "True"}]}}
    job, d = step(job, config, launcher=failed,
                  pod_exits=(_exit(f"{name}-master-0", 1, message="E" * 5000),))  # fmt: skip
    st = job.status
    assert st is not None and st.message is not None and len(st.message) <= 1024
    assert all(len(e["message"]) <= 1024 for e in d.events)


def test_pod_exit_65_is_bad_input_and_not_retried(config: OperatorConfig) -> None:
    job, pj = running_job(config)
    name = pj["metadata"]["name"]
    failed = {**pj, "status": {"conditions": [{"type": "Failed", "status": "True"}]}}
    job, _ = step(job, config, launcher=failed, pod_exits=(
        _exit(f"{name}-master-0", exitcodes.BAD_INPUT, message="train.jsonl:3: empty answer"),
    ))  # fmt: skip
    st = job.status
    assert st is not None and st.phase is Phase.FAILED and st.failures == 0
    cond = next(c for c in st.conditions if c.type == "Failed")
    assert cond.reason == "BadData" and cond.message == "train.jsonl:3: empty answer"


def test_an_evicted_pod_is_a_preemption_and_says_who_stopped_it(config: OperatorConfig) -> None:
    """The node was drained (the eviction API marks the pod DisruptionTarget): the trainer
    checkpointed on SIGTERM; a preemption, not a failure, whatever the exit code."""
    job, pj = running_job(config)
    name = pj["metadata"]["name"]
    failed = {**pj, "status": {"conditions": [{"type": "Failed", "status": "True"}]}}
    run = RunState(state="preempted", step=12, exit_code=exitcodes.PREEMPTED,
                   checkpoints=[{"step": 12, "uri": "u"}])  # fmt: skip
    exits = (_exit(f"{name}-master-0", 143, stopped_by="EvictionByEvictionAPI"),)
    job, d = step(job, config, launcher=failed, run=run, pod_exits=exits)
    st = job.status
    assert st is not None and (st.preemptions, st.failures, st.attempt) == (1, 0, 2)
    preempted = next(e for e in d.events if e["type"] == "Preempted")
    assert (
        "master-0 stopped by the cluster (EvictionByEvictionAPI, exit 143)"
        in (preempted["message"])
    )


def test_a_signal_no_eviction_explains_is_a_failure(config: OperatorConfig) -> None:
    """SIGKILLed (exit 137) without OOMKilled, with no eviction or deletion recorded: the
    cluster did not stop it, so it is not a preemption."""
    job, pj = running_job(config)
    name = pj["metadata"]["name"]
    failed = {**pj, "status": {"conditions": [{"type": "Failed", "status": "True"}]}}
    job, _ = step(job, config, launcher=failed, run=RunState(state="running", step=12),
                  pod_exits=(_exit(f"{name}-master-0", 137),))  # fmt: skip
    st = job.status
    assert st is not None and (st.preemptions, st.failures) == (0, 1)


def test_another_attempts_pods_are_not_this_attempts_cause(config: OperatorConfig) -> None:
    job, pj = running_job(config)
    failed = {**pj, "status": {"conditions": [{"type": "Failed", "status": "True"}]}}
    job, _ = step(job, config, launcher=failed, run=RunState(state="running", step=12),
                  pod_exits=(_exit("someone-else-1-master-0", 137, "OOMKilled"),))  # fmt: skip
    st = job.status
    assert st is not None and (st.preemptions, st.failures) == (1, 0)  # as without pods


def test_killed_trainer_counts_as_reclaimed_node(config: OperatorConfig) -> None:
    job, pj = running_job(config)
    failed = {**pj, "status": {"conditions": [{"type": "Failed", "status": "True"}]}}
    job, d = step(job, config, launcher=failed, run=RunState(state="running", step=12))
    assert job.status is not None and job.status.preemptions == 1 and job.status.attempt == 2
    assert any(e["reason"] == "NodeReclaimed" for e in d.events)


def test_bad_data_fails_with_the_trainers_message(config: OperatorConfig) -> None:
    job, pj = running_job(config)
    failed = {**pj, "status": {"conditions": [{"type": "Failed", "status": "True"}]}}
    message = "train.jsonl:17: assistant answer is empty"
    job, d = step(
        job,
        config,
        launcher=failed,
        run=RunState(state="failed", message=message, exit_code=exitcodes.BAD_INPUT),
    )
    st = job.status
    assert st is not None and st.phase is Phase.FAILED
    cond = next(c for c in st.conditions if c.type == "Failed")
    assert cond.reason == "BadData" and cond.message == message
    assert d.actions == []


def test_crashes_are_retried_then_fail(config: OperatorConfig) -> None:
    job, pj = running_job(config)
    for attempt in range(1, config.max_failures + 2):
        failed = {**pj, "status": {"conditions": [{"type": "Failed", "status": "True"}]}}
        job, d = step(
            job,
            config,
            launcher=failed,
            run=RunState(state="failed", message="CUDA error", exit_code=1),
        )
        assert job.status is not None
        if attempt <= config.max_failures:
            assert job.status.phase is Phase.RUNNING and job.status.failures == attempt
            pj = launched(d, "Running")
        else:
            assert job.status.phase is Phase.FAILED
            assert (
                next(c for c in job.status.conditions if c.type == "Failed").reason
                == "TooManyFailures"
            )


def test_success_verifies_artifacts(config: OperatorConfig) -> None:
    job, pj = running_job(config)
    done = {**pj, "status": {"conditions": [{"type": "Succeeded", "status": "True"}]}}
    exporting, d = step(
        job,
        config,
        launcher=done,
        run=RunState(state="succeeded", step=60, total_steps=60, percent=100),
    )
    assert (
        d.needs_artifacts
        and exporting.status is not None
        and exporting.status.phase is Phase.EXPORTING
    )
    art = {"name": "final", "uri": "s3://a/final", "sizeBytes": 10, "sha256": "0" * 64}
    job2, d = step(job, config, launcher=done, artifacts=ArtifactCheck(artifacts=[art]))
    assert job2.status is not None and job2.status.phase is Phase.SUCCEEDED
    assert job2.status.artifacts[0].name == "final" and job2.status.completion_time == T0
    assert types(d)[-2:] == ["Exported", "Succeeded"]
    job3, _ = step(
        job, config, launcher=done, artifacts=ArtifactCheck(problem="manifest.json is missing")
    )
    assert job3.status is not None and job3.status.phase is Phase.FAILED


def test_max_runtime_counts_all_attempts(config: OperatorConfig) -> None:
    job, pj = running_job(config, **{"spec.scheduling.maxRuntime": "1h"})
    job, d = step(job, config, launcher=pj)  # its pods run from T0
    job, d = step(job, config, launcher=pj, now=T0 + timedelta(minutes=61))
    assert kinds(d) == [ActionKind.DELETE_LAUNCHER]
    assert job.status is not None and job.status.phase is Phase.FAILED
    assert (
        next(c for c in job.status.conditions if c.type == "Failed").reason == "MaxRuntimeExceeded"
    )


def test_kueue_job_waits_for_kueue(config: OperatorConfig) -> None:
    job, d = step(
        make_job(edits={"spec.scheduling.queueName": "team-a", "spec.scheduling.pool": None}),
        config,
    )
    body = d.actions[1].body
    assert body is not None and body["spec"]["runPolicy"]["suspend"] is True
    assert body["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert (
        job.status is not None
        and job.status.phase is Phase.QUEUED
        and job.status.start_time is None
    )
    pj = launched(d, "Created", "Suspended", suspend=True)
    job, d = step(job, config, launcher=pj)
    assert d.actions == [] and job.status is not None and job.status.phase is Phase.QUEUED
    # Kueue admits: unsuspends the PyTorchJob
    admitted = {
        **pj,
        "spec": {**pj["spec"], "runPolicy": {"suspend": False}},
        "status": {"conditions": [{"type": "Running", "status": "True"}]},
    }
    job, d = step(job, config, launcher=admitted)
    assert d.actions == []
    assert (
        job.status is not None
        and job.status.phase is Phase.RUNNING
        and job.status.start_time is not None
    )
    # Kueue preempts it (a higher-priority Workload): it suspends the PyTorchJob. Not fought:
    # Queued, one preemption, and the next attempt waits for Kueue, suspended, same queue.
    evicted = {
        **admitted,
        "spec": {**admitted["spec"], "runPolicy": {"suspend": True}},
        "status": {
            "conditions": [
                {"type": "Running", "status": "False"},
                {"type": "Suspended", "status": "True"},
            ]
        },
    }
    job, d = step(job, config, launcher=evicted, now=T0 + timedelta(minutes=20))
    assert ActionKind.RESUME_LAUNCHER not in kinds(d)
    assert kinds(d) == [
        ActionKind.DELETE_LAUNCHER,
        ActionKind.CREATE_CONFIG_MAP,
        ActionKind.CREATE_LAUNCHER,
    ]
    new = d.actions[2].body
    assert new is not None and new["spec"]["runPolicy"]["suspend"] is True
    assert new["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    st = job.status
    assert st is not None and st.phase is Phase.QUEUED
    assert (st.preemptions, st.attempt) == (1, 2) and st.running_since is None
    assert d.events[-1]["reason"] == "PreemptedByKueue"
    waiting = launched(d, "Created", "Suspended", suspend=True)
    job, d = step(job, config, launcher=waiting, now=T0 + timedelta(minutes=30))
    assert d.actions == [] and job.status is not None and job.status.phase is Phase.QUEUED
    assert job.status.preemptions == 1


def test_kueue_suspending_a_running_trainjob_is_a_preemption_not_a_fight(
    config: OperatorConfig,
) -> None:
    """Trainer records no Running condition on a TrainJob: that it ran is the job's own
    Running condition, so a TrainJob Kueue suspends is not unsuspended behind its back."""
    tj_launcher = TrainJobLauncher()
    job = make_job(edits={"spec.scheduling.queueName": "team-a", "spec.scheduling.pool": None})
    job, d = step(job, config, launcher_kind=tj_launcher)
    body = d.actions[1].body
    assert body is not None and body["kind"] == "TrainJob" and body["spec"]["suspend"] is True
    admitted = {**body, "spec": {**body["spec"], "suspend": False},
                "status": {"jobsStatus": [{"name": "node", "active": 1, "ready": 1}]}}  # fmt: skip
    job, d = step(job, config, launcher=admitted, launcher_kind=tj_launcher)
    assert job.status is not None and job.status.phase is Phase.RUNNING
    job, d = step(job, config, launcher=admitted, launcher_kind=tj_launcher)
    evicted = {
        **admitted,
        "spec": {**admitted["spec"], "suspend": True},
        "status": {"conditions": [{"type": "Suspended", "status": "True"}]},
    }
    job, d = step(job, config, launcher=evicted, launcher_kind=tj_launcher)
    assert ActionKind.RESUME_LAUNCHER not in kinds(d)
    assert kinds(d) == [
        ActionKind.DELETE_LAUNCHER,
        ActionKind.CREATE_CONFIG_MAP,
        ActionKind.CREATE_LAUNCHER,
    ]
    assert job.status is not None and job.status.phase is Phase.QUEUED
    assert d.events[-1]["reason"] == "PreemptedByKueue"


def test_deleted_launcher_is_recreated_for_the_same_attempt(config: OperatorConfig) -> None:
    job, pj = running_job(config)
    job, _ = step(job, config, launcher=pj)
    job, d = step(job, config, launcher=None)
    assert kinds(d) == [ActionKind.CREATE_CONFIG_MAP, ActionKind.CREATE_LAUNCHER]
    body = d.actions[1].body
    assert body is not None and body["metadata"]["name"] == pj["metadata"]["name"]
    assert job.status is not None and job.status.attempt == 1


def test_pool_window_queue_drain_and_reopen(config: OperatorConfig) -> None:
    closed = Admission(False, Reason.WAITING_FOR_POOL_WINDOW, "night-a100 opens at 22:00 +08:00")
    job, d = step(make_job(), config, admission=closed)
    assert d.actions == [] and job.status is not None and job.status.phase is Phase.QUEUED
    assert types(d) == ["Validated", "Queued"]
    job, d = step(job, config, admission=closed)
    assert d.events == []  # still queued for the same reason: no new timeline entry
    job, d = step(job, config, admission=Admission(True, Reason.ADMITTED, "open"))
    assert job.status is not None and job.status.phase is Phase.RUNNING and "Admitted" in types(d)
    pj = launched(d, "Running")
    drain = Admission(
        True, Reason.ADMITTED, "night-a100 closes at 08:00", evict=Reason.WINDOW_CLOSING
    )
    job, d = step(job, config, launcher=pj, admission=drain)
    assert kinds(d) == [ActionKind.SUSPEND_LAUNCHER]
    assert job.status is not None and job.status.phase is Phase.SUSPENDED
    suspended = {**pj, "spec": {**pj["spec"], "runPolicy": {"suspend": True}}}
    job, d = step(
        job,
        config,
        launcher=suspended,
        admission=Admission(False, Reason.WAITING_FOR_POOL_WINDOW, "closed"),
    )
    assert d.actions == []
    job, d = step(
        job, config, launcher=suspended, admission=Admission(True, Reason.ADMITTED, "open")
    )
    # it ran before the drain: the next attempt resumes from the checkpoint
    assert kinds(d) == [
        ActionKind.DELETE_LAUNCHER,
        ActionKind.CREATE_CONFIG_MAP,
        ActionKind.CREATE_LAUNCHER,
    ]
    assert d.events[-1]["reason"] == "WindowOpened"
    assert job.status is not None and (job.status.attempt, job.status.preemptions) == (2, 0)


def test_restarting_launcher_counts_one_preemption(config: OperatorConfig) -> None:
    job, pj = running_job(config)
    restarting = {
        **pj,
        "status": {"conditions": [{"type": "Restarting", "status": "True", "message": "pod lost"}]},
    }
    job, d = step(job, config, launcher=restarting)
    job, d2 = step(job, config, launcher=restarting)
    assert job.status is not None and job.status.preemptions == 1
    assert "Preempted" in types(d) and d2.events == []


def test_timeline_is_bounded() -> None:
    status: dict[str, Any] = {}
    for i in range(250):
        add_timeline(status, T0, "Checkpoint", "CheckpointSaved", f"checkpoint {i}")
    timeline = status["timeline"]
    assert len(timeline) == TIMELINE_KEEP_FIRST + TIMELINE_KEEP_LAST
    assert timeline[0]["message"] == "checkpoint 0" and timeline[-1]["message"] == "checkpoint 249"


def test_model_size_hints_and_estimate(config: OperatorConfig) -> None:
    assert model_params_hint("s3://models/qwen2.5-1.5b/") == 1_500_000_000
    assert model_params_hint("pvc://models/llama-3.2-3b") == 3_000_000_000
    assert model_params_hint("s3://models/mystery/") is None
    job = make_job(edits={"spec.hyperparameters.maxSteps": 1000})
    est = pre_run_estimate(job, None, config)
    assert est is not None and est["gpuType"] == "a100" and est["trainTokens"] > 0
    assert pre_run_estimate(make_job(), None, config) is None  # epochs: the trainer counts


def test_cancel_running_job_deletes_the_launcher_and_keeps_the_record(
    config: OperatorConfig,
) -> None:
    job, pj = running_job(config)
    assert job.status is not None
    assert job.status.output_uri == (f"s3://artifacts/team-a/team-a/poetry-sft/{job.metadata.uid}/")
    job, _ = step(
        job,
        config,
        launcher=pj,
        run=RunState(state="running", step=20, checkpoints=[{"step": 20, "uri": "s3://c/20"}]),
        now=T0 + timedelta(minutes=5),
    )
    cancelled = FineTuneJob.model_validate(
        {
            **job.model_dump(mode="json", by_alias=True, exclude_none=True),
            "spec": {**job.spec.to_dict(), "cancelled": True},
        }
    )
    job, d = step(cancelled, config, launcher=pj, now=T0 + timedelta(minutes=10))
    assert [(a.kind, a.name) for a in d.actions] == [
        (ActionKind.DELETE_LAUNCHER, pj["metadata"]["name"])
    ]
    st = job.status
    assert st is not None and st.phase is Phase.CANCELLED
    assert st.message is not None and "step 20" in st.message and "kept" in st.message
    assert st.completion_time is not None and st.running_since is None
    assert st.run_seconds == 300.0  # from when its pods were seen running (T0 + 5 min)
    assert [c.step for c in st.checkpoints] == [20]  # the record is kept
    running = next(c for c in st.conditions if c.type == "Running")
    assert (running.status, running.reason) == ("False", "Cancelled")
    assert types(d) == ["Cancelled"]
    # terminal: nothing happens again, even when the launched job is still there
    job, d = step(job, config, launcher=pj, now=T0 + timedelta(minutes=11))
    assert d.actions == [] and d.events == []
    assert job.status is not None and job.status.phase is Phase.CANCELLED


def test_cancel_queued_job_launches_nothing(config: OperatorConfig) -> None:
    job, d = step(
        make_job(),
        config,
        admission=Admission(admitted=False, reason=Reason.WAITING_FOR_POOL_WINDOW, message="w"),
    )
    assert job.status is not None and job.status.phase is Phase.QUEUED
    job = make_job(edits={"spec.cancelled": True}, status=job.status.to_dict())
    job, d = step(job, config)
    assert d.actions == []
    assert job.status is not None and job.status.phase is Phase.CANCELLED
    assert job.status.start_time is None and job.status.completion_time is not None
    assert types(d) == ["Cancelled"]


def test_the_trainers_count_is_priced_with_the_operators_table_and_the_pools_gpu() -> None:
    """One estimate path: the trainer counts (estimate.json), the operator prices the count
    with its own price table and the pool's GPU type, and that reaches the final status."""
    config = OperatorConfig.model_validate(
        {
            "trainerImage": "t:1",
            "defaultOutputUri": "s3://runs/",
            "currency": "EUR",
            "prices": {"h100": 7.5},
            "throughput": {"h100": 400.0},
        }
    )
    pool = make_pool({"spec.gpuType": "h100"})
    job = make_job(edits={"spec.resources.gpuType": None, "spec.hyperparameters.maxSteps": None})
    job, d = step(job, config, pool=pool)
    pj = launched(d, "Created", "Running")
    assert job.status is not None and job.status.estimate is None  # epochs: nothing to price yet
    count = {"trainTokens": 3_000_000, "modelParams": 1_500_000_000, "devices": 8, "sampled": True}
    job, d = step(
        job, config, pool=pool, launcher=pj, run=RunState(state="running", step=5, estimate=count)
    )
    # LoRA SFT: 4 FLOPs per parameter per token, at 400 TFLOP/s per h100, 7.5 EUR an hour
    gpu_hours = 4 * 1.5e9 * 3e6 / 400e12 / 3600
    est = job.status.estimate if job.status else None
    assert est is not None
    assert (est.gpu_type, est.currency, est.train_tokens) == ("h100", "EUR", 3_000_000)
    assert est.gpu_hours == pytest.approx(gpu_hours, rel=1e-5)
    assert est.cost == pytest.approx(gpu_hours * 7.5, abs=1e-4) and est.sampled is True
    assert "Estimated" in types(d)
    done = {**pj, "status": {"conditions": [{"type": "Succeeded", "status": "True"}]}}
    art = {"name": "final", "uri": "s3://a/final", "sizeBytes": 10, "sha256": "0" * 64}
    final, _ = step(
        job,
        config,
        pool=pool,
        launcher=done,
        run=RunState(state="succeeded", step=60, total_steps=60, percent=100, estimate=count),
        artifacts=ArtifactCheck(artifacts=[art]),
    )
    assert final.status is not None and final.status.phase is Phase.SUCCEEDED
    assert final.status.estimate == est
    # without a pool GPU type the operator's defaultGpuType prices it, not the trainer
    job2, d2 = step(make_job(edits={"spec.resources.gpuType": None}), config)
    job2, _ = step(
        job2,
        config,
        launcher=launched(d2, "Created", "Running"),
        run=RunState(state="running", step=1, estimate=count),
    )
    assert job2.status is not None and job2.status.estimate is not None
    assert job2.status.estimate.gpu_type == "a100" and job2.status.estimate.currency == "EUR"


def test_a_launch_the_api_server_rejects_fails_the_job_with_its_words(
    config: OperatorConfig,
) -> None:
    """A webhook or the schema refuses the PyTorchJob (422): not silence and no retry loop,
    but Failed with the server's message in a condition, the timeline and a Warning Event."""
    job = make_job(edits={"spec.scheduling.pool": None})
    _, d = step(job, config)
    name = next(a.body for a in d.actions if a.kind is ActionKind.CREATE_LAUNCHER)["metadata"][
        "name"
    ]
    refusal = LaunchRefusal(
        422,
        "PyTorchJob",
        name,
        f'PyTorchJob.kubeflow.org "{name}" is invalid: metadata.name: Invalid value',
    )
    failed, d = step(job, config, launch_refused=refusal)
    assert d.actions == []
    st = failed.status
    assert st is not None and st.phase is Phase.FAILED and st.attempt == 0
    cond = next(c for c in st.conditions if c.type == "Failed")
    assert cond.reason == "LaunchRejected" and "is invalid: metadata.name" in cond.message
    assert st.timeline[-1].type == "Failed" and st.timeline[-1].reason == "LaunchRejected"
    assert d.events[-1]["warning"] is True and f"PyTorchJob {name} (422)" in d.events[-1]["message"]


def test_a_forbidden_launch_waits_queued_says_why_once_and_launches_when_allowed(
    config: OperatorConfig,
) -> None:
    job = make_job(edits={"spec.scheduling.pool": None})
    refusal = LaunchRefusal(
        403,
        "PyTorchJob",
        "x-1",
        "pytorchjobs.kubeflow.org is forbidden: exceeded quota: team-a, requested: count/x=1",
    )
    queued, d = step(job, config, launch_refused=refusal)
    st = queued.status
    assert d.actions == [] and st is not None and st.phase is Phase.QUEUED
    admitted = next(c for c in st.conditions if c.type == "Admitted")
    assert admitted.status == "False" and admitted.reason == "LaunchRefused"
    assert "exceeded quota" in admitted.message and st.attempt == 0
    assert types(d)[-1] == "LaunchRefused" and d.events[-1]["warning"] is True
    # refused again: the same reason is not repeated in the timeline
    again, d2 = step(queued, config, launch_refused=refusal, now=T0 + timedelta(minutes=1))
    assert d2.events == [] and again.status is not None
    assert len(again.status.timeline) == len(st.timeline)
    # the quota freed: the next reconcile launches attempt 1
    running, d3 = step(again, config, now=T0 + timedelta(minutes=2))
    assert kinds(d3) == [ActionKind.CREATE_CONFIG_MAP, ActionKind.CREATE_LAUNCHER]
    assert running.status is not None and running.status.phase is Phase.RUNNING
    assert next(c for c in running.status.conditions if c.type == "Admitted").status == "True"


# --------------------------------------------------------------------------- stalls


def _progress(name: str, step: int, session: str = "s1", **kw: Any) -> RunState:
    return RunState(state="running", step=step, session=session, pod=f"{name}-master-0", **kw)


def test_a_trainer_whose_step_stops_is_stalled_then_resumed_from_its_checkpoint(
    config: OperatorConfig,
) -> None:
    """Pods Running, progress.json's step unchanged for stallTimeoutSeconds: Stalled=True
    (when, which step), the attempt ended and the next one resumes from the checkpoint.
    It saved a checkpoint past where it started, so it is not counted as a failure. The
    measure lives in status (lastProgressTime, runningSince): an operator restart keeps it."""
    assert config.stall_timeout_seconds == 1800
    job, pj = running_job(config)
    name = pj["metadata"]["name"]
    run = _progress(name, 5, checkpoints=[{"step": 4, "uri": "u"}])
    job, d = step(job, config, launcher=pj, run=run, now=T0 + timedelta(minutes=1))
    st = job.status
    assert st is not None and st.last_progress_time == T0 + timedelta(minutes=1)
    # 29 minutes later, same step: not yet
    job, d = step(job, config, launcher=pj, run=run, now=T0 + timedelta(minutes=30))
    assert kinds(d) == [] and job.status is not None and job.status.phase is Phase.RUNNING
    assert not any(c.type == "Stalled" for c in job.status.conditions)
    job, d = step(job, config, launcher=pj, run=run, now=T0 + timedelta(minutes=32))
    assert kinds(d) == [
        ActionKind.DELETE_LAUNCHER,
        ActionKind.CREATE_CONFIG_MAP,
        ActionKind.CREATE_LAUNCHER,
    ]
    st = job.status
    assert st is not None and st.phase is Phase.RUNNING and st.attempt == 2
    assert (st.failures, st.preemptions) == (0, 0)
    stalled = next(c for c in st.conditions if c.type == "Stalled")
    assert (stalled.status, stalled.reason) == ("True", "Stalled")
    assert "no progress for 1860s" in stalled.message and "step 5" in stalled.message
    entry = next(e for e in d.events if e["type"] == "Stalled")
    assert entry["warning"] is True and "not counted as a failure" in entry["message"]
    assert "resumes from step 4" in d.events[-1]["message"]
    assert st.running_since is None  # the stalled stint is over, not billed
    # the next attempt's trainer resumes from step 4: progressing again
    new = next(a.body for a in d.actions if a.kind is ActionKind.CREATE_LAUNCHER)
    assert new is not None
    running = {**new, "status": {"conditions": [{"type": "Running", "status": "True"}]},
               "spec": {**new["spec"], "runPolicy": {**new["spec"]["runPolicy"],
                                                     "suspend": False}}}  # fmt: skip
    later = T0 + timedelta(minutes=34)
    run2 = _progress(new["metadata"]["name"], 4, session="s2", resumed_from=4)
    job, d = step(job, config, launcher=running, run=run2, now=later)
    st = job.status
    assert st is not None and st.last_progress_time == later
    stalled = next(c for c in st.conditions if c.type == "Stalled")
    assert (stalled.status, stalled.reason) == ("False", "Progressing")


def test_a_stall_that_saved_nothing_counts_towards_max_failures(config: OperatorConfig) -> None:
    config = config.model_copy(update={"max_failures": 1})
    job, pj = running_job(config)
    for attempt in (1, 2):
        name = pj["metadata"]["name"]
        run = _progress(name, 7, session=f"s{attempt}", resumed_from=7,
                        checkpoints=[{"step": 7, "uri": "u"}])  # fmt: skip
        start = T0 + timedelta(hours=attempt)
        job, d = step(job, config, launcher=pj, run=run, now=start)
        job, d = step(job, config, launcher=pj, run=run, now=start + timedelta(minutes=31))
        st = job.status
        assert st is not None
        if attempt == 1:
            assert (st.failures, st.attempt, st.phase) == (1, 2, Phase.RUNNING)
            assert "retry 1 of 1" in next(e for e in d.events if e["type"] == "Stalled")["message"]
            new = next(a.body for a in d.actions if a.kind is ActionKind.CREATE_LAUNCHER)
            assert new is not None
            pj = {**new, "status": {"conditions": [{"type": "Running", "status": "True"}]},
                  "spec": {**new["spec"], "runPolicy": {**new["spec"]["runPolicy"],
                                                        "suspend": False}}}  # fmt: skip
        else:
            assert st.phase is Phase.FAILED and st.failures == 2
            failed = next(c for c in st.conditions if c.type == "Failed")
            assert failed.reason == "TooManyFailures" and "stalled" in failed.message
            assert kinds(d) == [ActionKind.DELETE_LAUNCHER]


def test_the_stall_clock_starts_when_the_attempts_pods_run(config: OperatorConfig) -> None:
    """A new attempt loads its model first: the last step change of an earlier attempt, long
    ago, does not make it stalled; its pods' start does. Pods not running: no stall."""
    job, pj = running_job(config)
    name = pj["metadata"]["name"]
    old = T0 - timedelta(hours=5)
    doc = job.model_dump(mode="json", by_alias=True, exclude_none=True)
    doc["status"]["lastProgressTime"] = old.isoformat()
    doc["status"]["progress"] = {"step": 5}
    job = FineTuneJob.model_validate(doc)
    stale = RunState(state="running", step=5, session="old", pod="other-1-master-0")
    job, d = step(job, config, launcher=pj, run=stale, now=T0)
    assert job.status is not None and job.status.running_since == T0
    job, d = step(job, config, launcher=pj, run=stale, now=T0 + timedelta(minutes=29))
    assert kinds(d) == []
    job, d = step(job, config, launcher=pj, run=stale, now=T0 + timedelta(minutes=31))
    assert ActionKind.DELETE_LAUNCHER in kinds(d)  # the trainer never wrote: stalled
    # counted: this attempt's trainer never wrote a checkpoint
    assert job.status is not None and job.status.failures == 1
    # pods Pending for 40 minutes: not a stall (the start timeout's business, off here)
    no_start_timeout = config.model_copy(update={"start_timeout_seconds": 0})
    pending = {**pj, "status": {"conditions": [{"type": "Created", "status": "True"}]}}
    job2, _ = running_job(no_start_timeout)
    for minutes in (0, 40):
        job2, d = step(
            job2, no_start_timeout, launcher=pending, now=T0 + timedelta(minutes=minutes)
        )
        assert kinds(d) == []
        assert job2.status is not None
        assert not any(c.type == "Stalled" for c in job2.status.conditions)
    del name


@pytest.mark.parametrize("why", ["off", "exporting"])
def test_no_stall_when_turned_off_or_exporting(config: OperatorConfig, why: str) -> None:
    if why == "off":
        config = config.model_copy(update={"stall_timeout_seconds": 0})
    job, pj = running_job(config)
    name = pj["metadata"]["name"]
    run = _progress(name, 5)
    if why == "exporting":
        run = RunState(state="exporting", step=5, session="s1", pod=f"{name}-master-0")
    job, d = step(job, config, launcher=pj, run=run, now=T0)
    job, d = step(job, config, launcher=pj, run=run, now=T0 + timedelta(hours=3))
    assert kinds(d) == [] and job.status is not None
    assert not any(c.type == "Stalled" for c in job.status.conditions)
