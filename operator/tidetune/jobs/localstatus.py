"""The status of a local run (``tidetune run``), built from what the run left in its
folder: the timeline, ``progress.json`` and ``estimate.json``. ``tidetune run --json``
prints it, and every job command reads a local run through it.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from tidetune.api.constants import TIMELINE_KEEP_FIRST, TIMELINE_KEEP_LAST
from tidetune.layout import STATUS_METRICS

TERMINAL = ("Succeeded", "Failed", "Cancelled")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def price_local(spec: Any, counted: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """``status.estimate`` of a local run: the trainer's count (``estimate.json``) priced
    as the operator prices it, with the default tables (no pool here). A document from an
    older trainer that priced itself is taken as it is."""
    from tidetune.contract import price_count
    from tidetune.estimate import DEFAULT_GPU_TYPE, DEFAULT_TABLES, gpu_type_for

    if not counted:
        return None
    priced = price_count(counted, spec, gpu_type_for(spec, None, DEFAULT_GPU_TYPE), DEFAULT_TABLES)
    if priced is None and "gpuHours" in counted:
        return dict(counted)
    return priced


def final_job(
    body: dict[str, Any],
    phase: str,
    timeline: list[dict[str, Any]],
    estimate: dict[str, Any] | None,
    message: str | None,
    progress: dict[str, Any] | None,
) -> dict[str, Any]:
    """The FineTuneJob (spec + status) as the API model renders it."""
    from tidetune.api import FineTuneJob

    p = progress or {}
    status: dict[str, Any] = {
        "phase": phase,
        "message": (message or "").splitlines()[0][:1024] if message else None,
        "timeline": timeline[:TIMELINE_KEEP_FIRST]
        + timeline[TIMELINE_KEEP_FIRST:][-TIMELINE_KEEP_LAST:],
        "launcher": {
            "kind": "LocalProcess",
            "name": f"{body['metadata'].get('namespace')}-{body['metadata']['name']}",
        },
    }
    if p:
        status["progress"] = {
            "step": p.get("step", 0),
            "totalSteps": p.get("totalSteps"),
            "epoch": p.get("epoch", 0.0),
            "percent": min(100.0, p.get("percent", 0.0)),
            "trainedTokens": p.get("trainedTokens", 0),
            **({"eta": p["eta"]} if p.get("eta") and phase == "Running" else {}),
        }
        m = p.get("metrics") or {}
        status["metrics"] = {k: m[k] for k in STATUS_METRICS.values() if m.get(k) is not None}
        status["checkpoints"] = [
            {"step": c["step"], "uri": c["uri"], **({"time": c["time"]} if c.get("time") else {})}
            for c in p.get("checkpoints", [])
        ]
        status["artifacts"] = p.get("artifacts", [])
    if estimate:
        status["estimate"] = {
            k: estimate[k]
            for k in ("trainTokens", "gpuHours", "cost", "currency", "gpuType", "sampled")
            if k in estimate
        }
    starts = [e["time"] for e in timeline if e["type"] in ("Started", "Resumed")]
    if starts:
        status["startTime"] = starts[0]
    if phase in TERMINAL:
        ends = [e["time"] for e in timeline if e["type"] in TERMINAL]
        status["completionTime"] = ends[-1] if ends else _now()
    status["preemptions"] = sum(1 for e in timeline if e["type"] == "Suspended")
    status["attempt"] = len(starts)
    full = {**body, "status": status}
    return FineTuneJob.model_validate(full).to_dict()
