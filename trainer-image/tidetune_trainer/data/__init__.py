"""Training data: read, validate, split, mix, tokenize, pack, collate, report.

Public surface (torch is only needed by ``tidetune_trainer.data.collate``)::

    from tidetune_trainer.data import DataSettings, load_data, prepare_data
    from tidetune_trainer.data.collate import Collator, weighted_loss

- ``records``  — formats, per-line validation (``DataValidationError`` with
  ``file:line: problem``), JSONL / JSON-array reading from any storage URI;
- ``splits``   — validation split, mix-in, ``maxSamples`` (seeded, deterministic);
- ``chat``     — the TideTune chat template and loss spans;
- ``tokenize`` — batched tokenization to ids + per-token loss weights, truncation;
- ``packing``  — best-fit-decreasing packing into ``max_seq_length`` rows;
- ``collate``  — tensors for packed / padded / preference batches, weighted loss;
- ``report``   — ``DataReport``; ``stats`` — ``tidetune data stats``.
"""

from .errors import DataConfigError, DataError, DataValidationError, Problem
from .packing import PackedRow, best_fit_decreasing, pack
from .prepare import (
    DataSettings,
    LoadedData,
    PreparedData,
    check_method_format,
    load_data,
    prepare_data,
)
from .records import (
    FORMATS,
    ChatRecord,
    Columns,
    DataFormat,
    Message,
    PreferenceRecord,
    PromptCompletionRecord,
    Record,
    TextRecord,
    read_dataset,
)
from .report import DataReport
from .tokenize import PreferenceSample, TokenizedSample, tokenize_preference, tokenize_sft

__all__ = [
    "FORMATS",
    "ChatRecord",
    "Columns",
    "DataConfigError",
    "DataError",
    "DataFormat",
    "DataReport",
    "DataSettings",
    "DataValidationError",
    "LoadedData",
    "Message",
    "PackedRow",
    "PreferenceRecord",
    "PreferenceSample",
    "PreparedData",
    "Problem",
    "PromptCompletionRecord",
    "Record",
    "TextRecord",
    "TokenizedSample",
    "best_fit_decreasing",
    "check_method_format",
    "load_data",
    "pack",
    "prepare_data",
    "read_dataset",
    "tokenize_preference",
    "tokenize_sft",
]
