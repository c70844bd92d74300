"""``tidetune report JOB -o report.html``: one self-contained page (no scripts, no
external files) — overview, estimate vs actual, smoothed curves as inline SVG, the
timeline, checkpoints and artifacts, evaluation reports."""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from tidetune.jobs.series import Series
from tidetune.jobs.source import JobView
from tidetune.jobs.summary import Summary, fmt_num, fmt_seconds, summarize

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf")

CSS = """
body{font-family:DejaVu Sans,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1100px;
color:#1d2330;background:#fff}
h1{margin:0 0 4px;font-size:26px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid
#dde;padding-bottom:4px}.sub{color:#667;margin:0 0 12px}
.phase{display:inline-block;padding:2px 10px;border-radius:10px;color:#fff;font-weight:bold}
.Succeeded{background:#2e8540}.Failed{background:#c0392b}.Cancelled{background:#7f8c8d}
.Running,.Exporting{background:#2471a3}.Queued,.Pending,.Suspended{background:#b9770e}
.cards{display:flex;gap:12px;flex-wrap:wrap}.card{border:1px solid #dde;border-radius:8px;
padding:10px 14px;min-width:150px}.card b{display:block;font-size:20px}
.card span{color:#667;font-size:12px}table{border-collapse:collapse;width:100%;font-size:13px}
td,th{border-bottom:1px solid #eef;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f5f6fa}code{font-size:12px;word-break:break-all}.charts{display:flex;
flex-wrap:wrap;gap:16px}.chart{border:1px solid #dde;border-radius:8px;padding:8px}
.chart h3{margin:0 0 4px;font-size:14px}.warn{color:#b9770e}
"""


def tick(v: float) -> str:
    """An axis label short enough for the chart's margin: ``0.0024``, ``1.058``, ``36.0k``."""
    for bound, unit, suffix in ((1e9, 1e9, "G"), (1e6, 1e6, "M"), (1e4, 1e3, "k")):
        if abs(v) >= bound:
            return f"{v / unit:.3g}{suffix}"
    return f"{v:.4g}"


def svg_chart(ser: Series, weight: float, width: int = 520, height: int = 220) -> str:
    """One series as an SVG line chart: raw points faint, smoothed line bold."""
    pts = [(s, v) for s, v in zip(ser.steps, ser.values, strict=True) if math.isfinite(v)]
    if not pts:
        return "<p>(no finite points)</p>"
    smooth = [
        (s, v)
        for s, v in zip(ser.steps, ser.smoothed(weight) if weight else ser.values, strict=True)
        if math.isfinite(v)
    ]
    ys = [v for _, v in pts] + [v for _, v in smooth]
    lo, hi = min(ys), max(ys)
    if hi == lo:
        lo, hi = lo - 0.5, hi + 0.5
    s0, s1 = pts[0][0], pts[-1][0]
    span = max(1, s1 - s0)
    left, right, top, bottom = 56, 12, 10, 28

    def xy(s: float, v: float) -> str:
        x = left + (s - s0) / span * (width - left - right)
        y = top + (hi - v) / (hi - lo) * (height - top - bottom)
        return f"{x:.1f},{y:.1f}"

    raw = " ".join(xy(s, v) for s, v in pts)
    line = " ".join(xy(s, v) for s, v in smooth)
    grid = []
    for i in range(5):
        v = lo + (hi - lo) * i / 4
        y = top + (hi - v) / (hi - lo) * (height - top - bottom)
        grid.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" font-size="10" text-anchor="end" '
            f'fill="#667">{tick(v)}</text>'
        )
    dots = ""
    if len(pts) == 1:
        dots = f'<circle cx="{xy(*pts[0]).split(",")[0]}" cy="{xy(*pts[0]).split(",")[1]}" r="3"/>'
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'role="img" aria-label="{html.escape(ser.name)}">'
        + "".join(grid)
        + f'<polyline fill="none" stroke="{COLORS[0]}" stroke-opacity="0.3" stroke-width="1" '
        f'points="{raw}"/>'
        + f'<polyline fill="none" stroke="{COLORS[0]}" stroke-width="2.2" points="{line}"/>'
        + dots
        + f'<text x="{left}" y="{height - 8}" font-size="10" fill="#667">step {s0}</text>'
        + f'<text x="{width - right}" y="{height - 8}" font-size="10" text-anchor="end" '
        f'fill="#667">{s1}</text></svg>'
    )


def _cards(items: Sequence[tuple[str, str]]) -> str:
    return (
        '<div class="cards">'
        + "".join(
            f'<div class="card"><span>{html.escape(k)}</span><b>{html.escape(v)}</b></div>'
            for k, v in items
        )
        + "</div>"
    )


def _table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    if not rows:
        return "<p>none</p>"
    return (
        "<table><tr>"
        + "".join(f"<th>{html.escape(h)}</th>" for h in head)
        + "</tr>"
        + "".join(
            "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
            for row in rows
        )
        + "</table>"
    )


def render(job: JobView, weight: float, summary: Summary | None = None) -> str:
    s = summary or summarize(job)
    spec, st = job.spec, job.status
    est = s.estimate
    title = spec.get("displayName") or job.name
    progress = st.get("progress") or {}
    currency = est.get("currency", "")
    overview = _cards(
        [
            ("phase", s.phase),
            ("steps", f"{progress.get('step', '—')} / {progress.get('totalSteps', '—')}"),
            ("duration", fmt_seconds(s.seconds)),
            ("preemptions", str(s.preemptions)),
            *[
                (f"final {k}", fmt_num(v))
                for k, v in s.finals.items()
                if k in ("loss", "evalLoss", "reward")
            ],
        ]
    )
    hp = spec.get("hyperparameters") or {}
    params = [
        ("method", spec.get("method")),
        ("tuning", (spec.get("tuning") or {}).get("type")),
        ("base model", (spec.get("baseModel") or {}).get("uri")),
        ("training data", ((spec.get("data") or {}).get("train") or {}).get("uri")),
        *[(f"hyperparameters.{k}", v) for k, v in hp.items()],
        ("resources", json.dumps(spec.get("resources") or {})),
        ("output", job.root_uri or "—"),
    ]
    cost_rows = [
        ("GPU-hours", fmt_num(est.get("gpuHours")), fmt_num(s.gpu_hours)),
        (f"cost ({currency})", fmt_num(est.get("cost")), fmt_num(s.cost)),
        (
            "training tokens",
            fmt_num(est.get("trainTokens")),
            fmt_num(progress.get("trainedTokens")),
        ),
    ]
    charts = "".join(
        f'<div class="chart"><h3>{html.escape(ser.name)}'
        + (f" (smoothed {weight:g})" if weight else "")
        + f"</h3>{svg_chart(ser, weight)}</div>"
        for ser in s.series
    )
    timeline = [
        (e.get("time"), e.get("type"), e.get("reason"), e.get("message", ""))
        for e in job.timeline()
    ]
    artifacts = [
        (a.get("name"), a.get("uri"), fmt_num(a.get("sizeBytes")), a.get("sha256"))
        for a in st.get("artifacts") or []
    ]
    checkpoints = [
        (c.get("step"), c.get("uri"), c.get("time", "")) for c in st.get("checkpoints") or []
    ]
    evals = [
        (
            e.get("time"),
            e.get("data"),
            *[fmt_num(e.get(k)) for k in ("loss", "perplexity")],
            ", ".join(f"{k} {fmt_num(v)}" for k, v in (e.get("scores") or {}).items()),
        )
        for e in s.evals
    ]
    best = [
        (k, fmt_num(s.finals.get(k)), f"{fmt_num(v)} at step {st_}")
        for k, (st_, v) in s.bests.items()
    ]
    generated = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    message = st.get("message")
    body = [
        f"<h1>{html.escape(str(title))}</h1>",
        f'<p class="sub">{html.escape(job.ref)} · {html.escape(job.kind)} · '
        f'<span class="phase {html.escape(s.phase)}">{html.escape(s.phase)}</span>'
        + (f" · {html.escape(str(message))}" if message else "")
        + "</p>",
        "<h2>Overview</h2>",
        overview,
        _table(["parameter", "value"], params),
        "<h2>Estimate vs actual</h2>",
        _table(["", "estimate", "actual"], cost_rows),
        "<h2>Curves</h2>",
        f'<div class="charts">{charts or "<p>no metrics yet</p>"}</div>',
        _table(["metric", "final", "best"], best),
        "<h2>Timeline</h2>",
        _table(["time", "type", "reason", "message"], timeline),
        "<h2>Checkpoints</h2>",
        _table(["step", "uri", "time"], checkpoints),
        "<h2>Artifacts</h2>",
        _table(["name", "uri", "bytes", "sha256"], artifacts),
        "<h2>Evaluations</h2>",
        _table(["time", "data", "loss", "perplexity", "scores"], evals),
        f'<p class="sub">generated {generated} by tidetune report</p>',
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(str(title))} — TideTune report</title>"
        f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
