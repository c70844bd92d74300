"""Reading what the trainer wrote: ``progress.json``, ``estimate.json``, the artifact manifest.

The operator reads the run location with the job's own storage Secret (``get`` on one
Secret in the job's namespace, held in memory only, never logged), and it reads no
training data. Storage calls are blocking (minio), so callers run them in a thread.
"""

from __future__ import annotations

import json
from typing import Any

from tidetune.contract import RunState, artifact_digest
from tidetune.layout import ESTIMATE_FILE, MANIFEST_FILE, PROGRESS_FILE, pod_log_key, run_uri
from tidetune.storage import ObjectStore, S3Credentials, StorageError, open_store
from tidetune_operator.reconcile import ArtifactCheck, PodExit


def credentials_from_secret(data: dict[str, str] | None) -> S3Credentials | None:
    """S3 credentials from a Secret's decoded ``data`` (keys accessKey, secretKey, endpoint)."""
    if not data:
        return None
    kwargs: dict[str, Any] = {
        "access_key": data.get("accessKey"),
        "secret_key": data.get("secretKey"),
    }
    if data.get("endpoint"):
        kwargs["endpoint"] = data["endpoint"]
    return S3Credentials(**kwargs)


def _read_json(store: ObjectStore, key: str) -> dict[str, Any] | None:
    try:
        if not store.exists(key):
            return None
        value = json.loads(store.read_bytes(key))
    except (StorageError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def read_run_state(root: str, credentials: S3Credentials | None) -> RunState | None:
    """The trainer's last ``progress.json`` (with ``estimate.json``), or None if none yet.

    Raises:
        StorageError: the location cannot be reached (may heal: the caller retries).
    """
    store, key = open_store(run_uri(root), credentials)
    progress = _read_json(store, ObjectStore.join(key, PROGRESS_FILE))
    if progress is None:
        return None
    estimate_doc = _read_json(store, ObjectStore.join(key, ESTIMATE_FILE))
    return RunState.from_progress(progress, estimate_doc)


def verify_artifacts(root: str, credentials: S3Credentials | None) -> ArtifactCheck:
    """Check ``manifest.json``: every listed file exists with its size, and each
    artifact's sha256 follows :func:`tidetune.contract.artifact_digest`. Returns the
    status list.
    """
    try:
        store, key = open_store(root, credentials)
        manifest = _read_json(store, ObjectStore.join(key, MANIFEST_FILE))
    except StorageError as err:
        return ArtifactCheck(problem=f"cannot read the artifact manifest: {err}")
    if manifest is None:
        return ArtifactCheck(
            problem=f"{root}/{MANIFEST_FILE} is missing: the export did not finish"
        )
    artifacts = manifest.get("artifacts")
    if not isinstance(artifacts, list) or not artifacts:
        return ArtifactCheck(problem=f"{root}/{MANIFEST_FILE} lists no artifacts")
    out = []
    for art in artifacts:
        name = art.get("name", "?")
        files = art.get("files") or []
        for f in files:
            rel = f.get("uri", "")
            prefix = root.rstrip("/") + "/"
            file_key = ObjectStore.join(key, rel[len(prefix) :]) if rel.startswith(prefix) else None
            if file_key is None:
                return ArtifactCheck(problem=f"artifact {name}: file {rel} is outside {root}")
            try:
                size = store.size(file_key)
            except StorageError:
                return ArtifactCheck(problem=f"artifact {name}: {rel} is missing")
            if size != f.get("sizeBytes"):
                return ArtifactCheck(
                    problem=f"artifact {name}: {rel} has {size} bytes, "
                    f"the manifest says {f.get('sizeBytes')}"
                )
        try:
            digest = artifact_digest(files)
        except (KeyError, TypeError):
            return ArtifactCheck(problem=f"artifact {name}: a file has no path or sha256")
        if digest != art.get("sha256"):
            return ArtifactCheck(problem=f"artifact {name}: sha256 does not match its file list")
        out.append(
            {
                "name": str(name),
                "uri": str(art.get("uri", "")),
                "sizeBytes": int(art.get("sizeBytes", 0)),
                "sha256": str(art.get("sha256")),
            }
        )
    return ArtifactCheck(artifacts=out)


def pods_waiting(pods: list[dict[str, Any]], launcher_name: str) -> tuple[str, str] | None:
    """Why the launched job's pods do not run, as the cluster says it: the scheduler's
    ``PodScheduled=False`` (``Unschedulable`` and its message), a container's waiting reason
    (``ErrImagePull``, ``ImagePullBackOff``, ``CreateContainerConfigError``, …) or, while
    nothing is wrong yet, ``ContainerCreating``. ``None`` when there is no pod of it."""
    mine = [
        p
        for p in pods
        if str(p.get("metadata", {}).get("name", "")).startswith(f"{launcher_name}-")
    ]
    if not mine:
        return None
    mine.sort(key=lambda p: str(p["metadata"]["name"]))
    for pod in mine:  # the scheduler first: no capacity is the reason to tell
        for cond in (pod.get("status") or {}).get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
                reason = str(cond.get("reason") or "Unschedulable")
                return reason, f"{pod['metadata']['name']}: {cond.get('message') or reason}"
    creating: tuple[str, str] | None = None
    for pod in mine:
        name = pod["metadata"]["name"]
        status = pod.get("status") or {}
        statuses = (status.get("initContainerStatuses") or []) + (
            status.get("containerStatuses") or []
        )
        for cs in statuses:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            reason = str(waiting.get("reason") or "")
            if reason and reason not in ("ContainerCreating", "PodInitializing"):
                detail = waiting.get("message") or reason
                return reason, f"{name}: container {cs.get('name')}: {detail}"
            if reason and creating is None:
                creating = (reason, f"{name}: {reason}")
        if status.get("phase") == "Pending" and creating is None:
            creating = ("ContainerCreating", f"{name}: scheduled, containers starting")
    return creating


#: DisruptionTarget reasons the API server, scheduler, taint manager, pod GC and kubelet set
#: on a pod they are about to stop (k8s.io/api core/v1 ``PodReason*``); any reason counts
DISRUPTION_TARGET = "DisruptionTarget"


def _stopped_by(pod: dict[str, Any]) -> str | None:
    """Why the cluster stopped this pod, or None when nothing did: the ``DisruptionTarget``
    condition's reason (eviction API, preemption, taint, pod GC, the kubelet), the kubelet's
    ``Evicted`` status reason (node pressure), or ``Deleted`` (a deletion was asked for: the
    training operator's clean-up of survivors, a suspension, a person)."""
    status = pod.get("status") or {}
    for cond in status.get("conditions") or []:
        if cond.get("type") == DISRUPTION_TARGET and cond.get("status") == "True":
            return str(cond.get("reason") or DISRUPTION_TARGET)
    if status.get("reason") == "Evicted":
        return "Evicted"
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return "Deleted"
    return None


def pod_exits(pods: list[dict[str, Any]], launcher_name: str) -> tuple[PodExit, ...]:
    """The non-zero exits of the launched job's pods, as their container statuses record
    them: each regular container (and each init container that is not a sidecar) whose
    current or last state is terminated with a non-zero code."""
    out: list[PodExit] = []
    for pod in pods:
        meta = pod.get("metadata") or {}
        name = str(meta.get("name", ""))
        if not name.startswith(f"{launcher_name}-"):
            continue
        status = pod.get("status") or {}
        sidecars = {
            str(c.get("name"))
            for c in (pod.get("spec") or {}).get("initContainers") or []
            if c.get("restartPolicy") == "Always"
        }
        statuses = [
            cs for cs in status.get("initContainerStatuses") or [] if cs.get("name") not in sidecars
        ] + list(status.get("containerStatuses") or [])
        stopped = _stopped_by(pod)
        for cs in statuses:
            term = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get(
                "terminated"
            )
            if not term or not isinstance(term.get("exitCode"), int) or term["exitCode"] == 0:
                continue
            out.append(
                PodExit(
                    pod=name,
                    container=str(cs.get("name", "")),
                    exit_code=int(term["exitCode"]),
                    reason=str(term.get("reason") or "Error"),
                    message=str(term.get("message") or ""),
                    finished_at=str(term.get("finishedAt") or ""),
                    stopped_by=stopped,
                )
            )
    return tuple(sorted(out, key=lambda e: (e.pod, e.container)))


#: what replaces a credential found in a pod's log or termination message
REDACTED = "***"
#: credentials must be this long to be looked for (shorter ones would hit ordinary text)
MIN_SECRET_LENGTH = 8


def redact(text: str, secrets: list[str]) -> str:
    """``text`` with every occurrence of each secret value replaced by ``***``. The trainer
    never prints its credentials; this keeps a leak (a library dumping its environment, a
    URL with a key in it) out of the job's status, Events and kept logs all the same."""
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= MIN_SECRET_LENGTH:
            text = text.replace(secret, REDACTED)
    return text


def keep_pod_log(
    root: str, credentials: S3Credentials | None, attempt: int, pod: str, text: str
) -> str:
    """Write a failed pod's last log lines to ``<run>/logs/attempt-<N>/<pod>.log``; its URI.

    Raises:
        StorageError: the run location cannot be written.
    """
    store, key = open_store(run_uri(root), credentials)
    rel = pod_log_key(attempt, pod)
    store.write_bytes(ObjectStore.join(key, rel), text.encode("utf-8"))
    return f"{run_uri(root)}/{rel}"
