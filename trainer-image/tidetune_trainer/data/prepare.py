"""The data pipeline of a job: load + validate → split/mix → tokenize → pack → report.

Two steps, because ``builtin://tiny-llama`` trains its tokenizer on the loaded texts::

    settings = DataSettings.from_spec(job.spec)          # or DataSettings(train_uri=…)
    loaded = load_data(settings, credentials)             # raises DataValidationError
    tokenizer = load_tokenizer(uri, texts=loaded.texts())
    prepared = prepare_data(loaded, tokenizer, settings, method="sft")
    prepared.train_rows, prepared.validation_rows, prepared.report

Every file (training, validation, mix-in) is validated in full before anything else,
and all their problems are reported together.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from tidetune.storage import S3Credentials

from .errors import DataConfigError, DataValidationError, Problem
from .packing import PackedRow, pack, packing_efficiency, unpacked_rows
from .records import Columns, DataFormat, Record, check_format, load_dataset
from .report import DataReport, LengthStats, padding_fraction
from .splits import limit, mix_in, split_validation
from .tokenize import (
    PreferenceSample,
    TokenizedSample,
    TokenizeStats,
    tokenize_preference,
    tokenize_sft,
)

METHODS = ("sft", "dpo", "cpt", "grpo", "ppo")
_FORMATS_OF_METHOD: dict[str, tuple[str, ...]] = {
    "sft": ("messages", "prompt-completion"),
    "cpt": ("text",),
    "dpo": ("preference",),
}


def check_method_format(method: str, fmt: str) -> None:
    """Raise ``DataConfigError`` unless ``fmt`` can train ``method`` (sft, cpt, dpo)."""
    allowed = _FORMATS_OF_METHOD.get(method)
    if allowed is None:
        raise DataConfigError(
            f"method {method!r} has no data pipeline here; "
            f"supported: {', '.join(_FORMATS_OF_METHOD)}"
        )
    if fmt not in allowed:
        raise DataConfigError(
            f"method {method} needs data.train.format {' or '.join(allowed)}, got {fmt}"
        )


@dataclass(frozen=True)
class DataSettings:
    """The data part of a job (``spec.data`` plus the hyperparameters data depends on)."""

    train_uri: str
    format: DataFormat = "messages"
    columns: Columns = field(default_factory=Columns)
    validation_uri: str | None = None
    validation_split_ratio: float | None = None
    mix_in_uri: str | None = None
    mix_in_ratio: float | None = None
    #: the mix-in's format; ``None`` = the training set's (its columns too)
    mix_in_format: DataFormat | None = None
    max_samples: int = -1
    max_seq_length: int = 2048
    packing: bool = True
    seed: int = 42
    batch_size: int = 8

    def __post_init__(self) -> None:
        check_format(self.format)
        if self.mix_in_format is not None:
            check_format(self.mix_in_format)
        if self.validation_uri and self.validation_split_ratio:
            raise DataConfigError("give validation.uri or validation.splitRatio, not both")
        if (self.mix_in_uri is None) != (self.mix_in_ratio is None):
            raise DataConfigError("mixIn needs both uri and ratio")
        if self.max_seq_length < 2:
            raise DataConfigError(f"maxSeqLength must be ≥ 2, got {self.max_seq_length}")

    @classmethod
    def from_spec(cls, spec: Any) -> DataSettings:
        """From a ``FineTuneJobSpec`` (``tidetune.api``): ``spec.data`` + hyperparameters."""
        data = spec.data
        train = data.train
        hp = spec.hyperparameters
        val = getattr(data, "validation", None)
        mix = getattr(data, "mix_in", None)
        columns = Columns(
            prompt=getattr(train, "prompt_column", None) or "prompt",
            completion=getattr(train, "response_column", None) or "completion",
        )
        return cls(
            train_uri=train.uri,
            format=_enum_value(train.format) or "messages",
            columns=columns,
            validation_uri=getattr(val, "uri", None) if val is not None else None,
            validation_split_ratio=getattr(val, "split_ratio", None) if val is not None else None,
            mix_in_uri=mix.uri if mix is not None else None,
            mix_in_ratio=mix.ratio if mix is not None else None,
            mix_in_format=_enum_value(getattr(mix, "format", None)) if mix is not None else None,
            max_samples=data.max_samples if data.max_samples is not None else -1,
            max_seq_length=hp.max_seq_length,
            packing=hp.packing,
            seed=hp.seed,
            batch_size=hp.batch_size,
        )


def _enum_value(v: Any) -> Any:
    return None if v is None else str(getattr(v, "value", v))


@dataclass
class LoadedData:
    """Validated records, split and blended."""

    train: list[Record]
    validation: list[Record]
    records: int
    mix_in: int = 0
    mix_in_repeated: int = 0
    dropped_by_max_samples: int = 0

    def texts(self) -> Iterator[str]:
        """Every text of the training and validation records (to train a tokenizer)."""
        for r in self.train:
            yield from r.texts()
        for r in self.validation:
            yield from r.texts()


def load_data(settings: DataSettings, credentials: S3Credentials | None = None) -> LoadedData:
    """Read and validate every file, then apply maxSamples, the split and the mix-in.

    Raises ``DataValidationError`` (all files' problems together), ``DataConfigError``
    and ``tidetune.storage.StorageError``.
    """
    problems: list[Problem] = []
    train, p = load_dataset(settings.train_uri, settings.format, settings.columns, credentials)
    problems += p
    val: list[Record] = []
    if settings.validation_uri:
        val, p = load_dataset(
            settings.validation_uri, settings.format, settings.columns, credentials
        )
        problems += p
    extra: list[Record] = []
    if settings.mix_in_uri:
        mfmt = settings.mix_in_format or settings.format
        mcols = settings.columns if mfmt == settings.format else Columns()
        extra, p = load_dataset(settings.mix_in_uri, mfmt, mcols, credentials)
        problems += p
    if problems:
        raise DataValidationError(problems)
    n_all = len(train)
    train = limit(train, settings.max_samples)
    dropped = n_all - len(train)
    if settings.validation_split_ratio:
        train, val = split_validation(train, settings.validation_split_ratio, settings.seed)
    records = len(train)
    n_mix = repeated = 0
    if settings.mix_in_uri and settings.mix_in_ratio is not None:
        train, n_mix, repeated = mix_in(train, extra, settings.mix_in_ratio, settings.seed)
    return LoadedData(train, val, records, n_mix, repeated, dropped)


@dataclass
class PreparedData:
    """Tokenized (and for SFT/CPT, packed) data with its report."""

    report: DataReport
    train_samples: list[TokenizedSample] = field(default_factory=list)
    validation_samples: list[TokenizedSample] = field(default_factory=list)
    train_rows: list[PackedRow] = field(default_factory=list)
    validation_rows: list[PackedRow] = field(default_factory=list)
    train_pairs: list[PreferenceSample] = field(default_factory=list)
    validation_pairs: list[PreferenceSample] = field(default_factory=list)


def prepare_data(
    loaded: LoadedData,
    tokenizer: Any,
    settings: DataSettings,
    method: str = "sft",
) -> PreparedData:
    """Tokenize and pack ``loaded`` for ``method`` (``sft``, ``cpt``, ``dpo``).

    SFT/CPT produce ``train_rows``/``validation_rows`` (packed with best-fit-decreasing
    when ``settings.packing``, else one sample per row); DPO produces ``*_pairs``.
    Raises ``DataConfigError`` when the format does not fit the method, or nothing is
    left to train on.
    """
    check_method_format(method, settings.format)
    if settings.mix_in_format is not None:
        check_method_format(method, settings.mix_in_format)
    msl = settings.max_seq_length
    report = DataReport(
        format=settings.format,
        method=method,
        max_seq_length=msl,
        packing=settings.packing and method != "dpo",
        batch_size=settings.batch_size,
        records=loaded.records,
        validation_records=len(loaded.validation),
        mix_in_records=loaded.mix_in,
        mix_in_repeated=loaded.mix_in_repeated,
        dropped_by_max_samples=loaded.dropped_by_max_samples,
    )
    out = PreparedData(report)
    if method == "dpo":
        pairs, st = tokenize_preference(loaded.train, tokenizer, msl)
        vpairs, _ = tokenize_preference(loaded.validation, tokenizer, msl)
        out.train_pairs, out.validation_pairs = pairs, vpairs
        lengths = [len(p) for p in pairs]
        report.samples = len(pairs)
        report.validation_samples = len(vpairs)
        report.tokens = sum(
            len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs
        )
        report.loss_tokens = sum(len(p.chosen_ids) + len(p.rejected_ids) for p in pairs)
        report.validation_tokens = sum(
            len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in vpairs
        )
        report.notes.append("preference pairs are not packed")
    else:
        samples, st = tokenize_sft(loaded.train, tokenizer, msl)
        vsamples, _ = tokenize_sft(loaded.validation, tokenizer, msl)
        out.train_samples, out.validation_samples = samples, vsamples
        lengths = [len(s) for s in samples]
        report.samples = len(samples)
        report.validation_samples = len(vsamples)
        report.tokens = sum(lengths)
        report.loss_tokens = sum(len(s.loss_weights) - s.loss_weights.count(0.0) for s in samples)
        report.validation_tokens = sum(len(s) for s in vsamples)
        if settings.packing:
            out.train_rows = pack(samples, msl)
            out.validation_rows = pack(vsamples, msl)
            report.packed_rows = len(out.train_rows)
            report.validation_packed_rows = len(out.validation_rows)
            report.packing_efficiency = round(packing_efficiency(out.train_rows, msl), 6)
        else:
            out.train_rows = unpacked_rows(samples)
            out.validation_rows = unpacked_rows(vsamples)
    report.truncated = st.truncated
    report.split = st.split
    report.chunks_from_split = st.chunks_from_split
    report.dropped_no_loss = st.dropped_no_loss
    if st.dropped_no_loss:
        first = ", ".join(st.dropped_origins[:3])
        report.notes.append(
            f"{st.dropped_no_loss} sample(s) had no loss tokens left within maxSeqLength {msl} "
            f"and were left out (e.g. {first}); raise maxSeqLength to keep them"
        )
    report.lengths = LengthStats.of(st_lengths(st, lengths))
    report.padding_fraction_unpacked = round(padding_fraction(lengths, settings.batch_size), 6)
    if not lengths:
        raise DataConfigError(
            f"no training samples left (records: {loaded.records}, dropped: {st.dropped_no_loss}); "
            "check the data and maxSeqLength"
        )
    return out


def st_lengths(stats: TokenizeStats, fallback: list[int]) -> list[int]:
    """Lengths before truncation when the tokenizer recorded them, else ``fallback``."""
    return stats.raw_lengths if stats.raw_lengths else fallback
