"""Operator commands end to end (issue 15, "Device commands"): ``orrery devices send`` (the CLI,
in-process) to virtual boards running the real firmware, through a real Mosquitto and the
companion in its own process (``orrery serve``'s service), on a real SQLite database.

One device gets a workflow command while online; another gets a config change while offline;
a tag of 10 boards, 3 of them offline (30%), gets a reboot. The offline boards come back later:
every command is delivered (the broker's session or the board's pull), run once by its board
and acked; ``orrery commands list|show`` show it, with who sent it. An MQTT observer on the
boards' ack topic counts each ack the boards published.

The scenario runs once (module fixture, a few virtual minutes, under a minute of real time); each test
checks one promise.
"""

from __future__ import annotations

import getpass
import json
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt
import pytest
from typer.testing import CliRunner

from cloud.orrery.cli import app
from cloud.orrery.clock import iso
from cloud.orrery.sim.fleet import VirtualFleet
from firmware import gate
from shared.wire import codec

pytestmark = pytest.mark.slow

N = 20
TAGGED = 10
AWAY = 3  # 30% of the tag
MIN = 60_000
runner = CliRunner()


@dataclass
class Outcome:
    names: list[str]
    tagged: list[str]
    away: list[str]  # tagged boards that were offline when the reboot was sent
    one: str  # online: run manual
    lone: str  # offline: config log_level=debug
    sent: dict = field(default_factory=dict)  # what each send printed (--json)
    waiting: list = field(default_factory=list)  # commands list --json while the boards were away
    settled_online: bool = False
    settled: bool = False
    final: list = field(default_factory=list)  # commands list --json at the end
    shown: dict = field(default_factory=dict)  # commands show --json of the lone board's
    resets: dict = field(default_factory=dict)  # board -> resets its firmware asked for
    boots: dict = field(default_factory=dict)
    back_ms: int = 0  # virtual unix ms when the offline boards were given their network back
    acks: dict = field(default_factory=dict)  # command id -> [(code, detail)] seen on the broker
    first_acked: dict = field(default_factory=dict)  # command id -> acked_ms when first seen
    final_acked_ms: dict = field(default_factory=dict)  # command id -> acked_ms at the end
    board_acks: dict = field(default_factory=dict)  # board -> its stored (code, detail) by id
    states: dict = field(default_factory=dict)  # board -> workflow state
    lone_config: dict = field(default_factory=dict)
    log: str = ""


def cli(f: VirtualFleet, *args: str) -> str:
    r = runner.invoke(app, [*args, "--db", f.db_url], env={"ORRERY_SECRET": f.secret.decode()})
    assert r.exit_code == 0, r.output
    return r.stdout


def observe_acks(f: VirtualFleet) -> tuple[mqtt.Client, dict]:
    """An MQTT client of our own on the boards' ack topic: every ack a board published."""
    seen: dict[str, list] = defaultdict(list)
    lock = threading.Lock()
    ready = threading.Event()

    def on_message(client, userdata, m) -> None:
        a, err = codec.decode_ack(m.payload)
        if not err:
            with lock:
                seen[a["id"]].append((a["code"], a["detail"]))

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"ack-observer-{f.run_id}")
    c.on_message = on_message
    c.on_subscribe = lambda *a: ready.set()
    c.connect(f.host, f.port)
    c.subscribe(f"orrery/{f.fleet_id}/+/up/acks", qos=1)
    c.loop_start()
    assert ready.wait(10), "the ack observer did not subscribe"
    return c, seen


def until(f: VirtualFleet, pred, real_s: float = 90) -> bool:
    """Run the fleet a virtual second at a time, at most 100 virtual seconds a real second (the
    companion works in real time), until ``pred()`` or ``real_s`` real seconds passed."""
    deadline = time.monotonic() + real_s
    while not pred():
        if time.monotonic() > deadline:
            return False
        f.run(1000)
        time.sleep(0.01)
    return True


def offline(f: VirtualFleet) -> set[str]:
    return {r[0] for r in f.rows("SELECT name FROM devices WHERE NOT online")}


def commands(f: VirtualFleet, first_acked: dict[str, int]) -> dict[str, str]:
    """Each operator command's state; ``first_acked`` keeps the ack time first seen of each."""
    rows = f.rows("SELECT id, status, acked_ms FROM commands WHERE source = 'operator'")
    for cid, _, acked in rows:
        if acked is not None:
            first_acked.setdefault(cid, acked)
    return {cid: status for cid, status, _ in rows}


@pytest.fixture(scope="module")
def scenario(tmp_path_factory) -> Outcome:
    tmp = tmp_path_factory.mktemp("commands")
    f = VirtualFleet(N, f"sqlite:///{tmp / 'cloud.db'}", seed=11, uplink_ms=10_000,
                     health_window_s=30)  # fmt: skip
    observer = None
    try:
        observer, seen = observe_acks(f)
        out = run(f)
        observer.loop_stop()
        out.acks = dict(seen)
        yield out
    finally:
        if observer is not None:
            observer.disconnect()
        f.close()


def run(f: VirtualFleet) -> Outcome:
    names = sorted(f.boards)
    tagged = names[:TAGGED]
    out = Outcome(names, tagged, away=tagged[2 : 2 + AWAY], one=names[15], lone=names[16])
    f.start_companion()
    assert until(f, lambda: f.online_count() == N), "every board came online"
    for n in tagged:
        cli(f, "devices", "tag", n, "site=north")
    for n in [*out.away, out.lone]:
        f.go_away(n)
    gone = {*out.away, out.lone}
    assert until(f, lambda: offline(f) == gone), (offline(f), gone, f.companion_tail())

    out.sent["one"] = json.loads(cli(f, "devices", "send", out.one, "run", "manual", "--json"))
    out.sent["lone"] = json.loads(
        cli(f, "devices", "send", out.lone, "config", "log_level=debug", "--json")
    )
    out.sent["tag"] = json.loads(
        cli(f, "devices", "send", "tag.site=north", "reboot", "--rate", "600/min", "--json")
    )
    waiting_ids = {out.sent["lone"]["ids"][0]} | {
        i for i, d in zip(out.sent["tag"]["ids"], out.sent["tag"]["devices"], strict=True)
        if d in out.away
    }  # fmt: skip
    out.settled_online = until(
        f, lambda: all(s == "done" for i, s in commands(f, out.first_acked).items() if i not in waiting_ids)
    )
    f.run(MIN)  # the offline boards stay away a while longer
    out.waiting = json.loads(cli(f, "commands", "list", "--json"))

    out.back_ms = f.now_ms
    for n in gone:
        f.come_back(n)
    out.settled = until(f, lambda: set(commands(f, out.first_acked).values()) == {"done"})
    f.run(2 * MIN)  # what a redelivery would change happens now
    f.catch_up()
    out.final = json.loads(cli(f, "commands", "list", "--json"))
    out.final_acked_ms = dict(f.rows("SELECT id, acked_ms FROM commands WHERE source = 'operator'"))
    out.shown = json.loads(cli(f, "commands", "show", out.sent["lone"]["ids"][0], "--json"))
    out.resets = {n: b.resets for n, b in f.boards.items()}
    out.boots = {n: b.stats.boots for n, b in f.boards.items()}
    ids = [i for s in out.sent.values() for i in s["ids"]]
    out.board_acks = {  # what each board remembers for a duplicate (firmware.gate)
        n: {i: gate.stored_ack(b.node, i) for i in ids if gate.stored_ack(b.node, i)}
        for n, b in f.boards.items()
    }
    out.states = {n: b.node.wf.ex.state_name() for n, b in f.boards.items()}
    with open(f.root / out.lone / "config.json") as fh:
        out.lone_config = json.load(fh)
    out.log = f.companion_tail(3000)
    return out


def test_each_send_queued_one_command_per_device_and_says_who_sent_it(scenario):
    o = scenario
    assert o.sent["one"]["devices"] == [o.one] and o.sent["one"]["offline"] == []
    assert o.sent["lone"]["offline"] == [o.lone]
    assert o.sent["tag"]["devices"] == o.tagged
    assert sorted(o.sent["tag"]["offline"]) == sorted(o.away)
    ids = [i for s in o.sent.values() for i in s["ids"]]
    assert len(ids) == len(set(ids)) == TAGGED + 2
    assert {r["sent_by"] for r in o.final} == {getpass.getuser()}


def test_online_boards_answer_at_once_and_offline_ones_wait(scenario):
    o = scenario
    assert o.settled_online, o.log[-1500:]
    by_device = {r["device"]: r for r in o.waiting}
    for n in [*o.away, o.lone]:
        assert by_device[n]["state"] in ("queued", "sent") and by_device[n]["result"] is None
    for n in [o.one, *(t for t in o.tagged if t not in o.away)]:
        assert (by_device[n]["state"], by_device[n]["result"]) == ("done", "OK")


def test_every_command_is_delivered_after_reconnect_and_acked_ok(scenario):
    o = scenario
    assert o.settled, (o.final, o.log[-1500:])
    assert len(o.final) == TAGGED + 2
    for r in o.final:
        assert (r["state"], r["result"], r["code"]) == ("done", "OK", codec.OK), r
    by_device = {r["device"]: r for r in o.final}
    assert all(by_device[n]["detail"] == "rebooting" for n in o.tagged)
    for n in [*o.away, o.lone]:  # acked after they came back
        assert by_device[n]["acked"] >= iso(o.back_ms) and by_device[n]["sends"] >= 1
    assert o.shown == by_device[o.lone]
    assert o.shown["args"] == {"changes": ["log_level"]} and o.shown["kind"] == "set_config"


def test_each_command_ran_once_on_its_board(scenario):
    o = scenario
    # the reboot: every tagged board restarted exactly once, the offline ones after they came back
    assert {n: o.resets[n] for n in o.tagged} == {n: 1 for n in o.tagged}
    assert all(o.resets[n] == 0 for n in o.names if n not in o.tagged)
    assert all(o.boots[n] == 2 for n in o.tagged)  # the first boot and the one after the reset
    # the config change is on the board's flash; the workflow command moved it to manual
    assert o.lone_config["log_level"] == "debug" and o.lone_config["device_id"] == o.lone
    (one_id,) = o.sent["one"]["ids"]
    code, detail = o.board_acks[o.one][one_id]
    assert code == codec.OK and detail == {r["id"]: r for r in o.final}[one_id]["detail"]
    assert detail == "state manual" and o.states[o.one] == "manual"


def test_each_command_was_acked_once_with_its_result(scenario):
    o = scenario
    acked = o.final_acked_ms
    for r in o.final:
        seen = o.acks.get(r["id"], [])
        # the board ran it once: every ack it published for it carries that one result (a
        # command delivered twice, by the broker's session and again in answer to the board's
        # pull, gets the stored ack again; after a reboot, DUPLICATE "already accepted")
        assert seen and seen[0] == (codec.OK, r["detail"]), (r["id"], r["device"], seen)
        assert all(a == seen[0] or a[0] == codec.DUPLICATE for a in seen), seen
        # and the companion recorded it once: the ack keeps the time it was first recorded
        assert acked[r["id"]] == o.first_acked[r["id"]], (r["id"], seen)

