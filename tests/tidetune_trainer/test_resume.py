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


def test_exact_resume_with_gradient_accumulation(tmp_path: Path, chat_data: Path) -> None:
    """Three micro-batches per step: the data position and the RNG resume mid-epoch."""
    job = write_job(
        tmp_path / "job.yaml",
        chat_data,
        hyperparameters={"maxSteps": 5, "batchSize": 2, "gradientAccumulationSteps": 3},
        checkpointing={"everySteps": 2, "keep": 2},
    )
    full = run_trainer(job, tmp_path / "full")
    assert full.returncode == 0, explain(full)
    first = run_trainer(job, tmp_path / "int", env={"TIDETUNE_STOP_AT_STEP": "3"})
    assert first.returncode == exitcodes.PREEMPTED, explain(first)
    second = run_trainer(job, tmp_path / "int")
    assert second.returncode == 0, explain(second)
    a, b = losses(tmp_path / "full"), losses(tmp_path / "int")
    assert len(a) == 5 and a == b
    assert [m["tokens"] for m in metrics(tmp_path / "full")] == [
        m["tokens"] for m in metrics(tmp_path / "int")
    ]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ("uri", "spec.data.train.uri"),
        ("maxSamples", "spec.data.maxSamples"),
        ("split", "spec.data.validation.splitRatio"),
    ],
)
def test_resume_refuses_changed_data(
    tmp_path: Path, chat_data: Path, change: str, field: str
) -> None:
    job = write_job(tmp_path / "job.yaml", chat_data, hyperparameters={"maxSteps": 6})
    first = run_trainer(job, tmp_path / "run", env={"TIDETUNE_STOP_AT_STEP": "4"})
    assert first.returncode == exitcodes.PREEMPTED, explain(first)
    other = tmp_path / "other.jsonl"
    other.write_bytes(chat_data.read_bytes())
    spec: dict[str, object] = {"hyperparameters": {"maxSteps": 6}}
    data = other if change == "uri" else chat_data
    if change == "maxSamples":
        spec["data"] = {"maxSamples": 40}
    if change == "split":
        spec["data"] = {"validation": {"splitRatio": 0.2}}
    changed = write_job(tmp_path / "changed.yaml", data, **spec)
    term = tmp_path / "term.log"
    second = run_trainer(changed, tmp_path / "run", env={"TIDETUNE_TERMINATION_LOG": str(term)})
    assert second.returncode == exitcodes.BAD_INPUT, explain(second)
    message = term.read_text()
    assert "written for other data or another base model" in message
    assert field in message and "delete the run's checkpoints" in message


def test_deepspeed_state_loads_strictly_for_trainable_weights(tmp_path: Path) -> None:
    import torch

    from tidetune_trainer.engine import _load_trainable_strict
    from tidetune_trainer.errors import CheckpointError

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    model[0].requires_grad_(False)
    saved = {k: v for k, v in model.state_dict().items() if k.startswith("1.")}
    _load_trainable_strict(saved, model, tmp_path)  # frozen weights may be absent
    with pytest.raises(CheckpointError, match="missing trainable weights"):
        _load_trainable_strict({"1.weight": saved["1.weight"]}, model, tmp_path)
    with pytest.raises(CheckpointError, match="unknown weights"):
        _load_trainable_strict({**saved, "2.weight": saved["1.weight"]}, model, tmp_path)
