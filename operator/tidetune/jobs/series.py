"""The metric series of a job (``metrics.jsonl``), TensorBoard's smoothing, CSV, and a
terminal chart.

``metrics.jsonl`` has one JSON object per logging step (see
``tidetune_trainer.progress``): ``step`` plus numbers such as ``loss``, ``evalLoss``,
``learningRate``, ``gradNorm``, ``tokensPerSecond`` and, for RL, ``reward`` and
``rewards/<i>``. A *series* is one key's ``(step, value)`` points, in step order.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

#: keys of a metrics line that are not metrics
NOT_METRICS = frozenset({"step", "epoch", "time"})
#: what ``--metric`` shows by default, in this order, when present
DEFAULT_METRICS = ("loss", "evalLoss", "reward")
MAX_SMOOTHING = 0.99


class SeriesError(Exception):
    """A metric that does not exist, a bad smoothing weight, unreadable metrics."""


@dataclass
class Series:
    name: str
    steps: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)

    def smoothed(self, weight: float) -> list[float]:
        return ema(self.values, weight)

    @property
    def last(self) -> float | None:
        return self.values[-1] if self.values else None

    def best(self, lower_is_better: bool = True) -> tuple[int, float] | None:
        """(step, value) of the best finite point."""
        points = [(s, v) for s, v in zip(self.steps, self.values, strict=True) if math.isfinite(v)]
        if not points:
            return None
        pick = min if lower_is_better else max
        return pick(points, key=lambda p: p[1])


def parse_lines(text: str) -> list[dict[str, object]]:
    """The objects of a metrics.jsonl text; a line cut short by a kill is skipped."""
    out: list[dict[str, object]] = []
    for raw in text.splitlines():
        raw = raw.strip()
        if not raw:
            continue
        try:
            obj = json.loads(raw)
        except ValueError:
            continue
        if isinstance(obj, dict) and isinstance(obj.get("step"), int):
            out.append(obj)
    return out


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def available(lines: Iterable[dict[str, object]]) -> list[str]:
    """Every metric name with at least one number, defaults first, then sorted."""
    names: set[str] = set()
    for obj in lines:
        names.update(k for k, v in obj.items() if k not in NOT_METRICS and _number(v) is not None)
    return [n for n in DEFAULT_METRICS if n in names] + sorted(names - set(DEFAULT_METRICS))


def series(lines: Sequence[dict[str, object]], names: Sequence[str] | None = None) -> list[Series]:
    """The series of ``names`` (default: loss and evalLoss, else every metric).

    A later line for the same step replaces an earlier one (a resumed run rewrites the
    steps after its checkpoint). Raises :class:`SeriesError` naming an unknown metric and
    the ones that exist.
    """
    have = available(lines)
    if not have:
        raise SeriesError("no metrics yet: metrics.jsonl has no numbers")
    wanted = list(names) if names else [n for n in DEFAULT_METRICS if n in have] or have
    unknown = [n for n in wanted if n not in have]
    if unknown:
        raise SeriesError(
            f"unknown metric {', '.join(repr(n) for n in unknown)}; this job has: "
            + ", ".join(have)
        )
    out = []
    for name in wanted:
        by_step: dict[int, float] = {}
        for obj in lines:
            value = _number(obj.get(name))
            if value is not None:
                by_step[int(obj["step"])] = value  # type: ignore[call-overload]
        steps = sorted(by_step)
        out.append(Series(name, steps, [by_step[s] for s in steps]))
    return out


def check_weight(weight: float) -> float:
    if not 0.0 <= weight <= MAX_SMOOTHING or math.isnan(weight):
        raise SeriesError(f"--smooth: got {weight}; allowed: 0 (none) to {MAX_SMOOTHING}")
    return weight


def ema(values: Sequence[float], weight: float) -> list[float]:
    """TensorBoard's scalar smoothing: a debiased exponential moving average.

    ``last = last·w + (1-w)·x``, divided by ``1 - w^n`` (n = finite points so far) so the
    start is not pulled towards 0. Non-finite points pass through unchanged and do not
    count; a constant series is returned as it is.
    """
    check_weight(weight)
    if not values:
        return []
    if all(v == values[0] for v in values):
        return list(values)
    last, count, out = 0.0, 0, []
    for v in values:
        if not math.isfinite(v):
            out.append(v)
            continue
        last = last * weight + (1 - weight) * v
        count += 1
        debias = 1.0 - weight**count if weight != 1 else 1.0
        out.append(last / debias)
    return out


def to_csv(all_series: Sequence[Series], weight: float = 0.0) -> str:
    """``step,<name>[,<name>_smoothed]…``, one row per step any series has."""
    steps = sorted({s for ser in all_series for s in ser.steps})
    header = ["step"]
    columns: list[dict[int, float]] = []
    for ser in all_series:
        header.append(ser.name)
        columns.append(dict(zip(ser.steps, ser.values, strict=True)))
        if weight > 0:
            header.append(f"{ser.name}_smoothed")
            columns.append(dict(zip(ser.steps, ser.smoothed(weight), strict=True)))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for step in steps:
        writer.writerow([step, *(_fmt(col.get(step)) for col in columns)])
    return buf.getvalue()


def _fmt(value: float | None) -> str:
    return "" if value is None else repr(value)


# --------------------------------------------------------------------------- terminal chart

_MARKS = "●○◆◇▲△"


def terminal_chart(
    all_series: Sequence[Series], weight: float = 0.0, width: int = 72, height: int = 16
) -> str:
    """A text chart: one mark per series (smoothed when ``weight`` > 0), a y axis with
    the range, an x axis with the steps, and a legend with the last values."""
    plotted = [
        (ser, ser.smoothed(weight) if weight > 0 else ser.values) for ser in all_series if ser.steps
    ]
    finite = [v for _, vals in plotted for v in vals if math.isfinite(v)]
    if not finite:
        return "(no finite points to plot)\n"
    lo, hi = min(finite), max(finite)
    if hi == lo:
        hi, lo = hi + 0.5, lo - 0.5
    s_lo = min(ser.steps[0] for ser, _ in plotted)
    s_hi = max(ser.steps[-1] for ser, _ in plotted)
    span = max(1, s_hi - s_lo)
    grid = [[" "] * width for _ in range(height)]
    for i, (ser, vals) in enumerate(plotted):
        mark = _MARKS[i % len(_MARKS)]
        for step, v in zip(ser.steps, vals, strict=True):
            if not math.isfinite(v):
                continue
            x = round((step - s_lo) / span * (width - 1))
            y = height - 1 - round((v - lo) / (hi - lo) * (height - 1))
            grid[y][x] = mark
    label_w = max(len(f"{hi:.4g}"), len(f"{lo:.4g}"))
    lines = []
    for r, row in enumerate(grid):
        label = f"{hi:.4g}" if r == 0 else f"{lo:.4g}" if r == height - 1 else ""
        lines.append(f"{label:>{label_w}} ┤{''.join(row)}")
    lines.append(" " * label_w + " └" + "─" * width)
    left, right = f"step {s_lo}", f"{s_hi}"
    lines.append(" " * (label_w + 2) + left + " " * max(1, width - len(left) - len(right)) + right)
    suffix = f" (smoothed {weight:g})" if weight > 0 else ""
    for i, (ser, _) in enumerate(plotted):
        last = ser.values[-1]
        lines.append(
            f"  {_MARKS[i % len(_MARKS)]} {ser.name}{suffix}: last {last:.4g} at step "
            f"{ser.steps[-1]}, {len(ser.steps)} points"
        )
    return "\n".join(lines) + "\n"
