"""The estimate before training: count the job's tokens with the data pipeline, size the
model, and price it with :mod:`tidetune.estimate`.

- :func:`count_tokens` — tokens per epoch of a spec's training data: every record, or
  for large data a seeded sample of ``sample_records`` records scaled up (``sampled``).
- :func:`model_params_for` — the base model's parameter count from its ``config.json``
  (no weights are loaded; ``builtin://tiny-llama`` from its fixed shape).
- :func:`estimate_job` — tokens over all epochs/steps → :class:`tidetune.estimate.Estimate`.
- :func:`write_estimate` — ``<run>/estimate.json``.

Environment: ``TIDETUNE_GPU_TYPE`` names the device type when the spec does not
(``spec.resources.gpuType``); ``TIDETUNE_ESTIMATE_TABLES`` points at a YAML/JSON file
with the throughput and price tables (see ``tidetune.estimate.load_tables``).
"""

from __future__ import annotations

import json
import math
import os
import random
from dataclasses import dataclass
from typing import Any

from tidetune.estimate import (
    DEFAULT_TABLES,
    Estimate,
    EstimateTables,
    estimate,
    load_tables,
    params_from_config,
)
from tidetune.storage import ObjectStore

GPU_TYPE_ENV = "TIDETUNE_GPU_TYPE"
TABLES_ENV = "TIDETUNE_ESTIMATE_TABLES"
DEFAULT_GPU_TYPE = "a100"
#: Records tokenized when counting a large dataset by sampling.
DEFAULT_SAMPLE_RECORDS = 20_000


@dataclass(frozen=True)
class TokenCount:
    """Tokens per epoch of the training data (with and without padding)."""

    tokens: int
    samples: int
    sampled: bool
    packed_rows: int | None = None


def tables_from_env() -> EstimateTables:
    """The tables in force: ``$TIDETUNE_ESTIMATE_TABLES`` over the defaults."""
    path = os.environ.get(TABLES_ENV)
    return load_tables(path) if path else DEFAULT_TABLES


def device_type_for(spec: Any) -> str:
    """``cpu`` without GPUs, else ``spec.resources.gpuType``, ``$TIDETUNE_GPU_TYPE``, the
    local CUDA device's name when recognisable, or ``a100``."""
    res = spec.resources
    if res.gpus_per_node == 0:
        return "cpu"
    if getattr(res, "gpu_type", None):
        return str(res.gpu_type)
    env = os.environ.get(GPU_TYPE_ENV)
    if env:
        return env.lower()
    return DEFAULT_GPU_TYPE


def count_tokens(
    spec: Any, *, sample_records: int = DEFAULT_SAMPLE_RECORDS, credentials: Any = None
) -> TokenCount:
    """Tokens one epoch trains on, counted with the data pipeline (reading, validation,
    the tokenizer of the base model). More than ``sample_records`` records: a seeded
    sample is tokenized and the count scaled. Raises the data side's errors."""
    from tidetune_trainer.data.prepare import DataSettings, LoadedData, load_data, prepare_data
    from tidetune_trainer.tiny import load_tokenizer

    settings = DataSettings.from_spec(spec)
    loaded = load_data(settings, credentials)
    method = spec.method.value if hasattr(spec.method, "value") else str(spec.method)
    tokenizer = load_tokenizer(
        spec.base_model.uri, texts=loaded.texts(), seed=settings.seed, credentials=credentials
    )
    total = len(loaded.train)
    sampled = total > sample_records
    part = loaded
    if sampled:
        rng = random.Random(settings.seed)
        pick = sorted(rng.sample(range(total), sample_records))
        part = LoadedData([loaded.train[i] for i in pick], [], sample_records)
    prepared = prepare_data(part, tokenizer, settings, method=method)
    scale = total / len(part.train) if part.train else 1.0
    tokens = round(prepared.report.tokens * scale)
    rows = prepared.report.packed_rows
    return TokenCount(
        tokens=tokens,
        samples=round(prepared.report.samples * scale),
        sampled=sampled,
        packed_rows=round(rows * scale) if rows is not None else None,
    )


def model_params_for(uri: str, *, credentials: Any = None) -> int:
    """The parameter count of the model at ``uri`` from its ``config.json``."""
    from tidetune_trainer import tiny

    if tiny.is_builtin(uri):
        return params_from_config(
            {
                "hidden_size": tiny.TINY_HIDDEN,
                "num_hidden_layers": tiny.TINY_LAYERS,
                "vocab_size": tiny.TINY_VOCAB_SIZE,
                "intermediate_size": tiny.TINY_INTERMEDIATE,
                "num_attention_heads": tiny.TINY_HEADS,
                "num_key_value_heads": tiny.TINY_KV_HEADS,
                "tie_word_embeddings": True,
            }
        )
    local = tiny.resolve_model_dir(uri, credentials=credentials)
    from pathlib import Path

    with open(Path(local) / "config.json", encoding="utf-8") as f:
        cfg = json.load(f)
    cfg = cfg.get("text_config", cfg)
    return int(params_from_config(cfg))


def train_tokens(spec: Any, tokens_per_epoch: int, rows_per_epoch: int | None, world: int) -> int:
    """Tokens over the whole run: epochs × tokens, or for maxSteps the steps' share."""
    hp = spec.hyperparameters
    if hp.max_steps is None:
        return int(tokens_per_epoch * hp.epochs)
    rows = rows_per_epoch or 1
    per_step_rows = hp.batch_size * hp.gradient_accumulation_steps * max(world, 1)
    steps_per_epoch = max(1, math.ceil(rows / per_step_rows))
    return int(round(tokens_per_epoch * hp.max_steps / steps_per_epoch))  # noqa: RUF046


def estimate_job(
    spec: Any,
    tokens_per_epoch: int,
    model_params: int,
    *,
    rows_per_epoch: int | None = None,
    world: int | None = None,
    tables: EstimateTables | None = None,
) -> Estimate:
    """The job's estimate (GPU-hours, cost) for a counted number of tokens."""
    res = spec.resources
    devices = res.nodes * max(res.gpus_per_node, 1) if world is None else world
    return estimate(
        train_tokens(spec, tokens_per_epoch, rows_per_epoch, devices),
        model_params,
        device_type_for(spec),
        devices=devices,
        nodes=res.nodes,
        method=spec.method.value,
        tuning=spec.tuning.type.value,
        load_in_4bit=spec.tuning.load_in_4bit,
        tables=tables or tables_from_env(),
    )


def write_estimate(
    store: ObjectStore, run_key: str, est: Estimate, *, sampled: bool
) -> dict[str, Any]:
    """Write ``<run>/estimate.json``; returns what was written."""
    body = {**est.to_dict(), "sampled": sampled, "gpuType": est.device_type}
    store.write_text(ObjectStore.join(run_key, "estimate.json"), json.dumps(body, indent=1))
    return body
