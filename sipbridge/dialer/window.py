"""Calling windows: when a callee may be called, in the callee's own time zone.

A window is a daily local time range (start inclusive, end exclusive) on some weekdays, minus holidays (local
dates). All instants in and out are timezone-aware UTC ``datetime``; the caller passes ``now`` (the clock is
injected), so nothing here reads the real time. Local times are converted with ``zoneinfo``, which handles
DST: on a spring-forward day a start inside the skipped hour (e.g. 02:30) means the first instant after the
gap; on a fall-back day an ambiguous start means its first occurrence.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["WEEKDAYS", "CallingWindow", "Weekday", "resolve_timezone"]

Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_SEARCH_DAYS = 400  # a year plus slack: enough to step over any holiday list on allowed weekdays


def resolve_timezone(name: str) -> ZoneInfo:
    """IANA zone by name ("America/New_York"), with an error naming it."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {name!r} (expected an IANA name like 'America/New_York')"
        ) from None


def _require_utc(now: datetime) -> datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"now must be timezone-aware (UTC), got naive {now.isoformat()}")
    return now.astimezone(UTC)


class CallingWindow(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    start: time = Field(time(9, 0), description="Local time calls may start (inclusive).")
    end: time = Field(time(17, 0), description="Local time after which no call starts (exclusive).")
    days: tuple[Weekday, ...] = Field(("mon", "tue", "wed", "thu", "fri"), description="Weekdays allowed.")
    holidays: tuple[date, ...] = Field((), description="Local dates with no calls.")

    @field_validator("start", "end")
    @classmethod
    def _naive(cls, value: time) -> time:
        if value.tzinfo is not None:
            raise ValueError("must be a local time without a zone (the callee's zone applies)")
        return value

    @field_validator("days")
    @classmethod
    def _days(cls, value: tuple[Weekday, ...]) -> tuple[Weekday, ...]:
        if not value:
            raise ValueError("at least one weekday is needed")
        if len(set(value)) != len(value):
            raise ValueError("a weekday is listed more than once")
        return value

    @model_validator(mode="after")
    def _order(self) -> CallingWindow:
        if self.end <= self.start:
            raise ValueError(
                f"end ({self.end:%H:%M}) must be after start ({self.start:%H:%M}); windows over midnight "
                "are not supported"
            )
        return self

    def _day_allowed(self, day: date) -> bool:
        return WEEKDAYS[day.weekday()] in self.days and day not in self.holidays

    def allows(self, now: datetime, tz: ZoneInfo | str) -> bool:
        """May a call start at ``now`` for a callee in ``tz``?"""
        zone = resolve_timezone(tz) if isinstance(tz, str) else tz
        local = _require_utc(now).astimezone(zone)
        return self._day_allowed(local.date()) and self.start <= local.time().replace(tzinfo=None) < self.end

    def next_allowed(self, now: datetime, tz: ZoneInfo | str) -> datetime:
        """The first instant at or after ``now`` (UTC) when a call may start; ``now`` itself if allowed."""
        zone = resolve_timezone(tz) if isinstance(tz, str) else tz
        now_utc = _require_utc(now)
        if self.allows(now_utc, zone):
            return now_utc
        today = now_utc.astimezone(zone).date()
        for offset in range(_SEARCH_DAYS):
            day = today + timedelta(days=offset)
            if not self._day_allowed(day):
                continue
            # now is outside the window, so on an allowed day it is either before opening (wait for it) or
            # after closing (try the next day).
            opens = _local_instant(day, self.start, zone)
            if now_utc < opens:
                return opens
        raise ValueError(f"no allowed day within {_SEARCH_DAYS} days (days={self.days}, holidays)")


def _local_instant(day: date, at: time, zone: ZoneInfo) -> datetime:
    """UTC instant of wall-clock ``at`` on ``day`` in ``zone``. A time skipped by DST maps past the gap
    (fold=0 reads it with the pre-transition offset, which lands after the gap); an ambiguous one to its
    first occurrence."""
    return datetime.combine(day, at, tzinfo=zone).astimezone(UTC)
