"""Pod status as the kubelet computes it, from the agent's record of each container (pure).

The phase follows the kubelet's ``getPhase``; the conditions are the kubelet's own
(``PodReadyToStartContainers``, ``Initialized``, ``ContainersReady``, ``Ready``) with their
reasons and messages; container statuses carry ``state``/``lastState``, ``restartCount``,
``ready`` and ``started``.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "ContainerRecord",
    "build_conditions",
    "has_started",
    "now_iso",
    "pod_phase",
    "readiness_gates_problem",
    "termination_reason",
]

JSON = dict[str, Any]


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def termination_reason(exit_code: int, oom_killed: bool, start_error: bool) -> str:
    if start_error:
        return "StartError"
    if oom_killed:
        return "OOMKilled"
    return "Completed" if exit_code == 0 else "Error"


@dataclasses.dataclass
class ContainerRecord:
    """What the agent knows of one container (one entry of (init)containerStatuses)."""

    name: str
    image: str
    init: bool = False
    #: an init container with restartPolicy Always (a sidecar)
    sidecar: bool = False
    restart_count: int = 0
    container_id: str = ""
    #: "waiting" | "running" | "terminated"
    state: str = "waiting"
    waiting_reason: str = "ContainerCreating"
    waiting_message: str = ""
    started_at: str = ""
    terminated: JSON | None = None
    last_terminated: JSON | None = None
    ready: bool = False
    started: bool = False

    def to_status(self) -> JSON:
        image_id = f"lab://{self.image}"
        status: JSON = {
            "name": self.name,
            "image": self.image,
            "imageID": image_id if self.container_id else "",
            "restartCount": self.restart_count,
            "ready": self.ready,
            "started": self.started,
            "lastState": {"terminated": self.last_terminated} if self.last_terminated else {},
        }
        if self.container_id:
            status["containerID"] = self.container_id
        if self.state == "running":
            status["state"] = {"running": {"startedAt": self.started_at}}
        elif self.state == "terminated" and self.terminated is not None:
            status["state"] = {"terminated": self.terminated}
        else:
            waiting: JSON = {"reason": self.waiting_reason}
            if self.waiting_message:
                waiting["message"] = self.waiting_message
            status["state"] = {"waiting": waiting}
        return status

    def succeeded(self) -> bool:
        return self.state == "terminated" and (self.terminated or {}).get("exitCode") == 0

    def failed(self) -> bool:
        return self.state == "terminated" and (self.terminated or {}).get("exitCode") != 0


def has_started(record: ContainerRecord) -> bool:
    """Whether the container ran at least once (running, ended, or waiting to restart)."""
    return record.state != "waiting" or record.last_terminated is not None


def pod_phase(
    init: Sequence[ContainerRecord],
    main: Sequence[ContainerRecord],
    restart_policy: str,
    *,
    terminal: bool = False,
) -> str:
    """The kubelet's ``getPhase``; ``terminal`` once the pod is being torn down for good
    (then a phase that is not Succeeded/Failed becomes Failed, as the kubelet does).

    Sidecars (restartable init containers) count as running while they run; one that runs
    but has not started (its startupProbe) or has never run holds the pod Pending until a
    regular container has started; a terminated sidecar, or one waiting to restart, does not
    count at all (so the sidecars stopped after the regular containers ended leave the phase
    to the regular containers).
    """
    pending_init = failed_init = pending_sidecars = 0
    waiting = running = stopped = succeeded = 0
    for record in init:
        if record.sidecar:
            if record.state == "running":
                running += 1
                pending_sidecars += not record.started
            elif record.state == "waiting" and record.last_terminated is None:
                pending_sidecars += 1
                waiting += 1
            continue
        if record.state == "terminated":
            failed_init += not record.succeeded()
        elif record.state == "waiting" and record.last_terminated is not None:
            failed_init += record.last_terminated.get("exitCode") != 0
        else:
            pending_init += 1
    initialized = any(has_started(record) for record in main)
    for record in main:
        if record.state == "running":
            running += 1
        elif record.state == "terminated":
            stopped += 1
            succeeded += record.succeeded()
        elif record.last_terminated is not None:
            stopped += 1
        else:
            waiting += 1
    phase = "Pending"
    if failed_init and restart_policy == "Never":
        phase = "Failed"
    elif pending_init or (pending_sidecars and not initialized) or waiting:
        phase = "Pending"
    elif running:
        phase = "Running"
    elif stopped:
        if terminal:
            phase = "Succeeded" if stopped == succeeded else "Failed"
        elif restart_policy == "Always":
            phase = "Running"
        elif stopped == succeeded:
            phase = "Succeeded"
        elif restart_policy == "Never":
            phase = "Failed"
        else:
            phase = "Running"
    if terminal and phase not in {"Succeeded", "Failed"}:
        phase = "Failed"
    return phase


def _condition(
    kind: str,
    ok: bool,
    reason: str = "",
    message: str = "",
    *,
    previous: Mapping[str, JSON],
) -> JSON:
    status = "True" if ok else "False"
    old = previous.get(kind)
    transition = old["lastTransitionTime"] if old and old.get("status") == status else now_iso()
    condition: JSON = {
        "type": kind,
        "status": status,
        "lastProbeTime": None,
        "lastTransitionTime": transition,
    }
    if reason:
        condition["reason"] = reason
    if message:
        condition["message"] = message
    return condition


def build_conditions(
    *,
    sandbox_ready: bool,
    init: Sequence[ContainerRecord],
    main: Sequence[ContainerRecord],
    phase: str,
    previous: Sequence[JSON],
    gates_problem: str = "",
) -> list[JSON]:
    """The four conditions the kubelet owns, keeping each transition time while unchanged.

    ``gates_problem`` says which ``readinessGates`` condition is not True (then Ready is
    False with ``ReadinessGatesNotReady`` even when the containers are ready).
    """
    prev = {c.get("type", ""): c for c in previous}
    completed = phase in {"Succeeded", "Failed"}
    # a regular init container has initialized once it succeeded, a sidecar once it started;
    # once a regular container has started the pod stays initialized (a sidecar restarting
    # does not undo it)
    pending_init = [c.name for c in init if not (c.started if c.sidecar else c.succeeded())]
    if phase == "Succeeded":
        init_condition = _condition("Initialized", True, "PodCompleted", previous=prev)
    elif not pending_init or any(has_started(c) for c in main):
        init_condition = _condition("Initialized", True, previous=prev)
    else:
        init_condition = _condition(
            "Initialized",
            False,
            "ContainersNotInitialized",
            f"containers with incomplete status: [{' '.join(pending_init)}]",
            previous=prev,
        )
    unready = [c.name for c in init if c.sidecar and not c.ready]
    unready += [c.name for c in main if not c.ready]
    if completed:
        ready_args: tuple[bool, str, str] = (False, "PodCompleted", "")
    elif unready:
        ready_args = (
            False,
            "ContainersNotReady",
            f"containers with unready status: [{' '.join(unready)}]",
        )
    else:
        ready_args = (True, "", "")
    return [
        _condition("PodReadyToStartContainers", sandbox_ready and not completed, previous=prev),
        init_condition,
        _condition("ContainersReady", *ready_args, previous=prev),
        _condition("Ready", *_ready_with_gates(ready_args, gates_problem), previous=prev),
    ]


def _ready_with_gates(
    containers: tuple[bool, str, str], gates_problem: str
) -> tuple[bool, str, str]:
    if containers[0] and gates_problem:
        return False, "ReadinessGatesNotReady", gates_problem
    return containers


def readiness_gates_problem(pod: JSON) -> str:
    """The kubelet's message for the first readiness gate whose condition is not True."""
    conditions = {c.get("type"): c for c in (pod.get("status") or {}).get("conditions") or []}
    for gate in (pod.get("spec") or {}).get("readinessGates") or []:
        kind = gate.get("conditionType", "")
        if kind not in conditions:
            return f'corresponding condition of pod readiness gate "{kind}" does not exist.'
        if conditions[kind].get("status") != "True":
            return (
                f'the status of pod readiness gate "{kind}" is not "True", but '
                f"{conditions[kind].get('status')}"
            )
    return ""
