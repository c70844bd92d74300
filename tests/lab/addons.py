"""The real controllers our jobs go through, run next to the control plane: the Kubeflow
training operator v1 (PyTorchJob) and Kueue, built by ``.ci/setup-kube.sh``.

Each runs as a host process with the admin kubeconfig (documented difference: on a cluster
they run as Deployments with their own ServiceAccounts). Their webhooks are real: the
manifests come from the same module versions (``.tools/manifests``), each controller makes
its own serving certificate with its built-in certificate rotator (cert-controller), stores it
in its Secret and injects the CA into its webhook configurations, and a Service without
selector whose manual Endpoints point at the lab's gateway address routes the API server to
it (``--enable-aggregator-routing``). The rotator then waits for the certificate files to
appear in its certificate directory, where a kubelet projects the Secret volume of the
controller's pod: :func:`project_secret` does that kubelet's part here.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import json
import pathlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import yaml

from tests.lab.controlplane import TOOLS, free_port, tool

if TYPE_CHECKING:
    from tests.lab.cluster import Lab

__all__ = ["install_kubeflow", "install_kueue", "manifests"]

MANIFESTS = TOOLS / "manifests"
KUEUE_NAMESPACE = "kueue-system"
KUBEFLOW_NAMESPACE = "kubeflow"
KUBEFLOW_WEBHOOK = "validator.training-operator.kubeflow.org"
#: the init container template TideTune's chart documents for restricted namespaces
INIT_CONTAINER_TEMPLATE = (
    pathlib.Path(__file__).resolve().parents[2]
    / "helm"
    / "tidetune"
    / "files"
    / "pytorch-init-container.yaml"
)


def manifests(*paths: pathlib.Path) -> Iterator[dict[str, Any]]:
    """The YAML documents of ``paths`` (files, or directories of ``*.yaml`` but kustomize's)."""
    for path in paths:
        files = sorted(path.glob("*.yaml")) if path.is_dir() else [path]
        for file in files:
            if file.name.startswith("kustomiz"):
                continue
            for doc in yaml.load_all(file.read_text(), Loader=yaml.CSafeLoader):
                if doc:
                    yield doc


def _service_with_endpoints(lab: Lab, namespace: str, name: str, port: int) -> list[dict[str, Any]]:
    """A Service on port 443 whose only endpoint is ``gateway:port`` on the host."""
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"ports": [{"name": "https", "port": 443, "targetPort": port}]},
        },
        {
            "apiVersion": "v1",
            "kind": "Endpoints",
            "metadata": {"name": name, "namespace": namespace},
            "subsets": [
                {
                    "addresses": [{"ip": lab.network.gateway}],
                    "ports": [{"name": "https", "port": port}],
                }
            ],
        },
    ]


def _point_webhooks(doc: dict[str, Any], namespace: str, service: str) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    for hook in doc.get("webhooks", []):
        ref = hook["clientConfig"]["service"]
        ref["namespace"], ref["name"] = namespace, service
    return doc


def _wait_webhook_ready(lab: Lab, kind: str, name: str, timeout: float = 120) -> None:
    """Until the controller's rotator has put its CA into the webhook configuration."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = lab.kubectl("get", kind, name, "-o", "jsonpath={.webhooks[0].clientConfig.caBundle}")
        if out.returncode == 0 and out.stdout.strip():
            return
        time.sleep(0.5)
    raise RuntimeError(
        f"{kind} {name} has no CA after {timeout:.0f} s: the controller's webhook "
        "certificate rotator did not run; see the lab logs"
    )


def project_secret(lab: Lab, namespace: str, name: str, directory: pathlib.Path) -> None:
    """Keep ``directory`` holding the keys of Secret ``namespace/name`` as files, as a
    kubelet keeps a Secret volume current: polled every second until the rotator has filled
    it, then every 30 s (a kubelet's sync period is about a minute) until the lab stops."""
    directory.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    lab.on_stop(stop.set)

    def sync() -> None:
        seen: dict[str, str] = {}
        while not stop.wait(30.0 if seen else 1.0):
            with contextlib.suppress(Exception):
                out = lab.kubectl("-n", namespace, "get", "secret", name, "-o", "json")
                if out.returncode != 0:
                    continue
                data = json.loads(out.stdout).get("data") or {}
                if data == seen:
                    continue
                for key, value in data.items():
                    tmp = directory / f".{key}.tmp"
                    tmp.write_bytes(base64.b64decode(value))
                    tmp.chmod(0o600)
                    tmp.replace(directory / key)
                seen = data

    threading.Thread(target=sync, name=f"project-{name}", daemon=True).start()


def _wait_listening(lab: Lab, port: int, what: str, timeout: float = 120) -> None:
    """Until the webhook server accepts connections (its certificates have arrived)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((lab.network.gateway, port), 1):
            return
        time.sleep(0.3)
    raise RuntimeError(
        f"{what}'s webhook server is not listening on port {port} after {timeout:.0f} s"
    )


def install_kubeflow(lab: Lab, *, controller: bool = True) -> None:
    """The Kubeflow training operator v1.9 with its CRDs and validating webhook (only the
    CRDs without ``controller``: PyTorchJobs are stored and nothing runs them)."""
    base = MANIFESTS / "kubeflow"
    if not base.is_dir():
        raise FileNotFoundError(f"{base} is missing: run 'bash .ci/setup' (.ci/setup-kube.sh)")
    if not controller:
        lab.apply_documents(manifests(base / "crds"))
        return
    port = free_port(lab.network.gateway)
    docs: list[dict[str, Any]] = list(manifests(base / "crds"))
    docs += _service_with_endpoints(lab, KUBEFLOW_NAMESPACE, "training-operator", port)
    docs.append(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {"name": "training-operator-webhook-cert", "namespace": KUBEFLOW_NAMESPACE},
        }
    )
    for doc in manifests(base / "webhook" / "manifests.yaml"):
        doc = _point_webhooks(doc, KUBEFLOW_NAMESPACE, "training-operator")
        # the name its release gives it (webhook/patch.yaml), which its certificate rotator
        # looks for to inject the CA
        doc["metadata"]["name"] = KUBEFLOW_WEBHOOK
        docs.append(doc)
    lab.apply_documents(docs)
    # Its certificate directory is a constant (/tmp/k8s-webhook-server/serving-certs): give it
    # a private one in a mount namespace of its own, so that labs side by side do not clash.
    certs = lab.workdir / "kubeflow-certs"
    project_secret(lab, KUBEFLOW_NAMESPACE, "training-operator-webhook-cert", certs)
    binary = tool("training-operator.v1")
    script = (
        "mkdir -p /tmp/k8s-webhook-server/serving-certs && "
        f'mount --bind {certs} /tmp/k8s-webhook-server/serving-certs && exec "$@"'
    )
    lab.supervisor.add(
        "training-operator",
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
            str(binary),
            f"--webhook-server-port={port}",
            f"--metrics-bind-address=127.0.0.1:{free_port()}",
            f"--health-probe-bind-address=127.0.0.1:{free_port()}",
            "--enable-scheme=pytorchjob",
            # Workers' init-pytorch under restricted Pod Security, as the chart README says
            f"--pytorch-init-container-template-file={INIT_CONTAINER_TEMPLATE}",
            "--zap-log-level=info",
        ],
        {**lab.host_env(), "MY_POD_NAMESPACE": KUBEFLOW_NAMESPACE},
    )
    _wait_webhook_ready(lab, "validatingwebhookconfiguration", KUBEFLOW_WEBHOOK)
    _wait_listening(lab, port, "the training operator")


#: Kueue's integrations in the lab: the launchers TideTune uses.
KUEUE_FRAMEWORKS = ["kubeflow.org/pytorchjob"]


def install_kueue(lab: Lab) -> None:
    """Kueue with its CRDs (conversion webhooks as its release installs them) and webhooks."""
    base = MANIFESTS / "kueue"
    if not base.is_dir():
        raise FileNotFoundError(f"{base} is missing: run 'bash .ci/setup' (.ci/setup-kube.sh)")
    port = free_port(lab.network.gateway)
    service = "kueue-webhook-service"
    docs: list[dict[str, Any]] = []
    for crd in manifests(base / "crd" / "bases"):
        if len(crd["spec"]["versions"]) > 1:
            crd["spec"]["conversion"] = {
                "strategy": "Webhook",
                "webhook": {
                    "conversionReviewVersions": ["v1"],
                    "clientConfig": {
                        "service": {
                            "namespace": KUEUE_NAMESPACE,
                            "name": service,
                            "path": "/convert",
                        }
                    },
                },
            }
        docs.append(crd)
    docs += _service_with_endpoints(lab, KUEUE_NAMESPACE, service, port)
    docs += list(manifests(base / "internalcert"))  # the Secret its rotator fills
    for doc in docs:
        if doc.get("kind") == "Secret":
            doc["metadata"]["namespace"] = KUEUE_NAMESPACE
            doc["metadata"]["name"] = "kueue-webhook-server-cert"
    served = {fw.split("/")[-1] + "s" for fw in KUEUE_FRAMEWORKS}
    for doc in manifests(base / "webhook" / "manifests.yaml"):
        doc = _point_webhooks(doc, KUEUE_NAMESPACE, service)
        doc["metadata"]["name"] = "kueue-" + doc["metadata"]["name"]
        # Only the webhooks of Kueue's own kinds and of the integrations enabled here: a
        # webhook for a kind whose integration is off would answer for nothing.
        doc["webhooks"] = [
            hook
            for hook in doc["webhooks"]
            if any(
                "kueue.x-k8s.io" in rule.get("apiGroups", []) or set(rule["resources"]) & served
                for rule in hook["rules"]
            )
        ]
        docs.append(doc)
    lab.apply_documents(docs)
    config = {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": KUEUE_NAMESPACE,
        "health": {"healthProbeBindAddress": f"127.0.0.1:{free_port()}"},
        "metrics": {"bindAddress": f"127.0.0.1:{free_port()}"},
        "webhook": {"port": port, "certDir": str(lab.workdir / "kueue-certs")},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {
            "enable": True,
            "webhookServiceName": service,
            "webhookSecretName": "kueue-webhook-server-cert",
        },
        "integrations": {"frameworks": KUEUE_FRAMEWORKS},
        # The on-demand visibility API (an aggregated API server) delegates authentication
        # with an in-cluster kubeconfig, which a host process has not; TideTune reads
        # Workloads, not that API.
        "featureGates": {"VisibilityOnDemand": False},
    }
    project_secret(lab, KUEUE_NAMESPACE, "kueue-webhook-server-cert", lab.workdir / "kueue-certs")
    path = lab.workdir / "kueue-config.yaml"
    path.write_text(yaml.safe_dump(config))
    lab.supervisor.add(
        "kueue",
        [str(tool("kueue")), f"--config={path}", "--zap-log-level=2"],
        lab.host_env(),
    )
    _wait_webhook_ready(
        lab, "validatingwebhookconfiguration", "kueue-validating-webhook-configuration"
    )
    _wait_webhook_ready(lab, "mutatingwebhookconfiguration", "kueue-mutating-webhook-configuration")
    _wait_listening(lab, port, "Kueue")
