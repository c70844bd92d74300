"""The trainer's numbers against TRL's on real templates and architectures, plus the
precision and DPO-reference fixes (findings 5 and 6).

- SFT: the first step's loss of a TideTune run equals TRL ``SFTTrainer``'s
  (``assistant_only_loss``) on the same model and data.
- DPO: per pair, the loss and the chosen/rejected log-probs equal TRL ``DPOTrainer``'s
  within 1e-5, and so do the token ids (answers ended by the template).
- fp32 masters: one step at lr 1e-5 on a bf16 checkpoint changes (nearly) every weight.
- The DPO reference runs without dropout; under ZeRO-3 it is not a copy of empty shards.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from tidetune_trainer.data.records import Message, PreferenceRecord

from .conftest import explain, metrics, run_trainer, write_job
from .realvocab import model_dir, template_tokenizer, tiny_model

PREFS = [
    ("What is the capital of France?", "Paris.", "Lyon, I think."),
    ("Reply with yes", "yes", "no"),
    ("Name a colour of the sea.", "Blue, mostly.", "Purple with dots"),
    ("2 + 2?", "4", "five"),
]


def _pref_records() -> list[PreferenceRecord]:
    return [
        PreferenceRecord(f"f:{i + 1}", (Message("user", q),), c, r, 1.0, 0.0)
        for i, (q, c, r) in enumerate(PREFS)
    ]


@pytest.mark.parametrize("name", ["qwen2_5", "llama3", "phi3"])
def test_dpo_loss_and_logps_equal_trl(tmp_path: Path, name: str) -> None:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from tidetune_trainer.data.collate import collate_preference
    from tidetune_trainer.data.tokenize import tokenize_preference
    from tidetune_trainer.recipes.dpo import DPOObjective, frozen_reference

    tok = template_tokenizer(name)
    arch = {"qwen2_5": "qwen2", "llama3": "llama", "phi3": "phi3"}[name]
    model = tiny_model(arch, tok, seed=1)
    # a policy that differs from the reference, so the margins are not all zero
    reference = frozen_reference(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    pairs, _ = tokenize_preference(_pref_records(), tok, 4096)
    beta = 0.3
    ours = DPOObjective(tok.pad_token_id, beta, reference)
    engine = SimpleNamespace(model=model, unwrapped=lambda: model)

    ds = Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": q}],
                "chosen": [{"role": "assistant", "content": c}],
                "rejected": [{"role": "assistant", "content": r}],
            }
            for q, c, r in PREFS
        ]
    )
    args = DPOConfig(
        output_dir=str(tmp_path / "trl"),
        beta=beta,
        per_device_train_batch_size=1,
        use_cpu=True,
        report_to=[],
        max_length=None,
        bf16=False,
        dataset_num_proc=None,
    )
    trainer = DPOTrainer(
        model=copy.deepcopy(model),
        ref_model=copy.deepcopy(reference),
        args=args,
        train_dataset=ds,
        processing_class=tok,
    )
    trainer.model.train()
    for i, pair in enumerate(pairs):
        row = trainer.train_dataset[i]
        assert pair.prompt_ids == row["prompt_ids"]
        assert pair.chosen_ids == row["chosen_ids"] and pair.rejected_ids == row["rejected_ids"]
        batch = collate_preference([pair], tok.pad_token_id)
        with torch.no_grad():
            loss, _ = ours.loss_sum(engine, batch)
            logps = ours._forward(model, batch)
            inputs = trainer._prepare_inputs(trainer.data_collator([row]))
            trl_loss = trainer.compute_loss(trainer.model, inputs)
        m = trainer._metrics["train"]
        assert float(loss) == pytest.approx(float(trl_loss), abs=1e-5)
        assert float(logps[0]) == pytest.approx(m["logps/chosen"][-1], abs=1e-5)
        assert float(logps[1]) == pytest.approx(m["logps/rejected"][-1], abs=1e-5)


def test_dpo_answers_end_with_the_templates_end_of_turn() -> None:
    from tidetune_trainer.data.tokenize import tokenize_preference

    tok = template_tokenizer("qwen2_5")
    [pair, *_], _ = tokenize_preference(_pref_records(), tok, 4096)
    assert tok.decode(pair.chosen_ids) == "Paris.<|im_end|>\n"
    assert tok.decode(pair.prompt_ids).endswith("<|im_start|>assistant\n")


def test_dpo_reference_runs_without_dropout() -> None:
    from tidetune_trainer.config import TrainConfig
    from tidetune_trainer.data.collate import collate_preference
    from tidetune_trainer.data.tokenize import tokenize_preference
    from tidetune_trainer.engine import apply_tuning
    from tidetune_trainer.recipes.dpo import DPOObjective

    tok = template_tokenizer("qwen2_5")
    base = tiny_model("opt", tok, dropout=0.3, attention_dropout=0.3)  # OPT has dropout
    model: Any = apply_tuning(base, TrainConfig(lora_dropout=0.0))
    model.train()
    pairs, _ = tokenize_preference(_pref_records(), tok, 4096)
    batch = collate_preference(pairs, tok.pad_token_id)
    objective = DPOObjective(tok.pad_token_id, 0.1, None)
    engine = SimpleNamespace(model=model, unwrapped=lambda: model)
    a = objective.reference_logps(engine, batch)  # type: ignore[arg-type]
    b = objective.reference_logps(engine, batch)  # type: ignore[arg-type]
    assert torch.equal(a, b)
    assert model.training  # the policy's mode is restored


def test_fp32_masters_one_step_at_lr_1e5_on_a_bf16_checkpoint_changes_the_weights() -> None:
    from tidetune_trainer.config import TrainConfig
    from tidetune_trainer.data.records import ChatRecord
    from tidetune_trainer.data.tokenize import tokenize_sft
    from tidetune_trainer.engine import Engine
    from tidetune_trainer.recipes.sft import CausalLMObjective

    tok = template_tokenizer("qwen2_5")
    model = tiny_model("qwen2", tok, dtype=torch.bfloat16)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = TrainConfig(
        tuning="full",
        learning_rate=1e-5,
        warmup_steps=0,
        lr_scheduler="constant",
        zero_stage=0,
        gpus_per_node=0,
        packing=False,
    )
    acc = Engine.make_accelerator(cfg)
    engine = Engine.create(cfg, acc, model, total_steps=1)
    recs = [
        ChatRecord("f:1", (Message("user", "hello there"), Message("assistant", "hi, sailor"))),
        ChatRecord("f:2", (Message("user", "the tide?"), Message("assistant", "rising at noon"))),
    ]
    samples, _ = tokenize_sft(recs, tok, 256)
    from tidetune_trainer.data.packing import unpacked_rows

    objective = CausalLMObjective(tok.pad_token_id, packed=False)
    batch = objective.collate(unpacked_rows(samples))
    loss, _ = objective.loss_sum(engine, batch)  # type: ignore[arg-type]
    engine.backward(loss / objective.units(batch), last_micro_step=True)
    engine.step()
    changed = total = 0
    for n, p in engine.unwrapped().named_parameters():
        assert p.dtype == torch.float32, n  # the master weights
        old = before[n].float()
        changed += int((p.detach() != old).sum())
        total += p.numel()
    # embedding rows of tokens not in the batch get no gradient (Adam moves them by 0)
    emb = engine.unwrapped().get_input_embeddings().weight
    untouched_rows = emb.shape[0] - len(set(batch["input_ids"].flatten().tolist()))
    assert changed / (total - untouched_rows * emb.shape[1]) > 0.99


def test_sft_first_step_loss_equals_trl(tmp_path: Path) -> None:
    """A TideTune run (LoRA, no packing) and TRL's SFTTrainer with assistant_only_loss on
    the same tiny Qwen2 model (its real vocabulary, the Qwen2.5 template) and data."""
    import subprocess
    import sys

    base = model_dir(tmp_path / "base", "qwen2", template="qwen2_5", seed=2)
    data = tmp_path / "chat.jsonl"
    convs = [
        [("user", f"Question {i}: what is {i} + {i}?"), ("assistant", f"It is {2 * i}.")]
        + ([("user", "And doubled?"), ("assistant", f"{4 * i}, of course")] if i % 2 else [])
        for i in range(8)
    ]
    data.write_text(
        "".join(
            json.dumps({"messages": [{"role": r, "content": c} for r, c in conv]}) + "\n"
            for conv in convs
        )
    )
    job = write_job(
        tmp_path / "job.yaml",
        data,
        baseModel={"uri": f"file://{base}"},
        tuning={"type": "lora", "lora": {"rank": 4, "alpha": 8, "dropout": 0.0}},
        data={"train": {"format": "messages"}, "validation": None},
        hyperparameters={"maxSteps": 1, "batchSize": 8, "packing": False, "maxSeqLength": 256},
    )
    proc = run_trainer(job, tmp_path / "run")
    assert proc.returncode == 0, explain(proc)
    ours = metrics(tmp_path / "run")[0]["loss"]

    script = tmp_path / "trl_sft.py"
    script.write_text(TRL_SFT)
    out = subprocess.run(
        [sys.executable, str(script), str(base), str(data), str(tmp_path / "trl")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    trl_loss = json.loads(out.stdout.strip().splitlines()[-1])["loss"]
    assert ours == pytest.approx(trl_loss, abs=1e-4)
    assert 5.0 < ours < 20.0 and not math.isnan(ours)


TRL_SFT = r"""
import json, sys
import torch
from datasets import load_dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

base, data, out = sys.argv[1:4]
tok = AutoTokenizer.from_pretrained(base)
model = AutoModelForCausalLM.from_pretrained(base)
cfg = SFTConfig(output_dir=out, max_steps=1, per_device_train_batch_size=8, learning_rate=1e-3,
                logging_steps=1, save_strategy="no", report_to=[], use_cpu=True,
                assistant_only_loss=True, packing=False, max_length=256, bf16=False)
peft = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear",
                  task_type="CAUSAL_LM")
trainer = SFTTrainer(model=model, args=cfg, train_dataset=load_dataset("json", data_files=data,
                     split="train"), processing_class=tok, peft_config=peft)
trainer.train()
loss = [h["loss"] for h in trainer.state.log_history if "loss" in h][0]
print(json.dumps({"loss": loss}))
"""


@pytest.mark.trainer
@pytest.mark.slow
def test_dpo_full_tuning_under_zero3_starts_at_log2(tmp_path: Path) -> None:
    """One process under DeepSpeed ZeRO-3 (CPU): the full-tuning reference must equal
    the policy at step 1, so every pair's loss is log 2."""
    base = model_dir(tmp_path / "base", "qwen2", template="qwen2_5")
    data = tmp_path / "pref.jsonl"
    data.write_text(
        "".join(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": q},
                        {
                            "role": "assistant",
                            "content": [{"text": c, "score": 1}, {"text": r, "score": 0}],
                        },
                    ]
                }
            )
            + "\n"
            for q, c, r in PREFS * 2
        )
    )
    job = write_job(
        tmp_path / "job.yaml",
        data,
        method="dpo",
        baseModel={"uri": f"file://{base}"},
        tuning={"type": "full", "lora": None},
        data={"train": {"format": "preference"}, "validation": None},
        hyperparameters={"maxSteps": 2, "batchSize": 2, "learningRate": 1e-3},
        deepspeed={"zeroStage": 3},
    )
    proc = run_trainer(job, tmp_path / "run", timeout=600)
    assert proc.returncode == 0, explain(proc)
    first = metrics(tmp_path / "run")[0]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-5)
