"""Injectable time: everything that asks "what time is it" takes a :class:`Clock`.

- :class:`SystemClock` is the real clock (UTC), optionally shifted by ``offset_seconds``.
  The offset is a **test facility** for the lab: it moves the operator's notion of now
  (and so of which pool windows are open) without touching the machine's clock, e.g. to
  run a pool whose night window opens in two minutes. It has no place in production.
- :class:`FakeClock` is set and advanced by hand, so tests cover weeks in milliseconds.

Every clock returns timezone-aware UTC datetimes.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Protocol, runtime_checkable


@runtime_checkable
class Clock(Protocol):
    """Anything with ``now()`` returning a timezone-aware UTC datetime."""

    def now(self) -> datetime: ...


def _require_aware(instant: datetime, what: str) -> datetime:
    if not isinstance(instant, datetime):
        raise TypeError(f"{what} must be a datetime, not {type(instant).__name__}")
    if instant.tzinfo is None or instant.utcoffset() is None:
        raise ValueError(
            f"{what} {instant.isoformat()} has no time zone; pass an aware datetime, "
            "e.g. datetime(2026, 3, 29, 1, 0, tzinfo=UTC)"
        )
    return instant.astimezone(UTC)


class SystemClock:
    """The machine's clock in UTC, plus ``offset_seconds`` (TEST FACILITY, see module doc).

    Raises:
        ValueError: ``offset_seconds`` is not a finite number.
    """

    def __init__(self, offset_seconds: float = 0.0) -> None:
        offset = float(offset_seconds)
        if not math.isfinite(offset):
            raise ValueError(f"offset_seconds must be a finite number of seconds, not {offset}")
        self.offset_seconds = offset
        self._offset = timedelta(seconds=offset)

    def now(self) -> datetime:
        return datetime.now(UTC) + self._offset

    def __repr__(self) -> str:
        return f"SystemClock(offset_seconds={self.offset_seconds})"


class FakeClock:
    """A clock that only moves when told to: ``set(instant)`` or ``advance(delta)``.

    Raises:
        ValueError: a naive datetime (no time zone) or a negative ``advance``.
    """

    def __init__(self, start: datetime) -> None:
        self._now = _require_aware(start, "FakeClock start")

    def now(self) -> datetime:
        return self._now

    def set(self, instant: datetime) -> None:
        """Jump to ``instant`` (forwards or backwards)."""
        self._now = _require_aware(instant, "FakeClock.set instant")

    def advance(self, delta: timedelta | float) -> datetime:
        """Move forward by ``delta`` (a timedelta or seconds) and return the new now."""
        step = delta if isinstance(delta, timedelta) else timedelta(seconds=float(delta))
        if step < timedelta(0):
            raise ValueError(f"FakeClock.advance takes a non-negative delta, not {step}")
        self._now = self._now + step
        return self._now

    def __repr__(self) -> str:
        return f"FakeClock({self._now.isoformat()})"
