"""Rollout schedules (fleet/rollout/schedule.py): the window grammar, is_open, next_open and
next_close on every weekday, across midnight and the week's end, and across daylight-saving
changes; a property test against a minute-by-minute walk."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud.orrery.fleet.rollout import schedule
from cloud.orrery.fleet.rollout.schedule import ScheduleError, is_open, next_close, next_open

BERLIN = schedule.zone("Europe/Berlin")
LORD_HOWE = schedule.zone("Australia/Lord_Howe")  # daylight saving of 30 minutes
KATHMANDU = schedule.zone("Asia/Kathmandu")  # +05:45
NEW_YORK = schedule.zone("America/New_York")


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


def local(t_ms: int, tz) -> str:
    return datetime.fromtimestamp(t_ms / 1000, tz).isoformat()


def test_parse_canonical_forms():
    cases = {
        "Mon-Fri 01:00-05:00": "Mon-Fri 01:00-05:00",
        "mon-fri 1:00 - 5:00": "Mon-Fri 01:00-05:00",
        "Sat,Sun 00:00-24:00": "Sat,Sun 00:00-24:00",
        "saturday,SUNDAY 00:00-24:00": "Sat,Sun 00:00-24:00",
        "Mon-Fri 22:00-02:00;Sat 10:00-12:00": "Mon-Fri 22:00-02:00; Sat 10:00-12:00",
        "daily 03:00-04:00": "daily 03:00-04:00",
        "Fri-Mon 00:00-06:00": "Fri-Mon 00:00-06:00",
    }
    for text, canon in cases.items():
        s = schedule.parse(text)
        assert s.text == canon, text
        assert schedule.parse(s.text) == s, "the canonical form parses to the same schedule"
    assert {d for d, _, _ in schedule.parse("Fri-Mon 00:00-06:00").windows} == {4, 5, 6, 0}
    assert schedule.parse("Mon 22:00-02:00").windows == ((0, 22 * 60, 240),)
    assert schedule.parse("Mon 00:00-24:00").windows == ((0, 0, 1440),)


@pytest.mark.parametrize(
    "text, msg",
    [
        ("", 'give days and hours, e.g. "Mon-Fri 01:00-05:00"'),
        (" ; ", 'give days and hours, e.g. "Mon-Fri 01:00-05:00"'),
        ("Mon-Fri", "'Mon-Fri' is not DAYS HH:MM-HH:MM"),
        ("Mon-Fri 01:00", "'Mon-Fri 01:00' is not DAYS HH:MM-HH:MM"),
        ("Mo-Fr 01:00-05:00", "'Mo' in 'Mo-Fr 01:00-05:00' is not a day"),
        ("Mon-Fri-Sat 01:00-05:00", "'Mon-Fri-Sat' in 'Mon-Fri-Sat 01:00-05:00' is not DAY or DAY-DAY"),
        ("Mon,,Tue 01:00-05:00", "an empty day in 'Mon,,Tue 01:00-05:00'"),
        ("Mon 25:00-05:00", "'25:00' in 'Mon 25:00-05:00' is not a time HH:MM (00:00 to 23:59)"),
        ("Mon 24:00-05:00", "'24:00' in 'Mon 24:00-05:00' is not a time HH:MM (00:00 to 23:59)"),
        ("Mon 01:60-05:00", "'01:60' in 'Mon 01:60-05:00' is not a time HH:MM"),
        ("Mon 01:00-24:01", "'24:01' in 'Mon 01:00-24:01' is not a time HH:MM (00:00 to 23:59, or 24:00"),
        ("Mon 1h-5h", "'1h' in 'Mon 1h-5h' is not a time HH:MM"),
        ("Mon 03:00-03:00", "'Mon 03:00-03:00' opens and closes at the same time; a whole day is 00:00-24:00"),
        ("Mon 01:00-02:00; Tue", "'Tue' is not DAYS HH:MM-HH:MM"),
    ],
)  # fmt: skip
def test_parse_refuses_with_the_part_named(text, msg):
    with pytest.raises(ScheduleError) as e:
        schedule.parse(text)
    assert str(e.value).startswith("--window: ") and msg in str(e.value)


def test_every_weekday_utc():
    s = schedule.parse("Mon-Fri 01:00-05:00")
    monday = datetime(2026, 12, 7, tzinfo=UTC)  # a Monday
    for k in range(7):
        day = monday + timedelta(days=k)
        weekday = k < 5
        for hh, mm, inside in ((0, 59, False), (1, 0, True), (3, 0, True), (4, 59, True),
                               (5, 0, False), (23, 59, False)):  # fmt: skip
            t = int((day + timedelta(hours=hh, minutes=mm)).timestamp() * 1000)
            assert is_open(s, t, UTC) == (inside and weekday), (day.strftime("%a"), hh, mm)
            assert is_open(s, t + 59_999, UTC) == (inside and weekday), "the whole minute"
        # from each day's noon the next opening is the next weekday's 01:00
        noon = int((day + timedelta(hours=12)).timestamp() * 1000)
        nxt = next_open(s, noon, UTC)
        want = day + timedelta(days=1 if k < 4 else 7 - k)
        assert nxt == int((want + timedelta(hours=1)).timestamp() * 1000), day.strftime("%a")


def test_crossing_midnight_and_the_end_of_the_week():
    s = schedule.parse("Mon-Fri 22:00-02:00")
    assert not is_open(s, ms("2026-12-07T21:59:59Z"), UTC)  # Monday
    assert is_open(s, ms("2026-12-07T22:00:00Z"), UTC)
    assert is_open(s, ms("2026-12-08T01:59:00Z"), UTC)  # Tuesday morning: Monday's window
    assert not is_open(s, ms("2026-12-08T02:00:00Z"), UTC)
    assert is_open(s, ms("2026-12-12T01:30:00Z"), UTC), "Friday's window ends on Saturday"
    assert not is_open(s, ms("2026-12-12T22:30:00Z"), UTC), "no Saturday window"
    assert not is_open(s, ms("2026-12-07T01:00:00Z"), UTC), "Monday 01:00: Sunday has none"
    assert next_close(s, ms("2026-12-11T23:00:00Z"), UTC) == ms("2026-12-12T02:00:00Z")
    assert next_open(s, ms("2026-12-12T02:00:00Z"), UTC) == ms("2026-12-14T22:00:00Z")
    # Sunday night into Monday morning: the week wraps
    sun = schedule.parse("Sun 23:00-01:00")
    assert is_open(sun, ms("2026-12-14T00:30:00Z"), UTC)  # Monday 00:30
    assert next_open(sun, ms("2026-12-14T01:00:00Z"), UTC) == ms("2026-12-20T23:00:00Z")
    wrap = schedule.parse("Fri-Mon 00:00-06:00")
    opened = [
        d for d in range(7) if is_open(wrap, ms("2026-12-07T03:00:00Z") + d * 86_400_000, UTC)
    ]
    assert opened == [0, 4, 5, 6]
    # a whole weekend, and several windows
    s = schedule.parse("Sat,Sun 00:00-24:00; Wed 12:00-13:00")
    assert next_open(s, ms("2026-12-07T00:00:00Z"), UTC) == ms("2026-12-09T12:00:00Z")
    assert next_open(s, ms("2026-12-09T13:00:00Z"), UTC) == ms("2026-12-12T00:00:00Z")
    assert next_close(s, ms("2026-12-12T09:00:00Z"), UTC) == ms("2026-12-14T00:00:00Z")
    always = schedule.parse("daily 00:00-24:00")
    assert next_close(always, ms("2026-12-12T09:00:00Z"), UTC) is None
    assert next_open(always, 123, UTC) == 123


def test_berlin_spring_forward():
    # 2026-03-29 02:00 CET the clocks jump to 03:00 CEST
    s = schedule.parse("Sun 02:30-04:00")
    opened = next_open(s, ms("2026-03-27T12:00:00+01:00"), BERLIN)
    assert local(opened, BERLIN) == "2026-03-29T03:00:00+02:00", "opens when the clock jumps"
    assert opened == ms("2026-03-29T01:00:00Z")
    assert local(next_close(s, opened, BERLIN), BERLIN) == "2026-03-29T04:00:00+02:00"
    inside = schedule.parse("Sun 02:10-02:40")  # wholly in the skipped hour
    assert local(next_open(inside, ms("2026-03-27T12:00:00+01:00"), BERLIN), BERLIN) == (
        "2026-04-05T02:10:00+02:00"
    )
    # a night window across the jump: 01:00-05:00 is 3 hours long that night
    night = schedule.parse("Sun 01:00-05:00")
    o = next_open(night, ms("2026-03-28T12:00:00Z"), BERLIN)
    assert local(o, BERLIN) == "2026-03-29T01:00:00+01:00"
    assert next_close(night, o, BERLIN) - o == 3 * 3_600_000
    # the same window in UTC is not moved by Berlin's clocks
    assert next_open(night, ms("2026-03-28T12:00:00Z"), UTC) == ms("2026-03-29T01:00:00Z")


def test_berlin_fall_back():
    # 2026-10-25 03:00 CEST the clocks go back to 02:00 CET: 02:00-02:59 happens twice
    s = schedule.parse("Sun 02:10-02:40")
    first = next_open(s, ms("2026-10-24T12:00:00+02:00"), BERLIN)
    assert local(first, BERLIN) == "2026-10-25T02:10:00+02:00"
    closed = next_close(s, first, BERLIN)
    assert local(closed, BERLIN) == "2026-10-25T02:40:00+02:00"
    second = next_open(s, closed, BERLIN)
    assert local(second, BERLIN) == "2026-10-25T02:10:00+01:00", "open in both passes"
    assert second - first == 3_600_000
    night = schedule.parse("Sun 01:00-05:00")  # 5 hours long that night
    o = next_open(night, ms("2026-10-24T12:00:00Z"), BERLIN)
    assert next_close(night, o, BERLIN) - o == 5 * 3_600_000
    # a window that opens in the repeated hour's second pass, after one closing in the first
    late = schedule.parse("Sun 02:50-03:30")
    o = next_open(late, ms("2026-10-24T12:00:00Z"), BERLIN)
    assert local(o, BERLIN) == "2026-10-25T02:50:00+02:00"
    # 02:50 CEST -> 02:00 CET at 03:00 CEST: the wall clock leaves the window, comes back
    c = next_close(late, o, BERLIN)
    assert local(c, BERLIN) == "2026-10-25T02:00:00+01:00"
    assert local(next_open(late, c, BERLIN), BERLIN) == "2026-10-25T02:50:00+01:00"


def test_other_zones():
    s = schedule.parse("Mon-Fri 01:00-05:00")
    # Kathmandu is +05:45: Monday 01:00 there is Sunday 19:15 UTC
    assert next_open(s, ms("2026-12-06T12:00:00Z"), KATHMANDU) == ms("2026-12-06T19:15:00Z")
    # Lord Howe's clocks go forward by 30 minutes at 02:00 on 2026-10-04
    w = schedule.parse("Sun 02:00-02:20")
    o = next_open(w, ms("2026-10-02T00:00:00Z"), LORD_HOWE)
    assert local(o, LORD_HOWE) == "2026-10-11T02:00:00+11:00", "02:00-02:20 was skipped"
    w = schedule.parse("Sun 02:10-03:00")
    o = next_open(w, ms("2026-10-02T00:00:00Z"), LORD_HOWE)
    assert local(o, LORD_HOWE) == "2026-10-04T02:30:00+11:00"


def test_zones_and_start_times():
    assert schedule.zone("Europe/Berlin") is not None and schedule.zone("UTC") is UTC
    for bad in (None, "", "Mars/Olympus", "../../etc/passwd", "Europe/"):
        assert schedule.zone(bad) is None, bad
    assert schedule.parse_tz("utc") == "UTC" and schedule.parse_tz("tag.tz") == "tag.tz"
    assert schedule.parse_tz("Europe/Berlin") == "Europe/Berlin"
    for bad, msg in (("tag.", "is not tag.KEY"), ("Mars/Olympus", "is neither a time zone")):
        with pytest.raises(ScheduleError, match=msg):
            schedule.parse_tz(bad)
    now = ms("2026-12-06T15:00:00Z")
    assert schedule.parse_start("2026-12-07T01:00:00Z", now) == ms("2026-12-07T01:00:00Z")
    assert schedule.parse_start("2026-12-07T02:00+01:00", now) == ms("2026-12-07T01:00:00Z")
    cases = {
        "2026-12-07T01:00:00": "has no time zone; add Z (UTC) or an offset like +01:00",
        "tomorrow": "is not an ISO 8601 time like 2026-12-07T01:00:00Z",
        "2026-12-06T14:59:59Z": "is in the past (now is 2026-12-06T15:00:00Z)",
        "2026-12-06T15:00:00Z": "is in the past",
    }
    for text, msg in cases.items():
        with pytest.raises(ScheduleError, match=r"^--start-at: ") as e:
            schedule.parse_start(text, now)
        assert msg in str(e.value), text


DAY = st.sampled_from(schedule.DAY_NAMES)
HHMM = st.builds(
    lambda h, m: f"{h:02d}:{m:02d}", st.integers(0, 23), st.sampled_from([0, 10, 30, 45, 59])
)
WINDOW = st.builds(
    lambda days, a, b: f"{','.join(days)} {a}-{b}",
    st.lists(DAY, min_size=1, max_size=3, unique=True), HHMM, HHMM,
).filter(lambda w: w.split()[1].split("-")[0] != w.split()[1].split("-")[1])  # fmt: skip
SCHEDULE = st.lists(WINDOW, min_size=1, max_size=3).map("; ".join)
ZONES = st.sampled_from([UTC, BERLIN, NEW_YORK, LORD_HOWE, KATHMANDU])
# around Berlin's and New York's DST changes in 2026, and anywhere in 2026-2027
T = st.one_of(
    st.integers(ms("2026-03-20T00:00:00Z"), ms("2026-04-02T00:00:00Z")),
    st.integers(ms("2026-10-20T00:00:00Z"), ms("2026-11-05T00:00:00Z")),
    st.integers(ms("2026-01-01T00:00:00Z"), ms("2027-12-31T00:00:00Z")),
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(SCHEDULE, T, ZONES, st.booleans())
def test_next_change_is_the_first_minute_that_changes(text, t, tz, want_open):
    s = schedule.parse(text)
    find = next_open if want_open else next_close
    n = find(s, t, tz)
    if n is None:  # only a schedule open all week never closes
        assert not want_open and all(s.open_minutes)
        return
    assert n >= t and is_open(s, n, tz) == want_open
    if n == t:
        return
    assert n % 60_000 == 0, "changes fall on a minute"
    assert is_open(s, t, tz) != want_open
    # no earlier minute between t and n has the wanted state
    for m in range(t // 60_000 + 1, n // 60_000):
        assert is_open(s, m * 60_000, tz) != want_open, (text, local(m * 60_000, tz))
