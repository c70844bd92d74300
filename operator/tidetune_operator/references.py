"""The reference checks: what a FineTuneJob's spec refers to must exist before anything
is launched — its storage Secret (with the keys the trainer reads), its reward
ConfigMaps, its IdlePool (valid and big enough), its Kueue WorkloadPriorityClass and an
output location.

Only the job's own namespace is read (a job cannot name another namespace's Secret).
Each problem is a ``(reason, message)`` whose message says what to fix; an API error
other than "not found" is raised (it may heal: the work queue retries).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from tidetune.api import FineTuneJob, Reason
from tidetune.api.idlepool import IdlePool
from tidetune.storage import S3Credentials
from tidetune_operator.builders import job_root_uri
from tidetune_operator.config import OperatorConfig
from tidetune_operator.kube import CONFIGMAPS, SECRETS, WORKLOAD_PRIORITY_CLASSES, ApiError, Kube
from tidetune_operator.launchers import Launcher
from tidetune_operator.observe import credentials_from_secret

Problem = tuple[Reason, str]


def decode(data: Mapping[str, str]) -> dict[str, str]:
    """A Secret's ``data`` decoded (a value that is not base64 text reads as empty)."""
    out = {}
    for k, v in data.items():
        try:
            out[k] = base64.b64decode(v).decode()
        except (ValueError, UnicodeDecodeError):
            out[k] = ""
    return out


def strip(body: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of an API object the models read (kopf adds nothing we need)."""
    return {k: body[k] for k in ("apiVersion", "kind", "metadata", "spec", "status") if k in body}


def pool_problem(body: Mapping[str, Any] | None) -> str:
    """Why a stored IdlePool is invalid (what the API server cannot check, such as an
    unknown time zone), in ``tidetune validate``'s words."""
    from tidetune.manifests import explain

    try:
        IdlePool.model_validate(strip(body or {}))
    except ValidationError as err:
        return "; ".join(": ".join(explain(dict(e), IdlePool)) for e in err.errors()[:3])
    return "unknown"


async def check_references(
    kube: Kube,
    job: FineTuneJob,
    pool: IdlePool | None,
    pools: Mapping[str, Mapping[str, Any]],
    config: OperatorConfig,
    launcher: Launcher,
) -> tuple[list[Problem], dict[str, str] | None]:
    """The problems with what the spec refers to, and the storage Secret's decoded data
    (None without one). ``pool`` is the job's pool as the model reads it (None when it is
    missing or invalid); ``pools`` the stored IdlePools by name; ``launcher`` the kind the
    operator launches (what it cannot carry of the pool is a problem too)."""
    ns = job.metadata.namespace or "default"
    problems: list[Problem] = []
    secret_data = None
    if job_root_uri(job, config) is None:
        problems.append(
            (
                Reason.SPEC_INVALID,
                "no output location: set spec.output.uri (the operator has no defaultOutputUri)",
            )
        )
    ref = job.spec.storage_secret_ref
    if ref is not None:
        try:
            secret = await kube.get(SECRETS, ref.name, ns)
        except ApiError as err:
            if not err.not_found:
                raise
            problems.append(
                (
                    Reason.SECRET_NOT_FOUND,
                    f"spec.storageSecretRef: Secret {ref.name} not found in namespace {ns}; "
                    "create it there with keys accessKey and secretKey "
                    "(a job reads only Secrets of its own namespace)",
                )
            )
        else:
            secret_data = decode(secret.get("data") or {})
            missing = [k for k in ("accessKey", "secretKey") if not secret_data.get(k)]
            if missing:
                problems.append(
                    (
                        Reason.SECRET_KEY_MISSING,
                        f"spec.storageSecretRef: Secret {ref.name} has no "
                        f"{' or '.join(missing)}; "
                        "it needs keys accessKey and secretKey (endpoint optional)",
                    )
                )
    if job.spec.rl is not None:
        for i, rule in enumerate(job.spec.rl.rewards):
            if rule.function is None:
                continue
            cm = rule.function.config_map_ref
            where = f"spec.rl.rewards[{i}].function.configMapRef"
            try:
                found = await kube.get(CONFIGMAPS, cm.name, ns)
            except ApiError as err:
                if not err.not_found:
                    raise
                problems.append(
                    (
                        Reason.CONFIG_MAP_NOT_FOUND,
                        f"{where}: ConfigMap {cm.name} not found in namespace {ns}",
                    )
                )
                continue
            if cm.key not in (found.get("data") or {}):
                problems.append(
                    (
                        Reason.CONFIG_MAP_NOT_FOUND,
                        f"{where}: ConfigMap {cm.name} has no key {cm.key}",
                    )
                )
    pool_name = job.spec.scheduling.pool
    if pool_name:
        if pool is None and pool_name in pools:
            problems.append(
                (
                    Reason.POOL_INVALID,
                    f"spec.scheduling.pool: IdlePool {pool_name} is invalid: "
                    f"{pool_problem(pools.get(pool_name))}",
                )
            )
        elif pool is None:
            problems.append(
                (
                    Reason.POOL_NOT_FOUND,
                    f"spec.scheduling.pool: IdlePool {pool_name} does not exist",
                )
            )
        elif (why_not := launcher.problem(job, pool)) is not None:
            problems.append((Reason.POOL_INVALID, f"spec.scheduling.pool: {why_not}"))
        elif job.spec.resources.total_gpus > pool.spec.gpus:
            problems.append(
                (
                    Reason.POOL_TOO_SMALL,
                    f"spec.resources: the job needs {job.spec.resources.total_gpus} GPUs "
                    f"({job.spec.resources.nodes} × {job.spec.resources.gpus_per_node}) "
                    f"but pool {pool_name} has {pool.spec.gpus}",
                )
            )
    priority_class = job.spec.scheduling.workload_priority_class
    if priority_class:
        try:
            await kube.get(WORKLOAD_PRIORITY_CLASSES, priority_class)
        except ApiError as err:
            if not err.not_found:
                raise
            # Kueue would create no Workload for the launched job (an error in its own log,
            # nothing on the job): the job would wait for Kueue with no word why
            problems.append(
                (
                    Reason.WORKLOAD_PRIORITY_CLASS_NOT_FOUND,
                    f"spec.scheduling.workloadPriorityClass: Kueue WorkloadPriorityClass "
                    f"{priority_class} does not exist (kubectl get workloadpriorityclasses); "
                    "Kueue would not queue the job without it",
                )
            )
    return problems, secret_data


async def storage_credentials(
    kube: Kube, job: FineTuneJob, known: dict[str, str] | None
) -> S3Credentials | None:
    """The job's storage credentials from its Secret (``known``: its data, if read
    already); None when the job names no Secret."""
    ref = job.spec.storage_secret_ref
    if ref is None:
        return None
    data = known
    if data is None:
        secret = await kube.get(SECRETS, ref.name, job.metadata.namespace)
        data = decode(secret.get("data") or {})
    return credentials_from_secret(data)
