"""End to end through ``launcher: TrainJob``: the operator installed with that setting
launches Kubeflow Trainer 2.3 TrainJobs, which the real Trainer controller turns into a
JobSet, the real JobSet controller into Jobs, and the node agent runs their pods.

The scenarios are the PyTorchJob tier's own tests, run again here with namespaces of this
module (each takes ``ns``; what they check of the launched object goes through
``stack.launched`` and ``stack.is_suspended``): a job that trains to Succeeded with its
artifacts in S3, suspend and resume from the checkpoint, two nodes under restricted Pod
Security, a reclaimed node, and admission by real Kueue through its TrainJob integration.
On top, what only a TrainJob can get wrong: the pods get the operator's grace period (not
the 30 s default), its security context, volumes, environment, node selector and
tolerations, whatever Trainer and Kueue did to the TrainJob on the way.

The module starts Trainer and JobSet in the session's lab (``lab.start_trainer``, ~10 s)
and reinstalls the operator with the TrainJob launcher and a grace period of
:data:`GRACE` s, then puts the lab's values back.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e import test_finetunejob as finetunejob
from tests.e2e import test_idle_pools as idle_pools
from tests.lab.cluster import GPU_POOL
from tests.lab.deploy import Stack
from tidetune_operator.launchers.trainjob import PATCH_MANAGER, RUNTIME, pod_patch_of

pytestmark = [pytest.mark.e2e]

KUEUE_MANAGER = "kueue.x-k8s.io/manager"
#: the operator's grace period here: not the lab's 30 s, which is also Kubernetes' default
GRACE = 45


@pytest.fixture(scope="module", autouse=True)
def trainjob_launcher(stack: Stack) -> Iterator[None]:
    stack.lab.start_trainer()
    stack.configure({"launcher": "TrainJob", "terminationGraceSeconds": GRACE})
    assert stack.launcher == "TrainJob"
    try:
        yield
    finally:
        stack.configure({})


def trainer_pods(stack: Stack, ns: str, job: str) -> list[dict[str, Any]]:
    pods = stack.pods(ns, f"tidetune.io/job={job}")
    assert pods, f"no pod of {ns}/{job}"
    return pods


def assert_pods_are_the_operators(stack: Stack, ns: str, job: str, nodes: int = 1) -> None:
    """Every pod of the job has what the operator's pod template says, through the
    TrainJob, its runtime patch and the runtime the operator keeps."""
    for pod in trainer_pods(stack, ns, job):
        spec = pod["spec"]
        assert spec["terminationGracePeriodSeconds"] == GRACE, pod["metadata"]["name"]
        assert spec["automountServiceAccountToken"] is False
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["restartPolicy"] == "Never"
        assert {"spec", "scratch", "dshm"} <= {v["name"] for v in spec["volumes"]}
        (node,) = spec["containers"]
        assert node["securityContext"]["readOnlyRootFilesystem"] is True
        assert node["terminationMessagePolicy"] == "FallbackToLogsOnError"
        env = {e["name"]: e for e in node["env"]}
        assert env["TIDETUNE_JOB_NAME"]["value"] == job
        assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "s3-creds"
        assert env["PET_NNODES"]["value"] == str(nodes)  # Trainer's torch plugin, for torchrun
        assert pod["metadata"]["annotations"]["tidetune.io/job-uid"]


def test_a_trainjob_trains_from_s3_and_tells_the_whole_story(stack: Stack, train_uri: str) -> None:
    finetunejob.test_job_trains_from_s3_and_tells_the_whole_story(stack, train_uri, ns="tj-ok")
    (tj,) = stack.launched("tj-ok", "story")
    assert tj["spec"]["runtimeRef"]["name"] == RUNTIME
    # Kueue's webhook adds an (empty) entry of its own to every TrainJob; ours is whole
    managers = [p["manager"] for p in tj["spec"]["runtimePatches"]]
    assert managers[0] == PATCH_MANAGER and set(managers) <= {PATCH_MANAGER, KUEUE_MANAGER}
    assert pod_patch_of(tj)["spec"]["terminationGracePeriodSeconds"] == GRACE
    assert_pods_are_the_operators(stack, "tj-ok", "story")
    runtime = stack.kubectl(
        "get", "clustertrainingruntime", RUNTIME, "-o", "jsonpath={..terminationGracePeriodSeconds}"
    )
    assert runtime == str(GRACE)


def test_a_trainjob_suspended_and_resumed_continues_from_the_checkpoint(
    stack: Stack, train_uri: str
) -> None:
    finetunejob.test_suspend_and_resume_continue_from_the_checkpoint(
        stack, train_uri, ns="tj-suspend"
    )
    assert_pods_are_the_operators(stack, "tj-suspend", "pausable")


def test_a_two_node_trainjob_runs_under_restricted_pod_security(
    stack: Stack, train_uri: str
) -> None:
    finetunejob.test_a_two_node_job_runs_under_restricted_pod_security(
        stack, train_uri, ns="tj-multi"
    )
    assert_pods_are_the_operators(stack, "tj-multi", "pair", nodes=2)


def test_a_trainjob_on_a_reclaimed_node_resumes_on_another_from_its_checkpoint(
    stack: Stack, train_uri: str
) -> None:
    idle_pools.test_a_node_taken_back_resumes_the_job_on_another_from_its_checkpoint(
        stack, train_uri, "reclaimed", ns="tj-reclaimed"
    )
    for pod in trainer_pods(stack, "tj-reclaimed", "taken"):
        assert pod["spec"]["nodeSelector"] == GPU_POOL["nodeSelector"]
        assert {t["key"] for t in pod["spec"]["tolerations"]} >= {
            t["key"] for t in GPU_POOL["tolerations"]
        }


def test_kueue_admits_a_trainjob_through_its_trainjob_integration(
    stack: Stack, train_uri: str
) -> None:
    idle_pools.test_kueue_mode_waits_for_real_kueue_to_admit(stack, train_uri, ns="tj-kueue")
    (tj,) = stack.launched("tj-kueue", "queued")
    managers = [p["manager"] for p in tj["spec"]["runtimePatches"]]
    assert PATCH_MANAGER in managers and KUEUE_MANAGER in managers, managers
    # Kueue 0.17 admits by rewriting the whole TrainJob with Trainer 2.2's types, which
    # drops our patch's terminationGracePeriodSeconds (seen here): the runtime's holds
    assert_pods_are_the_operators(stack, "tj-kueue", "queued")
