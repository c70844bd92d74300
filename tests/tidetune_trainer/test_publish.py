"""Publishing to a real MLflow model registry (``mlflow server``: SQLite backend, artifacts
in the tests' moto S3): ``spec.output.publish`` at the end of ``tidetune run``, then
``tidetune publish`` again, another artifact by reference, and the errors."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.mlflow import MlflowServer, start_mlflow
from tests.support.s3 import S3Endpoint, start_s3

from .conftest import BASE_JOB, merge, trainer_env, write_chat

pytestmark = [pytest.mark.trainer, pytest.mark.slow]

CLI = [sys.executable, "-m", "tidetune"]


ENV: dict[str, str] = {}  # the S3 credentials of the run's output, set by the fixture


def tt(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        env=trainer_env(**ENV),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _s3_json(s3: S3Endpoint, key: str) -> Any:
    resp = s3.client().get_object(s3.bucket, key)
    try:
        return json.loads(resp.read())
    finally:
        resp.close()
        resp.release_conn()


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MlflowServer, S3Endpoint]]:
    with start_s3() as s3, start_mlflow(s3, tmp_path_factory.mktemp("mlflow")) as server:
        ENV.update(
            TIDETUNE_S3_ENDPOINT=s3.endpoint,
            AWS_ACCESS_KEY_ID=s3.access_key,
            AWS_SECRET_ACCESS_KEY=s3.secret_key,
        )
        yield server, s3
        ENV.clear()


@pytest.fixture(scope="module")
def published(
    registry: tuple[MlflowServer, S3Endpoint], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    server, s3 = registry
    root = tmp_path_factory.mktemp("pub")
    data = write_chat(root / "chat.jsonl", n=40)
    body = merge(
        BASE_JOB,
        {
            "metadata": {"name": "poem", "namespace": "team-a", "uid": None},
            "spec": {
                "hyperparameters": {"maxSteps": 6},
                "data": {"train": {"uri": f"file://{data}"}},
                "output": {
                    "uri": f"s3://{s3.bucket}/artifacts",  # a local run, artifacts in S3
                    "exportCheckpoints": 1,
                    "publish": {"registry": server.url, "model": "poems"},
                },
            },
        },
    )
    (root / "poem.yaml").write_text(yaml.safe_dump(body))
    run = tt("run", str(root / "poem.yaml"), "--workdir", str(root / "wd"))
    assert run.returncode == 0, run.stderr[-3000:]
    return root / "wd", run


def _root(s3: S3Endpoint) -> str:
    key = next(
        o.object_name
        for o in s3.client().list_objects(s3.bucket, "artifacts/team-a/poem/", recursive=True)
        if o.object_name.endswith("/manifest.json")
    )
    return key.rsplit("/", 1)[0]


def _manifest(s3: S3Endpoint) -> dict[str, Any]:
    data: dict[str, Any] = _s3_json(s3, _root(s3) + "/manifest.json")
    return data


def test_the_job_registers_its_model_with_the_whole_record(
    registry: tuple[MlflowServer, S3Endpoint], published: tuple[Path, object]
) -> None:
    from mlflow import MlflowClient

    server, s3 = registry
    wd, _ = published
    client = MlflowClient(tracking_uri=server.url, registry_uri=server.url)
    versions = client.search_model_versions("name='poems'")
    assert [v.version for v in versions] == ["1"]
    version = versions[0]
    manifest = _manifest(s3)
    final = next(a for a in manifest["artifacts"] if a["name"] == "final")
    tags = version.tags
    assert tags["tidetune.sha256"] == final["sha256"]
    assert tags["tidetune.baseModel"] == "builtin://tiny-llama"
    assert tags["tidetune.method"] == "sft" and tags["tidetune.tuning"] == "lora"
    assert tags["tidetune.data.train"].endswith("/chat.jsonl")
    assert tags["tidetune.data.validation"] == "0.1"
    assert tags["tidetune.job"] == "team-a/poem"
    run = client.get_run(version.run_id)
    assert run.data.params["hyperparameters.maxSteps"] == "6"
    assert run.data.params["hyperparameters.learningRate"] == "0.002"
    assert run.data.params["tuning.lora.rank"] == "4"
    lines = [
        json.loads(x)
        for x in next((wd / "store/runs/team-a/poem").iterdir())
        .joinpath("metrics.jsonl")
        .read_text()
        .splitlines()
    ]
    history = client.get_metric_history(version.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(x["step"], x["loss"]) for x in lines]
    # the files went through the tracking server into its S3 store, byte for byte
    assert version.source == f"{run.info.artifact_uri}/model"
    minio = s3.client()
    prefix = "mlflow/" + run.info.artifact_uri.split(":", 1)[1].lstrip("/") + "/model/"
    stored = {
        o.object_name[len(prefix) :]: o.object_name
        for o in minio.list_objects(s3.bucket, prefix=prefix, recursive=True)
    }
    assert set(stored) == {f["path"] for f in final["files"]}
    for f in final["files"]:
        resp = minio.get_object(s3.bucket, stored[f["path"]])
        try:
            assert hashlib.sha256(resp.read()).hexdigest() == f["sha256"], f["path"]
        finally:
            resp.close()
            resp.release_conn()
    kept = _s3_json(s3, _root(s3) + "/published.json")
    assert kept[-1]["version"] == "1" and kept[-1]["model"] == "poems"


def test_publishing_again_returns_the_same_version_and_others_go_by_reference(
    registry: tuple[MlflowServer, S3Endpoint], published: tuple[Path, object]
) -> None:
    from mlflow import MlflowClient

    server, s3 = registry
    wd, _ = published
    again = tt("publish", "team-a/poem", "--workdir", str(wd))
    assert again.returncode == 0, again.stderr
    assert "registered as poems version 1" in again.stdout
    manifest = _manifest(s3)
    ckpt = next(a for a in manifest["artifacts"] if a["name"].startswith("checkpoint-"))
    out = tt(
        "publish",
        "team-a/poem",
        "--workdir",
        str(wd),
        "--registry",
        server.url,
        "--model",
        "poems",
        "--artifact",
        ckpt["name"],
        "--reference-only",
    )
    assert out.returncode == 0, out.stderr
    assert "registered as poems version 2" in out.stdout
    client = MlflowClient(tracking_uri=server.url, registry_uri=server.url)
    v2 = client.get_model_version("poems", "2")
    assert v2.source == ckpt["uri"].rstrip("/")
    assert v2.tags["tidetune.sha256"] == ckpt["sha256"]


def test_publish_errors_are_one_line(
    registry: tuple[MlflowServer, S3Endpoint], published: tuple[Path, object]
) -> None:
    wd, _ = published
    out = tt("publish", "team-a/poem", "--workdir", str(wd), "--registry", "http://127.0.0.1:9")
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach the registry" in lines[0]
    out = tt("publish", "team-a/poem", "--workdir", str(wd), "--artifact", "merged")
    assert out.stderr.strip().endswith(
        "no artifact 'merged' exported; exported: final, checkpoint-4"
    )
