"""Prompts for GRPO/PPO from ``prompt-completion`` or ``messages`` records.

- ``prompt-completion``: the model sees ``<s>`` + the prompt (as in SFT) and stops at
  ``</s>``; the completion column is the reference answer.
- ``messages``: the conversation before the last assistant message, rendered with the
  chat template and its generation prompt; the model stops at the end-of-turn marker
  (``<|end|>`` with our template, EOS with a tokenizer's own); the last assistant
  message is the reference answer.

What reward rules see per completion: ``prompts`` (the prompt as written: the prompt
column, or the last user message) and ``columns``: ``reference``, the completion
column under its own name (``prompt-completion``), and every other key of the record.
Prompts longer than ``maxSeqLength − maxCompletionLength`` tokens keep their end.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tidetune_trainer.data.chat import END, render_chat, uses_builtin_template
from tidetune_trainer.data.errors import DataConfigError
from tidetune_trainer.data.records import ChatRecord, PromptCompletionRecord, Record
from tidetune_trainer.rl.rewards import REFERENCE


@dataclass(frozen=True)
class RlPrompt:
    """One training prompt: its tokens, its text for the rules and its columns."""

    prompt_ids: tuple[int, ...]
    text: str
    columns: dict[str, Any] = field(default_factory=dict)
    origin: str = ""

    def __len__(self) -> int:
        return len(self.prompt_ids)


def rule_inputs(
    record: Record, completion_column: str = "completion"
) -> tuple[str, dict[str, Any]]:
    """(prompt text, columns) that reward rules see for ``record``."""
    if isinstance(record, PromptCompletionRecord):
        cols = dict(record.extra)
        cols[completion_column] = record.completion
        cols[REFERENCE] = record.completion
        return record.prompt, cols
    if isinstance(record, ChatRecord):
        msgs = record.messages
        cols = dict(record.extra)
        cols[REFERENCE] = msgs[-1].content if msgs and msgs[-1].role == "assistant" else ""
        user = [m.content for m in msgs if m.role == "user"]
        return (user[-1] if user else ""), cols
    raise DataConfigError(
        f"{getattr(record, 'origin', '?')}: methods grpo and ppo need data of format "
        "prompt-completion or messages"
    )


def stop_token_ids(tokenizer: Any, fmt: str) -> list[int]:
    """Token ids that end a completion for data of format ``fmt``."""
    ids: list[int] = []
    if fmt == "messages" and uses_builtin_template(tokenizer):
        end = tokenizer.convert_tokens_to_ids(END)
        if isinstance(end, int) and end != tokenizer.unk_token_id:
            ids.append(end)
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    return sorted(set(ids))


def build_prompts(
    records: Sequence[Record],
    tokenizer: Any,
    *,
    max_prompt_length: int,
    completion_column: str = "completion",
) -> list[RlPrompt]:
    """Tokenize the records' prompts (see the module doc)."""
    out: list[RlPrompt] = []
    bos = tokenizer.bos_token_id
    for r in records:
        text, cols = rule_inputs(r, completion_column)
        if isinstance(r, ChatRecord):
            msgs = (
                r.messages[:-1] if r.messages and r.messages[-1].role == "assistant" else r.messages
            )
            rendered, _ = render_chat(msgs, tokenizer, add_generation_prompt=True)
            ids = list(tokenizer(rendered, add_special_tokens=False)["input_ids"])
        else:
            ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
            if bos is not None:
                ids.insert(0, int(bos))
        if len(ids) > max_prompt_length:
            ids = ids[len(ids) - max_prompt_length :]
        if not ids:
            continue
        out.append(RlPrompt(tuple(ids), text, cols, r.origin))
    if not out:
        raise DataConfigError("no prompts to train on: every record's prompt is empty")
    return out
