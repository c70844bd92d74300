"""Chat formatting: our own template for tokenizers without one, or the tokenizer's own.

The TideTune chat template (used by ``builtin://tiny-llama`` and by any tokenizer that
has no ``chat_template``) renders a conversation as::

    <s><|system|>\\n{system}<|end|>\\n<|user|>\\n{user}<|end|>\\n<|assistant|>\\n{answer}<|end|>\\n

(``<s>`` is the tokenizer's BOS token, omitted if it has none). The generation prompt is
``<|assistant|>\\n``; an answer ends with ``<|end|>``. Loss is on each assistant answer
*and* its ``<|end|>`` (so the model learns to stop), never on the role headers.

For a tokenizer with its own ``chat_template``, the loss spans come from the template itself,
never from searching the text: a template with ``{% generation %}`` … ``{% endgeneration %}``
markers around assistant output is rendered as is; otherwise TRL's training variant of it
(``trl.chat_template_utils.get_training_chat_template``: Qwen2.5, Qwen3, Llama 3, Gemma,
Phi-3, DeepSeek-R1-distill, gpt-oss, Cohere, …) is rendered, as TRL's ``SFTTrainer`` does
with ``assistant_only_loss``. Each generation block is an assistant answer with its
end-of-turn token. A template that neither has markers nor a training variant is refused
(:class:`ChatTemplateError`, naming the template): the trainer cannot tell which tokens are
the answer. Prompts for generation (``add_generation_prompt``) render with the tokenizer's
own template, as at inference.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .errors import DataConfigError
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


class ChatTemplateError(DataConfigError):
    """The tokenizer's chat template cannot be split into prompt and answer tokens."""


def template_name(tokenizer: Any, template: str) -> str:
    """How an error names a template: the tokenizer's name and the template's hash and start."""
    import hashlib

    digest = hashlib.sha256(template.encode()).hexdigest()[:12]
    head = " ".join(template.split())[:60]
    where = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    return f"the chat template of {where!r} (sha256 {digest}…, begins {head!r})"


def _own_template(tokenizer: Any) -> str:
    tmpl = tokenizer.chat_template
    if isinstance(tmpl, dict):
        tmpl = tmpl.get("default") or next(iter(tmpl.values()))
    return str(tmpl)


#: (id of tokenizer, its template) → the template rendered for training
_TRAINING: dict[tuple[int, str], str] = {}


def training_template(tokenizer: Any) -> str:
    """The template whose ``{% generation %}`` blocks mark the answers of ``tokenizer``'s
    conversations: its own when it has the markers, else TRL's training variant.

    Raises :class:`ChatTemplateError` naming the template when there is neither.
    """
    own = _own_template(tokenizer)
    key = (id(tokenizer), own)
    cached = _TRAINING.get(key)
    if cached is not None:
        return cached
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    if has_generation_markers(own):
        found = own
    else:
        try:
            patched = get_training_chat_template(tokenizer)
        except ValueError:
            patched = None
        if patched is None or not has_generation_markers(patched):
            raise ChatTemplateError(
                f"{template_name(tokenizer, own)} marks no assistant answers and has no training "
                "variant in TRL, so the trainer cannot tell which tokens to train. Put "
                "{% generation %}…{% endgeneration %} around each assistant message's output "
                "(its end-of-turn token included) in the tokenizer's chat_template, or train "
                "on prompt-completion data"
            )
        found = patched
    _TRAINING[key] = found
    return found


def render_with_tokenizer(
    messages: Sequence[Message], tokenizer: Any, *, add_generation_prompt: bool = False
) -> tuple[str, list[Span]]:
    """Render with the tokenizer's template; return the text and the answers' loss spans.

    With ``add_generation_prompt`` (a prompt for generation) the tokenizer's own template
    renders and no spans are returned.
    """
    dicts = _as_dicts(messages)
    if add_generation_prompt:
        out = tokenizer.apply_chat_template(dicts, tokenize=False, add_generation_prompt=True)
        return str(out), []
    text, blocks = render_blocks(dicts, tokenizer)
    answers = [m for m in messages if m.role == "assistant"]
    if len(blocks) == len(answers):
        weights = [m.loss_weight for m in answers]
    elif len({m.loss_weight for m in answers}) == 1:
        weights = [answers[0].loss_weight] * len(blocks)
    else:
        own = _own_template(tokenizer)
        raise ChatTemplateError(
            f"{template_name(tokenizer, own)} renders {len(blocks)} answer block(s) for "
            f"{len(answers)} assistant message(s), so per-message loss_weight cannot be "
            "applied; give every assistant message the same loss_weight"
        )
    spans = [(a, b, w) for (a, b), w in zip(blocks, weights, strict=True) if w > 0]
    return text, spans


def render_blocks(dicts: list[dict[str, str]], tokenizer: Any) -> tuple[str, list[tuple[int, int]]]:
    """The training rendering of a conversation and its non-empty ``{% generation %}``
    blocks as character spans, in order."""
    from transformers.utils.chat_template_utils import render_jinja_template

    tmpl = training_template(tokenizer)
    result: Any = render_jinja_template(  # (texts, generation spans) with the mask flag
        conversations=[dicts],
        chat_template=tmpl,
        return_assistant_tokens_mask=True,
        **tokenizer.special_tokens_map,
    )
    rendered, indices = result
    blocks = [(int(a), int(b)) for a, b in indices[0] if b > a]
    return str(rendered[0]), blocks


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
