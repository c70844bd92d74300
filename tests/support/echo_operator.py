"""A throwaway kopf operator that proves kopf works on the API emulator (not the product).

Run as ``kopf run -A --standalone tests/support/echo_operator.py`` with ``KUBECONFIG`` set.
On a new FineTuneJob it adds kopf's finalizer (it has a deletion handler and a daemon),
creates an owned PyTorchJob ``<name>-echo`` (exists-check: idempotent), posts an Event and
sets ``status.phase: Echoed``; deleting the FineTuneJob runs the deletion handler, stops the
daemon, releases the finalizer, and the emulator's garbage collector removes the PyTorchJob.
"""

from __future__ import annotations

import os
from typing import Any

import kopf

# KUBECONFIG must be in the environment before the first `import kubernetes`.
if not os.environ.get("KUBECONFIG"):
    raise SystemExit("echo_operator: set KUBECONFIG to the lab's kubeconfig before starting")

import kubernetes

GROUP, VERSION, PLURAL = "tidetune.io", "v1alpha1", "finetunejobs"
FINALIZER = "echo.tidetune.io/finalizer"
_API: list[kubernetes.client.ApiClient] = []  # one client (one connection pool) per process


@kopf.on.startup()
def operator_startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    """Timeouts so that no call hangs forever, and our own finalizer/annotation names."""
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 5
    settings.networking.request_timeout = 30
    settings.networking.connect_timeout = 5
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix="echo.tidetune.io"
    )
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="echo.tidetune.io", key="last-handled-configuration"
    )
    settings.posting.level = 20  # INFO and above become Events
    kubernetes.config.load_kube_config()
    _API.append(kubernetes.client.ApiClient())


def build_child(name: str, namespace: str, method: str) -> dict[str, Any]:
    """The PyTorchJob this operator "launches" (a stub spec: nothing runs it)."""
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {
            "name": f"{name}-echo",
            "namespace": namespace,
            "labels": {"tidetune.io/job": name},
        },
        "spec": {"pytorchReplicaSpecs": {}, "echo": {"method": method}},
    }


@kopf.on.create(GROUP, VERSION, PLURAL)
def finetunejob_create(
    name: str, namespace: str | None, spec: kopf.Spec, body: kopf.Body, patch: kopf.Patch, **_: Any
) -> dict[str, str]:
    """Create the owned child (once), post an Event, set the phase."""
    if namespace is None:
        raise kopf.PermanentError("a FineTuneJob is namespaced; got one without a namespace")
    child = build_child(name, namespace, str(spec.get("method", "")))
    kopf.adopt(child, owner=body)
    api = kubernetes.client.CustomObjectsApi(_API[0])
    try:
        api.create_namespaced_custom_object("kubeflow.org", "v1", namespace, "pytorchjobs", child)
    except kubernetes.client.ApiException as exc:
        if exc.status != 409:  # already there: a restarted operator must not launch twice
            raise kopf.TemporaryError(
                f"creating {child['metadata']['name']}: {exc.reason}", delay=1
            ) from exc
    kopf.info(body, reason="Echoed", message=f"created PyTorchJob {child['metadata']['name']}")
    patch.status["phase"] = "Echoed"
    return {"child": child["metadata"]["name"]}


@kopf.on.delete(GROUP, VERSION, PLURAL)
def finetunejob_delete(name: str, logger: kopf.Logger, **_: Any) -> None:
    """A deletion handler: its presence makes kopf hold the object with a finalizer."""
    logger.info(f"{name} is going; its PyTorchJob goes with it (ownerReferences)")


@kopf.daemon(GROUP, VERSION, PLURAL, cancellation_polling=0.2, cancellation_timeout=5)
async def finetunejob_daemon(stopped: kopf.DaemonStopped, **_: Any) -> None:
    """A per-object daemon, as the real operator's observers are; it just waits to be stopped."""
    await stopped.wait()
