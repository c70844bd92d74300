"""Idle-pool windows: open or not, next transitions, merges, midnight, 24:00 and DST."""

from __future__ import annotations

import random
import time as _time
import zoneinfo
from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import pytest

from tidetune.api import IdlePool, IdlePoolSpec
from tidetune.clock import Clock, FakeClock, SystemClock
from tidetune.windows import (
    Schedule,
    WindowState,
    WindowTuple,
    format_local,
    is_open,
    open_intervals,
    schedule_for,
    state_at,
)

WEEKDAYS = ["Mon", "Tue", "Wed", "Thu", "Fri"]
NIGHTS_AND_WEEKENDS: list[dict[str, Any]] = [
    {"days": WEEKDAYS, "start": "22:00", "end": "08:00"},
    {"days": ["Sat", "Sun"], "start": "00:00", "end": "24:00"},
]


def spec(windows: list[dict[str, Any]], tz: str = "UTC") -> IdlePoolSpec:
    return IdlePoolSpec.model_validate({"gpus": 8, "timezone": tz, "windows": windows})


def utc(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, s, tzinfo=UTC)


def local(tz: str, y: int, mo: int, d: int, h: int = 0, mi: int = 0, *, fold: int = 0) -> datetime:
    """The instant a wall clock in ``tz`` shows that time (``fold=1``: its second showing)."""
    return datetime(y, mo, d, h, mi, tzinfo=zoneinfo.ZoneInfo(tz), fold=fold).astimezone(UTC)


# 2026-03-02 is a Monday.
MON = (2026, 3, 2)


def at(day_offset: int, hour: int, minute: int = 0) -> datetime:
    return utc(*MON) + timedelta(days=day_offset, hours=hour, minutes=minute)


# --- crossing midnight, 24:00, merging ---------------------------------------------------


def test_window_crossing_midnight_belongs_to_its_start_day() -> None:
    s = spec([{"days": ["Mon"], "start": "22:00", "end": "08:00"}])
    assert not is_open(s, at(0, 21, 59))
    assert is_open(s, at(0, 22))
    assert is_open(s, at(1, 7, 59))
    assert not is_open(s, at(1, 8))
    # the listed day is the START day: nothing opens Sunday night into Monday
    assert not is_open(s, at(0, 1))
    assert not is_open(s, at(1, 23))


def test_sunday_night_window_wraps_into_next_week() -> None:
    s = spec([{"days": ["Sun"], "start": "22:00", "end": "02:00"}])
    assert is_open(s, at(0, 1))  # Monday 01:00, from the previous Sunday
    assert not is_open(s, at(0, 2))
    assert is_open(s, at(6, 23))
    st = state_at(s, at(0, 1))
    assert st == WindowState(True, at(0, 2), at(0, 2), at(6, 22))


def test_end_2400_runs_to_midnight() -> None:
    s = spec([{"days": ["Sat"], "start": "00:00", "end": "24:00"}])
    assert is_open(s, at(5, 0))
    assert is_open(s, at(5, 23, 59))
    assert not is_open(s, at(6, 0))
    assert state_at(s, at(5, 12)).closes_at == at(6, 0)


def test_adjacent_windows_merge_across_days() -> None:
    s = spec(
        [
            {"days": ["Fri"], "start": "22:00", "end": "08:00"},
            {"days": ["Sat"], "start": "00:00", "end": "24:00"},
        ]
    )
    assert open_intervals(s, at(0, 0), at(7, 0)) == [(at(4, 22), at(6, 0))]
    st = state_at(s, at(4, 23))
    assert st.open and st.closes_at == at(6, 0) and st.next_transition == at(6, 0)
    # and on into Sunday's own window when one is listed (adjacent at Sun 00:00)
    s2 = spec(
        [
            {"days": ["Fri"], "start": "22:00", "end": "08:00"},
            {"days": ["Sat", "Sun"], "start": "00:00", "end": "24:00"},
        ]
    )
    assert open_intervals(s2, at(0, 0), at(7, 0)) == [(at(4, 22), at(7, 0))]


def test_overlapping_windows_merge() -> None:
    s = spec(
        [
            {"days": ["Tue"], "start": "10:00", "end": "14:00"},
            {"days": ["Tue"], "start": "12:00", "end": "18:00"},
            {"days": ["Tue"], "start": "11:00", "end": "12:00"},
            {"days": ["Tue"], "start": "19:00", "end": "20:00"},
        ]
    )
    assert open_intervals(s, at(0, 0), at(7, 0)) == [
        (at(1, 10), at(1, 18)),
        (at(1, 19), at(1, 20)),
    ]
    assert state_at(s, at(1, 13)) == WindowState(True, at(1, 18), at(1, 18), at(1, 19))


def test_nights_and_weekends_week() -> None:
    s = spec(NIGHTS_AND_WEEKENDS)
    spans = open_intervals(s, at(0, 0), at(7, 0))
    # Monday 00:00–22:00 is closed: Sunday's window ends at 24:00, Monday's starts at 22:00
    assert not is_open(s, at(0, 0))
    assert spans == [
        (at(0, 22), at(1, 8)),
        (at(1, 22), at(2, 8)),
        (at(2, 22), at(3, 8)),
        (at(3, 22), at(4, 8)),
        (at(4, 22), at(7, 0)),
    ]
    assert schedule_for(s).open_seconds(at(0, 0), at(7, 0)) == 90 * 3600


def test_open_intervals_are_clipped_to_the_range() -> None:
    s = spec([{"days": WEEKDAYS, "start": "22:00", "end": "08:00"}])
    assert open_intervals(s, at(1, 3), at(1, 23)) == [(at(1, 3), at(1, 8)), (at(1, 22), at(1, 23))]
    assert open_intervals(s, at(1, 12), at(1, 12)) == []
    with pytest.raises(ValueError, match="before start"):
        open_intervals(s, at(2, 0), at(1, 0))


# --- next transition ----------------------------------------------------------------------


def test_state_when_closed_and_open() -> None:
    s = spec(NIGHTS_AND_WEEKENDS)
    closed = state_at(s, at(2, 12))  # Wed noon
    assert closed == WindowState(False, at(2, 22), at(3, 8), at(2, 22))
    opened = state_at(s, at(2, 22))  # exactly at the opening: open
    assert opened == WindowState(True, at(3, 8), at(3, 8), at(3, 22))
    assert not state_at(s, at(3, 8)).open  # exactly at the close: closed
    weekend = state_at(s, at(5, 12))
    assert weekend == WindowState(True, at(7, 0), at(7, 0), at(7, 22))


def test_walking_transitions_with_a_fake_clock_covers_weeks_in_milliseconds() -> None:
    # a year of Berlin nights and weekends, both DST changes included, one step per transition
    s = spec(NIGHTS_AND_WEEKENDS, "Europe/Berlin")
    start = local("Europe/Berlin", 2026, 1, 5)  # a Monday, 00:00 local
    end = local("Europe/Berlin", 2027, 1, 4)  # 52 weeks later
    clock = FakeClock(start)
    began = _time.perf_counter()
    flips = 0
    open_hours = 0.0
    while True:
        st = state_at(s, clock.now())
        assert st.next_transition is not None and st.next_transition > clock.now()
        if st.next_transition > end:
            break
        if st.open:
            open_hours += (st.next_transition - clock.now()).total_seconds() / 3600
        clock.set(st.next_transition)
        flips += 1
    assert flips == 52 * 5 * 2  # five open spans a week, each opens and closes
    # the spring weekend is an hour shorter and the autumn one an hour longer
    assert open_hours == 52 * 90
    assert schedule_for(s).open_seconds(start, end) == 52 * 90 * 3600
    assert _time.perf_counter() - began < 1.0


def test_always_open_has_no_next_transition() -> None:
    every = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
    for windows in (
        [{"days": every, "start": "00:00", "end": "24:00"}],
        [
            {"days": every, "start": "12:00", "end": "24:00"},
            {"days": every, "start": "00:00", "end": "12:00"},
        ],
        [
            {"days": every, "start": "06:00", "end": "06:30"},
            {"days": every, "start": "06:30", "end": "06:00"},
        ],
    ):
        for tz in ("UTC", "Europe/Berlin", "America/New_York"):
            s = spec(windows, tz)
            for instant in (utc(2026, 3, 29, 1), utc(2026, 10, 25, 1), utc(2026, 7, 1, 12)):
                st = state_at(s, instant)
                assert st.open and st.always_open, (windows, tz, instant)
                assert st.next_transition is None and st.closes_at is None and st.opens_at is None


def test_never_open_in_lookahead_is_reported_as_none() -> None:
    # a window wholly inside the spring-forward gap exists on that Sunday only in name
    sched = Schedule("Europe/Berlin", [((6,), 2 * 60 + 10, 2 * 60 + 40)])
    st = sched.state_at(local("Europe/Berlin", 2026, 3, 28, 12))
    # the gap Sunday has no opening; the next Sunday's does
    assert st.opens_at == local("Europe/Berlin", 2026, 4, 5, 2, 10)


# --- daylight saving time -----------------------------------------------------------------

DST_CASES = [
    # zone, Saturday before the change (spring), Saturday before the change (fall)
    ("Europe/Berlin", date(2026, 3, 28), date(2026, 10, 24)),
    ("America/New_York", date(2026, 3, 7), date(2026, 10, 31)),
]


@pytest.mark.parametrize(("tz", "spring", "fall"), DST_CASES)
def test_night_window_keeps_local_times_across_dst(tz: str, spring: date, fall: date) -> None:
    s = spec([{"days": ["Sat"], "start": "22:00", "end": "08:00"}], tz)
    for saturday, hours in ((spring, 9), (fall, 11)):
        opens = local(tz, saturday.year, saturday.month, saturday.day, 22)
        sunday = saturday + timedelta(days=1)
        closes = local(tz, sunday.year, sunday.month, sunday.day, 8)
        assert (closes - opens) == timedelta(hours=hours)
        st = state_at(s, opens - timedelta(hours=1))
        assert st == WindowState(False, opens, closes, opens)
        assert state_at(s, opens).open
        assert state_at(s, closes - timedelta(seconds=1)).open
        assert not state_at(s, closes).open
        assert open_intervals(s, opens - timedelta(days=1), closes + timedelta(days=1)) == [
            (opens, closes)
        ]
        # the local rendering says 22:00 and 08:00 with the offsets of the day
        assert format_local(opens, tz).startswith("22:00 ")
        assert format_local(closes, tz).startswith("08:00 ")


def test_spring_forward_gap_boundaries_mean_the_jump() -> None:
    tz = "Europe/Berlin"  # 2026-03-29 02:00 CET -> 03:00 CEST at 01:00 UTC
    jump = utc(2026, 3, 29, 1)
    starts_in_gap = Schedule(tz, [((6,), 2 * 60 + 30, 5 * 60)])
    assert starts_in_gap.open_intervals(utc(2026, 3, 28), utc(2026, 3, 30)) == [
        (jump, local(tz, 2026, 3, 29, 5))
    ]
    ends_in_gap = Schedule(tz, [((5,), 22 * 60, 2 * 60 + 30)])
    assert ends_in_gap.open_intervals(utc(2026, 3, 28), utc(2026, 3, 30)) == [
        (local(tz, 2026, 3, 28, 22), jump)
    ]
    inside_gap = Schedule(tz, [((6,), 2 * 60 + 10, 2 * 60 + 40)])
    assert inside_gap.open_intervals(utc(2026, 3, 28), utc(2026, 3, 30)) == []


def test_fall_back_fold_boundaries_mean_the_first_occurrence() -> None:
    tz = "Europe/Berlin"  # 2026-10-25 03:00 CEST -> 02:00 CET at 01:00 UTC
    first_0230 = utc(2026, 10, 25, 0, 30)
    assert local(tz, 2026, 10, 25, 2, 30) == first_0230
    ends_in_fold = Schedule(tz, [((5,), 22 * 60, 2 * 60 + 30)])
    assert ends_in_fold.open_intervals(utc(2026, 10, 24), utc(2026, 10, 26)) == [
        (local(tz, 2026, 10, 24, 22), first_0230)
    ]
    # closed during the rest of the fold, even when the wall clock shows 02:15 again
    assert not ends_in_fold.is_open(local(tz, 2026, 10, 25, 2, 15, fold=1))
    starts_in_fold = Schedule(tz, [((6,), 2 * 60 + 30, 4 * 60)])
    assert starts_in_fold.open_intervals(utc(2026, 10, 24), utc(2026, 10, 26)) == [
        (first_0230, local(tz, 2026, 10, 25, 4))  # 2.5 h long
    ]


# --- property: agree with a brute-force minute scan ---------------------------------------


def _mono_wall(t: datetime, tz: zoneinfo.ZoneInfo) -> datetime:
    """The highest wall time the clock has shown up to ``t`` (minute grid)."""
    wall = t.astimezone(tz)
    before = (t - timedelta(hours=3)).astimezone(tz).utcoffset()
    now = wall.utcoffset()
    assert before is not None and now is not None
    if before <= now:  # no fall-back in the last 3 hours: the wall clock never went back
        return wall.replace(tzinfo=None)
    # the clocks went back at T in (t - 3h, t]: the high-water mark is the last minute before T
    lo, hi = 0, 180  # minutes back: offset at t - lo is `now`, at t - hi is `before`
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if (t - timedelta(minutes=mid)).astimezone(tz).utcoffset() == before:
            hi = mid
        else:
            lo = mid
    peak = (t - timedelta(minutes=hi)).astimezone(tz).replace(tzinfo=None)
    return max(peak, wall.replace(tzinfo=None))


def brute_open(windows: Sequence[WindowTuple], tz: zoneinfo.ZoneInfo, t: datetime) -> bool:
    mono = _mono_wall(t, tz)
    for days, start, end in windows:
        for back in (0, 1):
            d = mono.date() - timedelta(days=back)
            if d.weekday() not in days:
                continue
            midnight = datetime.combine(d, time())
            s = midnight + timedelta(minutes=start)
            e = midnight + timedelta(minutes=end if end > start else end + 1440)
            if s <= mono < e:
                return True
    return False


ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Asia/Shanghai", "Australia/Lord_Howe"]


def _random_windows(rng: random.Random) -> list[WindowTuple]:
    out: list[WindowTuple] = []
    for _ in range(rng.randint(1, 4)):
        days = tuple(sorted(rng.sample(range(7), rng.randint(1, 7))))
        # favour the small hours, where the clocks change
        start = rng.choice([rng.randrange(0, 1440), rng.randrange(60, 240)])
        end = rng.choice([1440, rng.randrange(1, 1441), rng.randrange(60, 240)])
        if end == start:
            end = 1440 if start else 60
        out.append((days, start, end))
    return out


def test_random_instants_over_a_year_agree_with_brute_force() -> None:
    rng = random.Random(20260329)
    year = int(timedelta(days=365).total_seconds() // 60)
    for trial in range(60):
        tzname = ZONES[trial % len(ZONES)]
        tz = zoneinfo.ZoneInfo(tzname)
        windows = _random_windows(rng)
        sched = Schedule(tzname, windows)
        for _ in range(60):
            t = utc(2026, 1, 1) + timedelta(minutes=rng.randrange(year))
            st = sched.state_at(t)
            assert st.open == brute_open(windows, tz, t), (tzname, windows, t)
        # the next transition is where the brute force flips, and not earlier
        t = utc(2026, 1, 1) + timedelta(minutes=rng.randrange(year))
        st = sched.state_at(t)
        if st.next_transition is None:
            continue
        assert brute_open(windows, tz, st.next_transition) != st.open
        probe = t
        while probe < st.next_transition:
            assert brute_open(windows, tz, probe) == st.open, (tzname, windows, t, probe)
            probe += timedelta(minutes=rng.choice([1, 7, 31]))


#: Fridays before the clocks change in 2026 (spring forward, fall back)
DST_FRIDAYS = {
    "Europe/Berlin": (date(2026, 3, 27), date(2026, 10, 23)),
    "America/New_York": (date(2026, 3, 6), date(2026, 10, 30)),
    "Australia/Lord_Howe": (date(2026, 10, 2), date(2026, 4, 3)),  # 30-minute shifts
}
SMALL_HOURS: list[WindowTuple] = [
    ((6,), 2 * 60 + 15, 2 * 60 + 45),  # starts and ends in the gap / the fold
    ((5,), 23 * 60, 2 * 60 + 30),  # crosses midnight, ends in the gap / the fold
    ((6,), 2 * 60 + 30, 5 * 60),  # starts in the gap / the fold
    ((6,), 1 * 60 + 45, 3 * 60 + 15),  # spans the change
    ((6,), 3 * 60, 3 * 60 + 1),  # one minute, right after it
]
NIGHTS: WindowTuple = ((0, 1, 2, 3, 4), 22 * 60, 8 * 60)
WEEKENDS: WindowTuple = ((5, 6), 0, 1440)


@pytest.mark.parametrize("tzname", sorted(DST_FRIDAYS))
def test_minute_scan_over_dst_weekends(tzname: str) -> None:
    tz = zoneinfo.ZoneInfo(tzname)
    schedules = [[NIGHTS, WEEKENDS], SMALL_HOURS, *([NIGHTS, w] for w in SMALL_HOURS)]
    for chosen in schedules:
        sched = Schedule(tzname, chosen)
        for friday in DST_FRIDAYS[tzname]:
            # Saturday 12:00 to Sunday 12:00 local: the night the clocks change
            t = local(tzname, friday.year, friday.month, friday.day + 1, 12)
            for _ in range(24 * 60):
                assert sched.is_open(t) == brute_open(chosen, tz, t), (tzname, chosen, t)
                t += timedelta(minutes=1)


# --- API objects, errors, caching, clocks -------------------------------------------------


def test_accepts_pool_spec_or_schedule_and_caches() -> None:
    pool = IdlePool.model_validate(
        {"metadata": {"name": "night"}, "spec": {"gpus": 8, "windows": NIGHTS_AND_WEEKENDS}}
    )
    s = spec(NIGHTS_AND_WEEKENDS)
    assert schedule_for(pool) is schedule_for(s) is schedule_for(schedule_for(s))
    assert state_at(pool, at(2, 23)) == state_at(s, at(2, 23))
    started = _time.perf_counter()
    t = at(0, 0)
    for _ in range(7 * 24 * 60):
        state_at(pool, t)
        t += timedelta(minutes=1)
    assert _time.perf_counter() - started < 2.0  # a simulated week minute by minute


def test_bad_input_is_a_clear_error() -> None:
    s = spec(NIGHTS_AND_WEEKENDS)
    with pytest.raises(ValueError, match="no time zone"):
        state_at(s, datetime(2026, 1, 1, 12))
    with pytest.raises(ValueError, match="timezone: 'Mars/Olympus' is not an IANA"):
        Schedule("Mars/Olympus", [((0,), 0, 60)])
    with pytest.raises(ValueError, match=r"windows\[0\].end"):
        Schedule("UTC", [((0,), 0, 1441)])
    with pytest.raises(ValueError, match="start and end are equal"):
        Schedule("UTC", [((0,), 60, 60)])
    with pytest.raises(ValueError, match="at least one window"):
        Schedule("UTC", [])


def test_format_local() -> None:
    assert format_local(utc(2026, 11, 23, 14), "Asia/Shanghai") == "22:00 +08:00 (Mon 2026-11-23)"
    assert format_local(utc(2026, 7, 1, 2), "America/New_York") == "22:00 -04:00 (Tue 2026-06-30)"
    assert format_local(utc(2026, 1, 1), "Asia/Kolkata") == "05:30 +05:30 (Thu 2026-01-01)"


def test_clocks() -> None:
    fake = FakeClock(utc(2026, 1, 1))
    assert fake.advance(90) == utc(2026, 1, 1, 0, 1, 30)
    assert fake.advance(timedelta(days=7)) == utc(2026, 1, 8, 0, 1, 30)
    fake.set(local("Asia/Shanghai", 2026, 1, 1, 8))
    assert fake.now() == utc(2026, 1, 1) and fake.now().tzinfo is UTC
    with pytest.raises(ValueError, match="no time zone"):
        fake.set(datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="non-negative"):
        fake.advance(-1)
    shifted = SystemClock(offset_seconds=3600)
    delta = shifted.now() - datetime.now(UTC)
    assert timedelta(minutes=59) < delta < timedelta(minutes=61)
    assert isinstance(shifted, Clock) and isinstance(fake, Clock)
    assert SystemClock().now().tzinfo is UTC
    with pytest.raises(ValueError, match="finite"):
        SystemClock(float("nan"))
