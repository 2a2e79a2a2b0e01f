"""The command queue (``cloud/orrery/fleet/commands.py``) and each boot's clock estimate
(``cloud/orrery/ingest/skew.py``), driven through ``Ingest`` with the board's own wire format on
virtual time, on real databases (SQLite and PostgreSQL, each test on both); the board's side is
the board's own verifier. The MQTT path (broker kill -9, resubscription, skewed virtual boards)
is in tests/cloud/ingest/test_reliability.py.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import sqlalchemy as sa

from cloud.orrery.db.engine import engine_for
from cloud.orrery.db.tables import DEVICES
from cloud.orrery.fleet import commands, devices, keys
from cloud.orrery.ingest.handler import Ingest, Message
from shared.wire import codec
from tests.support.cli import flat, run

SECRET = b"fleet-secret-for-tests-0123456789"
KEY = keys.device_key(SECRET, "dev1")
T = 1_790_000_000  # unix s: the companion's clock at uptime 100 s of boot 7
BOARD = "orrery/f1/dev1/up/"


@pytest.fixture
def ingest(db_url):
    engine = engine_for(db_url)
    ing = Ingest(engine, secret=SECRET, reorder_window_ms=1000,
                 retry=commands.RetryPolicy(first_s=10, max_s=40))  # fmt: skip
    with engine.begin() as c:
        c.execute(sa.insert(DEVICES), [{"name": "dev1", "fleet": "f1", "created_ms": 0}])
    yield ing
    engine.dispose()


def q(ing: Ingest, sql: str, **kw):
    with ing.engine.connect() as c:
        return c.execute(sa.text(sql), kw).all()


def state(boot=7, anchor=None, online=True, last_seq=None) -> Message:
    payload = codec.encode_state(online, "1.0.0", "gh", 1, "h:1", boot, 0, anchor is not None,
                                 anchor, last_seq)  # fmt: skip
    return Message(BOARD + "state", payload)


def readings(first: int, n: int, up_s: int, boot=7, anchor=None, flags=0) -> Message:
    """``n`` readings from seq ``first``, the newest taken at uptime ``up_s``."""
    recs = [(up_s - n + 1 + i, 0, i, 0) for i in range(n)]
    flags |= codec.SYNCED if anchor else 0
    return Message(BOARD + "readings", codec.encode_batch(boot, first, recs, flags, anchor))


def ack(cmd_id: str, code: int, detail: str = "") -> Message:
    return Message(BOARD + "acks", codec.encode_ack(cmd_id, code, detail))


def gap_resend(ing: Ingest, now_ms: int) -> commands.Outgoing:
    """Seqs 1..5 and 9..10 arrive, so 6..8 is a gap; its resend is queued and published."""
    ing.handle([readings(1, 5, 50), readings(9, 2, 60)], now=now_ms)
    ing.reconcile(now=now_ms)
    out = ing.reconcile(now=now_ms + 1000)
    assert [o.command_id for o in out] == ["resend:1:6-8:1"]
    ing.mark_sent([out[0].command_id], now=now_ms + 1000)
    return out[0]


def ids(out) -> list[str]:
    return [o.command_id for o in out]


def test_an_unanswered_command_is_published_again_with_backoff_while_its_device_is_online(ingest):
    ingest.handle([state()], now=0)
    cmd = gap_resend(ingest, 0)  # published at 1 s
    assert ingest.queued_commands(now=10_999) == []
    again = ingest.queued_commands(now=11_000)  # no ack 10 s after the first publish
    assert ids(again) == [cmd.command_id] and again[0].payload == cmd.payload  # the same bytes
    ingest.mark_sent(ids(again), now=11_000)
    assert ingest.queued_commands(now=30_999) == []  # then 20 s, 40 s, 40 s ...
    assert ids(ingest.queued_commands(now=31_000)) == [cmd.command_id]
    ingest.mark_sent([cmd.command_id], now=31_000)
    assert q(ingest, "SELECT status, sends, retry_ms FROM commands") == [("sent", 3, 71_000)]
    # an offline board gets it from its session or its pull, not from retries
    ingest.handle([Message(BOARD + "state", codec.encode_will(7))], now=40_000)
    assert ingest.queued_commands(now=200_000) == []
    ingest.handle([state()], now=200_000)
    assert ids(ingest.queued_commands(now=200_000)) == [cmd.command_id]
    # answered: never again
    ingest.handle([ack(cmd.command_id, codec.IN_PROGRESS, "queued")], now=200_100)
    assert ingest.queued_commands(now=10**9) == []


def test_a_pull_and_a_resubscription_bring_back_every_pending_command(ingest):
    ingest.handle([state()], now=0)
    cmd = gap_resend(ingest, 0)
    with ingest.engine.begin() as c:
        c.execute(sa.insert(DEVICES), [{"name": "dev2", "fleet": "f1", "created_ms": 0}])
        other = commands.queue(c, SECRET, device_id=2, device="dev2", fleet="f1", cmd_id="r2",
                               kind="reboot", args={}, source="test", now_ms=2000)  # fmt: skip
    assert other is not None
    pulled = ingest.handle([Message(BOARD + "pull", codec.encode_pull(7))], now=3000).outgoing
    assert ids(pulled) == [cmd.command_id] and pulled[0].payload == cmd.payload
    # after the companion subscribed again: every open command, of every device
    assert ids(ingest.open_commands(now=3000)) == [cmd.command_id, "r2"]
    ingest.handle([ack(cmd.command_id, codec.IN_PROGRESS, "queued")], now=3100)
    assert ids(ingest.open_commands(now=3100)) == ["r2"]
    assert ids(ingest.open_commands(now=(2 + 86400) * 1000)) == []  # expired


def test_a_repeated_ack_is_recorded_once(ingest):
    # a command delivered twice (the broker's session and the answer to the board's pull) is
    # run once, and its stored ack sent again: the companion keeps the first, with its time
    ingest.handle([state()], now=0)
    cmd = gap_resend(ingest, 0)
    ingest.handle([ack(cmd.command_id, codec.OK, "sent again")], now=5000)
    ingest.handle([ack(cmd.command_id, codec.OK, "sent again")], now=9000)
    ingest.handle([ack(cmd.command_id, codec.OK, "sent again")] * 2, now=9500)
    assert q(ingest, "SELECT status, acked_ms, ack_code, ack_detail FROM commands") == [
        ("done", 5000, codec.OK, "sent again")
    ]
    # another result is still recorded (a late DUPLICATE never replaces one, as before)
    ingest.handle([ack(cmd.command_id, codec.FAILED, "disk full")], now=9900)
    assert q(ingest, "SELECT status, acked_ms FROM commands") == [("failed", 9900)]
    assert q(ingest, "SELECT count(*) FROM dead_letters") == [(0,)]


def test_commands_are_signed_in_the_boards_time_estimated_from_live_batches(ingest, caplog):
    # the board's clock is 1 h slow: uptime 100 s was T - 3600 on it
    anchor = (100, 0, T - 3600, 0)
    caplog.set_level(logging.INFO, logger="orrery.ingest")
    ingest.handle([state(anchor=anchor)], now=T * 1000)
    assert q(ingest, "SELECT clock_offset_ms FROM device_sessions") == [(None,)]
    # a live batch whose newest reading was taken at uptime 160 s, stored 2.5 s later
    ingest.handle([readings(1, 5, 160, anchor=anchor)], now=(T + 62) * 1000 + 500)
    assert q(ingest, "SELECT clock_offset_ms FROM device_sessions") == [(-3_602_500,)]
    assert '"event": "clock_offset"' in caplog.text and '"offset_s": -3602' in caplog.text
    # backlog says nothing about the delay (historical), nor does a fresher-looking value by
    # less than a second; a fresher live batch does
    ingest.handle([readings(6, 2, 400, anchor=anchor, flags=codec.HISTORICAL)], now=(T + 70) * 1000)
    ingest.handle([readings(8, 2, 170, anchor=anchor)], now=(T + 72) * 1000)
    assert q(ingest, "SELECT clock_offset_ms FROM device_sessions") == [(-3_602_500,)]
    ingest.handle([readings(10, 2, 180, anchor=anchor)], now=(T + 80) * 1000 + 300)
    assert q(ingest, "SELECT clock_offset_ms FROM device_sessions") == [(-3_600_300,)]
    with ingest.engine.connect() as c:
        assert devices.device_rows(c)[0]["clock_offset_s"] == -3600
        assert devices.sessions(c, 1)[0]["clock_offset_s"] == -3600
    # a resend is signed with that skew (floored: never above the estimate) ...
    ingest.handle([readings(14, 1, 190, anchor=anchor)], now=(T + 90) * 1000)
    ingest.reconcile(now=(T + 91) * 1000)  # a gap, once the reorder window has passed
    out = ingest.reconcile(now=(T + 92) * 1000)
    assert ids(out) == ["resend:1:12-13:1"]
    body = json.loads(json.loads(out[0].payload)["b"])
    assert (body["iat"], body["skew"]) == (T + 92, -3601)
    # ... so the board, whose clock reads T - 3508 now, accepts it
    v = codec.Verifier(KEY, "dev1")
    assert v.check(out[0].payload, T + 92 - 3600)[0] == codec.OK
    assert q(ingest, "SELECT skew_s, skew_boot FROM commands") == [(-3601, 7)]


def test_a_command_refused_by_the_boards_clock_is_signed_again_only_when_the_estimate_changes(
    ingest, caplog
):
    ingest.handle([state()], now=T * 1000)  # no wall time yet: no estimate, skew 0
    cmd = gap_resend(ingest, T * 1000)
    v = codec.Verifier(KEY, "dev1")
    board_now = T - 3600  # the board's clock is 1 h slow
    code, _, detail = v.check(cmd.payload, board_now)
    assert (code, detail) == (codec.EXPIRED, "issued in the future")
    ingest.handle([ack(cmd.command_id, code, detail)], now=T * 1000 + 2000)
    assert q(ingest, "SELECT status FROM commands") == [("refused",)]
    assert '"event": "command_refused_by_clock"' in caplog.text
    # nothing has changed: it would be refused the same way, so it is not sent again
    assert ingest.queued_commands(now=T * 1000 + 60_000) == []
    ingest.reconcile(now=T * 1000 + 60_000)
    assert q(ingest, "SELECT status, reason FROM gaps") == [
        ("requested", "missing: resend refused by the board's clock (issued in the future); "
                      "signed again once its clock is estimated anew")
    ]  # fmt: skip
    # the board learns wall time; its live batches say its clock is 1 h slow: signed again,
    # same id, and the board runs it
    anchor = (100, 0, T - 3600 + 60, 0)
    ingest.handle([readings(11, 1, 160, anchor=anchor)], now=(T + 120) * 1000)
    out = ingest.queued_commands(now=(T + 121) * 1000)
    assert ids(out) == [cmd.command_id] and out[0].payload != cmd.payload
    assert q(ingest, "SELECT status, resigns, skew_s FROM commands") == [("queued", 1, -3600)]
    assert v.check(out[0].payload, board_now + 121)[0] == codec.OK


def test_a_command_that_keeps_failing_the_same_way_is_not_issued_again(ingest):
    ingest.handle([state()], now=T * 1000)
    cmd = gap_resend(ingest, T * 1000)
    expired = codec.EXPIRED
    # refused with each new estimate of the board's clock (new boots, each off another way)
    for boot in (8, 9, 10, 11):
        ingest.handle([ack(cmd.command_id, expired, "expired")], now=(T + boot) * 1000)
        anchor = (100, 0, T + boot * 1000, 0)
        ingest.handle([state(boot=boot, anchor=anchor), readings(3 + boot, 1, 100, boot, anchor)],
                      now=(T + boot) * 1000)  # fmt: skip
        ingest.queued_commands(now=(T + boot) * 1000)
    assert q(ingest, "SELECT status, resigns, ack_detail FROM commands") == [
        ("failed", 3, "refused by the board's clock after 4 signings: expired")
    ]
    # nor does reconciliation ask for it under another id while the estimate stays the same
    for now in ((T + 100) * 1000, (T + 1000) * 1000):
        ingest.reconcile(now=now)
        assert q(ingest, "SELECT count(*) FROM commands")[0][0] == 1
    assert "not asked again until its clock is estimated anew" in q(ingest, "SELECT reason FROM gaps")[0][0]
    # a new estimate (the board booted again): asked again, under a new id
    anchor = (100, 0, T, 0)
    ingest.handle([state(boot=12, anchor=anchor), readings(15, 1, 100, 12, anchor)],
                  now=(T + 1001) * 1000)  # fmt: skip
    assert ids(ingest.reconcile(now=(T + 1002) * 1000)) == ["resend:1:6-8:2"]


def test_a_resend_answered_without_its_readings_is_asked_again(ingest):
    ingest.handle([state()], now=0)
    cmd = gap_resend(ingest, 0)
    # a DUPLICATE without a result (the board restarted since it took the resend) ...
    ingest.handle([ack(cmd.command_id, codec.DUPLICATE, "already accepted")], now=2000)
    assert q(ingest, "SELECT status, ack_code FROM commands") == [("done", codec.DUPLICATE)]
    ingest.reconcile(now=3000)
    assert q(ingest, "SELECT status, reason FROM gaps") == [
        ("pending", "resend answered DUPLICATE without a result (the board restarted); will ask again")
    ]  # fmt: skip
    out = ingest.reconcile(now=11_000)  # after the retry delay of the first attempt
    assert ids(out) == ["resend:1:6-8:2"]
    # ... and one accepted but never finished
    ingest.mark_sent(ids(out), now=11_000)
    ingest.handle([ack("resend:1:6-8:2", codec.IN_PROGRESS, "queued")], now=11_100)
    assert ingest.reconcile(now=20_000) == []
    assert ids(ingest.reconcile(now=31_000)) == ["resend:1:6-8:3"]  # 20 s for the 2nd attempt
    # an answer never goes back to "unknown": a late DUPLICATE leaves the result as it was
    ingest.handle([ack("resend:1:6-8:3", codec.OK, "resent 6..8")], now=31_500)
    ingest.handle([ack("resend:1:6-8:3", codec.DUPLICATE, "already accepted")], now=31_600)
    assert q(ingest, "SELECT status, ack_code FROM commands WHERE id = 'resend:1:6-8:3'") == [
        ("done", codec.OK)
    ]


def test_devices_list_and_show_the_clock_offset(tmp_path):
    url = f"sqlite:///{tmp_path / 'o.db'}"
    run("devices", "add", "dev1", "dev2", "--fleet", "f1", "--db", url)
    engine = engine_for(url)
    ing = Ingest(engine)
    anchor = (100, 0, T + 365 * 86400, 0)  # a year fast
    ing.handle([state(anchor=anchor), readings(1, 3, 160, anchor=anchor)], now=(T - 60) * 1000)
    engine.dispose()
    rows = json.loads(run("devices", "list", "--db", url, "--json").stdout)
    assert [r["clock_offset_s"] for r in rows] == [365 * 86400 + 120, None]
    out = flat(run("devices", "list", "--db", url).stdout)
    assert "clock" in out and "+365d2m" in out
    assert "1 device(s) with a clock off by 300 s or more (commands are signed in their time): dev1" in out
    show = flat(run("devices", "show", "dev1", "--db", url).stdout)
    assert "clock_offset_s │ 31536120 (+365d2m: board minus companion)" in show
    assert show.count("+365d2m") == 2  # and in the boot's row


def test_serve_refuses_a_retry_cap_below_the_first_delay(tmp_path):
    r = run("serve", "--db", f"sqlite:///{tmp_path / 'o.db'}", "--command-retry", "60",
            "--command-retry-max", "30", ok=False)  # fmt: skip
    assert "--command-retry-max 30 is below --command-retry 60" in r.output
    assert "Traceback" not in r.output


def test_queue_many_inserts_each_command_and_its_body_once(ingest):
    """A command and its envelope (command_bodies) are written once per id, on
    both databases (PostgreSQL: INSERT ... FROM unnest and COPY): queued again, an id is not
    returned to publish and keeps the envelope first signed; an id twice in one call is
    stored once, as its first."""
    eng = ingest.engine
    with eng.begin() as c:
        c.execute(sa.insert(DEVICES), [{"name": "dev2", "fleet": "f1", "created_ms": 0}])
        ids = dict(c.execute(sa.select(DEVICES.c.name, DEVICES.c.id)).all())
    args = {"blob": "QUJD" * 3000, "note": 'a "quoted"\\back\tslash\n', "n": 1}
    targets = [(ids["dev1"], "dev1", "f1", "k1"), (ids["dev2"], "dev2", "f1", "k2"),
               (ids["dev2"], "dev2", "f1", "k2")]  # fmt: skip
    with eng.begin() as c:
        first = commands.queue_many(c, SECRET, targets, kind="reboot", args=args, source="t",
                                    now_ms=T * 1000)  # fmt: skip
    with eng.begin() as c:
        again = commands.queue_many(c, SECRET, targets[:2], kind="reboot", args={"other": 2},
                                    source="t", now_ms=T * 1000 + 5000)  # fmt: skip
    assert [o.command_id for o in first if o] == ["k1", "k2", "k2"] and again == [None, None]
    bodies = {i: e.encode() for i, e in q(ingest, "SELECT id, envelope FROM command_bodies")}
    assert bodies == {"k1": first[0].payload, "k2": first[1].payload}
    assert [commands.signed_args(e.decode()) for e in bodies.values()] == [args, args]
    for name, o in (("dev1", first[0]), ("dev2", first[1])):
        cmd, err = codec.verify_envelope(keys.device_key(SECRET, name), o.payload)
        assert err is None and cmd["args"] == args and cmd["dev"] == name
    assert q(ingest, "SELECT id, status, kind, iat, sends FROM commands ORDER BY id") == [
        ("k1", "queued", "reboot", T, 0), ("k2", "queued", "reboot", T, 0),
    ]  # fmt: skip


def test_safe_wait_is_the_detail_boards_wait_with():
    # rollout status finds boards waiting for a safe state by their IN_PROGRESS ack's detail
    # (firmware/safe.py; tests/dual/test_node_safe.py checks what a board sends)
    src = (Path(__file__).resolve().parents[3] / "firmware" / "safe.py").read_text()
    assert f'"{commands.SAFE_WAIT} (in {{}}; up to {{}} s)"' in src
