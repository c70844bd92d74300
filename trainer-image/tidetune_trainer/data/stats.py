"""``tidetune data stats FILE --format F [--model URI] [--max-seq-length N] [--json]``.

Validates every line of FILE (any storage URI), tokenizes it with the model's tokenizer
(``builtin://tiny-llama`` by default: trained on FILE's own texts), packs it and prints
samples, tokens, length percentiles, truncation counts, packed rows, packing efficiency
and the padding fraction without packing: a table, or JSON with ``--json``.

Exit codes: 0 on success; 1 when the data is bad (line-numbered problems on stderr, no
traceback) or cannot be read; 2 for a usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from .cli import READ_ERRORS, add_file_arguments, read_file
from .prepare import prepare_data

_METHOD_OF_FORMAT = {
    "messages": "sft",
    "prompt-completion": "sft",
    "text": "cpt",
    "preference": "dpo",
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``tidetune data stats``."""
    p = argparse.ArgumentParser(
        prog="tidetune data stats",
        description="Validate a dataset and show its token and packing statistics.",
        epilog="""examples:
  tidetune data stats examples/data/arithmetic-sft.jsonl --format messages
  tidetune data stats s3://datasets/poems.jsonl --format messages --max-seq-length 512 --json""",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_file_arguments(p)
    p.add_argument(
        "--batch-size", type=int, default=8, help="for the padding estimate (default: 8)"
    )
    p.add_argument("--no-packing", action="store_true", help="report without packing")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``tidetune data stats``; return the exit code."""
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    try:
        settings, loaded, tokenizer = read_file(
            args, packing=not args.no_packing, batch_size=args.batch_size
        )
        prepared = prepare_data(loaded, tokenizer, settings, method=_METHOD_OF_FORMAT[args.format])
    except READ_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    report = prepared.report
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    else:
        print(f"{args.file}")
        print(report.format_table())
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
