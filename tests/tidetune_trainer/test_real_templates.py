"""Assistant-only loss on real chat templates and real vocabularies, checked against TRL.

For every chat template TRL ships a training variant of, the tokens TideTune trains equal
the ones TRL's ``SFTTrainer`` trains with ``assistant_only_loss`` (TRL's training template
rendered with ``return_assistant_tokens_mask``), on multi-turn conversations. Plus the
cases text search got wrong: an answer that also occurs in the question (Qwen3), the
end-of-turn token of every turn (DeepSeek-R1-distill's end of sentence), and a prompt that
ends with a space.
"""

from __future__ import annotations

from typing import Any

import pytest

from tidetune_trainer.data.records import ChatRecord, Message, PromptCompletionRecord
from tidetune_trainer.data.tokenize import tokenize_sft

from .realvocab import TEMPLATE_CASES, load_tokenizer, template_tokenizer

CONVERSATIONS: list[list[tuple[str, str]]] = [
    [("user", "Reply with yes"), ("assistant", "yes")],
    [
        ("system", "You are terse."),
        ("user", "What is 2 + 2?"),
        ("assistant", "4"),
        ("user", "And 3 + 3?"),
        ("assistant", " six, of course "),
    ],
    [
        ("user", "Name a sea creature."),
        ("assistant", "A gull is a bird, but a crab is a sea creature."),
        ("user", "Another one, in French?"),
        ("assistant", "Une méduse 🪼"),
        ("user", "thanks"),
        ("assistant", "You're welcome."),
    ],
]


def _record(turns: list[tuple[str, str]], i: int = 0) -> ChatRecord:
    return ChatRecord(f"f:{i + 1}", tuple(Message(r, c) for r, c in turns))


def _trl_masks(tok: Any, turns: list[tuple[str, str]]) -> tuple[list[int], list[int]]:
    """What TRL's SFTTrainer trains: its training template, assistant tokens mask."""
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    template = tok.chat_template
    if not has_generation_markers(template):
        template = get_training_chat_template(tok)
    out = tok.apply_chat_template(
        [{"role": r, "content": c} for r, c in turns],
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
        chat_template=template,
    )
    return list(out["input_ids"]), list(out["assistant_masks"])


def _drop_system(turns: list[tuple[str, str]], name: str) -> list[tuple[str, str]]:
    # Phi-3's and gpt-oss's templates have no system turn of the same kind; keep the
    # comparison to what every template renders
    return [t for t in turns if t[0] != "system"] if name in ("phi3", "phi3_5") else turns


@pytest.mark.parametrize("name", list(TEMPLATE_CASES))
def test_masks_equal_trl_assistant_only_loss(name: str) -> None:
    tok = template_tokenizer(name)
    convs = [_drop_system(c, name) for c in CONVERSATIONS]
    samples, _ = tokenize_sft([_record(c, i) for i, c in enumerate(convs)], tok, 4096)
    assert len(samples) == len(convs)
    for s, turns in zip(samples, convs, strict=True):
        ids, mask = _trl_masks(tok, turns)
        assert s.input_ids == ids
        ours = [1 if w > 0 else 0 for w in s.loss_weights]
        assert ours == mask, (
            f"{name}: ours {tok.decode([t for t, m in zip(ids, ours, strict=True) if m])!r} "
            f"trl {tok.decode([t for t, m in zip(ids, mask, strict=True) if m])!r}"
        )


@pytest.mark.parametrize("name", list(TEMPLATE_CASES))
def test_every_answer_ends_with_a_trained_end_of_turn(name: str) -> None:
    case = TEMPLATE_CASES[name]
    tok = template_tokenizer(name)
    turns = _drop_system(CONVERSATIONS[2], name)
    [s], _ = tokenize_sft([_record(turns)], tok, 4096)
    ends = {tok.convert_tokens_to_ids(case.end_of_turn), tok.eos_token_id}
    if name == "gptoss":  # a turn ends with <|end|>, the final one with <|return|>
        ends.add(tok.convert_tokens_to_ids("<|end|>"))
    runs: list[list[int]] = []
    prev = False
    for t, w in zip(s.input_ids, s.loss_weights, strict=True):
        if w > 0 and not prev:
            runs.append([])
        if w > 0:
            runs[-1].append(t)
        prev = w > 0
    assert len(runs) == 3  # one trained run per assistant turn
    for run in runs:
        trailing = [t for t in run if tok.decode([t]).strip()]
        assert trailing[-1] in ends, f"{name}: a trained answer ends {tok.decode(run)!r}"


def test_qwen3_answer_repeating_the_question_trains_the_answer() -> None:
    # a turn before the last: Qwen3 re-renders it (no think block), so rendering turn by
    # turn does not line up and a text search found the user's "yes" first
    tok = template_tokenizer("qwen3")
    turns = [
        ("user", "Reply with yes"),
        ("assistant", "yes"),
        ("user", "again"),
        ("assistant", "ok"),
    ]
    [s], _ = tokenize_sft([_record(turns)], tok, 4096)
    yes = [i for i, t in enumerate(s.input_ids) if tok.decode([t]) in ("yes", " yes")]
    assert len(yes) == 2  # the user's and the assistant's
    user_yes, answer_yes = yes
    assert s.loss_weights[user_yes] == 0.0
    assert s.loss_weights[answer_yes] == 1.0
    trained = tok.decode([t for t, w in zip(s.input_ids, s.loss_weights, strict=True) if w > 0])
    assert "yes<|im_end|>" in trained and trained.endswith("ok<|im_end|>\n")
    assert "Reply" not in trained


def test_deepseek_r1_distill_trains_its_end_of_sentence() -> None:
    tok = template_tokenizer("deepseek_r1_distill")
    [s], _ = tokenize_sft([_record(CONVERSATIONS[1])], tok, 4096)
    eos = tok.convert_tokens_to_ids("<｜end▁of▁sentence｜>")
    at = [i for i, t in enumerate(s.input_ids) if t == eos]
    assert len(at) == 2 and all(s.loss_weights[i] == 1.0 for i in at)


def test_per_message_loss_weights_follow_the_template_blocks() -> None:
    tok = template_tokenizer("llama3")
    rec = ChatRecord(
        "f:1",
        (
            Message("user", "one"),
            Message("assistant", "first", 0.0),
            Message("user", "two"),
            Message("assistant", "second", 2.0),
        ),
    )
    [s], _ = tokenize_sft([rec], tok, 4096)
    by_weight: dict[float, list[int]] = {}
    for t, w in zip(s.input_ids, s.loss_weights, strict=True):
        by_weight.setdefault(w, []).append(t)
    assert tok.decode(by_weight[2.0]) == "second<|eot_id|>"
    assert "first" in tok.decode(by_weight[0.0])


@pytest.mark.parametrize("vocab", ["llama-bpe", "qwen2", "gpt-2", "phi-3", "gemma-4"])
def test_prompt_ending_with_a_space_trains_the_first_completion_token(vocab: str) -> None:
    tok = load_tokenizer(vocab)
    rec = PromptCompletionRecord("f:1", "Question: what is 2 + 2? Answer: ", "four")
    [s], _ = tokenize_sft([rec], tok, 4096)
    trained = [t for t, w in zip(s.input_ids, s.loss_weights, strict=True) if w > 0]
    assert "four" in tok.decode(trained[:1])  # the first trained token holds "four"
    # the same tokens as TRL's prompt-completion (completion from where the tokenized
    # prompt and prompt+completion diverge; EOS appended to the completion)
    from trl.data_utils import common_prefix_length

    eos = tok.eos_token or ""
    prompt_ids = tok(rec.prompt)["input_ids"]
    full_ids = tok(rec.prompt + rec.completion + eos)["input_ids"]
    n = common_prefix_length(prompt_ids, full_ids)
    assert s.input_ids == full_ids
    assert [1 if w > 0 else 0 for w in s.loss_weights] == [0] * n + [1] * (len(full_ids) - n)
