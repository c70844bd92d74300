"""The end-to-end tier: the whole stack in one lab per module, driven with kubectl."""

from __future__ import annotations

import hashlib
import io
import json
import pathlib
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
import yaml

from tests.lab.lab import REPO_ROOT, Lab
from tests.lab.stack import build_lab
from tests.support.k8s import RequestRecord

T = TypeVar("T")

TRAIN_DATA = REPO_ROOT / "examples" / "data" / "arithmetic-sft.jsonl"

#: User-Agent prefixes of the operator's API clients: kopf's watches and our aiohttp client.
OPERATOR_AGENTS = ("kopf/", "tidetune-operator/")


class Stack:
    """A started lab plus the helpers the e2e tests share."""

    def __init__(self, lab: Lab) -> None:
        from kubernetes import client, config

        self.lab = lab
        api = config.new_client_from_config(config_file=str(lab.kubeconfig))
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        assert lab.s3 is not None
        self.s3 = lab.s3
        self.minio = lab.s3.client()

    # -- kubectl
    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        res = self.lab.kubectl(*args, input=input, timeout=60)
        if check and res.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {res.stderr}")
        return res.stdout

    def namespace(self, name: str, *, secret: bool = True) -> None:
        self.kubectl("create", "namespace", name, check=False)
        if secret:
            self.kubectl(
                "-n",
                name,
                "create",
                "secret",
                "generic",
                "s3-creds",
                f"--from-literal=accessKey={self.s3.access_key}",
                f"--from-literal=secretKey={self.s3.secret_key}",
                f"--from-literal=endpoint={self.s3.endpoint}",
                check=False,
            )

    def apply(self, manifest: dict[str, Any]) -> None:
        self.kubectl("apply", "--validate=false", "-f", "-", input=yaml.safe_dump(manifest))

    # -- S3
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

    # -- objects
    def ftj(self, namespace: str, name: str) -> dict[str, Any]:
        obj: dict[str, Any] = self.custom.get_namespaced_custom_object(
            "tidetune.io", "v1alpha1", namespace, "finetunejobs", name
        )
        return obj

    def status(self, namespace: str, name: str) -> dict[str, Any]:
        return self.ftj(namespace, name).get("status") or {}

    def pytorchjobs(self, namespace: str, job: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.custom.list_namespaced_custom_object(
            "kubeflow.org", "v1", namespace, "pytorchjobs", label_selector=f"tidetune.io/job={job}"
        )["items"]
        return items

    def wait_phase(
        self, namespace: str, name: str, *phases: str, timeout: float = 180
    ) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            st = self.status(namespace, name)
            return st if st.get("phase") in phases else None

        return wait_for(
            check,
            timeout,
            f"{namespace}/{name} to reach {phases}",
            lambda: self.status(namespace, name),
        )

    def wait_step(
        self, namespace: str, name: str, step: int, timeout: float = 180
    ) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            st = self.status(namespace, name)
            done = (st.get("progress") or {}).get("step", 0)
            return st if done >= step else None

        return wait_for(
            check,
            timeout,
            f"{namespace}/{name} to pass step {step}",
            lambda: self.status(namespace, name),
        )

    def operator_pid(self) -> int | None:
        info = json.loads(self.lab.info_path.read_text())
        pid = info.get("operatorPid")
        return int(pid) if pid else None


def wait_for(
    check: Callable[[], T | None],
    timeout: float,
    what: str,
    describe: Callable[[], Any] | None = None,
    interval: float = 0.3,
) -> T:
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


def sha256_of_artifact(stack: Stack, artifact: dict[str, Any]) -> str:
    """Recompute an artifact's sha256 from the bytes in S3 (files: sha256sum listing)."""
    uri = artifact["uri"]
    prefix = uri.removeprefix(f"s3://{stack.s3.bucket}/")
    if not uri.endswith("/"):
        return hashlib.sha256(stack.get(prefix)).hexdigest()
    lines = []
    for key in sorted(stack.keys(prefix)):
        lines.append(f"{hashlib.sha256(stack.get(key)).hexdigest()}  {key[len(prefix) :]}\n")
    return hashlib.sha256("".join(lines).encode()).hexdigest()


@pytest.fixture(scope="session")
def operator_api_usage() -> set[RequestRecord]:
    """What the operator asked the API for in every lab of this session (test_zz_rbac reads it)."""
    return set()


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, operator_api_usage: set[RequestRecord]
) -> Iterator[Stack]:
    workdir: pathlib.Path = tmp_path_factory.mktemp("lab")
    # every step takes at least 50 ms, so that jobs can be caught mid-run on a fast machine
    lab = build_lab(workdir, grace_seconds=30, trainer_env={"TIDETUNE_STEP_DELAY_SECONDS": "0.05"})
    lab.start()
    try:
        yield Stack(lab)
    finally:
        lab.stop()  # the operator's shutdown requests are recorded too
        if lab.k8s is not None:
            operator_api_usage.update(
                r for r in lab.k8s.emulator.api_usage if r.user_agent.startswith(OPERATOR_AGENTS)
            )


@pytest.fixture(scope="module")
def train_uri(stack: Stack) -> str:
    return stack.put("data/arithmetic-sft.jsonl", TRAIN_DATA.read_bytes())
