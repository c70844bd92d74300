"""Idle-pool window arithmetic: is a pool open at an instant, and when does that change.

Pure (no I/O, no clock): every function takes the instant it is about. Supports

- windows that cross midnight: the listed day is the day a window *starts*, and an end
  earlier than (or equal to) the start means the next day (``Fri 22:00–08:00`` runs
  from Friday 22:00 to Saturday 08:00);
- ``end: "24:00"``: the window runs to the following midnight;
- overlapping and adjacent windows merge into one open span, also across days
  (``Fri 22:00–08:00`` + ``Sat 00:00–24:00`` is open from Friday 22:00 to Sunday 00:00,
  and on into Sunday's window if one starts then);
- daylight saving time via :mod:`zoneinfo`. Each window boundary is a wall-clock time
  on a date in the pool's zone, and it means **the first instant at which the pool's
  wall clock shows that time or later**. For ordinary times that is the one instant
  with that wall time, so a ``22:00–08:00`` window opens at 22:00 local and closes at
  08:00 local also on the nights the clocks change (the night is an hour shorter or
  longer). A time that does not exist (the spring-forward gap, e.g. 02:30 in Berlin on
  the last Sunday of March) means the instant the clocks jump (03:00 CEST); a time
  that exists twice (the fall-back fold) means its first occurrence (the summer-time
  one), which closes a window early rather than late and opens it early rather than
  late. Equivalently: the pool is open at ``t`` when the highest wall time the clock
  has shown up to ``t`` lies inside a window.

Look-ahead: transitions are found at least 14 days ahead of the instant asked about.
A weekly schedule always changes within 8 days unless it never closes, so
``next_transition is None`` means "always open" (e.g. every day 00:00–24:00).

Speed: a :class:`Schedule` is built once per distinct (timezone, windows) and caches
the merged open spans per local week, so :func:`state_at` is a dictionary look-up and a
binary search after the first call of a week.
"""

from __future__ import annotations

import bisect
import functools
import zoneinfo
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import TypeAlias

from tidetune.api.idlepool import IdlePool, IdlePoolSpec, Window
from tidetune.api.types import clock_minutes

__all__ = [
    "LOOKAHEAD_WEEKS",
    "Schedule",
    "WindowState",
    "format_local",
    "is_open",
    "open_intervals",
    "schedule_for",
    "state_at",
]

#: Weeks after the instant's own local week that :meth:`Schedule.state_at` looks into.
LOOKAHEAD_WEEKS = 2

_DAY_MINUTES = 1440
_WEEK_CACHE_MAX = 128

#: (weekdays Mon=0…Sun=6, start minute 0–1439, end minute 1–1440) for one window.
WindowTuple: TypeAlias = tuple[tuple[int, ...], int, int]
Interval: TypeAlias = tuple[datetime, datetime]


@dataclass(frozen=True)
class WindowState:
    """Where a pool stands at one instant.

    ``next_transition`` is ``closes_at`` when open and ``opens_at`` when closed.
    ``closes_at`` is the end of the current open span (when open) or of the next one
    (when closed); ``opens_at`` is the start of the next open span after now (when open:
    the one after the current span). Each is ``None`` when it lies beyond the look-ahead
    (at least 14 days), which for a weekly schedule means never: a pool open around the
    clock has ``open=True`` and ``next_transition=None``. All are timezone-aware UTC.
    """

    open: bool
    next_transition: datetime | None
    closes_at: datetime | None
    opens_at: datetime | None

    @property
    def always_open(self) -> bool:
        """Open, and no close within the look-ahead."""
        return self.open and self.closes_at is None


def _aware_utc(instant: datetime, what: str) -> datetime:
    if not isinstance(instant, datetime):
        raise TypeError(f"{what} must be a datetime, not {type(instant).__name__}")
    if instant.tzinfo is None or instant.utcoffset() is None:
        raise ValueError(
            f"{what} {instant.isoformat()} has no time zone; pass an aware datetime (UTC)"
        )
    return instant.astimezone(UTC)


def _wall(ts: float, tz: zoneinfo.ZoneInfo) -> datetime:
    return datetime.fromtimestamp(ts, tz).replace(tzinfo=None)


def _resolve(local: datetime, tz: zoneinfo.ZoneInfo) -> int:
    """POSIX seconds of the first instant whose wall clock in ``tz`` shows ``local`` or later."""
    first = local.replace(tzinfo=tz, fold=0).astimezone(UTC)
    second = local.replace(tzinfo=tz, fold=1).astimezone(UTC)
    valid = [u for u in (first, second) if u.astimezone(tz).replace(tzinfo=None) == local]
    if valid:
        return int(min(valid).timestamp())
    # a gap: the wall clock jumps over `local`; find the jump to the second
    lo, hi = sorted((int(first.timestamp()), int(second.timestamp())))
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _wall(mid, tz) >= local:
            hi = mid
        else:
            lo = mid
    return hi


def _merge(raw: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(raw):
        if end <= start:
            continue  # a window wholly inside a DST gap
        if merged and start <= merged[-1][1]:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


def _dt(ts: int) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


@dataclass(frozen=True)
class _Span:
    """Merged open spans around one local week, and up to where they are exact."""

    starts: list[int]
    ends: list[int]
    #: boundaries strictly before this instant are final (later weeks cannot move them)
    trusted_until: int


class Schedule:
    """The weekly windows of one pool in one time zone; cached open spans per week.

    Build with :func:`schedule_for` (cached per distinct spec) or directly from
    ``(weekdays, start_minute, end_minute)`` tuples.

    Raises:
        ValueError: an unknown time zone, no windows, or a window outside the allowed
            ranges (days 0–6, start 0–1439, end 1–1440, start != end).
    """

    def __init__(self, timezone: str, windows: Sequence[WindowTuple]) -> None:
        try:
            self.tz = zoneinfo.ZoneInfo(timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as err:
            raise ValueError(
                f"timezone: {timezone!r} is not an IANA time zone; write e.g. UTC, "
                "Europe/Berlin or Asia/Shanghai"
            ) from err
        if not windows:
            raise ValueError("windows: at least one window is required")
        for i, (days, start, end) in enumerate(windows):
            if not days or any(not 0 <= d <= 6 for d in days):
                raise ValueError(f"windows[{i}].days: weekdays are 0 (Mon) to 6 (Sun), got {days}")
            if not 0 <= start < _DAY_MINUTES:
                raise ValueError(f"windows[{i}].start: minute {start} is outside 0–1439")
            if not 0 < end <= _DAY_MINUTES:
                raise ValueError(f"windows[{i}].end: minute {end} is outside 1–1440")
            if start == end:
                raise ValueError(
                    f"windows[{i}]: start and end are equal; for a whole day use 00:00–24:00"
                )
        self.timezone = timezone
        self.windows: tuple[WindowTuple, ...] = tuple(
            (tuple(sorted(set(days))), start, end) for days, start, end in windows
        )
        self._raw: dict[date, list[tuple[int, int]]] = {}
        self._spans: dict[date, _Span] = {}

    @classmethod
    def from_windows(cls, windows: Sequence[Window], timezone: str) -> Schedule:
        """From the API's :class:`~tidetune.api.idlepool.Window` list."""
        return _cached_api_schedule(timezone, _api_key(windows))

    # -- weeks --------------------------------------------------------------------

    def _monday(self, instant: datetime) -> date:
        local = instant.astimezone(self.tz).date()
        return local - timedelta(days=local.weekday())

    def _raw_week(self, monday: date) -> list[tuple[int, int]]:
        """Unmerged (open, close) POSIX seconds of every window starting in that week."""
        cached = self._raw.get(monday)
        if cached is not None:
            return cached
        raw: list[tuple[int, int]] = []
        for days, start, end in self.windows:
            for weekday in days:
                midnight = datetime.combine(monday + timedelta(days=weekday), time())
                opens = midnight + timedelta(minutes=start)
                closes = midnight + timedelta(minutes=end if end > start else end + _DAY_MINUTES)
                raw.append((_resolve(opens, self.tz), _resolve(closes, self.tz)))
        if len(self._raw) >= _WEEK_CACHE_MAX:
            self._raw.clear()
        self._raw[monday] = raw
        return raw

    def _merged_weeks(self, first: date, last: date) -> list[tuple[int, int]]:
        raw: list[tuple[int, int]] = []
        monday = first
        while monday <= last:
            raw.extend(self._raw_week(monday))
            monday += timedelta(days=7)
        return _merge(raw)

    def _span(self, monday: date) -> _Span:
        cached = self._spans.get(monday)
        if cached is not None:
            return cached
        last = monday + timedelta(days=7 * LOOKAHEAD_WEEKS)
        merged = self._merged_weeks(monday - timedelta(days=7), last)
        after = datetime.combine(last + timedelta(days=7), time())
        span = _Span(
            starts=[s for s, _ in merged],
            ends=[e for _, e in merged],
            trusted_until=_resolve(after, self.tz),
        )
        if len(self._spans) >= _WEEK_CACHE_MAX:
            self._spans.clear()
        self._spans[monday] = span
        return span

    # -- queries ------------------------------------------------------------------

    def state_at(self, now: datetime) -> WindowState:
        """Open or not at ``now``, and the next transitions (see :class:`WindowState`).

        Raises:
            ValueError: ``now`` is naive (has no time zone).
        """
        now = _aware_utc(now, "now")
        span = self._span(self._monday(now))
        ts = now.timestamp()
        limit = span.trusted_until
        i = bisect.bisect_right(span.starts, ts) - 1
        if i >= 0 and ts < span.ends[i]:
            close = span.ends[i]
            if close >= limit:
                return WindowState(True, None, None, None)
            nxt = i + 1
            opens = span.starts[nxt] if nxt < len(span.starts) else None
            opens_at = _dt(opens) if opens is not None and opens < limit else None
            return WindowState(True, _dt(close), _dt(close), opens_at)
        nxt = i + 1
        if nxt >= len(span.starts) or span.starts[nxt] >= limit:
            return WindowState(False, None, None, None)
        opens_at = _dt(span.starts[nxt])
        closes_at = _dt(span.ends[nxt]) if span.ends[nxt] < limit else None
        return WindowState(False, opens_at, closes_at, opens_at)

    def is_open(self, now: datetime) -> bool:
        """Whether a window is open at ``now`` (aware datetime)."""
        return self.state_at(now).open

    def open_intervals(self, start: datetime, end: datetime) -> list[Interval]:
        """Merged open spans within ``[start, end)``, clipped to it, oldest first (UTC).

        Raises:
            ValueError: a naive datetime, or ``end`` before ``start``.
        """
        start = _aware_utc(start, "start")
        end = _aware_utc(end, "end")
        if end < start:
            raise ValueError(f"end {end.isoformat()} is before start {start.isoformat()}")
        lo, hi = start.timestamp(), end.timestamp()
        merged = self._merged_weeks(self._monday(start) - timedelta(days=7), self._monday(end))
        result: list[Interval] = []
        for s, e in merged:
            if e <= lo or s >= hi:
                continue
            result.append((start if s < lo else _dt(s), end if e > hi else _dt(e)))
        return result

    def open_seconds(self, start: datetime, end: datetime) -> float:
        """Total seconds the pool is open within ``[start, end)``."""
        return sum((e - s).total_seconds() for s, e in self.open_intervals(start, end))

    def __repr__(self) -> str:
        return f"Schedule({self.timezone!r}, {self.windows!r})"


_ApiKey: TypeAlias = tuple[tuple[tuple[str, ...], str, str], ...]
_WEEKDAY = {"Mon": 0, "Tue": 1, "Wed": 2, "Thu": 3, "Fri": 4, "Sat": 5, "Sun": 6}


def _api_key(windows: Sequence[Window]) -> _ApiKey:
    return tuple((tuple(str(d) for d in w.days), w.start, w.end) for w in windows)


@functools.lru_cache(maxsize=256)
def _cached_api_schedule(timezone: str, key: _ApiKey) -> Schedule:
    tuples = [
        (tuple(_WEEKDAY[d] for d in days), clock_minutes(start), clock_minutes(end))
        for days, start, end in key
    ]
    return Schedule(timezone, tuples)


def schedule_for(spec: IdlePoolSpec | IdlePool | Schedule) -> Schedule:
    """The (cached) :class:`Schedule` of a pool spec, a pool, or a schedule itself."""
    if isinstance(spec, Schedule):
        return spec
    pool_spec = spec.spec if isinstance(spec, IdlePool) else spec
    return _cached_api_schedule(pool_spec.timezone, _api_key(pool_spec.windows))


def state_at(spec: IdlePoolSpec | IdlePool | Schedule, now: datetime) -> WindowState:
    """Whether the pool is open at ``now`` and its next transitions (see :class:`WindowState`)."""
    return schedule_for(spec).state_at(now)


def is_open(spec: IdlePoolSpec | IdlePool | Schedule, now: datetime) -> bool:
    """Whether a window of the pool is open at ``now``."""
    return schedule_for(spec).state_at(now).open


def open_intervals(
    spec: IdlePoolSpec | IdlePool | Schedule, start: datetime, end: datetime
) -> list[Interval]:
    """The pool's merged open spans within ``[start, end)``, clipped, as UTC pairs."""
    return schedule_for(spec).open_intervals(start, end)


def format_local(instant: datetime, timezone: str) -> str:
    """``instant`` as a human reads it in ``timezone``: ``22:00 +08:00 (Mon 2026-11-23)``."""
    local = _aware_utc(instant, "instant").astimezone(zoneinfo.ZoneInfo(timezone))
    offset = local.utcoffset() or timedelta(0)
    minutes = round(offset.total_seconds() / 60)
    sign = "-" if minutes < 0 else "+"
    hours, mins = divmod(abs(minutes), 60)
    return f"{local:%H:%M} {sign}{hours:02d}:{mins:02d} ({local:%a %Y-%m-%d})"
