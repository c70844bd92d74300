"""The run location and the artifacts on S3 (a moto server on loopback): checkpoints are
uploaded, marked complete last, and a stopped run resumes from S3 exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tidetune import exitcodes
from tidetune.storage import S3Credentials, S3Store

from .conftest import explain, run_trainer, write_job

pytestmark = pytest.mark.trainer


def test_run_and_resume_on_s3(tmp_path: Path, chat_data: Path) -> None:
    from tests.support.s3 import start_s3

    job = write_job(
        tmp_path / "job.yaml",
        chat_data,
        hyperparameters={"maxSteps": 6},
        checkpointing={"everySteps": 3, "keep": 2},
    )
    with start_s3("tidetune") as s3:
        env = {
            "TIDETUNE_S3_ENDPOINT": s3.endpoint,
            "AWS_ACCESS_KEY_ID": s3.access_key,
            "AWS_SECRET_ACCESS_KEY": s3.secret_key,
            "TIDETUNE_SCRATCH_DIR": str(tmp_path),
        }
        store = S3Store(
            "tidetune",
            S3Credentials(endpoint=s3.endpoint, access_key=s3.access_key, secret_key=s3.secret_key),
        )
        full = run_trainer(job, tmp_path / "full")
        assert full.returncode == 0, explain(full)
        first = run_trainer(
            job,
            "s3://tidetune/runs/t",
            env={**env, "TIDETUNE_STOP_AT_STEP": "4"},
            output="s3://tidetune/artifacts",
        )
        assert first.returncode == exitcodes.PREEMPTED, explain(first)
        keys = store.list("runs/t/checkpoints")
        assert "runs/t/checkpoints/step-00000004/COMPLETE" in keys
        assert "runs/t/checkpoints/step-00000003/state/optimizer.pt" in keys
        second = run_trainer(job, "s3://tidetune/runs/t", env=env, output="s3://tidetune/artifacts")
        assert second.returncode == 0, explain(second)
        assert "resumed from s3://tidetune/runs/t/checkpoints/step-00000004" in second.stderr
        a = [
            json.loads(x)["loss"]
            for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
        ]
        b = [json.loads(x)["loss"] for x in store.read_text("runs/t/metrics.jsonl").splitlines()]
        assert a == b
        manifest = json.loads(store.read_text("artifacts/test/t/uid-1/manifest.json"))
        final = next(x for x in manifest["artifacts"] if x["name"] == "final")
        assert final["uri"] == "s3://tidetune/artifacts/test/t/uid-1/final/"
        assert store.exists("artifacts/test/t/uid-1/final/adapter_model.safetensors")
        # scratch copies of remote checkpoints are cleaned up
        assert not any(p.name.startswith("step-") for p in tmp_path.glob("tidetune-*/*"))
