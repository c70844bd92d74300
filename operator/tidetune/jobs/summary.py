"""What a job came to: duration, GPU-hours and cost against the estimate, final and best
metrics, preemptions, evaluation reports. ``compare`` and ``report`` print these."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tidetune.jobs.series import Series, parse_lines, series
from tidetune.jobs.source import JobView, NotWrittenYet

#: where ``tidetune eval --job`` keeps its reports, under the run location
EVAL_DIR = "eval"
#: metrics where higher is better (rewards)
HIGHER_IS_BETTER_PREFIXES = ("reward", "rewards/", "accuracy", "score")
#: metrics where lower is better (losses); others (tokens, learning rate, throughput,
#: gradient norm, elapsed time) have no "best"
LOWER_IS_BETTER_WORDS = ("loss", "Loss", "perplexity")


def parse_time(text: Any) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def run_seconds(job: JobView, now: datetime | None = None) -> float | None:
    """Wall-clock seconds the job ran, across attempts."""
    now = now or datetime.now(UTC)
    st = job.status
    if "runSeconds" in st or "runningSince" in st:
        total = float(st.get("runSeconds") or 0.0)
        since = parse_time(st.get("runningSince"))
        if since is not None:
            total += max(0.0, (now - since).total_seconds())
        if total > 0:
            return total
    # a local run (or an operator that keeps no runSeconds): stints in the timeline
    total, start = 0.0, None
    for entry in job.timeline():
        t = parse_time(entry.get("time"))
        if t is None:
            continue
        if entry["type"] in ("Started", "Resumed", "Running"):
            start = start or t
        elif (
            entry["type"] in ("Suspended", "Succeeded", "Failed", "Cancelled", "Preempted")
            and start is not None
        ):
            total += (t - start).total_seconds()
            start = None
    if start is not None and job.phase == "Running":
        total += (now - start).total_seconds()
    return total or None


def devices(job: JobView) -> tuple[int, str]:
    """(accelerators, what they are): GPUs, or processes for a CPU job."""
    res = job.spec.get("resources") or {}
    nodes = int(res.get("nodes", 1))
    gpus = int(res.get("gpusPerNode", 1))
    if gpus == 0:
        return nodes, "cpu"
    est = job.status.get("estimate") or {}
    return nodes * gpus, str(res.get("gpuType") or est.get("gpuType") or "gpu")


@dataclass
class Summary:
    ref: str
    phase: str
    kind: str
    seconds: float | None
    gpu_hours: float | None
    cost: float | None
    estimate: dict[str, Any]
    preemptions: int
    finals: dict[str, float] = field(default_factory=dict)
    bests: dict[str, tuple[int, float]] = field(default_factory=dict)
    steps: int | None = None
    evals: list[dict[str, Any]] = field(default_factory=list)
    series: list[Series] = field(default_factory=list)


def lower_is_better(name: str) -> bool | None:
    """True for losses, False for rewards and scores, None for a metric with no best."""
    if name.startswith(HIGHER_IS_BETTER_PREFIXES):
        return False
    if any(word in name for word in LOWER_IS_BETTER_WORDS):
        return True
    return None


def summarize(job: JobView, with_series: bool = True) -> Summary:
    seconds = run_seconds(job)
    count, _ = devices(job)
    est = dict(job.status.get("estimate") or {})
    gpu_hours = seconds * count / 3600 if seconds is not None else None
    cost = None
    if gpu_hours is not None and est.get("gpuHours"):
        cost = gpu_hours * float(est.get("cost", 0.0)) / float(est["gpuHours"])
    out = Summary(
        ref=job.ref,
        phase=job.phase,
        kind=job.kind,
        seconds=seconds,
        gpu_hours=gpu_hours,
        cost=cost,
        estimate=est,
        preemptions=int(job.status.get("preemptions") or 0),
        steps=(job.status.get("progress") or {}).get("step"),
    )
    if with_series:
        try:
            lines = parse_lines(job.metrics_text())
            out.series = series(lines, _all_names(lines))
        except NotWrittenYet:
            out.series = []
        for ser in out.series:
            finite = [v for v in ser.values if math.isfinite(v)]
            if finite:
                out.finals[ser.name] = finite[-1]
            direction = lower_is_better(ser.name)
            best = ser.best(direction) if direction is not None else None
            if best is not None:
                out.bests[ser.name] = best
    out.evals = eval_reports(job)
    return out


def _all_names(lines: list[dict[str, object]]) -> list[str] | None:
    from tidetune.jobs.series import available

    names = available(lines)
    return names or None


def eval_reports(job: JobView) -> list[dict[str, Any]]:
    """The ``tidetune eval --job`` reports kept with the job, oldest first."""
    reports = []
    for key in job.list_run(EVAL_DIR):
        if not key.endswith(".json"):
            continue
        text = job.read_run(key)
        try:
            doc = json.loads(text or "")
        except ValueError:
            continue
        if isinstance(doc, dict):
            reports.append(doc)
    return sorted(reports, key=lambda d: str(d.get("time", "")))


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return "—"
    s = round(s)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s"


def fmt_num(v: Any, digits: int = 4) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if v != 0 and (abs(v) >= 1e6 or abs(v) < 1e-3):
            return f"{v:.{digits - 1}e}"
        return f"{v:.{digits}g}"
    return str(v)
