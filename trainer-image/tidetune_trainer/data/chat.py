"""Chat formatting: our own template for tokenizers without one, or the tokenizer's own.

The TideTune chat template (used by ``builtin://tiny-llama`` and by any tokenizer that
has no ``chat_template``) renders a conversation as::

    <s><|system|>\\n{system}<|end|>\\n<|user|>\\n{user}<|end|>\\n<|assistant|>\\n{answer}<|end|>\\n

(``<s>`` is the tokenizer's BOS token, omitted if it has none). The generation prompt is
``<|assistant|>\\n``; an answer ends with ``<|end|>``. Loss is on each assistant answer
*and* its ``<|end|>`` (so the model learns to stop), never on the role headers.

For a tokenizer with its own ``chat_template`` the answer spans are found by rendering
the conversation incrementally: an answer starts where ``messages[:i]`` rendered with
the generation prompt ends, and stops where ``messages[:i+1]`` ends (so the template's
end-of-turn tokens carry loss too). If a template rewrites earlier turns (some strip
reasoning from history), the span falls back to the answer's text found in the rendering.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .records import Message

SYSTEM, USER, ASSISTANT, END = "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"
#: The special tokens our template uses (the tiny tokenizer registers them).
CHAT_SPECIAL_TOKENS: tuple[str, ...] = (SYSTEM, USER, ASSISTANT, END)
GENERATION_PROMPT = ASSISTANT + "\n"
_HEADER = {"system": SYSTEM + "\n", "user": USER + "\n", "assistant": ASSISTANT + "\n"}

#: The same template in Jinja, stored on tokenizers we build so that saved artifacts
#: render identically with ``tokenizer.apply_chat_template`` at inference time.
TIDETUNE_CHAT_TEMPLATE = (
    "{{ bos_token if bos_token else '' }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

#: ``(start, end, weight)`` character spans of a rendering that carry loss.
Span = tuple[int, int, float]


def uses_builtin_template(tokenizer: Any) -> bool:
    """Whether ``tokenizer`` is rendered with our template (it has none, or ours)."""
    tmpl = getattr(tokenizer, "chat_template", None)
    return not tmpl or tmpl == TIDETUNE_CHAT_TEMPLATE


def render_builtin(
    messages: Sequence[Message], bos: str | None, *, add_generation_prompt: bool = False
) -> tuple[str, list[Span]]:
    """Render with the TideTune template; return the text and the assistant loss spans."""
    parts: list[str] = [bos] if bos else []
    pos = len(bos) if bos else 0
    spans: list[Span] = []
    for m in messages:
        head = _HEADER[m.role]
        parts.append(head)
        pos += len(head)
        body = m.content + END
        if m.role == "assistant" and m.loss_weight > 0:
            spans.append((pos, pos + len(body), m.loss_weight))
        parts.append(body)
        parts.append("\n")
        pos += len(body) + 1
    if add_generation_prompt:
        parts.append(GENERATION_PROMPT)
    return "".join(parts), spans


def _as_dicts(messages: Sequence[Message]) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in messages]


def render_with_tokenizer(
    messages: Sequence[Message], tokenizer: Any, *, add_generation_prompt: bool = False
) -> tuple[str, list[Span]]:
    """Render with ``tokenizer.apply_chat_template``; return the text and loss spans."""
    dicts = _as_dicts(messages)

    def render(msgs: list[dict[str, str]], gen: bool) -> str:
        out = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
        return str(out)

    full = render(dicts, add_generation_prompt)
    spans: list[Span] = []
    search_from = 0
    for i, m in enumerate(messages):
        if m.role != "assistant":
            continue
        start = end = -1
        # an answer with no turn before it falls back to the text search
        if m.loss_weight > 0 and i:
            prefix = render(dicts[:i], True)
            upto = render(dicts[: i + 1], False)
            if upto.startswith(prefix) and full.startswith(upto) and len(upto) > len(prefix):
                start, end = len(prefix), len(upto)
        if start < 0:
            found = full.find(m.content, search_from)
            if found < 0:
                continue
            start, end = found, found + len(m.content)
        search_from = end
        if m.loss_weight > 0:
            spans.append((start, end, m.loss_weight))
    return full, spans


def render_chat(
    messages: Sequence[Message], tokenizer: Any, *, add_generation_prompt: bool = False
) -> tuple[str, list[Span]]:
    """Render a conversation for ``tokenizer`` (our template or its own) with loss spans."""
    if uses_builtin_template(tokenizer):
        return render_builtin(
            messages,
            getattr(tokenizer, "bos_token", None),
            add_generation_prompt=add_generation_prompt,
        )
    return render_with_tokenizer(messages, tokenizer, add_generation_prompt=add_generation_prompt)
