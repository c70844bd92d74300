"""Pod phase and conditions as the kubelet computes them (pure)."""

from __future__ import annotations

from typing import Any

from tests.lab.nodeagent.status import ContainerRecord, build_conditions, pod_phase


def running(name: str, ready: bool = True) -> ContainerRecord:
    return ContainerRecord(name, "img", state="running", started_at="t", ready=ready, started=True)


def ended(name: str, code: int, init: bool = False) -> ContainerRecord:
    return ContainerRecord(
        name,
        "img",
        init=init,
        state="terminated",
        terminated={"exitCode": code, "reason": "Completed" if code == 0 else "Error"},
    )


def test_phases() -> None:
    waiting = ContainerRecord("c", "img")
    assert pod_phase([], [waiting], "Always") == "Pending"
    assert pod_phase([], [running("c")], "Never") == "Running"
    assert pod_phase([], [ended("a", 0), ended("b", 0)], "Never") == "Succeeded"
    assert pod_phase([], [ended("a", 0), ended("b", 1)], "Never") == "Failed"
    assert pod_phase([], [ended("a", 1)], "OnFailure") == "Running"
    assert pod_phase([], [ended("a", 0)], "Always") == "Running"
    assert pod_phase([ended("i", 1, init=True)], [waiting], "Never") == "Failed"
    assert pod_phase([ended("i", 1, init=True)], [waiting], "OnFailure") == "Pending"
    assert pod_phase([running("i")], [waiting], "Always") == "Pending"
    crashlooping = ContainerRecord(
        "c", "img", waiting_reason="CrashLoopBackOff", last_terminated={"exitCode": 1}
    )
    assert pod_phase([], [crashlooping], "Always") == "Running"
    # a deleted pod whose containers were stopped
    assert pod_phase([], [ended("a", 143)], "Always", terminal=True) == "Failed"
    assert pod_phase([], [ended("a", 0)], "Always", terminal=True) == "Succeeded"
    assert pod_phase([], [waiting], "Always", terminal=True) == "Failed"


def test_conditions_reasons_and_stable_transition_times() -> None:
    init = [running("setup")]
    main = [ContainerRecord("c", "img", waiting_reason="PodInitializing")]
    first = build_conditions(sandbox_ready=True, init=init, main=main, phase="Pending", previous=[])
    by_type = {c["type"]: c for c in first}
    assert by_type["PodReadyToStartContainers"]["status"] == "True"
    assert by_type["Initialized"]["reason"] == "ContainersNotInitialized"
    assert by_type["Initialized"]["message"] == "containers with incomplete status: [setup]"
    assert by_type["Ready"]["message"] == "containers with unready status: [c]"
    done = [ended("setup", 0, init=True)]
    second = build_conditions(
        sandbox_ready=True, init=done, main=[running("c")], phase="Running", previous=first
    )
    by_type2 = {c["type"]: c for c in second}
    assert by_type2["Ready"]["status"] == "True"
    assert (
        by_type2["PodReadyToStartContainers"]["lastTransitionTime"]
        == by_type["PodReadyToStartContainers"]["lastTransitionTime"]
    )
    final = build_conditions(
        sandbox_ready=False, init=done, main=[ended("c", 0)], phase="Succeeded", previous=second
    )
    assert {c["type"]: c.get("reason") for c in final}["Ready"] == "PodCompleted"


def test_container_status_shapes() -> None:
    record = ContainerRecord(
        "c",
        "alpine:3",
        restart_count=2,
        container_id="lab://x",
        last_terminated={"exitCode": 1, "reason": "Error"},
        waiting_reason="CrashLoopBackOff",
        waiting_message="back-off 20s",
    )
    status = record.to_status()
    assert status["state"] == {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 20s"}}
    assert status["lastState"] == {"terminated": {"exitCode": 1, "reason": "Error"}}
    assert status["restartCount"] == 2
    assert status["imageID"] == "lab://alpine:3"


def test_readiness_gates_hold_ready_back() -> None:
    from tests.lab.nodeagent.status import readiness_gates_problem

    pod = {
        "spec": {"readinessGates": [{"conditionType": "example.com/lb"}]},
        "status": {"conditions": []},
    }
    problem = readiness_gates_problem(pod)
    assert (
        problem == 'corresponding condition of pod readiness gate "example.com/lb" does not exist.'
    )
    conditions = build_conditions(
        sandbox_ready=True,
        init=[],
        main=[running("c")],
        phase="Running",
        previous=[],
        gates_problem=problem,
    )
    by_type = {c["type"]: c for c in conditions}
    assert by_type["ContainersReady"]["status"] == "True"
    assert (by_type["Ready"]["status"], by_type["Ready"]["reason"]) == (
        "False",
        "ReadinessGatesNotReady",
    )
    pod["status"]["conditions"] = [{"type": "example.com/lb", "status": "True"}]
    assert readiness_gates_problem(pod) == ""


def sidecar(
    state: str, *, started: bool = False, ready: bool = False, code: int | None = None
) -> ContainerRecord:
    record = ContainerRecord("proxy", "img", init=True, sidecar=True, state=state)
    record.started, record.ready = started, ready
    if state == "terminated":
        record.terminated = {"exitCode": code, "reason": "Error" if code else "Completed"}
    elif state == "waiting" and code is not None:
        record.waiting_reason = "CrashLoopBackOff"
        record.last_terminated = {"exitCode": code}
    return record


def test_phases_with_a_sidecar() -> None:
    initializing = ContainerRecord("c", "img", waiting_reason="PodInitializing")
    # not started yet (startupProbe), or not run yet: Pending
    assert pod_phase([sidecar("running")], [initializing], "Never") == "Pending"
    assert pod_phase([sidecar("waiting")], [initializing], "Never") == "Pending"
    assert pod_phase([sidecar("running", started=True)], [running("c")], "Never") == "Running"
    # the regular container ended: still Running while the sidecar runs, then its result
    assert pod_phase([sidecar("running", started=True)], [ended("c", 0)], "Never") == "Running"
    assert pod_phase([sidecar("terminated", code=143)], [ended("c", 0)], "Never") == "Succeeded"
    assert pod_phase([sidecar("terminated", code=0)], [ended("c", 2)], "Never") == "Failed"
    assert pod_phase([sidecar("terminated", code=137)], [ended("c", 0)], "OnFailure") == (
        "Succeeded"
    )
    # a sidecar restarting after initialization does not send the pod back to Pending
    assert pod_phase([sidecar("waiting", code=1)], [running("c")], "Never") == "Running"
    assert pod_phase([sidecar("running")], [running("c")], "Never") == "Running"


def test_conditions_with_a_sidecar() -> None:
    initializing = [ContainerRecord("c", "img", waiting_reason="PodInitializing")]

    def conditions(
        init: ContainerRecord, main: list[ContainerRecord], phase: str
    ) -> dict[str, Any]:
        found = build_conditions(
            sandbox_ready=True, init=[init], main=main, phase=phase, previous=[]
        )
        return {c["type"]: c for c in found}

    before = conditions(sidecar("running"), initializing, "Pending")
    assert before["Initialized"]["status"] == "False"
    assert before["Initialized"]["message"] == "containers with incomplete status: [proxy]"
    # started (not yet ready) is enough to be initialized; readiness counts for Ready
    started = conditions(sidecar("running", started=True), [running("c")], "Running")
    assert started["Initialized"]["status"] == "True"
    assert started["Ready"]["status"] == "False"
    assert started["ContainersReady"]["message"] == "containers with unready status: [proxy]"
    ready = conditions(sidecar("running", started=True, ready=True), [running("c")], "Running")
    assert ready["Ready"]["status"] == "True"
    # restarting after the regular containers started: still initialized
    restarting = conditions(sidecar("waiting", code=1), [running("c")], "Running")
    assert restarting["Initialized"]["status"] == "True"
    # stopped after the regular containers ended: its exit code does not matter
    done = conditions(sidecar("terminated", code=143), [ended("c", 0)], "Succeeded")
    assert (done["Initialized"]["status"], done["Initialized"]["reason"]) == (
        "True",
        "PodCompleted",
    )
    assert done["Ready"]["reason"] == "PodCompleted"
