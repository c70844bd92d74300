"""The peer of ``bench/operator_scale.py``: the simplest kopf operator that does the job.

    kopf run -A --standalone bench/peer_operator.py

What a team would write in an afternoon: in-cluster configuration, one ``@kopf.on.create``
handler that creates a valid PyTorchJob for each FineTuneJob — created suspended (as TideTune
launches), owned by the FineTuneJob (``kopf.adopt``), labelled ``tidetune.io/job`` — with
the ``kubernetes`` client, and 409 taken as already done. Everything else is kopf's default:
its progress and last-handled-configuration annotations, its Events for handler outcomes.
It runs as TideTune's Deployment with the command replaced, under TideTune's ServiceAccount;
the benchmark grants it what kopf's defaults need beyond TideTune's rules (patch on
finetunejobs, for the annotations).
"""

from __future__ import annotations

from typing import Any

import kopf
import kubernetes

TRAINER_IMAGE = "ghcr.io/tidetune/trainer:lab"
_API: list[kubernetes.client.CustomObjectsApi] = []


@kopf.on.startup()
def startup(**_: Any) -> None:
    kubernetes.config.load_incluster_config()
    _API.append(kubernetes.client.CustomObjectsApi())


def pytorchjob(name: str, namespace: str, spec: kopf.Spec) -> dict[str, Any]:
    """One master replica running the trainer, suspended: a valid job nothing runs yet."""
    gpus = int((spec.get("resources") or {}).get("gpusPerNode", 0) or 0)
    limits = {"nvidia.com/gpu": str(gpus)} if gpus else {}
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {"name": name, "namespace": namespace, "labels": {"tidetune.io/job": name}},
        "spec": {
            "runPolicy": {"suspend": True},
            "pytorchReplicaSpecs": {
                "Master": {
                    "replicas": 1,
                    "restartPolicy": "OnFailure",
                    "template": {
                        "spec": {
                            "containers": [
                                {
                                    "name": "pytorch",
                                    "image": TRAINER_IMAGE,
                                    "args": ["train", "--job", name],
                                    "resources": {"limits": limits},
                                }
                            ]
                        }
                    },
                }
            },
        },
    }


@kopf.on.create("tidetune.io", "v1alpha1", "finetunejobs")
def launch(
    name: str, namespace: str | None, spec: kopf.Spec, body: kopf.Body, **_: Any
) -> dict[str, str]:
    if namespace is None:
        raise kopf.PermanentError("a FineTuneJob is namespaced; this one has no namespace")
    child = pytorchjob(name, namespace, spec)
    kopf.adopt(child, owner=body)
    try:
        _API[0].create_namespaced_custom_object(
            "kubeflow.org", "v1", namespace, "pytorchjobs", child
        )
    except kubernetes.client.ApiException as exc:
        if exc.status != 409:
            raise kopf.TemporaryError(f"creating PyTorchJob {name}: {exc.reason}", delay=1) from exc
    return {"launched": name}
