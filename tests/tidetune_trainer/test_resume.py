"""Exact resume: an interrupted-and-resumed run has the same loss sequence as an
uninterrupted one (one process, and two processes under DeepSpeed ZeRO-2)."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from tidetune import exitcodes
from tidetune.torchrun_nodes import NodesSpec, TorchrunNodes

from .conftest import explain, losses, metrics, run_trainer, trainer_env, write_job

pytestmark = pytest.mark.trainer


def test_exact_resume_one_process(tmp_path: Path, chat_data: Path) -> None:
    # LoRA dropout 0.1: the resumed run must also restore the RNG to match
    job = write_job(tmp_path / "job.yaml", chat_data)
    full = run_trainer(job, tmp_path / "full")
    assert full.returncode == 0, explain(full)

    first = run_trainer(job, tmp_path / "int", env={"TIDETUNE_STOP_AT_STEP": "6"})
    assert first.returncode == exitcodes.PREEMPTED, explain(first)
    progress = json.loads((tmp_path / "int" / "progress.json").read_text())
    assert progress["state"] == "preempted" and progress["step"] == 6
    ckpts = sorted(p.name for p in (tmp_path / "int" / "checkpoints").iterdir())
    assert ckpts == ["step-00000004", "step-00000006"]
    assert all((tmp_path / "int" / "checkpoints" / c / "COMPLETE").exists() for c in ckpts)

    second = run_trainer(job, tmp_path / "int")
    assert second.returncode == 0, explain(second)
    assert "resumed from" in second.stderr

    a, b = losses(tmp_path / "full"), losses(tmp_path / "int")
    assert len(a) == 10
    assert a == b  # exactly equal, not approximately
    evals_a = [m.get("evalLoss") for m in metrics(tmp_path / "full")]
    evals_b = [m.get("evalLoss") for m in metrics(tmp_path / "int")]
    assert evals_a == evals_b and evals_a[-1] is not None
    # retention: keep 2 complete checkpoints
    kept = sorted(p.name for p in (tmp_path / "int" / "checkpoints").iterdir())
    assert kept == ["step-00000006", "step-00000008"]


def _wait_for_step(progress: Path, step: int, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if json.loads(progress.read_text())["step"] >= step:
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"{progress} never reached step {step}")


@pytest.mark.slow
def test_exact_resume_two_processes_zero2_sigterm(tmp_path: Path, chat_data: Path) -> None:
    """Two torchrun ranks, DeepSpeed ZeRO-2 on CPU; a real SIGTERM through the local
    launcher (as the kubelet sends it) mid-run; resume; same losses."""
    job = write_job(
        tmp_path / "job.yaml",
        chat_data,
        hyperparameters={"maxSteps": 12, "batchSize": 2},
        deepspeed={"zeroStage": 2},
        checkpointing={"everySteps": 5, "keep": 3},
    )
    full = run_trainer(job, tmp_path / "full", nproc=2)
    assert full.returncode == 0, explain(full)
    a = losses(tmp_path / "full")
    assert len(a) == 12

    launcher = TorchrunNodes(log_dir=tmp_path / "logs", base_env=trainer_env())
    args = [
        "--nproc-per-node",
        "2",
        "-m",
        "tidetune_trainer",
        "--spec",
        str(job),
        "--run-uri",
        f"file://{tmp_path / 'int'}",
    ]
    handle = launcher.start(NodesSpec(name="zero2", args=args))
    try:
        _wait_for_step(tmp_path / "int" / "progress.json", 3)
        handle.signal(signal.SIGTERM)
        code = handle.wait(120)
    finally:
        if handle.poll() is None:
            handle.kill_node(0)
    log = handle.logs[0].read_text() if handle.logs[0] else ""
    assert code == exitcodes.PREEMPTED, log[-3000:]
    stopped = json.loads((tmp_path / "int" / "progress.json").read_text())
    assert stopped["state"] == "preempted"
    assert 3 <= stopped["step"] < 12
    # each rank wrote its ZeRO partition
    state = tmp_path / "int" / "checkpoints" / f"step-{stopped['step']:08d}" / "state"
    assert {p.name for p in state.iterdir()} >= {"deepspeed", "rng-rank0.pt", "rng-rank1.pt"}

    second = run_trainer(job, tmp_path / "int", nproc=2)
    assert second.returncode == 0, explain(second)
    assert losses(tmp_path / "int") == a


def test_half_written_checkpoint_is_never_resumed(tmp_path: Path, chat_data: Path) -> None:
    job = write_job(
        tmp_path / "job.yaml",
        chat_data,
        hyperparameters={"maxSteps": 6},
        checkpointing={"everySteps": 5, "keep": 3},
    )
    first = run_trainer(job, tmp_path / "run", env={"TIDETUNE_STOP_AT_STEP": "4"})
    assert first.returncode == exitcodes.PREEMPTED, explain(first)
    # a later checkpoint cut short by a kill: files but no COMPLETE marker
    broken = tmp_path / "run" / "checkpoints" / "step-00000005"
    (broken / "state").mkdir(parents=True)
    (broken / "state" / "trainable.pt").write_bytes(b"garbage")
    second = run_trainer(job, tmp_path / "run")
    assert second.returncode == 0, explain(second)
    assert "resumed from file://" in second.stderr and "step-00000004" in second.stderr
    assert [m["step"] for m in metrics(tmp_path / "run")] == [1, 2, 3, 4, 5, 6]
    # step 5 came around again: the broken one was replaced by a complete one
    assert (broken / "COMPLETE").exists()
    assert (broken / "state" / "trainable.pt").read_bytes() != b"garbage"


def test_resume_refuses_a_different_world_size(tmp_path: Path, chat_data: Path) -> None:
    job = write_job(
        tmp_path / "job.yaml",
        chat_data,
        hyperparameters={"maxSteps": 6},
        deepspeed={"zeroStage": 0},
    )
    first = run_trainer(job, tmp_path / "run", env={"TIDETUNE_STOP_AT_STEP": "4"})
    assert first.returncode == exitcodes.PREEMPTED, explain(first)
    term = tmp_path / "term.log"
    second = run_trainer(
        job, tmp_path / "run", nproc=2, env={"TIDETUNE_TERMINATION_LOG": str(term)}
    )
    assert second.returncode == exitcodes.BAD_INPUT, explain(second)
    assert "written by 1 process(es), this run has 2" in term.read_text()
