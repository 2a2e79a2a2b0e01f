"""Command handling and workflow install on both runtimes (the firmware's own code).

MicroPython's WASI build has no sockets, so here the node's link is an in-memory recorder;
the same flows run against a real Mosquitto in tests/test_node.py on CPython.
"""

import binascii

from _util import MICROPYTHON, load_json

from firmware.node import Node
from firmware.simhal import SimHal, VirtualClock
from shared import protocol as P

KEY = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
T0 = 1790000000000
GOLDEN = load_json("tests/golden/executor.json")["workflows"]
PROFILE = load_json("hw/boards/esp32-devkitc.json")
_n = [0]


class RecorderLink:
    """Stands in for the network only: records what the node publishes."""

    def __init__(self):
        self.connected = False
        self.sent = []
        self.on_message = None

    def connect(self):
        self.connected = True
        return True

    def publish(self, topic, payload, qos=1, retain=False):
        self.sent.append((topic, bytes(payload)))
        return True

    def subscribe(self, topic, qos=1):
        return True

    def poll(self):
        pass

    def close(self):
        self.connected = False

    def disconnect(self):
        self.connected = False


def _root():
    _n[0] += 1
    if MICROPYTHON:
        return "/flash/n" + str(_n[0])
    import tempfile

    return tempfile.mkdtemp()


def _board():
    clock = VirtualClock(ticks=5, unix_ms=T0)
    hal = SimHal(PROFILE, 1, clock.ticks_ms, dropout_ppm=0, spike_ppm=0)
    hal.configure("temp", base=3500, amplitude=0, noise=0)
    cfg = {"device_id": "dev1", "fleet": "f1", "hmac_key": KEY, "health_window_s": 3,
           "broker": {"host": "x", "port": 1, "tls": False}}
    link = RecorderLink()
    node = Node(cfg, hal, _root(), link, clock.ticks_ms, wall_ms=clock.unix_ms,
                rand4=lambda: b"\x01\x02\x03\x04")
    node.wf.boot()
    node.step_link()
    return node, clock, link


def _run(node, clock, ms):
    for _ in range(ms // 100):
        clock.advance(100)
        node.step_main()
        while node.step_link():
            pass


def _cmd(node, clock, cmd_id, kind, args, ttl=3600, age=0):
    now = clock.unix_ms() // 1000 - age
    env = P.sign_command(binascii.unhexlify(KEY), cmd_id, "dev1", kind, args, now, now + ttl)
    node._on_message(node.topics[P.CMD], env)
    return env


def _acks(link):
    out = []
    for topic, payload in link.sent:
        if topic.endswith("/up/acks"):
            out.append(P.decode_ack(payload)[0])
    return out


def _install(node, clock, cmd_id, name):
    w = GOLDEN[name]
    blob = binascii.unhexlify(w["blob"])
    args = {"blob": binascii.b2a_base64(blob).decode().strip(), "sha256": w["hash"], "health_s": 3}
    _cmd(node, clock, cmd_id, "install_workflow", args)


def test_connect_publishes_state_and_pull():
    node, clock, link = _board()
    topics = [t for t, _ in link.sent]
    assert topics[0] == "orrery/f1/dev1/up/state"
    assert topics[1] == "orrery/f1/dev1/up/pull"
    state = P.decode_state(link.sent[0][1])[0]
    assert state["online"] is True and state["synced"] is True and state["boot"] > 0


def test_install_runs_health_window_then_migrates_on_upgrade():
    node, clock, link = _board()
    _install(node, clock, "i1", "greenhouse_v1")
    _run(node, clock, 500)
    assert [(a["id"], a["code"]) for a in _acks(link)] == [("i1", P.IN_PROGRESS)]
    _run(node, clock, 4000)
    assert _acks(link)[-1]["id"] == "i1" and _acks(link)[-1]["code"] == P.OK
    _cmd(node, clock, "c1", "run_command", {"name": "force_cool"})
    _run(node, clock, 300)
    assert node.wf.ex.state_name() == "cool"
    _install(node, clock, "i2", "greenhouse")
    _run(node, clock, 300)
    assert node.wf.prog.version == 2
    assert node.wf.ex.state_name() == "cooling"
    _run(node, clock, 4000)
    assert (_acks(link)[-1]["id"], _acks(link)[-1]["code"]) == ("i2", P.OK)


def test_refused_commands_and_duplicates():
    node, clock, link = _board()
    _install(node, clock, "i1", "greenhouse_v1")
    _run(node, clock, 4500)
    env = _cmd(node, clock, "c1", "run_command", {"name": "manual"})
    _run(node, clock, 200)
    node._on_message(node.topics[P.CMD], env)  # a QoS 1 redelivery
    node._on_message(node.topics[P.CMD], env.replace(b"manual", b"auto__"))  # tampered
    _cmd(node, clock, "c-old", "run_command", {"name": "auto"}, ttl=60, age=3600)  # expired
    _cmd(node, clock, "c2", "run_command", {"name": "nope"})  # valid, refused by the workflow
    _run(node, clock, 300)
    got = [(a["id"], a["code"]) for a in _acks(link)][2:]
    assert got[0] == ("c1", P.OK)
    assert got[1] == ("c1", P.OK), "a duplicate gets the stored result, and runs nothing"
    assert got[2][1] == P.BAD_SIGNATURE
    assert got[3] == ("c-old", P.EXPIRED)
    assert got[4] == ("c2", P.REJECTED)
    assert node.wf.ex.state_name() == "manual"


def test_bad_install_is_rejected_and_nothing_changes():
    node, clock, link = _board()
    _install(node, clock, "i1", "greenhouse_v1")
    _run(node, clock, 4500)
    w = GOLDEN["greenhouse"]
    blob = binascii.unhexlify(w["blob"])
    bad = {"blob": binascii.b2a_base64(blob[:-3]).decode().strip(), "sha256": w["hash"]}
    _cmd(node, clock, "i2", "install_workflow", bad)
    _run(node, clock, 300)
    last = _acks(link)[-1]
    assert last["id"] == "i2" and last["code"] == P.REJECTED and "sha256" in last["detail"]
    assert node.wf.prog.version == 1


def test_readings_are_stored_and_sent_in_batches():
    node, clock, link = _board()
    _install(node, clock, "i1", "greenhouse_v1")
    _run(node, clock, 10000)
    batches = [P.decode_batch(p)[0] for t, p in link.sent if t.endswith("/up/readings")]
    seqs = []
    for b in batches:
        for r in b.records:
            seqs.append(r[0])
    assert seqs == list(range(1, node.store.last_seq + 1))
    assert node.store.backlog() == 0
