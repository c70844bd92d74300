"""The real controllers our jobs go through, run next to the control plane: the Kubeflow
training operator v1 (PyTorchJob), Kueue, and on demand Kubeflow Trainer v2 (TrainJob) with
JobSet, built by ``.ci/setup-kube.sh``.

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

__all__ = [
    "install_kubeflow",
    "install_kueue",
    "install_trainer",
    "install_trainer_crds",
    "manifests",
]

MANIFESTS = TOOLS / "manifests"
KUEUE_NAMESPACE = "kueue-system"
KUBEFLOW_NAMESPACE = "kubeflow"
KUBEFLOW_WEBHOOK = "validator.training-operator.kubeflow.org"
#: where Trainer v2 and JobSet keep their webhook Secrets: the namespaces each falls back to
#: without a ServiceAccount namespace file (a host process has none)
TRAINER_NAMESPACE = "kubeflow-system"
JOBSET_NAMESPACE = "jobset-system"
#: the names their certificate rotators look for (their releases' kustomize patches)
TRAINER_WEBHOOKS = ("validator.trainer.kubeflow.org", "defaulter.trainer.kubeflow.org")
JOBSET_WEBHOOKS = (
    "jobset-validating-webhook-configuration",
    "jobset-mutating-webhook-configuration",
)
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


#: the certificate directory controller-runtime webhooks built on cert-controller read
DEFAULT_CERT_DIR = "/tmp/k8s-webhook-server/serving-certs"


def _with_cert_dir(certs: pathlib.Path) -> list[str]:
    """The argv prefix that runs a controller whose certificate directory is the constant
    :data:`DEFAULT_CERT_DIR` with ``certs`` there instead, in a mount namespace of its own,
    so that labs side by side do not clash."""
    script = f'mkdir -p {DEFAULT_CERT_DIR} && mount --bind {certs} {DEFAULT_CERT_DIR} && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh"]


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
    certs = lab.workdir / "kubeflow-certs"
    project_secret(lab, KUBEFLOW_NAMESPACE, "training-operator-webhook-cert", certs)
    lab.supervisor.add(
        "training-operator",
        [
            *_with_cert_dir(certs),
            str(tool("training-operator.v1")),
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


#: Kueue's integrations in the lab: the launchers TideTune uses (TrainJob where the lab has
#: Trainer's CRDs).
KUEUE_FRAMEWORKS = ["kubeflow.org/pytorchjob"]
KUEUE_TRAINJOB = "trainer.kubeflow.org/trainjob"


def install_kueue(lab: Lab, *, trainjob: bool = False) -> None:
    """Kueue with its CRDs (conversion webhooks as its release installs them) and webhooks;
    ``trainjob``: with its TrainJob integration too (Trainer's and JobSet's CRDs must be
    installed first, or Kueue defers that integration with a backoff of up to 2 minutes)."""
    frameworks = [*KUEUE_FRAMEWORKS, *([KUEUE_TRAINJOB] if trainjob else [])]
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
    served = {fw.split("/")[-1] + "s" for fw in frameworks}
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
        "integrations": {"frameworks": frameworks},
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


def _trainer_manifests() -> tuple[pathlib.Path, pathlib.Path]:
    trainer, jobset = MANIFESTS / "trainer", MANIFESTS / "jobset"
    for base in (trainer, jobset):
        if not base.is_dir():
            raise FileNotFoundError(f"{base} is missing: run 'bash .ci/setup' (.ci/setup-kube.sh)")
    return trainer, jobset


def install_trainer_crds(lab: Lab) -> None:
    """Kubeflow Trainer v2's CRDs (TrainJob, the training runtimes) and JobSet's, nothing
    running them: what Kueue's TrainJob integration needs to start, and what the API server
    prunes a TrainJob against."""
    trainer, jobset = _trainer_manifests()
    lab.apply_documents([*manifests(trainer / "crds"), *manifests(jobset / "crd" / "bases")])


def _controller_config(lab: Lab, name: str, doc: dict[str, Any]) -> pathlib.Path:
    path = lab.workdir / f"{name}-config.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _start_jobset(lab: Lab) -> None:
    """JobSet (the controller that turns a TrainJob's JobSet into Jobs) with its webhooks."""
    _, base = _trainer_manifests()
    port = free_port(lab.network.gateway)
    service = "jobset-webhook-service"
    docs = _service_with_endpoints(lab, JOBSET_NAMESPACE, service, port)
    docs.append(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {"name": "jobset-webhook-server-cert", "namespace": JOBSET_NAMESPACE},
        }
    )
    for doc in manifests(base / "webhook" / "manifests.yaml"):
        doc = _point_webhooks(doc, JOBSET_NAMESPACE, service)
        doc["metadata"]["name"] = "jobset-" + doc["metadata"]["name"]
        for hook in doc["webhooks"]:
            if any("pods" in rule["resources"] for rule in hook["rules"]):
                # its release's patch: the pod webhooks answer for JobSet's pods only
                # (failurePolicy Fail on every pod of the cluster otherwise)
                hook["objectSelector"] = {
                    "matchExpressions": [
                        {"key": "jobset.sigs.k8s.io/jobset-name", "operator": "Exists"}
                    ]
                }
        docs.append(doc)
    lab.apply_documents(docs)
    config = _controller_config(
        lab,
        "jobset",
        {
            "apiVersion": "config.jobset.x-k8s.io/v1alpha1",
            "kind": "Configuration",
            "webhook": {"port": port},
            "metrics": {"bindAddress": f"127.0.0.1:{free_port()}"},
            "health": {"healthProbeBindAddress": f"127.0.0.1:{free_port()}"},
            "leaderElection": {"leaderElect": False},
            "internalCertManagement": {
                "enable": True,
                "webhookServiceName": service,
                "webhookSecretName": "jobset-webhook-server-cert",
            },
        },
    )
    certs = lab.workdir / "jobset-certs"
    project_secret(lab, JOBSET_NAMESPACE, "jobset-webhook-server-cert", certs)
    lab.supervisor.add(
        "jobset",
        [*_with_cert_dir(certs), str(tool("jobset")), f"--config={config}", "--zap-log-level=2"],
        lab.host_env(),
    )
    for kind, name in zip(("validatingwebhookconfiguration", "mutatingwebhookconfiguration"),
                          JOBSET_WEBHOOKS, strict=True):  # fmt: skip
        _wait_webhook_ready(lab, kind, name)
    _wait_listening(lab, port, "JobSet")


def _start_trainer(lab: Lab) -> None:
    """Kubeflow Trainer v2's controller manager (TrainJob → JobSet) with its webhooks."""
    base, _ = _trainer_manifests()
    port = free_port(lab.network.gateway)
    service = "kubeflow-trainer-controller-manager"
    docs = _service_with_endpoints(lab, TRAINER_NAMESPACE, service, port)
    docs.append(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {"name": "kubeflow-trainer-webhook-cert", "namespace": TRAINER_NAMESPACE},
        }
    )
    for doc in manifests(base / "webhook" / "manifests.yaml"):
        doc = _point_webhooks(doc, TRAINER_NAMESPACE, service)
        # the names its release gives them (webhook/patch_*.yaml), which its rotator looks for
        validating = doc["kind"] == "ValidatingWebhookConfiguration"
        doc["metadata"]["name"] = TRAINER_WEBHOOKS[0 if validating else 1]
        docs.append(doc)
    lab.apply_documents(docs)
    config = _controller_config(
        lab,
        "trainer",
        {
            "apiVersion": "config.trainer.kubeflow.org/v1alpha1",
            "kind": "Configuration",
            "webhook": {"port": port},
            "metrics": {"bindAddress": f"127.0.0.1:{free_port()}", "secureServing": False},
            "health": {"healthProbeBindAddress": f"127.0.0.1:{free_port()}"},
            "leaderElection": {"leaderElect": False},
            "certManagement": {
                "enable": True,
                "webhookServiceName": service,
                "webhookSecretName": "kubeflow-trainer-webhook-cert",
            },
        },
    )
    certs = lab.workdir / "trainer-certs"
    project_secret(lab, TRAINER_NAMESPACE, "kubeflow-trainer-webhook-cert", certs)
    lab.supervisor.add(
        "trainer",
        [
            *_with_cert_dir(certs),
            str(tool("trainer-controller-manager")),
            f"--config={config}",
            "--zap-log-level=2",
        ],
        lab.host_env(),
    )
    for kind, name in zip(("validatingwebhookconfiguration", "mutatingwebhookconfiguration"),
                          TRAINER_WEBHOOKS, strict=True):  # fmt: skip
        _wait_webhook_ready(lab, kind, name)
    _wait_listening(lab, port, "Kubeflow Trainer")


def install_trainer(lab: Lab) -> None:
    """Kubeflow Trainer v2 and JobSet running, side by side, with their webhooks (their CRDs
    first: each watches the other's kind)."""
    install_trainer_crds(lab)
    errors: list[str] = []

    def run(part: Any) -> None:
        try:
            part(lab)
        except Exception as exc:  # reported together below
            errors.append(f"{part.__name__.lstrip('_')}: {exc}")

    threads = [threading.Thread(target=run, args=(p,)) for p in (_start_jobset, _start_trainer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError("Kubeflow Trainer did not start: " + "; ".join(errors))
