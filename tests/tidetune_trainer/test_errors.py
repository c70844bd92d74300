"""Bad input ends the trainer with exit 65 and a message that says what to change, in the
termination log and in progress.json; never a traceback there."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tidetune import exitcodes

from .conftest import explain, run_trainer, write_chat, write_job

pytestmark = pytest.mark.trainer


def _run_failing(tmp_path: Path, job: Path, nproc: int = 1) -> str:
    term = tmp_path / "termination-log"
    proc = run_trainer(
        job, tmp_path / "run", nproc=nproc, env={"TIDETUNE_TERMINATION_LOG": str(term)}
    )
    assert proc.returncode == exitcodes.BAD_INPUT, explain(proc)
    message = term.read_text()
    assert "Traceback" not in message
    progress = json.loads((tmp_path / "run" / "progress.json").read_text())
    assert progress["state"] == "failed" and progress["exitCode"] == exitcodes.BAD_INPUT
    assert progress["message"] == message
    return message


def test_bad_data_names_file_and_line(tmp_path: Path) -> None:
    data = write_chat(tmp_path / "train.jsonl", n=6)
    lines = data.read_text().splitlines()
    lines[2] = "{not json"
    lines[4] = json.dumps({"messages": [{"role": "robot", "content": "hi"}]})
    data.write_text("\n".join(lines) + "\n")
    # two processes under the launch wrapper: the combined exit code is still 65
    message = _run_failing(tmp_path, write_job(tmp_path / "job.yaml", data), nproc=2)
    assert f"{data}:3:" in message and f"{data}:5:" in message
    assert "robot" in message


def test_grpo_reward_function_without_a_source_names_the_rule(
    tmp_path: Path, chat_data: Path
) -> None:
    fn = {"function": {"configMapRef": {"name": "gone", "key": "reward.py"}}, "weight": 1.0}
    job = write_job(
        tmp_path / "job.yaml",
        chat_data,
        method="grpo",
        rl={"rewards": [{"preset": "exact-match"}, fn]},
    )
    message = _run_failing(tmp_path, job)
    assert message.startswith("spec.rl.rewards[1] (gone/reward.py:reward): no source")
    assert "ConfigMap 'gone' key 'reward.py'" in message


def test_load_in_4bit_without_cuda_names_the_field(tmp_path: Path, chat_data: Path) -> None:
    job = write_job(tmp_path / "job.yaml", chat_data, tuning={"loadIn4bit": True})
    message = _run_failing(tmp_path, job)
    assert "spec.tuning.loadIn4bit" in message and "CUDA" in message


def test_invalid_manifest_names_the_field(tmp_path: Path, chat_data: Path) -> None:
    job = write_job(tmp_path / "job.yaml", chat_data, hyperparameters={"batchSize": 0})
    message = _run_failing(tmp_path, job)
    assert "batchSize" in message
