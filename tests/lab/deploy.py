"""TideTune installed into a lab with its Helm chart, and what the end-to-end tests share.

``Stack(lab).install()`` runs ``helm upgrade --install tidetune helm/tidetune -n
tidetune-system --wait`` with :data:`LAB_VALUES` (quick observation and resync, the lab's S3
as the default output, a 30 s grace period, a short stall timeout; the start timeout keeps
its 15-minute default, which the unschedulable e2e shortens for itself), exactly as a user
installs it: the operator runs as the chart's Deployment, its pod run by the node agent,
under its own ServiceAccount and RBAC. ``python -m tests.lab --dir DIR`` and the
e2e fixtures use it, so a person at a terminal and the tests see the same thing.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import subprocess
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import yaml

from tests.lab.cluster import REPO_ROOT, Lab, LabError, pod_main_pids
from tests.lab.controlplane import tool

__all__ = [
    "LAB_VALUES",
    "OPERATOR_NAMESPACE",
    "OPERATOR_USER",
    "TRAIN_DATA",
    "Stack",
    "sha256_of_artifact",
    "tiny_job",
    "wait_for",
]

T = TypeVar("T")

CHART = REPO_ROOT / "helm" / "tidetune"
RELEASE = "tidetune"
OPERATOR_NAMESPACE = "tidetune-system"
#: How the API server's audit log names the operator.
OPERATOR_USER = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{RELEASE}"
TRAIN_DATA = REPO_ROOT / "examples" / "data" / "arithmetic-sft.jsonl"

#: The chart's values in the lab: quick observation, short resyncs, the lab's S3 by default.
LAB_VALUES: dict[str, Any] = {
    "image": {"tag": "lab"},
    "config": {
        "trainerImage": "ghcr.io/tidetune/trainer:lab",
        "observeIntervalSeconds": 1,
        "resyncIntervalSeconds": 5,
        "defaultOutputUri": "s3://tidetune/artifacts",
        "terminationGraceSeconds": 30,
        # a trainer whose step does not move for 120 s is Stalled (tests/e2e/test_failures.py):
        # twice what a tiny job's imports, tokenizer and first step took at a load of 12
        "stallTimeoutSeconds": 120,
        # every step takes at least 50 ms, so that jobs can be caught mid-run on a fast machine
        "trainerEnv": {"TIDETUNE_STEP_DELAY_SECONDS": "0.05"},
        "defaultResources": {
            "cpuPerGpu": "1",
            "memoryPerGpu": "2Gi",
            "cpuOnlyCpu": "1",
            "cpuOnlyMemory": "2Gi",
        },
    },
    "health": {
        "livenessProbe": {"initialDelaySeconds": 2, "periodSeconds": 5},
        "readinessProbe": {"initialDelaySeconds": 1, "periodSeconds": 2},
    },
}


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class Stack:
    """A lab with TideTune installed, and the helpers the e2e tests share."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        if lab.s3 is None:
            raise LabError("the stack needs the lab's S3 server")
        self.s3 = lab.s3
        self.minio = lab.s3.client()
        self.values: dict[str, Any] = {}

    # -- installing -----------------------------------------------------------------------------

    def install(self, values: Mapping[str, Any] | None = None, timeout: float = 180) -> Stack:
        """``helm upgrade --install`` with :data:`LAB_VALUES` merged with ``values``."""
        self.values = _merge(LAB_VALUES, values or {})
        path = self.lab.workdir / "values.yaml"
        path.write_text(yaml.safe_dump(self.values))
        result = subprocess.run(
            [
                str(tool("helm")),
                "upgrade",
                "--install",
                RELEASE,
                str(CHART),
                "-n",
                OPERATOR_NAMESPACE,
                "--create-namespace",
                "-f",
                str(path),
                "--wait",
                # what a test changed by hand (a rule dropped from the ClusterRole) is put back
                "--force-conflicts",
                f"--timeout={int(timeout)}s",
            ],
            env={**self.lab.host_env(), "HELM_CACHE_HOME": str(self.lab.workdir / "helm")},
            capture_output=True,
            text=True,
            timeout=timeout + 30,
        )
        if result.returncode != 0:
            raise LabError(
                f"helm install failed: {result.stderr.strip()}\n{self.operator_diagnostics()}"
            )
        self.wait_operator_ready(timeout)
        return self

    def configure(self, config: Mapping[str, Any], timeout: float = 180) -> None:
        """Install again with ``config`` merged over the lab's ``config`` values (the
        Deployment rolls: its pod template carries the config's checksum)."""
        self.install({"config": dict(config)}, timeout)

    def operator_pods(self) -> list[dict[str, Any]]:
        out = self.kubectl(
            "-n",
            OPERATOR_NAMESPACE,
            "get",
            "pods",
            "-l",
            "app.kubernetes.io/name=tidetune",
            "-o",
            "json",
        )
        return [p for p in json.loads(out)["items"] if not p["metadata"].get("deletionTimestamp")]

    def wait_operator_ready(self, timeout: float = 120) -> dict[str, Any]:
        """The one operator pod, once it is Ready."""

        def ready() -> dict[str, Any] | None:
            pods = self.operator_pods()
            for pod in pods:
                conditions = pod.get("status", {}).get("conditions", [])
                if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
                    return pod
            return None

        return wait_for(ready, timeout, "the operator pod to be Ready", self.operator_diagnostics)

    def operator_pid(self) -> int | None:
        """The pid of the operator's main process now (for tests that kill it)."""
        pods = self.operator_pods()
        if not pods:
            return None
        pids = pod_main_pids(pods[0]["metadata"]["name"])
        return pids[0] if pids else None

    def operator_diagnostics(self) -> str:
        """The operator pods' state and log tails, for error messages."""
        out = self.lab.kubectl("-n", OPERATOR_NAMESPACE, "get", "pods", "-o", "wide").stdout
        logs = self.lab.kubectl("-n", OPERATOR_NAMESPACE, "logs", f"deploy/{RELEASE}", "--tail=30")
        previous = self.lab.kubectl(
            "-n", OPERATOR_NAMESPACE, "logs", f"deploy/{RELEASE}", "--previous", "--tail=30"
        )
        return (
            f"pods:\n{out}\nlog:\n{logs.stdout or logs.stderr}\n"
            f"previous run:\n{previous.stdout or previous.stderr}"
        )

    # -- kubectl and objects --------------------------------------------------------------------

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        res = self.lab.kubectl(*args, input=input, timeout=60)
        if check and res.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {res.stderr}")
        return res.stdout

    def namespace(self, name: str, *, secret: bool = True, level: str = "restricted") -> None:
        """A namespace enforcing Pod Security ``level``, with the ``s3-creds`` Secret."""
        self.lab.apply_documents(
            [
                {
                    "apiVersion": "v1",
                    "kind": "Namespace",
                    "metadata": {
                        "name": name,
                        "labels": {"pod-security.kubernetes.io/enforce": level},
                    },
                }
            ]
        )
        if secret:
            self.lab.apply_documents([self.s3_secret(name)])

    def s3_secret(self, namespace: str, name: str = "s3-creds") -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace},
            "stringData": {
                "accessKey": self.s3.access_key,
                "secretKey": self.s3.secret_key,
                "endpoint": self.s3.endpoint,
            },
        }

    def apply(self, *manifests: Mapping[str, Any]) -> None:
        """``kubectl apply`` as a user would (client-side, one multi-document file)."""
        self.kubectl("apply", "-f", "-", input=yaml.safe_dump_all([dict(m) for m in manifests]))

    def ftj(self, namespace: str, name: str) -> dict[str, Any]:
        return dict(
            json.loads(self.kubectl("-n", namespace, "get", "finetunejob", name, "-o", "json"))
        )

    def status(self, namespace: str, name: str) -> dict[str, Any]:
        return self.ftj(namespace, name).get("status") or {}

    def pytorchjobs(self, namespace: str, job: str) -> list[dict[str, Any]]:
        out = self.kubectl(
            "-n", namespace, "get", "pytorchjobs", "-l", f"tidetune.io/job={job}", "-o", "json"
        )
        return list(json.loads(out)["items"])

    @property
    def launcher(self) -> str:
        """The kind the installed operator launches (its ``config.launcher``)."""
        return str(self.values.get("config", {}).get("launcher", "PyTorchJob"))

    def launched(self, namespace: str, job: str) -> list[dict[str, Any]]:
        """The job's launched objects of the kind the operator launches now."""
        plural = {"PyTorchJob": "pytorchjobs", "TrainJob": "trainjobs"}[self.launcher]
        out = self.kubectl(
            "-n", namespace, "get", plural, "-l", f"tidetune.io/job={job}", "-o", "json"
        )
        return list(json.loads(out)["items"])

    def is_suspended(self, launched: Mapping[str, Any]) -> bool:
        """Whether a launched object (PyTorchJob or TrainJob) asks to be suspended."""
        spec = launched.get("spec") or {}
        if launched.get("kind") == "TrainJob":
            return bool(spec.get("suspend"))
        return bool((spec.get("runPolicy") or {}).get("suspend"))

    def pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        out = self.kubectl("-n", namespace, "get", "pods", "-l", selector, "-o", "json")
        return list(json.loads(out)["items"])

    def wait_phase(
        self, namespace: str, name: str, *phases: str, timeout: float = 240
    ) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            st = self.status(namespace, name)
            return st if st.get("phase") in phases else None

        return wait_for(
            check,
            timeout,
            f"{namespace}/{name} to reach {phases}",
            lambda: self.describe(namespace, name),
        )

    def wait_step(
        self, namespace: str, name: str, step: int, timeout: float = 240
    ) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            st = self.status(namespace, name)
            done = (st.get("progress") or {}).get("step", 0)
            return st if done >= step else None

        return wait_for(
            check,
            timeout,
            f"{namespace}/{name} to pass step {step}",
            lambda: self.describe(namespace, name),
        )

    def describe(self, namespace: str, name: str) -> str:
        """The job's status and its pods, for error messages."""
        status = json.dumps(self.status(namespace, name), indent=1)[-3000:]
        pods = self.lab.kubectl("-n", namespace, "get", "pods", "-o", "wide").stdout
        return f"status: {status}\npods:\n{pods}"

    # -- S3 -------------------------------------------------------------------------------------

    def put(self, key: str, data: bytes) -> str:
        self.minio.put_object(self.s3.bucket, key, io.BytesIO(data), len(data))
        return f"s3://{self.s3.bucket}/{key}"

    def get(self, key: str) -> bytes:
        resp = self.minio.get_object(self.s3.bucket, key)
        try:
            return bytes(resp.read())
        finally:
            resp.close()
            resp.release_conn()

    def keys(self, prefix: str) -> list[str]:
        return [
            o.object_name
            for o in self.minio.list_objects(self.s3.bucket, prefix=prefix, recursive=True)
        ]

    def train_uri(self) -> str:
        """The arithmetic SFT set, uploaded once."""
        key = "data/arithmetic-sft.jsonl"
        if not self.keys(key):
            self.put(key, TRAIN_DATA.read_bytes())
        return f"s3://{self.s3.bucket}/{key}"


def wait_for(
    check: Callable[[], T | None],
    timeout: float,
    what: str,
    describe: Callable[[], Any] | None = None,
    interval: float = 0.3,
) -> T:
    """Poll ``check`` until it returns something truthy; on timeout say what was last seen."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            detail = describe() if describe else None
            raise AssertionError(
                f"timed out after {timeout:.0f}s waiting for {what}; last: {detail}"
            )
        time.sleep(interval)


def tiny_job(
    name: str,
    namespace: str,
    data_uri: str,
    *,
    steps: int = 8,
    every: int = 2,
    **spec: Any,
) -> dict[str, Any]:
    """A FineTuneJob on the builtin tiny model that trains in seconds on this CPU."""
    body: dict[str, Any] = {
        "method": "sft",
        "baseModel": {"uri": "builtin://tiny-llama"},
        "tuning": {"type": "lora", "lora": {"rank": 4, "alpha": 8, "dropout": 0.0}},
        "data": {
            "train": {"uri": data_uri, "format": "messages"},
            "validation": {"splitRatio": 0.1},
        },
        "hyperparameters": {
            "maxSteps": steps,
            "batchSize": 4,
            "learningRate": 3e-3,
            "warmupSteps": 1,
            "maxSeqLength": 64,
        },
        "resources": {"nodes": 1, "gpusPerNode": 0},
        "deepspeed": {"zeroStage": 0},
        "checkpointing": {"everySteps": every, "keep": 2},
        "output": {"uri": "s3://tidetune/artifacts", "exportCheckpoints": 1},
        "storageSecretRef": {"name": "s3-creds"},
    }
    body.update(spec)
    return {
        "apiVersion": "tidetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": body,
    }


def sha256_of_artifact(stack: Stack, artifact: Mapping[str, Any]) -> str:
    """Recompute an artifact's sha256 from the bytes in S3 (folders: a sha256sum listing)."""
    uri = artifact["uri"]
    prefix = uri.removeprefix(f"s3://{stack.s3.bucket}/")
    if not uri.endswith("/"):
        return hashlib.sha256(stack.get(prefix)).hexdigest()
    lines = []
    for key in sorted(stack.keys(prefix)):
        lines.append(f"{hashlib.sha256(stack.get(key)).hexdigest()}  {key[len(prefix) :]}\n")
    return hashlib.sha256("".join(lines).encode()).hexdigest()
