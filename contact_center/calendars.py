"""Business-hours calendars: when a team is open, and business time between two instants.

A calendar is an IANA time zone, weekly hours (per weekday a list of ``[start, end]`` wall-clock
intervals; ``end <= start`` crosses midnight, so ``["22:00", "06:00"]`` on Monday runs until
Tuesday 06:00; ``"24:00"`` ends a day), public holidays of a country (the ``holidays`` package,
optionally a subdivision) and custom closed dates; or ``always_open`` (24/7: never closes).

Rules:
- Every input and output is an aware datetime; outputs are UTC. Pure: no clock, no database.
- Open time is half-open: open at an interval's start, closed at its end.
- A holiday or closed date closes that whole local calendar day, including the part of an
  overnight interval that runs into it.
- Touching intervals merge: Monday 00:00-24:00 and Tuesday 00:00-24:00 never close at midnight.
- Daylight saving: a wall time is turned into an instant in the calendar's zone; one that does
  not exist (spring forward) means the first instant after the gap, an ambiguous one (fall
  back) the earlier instant. So on a spring-forward day 09:00-17:00 is 8 hours of real time,
  and 00:00-24:00 is 23 hours (25 on the fall-back day).
- Searches look ``HORIZON`` ahead: a calendar with no open time in that span has no
  ``next_open`` (``None``); one open throughout it has no ``next_close``.

The calendar is given as a JSON-able dict (an inbox's ``settings.business_hours``)::

    {"timezone": "Europe/Istanbul",
     "weekly": {"mon": [["09:00", "18:00"]], "fri": [["09:00", "12:00"], ["13:00", "18:00"]]},
     "holidays": {"country": "TR"}, "closed_dates": ["2026-12-31"]}
    {"always_open": true}
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import holidays as holidays_lib

__all__ = ["DAYS", "HORIZON", "Calendar", "CalendarError"]

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
HORIZON = timedelta(days=3 * 366)
_TIME = re.compile(r"^([01]\d|2[0-4]):([0-5]\d)$")
_KEYS = frozenset({"timezone", "weekly", "holidays", "closed_dates", "always_open"})
_ONE_DAY = timedelta(days=1)

Span = tuple[datetime, datetime]


class CalendarError(ValueError):
    """A calendar dict that cannot be used; the message names the field."""

    def __init__(self, field_name: str, problem: str) -> None:
        super().__init__(f"{field_name}: {problem}")
        self.field = field_name


@dataclass(frozen=True, slots=True)
class Interval:
    """Minutes after local midnight; ``end <= start`` means it ends the next day."""

    start: int
    end: int

    @property
    def overnight(self) -> bool:
        return self.end <= self.start


def _utc(value: datetime, name: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be an aware datetime (UTC), got a naive one")
    return value.astimezone(UTC)


@dataclass(frozen=True, eq=False)
class Calendar:
    timezone: ZoneInfo = field(default_factory=lambda: ZoneInfo("UTC"))
    weekly: tuple[tuple[Interval, ...], ...] = ((),) * 7  # Monday first
    closed_dates: frozenset[date] = frozenset()
    holiday_country: str | None = None
    holiday_subdivision: str | None = None
    always_open: bool = False
    _holidays: Any = field(default=None, repr=False)  # a holidays.HolidayBase or None

    # ---- parsing ------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, raw: object) -> Calendar:
        if not isinstance(raw, Mapping):
            raise CalendarError("business_hours", "must be an object")
        unknown = sorted(set(raw) - _KEYS)
        if unknown:
            raise CalendarError(unknown[0], f"unknown field (known: {', '.join(sorted(_KEYS))})")
        always = raw.get("always_open", False)
        if not isinstance(always, bool):
            raise CalendarError("always_open", "must be true or false")
        tz = _parse_zone(raw.get("timezone", "UTC"))
        if always:
            extra = [k for k in ("weekly", "holidays", "closed_dates") if raw.get(k)]
            if extra:
                raise CalendarError(
                    extra[0], "an always_open calendar has no hours, holidays or closed dates"
                )
            return cls(timezone=tz, always_open=True)
        weekly = _parse_weekly(raw.get("weekly"))
        country, subdiv, table = _parse_holidays(raw.get("holidays"))
        closed = _parse_dates(raw.get("closed_dates", []))
        return cls(
            timezone=tz,
            weekly=weekly,
            closed_dates=closed,
            holiday_country=country,
            holiday_subdivision=subdiv,
            _holidays=table,
        )

    def to_dict(self) -> dict[str, Any]:
        if self.always_open:
            return {"always_open": True, "timezone": self.timezone.key}
        out: dict[str, Any] = {
            "timezone": self.timezone.key,
            "weekly": {
                day: [[_fmt(i.start), _fmt(i.end)] for i in intervals]
                for day, intervals in zip(DAYS, self.weekly, strict=True)
                if intervals
            },
        }
        if self.holiday_country:
            out["holidays"] = {"country": self.holiday_country}
            if self.holiday_subdivision:
                out["holidays"]["subdivision"] = self.holiday_subdivision
        if self.closed_dates:
            out["closed_dates"] = [d.isoformat() for d in sorted(self.closed_dates)]
        return out

    # ---- questions ----------------------------------------------------------------------

    def is_closed_day(self, day: date) -> bool:
        """A holiday or custom closed date (the whole local day is closed)."""
        if day in self.closed_dates:
            return True
        return self._holidays is not None and day in self._holidays

    def is_open(self, at: datetime) -> bool:
        at = _utc(at, "at")
        if self.always_open:
            return True
        for start, end in self._spans(at - _ONE_DAY, at + _ONE_DAY):
            if start > at:
                return False
            if at < end:
                return True
        return False

    def next_open(self, at: datetime) -> datetime | None:
        """The earliest instant ``>= at`` when the calendar is open (``at`` itself if open)."""
        at = _utc(at, "at")
        if self.always_open:
            return at
        for start, end in self._spans(at, at + HORIZON):
            if end > at:
                return max(start, at)
        return None

    def next_close(self, at: datetime) -> datetime | None:
        """The earliest instant ``>= at`` when the calendar is closed (``at`` itself if closed);
        ``None`` if it stays open through the search horizon (always for 24/7)."""
        at = _utc(at, "at")
        if self.always_open:
            return None
        limit = at + HORIZON
        for start, end in self._spans(at, limit):
            if start > at:
                return at
            if end > at:
                return end if end < limit else None
        return at

    def add_business_time(self, start: datetime, duration: timedelta) -> datetime:
        """The instant at which ``duration`` of open time has passed since ``start``."""
        start = _utc(start, "start")
        if duration < timedelta(0):
            raise ValueError("duration must not be negative")
        if self.always_open or not duration:
            return start + duration
        remaining = duration
        limit = start + HORIZON
        for span_start, span_end in self._spans(start, limit):
            begin, end = max(span_start, start), min(span_end, limit)
            if end <= begin:
                continue
            if remaining <= end - begin:
                return begin + remaining
            remaining -= end - begin
        raise ValueError(f"the calendar has less than {duration} of open time within {HORIZON}")

    def business_time_between(self, a: datetime, b: datetime) -> timedelta:
        """Open time in ``[a, b)``; negative when ``b`` is before ``a``."""
        a, b = _utc(a, "a"), _utc(b, "b")
        if b < a:
            return -self.business_time_between(b, a)
        if self.always_open:
            return b - a
        total = timedelta(0)
        for start, end in self._spans(a, b):
            begin, finish = max(start, a), min(end, b)
            if finish > begin:
                total += finish - begin
        return total

    # ---- the open spans, as UTC instants --------------------------------------------------

    def _spans(self, lo: datetime, hi: datetime) -> Iterator[Span]:
        """Merged open spans in start order, from the one containing or following ``lo`` up to
        the last one starting before ``hi`` (its end may lie after ``hi``)."""
        current: Span | None = None
        for start, end in self._raw_spans(lo, hi):
            if current is not None and start <= current[1]:
                current = (current[0], max(current[1], end))
                continue
            if current is not None and current[1] > lo:
                yield current
            if start >= hi:
                return
            current = (start, end)
        if current is not None and current[1] > lo:
            yield current

    def _raw_spans(self, lo: datetime, hi: datetime) -> Iterator[Span]:
        """Unmerged spans of each local day from the day before ``lo`` to the day after
        ``hi``, in start order (a day's intervals all start on that day)."""
        day = lo.astimezone(self.timezone).date() - _ONE_DAY
        last = hi.astimezone(self.timezone).date() + _ONE_DAY
        while day <= last:
            midnight = datetime.combine(day, time())
            pieces: list[tuple[datetime, datetime]] = []
            for interval in self.weekly[day.weekday()]:
                begin = midnight + timedelta(minutes=interval.start)
                end = midnight + timedelta(minutes=interval.end)
                if interval.overnight:
                    end += _ONE_DAY
                next_midnight = midnight + _ONE_DAY
                if end > next_midnight:  # split so each piece lies in one local day
                    pieces.append((begin, next_midnight))
                    pieces.append((next_midnight, end))
                else:
                    pieces.append((begin, end))
            pieces.sort()
            for begin, end in pieces:
                if self.is_closed_day(begin.date()):
                    continue
                span = (self._instant(begin), self._instant(end))
                if span[1] > span[0]:
                    yield span
            day += _ONE_DAY

    def _instant(self, wall: datetime) -> datetime:
        """The UTC instant of a naive local wall time (see the module's DST rule)."""
        earlier = wall.replace(tzinfo=self.timezone, fold=0).astimezone(UTC)
        if earlier.astimezone(self.timezone).replace(tzinfo=None) == wall:
            return earlier
        # In a spring-forward gap: fold=0 reads the wall time with the offset before the
        # transition (an instant after it), fold=1 with the offset after (an instant before
        # it). The transition lies between; find it to the second.
        lo = wall.replace(tzinfo=self.timezone, fold=1).astimezone(UTC)
        hi = earlier
        before = lo.astimezone(self.timezone).utcoffset()
        while hi - lo > timedelta(seconds=1):
            mid = lo + (hi - lo) // 2
            if mid.astimezone(self.timezone).utcoffset() == before:
                lo = mid
            else:
                hi = mid
        return hi


# ---- parsing helpers ------------------------------------------------------------------------


def _parse_zone(value: object) -> ZoneInfo:
    if not isinstance(value, str) or not value:
        raise CalendarError("timezone", "must be an IANA time zone name like 'Europe/Istanbul'")
    try:
        return ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise CalendarError("timezone", f"unknown time zone {value!r}") from None


def _minutes(value: object, name: str, *, allow_24: bool) -> int:
    match = _TIME.match(value) if isinstance(value, str) else None
    if match is None:
        raise CalendarError(name, f"must be a time 'HH:MM', got {value!r}")
    hours, minutes = int(match[1]), int(match[2])
    if hours == 24 and (minutes or not allow_24):
        raise CalendarError(name, "24:00 is only allowed as an end time")
    return hours * 60 + minutes


def _parse_weekly(raw: object) -> tuple[tuple[Interval, ...], ...]:
    if raw is None:
        raise CalendarError("weekly", "required unless always_open is true")
    if not isinstance(raw, Mapping):
        raise CalendarError("weekly", "must map day names (mon..sun) to lists of intervals")
    unknown = sorted(set(raw) - set(DAYS))
    if unknown:
        raise CalendarError(f"weekly.{unknown[0]}", f"unknown day (use {', '.join(DAYS)})")
    week: list[tuple[Interval, ...]] = []
    for day in DAYS:
        items = raw.get(day) or []
        if not isinstance(items, list):
            raise CalendarError(f"weekly.{day}", "must be a list of [start, end] pairs")
        intervals = []
        for i, pair in enumerate(items):
            name = f"weekly.{day}[{i}]"
            if not isinstance(pair, list | tuple) or len(pair) != 2:
                raise CalendarError(name, "must be a [start, end] pair like ['09:00', '18:00']")
            start = _minutes(pair[0], name + ".start", allow_24=False)
            end = _minutes(pair[1], name + ".end", allow_24=True)
            if start == end % 1440 and end != 1440:
                raise CalendarError(name, "start and end are equal (use 00:00-24:00 for all day)")
            intervals.append(Interval(start, end))
        week.append(tuple(sorted(intervals, key=lambda i: (i.start, i.end))))
    if not any(week):
        raise CalendarError("weekly", "has no open hours (use always_open for 24/7)")
    return tuple(week)


def _parse_holidays(raw: object) -> tuple[str | None, str | None, Any]:
    if raw is None:
        return None, None, None
    if not isinstance(raw, Mapping):
        raise CalendarError("holidays", "must be an object like {'country': 'TR'}")
    unknown = sorted(set(raw) - {"country", "subdivision"})
    if unknown:
        raise CalendarError(f"holidays.{unknown[0]}", "unknown field (country, subdivision)")
    country, subdiv = raw.get("country"), raw.get("subdivision")
    if not isinstance(country, str) or not country:
        raise CalendarError("holidays.country", "must be an ISO 3166 country code like 'TR'")
    if subdiv is not None and not isinstance(subdiv, str):
        raise CalendarError("holidays.subdivision", "must be a string")
    code = country.upper()
    if code not in holidays_lib.list_supported_countries():
        raise CalendarError("holidays.country", f"no holiday data for country {country!r}")
    make: Callable[..., Any] = holidays_lib.country_holidays
    try:
        table = make(code, subdiv=subdiv)
    except NotImplementedError:
        raise CalendarError(
            "holidays.subdivision", f"{code} has no subdivision {subdiv!r}"
        ) from None
    return code, subdiv, table


def _parse_dates(raw: object) -> frozenset[date]:
    if not isinstance(raw, list):
        raise CalendarError("closed_dates", "must be a list of 'YYYY-MM-DD' dates")
    out: set[date] = set()
    for i, value in enumerate(raw):
        try:
            out.add(date.fromisoformat(value))
        except (TypeError, ValueError):
            raise CalendarError(
                f"closed_dates[{i}]", f"not a date 'YYYY-MM-DD': {value!r}"
            ) from None
    return frozenset(out)


def _fmt(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"
