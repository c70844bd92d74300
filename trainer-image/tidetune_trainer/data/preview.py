"""``tidetune data preview FILE --format F --model URI [--max-seq-length N] [--limit K] [--json]``.

Shows what training would see, loading only the model's tokenizer (no weights): each
sample's tokens with their loss weights, exactly as the trainer tokenizes them (the chat
template's answer blocks, the completion, truncation at ``--max-seq-length``). In a
terminal the trained tokens are highlighted (green; other weights than 1 in yellow with
the weight); elsewhere they are wrapped in ``[[ ]]`` (``[[w=2: … ]]``). With ``--json``:
``{"samples": [{"origin": "FILE:LINE", "tokens": [{"id", "text", "weight"}, …]}, …]}``.
Preference records show the chosen and the rejected sequence (``origin`` ends with
``#chosen`` / ``#rejected``). This is how to check a dataset before paying for GPUs.

Exit codes: 0 on success; 1 when the data or the tokenizer is bad (the problem on stderr,
no traceback); 2 for a usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from .cli import READ_ERRORS, add_file_arguments, read_file
from .tokenize import PreferenceSample, TokenizedSample, tokenize_preference, tokenize_sft

GREEN, YELLOW, RESET = "\x1b[42;30m", "\x1b[43;30m", "\x1b[0m"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``tidetune data preview``."""
    p = argparse.ArgumentParser(
        prog="tidetune data preview",
        description="Show each sample's tokens and which of them carry loss.",
    )
    add_file_arguments(p)
    p.add_argument("--limit", type=int, default=5, help="samples to show (default: 5; 0: all)")
    p.add_argument(
        "--color",
        choices=("auto", "always", "never"),
        default="auto",
        help="highlight trained tokens with colours (auto: when printing to a terminal)",
    )
    return p


def token_rows(
    tokenizer: Any, ids: Sequence[int], weights: Sequence[float]
) -> list[dict[str, Any]]:
    """``{"id", "text", "weight"}`` per token (``text`` is the token's own decoding)."""
    return [
        {"id": int(t), "text": tokenizer.decode([int(t)]), "weight": float(w)}
        for t, w in zip(ids, weights, strict=True)
    ]


def samples_of(
    records: Sequence[Any], tokenizer: Any, fmt: str, max_seq_length: int
) -> list[dict[str, Any]]:
    """Every sample as the trainer tokenizes it: ``{"origin", "tokens"}``."""
    out: list[dict[str, Any]] = []
    if fmt == "preference":
        pairs, _ = tokenize_preference(records, tokenizer, max_seq_length)
        for p in pairs:
            out += _pair(tokenizer, p)
        return out
    samples, _ = tokenize_sft(records, tokenizer, max_seq_length)
    for s in samples:
        out.append({"origin": s.origin, "tokens": _sample(tokenizer, s)})
    return out


def _sample(tokenizer: Any, s: TokenizedSample) -> list[dict[str, Any]]:
    return token_rows(tokenizer, s.input_ids, s.loss_weights)


def _pair(tokenizer: Any, p: PreferenceSample) -> list[dict[str, Any]]:
    rows = []
    for which, ids, w in (
        ("chosen", p.chosen_ids, p.chosen_weights),
        ("rejected", p.rejected_ids, p.rejected_weights),
    ):
        tokens = token_rows(tokenizer, p.prompt_ids + ids, [0.0] * len(p.prompt_ids) + list(w))
        rows.append({"origin": f"{p.origin}#{which}", "tokens": tokens})
    return rows


def render(sample: dict[str, Any], color: bool) -> str:
    """One sample as text with its trained spans highlighted."""
    parts: list[str] = []
    current: float | None = None
    for tok in sample["tokens"]:
        w = tok["weight"] if tok["weight"] > 0 else 0.0
        if w != current:
            if current:  # close the open trained span
                parts.append(RESET if color else "]]")
            if w:
                if color:
                    parts.append(GREEN if w == 1.0 else f"{YELLOW}(w={w:g})")
                else:
                    parts.append("[[" if w == 1.0 else f"[[w={w:g}: ")
            current = w
        parts.append(tok["text"])
    if current:
        parts.append(RESET if color else "]]")
    trained = sum(1 for t in sample["tokens"] if t["weight"] > 0)
    head = f"── {sample['origin']}: {len(sample['tokens'])} tokens, {trained} trained"
    return head + "\n" + "".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``tidetune data preview``; return the exit code."""
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    try:
        _, loaded, tokenizer = read_file(args, packing=False)
        records = loaded.train if args.limit <= 0 else loaded.train[: args.limit]
        samples = samples_of(records, tokenizer, args.format, args.max_seq_length)
    except READ_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"samples": samples}, ensure_ascii=False))
        return 0
    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
    for s in samples:
        print(render(s, color))
        print()
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
