"""Group Relative Policy Optimisation (GRPO) with the loss variants ``grpo``, ``dapo``
and ``dr_grpo`` (``spec.rl.lossType``).

Per prompt, ``numGenerations`` completions are sampled with the current policy and
scored by the job's reward rules (reward = Σ weight × rule); each completion's
advantage is its reward minus its group's mean (divided by the group's std, except for
``dr_grpo``). The loss is the clipped surrogate ``−min(r·A, clip(r, 1−ε, 1+ε_high)·A)``
per token plus ``β·KL`` to the reference, reduced per the loss type (see
:mod:`tidetune_trainer.rl.algorithms`). ``dapo`` adds an asymmetric clip (ε_high 0.28),
a token-level loss, leaves zero-variance groups out and penalises overlong answers.

Setup, training and saving: :mod:`tidetune_trainer.rl.recipe`. Supports LoRA or full
tuning, ZeRO 0–3, exact resume. Raises what that module lists.
"""

from __future__ import annotations

from tidetune_trainer.rl.recipe import run

__all__ = ["run"]
