"""End to end on idle pools: windows that open and close within minutes, draining before
the close, resuming in the next window, reclaimed and lost nodes, fair sharing, real Kueue.

The pools select the lab's GPU nodes (``GPU_POOL``: their label and the online-serving
taint); the scheduler places the pods there. For this module the operator runs with a clock
offset (``config.clockOffsetSeconds``, the documented test facility) so that a minute
boundary is only a few seconds away when the window test starts; pool windows are whole
minutes, so the test still waits for real minutes to pass.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.lab.cluster import GPU_POOL
from tests.lab.deploy import Stack, tiny_job, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

DAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
OFFSET: list[float] = []


@pytest.fixture(scope="module", autouse=True)
def shifted_clock(stack: Stack) -> Iterator[None]:
    now = datetime.now(UTC)
    # the operator's clock reads hh:mm:40 once it restarts: the next minute starts ~20 s on
    offset = 40.0 - (now.second + now.microsecond / 1e6)
    OFFSET[:] = [offset]
    # ≥ 0.1 s a step: 400 steps outlast the first window's 40 s on any machine
    stack.configure(
        {"clockOffsetSeconds": offset, "trainerEnv": {"TIDETUNE_STEP_DELAY_SECONDS": "0.1"}}
    )
    try:
        yield
    finally:
        stack.configure({})


def operator_now() -> datetime:
    return datetime.now(UTC) + timedelta(seconds=OFFSET[0])


def window(start: datetime, minutes: int) -> dict[str, Any]:
    end = start + timedelta(minutes=minutes)
    end_text = (
        "24:00"
        if end.date() != start.date() and end.time() == datetime.min.time()
        else end.strftime("%H:%M")
    )
    assert end.date() == start.date() or end_text == "24:00", (
        "the test windows must not cross midnight"
    )
    return {"days": [DAYS[start.weekday()]], "start": start.strftime("%H:%M"), "end": end_text}


def pool(name: str, gpus: int, windows: list[dict[str, Any]], drain: str = "20s") -> dict[str, Any]:
    return {
        "apiVersion": "tidetune.io/v1alpha1",
        "kind": "IdlePool",
        "metadata": {"name": name},
        "spec": {
            "gpus": gpus,
            "timezone": "UTC",
            "windows": windows,
            "drainBefore": drain,
            "nodeSelector": GPU_POOL["nodeSelector"],
            "tolerations": GPU_POOL["tolerations"],
        },
    }


ALL_WEEK = [{"days": DAYS, "start": "00:00", "end": "24:00"}]


def final_loss(stack: Stack, status: dict[str, Any]) -> tuple[int, float]:
    final = next(a for a in status["artifacts"] if a["name"] == "final")["uri"]
    root = final.removeprefix(f"s3://{stack.s3.bucket}/").removesuffix("final/")
    lines = [json.loads(x) for x in stack.get(root + "run/metrics.jsonl").decode().splitlines()]
    last = [x for x in lines if "loss" in x][-1]
    return int(last["step"]), float(last["loss"])


def test_window_queue_run_drain_and_resume_in_the_next_window(stack: Stack, train_uri: str) -> None:
    now = operator_now()
    first = (now + timedelta(seconds=65 if now.second > 50 else 60)).replace(
        second=0, microsecond=0
    )
    if first.hour == 23 and first.minute >= 45:
        pytest.fail(
            "the operator's clock is within 15 minutes of midnight; rerun "
            "(the test windows must not cross days)"
        )
    # window 1: one minute (drained 20 s before its end); closed one minute; window 2: ten minutes
    stack.apply(pool("minutes", 4, [window(first, 1), window(first + timedelta(minutes=2), 10)]))
    stack.namespace("pool-a")
    job = tiny_job(
        "nightly",
        "pool-a",
        train_uri,
        steps=400,
        every=10,
        resources={"nodes": 1, "gpusPerNode": 1},
        scheduling={"pool": "minutes"},
    )
    stack.apply(job)
    queued = stack.wait_phase("pool-a", "nightly", "Queued", timeout=30)
    queued_entry = next(e for e in queued["timeline"] if e["type"] == "Queued")
    assert queued_entry["reason"] == "WaitingForPoolWindow"
    assert "minutes opens at" in queued_entry["message"], queued_entry
    assert stack.pytorchjobs("pool-a", "nightly") == []
    # the window opens: admitted and running
    running = stack.wait_phase("pool-a", "nightly", "Running", timeout=90)
    assert running["pool"] == "minutes"
    # 20 s before window 1 closes the job checkpoints and is suspended
    suspended = stack.wait_phase("pool-a", "nightly", "Suspended", timeout=90)
    cond = next(c for c in suspended["conditions"] if c["type"] == "Suspended")
    assert cond["status"] == "True" and cond["reason"] == "WindowClosing"
    pool_status = json.loads(stack.kubectl("get", "idlepool", "minutes", "-o", "json"))["status"]
    assert pool_status["nextTransition"]
    # meanwhile, the same job without a pool runs uninterrupted, for comparison
    stack.namespace("pool-ref")
    stack.apply(pool("reference", 1, ALL_WEEK))  # always open: runs at once, never drained
    reference = tiny_job(
        "nightly",
        "pool-ref",
        train_uri,
        steps=400,
        every=10,
        resources={"nodes": 1, "gpusPerNode": 1},
        scheduling={"pool": "reference"},
    )
    stack.apply(reference)
    # window 2 opens: it resumes from the checkpoint, ahead of anything newer
    # within window 2 (ten minutes), however slow the machine
    done = stack.wait_phase("pool-a", "nightly", "Succeeded", "Failed", timeout=720)
    assert done["phase"] == "Succeeded", done.get("message")
    reasons = [e["reason"] for e in done["timeline"]]
    assert "WindowClosing" in reasons and "WindowOpened" in reasons
    # the window closing is not a preemption; the next window runs attempt 2 (a PyTorchJob
    # that ran is never unsuspended: see reconcile._alive)
    assert (done["preemptions"], done["attempt"]) == (0, 2), done["timeline"]
    ref = stack.wait_phase("pool-ref", "nightly", "Succeeded", "Failed", timeout=600)
    assert ref["phase"] == "Succeeded", ref.get("message")
    assert final_loss(stack, done) == final_loss(stack, ref)


@pytest.mark.parametrize("how", ["reclaimed", "lost"])
def test_a_node_taken_back_resumes_the_job_on_another_from_its_checkpoint(
    stack: Stack, train_uri: str, how: str, ns: str = ""
) -> None:
    """``reclaimed``: the pool takes the node back (cordon, evictions with the grace period:
    the trainer checkpoints on SIGTERM). ``lost``: the node dies (SIGKILL, Node deleted):
    the job resumes from its last periodic checkpoint. Either way the pod runs again on the
    other GPU node and the job ends as if uninterrupted. (``reclaimed`` also runs through the
    TrainJob launcher: tests/e2e/test_trainjob.py, with ``ns``.)"""
    stack.apply(pool("always", 4, ALL_WEEK))
    ns = ns or f"pool-{how}"
    stack.namespace(ns)
    every = 10
    stack.apply(
        tiny_job(
            "taken",
            ns,
            train_uri,
            steps=60,
            every=every,
            resources={"nodes": 1, "gpusPerNode": 1},
            scheduling={"pool": "always"},
        )
    )
    st = stack.wait_step(ns, "taken", every + 3, timeout=180)
    at_kill = st["progress"]["step"]
    (pod,) = stack.pods(ns, "tidetune.io/job=taken")
    node = pod["spec"]["nodeName"]
    assert node in ("gpu-0", "gpu-1"), node
    try:
        if how == "reclaimed":
            stack.lab.reclaim_node(node)
        else:
            stack.lab.lose_node(node)
        done = stack.wait_phase(ns, "taken", "Succeeded", "Failed", timeout=300)
        assert done["phase"] == "Succeeded", done.get("message")
        assert done["preemptions"] == 1, json.dumps(done["timeline"], indent=0)
        preempted = next(e for e in done["timeline"] if e["type"] == "Preempted")
        assert preempted["reason"] == "NodeReclaimed"
        resumed = [e for e in done["timeline"] if e["type"] in ("Resumed", "Running")][-1]
        from_step = int(resumed["message"].split("from step ")[1].split()[0])
        if how == "reclaimed" and "killed" not in preempted["message"]:
            # checkpointed on SIGTERM within the grace period: at least where the status was
            assert from_step >= at_kill, (from_step, at_kill)
        elif how == "reclaimed":
            # SIGKILLed at the end of the grace period before it said why (a very slow
            # machine): resumed from a checkpoint no older than one interval
            assert from_step >= at_kill - every, (from_step, at_kill)
        else:  # the last periodic checkpoint
            assert from_step % every == 0 and from_step >= every, (from_step, at_kill)
        others = {p["spec"]["nodeName"] for p in stack.pods(ns, "tidetune.io/job=taken")}
        assert node not in others
    finally:
        stack.lab.restore_node(node)


def test_two_namespaces_share_a_pool_fairly(stack: Stack, train_uri: str) -> None:
    closed = [
        {"days": [DAYS[(operator_now().weekday() + 3) % 7]], "start": "01:00", "end": "02:00"}
    ]
    stack.apply(pool("shared", 2, closed))
    for ns in ("fair-a", "fair-b"):
        stack.namespace(ns)
    names = [("fair-a", "a1"), ("fair-a", "a2"), ("fair-a", "a3"), ("fair-b", "b1")]
    for ns, name in names:  # team a queues three jobs before team b queues one
        stack.apply(
            tiny_job(
                name,
                ns,
                train_uri,
                steps=6,
                every=3,
                resources={"nodes": 1, "gpusPerNode": 1},
                scheduling={"pool": "shared"},
            )
        )
        stack.wait_phase(ns, name, "Queued", timeout=30)
        time.sleep(1.1)  # distinct creation seconds: age order a1 < a2 < a3 < b1
    stack.apply(pool("shared", 2, ALL_WEEK))  # the pool opens
    stack.wait_phase("fair-b", "b1", "Running", "Succeeded", timeout=60)
    first_two = {
        name
        for ns, name in names
        if stack.status(ns, name).get("phase") in ("Running", "Exporting", "Succeeded")
    }
    assert first_two == {"a1", "b1"}, "round-robin across namespaces: b1 goes before a2 and a3"
    a2 = stack.status("fair-a", "a2")
    assert a2["phase"] == "Queued"
    assert (
        next(c for c in a2["conditions"] if c["type"] == "Admitted")["reason"]
        == "WaitingForCapacity"
    )
    pool_status = json.loads(stack.kubectl("get", "idlepool", "shared", "-o", "json"))["status"]
    assert pool_status["open"] is True and pool_status["queuedJobs"] >= 1
    for ns, name in names:
        assert (
            stack.wait_phase(ns, name, "Succeeded", "Failed", timeout=240)["phase"] == "Succeeded"
        )


KUEUE_API = "kueue.x-k8s.io/v1beta2"
KUEUE_FLAVOR = "lab-cpu"


def resource_flavor() -> dict[str, Any]:
    return {"apiVersion": KUEUE_API, "kind": "ResourceFlavor", "metadata": {"name": KUEUE_FLAVOR}}


def cluster_queue(name: str, cpus: int, memory: str, **spec: Any) -> dict[str, Any]:
    """A ClusterQueue of the lab's CPU flavor with ``cpus`` and ``memory`` as its quota."""
    quota = [{"name": "cpu", "nominalQuota": cpus}, {"name": "memory", "nominalQuota": memory}]
    group = {
        "coveredResources": ["cpu", "memory"],
        "flavors": [{"name": KUEUE_FLAVOR, "resources": quota}],
    }
    return {
        "apiVersion": KUEUE_API,
        "kind": "ClusterQueue",
        "metadata": {"name": name},
        "spec": {**spec, "namespaceSelector": {}, "resourceGroups": [group]},
    }


def local_queue(name: str, namespace: str, cluster_queue_name: str) -> dict[str, Any]:
    return {
        "apiVersion": KUEUE_API,
        "kind": "LocalQueue",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"clusterQueue": cluster_queue_name},
    }


def kueue_queues(cpus: int, namespace: str = "kueue") -> list[dict[str, Any]]:
    return [
        resource_flavor(),
        cluster_queue("team-cq", cpus, "32Gi"),
        local_queue("team-queue", namespace, "team-cq"),
    ]


def test_kueue_mode_waits_for_real_kueue_to_admit(
    stack: Stack, train_uri: str, ns: str = "kueue"
) -> None:
    """(Also run through the TrainJob launcher by tests/e2e/test_trainjob.py, with ``ns``.)"""
    stack.namespace(ns)
    stack.lab.apply_documents(kueue_queues(cpus=0, namespace=ns))  # no quota yet
    stack.apply(
        tiny_job(
            "queued",
            ns,
            train_uri,
            steps=6,
            every=3,
            scheduling={"queueName": "team-queue"},
        )
    )
    launched = wait_for(
        lambda: (stack.launched(ns, "queued") or [None])[0], 30, f"the {stack.launcher}"
    )
    assert stack.is_suspended(launched)
    assert launched["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-queue"

    def workload() -> dict[str, Any] | None:
        items = json.loads(stack.kubectl("-n", ns, "get", "workloads", "-o", "json"))["items"]
        return items[0] if items else None

    pending = wait_for(workload, 30, f"Kueue's Workload for the {stack.launcher}")
    time.sleep(3)
    st = stack.status(ns, "queued")
    assert st["phase"] == "Queued" and "startTime" not in st
    assert stack.is_suspended(stack.launched(ns, "queued")[0])
    # the quota arrives: Kueue admits the Workload and unsuspends the job
    stack.lab.apply_documents(kueue_queues(cpus=8, namespace=ns))
    done = stack.wait_phase(ns, "queued", "Succeeded", "Failed", timeout=240)
    assert done["phase"] == "Succeeded", done.get("message")
    assert done["startTime"]
    admitted = json.loads(
        stack.kubectl("-n", ns, "get", "workload", pending["metadata"]["name"], "-o", "json")
    )
    conditions = {c["type"]: c["status"] for c in admitted["status"]["conditions"]}
    assert conditions.get("Admitted") == "True" or conditions.get("Finished") == "True"


def test_job_in_an_invalid_pool_fails_with_the_pools_problem(stack: Stack, train_uri: str) -> None:
    # the API server cannot know that a time zone does not exist; the operator can
    bad = pool("mars", 4, ALL_WEEK)
    bad["spec"]["timezone"] = "Mars/Olympus"
    stack.apply(bad)
    stack.namespace("pool-invalid")
    stack.apply(
        tiny_job("lost", "pool-invalid", train_uri, resources={"nodes": 1, "gpusPerNode": 1},
                 scheduling={"pool": "mars"})
    )  # fmt: skip
    st = stack.wait_phase("pool-invalid", "lost", "Failed", timeout=60)
    failed = next(c for c in st["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "PoolInvalid"
    assert "spec.timezone: 'Mars/Olympus' is not an IANA time zone" in failed["message"]
    assert stack.pytorchjobs("pool-invalid", "lost") == []


def test_a_job_kueue_evicts_waits_in_queued_and_resumes_when_readmitted(
    stack: Stack, train_uri: str, ns: str = "kueue-evict"
) -> None:
    """Kueue evicts the running job's Workload (deactivated, as an admin or a higher
    priority would): the PyTorchJob is suspended by Kueue, not resumed behind its back; the
    job shows Queued (PreemptedByKueue), and the next attempt, admitted by Kueue, resumes
    from the checkpoint. (Any launcher: ``stack.launched``.)"""
    stack.namespace(ns)
    queues = kueue_queues(cpus=8)
    queues[-1]["metadata"]["namespace"] = ns
    stack.lab.apply_documents(queues)
    stack.apply(
        tiny_job(
            "evicted", ns, train_uri, steps=30, every=5, scheduling={"queueName": "team-queue"}
        )
    )
    stack.wait_step(ns, "evicted", 8, timeout=240)
    (pj,) = stack.launched(ns, "evicted")
    workloads = json.loads(stack.kubectl("-n", ns, "get", "workloads", "-o", "json"))["items"]
    (workload,) = [
        w
        for w in workloads
        if w["metadata"]["ownerReferences"][0]["name"] == pj["metadata"]["name"]
    ]
    stack.kubectl(
        "-n", ns, "patch", "workload", workload["metadata"]["name"], "--type", "merge",
        "-p", '{"spec":{"active":false}}',
    )  # fmt: skip

    def preempted() -> dict[str, Any] | None:
        st = stack.status(ns, "evicted")
        return st if st.get("preemptions") == 1 else None

    st = wait_for(
        preempted, 120, "the Kueue eviction to be seen", lambda: stack.describe(ns, "evicted")
    )
    entry = next(e for e in st["timeline"] if e["reason"] == "PreemptedByKueue")
    assert "Kueue suspended" in entry["message"]
    done = stack.wait_phase(ns, "evicted", "Succeeded", "Failed", timeout=480)
    assert done["phase"] == "Succeeded", done.get("message")
    assert (done["preemptions"], done["attempt"]) == (1, 2), done["timeline"]
    reasons = [e["reason"] for e in done["timeline"]]
    assert "NodeReclaimed" not in reasons  # the eviction was counted once, as Kueue's


PRIORITY_CLASSES = {"batch-low": 100, "prod-high": 1000}


def kueue_priority_classes() -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": "kueue.x-k8s.io/v1beta2",
            "kind": "WorkloadPriorityClass",
            "metadata": {"name": name},
            "value": value,
        }
        for name, value in PRIORITY_CLASSES.items()
    ]


def kueue_cohort(ns: str) -> list[dict[str, Any]]:
    """Two ClusterQueues in one cohort: ``prod-cq`` owns the cohort's one CPU and takes it
    back from lower-priority Workloads (``reclaimWithinCohort: LowerPriority``); ``batch-cq``
    owns none and borrows it while prod is idle."""
    preemption = {"reclaimWithinCohort": "LowerPriority", "withinClusterQueue": "LowerPriority"}
    return [
        resource_flavor(),
        # one tiny job (1 CPU) at a time
        cluster_queue("prod-cq", 1, "8Gi", cohortName="lab-cohort", preemption=preemption),
        cluster_queue("batch-cq", 0, "8Gi", cohortName="lab-cohort", preemption=preemption),
        local_queue("prod", ns, "prod-cq"),
        local_queue("batch", ns, "batch-cq"),
    ]


def test_kueue_preempts_a_lower_priority_job_which_resumes_from_its_checkpoint(
    stack: Stack, train_uri: str
) -> None:
    """A low-priority job borrows the prod ClusterQueue's CPU through the cohort; a
    high-priority job arrives in prod and Kueue evicts the low one to reclaim it. The low
    one checkpoints on SIGTERM, shows Queued (PreemptedByKueue) while the high one runs and
    succeeds, then Kueue readmits it and it resumes from that checkpoint and succeeds with
    one preemption. The low one is applied before the WorkloadPriorityClasses exist (Kueue
    would make no Workload for it): it waits in Pending, saying which, until they do."""
    ns = "kueue-prio"
    stack.namespace(ns)
    stack.kubectl("delete", "workloadpriorityclasses", *PRIORITY_CLASSES, "--ignore-not-found")
    stack.lab.apply_documents(kueue_cohort(ns))
    stack.apply(
        tiny_job(
            "low", ns, train_uri, steps=80, every=5,
            scheduling={"queueName": "batch", "workloadPriorityClass": "batch-low"},
        )
    )  # fmt: skip

    def waiting() -> dict[str, Any] | None:
        st = stack.status(ns, "low")
        validated = next((c for c in st.get("conditions") or [] if c["type"] == "Validated"), {})
        return st if validated.get("reason") == "WorkloadPriorityClassNotFound" else None

    st = wait_for(waiting, 60, "the job to wait for its WorkloadPriorityClass")
    assert st["phase"] == "Pending" and "batch-low does not exist" in st["message"], st
    assert stack.pytorchjobs(ns, "low") == []
    stack.lab.apply_documents(kueue_priority_classes())
    first = wait_for(lambda: (stack.pytorchjobs(ns, "low") or [None])[0], 30, "the PyTorchJob")
    assert first["metadata"]["labels"]["kueue.x-k8s.io/priority-class"] == "batch-low"

    def workload_of(launched: str) -> dict[str, Any]:
        items = json.loads(stack.kubectl("-n", ns, "get", "workloads", "-o", "json"))["items"]
        return next(w for w in items if w["metadata"]["ownerReferences"][0]["name"] == launched)

    at_arrival = stack.wait_step(ns, "low", 6, timeout=240)["progress"]["step"]
    low_workload = workload_of(first["metadata"]["name"])  # borrowing prod's CPU
    assert low_workload["spec"]["priority"] == 100
    assert low_workload["spec"]["priorityClassRef"]["name"] == "batch-low"
    stack.apply(
        tiny_job(
            "high", ns, train_uri, steps=6, every=3,
            scheduling={"queueName": "prod", "workloadPriorityClass": "prod-high"},
        )
    )  # fmt: skip

    def preempted() -> dict[str, Any] | None:
        st = stack.status(ns, "low")
        return st if st.get("preemptions") == 1 and st.get("phase") == "Queued" else None

    st = wait_for(preempted, 120, "Kueue to preempt the low job", lambda: stack.describe(ns, "low"))
    running = next(c for c in st["conditions"] if c["type"] == "Running")
    assert (running["status"], running["reason"]) == ("False", "PreemptedByKueue")
    entry = next(e for e in st["timeline"] if e["reason"] == "PreemptedByKueue")
    assert first["metadata"]["name"] in entry["message"]
    # Kueue preempted the low Workload for the high one (its Event; the Workload itself went
    # with the deleted attempt), to reclaim prod's quota from a lower priority
    events = json.loads(
        stack.kubectl(
            "-n", ns, "get", "events", "--field-selector",
            f"reason=Preempted,involvedObject.name={low_workload['metadata']['name']}",
            "-o", "json",
        )
    )["items"]  # fmt: skip
    assert events and "reclamation within the cohort" in events[0]["message"], events

    high = stack.wait_phase(ns, "high", "Succeeded", "Failed", timeout=300)
    assert high["phase"] == "Succeeded", high.get("message")
    assert high.get("preemptions", 0) == 0
    (high_pj,) = stack.pytorchjobs(ns, "high")
    assert workload_of(high_pj["metadata"]["name"])["spec"]["priority"] == 1000

    done = stack.wait_phase(ns, "low", "Succeeded", "Failed", timeout=480)
    assert done["phase"] == "Succeeded", done.get("message")
    assert (done["preemptions"], done["attempt"]) == (1, 2), done["timeline"]
    # the second attempt resumed from the checkpoint written on Kueue's SIGTERM: at least
    # the step the job had passed when the high-priority job arrived
    again = [e for e in done["timeline"] if e["type"] == "Running"][-1]
    from_step = int(again["message"].split("from step ")[1].split()[0])
    assert from_step >= at_arrival, (from_step, at_arrival, done["timeline"])
    reasons = [e["reason"] for e in done["timeline"]]
    assert "NodeReclaimed" not in reasons
