"""Helpers for the trainer tier: tiny jobs, datasets and real trainer processes.

DeepSpeed's CPU accelerator JIT-compiles its shared-memory op on first use (~40–90 s on
2 cores); it is cached in ``TORCH_EXTENSIONS_DIR`` (default
``~/.cache/tidetune/torch_extensions``), so only the first DeepSpeed test pays for it.
"""

from __future__ import annotations

import copy
import json
import os
import random
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
WORDS = [
    "the",
    "sea",
    "tide",
    "moon",
    "wave",
    "sand",
    "shell",
    "wind",
    "salt",
    "boat",
    "sail",
    "star",
    "night",
    "light",
    "deep",
    "blue",
    "calm",
    "storm",
    "harbour",
    "gull",
]


#: what every line of a run's metrics.jsonl holds (evalLoss and the RL metrics only some)
METRICS_LINE_KEYS = frozenset(
    {"step", "epoch", "loss", "learningRate", "gradNorm", "tokens", "tokensPerSecond", "time"}
)


def trainer_env(**extra: str) -> dict[str, str]:
    """The environment for trainer subprocesses (this checkout on PYTHONPATH, offline)."""
    env = dict(os.environ)
    paths = [str(REPO / "operator"), str(REPO / "trainer-image"), str(REPO)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["HF_HUB_OFFLINE"] = "1"
    env["OMP_NUM_THREADS"] = "1"
    env["TOKENIZERS_PARALLELISM"] = "false"
    env.pop("TIDETUNE_STOP_AT_STEP", None)
    env.update(extra)
    return env


def _phrase(r: random.Random, shortest: int, longest: int, words: list[str] = WORDS) -> str:
    return " ".join(r.choice(words) for _ in range(r.randint(shortest, longest)))


def _write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


def write_chat(path: Path, n: int = 48, seed: int = 0) -> Path:
    """``n`` user/assistant exchanges of random WORDS."""

    def rows(r: random.Random) -> Iterator[dict[str, Any]]:
        for _ in range(n):
            q, a = _phrase(r, 3, 8), _phrase(r, 4, 20)
            yield {
                "messages": [
                    {"role": "user", "content": q},
                    {"role": "assistant", "content": a},
                ]
            }

    return _write_jsonl(path, rows(random.Random(seed)))


def write_text(path: Path, n: int = 40, seed: int = 0) -> Path:
    """``n`` texts of random WORDS."""
    r = random.Random(seed)
    return _write_jsonl(path, ({"text": _phrase(r, 8, 40)} for _ in range(n)))


def write_preference(path: Path, n: int = 32, seed: int = 0) -> Path:
    """``n`` questions, each with a good answer (the first 8 WORDS, score 1) and a bad one
    (the others, score 0)."""

    def rows(r: random.Random) -> Iterator[dict[str, Any]]:
        for _ in range(n):
            q = _phrase(r, 3, 8)
            good, bad = _phrase(r, 3, 10, WORDS[:8]), _phrase(r, 3, 10, WORDS[8:])
            candidates = [{"text": good, "score": 1.0}, {"text": bad, "score": 0.0}]
            yield {
                "messages": [
                    {"role": "user", "content": q},
                    {"role": "assistant", "content": candidates},
                ]
            }

    return _write_jsonl(path, rows(random.Random(seed)))


BASE_JOB: dict[str, Any] = {
    "apiVersion": "tidetune.io/v1alpha1",
    "kind": "FineTuneJob",
    "metadata": {"name": "t", "namespace": "test", "uid": "uid-1"},
    "spec": {
        "method": "sft",
        "baseModel": {"uri": "builtin://tiny-llama"},
        "tuning": {"type": "lora", "lora": {"rank": 4, "alpha": 8, "dropout": 0.1}},
        "data": {
            "train": {"uri": "file:///dev/null", "format": "messages"},
            "validation": {"splitRatio": 0.1},
        },
        "hyperparameters": {
            "maxSteps": 10,
            "batchSize": 4,
            "learningRate": 0.002,
            "warmupSteps": 2,
            "maxSeqLength": 96,
            "seed": 3,
        },
        "resources": {"gpusPerNode": 0},
        "deepspeed": {"zeroStage": 0},
        "checkpointing": {"everySteps": 4, "keep": 2},
        "output": {"exportCheckpoints": 1},
    },
}


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        elif v is None:
            out.pop(k, None)
        else:
            out[k] = v
    return out


def write_job(path: Path, dataset: Path, **spec: Any) -> Path:
    """A job manifest on ``data`` with ``spec`` merged over :data:`BASE_JOB`'s spec."""
    body = merge(BASE_JOB, {"spec": spec})
    body["spec"]["data"]["train"]["uri"] = f"file://{dataset}"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def run_trainer(
    job: Path,
    run: Path | str,
    *,
    nproc: int = 1,
    wrapper: bool | None = None,
    env: dict[str, str] | None = None,
    output: str | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """Run the trainer to completion; one process directly, several under torchrun."""
    run_uri = run if isinstance(run, str) else f"file://{run}"
    args = ["-m", "tidetune_trainer", "--spec", str(job), "--run-uri", run_uri]
    if output:
        args += ["--output-uri", output]
    use_wrapper = nproc > 1 if wrapper is None else wrapper
    cmd = [sys.executable, *args]
    if use_wrapper:
        cmd = [
            sys.executable,
            "-m",
            "tidetune_trainer.launch",
            "--nproc-per-node",
            str(nproc),
            *args,
        ]
    return subprocess.run(
        cmd,
        env=trainer_env(**(env or {})),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def metrics(run: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]


def losses(run: Path) -> list[float]:
    return [m["loss"] for m in metrics(run) if "loss" in m]


def explain(proc: subprocess.CompletedProcess[str]) -> str:
    return f"rc={proc.returncode}\n--- stderr tail ---\n{proc.stderr[-4000:]}"


def tiny_llama(vocab_size: int, seed: int = 0) -> Any:
    """A random tiny Llama (:func:`realvocab.tiny_config`, untied embeddings) for tests that
    need no tokenizer, built after ``torch.manual_seed(seed)``."""
    import torch
    from transformers import LlamaForCausalLM

    from .realvocab import tiny_config

    config = tiny_config("llama", vocab_size, tie_word_embeddings=False, use_cache=False)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def train_on_random_tokens(
    engine: Any, steps: int, *, vocab_size: int, shape: tuple[int, int], seed: int
) -> None:
    """``steps`` optimizer steps of the model's own next-token loss on random token ids
    (``shape``: batch × length), one micro-batch each."""
    import torch

    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        ids = torch.randint(0, vocab_size, shape, generator=g)
        loss = engine.model(input_ids=ids, labels=ids).loss
        engine.backward(loss, last_micro_step=True)
        engine.step()


@pytest.fixture(scope="session")
def chat_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_chat(tmp_path_factory.mktemp("data") / "chat.jsonl")
