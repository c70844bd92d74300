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

from tidetune_trainer.recipes.sft import run_causal_lm

if TYPE_CHECKING:
    from tidetune_trainer.session import Session


def run(session: Session) -> None:
    """Train and export a CPT job (see the module docstring)."""
    run_causal_lm(session, "cpt")
