"""The real parts the trainer is checked against: GGUF vocabularies from llama.cpp, TRL's
chat templates, and small random models of real architectures (see ``realvocab``)."""

from __future__ import annotations

import pytest
import torch

from .realvocab import ARCH_VOCAB, TEMPLATE_CASES, load_tokenizer, template_tokenizer, tiny_model


@pytest.mark.parametrize("arch", list(ARCH_VOCAB))
def test_architecture_runs_on_its_real_vocabulary(arch: str) -> None:
    tok = load_tokenizer(ARCH_VOCAB[arch])
    ids = tok("The tide comes in at noon.", add_special_tokens=False)["input_ids"]
    assert len(ids) >= 5 and max(ids) < len(tok)
    model = tiny_model(arch, tok)
    assert model.get_input_embeddings().weight.shape[0] >= len(tok) > 30_000
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), model.config.vocab_size)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", list(TEMPLATE_CASES))
def test_template_renders_with_its_control_tokens_whole(name: str) -> None:
    case = TEMPLATE_CASES[name]
    tok = template_tokenizer(name)
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    ids = tok.apply_chat_template(msgs, tokenize=True, return_dict=True)["input_ids"]
    end = tok.convert_tokens_to_ids(case.end_of_turn)
    assert isinstance(end, int) and end != tok.unk_token_id
    assert (
        end in ids or name == "gptoss"
    )  # gpt-oss ends the last turn with <|return|> only in training
