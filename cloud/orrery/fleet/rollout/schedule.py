"""When a rollout may send: its start time and its maintenance windows (pure logic, no database).

Windows, as ``--window`` takes them (case does not matter)::

    WINDOWS := WINDOW [";" WINDOW]...          "Mon-Fri 01:00-05:00; Sat,Sun 00:00-24:00"
    WINDOW  := DAYS " " HH:MM "-" HH:MM
    DAYS    := DAY ["-" DAY] ["," DAY ["-" DAY]]...  | "daily"
    DAY     := Mon | Tue | Wed | Thu | Fri | Sat | Sun   (or the full name)

A window opens on each of its days at its first time and stays open until its second time, in
the wall-clock time of its time zone. A second time at or before the first one is on the next
day ("Mon-Fri 22:00-02:00": Friday's window closes Saturday 02:00); ``24:00`` is the end of the
day; the two times may not be equal. A range may wrap the week (``Fri-Mon``). Windows may
overlap: a rollout may send while any of them is open. Precision is the minute.

Wall clock across daylight-saving changes: a window is open while the local time reads inside
it. In the hour skipped in spring, a window that starts in it opens when the clock jumps (at
03:00 in Europe/Berlin), and a window wholly inside the skipped hour does not open that day; in
the hour repeated in autumn, a window inside it is open in both passes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_FULL = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
WEEK_MIN = 7 * 1440
MIN_MS = 60_000
_HORIZON_DAYS = 16  # a weekly window opens within two weeks, even around a DST change


class ScheduleError(ValueError):
    """A start time or window the operator gave was refused; the message says why."""


@dataclass(frozen=True)
class Schedule:
    """Parsed ``--window``: ``text`` (the canonical form, what is stored), each window as
    ``(weekday, start minute, length in minutes)``, and which minutes of the week are open."""

    text: str
    windows: tuple[tuple[int, int, int], ...]
    open_minutes: bytes  # WEEK_MIN flags, Monday 00:00 first

    def __repr__(self) -> str:
        return f"Schedule({self.text!r})"


def _day(token: str, text: str) -> int:
    t = token.strip().lower()
    for i, full in enumerate(_FULL):
        if len(t) >= 3 and full.startswith(t):
            return i
    raise ScheduleError(
        f"--window: {token.strip()!r} in {text!r} is not a day (Mon, Tue, Wed, Thu, Fri, Sat, Sun)"
    )


def _days(spec: str, text: str) -> list[int]:
    if spec.strip().lower() in ("daily", "*"):
        return list(range(7))
    out: list[int] = []
    for part in spec.split(","):
        if not part.strip():
            raise ScheduleError(f"--window: an empty day in {text!r}")
        ends = part.split("-")
        if len(ends) > 2:
            raise ScheduleError(f"--window: {part.strip()!r} in {text!r} is not DAY or DAY-DAY")
        a = _day(ends[0], text)
        b = _day(ends[-1], text)
        d = a
        while True:  # a range may wrap the week: Fri-Mon
            if d not in out:
                out.append(d)
            if d == b:
                break
            d = (d + 1) % 7
    return out


def _minute(hhmm: str, text: str, end: bool) -> int:
    m = re.fullmatch(r"(\d{1,2}):(\d{2})", hhmm)
    if m:
        h, mi = int(m.group(1)), int(m.group(2))
        if mi < 60 and (h < 24 or (end and h == 24 and mi == 0)):
            return h * 60 + mi
    raise ScheduleError(
        f"--window: {hhmm!r} in {text!r} is not a time HH:MM (00:00 to 23:59"
        + (", or 24:00 for the end of the day)" if end else ")")
    )


def parse(text: str) -> Schedule:
    """``--window`` text -> Schedule (ScheduleError, naming the part, if it is not one)."""
    windows: list[tuple[int, int, int]] = []
    canon: list[str] = []
    parts = [p.strip() for p in text.split(";")]
    if not any(parts):
        raise ScheduleError('--window: give days and hours, e.g. "Mon-Fri 01:00-05:00"')
    for part in parts:
        if not part:
            continue
        m = re.fullmatch(r"(\S+)\s+(\S+?)\s*-\s*(\S+)", part)
        if not m:
            raise ScheduleError(
                f'--window: {part!r} is not DAYS HH:MM-HH:MM, e.g. "Mon-Fri 01:00-05:00"'
            )
        days = _days(m.group(1), part)
        start = _minute(m.group(2), part, end=False)
        end = _minute(m.group(3), part, end=True)
        if start == end:
            raise ScheduleError(
                f"--window: {part!r} opens and closes at the same time; a whole day is 00:00-24:00"
            )
        length = (end - start) % 1440 or 1440
        windows += [(d, start, length) for d in days]
        canon.append(f"{_days_text(m.group(1), days)} {_hhmm(start)}-{_hhmm(end)}")
    flags = bytearray(WEEK_MIN)
    for d, start, length in windows:
        s = d * 1440 + start
        for i in range(s, s + length):
            flags[i % WEEK_MIN] = 1
    return Schedule("; ".join(canon), tuple(windows), bytes(flags))


def _days_text(spec: str, days: list[int]) -> str:
    if spec.strip().lower() in ("daily", "*"):
        return "daily"
    out = []
    for part in spec.split(","):
        ends = part.split("-")
        out.append("-".join(DAY_NAMES[_day(e, spec)] for e in ends))
    return ",".join(out)


def _hhmm(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


def zone(name: str | None) -> tzinfo | None:
    """The time zone called ``name`` (IANA, e.g. ``Europe/Berlin``; ``UTC``), None if unknown."""
    if not name:
        return None
    if name.upper() in ("UTC", "Z"):
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


def is_open(s: Schedule, ts_ms: int, tz: tzinfo) -> bool:
    """Is a window of ``s`` open at unix ms ``ts_ms``, in time zone ``tz``'s wall clock?"""
    t = datetime.fromtimestamp(ts_ms // 1000, tz)
    return bool(s.open_minutes[t.weekday() * 1440 + t.hour * 60 + t.minute])


def next_open(s: Schedule, ts_ms: int, tz: tzinfo) -> int | None:
    """The first unix ms at or after ``ts_ms`` at which a window of ``s`` is open in ``tz``
    (``ts_ms`` itself if one is open then); None if none opens within two weeks."""
    return _next_change(s, ts_ms, tz, True)


def next_close(s: Schedule, ts_ms: int, tz: tzinfo) -> int | None:
    """The first unix ms at or after ``ts_ms`` at which no window of ``s`` is open in ``tz``;
    None if the windows never close (``daily 00:00-24:00``) within two weeks."""
    return _next_change(s, ts_ms, tz, False)


def _next_change(s: Schedule, ts_ms: int, tz: tzinfo, want: bool) -> int | None:
    if is_open(s, ts_ms, tz) == want:
        return ts_ms
    # Whether a window is open changes only where the wall clock reaches a window's start or
    # end, or where the zone's offset changes (the clock jumps): those instants are the only
    # candidates. A wall time may map to two instants (autumn) or to none (spring: fold 0
    # then gives an instant after the gap, which the offset change covers).
    edges = {
        (d * 1440 + (start if want else start + length)) % WEEK_MIN
        for d, start, length in s.windows
    }
    by_day: dict[int, list[int]] = {}
    for e in edges:
        by_day.setdefault(e // 1440, []).append(e % 1440)
    first = datetime.fromtimestamp(ts_ms // 1000, tz).date()
    candidates: set[int] = set()
    for k in range(-1, _HORIZON_DAYS + 1):
        day: date = first + timedelta(days=k)
        for minute in by_day.get(day.weekday(), ()):
            wall = datetime(day.year, day.month, day.day) + timedelta(minutes=minute)
            for fold in (0, 1):
                c = int(wall.replace(tzinfo=tz, fold=fold).timestamp()) * 1000
                if c > ts_ms:
                    candidates.add(c)
    candidates.update(_offset_changes(ts_ms, tz, _HORIZON_DAYS * 24))
    for c in sorted(candidates):
        if is_open(s, c, tz) == want:
            return c
    return None


def _offset(ms: int, tz: tzinfo) -> timedelta | None:
    return datetime.fromtimestamp(ms // 1000, tz).utcoffset()


def _offset_changes(ts_ms: int, tz: tzinfo, hours: int) -> list[int]:
    """Unix ms (on a minute) at which ``tz``'s offset changes in the ``hours`` after ts_ms."""
    if tz is UTC:
        return []
    out = []
    h0 = ts_ms // 3_600_000 * 3_600_000
    prev = _offset(h0, tz)
    for i in range(1, hours + 2):
        t = h0 + i * 3_600_000
        cur = _offset(t, tz)
        if cur != prev:
            lo, hi = (t - 3_600_000) // MIN_MS, t // MIN_MS  # offset(lo) = prev, offset(hi) = cur
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if _offset(mid * MIN_MS, tz) == prev:
                    lo = mid
                else:
                    hi = mid
            if hi * MIN_MS > ts_ms:
                out.append(hi * MIN_MS)
            prev = cur
    return out


def parse_start(text: str, now_ms: int) -> int:
    """``--start-at``: ISO 8601 with an offset or ``Z`` -> unix ms; refused if it has no offset
    or is not in the future."""
    try:
        t = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ScheduleError(
            f"--start-at: {text!r} is not an ISO 8601 time like 2026-12-07T01:00:00Z or "
            "2026-12-07T02:00+01:00"
        ) from None
    if t.tzinfo is None or t.utcoffset() is None:
        raise ScheduleError(
            f"--start-at: {text!r} has no time zone; add Z (UTC) or an offset like +01:00"
        )
    ms = int(t.timestamp() * 1000)
    if ms <= now_ms:
        now = datetime.fromtimestamp(now_ms / 1000, UTC).isoformat(timespec="seconds")
        raise ScheduleError(
            f"--start-at: {text!r} is in the past (now is {now.replace('+00:00', 'Z')})"
        )
    return ms


def parse_tz(text: str) -> str:
    """``--window-tz``: ``UTC``, an IANA zone (``Europe/Berlin``) or ``tag.KEY`` (each device's
    tag KEY names its zone) -> the stored form."""
    t = text.strip()
    if t.startswith("tag."):
        if not re.fullmatch(r"tag\.[A-Za-z0-9_.-]+", t):
            raise ScheduleError(f"--window-tz: {text!r} is not tag.KEY")
        return t
    if zone(t) is None:
        raise ScheduleError(
            f"--window-tz: {text!r} is neither a time zone (UTC, Europe/Berlin, …) nor tag.KEY"
        )
    return "UTC" if t.upper() in ("UTC", "Z") else t
