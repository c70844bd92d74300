"""``DataReport``: what the data looks like after tokenization and packing."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


def percentile(sorted_values: Sequence[int], q: float) -> int:
    """Nearest-rank percentile of already sorted values (0 for none)."""
    if not sorted_values:
        return 0
    k = max(0, min(len(sorted_values) - 1, math.ceil(q / 100 * len(sorted_values)) - 1))
    return int(sorted_values[k])


def padding_fraction(lengths: Sequence[int], batch_size: int) -> float:
    """Padding / padded capacity when consecutive batches are padded to their longest."""
    if not lengths:
        return 0.0
    pad = cap = 0
    for i in range(0, len(lengths), batch_size):
        chunk = lengths[i : i + batch_size]
        width = max(chunk)
        cap += width * len(chunk)
        pad += sum(width - n for n in chunk)
    return pad / cap if cap else 0.0


@dataclass
class LengthStats:
    """Token-length distribution of the samples (before truncation)."""

    p50: int = 0
    p90: int = 0
    p99: int = 0
    max: int = 0
    mean: float = 0.0

    @classmethod
    def of(cls, lengths: Sequence[int]) -> LengthStats:
        """The stats of ``lengths``."""
        s = sorted(lengths)
        if not s:
            return cls()
        return cls(
            p50=percentile(s, 50),
            p90=percentile(s, 90),
            p99=percentile(s, 99),
            max=s[-1],
            mean=round(sum(s) / len(s), 2),
        )


@dataclass
class DataReport:
    """Counts and distributions of a prepared dataset (training split unless noted).

    ``packing_efficiency`` = real tokens / (packed rows × ``max_seq_length``);
    ``padding_fraction_unpacked`` = padding share when ``batch_size`` consecutive
    samples are padded to the batch's longest (what packing off would cost).
    """

    format: str
    method: str
    max_seq_length: int
    packing: bool
    batch_size: int
    records: int = 0
    validation_records: int = 0
    mix_in_records: int = 0
    mix_in_repeated: int = 0
    dropped_by_max_samples: int = 0
    samples: int = 0
    validation_samples: int = 0
    tokens: int = 0
    loss_tokens: int = 0
    validation_tokens: int = 0
    truncated: int = 0
    split: int = 0
    chunks_from_split: int = 0
    dropped_no_loss: int = 0
    lengths: LengthStats = field(default_factory=LengthStats)
    packed_rows: int | None = None
    packing_efficiency: float | None = None
    padding_fraction_unpacked: float = 0.0
    validation_packed_rows: int | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (camelCase keys, like the API)."""
        d = asdict(self)

        def camel(k: str) -> str:
            head, *rest = k.split("_")
            return head + "".join(p.title() for p in rest)

        out = {camel(k): v for k, v in d.items()}
        return out

    def _percentiles(self) -> str:
        ls = self.lengths
        return f"{ls.p50} / {ls.p90} / {ls.p99} / {ls.max}"

    def format_table(self) -> str:
        """A human-readable table."""
        rows: list[tuple[str, str]] = [
            ("format / method", f"{self.format} / {self.method}"),
            ("records (train)", f"{self.records}"),
        ]
        if self.validation_records:
            rows.append(("records (validation)", f"{self.validation_records}"))
        if self.mix_in_records:
            rep = f" ({self.mix_in_repeated} repeated)" if self.mix_in_repeated else ""
            rows.append(("mix-in records", f"{self.mix_in_records}{rep}"))
        if self.dropped_by_max_samples:
            rows.append(("left out by maxSamples", f"{self.dropped_by_max_samples}"))
        rows += [
            ("samples", f"{self.samples}"),
            ("tokens", f"{self.tokens}"),
            ("loss tokens", f"{self.loss_tokens}"),
            ("length p50 / p90 / p99 / max", self._percentiles()),
            ("max sequence length", f"{self.max_seq_length}"),
            ("truncated", f"{self.truncated}"),
        ]
        if self.split:
            rows.append(("split into chunks", f"{self.split} → {self.chunks_from_split} chunks"))
        if self.dropped_no_loss:
            rows.append(("dropped (no loss tokens left)", f"{self.dropped_no_loss}"))
        if self.packed_rows is not None and self.packing_efficiency is not None:
            rows.append(("packed rows", f"{self.packed_rows}"))
            rows.append(("packing efficiency", f"{self.packing_efficiency:.4f}"))
        rows.append(
            (
                f"padding without packing (batch {self.batch_size})",
                f"{self.padding_fraction_unpacked:.4f}",
            )
        )
        width = max(len(k) for k, _ in rows)
        lines = [f"{k.ljust(width)}  {v}" for k, v in rows]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)
