"""Continued pre-training (CPT) of a causal LM on plain text.

Setup → train → save, as in :mod:`tidetune_trainer.recipes.sft`, with:

- data format ``text`` (``{"text": "…"}`` per line); texts longer than ``maxSeqLength``
  are split into consecutive chunks (counted in the data report), not truncated;
- loss on every token (each sample's first token has nothing to predict it), divided
  by the step's token count across micro-batches and ranks.

Supports: LoRA or full tuning, ZeRO 0–3 with CPU offload, packing, validation, exact
resume. Raises: the data side's errors for bad lines, ``BadInputError``,
``UnsupportedError``, ``Preempted`` (see the SFT recipe).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tidetune_trainer.recipes.sft import CausalLMObjective

if TYPE_CHECKING:
    from tidetune_trainer.session import Session


def run(session: Session) -> None:
    """Train and export a CPT job."""
    # ---- setup
    data, tokenizer = session.prepare_data("cpt")
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
