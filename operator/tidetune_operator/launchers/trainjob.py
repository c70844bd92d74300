"""Kubeflow Trainer v2: the ``TrainJob`` launcher, its builder and its ClusterTrainingRuntime.

The API this builder targets is pinned: ``trainer.kubeflow.org/v1alpha1`` as Kubeflow
Trainer :data:`TRAINER_RELEASE` serves it. Its per-job pod fields live in
``spec.runtimePatches[].trainingRuntimeSpec.template.spec.replicatedJobs[].template.spec
.template`` (they were ``podSpecOverrides`` in 2.0 and ``podTemplateOverrides`` in 2.1;
the API server prunes a field its CRD does not have without a word, so a builder written
for another release loses the grace period, the volumes and the security context
silently). The lab applies what this module builds to the real API server with Trainer
2.3's CRDs and checks that everything was stored.

What goes where — the pod template is written once (:func:`builders.pod_template`):

- ``spec.trainer``: the trainer container's image, command, environment and resources,
  the node count and processes per node;
- the runtime patch (manager :data:`PATCH_MANAGER`): the pod's labels and annotations,
  grace period, security context, volumes, node selector and tolerations; the trainer
  container's mounts and security context; the reward sidecar's environment, mounts and
  security context;
- the ClusterTrainingRuntime :data:`RUNTIME` (:func:`runtime_manifest`, which the operator
  applies at start-up): what every trainer pod has whatever the job and the TrainJob API
  cannot set per job — no restarts in place (``backoffLimit: 0``, ``restartPolicy:
  Never``), no API token, the image pull policy, the metrics port, the termination message
  file — and again the grace period and security context, which Kueue's TrainJob
  integration (built on Trainer 2.2's API, without ``terminationGracePeriodSeconds`` in a
  patch) may drop from the patch when it rewrites the TrainJob on admission.

What a TrainJob cannot express per job is refused rather than dropped: an IdlePool's
``priorityClassName`` (:meth:`TrainJobLauncher.problem`).
"""

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

#: the Kubeflow Trainer release whose TrainJob API the builder targets (the lab runs it)
TRAINER_RELEASE = "v2.3.0"
#: the ClusterTrainingRuntime of TideTune's jobs, which the operator keeps
RUNTIME = "tidetune"
#: the runtime of jobs with custom reward functions: a cluster admin's (see the class doc)
REWARD_RUNTIME = "tidetune-rewards"
#: who owns TideTune's entry of ``spec.runtimePatches`` (a list keyed by manager)
PATCH_MANAGER = "tidetune.io/operator"
#: the name of the runtime's trainer Job and container (Trainer's torch plugin targets it)
NODE = "node"
#: the label that marks the runtime's trainer Job for Trainer's plugins
ANCESTOR_LABEL = "trainer.kubeflow.org/trainjob-ancestor-step"

#: the pod fields a runtime patch may set in Trainer 2.3 (``PodSpecPatch``, containers
#: aside)
POD_PATCH_FIELDS = frozenset(
    {
        "serviceAccountName",
        "volumes",
        "imagePullSecrets",
        "securityContext",
        "nodeSelector",
        "affinity",
        "tolerations",
        "schedulingGates",
        "terminationGracePeriodSeconds",
    }
)
#: the container fields a runtime patch may set (``ContainerPatch``; ``env`` not on ``node``)
CONTAINER_PATCH_FIELDS = ("env", "volumeMounts", "securityContext")
#: the trainer container's fields that ``spec.trainer`` carries
TRAINER_FIELDS = {"image": "image", "command": "command", "env": "env"}


def runtime_manifest(config: OperatorConfig) -> dict[str, Any]:
    """The ClusterTrainingRuntime :data:`RUNTIME`: Trainer's torch policy and one
    replicated Job ``node`` whose pod is what every trainer pod has whatever the job
    (:func:`builders.trainer_pod_basics`, :func:`builders.trainer_container_basics`)."""
    return {
        "apiVersion": f"{TrainJobLauncher.group}/{TrainJobLauncher.version}",
        "kind": "ClusterTrainingRuntime",
        "metadata": {
            "name": RUNTIME,
            "labels": {"trainer.kubeflow.org/framework": "torch", **builders.MANAGED_BY},
        },
        "spec": {
            "mlPolicy": {"numNodes": 1, "torch": {}},
            "template": {
                "spec": {
                    "replicatedJobs": [
                        {
                            "name": NODE,
                            "template": {
                                "metadata": {"labels": {ANCESTOR_LABEL: "trainer"}},
                                "spec": {
                                    # restarts are the operator's call (it tells preemption
                                    # from bad data): a failed pod fails the Job
                                    "backoffLimit": 0,
                                    # never a new pod beside one still terminating (and
                                    # writing its SIGTERM checkpoint)
                                    "podReplacementPolicy": "Failed",
                                    "template": {
                                        "spec": {
                                            **builders.trainer_pod_basics(config),
                                            "containers": [
                                                {
                                                    "name": NODE,
                                                    **builders.trainer_container_basics(config),
                                                }
                                            ],
                                        }
                                    },
                                },
                            },
                        }
                    ]
                }
            },
        },
    }


def _patch(container: dict[str, Any], *, env: bool) -> dict[str, Any]:
    fields = CONTAINER_PATCH_FIELDS if env else CONTAINER_PATCH_FIELDS[1:]
    return {k: container[k] for k in fields if k in container}


class TrainJobLauncher(KubeflowKind):
    """Kubeflow Trainer v2 ``trainer.kubeflow.org/v1alpha1`` TrainJob (Trainer
    :data:`TRAINER_RELEASE`; see the module doc), the path for Kueue's TrainJob
    integration.

    A job with custom reward functions needs the ``reward-runtime`` sidecar, and a runtime
    patch cannot add a container (only set the environment, mounts and security context of
    the runtime's own): such jobs reference :data:`REWARD_RUNTIME` instead, a
    ClusterTrainingRuntime that the cluster's admin derives from :data:`RUNTIME` with the
    sidecar (:func:`tidetune_operator.builders.reward_runtime_container`) as an init
    container; the patch gives it its environment, mounts and security context. Its image
    and resources are the runtime's: ``rl.rewardRuntime.image``, ``cpu`` and ``memory``
    are applied by the PyTorchJob launcher only.
    """

    kind = "TrainJob"
    group = "trainer.kubeflow.org"
    version = "v1alpha1"
    plural = "trainjobs"
    runtime = RUNTIME
    reward_runtime = REWARD_RUNTIME
    CONDITIONS = (
        ("Complete", LauncherPhase.SUCCEEDED),
        ("Failed", LauncherPhase.FAILED),
        ("Suspended", LauncherPhase.SUSPENDED),
    )

    def problem(self, job: FineTuneJob, pool: IdlePool | None) -> str | None:
        """What of ``job``'s pod a TrainJob cannot carry, if anything (then it is not
        launched: dropping it would change what the pool promised)."""
        if pool is not None and pool.spec.priority_class_name:
            return (
                f"IdlePool {pool.metadata.name} sets priorityClassName "
                f"{pool.spec.priority_class_name}, which a TrainJob cannot give its pods "
                f"(Kubeflow Trainer {TRAINER_RELEASE}'s runtime patches have no such "
                "field); use the operator's launcher PyTorchJob for this pool, or remove "
                "priorityClassName from the pool"
            )
        return None

    def cluster_objects(self, config: OperatorConfig) -> list[dict[str, Any]]:
        """The ClusterTrainingRuntime :data:`RUNTIME` (:func:`runtime_manifest`)."""
        return [runtime_manifest(config)]

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
        why_not = self.problem(job, pool)
        if why_not is not None:
            raise ValueError(why_not)
        template = builders.pod_template(job, config, pool, root, attempt)
        pod = template["spec"]
        (container,) = pod["containers"]
        in_runtime = builders.trainer_pod_basics(config)
        left_out = sorted(
            k
            for k in pod
            if k not in POD_PATCH_FIELDS
            and k not in ("containers", "initContainers")
            and in_runtime.get(k, object()) != pod[k]
            and not (k == "shareProcessNamespace" and pod[k] is False)  # the default
        )
        in_runtime_container = builders.trainer_container_basics(config)
        carried = {"name", "resources", *TRAINER_FIELDS, *CONTAINER_PATCH_FIELDS}
        left_out += sorted(
            f"container {k}"
            for k in container
            if k not in carried and in_runtime_container.get(k, object()) != container[k]
        )
        if left_out:  # what the TrainJob API cannot carry and the runtime lacks
            raise ValueError(
                f"a TrainJob (Kubeflow Trainer {TRAINER_RELEASE}) cannot set the pod's "
                f"{', '.join(left_out)}"
            )
        pod_patch: dict[str, Any] = {k: v for k, v in pod.items() if k in POD_PATCH_FIELDS}
        pod_patch["containers"] = [{"name": NODE, **_patch(container, env=False)}]
        if pod.get("initContainers"):
            # the runtime defines the sidecar; the patch sets its environment and mounts
            pod_patch["initContainers"] = [
                {"name": c["name"], **_patch(c, env=True)} for c in pod["initContainers"]
            ]
        runtime = self.reward_runtime if builders.has_custom_rewards(job) else self.runtime
        return {
            "apiVersion": self.api_version,
            "kind": self.kind,
            "metadata": {
                "name": builders.launcher_name(job, attempt),
                "namespace": job.metadata.namespace,
                "labels": builders.launcher_labels(job, attempt),
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
                    **{to: container[k] for k, to in TRAINER_FIELDS.items()},
                    "numNodes": job.spec.resources.nodes,
                    "numProcPerNode": job.spec.resources.gpus_per_node or 1,
                    "resourcesPerNode": container["resources"],
                },
                "runtimePatches": [
                    {
                        "manager": PATCH_MANAGER,
                        "trainingRuntimeSpec": {
                            "template": {
                                "spec": {
                                    "replicatedJobs": [
                                        {
                                            "name": NODE,
                                            "template": {
                                                "spec": {
                                                    "template": {
                                                        "metadata": template["metadata"],
                                                        "spec": pod_patch,
                                                    }
                                                }
                                            },
                                        }
                                    ]
                                }
                            }
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
        # Running once its pods run: a child Job is "active" with its pods merely Pending
        # (unschedulable, pulling), "ready" once all of them are ready. A Trainer that does
        # not report "ready" (it is required since v2.0) falls back to "active".
        jobs = (obj.get("status") or {}).get("jobsStatus") or []
        key = "ready" if all("ready" in j for j in jobs) else "active"
        if any(int(j.get(key, 0) or 0) > 0 for j in jobs):
            return LauncherState(LauncherPhase.RUNNING)
        return LauncherState(LauncherPhase.PENDING)

    def has_started(self, obj: dict[str, Any]) -> bool:
        # Trainer sets conditions only on suspension and at the end; its JobSet's Jobs
        # show in jobsStatus from the start
        status = obj.get("status") or {}
        return bool(status.get("conditions") or status.get("jobsStatus"))

    def suspend_patch(self, suspend: bool) -> dict[str, Any]:
        return {"spec": {"suspend": suspend}}

    def is_suspended(self, obj: dict[str, Any]) -> bool:
        return bool((obj.get("spec") or {}).get("suspend"))


def pod_patch_of(trainjob: dict[str, Any]) -> dict[str, Any]:
    """The pod template of TideTune's runtime patch in a built or stored TrainJob."""
    for patch in trainjob["spec"].get("runtimePatches") or []:
        if patch.get("manager") == PATCH_MANAGER:
            jobs = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
            node = next(j for j in jobs if j["name"] == NODE)
            return dict(node["template"]["spec"]["template"])
    raise KeyError(f"no runtime patch of {PATCH_MANAGER}")
