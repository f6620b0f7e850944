"""Business-hours calendars: properties over random calendars and instants (hypothesis), and
examples for DST days, Turkish holidays, overnight hours and 24/7."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contact_center.calendars import DAYS, Calendar, CalendarError

WEEKDAYS = ["mon", "tue", "wed", "thu", "fri"]
ISTANBUL = ZoneInfo("Europe/Istanbul")
NEW_YORK = ZoneInfo("America/New_York")
BERLIN = ZoneInfo("Europe/Berlin")
ZONES = [
    "UTC",
    "Europe/Istanbul",
    "America/New_York",
    "Europe/Berlin",
    "Australia/Lord_Howe",  # 30-minute DST
    "America/Santiago",  # DST changes at midnight
    "Asia/Kathmandu",
]


def local(zone: ZoneInfo, *args: int) -> datetime:
    """A wall time in ``zone`` as a UTC instant (the earlier one when ambiguous)."""
    return datetime(*args, tzinfo=zone).astimezone(UTC)  # type: ignore[misc]


def office(zone: str = "Europe/Istanbul", **extra: object) -> Calendar:
    return Calendar.from_dict(
        {"timezone": zone, "weekly": {d: [["09:00", "18:00"]] for d in WEEKDAYS}, **extra}
    )


ALL_DAY = {d: [["00:00", "24:00"]] for d in DAYS}
H = timedelta(hours=1)

# ---- strategies ---------------------------------------------------------------------------

hhmm = st.integers(0, 47).map(lambda half_hours: f"{half_hours // 2:02d}:{half_hours % 2 * 30:02d}")


@st.composite
def intervals(draw: st.DrawFn) -> list[str]:
    start = draw(hhmm)
    end = draw(st.one_of(hhmm, st.just("24:00")).filter(lambda e: e != start))
    if start == "00:00" and end == "00:00":
        end = "24:00"
    return [start, end]


@st.composite
def calendars(draw: st.DrawFn) -> Calendar:
    weekly = {day: draw(st.lists(intervals(), max_size=3)) for day in DAYS}
    if not any(weekly.values()):
        weekly["wed"] = [["10:00", "11:30"]]
    raw: dict[str, object] = {"timezone": draw(st.sampled_from(ZONES)), "weekly": weekly}
    if draw(st.booleans()):
        raw["holidays"] = {"country": draw(st.sampled_from(["TR", "US", "DE"]))}
    raw["closed_dates"] = [
        d.isoformat()
        for d in draw(st.lists(st.dates(date(2025, 12, 1), date(2027, 2, 1)), max_size=20))
    ]
    return Calendar.from_dict(raw)


instants = st.datetimes(datetime(2026, 1, 1), datetime(2026, 12, 31), timezones=st.just(UTC)).map(
    lambda d: d.replace(microsecond=0)
)
durations = st.integers(0, 21 * 24 * 3600).map(lambda s: timedelta(seconds=s))
PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ---- properties ----------------------------------------------------------------------------


@PROPS
@given(calendars(), instants, durations)
def test_add_and_between_are_inverse(cal: Calendar, start: datetime, duration: timedelta) -> None:
    end = cal.add_business_time(start, duration)
    assert end >= start
    assert end.tzinfo == UTC
    assert cal.business_time_between(start, end) == duration
    if duration:
        # The deadline is the first instant with that much open time behind it: open just
        # before it, so it is never in the middle of closed time.
        assert cal.is_open(end - timedelta(microseconds=1))


@PROPS
@given(calendars(), instants, durations, durations)
def test_add_is_monotonic(cal: Calendar, start: datetime, d1: timedelta, d2: timedelta) -> None:
    small, large = sorted((d1, d2))
    assert cal.add_business_time(start, small) <= cal.add_business_time(start, large)


@PROPS
@given(calendars(), instants, instants, instants)
def test_between_is_additive_and_bounded(
    cal: Calendar, a: datetime, b: datetime, c: datetime
) -> None:
    a, b, c = sorted((a, b, c))
    ab, bc = cal.business_time_between(a, b), cal.business_time_between(b, c)
    assert timedelta(0) <= ab <= b - a
    assert ab + bc == cal.business_time_between(a, c)
    assert cal.business_time_between(b, a) == -ab
    # Going forward the same amount from a never overshoots b.
    assert cal.add_business_time(a, ab) <= b


@PROPS
@given(calendars(), instants)
def test_is_open_agrees_with_next_open_and_next_close(cal: Calendar, at: datetime) -> None:
    opens, closes = cal.next_open(at), cal.next_close(at)
    assert opens is not None  # every generated calendar has weekly hours
    if closes is None:  # open around the clock for the whole search horizon
        assert opens == at
        assert cal.business_time_between(at, at + timedelta(days=60)) == timedelta(days=60)
    elif cal.is_open(at):
        assert opens == at
        assert closes > at
        # Open all the way to the close, and closed right at it.
        assert cal.business_time_between(at, closes) == closes - at
        assert not cal.is_open(closes)
    else:
        assert closes == at
        assert opens > at
        assert cal.business_time_between(at, opens) == timedelta(0)
        assert cal.is_open(opens)
        assert not cal.is_open(opens - timedelta(microseconds=1))


@PROPS
@given(instants, durations, st.sampled_from(ZONES))
def test_always_open_is_wall_clock_arithmetic(
    start: datetime, duration: timedelta, zone: str
) -> None:
    cal = Calendar.from_dict({"always_open": True, "timezone": zone})
    end = cal.add_business_time(start, duration)
    assert end == start + duration
    assert cal.business_time_between(start, end) == duration
    assert cal.is_open(start)
    assert cal.next_open(start) == start
    assert cal.next_close(start) is None


@PROPS
@given(instants, durations, st.sampled_from(ZONES))
def test_all_day_every_day_never_closes_at_midnight_or_on_dst_days(
    start: datetime, duration: timedelta, zone: str
) -> None:
    cal = Calendar.from_dict({"timezone": zone, "weekly": ALL_DAY})
    assert cal.add_business_time(start, duration) == start + duration
    assert cal.is_open(start)
    assert cal.next_close(start) is None


# ---- examples: DST ---------------------------------------------------------------------------


def test_new_york_spring_forward_and_fall_back() -> None:
    cal = Calendar.from_dict(
        {"timezone": "America/New_York", "weekly": {"sun": [["00:00", "24:00"]]}}
    )
    sunday_spring, sunday_fall = date(2026, 3, 8), date(2026, 11, 1)
    for day, hours in ((sunday_spring, 23), (sunday_fall, 25), (date(2026, 3, 15), 24)):
        start = local(NEW_YORK, day.year, day.month, day.day)
        assert cal.business_time_between(start, start + 2 * timedelta(days=1)) == hours * H
        assert cal.next_close(start) == start + hours * H


def test_new_york_hours_that_touch_the_dst_hour() -> None:
    cal = Calendar.from_dict(
        {"timezone": "America/New_York", "weekly": {"sun": [["01:00", "04:00"]]}}
    )
    # Spring forward: 01:00 EST to 04:00 EDT is two real hours.
    spring = local(NEW_YORK, 2026, 3, 8)
    assert cal.business_time_between(spring, spring + 6 * H) == 2 * H
    # Fall back: 01:00 EDT to 04:00 EST is four.
    fall = local(NEW_YORK, 2026, 11, 1)
    assert cal.business_time_between(fall, fall + 8 * H) == 4 * H
    # 01:30 happens twice on the fall-back day; both are inside the hours.
    first = datetime(2026, 11, 1, 5, 30, tzinfo=UTC)  # 01:30 EDT
    second = datetime(2026, 11, 1, 6, 30, tzinfo=UTC)  # 01:30 EST
    assert cal.is_open(first)
    assert cal.is_open(second)


def test_opening_inside_the_spring_forward_gap_opens_when_the_clock_jumps() -> None:
    cal = Calendar.from_dict(
        {"timezone": "America/New_York", "weekly": {"sun": [["02:30", "05:00"]]}}
    )
    # 02:30 does not exist on 2026-03-08: the clocks go from 02:00 EST to 03:00 EDT (07:00 UTC).
    assert cal.next_open(local(NEW_YORK, 2026, 3, 8)) == datetime(2026, 3, 8, 7, 0, tzinfo=UTC)
    assert cal.next_close(datetime(2026, 3, 8, 7, 0, tzinfo=UTC)) == datetime(
        2026, 3, 8, 9, 0, tzinfo=UTC
    )
    # An ordinary Sunday: 02:30 EDT.
    assert cal.next_open(local(NEW_YORK, 2026, 3, 15)) == datetime(2026, 3, 15, 6, 30, tzinfo=UTC)


def test_berlin_office_hours_across_both_transitions() -> None:
    cal = Calendar.from_dict(
        {"timezone": "Europe/Berlin", "weekly": ALL_DAY | {"sat": [], "sun": []}}
    )
    # Sunday 2026-03-29 02:00 -> 03:00: a 24/7 Berlin calendar would have 23 hours that day.
    assert (
        Calendar.from_dict({"timezone": "Europe/Berlin", "weekly": ALL_DAY}).business_time_between(
            local(BERLIN, 2026, 3, 29), local(BERLIN, 2026, 3, 30)
        )
        == 23 * H
    )
    # Friday 17:00 Berlin + 2 business hours lands on Monday 01:00 (weekends closed), whichever
    # side of the transition: before it, Berlin is UTC+1; after, UTC+2.
    assert cal.add_business_time(local(BERLIN, 2026, 3, 27, 23), 2 * H) == local(
        BERLIN, 2026, 3, 30, 1
    )
    assert cal.add_business_time(local(BERLIN, 2026, 10, 23, 23), 2 * H) == local(
        BERLIN, 2026, 10, 26, 1
    )
    nine_to_five = office("Europe/Berlin")
    # Monday after spring forward: 09:00 is 07:00 UTC (it was 08:00 UTC the Monday before).
    assert nine_to_five.next_open(local(BERLIN, 2026, 3, 28)) == datetime(
        2026, 3, 30, 7, 0, tzinfo=UTC
    )
    assert nine_to_five.next_open(local(BERLIN, 2026, 3, 21)) == datetime(
        2026, 3, 23, 8, 0, tzinfo=UTC
    )


# ---- examples: holidays, overnight, 24/7 -----------------------------------------------------


def test_turkish_holidays_close_the_day() -> None:
    cal = office(holidays={"country": "TR"})
    # Republic Day, Thursday 29 October 2026.
    assert not cal.is_open(local(ISTANBUL, 2026, 10, 29, 12))
    assert cal.is_open(local(ISTANBUL, 2026, 10, 30, 12))
    assert cal.next_open(local(ISTANBUL, 2026, 10, 28, 19)) == local(ISTANBUL, 2026, 10, 30, 9)
    # Ramazan Bayramı (Eid al-Fitr) 2026 starts on Friday 20 March  # noqa: RUF003
    # (the holidays package's data): a question on Thursday at 17:00 with a 2-hour target is
    # due on Monday at 10:00.
    assert not cal.is_open(local(ISTANBUL, 2026, 3, 20, 12))
    assert cal.add_business_time(local(ISTANBUL, 2026, 3, 19, 17), 2 * H) == local(
        ISTANBUL, 2026, 3, 23, 10
    )
    without = office()
    assert without.is_open(local(ISTANBUL, 2026, 10, 29, 12))
    assert without.is_open(local(ISTANBUL, 2026, 3, 20, 12))


def test_custom_closed_dates() -> None:
    cal = office(closed_dates=["2026-12-31"])
    assert not cal.is_open(local(ISTANBUL, 2026, 12, 31, 10))
    assert cal.is_open(local(ISTANBUL, 2026, 12, 30, 10))
    week = cal.business_time_between(local(ISTANBUL, 2026, 12, 28), local(ISTANBUL, 2027, 1, 2))
    assert week == 4 * 9 * H


def test_overnight_hours_cross_midnight() -> None:
    cal = Calendar.from_dict(
        {"timezone": "Europe/Istanbul", "weekly": {"mon": [["22:00", "06:00"]]}}
    )
    monday = (2026, 6, 1)
    assert not cal.is_open(local(ISTANBUL, *monday, 21, 59))
    assert cal.is_open(local(ISTANBUL, *monday, 22, 0))
    assert cal.is_open(local(ISTANBUL, 2026, 6, 2, 5, 59))
    assert not cal.is_open(local(ISTANBUL, 2026, 6, 2, 6, 0))
    assert cal.next_close(local(ISTANBUL, *monday, 23)) == local(ISTANBUL, 2026, 6, 2, 6)
    assert cal.add_business_time(local(ISTANBUL, *monday, 12), 3 * H) == local(
        ISTANBUL, 2026, 6, 2, 1
    )
    # A closed Tuesday cuts the overnight shift at midnight.
    cut = Calendar.from_dict(
        {
            "timezone": "Europe/Istanbul",
            "weekly": {"mon": [["22:00", "06:00"]]},
            "closed_dates": ["2026-06-02"],
        }
    )
    assert cut.next_close(local(ISTANBUL, *monday, 23)) == local(ISTANBUL, 2026, 6, 2)
    # Overnight Sunday -> Monday with Monday's own hours: one stretch, no close at 09:00.
    joined = Calendar.from_dict(
        {"timezone": "UTC", "weekly": {"sun": [["20:00", "09:00"]], "mon": [["09:00", "17:00"]]}}
    )
    sunday_night = datetime(2026, 6, 7, 21, tzinfo=UTC)
    assert joined.next_close(sunday_night) == datetime(2026, 6, 8, 17, tzinfo=UTC)


def test_always_open_never_closes_at_midnight() -> None:
    cal = Calendar.from_dict({"always_open": True, "timezone": "Europe/Istanbul"})
    for minute in range(-2, 3):
        assert cal.is_open(local(ISTANBUL, 2027, 1, 1) + timedelta(minutes=minute))
    assert cal.next_close(local(ISTANBUL, 2026, 12, 31, 23, 59)) is None
    assert cal.to_dict() == {"always_open": True, "timezone": "Europe/Istanbul"}


def test_naive_datetimes_and_negative_durations_are_refused() -> None:
    cal = office()
    with pytest.raises(ValueError, match="aware"):
        cal.is_open(datetime(2026, 1, 1, 12))
    with pytest.raises(ValueError, match="negative"):
        cal.add_business_time(datetime(2026, 1, 1, tzinfo=UTC), -H)


def test_round_trip_through_dict() -> None:
    raw = {
        "timezone": "Europe/Istanbul",
        "weekly": {
            "mon": [["09:00", "18:00"]],
            "sat": [["22:00", "02:00"]],
            "sun": [["00:00", "24:00"]],
        },
        "holidays": {"country": "US", "subdivision": "CA"},
        "closed_dates": ["2026-12-31"],
    }
    assert Calendar.from_dict(raw).to_dict() == raw


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ([], "business_hours"),
        ({"weekly": {"mon": [["09:00", "18:00"]]}, "tz": "UTC"}, "tz"),
        ({"timezone": "Mars/Olympus", "weekly": {"mon": [["09:00", "18:00"]]}}, "timezone"),
        ({"timezone": 3, "weekly": {"mon": [["09:00", "18:00"]]}}, "timezone"),
        ({"timezone": "UTC"}, "weekly"),
        ({"weekly": {}}, "weekly"),
        ({"weekly": {"monday": [["09:00", "18:00"]]}}, "weekly.monday"),
        ({"weekly": {"mon": "09:00-18:00"}}, "weekly.mon"),
        ({"weekly": {"mon": [["09:00"]]}}, "weekly.mon[0]"),
        ({"weekly": {"mon": [["9am", "18:00"]]}}, "weekly.mon[0].start"),
        ({"weekly": {"mon": [["09:00", "18:60"]]}}, "weekly.mon[0].end"),
        ({"weekly": {"mon": [["24:00", "06:00"]]}}, "weekly.mon[0].start"),
        ({"weekly": {"mon": [["09:00", "18:00"], ["10:00", "10:00"]]}}, "weekly.mon[1]"),
        ({"weekly": {"mon": [["09:00", "18:00"]]}, "holidays": "TR"}, "holidays"),
        (
            {"weekly": {"mon": [["09:00", "18:00"]]}, "holidays": {"country": "XX"}},
            "holidays.country",
        ),
        (
            {
                "weekly": {"mon": [["09:00", "18:00"]]},
                "holidays": {"country": "US", "subdivision": "ZZ"},
            },
            "holidays.subdivision",
        ),
        (
            {"weekly": {"mon": [["09:00", "18:00"]]}, "closed_dates": ["31.12.2026"]},
            "closed_dates[0]",
        ),
        ({"weekly": {"mon": [["09:00", "18:00"]]}, "closed_dates": "2026-12-31"}, "closed_dates"),
        ({"always_open": "yes"}, "always_open"),
        ({"always_open": True, "holidays": {"country": "TR"}}, "holidays"),
    ],
)
def test_bad_calendars_name_the_field(raw: object, field: str) -> None:
    with pytest.raises(CalendarError) as info:
        Calendar.from_dict(raw)
    assert info.value.field == field
    assert str(info.value).startswith(field + ": ")
