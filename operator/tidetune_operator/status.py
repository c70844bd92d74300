"""Status bookkeeping: conditions by the Kubernetes conventions, and the bounded timeline.

Pure functions over the status dict (camelCase, as stored). ``lastTransitionTime``
changes only when a condition's status flips; the timeline keeps its first
``TIMELINE_KEEP_FIRST`` and last ``TIMELINE_KEEP_LAST`` entries.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from tidetune.api.constants import TIMELINE_KEEP_FIRST, TIMELINE_KEEP_LAST

TIMELINE_MESSAGE_MAX = 1024


def iso(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: Any) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def get_condition(status: dict[str, Any], ctype: str) -> dict[str, Any] | None:
    for cond in status.get("conditions") or []:
        if cond.get("type") == ctype:
            return dict(cond)
    return None


def condition_true(status: dict[str, Any], ctype: str) -> bool:
    cond = get_condition(status, ctype)
    return cond is not None and cond.get("status") == "True"


def set_condition(
    status: dict[str, Any],
    ctype: str,
    value: bool | None,
    reason: str,
    message: str,
    now: datetime,
    generation: int | None,
) -> None:
    """Set one condition; ``value`` None means Unknown. Keeps the others' order."""
    text = "Unknown" if value is None else ("True" if value else "False")
    conditions = [dict(c) for c in status.get("conditions") or []]
    for cond in conditions:
        if cond.get("type") == ctype:
            if cond.get("status") != text:
                cond["lastTransitionTime"] = iso(now)
            cond.update(status=text, reason=reason, message=message[:32768])
            if generation is not None:
                cond["observedGeneration"] = generation
            break
    else:
        new: dict[str, Any] = {
            "type": ctype,
            "status": text,
            "reason": reason,
            "message": message[:32768],
            "lastTransitionTime": iso(now),
        }
        if generation is not None:
            new["observedGeneration"] = generation
        conditions.append(new)
    status["conditions"] = conditions


def add_timeline(
    status: dict[str, Any], now: datetime, etype: str, reason: str, message: str
) -> dict[str, Any]:
    """Append an entry (bounded) and return it."""
    entry = {
        "time": iso(now),
        "type": etype,
        "reason": reason,
        "message": message[:TIMELINE_MESSAGE_MAX],
    }
    timeline = [*(status.get("timeline") or []), entry]
    limit = TIMELINE_KEEP_FIRST + TIMELINE_KEEP_LAST
    if len(timeline) > limit:
        timeline = timeline[:TIMELINE_KEEP_FIRST] + timeline[-TIMELINE_KEEP_LAST:]
    status["timeline"] = timeline
    return entry
