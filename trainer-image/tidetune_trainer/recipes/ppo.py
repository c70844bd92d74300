"""Proximal Policy Optimisation (PPO) with a value head, GAE and a per-token KL penalty.

Per prompt, ``numGenerations`` completions are sampled and scored (reward = Σ weight ×
rule, given on each completion's last token); every token also gets
``−β·(log π_old − log π_ref)``. A value head (a linear layer on the policy's last hidden
state, trained with it, not exported) estimates values; GAE (``gamma``, ``lambda``)
gives advantages, whitened per micro-batch. Each rollout is trained on for
``epochsPerRollout`` (default 4) updates with the clipped policy loss and
``valueCoef`` × the clipped value loss, both token-level means.

Setup, training and saving: :mod:`tidetune_trainer.rl.recipe`. Supports LoRA or full
tuning, ZeRO 0–3, exact resume. Raises what that module lists.
"""

from __future__ import annotations

from tidetune_trainer.rl.recipe import run

__all__ = ["run"]
