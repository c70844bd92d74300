"""What ``tidetune data stats`` and ``tidetune data preview`` share: the arguments that say
how to read FILE and with which tokenizer, reading it, and the errors that end the command
with exit code 1."""

from __future__ import annotations

import argparse
import os
from typing import Any

from tidetune.storage import StorageError

from ..tiny import ModelLoadError
from .errors import DataError
from .prepare import DataSettings, LoadedData, load_data
from .records import FORMATS, Columns

#: bad data, unreadable storage, a tokenizer that cannot be loaded: the message on stderr,
#: no traceback, exit code 1
READ_ERRORS: tuple[type[Exception], ...] = (DataError, StorageError, ModelLoadError)


def add_file_arguments(p: argparse.ArgumentParser) -> None:
    """FILE, ``--format``, ``--model``, ``--max-seq-length``, the prompt-completion columns,
    ``--seed`` and ``--json``."""
    p.add_argument("file", metavar="FILE", help="dataset URI: a path, file://, pvc:// or s3://")
    p.add_argument("--format", required=True, choices=FORMATS, help="record format")
    p.add_argument(
        "--model",
        default="builtin://tiny-llama",
        help="model whose tokenizer to use (default: builtin://tiny-llama, trained on FILE)",
    )
    p.add_argument("--max-seq-length", type=int, default=2048, help="default: 2048")
    p.add_argument("--prompt-column", default="prompt", help="prompt-completion only")
    p.add_argument("--response-column", default="completion", help="prompt-completion only")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--json", action="store_true", help="machine-readable output")


def read_file(args: argparse.Namespace, **settings: Any) -> tuple[DataSettings, LoadedData, Any]:
    """Read FILE as the arguments of :func:`add_file_arguments` say (``settings``: the other
    :class:`DataSettings`) and load the model's tokenizer, offline (the tiny model's is
    trained on FILE's texts). Returns (settings, the data, the tokenizer); raises one of
    :data:`READ_ERRORS`."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from ..tiny import load_tokenizer

    data_settings = DataSettings(
        train_uri=args.file,
        format=args.format,
        columns=Columns(prompt=args.prompt_column, completion=args.response_column),
        max_seq_length=args.max_seq_length,
        seed=args.seed,
        **settings,
    )
    loaded = load_data(data_settings)
    tokenizer = load_tokenizer(args.model, texts=loaded.texts(), seed=args.seed)
    return data_settings, loaded, tokenizer
