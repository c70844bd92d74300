"""``tidetune logs``: each rank's log, interleaved with the job's lifecycle (timeline).

Earlier attempts (and any attempt whose pods are gone) come from the run location
(``logs/attempt-<N>/rank-<R>.log``, kept by the trainer); the running attempt of a cluster
job comes live from its pods when they exist. ``-f`` follows until the job ends.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TextIO

from tidetune import layout
from tidetune.api.constants import ATTEMPT_LABEL
from tidetune.jobs.source import ClusterJob, JobError, JobView
from tidetune.jobs.summary import parse_time

_STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z)\s")
_RANK = re.compile(r"\[rank (\d+)\]")
TERMINAL = ("Succeeded", "Failed", "Cancelled")


@dataclass
class Entry:
    """One log record (its continuation lines included) or one timeline entry."""

    time: datetime | None
    text: str
    order: int = 0


def parse_log(text: str, order: int = 0) -> list[Entry]:
    """Records of a rank log; a line without a timestamp continues the previous record."""
    out: list[Entry] = []
    for line in text.splitlines():
        m = _STAMP.match(line)
        if m or not out:
            out.append(Entry(parse_time(m.group(1)) if m else None, line, order))
        else:
            out[-1].text += "\n" + line
    return out


def timeline_entry(entry: dict[str, Any]) -> Entry:
    t = parse_time(entry.get("time"))
    stamp = entry.get("time", "")
    return Entry(
        t,
        f"{stamp} ── {entry.get('type')} ({entry.get('reason')}): {entry.get('message', '')}",
        -1,
    )


def merge(*streams: Iterable[Entry]) -> list[Entry]:
    """All entries in time order (stable; untimed entries keep their place after the
    previous timed one)."""
    keyed = []
    for stream in streams:
        last: datetime | None = None
        for i, e in enumerate(stream):
            last = e.time or last
            keyed.append(((last.timestamp() if last else 0.0), e.order, i, e))
    return [e for *_, e in sorted(keyed, key=lambda k: k[:3])]


def rank_logs(job: JobView) -> dict[int, dict[int, str]]:
    """attempt -> rank -> key of the rank's log in the run location."""
    out: dict[int, dict[int, str]] = {}
    for key in job.list_run(layout.LOGS_DIR):
        parsed = layout.parse_rank_log_key(key)
        if parsed is not None:
            out.setdefault(parsed[0], {})[parsed[1]] = key
    return out


def _window(logs: dict[int, list[Entry]], attempt: int) -> tuple[datetime | None, datetime | None]:
    """The times between which the attempt's timeline entries are shown: after the
    previous attempt's last record and before the next attempt's first."""
    attempts = sorted(logs)
    prev = [a for a in attempts if a < attempt]
    nxt = [a for a in attempts if a > attempt]

    def times(a: int) -> list[datetime]:
        return [e.time for e in logs[a] if e.time is not None]

    lo = max(times(prev[-1]), default=None) if prev else None
    hi = min(times(nxt[0]), default=None) if nxt else None
    return lo, hi


def stored_entries(job: JobView, attempt: int | None, rank: int | None) -> tuple[int, list[Entry]]:
    """(attempt shown, its records and timeline entries) from the run location."""
    keys = rank_logs(job)
    if not keys:
        raise JobError(
            f"{job.ref}: no logs in the run location yet "
            f"({job.run_uri or 'no run location'}/{layout.LOGS_DIR}/); phase {job.phase}"
        )
    chosen = attempt if attempt is not None else max(keys)
    if chosen not in keys:
        raise JobError(
            f"{job.ref}: no logs of attempt {chosen}; attempts with logs: "
            + ", ".join(str(a) for a in sorted(keys))
        )
    ranks = keys[chosen]
    if rank is not None and rank not in ranks:
        raise JobError(
            f"{job.ref}: attempt {chosen} has no log of rank {rank}; ranks: "
            + ", ".join(str(r) for r in sorted(ranks))
        )
    parsed: dict[int, list[Entry]] = {}
    for a, by_rank in keys.items():
        # other attempts only bound the timeline window: their rank 0 is enough
        wanted = by_rank if a == chosen else {min(by_rank): by_rank[min(by_rank)]}
        entries: list[Entry] = []
        for r, key in sorted(wanted.items()):
            if a == chosen and rank is not None and r != rank:
                continue
            entries.extend(parse_log(job.read_run(key) or "", order=r))
        parsed[a] = entries
    lo, hi = _window(parsed, chosen)
    timeline = [
        timeline_entry(e)
        for e in job.timeline()
        if (t := parse_time(e.get("time"))) is not None
        and (lo is None or t > lo)
        and (hi is None or t < hi)
    ]
    return chosen, merge(parsed[chosen], timeline)


def live_pods(job: JobView, attempt: int | None) -> list[Any]:
    """The running pods of the attempt (default: the job's current one), if any."""
    if not isinstance(job, ClusterJob):
        return []
    current = attempt if attempt is not None else int(job.status.get("attempt") or 0)
    try:
        found = job.pods()
    except JobError as e:
        # no access to the pods (RBAC): what the trainer kept in the run location remains
        print(f"tidetune logs: {e}; showing the logs kept in the run location", file=sys.stderr)
        return []
    pods = [
        p
        for p in found
        if (p.metadata.labels or {}).get(ATTEMPT_LABEL) == str(current)
        and (p.status.phase or "") in ("Running", "Pending")
    ]
    return [p for p in pods if (p.status.phase or "") == "Running"]


def show(
    job: JobView,
    attempt: int | None,
    rank: int | None,
    follow: bool,
    out: TextIO | None = None,
    refresh: Callable[[], JobView] | None = None,
    interval: float = 2.0,
) -> int:
    out = out or sys.stdout  # looked up now: the caller may have replaced sys.stdout
    pods = live_pods(job, attempt)
    if pods:
        return _from_pods(job, pods, rank, follow, out)
    chosen, entries = stored_entries(job, attempt, rank)
    for e in entries:
        print(e.text, file=out, flush=True)
    if not follow:
        return 0
    seen = {(e.time, e.text) for e in entries}
    while job.phase not in TERMINAL:
        time.sleep(interval)
        job = refresh() if refresh else job
        keys = rank_logs(job)
        newest = max(keys) if keys else chosen
        if attempt is None and newest != chosen:
            chosen = newest
        _, entries = stored_entries(job, chosen, rank)
        for e in entries:
            if (e.time, e.text) not in seen:
                seen.add((e.time, e.text))
                print(e.text, file=out, flush=True)
    return 0


def _from_pods(job: JobView, pods: list[Any], rank: int | None, follow: bool, out: TextIO) -> int:
    assert isinstance(job, ClusterJob)
    lock = threading.Lock()
    for e in job.timeline():
        print(timeline_entry(e).text, file=out)

    def stream(pod: Any) -> None:
        name = pod.metadata.name
        prefix = f"{name}: " if len(pods) > 1 else ""

        def emit(line: str) -> None:
            m = _RANK.search(line)
            if rank is not None and m and int(m.group(1)) != rank:
                return
            with lock:
                print(prefix + line, file=out, flush=True)

        try:
            resp = job.api.core.read_namespaced_pod_log(
                name,
                job.namespace,
                container="pytorch",
                follow=follow,
                _preload_content=False,
            )
            buf = b""
            for raw in resp.stream(4096):
                buf += raw
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    emit(line.decode("utf-8", "replace"))
            if buf:
                emit(buf.decode("utf-8", "replace"))
        except Exception as e:  # a pod that went away mid-stream
            with lock:
                print(f"{prefix}(log stream ended: {str(e).splitlines()[0]})", file=out)

    threads = [threading.Thread(target=stream, args=(p,), daemon=True) for p in pods]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return 0
