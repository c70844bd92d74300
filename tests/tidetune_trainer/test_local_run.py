"""``tidetune run``: validation, estimate, progress on stderr, Ctrl-C → checkpoint → stop,
rerun → resume, ``--json`` → the final FineTuneJob."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tidetune import exitcodes
from tidetune.api import FineTuneJob

from .conftest import trainer_env, write_job

pytestmark = pytest.mark.trainer

RUN = [
    sys.executable,
    "-c",
    "import sys; from tidetune_trainer.local_run import main; sys.exit(main(sys.argv[1:]))",
]


def _relative_job(tmp_path: Path, chat_data: Path, **spec: object) -> Path:
    shutil.copy(chat_data, tmp_path / "chat.jsonl")
    job = write_job(tmp_path / "job.yaml", chat_data, **spec)
    body = yaml.safe_load(job.read_text())
    body["metadata"].pop("uid")
    body["spec"]["data"]["train"]["uri"] = "file://chat.jsonl"  # relative to the manifest
    job.write_text(yaml.safe_dump(body))
    return job


def test_run_json_reports_the_final_job(tmp_path: Path, chat_data: Path) -> None:
    job = _relative_job(tmp_path, chat_data, hyperparameters={"maxSteps": 6})
    proc = subprocess.run(
        [*RUN, str(job), "--workdir", str(tmp_path / "wd"), "--json"],
        env=trainer_env(),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path.parent,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = FineTuneJob.model_validate(json.loads(proc.stdout))
    st = final.status
    assert st is not None and st.phase.value == "Succeeded"
    assert st.progress is not None and st.progress.step == 6 and st.progress.percent == 100.0
    assert st.metrics is not None and st.metrics.train_loss is not None
    assert st.estimate is not None and st.estimate.train_tokens > 0
    assert st.estimate.gpu_type == "cpu" and st.estimate.gpu_hours > 0  # priced here
    assert {a.name for a in st.artifacts} >= {"final", "checkpoint-4", "manifest"}
    assert [e.type for e in st.timeline][:3] == ["Validated", "Estimated", "Started"]
    assert st.timeline[-1].type == "Succeeded"
    assert "Estimated" in proc.stderr and "Succeeded" in proc.stderr
    assert final.spec.data.train.uri == f"file://{tmp_path / 'chat.jsonl'}"


def test_ctrl_c_checkpoints_and_rerun_resumes(tmp_path: Path, chat_data: Path) -> None:
    job = _relative_job(
        tmp_path,
        chat_data,
        hyperparameters={"maxSteps": 400, "batchSize": 2},
        checkpointing={"everySteps": 1000, "keep": 1},
    )
    wd = tmp_path / "wd"
    proc = subprocess.Popen(
        [*RUN, str(job), "--workdir", str(wd)],
        env=trainer_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    progress: Path | None = None
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        found = list(wd.glob("store/runs/test/t/*/progress.json"))
        if found:
            try:
                if json.loads(found[0].read_text()).get("step", 0) >= 3:
                    progress = found[0]
                    break
            except ValueError:
                pass
        time.sleep(0.1)
    assert progress is not None, "training never started"
    proc.send_signal(signal.SIGINT)  # what Ctrl-C does
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == exitcodes.PREEMPTED, err[-3000:]
    stopped = json.loads(progress.read_text())
    assert stopped["state"] == "preempted" and stopped["checkpoints"]
    assert "Suspended" in err

    # the same command again resumes (stopped again once it has, to keep the test short)
    proc2 = subprocess.Popen(
        [*RUN, str(job), "--workdir", str(wd), "--json"],
        env=trainer_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    resumed = False
    while time.monotonic() < deadline and proc2.poll() is None:
        log = next(iter(wd.glob("logs/*.log")), None)
        if log and "resumed from" in log.read_text():
            resumed = True
            break
        time.sleep(0.2)
    assert resumed, "the rerun did not resume from the checkpoint"
    proc2.send_signal(signal.SIGINT)
    out, err2 = proc2.communicate(timeout=120)
    assert proc2.returncode == exitcodes.PREEMPTED, err2[-3000:]
    final = json.loads(out)
    types = [e["type"] for e in final["status"]["timeline"]]
    assert types.count("Suspended") == 2 and "Resumed" in types
    assert final["status"]["phase"] == "Suspended"
    assert final["status"]["preemptions"] == 2
    assert final["status"]["progress"]["step"] > stopped["step"]


def test_invalid_manifest_exits_1_with_the_field(tmp_path: Path, chat_data: Path) -> None:
    job = write_job(tmp_path / "job.yaml", chat_data, hyperparameters={"learningRate": 5})
    proc = subprocess.run(
        [*RUN, str(job), "--workdir", str(tmp_path / "wd")],
        env=trainer_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 1
    assert "learningRate" in proc.stderr and "Traceback" not in proc.stderr


def test_run_and_data_stats_help_end_with_examples() -> None:
    for argv, prefix in ((["run"], "tidetune run "), (["data", "stats"], "tidetune data stats ")):
        out = subprocess.run(
            [sys.executable, "-m", "tidetune", *argv, "--help"],
            env=trainer_env(),
            capture_output=True,
            text=True,
            check=False,
        )
        assert out.returncode == 0, out.stderr
        examples = out.stdout.split("examples:\n", 1)[1].splitlines()
        assert examples and all(x.strip().startswith(prefix) for x in examples if x.strip())


def test_nproc_must_be_at_least_one() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "tidetune", "run", "job.yaml", "--nproc", "0"],
        env=trainer_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 2
    assert "argument --nproc: got 0; allowed: a whole number ≥ 1" in out.stderr
