"""Direct Preference Optimisation (DPO) on preference data.

Setup → train → save, as in :mod:`tidetune_trainer.recipes.sft`, with:

- data format ``preference``: an assistant turn with scored candidates; the best and
  worst scored become *chosen* and *rejected* (the data side's ``PreferenceSample``).
  Pairs are not packed: each batch holds the chosen rows then the rejected rows,
  right-padded.
- loss per pair: ``-log σ(β · ((log π(c) − log π_ref(c)) − (log π(r) − log π_ref(r))))``
  with ``β = spec.dpo.beta`` and log-likelihoods summed over the answer tokens; the
  step's loss is the mean over all pairs of the step (micro-batches and ranks).
- the reference model is the base model itself with the LoRA adapter disabled (LoRA),
  or a frozen copy of the base model made before training (full tuning; under ZeRO-3,
  whose shards cannot be copied, the base model is loaded again whole, not sharded).
  Reference log-probs are computed in eval mode (no dropout).
- answers end as the chat template ends an assistant turn (``<|im_end|>``, ``<|eot_id|>``,
  …; ``<|end|>`` with the TideTune template): the same ending SFT trains.
- extra metrics per logged step: ``rewardAccuracy`` (share of pairs whose implicit
  reward prefers the chosen answer) and ``rewardMargin`` (mean β-scaled margin).

Supports: LoRA or full tuning, ZeRO 0–3, validation, exact resume. Raises: the data
side's errors (e.g. fewer than two candidates), ``BadInputError``, ``UnsupportedError``,
``Preempted``.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from tidetune_trainer.data.collate import collate_preference, token_losses
from tidetune_trainer.engine import Engine

if TYPE_CHECKING:
    from tidetune_trainer.session import Session


def sequence_logps(logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed log-likelihood of each row's answer tokens ``[rows]``."""
    losses = token_losses(logits, batch["labels"])
    mask = (batch["loss_weights"] > 0).to(losses.dtype).clone()
    mask[:, 0] = 0.0
    return -(losses * mask).sum(dim=-1)


class DPOObjective:
    """DPO loss against a reference (the adapter-disabled base, or a frozen copy)."""

    def __init__(self, pad_token_id: int, beta: float, reference: torch.nn.Module | None) -> None:
        self.pad_token_id = pad_token_id
        self.beta = beta
        self.reference = reference

    def collate(self, rows: Sequence[Any]) -> dict[str, torch.Tensor]:
        return collate_preference(list(rows), self.pad_token_id)

    def row_tokens(self, row: Any) -> int:
        return 2 * len(row.prompt_ids) + len(row.chosen_ids) + len(row.rejected_ids)

    def units(self, batch: dict[str, torch.Tensor]) -> float:
        return float(batch["input_ids"].shape[0] // 2)

    def _forward(self, model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        out = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            position_ids=batch["position_ids"],
            use_cache=False,
        )
        return sequence_logps(out.logits, batch)

    def reference_logps(self, engine: Engine, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The reference's log-likelihoods, in eval mode (no dropout: the reference is a
        fixed function of the batch), the policy's mode restored afterwards."""
        with torch.no_grad():
            if self.reference is not None:
                self.reference.eval()
                return self._forward(self.reference, batch)
            model = engine.unwrapped()
            ctx = (
                model.disable_adapter()
                if hasattr(model, "disable_adapter")
                else contextlib.nullcontext()
            )
            was_training = model.training
            model.eval()
            try:
                with ctx:
                    return self._forward(model, batch)
            finally:
                model.train(was_training)

    def loss_sum(
        self, engine: Engine, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        ref = self.reference_logps(engine, batch)
        pol = self._forward(engine.model, batch)
        n = pol.shape[0] // 2
        chosen_r = self.beta * (pol[:n] - ref[:n])
        rejected_r = self.beta * (pol[n:] - ref[n:])
        losses = -F.logsigmoid(chosen_r - rejected_r)
        margin = (chosen_r - rejected_r).detach()
        return losses.sum(), {
            "rewardAccuracy": float((margin > 0).float().sum()),
            "rewardMargin": float(margin.sum()),
        }


def frozen_reference(model: torch.nn.Module) -> torch.nn.Module:
    """A frozen copy of the base model (the reference for full-tuning DPO)."""
    ref = copy.deepcopy(model)
    ref.eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def is_partitioned(model: torch.nn.Module) -> bool:
    """Whether ZeRO-3 partitioned the model's parameters as it was built (each rank then
    holds only a shard; a copy of it would be empty)."""
    return any(hasattr(p, "ds_id") for p in model.parameters())


def reference_model(session: Session, model: torch.nn.Module, tokenizer: Any) -> torch.nn.Module:
    """The full-tuning reference: a frozen copy of ``model``; under ZeRO-3, whose shards
    cannot be copied, the base model loaded again whole (not sharded) instead."""
    if not is_partitioned(model):
        return frozen_reference(model)
    from transformers.integrations import deepspeed as hf_deepspeed

    saved = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed.unset_hf_deepspeed_config()  # type: ignore[no-untyped-call]  # load whole
    try:
        ref: torch.nn.Module = session.load_model(tokenizer)
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = saved
    if is_partitioned(ref):
        raise RuntimeError("the DPO reference model came out ZeRO-3 partitioned")
    return frozen_reference(ref)


def run(session: Session) -> None:
    """Train and export a DPO job."""
    # ---- setup
    data, tokenizer = session.prepare_data("dpo")
    model = session.load_model(tokenizer)
    session.write_estimate(data.report.tokens, model, rows=len(data.train_pairs))
    reference = reference_model(session, model, tokenizer) if session.cfg.tuning == "full" else None
    engine = session.create_engine(model, rows=len(data.train_pairs))
    if reference is not None:
        reference.to(engine.device)
        if torch.cuda.is_available() and engine.deepspeed:
            reference.to(torch.bfloat16)
    objective = DPOObjective(tokenizer.pad_token_id, session.cfg.dpo_beta, reference)
    # ---- train
    loop = session.make_loop(engine, objective, data.train_pairs, data.validation_pairs, tokenizer)
    loop.resume()
    loop.run()
    # ---- save
    session.export(engine, tokenizer, loop)
