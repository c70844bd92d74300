"""Kubeflow Trainer v2: the ``TrainJob`` launcher and its builder."""

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


class TrainJobLauncher(KubeflowKind):
    """Kubeflow Trainer v2 ``trainer.kubeflow.org/v1alpha1`` TrainJob.

    Built against the ``torch-distributed`` ClusterTrainingRuntime; this is the path for
    Kueue, which deprecated its PyTorchJob integration. Not exercised by the lab (it
    stands in for the v1 training operator only); its builder is unit-tested.

    A job with custom reward functions needs the ``reward-runtime`` sidecar, and a
    TrainJob's ``podTemplateOverrides`` cannot add a container (only set the env and
    mounts of the runtime's own): such jobs reference :attr:`reward_runtime` instead, a
    ClusterTrainingRuntime that the cluster's admin derives from ``torch-distributed``
    with the sidecar (:func:`tidetune_operator.builders.reward_runtime_container`) as an
    init container; the overrides give it its environment and mounts. Its image and
    resources are the runtime's: ``rl.rewardRuntime.image``, ``cpu`` and ``memory`` are
    applied by the PyTorchJob launcher only.
    """

    kind = "TrainJob"
    group = "trainer.kubeflow.org"
    version = "v1alpha1"
    plural = "trainjobs"
    runtime = "torch-distributed"
    #: the runtime of jobs with custom reward functions (see the class doc)
    reward_runtime = "torch-distributed-tidetune-rewards"
    CONDITIONS = (
        ("Complete", LauncherPhase.SUCCEEDED),
        ("Failed", LauncherPhase.FAILED),
        ("Suspended", LauncherPhase.SUSPENDED),
    )

    def build(
        self,
        job: FineTuneJob,
        config: OperatorConfig,
        pool: IdlePool | None,
        attempt: int,
        suspend: bool,
    ) -> dict[str, Any]:
        root = builders.job_root_uri(job, config)
        if root is None:
            raise ValueError("no output location: set spec.output.uri or defaultOutputUri")
        template = builders.pod_template(job, config, pool, root, attempt)
        container = template["spec"]["containers"][0]
        labels = builders.launcher_labels(job, attempt)
        pod_spec = {
            k: v
            for k, v in template["spec"].items()
            if k not in ("containers", "restartPolicy", "initContainers")
        }
        if template["spec"].get("initContainers"):
            # the runtime defines the sidecar; these set its environment and mounts
            pod_spec["initContainers"] = [
                {"name": c["name"], "env": c["env"], "volumeMounts": c["volumeMounts"]}
                for c in template["spec"]["initContainers"]
            ]
        runtime = self.reward_runtime if builders.has_custom_rewards(job) else self.runtime
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
                "suspend": suspend,
                "runtimeRef": {
                    "apiGroup": self.group,
                    "kind": "ClusterTrainingRuntime",
                    "name": runtime,
                },
                "trainer": {
                    "image": container["image"],
                    "command": container["command"],
                    "env": container["env"],
                    "numNodes": job.spec.resources.nodes,
                    "numProcPerNode": job.spec.resources.gpus_per_node or 1,
                    "resourcesPerNode": container["resources"],
                },
                "podTemplateOverrides": [
                    {
                        "targetJobs": [{"name": "node"}],
                        "metadata": template["metadata"],
                        "spec": {
                            **pod_spec,
                            "containers": [
                                {
                                    "name": "node",
                                    "volumeMounts": container["volumeMounts"],
                                    "securityContext": container["securityContext"],
                                }
                            ],
                        },
                    }
                ],
            },
        }

    def observe(self, obj: dict[str, Any]) -> LauncherState:
        state = state_from_conditions(obj, self.CONDITIONS)
        if state is not None:
            return state
        if (obj.get("spec") or {}).get("suspend"):
            return LauncherState(LauncherPhase.SUSPENDED)
        jobs = (obj.get("status") or {}).get("jobsStatus") or []
        if any(int(j.get("active", 0) or 0) > 0 for j in jobs):
            return LauncherState(LauncherPhase.RUNNING)
        return LauncherState(LauncherPhase.PENDING)

    def suspend_patch(self, suspend: bool) -> dict[str, Any]:
        return {"spec": {"suspend": suspend}}

    def is_suspended(self, obj: dict[str, Any]) -> bool:
        return bool((obj.get("spec") or {}).get("suspend"))
