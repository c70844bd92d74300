"""Reinforcement learning: reward rules (presets and users' functions in a sandbox),
rollouts with a KV cache, and the GRPO/DAPO/Dr.GRPO and PPO objectives for the
project's own training loop (:mod:`tidetune_trainer.loop`)."""
