"""Kubeflow training operator v1: the ``PyTorchJob`` launcher and its builder."""

from __future__ import annotations

from typing import Any

from tidetune.api import FineTuneJob
from tidetune.api.idlepool import IdlePool
from tidetune_operator import builders
from tidetune_operator.config import OperatorConfig
from tidetune_operator.launchers.base import (
    KubeflowKind,
    LauncherPhase,
    LauncherState,
    state_from_conditions,
)


class PyTorchJobLauncher(KubeflowKind):
    """Kubeflow ``kubeflow.org/v1`` PyTorchJob."""

    kind = "PyTorchJob"
    group = "kubeflow.org"
    version = "v1"
    plural = "pytorchjobs"
    #: its conditions, most decisive first
    CONDITIONS = (
        ("Succeeded", LauncherPhase.SUCCEEDED),
        ("Failed", LauncherPhase.FAILED),
        ("Suspended", LauncherPhase.SUSPENDED),
        ("Restarting", LauncherPhase.RESTARTING),
        ("Running", LauncherPhase.RUNNING),
    )

    def problem(self, job: FineTuneJob, pool: IdlePool | None) -> str | None:
        return None  # a PyTorchJob carries the whole pod template

    def cluster_objects(self, config: OperatorConfig) -> list[dict[str, Any]]:
        return []

    def build(
        self,
        job: FineTuneJob,
        config: OperatorConfig,
        pool: IdlePool | None,
        attempt: int,
        suspend: bool,
    ) -> dict[str, Any]:
        """A Kubeflow ``PyTorchJob`` (kubeflow.org/v1): Master plus ``nodes - 1`` Workers.

        ``nprocPerNode`` is the GPUs per node, or ``1`` process per node for CPU jobs.
        Restarts are the operator's call (it tells preemption from bad data), so pods never
        restart in place (``restartPolicy: Never``).

        No ``backoffLimit``: with one, the training operator (v1.9, ``ReconcileJobs``)
        deletes *every* pod at the first failed replica, failed ones included, before the
        job has its Failed condition (``cleanPodPolicy`` is ignored until then), so the
        failed container's exit code, reason (``OOMKilled``) and log are gone before anyone
        reads them. Without one, a failed replica (``restartPolicy: Never``) marks the job
        Failed, and ``cleanPodPolicy: Running`` then deletes only the pods still running or
        pending (the survivors get SIGTERM and checkpoint); the failed pods stay, with their
        statuses and logs, until the operator has read them and deletes the attempt.
        """
        root = builders.job_root_uri(job, config)
        if root is None:
            raise ValueError(
                "no output location: set spec.output.uri or the operator's defaultOutputUri"
            )
        template = builders.pod_template(job, config, pool, root, attempt)
        labels = builders.launcher_labels(job, attempt)
        replicas: dict[str, Any] = {
            "Master": {"replicas": 1, "restartPolicy": "Never", "template": template}
        }
        if job.spec.resources.nodes > 1:
            replicas["Worker"] = {
                "replicas": job.spec.resources.nodes - 1,
                "restartPolicy": "Never",
                "template": template,
            }
        nproc = job.spec.resources.gpus_per_node or 1
        return {
            "apiVersion": self.api_version,
            "kind": self.kind,
            "metadata": {
                "name": builders.launcher_name(job, attempt),
                "namespace": job.metadata.namespace,
                "labels": labels,
                "ownerReferences": [builders.owner_reference(job)],
            },
            "spec": {
                "nprocPerNode": str(nproc),
                "runPolicy": {
                    "suspend": suspend,
                    "cleanPodPolicy": "Running",
                },
                "pytorchReplicaSpecs": replicas,
            },
        }

    def observe(self, obj: dict[str, Any]) -> LauncherState:
        state = state_from_conditions(obj, self.CONDITIONS) or LauncherState(LauncherPhase.PENDING)
        if state.phase is LauncherPhase.RUNNING and _pods_not_running(obj):
            # the training operator says Running once the master's pod runs; a worker
            # still Pending (no node with its GPUs) holds the job at rendezvous
            return LauncherState(LauncherPhase.PENDING, state.reason, state.message)
        return state

    def has_started(self, obj: dict[str, Any]) -> bool:
        return bool((obj.get("status") or {}).get("conditions"))  # Created comes first

    def suspend_patch(self, suspend: bool) -> dict[str, Any]:
        return {"spec": {"runPolicy": {"suspend": suspend}}}

    def is_suspended(self, obj: dict[str, Any]) -> bool:
        return bool(((obj.get("spec") or {}).get("runPolicy") or {}).get("suspend"))


def _pods_not_running(obj: dict[str, Any]) -> int:
    """Replicas whose pod neither runs nor has ended (Pending, or not created yet), from the
    training operator's ``replicaStatuses`` (it counts a pod as active only once it runs);
    0 when it reports none."""
    statuses = (obj.get("status") or {}).get("replicaStatuses") or {}
    if not statuses:
        return 0
    specs = (obj.get("spec") or {}).get("pytorchReplicaSpecs") or {}
    missing = 0
    for rtype, spec in specs.items():
        st = statuses.get(rtype) or {}
        ended = sum(int(st.get(k, 0) or 0) for k in ("active", "succeeded", "failed"))
        missing += max(0, int(spec.get("replicas", 1) or 0) - ended)
    return missing
