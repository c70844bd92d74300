"""The trainer ↔ operator file contract (:mod:`tidetune.contract`): the digest rule against
``sha256sum``, the progress reader's tolerance, and pricing the trainer's count."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

from tidetune.api import FineTuneJob
from tidetune.contract import RunState, RunStateName, artifact_digest, price_count
from tidetune.estimate import DEFAULT_TABLES, EstimateTables, estimate


def test_a_folders_digest_is_sha256sum_of_its_file_list(tmp_path: Path) -> None:
    if shutil.which("sha256sum") is None or shutil.which("find") is None:
        pytest.fail("coreutils' sha256sum and find are needed for this test")
    folder = tmp_path / "final"
    (folder / "sub").mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_bytes(b"\x00\x01" * 1000)
    (folder / "adapter_config.json").write_text('{"r": 8}')
    (folder / "sub" / "tokenizer.json").write_text("{}")
    files = [
        {
            "path": p.relative_to(folder).as_posix(),
            "sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
        }
        for p in folder.rglob("*")
        if p.is_file()
    ]
    # the rule as a shell would apply it: sha256sum of the sorted file list, then its sha256
    listing = subprocess.run(
        "find . -type f -printf '%P\\n' | LC_ALL=C sort | xargs sha256sum",
        shell=True,
        cwd=folder,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert artifact_digest(files) == hashlib.sha256(listing.encode()).hexdigest()
    assert artifact_digest(reversed(files)) == artifact_digest(files)  # order-free
    files[0]["sha256"] = "0" * 64
    assert artifact_digest(files) != hashlib.sha256(listing.encode()).hexdigest()


def test_a_single_file_artifacts_digest_is_the_files_own() -> None:
    assert artifact_digest([{"path": "", "sha256": "ab" * 32}]) == "ab" * 32
    with pytest.raises(KeyError):
        artifact_digest([{"path": "a"}])


def test_progress_is_read_leniently() -> None:
    run = RunState.from_progress(
        {
            "state": "running",
            "step": 12.0,
            "totalSteps": "many",
            "percent": 250,
            "trainedTokens": float("nan"),
            "checkpoints": [{"step": 10, "uri": "u"}, "junk"],
            "exitCode": "1",
        },
        {"trainTokens": 10, "modelParams": 5},
    )
    assert run.state == RunStateName.RUNNING and run.step == 12 and run.total_steps is None
    assert run.percent == 100.0 and run.trained_tokens == 0.0 and run.exit_code is None
    assert run.checkpoints == [{"step": 10, "uri": "u"}]
    assert run.estimate == {"trainTokens": 10, "modelParams": 5}
    assert RunState.from_progress({}).state is None


def _spec(gpus: int = 8, gpu_type: str | None = None) -> object:
    return FineTuneJob.model_validate(
        {
            "apiVersion": "tidetune.io/v1alpha1",
            "kind": "FineTuneJob",
            "metadata": {"name": "j", "namespace": "n"},
            "spec": {
                "method": "sft",
                "baseModel": {"uri": "builtin://tiny-llama"},
                "data": {"train": {"uri": "s3://d/t.jsonl"}},
                "resources": {"nodes": 2, "gpusPerNode": gpus, "gpuType": gpu_type},
            },
        }
    ).spec


def test_the_count_is_priced_on_the_given_device_and_tables() -> None:
    tables = EstimateTables(
        throughput={**DEFAULT_TABLES.throughput, "mi300": 500.0},
        prices={**DEFAULT_TABLES.prices, "mi300": 4.0},
        currency="EUR",
    )
    doc = {"trainTokens": 1_000_000, "modelParams": 7_000_000_000, "devices": 16}
    priced = price_count(doc, _spec(), "mi300", tables)
    expected = estimate(1_000_000, 7_000_000_000, "mi300", devices=16, nodes=2, tables=tables)
    assert priced == {
        "trainTokens": 1_000_000,
        "gpuHours": round(expected.gpu_hours, 6),
        "cost": round(expected.cost, 4),
        "currency": "EUR",
        "gpuType": "mi300",
        "sampled": False,
    }
    assert priced["cost"] == pytest.approx(priced["gpuHours"] * 4.0, abs=1e-4)
    # not a count, or a device the tables do not know: no estimate rather than a wrong one
    assert price_count({"trainTokens": 5, "gpuHours": 1.0}, _spec(), "a100", tables) is None
    assert price_count(doc, _spec(), "tpu", tables) is None


def test_the_model_artifacts_and_which_one_is_used_by_default() -> None:
    from tidetune.contract import checkpoint_artifact, default_model_artifact, model_artifacts

    manifest = {
        "artifacts": [
            {"name": "final", "uri": "s3://a/final/"},
            {"name": checkpoint_artifact(40), "uri": "s3://a/checkpoint-40/"},
            {"name": "metrics", "uri": "s3://a/metrics.jsonl"},
        ]
    }
    models = model_artifacts(manifest)
    assert list(models) == ["final", "checkpoint-40"]  # a file is not a model
    assert default_model_artifact(models) == "final"
    assert default_model_artifact([*models, "merged"]) == "merged"
    assert model_artifacts({}) == {}
