"""Launchers: how a FineTuneJob becomes a distributed training job on the cluster.

A launcher is a small interface (STYLE §9): build the object, read its state, suspend or
resume it. ``PyTorchJob`` (Kubeflow training operator v1) is what clusters run today;
``TrainJob`` (Kubeflow Trainer v2) is its sibling, selected with the operator setting
``launcher: TrainJob``. The local process launcher of ``tidetune run`` and the lab lives
in :mod:`tidetune.launchers.local` (it runs processes, not cluster objects).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from tidetune.api import FineTuneJob
from tidetune.api.idlepool import IdlePool
from tidetune_operator import builders
from tidetune_operator.config import OperatorConfig


class LauncherPhase(StrEnum):
    PENDING = "Pending"  # created, pods not running yet
    RUNNING = "Running"
    RESTARTING = "Restarting"
    SUSPENDED = "Suspended"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


@dataclass(frozen=True)
class LauncherState:
    phase: LauncherPhase
    reason: str = ""
    message: str = ""


class Launcher(Protocol):
    """What the operator needs from a launcher kind."""

    kind: str
    group: str
    version: str
    plural: str

    @property
    def api_version(self) -> str: ...

    def build(
        self,
        job: FineTuneJob,
        config: OperatorConfig,
        pool: IdlePool | None,
        attempt: int,
        suspend: bool,
    ) -> dict[str, Any]: ...

    def observe(self, obj: dict[str, Any]) -> LauncherState: ...

    def suspend_patch(self, suspend: bool) -> dict[str, Any]: ...

    def is_suspended(self, obj: dict[str, Any]) -> bool: ...


def _state_from_conditions(
    obj: dict[str, Any], table: tuple[tuple[str, LauncherPhase], ...]
) -> LauncherState | None:
    """The state of the first condition type in ``table`` that is True, if any."""
    conditions = (obj.get("status") or {}).get("conditions") or []
    true = {c.get("type", ""): c for c in conditions if str(c.get("status")) == "True"}
    for ctype, phase in table:
        if ctype in true:
            c = true[ctype]
            return LauncherState(phase, str(c.get("reason", "")), str(c.get("message", "")))
    return None


class _KubeflowKind:
    """What both launchers share: where their kind lives in the API."""

    group: str
    version: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"


class PyTorchJobLauncher(_KubeflowKind):
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

    def build(
        self,
        job: FineTuneJob,
        config: OperatorConfig,
        pool: IdlePool | None,
        attempt: int,
        suspend: bool,
    ) -> dict[str, Any]:
        return builders.build_pytorchjob(job, config, pool, attempt, suspend)

    def observe(self, obj: dict[str, Any]) -> LauncherState:
        return _state_from_conditions(obj, self.CONDITIONS) or LauncherState(LauncherPhase.PENDING)

    def suspend_patch(self, suspend: bool) -> dict[str, Any]:
        return {"spec": {"runPolicy": {"suspend": suspend}}}

    def is_suspended(self, obj: dict[str, Any]) -> bool:
        return bool(((obj.get("spec") or {}).get("runPolicy") or {}).get("suspend"))


class TrainJobLauncher(_KubeflowKind):
    """Kubeflow Trainer v2 ``trainer.kubeflow.org/v1alpha1`` TrainJob.

    Built against the ``torch-distributed`` ClusterTrainingRuntime; this is the path for
    Kueue, which deprecated its PyTorchJob integration. Not exercised by the lab (it
    stands in for the v1 training operator only); its builder is unit-tested.
    """

    kind = "TrainJob"
    group = "trainer.kubeflow.org"
    version = "v1alpha1"
    plural = "trainjobs"
    runtime = "torch-distributed"
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
            k: v for k, v in template["spec"].items() if k not in ("containers", "restartPolicy")
        }
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
                    "name": self.runtime,
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
        state = _state_from_conditions(obj, self.CONDITIONS)
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


LAUNCHERS: dict[str, Launcher] = {
    PyTorchJobLauncher.kind: PyTorchJobLauncher(),
    TrainJobLauncher.kind: TrainJobLauncher(),
}


def get_launcher(kind: str) -> Launcher:
    try:
        return LAUNCHERS[kind]
    except KeyError:
        raise ValueError(f"unknown launcher {kind!r}; allowed: {', '.join(LAUNCHERS)}") from None
