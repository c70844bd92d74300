"""The count before training: the job's tokens with the data pipeline and the model's
size, written to ``<run>/estimate.json`` (:class:`tidetune.contract.EstimateDocument`).

The trainer counts; it does not price. Whoever owns the job's status prices the count
with :func:`tidetune.contract.price_count` — the operator with its price tables and the
pool's GPU type, ``tidetune run`` with the defaults — so there is one pricing path.

- :func:`count_tokens` — tokens per epoch of a spec's training data: every record, or
  for large data a seeded sample of ``sample_records`` records scaled up (``sampled``).
- :func:`model_params_for` — the base model's parameter count from its ``config.json``
  (no weights are loaded; ``builtin://tiny-llama`` from its fixed shape).
- :func:`count_document` — tokens over all epochs/steps, parameters and devices.
- :func:`write_estimate` — ``<run>/estimate.json``.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from typing import Any

from tidetune.contract import EstimateDocument
from tidetune.estimate import params_from_config
from tidetune.layout import ESTIMATE_FILE
from tidetune.storage import ObjectStore

#: Records tokenized when counting a large dataset by sampling.
DEFAULT_SAMPLE_RECORDS = 20_000


@dataclass(frozen=True)
class TokenCount:
    """Tokens per epoch of the training data (with and without padding)."""

    tokens: int
    samples: int
    sampled: bool
    packed_rows: int | None = None


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
    scale = total / len(part.train) if part.train else 1.0
    if method in ("grpo", "ppo"):
        # RL: every prompt is processed with numGenerations completions of up to
        # maxCompletionLength tokens each (sampled, then trained on)
        from tidetune_trainer.rl.data import build_prompts

        rl = spec.rl
        room = max(8, settings.max_seq_length - rl.max_completion_length)
        prompts = build_prompts(
            part.train,
            tokenizer,
            max_prompt_length=room,
            completion_column=settings.columns.completion,
        )
        per_prompt = [len(p) + rl.max_completion_length for p in prompts]
        return TokenCount(
            tokens=round(sum(per_prompt) * rl.num_generations * scale),
            samples=round(len(prompts) * scale),
            sampled=sampled,
            packed_rows=None,
        )
    prepared = prepare_data(part, tokenizer, settings, method=method)
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


def count_document(
    spec: Any,
    tokens_per_epoch: int,
    model_params: int,
    *,
    rows_per_epoch: int | None = None,
    world: int | None = None,
    sampled: bool = False,
) -> EstimateDocument:
    """What ``estimate.json`` holds: the run's tokens (all epochs, or the maxSteps share),
    the model's parameters and the devices (``world`` for a CPU run's processes, else
    nodes × GPUs per node)."""
    res = spec.resources
    devices = res.nodes * max(res.gpus_per_node, 1) if world is None else world
    return EstimateDocument(
        trainTokens=train_tokens(spec, tokens_per_epoch, rows_per_epoch, devices),
        tokensPerEpoch=int(tokens_per_epoch),
        modelParams=int(model_params),
        devices=int(devices),
        sampled=sampled,
    )


def write_estimate(store: ObjectStore, run_key: str, doc: EstimateDocument) -> EstimateDocument:
    """Write ``<run>/estimate.json``; returns what was written."""
    store.write_text(ObjectStore.join(run_key, ESTIMATE_FILE), json.dumps(doc, indent=1))
    return doc
