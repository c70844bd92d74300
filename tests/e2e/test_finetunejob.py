"""End to end: kubectl apply → operator (its chart's Deployment) → PyTorchJob → the real
Kubeflow training operator → pods the scheduler binds and the node agent runs (real torchrun)
→ status and S3.

Each test uses its own namespaces (Pod Security ``restricted`` enforced) in the session's
lab, so they cannot see each other's jobs.
"""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any

import pytest

from tests.lab.cluster import pod_main_pids
from tests.lab.deploy import OPERATOR_NAMESPACE, Stack, sha256_of_artifact, tiny_job, wait_for

pytestmark = [pytest.mark.e2e]


def test_job_trains_from_s3_and_tells_the_whole_story(
    stack: Stack, train_uri: str, ns: str = "e2e-ok"
) -> None:
    """(Also run through the TrainJob launcher by tests/e2e/test_trainjob.py, with ``ns``.)"""
    stack.namespace(ns)
    stack.apply(tiny_job("story", ns, train_uri, steps=8, every=4))
    st = stack.wait_phase(ns, "story", "Succeeded", "Failed")
    assert st["phase"] == "Succeeded", st.get("message")
    conditions = {c["type"]: c for c in st["conditions"]}
    assert conditions["Validated"]["status"] == "True"
    assert conditions["Admitted"]["status"] == "True"
    assert conditions["Succeeded"]["status"] == "True"
    assert conditions["Running"]["status"] == "False"
    for cond in conditions.values():
        assert cond["lastTransitionTime"] and cond["reason"]
    assert st["observedGeneration"] == 1
    assert st["progress"]["step"] == st["progress"]["totalSteps"] == 8
    assert st["progress"]["percent"] == 100
    assert st["progress"]["trainedTokens"] > 0
    assert st["metrics"]["trainLoss"] > 0 and st["metrics"]["tokensPerSecond"] > 0
    assert st["estimate"]["trainTokens"] > 0 and st["estimate"]["currency"] == "USD"
    assert [c["step"] for c in st["checkpoints"]] == [4]  # the end is exported, not checkpointed
    assert st["launcher"]["kind"] == stack.launcher
    assert st["startTime"] and st["completionTime"]
    types = [e["type"] for e in st["timeline"]]
    for expected in ("Validated", "Launched", "Started", "Checkpoint", "Exported", "Succeeded"):
        assert expected in types, types
    # artifacts: the sha256 in status matches the bytes in S3
    names = {a["name"] for a in st["artifacts"]}
    assert "final" in names
    for artifact in st["artifacts"]:
        assert artifact["sizeBytes"] > 0
        assert sha256_of_artifact(stack, artifact) == artifact["sha256"], artifact["name"]
    # the timeline is also in Events
    events = json.loads(stack.kubectl("-n", ns, "get", "events", "-o", "json"))["items"]
    mine = [e for e in events if e["involvedObject"]["name"] == "story"]
    reasons = {e["reason"] for e in mine}
    assert {"Launched", "TrainingComplete"} <= reasons, reasons
    # the Normal steps of one decision are one Event with the last step's reason, naming
    # the others: the launch names its validation, the end names the export
    messages = " | ".join(e["message"] for e in mine)
    assert "Validated: spec and references are valid" in messages, messages
    assert "Exported: " in messages, messages
    # kubectl shows the columns users look at
    table = stack.kubectl("get", "ftj", "-n", ns)
    assert "Succeeded" in table and "100" in table


def test_operator_killed_mid_run_is_restarted_and_launches_nothing_twice(
    stack: Stack, train_uri: str
) -> None:
    stack.namespace("e2e-kill")
    stack.apply(tiny_job("survivor", "e2e-kill", train_uri, steps=40, every=10))
    stack.wait_step("e2e-kill", "survivor", 2)
    (pod,) = stack.operator_pods()
    restarts = pod["status"]["containerStatuses"][0]["restartCount"]
    stack.lab.kill_container(OPERATOR_NAMESPACE, pod["metadata"]["name"], "operator")

    def restarted() -> bool:
        (now,) = stack.operator_pods()
        status = now["status"]["containerStatuses"][0]
        return bool(status["restartCount"] > restarts and status.get("ready"))

    wait_for(restarted, 90, "the operator container to be restarted", stack.operator_diagnostics)
    st = stack.wait_phase("e2e-kill", "survivor", "Succeeded", "Failed", timeout=240)
    assert st["phase"] == "Succeeded", st.get("message")
    assert len(stack.pytorchjobs("e2e-kill", "survivor")) == 1
    assert st["attempt"] == 1 and st["preemptions"] == 0


def test_suspend_and_resume_continue_from_the_checkpoint(
    stack: Stack, train_uri: str, ns: str = "e2e-suspend"
) -> None:
    """(Also run through the TrainJob launcher by tests/e2e/test_trainjob.py, with ``ns``.)"""
    stack.namespace(ns)
    stack.apply(tiny_job("pausable", ns, train_uri, steps=40, every=2))
    stack.wait_step(ns, "pausable", 4)
    stack.kubectl(
        "-n",
        ns,
        "patch",
        "ftj",
        "pausable",
        "--type",
        "merge",
        "-p",
        '{"spec":{"suspend":true}}',
    )
    st = stack.wait_phase(ns, "pausable", "Suspended")
    (launched,) = stack.launched(ns, "pausable")
    assert stack.is_suspended(launched)
    wait_for(
        lambda: any(
            c["type"] == "Suspended" and c["status"] == "True"
            for c in (stack.launched(ns, "pausable")[0].get("status") or {}).get("conditions", [])
        ),
        90,
        f"the {stack.launcher} to report Suspended (the trainer checkpointed and stopped)",
    )
    # the launched job says Suspended as soon as its pods are being deleted; the trainer's
    # SIGTERM checkpoint (at or past step 4) shows in status once it is written and read
    wait_for(
        lambda: max(c["step"] for c in stack.status(ns, "pausable")["checkpoints"]) >= 4,
        60,
        "the checkpoint written on SIGTERM (step 4 or later)",
        lambda: stack.describe(ns, "pausable"),
    )
    stack.kubectl(
        "-n",
        ns,
        "patch",
        "ftj",
        "pausable",
        "--type",
        "merge",
        "-p",
        '{"spec":{"suspend":false}}',
    )
    st = stack.wait_phase(ns, "pausable", "Succeeded", "Failed", timeout=240)
    assert st["phase"] == "Succeeded", st.get("message")
    reasons = [e["reason"] for e in st["timeline"]]
    assert "SuspendedByUser" in reasons and "ResumedByUser" in reasons
    assert st["preemptions"] == 0, json.dumps(st["timeline"], indent=0)
    assert len(stack.launched(ns, "pausable")) == 1
    # the metrics curve is one trajectory: every step once, resumed right after the checkpoint
    root = next(a for a in st["artifacts"] if a["name"] == "final")["uri"].removesuffix("final/")
    lines = (
        stack.get(root.removeprefix("s3://tidetune/") + "run/metrics.jsonl").decode().splitlines()
    )
    steps = [json.loads(line)["step"] for line in lines if '"loss"' in line]
    assert steps == sorted(set(steps)) and steps[-1] == 40


def test_deleting_a_running_job_cleans_up_and_keeps_artifacts(stack: Stack, train_uri: str) -> None:
    stack.namespace("e2e-delete")
    stack.apply(tiny_job("doomed", "e2e-delete", train_uri, steps=200, every=2))
    st = stack.wait_step("e2e-delete", "doomed", 3)
    uid = stack.ftj("e2e-delete", "doomed")["metadata"]["uid"]
    assert len(stack.pytorchjobs("e2e-delete", "doomed")) == 1
    pods = [p["metadata"]["name"] for p in stack.pods("e2e-delete", "tidetune.io/job=doomed")]
    assert pods and all(pod_main_pids(pod) for pod in pods)
    stack.kubectl("-n", "e2e-delete", "delete", "ftj", "doomed")
    wait_for(
        lambda: not stack.pytorchjobs("e2e-delete", "doomed"),
        60,
        "the PyTorchJob to be garbage-collected",
    )
    configmaps = stack.kubectl(
        "-n", "e2e-delete", "get", "configmaps", "-l", "tidetune.io/job=doomed", "-o", "name"
    )
    assert configmaps.strip() == ""
    # the garbage collector deletes the pods; their processes end
    wait_for(lambda: not stack.pods("e2e-delete", "tidetune.io/job=doomed"), 90, "the pods to go")
    assert not [pid for pod in pods for pid in pod_main_pids(pod)]
    # what was written stays in storage
    assert stack.keys(f"artifacts/e2e-delete/doomed/{uid}/run/checkpoints/"), st


@pytest.mark.parametrize("where", ["missing", "other-namespace"])
def test_secret_must_exist_in_the_jobs_own_namespace(
    stack: Stack, train_uri: str, where: str
) -> None:
    """A job whose Secret is not (yet) in its own namespace waits in Pending, launches
    nothing, and runs once the Secret is created there (GitOps may apply both at once)."""
    ns = f"e2e-secret-{where}"
    stack.namespace(ns, secret=False)
    if where == "other-namespace":
        stack.namespace("e2e-secret-holder")  # has s3-creds; the job's namespace does not

    def waiting() -> dict[str, Any] | None:
        st = stack.status(ns, "no-creds")
        return st if st.get("phase") == "Pending" and st.get("conditions") else None

    stack.apply(tiny_job("no-creds", ns, train_uri))
    st = wait_for(waiting, 60, f"{ns}/no-creds to wait", lambda: stack.status(ns, "no-creds"))
    validated = next(c for c in st["conditions"] if c["type"] == "Validated")
    assert (validated["status"], validated["reason"]) == ("False", "SecretNotFound")
    assert validated["message"].startswith(
        f"waiting: spec.storageSecretRef: Secret s3-creds not found in namespace {ns}"
    )
    assert st["message"] == validated["message"]
    assert not any(c["type"] == "Failed" for c in st["conditions"])
    time.sleep(3)  # a few more looks: still waiting, still one timeline entry
    st = stack.status(ns, "no-creds")
    assert st["phase"] == "Pending"
    assert [t["type"] for t in st["timeline"]] == ["Waiting"]
    assert stack.pytorchjobs(ns, "no-creds") == []
    stack.namespace(ns)  # creates s3-creds there
    st = stack.wait_phase(ns, "no-creds", "Running", "Exporting", "Succeeded", timeout=60)
    validated = next(c for c in st["conditions"] if c["type"] == "Validated")
    assert (validated["status"], validated["reason"]) == ("True", "SpecValid")
    assert [t["type"] for t in st["timeline"]].count("Waiting") == 1
    assert len(stack.pytorchjobs(ns, "no-creds")) == 1


def test_bad_data_fails_with_the_line_numbered_message(stack: Stack) -> None:
    stack.namespace("e2e-baddata")
    good = (
        '{"messages": [{"role": "user", "content": "hi"}, '
        '{"role": "assistant", "content": "hello"}]}'
    )
    lines = [good] * 10
    lines[2] = (
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]}'
    )
    lines[6] = '{"messages": [{"role": "wizard", "content": "hi"}]}'
    uri = stack.put("data/bad.jsonl", ("\n".join(lines) + "\n").encode())
    stack.apply(tiny_job("bad", "e2e-baddata", uri))
    st = stack.wait_phase("e2e-baddata", "bad", "Failed", "Succeeded", timeout=120)
    assert st["phase"] == "Failed"
    failed = next(c for c in st["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "BadData", failed
    assert "bad.jsonl:3" in failed["message"] and "bad.jsonl:7" in failed["message"], failed[
        "message"
    ]
    assert st["failures"] == 0 and st["attempt"] == 1  # bad data is not retried


def test_no_credential_value_leaks_anywhere(stack: Stack) -> None:
    """After the runs above: the storage secret key is in no status, spec, Event, launched
    object, ConfigMap, log or metric — only in the Secret itself and the trainer's env."""
    secret = stack.s3.secret_key
    assert len(secret) >= 16  # a random key, so a hit cannot be a coincidence
    places: dict[str, str] = {}
    for kind in ("finetunejobs", "pytorchjobs", "events", "configmaps", "pods"):
        for item in json.loads(stack.kubectl("get", kind, "-A", "-o", "json"))["items"]:
            meta = item["metadata"]
            places[f"{kind} {meta.get('namespace')}/{meta['name']}"] = json.dumps(item)
    # every container's log, as kubectl shows it, and what the node agent kept on disk
    for pod in json.loads(stack.kubectl("get", "pods", "-A", "-o", "json"))["items"]:
        meta = pod["metadata"]
        for container in pod["spec"]["containers"] + pod["spec"].get("initContainers", []):
            out = stack.lab.kubectl(
                "-n", meta["namespace"], "logs", meta["name"], "-c", container["name"]
            )
            places[f"log {meta['namespace']}/{meta['name']}/{container['name']}"] = out.stdout
    files = list(stack.lab.workdir.glob("agent/pods/*/logs/*/*.log"))
    assert files
    for path in files:
        places[str(path)] = path.read_text(errors="replace")
    assert any(k.startswith(f"log {OPERATOR_NAMESPACE}/") and v for k, v in places.items())
    (operator,) = stack.operator_pods()
    url = f"http://{operator['status']['podIP']}:8080/metrics"
    with urllib.request.urlopen(url, timeout=10) as resp:
        places["operator metrics"] = resp.read().decode()
    assert "tidetune_job_progress_ratio" in places["operator metrics"]
    leaks = [where for where, text in places.items() if secret in text]
    assert leaks == [], f"the secret key appears in: {leaks}"
    assert len(places) > 20


def test_a_two_node_job_runs_under_restricted_pod_security(
    stack: Stack, train_uri: str, ns: str = "e2e-multi"
) -> None:
    """Master + Worker: the training operator adds its init-pytorch container to the Worker
    (the lab gives it the chart's restricted template, as helm/tidetune/README.md says to),
    the namespace enforces restricted, and torchrun's two nodes meet at rendezvous. (Also
    through the TrainJob launcher, tests/e2e/test_trainjob.py: no init container there.)"""
    stack.namespace(ns)
    stack.apply(
        tiny_job(
            "pair",
            ns,
            train_uri,
            steps=6,
            every=3,
            resources={"nodes": 2, "gpusPerNode": 0},
        )
    )
    if stack.launcher == "TrainJob":
        st = stack.wait_phase(ns, "pair", "Succeeded", "Failed", timeout=300)
        assert st["phase"] == "Succeeded", st.get("message")
        pods = stack.pods(ns, "tidetune.io/job=pair")
        # Trainer's torch plugin adds none: both nodes of the JobSet's Job reach rank 0 by
        # the JobSet's headless Service (PET_MASTER_ADDR)
        assert len(pods) == 2 and not any(p["spec"].get("initContainers") for p in pods)
        assert {p["status"]["phase"] for p in pods} == {"Succeeded"}
        return

    def worker_past_init() -> dict[str, Any] | None:
        """The Worker once its init container has ended — looked at while the job runs: at
        the end, cleanPodPolicy Running deletes a Worker still running when the Master is
        done (seen on a loaded lab)."""
        for pod in stack.pods(ns, "tidetune.io/job=pair"):
            done = [
                s for s in (pod.get("status") or {}).get("initContainerStatuses") or []
                if "terminated" in s.get("state", {})
            ]  # fmt: skip
            if pod["metadata"]["name"].endswith("-worker-0") and done:
                return pod
        return None

    worker = wait_for(worker_past_init, 300, "the Worker's init container to end",
                      lambda: stack.describe(ns, "pair"))  # fmt: skip
    st = stack.wait_phase(ns, "pair", "Succeeded", "Failed", timeout=300)
    assert st["phase"] == "Succeeded", st.get("message")
    (init,) = worker["spec"]["initContainers"]
    assert init["name"] == "init-pytorch"
    assert init["securityContext"]["runAsNonRoot"] is True
    assert {
        c["state"]["terminated"]["exitCode"] for c in worker["status"]["initContainerStatuses"]
    } == {0}


def test_pods_that_cannot_be_scheduled_are_not_billed_say_why_and_time_out(
    stack: Stack, train_uri: str
) -> None:
    """A GPU job outside the GPU pool: the GPU nodes' taint and the CPU node's lack of
    nvidia.com/gpu keep its pod Pending. The job says so (PodsReady=False with the
    scheduler's words), has not started, and runs up no time. After the start timeout (45 s
    here) the attempt is deleted and the job is Queued with the scheduler's reason; the next
    attempt, 5 s later, times out too, and with maxStartTimeouts 1 the job fails, reason
    StartTimeout, having never run. (The lab keeps the 15-minute default otherwise: a reward
    runtime's sidecar may take a while to start on a loaded machine.)"""
    stack.configure({"startTimeoutSeconds": 45, "startRetryBackoffSeconds": 5,
                     "maxStartTimeouts": 1})  # fmt: skip
    try:
        _unschedulable_job_times_out(stack, train_uri)
    finally:
        stack.configure({})


def _unschedulable_job_times_out(stack: Stack, train_uri: str) -> None:
    ns = "e2e-unschedulable"
    stack.namespace(ns)
    stack.apply(tiny_job("stuck", ns, train_uri, resources={"nodes": 1, "gpusPerNode": 1}))

    def pods_not_ready() -> dict[str, Any] | None:
        st = stack.status(ns, "stuck")
        cond = next((c for c in st.get("conditions") or [] if c["type"] == "PodsReady"), None)
        return st if cond and cond["reason"] == "Unschedulable" else None

    st = wait_for(
        pods_not_ready, 40, "PodsReady=False (Unschedulable)", lambda: stack.describe(ns, "stuck")
    )
    cond = next(c for c in st["conditions"] if c["type"] == "PodsReady")
    assert cond["status"] == "False" and "nvidia.com/gpu" in cond["message"], cond
    assert "Unschedulable" in st["message"]
    assert st.get("runSeconds", 0) == 0 and "startTime" not in st and "runningSince" not in st
    assert st["podsPendingSince"]
    (first,) = stack.pytorchjobs(ns, "stuck")

    def timed_out() -> dict[str, Any] | None:
        st = stack.status(ns, "stuck")
        return st if st.get("startTimeouts") else None

    st = wait_for(timed_out, 90, "the start timeout", lambda: stack.describe(ns, "stuck"))
    entry = next(e for e in st["timeline"] if e["reason"] == "StartTimeout")
    assert entry["message"].startswith(
        f"the pods of {first['metadata']['name']} did not start within 45s: Unschedulable: "
    ), entry
    assert "nvidia.com/gpu" in entry["message"], entry
    if st["phase"] == "Queued":  # (a slow look may find the retry started already)
        cond = next(c for c in st["conditions"] if c["type"] == "PodsReady")
        assert cond["reason"] == "StartTimeout" and "nvidia.com/gpu" in cond["message"], cond
        assert "did not start within 45s" in st["message"]
    events = json.loads(
        stack.kubectl(
            "-n", ns, "get", "events", "--field-selector",
            "reason=StartTimeout,involvedObject.name=stuck", "-o", "json",
        )
    )["items"]  # fmt: skip
    assert events and events[0]["type"] == "Warning", events
    # the capacity is given back: the first attempt's PyTorchJob (and pod) go
    wait_for(
        lambda: (
            first["metadata"]["name"]
            not in {p["metadata"]["name"] for p in stack.pytorchjobs(ns, "stuck")}
        ),
        60,
        "the first attempt's PyTorchJob to be deleted",
    )
    failed = stack.wait_phase(ns, "stuck", "Failed", timeout=120)
    cond = next(c for c in failed["conditions"] if c["type"] == "Failed")
    assert cond["reason"] == "StartTimeout", cond
    assert "did not start within 45s: Unschedulable" in cond["message"], cond
    assert "maxStartTimeouts 1" in cond["message"], cond
    assert (failed["startTimeouts"], failed["attempt"]) == (2, 2)
    assert failed.get("runSeconds", 0) == 0 and "startTime" not in failed
    assert failed.get("preemptions", 0) == 0 and failed.get("failures", 0) == 0
    wait_for(
        lambda: stack.pytorchjobs(ns, "stuck") == [],
        60,
        "the last attempt's PyTorchJob to be deleted",
    )
    stack.kubectl("-n", ns, "delete", "ftj", "stuck")
