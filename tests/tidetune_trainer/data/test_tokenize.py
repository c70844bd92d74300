"""Tokenization: chat formatting, loss weights per message, truncation and splitting."""

from __future__ import annotations

from typing import Any

import pytest

from tidetune_trainer.data import (
    ChatRecord,
    Message,
    PreferenceRecord,
    PromptCompletionRecord,
    TextRecord,
    tokenize_preference,
    tokenize_sft,
)
from tidetune_trainer.data.chat import TIDETUNE_CHAT_TEMPLATE, render_builtin, render_chat
from tidetune_trainer.data.errors import DataConfigError

pytestmark = pytest.mark.trainer


def _weighted_text(
    tok: Any, ids: list[int], weights: list[float], value: float | None = None
) -> str:
    keep = [
        i for i, w in zip(ids, weights, strict=True) if (w > 0 if value is None else w == value)
    ]
    return str(tok.decode(keep))


def test_builtin_template_matches_its_jinja_twin(tiny_tokenizer: Any) -> None:
    msgs = [
        Message("system", "s"),
        Message("user", "the fox"),
        Message("assistant", "a dog"),
        Message("user", "more"),
    ]
    text, _ = render_builtin(msgs, tiny_tokenizer.bos_token, add_generation_prompt=True)
    assert tiny_tokenizer.chat_template == TIDETUNE_CHAT_TEMPLATE
    jinja = tiny_tokenizer.apply_chat_template(
        [{"role": m.role, "content": m.content} for m in msgs],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert text == jinja
    assert text.endswith("<|user|>\nmore<|end|>\n<|assistant|>\n")


def test_messages_loss_only_on_assistant_answers_with_weights(tiny_tokenizer: Any) -> None:
    rec = ChatRecord(
        "f:1",
        (
            Message("system", "sys text"),
            Message("user", "the quick fox"),
            Message("assistant", "jumps over", 1.0),
            Message("user", "a lazy dog"),
            Message("assistant", "seven wizards", 0.0),
            Message("user", "boxing"),
            Message("assistant", "pale moonlight", 2.5),
        ),
    )
    [s], st = tokenize_sft([rec], tiny_tokenizer, 512)
    assert st.truncated == 0
    # exactly the ids of tokenizing the whole rendering, as at inference
    text, _ = render_chat(rec.messages, tiny_tokenizer)
    assert s.input_ids == tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert s.input_ids[0] == tiny_tokenizer.bos_token_id and s.loss_weights[0] == 0.0
    assert _weighted_text(tiny_tokenizer, s.input_ids, s.loss_weights, 1.0) == "jumps over<|end|>"
    assert (
        _weighted_text(tiny_tokenizer, s.input_ids, s.loss_weights, 2.5) == "pale moonlight<|end|>"
    )
    assert set(s.loss_weights) == {0.0, 1.0, 2.5}
    # masked answer and every prompt token carry no loss
    zero = _weighted_text(
        tiny_tokenizer, s.input_ids, [1.0 - min(w, 1.0) for w in s.loss_weights], 1.0
    )
    assert "seven wizards" in zero and "the quick fox" in zero


def test_prompt_completion_and_text(tiny_tokenizer: Any) -> None:
    pc = PromptCompletionRecord("f:1", "the quick brown", " fox jumps")
    tx = TextRecord("f:2", "river tides carry old poems")
    [a, b], _ = tokenize_sft([pc, tx], tiny_tokenizer, 512)
    eos, bos = tiny_tokenizer.eos_token_id, tiny_tokenizer.bos_token_id
    assert a.input_ids[0] == bos and a.input_ids[-1] == eos
    assert _weighted_text(tiny_tokenizer, a.input_ids, a.loss_weights) == " fox jumps</s>"
    assert b.loss_weights == [0.0] + [1.0] * (len(b) - 1)
    assert tiny_tokenizer.decode(b.input_ids) == "<s>river tides carry old poems</s>"


def test_truncation_and_cpt_splitting_are_counted(tiny_tokenizer: Any) -> None:
    long_answer = " ".join(["moonlight harbors"] * 40)
    chat = ChatRecord("f:1", (Message("user", "q"), Message("assistant", long_answer)))
    lost = ChatRecord("f:2", (Message("user", long_answer), Message("assistant", "short")))
    text = TextRecord("f:3", long_answer)
    samples, st = tokenize_sft([chat, lost, text], tiny_tokenizer, 32)
    assert st.truncated == 2 and st.split == 1
    assert st.dropped_no_loss == 1 and st.dropped_origins == ["f:2"]
    assert all(len(s) <= 32 for s in samples)
    chunks = [s for s in samples if s.origin == "f:3"]
    assert len(chunks) == st.chunks_from_split >= 2
    assert all(c.loss_weights[0] == 0.0 for c in chunks)
    # the chunks hold every token of the document
    full = tiny_tokenizer(long_answer, add_special_tokens=False)["input_ids"]
    joined = [t for c in chunks for t in c.input_ids]
    assert joined[1:-1] == full
    assert st.raw_lengths[2] == len(full) + 2


def test_preference_pairs(tiny_tokenizer: Any) -> None:
    rec = PreferenceRecord(
        "f:1",
        (Message("user", "the fox"),),
        chosen="jumps over",
        rejected="a dog",
        chosen_score=1,
        rejected_score=0,
    )
    [p], st = tokenize_preference([rec], tiny_tokenizer, 512)
    assert tiny_tokenizer.decode(p.prompt_ids) == "<s><|user|>\nthe fox<|end|>\n<|assistant|>\n"
    assert tiny_tokenizer.decode(p.chosen_ids) == "jumps over<|end|>"
    assert tiny_tokenizer.decode(p.rejected_ids) == "a dog<|end|>"
    assert p.chosen_weights == [1.0] * len(p.chosen_ids)
    # truncation keeps the end of the prompt and the start of the answers
    long_prompt = PreferenceRecord(
        "f:2", (Message("user", "pale moonlight " * 50),), "jumps over", "a lazy dog", 1, 0
    )
    [q], st = tokenize_preference([long_prompt], tiny_tokenizer, 40)
    assert st.truncated == 1
    assert len(q) <= 40
    assert tiny_tokenizer.decode(q.prompt_ids).endswith("<|end|>\n<|assistant|>\n")


def test_method_format_mismatch(tiny_tokenizer: Any) -> None:
    rec = PreferenceRecord("f:7", (Message("user", "x"),), "a", "b", 1, 0)
    with pytest.raises(DataConfigError, match="f:7: a preference record needs method dpo"):
        tokenize_sft([rec], tiny_tokenizer, 64)
    with pytest.raises(DataConfigError, match="needs records of format preference"):
        tokenize_preference([TextRecord("f:1", "x")], tiny_tokenizer, 64)


CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


#: the same with the answers marked, as a template for training must be
CHATML_MARKED = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] }}<|im_end|>\n"
    "{% endgeneration %}{% else %}{{ m['content'] }}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_a_template_without_answer_markers_is_refused_by_name(tiny_tokenizer: Any) -> None:
    from tidetune_trainer.data.chat import ChatTemplateError
    from tidetune_trainer.tiny import train_tiny_tokenizer

    from .conftest import corpus

    tok = train_tiny_tokenizer(corpus(), seed=0)
    tok.add_special_tokens({"extra_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = CHATML
    rec = ChatRecord("f:1", (Message("user", "the fox"), Message("assistant", "jumps")))
    with pytest.raises(ChatTemplateError) as err:
        tokenize_sft([rec], tok, 512)
    msg = str(err.value)
    assert "the chat template of" in msg and "<|im_start|>{{ m['role'] }}" in msg
    assert "{% generation %}" in msg


def test_tokenizer_with_its_own_chat_template(tiny_tokenizer: Any) -> None:
    from tidetune_trainer.tiny import train_tiny_tokenizer

    from .conftest import corpus

    tok = train_tiny_tokenizer(corpus(), seed=0)
    tok.add_special_tokens({"extra_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = CHATML_MARKED
    rec = ChatRecord(
        "f:1",
        (
            Message("user", "the fox"),
            Message("assistant", "jumps", 1.0),
            Message("user", "dog"),
            Message("assistant", "wizards judge", 3.0),
        ),
    )
    [s], _ = tokenize_sft([rec], tok, 512)
    text = tok.apply_chat_template(
        [{"role": m.role, "content": m.content} for m in rec.messages], tokenize=False
    )
    assert s.input_ids == tok(text, add_special_tokens=False)["input_ids"]
    assert _weighted_text(tok, s.input_ids, s.loss_weights, 1.0) == "jumps<|im_end|>\n"
    assert _weighted_text(tok, s.input_ids, s.loss_weights, 3.0) == "wizards judge<|im_end|>\n"


def test_backend_with_truncation_falls_back_to_the_tokenizer_call(tiny_tokenizer: Any) -> None:
    from tidetune_trainer.tiny import train_tiny_tokenizer

    from .conftest import corpus

    rec = ChatRecord(
        "f:1", (Message("user", "the fox " * 20), Message("assistant", "jumps over", 2.0))
    )
    [ref], _ = tokenize_sft([rec], tiny_tokenizer, 512)
    tok = train_tiny_tokenizer(corpus(), seed=0)
    tok.backend_tokenizer.enable_truncation(8)  # a tokenizer.json may ship with this
    [got], _ = tokenize_sft([rec], tok, 512)
    assert got.input_ids == ref.input_ids and got.loss_weights == ref.loss_weights
