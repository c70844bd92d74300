"""Metric series: TensorBoard's smoothing, unknown metrics, CSV and the terminal chart."""

from __future__ import annotations

import csv
import io
import json
import math

import pytest

from tidetune.jobs.series import (
    SeriesError,
    available,
    ema,
    parse_lines,
    series,
    terminal_chart,
    to_csv,
)


def test_ema_is_tensorboards_debiased_average() -> None:
    # by hand: w = 0.5; last = 0.5·last + 0.5·x, divided by 1 - 0.5^n
    # x1 = 4: last 2, debias 0.5 → 4; x2 = 2: last 2, debias 0.75 → 2.6667;
    # x3 = 6: last 4, debias 0.875 → 4.5714
    assert ema([4.0, 2.0, 6.0], 0.5) == pytest.approx([4.0, 8 / 3, 4 / 0.875])
    assert ema([4.0, 2.0, 6.0], 0.0) == [4.0, 2.0, 6.0]
    # the first point is never pulled towards zero
    assert ema([10.0, 10.5], 0.99)[0] == pytest.approx(10.0)


def test_ema_passes_non_finite_points_and_constant_series_through() -> None:
    out = ema([1.0, math.nan, 3.0], 0.5)
    assert out[0] == 1.0 and math.isnan(out[1])
    assert out[2] == pytest.approx((0.5 * 0.5 + 0.5 * 3.0) / 0.75)  # NaN did not count
    assert ema([2.5, 2.5, 2.5], 0.9) == [2.5, 2.5, 2.5]


@pytest.mark.parametrize("weight", [-0.1, 1.0, 0.995, math.nan])
def test_smoothing_weight_out_of_range_says_what_is_allowed(weight: float) -> None:
    with pytest.raises(SeriesError, match=r"--smooth: got .*allowed: 0 \(none\) to 0.99"):
        ema([1.0, 2.0], weight)


LINES = (
    "\n".join(
        json.dumps(o)
        for o in [
            {"step": 1, "loss": 3.0, "learningRate": 1e-3, "time": "t"},
            {"step": 2, "loss": 2.0, "learningRate": 1e-3},
            {"step": 3, "loss": 9.0},  # overwritten after a resume
            {"step": 3, "loss": 1.5, "evalLoss": 1.8},
        ]
    )
    + '\n{"step": 4, "loss": 1.'
)  # a line cut short by a kill


def test_series_reads_resumed_runs_and_names_unknown_metrics() -> None:
    lines = parse_lines(LINES)
    assert available(lines) == ["loss", "evalLoss", "learningRate"]
    loss, ev = series(lines)
    assert (loss.steps, loss.values) == ([1, 2, 3], [3.0, 2.0, 1.5])
    assert (ev.steps, ev.values) == ([3], [1.8])
    assert loss.best() == (3, 1.5)
    with pytest.raises(SeriesError) as err:
        series(lines, ["reward"])
    assert str(err.value) == ("unknown metric 'reward'; this job has: loss, evalLoss, learningRate")
    with pytest.raises(SeriesError, match="no metrics yet"):
        series(parse_lines(""))


def test_csv_has_raw_and_smoothed_columns_per_step() -> None:
    chosen = series(parse_lines(LINES), ["loss", "evalLoss"])
    rows = list(csv.reader(io.StringIO(to_csv(chosen, 0.5))))
    assert rows[0] == ["step", "loss", "loss_smoothed", "evalLoss", "evalLoss_smoothed"]
    assert [r[0] for r in rows[1:]] == ["1", "2", "3"]
    assert float(rows[2][2]) == pytest.approx(ema([3.0, 2.0], 0.5)[1])
    assert rows[1][3] == "" and float(rows[3][3]) == 1.8
    assert next(csv.reader(io.StringIO(to_csv(chosen)))) == ["step", "loss", "evalLoss"]


def test_terminal_chart_draws_each_series_in_range() -> None:
    chosen = series(parse_lines(LINES), ["loss"])
    text = terminal_chart(chosen, 0.0, width=20, height=5)
    rows = text.splitlines()
    assert rows[0] == "  3 ┤●" + " " * 19  # the first point is the maximum: top left
    assert rows[4].startswith("1.5 ┤")
    assert rows[4].rstrip().endswith("●")  # the last point is the minimum: bottom right
    assert "loss: last 1.5 at step 3, 3 points" in text
