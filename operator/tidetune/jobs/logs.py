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
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

from tidetune import layout
from tidetune.api.constants import ATTEMPT_LABEL
from tidetune.jobs.source import ClusterJob, JobError, JobView
from tidetune.jobs.summary import parse_time

_STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z)\s")
_RANK = re.compile(r"\[rank (\d+)\]")
TERMINAL = ("Succeeded", "Failed", "Cancelled")
#: the trainer's container in the launched job's pods
CONTAINER = "pytorch"


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


def live_pods(job: JobView, attempt: int | None) -> tuple[list[Any], str]:
    """The running pods of the attempt (default: the job's current one), and why none could
    be listed (the user may not list pods: the logs kept in the run location remain)."""
    if not isinstance(job, ClusterJob):
        return [], ""
    current = attempt if attempt is not None else int(job.status.get("attempt") or 0)
    try:
        found = job.pods()
    except JobError as e:
        return [], str(e)
    pods = [
        p
        for p in found
        if (p.metadata.labels or {}).get(ATTEMPT_LABEL) == str(current)
        and (p.status.phase or "") == "Running"
        and not p.metadata.deletion_timestamp
    ]
    return pods, ""


_KUBELET_STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?Z ?")


def split_kubelet_stamp(line: str) -> tuple[datetime | None, str]:
    """A line of ``kubectl logs --timestamps`` (RFC 3339, nanoseconds): its time and text."""
    m = _KUBELET_STAMP.match(line)
    if not m:
        return None, line
    fraction = (m.group(2) or "")[:7]  # datetime takes microseconds
    return parse_time(f"{m.group(1)}{fraction}Z"), line[m.end() :]


class _Printer:
    """Prints log lines as they come, each preceded by the timeline entries up to its time;
    every timeline entry once."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.lock = threading.Lock()
        self.known: set[str] = set()
        self.pending: list[Entry] = []
        self.printed: set[tuple[datetime | None, str]] = set()

    def timeline(self, entries: Iterable[dict[str, Any]]) -> None:
        with self.lock:
            for e in entries:
                entry = timeline_entry(e)
                if entry.text not in self.known:
                    self.known.add(entry.text)
                    self.pending.append(entry)
            self.pending.sort(key=lambda e: e.time.timestamp() if e.time else 0.0)

    def _flush(self, until: datetime | None) -> None:
        while self.pending and (
            until is None or self.pending[0].time is None or self.pending[0].time <= until
        ):
            print(self.pending.pop(0).text, file=self.out, flush=True)

    def flush(self, until: datetime | None = None) -> None:
        """The timeline entries up to ``until`` (all when None)."""
        with self.lock:
            self._flush(until)

    def line(self, when: datetime | None, text: str, once: bool = False) -> None:
        with self.lock:
            if once:
                if (when, text) in self.printed:
                    return
                self.printed.add((when, text))
            if when is not None:
                self._flush(when)
            print(text, file=self.out, flush=True)


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
    if follow:
        return _follow(job, attempt, rank, out, refresh or (lambda: job), interval)
    pods, no_pods = live_pods(job, attempt)
    if pods:
        assert isinstance(job, ClusterJob)
        streams = [_pod_entries(job, pod, rank, len(pods) > 1, n) for n, pod in enumerate(pods)]
        timeline = [timeline_entry(e) for e in job.timeline()]
        for e in merge(timeline, *streams):
            print(e.text, file=out)
        return 0
    try:
        _, entries = stored_entries(job, attempt, rank)
    except JobError as e:
        if no_pods:  # neither: say both in one line
            raise JobError(f"{e}; and {no_pods}") from None
        raise
    if no_pods:
        print(
            f"tidetune logs: {no_pods}; showing the logs kept in the run location", file=sys.stderr
        )
    for entry in entries:
        print(entry.text, file=out, flush=True)
    return 0


def _keep(line: str, rank: int | None) -> bool:
    m = _RANK.search(line)
    return rank is None or m is None or int(m.group(1)) == rank


def _pod_entries(
    job: ClusterJob, pod: Any, rank: int | None, prefix: bool, order: int
) -> list[Entry]:
    """A running pod's log so far, each line with the kubelet's timestamp."""
    name = pod.metadata.name
    head = f"{name}: " if prefix else ""
    try:
        # the raw bytes: the client would hand back str(bytes) ("b'…\\n…'") for the text
        resp = job.api.core.read_namespaced_pod_log(
            name, job.namespace, container=CONTAINER, timestamps=True, _preload_content=False
        )
        text = resp.data.decode("utf-8", "replace")
    except Exception as e:  # the pod went away since it was listed
        return [Entry(None, f"{head}(no log: {_first_line(e)})", order)]
    entries = []
    for raw in text.splitlines():
        when, line = split_kubelet_stamp(raw)
        if _keep(line, rank):
            entries.append(Entry(when, head + line, order))
    return entries


def _stream(job: ClusterJob, pod: Any, rank: int | None, prefix: bool, printer: _Printer) -> None:
    """Follow a pod's log until its container ends (or the pod goes)."""
    name = pod.metadata.name
    head = f"{name}: " if prefix else ""

    def emit(raw: bytes) -> None:
        when, line = split_kubelet_stamp(raw.decode("utf-8", "replace"))
        if _keep(line, rank):
            printer.line(when, head + line)

    try:
        resp = job.api.core.read_namespaced_pod_log(
            name,
            job.namespace,
            container=CONTAINER,
            follow=True,
            timestamps=True,
            _preload_content=False,
        )
        buf = b""
        for chunk in resp.stream(4096):
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                emit(line)
        if buf:
            emit(buf)
    except Exception as e:  # a pod that went away mid-stream
        printer.line(None, f"{head}(log stream ended: {_first_line(e)})")


def _follow(
    job: JobView,
    attempt: int | None,
    rank: int | None,
    out: TextIO,
    refresh: Callable[[], JobView],
    interval: float,
) -> int:
    """Print until the job ends: the running attempt live from its pods, otherwise what the
    trainer keeps in the run location, and the lifecycle as it happens. A job that has not
    started yet is waited for."""
    printer = _Printer(out)
    streamed: set[str] = set()  # pods followed live (by uid)
    live_attempts: set[int] = set()  # attempts shown from their pods, not from storage
    warned = False
    while True:
        printer.timeline(job.timeline())
        pods, no_pods = live_pods(job, attempt)
        if no_pods and not warned:
            print(
                f"tidetune logs: {no_pods}; showing the logs kept in the run location",
                file=sys.stderr,
            )
            warned = True
        pods = [p for p in pods if p.metadata.uid not in streamed]
        if pods:
            assert isinstance(job, ClusterJob)
            streamed.update(p.metadata.uid for p in pods)
            live_attempts.update(int(p.metadata.labels[ATTEMPT_LABEL]) for p in pods)
            threads = [
                threading.Thread(
                    target=_stream, args=(job, p, rank, len(pods) > 1, printer), daemon=True
                )
                for p in pods
            ]
            for t in threads:
                t.start()
            while any(t.is_alive() for t in threads):
                for t in threads:
                    t.join(interval / len(threads))
                job = refresh()
                printer.timeline(job.timeline())
                printer.flush(_now() - timedelta(seconds=interval))
        else:
            _stored_news(job, attempt, rank, live_attempts, printer)
        if job.phase in TERMINAL:
            _stored_news(job, attempt, rank, live_attempts, printer)
            printer.timeline(job.timeline())
            printer.flush()
            return 0
        printer.flush(_now() - timedelta(seconds=interval))
        time.sleep(interval)
        job = refresh()


def _stored_news(
    job: JobView, attempt: int | None, rank: int | None, live: set[int], printer: _Printer
) -> None:
    """The records of the attempt's kept log not printed yet (none before it has one, and
    none of an attempt that was followed live from its pods)."""
    keys = rank_logs(job)
    chosen = attempt if attempt is not None else max(keys, default=None)
    if chosen is None or chosen in live or chosen not in keys:
        return
    if rank is not None and rank not in keys[chosen]:
        return  # not (yet) written by that rank
    for e in stored_entries(job, chosen, rank)[1]:
        if e.order >= 0:  # the printer has the timeline
            printer.line(e.time, e.text, once=True)


def _now() -> datetime:
    return datetime.now(UTC)


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]
