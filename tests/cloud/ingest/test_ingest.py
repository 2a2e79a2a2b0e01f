"""Ingest and reconciliation on real databases (SQLite and PostgreSQL, each test on both).

These drive ``Ingest`` with the board's own wire format (``shared.wire.message``) on virtual time;
the MQTT path is covered by test_reliability.py and test_ingest_e2e.py.
"""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlmodel import SQLModel

from cloud.orrery.db.engine import alembic_config, engine_for, upgrade
from cloud.orrery.db.tables import DEVICES
from cloud.orrery.fleet import commands, keys
from cloud.orrery.ingest.alerts import AlertRule
from cloud.orrery.ingest.handler import Ingest, Message
from cloud.orrery.ingest.ranges import merge, subtract
from shared.wire import codec

SECRET = b"fleet-secret-for-tests-0123456789"
T = "orrery/f1/dev1/up/"
ANCHOR = (100, 0, 1_790_000_000, 0)  # uptime 100 s was 1_790_000_000 s unix
NOW = 1_790_000_100_000  # the companion's clock (ms) when a test's event times must be true


def batch(
    first: int, n: int, boot: int = 7, flags: int = 0, anchor=None, value: int = 100
) -> bytes:
    # a reading's content depends on its seq alone: overlapping batches repeat, not conflict
    return codec.encode_batch(
        boot, first, [(seq, 0, value, 0) for seq in range(first, first + n)], flags, anchor
    )


def msg(kind: str, payload: bytes, device: str = "dev1") -> Message:
    return Message(f"orrery/f1/{device}/up/{kind}", payload)


def state(boot=7, backlog=0, last_seq=None, anchor=None, online=True) -> bytes:
    return codec.encode_state(
        online,
        "1.0.0",
        "greenhouse",
        2,
        "h:abc",
        boot,
        backlog,
        anchor is not None,
        anchor,
        last_seq,
    )


@pytest.fixture
def ingest(db_url):
    engine = engine_for(db_url)
    ing = Ingest(engine, secret=SECRET, reorder_window_ms=1000)
    with engine.begin() as c:
        c.execute(
            sa.insert(DEVICES), [{"name": "dev1", "fleet": "f1", "created_ms": 0}]
        )
    yield ing
    engine.dispose()


def q(ing: Ingest, sql: str, **kw):
    with ing.engine.connect() as c:
        return c.execute(sa.text(sql), kw).all()


def device(ing: Ingest):
    with ing.engine.connect() as c:
        return c.execute(
            sa.select(DEVICES).where(DEVICES.c.name == "dev1")
        ).first()


# --- ranges --------------------------------------------------------------------------------


def test_range_helpers():
    assert merge([(5, 6), (1, 2), (3, 3), (9, 9)]) == [(1, 3), (5, 6), (9, 9)]
    assert merge([(3, 4), (1, 2), (2, 3)]) == [(1, 4)]
    assert subtract([(1, 10)], [(3, 4), (8, 20)]) == [(1, 2), (5, 7)]
    assert subtract([(1, 10)], []) == [(1, 10)]
    assert subtract([(5, 6)], [(1, 10)]) == []


@given(st.lists(st.tuples(st.integers(1, 60), st.integers(0, 5)), max_size=12),
       st.lists(st.tuples(st.integers(1, 60), st.integers(0, 5)), max_size=12))  # fmt: skip
def test_subtract_is_set_difference(a, b):
    ra = [(x, x + n) for x, n in a]
    rb = merge((x, x + n) for x, n in b)
    want = {i for x, y in ra for i in range(x, y + 1)} - {i for x, y in rb for i in range(x, y + 1)}
    got = subtract(ra, rb)
    assert {i for x, y in got for i in range(x, y + 1)} == want
    assert merge(got) == got


# --- schema --------------------------------------------------------------------------------


def test_migrations_build_exactly_the_models(db_url):
    engine = engine_for(db_url)
    upgrade(engine)  # idempotent
    with engine.connect() as c:
        assert compare_metadata(MigrationContext.configure(c), SQLModel.metadata) == []
        head = ScriptDirectory.from_config(alembic_config(engine)).get_current_head()
        assert c.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() == head
    engine.dispose()


def test_commands_keep_their_bodies_across_the_migration_that_moves_them(db_url):
    """0008 moves each command's envelope to command_bodies: a command queued before
    it is published again with the very envelope it was signed with, and re-signed from its
    args."""
    engine = engine_for(db_url, migrate=False)
    upgrade(engine, "0007")
    env = codec.sign_command(keys.device_key(SECRET, "dev1"), "c1", "dev1", "reboot", {"s": 5},
                             1_790_000_000, 1_790_086_400)  # fmt: skip
    with engine.begin() as c:
        c.execute(sa.insert(DEVICES), [{"name": "dev1", "fleet": "f1", "created_ms": 0}])
        c.execute(sa.text(
            "INSERT INTO commands (id, device_id, kind, args, iat, exp, status, source, envelope,"
            " created_ms, sends, resigns) VALUES ('c1', 1, 'reboot', :a, 1790000000, 1790086400,"
            " 'sent', 'test', :e, 0, 1, 0)"), {"a": json.dumps({"s": 5}), "e": env.decode()})  # fmt: skip
    upgrade(engine)
    now = 1_790_000_100_000
    with engine.begin() as c:
        assert [(o.command_id, o.payload) for o in commands.pending_for(c, 1, now)] == [("c1", env)]
        c.execute(sa.text("UPDATE commands SET status = 'refused', skew_boot = 9"))
        again = commands.resign(c, SECRET, now)
    cmd, err = codec.verify_envelope(keys.device_key(SECRET, "dev1"), again[0].payload)
    assert err is None and (cmd["id"], cmd["args"], cmd["iat"]) == ("c1", {"s": 5}, now // 1000)
    with engine.connect() as c:
        assert c.execute(sa.text("SELECT envelope FROM command_bodies")).scalar() == (
            again[0].payload.decode()
        )
    engine.dispose()


# --- exactly once --------------------------------------------------------------------------


def test_duplicates_are_dropped_and_counted(ingest):
    out = ingest.handle([msg("readings", batch(1, 10)), msg("readings", batch(1, 10))], now=1000)
    assert (out.inserted, out.duplicates, out.dead) == (10, 10, 0)
    out = ingest.handle([msg("readings", batch(5, 10))], now=2000)  # overlaps 5..10
    assert (out.inserted, out.duplicates) == (4, 6)
    assert q(ingest, "SELECT count(*) FROM readings")[0][0] == 14
    d = device(ingest)
    assert (d.received, d.duplicates) == (14, 16)
    assert sorted(s for (s,) in q(ingest, "SELECT seq FROM readings")) == list(range(1, 15))


def test_out_of_order_batches_leave_no_gap(ingest):
    ingest.handle([msg("readings", batch(21, 10)), msg("readings", batch(1, 10))], now=0)
    ingest.reconcile(now=100)
    assert q(ingest, "SELECT first, last, status FROM gaps") == [(11, 20, "pending")]
    ingest.handle([msg("readings", batch(11, 10))], now=500)  # within the reorder window
    assert ingest.reconcile(now=5000) == []
    assert q(ingest, "SELECT count(*) FROM gaps")[0][0] == 0
    assert q(ingest, "SELECT first, last FROM received_ranges") == [(1, 30)]


# --- gaps, resends, losses -----------------------------------------------------------------


def test_gap_gets_one_signed_resend_for_the_exact_range(ingest):
    ingest.handle([msg("readings", batch(1, 10)), msg("readings", batch(16, 5))], now=0)
    assert ingest.reconcile(now=500) == []  # reorder window not over yet
    out = ingest.reconcile(now=1500)
    assert [o.command_id for o in out] == ["resend:1:11-15:1"]
    assert out[0].topic == "orrery/f1/dev1/down/cmd"
    # the board's own verifier accepts it with the device's key
    v = codec.Verifier(keys.device_key(SECRET, "dev1"), "dev1")
    code, cmd, detail = v.check(out[0].payload, 2)
    assert code == codec.OK, detail
    assert (cmd["kind"], cmd["args"]) == ("resend", {"first": 11, "last": 15})
    # asking again does not send it twice
    assert ingest.reconcile(now=3000) == []
    assert q(ingest, "SELECT status, command_id, attempts FROM gaps") == [
        ("requested", "resend:1:11-15:1", 1)
    ]
    # the board resends part of it, then acks
    ingest.handle([msg("readings", batch(11, 3, flags=codec.HISTORICAL))], now=3100)
    ingest.handle(
        [msg("acks", codec.encode_ack("resend:1:11-15:1", codec.OK, "resent 11..13; 14..15 not held"))],
        now=3200,
    )
    assert ingest.reconcile(now=3300) == []
    assert q(ingest, "SELECT first, last, status FROM gaps") == [(14, 15, "requested")]
    ingest.reconcile(now=4300)  # a reorder window after the ack: what is missing is lost
    assert q(ingest, "SELECT count(*) FROM gaps")[0][0] == 0
    assert q(ingest, "SELECT first, last, reason, source FROM losses") == [
        (14, 15, "not_held", "cloud")
    ]
    assert q(ingest, "SELECT status FROM commands") == [("done",)]


def test_gap_up_to_the_boards_ack_cursor(ingest):
    # the board says it has issued 50 and 10 are unsent: 1..40 were delivered to the broker
    ingest.handle(
        [msg("state", state(last_seq=50, backlog=10)), msg("readings", batch(1, 30))], now=0
    )
    ingest.reconcile(now=0)
    assert q(ingest, "SELECT first, last FROM gaps") == [(31, 40)]


def test_reported_loss_is_permanent_and_late_data_still_counts(ingest):
    ingest.handle([msg("readings", batch(1, 5)), msg("readings", batch(21, 5))], now=0)
    ingest.handle([msg("loss", codec.encode_loss(7, 6, 15, "store_full"))], now=10)
    assert ingest.reconcile(now=5000) == []  # a hole is a gap once the reorder window has passed
    out = ingest.reconcile(now=6000)
    assert [o.command_id for o in out] == ["resend:1:16-20:1"]  # only what was not reported lost
    assert q(ingest, "SELECT first, last, reason, source FROM losses") == [
        (6, 15, "store_full", "device")
    ]
    # late data for part of the "lost" range is accepted and the loss shrinks
    ingest.handle([msg("readings", batch(6, 2, flags=codec.HISTORICAL))], now=6000)
    ingest.reconcile(now=6001)
    assert q(ingest, "SELECT first, last, reason FROM losses") == [(8, 15, "store_full")]


def test_failed_or_expired_resend_is_asked_again(ingest):
    ingest.resend_ttl_s = 10
    ingest.retry = commands.RetryPolicy(first_s=5, max_s=20)
    ingest.handle([msg("readings", batch(1, 5)), msg("readings", batch(9, 2))], now=0)
    ingest.reconcile(now=0)
    assert [o.command_id for o in ingest.reconcile(now=2000)] == ["resend:1:6-8:1"]
    out = ingest.reconcile(now=13_000)  # the command expired unanswered: ask again
    assert [o.command_id for o in out] == ["resend:1:6-8:2"]
    assert q(ingest, "SELECT id, status FROM commands ORDER BY id") == [
        ("resend:1:6-8:1", "expired"),
        ("resend:1:6-8:2", "queued"),
    ]
    # a failed resend is asked again too, after the retry delay of its attempt (10 s for the 2nd)
    ingest.handle([msg("acks", codec.encode_ack("resend:1:6-8:2", codec.FAILED, "store error"))], now=13_100)
    assert ingest.reconcile(now=13_200) == []
    assert q(ingest, "SELECT status, reason FROM gaps") == [
        ("pending", "resend failed; will ask again")
    ]
    assert [o.command_id for o in ingest.reconcile(now=23_000)] == ["resend:1:6-8:3"]


def test_no_secret_reports_gaps_without_commands(db_url):
    engine = engine_for(db_url)
    ing = Ingest(engine, secret=None, auto_register=True, reorder_window_ms=0)
    ing.handle([msg("readings", batch(1, 2)), msg("readings", batch(5, 2))], now=0)
    assert ing.reconcile(now=1) == []
    assert q(ing, "SELECT first, last, status, reason FROM gaps") == [
        (3, 4, "pending", "missing: no fleet secret to sign a resend")
    ]
    engine.dispose()


def test_pull_returns_the_devices_open_commands(ingest):
    ingest.handle([msg("readings", batch(1, 1)), msg("readings", batch(3, 1))], now=0)
    ingest.reconcile(now=0)
    sent = ingest.reconcile(now=2000)
    assert len(sent) == 1
    out = ingest.handle([msg("pull", codec.encode_pull(7))], now=2500)
    assert [o.command_id for o in out.outgoing] == [sent[0].command_id]
    assert out.outgoing[0].payload == sent[0].payload  # the same signed bytes: idempotent
    ingest.handle(
        [msg("acks", codec.encode_ack(sent[0].command_id, codec.IN_PROGRESS, "queued"))], now=2600
    )
    assert ingest.handle([msg("pull", codec.encode_pull(7))], now=2700).outgoing == []


# --- time ----------------------------------------------------------------------------------


def test_readings_before_time_sync_get_event_time_from_the_boot_anchor(ingest):
    # taken at uptime 1..10 s, before the board had wall time: no anchor in the batch
    ingest.handle([msg("readings", batch(1, 10))], now=NOW)
    assert q(ingest, "SELECT count(*) FROM readings WHERE event_ms IS NULL")[0][0] == 10
    ingest.handle([msg("events", codec.encode_event(7, 1, 3, 500, "idle", "boot", None))], now=NOW)
    # later the board syncs: uptime 100 s was unix 1_790_000_000 s
    ingest.handle([msg("readings", batch(11, 1, flags=codec.SYNCED, anchor=ANCHOR))], now=NOW + 1)
    rows = q(ingest, "SELECT seq, event_ms FROM readings ORDER BY seq")
    assert rows[0] == (1, (1_790_000_000 - 99) * 1000)
    assert rows[10] == (11, (1_790_000_000 - 89) * 1000)
    assert q(ingest, "SELECT event_ms FROM events") == [((1_790_000_000 - 97) * 1000 + 500,)]
    # another boot's readings are untouched
    ingest.handle([msg("readings", batch(12, 1, boot=8))], now=NOW + 2)
    assert q(ingest, "SELECT event_ms FROM readings WHERE boot = 8") == [(None,)]


def test_state_anchor_times_readings_too(ingest):
    ingest.handle([msg("readings", batch(1, 2))], now=NOW)
    ingest.handle([msg("state", state(anchor=ANCHOR, last_seq=2))], now=NOW + 1)
    assert [r[0] for r in q(ingest, "SELECT event_ms FROM readings ORDER BY seq")] == [
        (1_790_000_000 - 99) * 1000,
        (1_790_000_000 - 98) * 1000,
    ]
    # the anchor is learned once: a later, different one does not move stored times
    ingest.handle(
        [msg("readings", batch(3, 1, flags=codec.SYNCED, anchor=(100, 0, 1_800_000_000, 0)))], now=NOW + 2
    )
    assert q(ingest, "SELECT event_ms FROM readings WHERE seq = 3") == [
        ((1_790_000_000 - 97) * 1000,)
    ]


def test_an_anchor_learned_by_another_worker_times_what_this_one_stored(ingest):
    ingest.handle([msg("readings", batch(1, 3))], now=NOW)  # no wall time yet
    other = Ingest(ingest.engine, secret=SECRET)  # another worker, or this one restarted
    other.handle([msg("readings", batch(4, 1, flags=codec.SYNCED, anchor=ANCHOR))], now=NOW)
    assert [t for (t,) in q(ingest, "SELECT event_ms FROM readings ORDER BY seq")] == [
        (1_790_000_000 - 100 + s) * 1000 for s in range(1, 5)
    ]


def test_events_stored_before_their_boot_has_readings_get_its_anchor(ingest):
    ingest.handle([msg("events", codec.encode_event(7, 1, 3, 0, "idle", "boot", None))], now=NOW)
    ingest.handle([msg("readings", batch(4, 1, flags=codec.SYNCED, anchor=ANCHOR))], now=NOW)
    assert q(ingest, "SELECT event_ms FROM events") == [((1_790_000_000 - 97) * 1000,)]


# --- historical and alerts -----------------------------------------------------------------


def test_backlog_never_trips_live_alerts(ingest):
    ingest.alert_rules = (AlertRule.parse("0>150"),)
    ingest.handle([msg("readings", batch(1, 5, flags=codec.HISTORICAL, value=1000))], now=0)
    assert q(ingest, "SELECT count(*) FROM alerts")[0][0] == 0
    assert q(ingest, "SELECT count(*) FROM readings WHERE historical")[0][0] == 5
    ingest.handle([msg("readings", batch(6, 5, value=1000))], now=1)
    ingest.handle([msg("readings", batch(6, 5, value=1000))], now=2)  # redelivery: no second alert
    assert q(ingest, "SELECT rule, seq, value FROM alerts") == [("0>150", 6, 1000)]
    assert device(ingest).historical == 5


def test_alert_rule_parsing():
    assert AlertRule.parse("2<-100") == AlertRule(2, "<", -100)
    for bad in ("x>1", "0=5", "0>40000", "300>1", ""):
        with pytest.raises(ValueError, match="alert rule"):
            AlertRule.parse(bad)


# --- registry ------------------------------------------------------------------------------


def test_state_and_will_drive_the_registry(ingest):
    ingest.handle([msg("state", state(boot=7, backlog=42, last_seq=100))], now=5000)
    d = device(ingest)
    assert (d.online, d.boot, d.fw, d.wf, d.wf_ver, d.backlog, d.last_seq, d.last_seen_ms) == (
        True, 7, "1.0.0", "greenhouse", 2, 42, 100, 5000)  # fmt: skip
    ingest.handle([msg("state", codec.encode_will(6))], now=6000)  # an older boot's will
    assert device(ingest).online is True
    ingest.handle([msg("state", codec.encode_will(7))], now=7000)
    assert device(ingest).online is False
    # a retained state replayed on subscribe does not count as seen
    ingest.handle([Message(T + "state", state(boot=7), retain=True)], now=8000)
    assert device(ingest).last_seen_ms == 5000


def test_state_reports_the_running_bundle_and_its_mpy_version(ingest):
    def bundle_state(boot: int, fw: str, mpy: str | None) -> bytes:
        return codec.encode_state(True, fw, None, None, None, boot, 0, False, None, None, None, mpy)

    ingest.handle([msg("state", state(boot=7))], now=1000)
    assert (device(ingest).fw, device(ingest).mpy) == ("1.0.0", None)
    ingest.handle([msg("state", bundle_state(8, "app-2.0.0", "6.3"))], now=2000)
    assert (device(ingest).fw, device(ingest).mpy) == ("app-2.0.0", "6.3")
    ingest.handle([msg("state", bundle_state(9, "app-2.0.0", None))], now=3000)
    assert device(ingest).mpy == "6.3", "a state without mpy keeps what is known"
    bad = bundle_state(10, "app-2.0.0", "6.3").replace(b'"6.3"', b'"6 3"')
    out = ingest.handle([msg("state", bad)], now=4000)
    assert out.dead == 1, "a malformed mpy makes a malformed state"
    assert q(ingest, "SELECT reason FROM dead_letters")[0][0].startswith("malformed state: mpy")


# --- bad input -----------------------------------------------------------------------------


def test_bad_input_goes_to_the_dead_letter_table(ingest):
    key = keys.device_key(SECRET, "dev1")
    forged = codec.sign_command(b"k" * 32, "c1", "dev1", "reboot", {}, 1, 100)
    good = codec.sign_command(key, "c2", "dev1", "reboot", {}, 1, 100)
    msgs = [
        Message("not/an/orrery/topic", b"x"),
        Message("orrery/f1/dev1/up/nonsense", b"x"),
        msg("readings", batch(1, 1), device="stranger"),
        Message("orrery/f2/dev1/up/readings", batch(1, 1)),
        msg("readings", b"OR" + b"\x00" * 5000),
        msg("readings", b"\xff" * 20),
        msg("state", b"{not json"),
        msg("events", json.dumps({"v": 2}).encode()),
        msg("acks", codec.encode_ack("never-sent", codec.OK, "")),
        Message("orrery/f1/dev1/down/cmd", forged),
        Message("orrery/f1/dev1/down/cmd", good),
        msg("readings", batch(1, 3)),
    ]
    out = ingest.handle(msgs, now=0)
    assert (out.inserted, out.dead) == (3, 10)
    reasons = [r for (r,) in q(ingest, "SELECT reason FROM dead_letters ORDER BY id")]
    assert [r.split(":")[0] for r in reasons] == [
        "wrong topic", "wrong topic", "unknown device", "fleet mismatch", "oversize",
        "malformed batch", "malformed state", "malformed event", "ack for unknown command", "bad signature",
    ]  # fmt: skip
    assert q(ingest, "SELECT topic, size FROM dead_letters WHERE reason LIKE 'oversize%'") == [
        ("orrery/f1/dev1/up/readings", 5002)
    ]


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["readings", "state", "events", "acks", "loss", "pull", "bogus"]),
            st.one_of(
                st.binary(max_size=64),
                st.builds(lambda f, n, b: batch(f, n, boot=b), st.integers(1, 50), st.integers(1, 8), st.integers(1, 3)),
                st.builds(lambda b, f, n: codec.encode_loss(b, f, f + n, "corrupt"), st.integers(1, 3), st.integers(1, 50), st.integers(0, 5)),
                st.builds(lambda d: json.dumps(d).encode(), st.dictionaries(st.sampled_from(["v", "boot", "online", "id", "code", "first"]), st.integers(-3, 3) | st.booleans() | st.none(), max_size=5)),
            ),
        ),
        max_size=8,
    )
)  # fmt: skip
def test_fuzz_every_message_is_stored_or_dead_lettered(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("fz") / "f.db"
    engine = engine_for(f"sqlite:///{path}")
    ing = Ingest(engine, secret=SECRET, auto_register=True, reorder_window_ms=0)
    out = ing.handle([msg(kind, payload) for kind, payload in data], now=1)
    ing.reconcile(now=2)
    ing.reconcile(now=3)
    with engine.connect() as c:
        n = c.execute(sa.text("SELECT count(*) FROM readings")).scalar()
        dead = c.execute(sa.text("SELECT count(*) FROM dead_letters")).scalar()
        gaps = c.execute(sa.text("SELECT first, last FROM gaps")).all()
        received = c.execute(sa.text("SELECT first, last FROM received_ranges")).all()
    assert n == out.inserted and dead == out.dead
    assert not [g for g in gaps if any(a <= g[1] and g[0] <= b for a, b in received)]
    engine.dispose()


# --- reconciling many devices at once ------------------------------------------------------

_TABLES = {  # what reconciliation writes, each row without its id
    "received_ranges": "SELECT d.name, r.first, r.last FROM received_ranges r"
    " JOIN devices d ON d.id = r.device_id",
    "gaps": "SELECT d.name, g.first, g.last, g.status, g.reason, g.detected_ms, g.updated_ms,"
    " g.command_id, g.attempts FROM gaps g JOIN devices d ON d.id = g.device_id",
    "losses": "SELECT d.name, l.first, l.last, l.reason, l.source, l.boot, l.reported_ms"
    " FROM losses l JOIN devices d ON d.id = l.device_id",
    "commands": "SELECT c.id, d.name, c.status FROM commands c JOIN devices d ON d.id = c.device_id",
    "devices": "SELECT name, dirty FROM devices",
}


def _fleet_history(ing: Ingest) -> list:
    # six boards, each in another situation, reconciled together at each step; returns the
    # commands each pass published and every table reconciliation writes after each pass
    def m(kind: str, payload: bytes, dev: str) -> Message:
        return msg(kind, payload, device=dev)

    steps = [
        (0, [m("readings", batch(1, 10), "a"), m("readings", batch(16, 5), "a"),  # a gap
             m("readings", batch(1, 5), "b"), m("readings", batch(21, 5), "b"),  # a loss report
             m("state", state(last_seq=50, backlog=10), "c"), m("readings", batch(1, 30), "c"),
             m("readings", batch(1, 5), "d"), m("readings", batch(9, 2), "d"),  # to fail
             m("readings", batch(1, 2), "e"), m("readings", batch(5000, 2), "e"),  # anomaly
             m("readings", batch(1, 20), "f"), m("readings", batch(21, 20), "f")]),  # none
        (10, [m("loss", codec.encode_loss(7, 6, 15, "store_full"), "b")]),
        (2000, []),
        (3100, [m("readings", batch(11, 3, flags=codec.HISTORICAL), "a"),
                m("readings", batch(6, 2, flags=codec.HISTORICAL), "b"),
                m("acks", codec.encode_ack("resend:4:6-8:1", codec.FAILED, "store error"), "d")]),
        (3200, [m("acks", codec.encode_ack("resend:1:11-15:1", codec.OK, "resent 11..13"), "a")]),
        (3300, [m("readings", batch(3, 2), "e")]),
        (4300, []),
        (30_000, []),
    ]  # fmt: skip
    seen = []
    for now, msgs in steps:
        if msgs:
            ing.handle(msgs, now=now)
        out = sorted(o.command_id for o in ing.reconcile(now=now))
        seen.append((now, out, {t: sorted(q(ing, sql)) for t, sql in _TABLES.items()}))
    return seen


def test_devices_reconciled_together_end_as_each_reconciled_alone(db_url, tmp_path, monkeypatch):
    # one transaction and one query per table for many devices: nothing of one device may leak
    # into another's gaps, losses, ranges or commands (the same history, device by device)
    from cloud.orrery.ingest import handler

    histories = []
    for i, step in enumerate((100, 1)):
        url = db_url if i == 0 else f"sqlite:///{tmp_path / 'alone.db'}"
        engine = engine_for(url)
        with engine.begin() as c:
            c.execute(
                sa.insert(DEVICES),
                [{"name": n, "fleet": "f1", "created_ms": 0} for n in "abcdef"],
            )
        monkeypatch.setattr(handler, "RECONCILE_STEP", step)
        ing = Ingest(engine, secret=SECRET, reorder_window_ms=1000, max_gap=1000)
        ing.retry = commands.RetryPolicy(first_s=5, max_s=20)
        histories.append(_fleet_history(ing))
        engine.dispose()
    together, alone = histories
    assert together == alone
    # and the history is the one each situation leads to
    assert [(now, out) for now, out, _ in together if out] == [
        (2000, ["resend:1:11-15:1", "resend:2:16-20:1", "resend:3:31-40:1", "resend:4:6-8:1"]),
        (30_000, ["resend:4:6-8:2"]),  # the failed one, after its retry delay
    ]
    last = together[-1][2]
    assert [g[:4] for g in last["gaps"]] == [
        ("b", 16, 20, "requested"),
        ("c", 31, 40, "requested"),  # up to the board's ack cursor
        ("d", 6, 8, "requested"),
        ("e", 5, 4999, "anomaly"),
    ]
    assert [x[:5] for x in last["losses"]] == [
        ("a", 14, 15, "not_held", "cloud"),
        ("b", 8, 15, "store_full", "device"),  # shrunk by the late readings
    ]
    assert last["received_ranges"] == [
        ("a", 1, 13), ("a", 16, 20), ("b", 1, 7), ("b", 21, 25), ("c", 1, 30), ("d", 1, 5),
        ("d", 9, 10), ("e", 1, 4), ("e", 5000, 5001), ("f", 1, 40),
    ]  # fmt: skip
    assert {d for d, dirty in last["devices"] if dirty} == set()
