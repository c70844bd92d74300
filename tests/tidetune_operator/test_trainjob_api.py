"""The TrainJob builder against the real API server with Kubeflow Trainer 2.3's CRDs.

The API server prunes a field a CRD does not have without a word (only a strict field
validation says so), so a TrainJob built for another Trainer release would lose its grace
period — the SIGTERM checkpoint would get 30 s — its volumes and its security context, and
nothing would fail. Here each built object is created with ``fieldValidation=Strict`` and
read back: everything the builder wrote must still be there.
"""

from __future__ import annotations

import pathlib
import time
from typing import Any

import pytest

from tests.lab.controlplane import TOOLS
from tests.support.apiserver import ApiServer
from tests.tidetune_operator.conftest import make_job, make_pool
from tidetune_operator.config import OperatorConfig
from tidetune_operator.launchers import TrainJobLauncher
from tidetune_operator.launchers.trainjob import TRAINER_RELEASE, pod_patch_of, runtime_manifest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
CRDS = TOOLS / "manifests" / "trainer" / "crds"
NAMESPACE = "default"
TRAINJOBS = f"/apis/trainer.kubeflow.org/v1alpha1/namespaces/{NAMESPACE}/trainjobs"
RUNTIMES = "/apis/trainer.kubeflow.org/v1alpha1/clustertrainingruntimes"
CRD_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"


@pytest.fixture(scope="module")
def trainer_api(apiserver: ApiServer) -> ApiServer:
    if not CRDS.is_dir():
        raise FileNotFoundError(f"{CRDS} is missing: run 'bash .ci/setup' (.ci/setup-kube.sh)")
    for crd in sorted(CRDS.glob("trainer.kubeflow.org_*.yaml")):  # not kustomization.yaml
        apiserver.kubectl("apply", "--server-side", "--field-manager=test", "-f", str(crd))
    # polled: `kubectl wait` right after the apply can find no status yet, and errs
    for name in ("trainjobs", "clustertrainingruntimes"):
        path = (
            f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}.trainer.kubeflow.org"
        )
        deadline = time.monotonic() + 60
        while True:
            _, crd = apiserver.request("GET", path)
            conditions = (crd.get("status") or {}).get("conditions") or []
            if any(c["type"] == "Established" and c["status"] == "True" for c in conditions):
                break
            assert time.monotonic() < deadline, f"CRD {name} not Established in 60 s"
            time.sleep(0.2)
    return apiserver


def missing(built: Any, stored: Any, path: str = "") -> list[str]:
    """Where ``stored`` lacks or changed what ``built`` has (defaults it added are fine)."""
    if isinstance(built, dict):
        if not isinstance(stored, dict):
            return [f"{path}: {stored!r}"]
        out = []
        for key, value in built.items():
            if key not in stored:
                out.append(f"{path}.{key}: pruned")
            else:
                out += missing(value, stored[key], f"{path}.{key}")
        return out
    if isinstance(built, list):
        if not isinstance(stored, list) or len(stored) != len(built):
            return [f"{path}: {stored!r}"]
        return [p for i, (b, s) in enumerate(zip(built, stored, strict=True))
                for p in missing(b, s, f"{path}[{i}]")]  # fmt: skip
    return [] if built == stored else [f"{path}: {stored!r} != {built!r}"]


def store(api: ApiServer, collection: str, body: dict[str, Any]) -> dict[str, Any]:
    status, answer = api.request("POST", f"{collection}?fieldValidation=Strict", body)
    assert status == 201, answer.get("message")
    return answer


def _config() -> OperatorConfig:
    return OperatorConfig.model_validate(
        {
            "trainerImage": "registry.example.com/tidetune/trainer:1.0",
            "defaultOutputUri": "s3://runs/",
            "terminationGraceSeconds": 420,
        }
    )


def test_every_field_the_trainjob_builder_writes_is_stored_by_trainer_2_3s_crd(
    trainer_api: ApiServer,
) -> None:
    # the builder targets the release the lab builds and runs (and whose CRDs are here)
    gomod = (REPO_ROOT / "tests" / "lab" / "go" / "trainer" / "go.mod").read_text()
    assert f"github.com/kubeflow/trainer/v2 {TRAINER_RELEASE} " in gomod
    config = _config()
    pool = make_pool({"spec.priorityClassName": None})
    jobs = {
        "plain": make_job("sft-full.yaml"),
        # claims (volumes), registry credentials, custom reward functions (the sidecar)
        "everything": make_job(
            "grpo.yaml",
            edits={
                "spec.baseModel.uri": "pvc://models/qwen2.5-1.5b/",
                "spec.output.publish": {
                    "registry": "https://mlflow.example.com",
                    "credentialsSecretRef": {"name": "mlflow-auth"},
                },
                "spec.resources": {"nodes": 2, "gpusPerNode": 8},
            },
        ),
    }
    for name, job in jobs.items():
        job.metadata.namespace = NAMESPACE
        job.metadata.uid = f"uid-{name}"
        body = TrainJobLauncher().build(job, config, pool, attempt=1, suspend=True)
        stored = store(trainer_api, TRAINJOBS, body)
        assert missing(body["spec"], stored["spec"]) == [], name
        assert missing(body["metadata"]["labels"], stored["metadata"]["labels"]) == []
        # what the SIGTERM checkpoint and the restricted namespace need, spelled out
        pod = pod_patch_of(stored)
        assert pod["spec"]["terminationGracePeriodSeconds"] == 420
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
        assert pod["spec"]["nodeSelector"] == pool.spec.node_selector
        assert len(pod["spec"]["tolerations"]) == len(pool.spec.tolerations)
        assert {"spec", "scratch", "dshm"} <= {v["name"] for v in pod["spec"]["volumes"]}
        (node,) = pod["spec"]["containers"]
        assert node["securityContext"]["readOnlyRootFilesystem"] is True
        assert node["volumeMounts"][0]["mountPath"] == "/etc/tidetune"
        env = {e["name"] for e in stored["spec"]["trainer"]["env"]}
        assert {"TIDETUNE_JOB_UID", "AWS_SECRET_ACCESS_KEY"} <= env
        assert pod["metadata"]["labels"]["tidetune.io/job"] == job.metadata.name


def test_the_runtime_the_operator_keeps_is_stored_whole(trainer_api: ApiServer) -> None:
    body = runtime_manifest(_config())
    stored = store(trainer_api, RUNTIMES, body)
    assert missing(body["spec"], stored["spec"]) == []
    job = stored["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]
    assert job["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 420


def test_a_field_the_crd_lacks_is_pruned_without_a_word(trainer_api: ApiServer) -> None:
    """Why the tests above exist: the override field of Trainer 2.1 (``podTemplateOverrides``)
    is refused under strict validation and silently dropped without it."""
    body = TrainJobLauncher().build(make_job("sft-full.yaml"), _config(), None, 1, True)
    body["metadata"].update(name="pruned", namespace=NAMESPACE)
    body["spec"]["podTemplateOverrides"] = [
        {"targetJobs": [{"name": "node"}], "spec": {"terminationGracePeriodSeconds": 420}}
    ]
    status, answer = trainer_api.request("POST", f"{TRAINJOBS}?fieldValidation=Strict", body)
    assert status == 400 and "podTemplateOverrides" in answer["message"]
    status, answer = trainer_api.request("POST", f"{TRAINJOBS}?fieldValidation=Ignore", body)
    assert status == 201
    assert "podTemplateOverrides" not in answer["spec"]
