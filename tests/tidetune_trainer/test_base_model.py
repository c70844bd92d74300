"""A base model without a chat template (finding 2): the TideTune chat tokens are added as
special tokens, the embeddings grow, their rows train under LoRA, and the exported
tokenizer carries the template, so inference renders conversations as training did."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from .conftest import explain, losses, run_trainer, write_chat, write_job
from .realvocab import model_dir


def test_base_tokenizer_gets_the_chat_tokens_and_the_model_grows(tmp_path: Path) -> None:
    from tidetune_trainer.data.chat import TIDETUNE_CHAT_TEMPLATE
    from tidetune_trainer.data.records import ChatRecord, Message
    from tidetune_trainer.data.tokenize import tokenize_sft
    from tidetune_trainer.tiny import load_model, load_tokenizer

    base = model_dir(tmp_path / "gpt2", "gpt2")
    uri = f"file://{base}"
    tok = load_tokenizer(uri)
    assert tok.chat_template == TIDETUNE_CHAT_TEMPLATE
    end = tok.convert_tokens_to_ids("<|end|>")
    assert end >= 50257 and tok.tokenize("<|end|>") == ["<|end|>"]
    rec = ChatRecord("f:1", (Message("user", "hi"), Message("assistant", "hello")))
    [s], _ = tokenize_sft([rec], tok, 512)
    trained = [t for t, w in zip(s.input_ids, s.loss_weights, strict=True) if w > 0]
    assert trained[-1] == end  # one stop token, trained
    model = load_model(uri, tokenizer=tok)
    assert model.get_input_embeddings().weight.shape[0] >= len(tok)
    assert end in model.generation_config.eos_token_id


@pytest.mark.trainer
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_lora_on_a_base_model_trains_and_exports_the_stop_token(tmp_path: Path, arch: str) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tidetune_trainer.data.chat import TIDETUNE_CHAT_TEMPLATE
    from tidetune_trainer.tiny import fit_embeddings

    # llama untied (an output layer of its own), gpt2 tied
    base = model_dir(tmp_path / "base", arch, tie_word_embeddings=arch == "gpt2")
    data = write_chat(tmp_path / "chat.jsonl", n=16)
    job = write_job(
        tmp_path / "job.yaml",
        data,
        baseModel={"uri": f"file://{base}"},
        hyperparameters={"maxSteps": 3, "learningRate": 0.01, "maxSeqLength": 128},
    )
    proc = run_trainer(job, tmp_path / "run")
    assert proc.returncode == 0, explain(proc)
    assert len(losses(tmp_path / "run")) == 3
    final = tmp_path / "run" / "output" / "test" / "t" / "uid-1" / "final"
    tok = AutoTokenizer.from_pretrained(final)
    assert tok.chat_template == TIDETUNE_CHAT_TEMPLATE
    end = tok.convert_tokens_to_ids("<|end|>")
    assert tok.tokenize("<|end|>") == ["<|end|>"]
    cfg = json.loads((final / "adapter_config.json").read_text())
    assert cfg["trainable_token_indices"]  # the chat tokens' rows are part of the adapter
    before = AutoModelForCausalLM.from_pretrained(base)
    fit_embeddings(before, tok)
    after = AutoModelForCausalLM.from_pretrained(base)
    fit_embeddings(after, tok)
    merged = PeftModel.from_pretrained(after, str(final)).merge_and_unload()
    for get in ("get_input_embeddings", "get_output_embeddings"):
        old = getattr(before, get)().weight[end]
        new = getattr(merged, get)().weight[end]
        assert not torch.allclose(old, new), f"{get}: the <|end|> row did not train"
