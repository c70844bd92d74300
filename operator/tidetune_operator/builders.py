"""Pure builders: the Kubernetes objects a FineTuneJob owns, as plain dicts.

No I/O here (STYLE §3): handlers gather the world, these functions say what it should
look like, and the tests check them without a cluster. Names are deterministic, so a
restarted operator finds what it already created instead of creating it twice.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime
from typing import Any

import yaml

from tidetune import layout
from tidetune.api import FineTuneJob, ObjectMeta
from tidetune.api.constants import (
    API_VERSION,
    FINETUNEJOB_KIND,
    JOB_LABEL,
    KUEUE_PRIORITY_CLASS_LABEL,
    KUEUE_QUEUE_LABEL,
)
from tidetune.api.constants import ATTEMPT_LABEL as ATTEMPT_LABEL
from tidetune.api.idlepool import IdlePool
from tidetune.layout import SPEC_FILE, SPEC_MOUNT, job_root, run_uri
from tidetune.storage import DEFAULT_PVC_ROOT
from tidetune_operator.config import OperatorConfig

MAX_NAME = 63
#: Kubeflow names pods "<job>-master-0" / "<job>-worker-N" and services after them
#: (DNS-1035 labels ≤ 63), so the launched job's own name must leave room for that.
MAX_LAUNCHER_NAME = 45
MANAGED_BY = {"app.kubernetes.io/managed-by": "tidetune"}

#: The restricted Pod Security Standard for the trainer container.
RESTRICTED_CONTAINER_SECURITY = {
    "runAsNonRoot": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
RESTRICTED_POD_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "runAsGroup": 1000,
    "fsGroup": 1000,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def short_hash(text: str, length: int = 5) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def _truncate(name: str, limit: int) -> str:
    return name[:limit].rstrip("-.")


def config_map_name(job: FineTuneJob) -> str:
    return (
        _truncate(f"{job.metadata.name}-spec", MAX_NAME - 6)
        + "-"
        + short_hash(job.metadata.uid or job.metadata.name)
    )


#: a DNS-1035 label: what Kubeflow's webhooks require of a PyTorchJob's or TrainJob's
#: name (its Services are named after it); a FineTuneJob's name need only be DNS-1123
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
#: put before a job name that does not start with a letter (``1st-run`` → ``ftj-1st-run``)
LEADING_LETTER_PREFIX = "ftj-"


def launcher_name(job: FineTuneJob, attempt: int) -> str:
    """``<name>-<hash>-<attempt>``: unique per job and attempt, stable across restarts, and
    a DNS-1035 label (at most :data:`MAX_LAUNCHER_NAME` characters, starting with a letter).

    The hash is of the uid; for a name that needs the prefix it is of the name too, so
    jobs whose names map to the same stem (``1a`` and ``ftj-1a``) get different launcher
    names even without a uid. Names that start with a letter keep their earlier launcher
    names.
    """
    name = job.metadata.name
    uid = job.metadata.uid or name
    if name[:1].isalpha():
        stem, key = name, uid
    else:
        stem, key = LEADING_LETTER_PREFIX + name, f"{uid}/{name}"
    suffix = f"-{short_hash(key)}-{attempt}"
    return _truncate(stem, MAX_LAUNCHER_NAME - len(suffix)) + suffix


def claims(job: FineTuneJob) -> list[str]:
    """The PersistentVolumeClaims the spec's ``pvc://`` URIs name (model and data), in
    order of first mention. (Output to a claim is refused by validation.)"""
    data = job.spec.data
    uris = [
        job.spec.base_model.uri,
        data.train.uri,
        data.validation.uri if data.validation is not None else None,
        data.mix_in.uri if data.mix_in is not None else None,
    ]
    out: list[str] = []
    for uri in uris:
        if uri and uri.startswith("pvc://"):
            claim = uri.removeprefix("pvc://").split("/", 1)[0]
            if claim and claim not in out:
                out.append(claim)
    return out


def claim_volume_name(claim: str) -> str:
    """A volume name (DNS-1123 label) for a claim name (a DNS-1123 subdomain)."""
    return f"pvc-{_truncate(claim.replace('.', '-'), 48)}-{short_hash(claim)}"


def claim_volumes(job: FineTuneJob) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Volumes and read-only mounts at ``/mnt/pvc/<claim>`` (where the trainer's storage
    resolves ``pvc://<claim>/…``) for every claim the spec names."""
    volumes, mounts = [], []
    for claim in claims(job):
        name = claim_volume_name(claim)
        volumes.append(
            {"name": name, "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
        )
        mounts.append({"name": name, "mountPath": f"{DEFAULT_PVC_ROOT}/{claim}", "readOnly": True})
    return volumes, mounts


def reward_volumes(job: FineTuneJob) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Volumes and read-only mounts at ``/etc/tidetune-rewards/<configmap>/`` for the
    ConfigMaps that hold the job's reward functions (only the keys it names)."""
    keys: dict[str, list[str]] = {}
    rl = job.spec.rl
    for r in rl.rewards if rl is not None else []:
        if r.function is not None:
            ref = r.function.config_map_ref
            if ref.key not in keys.setdefault(ref.name, []):
                keys[ref.name].append(ref.key)
    volumes, mounts = [], []
    for cm, names in keys.items():
        vol = f"rewards-{_truncate(cm.replace('.', '-'), 40)}-{short_hash(cm)}"
        items = [{"key": k, "path": k} for k in names]
        volumes.append({"name": vol, "configMap": {"name": cm, "items": items}})
        mounts.append(
            {"name": vol, "mountPath": f"{layout.REWARD_SOURCES_MOUNT}/{cm}", "readOnly": True}
        )
    return volumes, mounts


#: the reward runtime sidecar (see :func:`reward_runtime_container`)
REWARD_CONTAINER = "reward-runtime"
REWARD_SOCKET_VOLUME = "reward-socket"
REWARD_HOME_VOLUME = "reward-home"
#: its user: not the trainer's (1000, so it cannot read the trainer's files in shared
#: volumes), not ``nobody`` or 65532 (RLIMIT_NPROC counts a uid's processes across the
#: node, and other pods commonly run as those)
REWARD_RUNTIME_UID = 64000
#: headroom of the container's default memory over ``memoryMiB`` per trainer process
REWARD_RUNTIME_MEMORY_OVERHEAD_MIB = 256


def has_custom_rewards(job: FineTuneJob) -> bool:
    """Whether the job has reward rules that are users' own functions."""
    rl = job.spec.rl
    return rl is not None and any(r.function is not None for r in rl.rewards)


def reward_runtime_resources(job: FineTuneJob) -> dict[str, Any]:
    """``rl.rewardRuntime.cpu``/``memory`` as request and limit; by default one core and
    ``memoryMiB`` + 256Mi per trainer process of the node (each rank calls one function
    at a time)."""
    rl = job.spec.rl
    assert rl is not None
    rt = rl.reward_runtime
    procs = job.spec.resources.gpus_per_node or 1
    cpu = rt.cpu or str(procs)
    memory = rt.memory or f"{procs * rt.memory_mi_b + REWARD_RUNTIME_MEMORY_OVERHEAD_MIB}Mi"
    both = {"cpu": cpu, "memory": memory}
    return {"requests": dict(both), "limits": dict(both)}


def reward_runtime_env() -> list[dict[str, Any]]:
    """The reward runtime's whole environment: no Secret, no job identity (the image's
    own ``ENV`` — ``PATH`` — stays)."""
    return [
        {"name": "HOME", "value": "/tmp"},
        {"name": "TMPDIR", "value": "/tmp"},
        {"name": "LANG", "value": "C.UTF-8"},
        {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        # one thread per math library: a call's limits are one core's worth
        {"name": "OMP_NUM_THREADS", "value": "1"},
        {"name": "OPENBLAS_NUM_THREADS", "value": "1"},
        {"name": "MKL_NUM_THREADS", "value": "1"},
    ]


def reward_runtime_command() -> list[str]:
    return [
        "python",
        "-I",
        "-m",
        "tidetune_trainer.rl.sandbox_host",
        "--listen",
        layout.REWARD_SOCKET_PATH,
        "--home",
        "/tmp",
    ]


def reward_runtime_mounts() -> list[dict[str, Any]]:
    return [
        {"name": REWARD_SOCKET_VOLUME, "mountPath": layout.REWARD_SOCKET_DIR},
        {"name": REWARD_HOME_VOLUME, "mountPath": "/tmp"},
    ]


def reward_runtime_volumes() -> list[dict[str, Any]]:
    return [
        {"name": REWARD_SOCKET_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}},
        {"name": REWARD_HOME_VOLUME, "emptyDir": {"sizeLimit": "1Gi"}},
    ]


def reward_runtime_container(job: FineTuneJob, config: OperatorConfig) -> dict[str, Any]:
    """The ``reward-runtime`` sidecar that runs users' reward functions on a cluster.

    A native sidecar (an init container with ``restartPolicy: Always``, Kubernetes ≥
    1.29): it starts before the trainer — its startup probe passes once the socket
    exists — and is stopped after it. Image ``rl.rewardRuntime.image`` (default the
    trainer image); its environment is :func:`reward_runtime_env` only (no Secret, no
    ``envFrom``); it mounts only the socket folder and its own scratch — not the spec,
    the reward sources (the trainer sends them), the data claims or a ServiceAccount
    token (the pod mounts none); the restricted security context as its own user
    (:data:`REWARD_RUNTIME_UID`) with a read-only root filesystem; its own CPU and
    memory (:func:`reward_runtime_resources`)."""
    rl = job.spec.rl
    assert rl is not None
    probe = (
        "import os, stat, sys; "
        f"sys.exit(not stat.S_ISSOCK(os.stat({layout.REWARD_SOCKET_PATH!r}).st_mode))"
    )
    return {
        "name": REWARD_CONTAINER,
        "image": rl.reward_runtime.image or config.trainer_image,
        "imagePullPolicy": config.image_pull_policy,
        "restartPolicy": "Always",
        "command": reward_runtime_command(),
        "env": reward_runtime_env(),
        "resources": reward_runtime_resources(job),
        "volumeMounts": reward_runtime_mounts(),
        "startupProbe": {
            "exec": {"command": ["python", "-I", "-c", probe]},
            "periodSeconds": 1,
            "failureThreshold": 300,
        },
        "securityContext": {
            **RESTRICTED_CONTAINER_SECURITY,
            "readOnlyRootFilesystem": True,
            "runAsUser": REWARD_RUNTIME_UID,
            "runAsGroup": REWARD_RUNTIME_UID,
        },
    }


def owner_reference(job: FineTuneJob) -> dict[str, Any]:
    return {
        "apiVersion": job.api_version,
        "kind": job.kind,
        "name": job.metadata.name,
        "uid": job.metadata.uid or "",
        "controller": True,
        "blockOwnerDeletion": True,
    }


def job_labels(job: FineTuneJob) -> dict[str, str]:
    return {JOB_LABEL: job.metadata.name, **MANAGED_BY}


def launcher_labels(job: FineTuneJob, attempt: int) -> dict[str, str]:
    """Labels of a launched job: the job, the attempt, and Kueue's queue and
    WorkloadPriorityClass when named (Kueue reads both from the launched job's labels)."""
    labels = {**job_labels(job), ATTEMPT_LABEL: str(attempt)}
    scheduling = job.spec.scheduling
    if scheduling.queue_name:
        labels[KUEUE_QUEUE_LABEL] = scheduling.queue_name
        if scheduling.workload_priority_class:
            labels[KUEUE_PRIORITY_CLASS_LABEL] = scheduling.workload_priority_class
    return labels


def output_base(job: FineTuneJob, config: OperatorConfig) -> str | None:
    return job.spec.output.uri or config.default_output_uri


def job_root_uri(job: FineTuneJob, config: OperatorConfig) -> str | None:
    base = output_base(job, config)
    if base is None:
        return None
    return job_root(
        base, job.metadata.namespace or "default", job.metadata.name, job.metadata.uid or ""
    )


def spec_document(job: FineTuneJob) -> dict[str, Any]:
    """What the trainer reads: the manifest without status and cluster bookkeeping."""
    return {
        "apiVersion": job.api_version,
        "kind": job.kind,
        "metadata": {
            "name": job.metadata.name,
            "namespace": job.metadata.namespace,
            "uid": job.metadata.uid,
        },
        "spec": job.spec.to_dict(),
    }


def build_config_map(job: FineTuneJob) -> dict[str, Any]:
    """The ConfigMap that delivers the spec to the trainer pods."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": config_map_name(job),
            "namespace": job.metadata.namespace,
            "labels": job_labels(job),
            "ownerReferences": [owner_reference(job)],
        },
        "data": {SPEC_FILE: _yaml(spec_document(job))},
    }


#: libyaml's emitter when PyYAML has it (10× faster; the operator renders one per job)
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def _yaml(doc: dict[str, Any]) -> str:
    return yaml.dump(doc, Dumper=_DUMPER, sort_keys=False, allow_unicode=True)


def _secret_env(job: FineTuneJob) -> list[dict[str, Any]]:
    ref = job.spec.storage_secret_ref
    if ref is None:
        return []

    def from_secret(var: str, key: str, optional: bool = False) -> dict[str, Any]:
        selector: dict[str, Any] = {"name": ref.name, "key": key}
        if optional:
            selector["optional"] = True
        return {"name": var, "valueFrom": {"secretKeyRef": selector}}

    return [
        from_secret("AWS_ACCESS_KEY_ID", "accessKey"),
        from_secret("AWS_SECRET_ACCESS_KEY", "secretKey"),
        from_secret("TIDETUNE_S3_ENDPOINT", "endpoint", optional=True),
    ]


def _registry_env(job: FineTuneJob) -> list[dict[str, Any]]:
    """The model registry's credentials (``spec.output.publish.credentialsSecretRef``) in
    the variables the MLflow client reads; every key is optional."""
    publish = job.spec.output.publish
    if publish is None or publish.credentials_secret_ref is None:
        return []
    name = publish.credentials_secret_ref.name
    return [
        {"name": var, "valueFrom": {"secretKeyRef": {"name": name, "key": key, "optional": True}}}
        for var, key in (
            ("MLFLOW_TRACKING_TOKEN", "token"),
            ("MLFLOW_TRACKING_USERNAME", "username"),
            ("MLFLOW_TRACKING_PASSWORD", "password"),
        )
    ]


def container_resources(job: FineTuneJob, config: OperatorConfig) -> dict[str, Any]:
    res = job.spec.resources
    defaults = config.default_resources
    gpus = res.gpus_per_node
    cpu = res.cpu or (_scale(defaults.cpu_per_gpu, gpus) if gpus else defaults.cpu_only_cpu)
    memory = res.memory or (
        _scale(defaults.memory_per_gpu, gpus) if gpus else defaults.cpu_only_memory
    )
    requests: dict[str, Any] = {"cpu": cpu, "memory": memory}
    limits: dict[str, Any] = {"memory": memory}
    if gpus:
        requests[config.gpu_resource_name] = str(gpus)
        limits[config.gpu_resource_name] = str(gpus)
    return {"requests": requests, "limits": limits}


def _scale(quantity: str, factor: int) -> str:
    """``8`` × 4 → ``32``; ``64Gi`` × 2 → ``128Gi`` (whole-number quantities only)."""
    digits = "".join(ch for ch in quantity if ch.isdigit() or ch == ".")
    unit = quantity[len(digits) :]
    value = float(digits) * factor
    return f"{int(value) if value.is_integer() else value}{unit}"


def trainer_command(job: FineTuneJob, config: OperatorConfig, root: str) -> list[str]:
    """``torchrun`` (through the exit-code-preserving wrapper) running the trainer.

    ``--output-uri`` is the base; the trainer adds ``<namespace>/<name>/<uid>`` itself.
    """
    base = output_base(job, config) or root
    return [
        "python",
        "-m",
        "tidetune_trainer.launch",
        "-m",
        "tidetune_trainer",
        "--spec",
        f"{SPEC_MOUNT}/{SPEC_FILE}",
        "--run-uri",
        run_uri(root),
        "--output-uri",
        base,
        "--metrics-port",
        str(config.trainer_metrics_port),
    ]


#: the trainer container's name in a PyTorchJob (the training operator's default container)
TRAINER_CONTAINER = "pytorch"


def trainer_pod_basics(config: OperatorConfig) -> dict[str, Any]:
    """What every trainer pod's spec has, whatever the job: pods never restart in place
    (restarts are the operator's call), the grace period of the SIGTERM checkpoint, no API
    token, the restricted security context."""
    return {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": config.termination_grace_seconds,
        "automountServiceAccountToken": False,
        "securityContext": dict(RESTRICTED_POD_SECURITY),
    }


def trainer_container_basics(config: OperatorConfig) -> dict[str, Any]:
    """What every trainer container has, whatever the job: the image, the metrics port,
    the termination message file, the restricted security context with a read-only root."""
    return {
        "image": config.trainer_image,
        "imagePullPolicy": config.image_pull_policy,
        "ports": [{"name": "metrics", "containerPort": config.trainer_metrics_port}]
        if config.trainer_metrics_port
        else [],
        "terminationMessagePath": layout.TERMINATION_LOG_PATH,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {**RESTRICTED_CONTAINER_SECURITY, "readOnlyRootFilesystem": True},
    }


def pod_template(
    job: FineTuneJob,
    config: OperatorConfig,
    pool: IdlePool | None,
    root: str,
    attempt: int,
) -> dict[str, Any]:
    """The trainer pod template, written once for every launcher: a PyTorchJob's Master
    and Workers use it whole; a TrainJob carries the parts its API has per job and its
    ClusterTrainingRuntime the rest (:mod:`tidetune_operator.launchers.trainjob`)."""
    env: list[dict[str, Any]] = [
        {"name": "TIDETUNE_JOB_NAME", "value": job.metadata.name},
        {"name": "TIDETUNE_JOB_NAMESPACE", "value": job.metadata.namespace or "default"},
        {"name": "TIDETUNE_JOB_UID", "value": job.metadata.uid or ""},
        {"name": "TIDETUNE_ATTEMPT", "value": str(attempt)},
        {"name": layout.TERMINATION_LOG_ENV, "value": layout.TERMINATION_LOG_PATH},
        {"name": "HOME", "value": "/tmp"},
        *_secret_env(job),
        *_registry_env(job),
    ]
    if job.spec.model_scheme != "hf":
        env.append({"name": "HF_HUB_OFFLINE", "value": "1"})
    claim_vols, claim_mounts = claim_volumes(job)
    reward_vols, reward_mounts = reward_volumes(job)
    if reward_vols:
        env.append({"name": layout.REWARD_SOURCES_ENV, "value": layout.REWARD_SOURCES_MOUNT})
    sidecar = has_custom_rewards(job)
    if sidecar:  # users' functions run in the reward runtime container, not here
        env.append({"name": layout.REWARD_SOCKET_ENV, "value": layout.REWARD_SOCKET_PATH})
        reward_mounts = [
            *reward_mounts,
            {"name": REWARD_SOCKET_VOLUME, "mountPath": layout.REWARD_SOCKET_DIR, "readOnly": True},
        ]
    # the install's own (config.trainerEnv; names the operator sets above are refused there)
    env.extend({"name": k, "value": v} for k, v in sorted(config.trainer_env.items()))
    container: dict[str, Any] = {
        "name": TRAINER_CONTAINER,
        **trainer_container_basics(config),
        "command": trainer_command(job, config, root),
        "env": env,
        "resources": container_resources(job, config),
        "volumeMounts": [
            {"name": "spec", "mountPath": SPEC_MOUNT, "readOnly": True},
            {"name": "scratch", "mountPath": "/tmp"},
            {"name": "dshm", "mountPath": "/dev/shm"},
            *claim_mounts,
            *reward_mounts,
        ],
    }
    spec: dict[str, Any] = {
        **trainer_pod_basics(config),
        "containers": [container],
        "volumes": [
            {"name": "spec", "configMap": {"name": config_map_name(job)}},
            {"name": "scratch", "emptyDir": {}},
            {"name": "dshm", "emptyDir": {"medium": "Memory"}},
            *claim_vols,
            *reward_vols,
        ],
    }
    if sidecar:
        spec["initContainers"] = [reward_runtime_container(job, config)]
        spec["volumes"].extend(reward_runtime_volumes())
        spec["shareProcessNamespace"] = False  # the default, said out loud
    if pool is not None:
        if pool.spec.node_selector:
            spec["nodeSelector"] = dict(pool.spec.node_selector)
        if pool.spec.tolerations:
            spec["tolerations"] = [t.to_dict() for t in pool.spec.tolerations]
        if pool.spec.priority_class_name:
            spec["priorityClassName"] = pool.spec.priority_class_name
    return {
        "metadata": {
            "labels": {**job_labels(job), ATTEMPT_LABEL: str(attempt)},
            "annotations": {"tidetune.io/job-uid": job.metadata.uid or ""},
        },
        "spec": spec,
    }


def build_event(
    meta: ObjectMeta,
    reason: str,
    message: str,
    *,
    warning: bool,
    now: datetime,
    uid_hint: str,
) -> dict[str, Any]:
    """A core/v1 Event about the job (``meta``: its metadata); the message is bounded
    (1 KiB)."""
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "name": f"{meta.name}.{short_hash(uid_hint, 10)}",
            "namespace": meta.namespace,
            "labels": {JOB_LABEL: meta.name, **MANAGED_BY},
        },
        "involvedObject": {
            "apiVersion": API_VERSION,
            "kind": FINETUNEJOB_KIND,
            "name": meta.name,
            "namespace": meta.namespace,
            "uid": meta.uid,
        },
        "reason": reason,
        "message": message[:1024],
        "type": "Warning" if warning else "Normal",
        "source": {"component": "tidetune-operator"},
        "reportingComponent": "tidetune-operator",
        "reportingInstance": "tidetune-operator",
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }
