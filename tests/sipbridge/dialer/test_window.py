"""Calling windows in the callee's zone, with an injected "now" (no real clock), across DST changes."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

import pytest
from pydantic import ValidationError

from sipbridge.dialer.window import CallingWindow, resolve_timezone

NY = "America/New_York"
WEEKDAYS_9_TO_5 = CallingWindow()


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# (now UTC, zone, expected next_allowed UTC). 2024-03-10: US spring forward (EST -5 -> EDT -4);
# 2024-11-03: US fall back; 2024-03-31: EU spring forward; 2024-10-27 EU fall back.
CASES = [
    # inside the window: now itself
    (utc(2024, 3, 6, 15, 0), NY, utc(2024, 3, 6, 15, 0)),  # Wed 10:00 EST
    (utc(2024, 3, 6, 14, 0), NY, utc(2024, 3, 6, 14, 0)),  # exactly 09:00 EST: start is inclusive
    # before opening: today 09:00
    (utc(2024, 3, 6, 12, 0), NY, utc(2024, 3, 6, 14, 0)),  # Wed 07:00 EST
    # at closing (end exclusive): next weekday 09:00
    (utc(2024, 3, 6, 22, 0), NY, utc(2024, 3, 7, 14, 0)),  # Wed 17:00 EST
    # Friday evening before the US DST weekend: Monday 09:00 is EDT, one hour earlier in UTC
    (utc(2024, 3, 8, 22, 0), NY, utc(2024, 3, 11, 13, 0)),
    # Friday evening before the US fall-back weekend: Monday 09:00 EST
    (utc(2024, 11, 1, 21, 0), NY, utc(2024, 11, 4, 14, 0)),
    # Saturday in Tokyo (no DST) -> Monday 09:00 JST = Sunday 24:00 UTC
    (utc(2024, 3, 9, 3, 0), "Asia/Tokyo", utc(2024, 3, 11, 0, 0)),
    # London the Friday before EU spring forward (31 Mar): Monday 09:00 BST = 08:00 UTC
    (utc(2024, 3, 29, 18, 0), "Europe/London", utc(2024, 4, 1, 8, 0)),
    # a UTC instant on Tuesday that is still Monday evening in Los Angeles (closed): Tuesday 09:00 PDT
    (utc(2024, 6, 4, 2, 0), "America/Los_Angeles", utc(2024, 6, 4, 16, 0)),
]


@pytest.mark.parametrize(("now", "zone", "expected"), CASES)
def test_next_allowed(now: datetime, zone: str, expected: datetime) -> None:
    got = WEEKDAYS_9_TO_5.next_allowed(now, zone)
    assert got == expected
    assert got.tzinfo is not None and got.utcoffset() == timedelta(0)
    assert WEEKDAYS_9_TO_5.allows(got, zone)
    assert WEEKDAYS_9_TO_5.allows(now, zone) == (now == expected)


def test_every_minute_of_a_dst_week_agrees_with_allows() -> None:
    """Brute force over the US spring-forward week: next_allowed is allowed, and nothing allowed lies
    between now and it (checked every 30 minutes)."""
    w = CallingWindow(start=time(8, 30), end=time(12, 0), days=("sat", "sun", "mon"))
    now = utc(2024, 3, 8, 0, 0)
    while now < utc(2024, 3, 13):
        nxt = w.next_allowed(now, NY)
        assert w.allows(nxt, NY)
        probe = now
        while probe < nxt:
            assert not w.allows(probe, NY)
            probe += timedelta(minutes=30)
        now += timedelta(minutes=30)


def test_start_inside_the_skipped_hour_opens_after_the_gap() -> None:
    w = CallingWindow(start=time(2, 30), end=time(5, 0), days=("sun",))
    # Sunday 2024-03-10 00:00 EST: 02:30 does not exist (clocks jump 02:00 -> 03:00 EDT); wall clock 02:30
    # read with the old offset is 07:30Z = 03:30 EDT, inside [02:30, 05:00).
    got = w.next_allowed(utc(2024, 3, 10, 5, 0), NY)
    assert got == utc(2024, 3, 10, 7, 30)
    assert w.allows(got, NY)


def test_ambiguous_start_takes_the_first_occurrence() -> None:
    w = CallingWindow(start=time(1, 30), end=time(4, 0), days=("sun",))
    # Sunday 2024-11-03 01:30 happens twice in New York; first is EDT (05:30Z).
    assert w.next_allowed(utc(2024, 11, 3, 4, 0), NY) == utc(2024, 11, 3, 5, 30)


def test_holidays_are_local_dates() -> None:
    w = CallingWindow(holidays=(date(2024, 12, 25), date(2024, 12, 26)))
    # Tuesday 24 Dec 17:00 EST -> Wed and Thu are holidays -> Friday 27th 09:00 EST.
    assert w.next_allowed(utc(2024, 12, 24, 22, 0), NY) == utc(2024, 12, 27, 14, 0)
    # 25 Dec 03:00 UTC is still 24 Dec in New York, but after hours: the holiday rule is per local date.
    assert not w.allows(utc(2024, 12, 25, 15, 0), NY)


def test_window_from_yaml_like_values() -> None:
    w = CallingWindow.model_validate(
        {"start": "08:00", "end": "20:00", "days": ["sat"], "holidays": ["2024-03-09"]}
    )
    assert w.next_allowed(utc(2024, 3, 8, 12, 0), "UTC") == utc(2024, 3, 16, 8, 0)


@pytest.mark.parametrize(
    ("values", "error"),
    [
        ({"start": "17:00", "end": "09:00"}, "must be after start"),
        ({"start": "09:00", "end": "09:00"}, "must be after start"),
        ({"days": []}, "at least one weekday"),
        ({"days": ["mon", "mon"]}, "more than once"),
        ({"days": ["monday"]}, "Input should be 'mon'"),
        ({"start": "25:00"}, "time"),
        ({"hours": 3}, "Extra inputs"),
    ],
)
def test_bad_windows(values: dict[str, object], error: str) -> None:
    with pytest.raises(ValidationError, match=error):
        CallingWindow.model_validate(values)


def test_bad_zone_and_naive_now() -> None:
    with pytest.raises(ValueError, match="unknown time zone 'Mars/Olympus'"):
        resolve_timezone("Mars/Olympus")
    with pytest.raises(ValueError, match="timezone-aware"):
        WEEKDAYS_9_TO_5.next_allowed(datetime(2024, 3, 6, 15, 0), NY)
