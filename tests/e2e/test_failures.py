"""End to end: failures told apart from what the cluster records, and stalls.

- A trainer OOM-killed every time (the cgroup limit of the node agent, as a kubelet's): the
  real training operator marks the PyTorchJob Failed and keeps the failed pod; the operator
  reads its status (``OOMKilled``), counts the attempt towards maxFailures (never the
  preemption path), keeps the pod's last log lines in the run location before deleting the
  attempt, and ends Failed after maxFailures retries with the cause in its message.
- A trainer that hangs (SIGSTOPped: a hung collective looks the same from outside) while
  its pod runs: after stallTimeoutSeconds the job is Stalled, the attempt is ended, and the
  next one resumes from the checkpoint and succeeds.
"""

from __future__ import annotations

import json
import os
import random
import signal
from typing import Any

import pytest

from tests.lab.cluster import pod_main_pids
from tests.lab.deploy import LAB_VALUES, Stack, tiny_job, wait_for

pytestmark = [pytest.mark.e2e]

MAX_FAILURES = 3  # the chart's default, which the lab keeps


def _long_conversations(rows: int, words: int, seed: int = 7) -> bytes:
    """Conversations long enough that a packed batch of 64 × 2048 tokens exists."""
    rng = random.Random(seed)
    vocab = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "plus"]
    lines = []
    for _ in range(rows):
        text = " ".join(rng.choice(vocab) for _ in range(words))
        turns = [{"role": "user", "content": text}, {"role": "assistant", "content": text}]
        lines.append(json.dumps({"messages": turns}))
    return ("\n".join(lines) + "\n").encode()


def _condition(st: dict[str, Any], ctype: str) -> dict[str, Any] | None:
    return next((c for c in st.get("conditions") or [] if c["type"] == ctype), None)


def _events(stack: Stack, ns: str, name: str) -> list[dict[str, Any]]:
    items = json.loads(stack.kubectl("-n", ns, "get", "events", "-o", "json"))["items"]
    return [e for e in items if e["involvedObject"]["name"] == name]


def test_a_trainer_oom_killed_every_time_fails_with_the_cause_and_its_log_kept(
    stack: Stack,
) -> None:
    ns, name = "e2e-oom", "oom"
    stack.namespace(ns)
    uri = stack.put("data/long-conversations.jsonl", _long_conversations(240, 600))
    job = tiny_job(name, ns, uri, steps=4, every=2)
    job["spec"]["resources"] = {"nodes": 1, "gpusPerNode": 0, "memory": "1Gi"}
    # one packed batch of 64 rows × 2048 tokens: its activations and logits need gigabytes
    job["spec"]["hyperparameters"].update(batchSize=64, maxSeqLength=2048)
    stack.apply(job)
    st = stack.wait_phase(ns, name, "Failed", "Succeeded", timeout=900)
    assert st["phase"] == "Failed", st.get("message")
    failed = _condition(st, "Failed")
    assert failed is not None and failed["reason"] == "TooManyFailures", failed
    assert "master-0 OOMKilled (exit " in failed["message"], failed
    assert "OOMKilled" in st["message"]
    # every attempt a failure counted, none a preemption
    assert (st["failures"], st.get("preemptions", 0), st["attempt"]) == (
        MAX_FAILURES + 1,
        0,
        MAX_FAILURES + 1,
    )
    crashed = [e for e in st["timeline"] if e["type"] == "Crashed"]
    assert len(crashed) == MAX_FAILURES
    assert all("OOMKilled" in e["message"] for e in crashed), crashed
    assert not [e for e in st["timeline"] if e["type"] == "Preempted"]
    # the cause also in the Events
    events = _events(stack, ns, name)
    assert any(e["reason"] == "TrainerFailed" and "OOMKilled" in e["message"] for e in events)
    assert any(
        e["reason"] == "TooManyFailures" and e["type"] == "Warning" and "OOMKilled" in e["message"]
        for e in events
    )
    # each attempt's failed pod's last log lines were kept in the run location
    bucket = f"s3://{stack.s3.bucket}/"
    run = st["outputUri"].removeprefix(bucket) + "run/"
    kept = sorted(k for k in stack.keys(run + "logs/") if k.endswith("-master-0.log"))
    assert len(kept) == MAX_FAILURES + 1, stack.keys(run + "logs/")
    assert [k.split("/")[-2] for k in kept] == [f"attempt-{n}" for n in range(1, 5)]
    text = stack.get(kept[-1]).decode()
    assert "SIGKILL" in text, text[-2000:]  # torchrun's report of its rank, OOM-killed
    assert len(text.splitlines()) <= 100
    assert stack.s3.secret_key not in text
    # the message names where the log is
    assert any(kept[0] in e["message"] for e in crashed), crashed


def _trainer_pod(stack: Stack, ns: str, name: str) -> str | None:
    for pod in stack.pods(ns, f"tidetune.io/job={name}"):
        if pod["status"].get("phase") == "Running" and not pod["metadata"].get("deletionTimestamp"):
            return str(pod["metadata"]["name"])
    return None


def test_a_hung_trainer_is_stalled_then_resumed_from_its_checkpoint(
    stack: Stack, train_uri: str
) -> None:
    """SIGSTOP every process of the trainer's pod once it has checkpointed: the pod stays
    Running, the step stops. After stallTimeoutSeconds the job says Stalled (Event too), the
    attempt is ended (the stopped processes are SIGKILLed after the grace period) and the
    next attempt resumes from the checkpoint and finishes; the stall saved a checkpoint, so
    it is not counted as a failure."""
    timeout = float(LAB_VALUES["config"]["stallTimeoutSeconds"])
    ns, name = "e2e-stall", "hang"
    stack.namespace(ns)
    stack.apply(tiny_job(name, ns, train_uri, steps=60, every=5))

    def checkpointed() -> dict[str, Any] | None:
        st = stack.status(ns, name)
        return st if st.get("checkpoints") else None

    st = wait_for(checkpointed, 300, "a first checkpoint", lambda: stack.describe(ns, name))
    pod = _trainer_pod(stack, ns, name)
    assert pod is not None, stack.describe(ns, name)
    pids = pod_main_pids(pod)
    assert pids
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    stopped_at = stack.status(ns, name)["progress"]["step"]
    assert stopped_at < 60, "the job finished before it could be stopped"

    def stalled() -> dict[str, Any] | None:
        st = stack.status(ns, name)
        cond = _condition(st, "Stalled")
        return st if cond and cond["status"] == "True" else None

    st = wait_for(stalled, timeout + 120, "Stalled=True", lambda: stack.describe(ns, name))
    cond = _condition(st, "Stalled")
    assert cond is not None and cond["reason"] == "Stalled"
    assert (
        "no progress for" in cond["message"]
        and f"stallTimeoutSeconds {timeout:g}" in (cond["message"])
    )
    entry = next(e for e in st["timeline"] if e["type"] == "Stalled")
    assert "not counted as a failure" in entry["message"], entry
    assert any(
        e["reason"] == "Stalled" and e["type"] == "Warning" for e in _events(stack, ns, name)
    )
    st = stack.wait_phase(ns, name, "Succeeded", "Failed", timeout=600)
    assert st["phase"] == "Succeeded", st.get("message")
    assert (st["attempt"], st["failures"], st.get("preemptions", 0)) == (2, 0, 0)
    resumed = [e for e in st["timeline"] if e["type"] == "Resumed"]
    assert resumed and "(stalled)" in resumed[0]["message"], resumed
    assert "resumes from step " in resumed[0]["message"], resumed
    cond = _condition(st, "Stalled")
    assert cond is not None and (cond["status"], cond["reason"]) == ("False", "Progressing")
    # the stopped attempt's processes are gone (killed after the grace period)
    wait_for(
        lambda: not [p for p in pids if os.path.exists(f"/proc/{p}")] or None,
        60,
        "the stopped trainer's processes to be gone",
    )


def _rank_pids(pod: str) -> list[int]:
    """The trainer rank processes of a pod (not the launch wrapper, not torchrun)."""
    out = []
    for pid in pod_main_pids(pod):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                argv = handle.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        if (
            "tidetune_trainer" in argv
            and "tidetune_trainer.launch" not in argv
            and "torch.distributed.run" not in argv
        ):
            out.append(pid)
    return out


def test_a_worker_that_dies_is_a_failure_though_the_master_is_stopped_after_it(
    stack: Stack, train_uri: str
) -> None:
    """Two nodes. The worker's trainer is SIGKILLed (as the OOM killer does): the real
    training operator marks the PyTorchJob Failed, keeps the failed worker pod and deletes
    the master, whose trainer gets SIGTERM (and may say "preempted"). The cluster's record
    of the worker decides: a failure counted towards maxFailures, not a preemption, with the
    worker named and its log kept; the next attempt resumes from the checkpoint and the job
    succeeds."""
    ns, name = "e2e-worker", "pair"
    stack.namespace(ns)
    resources = {"nodes": 2, "gpusPerNode": 0}
    stack.apply(tiny_job(name, ns, train_uri, steps=40, every=5, resources=resources))

    def checkpointed() -> dict[str, Any] | None:
        st = stack.status(ns, name)
        return st if st.get("checkpoints") else None

    wait_for(checkpointed, 420, "a first checkpoint", lambda: stack.describe(ns, name))
    pods = stack.pods(ns, f"tidetune.io/job={name}")
    worker = next(
        p["metadata"]["name"]
        for p in pods
        if p["metadata"]["name"].endswith("-worker-0") and p["status"].get("phase") == "Running"
    )
    ranks = _rank_pids(worker)
    assert ranks, f"no trainer rank process in {worker}"
    for pid in ranks:
        os.kill(pid, signal.SIGKILL)

    def failed_once() -> dict[str, Any] | None:
        st = stack.status(ns, name)
        return st if st.get("failures", 0) >= 1 or st.get("preemptions", 0) >= 1 else None

    st = wait_for(failed_once, 300, "the attempt to end", lambda: stack.describe(ns, name))
    assert (st["failures"], st.get("preemptions", 0)) == (1, 0), st["timeline"]
    crashed = next(e for e in st["timeline"] if e["type"] == "Crashed")
    assert "worker-0" in crashed["message"], crashed
    assert "SIGKILL" in crashed["message"] or "exit" in crashed["message"], crashed
    st = stack.wait_phase(ns, name, "Succeeded", "Failed", timeout=600)
    assert st["phase"] == "Succeeded", st.get("message")
    assert (st["attempt"], st["failures"], st.get("preemptions", 0)) == (2, 1, 0)
    run = st["outputUri"].removeprefix(f"s3://{stack.s3.bucket}/") + "run/"
    text = stack.get(f"{run}logs/attempt-1/{worker}.log").decode()
    assert "SIGKILL" in text, text[-2000:]
