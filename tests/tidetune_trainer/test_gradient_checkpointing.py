"""``hyperparameters.gradientCheckpointing``: recomputes activations, changes no number,
with LoRA and full tuning."""

from __future__ import annotations

import pytest
import torch

from tidetune_trainer.config import TrainConfig
from tidetune_trainer.data.packing import pack
from tidetune_trainer.data.records import ChatRecord, Message
from tidetune_trainer.data.tokenize import tokenize_sft

from .realvocab import template_tokenizer, tiny_model


def _one_step(tuning: str, checkpointing: bool) -> tuple[float, dict[str, torch.Tensor], bool]:
    from tidetune_trainer.engine import Engine
    from tidetune_trainer.recipes.sft import CausalLMObjective

    tok = template_tokenizer("qwen2_5")
    cfg = TrainConfig(
        tuning=tuning,  # type: ignore[arg-type]
        lora_dropout=0.0,
        learning_rate=1e-3,
        warmup_steps=0,
        zero_stage=0,
        gpus_per_node=0,
        gradient_checkpointing=checkpointing,
    )
    torch.manual_seed(0)
    engine = Engine.create(cfg, Engine.make_accelerator(cfg), tiny_model("qwen2", tok), 1)
    recs = [
        ChatRecord(f"f:{i}", (Message("user", f"tide {i}?"), Message("assistant", "high " * i)))
        for i in range(1, 5)
    ]
    samples, _ = tokenize_sft(recs, tok, 256)
    objective = CausalLMObjective(tok.pad_token_id, packed=True)
    batch = objective.collate(pack(samples, 256))
    engine.train_mode(True)
    loss, _ = objective.loss_sum(engine, batch)  # type: ignore[arg-type]
    engine.backward(loss / objective.units(batch), last_micro_step=True)
    engine.step()
    model = engine.unwrapped()
    on = bool(getattr(model, "is_gradient_checkpointing", False))
    trained = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    return float(loss), trained, on


@pytest.mark.parametrize("tuning", ["lora", "full"])
def test_gradient_checkpointing_changes_no_number(tuning: str) -> None:
    loss_a, after_a, on_a = _one_step(tuning, False)
    loss_b, after_b, on_b = _one_step(tuning, True)
    assert not on_a and on_b
    assert loss_a == pytest.approx(loss_b, abs=1e-6)
    assert after_a.keys() == after_b.keys()
    for n in after_a:
        assert torch.allclose(after_a[n], after_b[n], atol=1e-6), n


def test_the_spec_field_reaches_the_trainer() -> None:
    from tidetune.api import FineTuneJobSpec

    spec = FineTuneJobSpec.model_validate(
        {
            "method": "sft",
            "baseModel": {"uri": "builtin://tiny-llama"},
            "data": {"train": {"uri": "file:///d.jsonl"}},
            "hyperparameters": {"gradientCheckpointing": True},
        }
    )
    assert TrainConfig.from_spec(spec).gradient_checkpointing is True
