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
import os
import sys
from collections.abc import Sequence

from tidetune.storage import StorageError

from .errors import DataError
from .prepare import DataSettings, load_data, prepare_data
from .records import FORMATS, Columns

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
    p.add_argument("file", metavar="FILE", help="dataset URI: a path, file://, pvc:// or s3://")
    p.add_argument("--format", required=True, choices=FORMATS, help="record format")
    p.add_argument(
        "--model",
        default="builtin://tiny-llama",
        help="model whose tokenizer to use (default: builtin://tiny-llama, trained on FILE)",
    )
    p.add_argument("--max-seq-length", type=int, default=2048, help="default: 2048")
    p.add_argument(
        "--batch-size", type=int, default=8, help="for the padding estimate (default: 8)"
    )
    p.add_argument("--no-packing", action="store_true", help="report without packing")
    p.add_argument("--prompt-column", default="prompt", help="prompt-completion only")
    p.add_argument("--response-column", default="completion", help="prompt-completion only")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``tidetune data stats``; return the exit code."""
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from ..tiny import ModelLoadError, load_tokenizer

    try:
        settings = DataSettings(
            train_uri=args.file,
            format=args.format,
            columns=Columns(prompt=args.prompt_column, completion=args.response_column),
            max_seq_length=args.max_seq_length,
            packing=not args.no_packing,
            seed=args.seed,
            batch_size=args.batch_size,
        )
        loaded = load_data(settings)
        tokenizer = load_tokenizer(args.model, texts=loaded.texts(), seed=args.seed)
        prepared = prepare_data(loaded, tokenizer, settings, method=_METHOD_OF_FORMAT[args.format])
    except (DataError, StorageError, ModelLoadError) as e:
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
