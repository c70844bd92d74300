"""Run under torchrun (2 ranks): train a tiny Llama with LoRA under DeepSpeed ZeRO-3, export
the adapter, and record whether the saved tensors are complete and equal to the live
(gathered) ones. Writes ``<out>/rank-<R>.json``. Used by test_zero3_lora.py."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch


def main(out: str) -> None:
    from tests.tidetune_trainer.conftest import tiny_llama, train_on_random_tokens
    from tidetune_trainer.config import TrainConfig
    from tidetune_trainer.engine import Engine, seed_everything

    cfg = TrainConfig(
        zero_stage=3,
        tuning="lora",
        lora_rank=4,
        lora_alpha=8,
        lora_dropout=0.0,
        batch_size=2,
        learning_rate=1e-2,
        warmup_steps=0,
        max_steps=3,
        # partition even tiny tensors, as a real model's LoRA weights are
        extra={"zero_optimization": {"stage3_param_persistence_threshold": 0}},
    )
    acc = Engine.make_accelerator(cfg)
    seed_everything(0)
    model = tiny_llama(128)
    engine = Engine.create(cfg, acc, model, total_steps=3)
    train_on_random_tokens(engine, 3, vocab_size=128, shape=(2, 16), seed=engine.rank)
    unwrapped = engine.unwrapped()
    lora = [(n, p) for n, p in unwrapped.named_parameters() if "lora_" in n]
    # the trap: under ZeRO-3 a rank's parameter tensor is an empty placeholder
    local_numels = [p.numel() for _, p in lora]
    live = engine.trainable_state_dict()
    target = Path(out) / "adapter"
    engine.export_model(target, tokenizer=None)
    result = {
        "rank": engine.rank,
        "world": engine.world_size,
        "local_numel_min": min(local_numels),
        "lora_params": len(lora),
    }
    if engine.is_main:
        from peft import get_peft_model_state_dict
        from safetensors.torch import load_file

        saved = load_file(str(target / "adapter_model.safetensors"))
        expected = get_peft_model_state_dict(unwrapped, state_dict=live)
        result["saved_keys"] = len(saved)
        result["expected_keys"] = len(expected)
        result["empty"] = [k for k, v in saved.items() if v.numel() == 0]
        result["nonzero_b"] = sum(
            1 for k, v in saved.items() if "lora_B" in k and v.abs().sum() > 0
        )
        result["mismatch"] = [
            k
            for k, v in expected.items()
            if k not in saved or not torch.equal(saved[k], v.to(saved[k].dtype))
        ]
    Path(out, f"rank-{engine.rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main(sys.argv[1])
