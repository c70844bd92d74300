"""Tokenization: records → token ids with per-token loss weights.

Conventions (shared with the collator and the trainer):

- ``loss_weights[i]`` weighs the loss of *predicting token i* from the tokens before it;
  ``0.0`` masks it. The first token of every sample has weight 0 (nothing precedes it),
  which also keeps packed samples from predicting across their boundary.
- ``messages``: loss on assistant answers (and their end-of-turn token), scaled by each
  message's ``loss_weight``; ``prompt-completion``: ``prompt completion EOS`` with the
  special tokens the tokenizer adds itself (BOS for Llama and the tiny model, none for
  Qwen or GPT-2), loss on the completion and EOS; ``text``: the same with loss everywhere.
- Samples longer than ``max_seq_length`` are truncated at the end (``messages``,
  ``prompt-completion``) or split into consecutive chunks (``text``); preference samples
  keep the end of the prompt and the start of the answers. Each is counted.

Tokenization runs in batches through the fast tokenizer, with character offsets mapping
tokens to the loss spans of the rendered text (so the ids are exactly what tokenizing
the whole rendering gives, as at inference time). A token carries a span's weight when
it overlaps the span (the rule of transformers' ``return_assistant_tokens_mask``), so a
completion whose first token also holds the prompt's trailing space is still trained.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .chat import END, GENERATION_PROMPT, Span, render_chat, uses_builtin_template
from .errors import DataConfigError
from .records import (
    ChatRecord,
    PreferenceRecord,
    PromptCompletionRecord,
    Record,
    TextRecord,
)

BATCH = 1000


@dataclass(slots=True)
class TokenizedSample:
    """One training sequence (SFT or CPT)."""

    input_ids: list[int]
    loss_weights: list[float]
    origin: str = ""

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass(slots=True)
class PreferenceSample:
    """One DPO pair: a prompt and two answers (weights: loss on each answer token)."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    chosen_weights: list[float]
    rejected_weights: list[float]
    origin: str = ""

    def __len__(self) -> int:
        return len(self.prompt_ids) + max(len(self.chosen_ids), len(self.rejected_ids))


@dataclass(slots=True)
class TokenizeStats:
    """Counts for the data report."""

    samples_in: int = 0
    truncated: int = 0
    split: int = 0
    chunks_from_split: int = 0
    dropped_no_loss: int = 0
    dropped_origins: list[str] = field(default_factory=list)
    #: token length of every sample before truncation/splitting (for the report)
    raw_lengths: list[int] = field(default_factory=list)


def _weights_from_spans(offsets: Sequence[tuple[int, int]], spans: Sequence[Span]) -> list[float]:
    """Per-token weight: the weight of the span the token overlaps (shares a character with).

    A token that starts before a span but reaches into it is trained (``"Answer: "`` +
    ``"four"`` → ``Ġfour`` carries the completion's loss); this is the rule transformers'
    ``return_assistant_tokens_mask`` applies. Spans and offsets are both in order.
    """
    out = [0.0] * len(offsets)
    j, n = 0, len(spans)
    for t, (s, e) in enumerate(offsets):
        while j < n and s >= spans[j][1]:
            j += 1
        if j == n:
            break
        if e > spans[j][0] and e > s:
            out[t] = spans[j][2]
    return out


def _special_id(tokenizer: Any, name: str) -> int | None:
    v = getattr(tokenizer, f"{name}_token_id", None)
    return int(v) if v is not None else None


def _backend(tokenizer: Any) -> Any:
    """The ``tokenizers.Tokenizer`` behind a fast tokenizer, if it is safe to call directly
    (no truncation or padding configured on it); else ``None``."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or backend.truncation is not None or backend.padding is not None:
        return None
    return backend


def _encode(
    tokenizer: Any,
    texts: list[str],
    spans: Sequence[Sequence[Span]] | None = None,
    *,
    add_special_tokens: bool = False,
) -> tuple[list[list[int]], list[list[float]]]:
    """Token ids of ``texts`` and, with ``spans``, per-token weights. With
    ``add_special_tokens`` the tokenizer adds what it adds itself (e.g. BOS)."""
    ids: list[list[int]] = []
    weights: list[list[float]] = []
    backend = _backend(tokenizer)
    for i in range(0, len(texts), BATCH):
        chunk = texts[i : i + BATCH]
        if backend is not None:
            encoded = backend.encode_batch(chunk, add_special_tokens=add_special_tokens)
            for j, enc in enumerate(encoded):
                tok = enc.ids
                ids.append(tok)
                if spans is not None:
                    weights.append(_weights_from_spans(enc.offsets, spans[i + j]))
            continue
        out = tokenizer(
            chunk,
            add_special_tokens=add_special_tokens,
            return_offsets_mapping=spans is not None,
            return_attention_mask=False,
            return_token_type_ids=False,
        )
        ids.extend(out["input_ids"])
        if spans is not None:
            for j, off in enumerate(out["offset_mapping"]):
                weights.append(_weights_from_spans(off, spans[i + j]))
    return ids, weights


def _check_fast(tokenizer: Any) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise DataConfigError(
            f"the tokenizer ({type(tokenizer).__name__}) is not a fast tokenizer; TideTune "
            "needs one (tokenizer.json) to map loss spans to tokens"
        )


def tokenize_sft(
    records: Sequence[Record], tokenizer: Any, max_seq_length: int
) -> tuple[list[TokenizedSample], TokenizeStats]:
    """Tokenize ``messages``, ``prompt-completion`` and ``text`` records.

    Returns samples no longer than ``max_seq_length`` and the counts. Samples whose loss
    was cut away entirely by truncation are dropped and counted (``dropped_no_loss``).
    Raises ``DataConfigError`` for a non-fast tokenizer or a preference record.
    """
    _check_fast(tokenizer)
    if max_seq_length < 2:
        raise DataConfigError(f"max_seq_length must be ≥ 2, got {max_seq_length}")
    stats = TokenizeStats(samples_in=len(records))
    eos = _special_id(tokenizer, "eos")
    texts: list[str] = []
    spans: list[list[Span]] = []
    wrap: list[bool] = []  # add BOS/EOS around the encoding (non-chat formats)
    for r in records:
        if isinstance(r, ChatRecord):
            t, sp = render_chat(r.messages, tokenizer)
            texts.append(t)
            spans.append(sp)
            wrap.append(False)
        elif isinstance(r, PromptCompletionRecord):
            t = r.prompt + r.completion
            texts.append(t)
            spans.append([(len(r.prompt), len(t), 1.0)])
            wrap.append(True)
        elif isinstance(r, TextRecord):
            texts.append(r.text)
            spans.append([(0, len(r.text), 1.0)])
            wrap.append(True)
        else:
            raise DataConfigError(
                f"{r.origin}: a preference record needs method dpo (tokenize_preference)"
            )
    # chat renderings hold their special tokens; other text gets what the tokenizer adds
    # itself (BOS for Llama, nothing for Qwen or GPT-2), as in transformers and TRL
    ids: list[list[int]] = [[] for _ in records]
    all_weights: list[list[float]] = [[] for _ in records]
    for special in (False, True):
        idx = [i for i, w in enumerate(wrap) if w == special]
        if not idx:
            continue
        got_ids, got_w = _encode(
            tokenizer, [texts[i] for i in idx], [spans[i] for i in idx], add_special_tokens=special
        )
        for k, i in enumerate(idx):
            ids[i], all_weights[i] = got_ids[k], got_w[k]
    out: list[TokenizedSample] = []
    for r, tok, weights, w in zip(records, ids, all_weights, wrap, strict=True):
        tok = list(tok)
        if w and eos is not None and (not tok or tok[-1] != eos):
            tok.append(eos)  # the model learns to stop
            weights.append(1.0)
        if weights:
            weights[0] = 0.0
        stats.raw_lengths.append(len(tok))
        if isinstance(r, TextRecord) and len(tok) > max_seq_length:
            stats.split += 1
            for a in range(0, len(tok), max_seq_length):
                chunk, cw = tok[a : a + max_seq_length], weights[a : a + max_seq_length]
                if len(chunk) < 2:
                    continue  # a lone token predicts nothing
                cw[0] = 0.0
                out.append(TokenizedSample(chunk, cw, r.origin))
                stats.chunks_from_split += 1
            continue
        if len(tok) > max_seq_length:
            stats.truncated += 1
            tok, weights = tok[:max_seq_length], weights[:max_seq_length]
        if not any(x > 0 for x in weights):
            stats.dropped_no_loss += 1
            stats.dropped_origins.append(r.origin)
            continue
        out.append(TokenizedSample(tok, weights, r.origin))
    return out, stats


def tokenize_preference(
    records: Sequence[Record], tokenizer: Any, max_seq_length: int
) -> tuple[list[PreferenceSample], TokenizeStats]:
    """Tokenize ``preference`` records into DPO pairs.

    The prompt is the conversation before the candidates, rendered with the generation
    prompt. With the TideTune template each answer is its text plus ``<|end|>``. With a
    tokenizer's own template the template ends the answers, as in SFT: the prompt and
    prompt + answer are rendered and tokenized, and each answer is what follows the
    tokens they share (TRL's ``DPOTrainer`` does the same), e.g. ``yes<|im_end|>\n``.
    Pairs longer than ``max_seq_length`` keep the end of the prompt (at least half of the
    length) and the start of the answers.
    """
    _check_fast(tokenizer)
    stats = TokenizeStats(samples_in=len(records))
    for r in records:
        if not isinstance(r, PreferenceRecord):
            raise DataConfigError(f"{r.origin}: method dpo needs records of format preference")
    prefs = [r for r in records if isinstance(r, PreferenceRecord)]
    triples = (
        _builtin_pairs(prefs, tokenizer)
        if uses_builtin_template(tokenizer)
        else [_template_pair(r, tokenizer) for r in prefs]
    )
    out: list[PreferenceSample] = []
    for r, (p, c, rj) in zip(prefs, triples, strict=True):
        longest = max(len(c), len(rj))
        stats.raw_lengths.append(len(p) + longest)
        if len(p) + longest > max_seq_length:
            stats.truncated += 1
            keep_p = max(max_seq_length // 2, max_seq_length - longest)
            keep_p = min(keep_p, len(p))
            p = p[len(p) - keep_p :]
            room = max_seq_length - len(p)
            c, rj = c[:room], rj[:room]
        if not c or not rj:
            stats.dropped_no_loss += 1
            stats.dropped_origins.append(r.origin)
            continue
        out.append(PreferenceSample(p, c, rj, [1.0] * len(c), [1.0] * len(rj), r.origin))
    return out, stats


def _builtin_pairs(
    records: Sequence[PreferenceRecord], tokenizer: Any
) -> list[tuple[list[int], list[int], list[int]]]:
    """(prompt, chosen, rejected) ids with the TideTune template: answers end with ``<|end|>``."""
    prompts: list[str] = []
    answers: list[str] = []
    for r in records:
        text, _ = render_chat(r.prompt, tokenizer, add_generation_prompt=True)
        assert text.endswith(GENERATION_PROMPT)
        prompts.append(text)
        answers.append(r.chosen + END)
        answers.append(r.rejected + END)
    p_ids, _ = _encode(tokenizer, prompts)
    a_ids, _ = _encode(tokenizer, answers)
    return [
        (list(p_ids[i]), list(a_ids[2 * i]), list(a_ids[2 * i + 1])) for i in range(len(records))
    ]


def _template_pair(r: PreferenceRecord, tokenizer: Any) -> tuple[list[int], list[int], list[int]]:
    """(prompt, chosen, rejected) ids ended by the tokenizer's own template."""
    prompt = [{"role": m.role, "content": m.content} for m in r.prompt]

    def ids(msgs: list[dict[str, str]], gen: bool) -> list[int]:
        out = tokenizer.apply_chat_template(
            msgs, tokenize=True, return_dict=True, add_generation_prompt=gen
        )
        return list(out["input_ids"])

    p = ids(prompt, True)
    pc = ids([*prompt, {"role": "assistant", "content": r.chosen}], False)
    pr = ids([*prompt, {"role": "assistant", "content": r.rejected}], False)
    n = min(_common_prefix(p, pc), _common_prefix(p, pr))
    return p[:n], pc[n:], pr[n:]


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
