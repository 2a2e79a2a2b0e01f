"""Stored data is never silently wrong (issue 14, item 2), on SQLite and PostgreSQL.

- Event times that cannot be true (before 2020, more than a day ahead of the companion's
  clock) are never stored: the reading is stored without one, a ``time_faults`` row says why,
  and ``readings stats`` counts them.
- The same (device, boot, seq) with different content is a conflict: the first stored reading
  stays, the other content is kept in ``reading_conflicts`` and counted; an identical
  redelivery is still a duplicate.
- A gap or loss report larger than ``--max-gap`` is a protocol anomaly: never a resend or a
  loss of a billion readings.
"""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from cloud.orrery.db.engine import engine_for
from cloud.orrery.db.tables import DEVICES
from cloud.orrery.ingest import queries
from cloud.orrery.ingest.handler import Ingest, Message
from shared.wire import codec
from tests.support import ingestkit
from tests.support.cli import flat, run

SECRET = b"silently-wrong-fleet-secret-0123456789"
NOW = 1_790_000_100_000  # the companion's clock, ms
DAY = 86_400_000
GOOD = (0, 0, 1_790_000_000, 0)  # uptime 0 was 1_790_000_000 s unix: 100 s before NOW
T = "orrery/f1/dev1/up/"


def batch(first, n, boot=7, value=100, anchor=GOOD, up=None, flags=0) -> bytes:
    """Readings ``first..first+n-1``; each one's uptime is its seq (s) unless ``up`` says."""
    recs = [(s if up is None else up(s), 0, value, 0) for s in range(first, first + n)]
    return codec.encode_batch(boot, first, recs, flags, anchor)


def msg(kind: str, payload: bytes) -> Message:
    return Message(T + kind, payload)


@pytest.fixture
def ingest(db_url):
    engine = engine_for(db_url)
    with engine.begin() as c:
        c.execute(sa.insert(DEVICES), [{"name": "dev1", "fleet": "f1", "created_ms": 0}])
    ing = Ingest(engine, secret=SECRET, reorder_window_ms=1000, clock=lambda: NOW)
    yield ing
    engine.dispose()


def q(ing: Ingest, sql: str, **kw) -> list:
    with ing.engine.connect() as c:
        return [tuple(r) for r in c.execute(sa.text(sql), kw).all()]


def counters(ing: Ingest) -> tuple:
    """(received, duplicates, conflicts, bad_time) of dev1."""
    return q(ing, "SELECT received, duplicates, conflicts, bad_time FROM devices")[0]


# --- event times ---------------------------------------------------------------------------


def test_an_anchor_before_2020_gives_no_event_time(ingest):
    # a board whose clock was never really set: its anchor says 1970
    ingest.handle([msg("readings", batch(1, 5, anchor=(0, 0, 5, 0)))], now=NOW)
    assert q(ingest, "SELECT seq, event_ms FROM readings ORDER BY seq") == [
        (s, None) for s in range(1, 6)
    ]
    assert q(ingest, "SELECT seq, event_ms, reason FROM time_faults ORDER BY seq") == [
        (s, 5000 + s * 1000, "before 2020") for s in range(1, 6)
    ]
    assert counters(ingest) == (5, 0, 0, 5)
    # a redelivery is a duplicate, and its readings are not counted again
    out = ingest.handle([msg("readings", batch(1, 5, anchor=(0, 0, 5, 0)))], now=NOW + 1)
    assert (out.inserted, out.duplicates, out.bad_time) == (0, 5, 0)
    assert counters(ingest) == (5, 5, 0, 5)


def test_a_board_more_than_a_day_ahead_gives_no_event_time(ingest):
    ahead = (0, 0, (NOW + 2 * DAY) // 1000, 0)
    ingest.handle([msg("readings", batch(1, 3, anchor=ahead))], now=NOW)
    assert q(ingest, "SELECT count(*) FROM readings WHERE event_ms IS NULL") == [(3,)]
    assert {r for (r,) in q(ingest, "SELECT reason FROM time_faults")} == {
        "more than a day ahead of the companion's clock"
    }
    # less than a day ahead is a clock that can be true
    ingest.handle([msg("readings", batch(1, 3, boot=8, anchor=(0, 0, (NOW + DAY) // 1000 - 10, 0)))])
    assert q(ingest, "SELECT count(*) FROM readings WHERE boot = 8 AND event_ms IS NOT NULL") == [(3,)]
    assert counters(ingest)[3] == 3


def test_only_the_readings_whose_time_cannot_be_true_lose_it(ingest):
    # a good anchor, but two readings claim an uptime of years (a corrupt record, say)
    far = {3: 100_000_000, 4: 100_000_001}
    ingest.handle([msg("readings", batch(1, 6, up=lambda s: far.get(s, s)))], now=NOW)
    rows = dict(q(ingest, "SELECT seq, event_ms FROM readings"))
    assert rows == {s: None if s in far else GOOD[2] * 1000 + s * 1000 for s in range(1, 7)}
    assert q(ingest, "SELECT seq FROM time_faults ORDER BY seq") == [(3,), (4,)]
    assert counters(ingest) == (6, 0, 0, 2)


def test_a_bad_anchor_learned_later_backfills_no_event_time(ingest):
    ingest.handle([msg("readings", batch(1, 4, anchor=None))], now=NOW)  # no wall time yet
    ingest.handle([msg("events", codec.encode_event(7, 1, 2, 0, "idle", "boot", None))], now=NOW)
    state = codec.encode_state(True, "1.0", None, None, None, 7, 0, True, (0, 0, 5, 0), 4)
    ingest.handle([msg("state", state)], now=NOW + 1)
    assert q(ingest, "SELECT count(*) FROM readings WHERE event_ms IS NULL") == [(4,)]
    assert q(ingest, "SELECT event_ms FROM events") == [(None,)]
    assert q(ingest, "SELECT count(*), min(event_ms) FROM time_faults") == [(4, 6000)]
    assert counters(ingest)[3] == 4
    # an event of that boot stored afterwards gets no event time either
    ingest.handle([msg("events", codec.encode_event(7, 2, 3, 0, "idle", "tick", None))], now=NOW)
    assert q(ingest, "SELECT seq, event_ms FROM events ORDER BY seq") == [(1, None), (2, None)]


# --- conflicts -----------------------------------------------------------------------------


def test_a_reused_boot_id_after_a_flash_erase_is_a_conflict_not_a_duplicate(ingest):
    ingest.handle([msg("readings", batch(1, 50, value=100))], now=NOW)
    # the board's flash was erased and it numbered its readings from 1 again, in the same boot
    out = ingest.handle([msg("readings", batch(1, 60, value=200, up=lambda s: s + 500))], now=NOW)
    assert (out.inserted, out.duplicates, out.conflicts) == (10, 0, 50)
    assert counters(ingest)[:3] == (60, 0, 50)
    # the first stored readings stay; the other content is kept, each reading once
    assert q(ingest, "SELECT count(*) FROM readings WHERE seq <= 50 AND value = 100") == [(50,)]
    assert q(ingest, "SELECT count(*) FROM readings WHERE seq > 50 AND value = 200") == [(10,)]
    assert q(
        ingest, "SELECT min(seq), max(seq), count(*), min(value), min(up_ms) FROM reading_conflicts"
    ) == [(1, 50, 50, 200, 501_000)]
    # identical redeliveries of either are duplicates, not new conflicts
    out = ingest.handle([msg("readings", batch(1, 50, value=100))], now=NOW)
    assert (out.inserted, out.duplicates, out.conflicts) == (0, 50, 0)
    out = ingest.handle([msg("readings", batch(1, 60, value=200, up=lambda s: s + 500))], now=NOW)
    assert (out.inserted, out.duplicates, out.conflicts) == (0, 60, 0)
    # a third content is a conflict again
    out = ingest.handle([msg("readings", batch(1, 5, value=300))], now=NOW)
    assert (out.inserted, out.duplicates, out.conflicts) == (0, 0, 5)
    assert counters(ingest)[:3] == (60, 110, 55)
    assert q(ingest, "SELECT count(*) FROM reading_conflicts") == [(55,)]


def test_a_conflict_inside_one_group_keeps_the_first(ingest):
    out = ingest.handle(
        [
            msg("readings", batch(1, 10, value=1)),
            msg("readings", batch(1, 10, value=1)),  # a redelivery
            msg("readings", batch(6, 10, value=2)),  # 6..10 differ, 11..15 are new
        ],
        now=NOW,
    )
    assert (out.inserted, out.duplicates, out.conflicts) == (15, 10, 5)
    assert q(ingest, "SELECT seq, value FROM readings ORDER BY seq") == [
        (s, 1 if s <= 10 else 2) for s in range(1, 16)
    ]
    assert q(ingest, "SELECT seq, value FROM reading_conflicts ORDER BY seq") == [
        (s, 2) for s in range(6, 11)
    ]


def test_only_content_makes_a_conflict(ingest):
    # the historical flag and the anchor are how a reading was sent, not what it is
    ingest.handle([msg("readings", batch(1, 5, anchor=None))], now=NOW)
    out = ingest.handle([msg("readings", batch(1, 5, flags=codec.HISTORICAL))], now=NOW)
    assert (out.inserted, out.duplicates, out.conflicts) == (0, 5, 0)


# --- gaps and loss reports too large to be true --------------------------------------------


def test_a_billion_reading_gap_is_an_anomaly_never_a_resend_or_a_loss(ingest, caplog):
    last = codec.SEQ_MAX - 1
    state = codec.encode_state(True, "1.0", None, None, None, 7, 0, True, GOOD, last)
    ingest.handle([msg("readings", batch(1, 10)), msg("state", state)], now=NOW)
    assert ingest.reconcile(now=NOW + 5000) == []
    assert ingest.reconcile(now=NOW + 10_000) == []
    ((first, end, status, reason, cmd),) = q(
        ingest, 'SELECT "first", "last", status, reason, command_id FROM gaps'
    )
    assert (first, end, status, cmd) == (11, last, "anomaly", None)
    assert reason == (
        f"anomaly: {last - 10} readings missing, more than the maximum gap of 100000; not requested"
    )
    assert q(ingest, "SELECT count(*) FROM commands") == [(0,)]
    assert q(ingest, "SELECT count(*) FROM losses") == [(0,)]
    logged = [r.levelname for r in caplog.records if '"gap_anomaly"' in r.getMessage()]
    assert logged == ["ERROR"]  # once, however often it is reconciled
    with ingest.engine.connect() as c:
        stats = queries.stats(c)
    assert stats["totals"]["gap_anomalies"] == 1 and stats["totals"]["pending_gap"] == 0


def test_a_loss_report_too_large_to_be_true_is_dead_lettered(ingest):
    report = codec.encode_loss(7, 1, 1_000_000_000, "store_full")
    out = ingest.handle([msg("loss", report)], now=NOW)
    assert out.dead == 1
    assert q(ingest, "SELECT count(*) FROM losses") == [(0,)]
    assert q(ingest, "SELECT reason FROM dead_letters") == [
        ("anomaly: a loss report of 1000000000 readings (1..1000000000), more than the maximum "
         "gap of 100000",)
    ]  # fmt: skip
    ingest.handle([msg("loss", codec.encode_loss(7, 1, 100_000, "store_full"))], now=NOW)
    assert q(ingest, 'SELECT "first", "last" FROM losses') == [(1, 100_000)]


def test_the_maximum_gap_is_configurable_and_a_shrunk_anomaly_is_an_ordinary_gap(ingest):
    ingest.max_gap = 50
    ingest.handle([msg("readings", batch(1, 10)), msg("readings", batch(81, 5))], now=NOW)
    assert ingest.reconcile(now=NOW + 2000) == []  # 11..80: 70 readings, more than 50
    assert q(ingest, 'SELECT "first", "last", status FROM gaps') == [(11, 80, "anomaly")]
    ingest.handle([msg("readings", batch(11, 40))], now=NOW)  # 51..80 left: 30, a true gap
    ingest.reconcile(now=NOW + 3000)
    assert q(ingest, 'SELECT "first", "last", status FROM gaps') == [(51, 80, "pending")]
    out = ingest.reconcile(now=NOW + 5000)
    assert [o.command_id for o in out] == ["resend:1:51-80:1"]


def test_serve_takes_the_maximum_gap(tmp_path):
    """``orrery serve --max-gap N`` (the real command, in its own process)."""
    broker = ingestkit.broker()
    url = f"sqlite:///{tmp_path / 'o.db'}"
    engine = engine_for(url)
    with engine.begin() as c:
        c.execute(sa.insert(DEVICES), [{"name": "dev1", "fleet": "f1", "created_ms": 0}])
    (tmp_path / "secret").write_bytes(SECRET)
    w = ingestkit.Worker(url, broker.port, "max-gap", tmp_path / "w.log",
                         ("--max-gap", "50", "--reorder-window", "0", "--reconcile-every", "0.2",
                          "--secret-file", str(tmp_path / "secret")))  # fmt: skip
    try:
        ingestkit.start_ready(w, broker)
        state = codec.encode_state(True, "1.0", None, None, None, 7, 0, True, GOOD, 200)
        ingestkit.bench.publish(broker.port, [(T + "readings", batch(1, 10)), (T + "state", state)])

        def gaps():
            with engine.connect() as c:
                return c.execute(sa.text('SELECT "first", "last", status FROM gaps')).all()

        ingestkit.wait_for(lambda: gaps(), 30, "the gap", w.log)
        assert [tuple(g) for g in gaps()] == [(11, 200, "anomaly")]
        assert '"event": "gap_anomaly"' in w.log()
    finally:
        assert w.stop() == 0
        broker.close()
        engine.dispose()


# --- readings stats ------------------------------------------------------------------------


def test_readings_stats_counts_conflicts_bad_times_and_gap_anomalies(ingest):
    ingest.max_gap = 50
    ingest.handle([msg("readings", batch(1, 10))], now=NOW)
    ingest.handle([msg("readings", batch(1, 4, value=7))], now=NOW)  # 4 conflicts
    ingest.handle([msg("readings", batch(11, 3, boot=9, anchor=(0, 0, 5, 0)))], now=NOW)
    ingest.handle([msg("readings", batch(100, 1))], now=NOW)  # 14..99: an anomaly
    ingest.handle([msg("loss", codec.encode_loss(7, 200, 300, "corrupt"))], now=NOW)
    ingest.reconcile(now=NOW + 2000)
    url = ingest.engine.url.render_as_string(hide_password=False)
    data = json.loads(run("readings", "stats", "--db", url, "--json").stdout)
    assert data["devices"] == [
        {"device": "dev1", "received": 14, "duplicates": 0, "historical": 0, "pending_gap": 0,
         "permanent_loss": 0, "conflicts": 4, "bad_time": 3, "gap_anomalies": 1}
    ]  # fmt: skip
    assert data["totals"]["conflicts"] == 4 and data["totals"]["bad_time"] == 3
    assert data["dead_letters"] == {"anomaly": 1}
    table = flat(run("readings", "stats", "--db", url).stdout)
    assert "│ dev1 │ 14 │ 0 │ 0 │ 0 │ 0 │" in table
    assert "conflicts ┃ bad time ┃ gap anomalies ┃" in table
    assert "│ dev1 │ 4 │ 3 │ 1 │" in table
