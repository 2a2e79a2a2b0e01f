"""Bench tests on a board: ``pytest hw/bench --port /dev/ttyUSB0`` (see hw/README.md).

Each test runs the firmware's own modules on the board, from the ``.mpy`` files the deploy
wrote, against the board's own peripherals (on the virtual board: emulated ones).
"""

from __future__ import annotations

import binascii
import re
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.bench

APP = "import sys\nsys.path.insert(0, '/app_a')\n"


def test_deploy_is_incremental(bench):
    """A second deploy of the same code and config copies nothing."""
    from tools.board import deploy

    first = bench.first_deploy
    assert first.copied or first.unchanged  # the first one wrote (or found) the whole app
    again = deploy.deploy(
        bench.port,
        bench.device_id,
        config=bench.config,
        profile=bench.profile,
        lib=None,
        reset=False,
    )
    assert again.copied == [] and again.deleted == [], again
    assert again.unchanged >= 30, again  # the whole app, found unchanged by its hashes


def test_sampling(bench):
    """Every channel of the profile reads a plausible value through the firmware's HAL."""
    got = bench.json(
        APP + "import json, machine\n"
        "from firmware.hal import BoardHal\n"
        f"hal = BoardHal(json.load(open('/boards/{bench.profile['name']}.json')), machine)\n"
        "out = {}\n"
        "for i, name in enumerate(hal.channel_names):\n"
        "    out[name] = [hal.read(i) for _ in range(3)]\n"
        "print(json.dumps(out))\n"
    )
    assert sorted(got) == sorted(bench.profile["channels"])
    for name, values in got.items():
        spec = bench.profile["channels"][name]
        assert None not in values, f"{name}: read failed (is the sensor wired? see hw/WIRING.md)"
        if spec["kind"] == "adc":
            assert all(0 <= v <= 3300 for v in values), (name, values)
        elif spec["quantity"] == "temperature":
            assert all(-4000 <= v <= 12500 for v in values), (name, values)
        else:
            assert all(0 <= v <= 10000 for v in values), (name, values)


def test_store_persists_across_reset(bench):
    """Readings appended to the flash store are all there after a hard reset."""
    first = bench.json(
        APP + "import json, os\n"
        "from firmware.store import Store\n"
        "try:\n    os.mkdir('/bench')\nexcept OSError:\n    pass\n"
        "s = Store('/bench/store')\n"
        "start = s.last_seq\n"
        "for i in range(50):\n"
        "    s.append(7, 100 + i, i, 1000 + i, 1)\n"
        "s.close()\n"
        "print(json.dumps([start, s.last_seq]))\n"
    )
    assert first[1] == first[0] + 50
    out = bench.reset_and_read(30, until=b"==== SAFE MODE")
    assert "SAFE MODE" in out, out  # held out of the app, as the suite wants
    after = bench.json(
        APP + "import json\n"
        "from firmware.store import Store\n"
        "s = Store('/bench/store')\n"
        "buf = bytearray(20 * 64)\n"
        f"recs = s.read_range(buf, {first[0] + 1}, {first[1]})\n"
        "print(json.dumps([s.last_seq, s.corrupt, len(recs) if isinstance(recs, list) else recs]))\n"
    )
    assert after[0] == first[1] and after[1] == 0, after


def test_workflow_install(bench):
    """A signed install_workflow command, handled by the node on the board, runs the
    workflow on the board's inputs and is acknowledged."""
    from shared.wire import codec
    from shared.workflow import compiler

    defn = (REPO / "cloud/orrery/sim/workflows/greenhouse.json").read_bytes()
    compiled = compiler.compile(defn, bench.profile)
    now = int(time.time())
    args = {
        "blob": binascii.b2a_base64(compiled.blob).decode().strip(),
        "sha256": compiled.hash,
        "health_s": 2,
    }
    env = codec.sign_command(
        binascii.unhexlify(bench.key),
        "bench-wf-1",
        bench.device_id,
        "install_workflow",
        args,
        now - 5,
        now + 3600,
    )
    got = bench.json(
        APP + "import json, machine, time\n"
        "from firmware import config\n"
        "from firmware.hal import BoardHal\n"
        "from firmware.node import Node\n"
        "from shared.wire import codec\n"
        "class Link:\n"
        "    connected = True\n"
        "    def __init__(self):\n        self.sent = []\n"
        "    def connect(self):\n        return True\n"
        "    def publish(self, topic, payload, qos=1, retain=False):\n"
        "        self.sent.append((topic, bytes(payload)))\n        return True\n"
        "    def subscribe(self, topic, qos=1):\n        return True\n"
        "    def poll(self):\n        pass\n"
        "    def close(self):\n        pass\n"
        "    def disconnect(self):\n        pass\n"
        "cfg, errors = config.load('/config.json')\n"
        "assert not errors, errors\n"
        f"hal = BoardHal(json.load(open('/boards/{bench.profile['name']}.json')), machine)\n"
        "link = Link()\n"
        "import os\n"
        "try:\n    os.mkdir('/bench')\nexcept OSError:\n    pass\n"
        "node = Node(cfg, hal, '/bench/node', link, time.ticks_ms, wall_ms=lambda: None)\n"
        "node.wf.boot()\n"
        f"node._on_message(node.topics[codec.CMD], {env!r})\n"
        "t0 = time.ticks_ms()\n"
        "while time.ticks_diff(time.ticks_ms(), t0) < 4000:\n"
        "    node.step_main()\n"
        "    while node.step_link():\n        pass\n"
        "    time.sleep_ms(20)\n"
        "acks = []\n"
        "for topic, payload in link.sent:\n"
        "    if topic.endswith('/up/acks'):\n"
        "        a = codec.decode_ack(payload)[0]\n"
        "        acks.append([a['id'], a['code'], a.get('detail') or a.get('reason') or a.get('msg')])\n"
        "p = node.wf.prog\n"
        "print(json.dumps({'acks': acks, 'wf': p.name if p else None"
        "}))\n",
        timeout=120,
    )
    mine = [a for a in got["acks"] if a[0] == "bench-wf-1"]
    assert got["wf"] == "greenhouse", got
    assert [a[1] for a in mine] == [codec.IN_PROGRESS, codec.OK], got  # staged, then healthy
    reads, failed = (int(n) for n in re.findall(r"\d+", mine[-1][2])[:2])
    assert reads > 0 and failed == 0, got  # the workflow sampled the board's inputs


def test_safe_mode(bench):
    """Failed boots at the limit: the board stops in safe mode, says why, and the REPL works."""
    out = bench.reset_and_read(30, until=b"==== SAFE MODE")
    assert "==== SAFE MODE: the app is not started ====" in out, out
    assert "boots in a row failed" in out, out
    assert bench.run("print(1 + 1)").strip() == "2"


def test_mqtt_round_trip(bench):
    """The node on the board reaches a broker on this machine: its birth message arrives,
    and a signed command sent to it comes back acknowledged.

    The firmware does not bring Wi-Fi up yet (the config's ``wifi`` is validated, nothing
    connects it), so this test connects the board's Wi-Fi itself, then runs the node from
    the REPL with its real link (umqtt.simple in the link thread) for 40 s.
    Written for a real board; it has not run here (no board, and no network on the virtual one).
    """
    if bench.virtual:
        pytest.skip(
            "virtual board: MicroPython's WebAssembly port has no network stack (no socket "
            "module) and no _thread, so the node's MQTT link cannot run there"
        )
    ssid = bench.opts.getoption("--wifi-ssid")
    host = bench.opts.getoption("--broker-host")
    if not (ssid and host):
        pytest.skip("needs --wifi-ssid and --broker-host (this machine's LAN address)")
    with bench.board() as b:
        if not b.has_module("umqtt.simple"):
            pytest.skip("umqtt.simple is not on the board: pass --lib-dir or --mip-index")
    import threading

    import paho.mqtt.client as mqtt

    from shared.wire import codec
    from shared.wire.codec import decode_ack, sign_command
    from tools.dev.mosquitto import Broker, free_port

    lan_port = free_port()
    broker = Broker(extra_conf=f"listener {lan_port} 0.0.0.0").start()
    got: dict[str, list] = {"state": [], "acks": []}
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)

    def on_message(_c, _u, msg):
        if msg.topic.endswith("/up/state") and not msg.retain:
            got["state"].append(msg.payload)
        elif msg.topic.endswith("/up/acks"):
            got["acks"].append(decode_ack(msg.payload))

    sub.on_message = on_message
    sub.connect("127.0.0.1", broker.port)
    sub.subscribe(f"orrery/bench/{bench.device_id}/up/#", qos=1)
    sub.loop_start()
    wifi = bench.opts.getoption("--wifi-password")
    code = (
        APP + "import json, machine, network, time\n"
        "from firmware import config\n"
        "from firmware.hal import BoardHal\n"
        "from firmware.link import UmqttLink\n"
        "from firmware.node import Node\n"
        "w = network.WLAN(network.STA_IF)\n"
        "w.active(True)\n"
        f"w.connect({ssid!r}, {wifi!r})\n"
        "t0 = time.ticks_ms()\n"
        "while not w.isconnected() and time.ticks_diff(time.ticks_ms(), t0) < 20000:\n"
        "    time.sleep_ms(200)\n"
        "print('wifi', w.isconnected())\n"
        "cfg, errors = config.load('/config.json')\n"
        f"hal = BoardHal(json.load(open('/boards/{bench.profile['name']}.json')), machine)\n"
        f"link = UmqttLink(cfg['device_id'], {host!r}, {lan_port})\n"
        "node = Node(cfg, hal, '/bench/mqtt', link, time.ticks_ms, wall_ms=lambda: None)\n"
        "link.will = node.will()\n"
        "node.start()\n"
        "t0 = time.ticks_ms()\n"
        "while time.ticks_diff(time.ticks_ms(), t0) < 40000:\n"
        "    node.step_main()\n"
        "    time.sleep_ms(min(100, node.next_wait_ms()))\n"
        "node.stop()\n"
        "print('done')\n"
    )
    out: list[str] = []
    runner = threading.Thread(target=lambda: out.append(bench.run(code, timeout=90)))
    runner.start()
    try:
        end = time.monotonic() + 35
        while not got["state"] and time.monotonic() < end:
            time.sleep(0.2)
        assert got["state"], f"no birth message from the board; board said: {out}"
        now = int(time.time())
        env = sign_command(
            binascii.unhexlify(bench.key), "bench-ping-1", bench.device_id, "resend",
            {"first": 1, "last": 1}, now - 5, now + 600,
        )  # fmt: skip
        sub.publish(codec.topic("bench", bench.device_id, codec.CMD), env, qos=1)
        end = time.monotonic() + 15
        while time.monotonic() < end and not any(
            a and a[0] and a[0].get("id") == "bench-ping-1" for a in got["acks"]
        ):
            time.sleep(0.2)
        assert any(a and a[0] and a[0].get("id") == "bench-ping-1" for a in got["acks"]), got
    finally:
        runner.join(120)
        sub.loop_stop()
        sub.disconnect()
        broker.close()
