"""Manifest tables shared by the validation tests: good manifests and bad ones with the
field each bad one must be blamed on.

Each bad case is (id, kind, edits, path) — ``edits`` maps a dotted path (``[i]`` for list
items) to a new value, or to ``DELETE``. ``PYDANTIC_ONLY`` lists the cases the API server
cannot judge from the CRD alone (they are enforced by ``tidetune validate`` and by the
operator, which fails the job or marks the pool with a condition).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"

DELETE = object()


def example(name: str, kind: str = "FineTuneJob") -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all((EXAMPLES / name).read_text()) if d]
    return copy.deepcopy(next(d for d in docs if d["kind"] == kind))


def _steps(path: str) -> list[str | int]:
    out: list[str | int] = []
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", path):
        out.append(int(part[1:-1]) if part.startswith("[") else part)
    return out


def edit(doc: dict[str, Any], edits: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``doc`` with ``edits`` applied (creating mappings on the way)."""
    doc = copy.deepcopy(doc)
    for path, value in edits.items():
        steps = _steps(path)
        node: Any = doc
        for step in steps[:-1]:
            if isinstance(step, str) and step not in node:
                node[step] = {}
            node = node[step]
        if value is DELETE:
            del node[steps[-1]]
        else:
            node[steps[-1]] = value
    return doc


JOB = "sft-lora.yaml"
POOL = "idlepool.yaml"
GRPO = "grpo.yaml"
DPO = "dpo.yaml"

REWARD_FN = {"function": {"configMapRef": {"name": "r", "key": "reward.py"}}, "weight": 0.5}

BAD: list[tuple[str, str, dict[str, Any], str]] = [
    ("name-uppercase", JOB, {"metadata.name": "Bad_Name"}, "metadata.name"),
    ("name-too-long", JOB, {"metadata.name": "a" * 64}, "metadata.name"),
    ("api-version", JOB, {"apiVersion": "tidetune.io/v1"}, "apiVersion"),
    ("method-unknown", JOB, {"spec.method": "sftt"}, "spec.method"),
    ("method-missing", JOB, {"spec.method": DELETE}, "spec.method"),
    ("model-uri-http", JOB, {"spec.baseModel.uri": "http://models/x"}, "spec.baseModel.uri"),
    ("model-builtin-unknown", JOB, {"spec.baseModel.uri": "builtin://huge"}, "spec.baseModel.uri"),
    ("model-missing", JOB, {"spec.baseModel": DELETE}, "spec.baseModel"),
    ("display-name-space", JOB, {"spec.displayName": "has space"}, "spec.displayName"),
    ("display-name-long", JOB, {"spec.displayName": "诗" * 201}, "spec.displayName"),
    ("display-name-empty", JOB, {"spec.displayName": ""}, "spec.displayName"),
    ("description-long", JOB, {"spec.description": "x" * 2001}, "spec.description"),
    ("tuning-type", JOB, {"spec.tuning.type": "qlora"}, "spec.tuning.type"),
    ("lora-rank-0", JOB, {"spec.tuning.lora.rank": 0}, "spec.tuning.lora.rank"),
    ("lora-rank-257", JOB, {"spec.tuning.lora.rank": 257}, "spec.tuning.lora.rank"),
    ("lora-alpha-0", JOB, {"spec.tuning.lora.alpha": 0}, "spec.tuning.lora.alpha"),
    ("lora-dropout", JOB, {"spec.tuning.lora.dropout": 0.6}, "spec.tuning.lora.dropout"),
    (
        "lora-targets-empty",
        JOB,
        {"spec.tuning.lora.targetModules": []},
        "spec.tuning.lora.targetModules",
    ),
    (
        "4bit-with-full",
        JOB,
        {"spec.tuning": {"type": "full", "loadIn4bit": True}, "spec.output.mergeLora": False},
        "spec.tuning.loadIn4bit",
    ),
    (
        "lora-with-full",
        JOB,
        {"spec.tuning.type": "full", "spec.output.mergeLora": False},
        "spec.tuning.lora",
    ),
    ("train-missing", JOB, {"spec.data.train": DELETE}, "spec.data.train"),
    ("train-uri-http", JOB, {"spec.data.train.uri": "https://x/y.jsonl"}, "spec.data.train.uri"),
    ("train-format", JOB, {"spec.data.train.format": "csv"}, "spec.data.train.format"),
    (
        "columns-with-messages",
        JOB,
        {"spec.data.train.promptColumn": "q"},
        "spec.data.train.promptColumn",
    ),
    (
        "validation-both",
        JOB,
        {"spec.data.validation": {"uri": "s3://b/v.jsonl", "splitRatio": 0.1}},
        "spec.data.validation.uri",
    ),
    ("validation-none", JOB, {"spec.data.validation": {}}, "spec.data.validation.splitRatio"),
    (
        "split-ratio-high",
        JOB,
        {"spec.data.validation.splitRatio": 0.6},
        "spec.data.validation.splitRatio",
    ),
    (
        "split-ratio-zero",
        JOB,
        {"spec.data.validation.splitRatio": 0},
        "spec.data.validation.splitRatio",
    ),
    ("mixin-ratio", JOB, {"spec.data.mixIn.ratio": 1.0}, "spec.data.mixIn.ratio"),
    ("mixin-format", JOB, {"spec.data.mixIn.format": "text"}, "spec.data.mixIn.format"),
    ("max-samples-0", JOB, {"spec.data.maxSamples": 0}, "spec.data.maxSamples"),
    ("max-samples-neg", JOB, {"spec.data.maxSamples": -2}, "spec.data.maxSamples"),
    ("epochs-51", JOB, {"spec.hyperparameters.epochs": 51}, "spec.hyperparameters.epochs"),
    ("epochs-text", JOB, {"spec.hyperparameters.epochs": "three"}, "spec.hyperparameters.epochs"),
    ("max-steps-0", JOB, {"spec.hyperparameters.maxSteps": 0}, "spec.hyperparameters.maxSteps"),
    ("lr-0", JOB, {"spec.hyperparameters.learningRate": 0}, "spec.hyperparameters.learningRate"),
    ("lr-2", JOB, {"spec.hyperparameters.learningRate": 2}, "spec.hyperparameters.learningRate"),
    ("batch-2000", JOB, {"spec.hyperparameters.batchSize": 2000}, "spec.hyperparameters.batchSize"),
    (
        "grad-accum-0",
        JOB,
        {"spec.hyperparameters.gradientAccumulationSteps": 0},
        "spec.hyperparameters.gradientAccumulationSteps",
    ),
    (
        "seq-len-8",
        JOB,
        {"spec.hyperparameters.maxSeqLength": 8},
        "spec.hyperparameters.maxSeqLength",
    ),
    (
        "warmup-ratio",
        JOB,
        {"spec.hyperparameters.warmupRatio": 0.6},
        "spec.hyperparameters.warmupRatio",
    ),
    (
        "grad-norm-0",
        JOB,
        {"spec.hyperparameters.maxGradNorm": 0},
        "spec.hyperparameters.maxGradNorm",
    ),
    (
        "packing-text",
        JOB,
        {"spec.hyperparameters.packing": "sometimes"},
        "spec.hyperparameters.packing",
    ),
    ("unknown-hparam", JOB, {"spec.hyperparameters.lr": 0.1}, "spec.hyperparameters.lr"),
    ("unknown-top", JOB, {"spec.gpus": 8}, "spec.gpus"),
    ("dpo-with-sft", JOB, {"spec.dpo": {"beta": 0.1}}, "spec.dpo"),
    ("dpo-beta-0", DPO, {"spec.dpo.beta": 0}, "spec.dpo.beta"),
    ("dpo-wrong-format", DPO, {"spec.data.train.format": "messages"}, "spec.data.train.format"),
    (
        "cpt-wrong-format",
        "cpt.yaml",
        {"spec.data.train.format": "messages"},
        "spec.data.train.format",
    ),
    ("grpo-without-rl", GRPO, {"spec.rl": DELETE}, "spec.rl"),
    ("rl-with-sft", JOB, {"spec.rl": {"rewards": [{"preset": "exact-match"}]}}, "spec.rl"),
    ("rewards-empty", GRPO, {"spec.rl.rewards": []}, "spec.rl.rewards"),
    ("rewards-six", GRPO, {"spec.rl.rewards": [{"preset": "exact-match"}] * 6}, "spec.rl.rewards"),
    (
        "reward-both",
        GRPO,
        {"spec.rl.rewards[0].function": REWARD_FN["function"]},
        "spec.rl.rewards[0].preset",
    ),
    ("reward-neither", GRPO, {"spec.rl.rewards[0]": {"weight": 1.0}}, "spec.rl.rewards[0].preset"),
    ("reward-preset", GRPO, {"spec.rl.rewards[0].preset": "vibes"}, "spec.rl.rewards[0].preset"),
    (
        "reward-entrypoint",
        GRPO,
        {"spec.rl.rewards[1].function.entrypoint": "1bad"},
        "spec.rl.rewards[1].function.entrypoint",
    ),
    (
        "reward-configmap-name",
        GRPO,
        {"spec.rl.rewards[1].function.configMapRef.name": "Bad Name"},
        "spec.rl.rewards[1].function.configMapRef.name",
    ),
    ("num-generations", GRPO, {"spec.rl.numGenerations": 1}, "spec.rl.numGenerations"),
    (
        "regex-without-pattern",
        GRPO,
        {"spec.rl.rewards[0].preset": "regex-match"},
        "spec.rl.rewards[0].params",
    ),
    (
        "contains-all-without-values",
        GRPO,
        {"spec.rl.rewards[0]": {"preset": "contains-all", "params": {"caseSensitive": True}}},
        "spec.rl.rewards[0].params",
    ),
    (
        "length-target-without-target",
        GRPO,
        {"spec.rl.rewards[0].preset": "length-target"},
        "spec.rl.rewards[0].params",
    ),
    (
        "params-on-function",
        GRPO,
        {"spec.rl.rewards[1].params": {"target": 3}},
        "spec.rl.rewards[1].params",
    ),
    (
        "reward-extract",
        GRPO,
        {"spec.rl.rewards[0].params": {"extract": "vibes"}},
        "spec.rl.rewards[0].params.extract",
    ),
    ("loss-type", GRPO, {"spec.rl.lossType": "reinforce"}, "spec.rl.lossType"),
    (
        "epsilon-high-below",
        GRPO,
        {"spec.rl.epsilon": 0.3, "spec.rl.epsilonHigh": 0.2},
        "spec.rl.epsilonHigh",
    ),
    (
        "resample-without-dapo",
        GRPO,
        {"spec.rl.maxResampleRounds": 2},
        "spec.rl.maxResampleRounds",
    ),
    (
        "resample-too-many",
        GRPO,
        {"spec.rl.lossType": "dapo", "spec.rl.maxResampleRounds": 65},
        "spec.rl.maxResampleRounds",
    ),
    (
        "reward-runtime-cpu",
        GRPO,
        {"spec.rl.rewardRuntime": {"cpu": "lots"}},
        "spec.rl.rewardRuntime.cpu",
    ),
    (
        "requirement-shell",
        GRPO,
        {"spec.rl.rewards[1].function.requirements": ["sympy; rm -rf /"]},
        "spec.rl.rewards[1].function.requirements[0]",
    ),
    ("nodes-0", JOB, {"spec.resources.nodes": 0}, "spec.resources.nodes"),
    ("gpus-17", JOB, {"spec.resources.gpusPerNode": 17}, "spec.resources.gpusPerNode"),
    ("cpu-job-in-pool", JOB, {"spec.resources.gpusPerNode": 0}, "spec.resources.gpusPerNode"),
    ("memory", JOB, {"spec.resources.memory": "lots"}, "spec.resources.memory"),
    ("zero-stage-4", JOB, {"spec.deepspeed.zeroStage": 4}, "spec.deepspeed.zeroStage"),
    (
        "offload-stage-0",
        JOB,
        {"spec.deepspeed": {"zeroStage": 0, "offload": "cpu"}},
        "spec.deepspeed.offload",
    ),
    ("offload-nvme", JOB, {"spec.deepspeed.offload": "nvme"}, "spec.deepspeed.offload"),
    (
        "max-runtime-words",
        JOB,
        {"spec.scheduling.maxRuntime": "1 day"},
        "spec.scheduling.maxRuntime",
    ),
    ("max-runtime-zero", JOB, {"spec.scheduling.maxRuntime": "0s"}, "spec.scheduling.maxRuntime"),
    ("pool-name", JOB, {"spec.scheduling.pool": "Night_A100"}, "spec.scheduling.pool"),
    ("priority", JOB, {"spec.scheduling.priority": 5000}, "spec.scheduling.priority"),
    (
        "workload-priority-class-without-queue",
        JOB,
        {"spec.scheduling.workloadPriorityClass": "high"},
        "spec.scheduling.workloadPriorityClass",
    ),
    (
        "workload-priority-class-name",
        JOB,
        {"spec.scheduling.queueName": "team-a", "spec.scheduling.workloadPriorityClass": "High"},
        "spec.scheduling.workloadPriorityClass",
    ),
    (
        "workload-priority-class-over-63",
        JOB,
        {"spec.scheduling.queueName": "team-a", "spec.scheduling.workloadPriorityClass": "p" * 64},
        "spec.scheduling.workloadPriorityClass",
    ),
    ("every-steps-0", JOB, {"spec.checkpointing.everySteps": 0}, "spec.checkpointing.everySteps"),
    ("keep-0", JOB, {"spec.checkpointing.keep": 0}, "spec.checkpointing.keep"),
    (
        "export-over-keep",
        JOB,
        {"spec.output.exportCheckpoints": 5},
        "spec.output.exportCheckpoints",
    ),
    ("merge-with-full", "sft-full.yaml", {"spec.output.mergeLora": True}, "spec.output.mergeLora"),
    ("output-uri", JOB, {"spec.output.uri": "gs://bucket/"}, "spec.output.uri"),
    ("output-to-a-claim", JOB, {"spec.output.uri": "pvc://models/out/"}, "spec.output.uri"),
    (
        "publish-merged-without-merge",
        JOB,
        {
            "spec.output.mergeLora": False,
            "spec.output.publish": {"registry": "http://mlflow:5000", "artifact": "merged"},
        },
        "spec.output.publish.artifact",
    ),
    (
        "publish-registry-not-http",
        JOB,
        {"spec.output.publish": {"registry": "mlflow:5000"}},
        "spec.output.publish.registry",
    ),
    (
        "publish-artifact-unknown",
        JOB,
        {"spec.output.publish": {"registry": "http://m", "artifact": "best"}},
        "spec.output.publish.artifact",
    ),
    (
        "credentials-in-spec",
        JOB,
        {"spec.storageSecretRef.accessKey": "AKIA..."},
        "spec.storageSecretRef.accessKey",
    ),
    ("suspend-text", JOB, {"spec.suspend": "yes please"}, "spec.suspend"),
    ("pool-gpus-0", POOL, {"spec.gpus": 0}, "spec.gpus"),
    ("pool-gpus-missing", POOL, {"spec.gpus": DELETE}, "spec.gpus"),
    ("pool-timezone", POOL, {"spec.timezone": "Mars/Olympus"}, "spec.timezone"),
    (
        "reward-regex-invalid",
        GRPO,
        {"spec.rl.rewards[0]": {"preset": "regex-match", "params": {"pattern": "(unclosed"}}},
        "spec.rl.rewards[0].params.pattern",
    ),
    (
        "reward-schema-not-json",
        GRPO,
        {"spec.rl.rewards[0]": {"preset": "json-valid", "params": {"schema": "{type: object}"}}},
        "spec.rl.rewards[0].params.schema",
    ),
    ("pool-windows-empty", POOL, {"spec.windows": []}, "spec.windows"),
    ("pool-start-25", POOL, {"spec.windows[0].start": "25:00"}, "spec.windows[0].start"),
    ("pool-start-24", POOL, {"spec.windows[0].start": "24:00"}, "spec.windows[0].start"),
    ("pool-start-is-end", POOL, {"spec.windows[0].end": "22:00"}, "spec.windows[0].end"),
    ("pool-days-twice", POOL, {"spec.windows[0].days": ["Mon", "Mon"]}, "spec.windows[0].days"),
    ("pool-day-name", POOL, {"spec.windows[1].days": ["Sat", "Sunday"]}, "spec.windows[1].days[1]"),
    ("pool-drain", POOL, {"spec.drainBefore": "10 minutes"}, "spec.drainBefore"),
    ("pool-toleration", POOL, {"spec.tolerations[0].value": "x"}, "spec.tolerations[0].value"),
    (
        "pool-toleration-effect",
        POOL,
        {"spec.tolerations[0].effect": "Sometimes"},
        "spec.tolerations[0].effect",
    ),
    ("pool-unknown", POOL, {"spec.capacity": 3}, "spec.capacity"),
]

#: Cases only the pydantic model (``tidetune validate``, the operator) can judge.
PYDANTIC_ONLY = {"pool-timezone", "reward-regex-invalid", "reward-schema-not-json"}

GOOD: list[tuple[str, str, dict[str, Any]]] = [
    ("example-sft-lora", JOB, {}),
    ("example-sft-full", "sft-full.yaml", {}),
    ("example-dpo", DPO, {}),
    ("example-cpt", "cpt.yaml", {}),
    ("example-grpo", GRPO, {}),
    ("example-grpo-quickstart", "grpo-quickstart.yaml", {}),
    ("example-ppo", "ppo.yaml", {}),
    (
        "grpo-every-preset",
        GRPO,
        {
            "spec.rl.lossType": "dapo",
            "spec.rl.epsilonHigh": 0.28,
            "spec.rl.maxResampleRounds": 8,
            "spec.rl.rewards": [
                {
                    "preset": "numeric-match",
                    "params": {"extract": "after-hashes", "tolerance": 0.01},
                },
                {"preset": "regex-match", "params": {"pattern": "^\\d+$", "fullMatch": True}},
                {"preset": "contains-any", "params": {"values": ["a", "b"]}},
                {"preset": "json-valid", "params": {"schema": '{"type": "object"}'}},
                {
                    "preset": "length-target",
                    "params": {"target": 40, "unit": "words"},
                    "weight": 0.5,
                },
            ],
        },
    ),
    (
        "ppo-with-runtime",
        GRPO,
        {
            "spec.method": "ppo",
            "spec.rl.epochsPerRollout": 2,
            "spec.rl.lambda": 0.9,
            "spec.rl.rewardRuntime": {
                "image": "registry.local/rewards:1",
                "memoryMiB": 512,
                "cpu": "2",
                "memory": "4Gi",
            },
            "spec.rl.rewards[1].function.requirements": ["sympy>=1.12", "numpy"],
        },
    ),
    ("example-quickstart", "quickstart.yaml", {}),
    ("example-pool", POOL, {}),
    (
        "minimal",
        JOB,
        {
            "spec": {
                "method": "sft",
                "baseModel": {"uri": "builtin://tiny-llama"},
                "data": {"train": {"uri": "file:///d.jsonl"}},
            }
        },
    ),
    (
        "nulls-mean-unset",
        JOB,
        {
            "spec.hyperparameters.maxSteps": None,
            "spec.scheduling.queueName": None,
            "spec.hyperparameters.epochs": None,
        },
    ),
    (
        "kueue-priority",
        JOB,
        {
            "spec.scheduling.pool": None,
            "spec.scheduling.queueName": "team-a",
            "spec.scheduling.workloadPriorityClass": "prod.high-priority",
        },
    ),
    ("cpu-as-int", JOB, {"spec.resources.cpu": 8}),
    ("display-name-scripts", JOB, {"spec.displayName": "Пушкин_стихи-2"}),
    ("display-name-devanagari", JOB, {"spec.displayName": "हिन्दी_कविता"}),
    ("validation-uri", JOB, {"spec.data.validation": {"uri": "pvc://data/eval.jsonl"}}),
    ("max-samples-1", JOB, {"spec.data.maxSamples": 1}),
    (
        "bounds-low",
        JOB,
        {
            "spec.hyperparameters": {
                "epochs": 1,
                "batchSize": 1,
                "maxSeqLength": 16,
                "warmupRatio": 0,
                "learningRate": 1,
            }
        },
    ),
    (
        "bounds-high",
        JOB,
        {
            "spec.tuning.lora.rank": 256,
            "spec.hyperparameters.epochs": 50,
            "spec.resources.gpusPerNode": 16,
            "spec.resources.nodes": 512,
        },
    ),
    (
        "cpu-only",
        JOB,
        {
            "spec.resources.gpusPerNode": 0,
            "spec.deepspeed.zeroStage": 0,
            "spec.scheduling.pool": DELETE,
        },
    ),
    ("queue", JOB, {"spec.scheduling": {"queueName": "team-a-queue", "maxRuntime": "1h30m"}}),
    ("hf-model", JOB, {"spec.baseModel.uri": "hf://Qwen/Qwen2.5-0.5B"}),
    ("pc-columns", "sft-full.yaml", {"spec.data.train.promptColumn": "q"}),
    ("export-none", JOB, {"spec.output.exportCheckpoints": 0}),
    (
        "publish",
        JOB,
        {
            "spec.output.mergeLora": True,
            "spec.output.publish": {
                "registry": "https://mlflow.example.com",
                "model": "poetry",
                "artifact": "merged",
                "credentialsSecretRef": {"name": "mlflow-token"},
            },
        },
    ),
    (
        "publish-checkpoint",
        JOB,
        {
            "spec.output.publish": {
                "registry": "http://m:5000",
                "artifact": "checkpoint-100",
                "copyFiles": False,
            }
        },
    ),
    ("cancelled", JOB, {"spec.cancelled": True}),
    (
        "pool-whole-days",
        POOL,
        {"spec.windows": [{"days": ["Sat"], "start": "00:00", "end": "24:00"}]},
    ),
    ("pool-utc-default", POOL, {"spec.timezone": DELETE}),
    ("pool-no-drain", POOL, {"spec.drainBefore": "0s"}),
]
