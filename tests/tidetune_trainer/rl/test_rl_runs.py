"""GRPO / DAPO / PPO jobs through the real trainer process on the tiny model (CPU).

Exact resume: a run stopped at a step boundary and resumed gives the same rewards and
losses as an uninterrupted one (sampling is seeded per step, not by the global RNG).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tidetune import exitcodes

from ..conftest import explain, metrics, run_trainer, write_job

pytestmark = pytest.mark.trainer

RL = {
    "numGenerations": 4,
    "maxCompletionLength": 10,
    "rewards": [
        {"preset": "numeric-match", "weight": 1.0},
        {"preset": "length-target", "params": {"target": 8}, "weight": 0.5},
        {
            "function": {"configMapRef": {"name": "r", "key": "reward.py"}, "entrypoint": "score"},
            "weight": 0.25,
        },
    ],
}
SOURCE = (
    "def score(prompts, completions, **columns):\n"
    "    return [float(c.count('1')) for c in completions]\n"
)


@pytest.fixture(scope="module")
def arithmetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("rl") / "arith.jsonl"
    rows = [
        {"question": f"{a} + {b} =", "answer": f"{a + b}", "level": a % 3}
        for a in range(1, 9)
        for b in range(1, 5)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def rl_job(tmp_path: Path, data: Path, **over: Any) -> tuple[Path, dict[str, str]]:
    sources = tmp_path / "sources" / "r"
    sources.mkdir(parents=True, exist_ok=True)
    (sources / "reward.py").write_text(SOURCE)
    spec: dict[str, Any] = {
        "method": "grpo",
        "data": {
            "train": {
                "format": "prompt-completion",
                "promptColumn": "question",
                "responseColumn": "answer",
            },
            "validation": None,
        },
        "rl": RL,
        "hyperparameters": {
            "maxSteps": 6,
            "batchSize": 2,
            "maxSeqLength": 48,
            "learningRate": 0.003,
        },
        "checkpointing": {"everySteps": 3, "keep": 2},
    }
    for k, v in over.items():
        spec[k] = {**spec[k], **v} if isinstance(v, dict) and isinstance(spec.get(k), dict) else v
    job = write_job(tmp_path / "job.yaml", data, **spec)
    return job, {"TIDETUNE_REWARD_SOURCES": str(tmp_path / "sources")}


KEYS = {
    "reward",
    "rewardStd",
    "rewards/0",
    "rewards/1",
    "rewards/2",
    "kl",
    "entropy",
    "completionLength",
    "clipFraction",
    "rolloutTimeShare",
}


def test_grpo_exact_resume_with_the_metrics(tmp_path: Path, arithmetic: Path) -> None:
    job, env = rl_job(tmp_path, arithmetic)
    full = run_trainer(job, tmp_path / "full", env=env)
    assert full.returncode == 0, explain(full)
    lines = [m for m in metrics(tmp_path / "full") if "loss" in m]
    assert len(lines) == 6
    assert set(lines[0]) >= KEYS, sorted(lines[0])
    for m in lines:
        assert m["reward"] == pytest.approx(
            m["rewards/0"] * 1.0 + m["rewards/1"] * 0.5 + m["rewards/2"] * 0.25, abs=1e-5
        )
        assert 0 < m["rolloutTimeShare"] <= 1 and m["completionLength"] <= 10
    samples = [
        json.loads(x) for x in (tmp_path / "full" / "samples.jsonl").read_text().splitlines()
    ]
    assert samples and {"step", "prompt", "completion", "reward", "rewards"} <= set(samples[0])
    assert len(samples[0]["rewards"]) == 3
    assert (tmp_path / "full" / "output").exists() or full.returncode == 0

    first = run_trainer(job, tmp_path / "int", env={**env, "TIDETUNE_STOP_AT_STEP": "4"})
    assert first.returncode == exitcodes.PREEMPTED, explain(first)
    second = run_trainer(job, tmp_path / "int", env=env)
    assert second.returncode == 0, explain(second)
    assert "resumed from" in second.stderr
    a = [
        (m["loss"], m["reward"], m["rewards/2"]) for m in metrics(tmp_path / "full") if "loss" in m
    ]
    b = [(m["loss"], m["reward"], m["rewards/2"]) for m in metrics(tmp_path / "int") if "loss" in m]
    assert a == b  # exactly equal


def test_dapo_full_tuning(tmp_path: Path, arithmetic: Path) -> None:
    job, env = rl_job(
        tmp_path,
        arithmetic,
        tuning={"type": "full", "lora": None},
        rl={"lossType": "dapo", "beta": 0.0},
        hyperparameters={"maxSteps": 3},
    )
    proc = run_trainer(job, tmp_path / "run", env=env)
    assert proc.returncode == 0, explain(proc)
    lines = [m for m in metrics(tmp_path / "run") if "loss" in m]
    assert len(lines) == 3 and "zeroStdFraction" in lines[0] and "kl" not in lines[0]


#: a reward constant for a third of the prompts (level 0): their groups carry no signal
DAPO_SOURCE = (
    "import zlib\n"
    "def score(prompts, completions, **columns):\n"
    "    return [0.0 if level == 0 else (zlib.crc32(c.encode()) % 97) / 97\n"
    "            for c, level in zip(completions, columns['level'])]\n"
)
DYNAMIC = ("loss", "reward", "droppedGroups", "resampledGroups", "resampleRounds", "unfilledGroups")


def test_dapo_dynamic_sampling_fills_the_batch_and_resumes_exactly(
    tmp_path: Path, arithmetic: Path
) -> None:
    """Groups without a signal are replaced from the next prompts; the data position
    that resampling advances is in the checkpoint, so a run stopped at step 3 and
    resumed samples the same prompts as an uninterrupted one."""
    fn = {"configMapRef": {"name": "r", "key": "reward.py"}, "entrypoint": "score"}
    job, env = rl_job(
        tmp_path,
        arithmetic,
        rl={"lossType": "dapo", "beta": 0.0, "rewards": [{"function": fn, "weight": 1.0}]},
        hyperparameters={"maxSteps": 5, "gradientAccumulationSteps": 2},
        checkpointing={"everySteps": 2, "keep": 3},
    )
    (tmp_path / "sources" / "r" / "reward.py").write_text(DAPO_SOURCE)
    full = run_trainer(job, tmp_path / "full", env=env)
    assert full.returncode == 0, explain(full)
    lines = [m for m in metrics(tmp_path / "full") if "loss" in m]
    assert len(lines) == 5
    assert sum(m["droppedGroups"] for m in lines) > 0
    assert sum(m["resampledGroups"] for m in lines) > 0
    assert all(m["unfilledGroups"] == 0 for m in lines)  # every step filled up
    assert all(m["resampleRounds"] <= 4 for m in lines)
    # a resampled step took more micro-batches than its own two: the data moved on
    assert any(m["resampleRounds"] > 0 for m in lines)

    first = run_trainer(job, tmp_path / "int", env={**env, "TIDETUNE_STOP_AT_STEP": "3"})
    assert first.returncode == exitcodes.PREEMPTED, explain(first)
    second = run_trainer(job, tmp_path / "int", env=env)
    assert second.returncode == 0, explain(second)
    assert "resumed from" in second.stderr
    a = [tuple(m[k] for k in DYNAMIC) for m in metrics(tmp_path / "full") if "loss" in m]
    b = [tuple(m[k] for k in DYNAMIC) for m in metrics(tmp_path / "int") if "loss" in m]
    assert a == b  # exactly equal


@pytest.mark.slow
def test_dapo_dynamic_sampling_two_ranks_in_lock_step(tmp_path: Path, arithmetic: Path) -> None:
    """Two ZeRO-2 ranks: a rank that has its groups keeps sampling while the other still
    lacks some (both take the same micro-batches, so the data position stays one)."""
    fn = {"configMapRef": {"name": "r", "key": "reward.py"}, "entrypoint": "score"}
    job, env = rl_job(
        tmp_path,
        arithmetic,
        rl={"lossType": "dapo", "beta": 0.0, "rewards": [{"function": fn, "weight": 1.0}]},
        deepspeed={"zeroStage": 2},
        hyperparameters={"maxSteps": 4},
    )
    (tmp_path / "sources" / "r" / "reward.py").write_text(DAPO_SOURCE)
    proc = run_trainer(job, tmp_path / "run", nproc=2, env=env, timeout=600)
    assert proc.returncode == 0, explain(proc)
    lines = [m for m in metrics(tmp_path / "run") if "loss" in m]
    assert len(lines) == 4 and sum(m["resampleRounds"] for m in lines) > 0
    assert all(float(m["resampleRounds"]).is_integer() for m in lines)  # the same on both


def test_ppo_lora_several_epochs(tmp_path: Path, arithmetic: Path) -> None:
    job, env = rl_job(
        tmp_path,
        arithmetic,
        method="ppo",
        rl={"epochsPerRollout": 2, "beta": 0.05},
        hyperparameters={"maxSteps": 3},
    )
    proc = run_trainer(job, tmp_path / "run", env=env)
    assert proc.returncode == 0, explain(proc)
    lines = [m for m in metrics(tmp_path / "run") if "loss" in m]
    assert len(lines) == 3 and "valueLoss" in lines[0] and "kl" in lines[0]
    final = next((tmp_path / "run").rglob("adapter_model.safetensors"))
    from safetensors import safe_open

    with safe_open(str(final), "pt") as f:
        assert not any("v_head" in k for k in f.keys())  # noqa: SIM118


def test_a_broken_reward_function_fails_the_job_naming_the_rule(
    tmp_path: Path, arithmetic: Path
) -> None:
    job, env = rl_job(tmp_path, arithmetic, hyperparameters={"maxSteps": 2})
    (tmp_path / "sources" / "r" / "reward.py").write_text(
        "def score(prompts, completions, **columns):\n"
        "    return [columns['nope'][0]] * len(completions)\n"
    )
    term = tmp_path / "term"
    proc = run_trainer(job, tmp_path / "run", env={**env, "TIDETUNE_TERMINATION_LOG": str(term)})
    assert proc.returncode == exitcodes.BAD_INPUT, explain(proc)
    message = term.read_text()
    assert message.startswith("spec.rl.rewards[2] (r/reward.py:score): KeyError: 'nope'"), message
    assert "reward.py, line 2, in score" in message and "Traceback" not in message


@pytest.mark.slow
def test_grpo_zero2_two_processes_and_resume(tmp_path: Path, arithmetic: Path) -> None:
    """DeepSpeed ZeRO-2 on CPU, two torchrun ranks (each samples its own prompts; the
    metrics are averaged over ranks); stopped at step 2 and resumed, same trajectory."""
    job, env = rl_job(
        tmp_path,
        arithmetic,
        deepspeed={"zeroStage": 2},
        hyperparameters={"maxSteps": 4},
        checkpointing={"everySteps": 2, "keep": 2},
    )
    full = run_trainer(job, tmp_path / "full", nproc=2, env=env, timeout=600)
    assert full.returncode == 0, explain(full)
    a = [(m["loss"], m["reward"]) for m in metrics(tmp_path / "full") if "loss" in m]
    assert len(a) == 4
    first = run_trainer(
        job, tmp_path / "int", nproc=2, env={**env, "TIDETUNE_STOP_AT_STEP": "2"}, timeout=600
    )
    assert first.returncode == exitcodes.PREEMPTED, explain(first)
    second = run_trainer(job, tmp_path / "int", nproc=2, env=env, timeout=600)
    assert second.returncode == 0, explain(second)
    b = [(m["loss"], m["reward"]) for m in metrics(tmp_path / "int") if "loss" in m]
    assert a == b


def test_tidetune_run_takes_the_reward_configmap_from_the_file(
    tmp_path: Path, arithmetic: Path
) -> None:
    import subprocess
    import sys

    import yaml

    from ..conftest import trainer_env

    job, _ = rl_job(tmp_path, arithmetic, hyperparameters={"maxSteps": 2})
    body = yaml.safe_load(job.read_text())
    body["metadata"].pop("uid")
    configmap = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "r", "namespace": "test"},
        "data": {"reward.py": SOURCE.replace("count('1')", "count('1') + 100")},
    }
    job.write_text(yaml.safe_dump_all([configmap, body]))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tidetune",
            "run",
            str(job),
            "--workdir",
            str(tmp_path / "wd"),
            "--json",
        ],
        env=trainer_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    status = json.loads(proc.stdout)["status"]
    assert status["phase"] == "Succeeded"
    assert status["metrics"]["reward"] >= 0.25 * 100  # the file's function ran
    (run_dir,) = (tmp_path / "wd" / "store" / "runs" / "test" / "t").iterdir()
    assert (run_dir / "reward-sources" / "r" / "reward.py").read_text() == configmap["data"][
        "reward.py"
    ]


def test_ppo_full_tuning_exports_the_model_without_its_value_head(
    tmp_path: Path, arithmetic: Path
) -> None:
    job, env = rl_job(
        tmp_path,
        arithmetic,
        method="ppo",
        tuning={"type": "full", "lora": None},
        rl={"epochsPerRollout": 2, "beta": 0.05},
        hyperparameters={"maxSteps": 2},
    )
    proc = run_trainer(job, tmp_path / "run", env=env, output=f"file://{tmp_path / 'out'}")
    assert proc.returncode == 0, explain(proc)
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    final = next((tmp_path / "out").rglob("final"))
    with safe_open(str(final / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and not any("v_head" in k for k in keys)
    AutoModelForCausalLM.from_pretrained(final)  # loads as a plain causal LM


@pytest.mark.slow
def test_grpo_zero3_two_processes(tmp_path: Path, arithmetic: Path) -> None:
    """GRPO with DeepSpeed ZeRO-3 (sharded weights) on two CPU ranks. Ranks sample in
    lock-step (``any_rank``; see test_generate.py for a rank whose rows stop first)."""
    job, env = rl_job(
        tmp_path,
        arithmetic,
        deepspeed={"zeroStage": 3},
        hyperparameters={"maxSteps": 2},
        rl={"maxCompletionLength": 12},
    )
    proc = run_trainer(job, tmp_path / "run", nproc=2, env=env, timeout=900)
    assert proc.returncode == 0, explain(proc)
    lines = [m for m in metrics(tmp_path / "run") if "loss" in m]
    assert len(lines) == 2 and all("reward" in m for m in lines)
