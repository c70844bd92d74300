"""A local run folder laid out as ``tidetune run`` leaves it: the job as run, its
timeline, ``progress.json``, ``estimate.json``, ``metrics.jsonl`` and, once exported, the
artifact manifest. The job commands read it through the same lookup as a real run."""

from __future__ import annotations

import json
import math
from pathlib import Path

from tidetune import layout

UID = "0b6c1d2e-3f40-4a5b-9c6d-7e8f90a1b2c3"
STEPS = 40


def _iso(second: int) -> str:
    return f"2026-01-05T22:{second // 60:02d}:{second % 60:02d}Z"


def write_run(workdir: Path, *, exported: bool = True) -> Path:
    """A local run of ``team-a/poetry-sft``: finished and exported, or (``exported=False``)
    stopped at step 20 before any export."""
    store = workdir / layout.LOCAL_STORE_DIR
    run = store / layout.LOCAL_RUNS_DIR / "team-a" / "poetry-sft" / UID
    root = store / layout.LOCAL_ARTIFACTS_DIR / "team-a" / "poetry-sft" / UID
    run.mkdir(parents=True)
    root.mkdir(parents=True)
    job = {
        "apiVersion": "tidetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "poetry-sft", "namespace": "team-a", "uid": UID},
        "spec": {
            "displayName": "poetry-sft-v1",
            "method": "sft",
            "baseModel": {"uri": "builtin://tiny-llama"},
            "tuning": {"type": "full"},
            "data": {"train": {"uri": "file:///data/poems.jsonl", "format": "messages"}},
            "hyperparameters": {"maxSteps": STEPS, "learningRate": 0.003, "batchSize": 8},
            "resources": {"nodes": 1, "gpusPerNode": 0},
            "checkpointing": {"everySteps": 20, "keep": 2},
        },
    }
    (run / layout.LOCAL_JOB_FILE).write_text(json.dumps(job))
    last_step = STEPS if exported else STEPS // 2
    metrics: list[dict[str, float | int | str]] = []
    for step in range(1, last_step + 1):
        loss = 5.5 * math.exp(-step / 15) + 0.9 + 0.25 * math.sin(step * 1.7)
        metrics.append(
            {
                "step": step,
                "epoch": step / STEPS,
                "loss": round(loss, 4),
                "learningRate": 0.003 * min(1.0, step / 5),
                "tokens": 860 * step,
                "tokensPerSecond": 1500.0 + 40 * (step % 5),
                "time": _iso(10 + step),
            }
        )
        if step % 10 == 0:
            metrics.append(
                {"step": step, "evalLoss": round(loss + 0.2, 4), "time": _iso(10 + step)}
            )
    (run / layout.METRICS_FILE).write_text("".join(json.dumps(m) + "\n" for m in metrics))
    checkpoints = [
        {"step": s, "uri": f"file://{run}/checkpoints/step-{s}/", "time": _iso(10 + s)}
        for s in (20, 40)
        if s <= last_step
    ]
    artifacts = []
    if exported:
        artifacts = [
            {
                "name": "final",
                "uri": f"file://{root}/final/",
                "sizeBytes": 2_481_203,
                "sha256": "ab" * 32,
            },
            {
                "name": "manifest",
                "uri": f"file://{root}/{layout.MANIFEST_FILE}",
                "sizeBytes": 911,
                "sha256": "cd" * 32,
            },
        ]
        (root / layout.MANIFEST_FILE).write_text(json.dumps({"artifacts": artifacts[:1]}))
    last = metrics[-2]
    (run / layout.PROGRESS_FILE).write_text(
        json.dumps(
            {
                "state": "succeeded" if exported else "suspended",
                "step": last_step,
                "totalSteps": STEPS,
                "epoch": last_step / STEPS,
                "percent": 100.0 * last_step / STEPS,
                "trainedTokens": last["tokens"],
                "metrics": {"trainLoss": last["loss"], "evalLoss": metrics[-1]["evalLoss"]},
                "checkpoints": checkpoints,
                "artifacts": artifacts,
            }
        )
    )
    (run / layout.ESTIMATE_FILE).write_text(
        json.dumps(
            {"trainTokens": 34_400, "tokensPerEpoch": 34_400, "modelParams": 200_000, "devices": 1}
        )
    )
    timeline = [
        {"time": _iso(1), "type": "Validated", "reason": "SpecValid", "message": "sft"},
        {"time": _iso(2), "type": "Estimated", "reason": "Estimated", "message": "34,400 tokens"},
        {"time": _iso(10), "type": "Started", "reason": "TrainerStarted", "message": "1 process"},
        *[
            {
                "time": c["time"],
                "type": "Checkpoint",
                "reason": "CheckpointSaved",
                "message": f"step {c['step']}",
            }
            for c in checkpoints
        ],
    ]
    if exported:
        timeline.append(
            {
                "time": _iso(55),
                "type": "Succeeded",
                "reason": "TrainingComplete",
                "message": "exported final",
            }
        )
    (run / layout.LOCAL_TIMELINE_FILE).write_text(json.dumps(timeline))
    return run
