"""The FineTuneJob state machine: from what the operator observes to what it does.

:func:`decide` is pure (STYLE §3, §5): it takes a :class:`World` — the job, its newest
launched object, what the trainer last wrote, what admission says — and returns a
:class:`Decision`: the new status, the actions to take (create, suspend, resume or
replace the launched job), and the timeline entries to publish as Events. The handlers
in :mod:`tidetune_operator.handlers` gather the world and carry the decision out, so
every path through the state machine is unit-tested without a cluster.

Phases::

    Pending ─▶ Queued ─▶ Running ⇄ Suspended
       │         │         │  ▲       (suspend: true, window closing / opening)
       │         │         ▼  │
       │         │      (preempted / node reclaimed / crash ≤ maxFailures: next attempt)
       │         │         ▼
       └────────▶┴──▶ Failed     Running ─▶ Exporting ─▶ Succeeded

    any phase that is not terminal ─▶ Cancelled   (spec.cancelled: true)

A job stays ``Pending`` while an object it names is not there yet (``WAIT_FOR_REFERENCE``);
a reference that is wrong in a way time does not fix fails it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from tidetune import exitcodes
from tidetune.api import FineTuneJob, FineTuneJobStatus, Phase, Reason
from tidetune.api.constants import ConditionType
from tidetune.api.idlepool import IdlePool
from tidetune.api.types import format_duration, parse_duration
from tidetune.contract import RunState, RunStateName, price_count
from tidetune.estimate import EstimateError, estimate_for_spec, gpu_type_for
from tidetune.layout import STATUS_METRICS
from tidetune_operator import builders
from tidetune_operator.admission import ADMIT_NOW, Admission
from tidetune_operator.config import START_RETRY_BACKOFF_MAX_SECONDS, OperatorConfig
from tidetune_operator.launchers import Launcher, LauncherPhase, LauncherState
from tidetune_operator.status import (
    add_timeline,
    condition_true,
    get_condition,
    iso,
    parse_time,
    set_condition,
)

C = ConditionType

#: Parameter counts of the builtin smoke-test models (tidetune_trainer.tiny builds them).
BUILTIN_MODEL_PARAMS = {"tiny-llama": 200_000}
_SIZE_HINT = re.compile(r"(?<![0-9a-z])(\d+(?:\.\d+)?)\s*([bm])(?![a-z])", re.IGNORECASE)


@dataclass(frozen=True)
class ArtifactCheck:
    """The verified artifact manifest (``artifacts``), or why it is not valid."""

    artifacts: list[dict[str, Any]] | None = None
    problem: str | None = None


@dataclass(frozen=True)
class LaunchRefusal:
    """The API server refused to create an object the launch needs."""

    #: its HTTP status: 400/422 invalid (for good), 403/404/429 forbidden or missing (may heal)
    code: int
    kind: str
    name: str
    message: str

    @property
    def permanent(self) -> bool:
        return self.code in (400, 422)


#: Reference problems that heal by themselves: the object is not there *yet*. GitOps
#: applies a job together with the Secret, ConfigMap or IdlePool it names, and the job may
#: be reconciled before they exist; such a job waits in ``Pending`` (``Validated=False``
#: with this reason, a message starting ``waiting:``) and is checked again with backoff.
#: Every other reference problem (a pool too small or invalid, no output location) fails it.
WAIT_FOR_REFERENCE: frozenset[Reason] = frozenset(
    {
        Reason.SECRET_NOT_FOUND,
        Reason.SECRET_KEY_MISSING,
        Reason.CONFIG_MAP_NOT_FOUND,
        Reason.POOL_NOT_FOUND,
        Reason.WORKLOAD_PRIORITY_CLASS_NOT_FOUND,
    }
)


@dataclass(frozen=True)
class PodExit:
    """How one container of an ended attempt's pod terminated, as the cluster recorded it
    (the pod's ``containerStatuses``); read before the attempt is deleted (the training
    operator keeps failed pods: see ``launchers.pytorchjob``)."""

    pod: str
    container: str
    exit_code: int
    #: the kubelet's reason: ``OOMKilled``, ``Error``, ``StartError``, ``Completed``, …
    reason: str
    #: the termination message (the trainer's last words, or with ``FallbackToLogsOnError``
    #: the log's tail when it wrote none); credentials removed by the controller
    message: str = ""
    finished_at: str = ""
    #: why the cluster stopped the pod, when it did: the pod's ``DisruptionTarget`` reason
    #: (``EvictionByEvictionAPI``, ``PreemptionByScheduler``, ``DeletionByTaintManager``,
    #: ``DeletionByPodGC``, ``TerminationByKubelet``), ``Evicted`` (node pressure), or
    #: ``Deleted`` (its deletion was requested). None: it ended by itself.
    stopped_by: str | None = None
    #: where the pod's last log lines were kept in the run location, if they were
    log_uri: str | None = None


@dataclass(frozen=True)
class World:
    job: FineTuneJob
    now: datetime
    launcher: dict[str, Any] | None = None
    #: (reason, message) for each reference that is wrong (Secret, ConfigMaps, pool)
    ref_problems: list[tuple[Reason, str]] = field(default_factory=list)
    pool: IdlePool | None = None
    admission: Admission = ADMIT_NOW
    run: RunState | None = None
    artifacts: ArtifactCheck | None = None
    #: the launch this world's last decision asked for was refused by the API server
    launch_refused: LaunchRefusal | None = None
    #: names of earlier attempts' launched jobs still there (being deleted: their pods may
    #: still be stopping and writing to the run location)
    previous_attempts: tuple[str, ...] = ()
    #: why the launched job's pods do not run yet: (reason, message) from the pods
    #: (Unschedulable with the scheduler's message, ErrImagePull, …), None when unknown
    pods_waiting: tuple[str, str] | None = None
    #: the non-zero exits of the ended launched job's pods (read when it Failed)
    pod_exits: tuple[PodExit, ...] = ()


class ActionKind(StrEnum):
    CREATE_CONFIG_MAP = "CreateConfigMap"
    CREATE_LAUNCHER = "CreateLauncher"
    SUSPEND_LAUNCHER = "SuspendLauncher"
    RESUME_LAUNCHER = "ResumeLauncher"
    DELETE_LAUNCHER = "DeleteLauncher"


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    body: dict[str, Any] | None = None
    name: str | None = None


@dataclass
class Decision:
    status: dict[str, Any]
    actions: list[Action] = field(default_factory=list)
    #: timeline entries added by this decision, each with ``warning`` for the Event type
    events: list[dict[str, Any]] = field(default_factory=list)
    #: the handler should read the artifact manifest and decide again
    needs_artifacts: bool = False
    #: the job waits for an object it refers to (:data:`WAIT_FOR_REFERENCE`): look again soon
    waiting: bool = False


# --------------------------------------------------------------------------- estimate


def model_params_hint(uri: str) -> int | None:
    """Parameters from a model URI: builtin sizes, or a size in its name (``qwen2.5-1.5b``)."""
    if uri.startswith("builtin://"):
        return BUILTIN_MODEL_PARAMS.get(uri.removeprefix("builtin://"))
    hits = _SIZE_HINT.findall(uri.rsplit("/", 2)[-2] if uri.endswith("/") else uri)
    if not hits:
        hits = _SIZE_HINT.findall(uri)
    if not hits:
        return None
    number, unit = hits[-1]
    return int(float(number) * (1e9 if unit.lower() == "b" else 1e6))


def pre_run_estimate(
    job: FineTuneJob, pool: IdlePool | None, config: OperatorConfig
) -> dict[str, Any] | None:
    """The estimate the operator can make from the spec alone, without reading any data.

    Tokens are known before the run only with ``maxSteps`` (steps × rows × sequence
    length × the packing fill); for epoch-based jobs the trainer counts them at start
    and writes ``estimate.json``, which replaces this. ``None`` when the model size is
    not known from its URI.
    """
    spec = job.spec
    params = model_params_hint(spec.base_model.uri)
    hp = spec.hyperparameters
    if params is None or hp.max_steps is None:
        return None
    devices = spec.resources.nodes * max(spec.resources.gpus_per_node, 1)
    fill = 0.95 if hp.packing else 0.6
    tokens = int(
        hp.max_steps
        * hp.batch_size
        * hp.gradient_accumulation_steps
        * devices
        * hp.max_seq_length
        * fill
    )
    gpu_type = priced_gpu_type(job, pool, config)
    try:
        result = estimate_for_spec(spec, tokens, params, gpu_type, config.estimate_tables)
    except EstimateError:
        return None
    return {**result.to_status(), "gpuType": result.device_type, "sampled": False}


def priced_gpu_type(job: FineTuneJob, pool: IdlePool | None, config: OperatorConfig) -> str:
    """The device type the job's estimate is priced on (job, then pool, then config)."""
    return gpu_type_for(
        job.spec, pool.spec.gpu_type if pool is not None else None, config.default_gpu_type
    )


# --------------------------------------------------------------------------- helpers


class _StatusWriter:
    """Accumulates one decision's status changes: phase, conditions, the bounded timeline
    (each entry also an Event), the running time, and the endings."""

    def __init__(self, status: dict[str, Any], now: datetime, generation: int | None) -> None:
        self.now = now
        self.generation = generation
        self.status: dict[str, Any] = status  # ours to change
        self.decision = Decision(status=self.status)

    @property
    def phase(self) -> Phase:
        return Phase(self.status.get("phase", Phase.PENDING))

    def set_phase(self, phase: Phase, message: str | None = None) -> None:
        self.status["phase"] = str(phase)
        if message is not None:
            self.status["message"] = message[:1024]

    def condition(self, ctype: C, value: bool | None, reason: Reason | str, message: str) -> None:
        set_condition(
            self.status, str(ctype), value, str(reason), message, self.now, self.generation
        )

    def timeline(
        self, etype: str, reason: Reason | str, message: str, warning: bool = False
    ) -> None:
        entry = add_timeline(self.status, self.now, etype, str(reason), message)
        self.decision.events.append({**entry, "warning": warning})

    def act(
        self, kind: ActionKind, body: dict[str, Any] | None = None, name: str | None = None
    ) -> None:
        self.decision.actions.append(Action(kind, body, name))

    # -- running time
    def start_stint(self) -> None:
        if not self.status.get("runningSince"):
            self.status["runningSince"] = iso(self.now)
        self.status.setdefault("startTime", iso(self.now))

    def end_stint(self) -> None:
        since = parse_time(self.status.pop("runningSince", None))
        if since is not None:
            elapsed = max(0.0, (self.now - since).total_seconds())
            self.status["runSeconds"] = round(
                float(self.status.get("runSeconds", 0.0)) + elapsed, 3
            )

    def elapsed_seconds(self) -> float:
        total = float(self.status.get("runSeconds", 0.0))
        since = parse_time(self.status.get("runningSince"))
        if since is not None:
            total += max(0.0, (self.now - since).total_seconds())
        return total

    # -- endings
    def fail(self, reason: Reason, message: str) -> None:
        self.end_stint()
        self.set_phase(Phase.FAILED, message)
        self.condition(C.FAILED, True, reason, message)
        self.condition(C.RUNNING, False, reason, "the job failed")
        self.status["completionTime"] = iso(self.now)
        self.timeline("Failed", reason, message, warning=True)

    def succeed(self, artifacts: list[dict[str, Any]]) -> None:
        self.end_stint()
        self.status["artifacts"] = artifacts
        self.set_phase(Phase.SUCCEEDED, "training finished; artifacts exported and verified")
        self.condition(C.RUNNING, False, Reason.TRAINING_COMPLETE, "training finished")
        self.condition(
            C.SUCCEEDED,
            True,
            Reason.TRAINING_COMPLETE,
            f"{len(artifacts)} artifacts exported and verified",
        )
        self.status["completionTime"] = iso(self.now)
        total = sum(int(a.get("sizeBytes", 0)) for a in artifacts)
        self.timeline(
            "Exported",
            Reason.ARTIFACTS_EXPORTED,
            f"{len(artifacts)} artifacts, {total} bytes, sha256 verified",
        )
        self.timeline("Succeeded", Reason.TRAINING_COMPLETE, "training finished")


class _Builder(_StatusWriter):
    """Accumulates one decision about a job the model accepts."""

    def __init__(self, world: World, config: OperatorConfig, launcher: Launcher) -> None:
        raw = (
            world.job.status.model_dump(mode="json", by_alias=True, exclude_none=True)
            if world.job.status
            else {}
        )  # a fresh dump
        super().__init__(raw, world.now, world.job.metadata.generation)
        self.world = world
        self.job = world.job
        self.config = config
        self.launcher = launcher
        #: kept only while this decision finds the launched job's pods still not running
        #: (:func:`_start_timed_out`): any other path clears it
        self.pods_pending_since = parse_time(self.status.pop("podsPendingSince", None))


def _desired_suspend(world: World) -> Reason | None:
    """Why the job must not run now, or None."""
    if world.job.spec.suspend:
        return Reason.SUSPENDED_BY_USER
    return world.admission.evict


def _apply_run_state(b: _Builder, run: RunState) -> None:
    progress: dict[str, Any] = {
        "step": run.step,
        "epoch": round(run.epoch, 4),
        "percent": round(run.percent, 2),
        "trainedTokens": run.trained_tokens,
    }
    if run.total_steps is not None:
        progress["totalSteps"] = run.total_steps
    if run.eta:
        progress["eta"] = run.eta
    b.status["progress"] = progress
    names = {**STATUS_METRICS, **{v: v for v in STATUS_METRICS.values()}}
    metrics = {
        names[k]: float(v)
        for k, v in run.metrics.items()
        if k in names and isinstance(v, int | float) and math.isfinite(v)
    }
    if metrics:
        b.status["metrics"] = {**(b.status.get("metrics") or {}), **metrics}
    known = {int(c.get("step", -1)) for c in b.status.get("checkpoints") or []}
    checkpoints = sorted(
        (
            {
                "step": int(c["step"]),
                "uri": str(c.get("uri", "")),
                **({"time": c["time"]} if c.get("time") else {}),
            }
            for c in run.checkpoints
            if isinstance(c.get("step"), int)
        ),
        key=lambda c: c["step"],
    )
    for c in checkpoints:
        if c["step"] not in known:
            b.timeline(
                "Checkpoint", Reason.CHECKPOINT_SAVED, f"checkpoint at step {c['step']}: {c['uri']}"
            )
    if checkpoints:
        b.status["checkpoints"] = checkpoints
    if run.estimate:
        # the trainer counted; the operator prices, with its tables and the pool's GPU
        est = price_count(
            run.estimate,
            b.job.spec,
            priced_gpu_type(b.job, b.world.pool, b.config),
            b.config.estimate_tables,
        )
        if est and est != {k: (b.status.get("estimate") or {}).get(k) for k in est}:
            b.status["estimate"] = {**(b.status.get("estimate") or {}), **est}
            b.timeline(
                "Estimated",
                Reason.ESTIMATED,
                f"trainer counted {int(est.get('trainTokens', 0))} tokens: "
                f"{est.get('gpuHours', 0):.4g} GPU-hours, "
                f"{est.get('cost', 0):.4g} {est.get('currency', '')}",
            )


def _outcome(world: World, message: str) -> exitcodes.Outcome:
    """How a failed attempt ended: from the trainer's exit code, else its last state."""
    run = world.run
    if run is not None and run.exit_code is not None:
        return exitcodes.classify(run.exit_code)
    state = run.state if run is not None else None
    if state == RunStateName.PREEMPTED:
        return exitcodes.Outcome.PREEMPTED
    if state == RunStateName.FAILED:
        return exitcodes.Outcome.CRASHED
    # the process died without saying why: killed with its node, OOM-killed, evicted
    return exitcodes.Outcome.KILLED


#: how much of a termination message goes into a cause (its last line)
CAUSE_LINE_MAX = 300


def _last_line(text: str) -> str:
    """The last line that says something (not a rule of ``=====`` under torchrun's report)."""
    lines = [line.strip() for line in text.splitlines() if any(c.isalnum() for c in line)]
    return lines[-1][:CAUSE_LINE_MAX] if lines else ""


def describe_exit(exit: PodExit, launched: str) -> str:
    """One line on how a pod's container ended: ``worker-1 OOMKilled (exit 137)``,
    ``master-0 exited 1: ValueError: …`` (the termination message's last line)."""
    who = exit.pod.removeprefix(f"{launched}-")
    if exit.reason == "OOMKilled":
        return f"{who} OOMKilled (exit {exit.exit_code})"
    last = _last_line(exit.message)
    if exit.exit_code > exitcodes.SIGNAL_BASE and not last:
        sig = exit.exit_code - exitcodes.SIGNAL_BASE
        return f"{who} killed by signal {sig} (exit {exit.exit_code}, {exit.reason})"
    if last:
        return f"{who} exited {exit.exit_code}: {last}"
    return f"{who} exited {exit.exit_code} ({exit.reason})"


def _failed_by_itself(world: World, launched: str) -> list[PodExit]:
    """The pods of ``launched`` that failed by themselves (no eviction, no deletion asked
    for, not the trainer's own "preempted"), the first to end first."""
    return sorted(
        (
            e
            for e in world.pod_exits
            if e.pod.startswith(f"{launched}-")
            and e.stopped_by is None
            and e.exit_code not in (exitcodes.SUCCEEDED, exitcodes.PREEMPTED)
        ),
        key=lambda e: (e.finished_at or "~", e.pod),
    )


def _pod_cause(world: World, launched: str) -> tuple[exitcodes.Outcome, str] | None:
    """Why the attempt failed, from what the cluster recorded of its pods, or None when no
    pod failed by itself (then the trainer's progress.json says, as before).

    A pod that failed by itself is the cause even when its peers' trainers, stopped by the
    training operator after it, wrote "preempted" (exit 85) to progress.json: an OOM kill
    (``OOMKilled``) or a crash is a failure counted towards maxFailures, never a
    preemption; exit 65 is bad input. A pod the cluster stopped (evicted, deleted, its
    node drained) is not a cause: that is a preemption."""
    failed = _failed_by_itself(world, launched)
    if not failed:
        return None
    first = failed[0]
    text = describe_exit(first, launched)
    if len(failed) > 1:
        # the first to end is the likeliest cause, but times have a one-second grain
        others = [
            f"{e.pod.removeprefix(f'{launched}-')} "
            f"({'OOMKilled' if e.reason == 'OOMKilled' else 'exit'} {e.exit_code})"
            for e in failed[1:4]
        ]
        more = f" and {len(failed) - 4} more" if len(failed) > 4 else ""
        text += f"; also failed: {', '.join(others)}{more}"
    logs = [e.log_uri for e in failed if e.log_uri]
    if logs:
        text += f"; last log lines in {logs[0]}"
    if first.reason == "OOMKilled":
        return exitcodes.Outcome.CRASHED, text
    outcome = exitcodes.classify(first.exit_code)
    if outcome is exitcodes.Outcome.BAD_INPUT:
        run = world.run
        return outcome, (run.message if run and run.message else first.message) or text
    if outcome in (exitcodes.Outcome.KILLED, exitcodes.Outcome.PREEMPTED):
        # killed by a signal that no eviction or deletion explains: not a preemption
        outcome = exitcodes.Outcome.CRASHED
    return outcome, text


def _stopped_by_cluster(world: World, launched: str) -> str | None:
    """``master-0 stopped by the cluster (EvictionByEvictionAPI)`` when the cluster stopped
    one of the attempt's pods, else None."""
    for e in world.pod_exits:
        if e.pod.startswith(f"{launched}-") and e.stopped_by:
            who = e.pod.removeprefix(f"{launched}-")
            return f"{who} stopped by the cluster ({e.stopped_by}, exit {e.exit_code})"
    return None


def _last_checkpoint(b: _Builder) -> str:
    checkpoints = b.status.get("checkpoints") or []
    return f"step {checkpoints[-1]['step']}" if checkpoints else "the start (no checkpoint yet)"


# --------------------------------------------------------------------------- decide


def decide(world: World, config: OperatorConfig, launcher: Launcher) -> Decision:
    """The next status and actions for one FineTuneJob."""
    b = _Builder(world, config, launcher)
    job = world.job
    if b.phase.terminal:
        return _normalized(b.decision)
    if job.spec.cancelled:
        _cancel(b)
        return _normalized(b.decision)
    if world.ref_problems and world.launcher is None and not b.status.get("attempt"):
        permanent = [p for p in world.ref_problems if p[0] not in WAIT_FOR_REFERENCE]
        if permanent:
            reason, message = permanent[0]
            b.condition(C.VALIDATED, False, reason, message)
            b.fail(reason, message)
        else:
            _wait_for_reference(b, *world.ref_problems[0])
        return _normalized(b.decision)
    if not condition_true(b.status, C.VALIDATED):
        b.condition(
            C.VALIDATED, True, Reason.SPEC_VALID, "spec, Secret, ConfigMaps and pool are valid"
        )
        b.timeline("Validated", Reason.SPEC_VALID, "spec and references are valid")
        est = pre_run_estimate(job, world.pool, config)
        if est is not None:
            b.status["estimate"] = est
            b.timeline(
                "Estimated",
                Reason.ESTIMATED,
                f"{est['trainTokens']} tokens, {est['gpuHours']:.4g} GPU-hours "
                f"on {est['gpuType']}, "
                f"{est['cost']:.4g} {est['currency']}",
            )
    b.status["observedGeneration"] = job.metadata.generation
    if job.spec.scheduling.pool:
        b.status["pool"] = job.spec.scheduling.pool

    budget = parse_duration(job.spec.scheduling.max_runtime)
    if b.elapsed_seconds() > budget:
        if world.launcher is not None:
            b.act(ActionKind.DELETE_LAUNCHER, name=world.launcher["metadata"]["name"])
        b.fail(
            Reason.MAX_RUNTIME_EXCEEDED,
            f"ran {b.elapsed_seconds():.0f}s across all attempts, over maxRuntime "
            f"{job.spec.scheduling.max_runtime}; "
            f"the last checkpoint ({_last_checkpoint(b)}) is kept",
        )
        return _normalized(b.decision)

    if world.launch_refused is not None:
        _launch_refused(b, world.launch_refused)
    elif world.launcher is None:
        _without_launcher(b)
    else:
        _with_launcher(b, world.launcher)
    return _normalized(b.decision)


def decide_invalid(
    status: dict[str, Any], generation: int | None, now: datetime, problem: str
) -> Decision:
    """A stored FineTuneJob the model rejects (stored under an older or laxer CRD): it
    fails with the field's problem — the same conditions, bounded timeline and Warning
    Event as any failure. ``status`` is the stored one (left unchanged once terminal)."""
    w = _StatusWriter(dict(status), now, generation)
    phase = status.get("phase")
    if phase in {str(p) for p in Phase if p.terminal}:
        return w.decision
    w.condition(C.VALIDATED, False, Reason.SPEC_INVALID, problem)
    w.fail(Reason.SPEC_INVALID, problem)
    try:
        return _normalized(w.decision)
    except ValueError:  # a status the model cannot read either: write it as built
        return w.decision


def _wait_for_reference(b: _Builder, reason: Reason, message: str) -> None:
    """An object the job names is not there yet (GitOps applied both at once): stay
    ``Pending`` with ``Validated=False`` saying what is missing. The timeline (and an Event)
    records each new thing waited for once, not every look."""
    text = f"waiting: {message}"
    previous = get_condition(b.status, C.VALIDATED) or {}
    b.condition(C.VALIDATED, False, reason, text)
    b.set_phase(Phase.PENDING, text)
    b.status["observedGeneration"] = b.job.metadata.generation
    if previous.get("status") != "False" or previous.get("message") != text:
        b.timeline("Waiting", reason, text, warning=True)
    b.decision.waiting = True


def _launch_refused(b: _Builder, refusal: LaunchRefusal) -> None:
    """The API server would not create the launched job (or its ConfigMap): a webhook or
    validation said invalid (fail, with its words), or RBAC, a quota or a missing CRD said
    no for now (wait in Queued and retry; the reason is in a condition and the timeline)."""
    what = (
        f"the API server refused to create {refusal.kind} {refusal.name} "
        f"({refusal.code}): {refusal.message}"
    )
    if refusal.permanent:
        b.fail(Reason.LAUNCH_REJECTED, what)
        return
    previous = get_condition(b.status, C.ADMITTED)
    b.end_stint()
    b.condition(C.ADMITTED, False, Reason.LAUNCH_REFUSED, what)
    b.condition(C.RUNNING, False, Reason.LAUNCH_REFUSED, "not launched")
    if (previous or {}).get("reason") != str(Reason.LAUNCH_REFUSED) or b.phase is not Phase.QUEUED:
        b.timeline("LaunchRefused", Reason.LAUNCH_REFUSED, f"{what}; retrying", warning=True)
    b.status.setdefault("queuedTime", iso(b.now))
    b.set_phase(Phase.QUEUED, f"{what}; retrying")


def _cancel(b: _Builder) -> None:
    """``spec.cancelled: true``: delete the launched job (its pods get SIGTERM and the
    trainer checkpoints), end in phase Cancelled; status and storage are left as they are."""
    launched = b.world.launcher
    if launched is not None:
        b.act(ActionKind.DELETE_LAUNCHER, name=launched["metadata"]["name"])
    b.end_stint()
    stopped = (
        f"{b.launcher.kind} {launched['metadata']['name']} deleted; "
        if launched is not None
        else ""
    )
    message = (
        f"cancelled (spec.cancelled is true); {stopped}checkpoints ({_last_checkpoint(b)}) "
        "and artifacts are kept"
    )
    b.status["observedGeneration"] = b.job.metadata.generation
    b.set_phase(Phase.CANCELLED, message)
    b.condition(C.RUNNING, False, Reason.CANCELLED, "the job was cancelled")
    b.status["completionTime"] = iso(b.now)
    b.timeline("Cancelled", Reason.CANCELLED, message)


def _normalized(decision: Decision) -> Decision:
    """The status as the model writes it (defaults filled, times in one format), so that
    an unchanged status compares equal to the stored one and is not written again."""
    decision.status = FineTuneJobStatus.model_validate(decision.status).model_dump(
        mode="json", by_alias=True, exclude_none=True
    )
    return decision


def _launch(b: _Builder, attempt: int, suspend: bool) -> None:
    job, world = b.job, b.world
    b.act(ActionKind.CREATE_CONFIG_MAP, builders.build_config_map(job))
    body = b.launcher.build(job, b.config, world.pool, attempt, suspend)
    b.act(ActionKind.CREATE_LAUNCHER, body)
    b.status["attempt"] = attempt
    root = builders.job_root_uri(job, b.config)
    if root is not None:
        b.status["outputUri"] = root + "/"
    b.status["launcher"] = {
        "kind": b.launcher.kind,
        "name": body["metadata"]["name"],
        "apiVersion": b.launcher.api_version,
    }


def _without_launcher(b: _Builder) -> None:
    world, job = b.world, b.job
    attempt = int(b.status.get("attempt", 0))
    why_not = _desired_suspend(world)
    if attempt == 0:
        if why_not is Reason.SUSPENDED_BY_USER:
            if b.phase is not Phase.SUSPENDED:
                b.set_phase(
                    Phase.SUSPENDED, "suspended before it started; set spec.suspend: false to run"
                )
                b.condition(C.SUSPENDED, True, Reason.SUSPENDED_BY_USER, "spec.suspend is true")
                b.timeline("Suspended", Reason.SUSPENDED_BY_USER, "spec.suspend is true")
            return
        if not world.admission.admitted:
            previous = get_condition(b.status, C.ADMITTED)
            b.condition(C.ADMITTED, False, world.admission.reason, world.admission.message)
            if b.phase is not Phase.QUEUED or (previous or {}).get("reason") != str(
                world.admission.reason
            ):
                b.timeline("Queued", world.admission.reason, world.admission.message)
            b.status.setdefault("queuedTime", iso(b.now))
            b.set_phase(Phase.QUEUED, world.admission.message)
            return
        kueue = job.spec.scheduling.queue_name
        _launch(b, 1, suspend=bool(kueue))
        b.condition(C.ADMITTED, True, Reason.ADMITTED, world.admission.message)
        b.condition(C.SUSPENDED, False, Reason.ADMITTED, "not suspended")
        if job.spec.scheduling.pool:
            b.timeline("Admitted", Reason.ADMITTED, f"admitted to pool {job.spec.scheduling.pool}")
        name = b.status["launcher"]["name"]
        if kueue:
            b.set_phase(Phase.QUEUED, f"waiting for Kueue queue {kueue} to admit {name}")
            b.condition(C.RUNNING, False, Reason.WAITING_FOR_KUEUE, f"queue {kueue}")
            b.timeline(
                "Launched",
                Reason.WAITING_FOR_KUEUE,
                f"{b.launcher.kind} {name} created suspended for Kueue queue {kueue}",
            )
        else:
            b.set_phase(Phase.RUNNING, f"{b.launcher.kind} {name} launched")
            b.condition(
                C.RUNNING,
                False,
                Reason.LAUNCHED,
                f"{b.launcher.kind} {name} created; waiting for pods",
            )
            b.timeline("Launched", Reason.LAUNCHED, f"{b.launcher.kind} {name} created")
        return
    # launched before, but the launched object is gone (deleted by hand, or the operator
    # stopped between replacing attempts): launch the same attempt again; it resumes
    # from the last checkpoint.
    _launch(b, attempt, suspend=why_not is not None)
    b.timeline(
        "Relaunched",
        Reason.LAUNCHER_DELETED,
        f"{b.launcher.kind} for attempt {attempt} was missing; created it again, "
        f"resuming from {_last_checkpoint(b)}",
        warning=True,
    )


def _preempted_by_kueue(b: _Builder, name: str) -> None:
    """Kueue suspended a running job (its Workload was evicted: preempted by a higher
    priority, or its ClusterQueue shrank). Not fought: the job waits in Queued. The next
    attempt, created suspended with the same queue, gets a Workload of its own and resumes
    from the checkpoint the trainer wrote on SIGTERM once Kueue admits it (a PyTorchJob that
    ran is not unsuspended; see _alive)."""
    b.end_stint()
    b.status["preemptions"] = int(b.status.get("preemptions", 0)) + 1
    attempt = _replace_attempt(b, name)
    b.condition(C.RUNNING, False, Reason.PREEMPTED_BY_KUEUE, f"Kueue suspended {name}")
    b.timeline(
        "Preempted",
        Reason.PREEMPTED_BY_KUEUE,
        f"Kueue suspended {name} (its Workload was evicted); attempt {attempt} resumes from "
        f"{_last_checkpoint(b)} when Kueue admits it",
        warning=True,
    )
    b.status.setdefault("queuedTime", iso(b.now))
    b.set_phase(Phase.QUEUED, f"preempted by Kueue; waiting for Kueue to admit attempt {attempt}")


def _made_no_progress(world: World) -> bool:
    """The ended attempt's trainer did not pass the step it started (or resumed) from."""
    run = world.run
    if run is None or run.session is None:
        return False  # an older trainer (no session in progress.json), or nothing read
    launched = (world.launcher or {}).get("metadata", {}).get("name", "")
    if not (run.pod or "").startswith(f"{launched}-"):
        return True  # this attempt's trainer never wrote progress
    return run.step <= (run.resumed_from or 0)


def _hand_over(b: _Builder) -> None:
    """The next attempt waits (suspended) while an earlier one's pods are still stopping."""
    names = ", ".join(b.world.previous_attempts)
    b.status["message"] = f"waiting for {names} to stop before the next attempt starts"


def _trainer_session(b: _Builder, name: str, run: RunState) -> None:
    """A pod replaced in place: with its node deleted, the Kubeflow controller recreates a
    lost pod under the same launched job with no Failed condition, and the new trainer
    resumes from the last complete checkpoint. It shows as a new trainer session of this
    launched job's pod; count it as a preemption and say so."""
    if not run.session or not (run.pod or "").startswith(f"{name}-"):
        return  # not (yet) this launched job's trainer
    seen = str(b.status.get("trainerSession") or "")
    current = f"{name}/{run.session}"
    if seen == current:
        return
    b.status["trainerSession"] = current
    running = get_condition(b.status, C.RUNNING) or {}
    if not seen.startswith(f"{name}/") or running.get("reason") == Reason.RESTARTING:
        return  # its first session, or a restart already counted
    b.status["preemptions"] = int(b.status.get("preemptions", 0)) + 1
    b.timeline(
        "Preempted",
        Reason.NODE_RECLAIMED,
        f"{name}: its pod was replaced (node lost?)",
        warning=True,
    )
    start = f"step {run.resumed_from}" if run.resumed_from else "the start (no checkpoint yet)"
    b.timeline("Resumed", Reason.RESUMED, f"{name}'s new pod resumes from {start}")


def _start_timed_out(b: _Builder, name: str, why: str, detail: str) -> bool:
    """The launched job's pods are not running (``why``: the scheduler's or the node's
    reason). Keeps ``podsPendingSince`` (in status: an operator restart does not reset the
    clock); past ``startTimeoutSeconds`` the attempt is ended, its capacity given back: the
    launched job is deleted (checkpoints stay), and the job waits in Queued, with a backoff,
    for the next attempt — or fails once more than ``maxStartTimeouts`` attempts did not
    start. True when the attempt was ended."""
    since = b.pods_pending_since or b.now
    b.status["podsPendingSince"] = iso(since)
    timeout = b.config.start_timeout_seconds
    if timeout <= 0 or (b.now - since).total_seconds() < timeout:
        return False
    del b.status["podsPendingSince"]
    count = int(b.status.get("startTimeouts", 0)) + 1
    b.status["startTimeouts"] = count
    limit = b.config.max_start_timeouts
    text = f"the pods of {name} did not start within {format_duration(timeout)}: {why}: {detail}"
    b.condition(C.PODS_READY, False, Reason.START_TIMEOUT, text)
    if count > limit:
        b.act(ActionKind.DELETE_LAUNCHER, name=name)
        b.fail(
            Reason.START_TIMEOUT,
            f"{text}; {count} attempts did not start (maxStartTimeouts {limit}); "
            f"checkpoints ({_last_checkpoint(b)}) are kept",
        )
        return True
    attempt = _replace_attempt(b, name)
    backoff = min(
        b.config.start_retry_backoff_seconds * 2 ** (count - 1), START_RETRY_BACKOFF_MAX_SECONDS
    )
    after = iso(b.now + timedelta(seconds=backoff))
    b.status["startRetryAfter"] = after
    later = (
        f"attempt {attempt} goes to Kueue queue {b.job.spec.scheduling.queue_name}"
        if b.job.spec.scheduling.queue_name
        else f"attempt {attempt} starts after {after}"
    )
    b.condition(C.RUNNING, False, Reason.START_TIMEOUT, "the pods did not start")
    b.condition(C.ADMITTED, False, Reason.START_TIMEOUT, f"capacity given back; {later}")
    b.timeline(
        "StartTimeout",
        Reason.START_TIMEOUT,
        f"{text}; {name} deleted, {later} (start timeout {count} of at most {limit + 1})",
        warning=True,
    )
    b.status.setdefault("queuedTime", iso(b.now))
    b.set_phase(Phase.QUEUED, f"{text}; {later}")
    return True


def _start_backoff(b: _Builder) -> bool:
    """After a start timeout, the next attempt (created suspended) waits in Queued until
    ``startRetryAfter``. For a Kueue job Kueue admits it when it will; the wait is only
    noted."""
    after = parse_time(b.status.get("startRetryAfter"))
    if after is None:
        return False
    if b.now < after:
        return True
    del b.status["startRetryAfter"]
    if b.phase is Phase.QUEUED:
        b.status["message"] = (
            f"retrying after a start timeout ({b.status.get('startTimeouts', 0)} so far)"
        )
    return False


# --------------------------------------------------------------------------- stalls


def _note_progress(b: _Builder, name: str, run: RunState) -> None:
    """Record when the trainer last moved: its step changed, or a new trainer session of this
    attempt began (``lastProgressTime``, in status, so it survives operator restarts). Once
    it moves again after a stall, ``Stalled`` turns False. Call before the run state is
    applied (it compares with the step in status)."""
    progress = b.status.get("progress") or {}
    session = f"{name}/{run.session}" if run.session else None
    moved = progress.get("step") != run.step or (
        session is not None
        and (run.pod or "").startswith(f"{name}-")
        and b.status.get("trainerSession") != session
    )
    if not moved:
        return
    b.status["lastProgressTime"] = iso(b.now)
    stalled = get_condition(b.status, C.STALLED)
    if stalled and stalled.get("status") == "True":
        b.condition(C.STALLED, False, Reason.PROGRESSING, f"step {run.step}")


def _idle_since(b: _Builder) -> datetime | None:
    """Since when the running attempt has shown no progress: the later of the last step
    change and the start of the current running stint (a new attempt loads its model and
    data first; a stint starts when its pods run)."""
    running = parse_time(b.status.get("runningSince"))
    if running is None:
        return None  # its pods do not run: nothing to stall
    moved = parse_time(b.status.get("lastProgressTime"))
    return running if moved is None else max(running, moved)


def _saved_progress(world: World, name: str) -> bool:
    """This attempt's trainer wrote a checkpoint past the step it resumed from: the next
    attempt will not repeat all of its work."""
    run = world.run
    if run is None or not (run.pod or "").startswith(f"{name}-"):
        return False
    steps = [int(c["step"]) for c in run.checkpoints if isinstance(c.get("step"), int)]
    return bool(steps) and max(steps) > (run.resumed_from or 0)


def _check_stall(b: _Builder, obj: dict[str, Any], state: LauncherState) -> None:
    """Pods running, the step unchanged for ``stallTimeoutSeconds`` (a hung collective after
    a peer died, a rendezvous that never completes, a deadlock): ``Stalled=True`` with the
    time and step, then the attempt is ended and the next one resumes from the last
    checkpoint. It counts towards maxFailures unless the stalled attempt saved a checkpoint
    past the one it resumed from (then the next attempt does not just repeat it)."""
    world, config = b.world, b.config
    timeout = config.stall_timeout_seconds
    if (
        timeout <= 0
        or b.decision.actions
        or state.phase is not LauncherPhase.RUNNING
        or b.phase is not Phase.RUNNING
        or b.launcher.is_suspended(obj)
        or _desired_suspend(world) is not None
        or (world.run is not None and world.run.state == RunStateName.EXPORTING)
    ):
        return
    since = _idle_since(b)
    if since is None or (b.now - since).total_seconds() <= timeout:
        return
    name = obj["metadata"]["name"]
    step = (b.status.get("progress") or {}).get("step", 0)
    idle = (b.now - since).total_seconds()
    text = (
        f"{name}: no progress for {idle:.0f}s (stallTimeoutSeconds {timeout:g}): "
        f"step {step} since {iso(since)}"
    )
    b.end_stint()
    b.condition(C.STALLED, True, Reason.STALLED, text)
    b.condition(C.RUNNING, False, Reason.STALLED, text)
    counted = not _saved_progress(world, name)
    if counted:
        failures = int(b.status.get("failures", 0)) + 1
        b.status["failures"] = failures
        if failures > config.max_failures:
            b.timeline("Stalled", Reason.STALLED, text, warning=True)
            b.act(ActionKind.DELETE_LAUNCHER, name=name)
            b.fail(
                Reason.TOO_MANY_FAILURES,
                f"the trainer failed {failures} times; last: stalled: {text}",
            )
            return
        retry = f"retry {failures} of {config.max_failures}"
    else:
        retry = "it saved a checkpoint, not counted as a failure"
    b.timeline("Stalled", Reason.STALLED, f"{text}; ending the attempt ({retry})", warning=True)
    _next_attempt(b, name, "stalled")
    b.set_phase(Phase.RUNNING, f"stalled ({text}); resuming from {_last_checkpoint(b)}")


def _has_run(b: _Builder, obj: dict[str, Any]) -> bool:
    """Whether a launched job's pods ever ran: a PyTorchJob has a Running condition (true
    or not); a TrainJob's controller keeps no such record, so its trainer having written
    a session under this launched job's name says it."""
    conditions = (obj.get("status") or {}).get("conditions") or []
    if any(c.get("type") == "Running" for c in conditions):
        return True
    return str(b.status.get("trainerSession") or "").startswith(f"{obj['metadata']['name']}/")


def _replace_attempt(b: _Builder, old_name: str) -> int:
    """Replace attempt N by N+1; returns N+1. N+1 is created suspended and started only once
    N's launched job is gone (deleted in the foreground: after its pods), so that two
    attempts never write to the run location at once (see :func:`_hand_over`)."""
    b.act(ActionKind.DELETE_LAUNCHER, name=old_name)
    attempt = int(b.status.get("attempt", 1)) + 1
    _launch(b, attempt, suspend=True)
    return attempt


def _next_attempt(b: _Builder, old_name: str, why: str) -> None:
    """The next attempt after a preemption or a crash (:func:`_replace_attempt`)."""
    attempt = _replace_attempt(b, old_name)
    b.timeline(
        "Resumed", Reason.RESUMED, f"attempt {attempt} resumes from {_last_checkpoint(b)} ({why})"
    )


def _with_launcher(b: _Builder, obj: dict[str, Any]) -> None:
    world = b.world
    state = b.launcher.observe(obj)
    if state.phase in (LauncherPhase.SUCCEEDED, LauncherPhase.FAILED):
        if world.run is not None:
            _apply_run_state(b, world.run)
        _finished(b, obj, state)
    else:
        _alive(b, obj, state)
        if world.run is not None:
            _note_progress(b, obj["metadata"]["name"], world.run)
            _apply_run_state(b, world.run)
            _trainer_session(b, obj["metadata"]["name"], world.run)
            progress = b.status.get("progress") or {}
            if b.phase is Phase.RUNNING and progress.get("totalSteps"):
                b.status["message"] = f"step {progress['step']}/{progress['totalSteps']}"
        _check_stall(b, obj, state)


def _finished(b: _Builder, obj: dict[str, Any], state: LauncherState) -> None:
    """The launched job ended: export and succeed, resume, retry, or fail."""
    world = b.world
    name = obj["metadata"]["name"]
    why_not = _desired_suspend(world)

    if state.phase is LauncherPhase.SUCCEEDED:
        if b.phase is not Phase.EXPORTING:
            b.set_phase(Phase.EXPORTING, "training finished; verifying artifacts")
        if world.artifacts is None:
            b.decision.needs_artifacts = True
            return
        if world.artifacts.problem is not None:
            b.fail(Reason.ARTIFACTS_INVALID, world.artifacts.problem)
            return
        b.succeed(world.artifacts.artifacts or [])
        return

    if state.phase is LauncherPhase.FAILED:
        message = (
            (world.run.message if world.run else None) or state.message or "the trainer failed"
        )
        cause = _pod_cause(world, name)
        if cause is not None:
            outcome, message = cause
        else:
            outcome = _outcome(world, message)
        b.end_stint()
        if outcome is exitcodes.Outcome.BAD_INPUT:
            b.fail(Reason.BAD_DATA, message)
            return
        if outcome is exitcodes.Outcome.KILLED and why_not is None and _made_no_progress(world):
            # Killed without a word and without a step since it resumed: an OOM kill or a
            # crash that recurs the same way every time, not a reclaimed node. Counted
            # towards maxFailures, so that it is not retried until maxRuntime.
            outcome = exitcodes.Outcome.CRASHED
            run = world.run
            since = run.resumed_from if run is not None and run.resumed_from else 0
            message = (
                f"the trainer was killed without a word and made no progress since step "
                f"{since} (out of memory? see the pods' events and the rank logs)"
            )
        if outcome in (exitcodes.Outcome.PREEMPTED, exitcodes.Outcome.KILLED):
            if why_not is not None:
                # Stopped on purpose (suspend, window closing). The training operator
                # (restartPolicy Never) marks the job Failed when the
                # SIGTERMed trainer exits non-zero before its pods are deleted, and a Failed
                # job is never run again, even once unsuspended: this attempt is over. The
                # next one is created suspended and waits for the resume; no preemption.
                _replace_attempt(b, name)
                b.set_phase(
                    Phase.SUSPENDED, f"suspended ({why_not}); resumes from {_last_checkpoint(b)}"
                )
                return
            b.status["preemptions"] = int(b.status.get("preemptions", 0)) + 1
            code = world.run.exit_code if world.run else None
            what = (
                # the trainer said "preempted" (its state) before it could write its code
                exitcodes.describe(exitcodes.PREEMPTED if code is None else code)
                if outcome is exitcodes.Outcome.PREEMPTED
                else "the trainer was killed (node reclaimed?)"
            )
            stopped = _stopped_by_cluster(world, name)
            if stopped:
                what = f"{what}; {stopped}"
            b.timeline(
                "Preempted",
                Reason.NODE_RECLAIMED,
                f"{b.launcher.kind} {name}: {what}",
                warning=True,
            )
            _next_attempt(b, name, "preempted")
            b.set_phase(Phase.RUNNING, f"resuming after preemption #{b.status['preemptions']}")
            b.condition(C.RUNNING, False, Reason.RESTARTING, "resuming after a preemption")
            return
        failures = int(b.status.get("failures", 0)) + 1
        b.status["failures"] = failures
        if failures > b.config.max_failures:
            b.fail(
                Reason.TOO_MANY_FAILURES, f"the trainer failed {failures} times; last: {message}"
            )
            return
        b.timeline(
            "Crashed",
            Reason.TRAINER_FAILED,
            f"attempt failed ({message}); retry {failures}/{b.config.max_failures}",
            warning=True,
        )
        _next_attempt(b, name, f"retry {failures} of {b.config.max_failures}")
        b.set_phase(
            Phase.RUNNING,
            f"retrying after a trainer failure ({failures}/{b.config.max_failures}): {message}",
        )
        return


def _alive(b: _Builder, obj: dict[str, Any], state: LauncherState) -> None:
    """The launched job is pending, running, restarting or suspended."""
    world, job = b.world, b.job
    name = obj["metadata"]["name"]
    why_not = _desired_suspend(world)
    suspended = b.launcher.is_suspended(obj)
    if why_not is not None:
        if not suspended:
            b.act(ActionKind.SUSPEND_LAUNCHER, name=name)
        if b.phase is not Phase.SUSPENDED:
            b.end_stint()
            text = (
                "spec.suspend is true"
                if why_not is Reason.SUSPENDED_BY_USER
                else world.admission.message
            )
            b.set_phase(
                Phase.SUSPENDED, f"suspended: {text}; the trainer checkpoints before it stops"
            )
            b.condition(C.SUSPENDED, True, why_not, text)
            b.condition(C.RUNNING, False, why_not, "suspended")
            b.timeline("Suspended", why_not, f"{text}; checkpointing and stopping {name}")
        return

    if suspended:
        if _start_backoff(b):
            return
        if (
            job.spec.scheduling.queue_name
            and not condition_true(b.status, C.RUNNING)
            and b.phase is Phase.QUEUED
        ):
            return  # Kueue decides when it runs
        if job.spec.scheduling.queue_name and (
            _has_run(b, obj) or condition_true(b.status, C.RUNNING)
        ):
            # Kueue suspended what ran (or what the job's own status saw running)
            _preempted_by_kueue(b, name)
            return
        if not world.admission.admitted:
            if b.phase is not Phase.SUSPENDED and b.phase is not Phase.QUEUED:
                b.set_phase(Phase.SUSPENDED, world.admission.message)
            return
        if world.previous_attempts:
            _hand_over(b)
            return
        was = get_condition(b.status, C.SUSPENDED)
        if not (was and was.get("status") == "True"):
            # the next attempt, created suspended for the hand-over: start it now
            b.act(ActionKind.RESUME_LAUNCHER, name=name)
            return
        reason = (
            Reason.WINDOW_OPENED
            if was and was.get("reason") == Reason.WINDOW_CLOSING
            else Reason.RESUMED_BY_USER
        )
        if _has_run(b, obj):
            # A launcher that ran and was suspended is not run again: the training operator
            # may still count the SIGTERMed pod as a failed replica once it is unsuspended
            # (and fail it for good), and a TrainJob's Job would start a new pod while the
            # SIGTERMed one still writes its checkpoint. The next attempt resumes from the
            # checkpoint instead, once this one's pods are gone.
            attempt = _replace_attempt(b, name)
            what = f"attempt {attempt} resumes from {_last_checkpoint(b)}"
        else:
            b.act(ActionKind.RESUME_LAUNCHER, name=name)
            what = f"{name} resumes from {_last_checkpoint(b)}"
        b.condition(C.SUSPENDED, False, reason, "resumed")
        b.set_phase(Phase.RUNNING, f"resuming from {_last_checkpoint(b)}")
        b.condition(C.RUNNING, False, reason, "resuming")
        b.timeline("Resumed", reason, what)
        return

    if b.phase in (Phase.SUSPENDED, Phase.QUEUED, Phase.PENDING):
        # Kueue (or a person) unsuspended it, or a resume we asked for took effect
        b.condition(C.SUSPENDED, False, Reason.RESUMED, "running")
        if b.phase is Phase.QUEUED:
            b.condition(C.ADMITTED, True, Reason.ADMITTED, f"{name} admitted")
            b.timeline("Admitted", Reason.ADMITTED, f"{name} admitted")
        b.set_phase(Phase.RUNNING)
    if state.phase in (LauncherPhase.PENDING, LauncherPhase.SUSPENDED):
        # Running only once its pods run: not billed, not counted towards maxRuntime. (Just
        # unsuspended, a launched job's status may still say Suspended: no pods yet.)
        b.end_stint()
        why, detail = world.pods_waiting or (
            str(Reason.PODS_PENDING),
            f"waiting for the pods of {name} to be scheduled and started",
        )
        if _start_timed_out(b, name, why, detail):
            return
        b.condition(C.PODS_READY, False, why, detail)
        b.status["message"] = f"pods not running: {why}: {detail}"[:1024]
        return
    b.condition(C.PODS_READY, True, Reason.PODS_RUNNING, f"the pods of {name} run")
    b.status.pop("startRetryAfter", None)
    b.start_stint()

    if state.phase is LauncherPhase.RESTARTING:
        running = get_condition(b.status, C.RUNNING) or {}
        if running.get("reason") != Reason.RESTARTING:
            b.status["preemptions"] = int(b.status.get("preemptions", 0)) + 1
            b.condition(C.RUNNING, False, Reason.RESTARTING, state.message or "pods are restarting")
            b.timeline(
                "Preempted",
                Reason.NODE_RECLAIMED,
                f"{name} is restarting: {state.message or 'a pod was lost'}; "
                f"resumes from {_last_checkpoint(b)}",
                warning=True,
            )
        b.set_phase(Phase.RUNNING, "restarting after a lost pod")
        return

    exporting = world.run is not None and world.run.state == RunStateName.EXPORTING
    if state.phase is LauncherPhase.RUNNING:
        running = get_condition(b.status, C.RUNNING) or {}
        if running.get("status") != "True":
            first = not any(e.get("type") == "Started" for e in b.status.get("timeline") or [])
            b.condition(C.RUNNING, True, Reason.TRAINER_STARTED, f"{name} is running")
            b.timeline(
                "Started" if first else "Running",
                Reason.TRAINER_STARTED,
                f"{name} is running" + ("" if first else f" again, from {_last_checkpoint(b)}"),
            )
    if exporting:
        b.set_phase(Phase.EXPORTING, "exporting artifacts")
    elif state.phase is LauncherPhase.RUNNING:
        b.set_phase(Phase.RUNNING, f"{name} is running")
    else:
        b.set_phase(Phase.RUNNING)  # pods pending: the launch message stands
