"""The GPU tier: the same recipes on a real CUDA accelerator (bf16/fp16, DeepSpeed ops).

Marked ``gpu`` and skipped where no CUDA device exists — every machine of this project
but a lent GPU machine (run them there with ``pytest -m gpu``). Nothing here can run on
the CPU-only CI; the CPU tiers test the same code paths in float32.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from .conftest import explain, losses, run_trainer, write_job, write_preference

pytestmark = [
    pytest.mark.trainer,
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

GPU = {"resources": {"nodes": 1, "gpusPerNode": 1}}


def test_sft_lora_trains_on_the_gpu(tmp_path: Path, chat_data: Path) -> None:
    job = write_job(tmp_path / "job.yaml", chat_data, hyperparameters={"maxSteps": 20}, **GPU)
    proc = run_trainer(job, tmp_path / "run", output=f"file://{tmp_path / 'out'}")
    assert proc.returncode == 0, explain(proc)
    got = losses(tmp_path / "run")
    assert len(got) == 20 and got[-1] < got[0]
    progress = json.loads((tmp_path / "run" / "progress.json").read_text())
    assert progress["state"] == "succeeded"


def test_full_tuning_zero2_resumes_exactly_on_the_gpu(tmp_path: Path, chat_data: Path) -> None:
    spec = {
        "tuning": {"type": "full"},
        "hyperparameters": {"maxSteps": 12},
        "deepspeed": {"zeroStage": 2},
        "checkpointing": {"everySteps": 4, "keep": 2},
        **GPU,
    }
    job = write_job(tmp_path / "job.yaml", chat_data, **spec)
    whole = run_trainer(job, tmp_path / "whole", wrapper=True)
    assert whole.returncode == 0, explain(whole)
    cut = run_trainer(job, tmp_path / "cut", wrapper=True, env={"TIDETUNE_STOP_AT_STEP": "6"})
    assert cut.returncode == 85, explain(cut)
    rest = run_trainer(job, tmp_path / "cut", wrapper=True)
    assert rest.returncode == 0, explain(rest)
    assert losses(tmp_path / "cut") == losses(tmp_path / "whole")


def test_dpo_on_the_gpu(tmp_path: Path) -> None:
    data = write_preference(tmp_path / "pref.jsonl")
    job = write_job(
        tmp_path / "job.yaml",
        data,
        method="dpo",
        data={"train": {"uri": f"file://{data}", "format": "preference"}},
        hyperparameters={"maxSteps": 8},
        **GPU,
    )
    proc = run_trainer(job, tmp_path / "run")
    assert proc.returncode == 0, explain(proc)
    assert len(losses(tmp_path / "run")) == 8


def test_qlora_4bit_on_the_gpu(tmp_path: Path, chat_data: Path) -> None:
    pytest.importorskip("bitsandbytes", reason="QLoRA needs bitsandbytes (in the trainer image)")
    job = write_job(
        tmp_path / "job.yaml",
        chat_data,
        tuning={"type": "lora", "loadIn4bit": True},
        hyperparameters={"maxSteps": 6},
        **GPU,
    )
    proc = run_trainer(job, tmp_path / "run")
    assert proc.returncode == 0, explain(proc)
    assert len(losses(tmp_path / "run")) == 6
