"""A virtual board for dual-runtime node tests: the firmware's own node, SimHal, a virtual
clock, and a link that records what would be published.

MicroPython's WASI build has no sockets, so the link here only records; the same flows run
against a real Mosquitto in tests/firmware/test_node.py on CPython.
"""

import binascii

from _util import MICROPYTHON, load_json

from cloud.orrery.sim.hal import SimHal, VirtualClock
from firmware.node import Node
from shared.wire import codec

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


def _board(clock=None, skew_ms=0, root=None, reset=None, rand4=b"\x01\x02\x03\x04"):
    """A node booted and connected; ``skew_ms`` puts its wall clock off the virtual clock's,
    ``root`` reuses a flash directory (a reboot), ``reset`` is called when it reboots."""
    clock = clock or VirtualClock(ticks=5, unix_ms=T0)
    hal = SimHal(PROFILE, 1, clock.ticks_ms, dropout_ppm=0, spike_ppm=0)
    hal.configure("temp", base=3500, amplitude=0, noise=0)
    cfg = {
        "device_id": "dev1",
        "fleet": "f1",
        "hmac_key": KEY,
        "health_window_s": 3,
        "broker": {"host": "x", "port": 1, "tls": False},
    }
    link = RecorderLink()
    node = Node(
        cfg,
        hal,
        root or _root(),
        link,
        clock.ticks_ms,
        wall_ms=lambda: clock.unix_ms() + skew_ms,
        reset=reset,
        rand4=lambda: rand4,
    )
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
    env = codec.sign_command(binascii.unhexlify(KEY), cmd_id, "dev1", kind, args, now, now + ttl)
    node._on_message(node.topics[codec.CMD], env)
    return env


def _acks(link):
    out = []
    for topic, payload in link.sent:
        if topic.endswith("/up/acks"):
            out.append(codec.decode_ack(payload)[0])
    return out


def _install(node, clock, cmd_id, name):
    w = GOLDEN[name]
    blob = binascii.unhexlify(w["blob"])
    args = {"blob": binascii.b2a_base64(blob).decode().strip(), "sha256": w["hash"], "health_s": 3}
    _cmd(node, clock, cmd_id, "install_workflow", args)
