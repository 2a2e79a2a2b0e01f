"""A rollout's schedule against the database: which queued members the tick may send now, and
what ``rollout status`` says about it. The window logic itself is ``schedule`` (pure).

A rollout with ``--start-at`` sends nothing before that time. With ``--window`` it sends only
while a window is open: in UTC, in one named zone, or, with ``--window-tz tag.KEY``, in each
device's own zone, named by its tag KEY (``tag.tz=Europe/Berlin``). A device without that tag,
or whose tag names no zone, follows the window in UTC (``rollout create`` lists them and
``rollout status`` counts them). Outside the window nothing new is sent; what was sent already
still reports.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from functools import lru_cache

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cloud.orrery.clock import fmt_ms, iso
from cloud.orrery.db.tables import DEVICES, ROLLOUT_DEVICES, ROLLOUT_LOG, TAGS
from cloud.orrery.fleet.rollout import plan, schedule
from shared.wire import codec


@lru_cache(maxsize=64)
def _parse(text: str) -> schedule.Schedule:
    return schedule.parse(text)


def parse_options(
    start_at: str | None, window: str | None, window_tz: str | None, now_ms: int
) -> dict:
    """``--start-at``, ``--window`` and ``--window-tz`` -> the rollout row's columns
    (RolloutError, one line, if one is not right)."""
    try:
        if window_tz is not None and window is None:
            raise schedule.ScheduleError('--window-tz needs --window, e.g. "Mon-Fri 01:00-05:00"')
        return {
            "start_at_ms": None if start_at is None else schedule.parse_start(start_at, now_ms),
            "window": None if window is None else schedule.parse(window).text,
            "window_tz": None if window is None else schedule.parse_tz(window_tz or "UTC"),
        }
    except schedule.ScheduleError as exc:
        raise plan.RolloutError(str(exc)) from None


def _tz_text(tz: str) -> str:
    return f"each device's {tz}; UTC without one" if tz.startswith("tag.") else tz


def describe(when: dict) -> str:
    """The schedule as the audit log's ``created`` line ends: ``; starts at …; window …``."""
    out = ""
    if when.get("start_at_ms") is not None:
        out += f"; starts at {iso(when['start_at_ms'])}"
    if when.get("window"):
        out += f"; window {when['window']} ({_tz_text(when['window_tz'])})"
    return out


def schedule_view(when: dict) -> dict | None:
    """The schedule as ``create --json`` shows it; None when it may send at once."""
    if when.get("start_at_ms") is None and not when.get("window"):
        return None
    return {
        "start_at": iso(when.get("start_at_ms")),
        "window": when.get("window"),
        "window_tz": when.get("window_tz"),
    }


def _key(window_tz: str | None) -> str | None:
    return window_tz[4:] if window_tz and window_tz.startswith("tag.") else None


def without_zone(conn: Connection, when: dict, device_ids: list[int]) -> list[str] | None:
    """With ``--window-tz tag.KEY``: the names of ``device_ids`` whose tag KEY is missing or
    names no zone (they follow the window in UTC); None without it."""
    key = _key(when.get("window_tz"))
    if key is None:
        return None
    zones = dict(
        conn.execute(sa.select(TAGS.c.device_id, TAGS.c.value).where(TAGS.c.key == key)).all()
    )
    ids = [d for d in device_ids if schedule.zone(zones.get(d)) is None]
    names = dict(conn.execute(sa.select(DEVICES.c.id, DEVICES.c.name).where(DEVICES.c.id.in_(ids))).all()) if ids else {}  # fmt: skip
    return sorted(names.values())


def _tagged(key: str, values: list[str]):
    # the member's device has tag KEY with one of ``values``
    return sa.exists().where(
        TAGS.c.device_id == ROLLOUT_DEVICES.c.device_id, TAGS.c.key == key, TAGS.c.value.in_(values)
    )


def tag_values(conn: Connection, key: str) -> list[str]:
    """The distinct values of tag ``key`` (the zones devices are in: a few), by a loose scan of
    the (key, value) index: one index step per value, not one per device."""
    nxt = sa.text(
        "WITH RECURSIVE v(value) AS ("
        " SELECT min(value) FROM device_tags WHERE key = :k"
        " UNION ALL SELECT (SELECT min(t.value) FROM device_tags t WHERE t.key = :k AND t.value > v.value)"
        " FROM v WHERE v.value IS NOT NULL)"
        " SELECT value FROM v WHERE value IS NOT NULL"
    )  # fmt: skip
    return list(conn.execute(nxt, {"k": key}).scalars())


def may_send(conn: Connection, r, now_ms: int) -> tuple:
    """Which of rollout ``r``'s queued members the tick may send now, and until when:
    ``(may, until)``. ``may`` is True (any), False (none: before the start time, or every
    window closed), or a SQL condition on ROLLOUT_DEVICES (the members whose own zone's window
    is open); ``until``: the unix ms at which the first of the open windows closes (None: no
    window, or one that never closes)."""
    if r.start_at_ms is not None and now_ms < r.start_at_ms:
        return False, None
    if not r.window:
        return True, None
    s = _parse(r.window)
    key = _key(r.window_tz)
    if key is None:
        tz = schedule.zone(r.window_tz) or UTC
        if not schedule.is_open(s, now_ms, tz):
            return False, None
        return True, schedule.next_close(s, now_ms, tz)
    values = tag_values(conn, key)
    valid = {v: z for v in values if (z := schedule.zone(v)) is not None}
    opened = [v for v, z in valid.items() if schedule.is_open(s, now_ms, z)]
    utc_open = schedule.is_open(s, now_ms, UTC)  # the devices without a zone
    if not opened and not utc_open:
        return False, None
    closes = [schedule.next_close(s, now_ms, valid[v]) for v in opened]
    if utc_open:
        closes.append(schedule.next_close(s, now_ms, UTC))
    until = min((c for c in closes if c is not None), default=None)
    if utc_open and len(opened) == len(valid):
        return True, until
    if not utc_open:
        return _tagged(key, opened), until
    return sa.or_(_tagged(key, opened), ~_tagged(key, list(valid))), until


def cut_short(r, sent_ms: int | None, exp_s: int | None) -> bool:
    """Did a member's command of rollout ``r`` expire with its window (``away_ttl``), not at
    the end of the rollout's timeout? Then the board never answered because it was away when
    the window closed (it may be back since): the member is queued again, not timed out."""
    if not r.window or sent_ms is None or exp_s is None:
        return False
    return exp_s - sent_ms // 1000 < max(60, min(r.timeout_s, codec.MAX_LIFETIME))


def log_change(conn: Connection, r, may, now_ms: int, last: dict[int, bool]) -> None:
    """Write to ``r``'s audit log when its schedule (``may``: ``may_send``'s answer) starts or
    stops holding it (``last``: the orchestrator's memory of each rollout's previous answer; a
    restarted one writes the current state once): ``schedule-held`` with when it next opens,
    ``schedule-open``."""
    held = may is False
    if not (r.window or r.start_at_ms is not None) or last.get(r.id) == held:
        return
    last[r.id] = held
    if held:
        s = status(conn, r, now_ms) or {}
        why = "before its start time" if not s.get("started") else "outside its window"
        detail = f"{why}: {s.get('waiting', 0)} device(s) wait; next opening {s.get('next_open')}"
    else:
        detail = ("sending" if may is True else "sending to the devices whose window is open") + (
            f" (window {r.window})" if r.window else ""
        )
    conn.execute(
        sa.insert(ROLLOUT_LOG),
        [{"rollout_id": r.id, "at_ms": now_ms, "event": "schedule-held" if held else "schedule-open",
          "detail": detail}],
    )  # fmt: skip


def away_ttl(ttl_s: int, until_ms: int | None, now_ms: int) -> int:
    """The lifetime of a command for a board that is offline now: it waits for the board's
    pull, which must not install outside the window, so it expires when the window closes
    (at least 60 s, as every command); the member is then queued again for the next window."""
    if until_ms is None:
        return ttl_s
    return max(60, min(ttl_s, (until_ms - now_ms) // 1000))


def status(conn: Connection, r, now_ms: int) -> dict | None:
    """What ``rollout status`` shows of ``r``'s schedule (None: it has none): the start time,
    the window and its zone, whether it may send now and when it next may, and per time zone
    group its members, whether its window is open, when it next opens (or closes) and how many
    queued members of the current waves wait for it."""
    if r.start_at_ms is None and not r.window:
        return None
    started = r.start_at_ms is None or now_ms >= r.start_at_ms
    frm = now_ms if started else r.start_at_ms
    key = _key(r.window_tz)
    s = _parse(r.window) if r.window else None
    current = sa.and_(ROLLOUT_DEVICES.c.state == "queued", ROLLOUT_DEVICES.c.wave <= r.wave)
    # members per zone name (the tag's value; None: no tag), and how many of them are queued
    # in the current waves
    if key is None:
        q = sa.select(sa.literal(r.window_tz or "UTC"), sa.func.count(),
                      sa.func.count().filter(current)).where(ROLLOUT_DEVICES.c.rollout_id == r.id)  # fmt: skip
    else:
        q = (
            sa.select(TAGS.c.value, sa.func.count(), sa.func.count().filter(current))
            .select_from(ROLLOUT_DEVICES)
            .outerjoin(TAGS, sa.and_(TAGS.c.device_id == ROLLOUT_DEVICES.c.device_id, TAGS.c.key == key))
            .where(ROLLOUT_DEVICES.c.rollout_id == r.id)
            .group_by(TAGS.c.value)
        )  # fmt: skip
    groups: dict[str, dict] = defaultdict(lambda: {"devices": 0, "queued": 0, "without_zone": 0})
    for value, n, queued in conn.execute(q).all():
        zone = schedule.zone(value)
        name = "UTC" if zone is None or zone is UTC else value
        g = groups[name]
        g["devices"] += n
        g["queued"] += queued
        if zone is None and key is not None:
            g["without_zone"] += n
    out_groups = []
    for name, g in sorted(groups.items()):
        tz = schedule.zone(name) or UTC
        is_open = started and (s is None or schedule.is_open(s, now_ms, tz))
        opens = frm if s is None else schedule.next_open(s, frm, tz)
        closes = schedule.next_close(s, now_ms, tz) if is_open and s is not None else None
        out_groups.append(
            {"tz": name, "devices": g["devices"], "without_zone": g["without_zone"],
             "open": is_open, "next_open": None if is_open else iso(opens),
             "next_open_local": None if is_open or opens is None else _local(opens, tz),
             "closes": iso(closes), "waiting": 0 if is_open else g["queued"]}
        )  # fmt: skip
    nexts = [g["next_open"] for g in out_groups if g["next_open"]]
    return {
        "start_at": iso(r.start_at_ms),
        "started": started,
        "window": r.window,
        "window_tz": r.window_tz,
        "open": any(g["open"] for g in out_groups),
        "next_open": None if any(g["open"] for g in out_groups) else min(nexts, default=None),
        "waiting": sum(g["waiting"] for g in out_groups),
        "without_zone": sum(g["without_zone"] for g in out_groups),
        "groups": out_groups,
    }


def _local(ms: int, tz) -> str:
    return datetime.fromtimestamp(ms / 1000, tz).strftime("%a %H:%M")


def status_lines(sched: dict, now_ms: int) -> list[str]:
    """``status``'s schedule as text lines (below the waves' table)."""
    lines = []
    if sched["start_at"]:
        start = datetime.fromisoformat(sched["start_at"])
        wait = int(start.timestamp() * 1000) - now_ms
        lines.append(
            f"start at {sched['start_at']}" + ("" if sched["started"] else f" (in {fmt_ms(wait)})")
        )
    if sched["window"]:
        lines.append(f"window {sched['window']} ({_tz_text(sched['window_tz'])})")
    for g in sched["groups"]:
        if not sched["window"] and g["open"]:
            continue
        head = f"  {g['tz']}: {g['devices']} device(s)" + (
            f" ({g['without_zone']} without a valid {sched['window_tz']} tag)"
            if g["without_zone"]
            else ""
        )
        if g["open"]:
            lines.append(head + ": open now" + (f", closes {g['closes']}" if g["closes"] else ""))
        else:
            nxt = g["next_open"] or "never within two weeks"
            local = (
                f" ({g['next_open_local']} local)"
                if g["next_open_local"] and g["tz"] != "UTC"
                else ""
            )
            lines.append(head + f": closed, opens {nxt}{local}; {g['waiting']} waiting for it")
    lines.append(
        "open now: sending" if sched["open"]
        else f"closed: {sched['waiting']} device(s) waiting; next opening {sched['next_open'] or 'none within two weeks'}"
    )  # fmt: skip
    return lines
