"""Supervised fine-tuning (SFT) of a causal LM on chat or prompt-completion data.

Setup → train → save:

1. **Setup**: read and validate the data (``messages`` or ``prompt-completion``), split
   and mix it, tokenize with the base model's tokenizer (the tiny model's is trained on
   the data), pack rows to ``maxSeqLength`` (``packing: true``); load the base model;
   write ``estimate.json``; wrap the model with LoRA or for full tuning, AdamW, the LR
   schedule and DeepSpeed/DDP.
2. **Train**: resume from the newest complete checkpoint if any, then run optimizer
   steps (:mod:`tidetune_trainer.loop`), evaluating every ``evalEverySteps`` and at the
   end, checkpointing every ``checkpointing.everySteps``.
3. **Save**: export the adapter or model with the tokenizer (and the merged model, and
   the latest checkpoints) and write the manifest.

Loss: token-level cross-entropy on assistant (or completion) tokens only, each token
weighted by its message's ``loss_weight`` (0 masks a message, 2 counts it twice),
divided by the number of tokens with weight > 0 in the whole optimizer step (all
micro-batches, all ranks).

Supports: LoRA (rank, alpha, dropout, target modules, ``all-linear``) or full tuning;
``loadIn4bit`` on CUDA; ZeRO 0–3 with CPU offload; packing on or off; validation by
file or split ratio; exact resume.

Raises: ``DataValidationError``/``DataConfigError`` (bad data), ``BadInputError`` (a
model that cannot be loaded), ``UnsupportedError`` (4-bit without CUDA, target modules
that match nothing), ``Preempted`` (stopped by SIGTERM after a checkpoint).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from tidetune_trainer.data.collate import Collator, token_losses
from tidetune_trainer.engine import Engine

if TYPE_CHECKING:
    from tidetune_trainer.session import Session


class CausalLMObjective:
    """Weighted next-token loss on rows of ``input_ids``/``loss_weights`` (SFT and CPT)."""

    def __init__(self, pad_token_id: int, *, packed: bool, flatten: bool = False) -> None:
        self.collator = Collator(pad_token_id, packed=packed, flatten=flatten)

    def collate(self, rows: Sequence[Any]) -> dict[str, torch.Tensor]:
        return self.collator(rows)

    def row_tokens(self, row: Any) -> int:
        return len(row)

    def units(self, batch: dict[str, torch.Tensor]) -> float:
        w = batch["loss_weights"][:, 1:]
        return float((w > 0).sum())

    def loss_sum(
        self, engine: Engine, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        logits = engine.model(
            input_ids=batch["input_ids"],
            position_ids=batch["position_ids"],
            attention_mask=batch.get("attention_mask"),
            use_cache=False,
        ).logits
        losses = token_losses(logits, batch["labels"])
        w = batch["loss_weights"].to(losses.dtype).clone()
        w[:, 0] = 0.0
        return (losses * w).sum(), {}


def run(session: Session) -> None:
    """Train and export an SFT job (see the module docstring)."""
    run_causal_lm(session, "sft")


def run_causal_lm(session: Session, method: str) -> None:
    """Setup → train → save with :class:`CausalLMObjective`: the SFT and CPT recipes, which
    differ only in how ``method``'s data becomes rows and loss weights."""
    # ---- setup
    data, tokenizer = session.prepare_data(method)
    model = session.load_model(tokenizer)
    packed, flatten = session.check_packing(model, data, tokenizer)
    session.write_estimate(data.report.tokens, model, rows=len(data.train_rows))
    engine = session.create_engine(model, rows=len(data.train_rows))
    objective = CausalLMObjective(tokenizer.pad_token_id, packed=packed, flatten=flatten)
    # ---- train
    loop = session.make_loop(engine, objective, data.train_rows, data.validation_rows, tokenizer)
    loop.resume()
    loop.run()
    # ---- save
    session.export(engine, tokenizer, loop)
