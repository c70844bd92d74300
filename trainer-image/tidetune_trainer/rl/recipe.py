"""Setup → train → save for GRPO and PPO (``recipes/grpo.py``, ``recipes/ppo.py``).

1. **Setup**: read and validate the data (``prompt-completion`` or ``messages``), the
   tokenizer (the tiny model's is trained on the data) and the prompts
   (:mod:`tidetune_trainer.rl.data`); the reward rules — presets here, users' functions
   in the sandbox (:mod:`tidetune_trainer.rl.sandbox`), started before the model loads
   so that a broken function fails the job at once; the base model; the reference
   model (LoRA: the base with the adapter disabled; full: a frozen copy, only when
   ``beta`` > 0 or PPO); PPO's value head; the engine (LoRA/full, ZeRO 0–3).
2. **Train**: the shared loop with :class:`~tidetune_trainer.rl.objective.RLObjective`
   (checkpoints, SIGTERM at a step boundary, progress and exact resume as for SFT);
   one step = one rollout of ``batchSize × gradientAccumulationSteps`` prompts per
   rank, ``numGenerations`` completions each, then ``epochsPerRollout`` updates.
   Sample completions with their scores go to ``samples.jsonl`` every
   ``sampleEverySteps``.
3. **Save**: export as for SFT (the value head is not exported).

Raises: the data side's errors, ``RewardError`` (a rule that cannot load, fails or
returns garbage: the message names ``spec.rl.rewards[i]``), ``BadInputError``,
``UnsupportedError``, ``Preempted``.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import torch

from tidetune.storage import ObjectStore

if TYPE_CHECKING:
    from tidetune_trainer.session import Session


def run(session: Session) -> None:
    """Train and export a GRPO or PPO job."""
    from tidetune_trainer.data.prepare import DataSettings, load_data
    from tidetune_trainer.engine import Engine
    from tidetune_trainer.errors import BadInputError
    from tidetune_trainer.recipes.dpo import frozen_reference
    from tidetune_trainer.rl.data import build_prompts, stop_token_ids
    from tidetune_trainer.rl.objective import RLObjective, RLSettings, SampleWriter
    from tidetune_trainer.rl.rules import build_reward_set, sources_from_dir
    from tidetune_trainer.tiny import ModelLoadError, load_tokenizer

    spec, cfg = session.spec, session.cfg
    settings = RLSettings.from_spec(spec)
    # ---- setup
    data_settings = DataSettings.from_spec(spec)
    loaded = load_data(data_settings, session.credentials)
    try:
        tokenizer = load_tokenizer(
            spec.base_model.uri,
            texts=loaded.texts(),
            seed=cfg.seed,
            credentials=session.credentials,
        )
    except ModelLoadError as e:
        raise BadInputError(f"spec.baseModel.uri: {e}") from None
    max_prompt = max(8, cfg.max_seq_length - settings.max_completion_length)
    prompts = build_prompts(
        loaded.train,
        tokenizer,
        max_prompt_length=max_prompt,
        completion_column=data_settings.columns.completion,
    )
    if session.is_main:
        session.run_store.write_text(
            ObjectStore.join(session.run_key, "data-report.json"),
            json.dumps(
                {
                    "format": data_settings.format,
                    "method": settings.method,
                    "records": loaded.records,
                    "prompts": len(prompts),
                    "promptTokens": sum(len(p) for p in prompts),
                    "maxPromptLength": max_prompt,
                    "columns": sorted({k for p in prompts for k in p.columns}),
                    "notes": (
                        [
                            f"{len(loaded.validation)} validation record(s) are not used: "
                            "GRPO/PPO report the reward of their own samples instead"
                        ]
                        if loaded.validation
                        else []
                    ),
                },
                indent=1,
            ),
        )
    rewards = build_reward_set(spec.rl, sources_from_dir())
    try:
        model = session.load_model(tokenizer)
        per_epoch_tokens = sum(len(p) + settings.max_completion_length for p in prompts)
        session.write_estimate(
            per_epoch_tokens * settings.num_generations, model, rows=len(prompts)
        )
        reference = None
        if cfg.tuning == "full" and (settings.beta > 0 or settings.method == "ppo"):
            reference = frozen_reference(model)
        extra: dict[str, torch.nn.Module] = {}
        value_head = None
        if settings.method == "ppo":
            value_head = torch.nn.Linear(int(model.config.hidden_size), 1)
            torch.nn.init.zeros_(value_head.weight)
            torch.nn.init.zeros_(value_head.bias)
            extra["v_head"] = value_head
        _, total = session.steps(len(prompts))
        engine = Engine.create(
            cfg, session.accelerator, model, total * settings.updates, extra_modules=extra
        )
        # unwrap once now: the first unwrap imports DeepSpeed (seconds) and would
        # otherwise land in the first training step
        engine.unwrapped()
        if reference is not None:
            reference.to(engine.device)
        if value_head is not None:
            value_head = engine.unwrapped().v_head
        objective = RLObjective(
            settings,
            rewards,
            tokenizer,
            stop_token_ids(tokenizer, data_settings.format),
            reference=reference,
            value_head=value_head,
        )
        if engine.is_main:
            objective.sample_sink = SampleWriter(session.run_store, session.run_key)
        # ---- train
        loop = session.make_loop(engine, objective, prompts, [], tokenizer)
        loop.resume()
        loop.run()
        # ---- save
        session.export(engine, tokenizer, loop)
    finally:
        rewards.close()
