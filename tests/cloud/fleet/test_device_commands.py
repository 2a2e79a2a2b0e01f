"""Operator commands (``cloud/orrery/fleet/device_commands.py``): targets, the checks made before
anything is signed, the rate limit, who sent each, and their way through ``Ingest`` (published
when due, answered on a pull, settled by the board's ack), on SQLite and PostgreSQL; the board's
side is the board's own verifier. End to end over MQTT with virtual boards:
tests/cloud/sim/test_device_commands_e2e.py.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from cloud.orrery.db.engine import engine_for
from cloud.orrery.db.tables import DEVICES
from cloud.orrery.fleet import commands, device_commands, devices, keys, registry
from cloud.orrery.fleet.device_commands import CommandError
from cloud.orrery.ingest.handler import Ingest, Message
from cloud.orrery.sim import workflows
from shared.wire import codec
from shared.wire.verifier import Verifier

SECRET = b"fleet-secret-for-tests-0123456789"
NOW = 1_790_000_000_000  # unix ms


@pytest.fixture
def ingest(db_url):
    engine = engine_for(db_url)
    with engine.begin() as c:
        c.execute(sa.insert(DEVICES), [
            {"name": f"d{i}", "fleet": "f1", "profile": "esp32-devkitc", "created_ms": 0,
             "online": i % 3 != 0, "wf": "greenhouse" if i < 4 else None,
             "wf_ver": 1 if i < 4 else None}
            for i in range(6)
        ])  # fmt: skip
        registry.push(c, workflows.GREENHOUSE_V1.read_bytes(), None, 0)
        ids = dict(c.execute(sa.select(DEVICES.c.name, DEVICES.c.id)).all())
        for name in ("d1", "d2", "d4"):
            devices.set_tags(c, ids[name], [("site", "north")])
    yield Ingest(engine, secret=SECRET, clock=lambda: NOW)
    engine.dispose()


def send(ing: Ingest, target: str, action: str, *params: str, now: int = NOW, **kw):
    with ing.engine.begin() as c:
        return device_commands.send(c, SECRET, target, action, list(params), sent_by="alice",
                                    now=now, **kw)  # fmt: skip


def rows(ing: Ingest, sql: str, **kw) -> list:
    with ing.engine.connect() as c:
        return c.execute(sa.text(sql), kw).all()


def test_a_command_to_one_device_is_signed_for_its_board_and_says_who_sent_it(ingest):
    sent = send(ingest, "d1", "run", "force_cool")
    assert sent.devices == ["d1"] and sent.offline == [] and sent.kind == "run_command"
    (cid,) = sent.ids
    env, status, by, source, due = rows(
        ingest, "SELECT b.envelope, c.status, c.sent_by, c.source, c.due_ms FROM commands c"
        " JOIN command_bodies b ON b.id = c.id"
    )[0]
    assert (status, by, source, due) == ("queued", "alice", "operator", NOW)
    board = Verifier(keys.device_key(SECRET, "d1"), "d1")
    code, cmd, detail = board.check(env.encode(), NOW // 1000)
    assert code == codec.OK, detail
    assert (cmd["id"], cmd["kind"], cmd["args"]) == (cid, "run_command", {"name": "force_cool"})
    # another board's key does not verify it
    other = Verifier(keys.device_key(SECRET, "d2"), "d2")
    assert other.check(env.encode(), NOW // 1000)[0] != codec.OK


def test_a_target_expression_selects_as_a_rollout_target_does(ingest):
    sent = send(ingest, "tag.site=north", "reboot")
    assert sent.devices == ["d1", "d2", "d4"]
    sent = send(ingest, "tag.site=north,wf=none", "reboot")
    assert sent.devices == ["d4"]
    sent = send(ingest, "device=d*,tag.site!=north", "config", "log_level=debug")
    assert sent.devices == ["d0", "d3", "d5"] and sent.offline == ["d0", "d3"]
    assert rows(ingest, "SELECT count(*), count(DISTINCT id) FROM commands")[0] == (7, 7)


@pytest.mark.parametrize(
    ("target", "action", "params", "why"),
    [
        ("nope", "reboot", [], "unknown device 'nope'"),
        ("tag.site=south", "reboot", [], "target 'tag.site=south' selects no device"),
        ("tag.site=north,x", "reboot", [], "target: 'x' is not FIELD=VALUE"),
        ("colour=red", "reboot", [], "unknown field 'colour'"),
        ("d1", "shout", [], "unknown command 'shout'"),
        ("d1", "run", [], "run takes one workflow command NAME"),
        ("d1", "run", ["force_cool", "now"], "run takes one workflow command NAME"),
        ("d1", "run", ["water"], "run 'water': the workflow of 1 of the 1 target device(s) has "
                                 "no such command: greenhouse@1 (its commands: force_cool, "
                                 "manual, reset, auto)"),
        ("d1", "reboot", ["now"], "reboot takes nothing more, got 'now'"),
        ("d1", "cancel", ["a", "b"], "cancel takes at most the id"),
        ("d1", "config", [], "config takes KEY=VALUE changes"),
        ("d1", "config", ["log_level"], "config: 'log_level' is not KEY=VALUE"),
        ("d1", "config", ["=debug"], "config: '=debug' is not KEY=VALUE"),
        ("d1", "config", ["a.b.c=1"], "config: 'a.b.c=1' is not KEY=VALUE"),
        ("d1", "config", ["log_levl=debug"], "config: log_levl: unknown key"),
        ("d1", "config", ["log_level=loud"], "config: log_level: must be one of debug, info"),
        ("d1", "config", ["health_window_s=5"], "config: health_window_s: must be 10..86400, got 5"),
        ("d1", "config", ["broker.prt=1"], "config: broker.prt: unknown key"),
        ("d1", "config", ["fleet="], "config: fleet: required"),
        ("d1", "config", ["device_id=d9"], "config: device_id: cannot be changed"),
        ("d1", "config", ["ntp_host=a", "ntp_host=b"], "config: 'ntp_host' given twice"),
        ("d1", "config", ["wifi=1", "wifi.ssid=x"], "config: 'wifi.ssid' and 'wifi' both given"),
    ],
)  # fmt: skip
def test_bad_inputs_are_refused_before_anything_is_signed(ingest, target, action, params, why):
    with pytest.raises(CommandError) as e:
        send(ingest, target, action, *params)
    assert why in str(e.value) and "\n" not in str(e.value)
    assert rows(ingest, "SELECT count(*) FROM commands") == [(0,)]


def test_a_workflow_command_is_checked_only_where_the_workflow_is_known(ingest):
    # d4 and d5 report no workflow: their workflow's commands are not known, so not checked
    assert send(ingest, "d4", "run", "water").devices == ["d4"]
    with pytest.raises(CommandError, match="3 of the 5 target device"):
        send(ingest, "device=d[1-5]", "run", "water")


def test_config_values_are_json_where_they_parse_and_text_otherwise(ingest):
    sent = send(ingest, "d1", "config", "health_window_s=300", "broker.tls=false",
                "broker.port=1883", "ntp_host=10.0.0.1", "wifi.password=", "username=")  # fmt: skip
    assert sent.args == {"changes": {
        "health_window_s": 300, "broker": {"tls": False, "port": 1883}, "ntp_host": "10.0.0.1",
        "wifi": {"password": None}, "username": None,
    }}  # fmt: skip
    # the values stay out of the listing (a password may be among them); the keys show
    with ingest.engine.connect() as c:
        (row,) = device_commands.listing(c, device="d1")
    assert row["args"] == {"changes": ["broker", "health_window_s", "ntp_host", "username", "wifi"]}


def test_the_rate_limit_spreads_a_send_and_holds_across_sends(ingest):
    a = send(ingest, "all", "reboot", rate="60/min")  # one a second
    dues = [r[0] for r in rows(ingest, "SELECT due_ms FROM commands ORDER BY due_ms")]
    assert dues == [NOW + 1000 * i for i in range(6)]
    # a second send starts after the first one's last command
    send(ingest, "d1", "run", "manual", now=NOW + 500, rate="60/min")
    assert rows(ingest, "SELECT max(due_ms) FROM commands") == [(NOW + 6000,)]
    # the companion publishes each one once it is due, and no sooner
    published = [o.command_id for o in ingest.queued_commands(NOW + 2500)]
    assert published == a.ids[:3]
    ingest.mark_sent(published, NOW + 2500)
    assert len(ingest.queued_commands(NOW + 10_000)) == 4
    with pytest.raises(CommandError, match="after it expires"):
        send(ingest, "all", "reboot", rate="1/min", ttl_s=120)


def test_offline_board_gets_its_command_on_its_pull_and_its_ack_settles_it(ingest):
    sent = send(ingest, "d3", "config", "log_level=debug")
    assert sent.offline == ["d3"]
    (cid,) = sent.ids
    # the companion publishes it (to the broker, which holds it for the board's session)
    ingest.mark_sent([o.command_id for o in ingest.queued_commands(NOW)], NOW)
    # the board comes back and pulls: the command is in the answer
    pull = Message("orrery/f1/d3/up/pull", codec.encode_pull(5))
    out = ingest.handle([pull], NOW + 60_000).outgoing
    assert [o.command_id for o in out] == [cid]
    assert out[0].topic == "orrery/f1/d3/down/cmd"
    ack = Message("orrery/f1/d3/up/acks", codec.encode_ack(cid, codec.OK, "saved"))
    ingest.handle([ack], NOW + 61_000)
    with ingest.engine.connect() as c:
        shown = device_commands.show(c, cid)
    assert (shown["state"], shown["result"], shown["detail"]) == ("done", "OK", "saved")
    assert (shown["sent_by"], shown["sends"], shown["device"]) == ("alice", 1, "d3")
    # answered: a later pull brings nothing back
    assert ingest.handle([pull], NOW + 120_000).outgoing == []


def test_listing_filters_by_device_and_state(ingest):
    send(ingest, "tag.site=north", "reboot")
    ingest.mark_sent([o.command_id for o in ingest.queued_commands(NOW + 3000)], NOW + 3000)
    with ingest.engine.connect() as c:
        assert {r["device"] for r in device_commands.listing(c)} == {"d1", "d2", "d4"}
        assert [r["device"] for r in device_commands.listing(c, device="d2")] == ["d2"]
        assert len(device_commands.listing(c, state="sent")) == 3
        assert device_commands.listing(c, state="done") == []
        with pytest.raises(CommandError, match="unknown device 'd9'"):
            device_commands.listing(c, device="d9")
        with pytest.raises(CommandError, match="--state 'finished': use one of"):
            device_commands.listing(c, state="finished")
        with pytest.raises(CommandError, match="no command 'op:x:1'"):
            device_commands.show(c, "op:x:1")
    envelope = rows(ingest, "SELECT envelope FROM command_bodies LIMIT 1")[0][0]
    assert commands.signed_args(envelope) == {}
